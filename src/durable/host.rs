//! The one loop of a Durable Object, for every kind of state: load once, `decide` on the
//! state in memory, hold a call while the state says, store after the calls that change what
//! lasts, arm the alarm, and forget the state once it is idle.
//!
//! It is generic over the clock, the sleep and the storage, so the shell runs it with the
//! runtime's (`shell::objects`) and the fleet simulation with a virtual clock and an
//! in-memory store that takes a simulated time to write: both run this very code. Trouble in
//! storage fails closed: a read that fails or a stored state that does not decode answers
//! [`Trouble::Unreadable`] and never lets a default state overwrite the real one.

use std::cell::{Cell, Ref, RefCell};
use std::future::Future;

use super::{stored_after, Clock, ObjectState, Sleep};

/// An object's storage: one string per key, and the alarm.
pub trait Storage {
    /// The storage's own error (the runtime's, handed back to it as it came).
    type Error: std::fmt::Display;

    fn get(&self, key: &'static str) -> impl Future<Output = Result<Option<String>, Self::Error>>;
    fn put(
        &self,
        key: &'static str,
        value: String,
    ) -> impl Future<Output = Result<(), Self::Error>>;
    fn delete_all(&self) -> impl Future<Output = Result<(), Self::Error>>;
    /// Sets the alarm for `at_ms` (replacing one set before); whether it was set.
    fn set_alarm(&self, at_ms: u64) -> impl Future<Output = bool>;
}

/// Why a call or an alarm was not carried through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trouble<E> {
    /// The state cannot be read (storage failed, or what it holds does not decode) or
    /// encoded: the call is answered `503` and nothing is stored.
    Unreadable(String),
    /// Storage refused a write or a delete: the event fails with the storage's error.
    Storage(E),
}

/// One object's state in memory, loaded once per object lifetime, and whether its alarm is
/// set (so calls need not set it each time).
pub struct Host<S> {
    slot: RefCell<Option<S>>,
    alarm_set: Cell<bool>,
}

impl<S> Default for Host<S> {
    fn default() -> Self {
        Host {
            slot: RefCell::new(None),
            alarm_set: Cell::new(false),
        }
    }
}

impl<S: ObjectState> Host<S> {
    /// One call: decided synchronously on the loaded state (no other event can interleave
    /// between reading and updating), held while the reply says, stored, answered. `answer`
    /// turns the reply into what is sent back (`None`: it cannot be, then nothing is stored).
    pub async fn call<T, St: Storage>(
        &self,
        (clock, sleep): (&impl Clock, &impl Sleep),
        storage: &St,
        call: S::Call,
        answer: impl FnOnce(S::Reply) -> Option<T>,
    ) -> Result<T, Trouble<St::Error>> {
        self.load(storage).await?;
        let mut now = clock.now_ms();
        let kept = call.clone();
        let mut reply = self.with_state(|state| state.decide(now, call))?;
        // A held call (a request waiting its fair turn) is answered when its turn comes: the
        // object looks again when the state says, with no call from the edge.
        while let Some(wake) = S::hold_until(&reply).filter(|&wake| wake > now) {
            sleep.sleep(wake - now).await;
            now = clock.now_ms();
            match self.with_state::<_, St::Error>(|state| state.poll(now, &kept)) {
                Ok(Some(next)) => reply = next,
                _ => break,
            }
        }
        let (stored, check_in) = self.with_state(|state| {
            // A state that may not be stored yet stays in memory only: no write, no alarm;
            // nor after a call that only read it or whose change lasts in memory only.
            let stored = stored_after(&*state, &kept).then(|| serde_json::to_string(&*state));
            (stored.transpose(), state.check_idle_in_ms(now))
        })?;
        let (Some(answer), Ok(stored)) = (answer(reply), stored) else {
            return Err(Trouble::Unreadable("state not encodable".to_string()));
        };
        if let Some(stored) = stored {
            storage
                .put(S::STORAGE_KEY, stored)
                .await
                .map_err(Trouble::Storage)?;
            if let Some(state) = self.slot.borrow_mut().as_mut() {
                state.stored();
            }
            if !self.alarm_set.get() {
                self.arm(storage, now.saturating_add(check_in)).await;
            }
        }
        Ok(answer)
    }

    /// The alarm: forgets the state once it is idle (storage included); otherwise looks again
    /// later. A state that cannot be read is left as it is (nothing deleted or overwritten).
    pub async fn alarm<St: Storage>(
        &self,
        clock: &impl Clock,
        storage: &St,
    ) -> Result<(), Trouble<St::Error>> {
        self.alarm_set.set(false);
        self.load(storage).await?;
        let now = clock.now_ms();
        let (idle, check_in) = match self.slot.borrow().as_ref() {
            Some(state) => (state.is_idle(now), state.check_idle_in_ms(now)),
            None => (true, 0),
        };
        if idle {
            storage.delete_all().await.map_err(Trouble::Storage)?;
            *self.slot.borrow_mut() = None;
        } else {
            self.arm(storage, now.saturating_add(check_in)).await;
        }
        Ok(())
    }

    /// The state in memory, if it is loaded (for a look from outside the loop).
    pub fn in_memory(&self) -> Option<Ref<'_, S>> {
        Ref::filter_map(self.slot.borrow(), Option::as_ref).ok()
    }

    async fn arm(&self, storage: &impl Storage, at_ms: u64) {
        if storage.set_alarm(at_ms).await {
            self.alarm_set.set(true);
        }
    }

    fn with_state<R, E>(&self, f: impl FnOnce(&mut S) -> R) -> Result<R, Trouble<E>> {
        let mut slot = self.slot.borrow_mut();
        let state = slot
            .as_mut()
            .ok_or_else(|| Trouble::Unreadable("state not loaded".to_string()))?;
        Ok(f(state))
    }

    /// Loads the state once per object lifetime (a fresh one when nothing is stored); it
    /// stays in memory afterwards, so every later event decides without a read.
    async fn load<St: Storage>(&self, storage: &St) -> Result<(), Trouble<St::Error>> {
        if self.slot.borrow().is_some() {
            return Ok(());
        }
        let stored = storage
            .get(S::STORAGE_KEY)
            .await
            .map_err(|e| Trouble::Unreadable(format!("storage read failed: {e}")))?;
        let state = match stored {
            Some(text) => serde_json::from_str::<S>(&text)
                .map_err(|e| Trouble::Unreadable(format!("stored state does not decode: {e}")))?,
            None => S::default(),
        };
        let mut slot = self.slot.borrow_mut();
        // Another event may have loaded it while this one awaited storage.
        if slot.is_none() {
            *slot = Some(state);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
