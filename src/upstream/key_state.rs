//! The shared state of one upstream key and the calls that change it.

use serde::{Deserialize, Serialize};

use super::budget::{BudgetWindow, RetryBudget};
use super::draw::{self, Purpose};
use super::health::{model_key, ModelChange, ModelGate, ModelHealth, Phase};
use super::outage_policy::OutagePolicy;
use super::pace::{Cost, KeyLimits, PaceOutlook, PaceReason, SendTime};
use super::share::{CallerShare, Claimant, Place, Turn};
use super::stored::stored;
use crate::retry::{Outcome, MAX_UPSTREAM_WAIT_MS, MIN_RETRY_AFTER_MS};

/// One `429` cools its pool down for at most this long, unless the upstream's own reset of
/// an empty dimension is later: a retry-after of hours on one answer must not stop a pool.
pub const MAX_COOLDOWN_MS: u64 = 60_000;

/// Retries held while the object finds out what shedding is go again spread over this much
/// after it knows.
const MEASURE_SPREAD_MS: u64 = 250;

pub use crate::durable::MAX_CLOCK_LEAD_MS;

/// Identifies a probe; hand it back in the attempt's [`AttemptReport`]. Only the probe in
/// flight frees the probe slot, so a late report of an expired probe cannot free its
/// successor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProbeTicket(pub(crate) u64);

impl ProbeTicket {
    /// The probe's number, unique within the key's state.
    #[must_use]
    pub fn id(self) -> u64 {
        self.0
    }
}

/// Why a request is told to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// The key is rate-limited upstream until the cooldown ends.
    Cooldown,
    /// The model is overloaded: only its probe goes out.
    Overloaded,
    /// A probe got through: the request goes out at its release slot.
    Recovering,
    /// The key is scarce and the request waits its fair turn in the pool's queue: its place
    /// is kept; ask again then (the object holds the call meanwhile when it can).
    Queued,
}

crate::json::deserialize_by_name!(WaitReason {
    Cooldown = "cooldown",
    Overloaded = "overloaded",
    Recovering = "recovering",
    Queued = "queued",
});

/// Why a request is answered at once instead of reaching the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseReason {
    /// The key's cooldown outlasts the request's deadline: 429, scope upstream.
    Cooldown,
    /// The model stays overloaded past the request's deadline: 503 `overloaded_error`.
    Overloaded,
    /// The key's retries are used up: give the structured answer for the last failure.
    RetryBudget,
    /// Its send time falls after its deadline: the key's own limit (429, scope upstream) or
    /// the upstream's capacity (503), with that time as the retry-after.
    Paced(PaceReason),
}

// Read as the derive reads it (the same forms, the same errors), with the variant's name read
// by the one shared decoder (`json::VariantSeed`).
impl<'de> Deserialize<'de> for RefuseReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["cooldown", "overloaded", "retry_budget", "paced"];
        struct Reading;
        impl<'de> serde::de::Visitor<'de> for Reading {
            type Value = RefuseReason;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("enum RefuseReason")
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                data: A,
            ) -> Result<RefuseReason, A::Error> {
                use serde::de::VariantAccess;
                let (at, variant) = data.variant_seed(crate::json::VariantSeed(NAMES))?;
                if at == 3 {
                    return variant.newtype_variant().map(RefuseReason::Paced);
                }
                variant.unit_variant()?;
                Ok(match at {
                    0 => RefuseReason::Cooldown,
                    1 => RefuseReason::Overloaded,
                    _ => RefuseReason::RetryBudget,
                })
            }
        }
        deserializer.deserialize_enum("RefuseReason", NAMES, Reading)
    }
}

/// The object's answer before an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Send the attempt. With a ticket it is the model's probe: report it with the ticket.
    Go { probe: Option<ProbeTicket> },
    /// Sleep until `until_ms` (never past the deadline given, always after now) and ask
    /// again. Waiting is not an attempt.
    Wait { until_ms: u64, reason: WaitReason },
    /// Paced: sleep until `at_ms` (never past the deadline given), then send. The request's
    /// place is reserved: it does not ask again. Waiting is not an attempt.
    Scheduled { at_ms: u64, reason: PaceReason },
    /// Answer the client now, with `Retry-After` from `retry_after_ms` (at least
    /// [`MIN_RETRY_AFTER_MS`]).
    Refuse {
        retry_after_ms: u64,
        reason: RefuseReason,
    },
}

