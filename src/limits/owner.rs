//! The owner of returns at work: a grant whose tickets expired, or the caller's flusher, sending
//! what waits in the outbox until it is delivered.
//!
//! The loop (look, send, wait a tick, give up after a while or a few failed calls) runs off
//! the request's path with nobody to see it fail, so it is core code over the runner's
//! [`Clock`] and [`Sleep`], tested on a fake clock; the shell feeds it the isolate's credit and
//! the one call it sends, and logs how it ended.

use std::future::Future;

use super::credit::{Carry, Credit, OwnerStep, CREDIT_VALID_MS, FLUSHER_LIFE_MS, SETTLE_DELAY_MS};
use crate::retry::runner::{Clock, Sleep};

/// How often the owner of returns looks whether they are delivered.
pub const OWNER_TICK_MS: u64 = 250;

/// How many failed calls an owner takes before it stops: the object is then not answering, and
/// what is left waits for the next call (a settlement) or the end of its lease (a slot).
pub const OWNER_MAX_FAILURES: u32 = 3;

/// How long the owner of a grant's returns tries before it gives up on them (the lease of a
/// slot ends by itself). It runs under `waitUntil`, which the runtime cuts
/// [`WAIT_UNTIL_MS`](crate::plan::WAIT_UNTIL_MS) after the response: it gives up (and says so)
/// before that.
pub const OWNER_GIVES_UP_MS: u64 = 25_000;

// The owner waits out its grant first, and may be one tick and a call late on its clock.
const _: () =
    assert!(CREDIT_VALID_MS + OWNER_GIVES_UP_MS + 4 * OWNER_TICK_MS < crate::plan::WAIT_UNTIL_MS);

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

/// The isolate's credit of one caller, as an owner reaches it between its looks.
pub trait CallerCredit {
    /// Runs `f` on the caller's credit; `None` when there is none any more.
    fn with<R>(&self, f: impl FnOnce(&mut Credit) -> R) -> Option<R>;
}

/// Whose items an owner sees delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A grant whose time is up: the returns of its unused tickets, by their ids.
    Grant(Vec<u64>),
    /// The caller's flusher: every settlement deferred, which it first leaves
    /// [`SETTLE_DELAY_MS`] for another call to carry.
    Flusher,
}

/// How an owner's work ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Nothing of the owner's is left to send (or the caller's credit is gone).
    Delivered,
    /// The flusher's life is over with settlements left: the next settlement deferred becomes
    /// the flusher, and finds them.
    HandedOver,
    /// The flusher's calls failed: the settlements left wait for the next flusher.
    Left,
    /// The grant's returns were not delivered in time: `items` of them are given up (each
    /// slot ends with its lease).
    Abandoned { items: usize },
}

impl Owner {
    fn first_wait_ms(&self) -> u64 {
        match self {
            Owner::Grant(_) => 0,
            Owner::Flusher => SETTLE_DELAY_MS,
        }
    }

    fn life_ms(&self) -> u64 {
        match self {
            Owner::Grant(_) => OWNER_GIVES_UP_MS,
            Owner::Flusher => FLUSHER_LIFE_MS,
        }
    }

    fn step(&self, credit: &mut Credit, now_ms: u64) -> OwnerStep {
        match self {
            Owner::Grant(ids) => credit.outbox.owner_step(ids, now_ms),
            Owner::Flusher => credit.flush_step(now_ms),
        }
    }

    fn ended(&self, credit: &impl CallerCredit, sent: Sent) -> Ending {
        match (self, sent) {
            (_, Sent::Done) => Ending::Delivered,
            (Owner::Grant(ids), _) => match credit.with(|c| c.outbox.abandon(ids)) {
                Some(items) if items > 0 => Ending::Abandoned { items },
                _ => Ending::Delivered,
            },
            (Owner::Flusher, Sent::TimeUp) => Ending::HandedOver,
            (Owner::Flusher, Sent::GaveUp) => Ending::Left,
        }
    }
}

