//! Unit tests of the shared upstream state, on a fake clock.

use super::*;
use crate::retry::{Outcome, MIN_RETRY_AFTER_MS};

const T0: u64 = 1_764_000_000_000;
const MODEL: &str = "claude-sonnet-4-6";
const OTHER: &str = "claude-haiku-4-5";
const LONG: u64 = T0 + 600_000;

/// The mechanics are tested with a quick trigger: three overloads mark a model at once, and
/// waiters are released over 10 ms each (0.25–5 s).
fn policy() -> OutagePolicy {
    OutagePolicy {
        overload_threshold: std::num::NonZeroU32::new(3).unwrap(),
        overload_min_span_ms: 0,
        release_per_waiter_ms: 10,
        release_min_ms: 250,
        release_max_ms: 5_000,
        ..OutagePolicy::default()
    }
}

fn report(reply: Reply, probe: Option<ProbeTicket>) -> AttemptReport {
    AttemptReport { reply, probe }
}

fn ask(state: &mut UpstreamState, at: u64, model: &str, deadline: u64, seed: u64) -> Gate {
    state.before_attempt(&policy(), at, model, false, deadline, seed)
}

/// The ticket of a `Go`; fails the test on anything else.
fn go(gate: Gate) -> Option<ProbeTicket> {
    match gate {
        Gate::Go { probe } => probe,
        other => panic!("expected go, got {other:?}"),
    }
}

fn probe(gate: Gate) -> ProbeTicket {
    go(gate).unwrap_or_else(|| panic!("expected a probe"))
}

fn wait(gate: Gate) -> (u64, WaitReason) {
    match gate {
        Gate::Wait { until_ms, reason } => (until_ms, reason),
        other => panic!("expected wait, got {other:?}"),
    }
}

fn refuse(gate: Gate) -> (u64, RefuseReason) {
    match gate {
        Gate::Refuse {
            retry_after_ms,
            reason,
        } => (retry_after_ms, reason),
        other => panic!("expected refuse, got {other:?}"),
    }
}

/// Marks `model` overloaded at `at` with three overloaded replies; returns the first probe's
/// earliest start.
fn mark(state: &mut UpstreamState, model: &str, at: u64) -> u64 {
    let p = policy();
    for _ in 0..2 {
        let change = state.after_attempt(&p, at, model, report(Reply::Overloaded, None), 1);
        assert_eq!(change, Change::Nothing);
    }
    match state.after_attempt(&p, at, model, report(Reply::Overloaded, None), 1) {
        Change::MarkedOverloaded { next_probe_ms } => next_probe_ms,
        other => panic!("expected the marking, got {other:?}"),
    }
}

#[test]
fn a_healthy_key_lets_everything_go() {
    let mut state = UpstreamState::new();
    assert_eq!(go(ask(&mut state, T0, MODEL, LONG, 1)), None);
    assert_eq!(
        go(state.before_attempt(&policy(), T0, MODEL, true, LONG, 2)),
        None
    );
    let change = state.after_attempt(&policy(), T0 + 5, MODEL, report(Reply::Success, None), 3);
    assert_eq!(change, Change::Nothing);
    assert!(state.snapshot(&policy(), T0).models.is_empty());
}

#[test]
fn cooldown_waits_when_it_fits_the_deadline_and_refuses_when_it_does_not() {
    let p = policy();
    let mut state = UpstreamState::new();
    let limited = Reply::RateLimited {
        retry_after_ms: Some(5_000),
    };
    let change = state.after_attempt(&p, T0, MODEL, report(limited, None), 1);
    assert_eq!(
        change,
        Change::Cooldown {
            until_ms: T0 + 5_000
        }
    );

    // Fits: wait it out, resuming within the spread after it ends.
    let (until, reason) = wait(ask(&mut state, T0 + 100, MODEL, T0 + 30_000, 7));
    assert_eq!(reason, WaitReason::Cooldown);
    assert!((T0 + 5_000..=T0 + 5_500).contains(&until), "{until}");
    // Fits only just: the spread is cut at the deadline.
    let (until, _) = wait(ask(&mut state, T0 + 100, MODEL, T0 + 5_000, 7));
    assert_eq!(until, T0 + 5_000);
    // Does not fit: refused at once with the time left.
    assert_eq!(
        refuse(ask(&mut state, T0 + 100, MODEL, T0 + 4_999, 7)),
        (4_900, RefuseReason::Cooldown)
    );
    // A cooldown holds its own pool only (Anthropic limits each route and model family on
    // its own): another pool of the key goes.
    assert_eq!(go(ask(&mut state, T0 + 100, OTHER, T0 + 4_999, 7)), None);
    // The spread differs between requests.
    let wakes: std::collections::HashSet<u64> = (0..50)
        .map(|seed| wait(ask(&mut state, T0 + 100, MODEL, LONG, seed)).0)
        .collect();
    assert!(wakes.len() > 25);
    // Over: go.
    assert_eq!(go(ask(&mut state, T0 + 5_000, MODEL, LONG, 7)), None);
}

