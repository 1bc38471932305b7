//! Property tests of the fair order on a scarce pool ([`super::share`]): backlogged callers
//! stay within one request of their weighted share of the pool's lane time, the key's window
//! bound holds for what the queue lets go, and a request with budget enough is never starved.

use proptest::prelude::*;

use super::pace::{Cost, KeyLimits, Observed, Pace, PacePolicy};
use super::share::{Claimant, Place, Priority, Share, Turn};

const T0: u64 = 1_764_000_000_000;

/// A pool whose input-token lane of `limit` a minute holds `remaining` now.
fn pool(limit: u64, remaining: u64) -> Pace {
    let mut pace = Pace::default();
    pace.observe(
        T0,
        &KeyLimits {
            input_tokens: Some(Observed {
                limit,
                remaining: remaining.min(limit),
            }),
            sent_ms: Some(T0),
            ..KeyLimits::default()
        },
    );
    pace
}

fn tokens(n: u64) -> Cost {
    Cost {
        input_tokens: n,
        output_tokens: 0,
    }
}

/// The request of `seed` asks again after its hold: it keeps its place.
fn ask_again(share: &mut Share, pace: &Pace, now: u64, seed: u64) {
    share.join(
        pace,
        now,
        seed,
        &Claimant::default(),
        Cost::default(),
        (0, 0),
    );
}

