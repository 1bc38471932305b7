//! The one request loop: attempts, the shared upstream state around them, the sleeps between
//! them, and the answer when they stop.
//!
//! It is generic over the clock, sleeping, the transport and the shared state, so the Worker
//! (`Date.now()`, a timer, `Fetch`, the upstream key's Durable Object) and the host fleet
//! simulation (a virtual clock, a simulated upstream, an in-memory shared state) run this very
//! code. Every decision it acts on is made elsewhere in the core: [`classify`] and the
//! [`Retrier`] decide retries, the shared state decides go / wait / refuse, the
//! [`EdgeMemory`] decides when the shared state is worth asking, and [`super::fallback`]
//! decides when a request leaves an overloaded model for the next of its fallbacks (the same
//! loop then goes on for that model, before any byte has reached the client).

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::rc::Rc;

use super::classify::{classify, Cause, Outcome};
use super::fallback::{self, FallbackRecord, Fallbacks, Tried, Why};
use super::policy::{AfterAttempt, GiveUp, Retrier, RetryPolicy, StopReason};
pub use super::stop::Stop;
use crate::error::ProxyError;
use crate::upstream::{
    AttemptReport, Cost, EdgeMemory, Gate, KeyLimits, PaceReason, ProbeTicket, Refusal,
    RefuseReason, Reply, WaitReason,
};

/// The platform's time, shared with the object loop ([`crate::durable::host`]).
pub use crate::durable::{Clock, Sleep};

/// One attempt against the upstream.
pub trait Transport {
    /// What an attempt brings back that can be delivered to the client.
    type Answer;
    /// Sends one attempt, allowing it `timeout_ms` until response headers (streaming: the
    /// first SSE event). The answer comes with the outcome when there is one.
    fn attempt(&mut self, timeout_ms: u64)
        -> impl Future<Output = (Outcome, Option<Self::Answer>)>;

    /// What the last attempt's answer said of the key's own limits (its
    /// `anthropic-ratelimit-*` headers); nothing by default.
    fn key_limits(&self) -> KeyLimits {
        KeyLimits::default()
    }

    /// Sends the following attempts for `model` instead, with only the body's top-level
    /// `model` rewritten; `false` when this transport cannot (the request then does not fall
    /// back).
    fn switch_model(&mut self, _model: &str) -> bool {
        false
    }
}

/// The shared upstream state could not be asked (it is a guard, not a gate: the request
/// then goes on under its own retry policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable(pub String);

/// A question to the shared state before an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub is_retry: bool,
    pub deadline_ms: u64,
    /// The same for every call of one request (its release slot is drawn from it).
    pub request_seed: u64,
    /// First attempts this edge sent without asking since it last called.
    pub unreported: u32,
    /// Successes this edge did not tell since it last called.
    pub unreported_served: u32,
    /// What the request costs the key's buckets.
    pub cost: Cost,
    /// When the edge asked (its clock): the object takes the call's way there as the way
    /// back, to know when the edge sends what it answers.
    pub asked_ms: u64,
}

/// What the shared state is told after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tell {
    pub report: AttemptReport,
    pub unreported: u32,
    pub unreported_served: u32,
    /// The key's limits as the answer reported them.
    pub limits: KeyLimits,
    /// What the request costs the key's buckets.
    pub cost: Cost,
}

/// The upstream key's shared state, as one request sees it (for one model).
pub trait SharedState: Sized {
    fn before(&mut self, ask: Ask) -> impl Future<Output = Result<Gate, Unreachable>>;
    fn after(&mut self, tell: Tell) -> impl Future<Output = ()>;

    /// The same key's state for another model (a fallback), with this edge's memory of it;
    /// `None` when it cannot be had (the request then does not fall back).
    fn for_model(&self, _model: &str) -> Option<(Self, Rc<RefCell<EdgeMemory>>)> {
        None
    }
}

/// A shared state or none (routes that are not guarded, e.g. model listings): without one,
/// every attempt goes and nothing is told.
impl<G: SharedState> SharedState for Option<G> {
    async fn before(&mut self, ask: Ask) -> Result<Gate, Unreachable> {
        match self {
            Some(shared) => shared.before(ask).await,
            None => Ok(Gate::Go { probe: None }),
        }
    }

    async fn after(&mut self, tell: Tell) {
        if let Some(shared) = self {
            shared.after(tell).await;
        }
    }

    fn for_model(&self, model: &str) -> Option<(Self, Rc<RefCell<EdgeMemory>>)> {
        let (shared, memory) = self.as_ref()?.for_model(model)?;
        Some((Some(shared), memory))
    }
}

/// Why a request waited, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCause {
    /// A backoff sleep before retrying this failure.
    Backoff(Cause),
    /// The shared state said wait.
    Shared(WaitReason),
    /// The shared state gave the request a later send time.
    Paced(PaceReason),
}

impl fmt::Display for WaitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitCause::Backoff(cause) => cause.fmt(f),
            WaitCause::Shared(WaitReason::Cooldown) => f.write_str("upstream_cooldown"),
            WaitCause::Shared(WaitReason::Overloaded) => f.write_str("model_overloaded"),
            WaitCause::Shared(WaitReason::Recovering) => f.write_str("model_recovering"),
            WaitCause::Shared(WaitReason::Queued) => f.write_str("fair_turn"),
            WaitCause::Paced(PaceReason::KeyLimit(dimension)) => {
                write!(f, "paced_{}", dimension.as_str())
            }
            WaitCause::Paced(PaceReason::Capacity) => f.write_str("paced_capacity"),
        }
    }
}

/// One wait, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub ms: u64,
    pub cause: WaitCause,
}

/// What happened to one request on its way, for its log line and for simulations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    pub attempts: u32,
    pub waits: Vec<Wait>,
    pub stopped: Option<Stop>,
    /// The shared state was asked at least once.
    pub consulted: bool,
    /// What fallback did, when the request left the model it named.
    pub fallback: Option<FallbackRecord>,
    /// Attempts the upstream answered overloaded (`529`, or a stream opening with
    /// `overloaded_error`), and those it answered `429`: for metrics.
    pub upstream_overloaded: u32,
    pub upstream_rate_limited: u32,
}

impl Journal {
    /// The model that answered when it is not the one the request named.
    #[must_use]
    pub fn answered_by_fallback(&self) -> Option<&str> {
        self.fallback.as_ref().and_then(|f| f.to.as_deref())
    }