#[test]
fn cooldown_without_retry_after_uses_the_default_and_never_shortens() {
    let p = policy();
    let mut state = UpstreamState::new();
    let bare = Reply::RateLimited {
        retry_after_ms: None,
    };
    assert_eq!(
        state.after_attempt(&p, T0, MODEL, report(bare, None), 1),
        Change::Cooldown {
            until_ms: T0 + 1_000
        }
    );
    let long = Reply::RateLimited {
        retry_after_ms: Some(20_000),
    };
    state.after_attempt(&p, T0, MODEL, report(long, None), 1);
    let short = Reply::RateLimited {
        retry_after_ms: Some(10),
    };
    let change = state.after_attempt(&p, T0 + 1, MODEL, report(short, None), 1);
    assert_eq!(
        change,
        Change::Cooldown {
            until_ms: T0 + 20_000
        }
    );
    // A few hundred ms left still answers a whole second, the shortest Retry-After.
    assert_eq!(
        refuse(ask(&mut state, T0 + 19_700, MODEL, T0 + 19_800, 1)),
        (MIN_RETRY_AFTER_MS, RefuseReason::Cooldown)
    );
    // A retry-after of a week cools the pool for a minute: one answer must not stop it for
    // a day...
    let absurd = Reply::RateLimited {
        retry_after_ms: Some(7 * 86_400_000),
    };
    let change = state.after_attempt(&p, T0 + 19_700, MODEL, report(absurd, None), 1);
    assert_eq!(
        change,
        Change::Cooldown {
            until_ms: T0 + 19_700 + MAX_COOLDOWN_MS
        }
    );
    // ...unless the upstream's own reset of an empty dimension is later (then up to a day).
    let empty = KeyLimits {
        requests: Some(Observed {
            limit: 50,
            remaining: 0,
        }),
        empty_until_ms: Some(T0 + 19_700 + 300_000),
        ..KeyLimits::default()
    };
    let change = state.after_answer(
        &p,
        T0 + 19_700,
        MODEL,
        report(absurd, None),
        1,
        (&empty, Cost::default()),
    );
    assert_eq!(
        change,
        Change::Cooldown {
            until_ms: T0 + 19_700 + 300_000
        }
    );
}

#[test]
fn a_429_for_a_request_larger_than_the_room_left_cools_nothing_down() {
    // A prompt larger than what the input bucket holds now: the upstream refuses it, and its
    // figures say the bucket still holds some. The pool is not cooled down for everyone...
    let p = policy();
    let mut state = UpstreamState::new();
    let room = KeyLimits {
        requests: Some(Observed {
            limit: 50,
            remaining: 40,
        }),
        input_tokens: Some(Observed {
            limit: 30_000,
            remaining: 12_000,
        }),
        ..KeyLimits::default()
    };
    let limited = Reply::RateLimited {
        retry_after_ms: Some(30_000),
    };
    let prompt = |tokens| Cost {
        input_tokens: tokens,
        output_tokens: 0,
    };
    let change = state.after_answer(
        &p,
        T0,
        MODEL,
        report(limited, None),
        1,
        (&room, prompt(20_000)),
    );
    assert_eq!(change, Change::Nothing);
    // ...nor for one larger than the whole bucket...
    let change = state.after_answer(
        &p,
        T0,
        MODEL,
        report(limited, None),
        1,
        (&room, prompt(57_000)),
    );
    assert_eq!(change, Change::Nothing);
    assert!(matches!(
        ask(&mut state, T0 + 10, MODEL, T0 + 30_000, 2),
        Gate::Go { .. }
    ));
    // ...but a 429 to a request that fitted is the key's (an acceleration limit, say).
    let change = state.after_answer(
        &p,
        T0 + 20,
        MODEL,
        report(limited, None),
        1,
        (&room, prompt(1_000)),
    );
    assert!(matches!(change, Change::Cooldown { .. }), "{change:?}");
}

#[test]
fn consecutive_overloads_mark_the_model_and_a_success_resets_the_streak() {
    let p = policy();
    let mut state = UpstreamState::new();
    for _ in 0..2 {
        state.after_attempt(&p, T0, MODEL, report(Reply::Overloaded, None), 1);
    }
    assert_eq!(state.snapshot(&p, T0).models[0].overload_streak, 2);
    state.after_attempt(&p, T0 + 10, MODEL, report(Reply::Success, None), 1);
    // Other failures neither count nor reset.
    state.after_attempt(&p, T0 + 20, MODEL, report(Reply::Overloaded, None), 1);
    state.after_attempt(&p, T0 + 20, MODEL, report(Reply::OtherFailure, None), 1);
    state.after_attempt(&p, T0 + 20, MODEL, report(Reply::Overloaded, None), 1);
    assert_eq!(go(ask(&mut state, T0 + 30, MODEL, LONG, 1)), None);
    let change = state.after_attempt(&p, T0 + 40, MODEL, report(Reply::Overloaded, None), 1);
    let next_probe = match change {
        Change::MarkedOverloaded { next_probe_ms } => next_probe_ms,
        other => panic!("{other:?}"),
    };
    // The first probe comes 0.5–1 s after the marking; until then everyone waits.
    assert!(
        (T0 + 540..=T0 + 1_040).contains(&next_probe),
        "{next_probe}"
    );
    let (until, reason) = wait(ask(&mut state, T0 + 50, MODEL, LONG, 1));
    assert_eq!(reason, WaitReason::Overloaded);
    assert!(until > T0 + 50 && until <= next_probe + 250);
    assert_eq!(
        state.snapshot(&p, T0 + 50).models[0].phase,
        ModelPhase::Overloaded
    );
}