// Read as the derive reads it from what `serde_json` writes, the variant's name and fields by
// the shared decoders (`json::VariantSeed`, `json::read_fields`); a struct variant from its
// object form only (the derive also read an array form nothing writes).
impl<'de> Deserialize<'de> for Gate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["go", "wait", "scheduled", "refuse"];
        const FIELDS: [&[&str]; 4] = [
            &["probe"],
            &["until_ms", "reason"],
            &["at_ms", "reason"],
            &["retry_after_ms", "reason"],
        ];
        struct Reading;
        impl<'de> serde::de::Visitor<'de> for Reading {
            type Value = Gate;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("enum Gate")
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Gate, A::Error> {
                use serde::de::VariantAccess;
                let (at, variant) = data.variant_seed(crate::json::VariantSeed(NAMES))?;
                let fields = FIELDS.get(at).copied().unwrap_or_default();
                variant.struct_variant(fields, Fields(at))
            }
        }
        struct Fields(usize);
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Gate;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("struct variant of Gate")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Gate, A::Error> {
                use crate::json::required;
                let fields = FIELDS.get(self.0).copied().unwrap_or_default();
                let (mut probe, mut ms) = (None, None);
                let (mut wait, mut paced, mut refused) = (None, None, None);
                crate::json::read_fields(map, fields, |field, map| {
                    match (self.0, field) {
                        (0, _) => probe = map.next_value()?,
                        (_, 0) => ms = Some(map.next_value()?),
                        (1, _) => wait = Some(map.next_value()?),
                        (2, _) => paced = Some(map.next_value()?),
                        _ => refused = Some(map.next_value()?),
                    }
                    Ok(())
                })?;
                Ok(match self.0 {
                    0 => Gate::Go { probe },
                    1 => Gate::Wait {
                        until_ms: required(ms, "until_ms")?,
                        reason: required(wait, "reason")?,
                    },
                    2 => Gate::Scheduled {
                        at_ms: required(ms, "at_ms")?,
                        reason: required(paced, "reason")?,
                    },
                    _ => Gate::Refuse {
                        retry_after_ms: required(ms, "retry_after_ms")?,
                        reason: required(refused, "reason")?,
                    },
                })
            }
        }
        deserializer.deserialize_enum("Gate", NAMES, Reading)
    }
}

/// What the upstream answered, as far as the shared state cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A `2xx`: the model serves.
    Success,
    /// A `529`, or a stream opening with `overloaded_error`.
    Overloaded,
    /// A `429`, with the upstream's retry-after if it sent one.
    RateLimited { retry_after_ms: Option<u64> },
    /// Anything else (another status, a timeout, no connection): says nothing about
    /// overload.
    OtherFailure,
}

// Read as the derive reads it from what `serde_json` writes, the variant's name and fields by
// the shared decoders (`json::VariantSeed`, `json::read_fields`); a struct variant from its
// object form only (the derive also read an array form nothing writes).
impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["success", "overloaded", "rate_limited", "other_failure"];
        const FIELDS: &[&str] = &["retry_after_ms"];
        struct Reading;
        impl<'de> serde::de::Visitor<'de> for Reading {
            type Value = Reply;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("enum Reply")
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Reply, A::Error> {
                use serde::de::VariantAccess;
                let (at, variant) = data.variant_seed(crate::json::VariantSeed(NAMES))?;
                if at == 2 {
                    return variant.struct_variant(FIELDS, RateLimited);
                }
                variant.unit_variant()?;
                Ok(match at {
                    0 => Reply::Success,
                    1 => Reply::Overloaded,
                    _ => Reply::OtherFailure,
                })
            }
        }
        struct RateLimited;
        impl<'de> serde::de::Visitor<'de> for RateLimited {
            type Value = Reply;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("struct variant Reply::RateLimited")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Reply, A::Error> {
                let mut retry_after_ms = None;
                crate::json::read_fields(map, FIELDS, |_, map| {
                    retry_after_ms = map.next_value()?;
                    Ok(())
                })?;
                Ok(Reply::RateLimited { retry_after_ms })
            }
        }
        deserializer.deserialize_enum("Reply", NAMES, Reading)
    }
}

impl Reply {
    /// The reply for one attempt's [`Outcome`]. Overload and rate limits are read from the
    /// status alone, whatever `x-should-retry` says: they are facts about the upstream, not
    /// advice about this request.
    #[must_use]
    pub fn of(outcome: &Outcome) -> Reply {
        match outcome {
            Outcome::Response { status, .. } if (200..300).contains(status) => Reply::Success,
            overloaded if crate::retry::is_overloaded(overloaded) => Reply::Overloaded,
            Outcome::Response {
                status: 429,
                wait_floor_ms,
                ..
            } => Reply::RateLimited {
                retry_after_ms: *wait_floor_ms,
            },
            _ => Reply::OtherFailure,
        }
    }
}

/// One finished attempt: what came back, and the probe ticket if it was the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub reply: Reply,
    pub probe: Option<ProbeTicket>,
}

