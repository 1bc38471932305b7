//! Retrying the upstream inside a per-request time budget.
//!
//! The Anthropic API sheds load with `529`/`429` and fails transiently with `5xx`, timeouts and
//! dropped connections; most of these succeed on a later attempt. This module holds every
//! retry decision as pure code with the clock (`u64` milliseconds since the Unix epoch) and the
//! randomness (a seed) passed in, so it runs and is tested on the host; the Worker shell only
//! performs the attempts and the sleeps.
//!
//! - [`classify`](fn@classify) turns one attempt's [`Outcome`] into a [`Verdict`]: deliver, or retry for a
//!   [`Cause`] with the upstream's retry-after as a floor ([`upstream_wait_ms`],
//!   [`should_retry_header`]).
//! - [`ReadPlan`] says what an attempt reads of an answer before that decision (a `429`'s
//!   body, a stream's first event), and [`Head`] makes the outcome of what was read.
//! - [`Retrier`] counts attempts, draws full-jitter waits ([`Backoff`]) and answers with what
//!   comes [`AfterAttempt`]: deliver, wait, or give up when the attempts are used up or the
//!   next wait would end past the budget deadline. A wait that does not fit is never slept: the client gets
//!   an answer at once.
//! - [`Awaited`] sets how long one attempt may run: a stream until its first event
//!   (`ATTEMPT_TIMEOUT_MS`), a non-streaming message as long as the official SDKs wait for it.
//!
//! When retries stop, [`GiveUp::passes_through`] says whether the upstream's last answer goes
//! to the client as is; otherwise `ProxyError::from(&give_up)` is the structured error (503
//! `overloaded_error`, 429 `rate_limit_error`, 504 `timeout_error`, 502 `api_error`). Its `retry_after_ms` is at least a second. For a
//! 429 it is the upstream's own wait. Otherwise it is the wait the proxy would have slept
//! next — a fresh full-jitter draw floored by the upstream's hint — rather than a fixed
//! value: clients that honour `Retry-After` then come back spread out over the jitter window
//! instead of all at once, so the fleet's retries stay as decorrelated as the proxy's own.

mod backoff;
mod classify;
pub mod fallback;
mod policy;
mod read_plan;
mod retry_after;
pub mod runner;
mod stop;
mod timeout;

pub use backoff::{ceiling_ms, Backoff};
pub use classify::{
    classify, delivered_headers, is_overloaded, is_spend_limit, Cause, Head, Outcome, Verdict,
    MAX_ERROR_BODY_BYTES, OVERLOADED_ERROR, RETRYABLE_STATUSES, RETRYABLE_STREAM_ERRORS,
};
pub use policy::{
    AfterAttempt, AttemptTicket, GiveUp, Retrier, RetryPolicy, StopReason, WaitRecord,
    MIN_RETRY_AFTER_MS,
};
pub use read_plan::{Read, ReadPlan, Reading};
pub use retry_after::{should_retry_header, upstream_wait_ms, MAX_UPSTREAM_WAIT_MS};
pub use timeout::{whole_message_ms, Awaited, MAX_WHOLE_MESSAGE_MS, SDK_TIMEOUT_MS};
