//! Virtual time for host tests: a clock that only moves when every task is waiting, and an
//! executor that runs many requests of the production runner concurrently on it.
//!
//! A fleet simulation spawns each request as a task; tasks sleep on [`VirtualTime`], and
//! [`VirtualTime::run`] advances the clock to the next timer whenever no task can make
//! progress. Runs are deterministic: timers due at the same instant fire in the order they
//! were set.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_executor::LocalPool;
use futures_util::task::LocalSpawnExt;

use crate::retry::runner::{Clock, Sleep};

/// A shared virtual clock with its timers.
#[derive(Default)]
pub struct VirtualTime {
    now: Cell<u64>,
    order: Cell<u64>,
    timers: RefCell<BinaryHeap<Reverse<(u64, u64)>>>,
    /// The waker of each pending timer, by its order (a fleet holds thousands).
    wakers: RefCell<HashMap<u64, Waker>>,
}

impl VirtualTime {
    pub fn starting_at(now_ms: u64) -> Rc<VirtualTime> {
        let time = VirtualTime::default();
        time.now.set(now_ms);
        Rc::new(time)
    }

    /// Sleeps until `at_ms` (at once if it has passed).
    pub fn until(self: &Rc<Self>, at_ms: u64) -> Sleeping {
        Sleeping {
            time: self.clone(),
            at_ms,
            timer: None,
        }
    }

    /// Runs every task to its end, advancing the clock whenever all of them wait.
    pub fn run(self: &Rc<Self>, tasks: Vec<Pin<Box<dyn Future<Output = ()>>>>) {
        let mut pool = LocalPool::new();
        let spawner = pool.spawner();
        for task in tasks {
            // A local pool only refuses a spawn once it has shut down.
            let _ = spawner.spawn_local(task);
        }
        loop {
            pool.run_until_stalled();
            let Some(Reverse((at, order))) = self.timers.borrow_mut().pop() else {
                return;
            };
            self.now.set(self.now.get().max(at));
            let waker = self.wakers.borrow_mut().remove(&order);
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl Clock for Rc<VirtualTime> {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
}

impl Sleep for Rc<VirtualTime> {
    fn sleep(&self, ms: u64) -> impl Future<Output = ()> {
        self.until(self.now.get().saturating_add(ms))
    }
}

/// A sleep on virtual time.
pub struct Sleeping {
    time: Rc<VirtualTime>,
    at_ms: u64,
    timer: Option<u64>,
}

impl Future for Sleeping {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.time.now.get() >= self.at_ms {
            return Poll::Ready(());
        }
        let order = match self.timer {
            Some(order) => order,
            None => {
                let order = self.time.order.get() + 1;
                self.time.order.set(order);
                self.time
                    .timers
                    .borrow_mut()
                    .push(Reverse((self.at_ms, order)));
                self.timer = Some(order);
                order
            }
        };
        self.time
            .wakers
            .borrow_mut()
            .insert(order, cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_interleave_in_virtual_time() {
        let time = VirtualTime::starting_at(1_000);
        let log = Rc::new(RefCell::new(Vec::new()));
        let task = |name: &'static str, first: u64, second: u64| {
            let (time, log) = (time.clone(), log.clone());
            Box::pin(async move {
                time.sleep(first).await;
                log.borrow_mut().push((name, time.now_ms()));
                time.sleep(second).await;
                log.borrow_mut().push((name, time.now_ms()));
            }) as Pin<Box<dyn Future<Output = ()>>>
        };
        time.run(vec![task("a", 30, 30), task("b", 10, 100), task("c", 0, 5)]);
        assert_eq!(
            *log.borrow(),
            [
                ("c", 1_000),
                ("c", 1_005),
                ("b", 1_010),
                ("a", 1_030),
                ("a", 1_060),
                ("b", 1_110)
            ]
        );
    }
}
