//! Deciding, from one attempt's outcome alone, whether the request is worth another attempt.
//!
//! This is the product's retry table in one pure function, so that every row can be tested
//! without a network and the shell cannot drift from it.

use std::fmt;

/// HTTP statuses retried when the upstream does not say otherwise with `x-should-retry`.
pub const RETRYABLE_STATUSES: [u16; 8] = [529, 429, 408, 409, 500, 502, 503, 504];

/// The Anthropic error type of an overloaded upstream, in a stream's first event.
pub const OVERLOADED_ERROR: &str = "overloaded_error";

/// Anthropic error types that make a stream whose first SSE event is an `error` retryable.
pub const RETRYABLE_STREAM_ERRORS: [&str; 2] = [OVERLOADED_ERROR, "api_error"];

/// What one attempt against the upstream produced, as far as retrying is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived (for a stream: and its first SSE event was not an `error`).
    Response {
        /// The upstream's HTTP status.
        status: u16,
        /// The upstream's `x-should-retry` header, see [`super::should_retry_header`].
        should_retry: Option<bool>,
        /// The upstream's `retry-after-ms` / `retry-after`, see [`super::upstream_wait_ms`].
        wait_floor_ms: Option<u64>,
    },
    /// A successful streaming response whose first SSE event is an `error` event.
    StreamError {
        /// The event's `error.type`, e.g. `overloaded_error`.
        error_type: String,
        /// The response's `x-should-retry` header.
        should_retry: Option<bool>,
        /// The response's `retry-after-ms` / `retry-after`.
        wait_floor_ms: Option<u64>,
    },
    /// The upstream could not be reached (DNS, connect, TLS, reset before headers).
    ConnectFailure,
    /// No response headers (streaming: no first event) within the attempt timeout.
    AttemptTimeout,
}

/// What an upstream answer's head says about retrying it: its status and hints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The upstream's HTTP status.
    pub status: u16,
    /// The upstream's `x-should-retry`, see [`super::should_retry_header`].
    pub should_retry: Option<bool>,
    /// The upstream's `retry-after-ms` / `retry-after` at `now_ms`, see
    /// [`super::upstream_wait_ms`].
    pub wait_floor_ms: Option<u64>,
}

impl Head {
    /// The head of an answer with `status` and `headers`, read at `now_ms`.
    #[must_use]
    pub fn of(status: u16, headers: &[(String, String)], now_ms: u64) -> Head {
        let value = |name| crate::stream::header(headers, name);
        Head {
            status,
            should_retry: super::should_retry_header(value("x-should-retry")),
            wait_floor_ms: super::upstream_wait_ms(
                value("retry-after-ms"),
                value("retry-after"),
                now_ms,
            ),
        }
    }

    /// The outcome of the answer, given its body when it was read whole before the decision
    /// (`None` when it was not). A spend limit (see [`is_spend_limit`]) is never retried,
    /// whatever the upstream's headers say.
    #[must_use]
    pub fn outcome(self, read_body: Option<&[u8]>) -> Outcome {
        Outcome::Response {
            status: self.status,
            should_retry: if is_spend_limited(self.status, read_body) {
                Some(false)
            } else {
                self.should_retry
            },
            wait_floor_ms: self.wait_floor_ms,
        }
    }

    /// The outcome of an event stream whose first event has been read: an `error` event of
    /// type `error_type`, or (`None`) any other.
    #[must_use]
    pub fn first_event_outcome(self, error_type: Option<String>) -> Outcome {
        match error_type {
            Some(error_type) => Outcome::StreamError {
                error_type,
                should_retry: self.should_retry,
                wait_floor_ms: self.wait_floor_ms,
            },
            None => self.outcome(None),
        }
    }
}

/// Whether an answer is the API's spend-limit refusal: a `429` whose body, read whole, says so.
fn is_spend_limited(status: u16, read_body: Option<&[u8]>) -> bool {
    status == 429 && read_body.is_some_and(is_spend_limit)
}

