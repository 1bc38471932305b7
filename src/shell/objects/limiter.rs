//! The caller's rate limits, kept in one Durable Object per identity.
//!
//! A Durable Object runs one event at a time per key and keeps its state in memory between
//! events, so admission is exact under any concurrency: the object loads its
//! [`LimiterState`] once, then each call is `decide(state, now, call)` in memory followed by a
//! write to its SQLite-backed storage (the runtime holds the reply until the write is durable).
//! The object is named by a fingerprint of the identity, never by a key.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::config::TierLimits;
use crate::error::ProxyError;
use crate::limits::{
    Admission, AdmissionRequest, DimensionStatus, LimiterState, Reservation, Usage,
};
use crate::shell::runtime::now_ms;

/// The binding name in wrangler.toml.
pub const BINDING: &str = "LIMITER";
const STATE_KEY: &str = "limiter";

/// One call from the Worker to a caller's object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterCall {
    Admit {
        limits: TierLimits,
        request: AdmissionRequest,
    },
    Settle {
        limits: TierLimits,
        reservation: Reservation,
        usage: Usage,
    },
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
        Limiter {
            state,
            stored: RefCell::new(None),
            alarm_set: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let Some(call) = super::read_call::<LimiterCall>(&mut req).await else {
            return Response::error("unreadable limiter call", 400);
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
                    (
                        serde_json::to_value(AdmitReply {
                            admission,
                            status,
                            now_ms: now,
                        }),
                        Some(idle_at),
                    )
                }
                LimiterCall::Settle {
                    limits,
                    reservation,
                    usage,
                } => {
                    let settlement = limiter.settle(&limits, now, &reservation, usage);
                    (serde_json::to_value(settlement), None)
                }
            };
            (reply.0, stored.clone(), reply.1)
        };
        let reply = reply.map_err(|e| worker::Error::RustError(e.to_string()))?;
        super::store(&self.state, STATE_KEY, &snapshot).await?;
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
        let idle_in = self
            .stored
            .borrow()
            .as_ref()
            .map_or(0, |s| s.limiter.idle_in_ms(&s.limits, now));
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
        super::load_once(&self.stored, &self.state, STATE_KEY).await;
        Ok(())
    }
}

pub async fn admit(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    request: AdmissionRequest,
) -> Result<AdmitReply, ProxyError> {
    super::call(
        env,
        BINDING,
        identity_hash,
        &LimiterCall::Admit { limits, request },
        "rate limiter",
    )
    .await
}

pub async fn settle(
    env: &Env,
    identity_hash: &str,
    limits: TierLimits,
    reservation: Reservation,
    usage: Usage,
) -> Result<(), ProxyError> {
    let _: serde_json::Value = super::call(
        env,
        BINDING,
        identity_hash,
        &LimiterCall::Settle {
            limits,
            reservation,
            usage,
        },
        "rate limiter",
    )
    .await?;
    Ok(())
}
