//! Model fallback: when the model a request names is overloaded and cannot be served before
//! the request's deadline, the same request goes to the first model of its `MODEL_FALLBACKS`
//! list that can be.
//!
//! Retrying an overloaded model inside the budget is the first answer; a fallback is for when
//! that cannot work in time. These are the decisions, as pure functions of what the request
//! can see of each model (how its attempts ended, what the key's shared state answers for it)
//! and of its deadline; the request runner ([`super::runner`]) acts on them within its one
//! loop. A fallback is decided before the first byte only, so a stream whose first event says
//! `overloaded_error` counts as an overload like a `529`.

use std::fmt;

use super::classify::{Cause, Outcome};
use super::stop::Stop;
use crate::upstream::{Gate, PaceReason, RefuseReason, WaitReason};

/// The request header that turns fallback off for one request (`x-proxy-fallback: off`).
pub const OPT_OUT_HEADER: &str = "x-proxy-fallback";

/// Whether a request's `x-proxy-fallback` header lets it fall back: anything but `off`
/// (any case) does, as does no header.
#[must_use]
pub fn allowed_by_header(value: Option<&str>) -> bool {
    !value.is_some_and(|v| v.trim().eq_ignore_ascii_case("off"))
}

/// Why a request left the model it was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// Its attempts (or its budget, or the key's retry budget) ran out on overloaded answers.
    Overloaded,
    /// The model is in an outage: only probes go out, and nothing says one will get through
    /// before the deadline.
    Outage,
    /// Paced at the upstream's capacity for the model, its send time falls after the deadline.
    PacedPastDeadline,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Overloaded => "overloaded",
            Why::Outage => "outage",
            Why::PacedPastDeadline => "paced_past_deadline",
        })
    }
}

/// Whether the way a model's attempts stopped is one a fallback answers: an overload that
/// outlasts the request. A rate limit (the key's own, or a cooldown) is not: it is the
/// key's, and says nothing of the model's capacity.
#[must_use]
pub fn why_leave(stop: Stop, last_cause: Option<Cause>) -> Option<Why> {
    match (stop, last_cause) {
        (Stop::Retries(_), Some(Cause::Overloaded))
        | (Stop::Refused(RefuseReason::RetryBudget), Some(Cause::Overloaded)) => {
            Some(Why::Overloaded)
        }
        (Stop::Refused(RefuseReason::Overloaded), _) => Some(Why::Outage),
        (Stop::Refused(RefuseReason::Paced(PaceReason::Capacity)), _) => {
            Some(Why::PacedPastDeadline)
        }
        _ => None,
    }
}

/// Whether a wait the shared state asks of a request means leaving its model, when there is
/// a model to go to: waiting out an outage for a probe that may never succeed in time is
/// worse than an answer from a model that serves now. Cooldowns and recovery releases end at
/// a known time inside the deadline and are waited for.
#[must_use]
pub fn why_leave_wait(reason: WaitReason) -> Option<Why> {
    match reason {
        WaitReason::Overloaded => Some(Why::Outage),
        WaitReason::Cooldown | WaitReason::Recovering | WaitReason::Queued => None,
    }
}

/// Whether a fallback model, as the shared state first answers for it, can be served before
/// `deadline_ms`: it may go now, or at a send time or the end of a wait within the deadline.
/// A model in an outage, or one the state refuses, cannot.
#[must_use]
pub fn can_serve(gate: &Gate, deadline_ms: u64) -> bool {
    match *gate {
        Gate::Go { .. } => true,
        Gate::Scheduled { at_ms, .. } => at_ms <= deadline_ms,
        Gate::Wait { until_ms, reason } => {
            why_leave_wait(reason).is_none() && until_ms <= deadline_ms
        }
        Gate::Refuse { .. } => false,
    }
}

