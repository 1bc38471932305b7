//! The faithful part: answers to `/v1/*` shaped like the Anthropic Messages
//! API (messages, streaming, count_tokens, models, errors, headers), with
//! scripted faults and global modes applied on the way.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::capacity::Refusal;
use crate::conn::ConnCtl;
use crate::keylimits::Cost;
use crate::log::{body_digest, logged_body};
use crate::respond::{
    default_error, default_error_message, default_error_type, error_envelope, error_response,
    json_bytes_response, mix64, response, set_header, unix_ms, Body,
};
use crate::script::{Fault, Malformed, ResetKind, MAX_DELAY_MS};
use crate::sse::{
    event_stream, malformed_stream, stream_body, truncate_then_reset, truncate_then_stall,
    MessageOut, StreamPlan, TextBlock,
};
use crate::state::{request_id, Arrival, Settlement, State, Ticket};
use crate::text::{delta_text, input_tokens, last_user_text, Words};

/// Largest request body read (the real API's limit is 32 MB).
pub const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;
/// Largest non-streaming answer built in memory.
pub const MAX_FULL_ANSWER_BYTES: u64 = 256 * 1024 * 1024;
/// Output tokens when neither a fault nor the mode says otherwise.
pub const DEFAULT_TOKENS: u64 = 12;

pub const MESSAGES_PATH: &str = "/v1/messages";
pub const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// The models `GET /v1/models` lists: (id, display name, created_at).
pub const MODELS: &[(&str, &str, &str)] = &[
    (
        "claude-sonnet-5-5",
        "Claude Sonnet 5.5",
        "2026-09-01T00:00:00Z",
    ),
    (
        "claude-haiku-5-5",
        "Claude Haiku 5.5",
        "2026-10-07T00:00:00Z",
    ),
    ("claude-opus-5-5", "Claude Opus 5.5", "2026-09-01T00:00:00Z"),
];

/// The endpoints that take scripted faults from the queue and global modes.
fn is_work_path(path: &str) -> bool {
    path == MESSAGES_PATH || path == COUNT_TOKENS_PATH || path == CHAT_PATH
}

/// The Files API and Message Batches paths, answered from the in-memory store.
fn is_store_path(path: &str) -> bool {
    path == "/v1/files"
        || path.starts_with("/v1/files/")
        || path == "/v1/messages/batches"
        || path.starts_with("/v1/messages/batches/")
}

/// Per-request context: who to record the outcome for and how to decorate.
struct Ctx {
    state: Arc<State>,
    ctl: Arc<ConnCtl>,
    ticket: Ticket,
    request_number: u64,
    request_id: String,
    fault: Option<Arc<Fault>>,
    mode: Option<&'static str>,
    input_tokens: u64,
    output_tokens: u64,
    /// The key's output reservation (`key_limits`), if the request was charged.
    settlement: Option<Settlement>,
}

impl Ctx {
    /// Records the outcome and adds the standard and scripted headers.
    fn reply(&self, mut resp: Response<Body>) -> Response<Body> {
        let status = resp.status();
        let broken = self.fault.as_ref().is_some_and(|f| f.breaks_answer());
        let ok = status.is_success() && !broken;
        self.state.finish(
            self.ticket,
            Some(status.as_u16()),
            ok,
            self.fault.as_ref(),
            self.mode,
        );
        set_header(
            &mut resp,
            HeaderName::from_static("request-id"),
            &self.request_id,
        );
        for (name, value) in
            self.state
                .ratelimit_headers(unix_ms(), self.input_tokens, self.output_tokens)
        {
            set_header(&mut resp, HeaderName::from_static(name), &value);
        }
        if let Some(f) = &self.fault {
            for (name, value) in &f.headers {
                resp.headers_mut().insert(name.clone(), value.clone());
            }
        }
        resp
    }

