//! Property tests of the shared upstream state over random policies and random traffic.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::retry::MIN_RETRY_AFTER_MS;

const T0: u64 = 1_764_000_000_000;
const MODELS: [&str; 3] = ["opus", "sonnet", "haiku"];

/// Any policy, degenerate ones included.
fn any_policy() -> impl Strategy<Value = OutagePolicy> {
    let duration = || prop_oneof![Just(0u64), 0..5_000u64, any::<u64>()];
    (
        (
            1u32..6,
            duration(),
            duration(),
            duration(),
            duration(),
            duration(),
        ),
        (duration(), duration(), duration(), duration(), duration()),
        (any::<u32>(), 0u32..100, duration(), 0usize..4),
    )
        .prop_map(
            |(
                (
                    overload_threshold,
                    overload_window_ms,
                    probe_interval_base_ms,
                    probe_interval_cap_ms,
                    probe_lease_ms,
                    wait_poll_ms,
                ),
                (
                    release_per_waiter_ms,
                    release_min_ms,
                    release_max_ms,
                    default_cooldown_ms,
                    cooldown_spread_ms,
                ),
                (retry_budget_percent, retry_budget_floor, retry_budget_window_ms, max_models),
            )| OutagePolicy {
                overload_threshold: std::num::NonZeroU32::new(overload_threshold).unwrap(),
                // Any span: the properties must hold for every trigger.
                overload_min_span_ms: overload_window_ms / 4,
                overload_window_ms,
                probe_interval_base_ms,
                probe_interval_cap_ms,
                probe_lease_ms,
                // Eager probing with few or many waiters.
                probe_eager_waiters: std::num::NonZeroU32::new(max_models as u32 % 64 + 1)
                    .unwrap_or(std::num::NonZeroU32::MIN),
                wait_poll_ms: std::num::NonZeroU64::new(wait_poll_ms)
                    .unwrap_or(std::num::NonZeroU64::MIN),
                release_per_waiter_ms,
                release_min_ms,
                release_max_ms,
                default_cooldown_ms,
                cooldown_spread_ms,
                retry_budget_percent,
                retry_budget_floor,
                retry_budget_window_ms,
                max_models: std::num::NonZeroUsize::new(max_models)
                    .unwrap_or(std::num::NonZeroUsize::MIN),
                pace: PacePolicy::default(),
            },
        )
}

fn any_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        1 => Just(Reply::Success),
        3 => Just(Reply::Overloaded),
        1 => proptest::option::of(prop_oneof![0..10_000u64, any::<u64>()])
            .prop_map(|retry_after_ms| Reply::RateLimited { retry_after_ms }),
        1 => Just(Reply::OtherFailure),
    ]
}

/// A time: near the fleet's, or anywhere at all.
fn any_time() -> impl Strategy<Value = u64> {
    prop_oneof![8 => T0..T0 + 300_000, 1 => any::<u64>(), 1 => Just(u64::MAX), 1 => Just(0u64)]
}

#[derive(Debug, Clone)]
enum Op {
    Ask {
        at: u64,
        model: usize,
        is_retry: bool,
        deadline: u64,
        seed: u64,
    },
    /// `probe` picks among the tickets handed out so far (or none).
    Report {
        at: u64,
        model: usize,
        reply: Reply,
        probe: Option<usize>,
        seed: u64,
    },
}

fn any_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            any_time(),
            0..MODELS.len(),
            any::<bool>(),
            any_time(),
            any::<u64>()
        )
            .prop_map(|(at, model, is_retry, deadline, seed)| Op::Ask {
                at,
                model,
                is_retry,
                deadline,
                seed
            }),
        (
            any_time(),
            0..MODELS.len(),
            any_reply(),
            proptest::option::of(any::<usize>()),
            any::<u64>()
        )
            .prop_map(|(at, model, reply, probe, seed)| Op::Report {
                at,
                model,
                reply,
                probe,
                seed
            }),
    ]
}

/// Every number in a JSON value fits a JavaScript number exactly.
fn js_safe(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(n) => n.as_u64().is_some_and(|n| n <= MAX_STORED_MS),
        serde_json::Value::Array(items) => items.iter().all(js_safe),
        serde_json::Value::Object(fields) => fields.values().all(js_safe),
        _ => true,
    }
}

/// One step of traffic for the fleet tests: a gap on a forward clock, then a call.
#[derive(Debug, Clone)]
enum FleetStep {
    Ask {
        model: usize,
        is_retry: bool,
        budget: u64,
        seed: u64,
    },
    /// Reports the `n`-th outstanding attempt (modulo), if any.
    Report { n: usize, reply: Reply, seed: u64 },
}

