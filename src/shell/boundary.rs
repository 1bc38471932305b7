//! The request, each attempt and the answer cross the JavaScript boundary in one call each.
//!
//! Every call from WebAssembly into the runtime is a crossing, and reading a `Headers` through
//! `entries()` costs three per header; an Anthropic answer carries some twenty headers (the
//! `anthropic-ratelimit-*` family). Here the request's method, URL and headers come over as
//! one string; an attempt goes out as one call that builds its headers and init and calls
//! `fetch`; its answer's status and headers come back as one string; and the final answer is
//! built in one call. The attempt's timeout is set in that call too, and cleared as soon as
//! the answer's head is in, so it can never cut an answer already being passed on. A header name or value cannot hold a line break (the runtime refuses
//! them), so the lines are unambiguous. What to send and what to answer is decided in Rust;
//! only the building happens here.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::web_sys;

#[wasm_bindgen(inline_js = r#"
function linesOf(headers) {
  let lines = '';
  for (const [name, value] of headers) lines += name + '\n' + value + '\n';
  return lines;
}
function headersOf(lines) {
  const headers = new Headers();
  const parts = lines.split('\n');
  for (let i = 0; i + 1 < parts.length; i += 2) {
    try { headers.append(parts[i], parts[i + 1]); } catch (_) {}
  }
  return headers;
}
export function request_head(request) {
  return request.method + '\n' + request.url + '\n' + linesOf(request.headers);
}
export function send(url, method, lines, body, timeoutMs) {
  const controller = new AbortController();
  let timer;
  try {
    timer = setTimeout(() => controller.abort(new DOMException('the attempt timed out', 'TimeoutError')), timeoutMs);
  } catch (_) {}
  const sent = fetch(url, { method, headers: headersOf(lines), body, redirect: 'manual', signal: controller.signal });
  const done = () => { try { clearTimeout(timer); } catch (_) {} };
  const answered = sent.then(
    (response) => { done(); return response; },
    (error) => { done(); throw error; },
  );
  answered.abort = () => controller.abort();
  return answered;
}
export function abort(sent) {
  try { sent.abort(); } catch (_) {}
}
export function timed_out(error) {
  return error instanceof DOMException && error.name === 'TimeoutError';
}
export function cancel_body(body) {
  try { body.cancel().catch(() => {}); } catch (_) {}
}
export function answer_head(response) {
  return response.status + '\n' + linesOf(response.headers);
}
export function answer(status, lines, body) {
  return new Response(body, { status, headers: headersOf(lines) });
}
"#)]
extern "C" {
    fn request_head(request: &web_sys::Request) -> String;
    #[wasm_bindgen(catch)]
    fn send(
        url: &str,
        method: &str,
        lines: &str,
        body: &JsValue,
        timeout_ms: f64,
    ) -> Result<js_sys::Promise, JsValue>;
    fn abort(sent: &js_sys::Promise);
    fn timed_out(error: &JsValue) -> bool;
    #[wasm_bindgen(js_name = cancel_body)]
    fn cancel_stream(body: &web_sys::ReadableStream);
    fn answer_head(response: &web_sys::Response) -> String;
    #[wasm_bindgen(catch)]
    fn answer(status: u16, lines: &str, body: &JsValue) -> Result<web_sys::Response, JsValue>;
}

/// A header list, names in lower case, in the runtime's order. A request's holds the caller's
/// credential, so `Debug` shows the names only.
#[derive(Default, Clone)]
pub struct HeaderList(Vec<(String, String)>);

impl std::fmt::Debug for HeaderList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