    fn error(&self, status: u16, error_type: &str, message: &str) -> Response<Body> {
        self.reply(error_response(
            status,
            error_type,
            message,
            &self.request_id,
        ))
    }

    /// Records that no response will be sent, then never returns.
    async fn never(&self) -> Response<Body> {
        self.state
            .finish(self.ticket, None, false, self.fault.as_ref(), self.mode);
        std::future::pending().await
    }
}

/// What a successful (non-fault) handler produced.
enum Answer {
    Json {
        status: StatusCode,
        bytes: Bytes,
    },
    Sse(StreamPlan),
    /// Already a complete response (e.g. malformed streams).
    Raw(Response<Body>),
}

fn header_map(headers: &hyper::HeaderMap) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in headers {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&text);
            }
            _ => {
                map.insert(name.as_str().to_string(), Value::String(text));
            }
        }
    }
    map
}

/// Handles one request under `/v1/`.
pub async fn handle(
    state: Arc<State>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<Body> {
    let received_at_ms = unix_ms();
    let request_number = state.next_request_number();
    let request_id = request_id(request_number);
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let declared_len = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (body, too_large) = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(c) => (c.to_bytes(), false),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => (Bytes::new(), true),
        // The client went away while sending its body: nobody will read an answer.
        Err(_) => return default_error(400, &request_id),
    };
    let ticket = state.record_arrival(Arrival {
        method: parts.method.to_string(),
        path: path.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: header_map(&parts.headers),
        body: logged_body(&body),
        body_len: if too_large {
            declared_len.unwrap_or(MAX_REQUEST_BODY + 1)
        } else {
            body.len()
        },
        body_sha256: (!too_large).then(|| body_digest(&body)),
        received_at_ms,
    });
    let mut ctx = Ctx {
        state: state.clone(),
        ctl,
        ticket,
        request_number,
        request_id,
        fault: None,
        mode: None,
        input_tokens: 0,
        output_tokens: 0,
        settlement: None,
    };

    // Authentication comes before anything else, like the real API.
    let key = parts.headers.get("x-api-key").map(|v| v.as_bytes());
    let auth_error = match (&state.api_key, key) {
        (_, None) => Some("x-api-key header is required"),
        (None, Some([])) => Some("invalid x-api-key"),
        (Some(expected), Some(k)) if expected.as_bytes() != k => Some("invalid x-api-key"),
        _ => None,
    };
    if let Some(message) = auth_error {
        return ctx.error(401, "authentication_error", message);
    }

    if too_large {
        let message =
            format!("Request exceeds the maximum allowed number of bytes ({MAX_REQUEST_BODY})");
        return ctx.error(413, "request_too_large", &message);
    }

    let post_work = parts.method == Method::POST && is_work_path(&path);
    // The model the body names, for faults and capacities that apply to one model only.
    let body_model = if post_work { model_of(&body) } else { None };
    ctx.fault = match parts.headers.get("x-sim-fault") {
        Some(raw) => {
            let parsed = serde_json::from_slice::<Value>(raw.as_bytes())
                .map_err(|e| format!("invalid x-sim-fault header: {e}"))
                .and_then(Fault::from_value);
            match parsed {
                Ok(f) => Some(Arc::new(f)),
                Err(msg) => return ctx.error(400, "invalid_request_error", &msg),
            }
        }
        None if post_work => state.pop_fault(&path, body_model.as_deref()),
        None => None,
    };

    if let Some(f) = ctx.fault.clone() {
        let delay = f.delay_ms();
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if f.spec.hang == Some(true) {
            return ctx.never().await;
        }
        if f.spec.reset == Some(ResetKind::BeforeHeaders) {
            ctx.ctl.trigger_reset();
            return ctx.never().await;
        }
        if let Some(resp) = scripted_status(&ctx, &f) {
            return deliver(&ctx, resp);
        }
    }

    // A Messages request is validated before the modes run, so the key's
    // buckets can be charged what it costs; a validation error is still
    // answered after them, as before.
    let parsed =
        (parts.method == Method::POST && path == MESSAGES_PATH).then(|| parse_request(&body, true));
    if post_work && !ctx.fault.as_ref().is_some_and(|f| f.is_decisive()) {
        let cost = match &parsed {
            Some(Ok(p)) => Some(charged_cost(p, ctx.fault.as_deref())),
            _ => None,
        };
        match state.admit_work(unix_ms(), cost.as_ref(), body_model.as_deref()) {
            Ok(charge) => ctx.settlement = charge.map(|c| Settlement::new(state.clone(), c)),
            Err(refusal) => {
                ctx.mode = Some(refusal.name());
                return refused(&ctx, &refusal);
            }
        }
    }

    let answer = match (parts.method.clone(), path.as_str()) {
        (Method::POST, MESSAGES_PATH) => {
            match parsed.unwrap_or_else(|| parse_request(&body, true)) {
                Ok(p) => messages(&mut ctx, p).await,
                Err(e) => Err(e),
            }
        }
        (Method::POST, COUNT_TOKENS_PATH) => count_tokens(&mut ctx, &body),
        (Method::POST, CHAT_PATH) => chat_completions(&mut ctx, &body).await,
        (method, p) if is_store_path(p) => {
            let origin = parts
                .headers
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| format!("http://{h}"))
                .unwrap_or_default();
            let content_type = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default()
                .to_string();
            store_route(&ctx, &method, p, &content_type, &origin, &body)
        }
        (_, MESSAGES_PATH) | (_, COUNT_TOKENS_PATH) | (_, CHAT_PATH) => {
            return ctx.error(405, "invalid_request_error", "Method not allowed: use POST");
        }
        (Method::GET, "/v1/models") => Ok(list_models()),
        (Method::GET, p) if p.starts_with("/v1/models/") => {
            let id = p.trim_start_matches("/v1/models/");
            match MODELS.iter().find(|m| m.0 == id) {
                Some(m) => Ok(json_answer(StatusCode::OK, &model_json(m))),
                None => Err((404, "not_found_error", format!("model: {id}"))),
            }
        }
        (_, "/v1/models") => {
            return ctx.error(405, "invalid_request_error", "Method not allowed: use GET");
        }
        _ => Err((404, "not_found_error", format!("Not found: {path}"))),
    };
    match answer {
        Ok(answer) => deliver(&ctx, answer),
        Err((status, error_type, message)) => ctx.error(status, error_type, &message),
    }
}