/// What a report changed, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Nothing the other requests will notice.
    Nothing,
    /// The key is in cooldown until `until_ms`.
    Cooldown { until_ms: u64 },
    /// The model was just marked overloaded; the first probe may start at `next_probe_ms`.
    MarkedOverloaded { next_probe_ms: u64 },
    /// The probe failed; the next one may start at `next_probe_ms`.
    ProbeFailed { next_probe_ms: u64 },
    /// A request got through: waiters are released over `window_ms`.
    Recovering { window_ms: u64 },
}

// Read as the derive reads it from what `serde_json` writes, the variant's name and fields by
// the shared decoders (`json::VariantSeed`, `json::read_fields`); a struct variant from its
// object form only (the derive also read an array form nothing writes).
impl<'de> Deserialize<'de> for Change {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &[
            "nothing",
            "cooldown",
            "marked_overloaded",
            "probe_failed",
            "recovering",
        ];
        const FIELDS: [&[&str]; 5] = [
            &[],
            &["until_ms"],
            &["next_probe_ms"],
            &["next_probe_ms"],
            &["window_ms"],
        ];
        struct Reading;
        impl<'de> serde::de::Visitor<'de> for Reading {
            type Value = Change;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("enum Change")
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                data: A,
            ) -> Result<Change, A::Error> {
                use serde::de::VariantAccess;
                let (at, variant) = data.variant_seed(crate::json::VariantSeed(NAMES))?;
                if at == 0 {
                    variant.unit_variant()?;
                    return Ok(Change::Nothing);
                }
                let fields = FIELDS.get(at).copied().unwrap_or_default();
                let ms = variant.struct_variant(fields, crate::json::OneNumber(fields))?;
                Ok(match at {
                    1 => Change::Cooldown { until_ms: ms },
                    2 => Change::MarkedOverloaded { next_probe_ms: ms },
                    3 => Change::ProbeFailed { next_probe_ms: ms },
                    _ => Change::Recovering { window_ms: ms },
                })
            }
        }
        deserializer.deserialize_enum("Change", NAMES, Reading)
    }
}

/// Where one model stands, for the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelPhase {
    Healthy,
    Overloaded,
    Recovering,
}

/// One model in the snapshot. Times are relative to the snapshot's `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelSnapshot {
    pub model: String,
    pub phase: ModelPhase,
    /// Overloaded answers since the last success (while not yet marked).
    pub overload_streak: u32,
    /// Failed probes since the model was marked.
    pub failed_probes: u32,
    /// The probe in flight.
    pub probe: Option<ProbeTicket>,
    /// Overloaded without a probe in flight: until the next probe may start.
    pub next_probe_in_ms: Option<u64>,
    /// Recovering: until every request is released.
    pub release_ends_in_ms: Option<u64>,
    /// Overloaded: the estimated number of requests waiting.
    pub waiters: u32,
    /// The pool is rate-limited upstream for this long.
    pub cooldown_remaining_ms: u64,
    /// Requests are paced at this rate (requests per second × 1000; 0: not paced by rate).
    pub paced_rate_mrps: u64,
}

/// The state as of one instant, for debugging and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub at_ms: u64,
    pub cooldown_remaining_ms: u64,
    pub retry_budget: BudgetWindow,
    /// Models with something to remember, most recently used first.
    pub models: Vec<ModelSnapshot>,
}

/// Everything one upstream key's object knows about trouble upstream. `Default` is a key
/// with no trouble. Its size is bounded: a few numbers, ten budget buckets, and at most
/// [`OutagePolicy::max_models`] model entries of a few numbers each.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct UpstreamState {
    /// Time of the last call; never moves backwards (see [`MAX_CLOCK_LEAD_MS`]).
    clock_ms: u64,
    /// Probes handed out so far: the next ticket.
    probes_started: u64,
    retry_budget: RetryBudget,
    /// Only models with something to remember.
    models: Vec<ModelHealth>,
}

impl UpstreamState {
    /// A key with no trouble.
    #[must_use]
    pub fn new() -> UpstreamState {
        UpstreamState::default()
    }

    /// Decides whether an attempt for `model` may go now.
    ///
    /// `is_retry`: whether the request already made an attempt. A first attempt that goes
    /// counts as a request for the retry budget; a retry that goes takes a retry token, or is
    /// refused ([`RefuseReason::RetryBudget`]) when none is left. Wait and refuse answers
    /// count nothing, so asking again after a wait is free.
    ///
    /// `deadline_ms`: the last instant the request may start an attempt; no wait ends after
    /// it, and a wait that cannot lead anywhere before it is refused at once.
    ///
    /// `request_seed`: a random number drawn once per request and passed on every call for
    /// it. It jitters the request's waits and places its release slot when the model
    /// recovers (so it can be told to come back at that slot and find it open); a fresh
    /// seed per call still works, the release slot is then re-drawn on every call.
    pub fn before_attempt(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        model: &str,
        is_retry: bool,
        deadline_ms: u64,
        request_seed: u64,
    ) -> Gate {
        self.before_paced_attempt(
            policy,
            now_ms,
            model,
            is_retry,
            deadline_ms,
            request_seed,
            (Cost::default(), 0),
            &Claimant::default(),
        )
    }

