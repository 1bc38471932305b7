//! The WebAssembly shell: the only code that touches the Workers runtime.
//!
//! It reads the request, asks the pure core what to do (route, credential, body), and hands
//! the rest of the request to the core's [`serve`] over ports it implements with the runtime
//! (the caller's object, the key's object, `fetch`, timers, streams, `waitUntil`); then it
//! writes the answer. It never panics on input: every failure becomes the core's error
//! envelope.

mod boundary;
mod clock;
use boundary::{Answer, HeaderList, Incoming};
pub mod keep_alive;
mod objects;
mod pass;
mod reader;
mod recorder;
mod respond;
mod runtime;
mod seen_env;
mod status_route;
mod timer;
mod transport;

use worker::{event, web_sys, Context, Env};

use crate::config::Config;
use crate::error::ProxyError;
use crate::identity::{authenticate, credential, Caller};
use crate::pipeline::{serve, ClientAsks, Forwarding, Intake, Limiter, Ports, Ready};
use crate::request::body::BodyFacts;
use crate::request::cors::Cors;
use crate::request::headers::check_betas;
use crate::request::results_url::{origin_of, point_at_proxy};
use crate::request::route::{path_of, route, Route};
use objects::limiter::{CallerObject, OffPath};
use objects::upstream::UpstreamKeys;
use respond::Exchange;
use runtime::WorkersTime;
use transport::{Delivered, UpstreamRequest};

/// The version reported by `/healthz`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> worker::Result<web_sys::Response> {
    let incoming = Incoming::read(req);
    let mut exchange = Exchange::begin(&incoming);
    recorder::begin();
    let outcome = handle(&incoming, &env, &ctx, &mut exchange).await;
    let answer = exchange.finish(outcome, &env, &ctx);
    answer.into_response().map_err(worker::Error::from)
}

/// Runs one request, phase by phase: the route, the caller and its body here, then the rest
/// in the core ([`serve`]) over the runtime's ports. Every error is an answer, never a panic
/// or an `Err` to the runtime.
async fn handle(
    incoming: &Incoming,
    env: &Env,
    ctx: &Context,
    exchange: &mut Exchange,
) -> Result<Answer, ProxyError> {
    let config = runtime::config(env).map_err(|e| {
        worker::console_error!("{}", respond::config_log_line(&e));
        ProxyError::Misconfigured(e)
    })?;
    let route = match route_request(incoming, env, &config, exchange).await? {
        Routed::Answered(answer) => return Ok(answer),
        Routed::Upstream(route) => route,
    };
    let (caller, upstream_key, identity_hash) =
        authenticate_request(&incoming.headers, &config, exchange)?;
    let intake = Intake::of(&config, &route, &caller, exchange.started_ms);
    let limiter = CallerObject::new(env, ctx, identity_hash, intake.limits);
    let (body, facts, counted) = inspect(incoming, &route, &intake, &limiter, exchange).await?;
    let watches_usage = intake.watches_usage(recorder::bound(env));
    let mut forwarding = Forwarding::of(
        &config,
        &route,
        &caller,
        &intake,
        &facts,
        ClientAsks::from_headers(|name| incoming.headers.value(name)),
        (&incoming.url, watches_usage),
    )?;
    // The URL is the transport's alone: moved, not copied.
    let url = std::mem::take(&mut forwarding.url);
    let mut upstream = UpstreamRequest::new(
        url,
        &incoming.method,
        &incoming.headers,
        &upstream_key,
        body.as_ref(),
        facts.stream,
    )
    .with_model_span(facts.model_span)
    .reading_json_whole(forwarding.json_whole)
    .reading_errors_within(config.attempt_timeout_ms);
    let ports = Ports {
        clock: &WorkersTime,
        sleep: &WorkersTime,
        limiter,
        keys: &UpstreamKeys::new(env, &upstream_key),
        delivery: &Delivery {
            incoming,
            route: &route,
            config: &config,
        },
        after: ctx,
        off_path: OffPath,
    };
    let ready = Ready {
        intake,
        counted,
        forwarding,
        watches_usage,
        started_ms: exchange.started_ms,
        seed: clock::random_u64(),
    };
    let journal = &mut exchange.journal;
    let served = serve(
        ports,
        ready,
        &mut upstream,
        journal,
        &mut exchange.extra_headers,
    )
    .await;
    exchange.upstream_request_id = upstream.request_id.take();
    if let Some(usage) = served.usage {
        exchange.usage = Some(Box::pin(usage.arrived()));
    }
    served.answer
}

/// What the route phase found: an answer of the proxy's own, or a route that goes upstream.
enum Routed {
    Answered(Answer),
    Upstream(Route),
}