/// The top-level `model` a JSON body names, if it names one.
fn model_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<Value>,
    }
    match serde_json::from_slice::<Named>(body).ok()?.model? {
        Value::String(model) => Some(model),
        _ => None,
    }
}

/// A fault's `status`/`body`: the error envelope (or the verbatim body).
fn scripted_status(ctx: &Ctx, f: &Fault) -> Option<Answer> {
    let s = &f.spec;
    let status = match (s.status, &s.body) {
        (Some(st), _) if st >= 400 => st,
        (st, Some(_)) => st.unwrap_or(200),
        _ => return None,
    };
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let bytes = match &s.body {
        Some(b) => Bytes::from(serde_json::to_vec(b).unwrap_or_default()),
        None => error_envelope(
            s.error_type
                .as_deref()
                .unwrap_or(default_error_type(status)),
            s.message
                .as_deref()
                .unwrap_or(default_error_message(status)),
            &ctx.request_id,
        ),
    };
    Some(Answer::Json {
        status: code,
        bytes,
    })
}

/// The answer of a global mode that refused the request.
fn refused(ctx: &Ctx, refusal: &Refusal) -> Response<Body> {
    match refusal {
        Refusal::RateLimited { retry_after_ms } => {
            let mut resp = ctx.error(
                429,
                "rate_limit_error",
                "This request would exceed your organization's rate limit of requests per minute. \
                 Please try again later.",
            );
            set_retry_after(&mut resp, *retry_after_ms);
            resp
        }
        Refusal::KeyLimited(limited) => {
            let mut resp = ctx.error(429, "rate_limit_error", &limited.message);
            set_retry_after(&mut resp, limited.retry_after_ms);
            resp
        }
        _ => ctx.error(529, "overloaded_error", "Overloaded"),
    }
}

