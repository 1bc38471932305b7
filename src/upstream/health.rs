//! One model's overload state: the streak that marks it, the probes while it is marked, and
//! the paced release when a probe gets through.

use serde::{Deserialize, Serialize};

use super::draw::{self, Purpose};
use super::outage_policy::OutagePolicy;
use super::pace::Pace;
use super::share::Share;
use super::stored::stored;
use crate::retry::{ceiling_ms, MIN_RETRY_AFTER_MS};

/// Model names longer than this are cut (at a character boundary) before being remembered.
pub const MAX_MODEL_NAME_BYTES: usize = 128;

/// What the object knows of one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ModelHealth {
    pub(super) model: String,
    /// The last call about this model, for least-recently-used eviction.
    pub(super) last_used_ms: u64,
    /// Overloaded answers since the last success, counted within the overload window.
    pub(super) streak: u32,
    /// When the streak's first overloaded answer came.
    pub(super) streak_started_ms: u64,
    /// Probes that failed since the model was marked: the probe spacing grows with it.
    pub(super) failed_probes: u32,
    pub(super) phase: Phase,
    pub(super) waits: WaitTally,
    /// The pool is rate-limited upstream until then (a `429`'s retry-after).
    #[serde(default)]
    pub(super) cooldown_until_ms: u64,
    /// The key's known limits and the upstream's sustainable rate for this pool.
    #[serde(default)]
    pub(super) pace: Pace,
    /// The requests waiting their fair turn: memory only, as their held calls are.
    #[serde(skip)]
    pub(super) share: Share,
    /// The pool has answered a `2xx` since it was remembered: a model the upstream serves, not
    /// a name a client made up. Pools that have not are forgotten first to make room.
    #[serde(default)]
    pub(super) served: bool,
}

/// Where a model stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Phase {
    /// Requests go out.
    Healthy,
    /// Only probes go out; everyone else waits.
    Overloaded {
        since_ms: u64,
        /// No probe starts before then.
        next_probe_ms: u64,
        /// The probe in flight, if any.
        probe: Option<ProbeLease>,
    },
    /// A probe got through at `since_ms`: requests go out at their release slots, spread
    /// over `window_ms`: in the order of their deadlines, mapped from
    /// `[first_deadline_ms, first_deadline_ms + deadline_span_ms]` onto the window, when the
    /// waiters' deadlines were spread (`deadline_span_ms > 0`), after a lead of `lead_ms`;
    /// at seeded slots otherwise.
    Recovering {
        since_ms: u64,
        window_ms: u64,
        #[serde(default)]
        first_deadline_ms: u64,
        #[serde(default)]
        deadline_span_ms: u64,
        #[serde(default)]
        lead_ms: u64,
    },
}

// Read as the derive reads it from what `serde_json` writes (stored states included), the
// variant's name and fields by the shared decoders (`json::VariantSeed`, `json::read_fields`);
// a struct variant from its object form only (the derive also read an array form nothing
// writes). `upstream::health` tests it against the derive.
impl<'de> Deserialize<'de> for Phase {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_enum("Phase", PHASE_NAMES, ReadPhase)
    }
}

const PHASE_NAMES: &[&str] = &["healthy", "overloaded", "recovering"];
const OVERLOADED_FIELDS: &[&str] = &["since_ms", "next_probe_ms", "probe"];
const RECOVERING_FIELDS: &[&str] = &[
    "since_ms",
    "window_ms",
    "first_deadline_ms",
    "deadline_span_ms",
    "lead_ms",
];

struct ReadPhase;

impl<'de> serde::de::Visitor<'de> for ReadPhase {
    type Value = Phase;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("enum Phase")
    }

    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Phase, A::Error> {
        use serde::de::VariantAccess;
        match data.variant_seed(crate::json::VariantSeed(PHASE_NAMES))? {
            (0, variant) => variant.unit_variant().map(|()| Phase::Healthy),
            (1, variant) => variant.struct_variant(OVERLOADED_FIELDS, PhaseFields(1)),
            (_, variant) => variant.struct_variant(RECOVERING_FIELDS, PhaseFields(2)),
        }
    }
}

