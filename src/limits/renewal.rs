//! When a moving answer renews its concurrency slot: rarely, and in the object's memory only.
//!
//! Every renewal is a request to the caller's object, and the Workers Free plan counts those
//! (100,000 a day, 1,000 calls to Cloudflare services per invocation): a stream renewing
//! every 1.5 s spent 40 of them a minute. So a moving answer holds a long lease renewed at
//! long intervals, and shortens it to a few seconds once its body stands still: a client
//! that goes away gets its slot back within 10 s, by the settlement when the runtime drops
//! the body, by the short lease when it leaves the body hanging.

/// How often the watch of an answer looks at its body: for its end (then it settles) and
/// for whether it moved. Looking costs nothing; only [`Step::Renew`] makes a call.
pub const WATCH_TICK_MS: u64 = 1_500;

/// While an answer's body moves, its slot is renewed for this long, every
/// [`RENEW_EVERY_MS`] (a renewal that fails leaves time for the next one).
pub const STREAM_LEASE_MS: u64 = 60_000;

/// How often a moving answer renews its slot.
pub const RENEW_EVERY_MS: u64 = 25_000;

/// When an answer renews its slot first: the lease it holds when the answer starts (the
/// waiting lease) outlasts this, and most answers end before it, so they cost no renewal.
pub const FIRST_RENEWAL_MS: u64 = 6_000;

/// A body that has not moved for this long is taken for one whose client may be gone: its
/// slot is held only [`STILL_LEASE_MS`] longer unless it moves again.
pub const STILL_AFTER_MS: u64 = 3_000;

/// The lease of a body that stands still.
pub const STILL_LEASE_MS: u64 = 5_000;

/// How long a body may stand still before its settlement stops waiting for it. A client that
/// goes away does not always get its stream dropped by the runtime (a read from the upstream
/// can be left pending forever); the settlement must come anyway.
pub const STALLED_BODY_MS: u64 = 20_000;

/// The promise: a client that goes away mid-stream gets its slot back within this long.
pub const SLOT_BACK_WITHIN_MS: u64 = 10_000;

// A body that stops moving just after a tick is seen still `STILL_AFTER_MS` later, at most
// one tick late; its lease then ends `STILL_LEASE_MS` after that.
const _: () = assert!(WATCH_TICK_MS + STILL_AFTER_MS + STILL_LEASE_MS < SLOT_BACK_WITHIN_MS);
// A dropped body is seen at the next tick; its settlement frees the slot at once.
const _: () = assert!(WATCH_TICK_MS < SLOT_BACK_WITHIN_MS);
// The long lease survives one failed renewal.
const _: () = assert!(2 * RENEW_EVERY_MS + WATCH_TICK_MS < STREAM_LEASE_MS);

/// What the watch of an answer does at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Wait,
    /// Renew the slot for this many ms (one call to the object).
    Renew(u64),
    /// The body has not moved for [`STALLED_BODY_MS`]: settle with what was seen.
    Stalled,
}

/// The renewal schedule of one answer, fed the body's chunk count every [`WATCH_TICK_MS`].
#[derive(Debug, Clone)]
pub struct Renewals {
    elapsed_ms: u64,
    chunks: u64,
    still_ms: u64,
    next_renewal_ms: u64,
    /// The lease was cut to [`STILL_LEASE_MS`]: the next movement renews at once.
    shortened: bool,
}

impl Renewals {
    /// The schedule of an answer whose body has passed `chunks` chunks when it starts.
    #[must_use]
    pub fn new(chunks: u64) -> Renewals {
        Renewals {
            elapsed_ms: 0,
            chunks,
            still_ms: 0,
            next_renewal_ms: FIRST_RENEWAL_MS,
            shortened: false,
        }
    }