/// What a valid Messages request costs the key at arrival: its input tokens
/// (a fault's `usage.input_tokens` replaces the count, and its
/// `cache_creation_input_tokens` add to it; cache reads are free, as at
/// Anthropic) and its `max_tokens` against output.
fn charged_cost(p: &Parsed, fault: Option<&Fault>) -> Cost {
    let usage = fault.and_then(|f| f.spec.usage.as_ref());
    let field = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64);
    Cost {
        input_tokens: field("input_tokens")
            .unwrap_or(p.input_tokens)
            .saturating_add(field("cache_creation_input_tokens").unwrap_or(0)),
        max_tokens: p.max_tokens,
    }
}

fn json_answer(status: StatusCode, value: &Value) -> Answer {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    Answer::Json {
        status,
        bytes: Bytes::from(bytes),
    }
}

fn model_json(m: &(&str, &str, &str)) -> Value {
    json!({"type": "model", "id": m.0, "display_name": m.1, "created_at": m.2})
}

fn list_models() -> Answer {
    json_answer(
        StatusCode::OK,
        &json!({
            "data": MODELS.iter().map(model_json).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": MODELS.first().map(|m| m.0),
            "last_id": MODELS.last().map(|m| m.0),
        }),
    )
}

/// Turns an answer into the response, applying the fault's status override
/// and mid-body resets.
fn deliver(ctx: &Ctx, answer: Answer) -> Response<Body> {
    let fault = ctx.fault.as_deref();
    let spec = fault.map(|f| &f.spec);
    let status_override = spec
        .and_then(|s| s.status)
        .filter(|s| *s < 400)
        .and_then(|s| StatusCode::from_u16(s).ok());
    let reset = spec.and_then(|s| s.reset);
    let stall = spec.and_then(|s| s.stall_after_bytes);
    let resp = match answer {
        Answer::Raw(resp) => resp,
        Answer::Json { status, bytes } => {
            let limit = match reset {
                Some(ResetKind::AfterHeaders) => Some(0),
                Some(ResetKind::AfterBodyBytes) => spec.and_then(|s| s.bytes),
                _ => None,
            };
            match (limit, stall) {
                (None, None) => json_bytes_response(status, bytes),
                (limit, stall) => {
                    let len = bytes.len();
                    let inner = stream::once(async move { bytes }).boxed();
                    let body = match limit {
                        Some(limit) => {
                            stream_body(truncate_then_reset(inner, limit, ctx.ctl.clone()))
                        }
                        None => stream_body(truncate_then_stall(inner, stall.unwrap_or(0))),
                    };
                    let mut resp = response(status, body);
                    set_header(&mut resp, CONTENT_TYPE, "application/json");
                    set_header(&mut resp, CONTENT_LENGTH, &len.to_string());
                    resp
                }
            }
        }
        Answer::Sse(mut plan) => {
            let body = match (reset, spec.and_then(|s| s.bytes)) {
                (Some(ResetKind::AfterBodyBytes), Some(limit)) => {
                    let inner = event_stream(plan, ctx.ctl.clone()).boxed();
                    stream_body(truncate_then_reset(inner, limit, ctx.ctl.clone()))
                }
                _ if stall.is_some() => {
                    let inner = event_stream(plan, ctx.ctl.clone()).boxed();
                    stream_body(truncate_then_stall(inner, stall.unwrap_or(0)))
                }
                _ => {
                    if reset == Some(ResetKind::AfterHeaders) {
                        plan.reset_after = Some(spec.and_then(|s| s.after_events).unwrap_or(0));
                    }
                    stream_body(event_stream(plan, ctx.ctl.clone()))
                }
            };
            sse_response(StatusCode::OK, body)
        }
    };
    let mut resp = resp;
    if let Some(code) = status_override {
        *resp.status_mut() = code;
    }
    ctx.reply(resp)
}