/// The fields of the struct variant at a place in [`PHASE_NAMES`].
struct PhaseFields(usize);

impl<'de> serde::de::Visitor<'de> for PhaseFields {
    type Value = Phase;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("struct variant of Phase")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Phase, A::Error> {
        use crate::json::required;
        let overloaded = self.0 == 1;
        let names = if overloaded {
            OVERLOADED_FIELDS
        } else {
            RECOVERING_FIELDS
        };
        let mut numbers: [Option<u64>; 5] = [None; 5];
        let mut probe = None;
        crate::json::read_fields(map, names, |field, map| {
            if overloaded && field == 2 {
                probe = map.next_value()?;
            } else if let Some(slot) = numbers.get_mut(field) {
                *slot = Some(map.next_value()?);
            }
            Ok(())
        })?;
        let [since, second, third, fourth, fifth] = numbers;
        Ok(if overloaded {
            Phase::Overloaded {
                since_ms: required(since, "since_ms")?,
                next_probe_ms: required(second, "next_probe_ms")?,
                probe,
            }
        } else {
            Phase::Recovering {
                since_ms: required(since, "since_ms")?,
                window_ms: required(second, "window_ms")?,
                first_deadline_ms: third.unwrap_or_default(),
                deadline_span_ms: fourth.unwrap_or_default(),
                lead_ms: fifth.unwrap_or_default(),
            }
        })
    }
}

/// The probe in flight: its ticket, and when it started (its lease ends a lease later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ProbeLease {
    pub(super) id: u64,
    pub(super) started_ms: u64,
}

/// Wait answers given for an overloaded model, per poll period. A waiter calls again after
/// a draw from `[period/2, period]`, 4/3 times a period on average, so three quarters of the
/// busier of the current and the last period estimates the waiters without knowing who they
/// are. A waiter that goes away simply stops being counted a period or two later.
///
/// The earliest and latest deadline the waiters named since the marking say how their
/// deadlines spread, which orders the release: earliest deadline first, as a queue served
/// at capacity would, so the requests that can wait least are not the ones left to expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) struct WaitTally {
    period_started_ms: u64,
    this_period: u32,
    last_period: u32,
    #[serde(default)]
    earliest_deadline_ms: u64,
    #[serde(default)]
    latest_deadline_ms: u64,
}

impl WaitTally {
    fn starting(now_ms: u64) -> Self {
        Self {
            period_started_ms: now_ms,
            this_period: 0,
            last_period: 0,
            earliest_deadline_ms: 0,
            latest_deadline_ms: 0,
        }
    }

    fn rolled(self, now_ms: u64, period_ms: u64) -> Self {
        let period = period_ms.max(1);
        let elapsed = now_ms.saturating_sub(self.period_started_ms);
        if elapsed >= period.saturating_mul(2) {
            Self::starting(now_ms)
        } else if elapsed >= period {
            Self {
                period_started_ms: stored(self.period_started_ms.saturating_add(period)),
                this_period: 0,
                last_period: self.this_period,
                ..self
            }
        } else {
            self
        }
    }

    fn count(&mut self, now_ms: u64, period_ms: u64, deadline_ms: u64) {
        *self = self.rolled(now_ms, period_ms);
        self.this_period = self.this_period.saturating_add(1);
        let deadline = stored(deadline_ms);
        if self.earliest_deadline_ms == 0 || deadline < self.earliest_deadline_ms {
            self.earliest_deadline_ms = deadline;
        }
        self.latest_deadline_ms = self.latest_deadline_ms.max(deadline);
    }

