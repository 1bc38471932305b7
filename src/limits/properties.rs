//! Property tests of the limiter's contract, over random tiers and random traffic.
//!
//! The window bound proved (and checked here for rpm, input and output): for a dimension of
//! quota `Q` per minute and any window of `w ≥ 1` whole milliseconds, the cost admitted at
//! times inside the window is at most `Q · (60 000 + w − 1) / 60 000` — one full bucket plus
//! the refill of the `w − 1` ms between the window's first and last millisecond (at most
//! `Q · w / 60 000 + Q`). Proof: the bucket's level is never negative, every admission
//! leaves it at most at capacity, and between the first and the last admission of the
//! window it drains by at most `Q · (w − 1)` units. With settlements, the same bound holds
//! for the *actual* usage of the admitted requests (counted at admission) whenever no
//! request used more than it reserved, because the state's levels never fall below those
//! of a ledger charging each admitted request its actual usage at admission.
//!
//! A request may use more than it reserved: one larger than a whole bucket reserves only
//! the bucket (its `max_tokens` or prompt above the quota), and an estimate may fall short.
//! Nobody knows the overshoot before the settlement, which charges it, debt and all. The
//! bound then reads: over any window, the actual usage admitted is at most the bound above
//! plus the overshoot of the window's requests not yet settled when its last one was
//! admitted — and for output, where only a request larger than the bucket can overshoot,
//! that is one request's overshoot in any window up to a minute (a second such request
//! needs the bucket full again). A debt is waited out: no admission ever leaves a bucket
//! above its capacity, so a caller in debt is admitted nothing until the debt has drained.

use std::collections::HashSet;
use std::num::NonZeroU32;

use proptest::prelude::*;

use super::bucket::{Level, UNITS_PER_TOKEN};
use super::*;
use crate::config::TierLimits;

const T0: u64 = 1_764_000_000_000;

fn quota(max: u32) -> impl Strategy<Value = Option<NonZeroU32>> {
    prop_oneof![1 => Just(None), 4 => (1..=max).prop_map(NonZeroU32::new)]
}

fn tier(with_concurrency: bool) -> impl Strategy<Value = TierLimits> {
    let concurrency = if with_concurrency {
        quota(5).boxed()
    } else {
        Just(None).boxed()
    };
    (quota(20), quota(3_000), quota(3_000), concurrency).prop_map(
        |(rpm, input_tpm, output_tpm, concurrency)| TierLimits {
            rpm,
            input_tpm,
            output_tpm,
            concurrency,
            quotas: Default::default(),
        },
    )
}

/// Milliseconds between events: often none, often a little, sometimes most of a minute.
fn gap() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0_u64), 0..50_u64, 0..4_000_u64, 0..60_000_u64]
}

/// A clock step that sometimes goes backwards (a little, or past the lead the state
/// tolerates).
fn wobbly_gap() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => gap().prop_map(|g| i64::try_from(g).unwrap()),
        1 => (1..5_000_i64).prop_map(|g| -g),
        1 => (60_000..200_000_i64).prop_map(|g| -g),
    ]
}

#[derive(Debug, Clone)]
enum Event {
    Admit {
        input: u64,
        output: u64,
        lease_ms: u64,
        /// Actual usage as thousandths of the reservation, per token dimension.
        used_permille: [u64; 2],
        /// Whether the settlement will know the usage.
        known: bool,
    },
    /// Settle one of the admitted requests (possibly again).
    Settle(prop::sample::Index),
}

fn event(max_used_permille: u64) -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (
            0..4_000_u64,
            prop_oneof![0..400_u64, 0..3_500_u64],
            prop_oneof![Just(1_u64), 1..2_000_u64, 1..200_000_u64],
            [0..=max_used_permille, 0..=max_used_permille],
            any::<bool>(),
        )
            .prop_map(|(input, output, lease_ms, used_permille, known)| Event::Admit {
                input,
                output,
                lease_ms,
                used_permille,
                known,
            }),
        1 => any::<prop::sample::Index>().prop_map(Event::Settle),
    ]
}

fn events(max_used_permille: u64, settlements: bool) -> impl Strategy<Value = Vec<(i64, Event)>> {
    let one = (
        gap().prop_map(|g| i64::try_from(g).unwrap()),
        event(max_used_permille),
    );
    prop::collection::vec(one, 1..150).prop_map(move |events| {
        events
            .into_iter()
            .filter(|(_, e)| settlements || matches!(e, Event::Admit { .. }))
            .collect()
    })
}