#[test]
fn overloads_spread_wider_than_the_window_do_not_mark() {
    let p = policy();
    let mut state = UpstreamState::new();
    for i in 0..10 {
        // Two within each window, then the streak ages out.
        let at = T0 + i * 6_000;
        state.after_attempt(&p, at, MODEL, report(Reply::Overloaded, None), 1);
        assert_eq!(go(ask(&mut state, at + 1, MODEL, LONG, 1)), None, "at {i}");
    }
    let mut state = UpstreamState::new();
    for i in 0..3 {
        state.after_attempt(
            &p,
            T0 + i * 4_000,
            MODEL,
            report(Reply::Overloaded, None),
            1,
        );
    }
    // 8 s apart from first to last: within the 10 s window.
    assert!(matches!(
        ask(&mut state, T0 + 8_001, MODEL, LONG, 1),
        Gate::Wait { .. }
    ));
}

#[test]
fn only_one_probe_is_in_flight_and_a_failed_probe_pushes_the_next_one_out() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    // Before it is due: wait.
    assert!(matches!(
        ask(&mut state, due - 1, MODEL, LONG, 1),
        Gate::Wait { .. }
    ));
    let first = probe(ask(&mut state, due, MODEL, LONG, 2));
    // Everyone else waits while it is in flight, however late.
    for i in 0..20 {
        let (until, reason) = wait(ask(&mut state, due + i * 100, MODEL, LONG, 3 + i));
        assert_eq!(reason, WaitReason::Overloaded);
        assert!(until > due + i * 100 && until <= due + i * 100 + 1_000);
    }
    // The probe fails at `due + 2000`: the spacing ceiling doubles each time, up to 4 s.
    let mut at = due + 2_000;
    let mut ticket = first;
    for ceiling in [2_000, 4_000, 4_000, 4_000] {
        let change =
            state.after_attempt(&p, at, MODEL, report(Reply::Overloaded, Some(ticket)), at);
        let next = match change {
            Change::ProbeFailed { next_probe_ms } => next_probe_ms,
            other => panic!("{other:?}"),
        };
        assert!(
            (at + ceiling / 2..=at + ceiling).contains(&next),
            "{ceiling}: {}",
            next - at
        );
        assert!(matches!(
            ask(&mut state, next - 1, MODEL, LONG, 9),
            Gate::Wait { .. }
        ));
        let new_ticket = probe(ask(&mut state, next, MODEL, LONG, 10));
        assert_ne!(new_ticket, ticket);
        assert!(matches!(
            ask(&mut state, next, MODEL, LONG, 11),
            Gate::Wait { .. }
        ));
        ticket = new_ticket;
        at = next + 100;
    }
    assert_eq!(state.snapshot(&p, at).models[0].failed_probes, 4);
}

#[test]
fn a_probe_lease_expires_and_a_late_report_does_not_free_the_next_probe() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    let lost = probe(ask(&mut state, due, MODEL, LONG + 60_000, 1));
    // Its caller went away: the slot stays taken for the lease, then frees.
    assert!(matches!(
        ask(&mut state, due + 59_999, MODEL, LONG + 60_000, 2),
        Gate::Wait { .. }
    ));
    let next = probe(ask(&mut state, due + 60_000, MODEL, LONG + 60_000, 3));
    // The lost probe's report turns up after all: it frees nothing.
    let change = state.after_attempt(
        &p,
        due + 60_001,
        MODEL,
        report(Reply::Overloaded, Some(lost)),
        4,
    );
    assert_eq!(change, Change::Nothing);
    assert!(matches!(
        ask(&mut state, due + 60_002, MODEL, LONG + 60_000, 5),
        Gate::Wait { .. }
    ));
    assert_eq!(state.snapshot(&p, due + 60_002).models[0].probe, Some(next));
    // A probe that ends some other way frees the slot without growing the spacing.
    let limited = Reply::OtherFailure;
    state.after_attempt(&p, due + 61_000, MODEL, report(limited, Some(next)), 6);
    let snapshot = state.snapshot(&p, due + 61_000);
    assert_eq!(snapshot.models[0].probe, None);
    assert_eq!(snapshot.models[0].failed_probes, 0);
    assert!(snapshot.models[0]
        .next_probe_in_ms
        .is_some_and(|ms| (500..=1_000).contains(&ms)));
}

