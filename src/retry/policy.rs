//! The per-request retry loop as a state machine: attempts, waits, the time budget, and the
//! answer to give when retries stop.
//!
//! The shell owns the clock and the network; this owns every decision, so a whole request can
//! be replayed on a fake clock with seeded jitter.

use std::fmt;
use std::num::NonZeroU32;

use super::backoff::Backoff;
use super::classify::{Cause, Verdict};
use super::timeout::Awaited;
use crate::config::Config;
use crate::error::{LimitInfo, ProxyError};

/// The shortest `retry_after_ms` a structured answer carries: `Retry-After` is whole seconds,
/// at least 1.
pub const MIN_RETRY_AFTER_MS: u64 = 1000;

/// The retry settings for one request (validated configuration, possibly shortened by the
/// client's `x-proxy-budget-ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: NonZeroU32,
    /// Full-jitter base: the first retry waits up to this long.
    pub backoff_base_ms: u64,
    /// Full-jitter cap: no drawn wait exceeds this.
    pub backoff_max_ms: u64,
    /// No retry starts and no backoff sleep ends after this long since the request arrived.
    pub budget_ms: u64,
    /// Time allowed per attempt until something of it can reach the client: the configured
    /// `ATTEMPT_TIMEOUT_MS` (for a stream, until its first SSE event), or longer for a whole
    /// non-streaming message (see [`RetryPolicy::awaiting`]).
    pub attempt_timeout_ms: u64,
}

impl Default for RetryPolicy {
    /// The product defaults: 4 attempts, 500/8000 ms backoff, 30 s budget, 60 s per attempt.
    fn default() -> Self {
        Self {
            max_attempts: NonZeroU32::MIN.saturating_add(3),
            backoff_base_ms: 500,
            backoff_max_ms: 8000,
            budget_ms: 30_000,
            attempt_timeout_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The policy of the validated configuration, with the budget shortened by the client's
    /// `x-proxy-budget-ms` header.
    #[must_use]
    pub fn from_config(config: &Config, client_budget_header: Option<&str>) -> Self {
        Self {
            max_attempts: config.max_attempts,
            backoff_base_ms: config.backoff_base_ms,
            backoff_max_ms: config.backoff_max_ms,
            budget_ms: config.request_budget_ms,
            attempt_timeout_ms: config.attempt_timeout_ms,
        }
        .with_client_budget(client_budget_header)
    }

    /// The budget after the client's `x-proxy-budget-ms` header: a non-negative integer
    /// (surrounding whitespace allowed) shortens the budget, never lengthens it; anything
    /// else is ignored.
    #[must_use]
    pub fn effective_budget_ms(&self, client_header: Option<&str>) -> u64 {
        let requested = client_header.map(str::trim).and_then(|value| {
            if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                // Only overflow can fail here, and a budget that large shortens nothing.
                value.parse::<u64>().ok()
            } else {
                None
            }
        });
        requested.map_or(self.budget_ms, |ms| ms.min(self.budget_ms))
    }

    /// This policy with the attempt timeout for what the request's attempts wait for (see
    /// [`Awaited::timeout_ms`]). The budget is unchanged: it bounds when a retry may start,
    /// not how long an attempt may run.
    #[must_use]
    pub fn awaiting(self, awaited: Awaited) -> Self {
        Self {
            attempt_timeout_ms: awaited.timeout_ms(self.attempt_timeout_ms),
            ..self
        }
    }

    /// This policy with the budget shortened by the client's `x-proxy-budget-ms` header, see
    /// [`RetryPolicy::effective_budget_ms`].
    #[must_use]
    pub fn with_client_budget(self, client_header: Option<&str>) -> Self {
        Self {
            budget_ms: self.effective_budget_ms(client_header),
            ..self
        }
    }
}

/// What the shell needs to run one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptTicket {
    /// The attempt's number, 1-based.
    pub number: u32,
    /// How long to wait for response headers (streaming: the first SSE event).
    pub timeout_ms: u64,
}

/// Why retrying stopped while the failure was still retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// The request used all `max_attempts` attempts.
    AttemptsExhausted,
    /// The next wait would have ended past the request's budget deadline.
    BudgetExhausted,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::AttemptsExhausted => "attempts_exhausted",
            StopReason::BudgetExhausted => "budget_exhausted",
        })
    }
}