/// Releases every 50 ms from `from` to `until`, reading each seed's place; the turns given,
/// in the order they were given: (seed, send time).
fn run(
    share: &mut Share,
    pace: &mut Pace,
    seeds: &[u64],
    from: u64,
    until: u64,
) -> (Vec<(u64, u64)>, Vec<u64>) {
    let policy = PacePolicy::default();
    let mut went = Vec::new();
    let mut refused = Vec::new();
    let mut now = from;
    while now <= until {
        share.release(pace, &policy, now, 0);
        for &seed in seeds {
            match share.place(now, seed) {
                Place::Decided(Turn::Go) => went.push((seed, now)),
                Place::Decided(Turn::At { at_ms, .. }) => went.push((seed, at_ms)),
                Place::Decided(Turn::Refused { .. }) => refused.push(seed),
                // The call is answered "ask again" and asks again at once.
                Place::AskAgain => ask_again(share, pace, now, seed),
                _ => {}
            }
        }
        now += 50;
    }
    (went, refused)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Backlogged callers of any weights and request sizes: over every prefix of the turns
    /// given while all of them still wait, the lane time each got, divided by its weight,
    /// differs from any other's by at most one request of each (start-time fair queuing's
    /// bound).
    #[test]
    fn backlogged_callers_stay_within_one_request_of_their_weighted_share(
        callers in prop::collection::vec((1u32..5, 100u64..2_000), 2..5),
    ) {
        let mut pace = pool(60_000, 0);
        let mut share = Share::default();
        let mut seeds = Vec::new();
        let mut owner = std::collections::HashMap::new();
        for (c, &(weight, size)) in callers.iter().enumerate() {
            let claimant = Claimant { caller: format!("c{c}"), weight, priority: Priority::Interactive };
            for i in 0..40u64 {
                let seed = (c as u64) * 1_000 + i;
                share.join(&pace, T0, seed, &claimant, tokens(size), (T0 + 3_600_000, 0));
                seeds.push(seed);
                owner.insert(seed, c);
            }
        }
        let (went, refused) = run(&mut share, &mut pace, &seeds, T0, T0 + 120_000);
        prop_assert!(refused.is_empty());
        let mut got = vec![0f64; callers.len()];
        let mut count = vec![0u64; callers.len()];
        for &(seed, _) in &went {
            let c = owner[&seed];
            count[c] += 1;
            if count.iter().any(|&n| n >= 40) {
                break;
            }
            got[c] += callers[c].1 as f64 / f64::from(callers[c].0);
            for i in 0..callers.len() {
                for j in 0..callers.len() {
                    let bound = callers[i].1 as f64 / f64::from(callers[i].0)
                        + callers[j].1 as f64 / f64::from(callers[j].0);
                    prop_assert!(
                        got[i] - got[j] <= bound + 1e-6,
                        "caller {i} got {} per weight, caller {j} {}: {callers:?}",
                        got[i], got[j]
                    );
                }
            }
        }
    }

    /// Whatever callers arrive when, what the queue lets go within any window of w ms costs at
    /// most the key's share of (w + one minute), from what its bucket held at first: the
    /// fair order never lets the key's bucket run dry.
    #[test]
    fn the_key_bucket_never_runs_dry_through_the_queue(
        limit in 1_000u64..20_000,
        remaining in 0u64..20_000,
        arrivals in prop::collection::vec((0u64..60_000, 0usize..4, 1u64..800, any::<bool>()), 1..80),
    ) {
        let remaining = remaining.min(limit);
        let mut pace = pool(limit, remaining);
        let mut share = Share::default();
        let policy = PacePolicy::default();
        let mut arrivals = arrivals;
        arrivals.sort_unstable_by_key(|a| a.0);
        let mut sent: Vec<(u64, u64)> = Vec::new();
        let mut cost_of = std::collections::HashMap::new();
        let mut pending: Vec<u64> = Vec::new();
        let mut next = 0;
        let mut now = T0;
        while now <= T0 + 200_000 {
            while next < arrivals.len() && T0 + arrivals[next].0 <= now {
                let (_, caller, size, background) = arrivals[next];
                let seed = next as u64;
                let claimant = Claimant {
                    caller: format!("c{caller}"),
                    weight: 1 + caller as u32,
                    priority: if background { Priority::Background } else { Priority::Interactive },
                };
                let size = size.min(limit);
                share.join(&pace, now, seed, &claimant, tokens(size), (now + 120_000, 0));
                cost_of.insert(seed, size);
                pending.push(seed);
                next += 1;
            }
            share.release(&mut pace, &policy, now, 0);
            let mut still = Vec::new();
            for seed in pending {
                match share.place(now, seed) {
                    Place::Decided(Turn::Go) => sent.push((now, cost_of[&seed])),
                    Place::Decided(Turn::At { at_ms, .. }) => {
                        prop_assert!(at_ms >= now);
                        sent.push((at_ms, cost_of[&seed]));
                    }
                    Place::Decided(Turn::Refused { .. }) | Place::Unknown => {}
                    Place::AskAgain => {
                        ask_again(&mut share, &pace, now, seed);
                        still.push(seed);
                    }
                    Place::Waiting { .. } => still.push(seed),
                }
            }
            pending = still;
            now += 50;
        }
        sent.sort_unstable();
        let used = limit - remaining;
        // The bucket's reading is rounded: up to 500 tokens of it may be gone already.
        let slack = 500 + sent.len() as u64;
        for (i, &(start, _)) in sent.iter().enumerate() {
            for &(end, _) in &sent[i..] {
                let w = end - start;
                let total: u64 = sent.iter().filter(|(t, _)| *t >= start && *t <= end).map(|(_, c)| c).sum();
                prop_assert!(total <= limit + (limit * (w + slack)).div_ceil(60_000),
                    "{total} sent in {w} ms, limit {limit}/min");
            }
            let total: u64 = sent.iter().filter(|(t, _)| *t <= start).map(|(_, c)| c).sum();
            prop_assert!(total + used <= limit + slack + (limit * (start - T0)).div_ceil(60_000),
                "{total} sent by {start} with {used} already used, limit {limit}/min");
        }
    }

    /// Demand within what the key serves before the deadlines: every request gets its turn,
    /// background ones included, whatever the weights and priorities.
    #[test]
    fn a_request_with_budget_enough_is_never_starved(
        arrivals in prop::collection::vec((0u64..30_000, 0usize..4, any::<bool>()), 1..40),
    ) {
        // 60 requests' worth a minute; at most 40 requests over 30 s, deadlines 90 s on.
        let mut pace = pool(60_000, 0);
        let mut share = Share::default();
        let mut arrivals = arrivals;
        arrivals.sort_unstable_by_key(|a| a.0);
        let mut seeds = Vec::new();
        let policy = PacePolicy::default();
        let mut turns = 0usize;
        let mut next = 0;
        let mut now = T0;
        while now <= T0 + 120_000 {
            while next < arrivals.len() && T0 + arrivals[next].0 <= now {
                let (_, caller, background) = arrivals[next];
                let claimant = Claimant {
                    caller: format!("c{caller}"),
                    weight: 1 + caller as u32,
                    priority: if background { Priority::Background } else { Priority::Interactive },
                };
                share.join(&pace, now, next as u64, &claimant, tokens(1_000), (now + 90_000, 0));
                seeds.push(next as u64);
                next += 1;
            }
            share.release(&mut pace, &policy, now, 0);
            let mut refused = false;
            seeds.retain(|&seed| match share.place(now, seed) {
                Place::Decided(Turn::Go | Turn::At { .. }) => { turns += 1; false }
                Place::Decided(Turn::Refused { .. }) => { refused = true; false }
                Place::AskAgain => { ask_again(&mut share, &pace, now, seed); true }
                _ => true,
            });
            prop_assert!(!refused, "a request was refused with budget enough");
            now += 50;
        }
        prop_assert_eq!(turns, arrivals.len());
    }
}
