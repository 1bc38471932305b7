//! One dimension's continuously refilling bucket, in exact integer arithmetic.
//!
//! A quota of `Q` per minute is a bucket that holds `Q` and refills at `Q / 60 000` per
//! millisecond, the way Anthropic replenishes its own limits. Fractions of a token per
//! millisecond would need rounding, so the bucket counts in *units* of 1/60 000 of a token
//! (or of a request): it then holds `Q · 60 000` units and drains exactly `Q` units per
//! millisecond, and every charge, refill and refund is an exact integer. The only rounding is
//! in [`Level::wait_ms`], which rounds up to the next whole millisecond — so a retry-after is
//! exact: at that instant the request fits, one millisecond earlier it does not.
//!
//! A level may exceed the capacity: a request larger than the whole bucket is charged the whole
//! bucket at admission and its real usage at settlement, which can leave the bucket in *debt*
//! (as Anthropic's own buckets run into debt). A debt is waited out like any other use.
//!
//! The bucket is stored as the *used* amount (its [`Level`]) rather than as GCRA's
//! "theoretical arrival time": the same thing, `level = (TAT − now) · Q`, but independent of
//! `Q`, so a tier whose quota changes keeps what its caller has already spent.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

/// Units in one token (or one request): one per millisecond of the minute.
pub(crate) const UNITS_PER_TOKEN: u64 = 60_000;

/// The largest level ever stored: 2^53 − 1, so a state survives a round trip through a
/// JavaScript number. It is above every capacity (`u32::MAX · 60 000` < 2^48); only a debt of
/// more than 150 billion tokens could be cut short by it.
pub(crate) const MAX_LEVEL: u64 = crate::durable::MAX_EXACT;

/// The used part of one bucket, in units of 1/60 000 token. Zero is a full bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Level(u64);

/// Everything a bucket of this quota can hold, in units.
pub(crate) fn capacity(quota: NonZeroU32) -> u64 {
    u64::from(quota.get()).saturating_mul(UNITS_PER_TOKEN)
}

/// What a request asking `tokens` reserves in a bucket of this quota: all of it, up to the
/// whole bucket. A larger request is served once the bucket is full, as Anthropic serves it,
/// and its settlement charges what it really used, debt and all.
pub(crate) fn fitting(quota: NonZeroU32, tokens: u64) -> u64 {
    tokens.min(u64::from(quota.get()))
}

fn units(tokens: u64) -> u64 {
    tokens.saturating_mul(UNITS_PER_TOKEN)
}

impl Level {
    /// A full bucket: nothing used.
    pub(crate) const EMPTY: Level = Level(0);

    #[cfg(test)]
    pub(crate) fn units(self) -> u64 {
        self.0
    }

    /// The level after `elapsed_ms` of refill at `quota` per minute. Never below zero: a full
    /// bucket stays full.
    #[must_use]
    pub(crate) fn drained(self, quota: NonZeroU32, elapsed_ms: u64) -> Level {
        Level(
            self.0
                .saturating_sub(elapsed_ms.saturating_mul(u64::from(quota.get()))),
        )
    }

    /// The level after charging `tokens`, which may go past capacity (a debt that delays the
    /// next admissions). Capped at [`MAX_LEVEL`].
    #[must_use]
    pub(crate) fn charged(self, tokens: u64) -> Level {
        Level(self.0.saturating_add(units(tokens)).min(MAX_LEVEL))
    }

    /// The level after returning `tokens`, never below `floor`.
    #[must_use]
    pub(crate) fn refunded(self, tokens: u64, floor: Level) -> Level {
        Level(self.0.saturating_sub(units(tokens)).max(floor.0))
    }

    /// The lower of two levels.
    #[must_use]
    pub(crate) fn at_most(self, other: Level) -> Level {
        Level(self.0.min(other.0))
    }

    /// Milliseconds until `tokens` fit (0: they fit now). The wait is the smallest `w` with
    /// `level − w·Q ≤ capacity − cost`, that is `⌈(level + cost − capacity) / Q⌉`, a debt
    /// included. More than the whole bucket is asked as the whole bucket: it fits once the
    /// bucket is full (callers charge it [`fitting`] tokens, so no charge leaves a level above
    /// capacity).
    pub(crate) fn wait_ms(self, quota: NonZeroU32, tokens: u64) -> u64 {
        let cost = units(fitting(quota, tokens));
        let room = capacity(quota).saturating_sub(cost);
        self.0.saturating_sub(room).div_ceil(u64::from(quota.get()))
    }