/// Retries stopped on a retryable failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveUp {
    /// The last attempt's failure.
    pub cause: Cause,
    /// Why no further attempt is made.
    pub reason: StopReason,
    /// How long the client should wait before trying again, at least
    /// [`MIN_RETRY_AFTER_MS`]. For a `429` it is the upstream's remaining wait; otherwise the
    /// wait the proxy would have slept next.
    pub retry_after_ms: u64,
    /// Attempts made.
    pub attempts: u32,
}

impl GiveUp {
    /// Whether the client gets the upstream's last answer as is (a transient status or a
    /// stream error); otherwise it gets the structured answer, `ProxyError::from(&give_up)`.
    #[must_use]
    pub fn passes_through(&self) -> bool {
        self.cause.passes_through()
    }

    /// [`GiveUp::retry_after_ms`] rounded up to whole seconds (at least 1), for `Retry-After`.
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        crate::error::whole_seconds(self.retry_after_ms)
    }
}

/// The contract's structured answer for retries that ran out on `cause` (for the causes
/// that do not pass the upstream's answer through; those map to an overload).
impl From<&GiveUp> for ProxyError {
    fn from(give_up: &GiveUp) -> Self {
        let retry_after_ms = give_up.retry_after_ms;
        match give_up.cause {
            Cause::RateLimited => ProxyError::RateLimited {
                retry_after_ms,
                message: format!(
                    "the upstream rate limit outlasts this request's time budget; {}",
                    crate::error::retry_in(retry_after_ms)
                ),
                limit: LimitInfo::upstream(),
                limit_headers: Vec::new(),
            },
            Cause::Timeout => ProxyError::UpstreamTimeout { retry_after_ms },
            Cause::Unreachable => ProxyError::UpstreamUnreachable { retry_after_ms },
            Cause::Overloaded | Cause::Transient(_) | Cause::StreamError => {
                ProxyError::Overloaded { retry_after_ms }
            }
        }
    }
}

/// The shell's next move after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    /// The answer is final: deliver it as is.
    Deliver,
    /// Sleep `ms`, then start the next attempt.
    Wait {
        /// How long to sleep.
        ms: u64,
        /// The failure being retried.
        cause: Cause,
    },
    /// Stop retrying; see [`GiveUp::passes_through`].
    GiveUp(GiveUp),
}

/// One backoff sleep, for the request's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitRecord {
    /// The attempt (1-based) whose failure is retried after this wait.
    pub after_attempt: u32,
    /// That attempt's failure.
    pub cause: Cause,
    /// When the wait began, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The wait: the jitter draw, raised to the upstream's floor if any.
    pub ms: u64,
    /// The upstream's retry-after hint, if it sent one.
    pub floor_ms: Option<u64>,
}

/// The retry state of one request: counts attempts, draws waits, enforces the budget.
///
/// Drive it as: [`Retrier::attempt_started`], run the attempt, [`classify`](fn@super::classify) its
/// outcome, [`Retrier::after_attempt`]; on [`AfterAttempt::Wait`] sleep and start over.
#[derive(Debug, Clone)]
pub struct Retrier {
    policy: RetryPolicy,
    started_at_ms: u64,
    backoff: Backoff,
    attempts: u32,
    waits: Vec<WaitRecord>,
}

impl Retrier {
    /// The retry state for a request that arrived at `started_at_ms`, with jitter seeded by
    /// `seed`.
    #[must_use]
    pub fn new(policy: RetryPolicy, started_at_ms: u64, seed: u64) -> Self {
        Self {
            policy,
            started_at_ms,
            backoff: Backoff::new(policy.backoff_base_ms, policy.backoff_max_ms, seed),
            attempts: 0,
            waits: Vec::new(),
        }
    }

    /// Records the start of the next attempt and returns its number and timeout. The attempt
    /// timeout does not depend on the budget (an attempt may outlast it; the retry after it
    /// then will not start).
    pub fn attempt_started(&mut self) -> AttemptTicket {
        self.attempts = self.attempts.saturating_add(1);
        AttemptTicket {
            number: self.attempts,
            timeout_ms: self.policy.attempt_timeout_ms,
        }
    }