    /// Counts an attempt's reply among the upstream's overloads and rate limits.
    pub fn count_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Overloaded => {
                self.upstream_overloaded = self.upstream_overloaded.saturating_add(1)
            }
            Reply::RateLimited { .. } => {
                self.upstream_rate_limited = self.upstream_rate_limited.saturating_add(1);
            }
            Reply::Success | Reply::OtherFailure => {}
        }
    }

    /// Time spent waiting between and before attempts.
    #[must_use]
    pub fn wait_ms(&self) -> u64 {
        self.waits.iter().fold(0, |sum, w| sum.saturating_add(w.ms))
    }
}

/// Most gate calls one request makes while waiting (a guard against a runaway loop).
pub const MAX_GATE_CALLS: u32 = 400;

/// The answer a runaway wait loop ends with.
const RUNAWAY_RETRY_AFTER_MS: u64 = 1000;

/// One request to run: its retry policy, when it arrived, its seed, and the shared state it
/// answers to (with this edge's memory of trouble, shared by the edge's requests).
pub struct Run<'a, C, S, G> {
    pub clock: &'a C,
    pub sleep: &'a S,
    pub policy: RetryPolicy,
    pub started_ms: u64,
    pub seed: u64,
    /// What the request costs the key's buckets (for pacing).
    pub cost: Cost,
    pub shared: G,
    pub memory: Rc<RefCell<EdgeMemory>>,
}

/// Runs one request to its end: an answer to deliver (the upstream's final answer, or its
/// last one when that passes through) or the structured error. Never retries once an
/// answer is delivered: the caller streams it.
pub async fn run<C, S, G, T>(
    run: Run<'_, C, S, G>,
    transport: &mut T,
    journal: &mut Journal,
) -> Result<T::Answer, ProxyError>
where
    C: Clock,
    S: Sleep,
    G: SharedState,
    T: Transport,
{
    run_with_fallbacks(run, Fallbacks::none(), transport, journal).await
}

/// [`run`], for a request that may fall back to other models when its own is overloaded past
/// its deadline ([`super::fallback`]). Each model gets its own attempts (`MAX_ATTEMPTS`)
/// within the request's one deadline; when no fallback answers, the client gets the
/// requested model's answer.
///
/// Each turn clears an attempt with the shared state and sends it; a model that does not
/// answer is noted in the journal, and the request moves on to the next fallback that can be
/// tried, if any.
pub async fn run_with_fallbacks<C, S, G, T>(
    run: Run<'_, C, S, G>,
    mut fallbacks: Fallbacks,
    transport: &mut T,
    journal: &mut Journal,
) -> Result<T::Answer, ProxyError>
where
    C: Clock,
    S: Sleep,
    G: SharedState,
    T: Transport,
{
    let Run {
        clock,
        sleep,
        policy,
        started_ms,
        seed,
        cost,
        shared,
        memory,
    } = run;
    let mut model = OnModel::new(shared, memory, Retrier::new(policy, started_ms, seed), 0);
    let request = Request {
        clock,
        sleep,
        seed,
        deadline_ms: model.retrier.deadline_ms(),
        cost,
    };
    // Once on a fallback: the requested model's own answer, for when no fallback answers.
    let mut requested_answer: Option<ProxyError> = None;
    loop {
        let ways = Ways {
            on_fallback: requested_answer.is_some(),
            has_next: fallbacks.has_next(),
        };
        let miss = match model.turn(&request, transport, journal, ways).await {
            Round::Done(result) => return result,
            Round::Again => continue,
            Round::Missed(miss) => miss,
        };
        note_miss(journal, &fallbacks, &mut requested_answer, miss)?;
        let Some(record) = journal.fallback.as_mut() else {
            return Err(requested_answer.unwrap_or_else(no_answer));
        };
        let Some((name, (shared, memory))) =
            next_model(&request, &mut fallbacks, &model.shared, record, transport)
        else {
            return Err(requested_answer.unwrap_or_else(no_answer));
        };
        record.to = Some(name);
        let earlier_attempts = journal.attempts;
        let retrier = Retrier::new(
            policy,
            started_ms,
            seed.rotate_left(17) ^ u64::from(earlier_attempts),
        );
        model = OnModel::new(shared, memory, retrier, earlier_attempts);
    }
}

/// What one request brings to every model it tries.
struct Request<'r, C, S> {
    clock: &'r C,
    sleep: &'r S,
    seed: u64,
    deadline_ms: u64,
    cost: Cost,
}

impl<C, S> Request<'_, C, S> {
    fn gatekeeper(&self, memory: &Rc<RefCell<EdgeMemory>>) -> Gatekeeper<'_, C, S> {
        Gatekeeper {
            clock: self.clock,
            sleep: self.sleep,
            memory: Rc::clone(memory),
            seed: self.seed,
            deadline_ms: self.deadline_ms,
            cost: self.cost,
        }
    }
}

/// Where the request stands among its models, for one turn.
#[derive(Debug, Clone, Copy)]
struct Ways {
    /// The request is on a fallback (the requested model did not answer).
    on_fallback: bool,
    /// A model to fall back to is left.
    has_next: bool,
}

impl Ways {
    /// A model that stopped for `why` is left: there is somewhere to go, or the request is
    /// already on a fallback (whose end is noted before the next one).
    fn leaves(self, why: Option<Why>) -> bool {
        why.is_some() && (self.on_fallback || self.has_next)
    }
}

/// The model a request is on now: its shared state, this edge's memory of it, its retries.
struct OnModel<G> {
    shared: G,
    memory: Rc<RefCell<EdgeMemory>>,
    retrier: Retrier,
    last_cause: Option<Cause>,
    /// The shared state was asked for this model.
    consulted: bool,
    /// Attempts made on models left behind.
    earlier_attempts: u32,
}

/// What one turn on a model came to.
enum Round<A> {
    /// The request's end: deliver this.
    Done(Result<A, ProxyError>),
    /// Backed off: try the model again.
    Again,
    /// The model did not answer.
    Missed(Miss),
}

/// How a model's way ended when it did not answer.
struct Miss {
    /// The answer the model's end would give the client.
    error: Option<ProxyError>,
    stop: Option<Stop>,
    ended: Unanswered,
}

impl<G: SharedState> OnModel<G> {
    fn new(
        shared: G,
        memory: Rc<RefCell<EdgeMemory>>,
        retrier: Retrier,
        earlier_attempts: u32,
    ) -> Self {
        OnModel {
            shared,
            memory,
            retrier,
            last_cause: None,
            consulted: false,
            earlier_attempts,
        }
    }

