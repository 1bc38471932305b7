//! Upstream trouble as shared knowledge: one Durable Object per upstream key.
//!
//! Every edge asks the key's object before a retry (and before a first attempt while it has
//! seen trouble lately) whether to go, wait or answer now, and tells it how attempts ended.
//! The object keeps the key's cooldown after a 429, marks a model overloaded after a run of
//! 529s and then lets only jittered probes through, releases the waiting requests with jitter
//! when a probe succeeds, and holds retries within a budget. On the happy path an edge does
//! not ask at all: it counts its first attempts and reports them with its next call.

use std::cell::{Cell, RefCell};

use serde::{Deserialize, Serialize};
use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::error::{LimitInfo, ProxyError, Scope};
use crate::identity::Secret;
use crate::retry::{classify, Cause, Outcome};
use crate::shell::respond::{Exchange, LoggedWait};
use crate::shell::runtime::{now_ms, random_u64, sleep_ms};
use crate::upstream::{
    AttemptReport, Change, Gate, OutagePolicy, ProbeTicket, RefuseReason, Reply, UpstreamState,
    WaitReason,
};

pub const BINDING: &str = "UPSTREAM";
const STATE_KEY: &str = "upstream";

/// After seeing trouble, an edge consults the object for this long before first attempts.
const TROUBLE_MEMORY_MS: u64 = 30_000;
/// Most gate calls one request makes while waiting (a guard against a runaway loop).
const MAX_GATE_CALLS: u32 = 400;

thread_local! {
    /// Until when this isolate consults the object before first attempts.
    static TROUBLE_UNTIL_MS: Cell<u64> = const { Cell::new(0) };
    /// First attempts sent without asking, not yet reported to the object.
    static UNREPORTED: Cell<u32> = const { Cell::new(0) };
}

fn mark_trouble(now: u64) {
    TROUBLE_UNTIL_MS.with(|t| t.set(t.get().max(now.saturating_add(TROUBLE_MEMORY_MS))));
}

fn troubled(now: u64) -> bool {
    TROUBLE_UNTIL_MS.with(|t| now < t.get())
}

