//! Per-caller rate limits: the pure core a Durable Object drives.
//!
//! Each caller's object loads a [`LimiterState`], makes one decision with the tier's
//! [`TierLimits`](crate::config::TierLimits) and the current time (`u64` ms since the Unix
//! epoch, passed in), and stores the state again. Nothing here touches the runtime, so every
//! rule is tested on the host with a fake clock.
//!
//! - Limits replenish continuously, like Anthropic's token buckets: a bucket holds one
//!   minute's quota (a fresh key may burst it at once) and refills at quota/60 per second, in
//!   exact integer arithmetic (a bucket counts in 1/60 000 of a token).
//! - [`LimiterState::admit`] charges one request against `rpm`, the input estimate against
//!   `input_tpm`, `max_tokens` against `output_tpm` and a leased slot against `concurrency`,
//!   all or nothing. A denial is data ([`Denial`]) with an exact retry-after, as in
//!   governor's GCRA; a request that could never fit is [`Admission::NeverFits`].
//! - [`LimiterState::settle`] returns what was reserved and not used, charges what was used
//!   beyond it, and frees the slot — and never creates capacity.
//! - [`LimiterState::snapshot`] and the [`headers`](rate_limit_headers) functions tell the
//!   caller where it stands; [`LimiterState::idle_in_ms`] says when a quiet caller's state is
//!   as good as a fresh one ([`LimiterState::is_idle`]), so the shell can delete it.

mod bucket;
mod headers;
mod object;
mod settle;
mod state;

#[cfg(test)]
mod properties;

pub use headers::{anthropic_headers, limit_headers, rate_limit_headers, rfc3339_utc};
pub use object::{AdmitReply, LimiterCall, LimiterObject, LimiterReply};
pub use settle::{settlement_usage, Answered};
pub use state::{
    Admission, AdmissionRequest, Denial, Dimension, DimensionStatus, LimiterState, NeverFits,
    Reservation, Settlement, Usage, CONCURRENCY_RETRY_CAP_MS, LEASE_MEMORY_MS, MAX_CLOCK_LEAD_MS,
    MAX_LEASE_MS, MIN_LEASE_RECORDS,
};

use crate::error::{whole_seconds, LimitInfo, ProxyError, Scope};

impl Denial {
    /// The message of the 429, e.g. `rpm limit of 50 reached for this key; retry in 12 s`.
    /// The seconds are the `Retry-After` the answer carries (rounded up).
    #[must_use]
    pub fn message(&self) -> String {
        format!(
            "{} limit of {} reached for this key; retry in {} s",
            self.dimension,
            self.limit,
            whole_seconds(self.retry_after_ms)
        )
    }
}

impl NeverFits {
    /// The message of the 400, e.g. `max_tokens of 9000 exceeds this key's output_tpm limit
    /// of 8000 per minute; lower max_tokens`.
    #[must_use]
    pub fn message(&self) -> String {
        match self.dimension {
            Dimension::OutputTpm => format!(
                "max_tokens of {} exceeds this key's output_tpm limit of {} per minute; \
                 lower max_tokens",
                self.requested, self.limit
            ),
            dimension => format!(
                "this request needs {} against this key's {dimension} limit of {}, \
                 so it can never be admitted",
                self.requested, self.limit
            ),
        }
    }
}

impl From<&Denial> for ProxyError {
    fn from(denial: &Denial) -> ProxyError {
        ProxyError::RateLimited {
            retry_after_ms: denial.retry_after_ms,
            message: denial.message(),
            limit: LimitInfo {
                scope: Scope::Key,
                dimension: Some(denial.dimension.as_str().to_string()),
                limit: Some(denial.limit),
                remaining: Some(denial.remaining),
            },
        }
    }
}

impl From<&NeverFits> for ProxyError {
    fn from(never: &NeverFits) -> ProxyError {
        ProxyError::NeverFits(never.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denial_messages_name_the_limit_and_the_wait() {
        let denial = Denial {
            retry_after_ms: 11_734,
            dimension: Dimension::Rpm,
            limit: 50,
            remaining: 0,
        };
        assert_eq!(
            denial.message(),
            "rpm limit of 50 reached for this key; retry in 12 s"
        );
        let error = ProxyError::from(&denial);
        assert_eq!(error.status(), 429);
        assert_eq!(error.retry_after_ms(), Some(11_734));
        let answer = error.answer("req_1");
        assert!(answer.headers.contains(&("retry-after", "12".to_string())));
        assert!(
            answer.body.contains(r#""dimension":"rpm""#),
            "{}",
            answer.body
        );
    }

    #[test]
    fn never_fits_is_a_400_that_says_do_not_retry() {
        let never = NeverFits {
            dimension: Dimension::OutputTpm,
            limit: 8_000,
            requested: 9_000,
        };
        assert_eq!(
            never.message(),
            "max_tokens of 9000 exceeds this key's output_tpm limit of 8000 per minute; lower max_tokens"
        );
        let error = ProxyError::from(&never);
        assert_eq!(error.status(), 400);
        assert!(!error.should_retry());
    }
}
