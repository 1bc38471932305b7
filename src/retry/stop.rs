//! Why a request stopped short of a final answer from the upstream: its retries ran out, or
//! the shared state answered for the upstream. The runner records it and fallback decides on
//! it, so it sits beneath both.

use std::fmt;

use super::policy::StopReason;
use crate::upstream::{PaceReason, RefuseReason};

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