/// The route phase: the route, the origin's grant, and the proxy's own routes answered here
/// (preflight, health, the operator's status).
async fn route_request(
    incoming: &Incoming,
    env: &Env,
    config: &Config,
    exchange: &mut Exchange,
) -> Result<Routed, ProxyError> {
    exchange.cors = Cors::decide(&config.allowed_origins, exchange.origin.as_deref());
    exchange.log = config.request_log;
    let route = route(&incoming.method, path_of(&incoming.url))?;
    exchange.route = Some(route.clone());
    if matches!(exchange.cors, Cors::Denied) {
        return Err(ProxyError::OriginNotAllowed);
    }
    let answer = match route {
        Route::Preflight => respond::preflight(&incoming.headers, &exchange.cors)?,
        Route::Health => {
            // A deployment whose managed callers cannot be served is not healthy.
            if let Some(name) = config.missing_for_managed_callers() {
                return Err(ProxyError::MissingSecret(name));
            }
            respond::health(VERSION)?
        }
        Route::Status => status_route::handle_status(incoming, env, config, VERSION).await?,
        route => return Ok(Routed::Upstream(route)),
    };
    Ok(Routed::Answered(answer))
}

/// The inspect phase: the body read (or streamed through) and what the proxy needs of it; and
/// whether the request was counted while its body arrived, with that count's headers.
async fn inspect(
    incoming: &Incoming,
    route: &Route,
    intake: &Intake,
    limiter: &CallerObject<'_>,
    exchange: &mut Exchange,
) -> Result<Inspected, ProxyError> {
    let inspected = if route.carries_body() {
        let (body, counted) = read_body(incoming, intake, limiter).await?;
        let (body, facts) = body.inspect(route)?;
        (Some(body), facts, counted)
    } else if route.streams_body() {
        let streamed = runtime::streamed_upload(incoming);
        (Some(streamed), BodyFacts::default(), None)
    } else {
        (None, BodyFacts::default(), None)
    };
    exchange.stream = inspected.1.stream;
    exchange.model.clone_from(&inspected.1.model);
    Ok(inspected)
}

/// What [`inspect`] gives: the upload, its facts, and the headers of a count made while it
/// arrived.
type Inspected = (
    Option<runtime::Upload>,
    BodyFacts,
    Option<Vec<(&'static str, String)>>,
);

/// The deliver phase as the Worker performs it: a `results_url` pointed at the proxy, then the
/// answer handed to the client (a stream that goes silent for as long as its first event may
/// take is cut).
struct Delivery<'a> {
    incoming: &'a Incoming,
    route: &'a Route,
    config: &'a Config,
}

impl crate::pipeline::Deliver for Delivery<'_> {
    type Answer = transport::UpstreamAnswer;
    type Response = Answer;

    async fn deliver(
        &self,
        answer: transport::UpstreamAnswer,
        tap: bool,
    ) -> Result<Delivered, ProxyError> {
        let within_ms = self.config.attempt_timeout_ms;
        let answer = if self.route.carries_results_url() {
            let origin = origin_of(&self.incoming.url).to_string();
            answer
                .rewritten(within_ms, move |body| point_at_proxy(body, &origin))
                .await?
        } else {
            answer
        };
        transport::deliver(answer, tap, within_ms)
    }
}

/// Reads the request body, charged to the caller before a byte is read: where the route takes
/// one of its tier's concurrency slots, one of them in bodies being sent; its share of the
/// isolate's budget as the bytes arrive; and, for a body still arriving after a moment, its
/// request against `rpm` then (see `request::upload::count_while_arriving`). When the
/// request was counted so, the headers of that count, for an admission that does not count
/// it again.
async fn read_body(
    incoming: &Incoming,
    intake: &Intake,
    limiter: &CallerObject<'_>,
) -> Result<(runtime::Body, Option<Vec<(&'static str, String)>>), ProxyError> {
    let count_headers = std::cell::RefCell::new(Vec::new());
    let counting = runtime::Counting::at(intake.count_due_ms, || async {
        let mut headers = Vec::new();
        let counted = limiter
            .admit_request_only(intake.provisional, &mut headers)
            .await;
        count_headers.borrow_mut().extend(headers);
        counted
    });
    let read = runtime::read_body(incoming, limiter.identity_hash(), intake.rules, counting).await;
    let count_headers = count_headers.into_inner();
    // A refusal of the count carries its own headers; any other failure of the read answers
    // without the caller's limits, as a body refused before its admission always has.
    let (body, counted) = read?;
    Ok((body, counted.then_some(count_headers)))
}

/// The authenticate phase: the caller, its fingerprints in the record, the upstream key it is
/// served with, and the betas its tier may use; with the fingerprint that names its object.
fn authenticate_request(
    headers: &HeaderList,
    config: &Config,
    exchange: &mut Exchange,
) -> Result<(Caller, crate::identity::Secret, String), ProxyError> {
    let presented = credential(headers.value("x-api-key"), headers.value("authorization"))?;
    let caller = authenticate(config, presented, clock::now_ms())?;
    let identity_hash = caller.identity_hash();
    exchange.caller_tag = Some(config.caller_tag(&identity_hash));
    exchange.tier = Some(caller.tier.clone());
    let upstream_key = caller.upstream_key(config)?;
    check_betas(
        config.allowed_betas(&caller.tier),
        headers.value("anthropic-beta"),
    )?;
    Ok((caller, upstream_key, identity_hash))
}
