//! The ports a request runs over, besides the runner's (`Clock`, `Sleep`, `Transport`,
//! `SharedState`): the caller's limiter, the key's shared state per pool, the client's side
//! of the answer, and the runtime's "after the answer".
//!
//! The Worker implements them with its Durable Objects, `fetch`, streams and `waitUntil`; host
//! tests and the fleet simulation with fakes on a virtual clock, so that both run the one
//! sequence of [`super::serve`].

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

use crate::error::ProxyError;
use crate::limits::{AdmissionRequest, Reservation, Settled};
use crate::retry::runner::SharedState;
use crate::stream::tap::{Progress, Report};
use crate::upstream::{Claimant, EdgeMemory};

/// The caller's limits as one request reaches them (its object, or the isolate's credit of
/// it). The admission request goes through as a value: what it carries is the object's to
/// read. A refusal is the error the client gets (a `429` carrying the caller's limit
/// headers); the headers of an admission go into `headers`, for the answer.
pub trait Limiter: Lease {
    /// What the settlement holds: the same limits, owned, since it outlives the request.
    type Settling: Lease + 'static;

    /// Reserves what `request` may use and takes a slot, leased for `request.lease_ms`.
    fn admit(
        &self,
        request: AdmissionRequest,
        terms: Terms,
        headers: &mut Vec<(&'static str, String)>,
    ) -> impl Future<Output = Result<Admitted, ProxyError>>;

    /// Counts one request against `rpm` only: nothing is reserved, nothing settled after.
    fn admit_request_only(
        &self,
        provisional: bool,
        headers: &mut Vec<(&'static str, String)>,
    ) -> impl Future<Output = Result<(), ProxyError>>;

    /// The limiter for an admitted request's settlement (made only for one).
    fn settling(self) -> Self::Settling;
}

/// An admitted request's slot and reservation, at its caller's limits.
pub trait Lease {
    /// Extends the slot of `lease_id` for `lease_ms` from now. A renewal that fails leaves
    /// the lease to end on its own.
    fn renew(&self, lease_id: u64, lease_ms: u64) -> impl Future<Output = ()>;

    /// Settles a reservation with what its answer used; `on_credit`: admitted from (or with a
    /// grant of) the isolate's credit, so the settlement may wait for a call to carry it.
    fn settle(&self, settled: Settled, on_credit: bool) -> impl Future<Output = ()>;
}

/// How a request comes to its admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    /// A passthrough caller the upstream has not accepted yet: its object stores nothing.
    pub provisional: bool,
    /// Counted against `rpm` while its body arrived: not counted again.
    pub counted: bool,
}

/// A request admitted against its caller's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub reservation: Reservation,
    /// Admitted from the isolate's credit, or with a grant of it.
    pub on_credit: bool,
}

/// The upstream key's shared state, one per pool of it.
pub trait KeyStates {
    type Shared: SharedState;
    /// The state of `pool` as `claimant` sees it, and this edge's memory of that pool.
    fn of_pool(&self, pool: String, claimant: Claimant) -> (Self::Shared, Rc<RefCell<EdgeMemory>>);
}

/// Hands an answer the runner settled on to the client.
pub trait Deliver {
    /// What an attempt brought back (the transport's answer).
    type Answer;
    /// What the client gets.
    type Response;
    /// The answer as the client gets it; `tap`: its usage is watched as it passes.
    fn deliver(
        &self,
        answer: Self::Answer,
        tap: bool,
    ) -> impl Future<Output = Result<Delivered<Self::Response>, ProxyError>>;
}

/// A delivered answer, and (when tapped) where its usage will be reported.
pub struct Delivered<R> {
    pub response: R,
    pub status: u16,
    pub seen: Option<(Report, Progress)>,
}

/// Work that runs after the answer is handed over (a settlement), while the runtime keeps the
/// request alive for it.
pub trait AfterAnswer {
    fn spawn(&self, work: impl Future<Output = ()> + 'static);
}
