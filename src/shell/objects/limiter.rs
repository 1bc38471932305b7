//! The caller's rate limits: its Durable Object (one per identity, named by a fingerprint of
//! the identity, never by a key), admission before forwarding and settlement after the answer.
//!
//! Admission is on the request's path (one round trip, or none when the isolate holds credit
//! for the caller: `limits::credit`); settlement is not: it runs under `wait_until` once the
//! answer's body has passed through, so the client never waits for it, and exactly once
//! whether the body ended, failed or the client went away. On credit, the settlement and the
//! unused tickets wait for the next call to carry them; every call here is made by the request
//! (or its `wait_until`) that needs it, and nothing is ever woken from another request's call.

use std::cell::RefCell;
use std::pin::pin;

use futures_channel::oneshot;

use futures_util::future::{select, Either};
use worker::{durable_object, Context, DurableObject, Env, Request, Response, State};

use super::Object;
use crate::config::TierLimits;
use crate::error::ProxyError;
use crate::limits::prices::ModelPrice;
use crate::limits::quota::QuotaCharge;
use crate::limits::{
    limit_headers, quota_headers, settlement_cost, settlement_usage, Admission, AdmissionRequest,
    AdmitReply, Answered, CallerCredit, Carry, Credit, Credits, Ending, LimiterCall, LimiterObject,
    Owner, RefillReply, Renewals, Reservation, Settled, Step, Used, CREDIT_VALID_MS,
    WAITING_LEASE_MS, WAITING_RENEW_EVERY_MS, WATCH_TICK_MS,
};
use crate::request::body::BodyFacts;
use crate::shell::clock::now_ms;
use crate::shell::runtime::sleep_ms;
use crate::stream::tap::{Progress, Report, Seen};

/// The binding name in wrangler.toml.
pub const BINDING: &str = "LIMITER";

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

