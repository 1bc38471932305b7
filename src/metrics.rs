//! What one request was, as a metric: the Workers Analytics Engine data point the shell
//! writes when `METRICS` is bound, and the running tally of this isolate's answers that the
//! operator's view shows. Both come from the same [`RequestFacts`], so the panel and the SQL
//! an operator runs count the same things.
//!
//! The data point's layout is a contract with the operator's queries (see docs/operating.md):
//! `index1` the caller's keyed tag (`Config::caller_tag`); `blob1`…`blob7` route, model
//! asked, model served, answer kind, error type, tier, caller's tag; `double1`…`double9` status, attempts,
//! wait ms, total ms, input tokens, output tokens, upstream `529`s, upstream `429`s, stream.
//! Nothing in it is a key or a token.
//!
//! The request's log line ([`log_line`]) is made here too, from the same facts and the retry
//! journal: pure functions of a finished request, tested on the host, that the shell only
//! writes out.

use serde::Serialize;

use crate::error::{ProxyError, Scope, Source};
use crate::retry::runner::Journal;
use crate::upstream::Reply;

/// How a request was answered, in the words an operator counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerKind {
    /// A `2xx`.
    Success,
    /// The caller's own limit (`429`, `limit.scope: "key"`).
    CallerLimit,
    /// The upstream key's limit, outlasting the budget (`429`, `limit.scope: "upstream"`).
    UpstreamRateLimit,
    /// Overloaded upstream, or a full isolate (`503 overloaded_error`).
    Overloaded,
    /// Every attempt timed out (`504`).
    Timeout,
    /// The upstream could not be reached, or redirected (`502`).
    Unreachable,
    /// The request itself was refused (bad input, credential, origin, route, size).
    ClientError,
    /// The upstream's own error answer, passed through.
    UpstreamError,
    /// The proxy could not serve it (configuration, its objects).
    ProxyError,
}

impl AnswerKind {
    /// The kind of an answer with `status`, given the proxy's error when it made the answer.
    #[must_use]
    pub fn of(status: u16, error: Option<&ProxyError>) -> AnswerKind {
        let Some(error) = error else {
            return if (200..300).contains(&status) {
                AnswerKind::Success
            } else {
                AnswerKind::UpstreamError
            };
        };
        match error {
            ProxyError::RateLimited { limit, .. } => match limit.scope {
                Scope::Key => AnswerKind::CallerLimit,
                Scope::Upstream => AnswerKind::UpstreamRateLimit,
            },
            ProxyError::Overloaded { .. } | ProxyError::Busy { .. } => AnswerKind::Overloaded,
            ProxyError::UpstreamTimeout { .. } => AnswerKind::Timeout,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamRedirected(_) => {
                AnswerKind::Unreachable
            }
            // The rest is the client's or the proxy's, as the error says of itself.
            other => match other.source() {
                Source::Client => AnswerKind::ClientError,
                Source::Upstream => AnswerKind::UpstreamError,
                Source::Proxy => AnswerKind::ProxyError,
            },
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerKind::Success => "success",
            AnswerKind::CallerLimit => "caller_limit",
            AnswerKind::UpstreamRateLimit => "upstream_rate_limit",
            AnswerKind::Overloaded => "overloaded",
            AnswerKind::Timeout => "timeout",
            AnswerKind::Unreachable => "unreachable",
            AnswerKind::ClientError => "client_error",
            AnswerKind::UpstreamError => "upstream_error",
            AnswerKind::ProxyError => "proxy_error",
        }
    }
}

/// Everything a metric says about one request, once its answer is known.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestFacts {
    /// The route's name (`messages`, `count_tokens`, `models`, …; `unrouted` before routing).
    pub route: &'static str,
    pub model_asked: Option<String>,
    /// The model that answered (the one asked, unless a fallback served it).
    pub model_served: Option<String>,
    pub status: u16,
    pub kind: AnswerKind,
    /// The envelope's `error.type` of an answer the proxy made.
    pub error_type: Option<&'static str>,
    pub tier: Option<String>,
    /// The caller's fingerprint (never its key or token).
    pub caller: Option<String>,
    pub stream: bool,
    pub attempts: u32,
    pub wait_ms: u64,
    pub total_ms: u64,
    /// As the upstream reported them (input as Anthropic counts it against its limits).
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub upstream_overloaded: u32,
    pub upstream_rate_limited: u32,
    /// What the answer cost in micro-dollars, at the answering model's price (unknown: no
    /// price, or no usage).
    pub cost_micros: Option<u64>,
}