/// The headers the client receives with an upstream answer handed on as it came: those that
/// may cross ([`forward_downstream`](crate::request::headers::forward_downstream)), and on a
/// spend limit `x-should-retry: false` in place of the upstream's, so that the SDKs do not
/// retry what nothing will change for hours. `read_body` is the body when it was read whole
/// before the decision.
#[must_use]
pub fn delivered_headers(
    status: u16,
    headers: &[(String, String)],
    read_body: Option<&[u8]>,
) -> Vec<(String, String)> {
    let spend_limited = is_spend_limited(status, read_body);
    let mut delivered: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| crate::request::headers::forward_downstream(name))
        .filter(|(name, _)| !(spend_limited && name.eq_ignore_ascii_case("x-should-retry")))
        .cloned()
        .collect();
    if spend_limited {
        delivered.push(("x-should-retry".to_string(), "false".to_string()));
    }
    delivered
}

/// Whether an outcome says the upstream is overloaded: a `529`, or a stream opening with
/// [`OVERLOADED_ERROR`]. The one reading of overload, for retrying and for the shared state.
#[must_use]
pub fn is_overloaded(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Response { status, .. } => *status == 529,
        Outcome::StreamError { error_type, .. } => error_type == OVERLOADED_ERROR,
        Outcome::ConnectFailure | Outcome::AttemptTimeout => false,
    }
}

/// Why an attempt is retried; the last cause decides the answer when retries stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The upstream is overloaded: a `529`, or a stream opening with `overloaded_error`.
    Overloaded,
    /// The upstream rate-limited us: a `429`.
    RateLimited,
    /// The attempt timed out before response headers (or the first stream event).
    Timeout,
    /// The upstream could not be reached.
    Unreachable,
    /// Any other retryable status (`500`, `502`, `503`, `504`, `408`, `409`, or any status
    /// the upstream marked `x-should-retry: true`). Its answer is passed through when
    /// retries stop.
    Transient(u16),
    /// A stream opening with a retryable error event other than `overloaded_error` (e.g.
    /// `api_error`). Its answer is passed through when retries stop.
    StreamError,
}

impl Cause {
    /// Whether a give-up with this cause hands the upstream's last answer to the client as is
    /// (rather than a structured answer built by the proxy).
    #[must_use]
    pub fn passes_through(self) -> bool {
        matches!(self, Cause::Transient(_) | Cause::StreamError)
    }
}

impl fmt::Display for Cause {
    /// A short `snake_case` label for log lines, e.g. `overloaded` or `status_503`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Overloaded => f.write_str("overloaded"),
            Cause::RateLimited => f.write_str("rate_limited"),
            Cause::Timeout => f.write_str("timeout"),
            Cause::Unreachable => f.write_str("unreachable"),
            Cause::Transient(status) => write!(f, "status_{status}"),
            Cause::StreamError => f.write_str("stream_error"),
        }
    }
}

/// What to do with one attempt's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not retryable: hand the answer to the client as is.
    Deliver,
    /// Retryable, for `cause`; the upstream asked to wait at least `floor_ms`.
    Retry {
        /// Why the attempt failed.
        cause: Cause,
        /// The upstream's retry-after hint, a floor for the wait.
        floor_ms: Option<u64>,
    },
}

impl Verdict {
    /// Whether the verdict asks for another attempt.
    #[must_use]
    pub fn is_retry(&self) -> bool {
        matches!(self, Verdict::Retry { .. })
    }
}

/// The longest `429` body read for its error code; the API's error bodies are a few hundred
/// bytes.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// Whether a `429` body is the API's spend-limit refusal (`error.details.error_code:
/// enforced_spend_limit_reached`): a spend cap, with no retry-after, that nothing will change
/// for hours. Such an answer is never retried and reaches the client unchanged with
/// `x-should-retry: false`. Anything unreadable is not one.
#[must_use]
pub fn is_spend_limit(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Body {
        error: Error,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        details: Option<Details>,
    }
    #[derive(serde::Deserialize)]
    struct Details {
        error_code: Option<String>,
    }
    serde_json::from_str::<Body>(&crate::json::as_text(body)).is_ok_and(|b| {
        b.error.details.and_then(|d| d.error_code).as_deref()
            == Some("enforced_spend_limit_reached")
    })
}