/// Admits the request: from the isolate's credit when a ticket covers it (no call), else by
/// asking the caller's object, which may grant tickets with the answer (see
/// `limits::credit`). The caller's own limits go into `headers` (for the answer) whatever the
/// decision: on credit, as of the grant. `provisional`: a caller the upstream has not accepted
/// yet (a passthrough key), whose object must not store anything yet; it gets no credit.
/// `counted`: the request was counted against `rpm` while its body arrived; it is not
/// counted again, so it is not taken from a ticket either (a ticket counts one).
/// Whether the request was admitted on credit (its settlement may then wait for a ride).
#[allow(clippy::too_many_arguments)]
pub async fn admit(
    env: &Env,
    ctx: &Context,
    identity_hash: &str,
    limits: TierLimits,
    facts: &BodyFacts,
    (lease_ms, quota): (u64, Option<QuotaCharge>),
    (provisional, counted): (bool, bool),
    headers: &mut Vec<(&'static str, String)>,
) -> Result<(Reservation, bool), ProxyError> {
    let request = AdmissionRequest {
        input_tokens: facts.input_tokens_estimate,
        output_tokens: facts.max_tokens.unwrap_or(0),
        lease_ms,
        quota,
    };
    let now = now_ms();
    let (credit, carry) = if provisional {
        (0, None)
    } else {
        let local = with_credit(identity_hash, limits, |c| {
            c.arrive(limits, now);
            if counted {
                None
            } else {
                c.take(&request, now)
            }
        });
        if let Some(Some(local)) = local {
            headers.extend(limit_headers(&local.status, None, local.status_ms));
            if let Some(wanted) = local.refill {
                let identity = identity_hash.to_string();
                crate::shell::keep_alive::wait_until(
                    ctx,
                    refill(env.clone(), identity, limits, wanted),
                );
            }
            return Ok((local.reservation, true));
        }
        with_credit(identity_hash, limits, |c| c.ask(&request, now)).unwrap_or((0, None))
    };
    let on_its_way = OnItsWay::new(identity_hash, carry.as_ref().map(|c| c.call), credit > 0);
    let call = LimiterCall::Admit {
        limits,
        request,
        provisional,
        credit,
        returns: carry.map(|c| c.returns).unwrap_or_default(),
        counted,
    };
    let reply: AdmitReply = super::call(env, BINDING, identity_hash, &call, "rate limiter").await?;
    on_its_way.arrived();
    let on_credit = !reply.tickets.is_empty();
    if on_credit {
        let status = reply.status.clone();
        let granted = with_credit(identity_hash, limits, |c| {
            c.granted(&reply.tickets, status, reply.now_ms, now)
        });
        if let Some(grant) = granted {
            let identity = identity_hash.to_string();
            crate::shell::keep_alive::wait_until(
                ctx,
                expire_later(env.clone(), identity, limits, grant),
            );
        }
    }
    Ok((answer(reply, headers)?, on_credit))
}

thread_local! {
    /// Every caller's credit in this isolate.
    static CREDITS: RefCell<Credits> = RefCell::new(Credits::default());
}

/// Runs `f` on the credit of `identity` (made when missing); `None` when the isolate's table
/// is out of reach (torn down).
fn with_credit<R>(
    identity: &str,
    limits: TierLimits,
    f: impl FnOnce(&mut Credit) -> R,
) -> Option<R> {
    CREDITS
        .try_with(|credits| {
            let mut credits = credits.try_borrow_mut().ok()?;
            credits.of(identity, limits, now_ms()).map(f)
        })
        .ok()
        .flatten()
}

/// Runs `f` on the credit of `identity`, if there is one.
fn with_existing<R>(identity: &str, f: impl FnOnce(&mut Credit) -> R) -> Option<R> {
    CREDITS
        .try_with(|credits| credits.try_borrow_mut().ok()?.get(identity).map(f))
        .ok()
        .flatten()
}

/// A call to the object that carries returns, or may bring tickets: when it is dropped
/// before it arrived (failed, or the request went away), its returns wait again for another
/// call and others may ask for tickets again. Nothing is woken: the owners of the returns
/// look on their own ticks.
struct OnItsWay {
    identity: String,
    call: Option<u64>,
    asking: bool,
}

impl OnItsWay {
    fn new(identity: &str, call: Option<u64>, asking: bool) -> OnItsWay {
        OnItsWay {
            identity: identity.to_string(),
            call,
            asking,
        }
    }

    fn arrived(mut self) {
        self.finish(true);
    }

    fn finish(&mut self, delivered: bool) {
        let (call, asking) = (self.call.take(), std::mem::take(&mut self.asking));
        if call.is_none() && !asking {
            return;
        }
        with_existing(&self.identity, |credit| {
            if let Some(call) = call {
                if delivered {
                    credit.outbox.delivered(call);
                } else {
                    credit.outbox.failed(call);
                }
            }
            if asking {
                credit.answered();
            }
        });
    }
}

impl Drop for OnItsWay {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Asks for more tickets off the request's path (under the request's `wait_until`), carrying
/// what waits in the outbox; the tickets are given back when their time is up.
async fn refill(env: Env, identity: String, limits: TierLimits, wanted: u32) {
    let now = now_ms();
    let Some((size, carry)) =
        with_credit(&identity, limits, |c| (c.ticket_size(), c.outbox.take(now)))
    else {
        return;
    };
    let on_its_way = OnItsWay::new(&identity, carry.as_ref().map(|c| c.call), true);
    let call = LimiterCall::Refill {
        limits,
        ticket: size,
        credit: wanted,
        returns: carry.map(|c| c.returns).unwrap_or_default(),
    };
    let Ok(reply) =
        super::call::<_, RefillReply>(&env, BINDING, &identity, &call, "rate limiter").await
    else {
        return;
    };
    on_its_way.arrived();
    if reply.tickets.is_empty() {
        return;
    }
    let granted = with_credit(&identity, limits, |c| {
        c.granted(&reply.tickets, reply.status, reply.now_ms, now)
    });
    if let Some(grant) = granted {
        expire_later(env, identity, limits, grant).await;
    }
}

/// Once a grant's time is up, gives back its unused tickets.
async fn expire_later(env: Env, identity: String, limits: TierLimits, grant: u64) {
    sleep_ms(CREDIT_VALID_MS).await;
    let Some(ids) = with_existing(&identity, |c| c.expire(grant)) else {
        return;
    };
    if !ids.is_empty() {
        deliver(&env, &identity, limits, ids).await;
    }
}

/// The caller as log lines name it: its tag (see `Config::caller_tag`), as in the request's
/// own line; empty when the configuration cannot be read.
fn logged_caller(env: &Env, identity_hash: &str) -> String {
    crate::shell::runtime::config(env)
        .map(|config| config.caller_tag(identity_hash))
        .unwrap_or_default()
}

/// Sees the returns `ids` of an expired grant delivered (see [`Owner::Grant`]), and logs
/// those given up.
async fn deliver(env: &Env, identity: &str, limits: TierLimits, ids: Vec<u64>) {
    let ending = own(env, identity, limits, &Owner::Grant(ids)).await;
    if let Ending::Abandoned { items } = ending {
        worker::console_error!(
            "{}",
            crate::metrics::event_line_counting(
                "settle_failed",
                &[
                    ("identity", &logged_caller(env, identity)),
                    ("error", "returns not delivered")
                ],
                ("items", u64::try_from(items).unwrap_or(u64::MAX))
            )
        );
    }
}

/// The caller's flusher (see [`Owner::Flusher`]): sends the settlements no other call has
/// carried until none is left or it hands over, and logs those its failed calls left for the
/// next flusher. Whenever it stops, the next settlement deferred becomes the flusher.
async fn flush(env: &Env, identity: &str, limits: TierLimits) {
    struct Flusher<'a>(&'a str);
    impl Drop for Flusher<'_> {
        fn drop(&mut self) {
            with_existing(self.0, Credit::flusher_gone);
        }
    }
    let _flusher = Flusher(identity);
    if own(env, identity, limits, &Owner::Flusher).await == Ending::Left {
        worker::console_error!(
            "{}",
            crate::metrics::event_line(
                "settle_failed",
                &[
                    ("identity", &logged_caller(env, identity)),
                    (
                        "error",
                        "settlements not delivered; left for the next flusher"
                    )
                ]
            )
        );
    }
}

