//! The caller's rate limits: its Durable Object (one per identity, named by a fingerprint of
//! the identity, never by a key), and the request's limiter port over it ([`CallerObject`]:
//! admit, count, renew, settle; [`Settling`] after the answer; when each is called is
//! `pipeline::serve`'s).
//!
//! Admission is on the request's path (one round trip, or none when the isolate holds credit
//! for the caller: `limits::credit`); settlement is not: it runs under `wait_until` once the
//! answer's body has passed through, so the client never waits for it. On credit, the settlement and the
//! unused tickets wait for the next call to carry them; every call here is made by the request
//! (or its `wait_until`) that needs it, and nothing is ever woken from another request's call.

use std::cell::RefCell;

use worker::{durable_object, Context, DurableObject, Env, Request, Response, State};

use super::Object;
use crate::config::TierLimits;
use crate::error::ProxyError;
use crate::limits::{
    limit_headers, AdmissionRequest, AdmitReply, CallerCredit, Carry, Credit, Credits, Ending,
    LimiterCall, LimiterObject, Owner, RefillReply, Reservation, Settled, CREDIT_VALID_MS,
};
use crate::pipeline::{Admitted, Lease, Limiter as LimiterPort, Terms};
use crate::shell::clock::now_ms;
use crate::shell::runtime::sleep_ms;

/// The binding name in wrangler.toml.
pub const BINDING: &str = "LIMITER";

// `alarm`: the runtime is handed `fetch` and `alarm` only. The object takes no WebSockets
// and no sockets, so their handlers (and their code) stay out of the module.
#[durable_object(alarm)]
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

/// The caller's limits as the Worker reaches them: its object (named by `identity_hash`, the
/// fingerprint made when the caller was authenticated) and this isolate's credit of it.
pub struct CallerObject<'r> {
    env: &'r Env,
    ctx: &'r Context,
    identity_hash: String,
    limits: TierLimits,
}

impl<'r> CallerObject<'r> {
    pub fn new(
        env: &'r Env,
        ctx: &'r Context,
        identity_hash: String,
        limits: TierLimits,
    ) -> CallerObject<'r> {
        CallerObject {
            env,
            ctx,
            identity_hash,
            limits,
        }
    }

    /// The fingerprint that names the caller's object.
    pub fn identity_hash(&self) -> &str {
        &self.identity_hash
    }
}

impl LimiterPort for CallerObject<'_> {
    type Settling = Settling;

    async fn admit(
        &self,
        request: AdmissionRequest,
        terms: Terms,
        headers: &mut Vec<(&'static str, String)>,
    ) -> Result<Admitted, ProxyError> {
        let (reservation, on_credit) = admit(self, request, terms, headers).await?;
        Ok(Admitted {
            reservation,
            on_credit,
        })
    }

    async fn admit_request_only(
        &self,
        provisional: bool,
        headers: &mut Vec<(&'static str, String)>,
    ) -> Result<(), ProxyError> {
        let call = LimiterCall::AdmitRequestOnly {
            limits: self.limits,
            provisional,
        };
        ask(self.env, &self.identity_hash, &call, headers)
            .await
            .map(|_| ())
    }

    fn settling(self) -> Settling {
        Settling {
            env: self.env.clone(),
            identity_hash: self.identity_hash,
            limits: self.limits,
        }
    }
}

impl Lease for CallerObject<'_> {
    async fn renew(&self, lease_id: u64, lease_ms: u64) {
        renew_for(
            self.env,
            &self.identity_hash,
            self.limits,
            lease_id,
            lease_ms,
        )
        .await;
    }

    async fn settle(&self, settled: Settled, on_credit: bool) {
        settle_or_lose(
            self.env,
            &self.identity_hash,
            self.limits,
            settled,
            on_credit,
        )
        .await;
    }
}

/// The caller's limits for a settlement, under the request's `waitUntil`.
pub struct Settling {
    env: Env,
    identity_hash: String,
    limits: TierLimits,
}

impl Lease for Settling {
    async fn renew(&self, lease_id: u64, lease_ms: u64) {
        renew_for(
            &self.env,
            &self.identity_hash,
            self.limits,
            lease_id,
            lease_ms,
        )
        .await;
    }

    async fn settle(&self, settled: Settled, on_credit: bool) {
        settle_or_lose(
            &self.env,
            &self.identity_hash,
            self.limits,
            settled,
            on_credit,
        )
        .await;
    }
}

/// [`settle`], except in the test build that loses every settlement (see Cargo.toml).
async fn settle_or_lose(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    settled: Settled,
    on_credit: bool,
) {
    if cfg!(feature = "fault-drop-settlement") {
        return;
    }
    settle(env, identity_hash, limits, settled, on_credit).await;
}

/// Admits the request: from the isolate's credit when a ticket covers it (no call), else by
/// asking the caller's object, which may grant tickets with the answer (see
/// `limits::credit`). The caller's own limits go into `headers` (for the answer) whatever the
/// decision: on credit, as of the grant. A provisional caller (a passthrough key the upstream
/// has not accepted yet) gets no credit: its object must not store anything yet. A request
/// counted against `rpm` while its body arrived is not counted again, so it is not taken
/// from a ticket either (a ticket counts one).
/// Whether the request was admitted on credit (its settlement may then wait for a ride).
async fn admit(
    caller: &CallerObject<'_>,
    request: AdmissionRequest,
    Terms {
        provisional,
        counted,
    }: Terms,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<(Reservation, bool), ProxyError> {
    let CallerObject {
        env,
        ctx,
        identity_hash,
        limits,
    } = caller;
    let (env, ctx, identity_hash, limits) = (*env, *ctx, identity_hash.as_str(), *limits);
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
    Ok((reply.answer(headers)?, on_credit))
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
pub struct OffPath;

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

async fn ask(
    env: &Env,
    identity_hash: &str,
    call: &LimiterCall,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<Reservation, ProxyError> {
    let reply: AdmitReply = super::call(env, BINDING, identity_hash, call, "rate limiter").await?;
    reply.answer(headers)
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

/// Settles with the caller's object: at once, or, for a request admitted `on_credit`, left
/// for the next call to carry (flushed now when the credit says so). A settlement that
/// charges more than was reserved stops admissions on what was granted, and goes at once.
async fn settle(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    settled: Settled,
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
        cost_micros,
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