/// Classifies one attempt's outcome.
///
/// `x-should-retry` overrides the status table both ways, except that a `2xx` response is
/// always delivered: a success that already reached us (and was billed) is never thrown away.
/// For a stream whose first event is an error, `x-should-retry` likewise overrides the error
/// type table.
#[must_use]
pub fn classify(outcome: &Outcome) -> Verdict {
    match outcome {
        Outcome::Response {
            status,
            should_retry,
            wait_floor_ms,
        } => {
            let status = *status;
            if (200..300).contains(&status) {
                return Verdict::Deliver;
            }
            let retryable = should_retry.unwrap_or_else(|| RETRYABLE_STATUSES.contains(&status));
            if !retryable {
                return Verdict::Deliver;
            }
            let cause = match status {
                _ if is_overloaded(outcome) => Cause::Overloaded,
                429 => Cause::RateLimited,
                other => Cause::Transient(other),
            };
            Verdict::Retry {
                cause,
                floor_ms: *wait_floor_ms,
            }
        }
        Outcome::StreamError {
            error_type,
            should_retry,
            wait_floor_ms,
        } => {
            let error_type = error_type.as_str();
            let retryable =
                should_retry.unwrap_or_else(|| RETRYABLE_STREAM_ERRORS.contains(&error_type));
            if !retryable {
                return Verdict::Deliver;
            }
            let cause = if is_overloaded(outcome) {
                Cause::Overloaded
            } else {
                Cause::StreamError
            };
            Verdict::Retry {
                cause,
                floor_ms: *wait_floor_ms,
            }
        }
        Outcome::ConnectFailure => Verdict::Retry {
            cause: Cause::Unreachable,
            floor_ms: None,
        },
        Outcome::AttemptTimeout => Verdict::Retry {
            cause: Cause::Timeout,
            floor_ms: None,
        },
    }
}

#[cfg(test)]
mod spend_limit_tests {
    use super::*;

    #[test]
    fn spend_limit_bodies_are_recognised_and_nothing_else() {
        let spend = br#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
        assert!(is_spend_limit(spend));
        for other in [
            &br#"{"type":"error","error":{"type":"rate_limit_error","message":"rpm"}}"#[..],
            br#"{"type":"error","error":{"type":"rate_limit_error","details":{"error_code":"other"}}}"#,
            br#"{"type":"error","error":{"details":null}}"#,
            br#"{"error_code":"enforced_spend_limit_reached"}"#,
            b"enforced_spend_limit_reached",
            b"",
        ] {
            assert!(!is_spend_limit(other), "{}", String::from_utf8_lossy(other));
        }
    }

    const SPEND: &[u8] = br#"{"type":"error","error":{"type":"rate_limit_error","message":"spend limit","details":{"error_code":"enforced_spend_limit_reached"}}}"#;
    const RATE: &[u8] = br#"{"type":"error","error":{"type":"rate_limit_error","message":"rpm"}}"#;

    fn head(status: u16, should_retry: Option<bool>) -> Head {
        Head {
            status,
            should_retry,
            wait_floor_ms: Some(3_000),
        }
    }