/// The owner's work (see [`crate::limits::own`]) on the runtime's clock, over this isolate's
/// credit of the caller, one call to its object at a time.
async fn own(env: &Env, identity: &str, limits: TierLimits, owner: &Owner) -> Ending {
    let send = |carry| send_returns(env, identity, limits, carry);
    crate::limits::own(&OffPath, &OffPath, owner, &Existing(identity), send).await
}

/// The caller's credit in this isolate, if there is one.
struct Existing<'a>(&'a str);

impl CallerCredit for Existing<'_> {
    fn with<R>(&self, f: impl FnOnce(&mut Credit) -> R) -> Option<R> {
        with_existing(self.0, f)
    }
}

/// The runtime's clock and sleep for the work done off the request's path: its waits are
/// not a request's (they are not counted among the requests waiting).
struct OffPath;

impl crate::retry::runner::Clock for OffPath {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl crate::retry::runner::Sleep for OffPath {
    async fn sleep(&self, ms: u64) {
        sleep_ms(ms).await;
    }
}

/// One call that hands back `carry`; whether the object took it.
async fn send_returns(env: &Env, identity: &str, limits: TierLimits, carry: Carry) -> bool {
    let on_its_way = OnItsWay::new(identity, Some(carry.call), false);
    let call = LimiterCall::Refill {
        limits,
        ticket: None,
        credit: 0,
        returns: carry.returns,
    };
    let sent = super::call::<_, RefillReply>(env, BINDING, identity, &call, "rate limiter").await;
    if sent.is_ok() {
        on_its_way.arrived();
    }
    sent.is_ok()
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
    answer(reply, headers)
}

/// The object's answer to an admission: the reservation, with the caller's limits for the
/// answer's headers; or the refusal, which carries those headers itself.
fn answer(
    reply: AdmitReply,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<Reservation, ProxyError> {
    match reply.admission {
        Admission::Admitted(reservation) => {
            headers.extend(limit_headers(&reply.status, None, reply.now_ms));
            quota_headers(headers, &reply.quotas, None, reply.now_ms);
            Ok(reservation)
        }
        Admission::Exhausted(refusal) => {
            let mut refused = ProxyError::from(&refusal);
            if let ProxyError::RateLimited {
                limit_headers: own, ..
            } = &mut refused
            {
                *own = limit_headers(&reply.status, None, reply.now_ms);
                quota_headers(own, &reply.quotas, Some(&refusal), reply.now_ms);
            }
            Err(refused)
        }
        Admission::Denied(denial) => {
            let mut refused = ProxyError::from(&denial);
            if let ProxyError::RateLimited {
                limit_headers: own, ..
            } = &mut refused
            {
                *own = limit_headers(&reply.status, Some(&denial), reply.now_ms);
                quota_headers(own, &reply.quotas, None, reply.now_ms);
            }
            Err(refused)
        }
    }
}

// `watch` relies on it: the lease a request holds when its answer starts outlasts the
// first renewal (or the cut of a still body's lease, which comes sooner), also when the lease
// is a ticket's, granted up to `CREDIT_VALID_MS` before the request began.
const _: () = assert!(
    crate::limits::WAITING_LEASE_MS
        - crate::limits::WAITING_RENEW_EVERY_MS
        - crate::limits::CREDIT_VALID_MS
        > crate::limits::FIRST_RENEWAL_MS + WATCH_TICK_MS
);

/// Waits for the tap's report, looking every [`WATCH_TICK_MS`], or until the body has not
/// moved for `STALLED_BODY_MS`. The slot is renewed as [`Renewals`] says: rarely while the
/// body moves, for a few seconds only once it stands still, so the slot frees itself soon
/// even if this never returns. A report left by a dropped body wakes nothing (see
/// `stream::tap`); each tick looks for one.
async fn watch(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    lease_id: u64,
    report: &Report,
    progress: &Progress,
) -> Option<Seen> {
    let mut renewals = Renewals::new(progress.chunks());
    loop {
        let tick = pin!(sleep_ms(WATCH_TICK_MS));
        match select(pin!(report.ended()), tick).await {
            Either::Left((seen, _)) => return Some(seen),
            Either::Right(_) if report.seen().is_some() => return report.seen(),
            Either::Right(_) => match renewals.tick(progress.chunks()) {
                Step::Wait => {}
                Step::Stalled => return None,
                Step::Renew(lease_ms) => {
                    renew_for(env, identity_hash, limits, lease_id, lease_ms).await;
                }
            },
        }
    }
}

/// The tap's report, whenever it is made: at once when the body ends as it is read, or by the
/// next tick when a drop made it (see `stream::tap`).
pub async fn reported(report: &Report) -> Seen {
    loop {
        let tick = pin!(sleep_ms(WATCH_TICK_MS));
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
    let _: Result<crate::json::Json, ProxyError> =
        super::call(env, BINDING, identity_hash, &call, "rate limiter").await;
}

/// Settles the reservation once the answer is over, off the client's path. `confirms`: the
/// caller is known to the upstream (managed, or its key was just accepted), so its object
/// may store its state. A request admitted `on_credit` leaves its settlement for the next
/// call to the object to carry; the caller's flusher (see [`flush`]) sends it after
/// [`SETTLE_DELAY_MS`](crate::limits::SETTLE_DELAY_MS) if none did.
/// The usage settled with also goes to `usage_to`.
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
    (on_credit, price): (bool, Option<ModelPrice>),
    usage_to: oneshot::Sender<(Used, Option<u64>)>,
) {
    let env = env.clone();
    crate::shell::keep_alive::wait_until(ctx, async move {
        let lease_id = reservation.lease_id;
        let answered = answered(
            &env,
            &identity_hash,
            limits,
            lease_id,
            watched,
            delivered_ok,
        );
        let answered = answered.await;
        let cost_micros = settlement_cost(answered, price.as_ref());
        let usage: Used = settlement_usage(answered);
        // Metrics hear the usage too (nobody listens when they are not kept).
        let _ = usage_to.send((usage, cost_micros));
        if cfg!(feature = "fault-drop-settlement") {
            // The test build that loses every settlement (see Cargo.toml).
            return;
        }
        let settled = Settled {
            reservation,
            usage,
            confirms,
        };
        settle(
            &env,
            &identity_hash,
            limits,
            (settled, cost_micros),
            on_credit,
        )
        .await;
    });
}

/// How the answer went, for its settlement: a tapped answer reports what it saw when its body
/// ends or is dropped, its slot renewed meanwhile (see [`watch`]).
async fn answered(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    lease_id: u64,
    watched: Option<(Report, Progress)>,
    delivered_ok: bool,
) -> Answered {
    match watched {
        Some((seen, progress)) => {
            let seen = watch(env, identity_hash, limits, lease_id, &seen, &progress).await;
            Answered::Watched {
                seen,
                so_far: progress.usage(),
            }
        }
        None => Answered::Unwatched { delivered_ok },
    }
}

/// Settles with the caller's object: at once, or, for a request admitted `on_credit`, left
/// for the next call to carry (flushed now when the credit says so). A settlement that
/// charges more than was reserved stops admissions on what was granted, and goes at once.
async fn settle(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    (settled, cost_micros): (Settled, Option<u64>),
    on_credit: bool,
) {
    if settled.charges_extra(&limits) {
        // The caller may be in debt now: no more admissions here on what was granted.
        with_existing(identity_hash, Credit::stop_admitting);
    } else if on_credit {
        match with_credit(identity_hash, limits, |c| c.defer(settled)) {
            Some(true) => return flush(env, identity_hash, limits).await,
            // The caller's flusher will see to it.
            Some(false) => return,
            None => {}
        }
    }
    let Settled {
        reservation,
        usage,
        confirms,
    } = settled;
    let call = LimiterCall::Settle {
        limits,
        reservation,
        usage,
        confirms,
        cost_micros,
    };
    let settled: Result<crate::json::Json, ProxyError> =
        super::call(env, BINDING, identity_hash, &call, "rate limiter").await;
    if let Err(e) = settled {
        worker::console_error!(
            "{}",
            crate::metrics::event_line(
                "settle_failed",
                &[
                    ("identity", &logged_caller(env, identity_hash)),
                    ("error", &e.message())
                ]
            )
        );
    }
}