/// One Analytics Engine data point: one index, blobs and doubles in the documented order.
#[derive(Debug, Clone, PartialEq)]
pub struct DataPoint {
    pub index: String,
    pub blobs: Vec<String>,
    pub doubles: Vec<f64>,
}

/// Longest blob written, in bytes (Analytics Engine allows 16 KB for all blobs together).
const MAX_BLOB_BYTES: usize = 256;

fn blob(value: Option<&str>) -> String {
    let value = value.unwrap_or("");
    if value.len() <= MAX_BLOB_BYTES {
        return value.to_string();
    }
    let end = (0..=MAX_BLOB_BYTES)
        .rev()
        .find(|i| value.is_char_boundary(*i))
        .unwrap_or(0);
    value.get(..end).unwrap_or("").to_string()
}

/// The data point for one request. Unknown token counts are 0, so sums stay sums.
#[must_use]
pub fn data_point(facts: &RequestFacts) -> DataPoint {
    // Whole numbers far below 2^53: exact as doubles.
    let n = |v: u64| v as f64;
    DataPoint {
        index: blob(facts.caller.as_deref()),
        blobs: vec![
            blob(Some(facts.route)),
            blob(facts.model_asked.as_deref()),
            blob(facts.model_served.as_deref()),
            facts.kind.as_str().to_string(),
            blob(facts.error_type),
            blob(facts.tier.as_deref()),
            blob(facts.caller.as_deref()),
        ],
        doubles: vec![
            f64::from(facts.status),
            f64::from(facts.attempts),
            n(facts.wait_ms),
            n(facts.total_ms),
            n(facts.input_tokens.unwrap_or(0)),
            n(facts.output_tokens.unwrap_or(0)),
            f64::from(facts.upstream_overloaded),
            f64::from(facts.upstream_rate_limited),
            if facts.stream { 1.0 } else { 0.0 },
            n(facts.cost_micros.unwrap_or(0)),
        ],
    }
}

/// A request once its answer is known: what its log line says. The same [`RequestFacts`] as
/// its metrics, so a log line and a data point never disagree.
#[derive(Debug, Clone, Copy)]
pub struct FinishedRequest<'a> {
    /// The proxy's id for the request.
    pub request_id: &'a str,
    /// The upstream's `request-id`, when an attempt was answered.
    pub upstream_request_id: Option<&'a str>,
    pub facts: &'a RequestFacts,
    /// Attempts, waits, why retries stopped and what fallback did.
    pub journal: &'a Journal,
}

/// The request's log line, one JSON object (its fields are documented in docs/operating.md):
/// `request_id`, `upstream_request_id`?, `route`, `identity`? (the caller's keyed tag),
/// `status`, `error_type`?, `stream`, `attempts`, `waits` (`[{"ms", "cause"}]`), `stopped`?,
/// `model`? (the one that answered), `fallback`? (`{"from", "to", "why", "tried": [{"model",
/// "ended"}]}`, `to` null when no fallback answered), `total_ms`. Fields marked `?` are left
/// out when unknown.
#[must_use]
pub fn log_line(request: &FinishedRequest<'_>) -> String {
    #[derive(Serialize)]
    struct Line<'a> {
        request_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        upstream_request_id: Option<&'a str>,
        route: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        identity: Option<&'a str>,
        status: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        error_type: Option<&'a str>,
        stream: bool,
        attempts: u32,
        waits: Vec<LoggedWait>,
        #[serde(skip_serializing_if = "Option::is_none")]
        stopped: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fallback: Option<LoggedFallback<'a>>,
        total_ms: u64,
    }
    #[derive(Serialize)]
    struct LoggedWait {
        ms: u64,
        cause: String,
    }
    #[derive(Serialize)]
    struct LoggedFallback<'a> {
        from: &'a str,
        to: Option<&'a str>,
        why: String,
        tried: Vec<LoggedTry<'a>>,
    }
    #[derive(Serialize)]
    struct LoggedTry<'a> {
        model: &'a str,
        ended: &'a str,
    }
    let (facts, journal) = (request.facts, request.journal);
    let line = Line {
        request_id: request.request_id,
        upstream_request_id: request.upstream_request_id,
        route: facts.route,
        identity: facts.caller.as_deref(),
        status: facts.status,
        error_type: facts.error_type,
        stream: facts.stream,
        attempts: journal.attempts,
        waits: journal
            .waits
            .iter()
            .map(|w| LoggedWait {
                ms: w.ms,
                cause: w.cause.to_string(),
            })
            .collect(),
        stopped: journal.stopped.map(|s| s.to_string()),
        model: facts.model_served.as_deref(),
        fallback: journal.fallback.as_ref().map(|f| LoggedFallback {
            from: &f.from,
            to: f.to.as_deref(),
            why: f.why.to_string(),
            tried: f
                .tried
                .iter()
                .map(|t| LoggedTry {
                    model: &t.model,
                    ended: &t.ended,
                })
                .collect(),
        }),
        total_ms: facts.total_ms,
    };
    // Strings, integers and booleans only: encoding cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

