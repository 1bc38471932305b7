//! What a Durable Object's state provides, so one shell serves every object.
//!
//! Each object is load → `decide(state, now, call)` → store, and an alarm that forgets the
//! state once it is as good as a fresh one. The state, its calls, its replies and its idle
//! rule are pure core; `shell::objects` does the storage, the alarm and the JSON in between,
//! and fails closed: a state it cannot read is never replaced by a default one.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The state of one kind of Durable Object.
pub trait ObjectState: Default + Serialize + DeserializeOwned {
    /// A call from the Worker.
    type Call: DeserializeOwned;
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
}