    /// The deadlines of the requests still waiting at `now_ms`: the earliest (none before
    /// `now_ms`: those have gone) and how far the latest is from it.
    fn deadlines(&self, now_ms: u64) -> (u64, u64) {
        let first = self.earliest_deadline_ms.max(now_ms);
        (first, self.latest_deadline_ms.saturating_sub(first))
    }

    /// The estimated number of requests waiting.
    pub(super) fn estimate(&self, now_ms: u64, period_ms: u64) -> u32 {
        let rolled = self.rolled(now_ms, period_ms);
        let busier = u64::from(rolled.this_period.max(rolled.last_period));
        u32::try_from(busier.saturating_mul(3).div_ceil(4)).unwrap_or(u32::MAX)
    }
}

/// The model's answer to one request, before the key-wide checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ModelGate {
    /// Nothing holds the request back.
    Open,
    /// The request may go as the model's probe.
    ProbeDue,
    /// Come back at `until_ms`.
    Wait { until_ms: u64, recovering: bool },
    /// The model cannot let the request out before its deadline.
    Refuse { retry_after_ms: u64 },
}

/// What a report did to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ModelChange {
    None,
    Marked { next_probe_ms: u64 },
    ProbeFailed { next_probe_ms: u64 },
    Recovering { window_ms: u64 },
}

/// `model` cut to [`MAX_MODEL_NAME_BYTES`] at a character boundary.
pub(super) fn model_key(model: &str) -> &str {
    if model.len() <= MAX_MODEL_NAME_BYTES {
        return model;
    }
    let end = model
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= MAX_MODEL_NAME_BYTES)
        .last()
        .unwrap_or(0);
    model.get(..end).unwrap_or("")
}

/// The ceiling of the spacing before the next probe after `failed_probes` failures, with
/// `waiters` requests waiting: it grows with each failure, but never beyond the base while
/// [`OutagePolicy::probe_eager_waiters`] or more wait. Every second the end of an outage goes
/// unnoticed costs a second of the upstream's capacity to a queue whose oldest requests are
/// running out of budget; a probe costs one call.
fn probe_ceiling_ms(policy: &OutagePolicy, failed_probes: u32, waiters: u32) -> u64 {
    let ceiling = ceiling_ms(
        policy.probe_interval_base_ms,
        policy.probe_interval_cap_ms,
        failed_probes,
    );
    if waiters >= policy.probe_eager_waiters.get() {
        ceiling.min(policy.probe_interval_base_ms)
    } else {
        ceiling
    }
}

impl ModelHealth {
    pub(super) fn new(model: &str, now_ms: u64) -> Self {
        Self {
            model: model.to_string(),
            last_used_ms: now_ms,
            streak: 0,
            streak_started_ms: now_ms,
            failed_probes: 0,
            phase: Phase::Healthy,
            waits: WaitTally::starting(now_ms),
            cooldown_until_ms: 0,
            pace: Pace::default(),
            share: Share::default(),
            served: false,
        }
    }

    /// Whether forgetting the pool at `now_ms` would lose trouble other requests must see: an
    /// overload (or its streak), a recovery, a cooldown, requests waiting their turn.
    pub(super) fn in_trouble(&self, now_ms: u64) -> bool {
        self.phase != Phase::Healthy
            || self.streak > 0
            || self.cooldown_until_ms > now_ms
            || !self.share.is_empty()
    }

    /// Applies what time alone changes: a release window that ended, a probe lease that
    /// expired, a streak that aged out.
    pub(super) fn settle(&mut self, policy: &OutagePolicy, now_ms: u64) {
        match &mut self.phase {
            Phase::Recovering {
                since_ms,
                window_ms,
                ..
            } => {
                if now_ms >= since_ms.saturating_add(*window_ms) {
                    self.phase = Phase::Healthy;
                    self.failed_probes = 0;
                }
            }
            Phase::Overloaded { probe, .. } => {
                if probe.is_some_and(|lease| {
                    now_ms >= lease.started_ms.saturating_add(policy.probe_lease_ms)
                }) {
                    *probe = None;
                }
            }
            Phase::Healthy => {}
        }
        if now_ms
            >= self
                .streak_started_ms
                .saturating_add(policy.overload_window_ms)
        {
            self.streak = 0;
        }
    }