/// Whether a fallback model's final answer is delivered: only a success. A fallback that
/// refuses the request itself (a `400` for a `max_tokens` it does not allow, a `404` for a
/// model the key cannot use) would hand the client an error about a model it never asked
/// for; it gets the requested model's overloaded answer instead.
#[must_use]
pub fn delivers(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Response { status, .. } if (200..300).contains(status))
}

/// The models a request may still fall back to, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallbacks {
    requested: String,
    candidates: Vec<String>,
    next: usize,
}

impl Fallbacks {
    /// A request for `requested` with its configured `list`; none when fallback is off for it.
    #[must_use]
    pub fn new(requested: &str, list: &[String], enabled: bool) -> Fallbacks {
        Fallbacks {
            requested: requested.to_string(),
            candidates: if enabled { list.to_vec() } else { Vec::new() },
            next: 0,
        }
    }

    /// No fallback at all.
    #[must_use]
    pub fn none() -> Fallbacks {
        Fallbacks::default()
    }

    /// The model the client asked for.
    #[must_use]
    pub fn requested(&self) -> &str {
        &self.requested
    }

    /// The models this request may fall back to, in order (none when fallback is off).
    #[must_use]
    pub fn candidates(&self) -> &[String] {
        &self.candidates
    }

    /// Whether a model is left to fall back to.
    #[must_use]
    pub fn has_next(&self) -> bool {
        self.next < self.candidates.len()
    }

    /// The next model to try, in the list's order; each is tried once.
    pub fn take_next(&mut self) -> Option<String> {
        let model = self.candidates.get(self.next).cloned();
        if model.is_some() {
            self.next = self.next.saturating_add(1);
        }
        model
    }
}

/// A model tried as a fallback that did not answer, and how it ended, for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried {
    pub model: String,
    /// e.g. `cannot_serve_in_time`, `status_400`, `attempts_exhausted`.
    pub ended: String,
}

