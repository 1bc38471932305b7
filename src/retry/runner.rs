//! The one request loop: attempts, the shared upstream state around them, the sleeps between
//! them, and the answer when they stop.
//!
//! It is generic over the clock, sleeping, the transport and the shared state, so the Worker
//! (`Date.now()`, `Delay`, `Fetch`, the upstream key's Durable Object) and the host fleet
//! simulation (a virtual clock, a simulated upstream, an in-memory shared state) run this very
//! code. Every decision it acts on is made elsewhere in the core: [`classify`] and the
//! [`Retrier`] decide retries, the shared state decides go / wait / refuse, the
//! [`EdgeMemory`] decides when the shared state is worth asking.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::rc::Rc;

use super::classify::{classify, Cause, Outcome};
use super::policy::{Retrier, RetryPolicy, Step, StopReason};
use crate::error::ProxyError;
use crate::upstream::{
    AttemptReport, Cost, EdgeMemory, Gate, KeyLimits, PaceReason, ProbeTicket, Refusal,
    RefuseReason, Reply, WaitReason,
};

/// Milliseconds since the Unix epoch, as the platform sees them.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// Sleeping for a while; a wait is not an attempt.
pub trait Sleep {
    fn sleep(&self, ms: u64) -> impl Future<Output = ()>;
}

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
}

/// What the shared state is told after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tell {
    pub report: AttemptReport,
    pub unreported: u32,
    pub unreported_served: u32,
    /// The key's limits as the answer reported them.
    pub limits: KeyLimits,
}

/// The upstream key's shared state, as one request sees it (for one model).
pub trait SharedState {
    fn before(&mut self, ask: Ask) -> impl Future<Output = Result<Gate, Unreachable>>;
    fn after(&mut self, tell: Tell) -> impl Future<Output = ()>;
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

/// Why a request stopped before the upstream gave a final answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Retries ran out (attempts or budget).
    Retries(StopReason),
    /// The shared state answered for the upstream.
    Refused(RefuseReason),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Retries(reason) => reason.fmt(f),
            Stop::Refused(RefuseReason::Cooldown) => f.write_str("refused_cooldown"),
            Stop::Refused(RefuseReason::Overloaded) => f.write_str("refused_overloaded"),
            Stop::Refused(RefuseReason::RetryBudget) => f.write_str("refused_retry_budget"),
            Stop::Refused(RefuseReason::Paced(PaceReason::KeyLimit(dimension))) => {
                write!(f, "refused_paced_{}", dimension.as_str())
            }
            Stop::Refused(RefuseReason::Paced(PaceReason::Capacity)) => {
                f.write_str("refused_paced_capacity")
            }
        }
    }
}

/// What happened to one request on its way, for its log line and for simulations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    pub attempts: u32,
    pub waits: Vec<Wait>,
    pub stopped: Option<Stop>,
    /// The shared state was asked at least once.
    pub consulted: bool,
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
    let Run {
        clock,
        sleep,
        policy,
        started_ms,
        seed,
        cost,
        mut shared,
        memory,
    } = run;
    let mut retrier = Retrier::new(policy, started_ms, seed);
    let deadline_ms = retrier.deadline_ms();
    let mut last_cause = None;
    loop {
        let is_retry = retrier.attempts() > 0;
        let gate = Gatekeeper {
            clock,
            sleep,
            memory: &memory,
            seed,
            deadline_ms,
            cost,
        };
        let probe = gate
            .before(&mut shared, is_retry, last_cause, journal)
            .await?;
        let ticket = retrier.attempt_started();
        journal.attempts = ticket.number;
        let (outcome, answer) = transport.attempt(ticket.timeout_ms).await;
        let limits = transport.key_limits();
        gate.after(&mut shared, &outcome, probe, journal.consulted, limits)
            .await;
        match retrier.after_attempt(clock.now_ms(), classify(&outcome)) {
            Step::Deliver => return answer.ok_or_else(no_answer),
            Step::Wait { ms, cause } => {
                last_cause = Some(cause);
                journal.waits.push(Wait {
                    ms,
                    cause: WaitCause::Backoff(cause),
                });
                drop(answer);
                sleep.sleep(ms).await;
            }
            Step::GiveUp(give_up) => {
                journal.stopped = Some(Stop::Retries(give_up.reason));
                return if give_up.passes_through() {
                    answer.ok_or_else(no_answer)
                } else {
                    Err(ProxyError::from(&give_up))
                };
            }
        }
    }
}

fn no_answer() -> ProxyError {
    ProxyError::Internal("no upstream answer to deliver".to_string())
}

/// The shared state around one attempt.
struct Gatekeeper<'r, C, S> {
    clock: &'r C,
    sleep: &'r S,
    memory: &'r Rc<RefCell<EdgeMemory>>,
    seed: u64,
    deadline_ms: u64,
    cost: Cost,
}

impl<C: Clock, S: Sleep> Gatekeeper<'_, C, S> {
    /// Before an attempt: on the happy path (a first attempt, no trouble seen lately) nothing
    /// is asked. Otherwise the shared state is asked, and waited on as long as it says (never
    /// past the deadline); returns the probe ticket when this attempt is the model's probe.
    async fn before<G: SharedState>(
        &self,
        shared: &mut G,
        is_retry: bool,
        last_cause: Option<Cause>,
        journal: &mut Journal,
    ) -> Result<Option<ProbeTicket>, ProxyError> {
        if !is_retry && self.memory.borrow_mut().send_unasked(self.clock.now_ms()) {
            return Ok(None);
        }
        journal.consulted = true;
        for _ in 0..MAX_GATE_CALLS {
            let (unreported, unreported_served) = {
                let mut memory = self.memory.borrow_mut();
                let now = self.clock.now_ms();
                (memory.take_unreported(), memory.take_unreported_served(now))
            };
            let ask = Ask {
                is_retry,
                deadline_ms: self.deadline_ms,
                request_seed: self.seed,
                unreported,
                unreported_served,
                cost: self.cost,
            };
            let Ok(gate) = shared.before(ask).await else {
                return Ok(None);
            };
            match gate {
                Gate::Go { probe } => return Ok(probe),
                Gate::Wait { until_ms, reason } => {
                    let now = self.clock.now_ms();
                    self.memory.borrow_mut().mark_trouble(now);
                    let ms = until_ms.min(self.deadline_ms).saturating_sub(now).max(1);
                    journal.waits.push(Wait {
                        ms,
                        cause: WaitCause::Shared(reason),
                    });
                    self.sleep.sleep(ms).await;
                }
                Gate::Scheduled { at_ms, reason } => {
                    // Paced: the place is reserved, so the request goes at its time without
                    // asking again.
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
                    return Ok(None);
                }
                Gate::Refuse {
                    retry_after_ms,
                    reason,
                } => {
                    self.memory.borrow_mut().mark_trouble(self.clock.now_ms());
                    journal.stopped = Some(Stop::Refused(reason));
                    return Err(ProxyError::from(&Refusal {
                        reason,
                        retry_after_ms,
                        last_cause,
                    }));
                }
            }
        }
        Err(ProxyError::Overloaded {
            retry_after_ms: RUNAWAY_RETRY_AFTER_MS,
        })
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
                limits,
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
}
