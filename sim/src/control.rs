//! The control API under `/_sim/`: lets tests, demos and benchmarks script
//! faults, flip global modes, read the request log and the counters, and
//! reset everything between runs. It needs no authentication.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderName, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::respond::{empty, error_response, json_response, response, set_header, unix_ms, Body};
use crate::script::Fault;
use crate::state::State;

/// Largest control request body.
const MAX_CONTROL_BODY: usize = 16 * 1024 * 1024;

fn ok_json(v: &Value) -> Response<Body> {
    json_response(StatusCode::OK, v)
}

fn bad_request(message: &str, request_id: &str) -> Response<Body> {
    error_response(400, "invalid_request_error", message, request_id)
}

/// Handles one request under `/_sim/`.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let method = req.method().clone();
    let request_id = state.next_request_id();
    let cors = matches!(path.as_str(), "/_sim/mode" | "/_sim/reset" | "/_sim/script");
    let mut resp = if method == Method::OPTIONS && cors {
        let mut r = response(StatusCode::NO_CONTENT, empty());
        set_header(&mut r, ACCESS_CONTROL_ALLOW_METHODS, "GET, POST");
        set_header(&mut r, ACCESS_CONTROL_ALLOW_HEADERS, "content-type");
        set_header(&mut r, ACCESS_CONTROL_MAX_AGE, "600");
        r
    } else {
        match Limited::new(req.into_body(), MAX_CONTROL_BODY)
            .collect()
            .await
        {
            Ok(c) => route(
                &state,
                &method,
                &path,
                query.as_deref(),
                &c.to_bytes(),
                &request_id,
            ),
            Err(_) => error_response(
                413,
                "request_too_large",
                "control body too large",
                &request_id,
            ),
        }
    };
    if cors {
        set_header(&mut resp, ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    }
    set_header(
        &mut resp,
        HeaderName::from_static("request-id"),
        &request_id,
    );
    resp
}

fn route(
    state: &State,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &Bytes,
    request_id: &str,
) -> Response<Body> {
    match (method.clone(), path) {
        (Method::GET, "/_sim/health") => ok_json(&json!({"status": "ok"})),
        (Method::POST, "/_sim/script") => match Fault::list_from_json(body) {
            Ok(faults) => {
                let added = faults.len();
                let mut inner = state.lock();
                for f in faults {
                    inner.queue.push(f);
                }
                ok_json(&json!({"queued": added, "queue_length": inner.queue.len()}))
            }
            Err(msg) => bad_request(&msg, request_id),
        },
        (Method::GET, "/_sim/script") => ok_json(&state.lock().queue.to_json()),
        (Method::POST, "/_sim/reset") => {
            state.reset();
            ok_json(&json!({"status": "ok"}))
        }
        (Method::GET, "/_sim/log") => {
            let after = query
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("after=")))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            // Copy out under the lock, serialize without it.
            let entries = state.lock().log.snapshot(after);
            ok_json(&Value::Array(entries.iter().map(|e| e.to_json()).collect()))
        }
        (Method::POST, "/_sim/mode") => {
            let patch: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return bad_request(&format!("mode body is not valid JSON: {e}"), request_id)
                }
            };
            let mut inner = state.lock();
            match inner.mode.merge(&patch, unix_ms()) {
                Ok(()) => ok_json(&inner.mode.to_json()),
                Err(msg) => bad_request(&msg, request_id),
            }
        }
        (Method::GET, "/_sim/mode") => ok_json(&state.lock().mode.to_json()),
        (Method::GET, "/_sim/stats") => ok_json(&state.stats_json(unix_ms())),
        (
            _,
            "/_sim/health" | "/_sim/script" | "/_sim/reset" | "/_sim/log" | "/_sim/mode"
            | "/_sim/stats",
        ) => error_response(
            405,
            "invalid_request_error",
            "Method not allowed",
            request_id,
        ),
        _ => error_response(
            404,
            "not_found_error",
            &format!("Not found: {path}"),
            request_id,
        ),
    }
}
