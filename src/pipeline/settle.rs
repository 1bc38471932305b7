//! An admitted request's settlement, after its answer is handed over: it waits for the tap's
//! report of the answer's body (renewing the slot as [`Renewals`] says meanwhile), settles the
//! reservation exactly once with the usage that report gives, and tells the record.
//!
//! It runs off the client's path (the Worker under `waitUntil`), over the [`Lease`] port, on the
//! limiter's own time, so it is tested on the host with a virtual clock.

use std::pin::pin;

use futures_channel::oneshot;
use futures_util::future::{select, Either};

use super::ports::{Admitted, Lease};
use crate::limits::prices::ModelPrice;
use crate::limits::{
    settlement_cost, settlement_usage, Answered, Renewals, Settled, Step, Used, CREDIT_VALID_MS,
    FIRST_RENEWAL_MS, WAITING_LEASE_MS, WAITING_RENEW_EVERY_MS, WATCH_TICK_MS,
};
use crate::retry::runner::Sleep;
use crate::stream::tap::{Progress, Report, Seen};

/// The usage an answer reports once its body has passed, and what it cost in micro-dollars
/// (`None`: unknown, see [`settlement_cost`]).
pub type Spent = (Used, Option<u64>);

/// How an admitted request's answer ended, as its settlement needs it.
pub(super) struct Ending {
    /// The tap on the answer's body, when it is watched.
    pub watched: Option<(Report, Progress)>,
    /// A successful answer reached the client.
    pub delivered_ok: bool,
    /// The caller is known to the upstream (managed, or its key was just accepted): its
    /// object may store its state.
    pub confirms: bool,
    /// The price of the model that answered (`None`: it has none).
    pub price: Option<ModelPrice>,
}

/// Settles `admitted` once its answer is over, with the usage and the cost at the answering
/// model's price; both also go to `usage_to` (nobody listens when metrics are not kept).
pub(super) async fn settle_admitted<L: Lease, W: Sleep>(
    limiter: L,
    time: W,
    admitted: Admitted,
    ending: Ending,
    usage_to: oneshot::Sender<Spent>,
) {
    let Admitted {
        reservation,
        on_credit,
    } = admitted;
    let answered = match ending.watched {
        Some((report, progress)) => {
            let lease_id = reservation.lease_id;
            let seen = watch(&limiter, &time, lease_id, &report, &progress).await;
            Answered::Watched {
                seen,
                so_far: progress.usage(),
            }
        }
        None => Answered::Unwatched {
            delivered_ok: ending.delivered_ok,
        },
    };
    let usage = settlement_usage(answered);
    let cost_micros = settlement_cost(answered, ending.price.as_ref());
    let _ = usage_to.send((usage, cost_micros));
    let settled = Settled {
        reservation,
        usage,
        confirms: ending.confirms,
        cost_micros,
    };
    limiter.settle(settled, on_credit).await;
}

// `watch` relies on it: the lease a request holds when its answer starts outlasts the
// first renewal (or the cut of a still body's lease, which comes sooner), also when the lease
// is a ticket's, granted up to `CREDIT_VALID_MS` before the request began.
const _: () = assert!(
    WAITING_LEASE_MS - WAITING_RENEW_EVERY_MS - CREDIT_VALID_MS > FIRST_RENEWAL_MS + WATCH_TICK_MS
);

/// Waits for the tap's report, looking every [`WATCH_TICK_MS`], or until the body has not
/// moved for `STALLED_BODY_MS`. The slot is renewed as [`Renewals`] says: rarely while the
/// body moves, for a few seconds only once it stands still, so the slot frees itself soon
/// even if this never returns. A report left by a dropped body wakes nothing (see
/// `stream::tap`); each tick looks for one.
async fn watch<L: Lease, W: Sleep>(
    limiter: &L,
    time: &W,
    lease_id: u64,
    report: &Report,
    progress: &Progress,
) -> Option<Seen> {
    let mut renewals = Renewals::new(progress.chunks());
    loop {
        let tick = pin!(time.sleep(WATCH_TICK_MS));
        match select(pin!(report.ended()), tick).await {
            Either::Left((seen, _)) => return Some(seen),
            Either::Right(_) if report.seen().is_some() => return report.seen(),
            Either::Right(_) => match renewals.tick(progress.chunks()) {
                Step::Wait => {}
                Step::Stalled => return None,
                Step::Renew(lease_ms) => limiter.renew(lease_id, lease_ms).await,
            },
        }
    }
}

/// The tap's report, whenever it is made: at once when the body ends as it is read, or by the
/// next tick when a drop made it (see `stream::tap`).
pub(super) async fn reported<W: Sleep>(time: &W, report: &Report) -> Seen {
    loop {
        let tick = pin!(time.sleep(WATCH_TICK_MS));
        match select(pin!(report.ended()), tick).await {
            Either::Left((seen, _)) => return seen,
            Either::Right(_) => {
                if let Some(seen) = report.seen() {
                    return seen;
                }
            }
        }
    }
}
