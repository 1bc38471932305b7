//! The simulator's shared state: the fault queue, the global modes, the log
//! and counters, behind one `std::sync::Mutex` that is only ever held for
//! short, synchronous sections (never across an `.await`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};

use crate::capacity::{overload_roll, Capacity, RateLimit, Refusal, Window};
use crate::keylimits::{Charge, Cost, Dimension, KeyLimits};
use crate::log::{LogEntry, RequestLog, Stats};
use crate::respond::rfc3339;
use crate::script::{Fault, FaultQueue, MAX_PAD_BYTES};
use crate::Config;

/// Requests-per-minute figure shown in headers when no `rate_limit` mode is set.
pub const DEFAULT_REQUESTS_LIMIT: u64 = 4_000;
/// Token figures shown in headers without `key_limits`: a key far above anything a test or
/// benchmark sends (nothing enforces them), so a proxy that paces by the headers never
/// finds it near its limits.
pub const INPUT_TOKENS_LIMIT: u64 = 40_000_000;
pub const OUTPUT_TOKENS_LIMIT: u64 = 8_000_000;

/// The `request-id` for request number `n`.
pub fn request_id(n: u64) -> String {
    format!("req_sim_{n:012}")
}

/// Global behaviour set by `POST /_sim/mode`.
#[derive(Clone, Debug, Default)]
pub struct Mode {
    pub token_delay_ms: Option<u64>,
    pub tokens: Option<u64>,
    pub pad_bytes: Option<u64>,
    pub overload_probability: Option<f64>,
    pub seed: Option<u64>,
    /// Requests seen by the overload roll since it was last configured.
    pub overload_counter: u64,
    pub overloaded: u64,
    pub capacity: Option<Capacity>,
    pub rate_limit: Option<RateLimit>,
    pub key_limits: Option<KeyLimits>,
}

const MODE_FIELDS: &[&str] = &[
    "token_delay_ms",
    "tokens",
    "pad_bytes",
    "overload_probability",
    "seed",
    "capacity",
    "rate_limit",
    "key_limits",
];

fn opt_u64(key: &str, v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        _ => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be a non-negative integer or null")),
    }
}

impl Mode {
    /// Merges a JSON object into the mode; `null` clears a field. Either the
    /// whole object applies or (on error) nothing does.
    pub fn merge(&mut self, patch: &Value, now_unix_ms: f64) -> Result<(), String> {
        let obj = patch.as_object().ok_or("mode must be a JSON object")?;
        let mut next = self.clone();
        for (key, v) in obj {
            match key.as_str() {
                "token_delay_ms" => next.token_delay_ms = opt_u64(key, v)?,
                "tokens" => next.tokens = opt_u64(key, v)?,
                "pad_bytes" => {
                    next.pad_bytes = opt_u64(key, v)?;
                    if next.pad_bytes.unwrap_or(0) > MAX_PAD_BYTES {
                        return Err(format!("pad_bytes must be at most {MAX_PAD_BYTES}"));
                    }
                }
                "overload_probability" => {
                    next.overload_probability = match v {
                        Value::Null => None,
                        _ => Some(
                            v.as_f64()
                                .filter(|p| (0.0..=1.0).contains(p))
                                .ok_or("overload_probability must be a number in 0..=1 or null")?,
                        ),
                    };
                    next.overload_counter = 0;
                    next.overloaded = 0;
                }
                "seed" => {
                    next.seed = opt_u64(key, v)?;
                    next.overload_counter = 0;
                    next.overloaded = 0;
                }
                "capacity" => {
                    next.capacity = match v {
                        Value::Null => None,
                        _ => Some(Capacity::from_json(v, now_unix_ms)?),
                    }
                }
                "rate_limit" => {
                    next.rate_limit = match v {
                        Value::Null => None,
                        _ => Some(RateLimit::from_json(v, now_unix_ms)?),
                    }
                }
                "key_limits" => {
                    next.key_limits = match v {
                        Value::Null => None,
                        _ => Some(KeyLimits::from_json(v, now_unix_ms)?),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown mode field {other:?} (known: {})",
                        MODE_FIELDS.join(", ")
                    ))
                }
            }
        }
        *self = next;
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "token_delay_ms": self.token_delay_ms,
            "tokens": self.tokens,
            "pad_bytes": self.pad_bytes,
            "overload_probability": self.overload_probability,
            "seed": self.seed,
            "capacity": self.capacity.as_ref().map(Capacity::settings_json),
            "rate_limit": self.rate_limit.as_ref().map(|r| json!({"rpm": r.window.limit})),
            "key_limits": self.key_limits.as_ref().map(KeyLimits::settings_json),
        })
    }
}

