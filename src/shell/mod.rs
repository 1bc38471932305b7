//! The WebAssembly shell: the only code that touches the Workers runtime.
//!
//! It reads the request, asks the pure core what to do (route, credential, body, retries),
//! performs the I/O (upstream fetches, sleeps, streams) and writes the answer. It never
//! panics on input: every failure becomes the core's error envelope.

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

use std::pin::pin;

use futures_channel::oneshot;
use futures_util::future::{select, Either};
use worker::{event, web_sys, Context, Env};

use crate::config::Config;
use crate::error::ProxyError;
use crate::identity::{authenticate, credential, Caller};
use crate::limits::{settlement_cost, settlement_usage, Answered, Used, WAITING_LEASE_MS};
use crate::pipeline::{ClientAsks, Forwarding, Intake};
use crate::request::body::BodyFacts;
use crate::request::cors::Cors;
use crate::request::headers::check_betas;
use crate::request::results_url::{origin_of, point_at_proxy};
use crate::request::route::{path_of, route, Metering, Route};
use crate::retry::runner::{self, Run};
use objects::{limiter, upstream::KeyState};
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

/// Runs one request, phase by phase (see [`crate::pipeline`]); every error is an answer,
/// never a panic or an `Err` to the runtime.
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
    let (caller, upstream_key) = authenticate_request(&incoming.headers, &config, exchange)?;
    let intake = Intake::of(&config, &route, &caller, exchange.started_ms);
    let (body, facts, counted) = inspect(env, incoming, &route, &intake, &caller, exchange).await?;
    let quota = intake.quota_charge(&config, &facts)?;
    let admitted = admit(
        env,
        ctx,
        &intake,
        &caller,
        (&facts, counted),
        quota,
        exchange,
    )
    .await?;
    let watches_usage = intake.watches_usage(recorder::bound(env));
    let forwarding = Forwarding::of(
        &config,
        &route,
        &caller,
        &facts,
        ClientAsks::from_headers(|name| incoming.headers.value(name)),
        (&incoming.url, watches_usage),
    )?;
    let mut upstream = UpstreamRequest::new(
        forwarding.url.clone(),
        &incoming.method,
        &incoming.headers,
        &upstream_key,
        body.as_ref(),
        facts.stream,
    )
    .with_model_span(facts.model_span.clone())
    .reading_json_whole(forwarding.json_whole)
    .reading_errors_within(config.attempt_timeout_ms);
    let answer = forward_holding(
        env,
        forwarding,
        &upstream_key,
        &mut upstream,
        admitted.as_ref(),
        exchange,
    )
    .await;
    exchange.upstream_request_id = upstream.request_id.take();
    let mut delivered = deliver(answer, incoming, &route, &config, watches_usage).await;
    settle(
        env,
        ctx,
        (admitted, &config),
        delivered.as_mut().ok(),
        exchange,
    );
    delivered.map(|d| d.response)
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
    env: &Env,
    incoming: &Incoming,
    route: &Route,
    intake: &Intake,
    caller: &Caller,
    exchange: &mut Exchange,
) -> Result<Inspected, ProxyError> {
    let inspected = if route.carries_body() {
        let (body, counted) = read_body(env, incoming, intake, caller, exchange).await?;
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

/// The deliver phase: a `results_url` pointed at the proxy, then the answer handed to the
/// client (a stream that goes silent for as long as its first event may take is cut).
async fn deliver(
    answer: Result<transport::UpstreamAnswer, ProxyError>,
    incoming: &Incoming,
    route: &Route,
    config: &Config,
    watches_usage: bool,
) -> Result<Delivered, ProxyError> {
    let answer = match answer {
        Ok(a) if route.carries_results_url() => {
            let origin = origin_of(&incoming.url).to_string();
            a.rewritten(config.attempt_timeout_ms, move |body| {
                point_at_proxy(body, &origin)
            })
            .await
        }
        other => other,
    };
    answer.and_then(|a| transport::deliver(a, watches_usage, config.attempt_timeout_ms))
}

/// The settle phase, after the answer is handed over: an admitted request settles once its
/// body has passed (under `waitUntil`); the usage it reports goes to the record.
fn settle(
    env: &Env,
    ctx: &Context,
    (admitted, config): (Option<Admitted>, &Config),
    delivered: Option<&mut Delivered>,
    exchange: &mut Exchange,
) {
    // Priced at the model that answered (a fallback's, when one did).
    let price = exchange.answering_model().and_then(|m| config.prices.of(m));
    if let Some(mut admitted) = admitted {
        admitted.price = price;
        let (usage_to, usage) = oneshot::channel();
        exchange.usage = Some(Box::pin(async move {
            usage.await.unwrap_or((Used::UNKNOWN, None))
        }));
        admitted.settle_later(env, ctx, delivered, usage_to);
    } else if let Some((seen, progress)) = delivered.and_then(|d| d.seen.take()) {
        exchange.usage = Some(Box::pin(async move {
            let seen = Some(limiter::reported(&seen).await);
            let answered = Answered::Watched {
                seen,
                so_far: progress.usage(),
            };
            (
                settlement_usage(answered),
                settlement_cost(answered, price.as_ref()),
            )
        }));
    }
}

/// Reads the request body, charged to the caller before a byte is read: where the route takes
/// one of its tier's concurrency slots, one of them in bodies being sent; its share of the
/// isolate's budget as the bytes arrive; and, for a body still arriving after a moment, its
/// request against `rpm` then (see `request::upload::count_while_arriving`). When the
/// request was counted so, the headers of that count, for an admission that does not count
/// it again.
async fn read_body(
    env: &Env,
    incoming: &Incoming,
    intake: &Intake,
    caller: &Caller,
    exchange: &mut Exchange,
) -> Result<(runtime::Body, Option<Vec<(&'static str, String)>>), ProxyError> {
    let identity = exchange
        .identity_hash
        .clone()
        .unwrap_or_else(|| caller.identity_hash());
    let Intake {
        limits,
        provisional,
        ..
    } = *intake;
    let count_headers = std::cell::RefCell::new(Vec::new());
    let counting = runtime::Counting::at(intake.count_due_ms, || async {
        let mut headers = Vec::new();
        let counted =
            limiter::admit_request_only(env, &identity, limits, provisional, &mut headers).await;
        count_headers.borrow_mut().extend(headers);
        counted
    });
    let read = runtime::read_body(incoming, &identity, intake.rules, counting).await;
    let count_headers = count_headers.into_inner();
    // A refusal of the count carries its own headers; any other failure of the read answers
    // without the caller's limits, as a body refused before its admission always has.
    let (body, counted) = read?;
    Ok((body, counted.then_some(count_headers)))
}

/// The caller's own limits: at most one round trip to its object before anything goes upstream
/// (none when the isolate holds credit for the caller, see `limits::credit`). A
/// passthrough caller is provisional until the upstream accepts its key.
async fn admit(
    env: &Env,
    ctx: &Context,
    intake: &Intake,
    caller: &Caller,
    (facts, counted): (&BodyFacts, Option<Vec<(&'static str, String)>>),
    quota: Option<crate::limits::quota::QuotaCharge>,
    exchange: &mut Exchange,
) -> Result<Option<Admitted>, ProxyError> {
    let Intake {
        limits,
        provisional,
        ..
    } = *intake;
    // Fingerprinted once per request, when the caller was authenticated.
    let identity_hash = exchange
        .identity_hash
        .clone()
        .unwrap_or_else(|| caller.identity_hash());
    let headers = &mut exchange.extra_headers;
    Ok(match intake.metering {
        Metering::Full => {
            let (reservation, on_credit) = limiter::admit(
                env,
                ctx,
                &identity_hash,
                limits,
                facts,
                (WAITING_LEASE_MS, quota),
                (provisional, counted.is_some()),
                headers,
            )
            .await?;
            Some(Admitted {
                identity_hash,
                limits,
                reservation,
                provisional,
                on_credit,
                price: None,
            })
        }
        Metering::RequestOnly => {
            match counted {
                // Counted while its body arrived: that was its admission.
                Some(count_headers) => headers.extend(count_headers),
                None => {
                    limiter::admit_request_only(env, &identity_hash, limits, provisional, headers)
                        .await?;
                }
            }
            None
        }
        Metering::None => None,
    })
}

/// [`forward`], with an admitted request's slot held (in short renewed leases) for as long as
/// the attempts run.
async fn forward_holding(
    env: &Env,
    forwarding: Forwarding,
    upstream_key: &crate::identity::Secret,
    upstream: &mut UpstreamRequest<'_>,
    admitted: Option<&Admitted>,
    exchange: &mut Exchange,
) -> Result<transport::UpstreamAnswer, ProxyError> {
    let attempts = forward(env, forwarding, upstream_key, upstream, exchange);
    let Some(a) = admitted else {
        return attempts.await;
    };
    let hold = limiter::hold(env, &a.identity_hash, a.limits, a.reservation.lease_id);
    match select(pin!(attempts), pin!(hold)).await {
        Either::Left((answer, _)) => answer,
        Either::Right(((), _)) => Err(ProxyError::Internal("the slot holder ended".to_string())),
    }
}

/// A request admitted against the caller's limits, to settle once its answer is over.
struct Admitted {
    identity_hash: String,
    limits: crate::config::TierLimits,
    reservation: crate::limits::Reservation,
    /// A passthrough caller: its object stores nothing until the upstream accepts the key.
    provisional: bool,
    /// Admitted from the isolate's credit, or with a grant of it: the settlement may wait.
    on_credit: bool,
    /// The price of the model that answered, for the dollar quotas.
    price: Option<crate::limits::prices::ModelPrice>,
}

impl Admitted {
    fn settle_later(
        self,
        env: &Env,
        ctx: &Context,
        delivered: Option<&mut Delivered>,
        usage_to: oneshot::Sender<(Used, Option<u64>)>,
    ) {
        let (watched, delivered_ok) = match delivered {
            Some(d) => (d.seen.take(), (200..300).contains(&d.status)),
            None => (None, false),
        };
        let Admitted {
            identity_hash,
            limits,
            reservation,
            provisional,
            on_credit,
            price,
        } = self;
        limiter::settle_later(
            env,
            ctx,
            identity_hash,
            limits,
            reservation,
            watched,
            delivered_ok,
            !provisional || delivered_ok,
            (on_credit, price),
            usage_to,
        );
    }
}

/// Runs the request's attempts through the core's runner; a request with a pool answers to
/// the upstream key's shared state for it (paced by what it costs), others (model listings,
/// files) to none. A message may fall back to other models (see [`crate::retry::fallback`]).
async fn forward(
    env: &Env,
    forwarding: Forwarding,
    upstream_key: &crate::identity::Secret,
    upstream: &mut UpstreamRequest<'_>,
    exchange: &mut Exchange,
) -> Result<transport::UpstreamAnswer, ProxyError> {
    let Forwarding {
        policy,
        claimant,
        cost,
        pool,
        fallbacks,
        ..
    } = forwarding;
    let (shared, memory) = match pool {
        Some(pool) => {
            let (shared, memory) = KeyState::new(env, upstream_key, pool, claimant);
            (Some(shared), memory)
        }
        None => (None, std::rc::Rc::default()),
    };
    let run = Run {
        clock: &WorkersTime,
        sleep: &WorkersTime,
        policy,
        started_ms: exchange.started_ms,
        seed: clock::random_u64(),
        cost,
        shared,
        memory,
    };
    runner::run_with_fallbacks(run, fallbacks, upstream, &mut exchange.journal).await
}

/// The authenticate phase: the caller, its fingerprints in the record, the upstream key it is
/// served with, and the betas its tier may use.
fn authenticate_request(
    headers: &HeaderList,
    config: &Config,
    exchange: &mut Exchange,
) -> Result<(Caller, crate::identity::Secret), ProxyError> {
    let presented = credential(headers.value("x-api-key"), headers.value("authorization"))?;
    let caller = authenticate(config, presented, clock::now_ms())?;
    let identity_hash = caller.identity_hash();
    exchange.caller_tag = Some(config.caller_tag(&identity_hash));
    exchange.identity_hash = Some(identity_hash);
    exchange.tier = Some(caller.tier.clone());
    let upstream_key = caller.upstream_key(config)?;
    check_betas(
        config.allowed_betas(&caller.tier),
        headers.value("anthropic-beta"),
    )?;
    Ok((caller, upstream_key))
}