    /// [`UpstreamState::before_attempt`] for a request of `cost`, paced by what the pool knows
    /// of the key's own limits and of the upstream's sustainable rate: when it cannot go now,
    /// it is told when ([`Gate::Scheduled`], reserved at once: one call, no polling), or, when
    /// that is past its deadline, refused with that time as its retry-after.
    #[allow(clippy::too_many_arguments)]
    pub fn before_paced_attempt(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        pool: &str,
        is_retry: bool,
        deadline_ms: u64,
        request_seed: u64,
        (cost, way_ms): (Cost, u64),
        claimant: &Claimant,
    ) -> Gate {
        let now = self.advance(now_ms);
        let view = self.view(policy, pool, now, (deadline_ms, request_seed), cost);
        // A retry paced at the upstream's sustainable rate adds nothing beyond what the
        // upstream takes: the retry budget, a guard against retry storms, does not hold it.
        let budgeted = is_retry && !view.rate_paced;
        let hold_until = view
            .measuring_until
            .filter(|&end| is_retry && end <= deadline_ms);
        if now < view.cooldown_until {
            return cooled_down(policy, now, view.cooldown_until, deadline_ms, request_seed);
        }

        let gate = match view.gate {
            ModelGate::Wait {
                until_ms,
                recovering,
            } => {
                let reason = if recovering {
                    WaitReason::Recovering
                } else {
                    WaitReason::Overloaded
                };
                Gate::Wait { until_ms, reason }
            }
            ModelGate::Refuse { retry_after_ms } => Gate::Refuse {
                retry_after_ms,
                reason: RefuseReason::Overloaded,
            },
            ModelGate::ProbeDue => self.go(policy, now, pool, is_retry, true),
            // The upstream sheds densely and the object is finding out whether it is at
            // capacity or out: a retry waits for the answer (and a little after, so that the
            // rate or the marking is in force when it asks again) instead of being shed once
            // more.
            ModelGate::Open if hold_until.is_some() => {
                let end = hold_until.unwrap_or(now);
                let mut rng = draw::rng(request_seed, now, Purpose::CooldownSpread);
                Gate::Wait {
                    until_ms: end
                        .saturating_add(rng.u64(0..=MEASURE_SPREAD_MS))
                        .min(deadline_ms),
                    reason: WaitReason::Overloaded,
                }
            }
            ModelGate::Open => {
                let claim = Claim {
                    seed: request_seed,
                    claimant,
                    cost,
                    deadline_ms,
                    way_ms,
                };
                self.open_gate(policy, now, pool, budgeted, &view, claim)
            }
        };
        self.forget_idle(policy, now);
        gate
    }

    /// What the pool says of a request at `now`, before anything is decided (the defaults of
    /// a healthy, unpaced, empty pool when the state has no room to remember it).
    fn view(
        &mut self,
        policy: &OutagePolicy,
        pool: &str,
        now: u64,
        (deadline_ms, request_seed): (u64, u64),
        cost: Cost,
    ) -> PoolView {
        match self.entry(policy, pool, now, false) {
            Some(health) => PoolView {
                cooldown_until: health.cooldown_until_ms,
                gate: health.gate(policy, now, deadline_ms, request_seed),
                send_time: health.pace.send_time(&policy.pace, now, cost),
                rate_paced: health.pace.rate_mrps(now) > 0,
                measuring_until: health.finding_out_until(policy, now),
                queue_empty: health.share.is_empty(),
            },
            None => PoolView {
                cooldown_until: 0,
                gate: ModelGate::Open,
                send_time: SendTime::Now,
                rate_paced: false,
                measuring_until: None,
                queue_empty: true,
            },
        }
    }

    /// An open pool: the request goes now when nothing is ahead of it and its limits allow
    /// (its place reserved), and takes its fair turn otherwise.
    fn open_gate(
        &mut self,
        policy: &OutagePolicy,
        now: u64,
        pool: &str,
        budgeted: bool,
        view: &PoolView,
        claim: Claim<'_>,
    ) -> Gate {
        match view.send_time {
            SendTime::Now if view.queue_empty => {
                let gate = self.go(policy, now, pool, budgeted, false);
                if let Gate::Go { .. } = gate {
                    let lands = now.saturating_add(claim.way_ms);
                    self.reserve(policy, pool, (now, now, lands), claim.cost, claim.seed);
                }
                gate
            }
            // The pool is scarce: the request takes its fair turn.
            _ => self.queue_turn(policy, now, pool, budgeted, claim),
        }
    }

