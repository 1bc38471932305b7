//! What one edge (one isolate) remembers about an upstream key between requests, and what it
//! answers for the key when the shared state refuses.
//!
//! On the happy path an edge does not ask the key's object before a first attempt: it counts
//! the attempts it sent unasked and reports them with its next call (the retry budget needs
//! them). Once it sees trouble (a retryable failure, a wait, a refusal) it asks before every
//! attempt for [`EdgeMemory::TROUBLE_MEMORY_MS`]. The memory is a value owned by the isolate,
//! one per upstream key, so passthrough keys never count into the managed key's budget.

use std::cell::RefCell;
use std::rc::Rc;

use super::pace::PaceReason;
use super::state::RefuseReason;
use crate::error::{LimitInfo, ProxyError};
use crate::retry::Cause;

/// One edge's memory of one upstream key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeMemory {
    /// Until when first attempts ask the shared state.
    trouble_until_ms: u64,
    /// First attempts sent without asking, not yet reported.
    unreported: u32,
    /// Successes not told to the shared state, not yet reported (how much the upstream
    /// serves, for pacing at its rate once it sheds), all within the whole second
    /// `served_second`: the object counts them into the second it hears of them, so older
    /// ones would inflate what it thinks the upstream serves now.
    unreported_served: u32,
    served_second: u64,
}

impl EdgeMemory {
    /// After seeing trouble, an edge asks before first attempts for this long.
    pub const TROUBLE_MEMORY_MS: u64 = 30_000;

    /// Whether a first attempt at `now_ms` may go without asking; if so it is counted.
    pub fn send_unasked(&mut self, now_ms: u64) -> bool {
        if self.troubled(now_ms) {
            return false;
        }
        self.unreported = self.unreported.saturating_add(1);
        true
    }

    /// Trouble seen at `now_ms`: ask before first attempts for a while.
    pub fn mark_trouble(&mut self, now_ms: u64) {
        self.trouble_until_ms = self
            .trouble_until_ms
            .max(now_ms.saturating_add(Self::TROUBLE_MEMORY_MS));
    }

    #[must_use]
    pub fn troubled(&self, now_ms: u64) -> bool {
        now_ms < self.trouble_until_ms
    }

    /// The unasked first attempts to report with the next call; the count starts over.
    pub fn take_unreported(&mut self) -> u32 {
        std::mem::take(&mut self.unreported)
    }

    #[must_use]
    pub fn unreported(&self) -> u32 {
        self.unreported
    }

    /// A success at `now_ms` the shared state was not told of.
    pub fn count_served(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second != self.served_second {
            self.served_second = second;
            self.unreported_served = 0;
        }
        self.unreported_served = self.unreported_served.saturating_add(1);
    }

    /// The untold successes to report with a call at `now_ms` (those of the last second or
    /// this one); the count starts over.
    pub fn take_unreported_served(&mut self, now_ms: u64) -> u32 {
        let served = std::mem::take(&mut self.unreported_served);
        if self.served_second.saturating_add(1) >= now_ms / 1000 {
            served
        } else {
            0
        }
    }
}

/// An isolate's memories, one per upstream key (by fingerprint), at most
/// [`EdgeMemories::MAX_KEYS`]: passthrough callers bring keys of their own, and an isolate
/// must not grow with them. When full, a key with nothing to remember at `now_ms` is forgotten
/// first (else the oldest entry).
#[derive(Debug, Default)]
pub struct EdgeMemories {
    keys: Vec<(String, Rc<RefCell<EdgeMemory>>)>,
}

impl EdgeMemories {
    pub const MAX_KEYS: usize = 64;

