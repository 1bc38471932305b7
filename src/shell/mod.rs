//! The WebAssembly shell: the only code that touches the Workers runtime.
//!
//! It reads the request, asks the pure core what to do (route, credential, body, retries),
//! performs the I/O (upstream fetches, sleeps, streams) and writes the answer. It never
//! panics on input: every failure becomes the core's error envelope.

mod boundary;
use boundary::{Answer, HeaderList, Incoming};
pub mod keep_alive;
mod metrics;
mod objects;
mod pass;
mod reader;
mod respond;
mod runtime;
mod status;
mod timer;
mod transport;

use std::pin::pin;

use futures_channel::oneshot;
use futures_util::future::{select, Either};
use worker::{event, web_sys, Context, Env};

use crate::config::Config;
use crate::error::ProxyError;
use crate::identity::{authenticate, credential, Caller, UpstreamKey};
use crate::request::body::BodyFacts;
use crate::request::headers::check_betas;
use crate::request::results_url::{origin_of, point_at_proxy};
use crate::request::route::{path_of, query_of, route, upstream_url, Metering, Route};
use crate::request::upload::{count_while_arriving, BodyCaps, ReadPace};

use crate::limits::{settlement_usage, Answered, Usage, WAITING_LEASE_MS};
use crate::request::cors::Cors;
use crate::retry::fallback::{self, Fallbacks, OPT_OUT_HEADER};
use crate::retry::runner::{self, Run};
use crate::retry::{Awaited, RetryPolicy};
use crate::upstream::{pool_of, Claimant, Cost, Priority};
use objects::{limiter, upstream::KeyState};
use respond::Exchange;
use runtime::Platform;
use transport::{Delivered, Upstream};

/// The version reported by `/healthz`.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, ctx: Context) -> worker::Result<web_sys::Response> {
    let incoming = Incoming::read(req);
    let mut exchange = Exchange::begin(&incoming);
    metrics::begin();
    let outcome = handle(&incoming, &env, &ctx, &mut exchange).await;
    let answer = exchange.finish(outcome, &env, &ctx);
    answer.into_response().map_err(worker::Error::from)
}