fn sse_response(status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = response(status, body);
    set_header(&mut resp, CONTENT_TYPE, "text/event-stream; charset=utf-8");
    set_header(&mut resp, CACHE_CONTROL, "no-cache");
    resp
}

type ApiError = (u16, &'static str, String);

/// A validated Messages (or count_tokens) request.
struct Parsed {
    model: String,
    max_tokens: u64,
    stream: bool,
    input_tokens: u64,
    prompt: String,
}

fn invalid(message: impl Into<String>) -> ApiError {
    (400, "invalid_request_error", message.into())
}

fn parse_request(body: &[u8], needs_max_tokens: bool) -> Result<Parsed, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(format!(
            "There was an issue with the request body: invalid JSON ({e})"
        ))
    })?;
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("Request body must be a JSON object"))?;
    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(invalid("model: Field required")),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => return Err(invalid("model: Input should be a valid, non-empty string")),
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) if needs_max_tokens => {
            return Err(invalid("max_tokens: Field required"))
        }
        None | Some(Value::Null) => u64::MAX,
        Some(v) => match v.as_u64() {
            Some(0) => {
                return Err(invalid(
                    "max_tokens: Input should be greater than or equal to 1",
                ))
            }
            Some(n) => n,
            None => return Err(invalid("max_tokens: Input should be a valid integer")),
        },
    };
    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(invalid("messages: Field required")),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(invalid("messages: Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required"));
    }
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user") | Some("assistant")) {
            return Err(invalid(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            )));
        }
        match m.get("content") {
            Some(Value::String(_)) | Some(Value::Array(_)) => {}
            None | Some(Value::Null) => {
                return Err(invalid(format!("messages.{i}.content: Field required")))
            }
            Some(_) => {
                return Err(invalid(format!(
                    "messages.{i}.content: Input should be a valid string or list of content blocks"
                )))
            }
        }
    }
    let system = obj.get("system").filter(|s| !s.is_null());
    if let Some(s) = system {
        if !s.is_string() && !s.is_array() {
            return Err(invalid(
                "system: Input should be a valid string or list of text blocks",
            ));
        }
    }
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("stream: Input should be a valid boolean")),
    };
    Ok(Parsed {
        model,
        max_tokens,
        stream,
        input_tokens: input_tokens(system, messages, obj.get("tools")),
        prompt: last_user_text(messages),
    })
}

fn count_tokens(ctx: &mut Ctx, body: &[u8]) -> Result<Answer, ApiError> {
    let parsed = parse_request(body, false)?;
    ctx.input_tokens = parsed.input_tokens;
    let reported = ctx
        .fault
        .as_ref()
        .and_then(|f| f.spec.usage.as_ref())
        .and_then(|u| u.get("input_tokens").cloned())
        .unwrap_or_else(|| json!(parsed.input_tokens));
    Ok(json_answer(
        StatusCode::OK,
        &json!({"input_tokens": reported}),
    ))
}

