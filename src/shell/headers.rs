//! Header lists across the JavaScript boundary in one call each way.
//!
//! `Headers::entries()` costs three boundary crossings per header (the iterator's `next`, the
//! name, the value), and building a `Headers` one `append` per header; an Anthropic answer
//! carries some twenty headers (the `anthropic-ratelimit-*` family), and every request reads
//! one list and builds two. Here a list crosses as one string, a name and a value per line:
//! neither can hold a line break (the runtime refuses them), so the lines are unambiguous.

use wasm_bindgen::prelude::*;
use worker::Headers;

#[wasm_bindgen(inline_js = r#"
export function header_lines(headers) {
  let lines = '';
  for (const [name, value] of headers) lines += name + '\n' + value + '\n';
  return lines;
}
export function headers_of(lines) {
  const headers = new Headers();
  const parts = lines.split('\n');
  for (let i = 0; i + 1 < parts.length; i += 2) {
    try { headers.append(parts[i], parts[i + 1]); } catch (_) {}
  }
  return headers;
}
"#)]
extern "C" {
    fn header_lines(headers: &worker::web_sys::Headers) -> String;
    fn headers_of(lines: &str) -> worker::web_sys::Headers;
}

/// A request's headers, read once: looked up in Rust without another call each. They hold the
/// caller's credential, so `Debug` shows the names only.
#[derive(Default)]
pub struct HeaderList(Vec<(String, String)>);

impl std::fmt::Debug for HeaderList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

impl HeaderList {
    pub fn of(headers: &Headers) -> HeaderList {
        HeaderList(pairs(headers))
    }

    /// The value of `name` (lower case), as `Headers.get` gives it (repeats joined).
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.0.iter()
    }
}

/// Every header of `headers`, names in lower case, in the runtime's order.
pub fn pairs(headers: &Headers) -> Vec<(String, String)> {
    let lines = header_lines(&headers.0);
    let mut parts = lines.split('\n');
    let mut out = Vec::new();
    while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
        out.push((name.to_string(), value.to_string()));
    }
    out
}

/// A `Headers` holding `pairs`; a pair the runtime would refuse (a line break, a bad name) is
/// left out.
pub fn headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Headers {
    let mut lines = String::new();
    for (name, value) in pairs {
        if name.contains('\n') || value.contains('\n') {
            continue;
        }
        lines.push_str(name);
        lines.push('\n');
        lines.push_str(value);
        lines.push('\n');
    }
    Headers(headers_of(&lines))
}
