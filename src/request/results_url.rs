//! A Message Batch's `results_url` pointed at the proxy.
//!
//! The API names where a batch's results are fetched, on its own origin; a client that follows
//! it would go around the proxy (with the proxy's credential, which the upstream refuses, or
//! with none). The batch answers are rewritten so the URL is the proxy's own origin and the
//! same path and query, and only when that path is one the proxy routes to a batch's results.
//! Every other byte of the answer stays as it came.

use crate::request::route::{path_of, query_of, route, Route};

const KEY: &[u8] = b"\"results_url\"";

/// Where [`KEY`] first begins in `bytes`. It begins with a quote, so only quotes are tried:
/// the same answer as a general substring search, without its kilobytes of module.
fn find_key(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + memchr::memchr(b'"', bytes.get(from..)?)?;
        if bytes.get(at..)?.starts_with(KEY) {
            return Some(at);
        }
        from = at + 1;
    }
}

/// The answer with every `"results_url": "…"` value moved to `origin` (`https://host[:port]`),
/// or `None` when there was nothing to rewrite.
#[must_use]
pub fn point_at_proxy(body: &[u8], origin: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len().saturating_add(64));
    let mut rest = body;
    let mut changed = false;
    while let Some(at) = find_key(rest) {
        let after_key = at.saturating_add(KEY.len());
        // A key in a JSON string would be escaped (`\"results_url\"`): not a key.
        let escaped = at > 0 && rest.get(at.saturating_sub(1)) == Some(&b'\\');
        let value_at = (!escaped).then(|| value_start(rest, after_key)).flatten();
        let Some(start) = value_at else {
            out.extend_from_slice(rest.get(..after_key)?);
            rest = rest.get(after_key..)?;
            continue;
        };
        // The value is read from the text before the first byte that is not UTF-8, if any:
        // a string that reaches it is refused there, as it would be read from the bytes.
        let value = rest.get(start..)?;
        let text = match std::str::from_utf8(value) {
            Ok(text) => text,
            Err(e) => std::str::from_utf8(value.get(..e.valid_up_to()).unwrap_or_default())
                .unwrap_or_default(),
        };
        let mut strings = serde_json::Deserializer::from_str(text).into_iter::<String>();
        let url = strings.next().and_then(Result::ok);
        let end = start.saturating_add(strings.byte_offset());
        match url.and_then(|url| at_proxy(&url, origin)) {
            Some(moved) => {
                out.extend_from_slice(rest.get(..start)?);
                out.extend_from_slice(serde_json::to_string(&moved).ok()?.as_bytes());
                changed = true;
            }
            None => out.extend_from_slice(rest.get(..end.max(after_key))?),
        }
        rest = rest.get(end.max(after_key)..)?;
    }
    out.extend_from_slice(rest);
    changed.then_some(out)
}

/// Where the string value after a key begins: past blanks, one `:` and blanks, at a `"`.
fn value_start(body: &[u8], mut i: usize) -> Option<usize> {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    while body.get(i).is_some_and(blank) {
        i = i.saturating_add(1);
    }
    if body.get(i) != Some(&b':') {
        return None;
    }
    i = i.saturating_add(1);
    while body.get(i).is_some_and(blank) {
        i = i.saturating_add(1);
    }
    (body.get(i) == Some(&b'"')).then_some(i)
}

/// The URL on the proxy's origin, when its path is a batch's results.
fn at_proxy(url: &str, origin: &str) -> Option<String> {
    let path = path_of(url);
    if !matches!(route("GET", path), Ok(Route::BatchResults(_))) {
        return None;
    }
    Some(match query_of(url) {
        Some(q) if !q.is_empty() => format!("{origin}{path}?{q}"),
        _ => format!("{origin}{path}"),
    })
}