async fn messages(ctx: &mut Ctx, parsed: Parsed) -> Result<Answer, ApiError> {
    let (mode_delay, mode_tokens, mode_pad) = ctx.state.answer_defaults();
    let spec = ctx
        .fault
        .as_ref()
        .map(|f| f.spec.clone())
        .unwrap_or_default();
    let wanted = spec.tokens.or(mode_tokens).unwrap_or(DEFAULT_TOKENS);
    let output_tokens = wanted.min(parsed.max_tokens);
    let stop_reason = if wanted > parsed.max_tokens {
        "max_tokens"
    } else {
        "end_turn"
    };
    let delay_ms = spec
        .token_delay_ms
        .or(mode_delay)
        .unwrap_or(0)
        .min(MAX_DELAY_MS);
    let pad_len = spec.pad_bytes.or(mode_pad).unwrap_or(0);
    let pad = ".".repeat(usize::try_from(pad_len).unwrap_or(0));
    ctx.input_tokens = parsed.input_tokens;
    ctx.output_tokens = output_tokens;
    let plan = StreamPlan {
        message_id: format!(
            "msg_sim_{:016x}",
            mix64(ctx.state.seed ^ ctx.request_number)
        ),
        model: parsed.model,
        input_tokens: parsed.input_tokens,
        output_tokens,
        stop_reason,
        usage: spec.usage.clone(),
        words: Words::new(ctx.state.seed, &parsed.prompt),
        token_delay: Duration::from_millis(delay_ms),
        pad,
        error_event_after: spec.error_event_after,
        error_type: spec
            .error_type
            .clone()
            .unwrap_or_else(|| "overloaded_error".into()),
        error_message: spec.message.clone().unwrap_or_else(|| "Overloaded".into()),
        stall_after: spec.stall_after_events,
        reset_after: None,
        settlement: None,
    };
    if spec.malformed.is_none() {
        ctx.state.record_usage(ctx.ticket, plan.full_usage());
    }
    match spec.malformed {
        Some(Malformed::Sse) => {
            return Ok(Answer::Raw(sse_response(
                StatusCode::OK,
                stream_body(malformed_stream()),
            )));
        }
        Some(Malformed::Json) => {
            let full = full_message(&plan)?;
            let cut = (full.len() / 2).max(1).min(full.len().saturating_sub(1));
            return Ok(Answer::Raw(json_bytes_response(
                StatusCode::OK,
                full.slice(..cut),
            )));
        }
        None => {}
    }
    let mut settlement = ctx.settlement.take();
    if parsed.stream {
        let mut plan = plan;
        plan.settlement = settlement;
        return Ok(Answer::Sse(plan));
    }
    // A non-streaming answer takes as long as streaming it would.
    let total_ms = delay_ms.saturating_mul(output_tokens).min(MAX_DELAY_MS);
    if total_ms > 0 {
        tokio::time::sleep(Duration::from_millis(total_ms)).await;
    }
    let bytes = full_message(&plan)?;
    // Complete: the reservation is settled with the reported output.
    if let Some(s) = settlement.as_mut() {
        s.produced(plan.reported_output());
    }
    drop(settlement);
    Ok(Answer::Json {
        status: StatusCode::OK,
        bytes,
    })
}

/// `POST /v1/chat/completions`: the answer in OpenAI's shapes (see `chat`), with the
/// scripted `tokens` and `token_delay_ms` as for messages.
async fn chat_completions(ctx: &mut Ctx, body: &[u8]) -> Result<Answer, ApiError> {
    let request = crate::chat::parse(body).map_err(invalid)?;
    let (mode_delay, mode_tokens, _) = ctx.state.answer_defaults();
    let spec = ctx
        .fault
        .as_ref()
        .map(|f| f.spec.clone())
        .unwrap_or_default();
    let wanted = spec.tokens.or(mode_tokens).unwrap_or(DEFAULT_TOKENS);
    let delay_ms = spec
        .token_delay_ms
        .or(mode_delay)
        .unwrap_or(0)
        .min(MAX_DELAY_MS);
    let stream = request.stream;
    let plan = crate::chat::ChatPlan::new(
        ctx.state.seed,
        ctx.request_number,
        request,
        wanted,
        Duration::from_millis(delay_ms),
    );
    ctx.input_tokens = plan.request.prompt_tokens;
    ctx.output_tokens = plan.completion_tokens;
    let mut usage = Map::new();
    usage.insert("input_tokens".into(), json!(plan.request.prompt_tokens));
    usage.insert("output_tokens".into(), json!(plan.completion_tokens));
    ctx.state.record_usage(ctx.ticket, usage);
    if let Some(mut s) = ctx.settlement.take() {
        s.produced(plan.completion_tokens);
    }
    if stream {
        return Ok(Answer::Raw(sse_response(
            StatusCode::OK,
            stream_body(plan.events()),
        )));
    }
    let total_ms = delay_ms
        .saturating_mul(plan.completion_tokens)
        .min(MAX_DELAY_MS);
    if total_ms > 0 {
        tokio::time::sleep(Duration::from_millis(total_ms)).await;
    }
    Ok(Answer::Json {
        status: StatusCode::OK,
        bytes: plan.completion(),
    })
}