    /// Reserves `cost` in the pool's lanes for the request of `seed` that goes at `at_ms`
    /// (decided at `now`; sent by its edge at `lands_ms`).
    fn reserve(
        &mut self,
        policy: &OutagePolicy,
        pool: &str,
        (now, at_ms, lands_ms): (u64, u64, u64),
        cost: Cost,
        seed: u64,
    ) {
        if let Some(health) = self.entry(policy, pool, now, false) {
            health
                .pace
                .reserve_for(&policy.pace, (now, at_ms, lands_ms), cost, seed);
            health.share.touch();
        }
    }

    /// A request of a scarce pool joins its fair queue (or finds its place again when it asks
    /// again); the queue commits the turns due; the request's own turn, or a wait for it.
    /// A request counts for the retry budget once, when it joins.
    fn queue_turn(
        &mut self,
        policy: &OutagePolicy,
        now: u64,
        pool: &str,
        budgeted: bool,
        claim: Claim<'_>,
    ) -> Gate {
        let queued = self
            .entry(policy, pool, now, false)
            .is_some_and(|health| health.share.contains(claim.seed));
        if !queued {
            if let refused @ Gate::Refuse { .. } = self.go(policy, now, pool, budgeted, false) {
                return refused;
            }
        }
        let Some(health) = self.entry(policy, pool, now, true) else {
            return Gate::Go { probe: None };
        };
        health.share.join(
            &health.pace,
            now,
            claim.seed,
            claim.claimant,
            claim.cost,
            (claim.deadline_ms, claim.way_ms),
        );
        let not_before = health.cooldown_until_ms;
        health
            .share
            .release(&mut health.pace, &policy.pace, now, not_before);
        gate_of(health.share.place(now, claim.seed), now)
    }

    /// Where the queued request of `request_seed` stands in `pool` at `now_ms`: its turn,
    /// or a wait (the object holds the call until then). Turns that came due meanwhile are
    /// committed in fair order first.
    pub fn poll_turn(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        pool: &str,
        request_seed: u64,
    ) -> Gate {
        let now = self.advance(now_ms);
        let gate = match self.entry(policy, pool, now, false) {
            // An outage began while it waited: the request leaves the queue and asks again, to
            // wait for the probes as every request does.
            Some(health) if matches!(health.phase, Phase::Overloaded { .. }) => {
                health.share.leave(request_seed);
                gate_of(Place::Unknown, now)
            }
            Some(health) => {
                let not_before = health.cooldown_until_ms;
                health
                    .share
                    .release(&mut health.pace, &policy.pace, now, not_before);
                gate_of(health.share.place(now, request_seed), now)
            }
            None => gate_of(Place::Unknown, now),
        };
        self.forget_idle(policy, now);
        gate
    }

    /// Counts `count` successes for `pool` that an edge did not report one by one (its happy
    /// path), into what the pool served this second.
    pub fn record_served(&mut self, policy: &OutagePolicy, now_ms: u64, pool: &str, count: u32) {
        if count == 0 {
            return;
        }
        let now = self.advance(now_ms);
        if let Some(health) = self.entry(policy, pool, now, true) {
            health.pace.count_served(now, count.min(100_000));
            health.share.touch();
            health.served = true;
            // The upstream serves: not an outage (an edge reports its successes with its
            // first call after trouble, so a real outage is marked a call later per edge).
            if health.phase == Phase::Healthy {
                health.streak = 0;
            }
        }
        self.forget_idle(policy, now);
    }

    /// Learns the key's limits for `pool` from an answer's `anthropic-ratelimit-*` headers.
    pub fn observe_limits(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        pool: &str,
        limits: &KeyLimits,
    ) {
        if limits.is_empty() {
            return;
        }
        let now = self.advance(now_ms);
        if let Some(health) = self.entry(policy, pool, now, true) {
            health.pace.observe(now, limits);
            health.share.touch();
        }
        self.forget_idle(policy, now);
    }

    /// Counts first attempts that went upstream without asking the object: an edge that has
    /// seen no trouble lately skips it on the happy path and reports those requests in bulk
    /// with its next call, so the retry budget still knows how many requests there were.
    pub fn record_requests(&mut self, policy: &OutagePolicy, now_ms: u64, count: u32) {
        let now = self.advance(now_ms);
        for _ in 0..count.min(100_000) {
            self.retry_budget.record_request(policy, now);
        }
    }

    /// Records how an attempt for `model` ended at `now_ms`. `rng_seed` jitters the next
    /// probe's time when this report schedules one.
    ///
    /// A `429` sets the key's cooldown to its retry-after (or
    /// [`OutagePolicy::default_cooldown_ms`]), never shortening one already set. An
    /// overloaded reply extends the model's streak and marks it overloaded at the threshold;
    /// the probe's overloaded reply pushes the next probe further out. A success (the probe's,
    /// or any other request's) ends an overload and starts the paced release.
    pub fn after_attempt(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        model: &str,
        report: AttemptReport,
        rng_seed: u64,
    ) -> Change {
        self.after_answer(
            policy,
            now_ms,
            model,
            report,
            rng_seed,
            (&KeyLimits::default(), Cost::default()),
        )
    }

