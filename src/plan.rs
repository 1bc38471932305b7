//! The Cloudflare plan limits the proxy lives within, as figures the code and `docs/limits.md`
//! share: what the configuration is checked against, and what bounds the work done after an
//! answer. Cloudflare's own pages are the authority; these are the figures as of 2026.

/// Subrequests to the internet (the upstream) one invocation may make on the Workers Free
/// plan. Every attempt is one.
pub const FREE_EXTERNAL_SUBREQUESTS: u32 = 50;

/// Subrequests to Cloudflare services (every call to a Durable Object included) one
/// invocation may make on the Workers Free plan.
pub const FREE_SERVICE_SUBREQUESTS: u32 = 1_000;

/// Durable Object requests a day on the Workers Free plan (calls and alarms alike).
pub const FREE_OBJECT_REQUESTS_PER_DAY: u64 = 100_000;

/// CPU time per request on the Workers Free plan.
pub const FREE_CPU_MS: u64 = 10;

/// How long work under `waitUntil` may go on after the response is complete or the client
/// went away, on every plan; what is still pending then is cancelled.
pub const WAIT_UNTIL_MS: u64 = 30_000;

/// The largest value of one environment variable or secret, on every plan.
pub const VARIABLE_BYTES: usize = 5 * 1024;

/// Memory of one isolate, on every plan.
pub const ISOLATE_MEMORY_BYTES: u64 = 128 * 1024 * 1024;
