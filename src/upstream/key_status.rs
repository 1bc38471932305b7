//! The operator's view of one upstream key's object: per pool, where it stands (healthy,
//! overloaded, recovering), the rate it is paced at, the key's own limits and what remains of
//! them, who waits, cooldowns and probes; and the key's retry budget. Read without changing
//! anything, so looking never moves a limit or a probe.

use serde::Serialize;

use super::budget::BudgetWindow;
use super::key_state::{ModelPhase, ModelSnapshot, UpstreamState};
use super::outage_policy::OutagePolicy;
use super::pace::{LimitOutlook, PaceOutlook};
use super::share::CallerShare;

/// One upstream key, as its object knows it at `at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyStatus {
    pub at_ms: u64,
    /// The longest cooldown of any pool (a `429` with a retry-after), from now.
    pub cooldown_remaining_ms: u64,
    /// Retries sent, first attempts sent and retries allowed in the sliding window.
    pub retry_budget: BudgetWindow,
    /// Pools the object remembers, most recently used first.
    pub pools: Vec<PoolStatus>,
}

/// One pool of the key (a model family of `/v1/messages`, or a route).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolStatus {
    pub pool: String,
    pub phase: ModelPhase,
    /// The upstream's sustainable rate learned from shedding, requests per second; `None`
    /// while requests are not paced at a rate.
    pub learned_rate_rps: Option<f64>,
    /// Successes the pool served in the last whole second, as far as the object heard.
    pub served_last_s: u64,
    /// The key's own Anthropic limits for the pool, as its answers reported them.
    pub limits: Vec<LimitOutlook>,
    pub waiting: HeldBack,
    /// While the pool is scarce: the callers waiting their fair turn, with their weights,
    /// how many requests each has waiting, and the share of the pool each gets.
    pub callers: Vec<CallerShare>,
    /// The pool is rate-limited upstream for this long.
    pub cooldown_remaining_ms: u64,
    pub probe: ProbeStatus,
    /// Overloaded answers since the last success, while not yet marked overloaded.
    pub overload_streak: u32,
    /// Recovering: until every waiting request is released.
    pub release_ends_in_ms: Option<u64>,
}

/// Requests held back for the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct HeldBack {
    /// Waiting out an overload (estimated from how often they ask).
    pub overloaded: u32,
    /// Holding a send time that has not come yet (paced by the key's limits or the rate).
    pub scheduled: u64,
    /// Waiting their fair turn in the pool's queue (no send time yet).
    pub queued: u32,
}

/// The pool's probes while it is overloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ProbeStatus {
    pub in_flight: bool,
    /// Until the next probe may start (overloaded, none in flight).
    pub next_in_ms: Option<u64>,
    /// Probes failed since the pool was marked overloaded.
    pub failed: u32,
}

impl PoolStatus {
    fn of(model: ModelSnapshot, pace: PaceOutlook, callers: Vec<CallerShare>) -> PoolStatus {
        PoolStatus {
            learned_rate_rps: (pace.rate_mrps > 0).then(|| pace.rate_mrps as f64 / 1000.0),
            served_last_s: pace.served_per_s,
            limits: pace.limits,
            waiting: HeldBack {
                overloaded: model.waiters,
                scheduled: pace.scheduled,
                queued: callers.iter().map(|c| c.waiting).sum(),
            },
            callers,
            cooldown_remaining_ms: model.cooldown_remaining_ms,
            probe: ProbeStatus {
                in_flight: model.probe.is_some(),
                next_in_ms: model.next_probe_in_ms,
                failed: model.failed_probes,
            },
            overload_streak: model.overload_streak,
            release_ends_in_ms: model.release_ends_in_ms,
            phase: model.phase,
            pool: model.model,
        }
    }
}

impl UpstreamState {
    /// The operator's view at `now_ms`; the state is not changed.
    #[must_use]
    pub fn status(&self, policy: &OutagePolicy, now_ms: u64) -> KeyStatus {
        let snapshot = self.snapshot(policy, now_ms);
        let pools = self
            .pools(policy, now_ms)
            .into_iter()
            .map(|(model, pace, callers)| PoolStatus::of(model, pace, callers))
            .collect::<Vec<_>>();
        KeyStatus {
            at_ms: snapshot.at_ms,
            cooldown_remaining_ms: pools
                .iter()
                .map(|p| p.cooldown_remaining_ms)
                .max()
                .unwrap_or(0),
            retry_budget: snapshot.retry_budget,
            pools,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{AttemptReport, Cost, Gate, KeyLimits, LimitDimension, Observed, Reply};

    const T0: u64 = 1_764_000_000_000;

    fn go(state: &mut UpstreamState, at: u64, cost: Cost) -> Gate {
        thread_local!(static SEED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) });
        let seed = SEED.with(|s| {
            s.set(s.get() + 1);
            s.get()
        });
        state.before_paced_attempt(
            &OutagePolicy::default(),
            at,
            "claude-sonnet",
            false,
            at + 30_000,
            seed,
            (cost, 0),
            &crate::upstream::Claimant::default(),
        )
    }

    #[test]
    fn a_fresh_key_shows_nothing_and_looking_changes_nothing() {
        let state = UpstreamState::new();
        let status = state.status(&OutagePolicy::default(), T0);
        assert!(status.pools.is_empty());
        assert_eq!(status.cooldown_remaining_ms, 0);
        assert_eq!(
            (status.retry_budget.requests, status.retry_budget.retries),
            (0, 0)
        );
        assert_eq!(state, UpstreamState::new());
    }

