//! The caller's rate limits: its Durable Object (one per identity, named by a fingerprint of
//! the identity, never by a key), admission before forwarding and settlement after the answer.
//!
//! Admission is on the request's path (one round trip); settlement is not: it runs under
//! `wait_until` once the answer's body has passed through, so the client never waits for it,
//! and exactly once whether the body ended, failed or the client went away.

use std::pin::pin;

use futures_channel::oneshot;

use futures_util::future::{select, Either};
use worker::{durable_object, Context, DurableObject, Env, Request, Response, State};

use super::Object;
use crate::config::TierLimits;
use crate::error::ProxyError;
use crate::limits::{
    limit_headers, settlement_usage, Admission, AdmissionRequest, AdmitReply, Answered,
    LimiterCall, LimiterObject, Reservation, Usage, RENEW_EVERY_MS, STREAM_LEASE_MS,
    WAITING_LEASE_MS, WAITING_RENEW_EVERY_MS,
};
use crate::request::body::BodyFacts;
use crate::shell::runtime::sleep_ms;
use crate::stream::tap::{Progress, Report, Seen};

/// The binding name in wrangler.toml.
pub const BINDING: &str = "LIMITER";

/// How long a tapped body may stand still before its settlement stops waiting for it. A
/// client that goes away mid-stream does not always get its stream dropped by the runtime (a
/// read from the upstream can be left pending forever); the slot must come back anyway.
const STALLED_BODY_MS: u64 = 20_000;

#[durable_object]
pub struct Limiter {
    object: Object<LimiterObject>,
}