/// Runs one request; every error is an answer, never a panic or an `Err` to the runtime.
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

    exchange.cors = Cors::decide(&config.allowed_origins, exchange.origin.as_deref());
    exchange.log = config.request_log;
    let (method, raw_url, headers) = (&incoming.method, &incoming.url, &incoming.headers);
    let route = route(method, path_of(raw_url))?;
    exchange.route = Some(route.clone());
    if matches!(exchange.cors, Cors::Denied) {
        return Err(ProxyError::OriginNotAllowed);
    }

    match route {
        Route::Preflight => return respond::preflight(headers, &exchange.cors),
        Route::Health => {
            // A deployment whose managed callers cannot be served is not healthy.
            if let Some(name) = config.missing_for_managed_callers() {
                return Err(ProxyError::MissingSecret(name));
            }
            return respond::health(VERSION);
        }
        Route::Status => return status::handle_status(incoming, env, &config, VERSION).await,
        _ => {}
    }

    let caller = authenticate_request(headers, &config)?;
    let identity_hash = caller.identity_hash();
    exchange.caller_tag = Some(config.caller_tag(&identity_hash));
    exchange.identity_hash = Some(identity_hash);
    exchange.tier = Some(caller.tier.clone());
    let upstream_key = caller.upstream_key(&config)?;
    let betas = headers.value("anthropic-beta");
    check_betas(config.allowed_betas(&caller.tier), betas)?;

    let (body, facts, counted) = if route.carries_body() {
        let (body, counted) = read_body(env, incoming, &route, &config, &caller, exchange).await?;
        let (body, facts) = body.inspect(&route)?;
        (Some(body), facts, counted)
    } else if route.streams_body() {
        let streamed = runtime::streamed_upload(incoming);
        (Some(streamed), BodyFacts::default(), None)
    } else {
        (None, BodyFacts::default(), None)
    };
    exchange.stream = facts.stream;
    exchange.model.clone_from(&facts.model);

    let admitted = admit(
        env,
        ctx,
        &config,
        &route,
        &caller,
        (&facts, counted),
        exchange,
    )
    .await?;
    // The answer's usage is watched for the settlement (unless nothing it settles depends on
    // the answer), and for metrics when they are kept.
    let tap = admitted
        .as_ref()
        .is_some_and(|a| a.limits.settles_on_the_answer())
        || metrics::bound(env);

    // How the caller shares a scarce key: its tier's weight, priority and budget (a request
    // may lower its priority and shorten its budget, never the reverse).
    let share = config.tier_share(&caller.tier);
    let claimant = Claimant {
        caller: caller.identity.clone(),
        weight: share.weight,
        priority: Priority::requested(share.priority, headers.value("x-proxy-priority")),
    };
    let policy = RetryPolicy {
        budget_ms: share.budget_ms.unwrap_or(config.request_budget_ms),
        ..RetryPolicy::from_config(&config, None)
    };
    // A streamed body goes once: a second attempt would have nothing to send.
    let policy = RetryPolicy {
        max_attempts: if route.streams_body() {
            std::num::NonZeroU32::MIN
        } else {
            policy.max_attempts
        },
        ..policy
    }
    .with_client_budget(headers.value("x-proxy-budget-ms"))
    .awaiting(Awaited::of(&route, &facts));
    let path = route.upstream_path().ok_or(ProxyError::NotFound)?;
    let mut upstream = Upstream::new(
        upstream_url(&config.upstream_url, &path, query_of(raw_url)),
        method,
        headers,
        &upstream_key,
        body.as_ref(),
        facts.stream,
    )
    .with_model_span(facts.model_span.clone())
    .reading_json_whole(tap || route.carries_results_url())
    .reading_errors_within(config.attempt_timeout_ms);
    let fallbacks = match (&route, facts.model.as_deref()) {
        (Route::Messages, Some(model)) => Fallbacks::new(
            model,
            config.fallbacks_of(model),
            fallback::allowed_by_header(headers.value(OPT_OUT_HEADER)),
        ),
        _ => Fallbacks::none(),
    };
    let answer = forward_holding(
        env,
        &route,
        fallbacks,
        (&upstream_key, claimant),
        &facts,
        policy,
        &mut upstream,
        admitted.as_ref(),
        exchange,
    )
    .await;
    exchange.upstream_request_id = upstream.request_id.take();
    let answer = match answer {
        Ok(a) if route.carries_results_url() => {
            let origin = origin_of(raw_url).to_string();
            a.rewritten(config.attempt_timeout_ms, move |body| {
                point_at_proxy(body, &origin)
            })
            .await
        }
        other => other,
    };
    // A stream that goes silent for as long as its first event may take is cut.
    let mut delivered = answer.and_then(|a| transport::deliver(a, tap, config.attempt_timeout_ms));
    if let Some(admitted) = admitted {
        let (usage_to, usage) = oneshot::channel();
        exchange.usage = Some(Box::pin(
            async move { usage.await.unwrap_or(Usage::UNKNOWN) },
        ));
        admitted.settle_later(env, ctx, delivered.as_mut().ok(), usage_to);
    } else if let Some((seen, progress)) = delivered.as_mut().ok().and_then(|d| d.seen.take()) {
        exchange.usage = Some(Box::pin(async move {
            let seen = Some(limiter::reported(&seen).await);
            settlement_usage(Answered::Watched {
                seen,
                so_far: progress.usage(),
            })
        }));
    }
    delivered.map(|d| d.response)
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
    route: &Route,
    config: &Config,
    caller: &Caller,
    exchange: &mut Exchange,
) -> Result<(runtime::Body, Option<Vec<(&'static str, String)>>), ProxyError> {
    let limits = config.tier_limits(&caller.tier);
    let metering = route.metering(&limits);
    let reading = runtime::Reading {
        limit: config.max_body_bytes,
        caps: BodyCaps {
            isolate: config.max_inflight_body_bytes,
            caller: config.max_inflight_body_bytes_per_caller,
            bodies: limits
                .concurrency
                .filter(|_| matches!(metering, Metering::Full))
                .map(std::num::NonZeroU32::get),
        },
        pace: ReadPace {
            started_ms: exchange.started_ms,
            grace_ms: config.body_read_timeout_ms,
            min_bytes_per_s: config.min_body_bytes_per_s,
        },
    };
    let identity = exchange
        .identity_hash
        .clone()
        .unwrap_or_else(|| caller.identity_hash());
    let provisional = matches!(caller.upstream_key, UpstreamKey::Passthrough(_));
    let count_headers = std::cell::RefCell::new(Vec::new());
    let counting = runtime::Counting::at(
        count_while_arriving(metering, &limits, &reading.pace),
        || async {
            let mut headers = Vec::new();
            let counted =
                limiter::admit_request_only(env, &identity, limits, provisional, &mut headers)
                    .await;
            count_headers.borrow_mut().extend(headers);
            counted
        },
    );
    let read = runtime::read_body(incoming, &identity, reading, counting).await;
    let count_headers = count_headers.into_inner();
    match read {
        Ok((body, counted)) => Ok((body, counted.then_some(count_headers))),
        Err(refused) => {
            exchange.extra_headers.extend(count_headers);
            Err(refused)
        }
    }
}

/// The caller's own limits: at most one round trip to its object before anything goes upstream
/// (none when the isolate holds credit for the caller, see `limits::credit`). A
/// passthrough caller is provisional until the upstream accepts its key.
async fn admit(
    env: &Env,
    ctx: &Context,
    config: &Config,
    route: &Route,
    caller: &Caller,
    (facts, counted): (&BodyFacts, Option<Vec<(&'static str, String)>>),
    exchange: &mut Exchange,
) -> Result<Option<Admitted>, ProxyError> {
    let limits = config.tier_limits(&caller.tier);
    let provisional = matches!(caller.upstream_key, UpstreamKey::Passthrough(_));
    // Fingerprinted once per request, when the caller was authenticated.
    let identity_hash = exchange
        .identity_hash
        .clone()
        .unwrap_or_else(|| caller.identity_hash());
    let headers = &mut exchange.extra_headers;
    Ok(match route.metering(&limits) {
        Metering::Full => {
            let (reservation, on_credit) = limiter::admit(
                env,
                ctx,
                &identity_hash,
                limits,
                facts,
                WAITING_LEASE_MS,
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
#[allow(clippy::too_many_arguments)]
async fn forward_holding(
    env: &Env,
    route: &Route,
    fallbacks: Fallbacks,
    key: (&crate::identity::Secret, Claimant),
    facts: &BodyFacts,
    policy: RetryPolicy,
    upstream: &mut Upstream<'_>,
    admitted: Option<&Admitted>,
    exchange: &mut Exchange,
) -> Result<transport::UpstreamAnswer, ProxyError> {
    let attempts = forward(
        env, route, fallbacks, key, facts, policy, upstream, exchange,
    );
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
}

impl Admitted {
    fn settle_later(
        self,
        env: &Env,
        ctx: &Context,
        delivered: Option<&mut Delivered>,
        usage_to: oneshot::Sender<Usage>,
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
            on_credit,
            usage_to,
        );
    }
}

/// Runs the request's attempts through the core's runner; messages and token counts answer to
/// the upstream key's shared state for their pool (paced by what it costs), model listings to
/// none. A message may fall back to other models (see [`crate::retry::fallback`]).
#[allow(clippy::too_many_arguments)]
async fn forward(
    env: &Env,
    route: &Route,
    fallbacks: Fallbacks,
    (upstream_key, claimant): (&crate::identity::Secret, Claimant),
    facts: &BodyFacts,
    policy: RetryPolicy,
    upstream: &mut Upstream<'_>,
    exchange: &mut Exchange,
) -> Result<transport::UpstreamAnswer, ProxyError> {
    let (started_ms, seed) = (exchange.started_ms, runtime::random_u64());
    let cost = Cost {
        input_tokens: facts.input_tokens_estimate,
        output_tokens: facts.max_tokens.unwrap_or(0),
    };
    let (shared, memory) = if route.carries_body() {
        let pool = pool_of(route.paced_as(), facts.model.as_deref());
        let (shared, memory) = KeyState::new(env, upstream_key, pool, claimant);
        (Some(shared), memory)
    } else {
        (None, std::rc::Rc::default())
    };
    let run = Run {
        clock: &Platform,
        sleep: &Platform,
        policy,
        started_ms,
        seed,
        cost,
        shared,
        memory,
    };
    runner::run_with_fallbacks(run, fallbacks, upstream, &mut exchange.journal).await
}

fn authenticate_request(headers: &HeaderList, config: &Config) -> Result<Caller, ProxyError> {
    let presented = credential(headers.value("x-api-key"), headers.value("authorization"))?;
    authenticate(config, presented, runtime::now_ms())
}
