//! How a request body may arrive: the bytes an isolate, and each caller in it, may hold while
//! bodies are read, and how slowly a body may come before the read is given up.
//!
//! An isolate's budget for bodies is shared by every request in it, so a body is charged as
//! its bytes arrive (never for the length it declares), a caller may hold only its share and
//! read only as many bodies at once as its tier's `concurrency`, and a body that stops
//! coming ends with `408` instead of holding its share for as long as the client likes.
//! A body still arriving after [`COUNT_WHILE_ARRIVING_AFTER_MS`] has its request counted
//! against the caller's `rpm` then, while it goes on arriving: a caller out of requests is
//! refused there, and cannot keep uploads open by never finishing them.

use crate::sorted_map::SortedMap;
use std::cell::RefCell;
use std::rc::Rc;

use crate::config::TierLimits;
use crate::error::{LimitInfo, ProxyError, Scope};
use crate::request::route::Metering;

use super::BUSY_RETRY_AFTER_MS;

/// The limits one body is read under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCaps {
    /// Bytes the isolate holds at once, every caller's together (`MAX_INFLIGHT_BODY_BYTES`).
    pub isolate: u64,
    /// Bytes one caller holds at once in the isolate (`MAX_INFLIGHT_BODY_BYTES_PER_CALLER`).
    pub caller: u64,
    /// Bodies one caller may be sending at once (its tier's `concurrency`; `None`: any).
    pub bodies: Option<u32>,
}

/// The request bodies one isolate holds at once, in bytes, in all and per caller.
///
/// A body is held (in JavaScript buffers) from its first byte until the request's answer has
/// come back; a few large posts at once could otherwise take an isolate past its memory limit,
/// which fails every request in it. Beyond the isolate's cap a request is refused:
/// `503 overloaded_error` with `Retry-After` (waiting helps, as bodies drain quickly), not
/// `413` (the body itself is acceptable). Beyond the caller's own share, the caller alone is
/// refused: `429 rate_limit_error` with `limit.scope: "key"`.
#[derive(Debug, Default)]
pub struct InflightBodies {
    held: Rc<RefCell<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    bytes: u64,
    callers: SortedMap<String, Holding>,
}

/// What one caller holds.
#[derive(Debug, Default, Clone, Copy)]
struct Holding {
    bytes: u64,
    bodies: u32,
}

/// One body's hold on the budget: its caller's place among the bodies being sent, and the
/// bytes it has grown to. Released when dropped.
#[derive(Debug)]
pub struct BodyGuard {
    caller: String,
    bytes: u64,
    caps: BodyCaps,
    held: Rc<RefCell<Held>>,
}

impl InflightBodies {
    /// Bytes held now, by every guard alive.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.held.borrow().bytes
    }

    /// Bytes `caller` holds now.
    #[must_use]
    pub fn held_by(&self, caller: &str) -> u64 {
        self.held
            .borrow()
            .callers
            .get(caller)
            .map_or(0, |h| h.bytes)
    }

    /// Starts a body for `caller`, holding no bytes yet, before a byte of it is read; refused
    /// when the caller is already sending as many bodies as `caps.bodies` allows.
    pub fn begin(&self, caller: &str, caps: BodyCaps) -> Result<BodyGuard, ProxyError> {
        let mut held = self.held.borrow_mut();
        let bodies = held.callers.get(caller).map_or(0, |h| h.bodies);
        if caps.bodies.is_some_and(|most| bodies >= most) {
            return Err(caller_refused(
                "concurrency",
                caps.bodies.map(u64::from),
                "this caller is already sending as many request bodies as its concurrency allows",
            ));
        }
        held.callers.update_or_default(
            caller,
            || caller.to_string(),
            |holding| holding.bodies = holding.bodies.saturating_add(1),
        );
        Ok(BodyGuard {
            caller: caller.to_string(),
            bytes: 0,
            caps,
            held: self.held.clone(),
        })
    }
}

/// The caller's own limit on bodies, as the proxy's other per-caller limits answer: a `429`
/// with `limit.scope: "key"`, worth retrying once its bodies have gone.
fn caller_refused(dimension: &str, limit: Option<u64>, why: &str) -> ProxyError {
    ProxyError::RateLimited {
        retry_after_ms: BUSY_RETRY_AFTER_MS,
        message: format!("{why}; {}", crate::error::retry_in(BUSY_RETRY_AFTER_MS)),
        limit: LimitInfo {
            scope: Scope::Key,
            dimension: Some(dimension.to_string()),
            limit,
            remaining: Some(0),
        },
        limit_headers: Vec::new(),
    }
}

