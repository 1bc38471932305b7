//! What an attempt reads of the upstream's answer before the runner decides on it, from the
//! answer's head alone.
//!
//! Some answers cannot be judged by their head: a `429` may be a spend limit (its body says
//! so), a streaming `200` may open with an `overloaded_error` event. The plan names the read
//! each needs; the shell only performs it, and [`Head`] turns what was read into the outcome.

use super::classify::Head;
use crate::stream::tap::MAX_JSON_BYTES;
use crate::stream::{exact_length, is_event_stream};

/// How a request's attempts read their answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// A streaming request: a `200` event stream is held until its first event.
    pub streaming: bool,
    /// A successful JSON answer of known length (at most [`MAX_JSON_BYTES`]) is read whole in
    /// its attempt, for its usage.
    pub json_whole: bool,
    /// How long a body the proxy reads whole (a `429`'s, a watched JSON answer's) may take
    /// after its head, within the attempt's own timeout: such a body comes with its head, and
    /// one that stalls must not hold a non-streaming attempt for its whole (long) timeout.
    pub body_ms: u64,
}

/// What to read of an answer before deciding on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Nothing: the body goes to the client as the runtime's own stream.
    Untouched,
    /// A `429`'s body, whole up to [`MAX_ERROR_BODY_BYTES`](super::MAX_ERROR_BODY_BYTES), to tell a spend limit from a rate
    /// limit.
    ErrorBody,
    /// A successful JSON answer of known length, whole, for its usage: a body cut before its
    /// end is then retried like a lost connection, since nothing of it reached the client.
    WholeJson,
    /// An event stream up to its first event, which may be a retryable error.
    FirstEvent,
}

/// The read an answer needs, and the facts its head gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlan {
    pub read: Read,
    pub head: Head,
}

impl ReadPlan {
    /// The plan for an answer with `status` and `headers`, arriving at `now_ms`.
    #[must_use]
    pub fn of(
        status: u16,
        headers: &[(String, String)],
        reading: Reading,
        now_ms: u64,
    ) -> ReadPlan {
        let is_sse = is_event_stream(headers);
        let read = if reading.streaming && status == 200 && is_sse {
            Read::FirstEvent
        } else if status == 429 && !is_sse {
            Read::ErrorBody
        } else if reading.json_whole
            && (200..300).contains(&status)
            && exact_length(headers).is_some_and(|length| length <= MAX_JSON_BYTES as u64)
        {
            Read::WholeJson
        } else {
            Read::Untouched
        };
        ReadPlan {
            read,
            head: Head::of(status, headers, now_ms),
        }
    }

    /// By when a body read whole must have come: [`Reading::body_ms`] after `now_ms`, and never
    /// past the attempt's own `deadline_ms`.
    #[must_use]
    pub fn body_deadline_ms(reading: Reading, deadline_ms: u64, now_ms: u64) -> u64 {
        deadline_ms.min(now_ms.saturating_add(reading.body_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{classify, Outcome, Verdict};

    const STREAMING: Reading = Reading {
        streaming: true,
        json_whole: false,
        body_ms: 5_000,
    };
    const WATCHED_JSON: Reading = Reading {
        streaming: false,
        json_whole: true,
        body_ms: 5_000,
    };
    const PLAIN: Reading = Reading {
        streaming: false,
        json_whole: false,
        body_ms: 5_000,
    };

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const SSE: (&str, &str) = ("Content-Type", "text/event-stream; charset=utf-8");
    const JSON: (&str, &str) = ("content-type", "application/json");

    fn read(status: u16, headers: &[(&str, &str)], reading: Reading) -> Read {
        ReadPlan::of(status, &h(headers), reading, 0).read
    }

    #[test]
    fn a_streaming_200_is_held_until_its_first_event_and_nothing_else_is() {
        assert_eq!(read(200, &[SSE], STREAMING), Read::FirstEvent);
        // Not asked to stream, another success, or not an event stream: not held.
        assert_eq!(read(200, &[SSE], PLAIN), Read::Untouched);
        assert_eq!(read(201, &[SSE], STREAMING), Read::Untouched);
        assert_eq!(read(200, &[JSON], STREAMING), Read::Untouched);
        assert_eq!(read(529, &[SSE], STREAMING), Read::Untouched);
    }

    #[test]
    fn a_429_body_is_read_to_tell_a_spend_limit_unless_it_is_a_stream() {
        for reading in [STREAMING, WATCHED_JSON, PLAIN] {
            assert_eq!(read(429, &[JSON], reading), Read::ErrorBody);
            assert_eq!(read(429, &[], reading), Read::ErrorBody);
            assert_eq!(read(429, &[SSE], reading), Read::Untouched);
        }
        for status in [400, 500, 503, 529] {
            assert_eq!(read(status, &[JSON], PLAIN), Read::Untouched, "{status}");
        }
    }

    #[test]
    fn a_watched_json_success_of_known_small_length_is_read_whole() {
        let length = MAX_JSON_BYTES.to_string();
        let over = (MAX_JSON_BYTES + 1).to_string();
        let sized = [JSON, ("content-length", length.as_str())];
        assert_eq!(read(200, &sized, WATCHED_JSON), Read::WholeJson);
        assert_eq!(read(204, &sized, WATCHED_JSON), Read::WholeJson);
        // Not watched, unknown or too large a length, encoded, or not a success: untouched.
        assert_eq!(read(200, &sized, PLAIN), Read::Untouched);
        assert_eq!(read(200, &[JSON], WATCHED_JSON), Read::Untouched);
        assert_eq!(
            read(200, &[JSON, ("content-length", &over)], WATCHED_JSON),
            Read::Untouched
        );
        assert_eq!(
            read(
                200,
                &[JSON, ("content-length", "10"), ("content-encoding", "gzip")],
                WATCHED_JSON
            ),
            Read::Untouched
        );
        assert_eq!(read(500, &sized, WATCHED_JSON), Read::Untouched);
    }

    #[test]
    fn the_plan_carries_the_heads_hints() {
        let plan = ReadPlan::of(
            429,
            &h(&[("x-should-retry", "true"), ("retry-after", "3")]),
            PLAIN,
            0,
        );
        assert_eq!(
            classify(&plan.head.outcome(None)),
            Verdict::Retry {
                cause: crate::retry::Cause::RateLimited,
                floor_ms: Some(3_000)
            }
        );
        let plan = ReadPlan::of(200, &h(&[SSE]), STREAMING, 0);
        assert_eq!(
            plan.head.first_event_outcome(Some("api_error".into())),
            Outcome::StreamError {
                error_type: "api_error".into(),
                should_retry: None,
                wait_floor_ms: None
            }
        );
    }

    #[test]
    fn a_body_read_whole_must_come_within_its_time_and_the_attempts() {
        assert_eq!(ReadPlan::body_deadline_ms(PLAIN, 100_000, 1_000), 6_000);
        assert_eq!(ReadPlan::body_deadline_ms(PLAIN, 3_000, 1_000), 3_000);
        let unbounded = Reading {
            body_ms: u64::MAX,
            ..PLAIN
        };
        assert_eq!(ReadPlan::body_deadline_ms(unbounded, 3_000, 1_000), 3_000);
    }
}
