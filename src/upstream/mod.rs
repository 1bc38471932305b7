//! What every request on one upstream key knows about trouble upstream: the pure core of the
//! key's Durable Object.
//!
//! Retrying inside one request ([`crate::retry`]) is not enough during an outage: every edge
//! retries on its own, so a struggling upstream sees its load multiplied just when it sheds
//! it. One object per upstream key, shared by every edge, turns the failures each request
//! sees into knowledge all of them use. The object loads an [`UpstreamState`], calls one
//! method with an [`OutagePolicy`] and the time (`u64` ms since the Unix epoch, the
//! object's own clock), and stores it again; randomness comes from a seed passed in.
//!
//! A request asks [`UpstreamState::before_attempt`] before each attempt and gets a [`Gate`]:
//! go, wait until a given time and ask again (waiting is not an attempt), or answer the
//! client now. It reports each attempt with [`UpstreamState::after_attempt`].
//!
//! - **Cooldown.** A `429` with a retry-after puts the key in cooldown: requests wait it out
//!   if it ends before their deadline (resuming spread over a short jitter) or are answered
//!   at once with the time left, instead of hitting the upstream again.
//! - **Overload, per model.** A few consecutive overloaded answers mark the model
//!   overloaded. Then only a *probe* goes out, one at a time, at jittered intervals that
//!   grow with each failed probe up to a cap; a probe whose report never comes loses its
//!   slot when its lease ends. Every other request waits within its budget, calling again
//!   every poll period, and is refused with a `Retry-After` near the next probe once its
//!   deadline cannot be met. When a request gets through, the model *recovers*: each waiting
//!   request has a release slot drawn from its seed in a window sized by the number of
//!   waiters (estimated from how many wait answers a poll period sees), with a slow-start
//!   shape, so the upstream sees a trickle before the bulk, not a thundering herd. During an
//!   outage the upstream sees little more than probes, and the requests caught in it go out
//!   as soon as one succeeds.
//! - **Retry budget.** As a last guard, retries on the key stay within a share of its
//!   requests over a sliding window of ten buckets, with a floor, in exact integers.
//!
//! Nothing in the state names a request: waiters are counts and timestamps that expire, so a
//! client that goes away simply stops calling and nothing leaks or blocks for ever. The state
//! is bounded (at most [`OutagePolicy::max_models`] pools; a pool in trouble is never forgotten
//! to make room, pools that never answered a `2xx` are forgotten first, and only the pool's own
//! answers make it remembered, so made-up model names cannot push real pools out) and every
//! stored number stays below 2^53 ([`MAX_STORED_MS`]).

mod budget;
mod draw;
mod edge;
mod health;
mod key_state;
mod key_status;
mod object;
mod outage_policy;
mod pace;
mod pool;
mod share;
mod stored;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod share_properties;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;

pub use budget::BudgetWindow;
pub use edge::{EdgeMemories, EdgeMemory, Refusal};
pub use health::MAX_MODEL_NAME_BYTES;
pub use key_state::{
    AttemptReport, Change, Gate, ModelPhase, ModelSnapshot, ProbeTicket, RefuseReason, Reply,
    Snapshot, UpstreamState, WaitReason, MAX_CLOCK_LEAD_MS, MAX_COOLDOWN_MS,
};
pub use key_status::{HeldBack, KeyStatus, PoolStatus, ProbeStatus};
pub use object::{UpstreamCall, UpstreamReply};
pub use outage_policy::OutagePolicy;
pub use pace::{
    Cost, KeyLimits, LimitDimension, LimitOutlook, Observed, Pace, PaceOutlook, PacePolicy,
    PaceReason, SendTime, NEAR_PERCENT,
};
pub use pool::{family, pool_of};
pub use share::{
    CallerShare, Claimant, Priority, HORIZON_MS, MAX_HOLD_MS, MAX_WAITING, MAX_WEIGHT,
};
pub use stored::MAX_STORED_MS;