    /// [`UpstreamState::after_attempt`] for an answer that reported the key's `limits`, to a
    /// request of `cost`: a `429` that refused the request for its own size (larger than the
    /// bucket, or than what it holds while not empty) cools nothing down; a cooldown lasts at
    /// most [`MAX_COOLDOWN_MS`] unless the upstream's own reset of an empty dimension is
    /// later.
    pub fn after_answer(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        model: &str,
        report: AttemptReport,
        rng_seed: u64,
        (limits, cost): (&KeyLimits, Cost),
    ) -> Change {
        let now = self.advance(now_ms);
        let ticket = report.probe.map(ProbeTicket::id);
        let change = match report.reply {
            Reply::Success => match self.entry(policy, model, now, false) {
                Some(health) => change_of(health.served(policy, now, ticket)),
                None => Change::Nothing,
            },
            Reply::Overloaded => match self.entry(policy, model, now, true) {
                Some(health) => change_of(health.overloaded(policy, now, ticket, rng_seed)),
                None => Change::Nothing,
            },
            Reply::RateLimited { .. } if limits.refused_for_size(cost) => {
                if let Some(health) = self.entry(policy, model, now, false) {
                    health.other(policy, now, ticket, rng_seed);
                }
                Change::Nothing
            }
            Reply::RateLimited { retry_after_ms } => {
                let reset_ms = limits
                    .empty_until_ms
                    .map_or(0, |until| until.saturating_sub(now));
                let wait = retry_after_ms
                    .unwrap_or(policy.default_cooldown_ms)
                    .min(MAX_UPSTREAM_WAIT_MS)
                    .min(MAX_COOLDOWN_MS.max(reset_ms));
                let until = stored(now.saturating_add(wait));
                match self.entry(policy, model, now, true) {
                    Some(health) => {
                        health.other(policy, now, ticket, rng_seed);
                        health.cooldown_until_ms = health.cooldown_until_ms.max(until);
                        if health.cooldown_until_ms > now {
                            Change::Cooldown {
                                until_ms: health.cooldown_until_ms,
                            }
                        } else {
                            Change::Nothing
                        }
                    }
                    None => Change::Nothing,
                }
            }
            Reply::OtherFailure => {
                if let Some(health) = self.entry(policy, model, now, false) {
                    health.other(policy, now, ticket, rng_seed);
                }
                Change::Nothing
            }
        };
        if let Some(health) = self.entry(policy, model, now, false) {
            health.share.touch();
        }
        self.forget_idle(policy, now);
        change
    }

    /// Where `model` stands (healthy when not remembered).
    #[cfg(test)]
    pub(super) fn phase_of(&self, model: &str) -> super::health::Phase {
        self.models
            .iter()
            .find(|health| health.model == model)
            .map_or(super::health::Phase::Healthy, |health| health.phase)
    }

    /// The state as of `now_ms`, without changing it.
    #[must_use]
    pub fn snapshot(&self, policy: &OutagePolicy, now_ms: u64) -> Snapshot {
        let now = stored(now_ms).max(self.clock_ms);
        let models = by_recent_use(&self.models);
        let models = models
            .into_iter()
            .map(|health| {
                let mut health = health.clone();
                health.settle(policy, now);
                model_snapshot(&health, policy, now)
            })
            .filter(|snapshot| {
                snapshot.phase != ModelPhase::Healthy
                    || snapshot.overload_streak > 0
                    || snapshot.cooldown_remaining_ms > 0
                    || snapshot.paced_rate_mrps > 0
            })
            .collect::<Vec<_>>();
        Snapshot {
            at_ms: now,
            cooldown_remaining_ms: models
                .iter()
                .map(|m| m.cooldown_remaining_ms)
                .max()
                .unwrap_or(0),
            retry_budget: self.retry_budget.window(policy, now),
            models,
        }
    }

    /// Every pool the state remembers, settled to `now_ms` and most recently used first, with
    /// what its pacing holds; unlike [`UpstreamState::snapshot`] it keeps healthy pools (their
    /// known limits are news to an operator). Does not change the state.
    #[must_use]
    pub fn pools(
        &self,
        policy: &OutagePolicy,
        now_ms: u64,
    ) -> Vec<(ModelSnapshot, PaceOutlook, Vec<CallerShare>)> {
        let now = stored(now_ms).max(self.clock_ms);
        let models = by_recent_use(&self.models);
        models
            .into_iter()
            .map(|health| {
                let mut health = health.clone();
                health.settle(policy, now);
                (
                    model_snapshot(&health, policy, now),
                    health.pace.outlook(now),
                    health.share.callers(),
                )
            })
            .collect()
    }

