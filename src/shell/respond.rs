//! Finishing answers: error envelopes, CORS, `x-proxy-attempts`, and the request's log line.
//!
//! Every answer, success or error, passes through [`Exchange::finish`], so no path can forget
//! the CORS grant browsers need to read a 429, or the one log line per request.

use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use worker::{Context, Env};

use super::boundary::{Answer, AnswerBody, HeaderList, Incoming};
use super::{clock, recorder};
use crate::config::{ConfigError, RequestLog};
use crate::error::ProxyError;
use crate::limits::Used;
use crate::metrics::{event_line, log_line, AnswerKind, FinishedRequest, RequestFacts};
use crate::request::cors::Cors;
use crate::request::route::Route;
use crate::retry::runner::Journal;

/// One request's journey through the proxy: what the log line and the final headers need.
pub struct Exchange {
    pub request_id: String,
    pub started_ms: u64,
    pub origin: Option<String>,
    pub cors: Cors,
    pub route: Option<Route>,
    /// The caller in the log line and metrics: a keyed hash (see `Config::caller_tag`).
    pub caller_tag: Option<String>,
    pub stream: bool,
    /// The model the body names (`/v1/messages`).
    pub model: Option<String>,
    /// Attempts, waits and why retries stopped, as the request runner recorded them.
    pub journal: Journal,
    pub upstream_request_id: Option<String>,
    /// Headers every answer gets, e.g. the caller's own rate-limit figures.
    pub extra_headers: Vec<(&'static str, String)>,
    /// The caller's tier, for metrics.
    pub tier: Option<String>,
    /// The tokens the answer reports, known once its body has passed (for metrics).
    /// The answer's usage and what it cost (micro-dollars, when its model has a price).
    pub usage: Option<LocalBoxFuture<'static, (Used, Option<u64>)>>,
    /// Which requests write their log line (`REQUEST_LOG`; every one until it is read).
    pub log: RequestLog,
}

impl Exchange {
    pub fn begin(incoming: &Incoming) -> Exchange {
        Exchange {
            request_id: clock::new_request_id(),
            started_ms: clock::now_ms(),
            origin: incoming.headers.get("origin"),
            cors: Cors::NotBrowser,
            route: None,
            caller_tag: None,
            stream: false,
            model: None,
            journal: Journal::default(),
            upstream_request_id: None,
            log: RequestLog::All,
            extra_headers: Vec::new(),
            tier: None,
            usage: None,
        }
    }

    /// The id an answer made by the proxy carries: the upstream's, when there was one, so
    /// that an error can be traced on both sides.
    pub fn answer_request_id(&self) -> &str {
        self.upstream_request_id
            .as_deref()
            .unwrap_or(&self.request_id)
    }

    /// Turns the outcome into the final answer, logs the request and records its metrics.
    pub fn finish(
        mut self,
        outcome: Result<Answer, ProxyError>,
        env: &Env,
        ctx: &Context,
    ) -> Answer {
        let (mut answer, error) = match outcome {
            Ok(answer) => (answer, None),
            Err(error) => {
                let openai = self.route.as_ref().is_some_and(Route::speaks_openai);
                let answer = error_answer(&error, self.answer_request_id(), openai);
                (answer, Some(error))
            }
        };
        let headers = &mut answer.headers;
        if self.route.as_ref().is_some_and(Route::is_proxied) {
            headers.set("x-proxy-attempts", &self.journal.attempts.to_string());
        }
        if let Some(model) = self
            .answering_model()
            .filter(|_| self.route.as_ref().is_some_and(Route::generates))
        {
            headers.set("x-proxy-model", model);
        }
        for (name, value) in &self.extra_headers {
            headers.set(name, value);
        }
        add_cors(headers, self.cors.answer_headers());
        let status = answer.status;
        let facts = self.facts(status, error.as_ref());
        let waited = !self.journal.waits.is_empty();
        let fell_back = self.journal.fallback.is_some();
        if self
            .log
            .wants(status, self.journal.attempts, waited, fell_back)
        {
            let line = log_line(&FinishedRequest {
                request_id: &self.request_id,
                upstream_request_id: self.upstream_request_id.as_deref(),
                facts: &facts,
                journal: &self.journal,
            });
            // The line as made, to `console.log` as one string: no second copy through the
            // formatter, as `console_log!` makes.
            worker::web_sys::console::log_1(&worker::wasm_bindgen::JsValue::from_str(&line));
        }
        if self.route == Some(Route::Status) {
            recorder::end_uncounted();
        } else {
            let usage = self.usage.take();
            recorder::record(env, ctx, facts, usage);
        }
        answer
    }