    /// One turn: the shared state clears an attempt (or stops the model), and the attempt
    /// goes.
    async fn turn<C: Clock, S: Sleep, T: Transport>(
        &mut self,
        request: &Request<'_, C, S>,
        transport: &mut T,
        journal: &mut Journal,
        ways: Ways,
    ) -> Round<T::Answer> {
        let is_retry = self.retrier.attempts() > 0;
        let gate = request.gatekeeper(&self.memory);
        let rules = GateRules {
            leave_outage: ways.has_next,
            judge_first: ways.on_fallback && !is_retry,
        };
        let cleared = gate
            .before(
                &mut self.shared,
                is_retry,
                self.last_cause,
                rules,
                &mut self.consulted,
                journal,
            )
            .await;
        journal.consulted |= self.consulted;
        match cleared {
            Cleared::Go(probe) => self.attempt(&gate, probe, transport, journal, ways).await,
            Cleared::Stopped { error, stop } => {
                stopped(error, stop, self.last_cause, ways, journal)
            }
            Cleared::Leave { error, why } => Round::Missed(Miss {
                error: Some(error),
                stop: Some(Stop::Refused(RefuseReason::Overloaded)),
                ended: Unanswered::Left(why),
            }),
            Cleared::CannotServe => Round::Missed(Miss {
                error: None,
                stop: None,
                ended: Unanswered::Refused("cannot_serve_in_time".to_string()),
            }),
        }
    }

    /// Sends one attempt, tells the shared state how it went, and judges it: delivered,
    /// backed off (after the sleep), or the model's end.
    async fn attempt<C: Clock, S: Sleep, T: Transport>(
        &mut self,
        gate: &Gatekeeper<'_, C, S>,
        probe: Option<ProbeTicket>,
        transport: &mut T,
        journal: &mut Journal,
        ways: Ways,
    ) -> Round<T::Answer> {
        let ticket = self.retrier.attempt_started();
        journal.attempts = self.earlier_attempts.saturating_add(ticket.number);
        let sent_ms = gate.clock.now_ms();
        let (outcome, answer) = transport.attempt(ticket.timeout_ms).await;
        journal.count_reply(Reply::of(&outcome));
        let mut limits = transport.key_limits();
        if !limits.is_empty() {
            limits.sent_ms = Some(sent_ms);
        }
        gate.after(&mut self.shared, &outcome, probe, self.consulted, limits)
            .await;
        match self
            .retrier
            .after_attempt(gate.clock.now_ms(), classify(&outcome))
        {
            AfterAttempt::Deliver if !ways.on_fallback || fallback::delivers(&outcome) => {
                Round::Done(answer.ok_or_else(no_answer))
            }
            AfterAttempt::Deliver => {
                let ended = match outcome {
                    Outcome::Response { status, .. } => format!("status_{status}"),
                    _ => "refused".to_string(),
                };
                Round::Missed(Miss {
                    error: None,
                    stop: None,
                    ended: Unanswered::Refused(ended),
                })
            }
            AfterAttempt::Wait { ms, cause } => {
                self.last_cause = Some(cause);
                journal.waits.push(Wait {
                    ms,
                    cause: WaitCause::Backoff(cause),
                });
                drop(answer);
                gate.sleep.sleep(ms).await;
                Round::Again
            }
            AfterAttempt::GiveUp(give_up) => gave_up(&give_up, answer, ways, journal),
        }
    }
}

/// Retries ran out on a retryable failure: the requested model's answer (its last one when
/// that passes through), unless the model is left for a fallback.
fn gave_up<A>(give_up: &GiveUp, answer: Option<A>, ways: Ways, journal: &mut Journal) -> Round<A> {
    let stop = Stop::Retries(give_up.reason);
    let why = fallback::why_leave(stop, Some(give_up.cause));
    if !ways.leaves(why) && !ways.on_fallback {
        journal.stopped = Some(stop);
        return Round::Done(if give_up.passes_through() {
            answer.ok_or_else(no_answer)
        } else {
            Err(ProxyError::from(give_up))
        });
    }
    let ended = why.map_or_else(|| give_up.reason.to_string(), |w| w.to_string());
    Round::Missed(Miss {
        error: Some(ProxyError::from(give_up)),
        stop: Some(stop),
        ended: why.map_or(Unanswered::Refused(ended), Unanswered::Left),
    })
}

/// The shared state answered for the upstream: the requested model's answer, unless the
/// model is left for a fallback.
fn stopped<A>(
    error: ProxyError,
    stop: Stop,
    last_cause: Option<Cause>,
    ways: Ways,
    journal: &mut Journal,
) -> Round<A> {
    let why = fallback::why_leave(stop, last_cause);
    let ended = match why {
        Some(why) if ways.leaves(Some(why)) => Unanswered::Left(why),
        _ if ways.on_fallback => Unanswered::Refused(stop.to_string()),
        _ => {
            journal.stopped = Some(stop);
            return Round::Done(Err(error));
        }
    };
    Round::Missed(Miss {
        error: Some(error),
        stop: Some(stop),
        ended,
    })
}

/// Notes a model that did not answer: a fallback's end among the models tried, or, for the
/// requested model, the fallback record it opens and its answer, kept for when no fallback
/// answers. `Err` is the requested model's own answer when it did not leave.
fn note_miss(
    journal: &mut Journal,
    fallbacks: &Fallbacks,
    requested_answer: &mut Option<ProxyError>,
    miss: Miss,
) -> Result<(), ProxyError> {
    match (&mut journal.fallback, requested_answer.is_some()) {
        (Some(record), true) => {
            let model = record.to.take().unwrap_or_default();
            record.tried.push(Tried {
                model,
                ended: miss.ended.ended(),
            });
        }
        _ => {
            let Unanswered::Left(leave) = miss.ended else {
                // The requested model refused for its own reasons (not reached: those end the
                // request before); answer for it.
                return Err(miss.error.unwrap_or_else(no_answer));
            };
            journal.stopped = miss.stop;
            journal.fallback = Some(FallbackRecord {
                from: fallbacks.requested().to_string(),
                why: leave,
                to: None,
                tried: Vec::new(),
            });
            *requested_answer = Some(miss.error.unwrap_or_else(no_answer));
        }
    }
    Ok(())
}

/// A fallback's name, its shared state and this edge's memory of it.
type NextModel<G> = (String, (G, Rc<RefCell<EdgeMemory>>));

/// The next fallback to try, with its shared state and this edge's memory of it: the first
/// left whose state can be had and that the transport can send for, before the deadline.
/// Those passed over are noted in `record`.
fn next_model<C: Clock, S, G: SharedState, T: Transport>(
    request: &Request<'_, C, S>,
    fallbacks: &mut Fallbacks,
    shared: &G,
    record: &mut FallbackRecord,
    transport: &mut T,
) -> Option<NextModel<G>> {
    while let Some(model) = fallbacks.take_next() {
        match shared.for_model(&model) {
            Some(next)
                if request.clock.now_ms() < request.deadline_ms
                    && transport.switch_model(&model) =>
            {
                return Some((model, next));
            }
            _ => record.tried.push(Tried {
                model,
                ended: "cannot_serve_in_time".to_string(),
            }),
        }
    }
    None
}