#[test]
fn waiters_are_released_spread_over_the_window_after_a_successful_probe() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    let ticket = probe(ask(&mut state, due, MODEL, LONG, 0));
    // 200 requests wait, polling every 0.5–1 s while the probe is out.
    let seeds: Vec<u64> = (1..=200).collect();
    let mut next_call: Vec<(u64, u64)> = seeds.iter().map(|&seed| (due + seed, seed)).collect();
    let success = due + 3_000;
    loop {
        next_call.sort_unstable();
        let (at, seed) = next_call[0];
        if at >= success {
            break;
        }
        let (until, reason) = wait(ask(&mut state, at, MODEL, LONG, seed));
        assert_eq!(reason, WaitReason::Overloaded);
        assert!((at + 500..=at + 1_000).contains(&until));
        next_call[0] = (until, seed);
    }
    let waiters = state.snapshot(&p, success).models[0].waiters;
    assert!((180..=230).contains(&waiters), "{waiters}");
    let change = state.after_attempt(&p, success, MODEL, report(Reply::Success, Some(ticket)), 0);
    // About 10 ms per waiter.
    let window = match change {
        Change::Recovering { window_ms } => window_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(window, u64::from(waiters) * 10);

    // Each waiter calls right after the success and is told its slot, then comes back then.
    let mut released = Vec::new();
    let mut pending = Vec::new();
    for &seed in &seeds {
        let at = success + 1;
        match ask(&mut state, at, MODEL, LONG, seed) {
            Gate::Go { probe: None } => released.push(at),
            gate => {
                let (until, reason) = wait(gate);
                assert_eq!(reason, WaitReason::Recovering);
                assert!(until > at && until <= success + window);
                pending.push((until, seed));
            }
        }
    }
    // The clock only moves forward: they come back in time order.
    pending.sort_unstable();
    let mut clock = success + 1;
    for (until, seed) in pending {
        if until > clock {
            // Early is still early.
            assert_eq!(wait(ask(&mut state, until - 1, MODEL, LONG, seed)).0, until);
        }
        assert_eq!(go(ask(&mut state, until, MODEL, LONG, seed)), None);
        released.push(until);
        clock = until;
    }
    released.sort_unstable();
    let first = released[0];
    let last = released[released.len() - 1];
    assert!(last <= success + window, "all released within the window");
    assert!(last - first > window * 3 / 4, "spread over the window");
    let distinct: std::collections::HashSet<u64> = released.iter().copied().collect();
    assert!(distinct.len() > 150, "not all at once: {}", distinct.len());
    // Slow start: about a quarter in the first half of the window, few in the first tenth.
    let first_half = released
        .iter()
        .filter(|&&t| t < success + window / 2)
        .count();
    assert!((25..=80).contains(&first_half), "{first_half}");
    let first_tenth = released
        .iter()
        .filter(|&&t| t < success + window / 10)
        .count();
    assert!(first_tenth <= 10, "{first_tenth}");
    // After the window the model is healthy and forgotten.
    assert_eq!(
        go(ask(&mut state, success + window, MODEL, LONG, 999)),
        None
    );
    assert!(state.snapshot(&p, success + window).models.is_empty());
}

#[test]
fn a_release_slot_late_for_the_deadline_goes_halfway_to_it() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    let ticket = probe(ask(&mut state, due, MODEL, LONG, 0));
    let since = due + 10;
    state.after_attempt(&p, since, MODEL, report(Reply::Success, Some(ticket)), 0);
    // Window of 250 ms (no waiters). Find a request whose slot is late in it.
    let seed = (0..1_000)
        .find(|&seed| wait(ask(&mut state, due + 11, MODEL, LONG, seed)).0 > due + 200)
        .unwrap_or(0);
    // With its deadline 90 ms after the recovery began, it goes 45 ms in: the most urgent
    // first, each with time left for its answer.
    let deadline = since + 90;
    assert_eq!(
        wait(ask(&mut state, due + 11, MODEL, deadline, seed)).0,
        since + 45
    );
    assert_eq!(go(ask(&mut state, since + 45, MODEL, deadline, seed)), None);
}

