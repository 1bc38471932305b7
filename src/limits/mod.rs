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
//!   governor's GCRA. No request is refused for its size: one larger than a whole bucket
//!   waits for a full bucket and reserves all of it, as Anthropic serves it.
//! - [`LimiterState::settle`] returns what was reserved and not used, charges what was used
//!   beyond it (which may put a bucket in debt, waited out by the next requests), and frees
//!   the slot — and never creates capacity.
//! - [`LimiterState::snapshot`] and the [`headers`](rate_limit_headers) functions tell the
//!   caller where it stands; [`LimiterState::idle_in_ms`] says when a quiet caller's state is
//!   as good as a fresh one ([`LimiterState::is_idle`]), so the shell can delete it.

mod bucket;
pub mod calendar;
mod caller_headers;
mod credit;
mod limiter_state;
mod object;
mod owner;
pub mod prices;
pub mod quota;
mod renewal;
mod settle;

#[cfg(test)]
mod credit_properties;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod quota_properties;

pub use caller_headers::{
    anthropic_headers, limit_headers, quota_headers, rate_limit_headers, rfc3339_utc,
};
pub use credit::{
    Carry, Credit, Credits, LocalAdmission, OwnerStep, Returns, Settled, Ticket, CREDIT_VALID_MS,
    FLUSHER_LIFE_MS, MAX_CREDIT_TICKETS, SETTLE_DELAY_MS,
};
pub use limiter_state::{
    Admission, AdmissionRequest, Denial, Dimension, DimensionStatus, LimiterState, Reservation,
    Settlement, Used, CONCURRENCY_RETRY_CAP_MS, LEASE_MEMORY_MS, MAX_CLOCK_LEAD_MS, MAX_LEASE_MS,
    MIN_LEASE_RECORDS,
};
pub use object::{
    AdmitReply, CallerUsage, LimiterCall, LimiterObject, LimiterReply, ObjectCalls, RefillReply,
};
pub use owner::{
    own, send_until_done, CallerCredit, Ending, Owner, Sent, OWNER_GIVES_UP_MS, OWNER_MAX_FAILURES,
    OWNER_TICK_MS,
};
pub use renewal::{
    Renewals, Step, FIRST_RENEWAL_MS, RENEW_EVERY_MS, SLOT_BACK_WITHIN_MS, STALLED_BODY_MS,
    STREAM_LEASE_MS, WATCH_TICK_MS,
};
pub use settle::{settlement_cost, settlement_usage, Answered};

use crate::error::{retry_in, LimitInfo, ProxyError, Scope};
use quota::QuotaDenial;

/// Until its first byte, a request holds its slot for this long, renewed every
/// [`WAITING_RENEW_EVERY_MS`] while it waits or tries (backoff, pacing, a slow attempt): a
/// request the runtime cancels before its answer frees its slot within 20 s.
pub const WAITING_LEASE_MS: u64 = 15_000;

/// How often a request that has no answer yet renews its slot.
pub const WAITING_RENEW_EVERY_MS: u64 = 5_000;

impl Denial {
    /// The message of the 429, e.g. `rpm limit of 50 reached for this key; retry in 12 s`.
    /// The seconds are the `Retry-After` the answer carries (rounded up).
    #[must_use]
    pub fn message(&self) -> String {
        format!(
            "{} limit of {} reached for this key; {}",
            self.dimension,
            self.limit,
            retry_in(self.retry_after_ms)
        )
    }
}

/// The 429 of a refusal by the caller's own limits or quotas (`limit.scope: "key"`); its
/// headers are added by whoever holds them.
fn key_refusal(
    retry_after_ms: u64,
    message: String,
    dimension: &str,
    (limit, remaining): (u64, u64),
) -> ProxyError {
    ProxyError::RateLimited {
        retry_after_ms,
        message,
        limit: LimitInfo {
            scope: Scope::Key,
            dimension: Some(dimension.to_string()),
            limit: Some(limit),
            remaining: Some(remaining),
        },
        limit_headers: Vec::new(),
    }
}

impl From<&Denial> for ProxyError {
    fn from(denial: &Denial) -> ProxyError {
        key_refusal(
            denial.retry_after_ms,
            denial.message(),
            denial.dimension.as_str(),
            (denial.limit, denial.remaining),
        )
    }
}