    /// Whether the state holds nothing worth keeping at `now_ms`: no cooldown, no model in
    /// trouble, an empty retry budget window. The object may then drop its storage.
    #[must_use]
    pub fn is_idle(&self, policy: &OutagePolicy, now_ms: u64) -> bool {
        let snapshot = self.snapshot(policy, now_ms);
        snapshot.models.is_empty()
            && self.models.iter().all(|health| {
                let mut health = health.clone();
                health.settle(policy, snapshot.at_ms);
                health.is_idle(snapshot.at_ms)
            })
            && self.retry_budget.is_empty(policy, snapshot.at_ms)
    }

    /// Moves the clock to `now_ms` (never backwards, unless the stored clock is more than
    /// [`MAX_CLOCK_LEAD_MS`] ahead) and returns the state's time.
    /// On a clock jump every stored time moves back with the clock (so waits keep their
    /// length) and the retry budget starts over.
    fn advance(&mut self, now_ms: u64) -> u64 {
        if let Some(back) = crate::durable::advance_clock(&mut self.clock_ms, stored(now_ms)) {
            for health in &mut self.models {
                health.shift_back(back);
            }
            self.retry_budget = RetryBudget::default();
        }
        self.clock_ms
    }

    /// The entry of `model` (settled to `now`, marked as used), created if `create` (an entry
    /// not in trouble makes room, see below). `None` when the model has nothing to remember
    /// and `create` is false, or when every entry is in trouble and the state is full.
    fn entry(
        &mut self,
        policy: &OutagePolicy,
        model: &str,
        now: u64,
        create: bool,
    ) -> Option<&mut ModelHealth> {
        let key = model_key(model);
        let index = match self.models.iter().position(|health| health.model == key) {
            Some(index) => index,
            None if create => {
                if self.models.len() >= policy.max_models.get() {
                    // Room is made by forgetting a pool not in trouble: one that never
                    // answered a 2xx first (made-up model names come and go there), else the
                    // least recently used. A pool in trouble is never forgotten for another:
                    // with none to forget, the new pool is not remembered.
                    let forget = self
                        .models
                        .iter()
                        .enumerate()
                        .filter(|(_, health)| !health.in_trouble(now))
                        .min_by_key(|(_, health)| (health.served, health.last_used_ms))
                        .map(|(index, _)| index)?;
                    self.models.remove(forget);
                }
                self.models.push(ModelHealth::new(key, now));
                self.models.len().saturating_sub(1)
            }
            None => return None,
        };
        let health = self.models.get_mut(index)?;
        health.last_used_ms = now;
        health.settle(policy, now);
        Some(health)
    }

    /// Lets an attempt go: counts it against the retry budget, and hands out the probe slot
    /// if `probe`.
    fn go(
        &mut self,
        policy: &OutagePolicy,
        now: u64,
        model: &str,
        is_retry: bool,
        probe: bool,
    ) -> Gate {
        if is_retry {
            if let Err(wait_ms) = self.retry_budget.take_retry(policy, now) {
                let retry_after_ms = wait_ms.max(MIN_RETRY_AFTER_MS);
                return Gate::Refuse {
                    retry_after_ms,
                    reason: RefuseReason::RetryBudget,
                };
            }
        } else {
            self.retry_budget.record_request(policy, now);
        }
        if !probe {
            return Gate::Go { probe: None };
        }
        let id = stored(self.probes_started.saturating_add(1));
        self.probes_started = id;
        match self.entry(policy, model, now, false) {
            Some(health) => {
                health.start_probe(id, now);
                Gate::Go {
                    probe: Some(ProbeTicket(id)),
                }
            }
            None => Gate::Go { probe: None },
        }
    }

    /// Settles every model to `now` and drops those with nothing left to remember.
    fn forget_idle(&mut self, policy: &OutagePolicy, now: u64) {
        for health in &mut self.models {
            health.settle(policy, now);
        }
        self.models.retain(|health| !health.is_idle(now));
    }
}

/// What a pool says of a request before anything is decided.
struct PoolView {
    cooldown_until: u64,
    gate: ModelGate,
    send_time: SendTime,
    /// The pool is paced at the upstream's sustainable rate.
    rate_paced: bool,
    /// The object is finding out what the upstream's shedding means, until then.
    measuring_until: Option<u64>,
    queue_empty: bool,
}

/// A pool in cooldown: wait it out, spread over a short jitter, when it ends by the deadline;
/// refuse with the time left otherwise.
fn cooled_down(
    policy: &OutagePolicy,
    now: u64,
    cooldown_until: u64,
    deadline_ms: u64,
    request_seed: u64,
) -> Gate {
    if cooldown_until <= deadline_ms {
        let mut rng = draw::rng(request_seed, now, Purpose::CooldownSpread);
        let spread = rng.u64(0..=policy.cooldown_spread_ms);
        let until_ms = cooldown_until.saturating_add(spread).min(deadline_ms);
        return Gate::Wait {
            until_ms,
            reason: WaitReason::Cooldown,
        };
    }
    let retry_after_ms = cooldown_until.saturating_sub(now).max(MIN_RETRY_AFTER_MS);
    Gate::Refuse {
        retry_after_ms,
        reason: RefuseReason::Cooldown,
    }
}