impl HeaderList {
    /// The list `lines` holds: a name and a value per line.
    fn of_lines(lines: &str) -> HeaderList {
        let mut parts = lines.split('\n');
        let mut out = Vec::new();
        while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
            out.push((name.to_string(), value.to_string()));
        }
        HeaderList(out)
    }

    /// The value of `name` (lower case), as `Headers.get` gives it (repeats joined).
    pub fn get(&self, name: &str) -> Option<String> {
        self.value(name).map(str::to_string)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        crate::stream::header(&self.0, name)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, (String, String)> {
        self.0.iter()
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// Replaces every value of `name` with `value`, as `Headers.set` does.
    pub fn set(&mut self, name: &str, value: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.append(name, value);
    }

    pub fn append(&mut self, name: &str, value: &str) {
        self.0.push((name.to_string(), value.to_string()));
    }

    fn lines(&self) -> String {
        lines_of(self.0.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }
}

impl FromIterator<(String, String)> for HeaderList {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> HeaderList {
        HeaderList(pairs.into_iter().collect())
    }
}

/// A client's request as the runtime handed it over, its head read in one call.
pub struct Incoming {
    pub method: String,
    /// The serialized URL.
    pub url: String,
    pub headers: HeaderList,
    pub request: web_sys::Request,
}

impl Incoming {
    pub fn read(request: web_sys::Request) -> Incoming {
        let head = request_head(&request);
        let mut lines = head.splitn(3, '\n');
        let method = lines.next().unwrap_or_default().to_string();
        let url = lines.next().unwrap_or_default().to_string();
        let headers = HeaderList::of_lines(lines.next().unwrap_or_default());
        Incoming {
            method,
            url,
            headers,
            request,
        }
    }
}

/// The status and headers of an upstream answer, read in one call.
pub fn head_of(response: &web_sys::Response) -> (u16, HeaderList) {
    let head = answer_head(response);
    let (status, lines) = head.split_once('\n').unwrap_or((&head, ""));
    (status.parse().unwrap_or(0), HeaderList::of_lines(lines))
}

/// Cancels a body that will not be read, so its connection is closed now; never throws (the
/// runtime refuses the call outside a request, and a body already locked or ended needs none).
pub fn cancel_body(body: &web_sys::ReadableStream) {
    cancel_stream(body);
}

/// One attempt on its way: `fetch` under the attempt's timeout.
pub struct InFlight(js_sys::Promise);

/// How an attempt's wait for its answer's head ended.
pub enum HeadWait {
    Answered(web_sys::Response),
    TimedOut,
    /// No answer: the connection failed, or the runtime refused the request.
    Failed,
}

impl InFlight {
    /// Sends one attempt with `headers` (lines), never following a redirect: a `3xx` comes
    /// back as the answer (and is refused, see `stream::refused_answer`), so the upstream key
    /// never travels to whatever host a `Location` names. Aborted if its answer's head has
    /// not come within `timeout_ms`. `None` when the runtime refused it at once.
    pub fn new(
        url: &str,
        method: &str,
        headers: &str,
        body: Option<&JsValue>,
        timeout_ms: u64,
    ) -> Option<InFlight> {
        let none = JsValue::UNDEFINED;
        // Milliseconds as a JavaScript number; no timeout here is near 2^53.
        send(
            url,
            method,
            headers,
            body.unwrap_or(&none),
            timeout_ms as f64,
        )
        .ok()
        .map(InFlight)
    }

    pub async fn answer(&self) -> HeadWait {
        match worker::wasm_bindgen_futures::JsFuture::from(self.0.clone()).await {
            Ok(response) => match response.dyn_into() {
                Ok(response) => HeadWait::Answered(response),
                Err(_) => HeadWait::Failed,
            },
            Err(error) if timed_out(&error) => HeadWait::TimedOut,
            Err(_) => HeadWait::Failed,
        }
    }

    /// Stops the attempt, its answer's body included.
    pub fn abort(&self) {
        abort(&self.0);
    }
}

/// Headers as the lines they cross the boundary in (an attempt's are made once for all its
/// attempts); a pair the runtime would refuse (a line break) is left out.
pub fn lines_of<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
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
    lines
}

/// What an answer's body is.
pub enum AnswerBody {
    Empty,
    Bytes(Vec<u8>),
    /// Handed to the client as the runtime's own stream.
    Stream(web_sys::ReadableStream),
    /// Bytes already in a runtime buffer.
    Buffer(js_sys::ArrayBuffer),
}

/// An answer to the client, built into the runtime's `Response` once it is complete.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderList,
    pub body: AnswerBody,
}

impl Answer {
    pub fn new(status: u16, headers: HeaderList, body: AnswerBody) -> Answer {
        Answer {
            status,
            headers,
            body,
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, body: Vec<u8>) -> Answer {
        let mut headers = HeaderList::default();
        headers.set("content-type", "application/json");
        Answer::new(status, headers, AnswerBody::Bytes(body))
    }

    /// The runtime's `Response`. A status that may not carry a body (`204`, `304`) is
    /// answered without one; `Err` only when the runtime refuses even that.
    pub fn into_response(self) -> Result<web_sys::Response, JsValue> {
        let lines = self.headers.lines();
        let body = match &self.body {
            AnswerBody::Empty => JsValue::NULL,
            AnswerBody::Bytes(bytes) => js_sys::Uint8Array::from(bytes.as_slice()).into(),
            AnswerBody::Stream(stream) => stream.into(),
            AnswerBody::Buffer(buffer) => buffer.into(),
        };
        answer(self.status, &lines, &body).or_else(|_| answer(self.status, &lines, &JsValue::NULL))
    }
}
