//! The retry budget: retries on a key stay within a share of its requests over a sliding
//! window, with a floor (Finagle's and Envoy's last guard against retry storms).
//!
//! The window is ten buckets of a tenth of it each, counted in whole requests: the current
//! bucket and the nine before it. Everything is exact integer arithmetic; a retry is allowed
//! while `retries + 1 ≤ max(floor, requests · percent / 100)` over that window.

use serde::{Deserialize, Serialize};

use super::outage_policy::OutagePolicy;
use super::stored::stored;

/// Buckets per window.
pub(super) const BUCKETS: u64 = 10;

/// One bucket: the first attempts and retries sent during one tick (a tenth of the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
struct Bucket {
    tick: u64,
    requests: u32,
    retries: u32,
}

/// The key's retry budget.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RetryBudget {
    /// The bucket width the buckets were counted with; another width starts over.
    tick_ms: u64,
    /// Bucket of tick `t` at index `t % BUCKETS`.
    buckets: Vec<Bucket>,
}

/// The budget's window as of now, for the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct BudgetWindow {
    /// First attempts sent in the window.
    pub requests: u64,
    /// Retries sent in the window.
    pub retries: u64,
    /// Retries the window allows in all: `max(floor, requests · percent / 100)`.
    pub allowance: u64,
}

fn tick_ms(policy: &OutagePolicy) -> u64 {
    stored((policy.retry_budget_window_ms / BUCKETS).max(1))
}

/// Retries a window with `requests` first attempts allows.
pub(super) fn allowance(policy: &OutagePolicy, requests: u64) -> u64 {
    let share = requests.saturating_mul(u64::from(policy.retry_budget_percent)) / 100;
    share.max(u64::from(policy.retry_budget_floor))
}

impl RetryBudget {
    /// The window ending with the bucket of `now_ms`.
    pub(super) fn window(&self, policy: &OutagePolicy, now_ms: u64) -> BudgetWindow {
        let mut window = BudgetWindow::default();
        if self.tick_ms == tick_ms(policy) {
            let tick = now_ms / self.tick_ms.max(1);
            for bucket in self.live(tick) {
                window.requests = window.requests.saturating_add(u64::from(bucket.requests));
                window.retries = window.retries.saturating_add(u64::from(bucket.retries));
            }
        }
        window.allowance = allowance(policy, window.requests);
        window
    }

    /// Counts a first attempt sent at `now_ms`.
    pub(super) fn record_request(&mut self, policy: &OutagePolicy, now_ms: u64) {
        if let Some(bucket) = self.bucket(policy, now_ms) {
            bucket.requests = bucket.requests.saturating_add(1);
        }
    }

    /// Takes a retry token at `now_ms` if the window has one left. When it has none, the
    /// answer is how long until the oldest bucket holding retries leaves the window (when a
    /// token may come back, unless requests leave with it).
    pub(super) fn take_retry(&mut self, policy: &OutagePolicy, now_ms: u64) -> Result<(), u64> {
        let window = self.window(policy, now_ms);
        if window.retries < window.allowance {
            if let Some(bucket) = self.bucket(policy, now_ms) {
                bucket.retries = bucket.retries.saturating_add(1);
            }
            return Ok(());
        }
        let width = tick_ms(policy);
        let tick = now_ms / width;
        let oldest = self
            .live(tick)
            .filter(|b| b.retries > 0)
            .map(|b| b.tick)
            .min()
            .unwrap_or(tick);
        let frees_at = oldest.saturating_add(BUCKETS).saturating_mul(width);
        Err(frees_at.saturating_sub(now_ms).max(1))
    }

    /// Whether nothing in the window is counted any more.
    pub(super) fn is_empty(&self, policy: &OutagePolicy, now_ms: u64) -> bool {
        let window = self.window(policy, now_ms);
        window.requests == 0 && window.retries == 0
    }

    /// Buckets in the window ending with `tick`. A bucket from a later tick (the clock was
    /// reset backwards) is not in it.
    fn live(&self, tick: u64) -> impl Iterator<Item = &Bucket> {
        let oldest = tick.saturating_sub(BUCKETS - 1);
        self.buckets
            .iter()
            .filter(move |b| b.tick >= oldest && b.tick <= tick)
    }

