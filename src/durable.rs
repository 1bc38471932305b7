//! What a Durable Object's state provides, so one shell serves every object.
//!
//! Each object is load → `decide(state, now, call)` → store, and an alarm that forgets the
//! state once it is as good as a fresh one. The state, its calls, its replies and its idle
//! rule are pure core, and so is the loop around them ([`host`]): the shell gives it the
//! runtime's storage and timers, the fleet simulation a virtual clock and an in-memory store.
//! It fails closed: a state it cannot read is never replaced by a default one.

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub mod host;

/// Milliseconds since the Unix epoch, as the platform sees them.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// Sleeping for a while; a wait is not an attempt.
pub trait Sleep {
    fn sleep(&self, ms: u64) -> impl Future<Output = ()>;
}

/// The state of one kind of Durable Object.
pub trait ObjectState: Default + Serialize + DeserializeOwned {
    /// A call from the Worker.
    type Call: DeserializeOwned + Clone;
    /// The object's answer.
    type Reply: Serialize;
    /// The key the state is stored under.
    const STORAGE_KEY: &'static str;

    /// Decides one call at `now_ms` (the object's clock, ms since the Unix epoch).
    fn decide(&mut self, now_ms: u64, call: Self::Call) -> Self::Reply;

    /// Whether the state is as good as a fresh one at `now_ms` (then it is deleted).
    fn is_idle(&self, now_ms: u64) -> bool;

    /// How long after `now_ms` the alarm should look again whether the state is idle.
    fn check_idle_in_ms(&self, now_ms: u64) -> u64;

    /// Whether `call` only reads the state (the operator's view): then nothing is stored or
    /// scheduled after it, and `decide` must leave the state as it was.
    fn reads_only(_call: &Self::Call) -> bool {
        false
    }

    /// Whether the shell holds the call instead of answering `reply` now: then it looks again
    /// at the returned time with [`ObjectState::poll`], until that answers.
    fn hold_until(_reply: &Self::Reply) -> Option<u64> {
        None
    }

    /// The reply at `now_ms` to a call that was held: again one to hold, or the answer
    /// (`None`: the call is not one that is held).
    fn poll(&mut self, _now_ms: u64, _call: &Self::Call) -> Option<Self::Reply> {
        None
    }

    /// Whether the state may be written to storage after a call. A state that may not is
    /// kept in memory only (and so is forgotten when the object is evicted).
    fn should_store(&self) -> bool {
        true
    }

    /// Whether what `call` changes needs to last only as long as the object stays in memory:
    /// then nothing is written after it (it is stored with the next call that is). A restart
    /// forgets it and the state reads as it was stored before the call.
    fn memory_only(_call: &Self::Call) -> bool {
        false
    }

    /// Counts a write of the state to storage (the shell calls it after each one).
    fn stored(&mut self) {}
}

/// Whether the shell writes `state` to storage after `call` has been decided on it.
pub fn stored_after<S: ObjectState>(state: &S, call: &S::Call) -> bool {
    state.should_store() && !S::reads_only(call) && !S::memory_only(call)
}

/// The largest time or count a stored state holds: 2^53 − 1, so a state survives a round trip
/// through a JavaScript number. As a time it is the year 287 396.
pub const MAX_EXACT: u64 = (1 << 53) - 1;

/// How far ahead of `now_ms` a stored clock may be before it is taken for a clock jump
/// (otherwise a state would not move until the clock caught up with it).
pub const MAX_CLOCK_LEAD_MS: u64 = 60_000;

/// Moves a state's own clock to `now_ms`, never backwards, except when the stored clock is
/// more than [`MAX_CLOCK_LEAD_MS`] ahead: then it starts over from `now_ms`, and the answer
/// is how far it jumped back (the state decides what that means for what it holds).
pub fn advance_clock(clock_ms: &mut u64, now_ms: u64) -> Option<u64> {
    let jumped = (*clock_ms > now_ms.saturating_add(MAX_CLOCK_LEAD_MS)).then(|| *clock_ms - now_ms);
    if jumped.is_some() {
        *clock_ms = now_ms;
    }
    *clock_ms = (*clock_ms).max(now_ms);
    jumped
}