/// The Files API and Message Batches, from the in-memory store.
fn store_route(
    ctx: &Ctx,
    method: &Method,
    path: &str,
    content_type: &str,
    origin: &str,
    body: &Bytes,
) -> Result<Answer, ApiError> {
    let now = unix_ms();
    let seed = ctx.state.seed;
    let mut store = ctx
        .state
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let not_found =
        |what: &str, id: &str| (404, "not_found_error", format!("{what} {id} not found"));
    let wrong_method = || {
        (
            405,
            "invalid_request_error",
            "Method not allowed".to_string(),
        )
    };
    let ok = |v: Value| Ok(json_answer(StatusCode::OK, &v));
    let segments: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::POST, ["files"]) => {
            let boundary = content_type
                .split(';')
                .find_map(|p| p.trim().strip_prefix("boundary="))
                .map(|b| b.trim_matches('"').to_string())
                .ok_or_else(|| {
                    invalid("Content-Type must be multipart/form-data with a boundary")
                })?;
            let part = crate::store::multipart(body, &boundary)
                .into_iter()
                .find(|p| p.name == "file")
                .ok_or_else(|| invalid("file: field required"))?;
            ok(store.add_file(seed, now, part))
        }
        (&Method::GET, ["files"]) => ok(store.list_files()),
        (&Method::GET, ["files", id]) => match store.files.get(*id) {
            Some(f) => ok(f.meta.clone()),
            None => Err(not_found("file", id)),
        },
        (&Method::DELETE, ["files", id]) => match store.files.remove(*id) {
            Some(_) => ok(json!({"id": id, "type": "file_deleted"})),
            None => Err(not_found("file", id)),
        },
        (&Method::GET, ["files", id, "content"]) => match store.files.get(*id) {
            Some(f) => {
                let mime = f.meta["mime_type"]
                    .as_str()
                    .unwrap_or("application/octet-stream");
                let mut resp = response(StatusCode::OK, crate::respond::full(f.bytes.clone()));
                set_header(&mut resp, CONTENT_TYPE, mime);
                set_header(&mut resp, CONTENT_LENGTH, &f.bytes.len().to_string());
                Ok(Answer::Raw(resp))
            }
            None => Err(not_found("file", id)),
        },
        (&Method::POST, ["messages", "batches"]) => {
            let value: Value = serde_json::from_slice(body)
                .map_err(|e| invalid(format!("invalid JSON body: {e}")))?;
            let requests = value
                .get("requests")
                .and_then(Value::as_array)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| invalid("requests: a non-empty list is required"))?;
            let mut list = Vec::new();
            for r in requests {
                let custom_id = r.get("custom_id").and_then(Value::as_str);
                let params = r.get("params").filter(|p| p.is_object());
                match (custom_id, params) {
                    (Some(c), Some(p)) => list.push((c.to_string(), p.clone())),
                    _ => return Err(invalid("requests: each needs custom_id and params")),
                }
            }
            ok(store.add_batch(seed, now, list, origin.to_string()))
        }
        (&Method::GET, ["messages", "batches"]) => ok(store.list_batches(now)),
        (&Method::GET, ["messages", "batches", id]) => match store.batches.get(*id) {
            Some(b) => ok(b.object(now)),
            None => Err(not_found("batch", id)),
        },
        (&Method::DELETE, ["messages", "batches", id]) => match store.batches.get(*id) {
            Some(b) if !b.ended(now) => Err(invalid(
                "Batch must be ended or canceled before it can be deleted",
            )),
            Some(_) => {
                store.batches.remove(*id);
                ok(json!({"id": id, "type": "message_batch_deleted"}))
            }
            None => Err(not_found("batch", id)),
        },
        (&Method::POST, ["messages", "batches", id, "cancel"]) => {
            match store.batches.get_mut(*id) {
                Some(b) => {
                    if !b.ended(now) && b.canceled_ms.is_none() {
                        b.canceled_ms = Some(now);
                    }
                    ok(b.object(now))
                }
                None => Err(not_found("batch", id)),
            }
        }
        (&Method::GET, ["messages", "batches", id, "results"]) => match store.batches.get(*id) {
            Some(b) if !b.ended(now) => Err(invalid(
                "Batch is still processing; results are not yet available",
            )),
            Some(b) => {
                let bytes = b.results(seed);
                let mut resp = response(StatusCode::OK, crate::respond::full(bytes.clone()));
                set_header(&mut resp, CONTENT_TYPE, "application/binary");
                set_header(&mut resp, CONTENT_LENGTH, &bytes.len().to_string());
                Ok(Answer::Raw(resp))
            }
            None => Err(not_found("batch", id)),
        },
        (_, ["files"] | ["files", _] | ["files", _, "content"] | ["messages", "batches", ..]) => {
            Err(wrong_method())
        }
        _ => Err((404, "not_found_error", format!("Not found: {path}"))),
    }
}