    /// The bucket of `now_ms`, emptied first if it still holds an older tick.
    fn bucket(&mut self, policy: &OutagePolicy, now_ms: u64) -> Option<&mut Bucket> {
        let width = tick_ms(policy);
        if self.tick_ms != width || self.buckets.len() as u64 != BUCKETS {
            self.tick_ms = width;
            self.buckets = vec![Bucket::default(); BUCKETS as usize];
        }
        let tick = now_ms / width;
        let index = usize::try_from(tick % BUCKETS).ok()?;
        let bucket = self.buckets.get_mut(index)?;
        if bucket.tick != tick {
            *bucket = Bucket {
                tick,
                requests: 0,
                retries: 0,
            };
        }
        Some(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_000_000_000;

    fn retries_granted(
        budget: &mut RetryBudget,
        policy: &OutagePolicy,
        at: u64,
        tries: u32,
    ) -> u32 {
        (0..tries)
            .filter(|_| budget.take_retry(policy, at).is_ok())
            .count() as u32
    }

    #[test]
    fn floor_without_requests() {
        let policy = OutagePolicy::default();
        let mut budget = RetryBudget::default();
        assert_eq!(retries_granted(&mut budget, &policy, T0, 100), 30);
        // The oldest retries leave the window ten buckets later.
        let wait = budget.take_retry(&policy, T0 + 1).err().unwrap_or(0);
        assert_eq!(wait, 10_000 - 1);
        assert!(budget.take_retry(&policy, T0 + 9_999).is_err());
        assert_eq!(retries_granted(&mut budget, &policy, T0 + 10_000, 100), 30);
    }

    #[test]
    fn twenty_percent_of_requests_above_the_floor() {
        let policy = OutagePolicy::default();
        let mut budget = RetryBudget::default();
        for i in 0..1_000 {
            budget.record_request(&policy, T0 + i);
        }
        assert_eq!(retries_granted(&mut budget, &policy, T0 + 2_000, 500), 200);
        let window = budget.window(&policy, T0 + 2_000);
        assert_eq!(
            window,
            BudgetWindow {
                requests: 1_000,
                retries: 200,
                allowance: 200
            }
        );
        // 149 requests: 20 % is 29 (rounded down), below the floor of 30.
        let mut small = RetryBudget::default();
        for _ in 0..149 {
            small.record_request(&policy, T0);
        }
        assert_eq!(retries_granted(&mut small, &policy, T0, 100), 30);
        let mut big = RetryBudget::default();
        for _ in 0..154 {
            big.record_request(&policy, T0);
        }
        assert_eq!(retries_granted(&mut big, &policy, T0, 100), 30);
        for _ in 0..6 {
            big.record_request(&policy, T0);
        }
        // 160 requests allow 32: two more.
        assert_eq!(retries_granted(&mut big, &policy, T0, 100), 2);
    }

    #[test]
    fn window_slides_bucket_by_bucket() {
        let policy = OutagePolicy::default();
        let mut budget = RetryBudget::default();
        // 10 retries in each of three consecutive seconds use the floor up.
        for s in 0..3 {
            assert_eq!(
                retries_granted(&mut budget, &policy, T0 + s * 1_000, 10),
                10
            );
        }
        assert!(budget.take_retry(&policy, T0 + 9_999).is_err());
        // At T0 + 10 s the first second leaves the window: 10 tokens come back.
        assert_eq!(retries_granted(&mut budget, &policy, T0 + 10_000, 100), 10);
    }

    #[test]
    fn a_new_window_width_starts_over() {
        let policy = OutagePolicy::default();
        let mut budget = RetryBudget::default();
        assert_eq!(retries_granted(&mut budget, &policy, T0, 100), 30);
        let shorter = OutagePolicy {
            retry_budget_window_ms: 5_000,
            ..policy
        };
        assert_eq!(retries_granted(&mut budget, &shorter, T0, 100), 30);
    }

    #[test]
    fn degenerate_policies_do_not_panic() {
        let policy = OutagePolicy {
            retry_budget_window_ms: 0,
            retry_budget_floor: 0,
            retry_budget_percent: u32::MAX,
            ..OutagePolicy::default()
        };
        let mut budget = RetryBudget::default();
        assert!(budget.take_retry(&policy, u64::MAX).is_err());
        budget.record_request(&policy, u64::MAX);
        assert!(budget.take_retry(&policy, u64::MAX).is_ok());
        assert!(!budget.is_empty(&policy, u64::MAX));
    }
}