    /// Moves every stored time back by `back` ms, after the clock jumped back that far.
    pub(super) fn shift_back(&mut self, back: u64) {
        let shift = |t: &mut u64| *t = t.saturating_sub(back);
        shift(&mut self.cooldown_until_ms);
        self.pace.shift_back(back);
        self.share.shift_back(back);
        shift(&mut self.last_used_ms);
        shift(&mut self.streak_started_ms);
        shift(&mut self.waits.period_started_ms);
        shift(&mut self.waits.earliest_deadline_ms);
        shift(&mut self.waits.latest_deadline_ms);
        match &mut self.phase {
            Phase::Healthy => {}
            Phase::Overloaded {
                since_ms,
                next_probe_ms,
                probe,
            } => {
                shift(since_ms);
                shift(next_probe_ms);
                if let Some(lease) = probe {
                    shift(&mut lease.started_ms);
                }
            }
            Phase::Recovering {
                since_ms,
                first_deadline_ms,
                ..
            } => {
                shift(since_ms);
                shift(first_deadline_ms);
            }
        }
    }

    /// While the object finds out what dense shedding is (an outage, marked once it lasts
    /// [`OutagePolicy::overload_min_span_ms`] with nothing served, or a capacity, measured for
    /// half a second): when it will know. A retry waits until then rather than be shed again.
    pub(super) fn finding_out_until(&self, policy: &OutagePolicy, now_ms: u64) -> Option<u64> {
        let confirming = (self.phase == Phase::Healthy && self.streak >= 2)
            .then(|| {
                self.streak_started_ms
                    .saturating_add(policy.overload_min_span_ms)
            })
            .filter(|&end| end > now_ms);
        confirming.max(self.pace.measuring_until(now_ms))
    }

    /// Nothing worth remembering at `now_ms`: the entry can go.
    pub(super) fn is_idle(&self, now_ms: u64) -> bool {
        self.phase == Phase::Healthy
            && self.streak == 0
            && self.cooldown_until_ms <= now_ms
            && self.pace.is_idle(now_ms)
            && self.share.is_empty()
    }

    /// The model's answer to a request with `deadline_ms`, at `now_ms` (after
    /// [`ModelHealth::settle`]). Counts a wait answer for the waiter estimate.
    pub(super) fn gate(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        deadline_ms: u64,
        seed: u64,
    ) -> ModelGate {
        match self.phase {
            Phase::Healthy => ModelGate::Open,
            Phase::Recovering {
                since_ms,
                window_ms,
                first_deadline_ms,
                deadline_span_ms,
                lead_ms,
            } => {
                let offset = if deadline_span_ms == 0 {
                    draw::release_offset_ms(window_ms, seed, since_ms)
                } else {
                    lead_ms.saturating_add(draw::deadline_offset_ms(
                        window_ms.saturating_sub(lead_ms),
                        deadline_ms.saturating_sub(first_deadline_ms),
                        deadline_span_ms,
                    ))
                };
                let slot = since_ms.saturating_add(offset);
                // Pacing never costs a request its chance: one whose slot falls late goes
                // halfway from the recovery to its deadline, so the most urgent go first
                // and each keeps time for its answer, and a retry.
                let halfway = since_ms.saturating_add(deadline_ms.saturating_sub(since_ms) / 2);
                let release = slot.min(halfway);
                if now_ms >= release {
                    ModelGate::Open
                } else {
                    ModelGate::Wait {
                        until_ms: release,
                        recovering: true,
                    }
                }
            }
            Phase::Overloaded {
                next_probe_ms,
                probe,
                ..
            } => self.overloaded_gate(
                policy,
                now_ms,
                deadline_ms,
                seed,
                (next_probe_ms, probe.is_none()),
            ),
        }
    }