/// A one-line JSON event for the log, `{"event": <event>, ...}` with string fields, keys in
/// alphabetical order (the order these lines have always had). Written without building a
/// JSON tree: the module carries no code for one.
#[must_use]
pub fn event_line(event: &str, fields: &[(&str, &str)]) -> String {
    written_line(event, fields, None)
}

/// [`event_line`] with one field more whose value is a count, written as a JSON number.
#[must_use]
pub fn event_line_counting(event: &str, fields: &[(&str, &str)], count: (&str, u64)) -> String {
    written_line(event, fields, Some(count))
}

fn written_line(event: &str, fields: &[(&str, &str)], count: Option<(&str, u64)>) -> String {
    // A handful of fields: placed in order as they come (a general sort is kilobytes of
    // module for nothing). A count's value is kept as text, and written unquoted.
    let counted = count.map(|(key, n)| (key, n.to_string()));
    let mut pairs: Vec<(&str, &str, bool)> = Vec::with_capacity(fields.len() + 2);
    let text = std::iter::once(("event", event)).chain(fields.iter().copied());
    let all = text
        .map(|(key, value)| (key, value, true))
        .chain(counted.iter().map(|(key, n)| (*key, n.as_str(), false)));
    for pair in all {
        let at = pairs
            .iter()
            .position(|placed| placed.0 > pair.0)
            .unwrap_or(pairs.len());
        pairs.insert(at, pair);
    }
    let mut line = String::from("{");
    for (i, (key, value, quoted)) in pairs.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_json_string(&mut line, key);
        line.push(':');
        if *quoted {
            push_json_string(&mut line, value);
        } else {
            line.push_str(value);
        }
    }
    line.push('}');
    line
}

/// `text` as a JSON string, escaped as `serde_json` escapes it.
fn push_json_string(out: &mut String, text: &str) {
    // A string always encodes.
    out.push_str(&serde_json::to_string(text).unwrap_or_default());
}

/// Answers by kind, counted since the isolate started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AnswerCounts {
    pub success: u64,
    pub caller_limit: u64,
    pub upstream_rate_limit: u64,
    pub overloaded: u64,
    pub timeout: u64,
    pub unreachable: u64,
    pub client_error: u64,
    pub upstream_error: u64,
    pub proxy_error: u64,
}

impl AnswerCounts {
    fn count(&mut self, kind: AnswerKind) {
        let slot = match kind {
            AnswerKind::Success => &mut self.success,
            AnswerKind::CallerLimit => &mut self.caller_limit,
            AnswerKind::UpstreamRateLimit => &mut self.upstream_rate_limit,
            AnswerKind::Overloaded => &mut self.overloaded,
            AnswerKind::Timeout => &mut self.timeout,
            AnswerKind::Unreachable => &mut self.unreachable,
            AnswerKind::ClientError => &mut self.client_error,
            AnswerKind::UpstreamError => &mut self.upstream_error,
            AnswerKind::ProxyError => &mut self.proxy_error,
        };
        *slot = slot.saturating_add(1);
    }
}