    /// Decides what follows the current attempt, which ended at `now_ms` with `verdict`.
    ///
    /// A retryable failure gets a wait of `max(jitter draw, upstream floor)`, unless the
    /// attempts are used up or the wait would end past the budget deadline; then it gives up
    /// without sleeping.
    pub fn after_attempt(&mut self, now_ms: u64, verdict: Verdict) -> AfterAttempt {
        let (cause, floor_ms) = match verdict {
            Verdict::Deliver => return AfterAttempt::Deliver,
            Verdict::Retry { cause, floor_ms } => (cause, floor_ms),
        };
        let draw = self.backoff.draw_ms();
        let wait_ms = floor_ms.map_or(draw, |floor| draw.max(floor));

        let reason = if self.attempts >= self.max_attempts() {
            Some(StopReason::AttemptsExhausted)
        } else if now_ms.saturating_add(wait_ms) > self.deadline_ms() {
            Some(StopReason::BudgetExhausted)
        } else {
            None
        };
        if let Some(reason) = reason {
            let retry_after_ms = match (cause, floor_ms) {
                (Cause::RateLimited, Some(floor)) => floor,
                _ => wait_ms,
            };
            return AfterAttempt::GiveUp(GiveUp {
                cause,
                reason,
                retry_after_ms: retry_after_ms.max(MIN_RETRY_AFTER_MS),
                attempts: self.attempts,
            });
        }

        self.waits.push(WaitRecord {
            after_attempt: self.attempts,
            cause,
            at_ms: now_ms,
            ms: wait_ms,
            floor_ms,
        });
        AfterAttempt::Wait { ms: wait_ms, cause }
    }

    /// Attempts started so far.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The waits slept (or being slept) so far, oldest first.
    #[must_use]
    pub fn waits(&self) -> &[WaitRecord] {
        &self.waits
    }

    /// The sum of all waits so far.
    #[must_use]
    pub fn total_wait_ms(&self) -> u64 {
        self.waits
            .iter()
            .fold(0u64, |sum, wait| sum.saturating_add(wait.ms))
    }

    /// When the request arrived, in milliseconds since the Unix epoch.
    #[must_use]
    pub fn started_at_ms(&self) -> u64 {
        self.started_at_ms
    }

    /// The instant no backoff sleep may end after.
    #[must_use]
    pub fn deadline_ms(&self) -> u64 {
        self.started_at_ms.saturating_add(self.policy.budget_ms)
    }