    /// [`ModelHealth::gate`] while overloaded: the probe when it is due and its slot free;
    /// otherwise a refusal near the next probe when the deadline cannot be met, or a wait of
    /// about a poll period (counted for the waiter estimate).
    fn overloaded_gate(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        deadline_ms: u64,
        seed: u64,
        (next_probe_ms, slot_free): (u64, bool),
    ) -> ModelGate {
        if slot_free && now_ms >= next_probe_ms {
            return ModelGate::ProbeDue;
        }
        // Released only after a probe succeeds, which cannot happen before the next
        // probe when none is in flight.
        if now_ms >= deadline_ms || (slot_free && next_probe_ms > deadline_ms) {
            let mut rng = draw::rng(seed, now_ms, Purpose::RetryAfter);
            let spacing = ceiling_ms(
                policy.probe_interval_base_ms,
                policy.probe_interval_cap_ms,
                self.failed_probes,
            );
            let retry_after = next_probe_ms
                .saturating_sub(now_ms)
                .saturating_add(rng.u64(0..=spacing));
            return ModelGate::Refuse {
                retry_after_ms: retry_after.max(MIN_RETRY_AFTER_MS),
            };
        }
        let mut rng = draw::rng(seed, now_ms, Purpose::WaitPoll);
        let poll = policy.wait_poll_ms.get();
        let mut until = now_ms.saturating_add(draw::half_jitter(&mut rng, poll).max(1));
        if slot_free {
            // Be there when the next probe is due, spread a little.
            until = until.min(next_probe_ms.saturating_add(rng.u64(0..=poll / 4)));
        }
        self.waits.count(now_ms, poll, deadline_ms);
        ModelGate::Wait {
            until_ms: until.min(deadline_ms),
            recovering: false,
        }
    }

    /// Hands the probe slot to the probe with ticket `id`, starting at `now_ms`.
    pub(super) fn start_probe(&mut self, id: u64, now_ms: u64) {
        if let Phase::Overloaded { probe, .. } = &mut self.phase {
            *probe = Some(ProbeLease {
                id,
                started_ms: now_ms,
            });
        }
    }

    /// Frees the probe slot if `ticket` is the probe in flight; whether it was.
    fn end_probe(&mut self, ticket: Option<u64>) -> bool {
        match (&mut self.phase, ticket) {
            (Phase::Overloaded { probe, .. }, Some(id))
                if probe.is_some_and(|lease| lease.id == id) =>
            {
                *probe = None;
                true
            }
            _ => false,
        }
    }

    /// Reschedules the next probe after the current spacing.
    fn schedule_probe(&mut self, policy: &OutagePolicy, now_ms: u64, seed: u64) -> u64 {
        let mut rng = draw::rng(seed, now_ms, Purpose::NextProbe);
        let waiters = self.waits.estimate(now_ms, policy.wait_poll_ms.get());
        let ceiling = probe_ceiling_ms(policy, self.failed_probes, waiters);
        let next = stored(now_ms.saturating_add(draw::half_jitter(&mut rng, ceiling)));
        if let Phase::Overloaded { next_probe_ms, .. } = &mut self.phase {
            *next_probe_ms = next;
        }
        next
    }