#[test]
fn a_deadline_before_the_next_probe_is_refused_with_the_time_until_it() {
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    assert!(due >= T0 + 500);
    // Nobody can be released before the next probe: refused now, not at the deadline.
    let (retry_after, reason) = refuse(ask(&mut state, T0 + 1, MODEL, due - 1, 5));
    assert_eq!(reason, RefuseReason::Overloaded);
    let until_probe = due - (T0 + 1);
    assert!(
        retry_after >= until_probe.max(MIN_RETRY_AFTER_MS) && retry_after <= until_probe + 1_000
    );
    // Spread: different requests are told different times.
    let afters: std::collections::HashSet<u64> = (0..50)
        .map(|seed| refuse(ask(&mut state, T0 + 1, MODEL, due - 1, seed)).0)
        .collect();
    assert!(afters.len() > 25);
    // A deadline at the probe time is worth waiting for: it may become the probe.
    let (until, _) = wait(ask(&mut state, T0 + 1, MODEL, due, 5));
    assert!(until <= due);
    assert!(go(ask(&mut state, due, MODEL, due, 5)).is_some());
}

#[test]
fn a_waiter_whose_deadline_comes_is_refused_with_a_retry_after() {
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    probe(ask(&mut state, due, MODEL, LONG, 0));
    let deadline = due + 3_000;
    let mut at = due + 1;
    // It waits, never past its deadline, then is refused there.
    loop {
        match ask(&mut state, at, MODEL, deadline, 42) {
            Gate::Wait { until_ms, .. } => {
                assert!(until_ms > at && until_ms <= deadline);
                at = until_ms;
            }
            Gate::Refuse {
                retry_after_ms,
                reason,
            } => {
                assert_eq!(at, deadline);
                assert_eq!(reason, RefuseReason::Overloaded);
                // The probe is in flight: the spacing's ceiling, at least a second.
                assert!((MIN_RETRY_AFTER_MS..=1_000).contains(&retry_after_ms));
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let snapshot = state.snapshot(&policy(), at);
    assert!(snapshot.models[0].waiters >= 1);
}

#[test]
fn retry_budget_floor_then_ratio() {
    let p = policy();
    let mut state = UpstreamState::new();
    // No requests yet: the floor, 30 retries per 10 s.
    for i in 0..30 {
        assert_eq!(
            go(state.before_attempt(&p, T0 + i, MODEL, true, LONG, i)),
            None
        );
    }
    let (retry_after, reason) = refuse(state.before_attempt(&p, T0 + 30, MODEL, true, LONG, 1));
    assert_eq!(reason, RefuseReason::RetryBudget);
    assert_eq!(retry_after, 10_000 - 30);
    // First attempts are never refused by it, and each one counts.
    for i in 0..1_000 {
        assert_eq!(go(ask(&mut state, T0 + 1_000 + i, MODEL, LONG, i)), None);
    }
    // 1000 requests allow 200 retries in the window, 30 already taken.
    let granted = (0..300)
        .filter(|&i| {
            matches!(
                state.before_attempt(&p, T0 + 2_500, MODEL, true, LONG, i),
                Gate::Go { .. }
            )
        })
        .count();
    assert_eq!(granted, 170);
    let window = state.snapshot(&p, T0 + 2_500).retry_budget;
    assert_eq!(
        window,
        BudgetWindow {
            requests: 1_000,
            retries: 200,
            allowance: 200
        }
    );
    // Waits and refusals count nothing.
    let mut cooling = UpstreamState::new();
    let limited = Reply::RateLimited {
        retry_after_ms: Some(1_000),
    };
    cooling.after_attempt(&p, T0, MODEL, report(limited, None), 1);
    for _ in 0..100 {
        cooling.before_attempt(&p, T0, MODEL, true, LONG, 1);
    }
    assert_eq!(cooling.snapshot(&p, T0).retry_budget.retries, 0);
}

#[test]
fn a_probe_is_not_handed_out_when_the_retry_budget_refuses_it() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    for i in 0..30 {
        go(state.before_attempt(&p, T0 + i, OTHER, true, LONG, i));
    }
    let (_, reason) = refuse(state.before_attempt(&p, due, MODEL, true, LONG, 1));
    assert_eq!(reason, RefuseReason::RetryBudget);
    // The slot is still free for a first attempt.
    probe(ask(&mut state, due, MODEL, LONG, 2));
}

#[test]
fn models_are_independent() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    assert_eq!(go(ask(&mut state, T0 + 1, OTHER, LONG, 1)), None);
    let other_due = mark(&mut state, OTHER, T0 + 100);
    let a = probe(ask(&mut state, due.max(other_due), MODEL, LONG, 1));
    let b = probe(ask(&mut state, due.max(other_due), OTHER, LONG, 1));
    assert_ne!(a, b);
    state.after_attempt(&p, T0 + 5_000, OTHER, report(Reply::Success, Some(b)), 1);
    assert!(matches!(
        ask(&mut state, T0 + 5_001, MODEL, LONG, 1),
        Gate::Wait {
            reason: WaitReason::Overloaded,
            ..
        }
    ));
    let snapshot = state.snapshot(&p, T0 + 5_001);
    let phases: Vec<(&str, ModelPhase)> = snapshot
        .models
        .iter()
        .map(|m| (m.model.as_str(), m.phase))
        .collect();
    assert_eq!(
        phases,
        vec![
            (MODEL, ModelPhase::Overloaded),
            (OTHER, ModelPhase::Recovering)
        ]
    );
}

#[test]
fn a_straggler_success_ends_the_overload() {
    let p = policy();
    let mut state = UpstreamState::new();
    mark(&mut state, MODEL, T0);
    // A request sent before the marking comes back fine: the model serves.
    let change = state.after_attempt(&p, T0 + 200, MODEL, report(Reply::Success, None), 1);
    assert_eq!(change, Change::Recovering { window_ms: 250 });
}

#[test]
fn relapse_during_recovery_keeps_the_probe_spacing() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    let t = probe(ask(&mut state, due, MODEL, LONG, 1));
    state.after_attempt(&p, due + 10, MODEL, report(Reply::Overloaded, Some(t)), 1);
    state.after_attempt(&p, due + 20, MODEL, report(Reply::Success, None), 1);
    let change = mark(&mut state, MODEL, due + 30);
    // One failed probe remembered: the next spacing is drawn from [1 s, 2 s].
    assert!(
        (due + 1_030..=due + 2_030).contains(&change),
        "{}",
        change - due
    );
}

