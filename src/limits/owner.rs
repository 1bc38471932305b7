//! The owner of returns at work: a grant whose tickets expired, or the caller's flusher, sending
//! what waits in the outbox until it is delivered.
//!
//! The loop (look, send, wait a tick, give up after a while or a few failed calls) runs off
//! the request's path with nobody to see it fail, so it is core code over the runner's
//! [`Clock`] and [`Sleep`], tested on a fake clock; the shell feeds it the one call it sends.

use std::future::Future;

use super::credit::{Carry, OwnerStep};
use crate::retry::runner::{Clock, Sleep};

/// How often the owner of returns looks whether they are delivered.
pub const OWNER_TICK_MS: u64 = 250;

/// How many failed calls an owner takes before it stops: the object is then not answering, and
/// what is left waits for the next call (a settlement) or the end of its lease (a slot).
pub const OWNER_MAX_FAILURES: u32 = 3;

/// How an owner's sending ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Nothing is left to send.
    Done,
    /// Time ran out while something was left to send.
    TimeUp,
    /// [`OWNER_MAX_FAILURES`] calls failed.
    GaveUp,
}

/// Sends what `step` says at each look (`None`: the credit is gone, nothing is left), at once
/// again after a call the object took, else every [`OWNER_TICK_MS`]; for at most `life_ms`
/// from the start, or until [`OWNER_MAX_FAILURES`] calls failed. `send` makes one call with
/// what it is given and says whether the object took it.
pub async fn send_until_done<Fut>(
    clock: &impl Clock,
    sleep: &impl Sleep,
    life_ms: u64,
    mut step: impl FnMut(u64) -> Option<OwnerStep>,
    mut send: impl FnMut(Carry) -> Fut,
) -> Sent
where
    Fut: Future<Output = bool>,
{
    let started = clock.now_ms();
    let mut failures = 0;
    loop {
        match step(clock.now_ms()) {
            None | Some(OwnerStep::Done) => return Sent::Done,
            Some(OwnerStep::Wait) => {}
            Some(OwnerStep::Send(carry)) => {
                if send(carry).await {
                    continue;
                }
                failures += 1;
            }
        }
        if failures >= OWNER_MAX_FAILURES {
            return Sent::GaveUp;
        }
        if clock.now_ms().saturating_sub(started) >= life_ms {
            return Sent::TimeUp;
        }
        sleep.sleep(OWNER_TICK_MS).await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    use super::*;
    use crate::limits::Returns;
    use futures_executor::block_on;

    const T0: u64 = 1_764_000_000_000;

    /// A clock whose sleeps return at once, moving it on; it counts them.
    struct FakeTime {
        now: Cell<u64>,
        sleeps: Cell<u32>,
    }

    impl FakeTime {
        fn new() -> FakeTime {
            FakeTime {
                now: Cell::new(T0),
                sleeps: Cell::new(0),
            }
        }
    }

    impl Clock for FakeTime {
        fn now_ms(&self) -> u64 {
            self.now.get()
        }
    }

    impl Sleep for FakeTime {
        async fn sleep(&self, ms: u64) {
            self.now.set(self.now.get() + ms);
            self.sleeps.set(self.sleeps.get() + 1);
        }
    }

    fn carry(call: u64) -> Carry {
        Carry {
            call,
            returns: Returns::default(),
        }
    }

    /// Runs the owner over scripted steps (then `Done`) and scripted call results (then
    /// success), each call taking `call_ms`; what it ended with, the times it looked at and
    /// the calls it sent.
    fn run(
        life_ms: u64,
        steps: &[Option<OwnerStep>],
        calls: &[bool],
        call_ms: u64,
    ) -> (Sent, Vec<u64>, Vec<u64>, u32) {
        let time = FakeTime::new();
        let steps = RefCell::new(steps.iter().cloned().collect::<VecDeque<_>>());
        let calls = RefCell::new(calls.iter().copied().collect::<VecDeque<_>>());
        let looked = RefCell::new(Vec::new());
        let sent = RefCell::new(Vec::new());
        let step = |now| {
            looked.borrow_mut().push(now - T0);
            steps
                .borrow_mut()
                .pop_front()
                .unwrap_or(Some(OwnerStep::Done))
        };
        let send = |carry: Carry| {
            sent.borrow_mut().push(carry.call);
            time.now.set(time.now.get() + call_ms);
            let took = calls.borrow_mut().pop_front().unwrap_or(true);
            async move { took }
        };
        let ended = block_on(send_until_done(&time, &time, life_ms, step, send));
        (ended, looked.take(), sent.take(), time.sleeps.get())
    }

    const WAIT: Option<OwnerStep> = Some(OwnerStep::Wait);

    fn send(call: u64) -> Option<OwnerStep> {
        Some(OwnerStep::Send(carry(call)))
    }

    #[test]
    fn an_owner_looks_every_tick_while_its_returns_are_on_their_way() {
        let (ended, looked, sent, sleeps) = run(10_000, &[WAIT, WAIT, WAIT], &[], 0);
        assert_eq!(ended, Sent::Done);
        assert_eq!(looked, vec![0, 250, 500, 750]);
        assert!(sent.is_empty());
        assert_eq!(sleeps, 3);
        // A credit that is gone leaves nothing to send.
        let (ended, looked, _, sleeps) = run(10_000, &[WAIT, None, WAIT], &[], 0);
        assert_eq!((ended, looked, sleeps), (Sent::Done, vec![0, 250], 1));
    }

    #[test]
    fn a_call_the_object_took_is_followed_by_another_look_at_once() {
        let (ended, looked, sent, sleeps) = run(10_000, &[send(1), send(2), WAIT], &[], 40);
        assert_eq!(ended, Sent::Done);
        assert_eq!(sent, vec![1, 2]);
        // The looks after the calls come as soon as each call is back.
        assert_eq!(looked, vec![0, 40, 80, 330]);
        assert_eq!(sleeps, 1);
    }

    #[test]
    fn three_failed_calls_give_up_and_failures_are_never_forgiven() {
        let steps = [send(1), send(2), send(3), send(4), send(5)];
        let (ended, looked, sent, sleeps) = run(10_000, &steps, &[false, false, false], 0);
        assert_eq!(ended, Sent::GaveUp);
        assert_eq!(sent, vec![1, 2, 3]);
        assert_eq!(looked, vec![0, 250, 500]);
        assert_eq!(sleeps, 2);
        // A call the object took in between does not reset the count.
        let (ended, _, sent, _) = run(10_000, &steps, &[false, true, false, false], 0);
        assert_eq!(ended, Sent::GaveUp);
        assert_eq!(sent, vec![1, 2, 3, 4]);
        // Two failures and then nothing to send: done.
        let (ended, _, sent, _) = run(10_000, &steps[..2], &[false, false], 0);
        assert_eq!((ended, sent), (Sent::Done, vec![1, 2]));
    }

    #[test]
    fn an_owner_stops_once_its_life_is_over_with_something_left() {
        let waits = vec![WAIT; 100];
        let (ended, looked, _, sleeps) = run(1_000, &waits, &[], 0);
        assert_eq!(ended, Sent::TimeUp);
        // It looks at the start and every tick up to its life, not after.
        assert_eq!(looked, vec![0, 250, 500, 750, 1_000]);
        assert_eq!(sleeps, 4);
        // Time spent in failed calls counts too.
        let (ended, _, sent, _) = run(1_000, &[send(1), send(2)], &[false, false], 1_000);
        assert_eq!((ended, sent), (Sent::TimeUp, vec![1]));
    }
}