/// What fallback did for one request, for its log line and the `x-proxy-model` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackRecord {
    /// The model the client asked for.
    pub from: String,
    /// Why the request left it.
    pub why: Why,
    /// The model that answered, when one did.
    pub to: Option<String>,
    /// Models tried, in order, that did not answer.
    pub tried: Vec<Tried>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::StopReason;
    use crate::upstream::{LimitDimension, ProbeTicket};

    #[test]
    fn only_an_overload_that_outlasts_the_request_leaves_the_model() {
        use RefuseReason as R;
        let cases = [
            (
                Stop::Retries(StopReason::AttemptsExhausted),
                Some(Cause::Overloaded),
                Some(Why::Overloaded),
            ),
            (
                Stop::Retries(StopReason::BudgetExhausted),
                Some(Cause::Overloaded),
                Some(Why::Overloaded),
            ),
            (
                Stop::Refused(R::RetryBudget),
                Some(Cause::Overloaded),
                Some(Why::Overloaded),
            ),
            (Stop::Refused(R::Overloaded), None, Some(Why::Outage)),
            (
                Stop::Refused(R::Overloaded),
                Some(Cause::Overloaded),
                Some(Why::Outage),
            ),
            (
                Stop::Refused(R::Paced(PaceReason::Capacity)),
                None,
                Some(Why::PacedPastDeadline),
            ),
            // The key's own limits and cooldowns are the key's, not the model's.
            (
                Stop::Refused(R::Paced(PaceReason::KeyLimit(LimitDimension::Requests))),
                None,
                None,
            ),
            (Stop::Refused(R::Cooldown), Some(Cause::RateLimited), None),
            (
                Stop::Refused(R::RetryBudget),
                Some(Cause::RateLimited),
                None,
            ),
            (
                Stop::Retries(StopReason::AttemptsExhausted),
                Some(Cause::RateLimited),
                None,
            ),
            // Timeouts, unreachable upstreams and transient statuses are not overloads.
            (
                Stop::Retries(StopReason::AttemptsExhausted),
                Some(Cause::Timeout),
                None,
            ),
            (
                Stop::Retries(StopReason::AttemptsExhausted),
                Some(Cause::Unreachable),
                None,
            ),
            (
                Stop::Retries(StopReason::AttemptsExhausted),
                Some(Cause::Transient(503)),
                None,
            ),
            (
                Stop::Retries(StopReason::AttemptsExhausted),
                Some(Cause::StreamError),
                None,
            ),
        ];
        for (stop, cause, expected) in cases {
            assert_eq!(why_leave(stop, cause), expected, "{stop:?} {cause:?}");
        }
        assert_eq!(why_leave_wait(WaitReason::Overloaded), Some(Why::Outage));
        assert_eq!(why_leave_wait(WaitReason::Cooldown), None);
        assert_eq!(why_leave_wait(WaitReason::Recovering), None);
    }

    #[test]
    fn a_fallback_serves_when_its_state_lets_it_go_before_the_deadline() {
        let deadline = 10_000;
        let serves = [
            Gate::Go { probe: None },
            Gate::Go {
                probe: Some(ProbeTicket(3)),
            },
            Gate::Scheduled {
                at_ms: 9_000,
                reason: PaceReason::Capacity,
            },
            Gate::Scheduled {
                at_ms: deadline,
                reason: PaceReason::KeyLimit(LimitDimension::InputTokens),
            },
            Gate::Wait {
                until_ms: 2_000,
                reason: WaitReason::Cooldown,
            },
            Gate::Wait {
                until_ms: 4_000,
                reason: WaitReason::Recovering,
            },
        ];
        for gate in serves {
            assert!(can_serve(&gate, deadline), "{gate:?}");
        }
        let cannot = [
            Gate::Scheduled {
                at_ms: deadline + 1,
                reason: PaceReason::Capacity,
            },
            Gate::Wait {
                until_ms: 1_000,
                reason: WaitReason::Overloaded,
            },
            Gate::Wait {
                until_ms: deadline + 1,
                reason: WaitReason::Cooldown,
            },
            Gate::Refuse {
                retry_after_ms: 1_000,
                reason: RefuseReason::Overloaded,
            },
            Gate::Refuse {
                retry_after_ms: 1_000,
                reason: RefuseReason::Paced(PaceReason::Capacity),
            },
            Gate::Refuse {
                retry_after_ms: 1_000,
                reason: RefuseReason::Cooldown,
            },
        ];
        for gate in cannot {
            assert!(!can_serve(&gate, deadline), "{gate:?}");
        }
    }

    #[test]
    fn only_a_fallbacks_success_is_delivered() {
        let response = |status| Outcome::Response {
            status,
            should_retry: None,
            wait_floor_ms: None,
        };
        assert!(delivers(&response(200)));
        for status in [400, 404, 413, 422, 500, 529] {
            assert!(!delivers(&response(status)), "{status}");
        }
        assert!(!delivers(&Outcome::AttemptTimeout));
        assert!(!delivers(&Outcome::StreamError {
            error_type: "overloaded_error".to_string(),
            should_retry: None,
            wait_floor_ms: None
        }));
    }

    #[test]
    fn fallbacks_come_in_the_listed_order_once_each_and_not_at_all_when_off() {
        let list = ["b".to_string(), "c".to_string()];
        let mut on = Fallbacks::new("a", &list, true);
        assert_eq!(on.requested(), "a");
        assert!(on.has_next());
        assert_eq!(on.take_next().as_deref(), Some("b"));
        assert_eq!(on.take_next().as_deref(), Some("c"));
        assert!(!on.has_next());
        assert_eq!(on.take_next(), None);
        let mut off = Fallbacks::new("a", &list, false);
        assert!(!off.has_next());
        assert_eq!(off.take_next(), None);
        assert!(!Fallbacks::none().has_next());
    }

    #[test]
    fn the_opt_out_header_says_off() {
        assert!(allowed_by_header(None));
        assert!(allowed_by_header(Some("on")));
        assert!(allowed_by_header(Some("")));
        for off in ["off", "OFF", " Off "] {
            assert!(!allowed_by_header(Some(off)), "{off}");
        }
    }
}