    /// The upstream answered a request for this model without shedding load.
    pub(super) fn served(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        ticket: Option<u64>,
    ) -> ModelChange {
        self.served = true;
        self.end_probe(ticket);
        self.streak = 0;
        self.pace.served(&policy.pace, now_ms);
        if let Phase::Overloaded { .. } = self.phase {
            // Any success is proof, the probe's or a straggler's from before the marking.
            let waiters = self.waits.estimate(now_ms, policy.wait_poll_ms.get());
            let window_ms = stored(policy.release_window_ms(waiters));
            let (first_deadline_ms, span_ms) = self.waits.deadlines(now_ms);
            // Deadlines closer together than the shortest window say nothing of an order.
            let deadline_span_ms = if span_ms >= policy.release_min_ms.max(1) {
                span_ms
            } else {
                0
            };
            // Waiters hear of the recovery when they next call, within a poll period: slots
            // in that period would go as they call, bunched. When even the most urgent has
            // time to spare, the release starts a poll period later (at most a quarter of
            // that time), so each is told its slot first and the upstream sees them evenly.
            let spare = first_deadline_ms.saturating_sub(now_ms) / 4;
            let lead_ms = if deadline_span_ms == 0 {
                0
            } else {
                spare.min(policy.wait_poll_ms.get())
            };
            let window_ms = stored(window_ms.saturating_add(lead_ms));
            self.phase = Phase::Recovering {
                since_ms: now_ms,
                window_ms,
                first_deadline_ms,
                deadline_span_ms,
                lead_ms,
            };
            return ModelChange::Recovering { window_ms };
        }
        ModelChange::None
    }

    /// The upstream shed load for this model (`529` or an overloaded stream).
    pub(super) fn overloaded(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        ticket: Option<u64>,
        seed: u64,
    ) -> ModelChange {
        if self.end_probe(ticket) {
            self.failed_probes = self.failed_probes.saturating_add(1);
            let next_probe_ms = self.schedule_probe(policy, now_ms, seed);
            return ModelChange::ProbeFailed { next_probe_ms };
        }
        if let Phase::Overloaded { .. } = self.phase {
            // Already known: a straggler from before the marking, or a late probe.
            return ModelChange::None;
        }
        // Shedding while serving: pace at what the upstream can take. While paced and still
        // serving (something in the last second) this is an upstream at capacity, not an
        // outage; the streak that marks one counts only once nothing is served.
        self.pace.shed(&policy.pace, now_ms);
        if self.pace.serving(now_ms) {
            return ModelChange::None;
        }
        if self.streak == 0 {
            self.streak_started_ms = now_ms;
        }
        self.streak = self.streak.saturating_add(1);
        let span = now_ms.saturating_sub(self.streak_started_ms);
        if self.streak < policy.overload_threshold.get() || span < policy.overload_min_span_ms {
            return ModelChange::None;
        }
        self.streak = 0;
        self.waits = WaitTally::starting(now_ms);
        // An outage: probes and the paced release take over from the rate.
        self.pace.outage();
        self.phase = Phase::Overloaded {
            since_ms: now_ms,
            next_probe_ms: now_ms,
            probe: None,
        };
        let next_probe_ms = self.schedule_probe(policy, now_ms, seed);
        ModelChange::Marked { next_probe_ms }
    }

