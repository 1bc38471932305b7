//! What one edge (one isolate) remembers about an upstream key between requests, and what it
//! answers for the key when the shared state refuses.
//!
//! On the happy path an edge does not ask the key's object before a first attempt: it counts
//! the attempts it sent unasked and reports them with its next call (the retry budget needs
//! them). Once it sees trouble (a retryable failure, a wait, a refusal) it asks before every
//! attempt for [`EdgeMemory::TROUBLE_MEMORY_MS`]. The memory is a value owned by the isolate,
//! one per pool of an upstream key, so passthrough keys never count into the managed key's
//! budget; how many the isolate keeps, and which it forgets, see [`EdgeMemories`].

use std::cell::RefCell;
use std::rc::Rc;

use super::key_state::RefuseReason;
use super::pace::PaceReason;
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
    /// The pool answered a `2xx` at this edge: a pool the upstream serves for this key.
    served: bool,
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

    /// A memory kept by no table (see [`EdgeMemories`]): every first attempt asks.
    fn always_asking() -> EdgeMemory {
        EdgeMemory {
            trouble_until_ms: u64::MAX,
            ..EdgeMemory::default()
        }
    }

    /// The pool answered a `2xx`.
    pub fn note_success(&mut self) {
        self.served = true;
    }

    /// Whether the pool has answered a `2xx` at this edge.
    #[must_use]
    pub fn has_served(&self) -> bool {
        self.served
    }

    /// How readily the memory is forgotten at `now_ms` to make room (lowest first); `None`
    /// while it is in trouble.
    fn forget_rank(&self, now_ms: u64) -> Option<u8> {
        if self.troubled(now_ms) {
            None
        } else if !self.served {
            Some(0)
        } else if self.unreported == 0 && self.unreported_served == 0 {
            Some(1)
        } else {
            Some(2)
        }
    }

    /// A success at `now_ms` the shared state was not told of.
    pub fn count_served(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second != self.served_second {
            self.served_second = second;
            self.unreported_served = 0;
        }
        self.unreported_served = self.unreported_served.saturating_add(1);
        self.served = true;
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

/// An isolate's memories, one per pool of an upstream key, at most
/// [`EdgeMemories::MAX_ENTRIES`] in all and [`EdgeMemories::MAX_POOLS_PER_KEY`] per key:
/// passthrough callers bring keys of their own, and clients name models of their own, and an
/// isolate must not grow with them.
///
/// A memory in trouble is never forgotten: the isolate would send its next first attempts
/// unasked into the trouble it saw. Room is made by forgetting, least recently used first,
/// a pool that never answered a `2xx` here (a made-up model or key comes and goes there), else
/// one with nothing to report, else one whose unreported first attempts are lost with it. With
/// nothing to forget, the pool's memory is not kept: it asks the shared state before every
/// attempt, as an edge in trouble does.
#[derive(Debug, Default)]
pub struct EdgeMemories {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    key: String,
    pool: String,
    last_used_ms: u64,
    memory: Rc<RefCell<EdgeMemory>>,
}

impl EdgeMemories {
    pub const MAX_ENTRIES: usize = 64;
    /// Anthropic's pools of one key: `count_tokens`, `models` and a few model families.
    pub const MAX_POOLS_PER_KEY: usize = 16;

    /// The memory of `pool` of the key with this fingerprint.
    pub fn of(&mut self, key: &str, pool: &str, now_ms: u64) -> Rc<RefCell<EdgeMemory>> {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|e| e.key == key && e.pool == pool)
        {
            entry.last_used_ms = now_ms;
            return entry.memory.clone();
        }
        let key_full =
            self.entries.iter().filter(|e| e.key == key).count() >= Self::MAX_POOLS_PER_KEY;
        if key_full || self.entries.len() >= Self::MAX_ENTRIES {
            let forget = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| !key_full || e.key == key)
                .filter_map(|(index, e)| Some((e.memory.borrow().forget_rank(now_ms)?, e, index)))
                .min_by_key(|(rank, e, _)| (*rank, e.last_used_ms))
                .map(|(_, _, index)| index);
            match forget {
                Some(index) => {
                    self.entries.remove(index);
                }
                None => return Rc::new(RefCell::new(EdgeMemory::always_asking())),
            }
        }
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        self.entries.push(Entry {
            key: key.to_string(),
            pool: pool.to_string(),
            last_used_ms: now_ms,
            memory: memory.clone(),
        });
        memory
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
                        "the upstream key is rate limited; {}",
                        crate::error::retry_in(retry_after_ms)
                    ),
                    limit: LimitInfo::upstream(),
                    limit_headers: Vec::new(),
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
                    "the upstream key's {} limit is reached for this request's time budget; {}",
                    dimension.as_str(),
                    crate::error::retry_in(retry_after_ms)
                ),
                limit: LimitInfo {
                    dimension: Some(dimension.as_str().to_string()),
                    ..LimitInfo::upstream()
                },
                limit_headers: Vec::new(),
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

    const SONNET: &str = "messages:claude-sonnet-4";

    #[test]
    fn memories_are_per_pool_of_a_key() {
        let mut memories = EdgeMemories::default();
        let managed = memories.of("managed", SONNET, 0);
        managed.borrow_mut().mark_trouble(0);
        assert!(memories
            .of("passthrough", SONNET, 0)
            .borrow_mut()
            .send_unasked(0));
        assert!(!memories
            .of("managed", "count_tokens", 0)
            .borrow()
            .troubled(0));
        assert!(memories.of("managed", SONNET, 0).borrow().troubled(0));
        assert_eq!(memories.of("managed", SONNET, 0).borrow().unreported(), 0);
        assert_eq!(memories.len(), 3);
    }

    #[test]
    fn made_up_models_never_push_out_a_pool_in_trouble_or_one_that_served() {
        let mut memories = EdgeMemories::default();
        let troubled = memories.of("managed", SONNET, 0);
        troubled.borrow_mut().mark_trouble(0);
        let served = memories.of("managed", "messages:claude-haiku-4", 0);
        served.borrow_mut().count_served(0);
        let _ = served.borrow_mut().take_unreported_served(0);
        // Each made-up model is sent once unasked and answered 404: its count stays unreported.
        for i in 0..200 {
            let made_up = memories.of("managed", &format!("messages:made-up-{i}"), 1);
            assert!(made_up.borrow_mut().send_unasked(1));
        }
        assert!(memories.len() <= EdgeMemories::MAX_ENTRIES);
        assert!(Rc::ptr_eq(&memories.of("managed", SONNET, 2), &troubled));
        assert!(troubled.borrow().troubled(2));
        let haiku = memories.of("managed", "messages:claude-haiku-4", 2);
        assert!(Rc::ptr_eq(&haiku, &served));
    }

    #[test]
    fn one_key_holds_at_most_its_share_of_the_memories() {
        let mut memories = EdgeMemories::default();
        // A caller's own key, rate limited upstream on every made-up pool it names.
        for i in 0..100 {
            let memory = memories.of("passthrough", &format!("messages:made-up-{i}"), 0);
            memory.borrow_mut().mark_trouble(0);
        }
        assert_eq!(memories.len(), EdgeMemories::MAX_POOLS_PER_KEY);
        // The managed key's pools are still remembered.
        let managed = memories.of("managed", SONNET, 1);
        managed.borrow_mut().mark_trouble(1);
        assert!(Rc::ptr_eq(&memories.of("managed", SONNET, 2), &managed));
    }

    #[test]
    fn with_every_memory_in_trouble_a_new_pool_asks_before_each_attempt() {
        let mut memories = EdgeMemories::default();
        for key in 0..EdgeMemories::MAX_ENTRIES {
            let memory = memories.of(&format!("key-{key}"), SONNET, 0);
            memory.borrow_mut().mark_trouble(0);
        }
        let newcomer = memories.of("managed", SONNET, 1);
        assert!(!newcomer.borrow_mut().send_unasked(1));
        assert_eq!(memories.len(), EdgeMemories::MAX_ENTRIES);
        // Once the trouble has passed, room is made again.
        let later = EdgeMemory::TROUBLE_MEMORY_MS + 1;
        assert!(memories
            .of("managed", SONNET, later)
            .borrow_mut()
            .send_unasked(later));
        assert_eq!(memories.len(), EdgeMemories::MAX_ENTRIES);
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
