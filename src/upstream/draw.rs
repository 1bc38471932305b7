//! Seeded jitter and release slots.
//!
//! Every random choice is drawn from the caller's seed mixed with the time and a purpose, so
//! a decision is reproducible from its inputs, and two requests deciding at the same
//! millisecond still draw differently.

/// What a draw is for; mixed into the seed so that draws for different purposes are
/// independent.
#[derive(Debug, Clone, Copy)]
pub(super) enum Purpose {
    WaitPoll,
    RetryAfter,
    NextProbe,
    CooldownSpread,
    ReleaseSlot,
}

/// The splitmix64 finalizer: a bijection on `u64` that scrambles every bit.
pub(super) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A generator for one decision.
pub(super) fn rng(seed: u64, at_ms: u64, purpose: Purpose) -> fastrand::Rng {
    fastrand::Rng::with_seed(mix(seed ^ mix(at_ms ^ mix(purpose as u64))))
}

/// A draw from `[ceiling/2, ceiling]`.
pub(super) fn half_jitter(rng: &mut fastrand::Rng, ceiling: u64) -> u64 {
    rng.u64(ceiling / 2..=ceiling)
}

/// Where in a release window of `window_ms` the request with `seed` goes out, for the
/// recovery that began at `since_ms`: `window · √u` for a uniform `u` in `[0, 1)`.
///
/// The same request (same seed) keeps its slot for the whole recovery, so it can be told to
/// come back at it and find it open. The square root makes the release a slow start: the
/// share released by time `x·window` is `x²`, a quarter by mid-window, so the recovering
/// upstream sees a trickle first and the bulk only as it keeps answering.
pub(super) fn release_offset_ms(window_ms: u64, seed: u64, since_ms: u64) -> u64 {
    let u = mix(seed ^ mix(since_ms ^ mix(Purpose::ReleaseSlot as u64)));
    // isqrt(u) < 2^32, so the product stays below 2^96 and the shift below 2^64.
    let scaled = u128::from(window_ms).saturating_mul(u128::from(u.isqrt())) >> 32;
    u64::try_from(scaled).unwrap_or(window_ms).min(window_ms)
}

/// Where in a release window of `window_ms` a request goes out whose deadline is
/// `from_first_ms` after the earliest of the waiters', their deadlines spanning `span_ms`:
/// in deadline order, the span mapped linearly onto the window. A request whose deadline is
/// later than every waiter's (it came during the release) goes after them at the same pace.
pub(super) fn deadline_offset_ms(window_ms: u64, from_first_ms: u64, span_ms: u64) -> u64 {
    let scaled = u128::from(window_ms).saturating_mul(u128::from(from_first_ms))
        / u128::from(span_ms.max(1));
    u64::try_from(scaled).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_offsets_stay_in_the_window_and_start_slowly() {
        let window = 4_000;
        let offsets: Vec<u64> = (0..10_000u64)
            .map(|seed| release_offset_ms(window, seed, 77))
            .collect();
        assert!(offsets.iter().all(|&o| o <= window));
        let first_half = offsets.iter().filter(|&&o| o < window / 2).count();
        // x² at one half: a quarter, give or take sampling noise.
        assert!((2_200..2_800).contains(&first_half), "{first_half}");
        assert_eq!(
            release_offset_ms(window, 5, 77),
            release_offset_ms(window, 5, 77)
        );
        assert_eq!(release_offset_ms(0, 5, 77), 0);
        // No overflow at the extremes.
        let _ = release_offset_ms(u64::MAX, u64::MAX, u64::MAX);
    }

    #[test]
    fn half_jitter_bounds() {
        let mut rng = rng(1, 2, Purpose::NextProbe);
        for _ in 0..1_000 {
            let d = half_jitter(&mut rng, 1_000);
            assert!((500..=1_000).contains(&d));
        }
        assert_eq!(half_jitter(&mut rng, 0), 0);
        assert!(half_jitter(&mut rng, u64::MAX) >= u64::MAX / 2);
    }
}