#[test]
fn model_entries_are_bounded_and_trouble_is_never_forgotten_for_another() {
    let p = policy();
    let mut state = UpstreamState::new();
    for i in 0..64u64 {
        mark(&mut state, &format!("model-{i}"), T0 + i);
    }
    // Full of pools in trouble: a new one is not remembered (it simply goes), and none of
    // those in trouble is forgotten for it.
    for i in 64..100u64 {
        for _ in 0..3 {
            let overloaded = report(Reply::Overloaded, None);
            let change = state.after_attempt(&p, T0 + i, &format!("model-{i}"), overloaded, 1);
            assert_eq!(change, Change::Nothing);
        }
    }
    let snapshot = state.snapshot(&p, T0 + 100);
    assert_eq!(snapshot.models.len(), 64);
    assert_eq!(snapshot.models[0].model, "model-63");
    assert_eq!(snapshot.models[63].model, "model-0");
    assert!(matches!(
        ask(&mut state, T0 + 100, "model-0", LONG, 1),
        Gate::Wait { .. }
    ));
    assert_eq!(go(ask(&mut state, T0 + 100, "model-99", LONG, 1)), None);
    // A very long name is remembered cut.
    let mut state = UpstreamState::new();
    let long = "x".repeat(10_000);
    mark(&mut state, &long, T0 + 200);
    let snapshot = state.snapshot(&p, T0 + 200);
    assert_eq!(snapshot.models[0].model.len(), MAX_MODEL_NAME_BYTES);
    assert!(matches!(
        ask(&mut state, T0 + 201, &long, LONG, 1),
        Gate::Wait { .. }
    ));
}

#[test]
fn pools_that_never_served_make_room_and_never_push_out_trouble_or_a_serving_pool() {
    let p = policy();
    let mut state = UpstreamState::new();
    let limits = KeyLimits {
        requests: Some(Observed {
            limit: 50,
            remaining: 40,
        }),
        ..KeyLimits::default()
    };
    // A pool that serves (its limits known, a 2xx), and one in a cooldown.
    state.observe_limits(&p, T0, OTHER, &limits);
    state.after_attempt(&p, T0, OTHER, report(Reply::Success, None), 1);
    let limited = Reply::RateLimited {
        retry_after_ms: Some(30_000),
    };
    state.after_attempt(&p, T0, MODEL, report(limited, None), 1);
    // Two hundred pools that never answered a 2xx come and go.
    for i in 0..200u64 {
        state.observe_limits(&p, T0 + 1 + i, &format!("made-up-{i}"), &limits);
    }
    let pools = state.pools(&p, T0 + 300);
    assert_eq!(pools.len(), p.max_models.get());
    assert!(pools.iter().any(|(pool, ..)| pool.model == OTHER));
    assert!(matches!(
        ask(&mut state, T0 + 300, MODEL, LONG, 1),
        Gate::Wait {
            reason: WaitReason::Cooldown,
            ..
        }
    ));
}

#[test]
fn the_state_round_trips_through_json() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    probe(ask(&mut state, due, MODEL, LONG, 1));
    state.before_attempt(&p, due, OTHER, true, LONG, 1);
    let limited = Reply::RateLimited {
        retry_after_ms: Some(3_000),
    };
    state.after_attempt(&p, due + 1, OTHER, report(limited, None), 1);
    let json = serde_json::to_string(&state).unwrap_or_default();
    let back: UpstreamState = serde_json::from_str(&json).unwrap_or_default();
    assert_eq!(back, state);
    // An empty object is a fresh state (fields default, so older states still load).
    let fresh: UpstreamState = serde_json::from_str("{}").unwrap_or_else(|_| panic!("loads"));
    assert_eq!(fresh, UpstreamState::new());
}

