//! The knobs of the shared upstream state, with the product defaults.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};

use super::pace::PacePolicy;

/// How one upstream key's shared state reacts to trouble. Durations are in milliseconds.
///
/// Counts and periods that must be at least one are typed so; any other value is accepted:
/// zero or inverted bounds never panic (a release window whose minimum exceeds its maximum
/// takes the maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutagePolicy {
    /// Overloaded answers (`529`, or a stream opening with `overloaded_error`) for one model,
    /// with no success in between, that mark the model overloaded.
    pub overload_threshold: NonZeroU32,
    /// ... and that lasted at least this long from its first overloaded answer. Under a total
    /// outage no success ever interrupts a streak; an upstream that is merely at capacity
    /// still serves a request every so often, so a streak rarely lasts this long. Without it,
    /// an upstream at twice its capacity would be taken for a dead one and left idle while
    /// every request waits for probes.
    pub overload_min_span_ms: u64,
    /// A streak of overloaded answers counts only within this long of its first answer;
    /// past it, the next overloaded answer starts a new streak.
    pub overload_window_ms: u64,
    /// Probe spacing: after the marking and after each failed probe, the next probe is allowed
    /// after a draw from `[c/2, c]`, with `c = min(cap, base·2^failed_probes)`.
    pub probe_interval_base_ms: u64,
    /// The cap of the probe spacing ceiling `c`.
    pub probe_interval_cap_ms: u64,
    /// While at least this many requests wait, the probe spacing ceiling stays at the base:
    /// the sooner the end of an outage is seen, the fewer of them run out of budget.
    pub probe_eager_waiters: NonZeroU32,
    /// A probe whose report never comes frees the probe slot after this long (the attempt
    /// timeout: by then its caller has either reported or gone).
    pub probe_lease_ms: u64,
    /// Requests waiting on an overloaded model call again after a draw from
    /// `[poll/2, poll]`: how soon they notice a successful probe, and how often the object
    /// hears from each of them (which is how it estimates how many there are).
    pub wait_poll_ms: NonZeroU64,
    /// Release window per estimated waiter: after a successful probe, waiting requests go
    /// out spread over `estimate × this`, bounded by the two values below.
    pub release_per_waiter_ms: u64,
    /// The shortest release window.
    pub release_min_ms: u64,
    /// The longest release window.
    pub release_max_ms: u64,
    /// The cooldown a `429` sets when it carries no retry-after.
    pub default_cooldown_ms: u64,
    /// Requests waiting out a cooldown resume spread over this long after it ends.
    pub cooldown_spread_ms: u64,
    /// Retries allowed, as a percentage of the first attempts sent in the window.
    pub retry_budget_percent: u32,
    /// Retries allowed per window whatever the traffic (3 per second over 10 s).
    pub retry_budget_floor: u32,
    /// The retry budget's window, counted in ten equal buckets.
    pub retry_budget_window_ms: u64,
    /// Models remembered at most; the least recently used is forgotten first.
    pub max_models: NonZeroUsize,
    /// How requests are paced at the upstream's sustainable rate.
    pub pace: PacePolicy,
}

impl Default for OutagePolicy {
    /// The product defaults: 5 overloads within 10 s, with no success between them over at
    /// least 0.5 s, mark a model; probes every 0.5–1 s at first, up to 2–4 s (0.5–1 s again
    /// while 50 or more requests wait); a 60 s probe lease; waiters poll every 0.5–1 s and are
    /// released over 60 ms per waiter (1–15 s, at most about 17 released requests per second:
    /// a recovering upstream may have less capacity than before, and requests it sheds come
    /// back as retries); a 1 s default cooldown with a 0.5 s spread; retries within 20 % of
    /// requests over 10 s with a floor of 30; 64 models.
    fn default() -> Self {
        Self {
            overload_threshold: NonZeroU32::MIN.saturating_add(4),
            overload_min_span_ms: 500,
            overload_window_ms: 10_000,
            probe_interval_base_ms: 1_000,
            probe_interval_cap_ms: 4_000,
            probe_eager_waiters: NonZeroU32::MIN.saturating_add(49),
            probe_lease_ms: 60_000,
            wait_poll_ms: NonZeroU64::MIN.saturating_add(999),
            release_per_waiter_ms: 60,
            release_min_ms: 1_000,
            release_max_ms: 15_000,
            default_cooldown_ms: 1_000,
            cooldown_spread_ms: 500,
            retry_budget_percent: 20,
            retry_budget_floor: 30,
            retry_budget_window_ms: 10_000,
            max_models: NonZeroUsize::MIN.saturating_add(63),
            pace: PacePolicy::default(),
        }
    }
}

impl OutagePolicy {
    /// The shortest time between two probes of a model: half the base interval.
    #[must_use]
    pub fn min_probe_interval_ms(&self) -> u64 {
        self.probe_interval_base_ms.min(self.probe_interval_cap_ms) / 2
    }

    /// The release window for an estimate of `waiters` waiting requests.
    #[must_use]
    pub fn release_window_ms(&self, waiters: u32) -> u64 {
        u64::from(waiters)
            .saturating_mul(self.release_per_waiter_ms)
            .max(self.release_min_ms)
            .min(self.release_max_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_window_scales_with_waiters_within_bounds() {
        let policy = OutagePolicy::default();
        assert_eq!(policy.release_window_ms(0), 1_000);
        assert_eq!(policy.release_window_ms(100), 6_000);
        assert_eq!(policy.release_window_ms(10_000), 15_000);
        assert_eq!(policy.release_window_ms(u32::MAX), 15_000);
        let inverted = OutagePolicy {
            release_min_ms: 9_000,
            release_max_ms: 10,
            ..policy
        };
        assert_eq!(inverted.release_window_ms(50), 10);
    }

    #[test]
    fn min_probe_interval_is_half_the_base() {
        assert_eq!(OutagePolicy::default().min_probe_interval_ms(), 500);
    }
}