fn take_unreported() -> u32 {
    UNREPORTED.with(|u| u.replace(0))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum UpstreamCall {
    Before {
        model: String,
        is_retry: bool,
        deadline_ms: u64,
        request_seed: u64,
        unreported: u32,
    },
    After {
        model: String,
        report: AttemptReport,
        rng_seed: u64,
        unreported: u32,
    },
}

#[durable_object]
pub struct Upstream {
    state: State,
    upstream: RefCell<Option<UpstreamState>>,
    /// An alarm is scheduled (so calls need not look for one each time).
    alarm_set: Cell<bool>,
}

impl DurableObject for Upstream {
    fn new(state: State, _env: Env) -> Self {
        Upstream {
            state,
            upstream: RefCell::new(None),
            alarm_set: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let Some(call) = super::read_call::<UpstreamCall>(&mut req).await else {
            return Response::error("unreadable upstream call", 400);
        };
        self.load().await?;
        let policy = OutagePolicy::default();
        let now = now_ms();
        let (reply, snapshot) = {
            let mut slot = self.upstream.borrow_mut();
            let upstream = slot.get_or_insert_with(UpstreamState::new);
            let reply = match call {
                UpstreamCall::Before {
                    model,
                    is_retry,
                    deadline_ms,
                    request_seed,
                    unreported,
                } => {
                    upstream.record_requests(&policy, now, unreported);
                    serde_json::to_value(upstream.before_attempt(
                        &policy,
                        now,
                        &model,
                        is_retry,
                        deadline_ms,
                        request_seed,
                    ))
                }
                UpstreamCall::After {
                    model,
                    report,
                    rng_seed,
                    unreported,
                } => {
                    upstream.record_requests(&policy, now, unreported);
                    serde_json::to_value(
                        upstream.after_attempt(&policy, now, &model, report, rng_seed),
                    )
                }
            };
            (reply, upstream.clone())
        };
        let reply = reply.map_err(|e| worker::Error::RustError(e.to_string()))?;
        super::store(&self.state, STATE_KEY, &snapshot).await?;
        if !self.alarm_set.get()
            && self
                .state
                .storage()
                .set_alarm(now.saturating_add(60_000) as i64)
                .await
                .is_ok()
        {
            self.alarm_set.set(true);
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_set.set(false);
        self.load().await?;
        let now = now_ms();
        let idle = self
            .upstream
            .borrow()
            .as_ref()
            .is_none_or(|u| u.is_idle(&OutagePolicy::default(), now));
        if idle {
            self.state.storage().delete_all().await?;
            *self.upstream.borrow_mut() = None;
        } else if self
            .state
            .storage()
            .set_alarm(now.saturating_add(60_000) as i64)
            .await
            .is_ok()
        {
            self.alarm_set.set(true);
        }
        Response::ok("")
    }
}

impl Upstream {
    async fn load(&self) -> worker::Result<()> {
        super::load_once(&self.upstream, &self.state, STATE_KEY).await;
        Ok(())
    }
}

/// One request's view of the shared upstream state.
pub struct Guard<'a> {
    env: &'a Env,
    /// The object's name: a fingerprint of the upstream key.
    object: String,
    model: String,
    seed: u64,
    /// The object has been asked for this request (so its end is worth reporting).
    consulted: bool,
}

impl<'a> Guard<'a> {
    pub fn new(env: &'a Env, upstream_key: &Secret, model: Option<&str>) -> Guard<'a> {
        Guard {
            env,
            object: upstream_key.fingerprint("upstream"),
            model: model.unwrap_or("").to_string(),
            seed: random_u64(),
            consulted: false,
        }
    }

    /// Before an attempt: waits as long as the object says (never past the deadline), then
    /// returns the probe ticket if this attempt is the model's probe, or the answer to give
    /// now when the object refuses.
    pub async fn before(
        &mut self,
        is_retry: bool,
        deadline_ms: u64,
        last_cause: Option<Cause>,
        exchange: &mut Exchange,
    ) -> Result<Option<ProbeTicket>, ProxyError> {
        let now = now_ms();
        if !is_retry && !troubled(now) {
            UNREPORTED.with(|u| u.set(u.get().saturating_add(1)));
            return Ok(None);
        }
        self.consulted = true;
        for _ in 0..MAX_GATE_CALLS {
            let call = UpstreamCall::Before {
                model: self.model.clone(),
                is_retry,
                deadline_ms,
                request_seed: self.seed,
                unreported: take_unreported(),
            };
            let gate: Gate = match self.call(&call).await {
                Ok(gate) => gate,
                // The object is a guard, not a gate keeper of last resort: if it cannot be
                // reached, the request goes on under its own retry policy.
                Err(e) => {
                    worker::console_error!(
                        "{}",
                        serde_json::json!({"event": "upstream_state_unavailable", "error": e.message()})
                    );
                    return Ok(None);
                }
            };
            match gate {
                Gate::Go { probe } => return Ok(probe),
                Gate::Wait { until_ms, reason } => {
                    let now = now_ms();
                    mark_trouble(now);
                    let ms = until_ms.min(deadline_ms).saturating_sub(now).max(1);
                    let cause = match reason {
                        WaitReason::Cooldown => "upstream_cooldown",
                        WaitReason::Overloaded => "model_overloaded",
                        WaitReason::Recovering => "model_recovering",
                    };
                    exchange.waits.push(LoggedWait {
                        ms,
                        cause: cause.to_string(),
                    });
                    sleep_ms(ms).await;
                }
                Gate::Refuse {
                    retry_after_ms,
                    reason,
                } => {
                    mark_trouble(now_ms());
                    exchange.stopped = Some(format!("refused_{}", refuse_name(reason)));
                    return Err(refusal(reason, retry_after_ms, last_cause));
                }
            }
        }
        Err(ProxyError::Overloaded {
            retry_after_ms: 1000,
        })
    }

    /// After an attempt: tells the object how it ended, when that is news to it.
    pub async fn after(&self, outcome: &Outcome, probe: Option<ProbeTicket>) {
        let now = now_ms();
        let reply = Reply::of(outcome);
        let trouble = classify(outcome).is_retry()
            || matches!(reply, Reply::Overloaded | Reply::RateLimited { .. });
        if trouble {
            mark_trouble(now);
        }
        if !(trouble || probe.is_some() || self.consulted || troubled(now)) {
            return;
        }
        let call = UpstreamCall::After {
            model: self.model.clone(),
            report: AttemptReport { reply, probe },
            rng_seed: random_u64(),
            unreported: take_unreported(),
        };
        if let Err(e) = self.call::<Change>(&call).await {
            worker::console_error!(
                "{}",
                serde_json::json!({"event": "upstream_state_unavailable", "error": e.message()})
            );
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        call: &UpstreamCall,
    ) -> Result<T, ProxyError> {
        super::call(self.env, BINDING, &self.object, call, "upstream state").await
    }
}

fn refuse_name(reason: RefuseReason) -> &'static str {
    match reason {
        RefuseReason::Cooldown => "cooldown",
        RefuseReason::Overloaded => "overloaded",
        RefuseReason::RetryBudget => "retry_budget",
    }
}

/// The structured answer for a refusal: a cooldown is the upstream's rate limit, an overload
/// is a 503, and a spent retry budget answers for the request's last failure.
fn refusal(reason: RefuseReason, retry_after_ms: u64, last_cause: Option<Cause>) -> ProxyError {
    let retry_after_ms = retry_after_ms.max(1000);
    let rate_limited = || ProxyError::RateLimited {
        retry_after_ms,
        message: format!(
            "the upstream key is rate limited; retry in {} s",
            crate::error::whole_seconds(retry_after_ms)
        ),
        limit: LimitInfo {
            scope: Scope::Upstream,
            dimension: None,
            limit: None,
            remaining: None,
        },
    };
    match (reason, last_cause) {
        (RefuseReason::Cooldown, _) | (RefuseReason::RetryBudget, Some(Cause::RateLimited)) => {
            rate_limited()
        }
        (RefuseReason::RetryBudget, Some(Cause::Timeout)) => {
            ProxyError::UpstreamTimeout { retry_after_ms }
        }
        (RefuseReason::RetryBudget, Some(Cause::Unreachable)) => {
            ProxyError::UpstreamUnreachable { retry_after_ms }
        }
        _ => ProxyError::Overloaded { retry_after_ms },
    }
}