    /// Whole tokens that fit now: a request of at most this much passes this dimension.
    pub(crate) fn remaining(self, quota: NonZeroU32) -> u64 {
        capacity(quota).saturating_sub(self.0) / UNITS_PER_TOKEN
    }

    /// Milliseconds until the bucket is full again, if nothing else is charged.
    pub(crate) fn full_in_ms(self, quota: NonZeroU32) -> u64 {
        self.0.div_ceil(u64::from(quota.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_full_bucket_holds_one_minute() {
        let level = Level::EMPTY;
        assert_eq!(level.remaining(q(50)), 50);
        assert_eq!(level.wait_ms(q(50), 50), 0);
        // More than a bucket fits a full one, and waits for it.
        assert_eq!(level.wait_ms(q(50), 51), 0);
        assert_eq!(level.charged(1).wait_ms(q(50), 51), 1_200);
        assert_eq!(level.full_in_ms(q(50)), 0);
    }

    #[test]
    fn refill_is_quota_per_minute_without_rounding() {
        // 7 per minute: one token every 8571.43 ms, never a rounding drift.
        let level = Level::EMPTY.charged(7);
        assert_eq!(level.remaining(q(7)), 0);
        assert_eq!(level.wait_ms(q(7), 1), 8572); // ⌈60000 / 7⌉
        assert_eq!(level.drained(q(7), 8571).remaining(q(7)), 0);
        assert_eq!(level.drained(q(7), 8572).remaining(q(7)), 1);
        // Seven steps of 8571 ms fall 21 units short of a full minute's refill; no drift.
        let mut stepped = level;
        for _ in 0..7 {
            stepped = stepped.drained(q(7), 8571);
        }
        assert_eq!(stepped.units(), 21);
        assert_eq!(level.full_in_ms(q(7)), 60_000);
        assert_eq!(level.drained(q(7), 60_000), Level::EMPTY);
    }

    #[test]
    fn waits_are_exact_to_the_millisecond() {
        let level = Level::EMPTY.charged(40_000);
        let wait = level.wait_ms(q(40_000), 1234);
        assert_eq!(level.drained(q(40_000), wait).wait_ms(q(40_000), 1234), 0);
        assert_eq!(
            level.drained(q(40_000), wait - 1).wait_ms(q(40_000), 1234),
            1
        );
    }

    #[test]
    fn a_debt_is_waited_out_before_anything_fits() {
        // 8 000 a minute, 10 000 used: 2 000 of debt, 15 s, then 7.5 ms per token.
        let level = Level::EMPTY.charged(10_000);
        assert_eq!(level.remaining(q(8_000)), 0);
        assert_eq!(level.wait_ms(q(8_000), 0), 15_000);
        assert_eq!(level.wait_ms(q(8_000), 1), 15_008);
        assert_eq!(level.full_in_ms(q(8_000)), 75_000);
        // A request larger than the bucket waits until it is full again.
        assert_eq!(level.wait_ms(q(8_000), 32_000), 75_000);
        assert_eq!(level.drained(q(8_000), 75_000).wait_ms(q(8_000), 32_000), 0);
    }

    #[test]
    fn extremes_saturate_instead_of_overflowing() {
        let max = q(u32::MAX);
        assert_eq!(Level::EMPTY.remaining(max), u64::from(u32::MAX));
        assert_eq!(Level::EMPTY.charged(u64::MAX).units(), MAX_LEVEL);
        assert_eq!(
            Level::EMPTY.charged(u64::MAX).drained(max, u64::MAX),
            Level::EMPTY
        );
        assert_eq!(Level::EMPTY.wait_ms(max, u64::MAX), 0);
        assert_eq!(Level::EMPTY.charged(u64::MAX).wait_ms(q(1), 1), MAX_LEVEL);
        assert_eq!(
            Level::EMPTY.charged(5).refunded(u64::MAX, Level::EMPTY),
            Level::EMPTY
        );
        assert_eq!(
            Level::EMPTY
                .charged(5)
                .refunded(9, Level::EMPTY.charged(2))
                .units(),
            120_000
        );
    }
}