struct Record {
    at: u64,
    /// The step that admitted it, and the step that first settled it (charging its extra).
    admitted_step: usize,
    settled_step: Option<usize>,
    reservation: Reservation,
    /// Usage counted at admission in the reference ledger: rpm, input, output.
    actual: [u64; 3],
    usage: Used,
    /// Usage beyond the reservation, charged to the ledger at the first settlement: nobody
    /// can know it before.
    extra: Option<[u64; 3]>,
}

/// Drives a state and a reference ledger that charges every admitted request its actual
/// usage at admission (up to its reservation, the rest when it settles), without any check.
struct Sim {
    limits: TierLimits,
    state: LimiterState,
    now: u64,
    ledger: [Level; 3],
    ledger_clock: u64,
    admitted: Vec<Record>,
    settled: HashSet<u64>,
    /// Whether `used_permille` counts thousandths of what the request asked (the input
    /// estimate, `max_tokens`), as a real answer uses at most that, rather than of what
    /// it reserved.
    usage_of_the_ask: bool,
    steps: usize,
}

impl Sim {
    fn new(limits: TierLimits) -> Sim {
        Sim {
            limits,
            state: LimiterState::new(),
            now: T0,
            ledger: [Level::EMPTY; 3],
            ledger_clock: 0,
            admitted: Vec::new(),
            settled: HashSet::new(),
            usage_of_the_ask: false,
            steps: 0,
        }
    }

    /// A simulation whose requests use up to what they asked, more than they reserved when
    /// they asked more than a whole bucket.
    fn using_up_to_the_ask(limits: TierLimits) -> Sim {
        Sim {
            usage_of_the_ask: true,
            ..Sim::new(limits)
        }
    }

    fn quotas(&self) -> [Option<NonZeroU32>; 3] {
        [
            self.limits.rpm,
            self.limits.input_tpm,
            self.limits.output_tpm,
        ]
    }

    fn step(&mut self, gap: i64, event: &Event) -> Result<(), TestCaseError> {
        self.steps += 1;
        self.now = self.now.saturating_add_signed(gap);
        // The same clock rule as the state: a clock far behind is taken for a jump.
        if self.ledger_clock > self.now.saturating_add(MAX_CLOCK_LEAD_MS) {
            self.ledger_clock = self.now;
        }
        let elapsed = self.now.saturating_sub(self.ledger_clock);
        self.ledger_clock = self.ledger_clock.max(self.now);
        let quotas = self.quotas();
        for (level, quota) in self.ledger.iter_mut().zip(quotas) {
            if let Some(quota) = quota {
                *level = level.drained(quota, elapsed);
            }
        }
        match *event {
            Event::Admit {
                input,
                output,
                lease_ms,
                used_permille,
                known,
            } => {
                let request = AdmissionRequest {
                    input_tokens: input,
                    output_tokens: output,
                    lease_ms,
                    quota: None,
                };
                if let Admission::Admitted(reservation) =
                    self.state.admit(&self.limits, self.now, &request)
                {
                    let used = |charged: u64, permille: u64| {
                        if known {
                            charged * permille / 1000
                        } else {
                            charged
                        }
                    };
                    let (input_base, output_base) = if self.usage_of_the_ask {
                        // What a limited dimension was asked; nothing counts where unlimited.
                        (
                            self.limits.input_tpm.map_or(0, |_| input),
                            self.limits.output_tpm.map_or(0, |_| output),
                        )
                    } else {
                        (reservation.input_tokens, reservation.output_tokens)
                    };
                    let known_or_reserved = |base: u64, reserved: u64, permille: u64| {
                        if known {
                            base * permille / 1000
                        } else {
                            reserved
                        }
                    };
                    let actual = if self.usage_of_the_ask {
                        [
                            u64::from(self.limits.rpm.is_some()),
                            known_or_reserved(
                                input_base,
                                reservation.input_tokens,
                                used_permille[0],
                            ),
                            known_or_reserved(
                                output_base,
                                reservation.output_tokens,
                                used_permille[1],
                            ),
                        ]
                    } else {
                        [
                            u64::from(self.limits.rpm.is_some()),
                            used(reservation.input_tokens, used_permille[0]),
                            used(reservation.output_tokens, used_permille[1]),
                        ]
                    };
                    let reserved = [
                        actual[0],
                        reservation.input_tokens,
                        reservation.output_tokens,
                    ];
                    for ((level, cost), reserved) in
                        self.ledger.iter_mut().zip(actual).zip(reserved)
                    {
                        *level = level.charged(cost.min(reserved));
                    }
                    let extra = [
                        0,
                        actual[1].saturating_sub(reserved[1]),
                        actual[2].saturating_sub(reserved[2]),
                    ];
                    let usage = if known {
                        Used {
                            input_tokens: Some(actual[1]),
                            output_tokens: Some(actual[2]),
                        }
                    } else {
                        Used::UNKNOWN
                    };
                    self.admitted.push(Record {
                        at: self.now,
                        admitted_step: self.steps,
                        settled_step: None,
                        reservation,
                        actual,
                        usage,
                        extra: Some(extra),
                    });
                    self.check_concurrency()?;
                    self.check_no_admission_into_debt()?;
                }
            }
            Event::Settle(_) if self.admitted.is_empty() => {
                // A reservation the state never made: only moves its clock.
                let unknown = Reservation {
                    lease_id: 7,
                    input_tokens: 0,
                    output_tokens: 0,
                    lease_expires_ms: 0,
                    quota: None,
                };
                let settlement = self
                    .state
                    .settle(&self.limits, self.now, &unknown, Used::UNKNOWN);
                prop_assert_eq!(settlement, Settlement::default());
            }
            Event::Settle(pick) => {
                let index = pick.index(self.admitted.len());
                let record = &mut self.admitted[index];
                self.state
                    .settle(&self.limits, self.now, &record.reservation, record.usage);
                record.settled_step.get_or_insert(self.steps);
                self.settled.insert(record.reservation.lease_id);
                for (level, cost) in self
                    .ledger
                    .iter_mut()
                    .zip(record.extra.take().unwrap_or_default())
                {
                    *level = level.charged(cost);
                }
            }
        }
        self.check_dominance()
    }