/// The complete non-streaming message; its text is the concatenation of
/// what the streamed deltas would carry.
fn full_message(plan: &StreamPlan) -> Result<Bytes, ApiError> {
    let per_token = 9 + plan.pad.len() as u64;
    if plan.output_tokens.saturating_mul(per_token) > MAX_FULL_ANSWER_BYTES {
        return Err(invalid(
            "The simulated answer is too large for a non-streaming response; set \"stream\": true",
        ));
    }
    let mut text = String::new();
    for k in 0..plan.output_tokens {
        text.push_str(&delta_text(plan.words.word(k), &plan.pad));
    }
    let usage = plan.full_usage();
    let message = MessageOut {
        id: &plan.message_id,
        kind: "message",
        role: "assistant",
        model: &plan.model,
        content: vec![TextBlock {
            kind: "text",
            text: &text,
        }],
        stop_reason: Some(plan.stop_reason),
        stop_sequence: None,
        usage: &usage,
    };
    serde_json::to_vec(&message).map(Bytes::from).map_err(|e| {
        (
            500,
            "api_error",
            format!("could not encode the answer: {e}"),
        )
    })
}

/// The answer for paths outside `/v1/` and `/_sim/` (not logged).
pub fn not_found(state: &State, path: &str) -> Response<Body> {
    let request_id = state.next_request_id();
    let mut resp = error_response(
        404,
        "not_found_error",
        &format!("Not found: {path}"),
        &request_id,
    );
    set_header(
        &mut resp,
        HeaderName::from_static("request-id"),
        &request_id,
    );
    resp
}

/// `retry-after` (whole seconds, rounded up, at least 1) and `retry-after-ms`.
fn set_retry_after<B>(resp: &mut hyper::Response<B>, ms: u64) {
    let secs = ms.div_ceil(1000).max(1);
    set_header(
        resp,
        HeaderName::from_static("retry-after"),
        &secs.to_string(),
    );
    set_header(
        resp,
        HeaderName::from_static("retry-after-ms"),
        &ms.to_string(),
    );
}