/// How a model's way ended when it did not answer.
enum Unanswered {
    /// It is overloaded past the deadline: fall back.
    Left(Why),
    /// A fallback that refused the request or could not serve it, for the log line.
    Refused(String),
}

impl Unanswered {
    fn ended(&self) -> String {
        match self {
            Unanswered::Left(why) => why.to_string(),
            Unanswered::Refused(ended) => ended.clone(),
        }
    }
}

/// What the gatekeeper does beyond the plain rules, when fallbacks are in play.
#[derive(Debug, Clone, Copy, Default)]
struct GateRules {
    /// A model to fall back to is left: an outage is left rather than waited out.
    leave_outage: bool,
    /// This is a fallback model's first attempt: go only if its state says it can be served
    /// before the deadline.
    judge_first: bool,
}

/// What the gatekeeper cleared before an attempt.
enum Cleared {
    /// Send the attempt (with the probe ticket when it is the model's probe).
    Go(Option<ProbeTicket>),
    /// The shared state answered for the upstream.
    Stopped { error: ProxyError, stop: Stop },
    /// The model is in an outage and there is somewhere else to go.
    Leave { error: ProxyError, why: Why },
    /// A fallback that cannot be served before the deadline.
    CannotServe,
}

fn no_answer() -> ProxyError {
    ProxyError::Internal("no upstream answer to deliver".to_string())
}

/// The shared state around one attempt.
struct Gatekeeper<'r, C, S> {
    clock: &'r C,
    sleep: &'r S,
    memory: Rc<RefCell<EdgeMemory>>,
    seed: u64,
    deadline_ms: u64,
    cost: Cost,
}