    /// Settlement never creates capacity: every level is at least the reference's.
    fn check_dominance(&self) -> Result<(), TestCaseError> {
        for (index, (ours, reference)) in self.state.levels().iter().zip(self.ledger).enumerate() {
            if self.quotas()[index].is_some() {
                prop_assert!(
                    *ours >= reference,
                    "dimension {index}: level {ours:?} below the reference {reference:?}"
                );
            }
        }
        Ok(())
    }

    /// An admission never leaves a bucket above its capacity: a debt is waited out before
    /// anything more is admitted.
    fn check_no_admission_into_debt(&self) -> Result<(), TestCaseError> {
        let levels = self.state.levels();
        for (index, quota) in self.quotas().into_iter().enumerate() {
            if let Some(quota) = quota {
                let capacity = u64::from(quota.get()) * UNITS_PER_TOKEN;
                prop_assert!(
                    levels[index].units() <= capacity,
                    "dimension {index}: admitted at level {} above capacity {capacity}",
                    levels[index].units()
                );
            }
        }
        Ok(())
    }

    /// The window bound over actual usage, plus the overshoot of the window's requests still
    /// unsettled when its last one was admitted (see the module's doc). For output, in
    /// windows up to a minute, at most one such request overshot.
    fn check_windows_with_overshoot(&self) -> Result<(), TestCaseError> {
        for (dimension, quota) in self.quotas().into_iter().enumerate() {
            let Some(quota) = quota else { continue };
            let quota = u128::from(quota.get());
            for (i, first) in self.admitted.iter().enumerate() {
                let mut total: u128 = 0;
                for (j, last) in self.admitted.iter().enumerate().skip(i) {
                    total += u128::from(last.actual[dimension]);
                    let pending: Vec<u64> = self.admitted[i..=j]
                        .iter()
                        .filter(|r| r.settled_step.is_none_or(|s| s > last.admitted_step))
                        .map(|r| r.actual[dimension].saturating_sub(reserved(r)[dimension]))
                        .filter(|extra| *extra > 0)
                        .collect();
                    let overshoot: u128 = pending.iter().map(|e| u128::from(*e)).sum();
                    let width = u128::from(last.at - first.at) + 1;
                    prop_assert!(
                        total * u128::from(UNITS_PER_TOKEN)
                            <= quota * (u128::from(UNITS_PER_TOKEN) + width - 1)
                                + overshoot * u128::from(UNITS_PER_TOKEN),
                        "dimension {dimension}: {total} admitted in {width} ms at quota {quota}, \
                         {overshoot} of it unannounced"
                    );
                    if dimension == 2 && width <= u128::from(UNITS_PER_TOKEN) {
                        prop_assert!(
                            pending.len() <= 1,
                            "{} requests overshot their output in {width} ms",
                            pending.len()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Never more leases holding a slot than the concurrency limit.
    fn check_concurrency(&self) -> Result<(), TestCaseError> {
        if let Some(slots) = self.limits.concurrency {
            let held = self
                .admitted
                .iter()
                // Leases expire on the state's clock, which never runs backwards.
                .filter(|r| r.reservation.lease_expires_ms > self.ledger_clock)
                .filter(|r| !self.settled.contains(&r.reservation.lease_id))
                .count();
            prop_assert!(held as u64 <= u64::from(slots.get()), "{held} leases held");
        }
        Ok(())
    }

    /// Checks the window bound for each limited dimension over `cost(record)[dimension]`.
    fn check_windows(&self, cost: impl Fn(&Record) -> [u64; 3]) -> Result<(), TestCaseError> {
        for (dimension, quota) in self.quotas().into_iter().enumerate() {
            let Some(quota) = quota else { continue };
            let quota = u128::from(quota.get());
            for (i, first) in self.admitted.iter().enumerate() {
                let mut total: u128 = 0;
                for last in &self.admitted[i..] {
                    total += u128::from(cost(last)[dimension]);
                    let width = u128::from(last.at - first.at) + 1;
                    prop_assert!(
                        total * u128::from(UNITS_PER_TOKEN)
                            <= quota * (u128::from(UNITS_PER_TOKEN) + width - 1),
                        "dimension {dimension}: {total} admitted in {width} ms at quota {quota}"
                    );
                }
            }
        }
        Ok(())
    }
}

/// What a record reserved: rpm, input, output.
fn reserved(record: &Record) -> [u64; 3] {
    [
        record.actual[0],
        record.reservation.input_tokens,
        record.reservation.output_tokens,
    ]
}

/// Requests as clients send them: mostly within the tier, sometimes a `max_tokens` or a
/// prompt of several whole buckets (Claude Code asks 32 000 output tokens of any tier); each
/// uses up to what it asked.
fn large_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        3 => (
            prop_oneof![0..4_000_u64, 0..12_000_u64],
            prop_oneof![0..400_u64, 0..3_500_u64, 0..12_000_u64],
            prop_oneof![Just(1_u64), 1..2_000_u64, 1..200_000_u64],
            [0..=1000_u64, 0..=1000_u64],
            prop_oneof![4 => Just(true), 1 => Just(false)],
        )
            .prop_map(|(input, output, lease_ms, used_permille, known)| Event::Admit {
                input,
                output,
                lease_ms,
                used_permille,
                known,
            }),
        2 => any::<prop::sample::Index>().prop_map(Event::Settle),
    ]
}

fn replay_is_exact(
    state: &LimiterState,
    limits: &TierLimits,
    now: u64,
    request: &AdmissionRequest,
    denial: &Denial,
) -> Result<(), TestCaseError> {
    prop_assert!(denial.retry_after_ms >= 1);
    let at = now + denial.retry_after_ms;
    let early = state.clone().admit(limits, at - 1, request);
    prop_assert!(
        matches!(early, Admission::Denied(_)),
        "1 ms early: {early:?} after {denial:?}"
    );
    let on_time = state.clone().admit(limits, at, request);
    prop_assert!(
        matches!(on_time, Admission::Admitted(_)),
        "on time: {on_time:?} after {denial:?}"
    );
    Ok(())
}

proptest! {
    // Failures become named regression tests, not files outside the module.
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Without settlements, no window admits more than its quota allows (reserved costs).
    #[test]
    fn no_window_admits_more_than_its_quota(limits in tier(true), events in events(1000, false)) {
        let mut sim = Sim::new(limits);
        for (gap, event) in &events {
            sim.step(*gap, event)?;
        }
        sim.check_windows(|r| [
            u64::from(limits.rpm.is_some()),
            r.reservation.input_tokens,
            r.reservation.output_tokens,
        ])?;
    }

    /// With settlements returning what went unused, the actual usage still obeys the bound,
    /// and the state never holds less than the actual-usage ledger.
    #[test]
    fn settlement_never_creates_capacity(limits in tier(true), events in events(1000, true)) {
        let mut sim = Sim::new(limits);
        for (gap, event) in &events {
            sim.step(*gap, event)?;
        }
        sim.check_windows(|r| r.actual)?;
    }

    /// Usage beyond the reservation is charged, late but in full: the ledger still
    /// dominates (the window bound does not hold for usage nobody announced).
    #[test]
    fn extra_usage_is_never_forgiven(limits in tier(true), events in events(2500, true)) {
        let mut sim = Sim::new(limits);
        for (gap, event) in &events {
            sim.step(*gap, event)?;
        }
    }

    /// Requests larger than a bucket are admitted with a full bucket and settle to what they
    /// used: never admitted into debt, the bound holds up to the overshoot not yet
    /// announced (one request's, for output within a minute), and the state never holds less
    /// than what was used.
    #[test]
    fn a_debt_is_waited_out_and_overshoot_is_bounded(
        limits in tier(true),
        events in prop::collection::vec((gap().prop_map(|g| i64::try_from(g).unwrap()), large_event()), 1..150),
    ) {
        let mut sim = Sim::using_up_to_the_ask(limits);
        for (gap, event) in &events {
            sim.step(*gap, event)?;
        }
        sim.check_windows_with_overshoot()?;
    }

    /// A request larger than a bucket waits exactly until the bucket is full (a debt
    /// included), never longer and never refused for its size.
    #[test]
    fn a_request_larger_than_a_bucket_waits_for_a_full_one(
        limits in tier(false),
        history in prop::collection::vec((wobbly_gap(), large_event()), 0..80),
        gap in wobbly_gap(),
        ask in (1..5_u64, 1..5_u64),
    ) {
        let mut sim = Sim::using_up_to_the_ask(limits);
        for (gap, event) in &history {
            sim.step(*gap, event)?;
        }
        let now = sim.now.saturating_add_signed(gap);
        let quota_of = |q: Option<NonZeroU32>| q.map_or(1, |q| u64::from(q.get()));
        let request = AdmissionRequest {
            input_tokens: quota_of(limits.input_tpm) * ask.0 + 1,
            output_tokens: quota_of(limits.output_tpm) * ask.1 + 1,
            lease_ms: 1_000,
            quota: None,
        };
        let mut state = sim.state.clone();
        match state.admit(&limits, now, &request) {
            Admission::Admitted(reservation) => {
                prop_assert_eq!(reservation.input_tokens, limits.input_tpm.map_or(0, |q| u64::from(q.get())));
                prop_assert_eq!(reservation.output_tokens, limits.output_tpm.map_or(0, |q| u64::from(q.get())));
            }
            Admission::Exhausted(refusal) => prop_assert!(false, "no quota set: {refusal:?}"),
            Admission::Denied(denial) => {
                replay_is_exact(&state, &limits, now, &request, &denial)?;
                // When a token bucket binds, the wait ends the moment it is full.
                if matches!(denial.dimension, Dimension::InputTpm | Dimension::OutputTpm) {
                    let at = now + denial.retry_after_ms;
                    let binding = state
                        .snapshot(&limits, at)
                        .into_iter()
                        .find(|status| status.dimension == denial.dimension);
                    prop_assert!(
                        binding.is_some_and(|b| b.remaining == b.limit && b.reset_ms == 0),
                        "{binding:?} after {denial:?}"
                    );
                }
            }
        }
    }

    /// A denied request replayed after its retry-after is admitted; 1 ms earlier it is not.
    #[test]
    fn retry_after_is_exact(
        limits in tier(false),
        history in prop::collection::vec((wobbly_gap(), event(1500)), 0..80),
        probes in prop::collection::vec((wobbly_gap(), 0..4_000_u64, 0..3_500_u64), 1..20),
    ) {
        let mut sim = Sim::new(limits);
        for (gap, event) in &history {
            sim.step(*gap, event)?;
        }
        for (gap, input, output) in probes {
            let now = sim.now.saturating_add_signed(gap);
            let request = AdmissionRequest { input_tokens: input, output_tokens: output, lease_ms: 1_000, quota: None };
            let mut state = sim.state.clone();
            if let Admission::Denied(denial) = state.admit(&limits, now, &request) {
                prop_assert_ne!(denial.dimension, Dimension::Concurrency);
                replay_is_exact(&state, &limits, now, &request, &denial)?;
            }
            // Keep the traffic going for the next probe.
            sim.step(gap, &Event::Admit { input, output, lease_ms: 1_000, used_permille: [500, 500], known: true })?;
        }
    }

    /// A state that goes through JSON between every decision decides exactly the same.
    #[test]
    fn a_serialized_state_decides_the_same(
        limits in tier(true),
        events in prop::collection::vec((wobbly_gap(), event(1500)), 1..100),
    ) {
        let mut sim = Sim::new(limits);
        let mut stored = LimiterState::new();
        for (gap, event) in &events {
            stored = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
            let now = sim.now.saturating_add_signed(*gap);
            match event {
                Event::Admit { input, output, lease_ms, .. } => {
                    let request = AdmissionRequest { input_tokens: *input, output_tokens: *output, lease_ms: *lease_ms, quota: None };
                    prop_assert_eq!(stored.admit(&limits, now, &request), sim.state.clone().admit(&limits, now, &request));
                }
                Event::Settle(pick) if !sim.admitted.is_empty() => {
                    let record = &sim.admitted[pick.index(sim.admitted.len())];
                    let (reservation, usage) = (record.reservation, record.usage);
                    prop_assert_eq!(
                        stored.settle(&limits, now, &reservation, usage),
                        sim.state.clone().settle(&limits, now, &reservation, usage)
                    );
                }
                Event::Settle(_) => {
                    let unknown = Reservation { lease_id: 7, input_tokens: 0, output_tokens: 0, lease_expires_ms: 0, quota: None };
                    stored.settle(&limits, now, &unknown, Used::UNKNOWN);
                }
            }
            sim.step(*gap, event)?;
            prop_assert_eq!(&stored, &sim.state);
        }
    }

    /// Snapshots agree with decisions: `remaining` tokens are admitted, one more is not
    /// (when nothing else binds), and after `reset_ms` the bucket is full.
    #[test]
    fn snapshots_agree_with_decisions(
        limits in tier(false),
        events in events(1000, true),
    ) {
        let mut sim = Sim::new(limits);
        for (gap, event) in &events {
            sim.step(*gap, event)?;
        }
        for status in sim.state.snapshot(&limits, sim.now) {
            let only = |d: Dimension| {
                let mut l = TierLimits::default();
                match d {
                    Dimension::Rpm => l.rpm = limits.rpm,
                    Dimension::InputTpm => l.input_tpm = limits.input_tpm,
                    Dimension::OutputTpm => l.output_tpm = limits.output_tpm,
                    Dimension::Concurrency => l.concurrency = limits.concurrency,
                }
                l
            };
            let l = only(status.dimension);
            let ask = |tokens: u64| match status.dimension {
                Dimension::InputTpm => AdmissionRequest { input_tokens: tokens, output_tokens: 0, lease_ms: 1, quota: None },
                _ => AdmissionRequest { input_tokens: 0, output_tokens: tokens, lease_ms: 1, quota: None },
            };
            if status.dimension != Dimension::Rpm {
                let fits = sim.state.clone().admit(&l, sim.now, &ask(status.remaining));
                prop_assert!(matches!(fits, Admission::Admitted(_)));
                if status.remaining < status.limit {
                    let more = sim.state.clone().admit(&l, sim.now, &ask(status.remaining + 1));
                    prop_assert!(matches!(more, Admission::Denied(_)));
                }
            }
            let idle_in = sim.state.idle_in_ms(&limits, sim.now);
            prop_assert!(idle_in >= status.reset_ms);
            prop_assert!(sim.state.is_idle(&limits, sim.now + idle_in));
            prop_assert!(idle_in == 0 || !sim.state.is_idle(&limits, sim.now + idle_in - 1));
            let full = sim.state.snapshot(&l, sim.now + status.reset_ms);
            prop_assert_eq!(full[0].remaining, status.limit);
            if status.reset_ms > 0 {
                let almost = sim.state.snapshot(&l, sim.now + status.reset_ms - 1);
                prop_assert!(almost[0].remaining < status.limit);
                prop_assert!(almost[0].reset_ms == 1);
            }
        }
    }
}