/// Whether a failed call to an object goes again: once, at once, when the runtime marks the
/// error retryable (every deploy resets the objects, and the calls in flight then fail) and
/// not overloaded (calling again would add to the overload).
#[must_use]
pub fn call_again(retryable: bool, overloaded: bool, tries: u32) -> bool {
    retryable && !overloaded && tries == 0
}

/// How the runtime marked a failed call: `(retryable, overloaded)`.
pub type Marks = (bool, bool);

/// Sends a call through `send` and sends it again per [`call_again`], reading each failure's
/// marks with `marks`. The shell's one loop around an object call, generic so a host test can
/// drive it through a simulated failure.
pub async fn send_with_retry<T, E, F, Fut>(mut send: F, marks: impl Fn(&E) -> Marks) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        match send().await {
            Ok(answer) => return Ok(answer),
            Err(failure) => {
                let (retryable, overloaded) = marks(&failure);
                if !call_again(retryable, overloaded, tries) {
                    return Err(failure);
                }
                tries += 1;
            }
        }
    }
}

/// The marks the Workers runtime sets on a failed Durable Object call (`.retryable` when the
/// object was reset, as by a deploy; `.overloaded` when it cannot keep up). Anything else,
/// an error thrown by the object's own code included, carries neither.
#[cfg(target_arch = "wasm32")]
#[must_use]
pub fn runtime_marks(error: &wasm_bindgen::JsValue) -> Marks {
    let flag = |name: &str| {
        js_sys::Reflect::get(error, &name.into())
            .ok()
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
    };
    (flag("retryable"), flag("overloaded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_reset_by_a_deploy_goes_again_once_and_an_overloaded_one_never() {
        assert!(call_again(true, false, 0));
        assert!(!call_again(true, false, 1));
        assert!(!call_again(true, true, 0));
        assert!(!call_again(false, false, 0));
    }

    /// A call whose first `failures` sends fail with `marks`, then answers; counts the sends.
    fn through_failures(failures: u32, marks: Marks) -> (Result<&'static str, Marks>, u32) {
        let sends = std::cell::Cell::new(0);
        let send = || {
            sends.set(sends.get() + 1);
            let n = sends.get();
            async move {
                if n <= failures {
                    Err(marks)
                } else {
                    Ok("answer")
                }
            }
        };
        let answer = futures_executor::block_on(send_with_retry(send, |m: &Marks| *m));
        (answer, sends.get())
    }

    #[test]
    fn an_object_reset_under_a_call_costs_one_more_send_and_the_call_succeeds() {
        assert_eq!(through_failures(1, (true, false)), (Ok("answer"), 2));
        // Reset twice in a row: the second failure is the caller's answer.
        assert_eq!(through_failures(2, (true, false)), (Err((true, false)), 2));
    }

    #[test]
    fn an_overloaded_or_unmarked_failure_is_never_sent_again() {
        assert_eq!(through_failures(1, (true, true)), (Err((true, true)), 1));
        assert_eq!(through_failures(1, (false, true)), (Err((false, true)), 1));
        assert_eq!(
            through_failures(1, (false, false)),
            (Err((false, false)), 1)
        );
        assert_eq!(through_failures(0, (false, false)), (Ok("answer"), 1));
    }

    #[test]
    fn a_clock_never_goes_back_unless_it_jumped() {
        let mut clock = 1_000;
        assert_eq!(advance_clock(&mut clock, 2_000), None);
        assert_eq!(clock, 2_000);
        // A little behind: the state keeps its own time.
        assert_eq!(advance_clock(&mut clock, 1_500), None);
        assert_eq!(clock, 2_000);
        // Far behind: a jump, by how much.
        let mut clock = 200_000;
        assert_eq!(advance_clock(&mut clock, 200_000 - MAX_CLOCK_LEAD_MS), None);
        assert_eq!(advance_clock(&mut clock, 100_000), Some(100_000));
        assert_eq!(clock, 100_000);
        let mut clock = u64::MAX;
        assert_eq!(advance_clock(&mut clock, 0), Some(u64::MAX));
    }
}