    #[test]
    fn known_limits_show_what_remains_and_who_is_scheduled() {
        let policy = OutagePolicy::default();
        let mut state = UpstreamState::new();
        // The upstream reports 60 requests a minute with 3 left: one a second from then on.
        let limits = KeyLimits {
            requests: Some(Observed {
                limit: 60,
                remaining: 3,
            }),
            ..KeyLimits::default()
        };
        state.observe_limits(&policy, T0, "claude-sonnet", &limits);
        let status = state.status(&policy, T0);
        let pool = &status.pools[0];
        assert_eq!(pool.pool, "claude-sonnet");
        assert_eq!(pool.phase, ModelPhase::Healthy);
        assert_eq!(pool.limits.len(), 1);
        assert_eq!(pool.limits[0].dimension, LimitDimension::Requests);
        assert_eq!(pool.limits[0].limit, 60);
        assert_eq!(pool.limits[0].remaining, 3);
        assert_eq!(pool.limits[0].full_in_ms, 57_000);
        assert_eq!(pool.waiting.scheduled, 0);
        // Three go at once; the next five are a second apart, beyond the horizon: they wait
        // their turn in the queue.
        let gates: Vec<Gate> = (0..8)
            .map(|_| go(&mut state, T0, Cost::default()))
            .collect();
        assert!(gates[..3].iter().all(|g| matches!(g, Gate::Go { .. })));
        assert!(
            gates[3..].iter().all(|g| matches!(
                g,
                Gate::Wait {
                    reason: crate::upstream::WaitReason::Queued,
                    ..
                }
            )),
            "{gates:?}"
        );
        let before = state.clone();
        let status = state.status(&policy, T0);
        assert_eq!(state, before, "looking changes nothing");
        let pool = &status.pools[0];
        assert_eq!(pool.limits[0].remaining, 0);
        assert_eq!(pool.waiting.scheduled, 0);
        assert_eq!(pool.waiting.queued, 5);
        assert_eq!(pool.callers.len(), 1);
        assert_eq!(pool.callers[0].waiting, 5);
        assert!((pool.callers[0].share - 1.0).abs() < 1e-9);
        let much_later = state.status(&policy, T0 + 120_000);
        assert_eq!(much_later.pools[0].limits[0].remaining, 60);
    }

    #[test]
    fn an_overload_shows_the_probe_the_waiters_and_then_the_recovery() {
        let policy = OutagePolicy {
            overload_min_span_ms: 0,
            ..OutagePolicy::default()
        };
        let mut state = UpstreamState::new();
        let overloaded = AttemptReport {
            reply: Reply::Overloaded,
            probe: None,
        };
        for i in 0..policy.overload_threshold.get() {
            state.after_attempt(&policy, T0 + u64::from(i), "claude-sonnet", overloaded, 1);
        }
        for seed in 0..6 {
            let gate =
                state.before_attempt(&policy, T0 + 10, "claude-sonnet", false, T0 + 30_000, seed);
            assert!(matches!(gate, Gate::Wait { .. }), "{gate:?}");
        }
        let status = state.status(&policy, T0 + 10);
        let pool = &status.pools[0];
        assert_eq!(pool.phase, ModelPhase::Overloaded);
        assert!(pool.waiting.overloaded >= 1, "{pool:?}");
        assert!(!pool.probe.in_flight);
        assert!(pool.probe.next_in_ms.is_some());
        // A 429 puts the pool in cooldown, and the key shows the longest one.
        let limited = AttemptReport {
            reply: Reply::RateLimited {
                retry_after_ms: Some(9_000),
            },
            probe: None,
        };
        state.after_attempt(&policy, T0 + 20, "claude-sonnet", limited, 2);
        let status = state.status(&policy, T0 + 1_020);
        assert_eq!(status.cooldown_remaining_ms, 8_000);
        assert_eq!(status.pools[0].cooldown_remaining_ms, 8_000);
        // A success starts the release.
        let served = AttemptReport {
            reply: Reply::Success,
            probe: None,
        };
        state.after_attempt(&policy, T0 + 2_000, "claude-sonnet", served, 3);
        let status = state.status(&policy, T0 + 2_000);
        assert_eq!(status.pools[0].phase, ModelPhase::Recovering);
        assert!(status.pools[0].release_ends_in_ms.is_some());
    }

    #[test]
    fn a_learned_rate_shows_in_requests_per_second() {
        let policy = OutagePolicy::default();
        let mut state = UpstreamState::new();
        let report = |reply| AttemptReport { reply, probe: None };
        // Ten served a second, then dense shedding while it still serves: a rate is learned.
        let mut t = T0;
        for _ in 0..10 {
            state.after_attempt(&policy, t, "claude-sonnet", report(Reply::Success), 1);
            t += 100;
        }
        for _ in 0..12 {
            state.after_attempt(&policy, t, "claude-sonnet", report(Reply::Overloaded), 1);
            state.after_attempt(&policy, t, "claude-sonnet", report(Reply::Success), 1);
            t += 60;
        }
        let status = state.status(&policy, t);
        let rate = status.pools[0].learned_rate_rps;
        assert!(rate.is_some_and(|r| r > 0.0), "{:?}", status.pools[0]);
        assert!(status.pools[0].served_last_s > 0);
    }
}