/// A request asking for its fair turn.
struct Claim<'a> {
    seed: u64,
    claimant: &'a Claimant,
    cost: Cost,
    deadline_ms: u64,
    /// The way from the edge (and back): its answer reaches the edge this much later.
    way_ms: u64,
}

/// The answer for a request's place in the queue.
fn gate_of(place: Place, now: u64) -> Gate {
    match place {
        Place::Decided(Turn::Go) => Gate::Go { probe: None },
        Place::Decided(Turn::At { at_ms, reason }) if at_ms > now => {
            Gate::Scheduled { at_ms, reason }
        }
        // Committed while its call napped, for a time that has come.
        Place::Decided(Turn::At { .. }) => Gate::Go { probe: None },
        Place::Decided(Turn::Refused {
            retry_after_ms,
            reason,
        }) => Gate::Refuse {
            retry_after_ms: retry_after_ms.max(MIN_RETRY_AFTER_MS),
            reason: RefuseReason::Paced(reason),
        },
        Place::Waiting { wake_ms } => Gate::Wait {
            until_ms: wake_ms.max(now),
            reason: WaitReason::Queued,
        },
        // Asked again after its hold, or its place was given up: ask again at once (a place
        // kept is found again; a lost one is taken anew).
        Place::AskAgain | Place::Unknown => Gate::Wait {
            until_ms: now,
            reason: WaitReason::Queued,
        },
    }
}

fn change_of(change: ModelChange) -> Change {
    match change {
        ModelChange::None => Change::Nothing,
        ModelChange::Marked { next_probe_ms } => Change::MarkedOverloaded { next_probe_ms },
        ModelChange::ProbeFailed { next_probe_ms } => Change::ProbeFailed { next_probe_ms },
        ModelChange::Recovering { window_ms } => Change::Recovering { window_ms },
    }
}

/// The models most recently used first, those used at the same time in their stored order (a
/// stable sort). By insertion: a state holds a few dozen at most (`OutagePolicy::max_models`),
/// where the standard library's sort is kilobytes of module.
fn by_recent_use(models: &[ModelHealth]) -> Vec<&ModelHealth> {
    let mut sorted: Vec<&ModelHealth> = Vec::with_capacity(models.len());
    for health in models {
        let at = sorted
            .iter()
            .position(|placed| placed.last_used_ms < health.last_used_ms)
            .unwrap_or(sorted.len());
        sorted.insert(at, health);
    }
    sorted
}

fn model_snapshot(health: &ModelHealth, policy: &OutagePolicy, now: u64) -> ModelSnapshot {
    let mut snapshot = ModelSnapshot {
        model: health.model.clone(),
        phase: ModelPhase::Healthy,
        overload_streak: health.streak,
        failed_probes: health.failed_probes,
        probe: None,
        next_probe_in_ms: None,
        release_ends_in_ms: None,
        waiters: 0,
        cooldown_remaining_ms: health.cooldown_until_ms.saturating_sub(now),
        paced_rate_mrps: health.pace.rate_mrps(now),
    };
    match health.phase {
        Phase::Healthy => {}
        Phase::Overloaded {
            next_probe_ms,
            probe,
            ..
        } => {
            snapshot.phase = ModelPhase::Overloaded;
            snapshot.probe = probe.map(|lease| ProbeTicket(lease.id));
            if probe.is_none() {
                snapshot.next_probe_in_ms = Some(next_probe_ms.saturating_sub(now));
            }
            snapshot.waiters = health.waits.estimate(now, policy.wait_poll_ms.get());
        }
        Phase::Recovering {
            since_ms,
            window_ms,
            ..
        } => {
            snapshot.phase = ModelPhase::Recovering;
            snapshot.release_ends_in_ms =
                Some(since_ms.saturating_add(window_ms).saturating_sub(now));
        }
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn models_by_recent_use_are_ordered_as_a_stable_sort_orders_them(
            used in proptest::collection::vec(0u64..5, 0..40),
        ) {
            let models: Vec<ModelHealth> = used
                .iter()
                .enumerate()
                .map(|(i, at)| ModelHealth::new(&format!("m{i}"), *at))
                .collect();
            let mut expected: Vec<&ModelHealth> = models.iter().collect();
            expected.sort_by_key(|health| std::cmp::Reverse(health.last_used_ms));
            prop_assert_eq!(by_recent_use(&models), expected);
        }
    }
}