impl BodyGuard {
    /// Holds `more` bytes as they arrive, or refuses, holding what it held before: with
    /// [`ProxyError::RateLimited`] when the caller's share would be passed, with
    /// [`ProxyError::Busy`] when the isolate's would.
    pub fn try_grow(&mut self, more: u64) -> Result<(), ProxyError> {
        let mut held = self.held.borrow_mut();
        let total = held.bytes.checked_add(more);
        let holding = held.callers.get(&self.caller).copied().unwrap_or_default();
        let of_caller = holding.bytes.checked_add(more);
        // The caller's own share bites only where it is less than the whole isolate's.
        if self.caps.caller < self.caps.isolate
            && of_caller.is_none_or(|bytes| bytes > self.caps.caller)
        {
            return Err(caller_refused(
                "inflight_body_bytes",
                Some(self.caps.caller),
                "this caller is already sending as many request body bytes as it may at once",
            ));
        }
        let (Some(total), Some(of_caller)) = (
            total.filter(|t| *t <= self.caps.isolate),
            of_caller.filter(|bytes| *bytes <= self.caps.caller),
        ) else {
            return Err(ProxyError::Busy {
                retry_after_ms: BUSY_RETRY_AFTER_MS,
            });
        };
        held.bytes = total;
        if let Some(holding) = held.callers.get_mut(&self.caller) {
            holding.bytes = of_caller;
        }
        self.bytes = self.bytes.saturating_add(more);
        Ok(())
    }

    /// Bytes this guard holds.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        let Ok(mut held) = self.held.try_borrow_mut() else {
            return;
        };
        held.bytes = held.bytes.saturating_sub(self.bytes);
        let emptied = match held.callers.get_mut(&self.caller) {
            Some(holding) => {
                holding.bytes = holding.bytes.saturating_sub(self.bytes);
                holding.bodies = holding.bodies.saturating_sub(1);
                holding.bodies == 0
            }
            None => false,
        };
        if emptied {
            held.callers.remove(&self.caller);
        }
    }
}

/// What a request body is read under: `MAX_BODY_BYTES`, the isolate's and the caller's
/// budgets for bodies, and how slowly it may arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRules {
    pub limit: u64,
    pub caps: BodyCaps,
    pub pace: ReadPace,
}

/// How slowly a body may arrive: within `grace_ms` of the request's start, plus one second
/// for every `min_bytes_per_s` bytes that have arrived. A client sending at least that fast
/// is never cut; one that stalls, or trickles, falls behind and is answered `408`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPace {
    pub started_ms: u64,
    /// `BODY_READ_TIMEOUT_MS`.
    pub grace_ms: u64,
    /// `MIN_BODY_BYTES_PER_S` (at least 1).
    pub min_bytes_per_s: u64,
}

impl ReadPace {
    /// When the read is given up unless more bytes have come, `received` bytes in.
    #[must_use]
    pub fn deadline_ms(&self, received: u64) -> u64 {
        let earned_ms = u128::from(received) * 1000 / u128::from(self.min_bytes_per_s.max(1));
        self.started_ms
            .saturating_add(self.grace_ms)
            .saturating_add(u64::try_from(earned_ms).unwrap_or(u64::MAX))
    }

    /// How long to wait for the next bytes at `now_ms`; `None` when the deadline has passed.
    #[must_use]
    pub fn wait_ms(&self, received: u64, now_ms: u64) -> Option<u64> {
        let deadline = self.deadline_ms(received);
        (now_ms < deadline).then(|| deadline - now_ms)
    }
}

/// How long a body may take to arrive before its request is counted against the caller's
/// `rpm` while the rest arrives. Most bodies arrive sooner, with their head, and cost no
/// second call to the caller's object; a slow one is counted then and refused at once when
/// the caller has no requests left.
pub const COUNT_WHILE_ARRIVING_AFTER_MS: u64 = 200;

/// When a body still arriving has its request counted against `rpm` (see
/// [`COUNT_WHILE_ARRIVING_AFTER_MS`]); `None` when the request is not counted against `rpm`
/// at all.
#[must_use]
pub fn count_while_arriving(
    metering: Metering,
    limits: &TierLimits,
    pace: &ReadPace,
) -> Option<u64> {
    (!matches!(metering, Metering::None) && limits.rpm.is_some()).then(|| {
        pace.started_ms
            .saturating_add(COUNT_WHILE_ARRIVING_AFTER_MS)
    })
}