    /// The model that answered a `/v1/messages` request: a fallback's when one answered,
    /// otherwise the one the body names (its own answer, or the proxy's answer for it).
    fn answering_model(&self) -> Option<&str> {
        self.journal
            .answered_by_fallback()
            .or(self.model.as_deref())
    }

    /// What the request was, for its log line and metrics (tokens come later, with the
    /// usage).
    fn facts(&self, status: u16, error: Option<&ProxyError>) -> RequestFacts {
        RequestFacts {
            route: self.route.as_ref().map_or("unrouted", Route::name),
            model_asked: self.model.clone(),
            model_served: self.answering_model().map(str::to_string),
            status,
            kind: AnswerKind::of(status, error),
            error_type: error.map(ProxyError::error_type),
            tier: self.tier.clone(),
            caller: self.caller_tag.clone(),
            stream: self.stream,
            attempts: self.journal.attempts,
            wait_ms: self.journal.wait_ms(),
            total_ms: clock::now_ms().saturating_sub(self.started_ms),
            input_tokens: None,
            output_tokens: None,
            upstream_overloaded: self.journal.upstream_overloaded,
            upstream_rate_limited: self.journal.upstream_rate_limited,
            cost_micros: None,
        }
    }
}

/// The log line for a configuration error: names the variable, never its value.
pub fn config_log_line(e: &ConfigError) -> String {
    event_line(
        "config_error",
        &[("variable", e.variable), ("problem", &e.problem)],
    )
}

/// The log line for what the configuration asks that a plan may not allow.
pub fn config_warning_line(w: &ConfigError) -> String {
    event_line(
        "config_warning",
        &[("variable", w.variable), ("problem", &w.problem)],
    )
}

/// CORS headers, `vary` added to what the answer varies on already.
fn add_cors(headers: &mut HeaderList, cors: impl IntoIterator<Item = (&'static str, String)>) {
    for (name, value) in cors {
        if name == "vary" {
            headers.append(name, &value);
        } else {
            headers.set(name, &value);
        }
    }
}

/// An error as an answer with the Anthropic envelope and the contract's headers.
pub fn error_answer(error: &ProxyError, request_id: &str, openai: bool) -> Answer {
    let answer = if openai {
        error.openai_answer(request_id)
    } else {
        error.answer(request_id)
    };
    let mut headers = HeaderList::default();
    for (name, value) in &answer.headers {
        headers.set(name, value);
    }
    Answer::new(
        answer.status,
        headers,
        AnswerBody::Bytes(answer.body.into_bytes()),
    )
}

/// `GET /healthz`.
pub fn health(version: &str) -> Result<Answer, ProxyError> {
    #[derive(Serialize)]
    struct Health<'a> {
        status: &'a str,
        version: &'a str,
    }
    let body = serde_json::to_vec(&Health {
        status: "ok",
        version,
    })
    .unwrap_or_default();
    Ok(Answer::json(200, body))
}

/// A CORS preflight: `204`, granting the requested method and headers to an allowed origin.
pub fn preflight(request: &HeaderList, cors: &Cors) -> Result<Answer, ProxyError> {
    let method = request.value("access-control-request-method");
    let wanted = request.value("access-control-request-headers");
    let mut headers = HeaderList::default();
    add_cors(&mut headers, cors.preflight_headers(method, wanted));
    Ok(Answer::new(204, headers, AnswerBody::Empty))
}