#[test]
fn gates_and_reports_travel_as_json() {
    // Externally tagged: internally tagged enums cost the wasm bundle serde's content buffer.
    let gate = Gate::Go {
        probe: Some(ProbeTicket(7)),
    };
    let json = serde_json::to_value(gate).unwrap_or_default();
    assert_eq!(json, serde_json::json!({"go": {"probe": 7}}));
    let wait = Gate::Wait {
        until_ms: 5,
        reason: WaitReason::Recovering,
    };
    let json = serde_json::to_value(wait).unwrap_or_default();
    assert_eq!(
        json,
        serde_json::json!({"wait": {"until_ms": 5, "reason": "recovering"}})
    );
    let report = AttemptReport {
        reply: Reply::RateLimited {
            retry_after_ms: Some(9),
        },
        probe: None,
    };
    let json = serde_json::to_value(report).unwrap_or_default();
    assert_eq!(
        json,
        serde_json::json!({"reply": {"rate_limited": {"retry_after_ms": 9}}, "probe": null})
    );
    let back: AttemptReport = serde_json::from_value(json).unwrap_or_else(|_| panic!("parses"));
    assert_eq!(back, report);
}

#[test]
fn a_clock_jump_back_keeps_the_length_of_waits() {
    let p = policy();
    let mut state = UpstreamState::new();
    let limited = Reply::RateLimited {
        retry_after_ms: Some(5_000),
    };
    state.after_attempt(&p, T0, MODEL, report(limited, None), 1);
    // A little wobble is absorbed: the state's clock stays.
    let (retry_after, _) = refuse(ask(&mut state, T0 - 1_000, MODEL, T0, 1));
    assert_eq!(retry_after, 5_000);
    // A jump of an hour back moves the cooldown with it.
    let back = T0 - 3_600_000;
    assert_eq!(refuse(ask(&mut state, back, MODEL, back + 1, 1)).0, 5_000);
    assert_eq!(go(ask(&mut state, back + 5_000, MODEL, LONG, 1)), None);
}

#[test]
fn replies_from_outcomes() {
    let response = |status, wait_floor_ms| Outcome::Response {
        status,
        should_retry: Some(false),
        wait_floor_ms,
    };
    assert_eq!(Reply::of(&response(200, None)), Reply::Success);
    assert_eq!(Reply::of(&response(529, None)), Reply::Overloaded);
    assert_eq!(
        Reply::of(&response(429, Some(1_500))),
        Reply::RateLimited {
            retry_after_ms: Some(1_500)
        }
    );
    assert_eq!(Reply::of(&response(400, None)), Reply::OtherFailure);
    assert_eq!(Reply::of(&response(503, None)), Reply::OtherFailure);
    let stream = |error_type: &str| Outcome::StreamError {
        error_type: error_type.to_string(),
        should_retry: None,
        wait_floor_ms: None,
    };
    assert_eq!(Reply::of(&stream("overloaded_error")), Reply::Overloaded);
    assert_eq!(Reply::of(&stream("api_error")), Reply::OtherFailure);
    assert_eq!(Reply::of(&Outcome::AttemptTimeout), Reply::OtherFailure);
    assert_eq!(Reply::of(&Outcome::ConnectFailure), Reply::OtherFailure);
}

#[test]
fn idle_once_everything_is_over() {
    let p = policy();
    let mut state = UpstreamState::new();
    assert!(state.is_idle(&p, T0));
    let due = mark(&mut state, MODEL, T0);
    assert!(!state.is_idle(&p, T0));
    let t = probe(ask(&mut state, due, MODEL, LONG, 1));
    state.after_attempt(&p, due + 100, MODEL, report(Reply::Success, Some(t)), 1);
    // Recovering for 250 ms, and the probe's first attempt is in the budget for 10 s.
    assert!(!state.is_idle(&p, due + 349));
    assert!(!state.is_idle(&p, due + 350));
    assert!(state.is_idle(&p, due + 10_000));
}

#[test]
fn snapshot_is_serializable_and_relative() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    let snapshot = state.snapshot(&p, T0 + 10);
    assert_eq!(snapshot.models[0].next_probe_in_ms, Some(due - T0 - 10));
    let json = serde_json::to_value(&snapshot).unwrap_or_default();
    assert_eq!(json["models"][0]["phase"], "overloaded");
    assert_eq!(json["retry_budget"]["allowance"], 30);
}