impl DurableObject for Limiter {
    fn new(state: State, _env: Env) -> Self {
        Limiter {
            object: Object::new(state),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        self.object.fetch(req).await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.object.alarm().await
    }
}

/// Asks the caller's object to admit the request. The caller's own limits go into
/// `headers` (for the answer) whatever the decision. `provisional`: a caller the upstream
/// has not accepted yet (a passthrough key), whose object must not store anything yet.
pub async fn admit(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    facts: &BodyFacts,
    lease_ms: u64,
    provisional: bool,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<Reservation, ProxyError> {
    let request = AdmissionRequest {
        input_tokens: facts.input_tokens_estimate,
        output_tokens: facts.max_tokens.unwrap_or(0),
        lease_ms,
    };
    let call = LimiterCall::Admit {
        limits,
        request,
        provisional,
    };
    ask(env, identity_hash, &call, headers).await
}

/// Asks the caller's object to count one request against `rpm` only (token counts, model
/// listings): nothing is reserved, so nothing is settled afterwards.
pub async fn admit_request_only(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    provisional: bool,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<(), ProxyError> {
    let call = LimiterCall::AdmitRequestOnly {
        limits,
        provisional,
    };
    ask(env, identity_hash, &call, headers).await.map(|_| ())
}

async fn ask(
    env: &Env,
    identity_hash: &str,
    call: &LimiterCall,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<Reservation, ProxyError> {
    let reply: AdmitReply = super::call(env, BINDING, identity_hash, call, "rate limiter").await?;
    let denial = match &reply.admission {
        Admission::Denied(denial) => Some(denial),
        _ => None,
    };
    headers.extend(limit_headers(&reply.status, denial, reply.now_ms));
    match reply.admission {
        Admission::Admitted(reservation) => Ok(reservation),
        Admission::Denied(denial) => Err(ProxyError::from(&denial)),
        Admission::NeverFits(never) => Err(ProxyError::from(&never)),
    }
}

// `watch` relies on it: the lease a request holds when its answer starts outlasts the
// first renewal tick.
const _: () = assert!(
    crate::limits::WAITING_LEASE_MS - crate::limits::WAITING_RENEW_EVERY_MS
        > 2 * crate::limits::RENEW_EVERY_MS
);

/// Waits for the tap's report, or until the body has not moved for [`STALLED_BODY_MS`]. While
/// it moves, the slot is renewed for [`STREAM_LEASE_MS`] every [`RENEW_EVERY_MS`]; once it
/// stops, the renewals stop too, so the slot frees itself even if this never returns. A
/// report left by a dropped body wakes nothing (see `stream::tap`); each tick looks for one.
async fn watch(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    lease_id: u64,
    report: &Report,
    progress: &Progress,
) -> Option<Seen> {
    let mut chunks = progress.chunks();
    let mut still_ms = 0;
    // No renewal up front: the lease the request holds (renewed every
    // `WAITING_RENEW_EVERY_MS` for `WAITING_LEASE_MS` while the attempts ran) outlasts the
    // first tick by far, and most answers end before it, so they cost no call here.
    loop {
        let tick = pin!(sleep_ms(RENEW_EVERY_MS));
        match select(pin!(report.ended()), tick).await {
            Either::Left((seen, _)) => return Some(seen),
            Either::Right(_) if report.seen().is_some() => return report.seen(),
            Either::Right(_) => {
                let now = progress.chunks();
                if now == chunks {
                    still_ms += RENEW_EVERY_MS;
                    if still_ms >= STALLED_BODY_MS {
                        return None;
                    }
                } else {
                    still_ms = 0;
                    chunks = now;
                    renew(env, identity_hash, limits, lease_id).await;
                }
            }
        }
    }
}

/// The tap's report, whenever it is made: at once when the body ends as it is read, or by the
/// next tick when a drop made it (see `stream::tap`).
pub async fn reported(report: &Report) -> Seen {
    loop {
        let tick = pin!(sleep_ms(RENEW_EVERY_MS));
        match select(pin!(report.ended()), tick).await {
            Either::Left((seen, _)) => return seen,
            Either::Right(_) => {
                if let Some(seen) = report.seen() {
                    return seen;
                }
            }
        }
    }
}

/// Holds the slot of a request that has no answer yet, for as long as this runs: renewed
/// for [`WAITING_LEASE_MS`] every [`WAITING_RENEW_EVERY_MS`]. Run it beside the attempts and
/// drop it when they end; if the runtime drops the request, the lease soon ends by itself.
pub async fn hold(env: &Env, identity_hash: &str, limits: TierLimits, lease_id: u64) {
    loop {
        sleep_ms(WAITING_RENEW_EVERY_MS).await;
        renew_for(env, identity_hash, limits, lease_id, WAITING_LEASE_MS).await;
    }
}

/// Holds a moving answer's slot for another [`STREAM_LEASE_MS`].
async fn renew(env: &Env, identity_hash: &str, limits: TierLimits, lease_id: u64) {
    renew_for(env, identity_hash, limits, lease_id, STREAM_LEASE_MS).await;
}

async fn renew_for(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    lease_id: u64,
    lease_ms: u64,
) {
    let call = LimiterCall::Renew {
        limits,
        lease_id,
        lease_ms,
    };
    // A renewal that fails is logged by the call; the lease then ends on its own.
    let _: Result<serde_json::Value, ProxyError> =
        super::call(env, BINDING, identity_hash, &call, "rate limiter").await;
}

/// Settles the reservation once the answer is over, off the client's path. `confirms`: the
/// caller is known to the upstream (managed, or its key was just accepted), so its object
/// may store its state. The usage settled with also goes to `usage_to`.
#[allow(clippy::too_many_arguments)]
pub fn settle_later(
    env: &Env,
    ctx: &Context,
    identity_hash: String,
    limits: TierLimits,
    reservation: Reservation,
    watched: Option<(Report, Progress)>,
    delivered_ok: bool,
    confirms: bool,
    usage_to: oneshot::Sender<Usage>,
) {
    let env = env.clone();
    ctx.wait_until(async move {
        let answered = match watched {
            // A tapped answer reports what it saw when its body ends or is dropped.
            Some((seen, progress)) => {
                let seen = watch(&env, &identity_hash, limits, reservation.lease_id, &seen, &progress).await;
                Answered::Watched { seen, so_far: progress.usage() }
            }
            None => Answered::Unwatched { delivered_ok },
        };
        let usage: Usage = settlement_usage(answered);
        // Metrics hear the usage too (nobody listens when they are not kept).
        let _ = usage_to.send(usage);
        let call = LimiterCall::Settle { limits, reservation, usage, confirms };
        let settled: Result<serde_json::Value, ProxyError> =
            super::call(&env, BINDING, &identity_hash, &call, "rate limiter").await;
        if let Err(e) = settled {
            worker::console_error!(
                "{}",
                serde_json::json!({"event": "settle_failed", "identity": identity_hash, "error": e.message()})
            );
        }
    });
}
