//! Finishing answers: error envelopes, CORS, `x-proxy-attempts`, and the request's log line.
//!
//! Every answer, success or error, passes through [`Exchange::finish`], so no path can forget
//! the CORS grant browsers need to read a 429, or the one log line per request.

use serde::Serialize;
use worker::{Headers, Request, Response, ResponseBuilder};

use super::runtime;
use crate::config::{AllowedOrigins, ConfigError};
use crate::error::ProxyError;
use crate::request::headers::EXPOSED_HEADERS;
use crate::request::route::Route;

/// What CORS grants this request's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// No `Origin` header: a server or a CLI, not subject to CORS.
    NotBrowser,
    /// An allowed origin, echoed back in `Access-Control-Allow-Origin`.
    Allowed(String),
    /// An origin that `ALLOWED_ORIGINS` does not list.
    Denied,
}

impl Cors {
    pub fn decide(allowed: &AllowedOrigins, origin: Option<&str>) -> Cors {
        match origin {
            None => Cors::NotBrowser,
            Some(origin) if allowed.allows(origin) && is_header_safe(origin) => {
                Cors::Allowed(origin.to_string())
            }
            Some(_) => Cors::Denied,
        }
    }

    fn apply(&self, headers: &Headers) {
        // Every answer depends on the Origin it was asked with (granted, refused or not a
        // browser), so a cache must never hand one origin's answer to another.
        let _ = headers.append("vary", "Origin");
        if let Cors::Allowed(origin) = self {
            let _ = headers.set("access-control-allow-origin", origin);
            let _ = headers.set("access-control-expose-headers", EXPOSED_HEADERS);
        }
    }
}

/// A wait between attempts, for the log line.
#[derive(Debug, Clone, Serialize)]
pub struct LoggedWait {
    pub ms: u64,
    pub cause: String,
}

/// One request's journey through the proxy: what the log line and the final headers need.
pub struct Exchange {
    pub request_id: String,
    pub started_ms: u64,
    pub origin: Option<String>,
    pub cors: Cors,
    pub route: Option<Route>,
    pub identity_hash: Option<String>,
    pub stream: bool,
    pub attempts: u32,
    pub waits: Vec<LoggedWait>,
    pub upstream_request_id: Option<String>,
    /// Why retries stopped, when they did.
    pub stopped: Option<String>,
    /// Headers every answer gets, e.g. the caller's own rate-limit figures.
    pub extra_headers: Vec<(&'static str, String)>,
}

impl Exchange {
    pub fn begin(req: &Request) -> Exchange {
        Exchange {
            request_id: runtime::new_request_id(),
            started_ms: runtime::now_ms(),
            origin: req.headers().get("origin").ok().flatten(),
            cors: Cors::NotBrowser,
            route: None,
            identity_hash: None,
            stream: false,
            attempts: 0,
            waits: Vec::new(),
            upstream_request_id: None,
            stopped: None,
            extra_headers: Vec::new(),
        }
    }

    /// The id an answer made by the proxy carries: the upstream's, when there was one, so
    /// that an error can be traced on both sides.
    pub fn answer_request_id(&self) -> &str {
        self.upstream_request_id
            .as_deref()
            .unwrap_or(&self.request_id)
    }

    /// Turns the outcome into the final answer and logs the request.
    pub fn finish(self, outcome: Result<Response, ProxyError>) -> Response {
        let (mut response, error) = match outcome {
            Ok(response) => (response, None),
            Err(error) => (
                error_response(&error, self.answer_request_id()),
                Some(error),
            ),
        };
        let headers = response.headers_mut();
        if self.route.as_ref().is_some_and(Route::is_proxied) {
            let _ = headers.set("x-proxy-attempts", &self.attempts.to_string());
        }
        for (name, value) in &self.extra_headers {
            let _ = headers.set(name, value);
        }
        self.cors.apply(headers);
        let status = response.status_code();
        worker::console_log!("{}", self.log_line(status, error.as_ref()));
        response
    }

    fn log_line(&self, status: u16, error: Option<&ProxyError>) -> String {
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
            error_type: Option<&'static str>,
            stream: bool,
            attempts: u32,
            waits: &'a [LoggedWait],
            #[serde(skip_serializing_if = "Option::is_none")]
            stopped: Option<&'a str>,
            total_ms: u64,
        }
        let line = Line {
            request_id: &self.request_id,
            upstream_request_id: self.upstream_request_id.as_deref(),
            route: self.route.as_ref().map_or("unrouted", Route::name),
            identity: self.identity_hash.as_deref(),
            status,
            error_type: error.map(ProxyError::error_type),
            stream: self.stream,
            attempts: self.attempts,
            waits: &self.waits,
            stopped: self.stopped.as_deref(),
            total_ms: runtime::now_ms().saturating_sub(self.started_ms),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// The log line for a configuration error: names the variable, never its value.
pub fn config_log_line(e: &ConfigError) -> String {
    serde_json::json!({"event": "config_error", "variable": e.variable, "problem": e.problem})
        .to_string()
}

/// An error as a `Response` with the Anthropic envelope and the contract's headers.
pub fn error_response(error: &ProxyError, request_id: &str) -> Response {
    let answer = error.answer(request_id);
    let headers = Headers::new();
    for (name, value) in &answer.headers {
        let _ = headers.set(name, value);
    }
    ResponseBuilder::new()
        .with_status(answer.status)
        .with_headers(headers)
        .fixed(answer.body.into_bytes())
}

/// `GET /healthz`.
pub fn health(version: &str) -> Result<Response, ProxyError> {
    json_response(
        200,
        &serde_json::json!({"status": "ok", "version": version}),
    )
}

pub fn json_response(status: u16, value: &serde_json::Value) -> Result<Response, ProxyError> {
    let headers = Headers::new();
    let _ = headers.set("content-type", "application/json");
    Ok(ResponseBuilder::new()
        .with_status(status)
        .with_headers(headers)
        .fixed(value.to_string().into_bytes()))
}

/// A CORS preflight: `204`, granting the requested method and headers to an allowed origin.
pub fn preflight(req: &Request, cors: &Cors) -> Result<Response, ProxyError> {
    let headers = Headers::new();
    if let Cors::Allowed(_) = cors {
        let method = req
            .headers()
            .get("access-control-request-method")
            .ok()
            .flatten()
            .filter(|m| is_token_list(m))
            .unwrap_or_else(|| "GET, POST".to_string());
        let _ = headers.set("access-control-allow-methods", &method);
        if let Some(requested) = req
            .headers()
            .get("access-control-request-headers")
            .ok()
            .flatten()
            .filter(|h| is_token_list(h))
        {
            let _ = headers.set("access-control-allow-headers", &requested);
        }
        let _ = headers.set("access-control-max-age", "86400");
        let _ = headers.append(
            "vary",
            "Access-Control-Request-Method, Access-Control-Request-Headers",
        );
    }
    Ok(ResponseBuilder::new()
        .with_status(204)
        .with_headers(headers)
        .empty())
}

/// A comma-separated list of HTTP tokens (method or header names): safe to echo back.
fn is_token_list(value: &str) -> bool {
    value.len() <= 2048
        && value.split(',').all(|t| {
            let t = t.trim();
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        })
}

/// Printable ASCII without control characters: safe to echo in a header.
fn is_header_safe(value: &str) -> bool {
    value.len() <= 1024 && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}
