//! What comes back: Server-Sent Events and JSON answers read as they pass through, for the
//! first event that decides a retry and the usage that settles the caller's limits.

pub mod sse;
pub mod tap;

/// A header's value in a list of `(name, value)` pairs, by case-insensitive name.
#[must_use]
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether an answer with these headers is an event stream (`text/event-stream`, any case,
/// parameters allowed).
#[must_use]
pub fn is_event_stream(headers: &[(String, String)]) -> bool {
    header(headers, "content-type").is_some_and(|t| {
        t.trim_start()
            .to_ascii_lowercase()
            .starts_with("text/event-stream")
    })
}

/// The body's length when the upstream announced it for the bytes as they arrive: a
/// `content-length` and no content encoding for the runtime to undo.
#[must_use]
pub fn exact_length(headers: &[(String, String)]) -> Option<u64> {
    let identity = header(headers, "content-encoding")
        .is_none_or(|e| e.trim().eq_ignore_ascii_case("identity"));
    header(headers, "content-length")
        .filter(|_| identity)
        .and_then(|l| l.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn event_streams_by_content_type() {
        assert!(is_event_stream(&h(&[(
            "Content-Type",
            "text/event-stream; charset=utf-8"
        )])));
        assert!(is_event_stream(&h(&[(
            "content-type",
            "  TEXT/EVENT-STREAM"
        )])));
        assert!(!is_event_stream(&h(&[(
            "content-type",
            "application/json"
        )])));
        assert!(!is_event_stream(&h(&[])));
    }

    #[test]
    fn exact_length_only_without_encoding() {
        assert_eq!(exact_length(&h(&[("content-length", " 42 ")])), Some(42));
        assert_eq!(
            exact_length(&h(&[
                ("content-length", "42"),
                ("content-encoding", "identity")
            ])),
            Some(42)
        );
        assert_eq!(
            exact_length(&h(&[
                ("content-length", "42"),
                ("content-encoding", "gzip")
            ])),
            None
        );
        assert_eq!(exact_length(&h(&[("content-length", "-1")])), None);
        assert_eq!(exact_length(&h(&[])), None);
    }
}