/// This isolate's requests so far: cumulative counters (a reader takes differences over
/// time for rates) and the requests in progress now. One isolate's view: a deployment runs
/// many, and the fleet's figures are in Analytics Engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EdgeTally {
    /// When the isolate started counting (ms since the Unix epoch).
    pub since_ms: u64,
    /// Requests answered.
    pub requests: u64,
    /// Requests begun and not yet answered (waiting, paced or in an attempt).
    pub in_flight: u64,
    pub answers: AnswerCounts,
    /// Attempts sent upstream.
    pub attempts: u64,
    /// Attempts the upstream answered overloaded (`529`) and rate-limited (`429`), counted
    /// as they come.
    pub upstream_overloaded: u64,
    pub upstream_rate_limited: u64,
    /// Waits begun (a backoff, a cooldown, an overload, a send time), and those going on now.
    pub waits: u64,
    pub waiting: u64,
    /// Answered requests that waited at least once, and the time they waited in all.
    pub waited: u64,
    pub wait_ms: u64,
    /// The isolate's WebAssembly memory, in bytes, when the status was read (it only grows:
    /// its high-water mark).
    pub wasm_memory_bytes: u64,
}

impl EdgeTally {
    #[must_use]
    pub fn starting(now_ms: u64) -> EdgeTally {
        EdgeTally {
            since_ms: now_ms,
            ..EdgeTally::default()
        }
    }

    /// A request began.
    pub fn begin(&mut self) {
        self.in_flight = self.in_flight.saturating_add(1);
    }

    pub fn wait_started(&mut self) {
        self.waits = self.waits.saturating_add(1);
        self.waiting = self.waiting.saturating_add(1);
    }

    pub fn wait_ended(&mut self) {
        self.waiting = self.waiting.saturating_sub(1);
    }

