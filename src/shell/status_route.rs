//! `GET /proxy/status`: asks each configured upstream key's object, and the caller's object
//! when `?caller=` names one, with their read-only status calls, and answers the core's
//! [`StatusDocument`]. Who may read it and what it says are the core's ([`crate::status`]).

use serde_json::value::RawValue;
use worker::Env;

use super::boundary::{Answer, Incoming};
use super::objects::{self, limiter, upstream};
use super::{clock, recorder};
use crate::config::Config;
use crate::error::ProxyError;
use crate::limits::{CallerUsage, LimiterCall};
use crate::request::route::query_of;
use crate::status::{
    authorize, caller_param, caller_query, upstream_keys, CallerStatus, StatusDocument,
    UpstreamKeyStatus,
};
use crate::upstream::UpstreamCall;

pub async fn handle_status(
    incoming: &Incoming,
    env: &Env,
    config: &Config,
    version: &'static str,
) -> Result<Answer, ProxyError> {
    let authorization = incoming.headers.value("authorization");
    authorize(config.admin_key.as_ref(), authorization)?;
    let caller = caller_param(query_of(&incoming.url))?;

    let mut keys = Vec::new();
    for (source, key) in upstream_keys(config) {
        let answer: Result<Box<RawValue>, ProxyError> = objects::call(
            env,
            upstream::BINDING,
            &key,
            &UpstreamCall::Status {},
            "upstream state",
        )
        .await;
        keys.push(UpstreamKeyStatus::of(source, key, answer));
    }
    let caller = match caller {
        None => None,
        Some(id) => {
            let query = caller_query(config, &id);
            let call = LimiterCall::Status {
                limits: query.limits,
            };
            let usage: Result<CallerUsage, ProxyError> = objects::call(
                env,
                limiter::BINDING,
                &query.identity,
                &call,
                "rate limiter",
            )
            .await;
            Some(CallerStatus::of(query, usage))
        }
    };
    // This request is not traffic: it is no longer counted in flight.
    let mut edge = recorder::tally();
    edge.end_uncounted();
    edge.wasm_memory_bytes = (core::arch::wasm32::memory_size(0) as u64).saturating_mul(65_536);
    let fallbacks = crate::status::fallbacks(config, &keys);
    let document = StatusDocument {
        version,
        at_ms: clock::now_ms(),
        upstream_keys: keys,
        edge,
        caller,
        fallbacks,
    };
    let body = serde_json::to_vec(&document)
        .map_err(|e| ProxyError::Internal(format!("status not encodable: {e}")))?;
    let mut answer = Answer::json(200, body);
    // What it says is of this instant, and for the operator only.
    answer.headers.set("cache-control", "no-store");
    Ok(answer)
}