impl<C: Clock, S: Sleep> Gatekeeper<'_, C, S> {
    /// Before an attempt: on the happy path (a first attempt, no trouble seen lately) nothing
    /// is asked. Otherwise the shared state is asked, and waited on as long as it says (never
    /// past the deadline); clears the attempt with the probe ticket when it is the model's
    /// probe.
    async fn before<G: SharedState>(
        &self,
        shared: &mut G,
        is_retry: bool,
        last_cause: Option<Cause>,
        rules: GateRules,
        consulted: &mut bool,
        journal: &mut Journal,
    ) -> Cleared {
        if !is_retry && self.memory.borrow_mut().send_unasked(self.clock.now_ms()) {
            return Cleared::Go(None);
        }
        *consulted = true;
        for call in 0..MAX_GATE_CALLS {
            let Ok(gate) = shared.before(self.ask(is_retry)).await else {
                return Cleared::Go(None);
            };
            if call == 0 && rules.judge_first && !fallback::can_serve(&gate, self.deadline_ms) {
                // An outage or a refusal: this edge asks before that model's next requests.
                self.memory.borrow_mut().mark_trouble(self.clock.now_ms());
                return Cleared::CannotServe;
            }
            match gate {
                Gate::Go { probe } => return Cleared::Go(probe),
                Gate::Wait { until_ms, reason } => {
                    let waited = self.wait(until_ms, reason, last_cause, rules, journal);
                    if let Some(cleared) = waited.await {
                        return cleared;
                    }
                }
                Gate::Scheduled { at_ms, reason } => {
                    return self.scheduled(at_ms, reason, journal).await;
                }
                Gate::Refuse {
                    retry_after_ms,
                    reason,
                } => {
                    self.memory.borrow_mut().mark_trouble(self.clock.now_ms());
                    return Cleared::Stopped {
                        error: ProxyError::from(&Refusal {
                            reason,
                            retry_after_ms,
                            last_cause,
                        }),
                        stop: Stop::Refused(reason),
                    };
                }
            }
        }
        Cleared::Stopped {
            error: ProxyError::Overloaded {
                retry_after_ms: RUNAWAY_RETRY_AFTER_MS,
            },
            stop: Stop::Retries(StopReason::BudgetExhausted),
        }
    }

    /// The question to the shared state, with what this edge has not told it yet.
    fn ask(&self, is_retry: bool) -> Ask {
        let (unreported, unreported_served) = {
            let mut memory = self.memory.borrow_mut();
            let now = self.clock.now_ms();
            (memory.take_unreported(), memory.take_unreported_served(now))
        };
        Ask {
            is_retry,
            deadline_ms: self.deadline_ms,
            request_seed: self.seed,
            unreported,
            unreported_served,
            cost: self.cost,
            asked_ms: self.clock.now_ms(),
        }
    }

    /// The shared state said wait until `until_ms`: leave the model (an outage, with a
    /// fallback to go to), answer now (past the deadline), or sleep and ask again (`None`).
    async fn wait(
        &self,
        until_ms: u64,
        reason: WaitReason,
        last_cause: Option<Cause>,
        rules: GateRules,
        journal: &mut Journal,
    ) -> Option<Cleared> {
        let now = self.clock.now_ms();
        self.memory.borrow_mut().mark_trouble(now);
        if let Some(why) = fallback::why_leave_wait(reason).filter(|_| rules.leave_outage) {
            let refusal = Refusal {
                reason: RefuseReason::Overloaded,
                retry_after_ms: until_ms.saturating_sub(now),
                last_cause,
            };
            return Some(Cleared::Leave {
                error: ProxyError::from(&refusal),
                why,
            });
        }
        // Past the budget (the last wait ended at it, and the call took its round trip):
        // answered now, not asked once more. A queued request asks: its turn may have come.
        let refused = match reason {
            WaitReason::Cooldown => Some(RefuseReason::Cooldown),
            WaitReason::Overloaded | WaitReason::Recovering => Some(RefuseReason::Overloaded),
            WaitReason::Queued => None,
        };
        if let Some(reason) = refused.filter(|_| now >= self.deadline_ms) {
            let refusal = Refusal {
                reason,
                retry_after_ms: until_ms
                    .saturating_sub(now)
                    .max(crate::retry::MIN_RETRY_AFTER_MS),
                last_cause,
            };
            return Some(Cleared::Stopped {
                error: ProxyError::from(&refusal),
                stop: Stop::Refused(reason),
            });
        }
        let ms = until_ms.min(self.deadline_ms).saturating_sub(now).max(1);
        journal.waits.push(Wait {
            ms,
            cause: WaitCause::Shared(reason),
        });
        self.sleep.sleep(ms).await;
        None
    }

    /// Paced: the place is reserved, so the request goes at its time without asking again.
    async fn scheduled(&self, at_ms: u64, reason: PaceReason, journal: &mut Journal) -> Cleared {
        let now = self.clock.now_ms();
        self.memory.borrow_mut().mark_trouble(now);
        let ms = at_ms.min(self.deadline_ms).saturating_sub(now);
        if ms > 0 {
            journal.waits.push(Wait {
                ms,
                cause: WaitCause::Paced(reason),
            });
            self.sleep.sleep(ms).await;
        }
        Cleared::Go(None)
    }

    /// After an attempt: tells the shared state how it ended, when that is news to it.
    async fn after<G: SharedState>(
        &self,
        shared: &mut G,
        outcome: &Outcome,
        probe: Option<ProbeTicket>,
        consulted: bool,
        limits: KeyLimits,
    ) {
        let reply = Reply::of(outcome);
        // Near the key's own limits is trouble too: from now on this edge asks, and is paced.
        let trouble = classify(outcome).is_retry()
            || matches!(reply, Reply::Overloaded | Reply::RateLimited { .. })
            || limits.near();
        let (unreported, unreported_served) = {
            let mut memory = self.memory.borrow_mut();
            let now = self.clock.now_ms();
            if trouble {
                memory.mark_trouble(now);
            }
            if reply == Reply::Success {
                memory.note_success();
            }
            if !(trouble || probe.is_some() || consulted || memory.troubled(now)) {
                if reply == Reply::Success {
                    memory.count_served(now);
                }
                return;
            }
            (memory.take_unreported(), memory.take_unreported_served(now))
        };
        shared
            .after(Tell {
                report: AttemptReport { reply, probe },
                unreported,
                unreported_served,
                limits: KeyLimits {
                    answered: Some(self.seed),
                    ..limits
                },
                cost: self.cost,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::VecDeque;
    use std::num::NonZeroU32;

    use super::*;
    use crate::upstream::PaceReason;
    use futures_executor::block_on;

    const T0: u64 = 1_764_000_000_000;

    /// A fake clock whose sleeps return at once, moving it on.
    struct FakeTime(Cell<u64>);

    impl Clock for FakeTime {
        fn now_ms(&self) -> u64 {
            self.0.get()
        }
    }

    impl Sleep for FakeTime {
        async fn sleep(&self, ms: u64) {
            self.0.set(self.0.get() + ms);
        }
    }

    /// Answers attempts from a script, each taking `took_ms` of the fake clock.
    struct Scripted<'t> {
        time: &'t FakeTime,
        took_ms: u64,
        script: VecDeque<Outcome>,
        /// Attempts sent so far; an answer is the number of its attempt.
        sent: u32,
    }

    impl Transport for Scripted<'_> {
        type Answer = u32;
        async fn attempt(&mut self, _timeout_ms: u64) -> (Outcome, Option<u32>) {
            self.time.0.set(self.time.0.get() + self.took_ms);
            self.sent += 1;
            let number = self.sent;
            let outcome = self.script.pop_front().unwrap_or(Outcome::AttemptTimeout);
            let answer = matches!(outcome, Outcome::Response { .. }).then_some(number);
            (outcome, answer)
        }
    }

    /// Records every call; answers `before` from a script (then `Go`).
    #[derive(Default)]
    struct Recorder {
        gates: VecDeque<Result<Gate, Unreachable>>,
        asks: Vec<Ask>,
        tells: Vec<Tell>,
    }

    impl SharedState for &mut Recorder {
        async fn before(&mut self, ask: Ask) -> Result<Gate, Unreachable> {
            self.asks.push(ask);
            self.gates
                .pop_front()
                .unwrap_or(Ok(Gate::Go { probe: None }))
        }
        async fn after(&mut self, tell: Tell) {
            self.tells.push(tell);
        }
    }

    fn status(status: u16) -> Outcome {
        Outcome::Response {
            status,
            should_retry: None,
            wait_floor_ms: None,
        }
    }

    fn go(
        time: &FakeTime,
        shared: &mut Recorder,
        memory: &Rc<RefCell<EdgeMemory>>,
        script: Vec<Outcome>,
    ) -> (Result<u32, ProxyError>, Journal) {
        let policy = RetryPolicy {
            max_attempts: NonZeroU32::new(4).unwrap(),
            ..RetryPolicy::default()
        };
        let mut transport = Scripted {
            time,
            took_ms: 50,
            script: script.into(),
            sent: 0,
        };
        let mut journal = Journal::default();
        let run = Run {
            clock: time,
            sleep: time,
            policy,
            started_ms: time.now_ms(),
            seed: 7,
            cost: Cost::default(),
            shared,
            memory: memory.clone(),
        };
        let result = block_on(super::run(run, &mut transport, &mut journal));
        (result, journal)
    }

    #[test]
    fn the_happy_path_never_asks_the_shared_state_and_counts_what_it_sent() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        let mut shared = Recorder::default();
        for _ in 0..3 {
            let (result, journal) = go(&time, &mut shared, &memory, vec![status(200)]);
            assert_eq!(result, Ok(1));
            assert_eq!(journal.attempts, 1);
            assert!(!journal.consulted);
        }
        assert!(shared.asks.is_empty() && shared.tells.is_empty());
        assert_eq!(memory.borrow().unreported(), 3);
    }

    #[test]
    fn only_a_2xx_shows_the_pool_is_served() {
        let time = FakeTime(Cell::new(T0));
        let mut shared = Recorder::default();
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        assert_eq!(go(&time, &mut shared, &memory, vec![status(404)]).0, Ok(1));
        assert!(!memory.borrow().has_served());
        // A 2xx after asking (the edge saw trouble) counts as much as one on the happy path.
        memory.borrow_mut().mark_trouble(time.now_ms());
        assert_eq!(go(&time, &mut shared, &memory, vec![status(200)]).0, Ok(1));
        assert!(!shared.asks.is_empty());
        assert!(memory.borrow().has_served());
    }

    #[test]
    fn trouble_is_reported_and_later_first_attempts_ask_until_it_is_forgotten() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        let mut shared = Recorder::default();
        // Two quiet requests, then one that meets a 529 and is retried.
        assert_eq!(go(&time, &mut shared, &memory, vec![status(200)]).0, Ok(1));
        assert_eq!(go(&time, &mut shared, &memory, vec![status(200)]).0, Ok(1));
        let (result, journal) = go(&time, &mut shared, &memory, vec![status(529), status(200)]);
        assert_eq!(result, Ok(2));
        assert_eq!(journal.waits.len(), 1);
        // The 529 was told (with the three unasked first attempts), the retry asked first.
        assert_eq!(shared.tells[0].report.reply, Reply::Overloaded);
        assert_eq!(shared.tells[0].unreported, 3);
        assert_eq!(shared.asks.len(), 1);
        assert!(shared.asks[0].is_retry);
        // The next first attempt asks, because this edge saw trouble lately...
        assert_eq!(go(&time, &mut shared, &memory, vec![status(200)]).0, Ok(1));
        assert_eq!(shared.asks.len(), 2);
        assert!(!shared.asks[1].is_retry);
        // ...and once the memory has passed, first attempts go unasked again.
        time.0.set(time.now_ms() + EdgeMemory::TROUBLE_MEMORY_MS);
        let before = (shared.asks.len(), shared.tells.len());
        assert_eq!(go(&time, &mut shared, &memory, vec![status(200)]).0, Ok(1));
        assert_eq!((shared.asks.len(), shared.tells.len()), before);
    }

    #[test]
    fn a_refusal_is_answered_at_once_for_the_last_failure() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        let mut shared = Recorder {
            gates: vec![Ok(Gate::Refuse {
                retry_after_ms: 2500,
                reason: RefuseReason::RetryBudget,
            })]
            .into(),
            ..Recorder::default()
        };
        let (result, journal) = go(&time, &mut shared, &memory, vec![Outcome::AttemptTimeout]);
        assert_eq!(
            result,
            Err(ProxyError::UpstreamTimeout {
                retry_after_ms: 2500
            })
        );
        assert_eq!(journal.attempts, 1);
        assert_eq!(
            journal.stopped,
            Some(Stop::Refused(RefuseReason::RetryBudget))
        );
        assert_eq!(
            journal.stopped.map(|s| s.to_string()).as_deref(),
            Some("refused_retry_budget")
        );
    }

    #[test]
    fn a_wait_answered_at_the_deadline_is_a_refusal_without_asking_again() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        memory.borrow_mut().mark_trouble(T0);
        let far = T0 + 10 * 60_000;
        let overloaded = || {
            Ok(Gate::Wait {
                until_ms: far,
                reason: WaitReason::Overloaded,
            })
        };
        // Waited to the deadline, the request asks once more and is told to wait again: it
        // is answered then (asking again would only cost a call; a third answer would let
        // it go).
        let mut shared = Recorder {
            gates: vec![overloaded(), overloaded()].into(),
            ..Recorder::default()
        };
        let (result, journal) = go(&time, &mut shared, &memory, vec![status(200)]);
        let error = result.unwrap_err();
        assert_eq!(
            (error.status(), error.error_type()),
            (503, "overloaded_error")
        );
        assert_eq!(journal.attempts, 0);
        assert_eq!(
            journal.stopped,
            Some(Stop::Refused(RefuseReason::Overloaded))
        );
        assert_eq!(shared.asks.len(), 2);
        assert_eq!(time.now_ms(), T0 + 30_000);
    }

    #[test]
    fn waits_of_the_shared_state_never_pass_the_deadline_and_are_not_attempts() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        memory.borrow_mut().mark_trouble(T0);
        let far = T0 + 10 * 60_000;
        let mut shared = Recorder {
            gates: vec![
                Ok(Gate::Wait {
                    until_ms: T0 + 2_000,
                    reason: WaitReason::Cooldown,
                }),
                Ok(Gate::Wait {
                    until_ms: far,
                    reason: WaitReason::Overloaded,
                }),
                Ok(Gate::Go {
                    probe: Some(ProbeTicket(9)),
                }),
            ]
            .into(),
            ..Recorder::default()
        };
        let (result, journal) = go(&time, &mut shared, &memory, vec![status(200)]);
        assert_eq!(result, Ok(1));
        assert_eq!(journal.attempts, 1);
        let waits: Vec<(u64, String)> = journal
            .waits
            .iter()
            .map(|w| (w.ms, w.cause.to_string()))
            .collect();
        assert_eq!(
            waits,
            [
                (2_000, "upstream_cooldown".to_string()),
                (28_000, "model_overloaded".to_string())
            ]
        );
        // The probe's end is reported with its ticket.
        assert_eq!(
            shared.tells.last().map(|t| t.report.probe),
            Some(Some(ProbeTicket(9)))
        );
    }

    #[test]
    fn without_a_shared_state_every_attempt_goes_and_retries_still_run() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        memory.borrow_mut().mark_trouble(T0);
        let mut transport = Scripted {
            time: &time,
            took_ms: 50,
            script: vec![status(529), status(200)].into(),
            sent: 0,
        };
        let mut journal = Journal::default();
        let run = Run {
            clock: &time,
            sleep: &time,
            policy: RetryPolicy::default(),
            started_ms: T0,
            seed: 7,
            cost: Cost::default(),
            shared: None::<&mut Recorder>,
            memory,
        };
        assert_eq!(
            block_on(super::run(run, &mut transport, &mut journal)),
            Ok(2)
        );
        assert_eq!(journal.attempts, 2);
        assert_eq!(journal.waits.len(), 1);
    }

    #[test]
    fn an_unreachable_shared_state_lets_the_request_go_on_its_own() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        let mut shared = Recorder {
            gates: vec![Err(Unreachable("down".to_string()))].into(),
            ..Recorder::default()
        };
        let (result, journal) = go(&time, &mut shared, &memory, vec![status(529), status(200)]);
        assert_eq!(result, Ok(2));
        assert_eq!(journal.attempts, 2);
    }

    #[test]
    fn retries_that_run_out_give_the_structured_answer_or_pass_through() {
        let time = FakeTime(Cell::new(T0));
        let memory = Rc::new(RefCell::new(EdgeMemory::default()));
        let mut shared = Recorder::default();
        let (result, journal) = go(&time, &mut shared, &memory, vec![status(529); 4]);
        let error = result.unwrap_err();
        assert_eq!(
            (error.status(), error.error_type()),
            (503, "overloaded_error")
        );
        assert_eq!(
            journal.stopped,
            Some(Stop::Retries(StopReason::AttemptsExhausted))
        );
        let (result, _) = go(&time, &mut shared, &memory, vec![status(500); 4]);
        assert_eq!(
            result,
            Ok(4),
            "a transient status passes the last answer through"
        );
    }

    /// A transport whose answers are scripted per model; it records the model of each attempt.
    struct PerModel<'t> {
        time: &'t FakeTime,
        model: String,
        scripts: std::collections::HashMap<String, VecDeque<Outcome>>,
        sent: Vec<String>,
        switchable: bool,
    }

    impl Transport for PerModel<'_> {
        type Answer = String;
        async fn attempt(&mut self, _timeout_ms: u64) -> (Outcome, Option<String>) {
            self.time.0.set(self.time.0.get() + 50);
            self.sent.push(self.model.clone());
            let outcome = self
                .scripts
                .get_mut(&self.model)
                .and_then(VecDeque::pop_front)
                .unwrap_or(status(200));
            let answer = matches!(
                outcome,
                Outcome::Response { .. } | Outcome::StreamError { .. }
            )
            .then(|| self.model.clone());
            (outcome, answer)
        }
        fn switch_model(&mut self, model: &str) -> bool {
            if self.switchable {
                self.model = model.to_string();
            }
            self.switchable
        }
    }

    /// The key's state per model: scripted gates, and each model's edge memory.
    #[derive(Default)]
    struct Book {
        gates: std::collections::HashMap<String, VecDeque<Gate>>,
        memories: std::collections::HashMap<String, Rc<RefCell<EdgeMemory>>>,
        asked: Vec<String>,
    }

    struct ModelState {
        model: String,
        book: Rc<RefCell<Book>>,
    }

    impl SharedState for ModelState {
        async fn before(&mut self, _ask: Ask) -> Result<Gate, Unreachable> {
            let mut book = self.book.borrow_mut();
            book.asked.push(self.model.clone());
            Ok(book
                .gates
                .get_mut(&self.model)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Gate::Go { probe: None }))
        }
        async fn after(&mut self, _tell: Tell) {}
        fn for_model(&self, model: &str) -> Option<(Self, Rc<RefCell<EdgeMemory>>)> {
            let memory = self
                .book
                .borrow_mut()
                .memories
                .entry(model.to_string())
                .or_default()
                .clone();
            Some((
                ModelState {
                    model: model.to_string(),
                    book: self.book.clone(),
                },
                memory,
            ))
        }
    }

    struct Fleet {
        time: FakeTime,
        book: Rc<RefCell<Book>>,
    }

    impl Fleet {
        fn new() -> Fleet {
            Fleet {
                time: FakeTime(Cell::new(T0)),
                book: Rc::default(),
            }
        }

        /// The model's state answers these gates first (its edge has seen trouble, so it asks).
        fn gates(&self, model: &str, gates: Vec<Gate>) {
            let mut book = self.book.borrow_mut();
            book.gates.insert(model.to_string(), gates.into());
            book.memories
                .entry(model.to_string())
                .or_default()
                .borrow_mut()
                .mark_trouble(T0);
        }

        fn go(
            &self,
            fallbacks: Fallbacks,
            scripts: &[(&str, Vec<Outcome>)],
        ) -> (Result<String, ProxyError>, Journal, Vec<String>) {
            // The test's requests are all for "opus".
            let requested = "opus".to_string();
            let (shared, memory) = ModelState {
                model: String::new(),
                book: self.book.clone(),
            }
            .for_model(&requested)
            .unwrap();
            let mut transport = PerModel {
                time: &self.time,
                model: requested,
                scripts: scripts
                    .iter()
                    .map(|(m, s)| (m.to_string(), s.clone().into()))
                    .collect(),
                sent: Vec::new(),
                switchable: true,
            };
            let policy = RetryPolicy {
                max_attempts: NonZeroU32::new(4).unwrap(),
                ..RetryPolicy::default()
            };
            let run = Run {
                clock: &self.time,
                sleep: &self.time,
                policy,
                started_ms: self.time.now_ms(),
                seed: 7,
                cost: Cost::default(),
                shared,
                memory,
            };
            let mut journal = Journal::default();
            let result = block_on(run_with_fallbacks(
                run,
                fallbacks,
                &mut transport,
                &mut journal,
            ));
            (result, journal, transport.sent)
        }
    }

    fn list(models: &[&str]) -> Vec<String> {
        models.iter().map(|m| m.to_string()).collect()
    }

    fn overloaded_stream() -> Outcome {
        Outcome::StreamError {
            error_type: "overloaded_error".to_string(),
            should_retry: None,
            wait_floor_ms: None,
        }
    }

    #[test]
    fn attempts_that_run_out_on_overload_fall_back_to_the_next_model() {
        for overload in [status(529), overloaded_stream()] {
            let fleet = Fleet::new();
            let fallbacks = Fallbacks::new("opus", &list(&["sonnet", "haiku"]), true);
            let (result, journal, sent) =
                fleet.go(fallbacks, &[("opus", vec![overload.clone(); 4])]);
            assert_eq!(result.as_deref(), Ok("sonnet"));
            assert_eq!(sent, ["opus", "opus", "opus", "opus", "sonnet"]);
            assert_eq!(journal.attempts, 5, "every attempt counts, on any model");
            assert_eq!(journal.answered_by_fallback(), Some("sonnet"));
            let record = journal.fallback.unwrap();
            assert_eq!(
                (record.from.as_str(), record.why),
                ("opus", Why::Overloaded)
            );
            assert!(record.tried.is_empty());
            assert_eq!(
                journal.stopped,
                Some(Stop::Retries(StopReason::AttemptsExhausted))
            );
        }
    }

    #[test]
    fn opted_out_or_without_a_list_the_request_gets_its_own_models_answer() {
        for fallbacks in [
            Fallbacks::new("opus", &list(&["sonnet"]), false),
            Fallbacks::new("opus", &[], true),
            Fallbacks::none(),
        ] {
            let fleet = Fleet::new();
            let (result, journal, sent) = fleet.go(fallbacks, &[("opus", vec![status(529); 4])]);
            let error = result.unwrap_err();
            assert_eq!(
                (error.status(), error.error_type()),
                (503, "overloaded_error")
            );
            assert_eq!(sent.len(), 4);
            assert!(journal.fallback.is_none());
        }
    }

    #[test]
    fn a_fallback_that_refuses_the_request_gives_the_requested_models_overloaded_answer() {
        for refusal in [400, 404, 422] {
            let fleet = Fleet::new();
            let fallbacks = Fallbacks::new("opus", &list(&["sonnet"]), true);
            let (result, journal, sent) = fleet.go(
                fallbacks,
                &[
                    ("opus", vec![status(529); 4]),
                    ("sonnet", vec![status(refusal)]),
                ],
            );
            let error = result.unwrap_err();
            assert_eq!(
                (error.status(), error.error_type()),
                (503, "overloaded_error")
            );
            assert_eq!(sent, ["opus", "opus", "opus", "opus", "sonnet"]);
            let record = journal.fallback.unwrap();
            assert_eq!(record.to, None);
            assert_eq!(
                record.tried,
                [Tried {
                    model: "sonnet".to_string(),
                    ended: format!("status_{refusal}")
                }]
            );
        }
        // With a second fallback, the next one is tried and answers.
        let fleet = Fleet::new();
        let fallbacks = Fallbacks::new("opus", &list(&["sonnet", "haiku"]), true);
        let (result, journal, _) = fleet.go(
            fallbacks,
            &[
                ("opus", vec![status(529); 4]),
                ("sonnet", vec![status(400)]),
            ],
        );
        assert_eq!(result.as_deref(), Ok("haiku"));
        assert_eq!(journal.fallback.unwrap().tried.len(), 1);
    }

    #[test]
    fn a_model_in_an_outage_is_left_at_once_for_one_that_serves() {
        let fleet = Fleet::new();
        fleet.gates(
            "opus",
            vec![Gate::Wait {
                until_ms: T0 + 2_000,
                reason: WaitReason::Overloaded,
            }],
        );
        let fallbacks = Fallbacks::new("opus", &list(&["sonnet"]), true);
        let (result, journal, sent) = fleet.go(fallbacks, &[]);
        assert_eq!(result.as_deref(), Ok("sonnet"));
        assert_eq!(sent, ["sonnet"], "no attempt on the model in an outage");
        assert!(journal.waits.is_empty(), "no wait for its probe");
        assert_eq!(journal.fallback.unwrap().why, Why::Outage);
        // Without a fallback the outage is waited out as before.
        let fleet = Fleet::new();
        fleet.gates(
            "opus",
            vec![Gate::Wait {
                until_ms: T0 + 2_000,
                reason: WaitReason::Overloaded,
            }],
        );
        let (result, journal, _) = fleet.go(Fallbacks::none(), &[]);
        assert_eq!(result.as_deref(), Ok("opus"));
        assert_eq!(journal.waits.len(), 1);
    }

    #[test]
    fn the_first_listed_model_that_can_be_served_in_time_answers() {
        let fleet = Fleet::new();
        fleet.gates(
            "opus",
            vec![Gate::Refuse {
                retry_after_ms: 40_000,
                reason: RefuseReason::Paced(PaceReason::Capacity),
            }],
        );
        // Sonnet is in an outage, haiku's send time is past the deadline, claude-x serves.
        fleet.gates(
            "sonnet",
            vec![Gate::Wait {
                until_ms: T0 + 1_000,
                reason: WaitReason::Overloaded,
            }],
        );
        fleet.gates(
            "haiku",
            vec![Gate::Refuse {
                retry_after_ms: 60_000,
                reason: RefuseReason::Paced(PaceReason::Capacity),
            }],
        );
        fleet.gates(
            "claude-x",
            vec![Gate::Scheduled {
                at_ms: T0 + 3_000,
                reason: PaceReason::Capacity,
            }],
        );
        let fallbacks = Fallbacks::new("opus", &list(&["sonnet", "haiku", "claude-x"]), true);
        let (result, journal, sent) = fleet.go(fallbacks, &[]);
        assert_eq!(result.as_deref(), Ok("claude-x"));
        assert_eq!(sent, ["claude-x"]);
        let record = journal.fallback.unwrap();
        assert_eq!(record.why, Why::PacedPastDeadline);
        let tried: Vec<(&str, &str)> = record
            .tried
            .iter()
            .map(|t| (t.model.as_str(), t.ended.as_str()))
            .collect();
        assert_eq!(
            tried,
            [
                ("sonnet", "cannot_serve_in_time"),
                ("haiku", "cannot_serve_in_time")
            ]
        );
        assert_eq!(
            fleet.book.borrow().asked,
            ["opus", "sonnet", "haiku", "claude-x"]
        );
        // The paced send time was slept: a wait, not an attempt.
        assert_eq!(journal.waits.len(), 1);
        assert_eq!(journal.attempts, 1);
    }

    #[test]
    fn when_no_fallback_can_serve_the_requested_models_answer_comes_at_once() {
        let fleet = Fleet::new();
        fleet.gates(
            "opus",
            vec![Gate::Refuse {
                retry_after_ms: 12_000,
                reason: RefuseReason::Overloaded,
            }],
        );
        fleet.gates(
            "sonnet",
            vec![Gate::Refuse {
                retry_after_ms: 5_000,
                reason: RefuseReason::Overloaded,
            }],
        );
        let fallbacks = Fallbacks::new("opus", &list(&["sonnet"]), true);
        let (result, journal, sent) = fleet.go(fallbacks, &[]);
        assert_eq!(
            result,
            Err(ProxyError::Overloaded {
                retry_after_ms: 12_000
            })
        );
        assert!(sent.is_empty());
        assert_eq!(fleet.time.now_ms(), T0, "answered without waiting");
        assert_eq!(
            journal.stopped,
            Some(Stop::Refused(RefuseReason::Overloaded))
        );
    }

    #[test]
    fn the_keys_own_limits_never_send_a_request_to_another_model() {
        let fleet = Fleet::new();
        fleet.gates(
            "opus",
            vec![Gate::Refuse {
                retry_after_ms: 9_000,
                reason: RefuseReason::Paced(PaceReason::KeyLimit(
                    crate::upstream::LimitDimension::Requests,
                )),
            }],
        );
        let fallbacks = Fallbacks::new("opus", &list(&["sonnet"]), true);
        let (result, journal, sent) = fleet.go(fallbacks, &[]);
        assert_eq!(result.unwrap_err().status(), 429);
        assert!(sent.is_empty());
        assert!(journal.fallback.is_none());
        // Nor do timeouts or transient statuses: those pass through or answer as before.
        let fallbacks = Fallbacks::new("opus", &list(&["sonnet"]), true);
        let (result, journal, _) = fleet.go(fallbacks, &[("opus", vec![status(500); 4])]);
        assert_eq!(result.as_deref(), Ok("opus"));
        assert!(journal.fallback.is_none());
    }

    #[test]
    fn a_transport_that_cannot_switch_models_keeps_the_requested_answer() {
        let fleet = Fleet::new();
        let (shared, memory) = ModelState {
            model: String::new(),
            book: fleet.book.clone(),
        }
        .for_model("opus")
        .unwrap();
        let mut transport = PerModel {
            time: &fleet.time,
            model: "opus".to_string(),
            scripts: [("opus".to_string(), vec![status(529); 4].into())].into(),
            sent: Vec::new(),
            switchable: false,
        };
        let run = Run {
            clock: &fleet.time,
            sleep: &fleet.time,
            policy: RetryPolicy::default(),
            started_ms: T0,
            seed: 1,
            cost: Cost::default(),
            shared,
            memory,
        };
        let mut journal = Journal::default();
        let fallbacks = Fallbacks::new("opus", &list(&["sonnet"]), true);
        let result = block_on(run_with_fallbacks(
            run,
            fallbacks,
            &mut transport,
            &mut journal,
        ));
        assert_eq!(result.unwrap_err().status(), 503);
        assert_eq!(transport.sent.len(), 4);
    }
}