/// The length of a body read in chunks once `more` bytes have come: refused as too large
/// when it passes `limit`, or passes the length it `declared` (a body may not bring more
/// than it said it would).
pub fn grown_length(
    length: u64,
    more: u64,
    limit: u64,
    declared: Option<u64>,
) -> Result<u64, ProxyError> {
    let grown = length.saturating_add(more);
    if grown > limit || declared.is_some_and(|d| grown > d) {
        return Err(ProxyError::TooLarge { limit });
    }
    Ok(grown)
}

/// How much of a body refused for its declared length is read and dropped before the `413` is
/// sent, so a client still sending reads the answer rather than a reset connection: the whole
/// of what it declared, up to four times the limit or [`DRAIN_FLOOR_BYTES`], whichever is more
/// (the platform's own limit on request bodies comes first for the default limit; beyond the
/// allowance the connection is closed after the answer). Drained bytes are never held: they
/// cost bandwidth and time, within the read's pace.
#[must_use]
pub fn drain_allowance(declared: u64, limit: u64) -> u64 {
    declared.min(limit.saturating_mul(4).max(DRAIN_FLOOR_BYTES))
}

/// What is always drained of a refused body, however small the limit: a few megabytes pass a
/// connection's buffers, and a client still sending them would read a reset instead of the
/// answer.
pub const DRAIN_FLOOR_BYTES: u64 = 8 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: BodyCaps = BodyCaps {
        isolate: 100,
        caller: 60,
        bodies: None,
    };

    #[test]
    fn bodies_in_flight_are_capped_per_isolate_and_released() {
        let bodies = InflightBodies::default();
        let mut a = bodies.begin("a", CAPS).unwrap();
        a.try_grow(60).unwrap();
        let mut b = bodies.begin("b", CAPS).unwrap();
        b.try_grow(40).unwrap();
        assert_eq!(bodies.held(), 100);
        // Full: the next is refused with a 503 worth retrying, and holds nothing.
        let mut c = bodies.begin("c", CAPS).unwrap();
        let refused = c.try_grow(1).unwrap_err();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.error_type(), "overloaded_error");
        assert_eq!(refused.retry_after_ms(), Some(BUSY_RETRY_AFTER_MS));
        assert_eq!((c.bytes(), bodies.held()), (0, 100));
        assert!(b.try_grow(1).is_err());
        assert_eq!((b.bytes(), bodies.held()), (40, 100));
        drop(a);
        assert_eq!(bodies.held(), 40);
        // A body grows as it arrives until it no longer fits.
        for _ in 0..6 {
            c.try_grow(10).unwrap();
        }
        assert!(c.try_grow(1).is_err());
        drop(b);
        drop(c);
        assert_eq!(bodies.held(), 0);
        // Arithmetic at the edges refuses rather than wraps.
        let wide = BodyCaps {
            isolate: u64::MAX,
            caller: u64::MAX,
            bodies: None,
        };
        let mut huge = bodies.begin("a", wide).unwrap();
        huge.try_grow(u64::MAX).unwrap();
        assert!(bodies.begin("b", wide).unwrap().try_grow(1).is_err());
        assert!(huge.try_grow(1).is_err());
    }

    #[test]
    fn one_caller_cannot_take_the_isolates_budget() {
        let bodies = InflightBodies::default();
        // Two bodies of one caller: together they may not pass its share...
        let mut first = bodies.begin("trickler", CAPS).unwrap();
        first.try_grow(50).unwrap();
        let mut second = bodies.begin("trickler", CAPS).unwrap();
        let refused = second.try_grow(11).unwrap_err();
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.error_type(), "rate_limit_error");
        assert!(refused.should_retry());
        assert!(matches!(
            &refused,
            ProxyError::RateLimited { limit, .. }
                if limit.scope == Scope::Key
                    && limit.dimension.as_deref() == Some("inflight_body_bytes")
                    && limit.limit == Some(60)
        ));
        second.try_grow(10).unwrap();
        assert_eq!(bodies.held_by("trickler"), 60);
        // ...and another caller still has the rest of the isolate.
        let mut other = bodies.begin("other", CAPS).unwrap();
        other.try_grow(40).unwrap();
        assert_eq!(other.try_grow(1).unwrap_err().status(), 503);
        drop(first);
        assert_eq!(bodies.held_by("trickler"), 10);
        drop(second);
        drop(other);
        assert_eq!((bodies.held(), bodies.held_by("trickler")), (0, 0));
        assert!(
            bodies.held.borrow().callers.is_empty(),
            "nothing left behind"
        );
    }

    #[test]
    fn a_caller_sends_at_most_its_concurrency_of_bodies_at_once() {
        let bodies = InflightBodies::default();
        let caps = BodyCaps {
            bodies: Some(2),
            ..CAPS
        };
        let one = bodies.begin("a", caps).unwrap();
        let two = bodies.begin("a", caps).unwrap();
        // Refused before a byte is read, whatever the bodies hold.
        let refused = bodies.begin("a", caps).unwrap_err();
        assert_eq!(refused.status(), 429);
        assert!(matches!(
            &refused,
            ProxyError::RateLimited { limit, .. }
                if limit.dimension.as_deref() == Some("concurrency") && limit.limit == Some(2)
        ));
        assert!(
            bodies.begin("b", caps).is_ok(),
            "other callers are not counted"
        );
        drop(one);
        let _three = bodies.begin("a", caps).unwrap();
        drop(two);
    }

    #[test]
    fn a_body_must_keep_arriving_at_the_minimum_rate() {
        let pace = ReadPace {
            started_ms: 1_000,
            grace_ms: 10_000,
            min_bytes_per_s: 1_000,
        };
        // Nothing yet: the grace period only.
        assert_eq!(pace.deadline_ms(0), 11_000);
        assert_eq!(pace.wait_ms(0, 1_000), Some(10_000));
        assert_eq!(pace.wait_ms(0, 11_000), None);
        // Each byte buys its share of a second.
        assert_eq!(pace.deadline_ms(500), 11_500);
        assert_eq!(pace.wait_ms(5_000, 15_000), Some(1_000));
        // A trickle slower than the rate falls behind: 500 bytes a second for 30 s.
        let behind = (1..=30u64).find(|s| pace.wait_ms(500 * s, 1_000 + 1_000 * s).is_none());
        assert_eq!(behind, Some(20));
        // A client at the rate never does.
        assert!((1..=1_000u64).all(|s| pace.wait_ms(1_000 * s, 1_000 + 1_000 * s).is_some()));
        // No overflow at the edges.
        let edge = ReadPace {
            started_ms: u64::MAX - 1,
            grace_ms: u64::MAX,
            min_bytes_per_s: 0,
        };
        assert_eq!(edge.deadline_ms(u64::MAX), u64::MAX);
    }

    #[test]
    fn a_refused_declared_length_is_drained_only_so_far() {
        assert_eq!(drain_allowance(150, 100), 150);
        assert_eq!(drain_allowance(u64::MAX, 100), DRAIN_FLOOR_BYTES);
        let limit = 32 * 1024 * 1024;
        assert_eq!(drain_allowance(limit + 1, limit), limit + 1);
        assert_eq!(drain_allowance(u64::MAX, limit), 4 * limit);
        assert_eq!(drain_allowance(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn a_body_still_arriving_is_counted_against_rpm_only_where_rpm_counts() {
        let pace = ReadPace {
            started_ms: 1_000,
            grace_ms: 10_000,
            min_bytes_per_s: 1,
        };
        let rpm = TierLimits {
            rpm: std::num::NonZeroU32::new(10),
            ..TierLimits::default()
        };
        let due = Some(1_000 + COUNT_WHILE_ARRIVING_AFTER_MS);
        assert_eq!(count_while_arriving(Metering::Full, &rpm, &pace), due);
        assert_eq!(
            count_while_arriving(Metering::RequestOnly, &rpm, &pace),
            due
        );
        // Nothing to count: no rpm, or a route not metered.
        assert_eq!(count_while_arriving(Metering::None, &rpm, &pace), None);
        let no_rpm = TierLimits {
            concurrency: std::num::NonZeroU32::new(2),
            ..TierLimits::default()
        };
        assert_eq!(count_while_arriving(Metering::Full, &no_rpm, &pace), None);
    }

    #[test]
    fn a_body_grows_until_it_passes_its_limit_or_what_it_declared() {
        assert_eq!(grown_length(6, 4, 10, None).unwrap(), 10);
        assert_eq!(grown_length(6, 4, 10, Some(10)).unwrap(), 10);
        let too_large = grown_length(6, 5, 10, None).unwrap_err();
        assert_eq!(too_large.status(), 413);
        // More than it declared is refused, though under the limit.
        let more_than_declared = grown_length(6, 3, 100, Some(8)).unwrap_err();
        assert_eq!(more_than_declared.status(), 413);
        assert!(matches!(
            more_than_declared,
            ProxyError::TooLarge { limit: 100 }
        ));
        // No wrap at the edge.
        assert!(grown_length(u64::MAX, 1, u64::MAX, None).is_ok());
        assert!(grown_length(u64::MAX, 1, u64::MAX - 1, None).is_err());
    }
}