/// Identifies a logged request so its outcome can be recorded later; a
/// `POST /_sim/reset` in between makes the late update a no-op.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    epoch: u64,
    seq: u64,
    second: u64,
}

/// Everything behind the lock.
pub struct Inner {
    epoch: u64,
    pub queue: FaultQueue,
    pub log: RequestLog,
    pub stats: Stats,
    pub mode: Mode,
    default_window: Window,
}

/// Shared by every connection.
pub struct State {
    pub api_key: Option<String>,
    pub seed: u64,
    request_ids: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    inner: Mutex<Inner>,
    /// Files and batches (see `store`).
    pub store: Mutex<crate::store::Store>,
}

/// The facts a request brings, for the log.
pub struct Arrival {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Map<String, Value>,
    pub body: Arc<str>,
    pub body_len: usize,
    pub body_sha256: Option<Arc<str>>,
    pub received_at_ms: f64,
}

impl State {
    pub fn new(config: &Config) -> State {
        State {
            api_key: config.api_key.clone(),
            seed: config.seed,
            request_ids: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                epoch: 0,
                queue: FaultQueue::default(),
                log: RequestLog::default(),
                stats: Stats::default(),
                mode: Mode::default(),
                default_window: Window::new(DEFAULT_REQUESTS_LIMIT, crate::respond::unix_ms()),
            }),
            store: Mutex::new(crate::store::Store::default()),
        }
    }

    /// The lock; a poisoned lock is recovered rather than propagated.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next request number (1, 2, ...; never reset).
    pub fn next_request_number(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// `req_sim_000000000001`, `req_sim_000000000002`, ...
    pub fn next_request_id(&self) -> String {
        request_id(self.next_request_number())
    }

    pub fn record_arrival(&self, a: Arrival) -> Ticket {
        let second = (a.received_at_ms / 1000.0).floor().max(0.0) as u64;
        let mut inner = self.lock();
        inner.stats.arrival(second);
        let seq = inner.log.push(LogEntry {
            seq: 0,
            method: a.method,
            path: a.path,
            query: a.query,
            headers: Arc::new(a.headers),
            body: a.body,
            body_len: a.body_len,
            body_sha256: a.body_sha256,
            received_at_ms: a.received_at_ms,
            status: None,
            fault: None,
            mode: None,
            usage: None,
        });
        Ticket {
            epoch: inner.epoch,
            seq,
            second,
        }
    }

    /// Records how a request was answered (`status: None` for hangs and
    /// resets before headers; `ok` for clean successes).
    pub fn finish(
        &self,
        ticket: Ticket,
        status: Option<u16>,
        ok: bool,
        fault: Option<&Arc<Fault>>,
        mode: Option<&'static str>,
    ) {
        let mut inner = self.lock();
        if inner.epoch != ticket.epoch {
            return;
        }
        if let Some(status) = status {
            inner.stats.answered(ticket.second, status, ok);
        }
        if let Some(entry) = inner.log.get_mut(ticket.seq) {
            entry.status = status;
            entry.fault = fault.cloned();
            entry.mode = mode;
        }
    }

    /// Records the usage a request's answer reports (see [`LogEntry::usage`]).
    pub fn record_usage(&self, ticket: Ticket, usage: Map<String, Value>) {
        let mut inner = self.lock();
        if inner.epoch != ticket.epoch {
            return;
        }
        if let Some(entry) = inner.log.get_mut(ticket.seq) {
            entry.usage = Some(usage);
        }
    }

    pub fn pop_fault(&self, path: &str, model: Option<&str>) -> Option<Arc<Fault>> {
        self.lock().queue.pop_for(path, model)
    }

    /// Runs the global modes for one request: outage and capacity, then the
    /// per-minute limit, then the key's token buckets (only for a `cost`: a
    /// valid Messages request), then the seeded overload roll. A request the
    /// overload roll refuses gets its key charge back. Returns what the key
    /// buckets were charged, if anything.
    pub fn admit_work(
        &self,
        now_unix_ms: f64,
        cost: Option<&Cost>,
        model: Option<&str>,
    ) -> Result<Option<Charge>, Refusal> {
        let mut inner = self.lock();
        inner.default_window.count(now_unix_ms);
        let mode = &mut inner.mode;
        if let Some(cap) = mode.capacity.as_mut().filter(|c| c.applies_to(model)) {
            cap.admit(now_unix_ms)?;
        }
        if let Some(rl) = mode.rate_limit.as_mut() {
            rl.admit(now_unix_ms)?;
        }
        let mut charge = None;
        if let (Some(kl), Some(cost)) = (mode.key_limits.as_mut(), cost) {
            charge = Some(kl.admit(now_unix_ms, cost).map_err(Refusal::KeyLimited)?);
        }
        if let Some(p) = mode.overload_probability {
            let n = mode.overload_counter;
            mode.overload_counter += 1;
            if overload_roll(mode.seed.unwrap_or(self.seed), n, p) {
                mode.overloaded += 1;
                if let (Some(kl), Some(cost)) = (mode.key_limits.as_mut(), cost) {
                    kl.undo(now_unix_ms, cost);
                }
                return Err(Refusal::Overloaded);
            }
        }
        Ok(charge)
    }

    /// Corrects the output `charge` reserved to what the answer `produced`,
    /// if the same `key_limits` setting is still in force.
    pub fn settle_output(&self, charge: &Charge, produced: u64, now_unix_ms: f64) {
        // Nothing reserved: the output is unlimited.
        if charge.output_reserved == 0 || produced == charge.output_reserved {
            return;
        }
        let mut inner = self.lock();
        if let Some(kl) = inner.mode.key_limits.as_mut() {
            if kl.generation == charge.generation {
                kl.settle_output(now_unix_ms, charge.output_reserved, produced);
            }
        }
    }

    /// `(token_delay_ms, tokens, pad_bytes)` defaults from the mode.
    pub fn answer_defaults(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        let inner = self.lock();
        (
            inner.mode.token_delay_ms,
            inner.mode.tokens,
            inner.mode.pad_bytes,
        )
    }

    /// The `anthropic-ratelimit-*` headers for an answer.
    pub fn ratelimit_headers(
        &self,
        now_unix_ms: f64,
        input_tokens: u64,
        output_tokens: u64,
    ) -> Vec<(&'static str, String)> {
        let inner = self.lock();
        if let Some(kl) = &inner.mode.key_limits {
            return key_limit_headers(kl, now_unix_ms, input_tokens, output_tokens);
        }
        let window = inner
            .mode
            .rate_limit
            .as_ref()
            .map(|r| &r.window)
            .unwrap_or(&inner.default_window);
        let req_reset = rfc3339((window.reset_unix_ms() / 1000.0).ceil().max(0.0) as u64);
        let tok_reset = rfc3339(((now_unix_ms / 1000.0).ceil().max(0.0) as u64) + 60);
        vec![
            (
                "anthropic-ratelimit-requests-limit",
                window.limit.to_string(),
            ),
            (
                "anthropic-ratelimit-requests-remaining",
                window.remaining().to_string(),
            ),
            ("anthropic-ratelimit-requests-reset", req_reset),
            (
                "anthropic-ratelimit-input-tokens-limit",
                INPUT_TOKENS_LIMIT.to_string(),
            ),
            // Without `key_limits` nothing charges tokens: the key is as far from its token
            // limits as it can be (an honest figure, so a proxy that paces by these headers
            // sees an idle key).
            (
                "anthropic-ratelimit-input-tokens-remaining",
                INPUT_TOKENS_LIMIT.to_string(),
            ),
            ("anthropic-ratelimit-input-tokens-reset", tok_reset.clone()),
            (
                "anthropic-ratelimit-output-tokens-limit",
                OUTPUT_TOKENS_LIMIT.to_string(),
            ),
            (
                "anthropic-ratelimit-output-tokens-remaining",
                OUTPUT_TOKENS_LIMIT.to_string(),
            ),
            ("anthropic-ratelimit-output-tokens-reset", tok_reset),
        ]
    }

    /// Clears the queue, the log, the modes and the counters.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.queue.clear();
        inner.log.clear();
        inner.stats = Stats::default();
        inner.mode = Mode::default();
        inner.default_window = Window::new(DEFAULT_REQUESTS_LIMIT, crate::respond::unix_ms());
    }

    /// The body of `GET /_sim/stats`.
    pub fn stats_json(&self, now_unix_ms: f64) -> Value {
        let inner = self.lock();
        let mut v = inner.stats.to_json();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "capacity".into(),
                inner
                    .mode
                    .capacity
                    .as_ref()
                    .map(|c| c.stats_json(now_unix_ms))
                    .unwrap_or(Value::Null),
            );
            obj.insert(
                "rate_limit".into(),
                inner
                    .mode
                    .rate_limit
                    .as_ref()
                    .map(|r| {
                        json!({
                            "rpm": r.window.limit,
                            "window_count": r.window.count,
                            "limited": r.limited,
                        })
                    })
                    .unwrap_or(Value::Null),
            );
            obj.insert(
                "key_limits".into(),
                inner
                    .mode
                    .key_limits
                    .as_ref()
                    .map(|k| k.stats_json(now_unix_ms))
                    .unwrap_or(Value::Null),
            );
            obj.insert(
                "overload".into(),
                match inner.mode.overload_probability {
                    Some(p) => json!({
                        "probability": p,
                        "rolled": inner.mode.overload_counter,
                        "overloaded": inner.mode.overloaded,
                    }),
                    None => Value::Null,
                },
            );
            obj.insert("queued_faults".into(), json!(inner.queue.len()));
            obj.insert(
                "connections_open".into(),
                json!(self.connections_open.load(Ordering::Relaxed)),
            );
            obj.insert(
                "connections_total".into(),
                json!(self.connections_total.load(Ordering::Relaxed)),
            );
        }
        v
    }
}

