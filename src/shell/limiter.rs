//! The caller's rate limits, kept in one Durable Object per identity.
//!
//! A Durable Object runs one event at a time per key and keeps its state in memory between
//! events, so admission is exact under any concurrency: the object loads its
//! [`LimiterState`] once, then each call is `decide(state, now, call)` in memory followed by a
//! write to its SQLite-backed storage (the runtime holds the reply until the write is durable).
//! The object is named by a fingerprint of the identity, never by a key.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};
use worker::{
    durable_object, DurableObject, Env, Method, Request, RequestInit, Response, State,
};

use super::runtime::now_ms;
use crate::config::TierLimits;
use crate::error::ProxyError;
use crate::limits::{Admission, AdmissionRequest, DimensionStatus, LimiterState, Reservation, Usage};

/// The binding name in wrangler.toml.
pub const BINDING: &str = "LIMITER";
const STATE_KEY: &str = "limiter";

/// One call from the Worker to a caller's object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterCall {
    Admit { limits: TierLimits, request: AdmissionRequest },
    Settle { limits: TierLimits, reservation: Reservation, usage: Usage },
}

/// The object's answer to an admission: the decision and the caller's limits as of now.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdmitReply {
    pub admission: Admission,
    pub status: Vec<DimensionStatus>,
    /// The object's clock when it decided, so headers are computed on the same clock.
    pub now_ms: u64,
}

/// What the object stores: the state and the limits it was last used with (the alarm needs
/// them to tell an idle caller from a busy one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Stored {
    limiter: LimiterState,
    limits: TierLimits,
}

#[durable_object]
pub struct Limiter {
    state: State,
    stored: RefCell<Option<Stored>>,
    /// An alarm is scheduled (so admissions need not write one each time).
    alarm_set: Cell<bool>,
}

impl DurableObject for Limiter {
    fn new(state: State, _env: Env) -> Self {
        Limiter { state, stored: RefCell::new(None), alarm_set: Cell::new(false) }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        // Parsed by serde_json, not JSON.parse: seeds are full 64-bit integers.
        let text = req.text().await.unwrap_or_default();
        let call: LimiterCall = match serde_json::from_str(&text) {
            Ok(call) => call,
            Err(_) => return Response::error("unreadable limiter call", 400),
        };
        self.load().await?;
        let now = now_ms();
        // Decide synchronously: no other event can interleave between reading and updating.
        let (reply, snapshot, idle_at) = {
            let mut slot = self.stored.borrow_mut();
            let stored = slot.get_or_insert_with(Stored::default);
            let limiter = &mut stored.limiter;
            let reply = match call {
                LimiterCall::Admit { limits, request } => {
                    stored.limits = limits;
                    let admission = limiter.admit(&limits, now, &request);
                    let status = limiter.snapshot(&limits, now);
                    let idle_at = limiter.idle_in_ms(&limits, now);
                    (serde_json::to_value(AdmitReply { admission, status, now_ms: now }), Some(idle_at))
                }
                LimiterCall::Settle { limits, reservation, usage } => {
                    let settlement = limiter.settle(&limits, now, &reservation, usage);
                    (serde_json::to_value(settlement), None)
                }
            };
            (reply.0, stored.clone(), reply.1)
        };
        let reply = reply.map_err(|e| worker::Error::RustError(e.to_string()))?;
        let text = serde_json::to_string(&snapshot).map_err(|e| worker::Error::RustError(e.to_string()))?;
        self.state.storage().put(STATE_KEY, text).await?;
        if let Some(idle_in) = idle_at.filter(|_| !self.alarm_set.get()) {
            // Wake up when the caller may be idle (buckets full, no leases remembered), to
            // forget it; the alarm looks again later if new traffic came.
            let at = now.saturating_add(idle_in).saturating_add(1_000);
            if self.state.storage().set_alarm(at as i64).await.is_ok() {
                self.alarm_set.set(true);
            }
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_set.set(false);
        self.load().await?;
        let now = now_ms();
        let idle_in = self.stored.borrow().as_ref().map_or(0, |s| s.limiter.idle_in_ms(&s.limits, now));
        if idle_in == 0 {
            self.state.storage().delete_all().await?;
            *self.stored.borrow_mut() = None;
        } else {
            // Still busy (new traffic since the alarm was set): look again when it can be idle.
            let at = now.saturating_add(idle_in).saturating_add(1_000);
            if self.state.storage().set_alarm(at as i64).await.is_ok() {
                self.alarm_set.set(true);
            }
        }
        Response::ok("")
    }
}

impl Limiter {
    /// Loads the state once per object lifetime; it stays in memory afterwards.
    async fn load(&self) -> worker::Result<()> {
        if self.stored.borrow().is_some() {
            return Ok(());
        }
        // Stored as JSON text: one string through the JS boundary instead of a generic
        // conversion of every field (smaller bundle, and 64-bit numbers stay exact).
        let stored: Option<Stored> = self
            .state
            .storage()
            .get::<String>(STATE_KEY)
            .await
            .ok()
            .flatten()
            .and_then(|text| serde_json::from_str(&text).ok());
        let mut slot = self.stored.borrow_mut();
        // Another event may have loaded it while this one awaited storage.
        if slot.is_none() {
            *slot = Some(stored.unwrap_or_default());
        }
        Ok(())
    }
}

/// Sends one call to the caller's object and reads its JSON answer.
async fn call<T: for<'de> Deserialize<'de>>(
    env: &Env,
    identity_hash: &str,
    call: &LimiterCall,
) -> Result<T, ProxyError> {
    let unavailable = |what: &str| ProxyError::Unavailable(format!("rate limiter {what}"));
    let namespace = env.durable_object(BINDING).map_err(|_| ProxyError::MissingSecret("LIMITER binding"))?;
    let stub = namespace
        .id_from_name(identity_hash)
        .and_then(|id| id.get_stub())
        .map_err(|_| unavailable("not reachable"))?;
    let body = serde_json::to_string(call).map_err(|_| unavailable("call not encodable"))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body.into()));
    let request = Request::new_with_init("https://limiter/call", &init).map_err(|_| unavailable("call not built"))?;
    let mut response = stub.fetch_with_request(request).await.map_err(|_| unavailable("did not answer"))?;
    if response.status_code() != 200 {
        return Err(unavailable("refused the call"));
    }
    response.json::<T>().await.map_err(|_| unavailable("answer unreadable"))
}

pub async fn admit(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    request: AdmissionRequest,
) -> Result<AdmitReply, ProxyError> {
    call(env, identity_hash, &LimiterCall::Admit { limits, request }).await
}

pub async fn settle(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    reservation: Reservation,
    usage: Usage,
) -> Result<(), ProxyError> {
    let _: serde_json::Value =
        call(env, identity_hash, &LimiterCall::Settle { limits, reservation, usage }).await?;
    Ok(())
}
