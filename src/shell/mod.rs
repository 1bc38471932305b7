//! The WebAssembly shell: the only code that touches the Workers runtime.
//!
//! It reads the request, asks the pure core what to do (route, credential, body, retries),
//! performs the I/O (upstream fetches, sleeps, streams) and writes the answer. It never
//! panics on input: every failure becomes the core's error envelope.

mod admission;
mod forward;
mod objects;
mod respond;
mod runtime;

use worker::{event, Context, Env, Request, Response};

use crate::config::Config;
use crate::error::ProxyError;
use crate::identity::{authenticate, credential, Caller, UpstreamKey};
use crate::request::body::{inspect, BodyFacts};
use crate::request::route::{query_of, route, Route};

use respond::{Cors, Exchange};

/// The version reported by `/healthz`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let mut exchange = Exchange::begin(&req);
    let outcome = handle(req, &env, &ctx, &mut exchange).await;
    Ok(exchange.finish(outcome))
}

/// Runs one request; every error is an answer, never a panic or an `Err` to the runtime.
async fn handle(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    exchange: &mut Exchange,
) -> Result<Response, ProxyError> {
    let config = runtime::config(env).map_err(|e| {
        worker::console_error!("{}", respond::config_log_line(&e));
        ProxyError::Misconfigured(e)
    })?;

    exchange.cors = Cors::decide(&config.allowed_origins, exchange.origin.as_deref());
    let method = req.method().to_string();
    let path = req.path();
    let raw_url = req.inner().url();
    let route = route(&method, &path)?;
    exchange.route = Some(route.clone());
    if matches!(exchange.cors, Cors::Denied) {
        return Err(ProxyError::OriginNotAllowed);
    }

    match route {
        Route::Preflight => return respond::preflight(&req, &exchange.cors),
        Route::Health => return respond::health(VERSION),
        _ => {}
    }

    let caller = authenticate_request(&req, &config)?;
    exchange.identity_hash = Some(caller.identity_hash());
    let upstream_key = match &caller.upstream_key {
        UpstreamKey::Passthrough(key) => key.clone(),
        UpstreamKey::Managed => config
            .upstream_key
            .clone()
            .ok_or(ProxyError::MissingSecret("ANTHROPIC_API_KEY"))?,
    };

    let (body, facts) = match route {
        Route::Messages | Route::CountTokens => {
            let body = runtime::read_body(&mut req, config.max_body_bytes).await?;
            let facts = inspect(&route, &body)?;
            (Some(body), facts)
        }
        _ => (None, BodyFacts::default()),
    };
    exchange.stream = facts.stream;

    // The caller's own limits: one round trip to its object before anything goes upstream.
    let limits = config.tier_limits(&caller.tier);
    let reservation = if route == Route::Messages && !limits.is_unlimited() {
        Some(admission::admit(env, &caller, limits, &facts, exchange).await?)
    } else {
        None
    };

    let budget_header = req.headers().get("x-proxy-budget-ms").ok().flatten();
    let mut delivered = forward::forward(forward::Forward {
        config: &config,
        route: &route,
        query: query_of(&raw_url),
        method: &method,
        client_headers: req.headers(),
        body: body.as_deref(),
        facts: &facts,
        upstream_key: &upstream_key,
        budget_header: budget_header.as_deref(),
        tap: reservation.is_some(),
        guard: match route {
            Route::Messages | Route::CountTokens => Some(objects::upstream::Guard::new(
                env,
                &upstream_key,
                facts.model.as_deref(),
            )),
            _ => None,
        },
        exchange: &mut *exchange,
    })
    .await;

    if let Some(reservation) = reservation {
        let seen = delivered.as_mut().ok().and_then(|d| d.seen.take());
        let delivered_ok = delivered
            .as_ref()
            .is_ok_and(|d| (200..300).contains(&d.status));
        admission::settle_later(env, ctx, &caller, limits, reservation, seen, delivered_ok);
    }
    delivered.map(|d| d.response)
}

fn authenticate_request(req: &Request, config: &Config) -> Result<Caller, ProxyError> {
    let x_api_key = req.headers().get("x-api-key").ok().flatten();
    let authorization = req.headers().get("authorization").ok().flatten();
    let presented = credential(x_api_key.as_deref(), authorization.as_deref())?;
    authenticate(config, presented, runtime::now_ms())
}