/// The `anthropic-ratelimit-*` headers under `key_limits`: the buckets' true
/// state; a dimension left out of the mode shows the usual fixed figures.
fn key_limit_headers(
    kl: &KeyLimits,
    now_unix_ms: f64,
    input_tokens: u64,
    output_tokens: u64,
) -> Vec<(&'static str, String)> {
    let fallback_reset = ((now_unix_ms / 1000.0).ceil().max(0.0) as u64) + 60;
    let mut out = Vec::with_capacity(12);
    let mut tokens: Option<(u64, u64, u64)> = None;
    for d in Dimension::ALL {
        let (limit, remaining, reset) = kl.header_values(d, now_unix_ms).unwrap_or(match d {
            Dimension::Requests => (
                DEFAULT_REQUESTS_LIMIT,
                DEFAULT_REQUESTS_LIMIT,
                fallback_reset,
            ),
            Dimension::InputTokens => (
                INPUT_TOKENS_LIMIT,
                INPUT_TOKENS_LIMIT.saturating_sub(input_tokens),
                fallback_reset,
            ),
            Dimension::OutputTokens => (
                OUTPUT_TOKENS_LIMIT,
                OUTPUT_TOKENS_LIMIT.saturating_sub(output_tokens),
                fallback_reset,
            ),
        });
        let (l, r, t) = match d {
            Dimension::Requests => (
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ),
            Dimension::InputTokens => (
                "anthropic-ratelimit-input-tokens-limit",
                "anthropic-ratelimit-input-tokens-remaining",
                "anthropic-ratelimit-input-tokens-reset",
            ),
            Dimension::OutputTokens => (
                "anthropic-ratelimit-output-tokens-limit",
                "anthropic-ratelimit-output-tokens-remaining",
                "anthropic-ratelimit-output-tokens-reset",
            ),
        };
        out.push((l, limit.to_string()));
        out.push((r, remaining.to_string()));
        out.push((t, rfc3339(reset)));
        // `tokens-*`: the most restrictive token limit in effect (least remaining).
        if d != Dimension::Requests
            && kl.limit(d).is_some()
            && tokens.is_none_or(|(_, rem, _)| remaining < rem)
        {
            tokens = Some((limit, remaining, reset));
        }
    }
    if let Some((limit, remaining, reset)) = tokens {
        out.push(("anthropic-ratelimit-tokens-limit", limit.to_string()));
        out.push((
            "anthropic-ratelimit-tokens-remaining",
            remaining.to_string(),
        ));
        out.push(("anthropic-ratelimit-tokens-reset", rfc3339(reset)));
    }
    out
}

/// The output tokens a charged request reserved, settled once: when this is
/// dropped (the answer completed, or the client went away mid-stream) the
/// key's output bucket is corrected to what was produced.
pub struct Settlement {
    state: Arc<State>,
    charge: Charge,
    produced: u64,
}

impl Settlement {
    pub fn new(state: Arc<State>, charge: Charge) -> Settlement {
        Settlement {
            state,
            charge,
            produced: 0,
        }
    }

    /// Records the output produced so far (the final count at completion).
    pub fn produced(&mut self, tokens: u64) {
        self.produced = tokens;
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        self.state
            .settle_output(&self.charge, self.produced, crate::respond::unix_ms());
    }
}