/// The origin (`scheme://host[:port]`) of a serialized URL.
#[must_use]
pub fn origin_of(url: &str) -> &str {
    // A byte search: a `str` pattern brings the standard library's substring searcher.
    let after_scheme = url
        .as_bytes()
        .windows(3)
        .position(|w| w == b"://")
        .map_or(0, |i| i.saturating_add(3));
    let end = url
        .get(after_scheme..)
        .and_then(|rest| rest.find(['/', '?', '#']))
        .map_or(url.len(), |i| i.saturating_add(after_scheme));
    url.get(..end).unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_key_is_found_where_a_substring_search_finds_it(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'"'), Just(b'r'), Just(b'_'), Just(b'x'), Just(b'l')],
                0..40,
            ),
            at in 0usize..40,
        ) {
            let mut bytes = bytes;
            let at = at.min(bytes.len());
            bytes.splice(at..at, KEY.iter().copied());
            for cut in [0, at, bytes.len()] {
                let hay = bytes.get(cut..).unwrap_or_default();
                prop_assert_eq!(find_key(hay), memchr::memmem::find(hay, KEY));
            }
        }
    }

    const ORIGIN: &str = "https://proxy.example";

    #[test]
    fn a_batch_points_at_the_proxy_and_nothing_else_changes() {
        let body = br#"{"id":"msgbatch_01","type":"message_batch","processing_status":"ended","results_url": "https://api.anthropic.com/v1/messages/batches/msgbatch_01/results?beta=true","request_counts":{"succeeded":2}}"#;
        let moved = String::from_utf8(point_at_proxy(body, ORIGIN).unwrap()).unwrap();
        let expected = String::from_utf8(body.to_vec())
            .unwrap()
            .replace("https://api.anthropic.com/v1/", "https://proxy.example/v1/");
        assert_eq!(moved, expected);
    }

    #[test]
    fn bytes_that_are_not_utf8_stop_only_a_value_they_are_in() {
        let url = b"https://api.anthropic.com/v1/messages/batches/b/results";
        let after = [
            &b"{\"results_url\": \""[..],
            url,
            b"\", \"note\": \"\xff\xfe\"}",
        ]
        .concat();
        let moved = point_at_proxy(&after, ORIGIN).unwrap();
        assert_eq!(
            moved,
            after
                .iter()
                .copied()
                .take(16)
                .chain(
                    b"\"https://proxy.example/v1/messages/batches/b/results\""
                        .iter()
                        .copied()
                )
                .chain(b", \"note\": \"\xff\xfe\"}".iter().copied())
                .collect::<Vec<u8>>()
        );
        let inside = [&b"{\"results_url\": \""[..], url, b"\xff\"}"].concat();
        assert_eq!(point_at_proxy(&inside, ORIGIN), None);
    }

    #[test]
    fn every_batch_of_a_list_is_rewritten() {
        let body = br#"{"data":[{"id":"a","results_url":"https://api.anthropic.com/v1/messages/batches/a/results"},{"id":"b","results_url":null},{"id":"c","results_url":"https://api.anthropic.com/v1/messages/batches/c/results"}],"has_more":false}"#;
        let moved = String::from_utf8(point_at_proxy(body, ORIGIN).unwrap()).unwrap();
        assert!(moved
            .contains(r#""results_url":"https://proxy.example/v1/messages/batches/a/results""#));
        assert!(moved.contains(r#""results_url":null"#));
        assert!(moved
            .contains(r#""results_url":"https://proxy.example/v1/messages/batches/c/results""#));
        assert!(!moved.contains("api.anthropic.com"));
        let value: serde_json::Value = serde_json::from_str(&moved).unwrap();
        assert_eq!(value["data"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn only_a_results_path_is_moved() {
        for url in [
            "https://api.anthropic.com/v1/messages",
            "https://api.anthropic.com/v1/messages/batches/a/../../../v1/models/results",
            "https://api.anthropic.com/v1/messages/batches/a%2Fb/results",
            "https://elsewhere.example/download",
        ] {
            let body = format!(
                r#"{{"results_url":{}}}"#,
                serde_json::to_string(url).unwrap()
            );
            assert_eq!(point_at_proxy(body.as_bytes(), ORIGIN), None, "{url}");
        }
        // No key, a key inside a string, a key whose value is not a string: untouched.
        assert_eq!(point_at_proxy(br#"{"id":"x"}"#, ORIGIN), None);
        let quoted = br#"{"note":"\"results_url\": \"https://api.anthropic.com/v1/messages/batches/a/results\""}"#;
        assert_eq!(point_at_proxy(quoted, ORIGIN), None);
        assert_eq!(point_at_proxy(br#"{"results_url":5}"#, ORIGIN), None);
        assert_eq!(point_at_proxy(br#"{"results_url""#, ORIGIN), None);
        assert_eq!(
            point_at_proxy(br#"{"results_url":"unterminated"#, ORIGIN),
            None
        );
    }

    #[test]
    fn origins_are_read_from_the_serialized_url() {
        assert_eq!(origin_of("https://p.example/v1/x?y"), "https://p.example");
        assert_eq!(
            origin_of("http://127.0.0.1:8787/v1"),
            "http://127.0.0.1:8787"
        );
        assert_eq!(origin_of("http://127.0.0.1:8787"), "http://127.0.0.1:8787");
        assert_eq!(origin_of("http://h?q"), "http://h");
    }
}