/// The owner's whole work: its first wait, then [`send_until_done`] over the caller's
/// `credit` for the owner's life, then what is given up. `send` makes one call with what it
/// is given, marks its items in the outbox delivered or failed, and says whether the object
/// took it.
pub async fn own<Fut>(
    clock: &impl Clock,
    sleep: &impl Sleep,
    owner: &Owner,
    credit: &impl CallerCredit,
    send: impl FnMut(Carry) -> Fut,
) -> Ending
where
    Fut: Future<Output = bool>,
{
    sleep.sleep(owner.first_wait_ms()).await;
    let step = |now| credit.with(|c| owner.step(c, now));
    let sent = send_until_done(clock, sleep, owner.life_ms(), step, send).await;
    owner.ended(credit, sent)
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

    struct Isolate(RefCell<Option<Credit>>);

    impl CallerCredit for Isolate {
        fn with<R>(&self, f: impl FnOnce(&mut Credit) -> R) -> Option<R> {
            self.0.borrow_mut().as_mut().map(f)
        }
    }

    fn roomy() -> crate::config::TierLimits {
        let n = std::num::NonZeroU32::new;
        crate::config::TierLimits {
            rpm: n(10_000),
            input_tpm: n(1_000_000),
            output_tpm: n(1_000_000),
            concurrency: n(1_000),
            quotas: Default::default(),
        }
    }

    fn reservation(lease_id: u64) -> crate::limits::Reservation {
        crate::limits::Reservation {
            lease_id,
            ..crate::limits::Reservation::NOTHING
        }
    }

    fn settled(lease_id: u64) -> crate::limits::Settled {
        crate::limits::Settled {
            reservation: reservation(lease_id),
            usage: crate::limits::Used::UNKNOWN,
            confirms: true,
            cost_micros: None,
        }
    }

    /// A credit whose grant of `tickets` tickets has expired unused; the returns' ids.
    fn expired_grant(tickets: u64) -> (Isolate, Vec<u64>) {
        let mut credit = Credit::new(roomy());
        let held: Vec<crate::limits::Ticket> = (0..tickets)
            .map(|id| crate::limits::Ticket {
                reservation: reservation(id),
                requests: 1,
            })
            .collect();
        let grant = credit.granted(&held, Vec::new(), T0, T0);
        let ids = credit.expire(grant);
        (Isolate(RefCell::new(Some(credit))), ids)
    }

    /// Runs `owner` on `isolate`, its calls taken or failing as `takes` says (then taken), as
    /// the shell marks them; how it ended, and when and with how many items each call went.
    fn own_with(owner: &Owner, isolate: &Isolate, takes: &[bool]) -> (Ending, Vec<(u64, usize)>) {
        let time = FakeTime::new();
        let takes = RefCell::new(takes.iter().copied().collect::<VecDeque<_>>());
        let calls = RefCell::new(Vec::new());
        let send = |carry: Carry| {
            let items = carry.returns.settle.len() + carry.returns.release.len();
            calls.borrow_mut().push((time.now_ms() - T0, items));
            let took = takes.borrow_mut().pop_front().unwrap_or(true);
            isolate.with(|c| {
                if took {
                    c.outbox.delivered(carry.call);
                } else {
                    c.outbox.failed(carry.call);
                }
            });
            async move { took }
        };
        let ended = block_on(own(&time, &time, owner, isolate, send));
        (ended, calls.take())
    }

    #[test]
    fn a_grants_unused_tickets_go_back_at_once_in_one_call() {
        let (isolate, ids) = expired_grant(3);
        let (ended, calls) = own_with(&Owner::Grant(ids), &isolate, &[]);
        assert_eq!(ended, Ending::Delivered);
        assert_eq!(calls, vec![(0, 3)]);
        assert_eq!(isolate.with(|c| c.outbox.take(T0 + 1)), Some(None));
    }

    #[test]
    fn a_grants_returns_that_cannot_be_delivered_are_given_up_and_counted() {
        let (isolate, ids) = expired_grant(2);
        let (ended, calls) = own_with(&Owner::Grant(ids), &isolate, &[false; 3]);
        assert_eq!(ended, Ending::Abandoned { items: 2 });
        assert_eq!(calls, vec![(0, 2), (250, 2), (500, 2)]);
        // Nothing of them is left to ride on a later call.
        assert_eq!(isolate.with(|c| c.outbox.take(T0 + 1_000)), Some(None));
    }

    #[test]
    fn the_flusher_leaves_other_calls_their_chance_first_then_sends_what_waits() {
        let mut credit = Credit::new(roomy());
        assert!(credit.defer(settled(1)));
        assert!(!credit.defer(settled(2)));
        let isolate = Isolate(RefCell::new(Some(credit)));
        let (ended, calls) = own_with(&Owner::Flusher, &isolate, &[]);
        assert_eq!(ended, Ending::Delivered);
        assert_eq!(calls, vec![(SETTLE_DELAY_MS, 2)]);
        // Done: the next settlement deferred becomes the flusher.
        assert_eq!(isolate.with(|c| c.defer(settled(3))), Some(true));
    }

    #[test]
    fn a_flusher_whose_settlements_ride_a_call_that_never_returns_hands_over() {
        use crate::limits::credit::CARRY_TIMEOUT_MS;
        // Its life ends before such a call is taken for lost.
        const { assert!(SETTLE_DELAY_MS + FLUSHER_LIFE_MS < CARRY_TIMEOUT_MS) };
        let mut credit = Credit::new(roomy());
        credit.defer(settled(1));
        assert!(credit.outbox.take(T0).is_some());
        let isolate = Isolate(RefCell::new(Some(credit)));
        let (ended, calls) = own_with(&Owner::Flusher, &isolate, &[]);
        assert_eq!(ended, Ending::HandedOver);
        assert!(calls.is_empty());
    }

    #[test]
    fn a_flusher_whose_calls_fail_leaves_the_settlements_for_the_next() {
        let mut credit = Credit::new(roomy());
        credit.defer(settled(1));
        let isolate = Isolate(RefCell::new(Some(credit)));
        let (ended, calls) = own_with(&Owner::Flusher, &isolate, &[false; 3]);
        assert_eq!(ended, Ending::Left);
        assert_eq!(calls.len(), 3);
        let left = isolate.with(|c| c.outbox.take(T0 + 1_000)).flatten();
        assert_eq!(
            left.map(|carry| carry.returns.settle),
            Some(vec![settled(1)])
        );
    }

    #[test]
    fn an_owner_whose_credit_is_gone_has_nothing_to_send() {
        let gone = Isolate(RefCell::new(None));
        for owner in [Owner::Grant(vec![0, 1]), Owner::Flusher] {
            assert_eq!(
                own_with(&owner, &gone, &[]),
                (Ending::Delivered, Vec::new())
            );
        }
    }
}
