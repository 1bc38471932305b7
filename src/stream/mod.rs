//! What comes back: Server-Sent Events and JSON answers read as they pass through, for the
//! first event that decides a retry and the usage that settles the caller's limits.

pub mod header;
pub mod sse;
pub mod tap;

pub use header::header_in;

/// A header's value in a list of `(name, value)` pairs, by case-insensitive name.
#[must_use]
pub fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    header_in(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())), name)
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

/// An upstream answer the proxy does not hand on, by its status: a redirect. Upstream
/// fetches never follow one (the upstream key would travel to the `Location` host), and
/// passing it on would send the client to a host the operator did not choose, so it is a
/// `502` (not retried: the same request gets the same redirect). `304 Not Modified` is not a
/// redirect and passes.
#[must_use]
pub fn refused_answer(status: u16) -> Option<crate::error::ProxyError> {
    ((300..400).contains(&status) && status != 304)
        .then_some(crate::error::ProxyError::UpstreamRedirected(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_are_refused_and_nothing_else() {
        for status in [300, 301, 302, 303, 305, 307, 308, 399] {
            let refused = refused_answer(status).map(|e| (e.status(), e.should_retry()));
            assert_eq!(refused, Some((502, false)), "{status}");
        }
        for status in [200, 204, 299, 304, 400, 429, 500, 529] {
            assert_eq!(refused_answer(status), None, "{status}");
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_header_is_found_by_name_in_any_case_and_the_first_one_wins() {
        let headers = h(&[
            ("Retry-After", "3"),
            ("x-should-retry", "true"),
            ("retry-after", "9"),
        ]);
        assert_eq!(header(&headers, "retry-after"), Some("3"));
        assert_eq!(header(&headers, "X-SHOULD-RETRY"), Some("true"));
        assert_eq!(header(&headers, "retry-after-ms"), None);
        assert_eq!(header(&headers, "retry"), None);
        let pairs = [("Content-Length", "7")];
        assert_eq!(header_in(pairs, "content-length"), Some("7"));
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
