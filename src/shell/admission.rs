//! Admission before forwarding and settlement after the answer, against the caller's object.
//!
//! Admission is on the request's path (one Durable Object round trip); settlement is not: it
//! runs under `wait_until` once the answer's body has passed through, so the client never
//! waits for it, and exactly once whether the body ended, failed or the client went away.

use futures_channel::oneshot;
use worker::{Context, Env};

use super::objects::limiter;
use super::respond::Exchange;
use super::runtime::sleep_ms;
use crate::config::TierLimits;
use crate::error::ProxyError;
use crate::identity::Caller;
use crate::limits::{limit_headers, Admission, AdmissionRequest, Reservation, Usage};
use crate::request::body::BodyFacts;
use crate::stream::tap::{Progress, Seen};
use futures_util::future::{select, Either};
use std::pin::pin;

/// How long a concurrency slot stays held if its settlement never comes: an isolate that died
/// mid-stream, or a client that went away while the runtime dropped the whole request with
/// its settlement. A stream longer than this frees its slot early (the key may briefly run one
/// more stream than its limit); its settlement still returns unused tokens afterwards.
const LEASE_MS: u64 = 5 * 60 * 1000;

/// Asks the caller's object to admit the request. The caller's own limits go into the
/// answer's headers whatever the decision.
pub async fn admit(
    env: &Env,
    caller: &Caller,
    limits: TierLimits,
    facts: &BodyFacts,
    exchange: &mut Exchange,
) -> Result<Reservation, ProxyError> {
    let request = AdmissionRequest {
        input_tokens: facts.input_tokens_estimate,
        output_tokens: facts.max_tokens.unwrap_or(0),
        lease_ms: LEASE_MS,
    };
    let reply = limiter::admit(env, &caller.identity_hash(), limits, request).await?;
    let denial = match &reply.admission {
        Admission::Denied(denial) => Some(denial),
        _ => None,
    };
    exchange
        .extra_headers
        .extend(limit_headers(&reply.status, denial, reply.now_ms));
    match reply.admission {
        Admission::Admitted(reservation) => Ok(reservation),
        Admission::Denied(denial) => Err(ProxyError::from(&denial)),
        Admission::NeverFits(never) => Err(ProxyError::from(&never)),
    }
}

/// How long a tapped body may stand still before its settlement stops waiting for it. A
/// client that goes away mid-stream does not always get its stream dropped by the runtime (a
/// read from the upstream can be left pending forever); the slot must come back anyway.
const STALLED_BODY_MS: u64 = 20_000;

/// Waits for the tap's report, or until the body has not moved for [`STALLED_BODY_MS`].
async fn watch(mut seen: oneshot::Receiver<Seen>, progress: &Progress) -> Option<Seen> {
    let mut chunks = progress.chunks();
    loop {
        let tick = pin!(sleep_ms(STALLED_BODY_MS));
        match select(&mut seen, tick).await {
            Either::Left((report, _)) => return report.ok(),
            Either::Right(_) => {
                let now = progress.chunks();
                if now == chunks {
                    return None;
                }
                chunks = now;
            }
        }
    }
}

fn to_usage(seen: crate::stream::sse::Usage) -> Usage {
    Usage {
        input_tokens: seen.input_tokens,
        output_tokens: seen.output_tokens,
    }
}

/// Settles the reservation once the answer is over, off the client's path.
pub fn settle_later(
    env: &Env,
    ctx: &Context,
    caller: &Caller,
    limits: TierLimits,
    reservation: Reservation,
    seen: Option<(oneshot::Receiver<Seen>, Progress)>,
    delivered_ok: bool,
) {
    let env = env.clone();
    let identity_hash = caller.identity_hash();
    ctx.wait_until(async move {
        let usage = match seen {
            // A tapped answer reports what it saw when its body ends or is dropped.
            Some((seen, progress)) => match watch(seen, &progress).await {
                Some(seen) if seen.complete => to_usage(seen.usage),
                // Cut short: the input was used, the output so far is not known for sure.
                Some(seen) => Usage { input_tokens: seen.usage.input_tokens, output_tokens: None },
                None => Usage { input_tokens: progress.usage().input_tokens, output_tokens: None },
            },
            // A successful answer that could not be watched: keep the reservation.
            None if delivered_ok => Usage::UNKNOWN,
            // No answer came from the upstream, or an error did: no tokens were used.
            None => Usage { input_tokens: Some(0), output_tokens: Some(0) },
        };
        if let Err(e) = limiter::settle(&env, &identity_hash, limits, reservation, usage).await {
            worker::console_error!(
                "{}",
                serde_json::json!({"event": "settle_failed", "identity": identity_hash, "error": e.message()})
            );
        }
    });
}
