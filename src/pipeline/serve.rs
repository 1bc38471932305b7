//! A request from its admission to its settlement, as one function over ports:
//! **admit** → **run** (attempts, fallbacks, pacing; the slot held meanwhile) → **deliver** →
//! **settle**.
//!
//! The sequence is the product: what happens to a reservation on each way a request can end
//! (refused, given up, answered, cut, abandoned) is decided here once, and run the same by the
//! Worker (Durable Objects, `fetch`, `waitUntil`), by host tests on a fake clock and by the
//! fleet simulation. Each phase is a short function of the request's context.

use std::pin::pin;

use futures_channel::oneshot;
use futures_util::future::{select, Either};

use super::ports::{Admitted, AfterAnswer, Deliver, Delivered, KeyStates, Lease, Limiter, Terms};
use super::settle::{reported, settle_admitted, Ending, Spent};
use super::{Forwarding, Intake};
use crate::error::ProxyError;
use crate::limits::prices::ModelPrice;
use crate::limits::{
    settlement_cost, settlement_usage, AdmissionRequest, Answered, Used, WAITING_LEASE_MS,
    WAITING_RENEW_EVERY_MS,
};
use crate::request::route::Metering;
use crate::retry::runner::{self, Clock, Journal, Run, Sleep, Transport};
use crate::stream::tap::{Progress, Report};
use crate::upstream::Cost;

/// The ports one request runs over. The limiter and its time go by value: they go on into the
/// settlement, which outlives the answer (the limiter as its [`Limiter::settling`]).
pub struct Ports<'p, C, S, L, K, D, A, W> {
    /// The runner's clock and sleep (a request's waits: backoff, pacing, cooldowns).
    pub clock: &'p C,
    pub sleep: &'p S,
    pub limiter: L,
    pub keys: &'p K,
    pub delivery: &'p D,
    pub after: &'p A,
    /// The limiter's time: holding a slot and watching an answer are no request's waits.
    pub off_path: W,
}

/// A request ready for its admission: what the phases before it decided.
pub struct Ready {
    pub intake: Intake,
    /// The headers of a count made while the body arrived, when it was counted so.
    pub counted: Option<Vec<(&'static str, String)>>,
    pub forwarding: Forwarding,
    /// The answer's usage is watched as it passes (see [`Intake::watches_usage`]).
    pub watches_usage: bool,
    pub started_ms: u64,
    /// The request's randomness (backoff jitter, its release slot).
    pub seed: u64,
}

/// What the client gets, and the usage its answer reports once its body has passed (`None`:
/// nothing watches it).
pub struct Served<R, W> {
    pub answer: Result<R, ProxyError>,
    pub usage: Option<UsageToCome<W>>,
}

/// Performs `ready` over `ports`: admitted by the caller's limits (a refusal is the answer and
/// nothing goes upstream), its attempts run with its slot held, the answer delivered, and an
/// admitted request's settlement handed to [`AfterAnswer`], to run once the answer's body has
/// passed. `journal` and `headers` (the caller's limits, for the answer) are the record's.
pub async fn serve<C, S, L, K, D, A, W, T>(
    ports: Ports<'_, C, S, L, K, D, A, W>,
    ready: Ready,
    transport: &mut T,
    journal: &mut Journal,
    headers: &mut Vec<(&'static str, String)>,
) -> Served<D::Response, W>
where
    C: Clock,
    S: Sleep,
    L: Limiter,
    K: KeyStates,
    D: Deliver,
    A: AfterAnswer,
    W: Sleep + 'static,
    T: Transport<Answer = D::Answer>,
{
    let Ready {
        intake,
        counted,
        mut forwarding,
        watches_usage,
        started_ms,
        seed,
    } = ready;
    let admitted = match admit(&ports.limiter, &intake, &forwarding, counted, headers).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            return Served {
                answer: Err(refused),
                usage: None,
            }
        }
    };
    let prices = std::mem::take(&mut forwarding.prices);
    let attempts = run(&ports, forwarding, (started_ms, seed), transport, journal);
    let answer = match admitted {
        Some(a) => holding(&ports, a.reservation.lease_id, attempts).await,
        None => attempts.await,
    };
    let mut delivered = match answer {
        Ok(answer) => ports.delivery.deliver(answer, watches_usage).await,
        Err(e) => Err(e),
    };
    // The answer is priced at the model that answered it: a fallback's, when one did.
    let price = prices.answering(journal.answered_by_fallback());
    let usage = settle(
        ports,
        admitted,
        (intake.provisional, price),
        delivered.as_mut().ok(),
    );
    Served {
        answer: delivered.map(|d| d.response),
        usage,
    }
}