    /// Any other answer: says nothing about overload, but a probe's frees the slot and the
    /// next probe waits the current spacing.
    pub(super) fn other(
        &mut self,
        policy: &OutagePolicy,
        now_ms: u64,
        ticket: Option<u64>,
        seed: u64,
    ) {
        if self.end_probe(ticket) {
            self.schedule_probe(policy, now_ms, seed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The phase as serde's derive read it, to check the written-out reader against (its
    /// fields are compared through `Debug`).
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    #[serde(rename_all = "snake_case")]
    enum DerivedPhase {
        Healthy,
        Overloaded {
            since_ms: u64,
            next_probe_ms: u64,
            probe: Option<ProbeLease>,
        },
        Recovering {
            since_ms: u64,
            window_ms: u64,
            #[serde(default)]
            first_deadline_ms: u64,
            #[serde(default)]
            deadline_span_ms: u64,
            #[serde(default)]
            lead_ms: u64,
        },
    }

    #[test]
    fn a_phase_reads_as_the_derive_read_it() {
        let lease = ProbeLease {
            id: 3,
            started_ms: 4,
        };
        for phase in [
            Phase::Healthy,
            Phase::Overloaded {
                since_ms: 1,
                next_probe_ms: 2,
                probe: None,
            },
            Phase::Overloaded {
                since_ms: 1,
                next_probe_ms: 2,
                probe: Some(lease),
            },
            Phase::Recovering {
                since_ms: 5,
                window_ms: 6,
                first_deadline_ms: 7,
                deadline_span_ms: 8,
                lead_ms: 9,
            },
        ] {
            let text = serde_json::to_string(&phase).unwrap();
            assert_eq!(
                serde_json::from_str::<Phase>(&text).unwrap(),
                phase,
                "{text}"
            );
        }
        for text in [
            r#""healthy""#,
            r#"{"healthy": null}"#,
            r#"{"overloaded": {"since_ms": 1, "next_probe_ms": 2}}"#,
            r#"{"overloaded": {"next_probe_ms": 2, "since_ms": 1, "probe": null, "old": [1]}}"#,
            r#"{"overloaded": {"since_ms": 1, "next_probe_ms": 2, "probe": {"id": 1, "started_ms": 2}}}"#,
            r#"{"overloaded": {"since_ms": 1}}"#,
            r#"{"overloaded": {"since_ms": 1, "since_ms": 1, "next_probe_ms": 2}}"#,
            r#"{"overloaded": {"since_ms": 1, "next_probe_ms": 2, "probe": {"id": 1}}}"#,
            r#"{"recovering": {"since_ms": 5, "window_ms": 6}}"#,
            r#"{"recovering": {"window_ms": 6, "lead_ms": 2, "since_ms": 5}}"#,
            r#"{"recovering": {"since_ms": 5}}"#,
            r#"{"recovering": {"since_ms": 5, "window_ms": 6, "lead_ms": 1, "lead_ms": 2}}"#,
            r#"{"recovering": {"since_ms": -5, "window_ms": 6}}"#,
            r#"{"waiting": {}}"#,
            r#""overloaded""#,
        ] {
            let ours = serde_json::from_str::<Phase>(text).map(|p| format!("{p:?}"));
            let derived = serde_json::from_str::<DerivedPhase>(text).map(|p| format!("{p:?}"));
            match (ours, derived) {
                (Ok(ours), Ok(derived)) => assert_eq!(ours, derived, "{text}"),
                (Err(ours), Err(derived)) => {
                    // The words agree except where they name the variant's own reader.
                    if !derived.to_string().contains("struct variant") {
                        assert_eq!(ours.to_string(), derived.to_string(), "{text}");
                    }
                }
                (ours, derived) => panic!("{text}: {ours:?} against {derived:?}"),
            }
        }
    }

    #[test]
    fn long_model_names_are_cut_at_a_character_boundary() {
        assert_eq!(model_key("claude-sonnet-4-6"), "claude-sonnet-4-6");
        let long = "é".repeat(100);
        let key = model_key(&long);
        assert!(key.len() <= MAX_MODEL_NAME_BYTES && key.len() >= MAX_MODEL_NAME_BYTES - 1);
        assert!(long.starts_with(key));
        let ascii = "a".repeat(500);
        assert_eq!(model_key(&ascii).len(), MAX_MODEL_NAME_BYTES);
    }

    #[test]
    fn tally_estimates_from_the_busier_recent_period() {
        let mut tally = WaitTally::starting(0);
        for t in 0..50 {
            tally.count(t * 10, 1_000, 40_000 + t);
        }
        // 50 calls in a period: about 38 waiters calling 4/3 times each.
        assert_eq!(tally.estimate(600, 1_000), 38);
        assert_eq!(tally.estimate(1_500, 1_000), 38);
        tally.count(1_500, 1_000, 40_000);
        assert_eq!(tally.estimate(1_500, 1_000), 38);
        assert_eq!(tally.estimate(2_500, 1_000), 1);
        // Nobody called for two periods: nobody is waiting.
        assert_eq!(tally.estimate(3_100, 1_000), 0);
    }
}