impl QuotaDenial {
    /// The message of the 429, e.g. `usd_per_day quota of 200000 reached for this key (0
    /// left); it resets in 3600 s`. Dollars are in micro-dollars, as in the headers.
    #[must_use]
    pub fn message(&self) -> String {
        let name = self.dimension.as_str();
        let unit = if name.starts_with("usd_") {
            " micro-dollars"
        } else {
            ""
        };
        let resets = crate::error::whole_seconds(self.retry_after_ms);
        if self.never_fits {
            format!(
                "this request alone could use more than the whole {name} quota of {}{unit} \
                 for this key: it cannot be admitted in any window (lower max_tokens or the \
                 prompt); the window resets in {resets} s",
                self.limit
            )
        } else {
            format!(
                "{name} quota of {}{unit} reached for this key ({} left, not enough for this \
                 request's worst case); it resets in {resets} s",
                self.limit, self.remaining
            )
        }
    }
}

impl From<&QuotaDenial> for ProxyError {
    fn from(denial: &QuotaDenial) -> ProxyError {
        key_refusal(
            denial.retry_after_ms,
            denial.message(),
            denial.dimension.as_str(),
            (denial.limit, denial.remaining),
        )
    }
}

/// What an answer's usage settles: the input as the limits count it (cache writes in, cache
/// reads out, see [`crate::stream::sse::Usage`]) and the output.
impl From<&crate::stream::sse::Usage> for Used {
    fn from(seen: &crate::stream::sse::Usage) -> Used {
        Used {
            input_tokens: seen.input_tokens,
            output_tokens: seen.output_tokens,
        }
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

    fn tier(input_tpm: u32) -> crate::config::TierLimits {
        crate::config::TierLimits {
            rpm: None,
            input_tpm: std::num::NonZeroU32::new(input_tpm),
            output_tpm: None,
            concurrency: None,
            quotas: Default::default(),
        }
    }

    fn settle_with_answer(answer: &[u8], input_tpm: u32) -> (LimiterState, u64) {
        let limits = tier(input_tpm);
        let mut state = LimiterState::new();
        let now = 1_764_000_000_000;
        let request = AdmissionRequest {
            input_tokens: 30,
            output_tokens: 0,
            lease_ms: 60_000,
            quota: None,
        };
        let Admission::Admitted(reservation) = state.admit(&limits, now, &request) else {
            panic!("a fresh key is admitted");
        };
        let seen = crate::stream::tap::json_usage(answer);
        state.settle(&limits, now, &reservation, Used::from(&seen));
        (state, now)
    }

    #[test]
    fn regression_prompt_caching_locked_a_caller_out() {
        // 20 000 tokens read from the cache against an input_tpm of 2 000 used to put the key
        // 18 000 tokens in debt (nine minutes). Cache reads are free: the next request goes.
        let answer = br#"{"usage":{"input_tokens":25,"cache_read_input_tokens":20000,"cache_creation_input_tokens":0,"output_tokens":5}}"#;
        let (mut state, now) = settle_with_answer(answer, 2_000);
        let next = AdmissionRequest {
            input_tokens: 30,
            output_tokens: 0,
            lease_ms: 60_000,
            quota: None,
        };
        assert!(matches!(
            state.admit(&tier(2_000), now, &next),
            Admission::Admitted(_)
        ));
    }

    #[test]
    fn cache_writes_are_charged() {
        let answer = br#"{"usage":{"input_tokens":25,"cache_creation_input_tokens":5000,"cache_read_input_tokens":0,"output_tokens":5}}"#;
        let (mut state, now) = settle_with_answer(answer, 2_000);
        let next = AdmissionRequest {
            input_tokens: 30,
            output_tokens: 0,
            lease_ms: 60_000,
            quota: None,
        };
        let Admission::Denied(denial) = state.admit(&tier(2_000), now, &next) else {
            panic!("5 025 input tokens on a 2 000 bucket must be waited for");
        };
        assert_eq!(denial.dimension, Dimension::InputTpm);
        // 3 025 tokens of debt plus the 30 asked: 3 055 / (2 000 per minute) ≈ 91.65 s.
        assert_eq!(denial.retry_after_ms, 91_650);
    }
}
