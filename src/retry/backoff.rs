//! Full-jitter backoff: the wait before retry `n` is drawn uniformly from
//! `0..=min(max, base·2^n)`.
//!
//! Full jitter (rather than a fixed or "equal jitter" schedule) is what keeps a fleet of
//! proxies from retrying in lock-step against an upstream that is already overloaded. The
//! generator is seeded so that a request's waits are reproducible in tests and in the log.

/// The largest possible wait before retry `n` (0-based): `min(max_ms, base_ms·2^n)`.
///
/// Saturates instead of overflowing, so any `n` is safe.
#[must_use]
pub fn ceiling_ms(base_ms: u64, max_ms: u64, n: u32) -> u64 {
    let growth = 2u64.checked_pow(n).unwrap_or(u64::MAX);
    base_ms.saturating_mul(growth).min(max_ms)
}

/// A seedable, endless sequence of full-jitter waits in milliseconds.
///
/// The first value is the wait before the first retry (`n = 0`), the next one before the
/// second retry, and so on.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    next_retry: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff with base `base_ms`, cap `max_ms` and a deterministic random sequence for
    /// `seed`.
    #[must_use]
    pub fn new(base_ms: u64, max_ms: u64, seed: u64) -> Self {
        Self {
            base_ms,
            max_ms,
            next_retry: 0,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The retry index (`n`) the next draw is for.
    #[must_use]
    pub fn next_retry(&self) -> u32 {
        self.next_retry
    }

    /// The ceiling of the next draw: `min(max, base·2^n)` for the next `n`.
    #[must_use]
    pub fn next_ceiling_ms(&self) -> u64 {
        ceiling_ms(self.base_ms, self.max_ms, self.next_retry)
    }

    /// Draws the wait before the next retry and moves on to the one after.
    pub fn draw_ms(&mut self) -> u64 {
        let ceiling = self.next_ceiling_ms();
        self.next_retry = self.next_retry.saturating_add(1);
        self.rng.u64(0..=ceiling)
    }
}

impl Iterator for Backoff {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        Some(self.draw_ms())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ceiling_doubles_then_caps() {
        let ceilings: Vec<u64> = (0..7).map(|n| ceiling_ms(500, 8000, n)).collect();
        assert_eq!(ceilings, vec![500, 1000, 2000, 4000, 8000, 8000, 8000]);
    }

    #[test]
    fn ceiling_does_not_overflow_for_huge_exponents() {
        assert_eq!(ceiling_ms(500, 8000, 63), 8000);
        assert_eq!(ceiling_ms(500, 8000, 64), 8000);
        assert_eq!(ceiling_ms(500, 8000, u32::MAX), 8000);
        assert_eq!(ceiling_ms(u64::MAX, u64::MAX, u32::MAX), u64::MAX);
        assert_eq!(ceiling_ms(0, 8000, u32::MAX), 0);
    }

    #[test]
    fn zero_base_always_waits_zero() {
        assert!(Backoff::new(0, 8000, 7).take(50).all(|w| w == 0));
    }

    #[test]
    fn max_below_base_caps_the_first_draw() {
        assert!(Backoff::new(500, 100, 7).take(50).all(|w| w <= 100));
    }

    #[test]
    fn draws_far_past_the_exponent_range_stay_capped() {
        let mut backoff = Backoff::new(500, 8000, 3);
        for _ in 0..200 {
            let ceiling = backoff.next_ceiling_ms();
            let draw = backoff.next().unwrap_or(u64::MAX);
            assert!(draw <= ceiling && ceiling <= 8000);
        }
        assert_eq!(backoff.next_retry(), 200);
    }

    #[test]
    fn draws_cover_the_whole_range() {
        // Full jitter, not "equal jitter": small waits must occur too.
        let draws: Vec<u64> = Backoff::new(500, 8000, 1).skip(4).take(2000).collect();
        assert!(draws.iter().any(|&w| w < 1000));
        assert!(draws.iter().any(|&w| w > 7000));
    }

    proptest! {
        #[test]
        fn draw_never_exceeds_the_ceiling(
            base in 0u64..100_000,
            max in 0u64..1_000_000,
            seed in any::<u64>(),
        ) {
            for (n, wait) in Backoff::new(base, max, seed).take(80).enumerate() {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                prop_assert!(wait <= ceiling_ms(base, max, n));
                prop_assert!(wait <= max);
            }
        }

        #[test]
        fn same_seed_gives_the_same_waits(seed in any::<u64>()) {
            let a: Vec<u64> = Backoff::new(500, 8000, seed).take(20).collect();
            let b: Vec<u64> = Backoff::new(500, 8000, seed).take(20).collect();
            prop_assert_eq!(a, b);
        }

        #[test]
        fn different_seeds_give_different_waits(a in any::<u64>(), b in any::<u64>()) {
            prop_assume!(a != b);
            // 20 draws from ranges of at least 501 values: equal sequences would be a
            // 1-in-501^20 accident.
            let wa: Vec<u64> = Backoff::new(500, 8000, a).take(20).collect();
            let wb: Vec<u64> = Backoff::new(500, 8000, b).take(20).collect();
            prop_assert_ne!(wa, wb);
        }
    }
}