    /// An attempt's answer, as it comes: overloads and rate limits are counted.
    pub fn count_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Overloaded => {
                self.upstream_overloaded = self.upstream_overloaded.saturating_add(1);
            }
            Reply::RateLimited { .. } => {
                self.upstream_rate_limited = self.upstream_rate_limited.saturating_add(1);
            }
            Reply::Success | Reply::OtherFailure => {}
        }
    }

    /// A request that began ended without counting as traffic (the operator's own polling).
    pub fn end_uncounted(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A request that began was answered.
    pub fn record(&mut self, facts: &RequestFacts) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.requests = self.requests.saturating_add(1);
        self.answers.count(facts.kind);
        self.attempts = self.attempts.saturating_add(u64::from(facts.attempts));
        if facts.wait_ms > 0 {
            self.waited = self.waited.saturating_add(1);
            self.wait_ms = self.wait_ms.saturating_add(facts.wait_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::LimitInfo;

    fn facts() -> RequestFacts {
        RequestFacts {
            route: "messages",
            model_asked: Some("claude-sonnet-4-6".into()),
            model_served: Some("claude-sonnet-4-6".into()),
            status: 200,
            kind: AnswerKind::Success,
            error_type: None,
            tier: Some("default".into()),
            caller: Some("0123456789abcdef0123456789abcdef".into()),
            stream: true,
            attempts: 2,
            wait_ms: 340,
            total_ms: 1_250,
            input_tokens: Some(1_200),
            output_tokens: Some(64),
            upstream_overloaded: 1,
            upstream_rate_limited: 0,
            cost_micros: Some(4_560),
        }
    }

    #[test]
    fn the_data_point_follows_the_documented_layout() {
        let point = data_point(&facts());
        assert_eq!(point.index, "0123456789abcdef0123456789abcdef");
        assert_eq!(
            point.blobs,
            [
                "messages",
                "claude-sonnet-4-6",
                "claude-sonnet-4-6",
                "success",
                "",
                "default",
                "0123456789abcdef0123456789abcdef"
            ]
        );
        assert_eq!(
            point.doubles,
            [200.0, 2.0, 340.0, 1_250.0, 1_200.0, 64.0, 1.0, 0.0, 1.0, 4_560.0]
        );
    }

    #[test]
    fn unknowns_are_empty_or_zero_and_long_values_are_cut_on_a_character() {
        let long = format!("{}é", "m".repeat(MAX_BLOB_BYTES - 1));
        let point = data_point(&RequestFacts {
            route: "unrouted",
            model_asked: Some(long),
            model_served: None,
            status: 404,
            kind: AnswerKind::ClientError,
            error_type: Some("not_found_error"),
            tier: None,
            caller: None,
            stream: false,
            attempts: 0,
            wait_ms: 0,
            total_ms: 1,
            input_tokens: None,
            output_tokens: None,
            upstream_overloaded: 0,
            upstream_rate_limited: 0,
            cost_micros: None,
        });
        assert_eq!(point.index, "");
        assert_eq!(point.blobs[1], "m".repeat(MAX_BLOB_BYTES - 1));
        assert_eq!(point.blobs[2], "");
        assert_eq!(point.blobs[3], "client_error");
        assert_eq!(point.blobs[4], "not_found_error");
        assert_eq!(&point.doubles[4..6], &[0.0, 0.0]);
        assert_eq!(point.doubles[8], 0.0);
        assert_eq!(point.doubles[9], 0.0);
    }

    /// A request that waited, retried, left its model and was answered by a fallback.
    fn journey() -> Journal {
        use crate::retry::fallback::{FallbackRecord, Tried, Why};
        use crate::retry::runner::{Stop, Wait, WaitCause};
        use crate::retry::{Cause, StopReason};
        use crate::upstream::WaitReason;
        Journal {
            attempts: 3,
            waits: vec![
                Wait {
                    ms: 300,
                    cause: WaitCause::Backoff(Cause::Overloaded),
                },
                Wait {
                    ms: 40,
                    cause: WaitCause::Shared(WaitReason::Queued),
                },
            ],
            stopped: Some(Stop::Retries(StopReason::AttemptsExhausted)),
            consulted: true,
            fallback: Some(FallbackRecord {
                from: "claude-opus-4-7".into(),
                why: Why::Overloaded,
                to: Some("claude-sonnet-4-6".into()),
                tried: vec![Tried {
                    model: "claude-opus-4-7".into(),
                    ended: "attempts_exhausted".into(),
                }],
            }),
            upstream_overloaded: 2,
            upstream_rate_limited: 0,
        }
    }

    #[test]
    fn the_log_line_says_the_whole_journey_with_its_documented_names() {
        let journal = journey();
        let line = log_line(&FinishedRequest {
            request_id: "req_proxy_1",
            upstream_request_id: Some("req_upstream_1"),
            facts: &facts(),
            journal: &journal,
        });
        let expected = concat!(
            r#"{"request_id":"req_proxy_1","upstream_request_id":"req_upstream_1","#,
            r#""route":"messages","identity":"0123456789abcdef0123456789abcdef","#,
            r#""status":200,"stream":true,"attempts":3,"#,
            r#""waits":[{"ms":300,"cause":"overloaded"},{"ms":40,"cause":"fair_turn"}],"#,
            r#""stopped":"attempts_exhausted","model":"claude-sonnet-4-6","#,
            r#""fallback":{"from":"claude-opus-4-7","to":"claude-sonnet-4-6","why":"overloaded","#,
            r#""tried":[{"model":"claude-opus-4-7","ended":"attempts_exhausted"}]},"#,
            r#""total_ms":1250}"#
        );
        assert_eq!(line, expected);
    }

    #[test]
    fn the_log_line_leaves_out_what_is_unknown_but_always_lists_the_waits() {
        let refused = RequestFacts {
            route: "unrouted",
            model_asked: None,
            model_served: None,
            status: 401,
            kind: AnswerKind::ClientError,
            error_type: Some("authentication_error"),
            tier: None,
            caller: None,
            stream: false,
            attempts: 0,
            wait_ms: 0,
            total_ms: 2,
            input_tokens: None,
            output_tokens: None,
            upstream_overloaded: 0,
            upstream_rate_limited: 0,
            cost_micros: None,
        };
        let line = log_line(&FinishedRequest {
            request_id: "req_proxy_2",
            upstream_request_id: None,
            facts: &refused,
            journal: &Journal::default(),
        });
        assert_eq!(
            line,
            concat!(
                r#"{"request_id":"req_proxy_2","route":"unrouted","status":401,"#,
                r#""error_type":"authentication_error","stream":false,"attempts":0,"#,
                r#""waits":[],"total_ms":2}"#
            )
        );
        // A fallback that found no model says so with a null `to`.
        let mut journal = journey();
        if let Some(fallback) = journal.fallback.as_mut() {
            fallback.to = None;
        }
        let line = log_line(&FinishedRequest {
            request_id: "r",
            upstream_request_id: None,
            facts: &refused,
            journal: &journal,
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["fallback"]["to"].is_null());
        assert_eq!(v["fallback"]["from"], "claude-opus-4-7");
    }

    #[test]
    fn an_event_line_is_the_json_it_always_was() {
        let line = event_line(
            "object_call_failed",
            &[
                ("object", "rate limiter"),
                ("error", "did not answer"),
                ("cause", "reset \"mid-call\"\n"),
            ],
        );
        assert_eq!(
            line,
            r#"{"cause":"reset \"mid-call\"\n","error":"did not answer","event":"object_call_failed","object":"rate limiter"}"#
        );
        // The same text as the JSON tree these lines were built from before.
        let tree = serde_json::json!({
            "event": "object_call_failed",
            "object": "rate limiter",
            "error": "did not answer",
            "cause": "reset \"mid-call\"\n",
        });
        assert_eq!(line, tree.to_string());
        assert_eq!(event_line("e", &[]), r#"{"event":"e"}"#);
    }

    #[test]
    fn a_counted_event_line_is_the_json_it_always_was() {
        let line = event_line_counting(
            "settle_failed",
            &[("identity", "c_1"), ("error", "returns not delivered")],
            ("items", 12),
        );
        assert_eq!(
            line,
            r#"{"error":"returns not delivered","event":"settle_failed","identity":"c_1","items":12}"#
        );
        let tree = serde_json::json!({
            "event": "settle_failed",
            "identity": "c_1",
            "error": "returns not delivered",
            "items": 12,
        });
        assert_eq!(line, tree.to_string());
    }

    #[test]
    fn answers_are_told_apart_by_who_refused_them() {
        let limited = |scope| ProxyError::RateLimited {
            retry_after_ms: 1_000,
            message: String::new(),
            limit: LimitInfo {
                scope,
                dimension: None,
                limit: None,
                remaining: None,
            },
            limit_headers: Vec::new(),
        };
        let kind = |status, e: &ProxyError| AnswerKind::of(status, Some(e));
        assert_eq!(AnswerKind::of(200, None), AnswerKind::Success);
        assert_eq!(AnswerKind::of(400, None), AnswerKind::UpstreamError);
        assert_eq!(kind(429, &limited(Scope::Key)), AnswerKind::CallerLimit);
        assert_eq!(
            kind(429, &limited(Scope::Upstream)),
            AnswerKind::UpstreamRateLimit
        );
        let overloaded = ProxyError::Overloaded {
            retry_after_ms: 1_000,
        };
        assert_eq!(kind(503, &overloaded), AnswerKind::Overloaded);
        let timeout = ProxyError::UpstreamTimeout {
            retry_after_ms: 1_000,
        };
        assert_eq!(kind(504, &timeout), AnswerKind::Timeout);
        assert_eq!(kind(404, &ProxyError::NotFound), AnswerKind::ClientError);
        let down = ProxyError::Unavailable("rate limiter did not answer".into());
        assert_eq!(kind(503, &down), AnswerKind::ProxyError);
    }

    #[test]
    fn the_tally_counts_answers_attempts_and_waits() {
        let mut tally = EdgeTally::starting(5);
        tally.begin();
        tally.begin();
        assert_eq!(tally.in_flight, 2);
        tally.record(&facts());
        let refused = RequestFacts {
            kind: AnswerKind::CallerLimit,
            status: 429,
            attempts: 0,
            wait_ms: 0,
            upstream_overloaded: 0,
            ..facts()
        };
        tally.record(&refused);
        assert_eq!(tally.in_flight, 0);
        assert_eq!(tally.requests, 2);
        assert_eq!(tally.answers.success, 1);
        assert_eq!(tally.answers.caller_limit, 1);
        assert_eq!(tally.attempts, 2);
        tally.count_reply(Reply::Overloaded);
        tally.count_reply(Reply::RateLimited {
            retry_after_ms: None,
        });
        tally.count_reply(Reply::Success);
        assert_eq!(
            (tally.upstream_overloaded, tally.upstream_rate_limited),
            (1, 1)
        );
        tally.wait_started();
        tally.wait_started();
        tally.wait_ended();
        assert_eq!((tally.waits, tally.waiting), (2, 1));
        assert_eq!((tally.waited, tally.wait_ms), (1, 340));
        assert_eq!(tally.since_ms, 5);
        // Never below zero, whatever the order.
        tally.record(&refused);
        assert_eq!(tally.in_flight, 0);
        tally.begin();
        tally.end_uncounted();
        assert_eq!((tally.in_flight, tally.requests), (0, 3));
    }
}