    /// The policy in force.
    #[must_use]
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    fn max_attempts(&self) -> u32 {
        self.policy.max_attempts.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::backoff::ceiling_ms;
    use crate::retry::classify::{classify, Outcome};
    use proptest::prelude::*;

    const T0: u64 = 1_700_000_000_000;

    fn retry(cause: Cause, floor_ms: Option<u64>) -> Verdict {
        Verdict::Retry { cause, floor_ms }
    }

    fn give_up(step: AfterAttempt) -> GiveUp {
        match step {
            AfterAttempt::GiveUp(give_up) => give_up,
            other => panic!("expected a give-up, got {other:?}"),
        }
    }

    fn wait_ms(step: AfterAttempt) -> u64 {
        match step {
            AfterAttempt::Wait { ms, .. } => ms,
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    /// Runs `verdicts` back to back, each attempt taking `attempt_ms`, and returns the last
    /// step.
    fn run(retrier: &mut Retrier, attempt_ms: u64, verdicts: &[Verdict]) -> AfterAttempt {
        let mut now = retrier.started_at_ms();
        let mut step = AfterAttempt::Deliver;
        for verdict in verdicts {
            retrier.attempt_started();
            now += attempt_ms;
            step = retrier.after_attempt(now, *verdict);
            match step {
                AfterAttempt::Wait { ms, .. } => now += ms,
                _ => return step,
            }
        }
        step
    }

    #[test]
    fn effective_budget_from_client_header() {
        let policy = RetryPolicy::default();
        let table: &[(Option<&str>, u64)] = &[
            (None, 30_000),
            (Some("5000"), 5000),
            (Some(" 5000 "), 5000),
            (Some("0"), 0),
            (Some("30000"), 30_000),
            (Some("60000"), 30_000),
            (Some("99999999999999999999999"), 30_000),
            (Some("-5"), 30_000),
            (Some("+5"), 30_000),
            (Some("1.5"), 30_000),
            (Some("abc"), 30_000),
            (Some(""), 30_000),
            (Some("5000ms"), 30_000),
        ];
        for &(header, expected) in table {
            assert_eq!(policy.effective_budget_ms(header), expected, "{header:?}");
        }
        assert_eq!(policy.with_client_budget(Some("1200")).budget_ms, 1200);
    }

    #[test]
    fn attempt_tickets_count_from_one() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        assert_eq!(
            retrier.attempt_started(),
            AttemptTicket {
                number: 1,
                timeout_ms: 60_000
            }
        );
        assert_eq!(retrier.attempt_started().number, 2);
        assert_eq!(retrier.attempts(), 2);
    }

    #[test]
    fn success_is_delivered_without_drawing() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        retrier.attempt_started();
        assert_eq!(
            retrier.after_attempt(T0 + 100, Verdict::Deliver),
            AfterAttempt::Deliver
        );
        assert!(retrier.waits().is_empty());
    }

    #[test]
    fn overloaded_on_every_attempt_gives_503_after_max_attempts() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 42);
        let step = run(&mut retrier, 10, &[retry(Cause::Overloaded, None); 4]);
        let stop = give_up(step);
        assert_eq!(stop.reason, StopReason::AttemptsExhausted);
        assert_eq!(stop.attempts, 4);
        assert_eq!(stop.cause, Cause::Overloaded);
        {
            let e = ProxyError::from(&stop);
            assert_eq!((e.status(), e.error_type()), (503, "overloaded_error"));
        }
        assert!(stop.retry_after_ms >= MIN_RETRY_AFTER_MS);
        assert_eq!(retrier.attempts(), 4);
        assert_eq!(retrier.waits().len(), 3);
        for (i, wait) in retrier.waits().iter().enumerate() {
            assert_eq!(wait.after_attempt as usize, i + 1);
            assert_eq!(wait.cause, Cause::Overloaded);
            assert!(wait.ms <= ceiling_ms(500, 8000, i as u32));
        }
    }

    #[test]
    fn give_up_retry_after_is_the_next_draw() {
        // The retry-after of a 503 is the wait the proxy would have slept next: the 4th draw.
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 9);
        let stop = give_up(run(&mut retrier, 10, &[retry(Cause::Overloaded, None); 4]));
        let mut shadow = Backoff::new(500, 8000, 9);
        let draws: Vec<u64> = (0..4).map(|_| shadow.draw_ms()).collect();
        let slept: Vec<u64> = retrier.waits().iter().map(|w| w.ms).collect();
        assert_eq!(slept, draws[..3]);
        assert_eq!(stop.retry_after_ms, draws[3].max(MIN_RETRY_AFTER_MS));
    }

    #[test]
    fn rate_limit_that_outlasts_the_budget_gives_429_at_once() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        retrier.attempt_started();
        let stop =
            give_up(retrier.after_attempt(T0 + 200, retry(Cause::RateLimited, Some(40_000))));
        assert_eq!(stop.reason, StopReason::BudgetExhausted);
        assert_eq!(stop.attempts, 1);
        assert_eq!(stop.retry_after_ms, 40_000);
        assert_eq!(stop.retry_after_secs(), 40);
        {
            let e = ProxyError::from(&stop);
            assert_eq!((e.status(), e.error_type()), (429, "rate_limit_error"));
        }
        assert!(retrier.waits().is_empty());
    }

    #[test]
    fn rate_limit_retry_after_is_at_least_one_second() {
        let policy = RetryPolicy {
            max_attempts: NonZeroU32::MIN,
            ..RetryPolicy::default()
        };
        let mut retrier = Retrier::new(policy, T0, 1);
        retrier.attempt_started();
        let stop = give_up(retrier.after_attempt(T0, retry(Cause::RateLimited, Some(200))));
        assert_eq!(stop.reason, StopReason::AttemptsExhausted);
        assert_eq!(stop.retry_after_ms, 1000);
        assert_eq!(stop.retry_after_secs(), 1);
    }

    #[test]
    fn rate_limit_floor_is_honoured_when_it_fits() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        retrier.attempt_started();
        // The first draw is at most 500 ms; the upstream asks for 2 s.
        let step = retrier.after_attempt(T0 + 100, retry(Cause::RateLimited, Some(2000)));
        assert_eq!(
            step,
            AfterAttempt::Wait {
                ms: 2000,
                cause: Cause::RateLimited
            }
        );
        assert_eq!(
            retrier.waits(),
            &[WaitRecord {
                after_attempt: 1,
                cause: Cause::RateLimited,
                at_ms: T0 + 100,
                ms: 2000,
                floor_ms: Some(2000)
            }]
        );
    }

    #[test]
    fn timeouts_past_the_budget_give_504() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        // One 60 s attempt timeout already overshoots the 30 s budget.
        let stop = give_up(run(&mut retrier, 60_000, &[retry(Cause::Timeout, None)]));
        assert_eq!(stop.reason, StopReason::BudgetExhausted);
        {
            let e = ProxyError::from(&stop);
            assert_eq!((e.status(), e.error_type()), (504, "timeout_error"));
        }
    }

    #[test]
    fn unreachable_on_every_attempt_gives_502() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        let stop = give_up(run(&mut retrier, 5, &[retry(Cause::Unreachable, None); 4]));
        assert_eq!(stop.reason, StopReason::AttemptsExhausted);
        {
            let e = ProxyError::from(&stop);
            assert_eq!((e.status(), e.error_type()), (502, "api_error"));
        }
    }

    #[test]
    fn the_last_failure_decides_the_answer() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        let verdicts = [
            retry(Cause::Overloaded, None),
            retry(Cause::Timeout, None),
            retry(Cause::Overloaded, None),
            retry(Cause::Transient(500), None),
        ];
        let stop = give_up(run(&mut retrier, 5, &verdicts));
        assert_eq!(stop.cause, Cause::Transient(500));
        assert!(stop.passes_through());
        let causes: Vec<Cause> = retrier.waits().iter().map(|w| w.cause).collect();
        assert_eq!(
            causes,
            [Cause::Overloaded, Cause::Timeout, Cause::Overloaded]
        );
    }

    #[test]
    fn transient_statuses_and_stream_errors_pass_through() {
        for cause in [
            Cause::Transient(500),
            Cause::Transient(502),
            Cause::Transient(503),
            Cause::Transient(504),
            Cause::Transient(408),
            Cause::Transient(409),
            Cause::StreamError,
        ] {
            let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
            let stop = give_up(run(&mut retrier, 5, &[retry(cause, None); 4]));
            assert!(stop.passes_through(), "{cause}");
        }
    }

    #[test]
    fn success_after_retries_is_delivered() {
        let mut retrier = Retrier::new(RetryPolicy::default(), T0, 1);
        let verdicts = [retry(Cause::Overloaded, None), Verdict::Deliver];
        assert_eq!(run(&mut retrier, 5, &verdicts), AfterAttempt::Deliver);
        assert_eq!(retrier.attempts(), 2);
        assert_eq!(retrier.waits().len(), 1);
    }

    #[test]
    fn a_wait_ending_exactly_at_the_deadline_is_slept() {
        let policy = RetryPolicy {
            backoff_base_ms: 0,
            budget_ms: 10_000,
            ..RetryPolicy::default()
        };
        let mut retrier = Retrier::new(policy, T0, 1);
        retrier.attempt_started();
        let step = retrier.after_attempt(T0 + 7000, retry(Cause::Overloaded, Some(3000)));
        assert_eq!(wait_ms(step), 3000);

        let mut retrier = Retrier::new(policy, T0, 1);
        retrier.attempt_started();
        let stop = give_up(retrier.after_attempt(T0 + 7000, retry(Cause::Overloaded, Some(3001))));
        assert_eq!(stop.reason, StopReason::BudgetExhausted);
        assert_eq!(stop.retry_after_ms, 3001);
        assert_eq!(stop.retry_after_secs(), 4);
    }

    #[test]
    fn zero_budget_allows_no_sleep() {
        let policy = RetryPolicy::default().with_client_budget(Some("0"));
        let mut retrier = Retrier::new(policy, T0, 1);
        retrier.attempt_started();
        let stop = give_up(retrier.after_attempt(T0 + 1, retry(Cause::Overloaded, None)));
        assert_eq!(stop.reason, StopReason::BudgetExhausted);
    }

    #[test]
    fn attempts_checked_before_budget() {
        // Both limits hit at once: the attempts limit is the one reported.
        let policy = RetryPolicy {
            max_attempts: NonZeroU32::MIN,
            ..RetryPolicy::default()
        };
        let mut retrier = Retrier::new(policy, T0, 1);
        let stop = give_up(run(&mut retrier, 90_000, &[retry(Cause::Timeout, None)]));
        assert_eq!(stop.reason, StopReason::AttemptsExhausted);
    }

    #[test]
    fn clock_near_the_end_of_time_does_not_overflow() {
        let policy = RetryPolicy {
            budget_ms: u64::MAX,
            backoff_base_ms: u64::MAX,
            backoff_max_ms: u64::MAX,
            ..RetryPolicy::default()
        };
        let mut retrier = Retrier::new(policy, u64::MAX - 5, 1);
        assert_eq!(retrier.deadline_ms(), u64::MAX);
        retrier.attempt_started();
        let step = retrier.after_attempt(u64::MAX, retry(Cause::Overloaded, Some(u64::MAX)));
        // u64::MAX + anything saturates to exactly the deadline, which is allowed.
        assert_eq!(wait_ms(step), u64::MAX);
        assert_eq!(retrier.total_wait_ms(), u64::MAX);
    }

    #[test]
    fn labels_for_the_log_line() {
        assert_eq!(
            StopReason::AttemptsExhausted.to_string(),
            "attempts_exhausted"
        );
        assert_eq!(StopReason::BudgetExhausted.to_string(), "budget_exhausted");
    }

    /// One scripted attempt for the simulation: how long it took, what it produced.
    fn scripted_outcome() -> impl Strategy<Value = (u64, Outcome)> {
        let floor = proptest::option::of(0u64..20_000);
        let outcome = prop_oneof![
            (
                prop::sample::select(vec![
                    200u16, 400, 401, 408, 409, 429, 500, 502, 503, 504, 529
                ]),
                proptest::option::of(any::<bool>()),
                floor.clone()
            )
                .prop_map(|(status, should_retry, wait_floor_ms)| Outcome::Response {
                    status,
                    should_retry,
                    wait_floor_ms
                }),
            (
                prop::sample::select(vec![
                    "overloaded_error",
                    "api_error",
                    "invalid_request_error"
                ]),
                proptest::option::of(any::<bool>()),
                floor
            )
                .prop_map(|(error_type, should_retry, wait_floor_ms)| {
                    Outcome::StreamError {
                        error_type: error_type.to_string(),
                        should_retry,
                        wait_floor_ms,
                    }
                }),
            Just(Outcome::ConnectFailure),
            Just(Outcome::AttemptTimeout),
        ];
        (0u64..70_000, outcome)
    }

    fn any_policy() -> impl Strategy<Value = RetryPolicy> {
        (
            1u32..8,
            0u64..2_000,
            0u64..20_000,
            0u64..60_000,
            1u64..60_000,
        )
            .prop_map(
                |(max_attempts, backoff_base_ms, backoff_max_ms, budget_ms, attempt_timeout_ms)| {
                    RetryPolicy {
                        max_attempts: NonZeroU32::new(max_attempts).unwrap(),
                        backoff_base_ms,
                        backoff_max_ms,
                        budget_ms,
                        attempt_timeout_ms,
                    }
                },
            )
    }

    proptest! {
        /// A whole request on a fake clock: random attempt durations and outcomes.
        #[test]
        fn simulated_request_keeps_every_promise(
            policy in any_policy(),
            started in 0u64..4_000_000_000_000,
            seed in any::<u64>(),
            script in prop::collection::vec(scripted_outcome(), 1..12),
        ) {
            let mut retrier = Retrier::new(policy, started, seed);
            let mut shadow = Backoff::new(policy.backoff_base_ms, policy.backoff_max_ms, seed);
            let deadline = started + policy.budget_ms;
            let max_attempts = policy.max_attempts.get();
            let mut now = started;
            let mut retry_index = 0u32;
            let mut script = script.into_iter();
            loop {
                let ticket = retrier.attempt_started();
                prop_assert!(ticket.number <= max_attempts);
                prop_assert_eq!(ticket.timeout_ms, policy.attempt_timeout_ms);
                let (took, outcome) = script.next().unwrap_or((1, Outcome::AttemptTimeout));
                now += took;
                let verdict = classify(&outcome);
                let expected_wait = match verdict {
                    Verdict::Retry { floor_ms, .. } => {
                        let draw = shadow.draw_ms();
                        prop_assert!(draw <= ceiling_ms(policy.backoff_base_ms, policy.backoff_max_ms, retry_index));
                        Some((draw.max(floor_ms.unwrap_or(0)), floor_ms))
                    }
                    Verdict::Deliver => None,
                };
                match retrier.after_attempt(now, verdict) {
                    AfterAttempt::Deliver => {
                        prop_assert_eq!(verdict, Verdict::Deliver);
                        break;
                    }
                    AfterAttempt::Wait { ms, cause } => {
                        let (expected, floor) = expected_wait.unwrap_or((u64::MAX, None));
                        prop_assert_eq!(ms, expected);
                        let ceiling = ceiling_ms(policy.backoff_base_ms, policy.backoff_max_ms, retry_index);
                        match floor {
                            Some(floor) if floor > ceiling => prop_assert_eq!(ms, floor),
                            Some(floor) => prop_assert!(ms <= ceiling && ms >= floor),
                            None => prop_assert!(ms <= ceiling),
                        }
                        prop_assert!(now + ms <= deadline, "wait ends past the budget");
                        prop_assert!(retrier.attempts() < max_attempts);
                        prop_assert_eq!(Some(cause), match verdict {
                            Verdict::Retry { cause, .. } => Some(cause),
                            Verdict::Deliver => None,
                        });
                        now += ms;
                        retry_index += 1;
                    }
                    AfterAttempt::GiveUp(stop) => {
                        let (expected, floor) = expected_wait.unwrap_or((0, None));
                        prop_assert!(stop.retry_after_ms >= MIN_RETRY_AFTER_MS);
                        prop_assert!(stop.retry_after_secs() >= 1);
                        prop_assert_eq!(stop.attempts, retrier.attempts());
                        match stop.reason {
                            StopReason::AttemptsExhausted => prop_assert_eq!(stop.attempts, max_attempts),
                            StopReason::BudgetExhausted => {
                                prop_assert!(stop.attempts < max_attempts);
                                prop_assert!(now + expected > deadline);
                            }
                        }
                        let wanted = match (stop.cause, floor) {
                            (Cause::RateLimited, Some(floor)) => floor,
                            _ => expected,
                        };
                        prop_assert_eq!(stop.retry_after_ms, wanted.max(MIN_RETRY_AFTER_MS));
                        break;
                    }
                }
            }
            prop_assert!(retrier.attempts() <= max_attempts);
            prop_assert_eq!(retrier.waits().len() as u32, retrier.attempts() - 1);
            prop_assert!(retrier.waits().iter().all(|w| w.at_ms + w.ms <= deadline));
        }

        #[test]
        fn same_seed_same_waits_different_seed_different_waits(a in any::<u64>(), b in any::<u64>()) {
            prop_assume!(a != b);
            let policy = RetryPolicy { max_attempts: NonZeroU32::new(30).unwrap(), budget_ms: u64::MAX / 2, ..RetryPolicy::default() };
            let waits = |seed: u64| {
                let mut retrier = Retrier::new(policy, T0, seed);
                run(&mut retrier, 1, &[retry(Cause::Overloaded, None); 20]);
                retrier.waits().iter().map(|w| w.ms).collect::<Vec<u64>>()
            };
            prop_assert_eq!(waits(a), waits(a));
            prop_assert_eq!(waits(a).len(), 20);
            prop_assert_ne!(waits(a), waits(b));
        }

        #[test]
        fn client_budget_never_lengthens(budget in any::<u64>(), header in ".{0,24}", n in any::<u64>()) {
            let policy = RetryPolicy { budget_ms: budget, ..RetryPolicy::default() };
            prop_assert!(policy.effective_budget_ms(Some(&header)) <= budget);
            prop_assert_eq!(policy.effective_budget_ms(Some(&n.to_string())), n.min(budget));
        }
    }
}