/// The admit phase: the caller's own limits, at most one call before anything goes upstream.
/// A request the route meters fully is reserved what it may use (per minute, and against
/// its daily and monthly quotas) and takes a slot; one
/// metered by request only is counted (once: a count made while its body arrived was its
/// admission), and nothing of it is settled.
async fn admit<L: Limiter>(
    limiter: &L,
    intake: &Intake,
    forwarding: &Forwarding,
    counted: Option<Vec<(&'static str, String)>>,
    headers: &mut Vec<(&'static str, String)>,
) -> Result<Option<Admitted>, ProxyError> {
    let provisional = intake.provisional;
    match intake.metering {
        Metering::Full => {
            let Cost {
                input_tokens,
                output_tokens,
            } = forwarding.cost;
            let request = AdmissionRequest {
                input_tokens,
                output_tokens,
                lease_ms: WAITING_LEASE_MS,
                quota: forwarding.quota,
            };
            let terms = Terms {
                provisional,
                counted: counted.is_some(),
            };
            limiter.admit(request, terms, headers).await.map(Some)
        }
        Metering::RequestOnly => {
            match counted {
                Some(count_headers) => headers.extend(count_headers),
                None => limiter.admit_request_only(provisional, headers).await?,
            }
            Ok(None)
        }
        Metering::None => Ok(None),
    }
}

/// The run phase: the request's attempts through the core's runner. A request with a pool
/// answers to the upstream key's shared state for it (paced by what it costs), others (model
/// listings, files) to none; a message may fall back to other models.
async fn run<C, S, L, K, D, A, W, T>(
    ports: &Ports<'_, C, S, L, K, D, A, W>,
    forwarding: Forwarding,
    (started_ms, seed): (u64, u64),
    transport: &mut T,
    journal: &mut Journal,
) -> Result<T::Answer, ProxyError>
where
    C: Clock,
    S: Sleep,
    K: KeyStates,
    T: Transport,
{
    let Forwarding {
        policy,
        claimant,
        cost,
        pool,
        fallbacks,
        ..
    } = forwarding;
    let (shared, memory) = match pool {
        Some(pool) => {
            let (shared, memory) = ports.keys.of_pool(pool, claimant);
            (Some(shared), memory)
        }
        None => (None, std::rc::Rc::default()),
    };
    let run = Run {
        clock: ports.clock,
        sleep: ports.sleep,
        policy,
        started_ms,
        seed,
        cost,
        shared,
        memory,
    };
    runner::run_with_fallbacks(run, fallbacks, transport, journal).await
}

/// `attempts`, with the slot of `lease_id` held for as long as they run: renewed for
/// [`WAITING_LEASE_MS`] every [`WAITING_RENEW_EVERY_MS`]. If the runtime drops the request,
/// the lease soon ends by itself.
async fn holding<C, S, L, K, D, A, W, R>(
    ports: &Ports<'_, C, S, L, K, D, A, W>,
    lease_id: u64,
    attempts: impl std::future::Future<Output = Result<R, ProxyError>>,
) -> Result<R, ProxyError>
where
    L: Lease,
    W: Sleep,
{
    let hold = async {
        loop {
            ports.off_path.sleep(WAITING_RENEW_EVERY_MS).await;
            ports.limiter.renew(lease_id, WAITING_LEASE_MS).await;
        }
    };
    match select(pin!(attempts), pin!(hold)).await {
        Either::Left((answer, _)) => answer,
        Either::Right(((), _)) => Err(ProxyError::Internal("the slot holder ended".to_string())),
    }
}

/// The settle phase, once the answer is handed over: an admitted request settles after its
/// body has passed (handed to [`AfterAnswer`]), its cost at `price` (the answering model's);
/// a caller the upstream has not accepted yet confirms itself only with a successful answer.
/// The usage reported, and its cost, go to the record.
fn settle<C, S, L, K, D, A, W, R>(
    ports: Ports<'_, C, S, L, K, D, A, W>,
    admitted: Option<Admitted>,
    (provisional, price): (bool, Option<ModelPrice>),
    delivered: Option<&mut Delivered<R>>,
) -> Option<UsageToCome<W>>
where
    L: Limiter,
    A: AfterAnswer,
    W: Sleep + 'static,
{
    let Some(admitted) = admitted else {
        let (seen, progress) = delivered.and_then(|d| d.seen.take())?;
        return Some(UsageToCome::Watched(ports.off_path, seen, progress, price));
    };
    let (watched, delivered_ok) = match delivered {
        Some(d) => (d.seen.take(), (200..300).contains(&d.status)),
        None => (None, false),
    };
    let ending = Ending {
        watched,
        delivered_ok,
        confirms: !provisional || delivered_ok,
        price,
    };
    let (usage_to, usage) = oneshot::channel();
    let Ports {
        limiter, off_path, ..
    } = ports;
    let limiter = limiter.settling();
    let settlement = settle_admitted(limiter, off_path, admitted, ending, usage_to);
    ports.after.spawn(settlement);
    Some(UsageToCome::Settling(usage))
}

/// The usage an answer reports, and its cost, once its body has passed.
pub enum UsageToCome<W> {
    /// An admitted request's: told by its settlement.
    Settling(oneshot::Receiver<Spent>),
    /// A request with nothing to settle whose answer is watched (for metrics), priced at the
    /// answering model.
    Watched(W, Report, Progress, Option<ModelPrice>),
}

impl<W: Sleep> UsageToCome<W> {
    /// The usage and its cost, when they are known.
    pub async fn arrived(self) -> Spent {
        match self {
            UsageToCome::Settling(usage) => usage.await.unwrap_or((Used::UNKNOWN, None)),
            UsageToCome::Watched(time, report, progress, price) => {
                let seen = Some(reported(&time, &report).await);
                let answered = Answered::Watched {
                    seen,
                    so_far: progress.usage(),
                };
                (
                    settlement_usage(answered),
                    settlement_cost(answered, price.as_ref()),
                )
            }
        }
    }
}