    /// One tick, [`WATCH_TICK_MS`] after the last, with the body at `chunks` chunks.
    pub fn tick(&mut self, chunks: u64) -> Step {
        self.elapsed_ms = self.elapsed_ms.saturating_add(WATCH_TICK_MS);
        if chunks != self.chunks {
            self.chunks = chunks;
            self.still_ms = 0;
            if self.shortened || self.elapsed_ms >= self.next_renewal_ms {
                self.shortened = false;
                self.next_renewal_ms = self.elapsed_ms.saturating_add(RENEW_EVERY_MS);
                return Step::Renew(STREAM_LEASE_MS);
            }
            return Step::Wait;
        }
        self.still_ms = self.still_ms.saturating_add(WATCH_TICK_MS);
        if self.still_ms >= STALLED_BODY_MS {
            return Step::Stalled;
        }
        if !self.shortened && self.still_ms >= STILL_AFTER_MS {
            self.shortened = true;
            return Step::Renew(STILL_LEASE_MS);
        }
        Step::Wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The renewals of an answer whose body moves at every tick for `seconds`.
    fn renewals_of_moving_stream(seconds: u64) -> u64 {
        let mut schedule = Renewals::new(0);
        let ticks = seconds * 1_000 / WATCH_TICK_MS;
        (1..=ticks)
            .filter(|&chunks| matches!(schedule.tick(chunks), Step::Renew(_)))
            .count() as u64
    }

    /// Object calls of a streamed answer: its admission, its renewals, its settlement.
    fn object_calls_of_moving_stream(seconds: u64) -> u64 {
        1 + renewals_of_moving_stream(seconds) + 1
    }

    #[test]
    fn a_minute_of_streaming_renews_three_times_not_forty() {
        // Renewing every 1.5 s made it 40 (42 calls with admission and settlement).
        assert_eq!(renewals_of_moving_stream(60), 3);
        assert_eq!(object_calls_of_moving_stream(60), 5);
        // Free plan: 100,000 object requests a day are 20,000 such streams, not ~2,400.
        assert_eq!(100_000 / object_calls_of_moving_stream(60), 20_000);
    }

    #[test]
    fn short_answers_renew_nothing() {
        assert_eq!(renewals_of_moving_stream(5), 0);
    }

    #[test]
    fn a_long_stream_stays_far_within_a_free_invocations_service_calls() {
        // 1,000 calls to Cloudflare services per invocation: 1.5 s renewals ran out after
        // 25 minutes; now a 6-hour stream uses fewer than 900.
        assert!(object_calls_of_moving_stream(25 * 60) <= 62);
        assert!(object_calls_of_moving_stream(6 * 3_600) < 900);
    }

    #[test]
    fn renewals_come_at_most_every_renewal_interval_and_before_the_lease_ends() {
        let mut schedule = Renewals::new(0);
        let mut last = 0;
        for tick in 1..=2_000u64 {
            let now = tick * WATCH_TICK_MS;
            if let Step::Renew(lease) = schedule.tick(tick) {
                assert_eq!(lease, STREAM_LEASE_MS);
                if last > 0 {
                    assert!(now - last >= RENEW_EVERY_MS, "{now} {last}");
                    assert!(now - last + WATCH_TICK_MS < STREAM_LEASE_MS);
                } else {
                    assert!((FIRST_RENEWAL_MS..FIRST_RENEWAL_MS + WATCH_TICK_MS).contains(&now));
                }
                last = now;
            }
        }
    }

    #[test]
    fn a_body_that_stops_holds_its_slot_a_few_seconds_more_only() {
        let mut schedule = Renewals::new(0);
        let mut chunks = 0;
        let mut lease_ends = 0;
        let mut now = 0;
        // Moves for 40 s.
        while now < 40_000 {
            now += WATCH_TICK_MS;
            chunks += 1;
            if let Step::Renew(lease) = schedule.tick(chunks) {
                lease_ends = now + lease;
            }
        }
        let stopped = now;
        // Then stands still (a client gone, the runtime leaving the body hanging).
        let stalled = loop {
            now += WATCH_TICK_MS;
            match schedule.tick(chunks) {
                Step::Renew(lease) => {
                    assert_eq!(lease, STILL_LEASE_MS);
                    lease_ends = now + lease;
                }
                Step::Stalled => break now,
                Step::Wait => {}
            }
        };
        assert!(
            lease_ends - stopped < SLOT_BACK_WITHIN_MS,
            "{lease_ends} {stopped}"
        );
        assert!(stalled - stopped >= STALLED_BODY_MS);
        assert!(stalled - stopped < STALLED_BODY_MS + WATCH_TICK_MS);
    }

    #[test]
    fn a_pause_costs_two_calls_and_the_stream_goes_on_with_its_long_lease() {
        let mut schedule = Renewals::new(0);
        let mut steps = Vec::new();
        for chunks in 1..=10 {
            steps.push(schedule.tick(chunks));
        }
        // 4.5 s without a chunk.
        for _ in 0..3 {
            steps.push(schedule.tick(10));
        }
        steps.push(schedule.tick(11));
        let renewals: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Renew(lease) => Some(*lease),
                _ => None,
            })
            .collect();
        assert_eq!(renewals, [STREAM_LEASE_MS, STILL_LEASE_MS, STREAM_LEASE_MS]);
    }
}
