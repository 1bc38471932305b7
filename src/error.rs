//! One error type for everything the proxy answers itself, mapped to HTTP in one place.
//!
//! Each variant knows its status, its Anthropic `error.type`, who caused it and whether a
//! retry can help, so the official SDKs parse our answers exactly like the API's own errors.
//! Denials carry their retry-after as data; [`ProxyError::answer`] turns them into the
//! structured response of the contract. On the OpenAI-compatible route the same answer wears
//! the OpenAI envelope ([`ProxyError::openai_answer`]), so the `openai` SDKs raise the right
//! exception from it: status and headers are the same, only the body's shape differs.

use serde::Serialize;

use crate::config::ConfigError;

/// Who an error came from: tells logs apart and decides `x-should-retry` defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Client,
    Upstream,
    Proxy,
}

/// Whose limit a rate-limit answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Key,
    Upstream,
}

/// The limit named in a structured retry-after answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitInfo {
    pub scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dimension: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
}

impl LimitInfo {
    /// A limit of the upstream key, whose figures the proxy does not pass on.
    #[must_use]
    pub fn upstream() -> LimitInfo {
        LimitInfo {
            scope: Scope::Upstream,
            dimension: None,
            limit: None,
            remaining: None,
        }
    }
}

/// Everything the proxy answers itself, from a bad request to an upstream that stayed
/// overloaded. The core's give-ups, refusals and denials convert into it (`From`), and
/// [`ProxyError::answer`] is the one place that turns it into a status, an Anthropic error
/// type, headers and the envelope. Where a failure has a cause (a configuration error, an
/// unreachable object), the variant keeps it for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// The body or a parameter is unusable.
    InvalidRequest(String),
    /// No credential, or one the proxy does not accept.
    Unauthenticated(String),
    /// A browser origin that is not in `ALLOWED_ORIGINS`.
    OriginNotAllowed,
    /// A route the proxy does not serve.
    NotFound,
    /// A known route with the wrong method; carries the methods that are allowed.
    MethodNotAllowed(&'static str),
    /// A body above `MAX_BODY_BYTES`.
    TooLarge { limit: u64 },
    /// A body that stopped arriving, or came slower than `MIN_BODY_BYTES_PER_S` once
    /// `BODY_READ_TIMEOUT_MS` had passed.
    BodyTimeout,
    /// A rate limit, the caller's own or the upstream's, that outlasts the request's budget.
    RateLimited {
        retry_after_ms: u64,
        message: String,
        limit: LimitInfo,
        /// The caller's own `RateLimit` headers as its object answered the refusal (none for
        /// the upstream's limits): a refusal carries its headers itself.
        limit_headers: Vec<(&'static str, String)>,
    },
    /// The upstream stayed overloaded until attempts or budget ran out.
    Overloaded { retry_after_ms: u64 },
    /// Every attempt timed out.
    UpstreamTimeout { retry_after_ms: u64 },
    /// The upstream could not be reached.
    UpstreamUnreachable { retry_after_ms: u64 },
    /// The upstream answered with a redirect (its status), which the proxy never follows:
    /// the upstream key would go along to wherever `Location` points.
    UpstreamRedirected(u16),
    /// This isolate already holds as many request bodies as `MAX_INFLIGHT_BODY_BYTES` allows.
    Busy { retry_after_ms: u64 },
    /// The deployment's configuration is unusable.
    Misconfigured(ConfigError),
    /// A variable that this kind of caller needs is missing.
    MissingSecret(&'static str),
    /// A part of the proxy (e.g. the rate limiter) did not answer; worth retrying shortly.
    Unavailable(String),
    /// Something inside the proxy failed.
    Internal(String),
}

/// How soon a part of the proxy that did not answer is worth asking again.
const UNAVAILABLE_RETRY_AFTER_MS: u64 = 1_000;

/// A finished error answer: what the shell turns into a `Response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: EnvelopeError<'a>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a LimitInfo>,
}

/// The OpenAI error envelope: `{"error": {"message", "type", "param", "code"}}`, with the
/// proxy's retry-after and limit beside it as in the Anthropic one.
#[derive(Serialize)]
struct OpenAiEnvelope<'a> {
    error: OpenAiError<'a>,
    request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a LimitInfo>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: &'static str,
}