/// Marks `MODEL`, has `waiters` requests arriving every `spacing` ms from `T0` (deadline 30 s
/// after arrival) poll while the first probe is out, and lets the probe succeed at
/// `success`. The window, and each waiter's deadline and seed.
fn recover_with_spread_deadlines(
    state: &mut UpstreamState,
    waiters: u64,
    spacing: u64,
    success: u64,
) -> (u64, Vec<(u64, u64)>) {
    let p = policy();
    let due = mark(state, MODEL, T0);
    let ticket = probe(ask(state, due, MODEL, LONG, 0));
    let clients: Vec<(u64, u64)> = (1..=waiters)
        .map(|i| (T0 + i * spacing + 30_000, i))
        .collect();
    let mut next_call: Vec<(u64, usize)> = (0..clients.len())
        .map(|i| (T0 + (i as u64 + 1) * spacing, i))
        .collect();
    loop {
        next_call.sort_unstable();
        let (at, i) = next_call[0];
        if at >= success {
            break;
        }
        let (deadline, seed) = clients[i];
        match ask(state, at, MODEL, deadline, seed) {
            Gate::Wait { until_ms, .. } => next_call[0] = (until_ms, i),
            // Its deadline came: it is answered and stops calling.
            gate => {
                refuse(gate);
                next_call[0] = (u64::MAX, i);
            }
        }
    }
    let change = state.after_attempt(&p, success, MODEL, report(Reply::Success, Some(ticket)), 0);
    let window = match change {
        Change::Recovering { window_ms } => window_ms,
        other => panic!("{other:?}"),
    };
    (window, clients)
}

#[test]
fn waiters_are_released_earliest_deadline_first() {
    let p = policy();
    // 100 requests arriving 50 ms apart over an outage of 5 s, 30 s budgets: every one has
    // 25 s to spare when the probe gets through, so the release waits a poll period for all
    // of them to hear of it, then goes in deadline order, evenly.
    let mut state = UpstreamState::new();
    let success = T0 + 5_100;
    let (window, clients) = recover_with_spread_deadlines(&mut state, 100, 50, success);
    let mut slots = Vec::new();
    for &(deadline, seed) in &clients {
        let (until, reason) = wait(ask(&mut state, success + 1, MODEL, deadline, seed));
        assert_eq!(reason, WaitReason::Recovering);
        assert!(until <= success + window, "within the window");
        slots.push(until);
    }
    assert!(slots.windows(2).all(|w| w[0] <= w[1]), "in deadline order");
    assert!(
        slots[0] >= success + p.wait_poll_ms.get(),
        "after a poll period"
    );
    let gaps: Vec<u64> = slots.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| g <= 3 * window / 100),
        "evenly: {gaps:?}"
    );
    // A request that came during the release goes after every waiter.
    let late = ask(&mut state, success + 1, MODEL, success + 30_000, 7);
    assert!(wait(late).0 > slots[99]);
    // Each is let go at its slot.
    assert_eq!(go(ask(&mut state, slots[0], MODEL, clients[0].0, 1)), None);

    // When the oldest waiter has no time to spare, the release starts at once, and nobody
    // goes later than halfway from the recovery to its deadline.
    let mut state = UpstreamState::new();
    let success = T0 + 30_060;
    let (_, clients) = recover_with_spread_deadlines(&mut state, 600, 50, success);
    let (deadline, seed) = clients
        .iter()
        .copied()
        .find(|&(deadline, _)| deadline > success + 100)
        .unwrap_or_else(|| panic!("a waiter with a deadline ahead"));
    let gate = ask(&mut state, success + 1, MODEL, deadline, seed);
    assert!(
        matches!(gate, Gate::Go { probe: None })
            || wait(gate).0 <= success + (deadline - success) / 2 + 1,
        "{gate:?}"
    );
    for &(deadline, seed) in clients.iter().filter(|(d, _)| *d > success + 1) {
        if let Gate::Wait { until_ms, .. } = ask(&mut state, success + 1, MODEL, deadline, seed) {
            assert!(until_ms <= success + (deadline - success) / 2 + 1);
        }
    }
}

#[test]
fn probes_stay_close_while_many_wait() {
    let p = policy();
    let mut state = UpstreamState::new();
    let due = mark(&mut state, MODEL, T0);
    let mut ticket = probe(ask(&mut state, due, MODEL, LONG, 0));
    let mut at = due + 100;
    // Few waiters: the spacing grows with each failed probe; many: it stays at the base.
    for (round, waiters) in [(0, 0u64), (1, 0), (2, 0), (3, 200), (4, 200)] {
        for seed in 0..waiters {
            wait(ask(&mut state, at + seed, MODEL, LONG, 100 + seed));
        }
        at += waiters;
        let change =
            state.after_attempt(&p, at, MODEL, report(Reply::Overloaded, Some(ticket)), at);
        let Change::ProbeFailed { next_probe_ms } = change else {
            panic!("{change:?}");
        };
        let ceiling = if waiters >= u64::from(p.probe_eager_waiters.get()) {
            p.probe_interval_base_ms
        } else {
            (p.probe_interval_base_ms << (round + 1)).min(p.probe_interval_cap_ms)
        };
        assert!(
            (at + ceiling / 2..=at + ceiling).contains(&next_probe_ms),
            "round {round}: {}",
            next_probe_ms - at
        );
        ticket = probe(ask(&mut state, next_probe_ms, MODEL, LONG, 1_000 + round));
        at = next_probe_ms + 100;
    }
}