    /// The memory of the key with this fingerprint.
    pub fn of(&mut self, fingerprint: &str, now_ms: u64) -> Rc<RefCell<EdgeMemory>> {
        if let Some((_, memory)) = self.keys.iter().find(|(k, _)| k == fingerprint) {
            return memory.clone();
        }
        if self.keys.len() >= Self::MAX_KEYS {
            let quiet = self.keys.iter().position(|(_, m)| {
                let m = m.borrow();
                !m.troubled(now_ms) && m.unreported() == 0 && m.unreported_served == 0
            });
            self.keys.remove(quiet.unwrap_or(0));
        }
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        self.keys.push((fingerprint.to_string(), memory.clone()));
        memory
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The shared state answered for the upstream: no attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefuseReason,
    pub retry_after_ms: u64,
    /// The request's last failure, if it had one (a spent retry budget answers for it).
    pub last_cause: Option<Cause>,
}

/// A cooldown is the upstream's rate limit, an overload is a 503, and a spent retry budget
/// answers for the request's last failure.
impl From<&Refusal> for ProxyError {
    fn from(refusal: &Refusal) -> Self {
        let retry_after_ms = refusal.retry_after_ms.max(crate::retry::MIN_RETRY_AFTER_MS);
        match (refusal.reason, refusal.last_cause) {
            (RefuseReason::Cooldown, _) | (RefuseReason::RetryBudget, Some(Cause::RateLimited)) => {
                ProxyError::RateLimited {
                    retry_after_ms,
                    message: format!(
                        "the upstream key is rate limited; retry in {} s",
                        crate::error::whole_seconds(retry_after_ms)
                    ),
                    limit: LimitInfo::upstream(),
                }
            }
            (RefuseReason::RetryBudget, Some(Cause::Timeout)) => {
                ProxyError::UpstreamTimeout { retry_after_ms }
            }
            (RefuseReason::RetryBudget, Some(Cause::Unreachable)) => {
                ProxyError::UpstreamUnreachable { retry_after_ms }
            }
            (RefuseReason::Paced(PaceReason::KeyLimit(dimension)), _) => ProxyError::RateLimited {
                retry_after_ms,
                message: format!(
                    "the upstream key's {} limit is reached for this request's time budget; retry in {} s",
                    dimension.as_str(),
                    crate::error::whole_seconds(retry_after_ms)
                ),
                limit: LimitInfo { dimension: Some(dimension.as_str().to_string()), ..LimitInfo::upstream() },
            },
            _ => ProxyError::Overloaded { retry_after_ms },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_asks_for_thirty_seconds_after_trouble() {
        let mut memory = EdgeMemory::default();
        assert!(memory.send_unasked(1_000));
        assert!(memory.send_unasked(1_001));
        memory.mark_trouble(2_000);
        assert!(!memory.send_unasked(2_000 + EdgeMemory::TROUBLE_MEMORY_MS - 1));
        assert!(memory.send_unasked(2_000 + EdgeMemory::TROUBLE_MEMORY_MS));
        assert_eq!(memory.take_unreported(), 3);
        assert_eq!(memory.take_unreported(), 0);
        // Marking never shortens the memory.
        memory.mark_trouble(10_000);
        memory.mark_trouble(5_000);
        assert!(memory.troubled(10_000 + EdgeMemory::TROUBLE_MEMORY_MS - 1));
    }

    #[test]
    fn untold_successes_are_reported_only_while_they_are_news() {
        let t0 = 1_764_000_000_000;
        let mut m = EdgeMemory::default();
        for i in 0..5 {
            m.count_served(t0 + i * 100);
        }
        // Within the next second: what this edge served lately.
        assert_eq!(m.take_unreported_served(t0 + 1_200), 5);
        assert_eq!(m.take_unreported_served(t0 + 1_300), 0);
        // Only the latest second's successes are kept, and none that are older than a second
        // by the time they would be reported (they would count as served now).
        m.count_served(t0 + 3_100);
        m.count_served(t0 + 4_100);
        m.count_served(t0 + 4_200);
        assert_eq!(m.take_unreported_served(t0 + 5_999), 2);
        m.count_served(t0 + 6_000);
        assert_eq!(m.take_unreported_served(t0 + 8_000), 0);
    }

    #[test]
    fn memories_are_per_key_and_bounded() {
        let mut memories = EdgeMemories::default();
        let managed = memories.of("managed", 0);
        managed.borrow_mut().mark_trouble(0);
        assert!(memories.of("passthrough", 0).borrow_mut().send_unasked(0));
        assert!(memories.of("managed", 0).borrow().troubled(0));
        assert_eq!(memories.of("managed", 0).borrow().unreported(), 0);
        for i in 0..200 {
            memories.of(&format!("key{i}"), 1);
        }
        assert_eq!(memories.len(), EdgeMemories::MAX_KEYS);
        // The troubled key is kept while quiet ones come and go.
        assert!(memories.of("managed", 1).borrow().troubled(1));
    }

    #[test]
    fn refusals_answer_for_the_reason_or_the_last_failure() {
        let answer = |reason, last_cause| {
            let e = ProxyError::from(&Refusal {
                reason,
                retry_after_ms: 10,
                last_cause,
            });
            (e.status(), e.error_type(), e.retry_after_ms())
        };
        assert_eq!(
            answer(RefuseReason::Cooldown, None),
            (429, "rate_limit_error", Some(1000))
        );
        assert_eq!(
            answer(RefuseReason::Overloaded, Some(Cause::Timeout)),
            (503, "overloaded_error", Some(1000))
        );
        assert_eq!(
            answer(RefuseReason::RetryBudget, Some(Cause::RateLimited)).0,
            429
        );
        assert_eq!(
            answer(RefuseReason::RetryBudget, Some(Cause::Timeout)).0,
            504
        );
        assert_eq!(
            answer(RefuseReason::RetryBudget, Some(Cause::Unreachable)).0,
            502
        );
        assert_eq!(
            answer(RefuseReason::RetryBudget, Some(Cause::Overloaded)).0,
            503
        );
        assert_eq!(answer(RefuseReason::RetryBudget, None).0, 503);
    }
}