#[derive(Serialize)]
struct EnvelopeError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

impl std::fmt::Display for ProxyError {
    /// The message of the envelope.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::InvalidRequest(_) => 400,
            ProxyError::Unauthenticated(_) => 401,
            ProxyError::OriginNotAllowed => 403,
            ProxyError::NotFound => 404,
            ProxyError::MethodNotAllowed(_) => 405,
            ProxyError::TooLarge { .. } => 413,
            ProxyError::BodyTimeout => 408,
            ProxyError::RateLimited { .. } => 429,
            ProxyError::Misconfigured(_)
            | ProxyError::MissingSecret(_)
            | ProxyError::Internal(_) => 500,
            ProxyError::UpstreamUnreachable { .. } | ProxyError::UpstreamRedirected(_) => 502,
            ProxyError::Unavailable(_) => 503,
            ProxyError::Overloaded { .. } | ProxyError::Busy { .. } => 503,
            ProxyError::UpstreamTimeout { .. } => 504,
        }
    }

    /// The Anthropic `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ProxyError::InvalidRequest(_) => "invalid_request_error",
            ProxyError::MethodNotAllowed(_) => "invalid_request_error",
            ProxyError::Unauthenticated(_) => "authentication_error",
            ProxyError::OriginNotAllowed => "permission_error",
            ProxyError::NotFound => "not_found_error",
            ProxyError::TooLarge { .. } => "request_too_large",
            ProxyError::BodyTimeout => "request_timeout",
            ProxyError::RateLimited { .. } => "rate_limit_error",
            ProxyError::Overloaded { .. } | ProxyError::Busy { .. } => "overloaded_error",
            ProxyError::UpstreamTimeout { .. } => "timeout_error",
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamRedirected(_)
            | ProxyError::Unavailable(_)
            | ProxyError::Misconfigured(_)
            | ProxyError::MissingSecret(_)
            | ProxyError::Internal(_) => "api_error",
        }
    }

    pub fn source(&self) -> Source {
        match self {
            ProxyError::InvalidRequest(_)
            | ProxyError::Unauthenticated(_)
            | ProxyError::OriginNotAllowed
            | ProxyError::NotFound
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::TooLarge { .. }
            | ProxyError::BodyTimeout => Source::Client,
            ProxyError::RateLimited { limit, .. } => match limit.scope {
                Scope::Key => Source::Client,
                Scope::Upstream => Source::Upstream,
            },
            ProxyError::Overloaded { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamRedirected(_) => Source::Upstream,
            ProxyError::Busy { .. }
            | ProxyError::Misconfigured(_)
            | ProxyError::MissingSecret(_)
            | ProxyError::Unavailable(_)
            | ProxyError::Internal(_) => Source::Proxy,
        }
    }

    /// When the caller may try again, for the answers where waiting helps.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after_ms, .. }
            | ProxyError::Overloaded { retry_after_ms }
            | ProxyError::UpstreamTimeout { retry_after_ms }
            | ProxyError::UpstreamUnreachable { retry_after_ms }
            | ProxyError::Busy { retry_after_ms } => Some(*retry_after_ms),
            ProxyError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_MS),
            _ => None,
        }
    }

    /// The `x-should-retry` the SDKs obey: true exactly when waiting can change the answer.
    pub fn should_retry(&self) -> bool {
        self.retry_after_ms().is_some() && !self.is_exhausted_quota()
    }

    /// A daily or monthly quota of the caller's refused it: its `Retry-After` is the window's
    /// end, hours or days away, which no client should sit out.
    fn is_exhausted_quota(&self) -> bool {
        matches!(self, ProxyError::RateLimited { limit, .. }
            if limit.scope == Scope::Key
                && limit.dimension.as_deref().is_some_and(crate::limits::quota::is_quota_dimension))
    }

    pub fn message(&self) -> String {
        match self {
            ProxyError::InvalidRequest(m) | ProxyError::Unauthenticated(m) => m.clone(),
            ProxyError::OriginNotAllowed => {
                "this origin is not allowed to call the proxy (see ALLOWED_ORIGINS)".to_string()
            }
            ProxyError::NotFound => "not found: this proxy serves /v1/messages, \
                /v1/messages/count_tokens, /v1/messages/batches, /v1/models, /v1/files, \
                /v1/chat/completions and /healthz"
                .to_string(),
            ProxyError::MethodNotAllowed(allowed) => {
                format!("method not allowed on this route; use {allowed}")
            }
            ProxyError::TooLarge { limit } => {
                format!("request body is larger than the proxy's limit of {limit} bytes")
            }
            ProxyError::BodyTimeout => "the request body did not arrive in time (see \
                BODY_READ_TIMEOUT_MS and MIN_BODY_BYTES_PER_S)"
                .to_string(),
            ProxyError::RateLimited { message, .. } => message.clone(),
            ProxyError::Overloaded { retry_after_ms } => {
                format!("the upstream is overloaded; {}", retry_in(*retry_after_ms))
            }
            ProxyError::UpstreamTimeout { retry_after_ms } => format!(
                "the upstream did not answer in time; {}",
                retry_in(*retry_after_ms)
            ),
            ProxyError::UpstreamUnreachable { retry_after_ms } => format!(
                "the upstream could not be reached; {}",
                retry_in(*retry_after_ms)
            ),
            ProxyError::UpstreamRedirected(status) => format!(
                "the upstream answered with a redirect ({status}), which the proxy does not follow"
            ),
            ProxyError::Busy { retry_after_ms } => format!(
                "the proxy is holding too many request bodies at once; {}",
                retry_in(*retry_after_ms)
            ),
            ProxyError::Misconfigured(e) => e.public_message(),
            ProxyError::MissingSecret(name) => {
                format!("the proxy is misconfigured: {name} is not set")
            }
            ProxyError::Unavailable(m) => format!("{m}; {}", retry_in(UNAVAILABLE_RETRY_AFTER_MS)),
            ProxyError::Internal(m) => format!("internal proxy error: {m}"),
        }
    }

    /// The OpenAI `error.type` and `error.code` of this error, as OpenAI's own API names the
    /// same failures (the SDKs pick the exception by status; these are for the caller's code).
    pub fn openai_type_and_code(&self) -> (&'static str, &'static str) {
        match self {
            ProxyError::InvalidRequest(_) => ("invalid_request_error", "invalid_request"),
            ProxyError::MethodNotAllowed(_) => ("invalid_request_error", "method_not_allowed"),
            ProxyError::Unauthenticated(_) => ("invalid_request_error", "invalid_api_key"),
            ProxyError::OriginNotAllowed => ("invalid_request_error", "origin_not_allowed"),
            ProxyError::NotFound => ("invalid_request_error", "not_found"),
            ProxyError::TooLarge { .. } => ("invalid_request_error", "request_too_large"),
            ProxyError::BodyTimeout => ("invalid_request_error", "request_timeout"),
            ProxyError::RateLimited { .. } => ("requests", "rate_limit_exceeded"),
            ProxyError::Overloaded { .. } | ProxyError::Busy { .. } => {
                ("server_error", "overloaded")
            }
            ProxyError::UpstreamTimeout { .. } => ("server_error", "timeout"),
            ProxyError::UpstreamUnreachable { .. }
            | ProxyError::UpstreamRedirected(_)
            | ProxyError::Unavailable(_)
            | ProxyError::Misconfigured(_)
            | ProxyError::MissingSecret(_)
            | ProxyError::Internal(_) => ("server_error", "server_error"),
        }
    }

    /// The complete answer in the OpenAI envelope: the same status and headers as
    /// [`ProxyError::answer`] (`Retry-After` on a 429, so the `openai` SDKs raise
    /// `RateLimitError` and honour the wait).
    pub fn openai_answer(&self, request_id: &str) -> ErrorAnswer {
        let mut answer = self.answer(request_id);
        let message = self.message();
        let (kind, code) = self.openai_type_and_code();
        let envelope = OpenAiEnvelope {
            error: OpenAiError {
                message: &message,
                kind,
                param: None,
                code,
            },
            request_id,
            retry_after_ms: self.retry_after_ms(),
            limit: match self {
                ProxyError::RateLimited { limit, .. } => Some(limit),
                _ => None,
            },
        };
        if let Ok(body) = serde_json::to_string(&envelope) {
            answer.body = body;
        }
        answer
    }

    /// The complete answer: status, headers and the Anthropic envelope.
    pub fn answer(&self, request_id: &str) -> ErrorAnswer {
        let message = self.message();
        let retry_after_ms = self.retry_after_ms();
        let limit = match self {
            ProxyError::RateLimited { limit, .. } => Some(limit),
            _ => None,
        };
        let envelope = Envelope {
            kind: "error",
            error: EnvelopeError {
                kind: self.error_type(),
                message: &message,
            },
            request_id,
            retry_after_ms,
            limit,
        };
        // Serializing plain strings and integers cannot fail; keep a fixed answer regardless.
        let body = serde_json::to_string(&envelope).unwrap_or_else(|_| {
            r#"{"type":"error","error":{"type":"api_error","message":"internal proxy error"}}"#
                .to_string()
        });
        let mut headers = vec![
            ("content-type", "application/json".to_string()),
            ("request-id", request_id.to_string()),
            ("x-should-retry", self.should_retry().to_string()),
        ];
        if let Some(ms) = retry_after_ms {
            headers.push(("retry-after", whole_seconds(ms).to_string()));
            headers.push(("retry-after-ms", ms.to_string()));
        }
        if let ProxyError::MethodNotAllowed(allowed) = self {
            headers.push(("allow", (*allowed).to_string()));
        }
        if let ProxyError::RateLimited { limit_headers, .. } = self {
            headers.extend(limit_headers.iter().cloned());
        }
        ErrorAnswer {
            status: self.status(),
            headers,
            body,
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, at least 1, so a client that waits exactly
/// that long never comes back early.
pub fn whole_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// The wait as a message says it, e.g. `retry in 12 s`: the [`whole_seconds`] of the answer's
/// `Retry-After`, so the text and the header never disagree.
#[must_use]
pub fn retry_in(ms: u64) -> String {
    format!("retry in {} s", whole_seconds(ms))
}

/// The body of an SSE `error` event, as the API ends a stream that failed.
#[derive(Serialize)]
struct StreamErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: EnvelopeError<'a>,
}

/// The event that ends a stream the proxy has to cut, because `why`: the client reads an
/// `error` event of type `api_error` (the SDKs raise it) instead of a stream that hangs or
/// just stops. It begins with a blank line, so it is an event of its own whatever the cut
/// stream's last bytes were.
#[must_use]
pub fn incomplete_stream_event(why: &str) -> Vec<u8> {
    let message = format!("{why}; the answer is incomplete");
    let event = StreamErrorEvent {
        kind: "error",
        error: EnvelopeError {
            kind: "api_error",
            message: &message,
        },
    };
    // Serializing plain strings cannot fail; keep a fixed event regardless.
    let data = serde_json::to_string(&event).unwrap_or_else(|_| {
        r#"{"type":"error","error":{"type":"api_error","message":"the answer is incomplete"}}"#
            .to_string()
    });
    format!("\n\nevent: error\ndata: {data}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ProxyError) -> serde_json::Value {
        serde_json::from_str(&e.answer("req_test").body).unwrap()
    }

    #[test]
    fn a_body_that_stops_arriving_is_a_408_of_the_client() {
        let e = ProxyError::BodyTimeout;
        assert_eq!((e.status(), e.error_type()), (408, "request_timeout"));
        assert_eq!(e.source(), Source::Client);
        let v = body(&e);
        assert_eq!(v["error"]["type"], "request_timeout");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("MIN_BODY_BYTES_PER_S")));
    }

    #[test]
    fn every_variant_has_an_envelope_the_sdks_parse() {
        let all = [
            ProxyError::InvalidRequest("x".into()),
            ProxyError::Unauthenticated("x".into()),
            ProxyError::OriginNotAllowed,
            ProxyError::NotFound,
            ProxyError::MethodNotAllowed("POST"),
            ProxyError::TooLarge { limit: 10 },
            ProxyError::BodyTimeout,
            ProxyError::RateLimited {
                retry_after_ms: 11_734,
                message: "m".into(),
                limit: LimitInfo {
                    scope: Scope::Key,
                    dimension: Some("rpm".into()),
                    limit: Some(50),
                    remaining: Some(0),
                },
                limit_headers: Vec::new(),
            },
            ProxyError::Overloaded { retry_after_ms: 1 },
            ProxyError::UpstreamTimeout { retry_after_ms: 1 },
            ProxyError::UpstreamUnreachable { retry_after_ms: 1 },
            ProxyError::UpstreamRedirected(307),
            ProxyError::Busy { retry_after_ms: 1 },
            ProxyError::MissingSecret("ANTHROPIC_API_KEY"),
            ProxyError::Unavailable("x".into()),
            ProxyError::Internal("x".into()),
        ];
        for e in &all {
            let v = body(e);
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], e.error_type());
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert_eq!(v["request_id"], "req_test");
            let a = e.answer("req_test");
            assert_eq!(a.status, e.status());
            assert!(a
                .headers
                .iter()
                .any(|(k, v)| *k == "request-id" && v == "req_test"));
        }
    }

    #[test]
    fn structured_retry_after_matches_the_contract() {
        let e = ProxyError::RateLimited {
            retry_after_ms: 11_734,
            message: "rpm limit of 50 reached for this key; retry in 12 s".into(),
            limit: LimitInfo {
                scope: Scope::Key,
                dimension: Some("rpm".into()),
                limit: Some(50),
                remaining: Some(0),
            },
            limit_headers: Vec::new(),
        };
        let a = e.answer("req_1");
        assert_eq!(a.status, 429);
        let header = |name: &str| {
            a.headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("retry-after"), Some("12"));
        assert_eq!(header("retry-after-ms"), Some("11734"));
        assert_eq!(header("x-should-retry"), Some("true"));
        let v = body(&e);
        assert_eq!(v["retry_after_ms"], 11_734);
        assert_eq!(v["limit"]["scope"], "key");
        assert_eq!(v["limit"]["dimension"], "rpm");
        assert_eq!(v["limit"]["remaining"], 0);
    }

    #[test]
    fn a_bad_request_says_do_not_retry() {
        let a =
            ProxyError::InvalidRequest("max_tokens: must be a positive integer".into()).answer("r");
        assert!(a.headers.contains(&("x-should-retry", "false".to_string())));
        assert!(!a.headers.iter().any(|(k, _)| *k == "retry-after"));
    }

    #[test]
    fn a_redirect_is_a_502_not_worth_retrying_and_a_full_isolate_a_503_that_is() {
        let redirect = ProxyError::UpstreamRedirected(307).answer("r");
        assert_eq!(redirect.status, 502);
        assert!(redirect
            .headers
            .contains(&("x-should-retry", "false".to_string())));
        assert!(
            redirect.body.contains("redirect (307)"),
            "{}",
            redirect.body
        );
        let busy = ProxyError::Busy {
            retry_after_ms: 1_000,
        };
        assert_eq!(busy.source(), Source::Proxy);
        let answer = busy.answer("r");
        assert_eq!(answer.status, 503);
        assert!(answer.body.contains("overloaded_error"));
        assert!(answer.headers.contains(&("retry-after", "1".to_string())));
        assert!(answer
            .headers
            .contains(&("x-should-retry", "true".to_string())));
    }

    #[test]
    fn the_openai_envelope_keeps_status_and_headers() {
        let limited = ProxyError::RateLimited {
            retry_after_ms: 11_734,
            message: "rpm limit of 50 reached for this key; retry in 12 s".to_string(),
            limit: LimitInfo {
                scope: Scope::Key,
                dimension: Some("rpm".to_string()),
                limit: Some(50),
                remaining: Some(0),
            },
            limit_headers: vec![("ratelimit-policy", "\"rpm\";q=50;w=60".to_string())],
        };
        // The caller's own headers travel with the refusal, in both envelopes.
        assert!(limited
            .answer("req_1")
            .headers
            .contains(&("ratelimit-policy", "\"rpm\";q=50;w=60".to_string())));
        for e in [
            limited,
            ProxyError::InvalidRequest("model: field required".to_string()),
            ProxyError::Unauthenticated("no".to_string()),
            ProxyError::Overloaded {
                retry_after_ms: 2_000,
            },
            ProxyError::NotFound,
        ] {
            let anthropic = e.answer("req_1");
            let openai = e.openai_answer("req_1");
            assert_eq!(openai.status, anthropic.status);
            assert_eq!(openai.headers, anthropic.headers);
            let body: serde_json::Value = serde_json::from_str(&openai.body).unwrap();
            let error = &body["error"];
            assert_eq!(error["message"], e.message());
            assert_eq!(error["type"], e.openai_type_and_code().0);
            assert_eq!(error["code"], e.openai_type_and_code().1);
            assert!(error["param"].is_null());
            assert!(body.get("type").is_none(), "not the Anthropic envelope");
        }
        let limited = ProxyError::RateLimited {
            retry_after_ms: 11_734,
            message: String::new(),
            limit: LimitInfo::upstream(),
            limit_headers: Vec::new(),
        }
        .openai_answer("req_1");
        assert!(limited.headers.contains(&("retry-after", "12".to_string())));
        let body: serde_json::Value = serde_json::from_str(&limited.body).unwrap();
        assert_eq!(body["error"]["code"], "rate_limit_exceeded");
        assert_eq!(body["retry_after_ms"], 11_734);
    }

    #[test]
    fn a_cut_streams_last_event_is_an_api_error_the_sdks_parse() {
        let event = incomplete_stream_event("the upstream stream went silent");
        let text = String::from_utf8(event).unwrap();
        let data = text
            .strip_prefix("\n\nevent: error\ndata: ")
            .and_then(|rest| rest.strip_suffix("\n\n"))
            .unwrap();
        assert!(!data.contains('\n'), "{data}");
        let body: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"type": "error", "error": {"type": "api_error",
                "message": "the upstream stream went silent; the answer is incomplete"}})
        );
        // Whatever the reason says, the event stays one line of JSON.
        let odd = incomplete_stream_event("a \"quoted\"\nreason");
        let text = String::from_utf8(odd).unwrap();
        assert_eq!(text.matches('\n').count(), 5, "{text:?}");
        assert!(
            text.contains(r#"a \"quoted\"\nreason; the answer"#),
            "{text:?}"
        );
    }

    #[test]
    fn every_wait_text_says_the_retry_after_in_whole_seconds() {
        assert_eq!(retry_in(0), "retry in 1 s");
        assert_eq!(retry_in(12_000), "retry in 12 s");
        assert_eq!(retry_in(12_001), "retry in 13 s");
        for error in [
            ProxyError::Overloaded {
                retry_after_ms: 2_500,
            },
            ProxyError::UpstreamTimeout {
                retry_after_ms: 2_500,
            },
            ProxyError::UpstreamUnreachable {
                retry_after_ms: 2_500,
            },
            ProxyError::Busy {
                retry_after_ms: 2_500,
            },
        ] {
            assert!(error.message().ends_with("; retry in 3 s"), "{error:?}");
        }
        let unavailable = ProxyError::Unavailable("the rate limiter did not answer".into());
        let seconds = whole_seconds(unavailable.retry_after_ms().unwrap());
        assert!(unavailable
            .message()
            .ends_with(&format!("; retry in {seconds} s")));
    }

    #[test]
    fn whole_seconds_round_up_and_never_reach_zero() {
        assert_eq!(whole_seconds(0), 1);
        assert_eq!(whole_seconds(1), 1);
        assert_eq!(whole_seconds(1000), 1);
        assert_eq!(whole_seconds(1001), 2);
        assert_eq!(whole_seconds(u64::MAX), u64::MAX / 1000 + 1);
    }

    #[test]
    fn misconfiguration_names_the_variable() {
        let e = ProxyError::Misconfigured(ConfigError {
            variable: "RATE_LIMITS",
            problem: "bad".into(),
        });
        assert_eq!(e.status(), 500);
        assert!(e.message().contains("RATE_LIMITS"));
    }
}