/// Mostly overloaded replies, so that models get marked and probed often.
fn fleet_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        2 => Just(Reply::Success),
        6 => Just(Reply::Overloaded),
        1 => proptest::option::of(0..2_000u64).prop_map(|retry_after_ms| Reply::RateLimited { retry_after_ms }),
        1 => Just(Reply::OtherFailure),
    ]
}

fn fleet_step() -> impl Strategy<Value = (u64, FleetStep)> {
    let gap = prop_oneof![4 => Just(0u64), 4 => 0..100u64, 4 => 0..1_500u64, 1 => 0..70_000u64];
    let step = prop_oneof![
        (0..MODELS.len(), any::<bool>(), 0..40_000u64, any::<u64>()).prop_map(
            |(model, is_retry, budget, seed)| FleetStep::Ask {
                model,
                is_retry,
                budget,
                seed
            }
        ),
        (any::<usize>(), fleet_reply(), any::<u64>())
            .prop_map(|(n, reply, seed)| FleetStep::Report { n, reply, seed }),
    ];
    (gap, step)
}

/// An attempt sent and not yet reported.
#[derive(Debug, Clone, Copy)]
struct Outstanding {
    model: usize,
    /// Its probe ticket, with the overload episode it probes.
    probe: Option<(ProbeTicket, u32)>,
    at: u64,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Nothing panics or overflows, whatever the policy, clock and inputs; every answer keeps
    /// its promises; the state stays bounded and survives JSON.
    #[test]
    fn any_calls_keep_every_promise(policy in any_policy(), ops in prop::collection::vec(any_op(), 1..80)) {
        let mut state = UpstreamState::new();
        let mut tickets: Vec<ProbeTicket> = Vec::new();
        for op in ops {
            match op {
                Op::Ask { at, model, is_retry, deadline, seed } => {
                    match state.before_attempt(&policy, at, MODELS[model], is_retry, deadline, seed) {
                        Gate::Go { probe } => tickets.extend(probe),
                        Gate::Wait { until_ms, .. } => {
                            prop_assert!(until_ms > at.min(MAX_STORED_MS), "a wait ends after now");
                            prop_assert!(until_ms <= deadline, "a wait ends by the deadline");
                        }
                        Gate::Scheduled { at_ms, .. } => {
                            prop_assert!(at_ms >= at.min(MAX_STORED_MS), "a send time is not in the past");
                            prop_assert!(at_ms <= deadline, "a send time is by the deadline");
                        }
                        Gate::Refuse { retry_after_ms, .. } => prop_assert!(retry_after_ms >= MIN_RETRY_AFTER_MS),
                    }
                }
                Op::Report { at, model, reply, probe, seed } => {
                    let probe = probe.and_then(|i| tickets.get(i % tickets.len().max(1)).copied());
                    state.after_attempt(&policy, at, MODELS[model], AttemptReport { reply, probe }, seed);
                }
            }
            let json = serde_json::to_value(&state).unwrap_or_default();
            prop_assert!(js_safe(&json), "{json}");
            let back: UpstreamState = serde_json::from_value(json).unwrap_or_default();
            prop_assert_eq!(&back, &state);
            let snapshot = state.snapshot(&policy, at_of(&state));
            prop_assert!(snapshot.models.len() <= policy.max_models.get());
            let _ = state.is_idle(&policy, u64::MAX);
        }
        // Tickets are unique.
        let mut ids: Vec<u64> = tickets.iter().map(|t| t.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        prop_assert_eq!(ids.len(), tickets.len());
    }

    /// On a forward clock, a model never has two probes in flight: a probe is handed out only
    /// when the previous one reported or its lease ended. A success reported for the model
    /// ends the overload, and with it the probe's role: an unreported probe of an earlier
    /// overload is an ordinary request. (The traffic is mostly overloaded replies: about nine
    /// cases in ten hand out several probes.)
    #[test]
    fn at_most_one_probe_in_flight_per_model(
        lease in 1u64..120_000,
        steps in prop::collection::vec(fleet_step(), 1..400),
    ) {
        let policy = OutagePolicy { probe_lease_ms: lease, ..OutagePolicy::default() };
        let mut state = UpstreamState::new();
        let mut now = T0;
        // Overloads ended per model, by a success.
        let mut episode = [0u32; MODELS.len()];
        let mut outstanding: Vec<Outstanding> = Vec::new();
        for (gap, step) in steps {
            now += gap;
            match step {
                FleetStep::Ask { model, is_retry, budget, seed } => {
                    if let Gate::Go { probe } = state.before_attempt(&policy, now, MODELS[model], is_retry, now + budget, seed) {
                        if probe.is_some() {
                            let live = outstanding.iter().filter(|sent| {
                                sent.model == model
                                    && sent.probe.is_some_and(|(_, e)| e == episode[model])
                                    && now < sent.at + lease
                            }).count();
                            prop_assert_eq!(live, 0, "a second probe in flight");
                        }
                        outstanding.push(Outstanding { model, probe: probe.map(|t| (t, episode[model])), at: now });
                    }
                }
                FleetStep::Report { n, reply, seed } => {
                    if !outstanding.is_empty() {
                        let Outstanding { model, probe, .. } = outstanding.remove(n % outstanding.len());
                        let report = AttemptReport { reply, probe: probe.map(|(t, _)| t) };
                        state.after_attempt(&policy, now, MODELS[model], report, seed);
                        if reply == Reply::Success {
                            episode[model] += 1;
                        }
                    }
                }
            }
        }
    }

    /// The retry budget never lets through more retries than `max(floor, percent % of
    /// requests)` in a window of ten buckets, and never refuses one that fits.
    #[test]
    fn retries_stay_within_the_budget(
        percent in 0u32..100,
        floor in 0u32..40,
        steps in prop::collection::vec((prop_oneof![Just(0u64), 0..50u64, 0..2_000u64, 0..15_000u64], any::<bool>()), 1..600),
    ) {
        let policy = OutagePolicy { retry_budget_percent: percent, retry_budget_floor: floor, ..OutagePolicy::default() };
        let mut state = UpstreamState::new();
        let mut now = T0;
        let mut sent: Vec<(u64, bool)> = Vec::new();
        for (gap, is_retry) in steps {
            now += gap;
            let tick = now / 1_000;
            let in_window = |sent: &[(u64, bool)], retry: bool| {
                sent.iter().filter(|(at, r)| *r == retry && at / 1_000 + 9 >= tick).count() as u64
            };
            let allowance = (in_window(&sent, false) * u64::from(percent) / 100).max(u64::from(floor));
            let retries_before = in_window(&sent, true);
            match state.before_attempt(&policy, now, MODELS[0], is_retry, now + 30_000, now) {
                Gate::Go { .. } => {
                    if is_retry {
                        prop_assert!(retries_before < allowance, "{} retries, {} allowed", retries_before + 1, allowance);
                    }
                    sent.push((now, is_retry));
                }
                Gate::Refuse { reason, retry_after_ms, .. } => {
                    prop_assert_eq!(reason, RefuseReason::RetryBudget);
                    prop_assert!(is_retry);
                    prop_assert!(retries_before >= allowance, "refused with {} of {} used", retries_before, allowance);
                    prop_assert!((MIN_RETRY_AFTER_MS..=10_000).contains(&retry_after_ms));
                }
                Gate::Wait { .. } | Gate::Scheduled { .. } => prop_assert!(false, "nothing to wait for"),
            }
        }
    }

    /// Overload, cooldown and probes in any order still end: once the upstream is fine
    /// again, a waiting request is let through within its budget.
    #[test]
    fn waiting_requests_go_once_the_upstream_recovers(
        seed in any::<u64>(),
        overloads in 3u32..10,
        budget in 10_000u64..60_000,
    ) {
        let policy = OutagePolicy::default();
        let mut state = UpstreamState::new();
        for _ in 0..overloads {
            state.after_attempt(&policy, T0, MODELS[1], AttemptReport { reply: Reply::Overloaded, probe: None }, seed);
        }
        // One request waits; the upstream is fine from T0 on; it is the only caller.
        let deadline = T0 + budget;
        let mut now = T0;
        let mut served = false;
        for _ in 0..1_000 {
            match state.before_attempt(&policy, now, MODELS[1], false, deadline, seed) {
                Gate::Go { probe } => {
                    state.after_attempt(&policy, now + 300, MODELS[1], AttemptReport { reply: Reply::Success, probe }, seed);
                    if probe.is_none() {
                        served = true;
                        break;
                    }
                    now += 300;
                }
                Gate::Wait { until_ms, .. } => now = until_ms,
                Gate::Scheduled { at_ms, .. } => {
                    state.after_attempt(&policy, at_ms + 300, MODELS[1], AttemptReport { reply: Reply::Success, probe: None }, seed);
                    now = at_ms;
                    served = true;
                    break;
                }
                Gate::Refuse { .. } => break,
            }
        }
        prop_assert!(served, "the lone waiter probed, then went");
        prop_assert!(now <= deadline);
    }
}

proptest! {
    /// Whatever the waiters' deadlines and the outage's length, the release after it lets
    /// the earlier deadline go no later than the later one (earliest deadline first), and
    /// lets each go no later than halfway from the recovery to its deadline, so that it keeps
    /// time for its answer.
    #[test]
    fn the_release_goes_earliest_deadline_first_and_halfway_at_the_latest(
        seed in any::<u64>(),
        budgets in prop::collection::vec(1_000u64..120_000, 2..120),
        spacing in 1u64..200,
        outage in 600u64..30_000,
    ) {
        let policy = OutagePolicy::default();
        let mut state = UpstreamState::new();
        let opus = MODELS[0];
        let shed = |state: &mut UpstreamState, at: u64| {
            state.after_attempt(&policy, at, opus, AttemptReport { reply: Reply::Overloaded, probe: None }, seed)
        };
        for i in 0..policy.overload_threshold.get() {
            shed(&mut state, T0 + u64::from(i) * policy.overload_min_span_ms);
        }
        // Every request arrives during the outage and waits, polling, until it ends; the
        // probes fail until then, and the first one after it succeeds.
        let start = T0 + policy.overload_min_span_ms * u64::from(policy.overload_threshold.get());
        let end = start + outage;
        let mut calls: Vec<(u64, usize)> = (0..budgets.len()).map(|i| (start + i as u64 * spacing, i)).collect();
        let deadline = |i: usize| start + i as u64 * spacing + budgets[i];
        let mut recovered = None;
        let mut rounds = 0;
        while let Some(&(at, i)) = calls.iter().min() {
            rounds += 1;
            prop_assert!(rounds < 200_000);
            calls.retain(|&(t, j)| (t, j) != (at, i));
            if at >= deadline(i) {
                // Out of budget: its caller answers it and stops calling.
                continue;
            }
            if let Some(since) = recovered {
                // Released (or told its slot): record when it may go.
                let gate = state.before_attempt(&policy, at, opus, false, deadline(i), seed ^ i as u64);
                let halfway = since + deadline(i).saturating_sub(since) / 2;
                let go_at = match gate {
                    Gate::Go { .. } => at,
                    Gate::Scheduled { at_ms, .. } => at_ms,
                    Gate::Wait { until_ms, reason } => {
                        if reason == WaitReason::Recovering {
                            prop_assert!(until_ms <= halfway, "slot {until_ms} after halfway {halfway}");
                        }
                        calls.push((until_ms, i));
                        continue;
                    }
                    Gate::Refuse { .. } => continue,
                };
                prop_assert!(go_at <= deadline(i));
                continue;
            }
            match state.before_attempt(&policy, at, opus, false, deadline(i), seed ^ i as u64) {
                Gate::Go { probe: Some(ticket) } => {
                    let reply = if at >= end { Reply::Success } else { Reply::Overloaded };
                    let change = state.after_attempt(&policy, at + 40, opus, AttemptReport { reply, probe: Some(ticket) }, seed);
                    if let Change::Recovering { .. } = change {
                        recovered = Some(at + 40);
                    }
                    calls.push((at + 41, i));
                }
                Gate::Wait { until_ms, .. } => calls.push((until_ms, i)),
                _ => {}
            }
        }
        // Earliest deadline first: the slots told after the recovery never invert two
        // deadlines (checked on a fresh set of asks at one instant).
        if let Some(since) = recovered {
            let at = since + 1;
            let mut slots: Vec<(u64, u64)> = (0..budgets.len())
                .filter(|&i| deadline(i) > at)
                .filter_map(|i| match state.before_attempt(&policy, at, opus, false, deadline(i), seed) {
                    Gate::Wait { until_ms, .. } => Some((deadline(i), until_ms)),
                    _ => None,
                })
                .collect();
            slots.sort_unstable();
            if let super::health::Phase::Recovering { deadline_span_ms, .. } = state.phase_of(opus) {
                if deadline_span_ms > 0 {
                    prop_assert!(slots.windows(2).all(|w| w[0].1 <= w[1].1), "{slots:?}");
                }
            }
        }
    }
}

/// The state's own clock, through its snapshot.
fn at_of(state: &UpstreamState) -> u64 {
    state.snapshot(&OutagePolicy::default(), 0).at_ms
}

#[test]
fn probes_do_happen_in_the_fleet_traffic() {
    // Guards the probe property against vacuity: the same kind of traffic hands out probes.
    let policy = OutagePolicy::default();
    let mut state = UpstreamState::new();
    let mut probes = 0;
    let mut tally: HashMap<bool, u32> = HashMap::new();
    for i in 0..100u64 {
        let at = T0 + i * 700;
        let gate = state.before_attempt(&policy, at, MODELS[0], false, at + 30_000, i);
        if let Gate::Go { probe } = gate {
            *tally.entry(probe.is_some()).or_default() += 1;
            probes += u32::from(probe.is_some());
            state.after_attempt(
                &policy,
                at + 40,
                MODELS[0],
                AttemptReport {
                    reply: Reply::Overloaded,
                    probe,
                },
                i,
            );
        }
    }
    assert_eq!(tally.get(&false), Some(&policy.overload_threshold.get()));
    assert!(probes > 10, "{probes}");
}