    #[test]
    fn a_spend_limit_is_never_retried_whatever_the_upstream_says() {
        for said in [None, Some(true), Some(false)] {
            let outcome = head(429, said).outcome(Some(SPEND));
            assert_eq!(
                classify(&outcome),
                Verdict::Deliver,
                "x-should-retry {said:?}"
            );
        }
        // A rate limit's body, or a body not read, leaves the upstream's word and the table.
        let limited = Verdict::Retry {
            cause: Cause::RateLimited,
            floor_ms: Some(3_000),
        };
        assert_eq!(classify(&head(429, None).outcome(Some(RATE))), limited);
        assert_eq!(classify(&head(429, Some(true)).outcome(None)), limited);
        assert_eq!(
            classify(&head(429, Some(false)).outcome(Some(RATE))),
            Verdict::Deliver
        );
        // Only a `429` is a spend limit.
        assert_eq!(
            classify(&head(529, None).outcome(Some(SPEND))),
            Verdict::Retry {
                cause: Cause::Overloaded,
                floor_ms: Some(3_000)
            }
        );
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_spend_limit_reaches_the_client_with_x_should_retry_false_and_nothing_else_changes() {
        let upstream = pairs(&[
            ("content-type", "application/json"),
            ("X-Should-Retry", "true"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("request-id", "req_1"),
        ]);
        let spend = delivered_headers(429, &upstream, Some(SPEND));
        assert_eq!(
            spend,
            pairs(&[
                ("content-type", "application/json"),
                ("request-id", "req_1"),
                ("x-should-retry", "false"),
            ])
        );
        // Without a `x-should-retry` from the upstream, the proxy's is added.
        let spend = delivered_headers(429, &upstream[..1], Some(SPEND));
        assert_eq!(
            spend,
            pairs(&[
                ("content-type", "application/json"),
                ("x-should-retry", "false")
            ])
        );
        // A rate limit, a body not read, another status: the upstream's headers as they may
        // cross.
        let crossing = pairs(&[
            ("content-type", "application/json"),
            ("X-Should-Retry", "true"),
            ("request-id", "req_1"),
        ]);
        assert_eq!(delivered_headers(429, &upstream, Some(RATE)), crossing);
        assert_eq!(delivered_headers(429, &upstream, None), crossing);
        assert_eq!(delivered_headers(200, &upstream, Some(SPEND)), crossing);
    }

    #[test]
    fn a_head_reads_its_hints_in_any_case() {
        let headers = pairs(&[("X-Should-Retry", "FALSE"), ("Retry-After", "2")]);
        assert_eq!(
            Head::of(503, &headers, 0),
            Head {
                status: 503,
                should_retry: Some(false),
                wait_floor_ms: Some(2_000)
            }
        );
        let headers = pairs(&[("retry-after-ms", "150"), ("retry-after", "2")]);
        assert_eq!(Head::of(429, &headers, 0).wait_floor_ms, Some(150));
        assert_eq!(Head::of(200, &[], 0), head(200, None).no_floor());
    }

    impl Head {
        fn no_floor(self) -> Head {
            Head {
                wait_floor_ms: None,
                ..self
            }
        }
    }

    #[test]
    fn a_first_event_is_an_error_outcome_or_the_answer_itself() {
        assert_eq!(
            head(200, Some(true)).first_event_outcome(Some("overloaded_error".into())),
            Outcome::StreamError {
                error_type: "overloaded_error".into(),
                should_retry: Some(true),
                wait_floor_ms: Some(3_000)
            }
        );
        assert_eq!(
            head(200, None).first_event_outcome(None),
            Outcome::Response {
                status: 200,
                should_retry: None,
                wait_floor_ms: Some(3_000)
            }
        );
    }

    #[test]
    fn overload_is_a_529_or_a_stream_opening_with_overloaded_error() {
        assert!(is_overloaded(&head(529, Some(false)).outcome(None)));
        assert!(is_overloaded(
            &head(200, None).first_event_outcome(Some(OVERLOADED_ERROR.into()))
        ));
        for not in [
            head(429, None).outcome(None),
            head(503, None).outcome(None),
            head(200, None).outcome(None),
            head(200, None).first_event_outcome(Some("api_error".into())),
            head(200, None).first_event_outcome(Some("Overloaded_Error".into())),
            Outcome::ConnectFailure,
            Outcome::AttemptTimeout,
        ] {
            assert!(!is_overloaded(&not), "{not:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn response(status: u16, should_retry: Option<bool>) -> Outcome {
        Outcome::Response {
            status,
            should_retry,
            wait_floor_ms: None,
        }
    }

    fn stream(error_type: &str, should_retry: Option<bool>) -> Outcome {
        Outcome::StreamError {
            error_type: error_type.to_string(),
            should_retry,
            wait_floor_ms: None,
        }
    }

    fn retry(cause: Cause) -> Verdict {
        Verdict::Retry {
            cause,
            floor_ms: None,
        }
    }

    #[test]
    fn status_table_without_should_retry() {
        let table: &[(u16, Verdict)] = &[
            (529, retry(Cause::Overloaded)),
            (429, retry(Cause::RateLimited)),
            (408, retry(Cause::Transient(408))),
            (409, retry(Cause::Transient(409))),
            (500, retry(Cause::Transient(500))),
            (502, retry(Cause::Transient(502))),
            (503, retry(Cause::Transient(503))),
            (504, retry(Cause::Transient(504))),
            (200, Verdict::Deliver),
            (201, Verdict::Deliver),
            (204, Verdict::Deliver),
            (301, Verdict::Deliver),
            (400, Verdict::Deliver),
            (401, Verdict::Deliver),
            (403, Verdict::Deliver),
            (404, Verdict::Deliver),
            (413, Verdict::Deliver),
            (501, Verdict::Deliver),
            (505, Verdict::Deliver),
            (530, Verdict::Deliver),
        ];
        for &(status, expected) in table {
            assert_eq!(
                classify(&response(status, None)),
                expected,
                "status {status}"
            );
        }
    }

    #[test]
    fn should_retry_true_makes_any_error_status_retryable() {
        let table: &[(u16, Verdict)] = &[
            (529, retry(Cause::Overloaded)),
            (429, retry(Cause::RateLimited)),
            (500, retry(Cause::Transient(500))),
            (400, retry(Cause::Transient(400))),
            (401, retry(Cause::Transient(401))),
            (404, retry(Cause::Transient(404))),
            (501, retry(Cause::Transient(501))),
            (302, retry(Cause::Transient(302))),
        ];
        for &(status, expected) in table {
            assert_eq!(
                classify(&response(status, Some(true))),
                expected,
                "status {status}"
            );
        }
    }

    #[test]
    fn should_retry_true_never_retries_a_success() {
        for status in [200, 201, 204, 299] {
            assert_eq!(
                classify(&response(status, Some(true))),
                Verdict::Deliver,
                "{status}"
            );
        }
    }

    #[test]
    fn should_retry_false_makes_no_status_retryable() {
        for status in [529, 429, 408, 409, 500, 502, 503, 504, 200, 400] {
            assert_eq!(
                classify(&response(status, Some(false))),
                Verdict::Deliver,
                "{status}"
            );
        }
    }

    #[test]
    fn stream_error_table() {
        let table: &[(&str, Option<bool>, Verdict)] = &[
            ("overloaded_error", None, retry(Cause::Overloaded)),
            ("api_error", None, retry(Cause::StreamError)),
            ("rate_limit_error", None, Verdict::Deliver),
            ("invalid_request_error", None, Verdict::Deliver),
            ("authentication_error", None, Verdict::Deliver),
            ("", None, Verdict::Deliver),
            ("Overloaded_Error", None, Verdict::Deliver),
            ("overloaded_error", Some(false), Verdict::Deliver),
            ("api_error", Some(false), Verdict::Deliver),
            ("overloaded_error", Some(true), retry(Cause::Overloaded)),
            (
                "invalid_request_error",
                Some(true),
                retry(Cause::StreamError),
            ),
        ];
        for (error_type, should_retry, expected) in table {
            assert_eq!(
                classify(&stream(error_type, *should_retry)),
                *expected,
                "{error_type:?} x-should-retry {should_retry:?}"
            );
        }
    }

    #[test]
    fn connect_failure_and_timeout_are_retried() {
        assert_eq!(
            classify(&Outcome::ConnectFailure),
            retry(Cause::Unreachable)
        );
        assert_eq!(classify(&Outcome::AttemptTimeout), retry(Cause::Timeout));
    }

    #[test]
    fn retry_carries_the_upstream_floor() {
        let outcome = Outcome::Response {
            status: 429,
            should_retry: None,
            wait_floor_ms: Some(2500),
        };
        assert_eq!(
            classify(&outcome),
            Verdict::Retry {
                cause: Cause::RateLimited,
                floor_ms: Some(2500)
            }
        );
        let outcome = Outcome::StreamError {
            error_type: "overloaded_error".into(),
            should_retry: None,
            wait_floor_ms: Some(700),
        };
        assert_eq!(
            classify(&outcome),
            Verdict::Retry {
                cause: Cause::Overloaded,
                floor_ms: Some(700)
            }
        );
    }

    #[test]
    fn pass_through_causes() {
        assert!(Cause::Transient(500).passes_through());
        assert!(Cause::StreamError.passes_through());
        for cause in [
            Cause::Overloaded,
            Cause::RateLimited,
            Cause::Timeout,
            Cause::Unreachable,
        ] {
            assert!(!cause.passes_through(), "{cause}");
        }
    }

    #[test]
    fn cause_labels() {
        assert_eq!(Cause::Overloaded.to_string(), "overloaded");
        assert_eq!(Cause::RateLimited.to_string(), "rate_limited");
        assert_eq!(Cause::Timeout.to_string(), "timeout");
        assert_eq!(Cause::Unreachable.to_string(), "unreachable");
        assert_eq!(Cause::Transient(503).to_string(), "status_503");
        assert_eq!(Cause::StreamError.to_string(), "stream_error");
    }

    proptest! {
        #[test]
        fn should_retry_false_always_delivers(
            status in any::<u16>(),
            floor in proptest::option::of(any::<u64>()),
        ) {
            let outcome = Outcome::Response { status, should_retry: Some(false), wait_floor_ms: floor };
            prop_assert_eq!(classify(&outcome), Verdict::Deliver);
        }

        /// Every status, header and hint against the retry table stated independently: a
        /// success is delivered; otherwise `x-should-retry` decides, else the status list;
        /// 529 is overload, 429 a rate limit, the rest transient; the hint is the floor.
        #[test]
        fn responses_follow_the_table(
            status in prop_oneof![any::<u16>(), proptest::sample::select(RETRYABLE_STATUSES.to_vec())],
            should_retry in proptest::option::of(any::<bool>()),
            floor in proptest::option::of(any::<u64>()),
        ) {
            let retried = !(200..300).contains(&status)
                && should_retry.unwrap_or(matches!(status, 408 | 409 | 429 | 500 | 502 | 503 | 504 | 529));
            let expected = if retried {
                let cause = match status {
                    529 => Cause::Overloaded,
                    429 => Cause::RateLimited,
                    other => Cause::Transient(other),
                };
                Verdict::Retry { cause, floor_ms: floor }
            } else {
                Verdict::Deliver
            };
            let outcome = Outcome::Response { status, should_retry, wait_floor_ms: floor };
            prop_assert_eq!(classify(&outcome), expected);
        }

        /// A stream opening with an error: `x-should-retry` decides, else only overload and
        /// `api_error` are retried; overload keeps its own cause; the hint is the floor.
        #[test]
        fn stream_errors_follow_the_table(
            error_type in prop_oneof![Just("overloaded_error".to_string()), Just("api_error".to_string()), ".{0,20}"],
            should_retry in proptest::option::of(any::<bool>()),
            floor in proptest::option::of(any::<u64>()),
        ) {
            let retried = should_retry.unwrap_or(error_type == "overloaded_error" || error_type == "api_error");
            let expected = if retried {
                let cause = if error_type == "overloaded_error" { Cause::Overloaded } else { Cause::StreamError };
                Verdict::Retry { cause, floor_ms: floor }
            } else {
                Verdict::Deliver
            };
            let outcome = Outcome::StreamError { error_type, should_retry, wait_floor_ms: floor };
            prop_assert_eq!(classify(&outcome), expected);
        }
    }
}
