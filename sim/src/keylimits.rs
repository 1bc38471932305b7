//! The `key_limits` mode: one API key's Anthropic limits, as Anthropic keeps
//! them. Three continuous token buckets (requests, input tokens, output
//! tokens), each holding one minute's quota and refilling at quota/60 per
//! second; a request is charged at arrival (1 request, its input tokens, its
//! `max_tokens`) and the output bucket is corrected to the actual output when
//! the answer completes. A request larger than a whole bucket is served once
//! that bucket is full and leaves it in debt, as Anthropic serves it: no
//! request is refused for its size alone. Pure arithmetic on the clock passed in.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use crate::respond::rfc3339;

/// A continuous token bucket: `capacity` tokens, refilled at `capacity / 60 s`.
/// The level goes negative when a request larger than the bucket is charged:
/// that debt is refilled like any other shortfall before anything else fits.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub capacity: f64,
    level: f64,
    last_unix_ms: f64,
}

const MINUTE_MS: f64 = 60_000.0;

impl Bucket {
    /// A bucket holding `fill` (0..=1) of its capacity at `at_unix_ms`; times
    /// before that see the same level (nothing refills before it).
    pub fn new(capacity: f64, fill: f64, at_unix_ms: f64) -> Bucket {
        Bucket {
            capacity,
            level: capacity * fill.clamp(0.0, 1.0),
            last_unix_ms: at_unix_ms,
        }
    }

    fn per_ms(&self) -> f64 {
        self.capacity / MINUTE_MS
    }

    /// The level at `now` (never above capacity).
    pub fn level(&self, now_unix_ms: f64) -> f64 {
        let elapsed = (now_unix_ms - self.last_unix_ms).max(0.0);
        (self.level + elapsed * self.per_ms()).min(self.capacity)
    }

    fn settle(&mut self, now_unix_ms: f64) {
        if now_unix_ms > self.last_unix_ms {
            self.level = self.level(now_unix_ms);
            self.last_unix_ms = now_unix_ms;
        }
    }

    /// What the bucket must hold before a request of `cost` is admitted: the
    /// cost, or the whole bucket for a request larger than it.
    pub fn need(&self, cost: f64) -> f64 {
        cost.min(self.capacity).max(0.0)
    }

    /// Milliseconds until the bucket holds what a request of `cost` needs (0
    /// if it does now): the debt, if any, and then the need itself.
    pub fn wait_ms(&self, now_unix_ms: f64, cost: f64) -> f64 {
        let level = self.level(now_unix_ms);
        let need = self.need(cost);
        if level >= need {
            0.0
        } else {
            let from = now_unix_ms.max(self.last_unix_ms);
            (from - now_unix_ms) + (need - level) / self.per_ms()
        }
    }

    /// Takes `cost` (the caller checked the bucket holds its need); the level
    /// goes below zero when the cost is larger than the bucket.
    pub fn take(&mut self, now_unix_ms: f64, cost: f64) {
        self.settle(now_unix_ms);
        self.level -= cost;
    }

    /// Gives `amount` back (never above capacity).
    pub fn give(&mut self, now_unix_ms: f64, amount: f64) {
        self.settle(now_unix_ms);
        self.level = (self.level + amount).min(self.capacity);
    }

    /// Unix ms at which the bucket is full again.
    pub fn full_at_unix_ms(&self, now_unix_ms: f64) -> f64 {
        let level = self.level(now_unix_ms);
        let rate = self.per_ms();
        if rate <= 0.0 {
            return now_unix_ms;
        }
        now_unix_ms.max(self.last_unix_ms) + (self.capacity - level) / rate
    }
}

/// The three dimensions, in header order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    Requests,
    InputTokens,
    OutputTokens,
}

impl Dimension {
    pub const ALL: [Dimension; 3] = [
        Dimension::Requests,
        Dimension::InputTokens,
        Dimension::OutputTokens,
    ];

    /// `requests`, `input-tokens`, `output-tokens`: the header infix.
    pub fn header(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input-tokens",
            Dimension::OutputTokens => "output-tokens",
        }
    }

    /// The mode field naming the limit.
    pub fn field(self) -> &'static str {
        match self {
            Dimension::Requests => "rpm",
            Dimension::InputTokens => "input_tpm",
            Dimension::OutputTokens => "output_tpm",
        }
    }

    fn stats_key(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
        }
    }

    fn index(self) -> usize {
        match self {
            Dimension::Requests => 0,
            Dimension::InputTokens => 1,
            Dimension::OutputTokens => 2,
        }
    }

    /// The 429 message, worded like Anthropic's.
    fn message(self, limit: u64) -> String {
        let what = match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input tokens",
            Dimension::OutputTokens => "output tokens",
        };
        format!(
            "This request would exceed your organization's rate limit of {limit} {what} per minute. \
             For details, refer to: https://docs.claude.com/en/api/rate-limits. You can see the \
             response headers for current usage. Please reduce the prompt length or the maximum \
             tokens requested, or try again later."
        )
    }
}

/// What one Messages request costs at arrival.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub input_tokens: u64,
    pub max_tokens: u64,
}

/// A refusal: the dimension that binds longest, how long until every bucket
/// holds the request (a debt included). Always finite: any request fits a
/// full bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct Limited {
    pub dimension: Dimension,
    pub retry_after_ms: u64,
    pub message: String,
}

/// What was charged, so the output can be settled when the answer completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Charge {
    /// Identifies the `key_limits` setting that was charged.
    pub generation: u64,
    pub output_reserved: u64,
}

/// Per dimension counters.
#[derive(Clone, Debug, Default)]
struct Counters {
    admitted: u64,
    limited: u64,
    charged: f64,
}

/// The `key_limits` mode.
#[derive(Clone, Debug)]
pub struct KeyLimits {
    /// Buckets for the dimensions that are limited (`None`: unlimited).
    buckets: [Option<Bucket>; 3],
    limits: [Option<u64>; 3],
    pub initial_fill: f64,
    pub origin_raw: Value,
    pub exact_remaining: bool,
    pub generation: u64,
    counters: [Counters; 3],
    pub admitted: u64,
    pub limited: u64,
    pub refunded_output_tokens: u64,
}

impl KeyLimits {
    /// Parses `{"rpm": R, "input_tpm": I, "output_tpm": O, "initial_fill": 0..1,
    /// "origin": "now" | unix ms, "exact_remaining": bool}`; every field is optional.
    pub fn from_json(v: &Value, now_unix_ms: f64) -> Result<KeyLimits, String> {
        let obj = v.as_object().ok_or("key_limits must be an object")?;
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "rpm" | "input_tpm" | "output_tpm" | "initial_fill" | "origin" | "exact_remaining"
            ) {
                return Err(format!("key_limits: unknown field {key:?}"));
            }
        }
        let mut limits = [None; 3];
        for d in Dimension::ALL {
            limits[d.index()] =
                match obj.get(d.field()) {
                    None | Some(Value::Null) => None,
                    Some(x) => Some(x.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("key_limits.{} must be an integer >= 1", d.field())
                    })?),
                };
        }
        let initial_fill = match obj.get("initial_fill") {
            None | Some(Value::Null) => 1.0,
            Some(x) => x
                .as_f64()
                .filter(|f| (0.0..=1.0).contains(f))
                .ok_or("key_limits.initial_fill must be a number in 0..=1")?,
        };
        let exact_remaining = match obj.get("exact_remaining") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("key_limits.exact_remaining must be a boolean".into()),
        };
        let origin_raw = obj
            .get("origin")
            .cloned()
            .unwrap_or(Value::String("now".into()));
        let origin = match &origin_raw {
            Value::String(s) if s == "now" => now_unix_ms,
            Value::Null => now_unix_ms,
            Value::Number(n) => n
                .as_f64()
                .ok_or("key_limits.origin must be \"now\" or unix ms")?,
            _ => return Err("key_limits.origin must be \"now\" or a Unix time in ms".into()),
        };
        // Every setting gets its own number, so a late refund never reaches a newer one.
        static GENERATIONS: AtomicU64 = AtomicU64::new(0);
        let generation = GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1;
        let buckets = limits.map(|l| l.map(|n| Bucket::new(n as f64, initial_fill, origin)));
        Ok(KeyLimits {
            buckets,
            limits,
            initial_fill,
            origin_raw,
            exact_remaining,
            generation,
            counters: Default::default(),
            admitted: 0,
            limited: 0,
            refunded_output_tokens: 0,
        })
    }

    fn cost_of(d: Dimension, cost: &Cost) -> f64 {
        match d {
            Dimension::Requests => 1.0,
            Dimension::InputTokens => cost.input_tokens as f64,
            Dimension::OutputTokens => cost.max_tokens as f64,
        }
    }

    /// Charges the request to every bucket, or (when one does not hold its
    /// need, see [`Bucket::need`]) charges nothing and says how long until all
    /// of them do. A bucket in debt holds nothing: every request waits it out.
    pub fn admit(&mut self, now_unix_ms: f64, cost: &Cost) -> Result<Charge, Limited> {
        let mut worst: Option<(Dimension, f64)> = None;
        for d in Dimension::ALL {
            let Some(bucket) = &self.buckets[d.index()] else {
                continue;
            };
            let wait = bucket.wait_ms(now_unix_ms, Self::cost_of(d, cost));
            if wait > 0.0 {
                self.counters[d.index()].limited += 1;
                if worst.is_none_or(|(_, w)| wait > w) {
                    worst = Some((d, wait));
                }
            }
        }
        if let Some((d, wait)) = worst {
            self.limited += 1;
            let limit = self.limits[d.index()].unwrap_or(0);
            return Err(Limited {
                dimension: d,
                retry_after_ms: wait.ceil().max(1.0) as u64,
                message: d.message(limit),
            });
        }
        for d in Dimension::ALL {
            let c = Self::cost_of(d, cost);
            if let Some(bucket) = self.buckets[d.index()].as_mut() {
                bucket.take(now_unix_ms, c);
                let counters = &mut self.counters[d.index()];
                counters.admitted += 1;
                counters.charged += c;
            }
        }
        self.admitted += 1;
        Ok(Charge {
            generation: self.generation,
            output_reserved: if self.buckets[Dimension::OutputTokens.index()].is_some() {
                cost.max_tokens
            } else {
                0
            },
        })
    }

    /// Corrects the output charge from the `reserved` estimate (`max_tokens`)
    /// to what the answer `produced`: the unused part goes back, an answer
    /// that reports more than it reserved (a fault's `usage`) is charged the
    /// rest, possibly into debt.
    pub fn settle_output(&mut self, now_unix_ms: f64, reserved: u64, produced: u64) {
        let i = Dimension::OutputTokens.index();
        if let Some(bucket) = self.buckets[i].as_mut() {
            if reserved >= produced {
                let unused = reserved - produced;
                bucket.give(now_unix_ms, unused as f64);
                self.refunded_output_tokens += unused;
                self.counters[i].charged -= unused as f64;
            } else {
                let extra = produced - reserved;
                bucket.take(now_unix_ms, extra as f64);
                self.counters[i].charged += extra as f64;
            }
        }
    }

    /// Undoes a whole charge (a later mode refused the request).
    pub fn undo(&mut self, now_unix_ms: f64, cost: &Cost) {
        for d in Dimension::ALL {
            let c = Self::cost_of(d, cost);
            if let Some(bucket) = self.buckets[d.index()].as_mut() {
                bucket.give(now_unix_ms, c);
                let counters = &mut self.counters[d.index()];
                counters.admitted = counters.admitted.saturating_sub(1);
                counters.charged -= c;
            }
        }
        self.admitted = self.admitted.saturating_sub(1);
    }

    pub fn limit(&self, d: Dimension) -> Option<u64> {
        self.limits[d.index()]
    }

    /// `(limit, remaining, reset unix seconds)` for a limited dimension:
    /// remaining is the whole tokens in the bucket now, 0 while it is in debt
    /// (never negative, as Anthropic shows it; requests exact; tokens
    /// rounded to the nearest thousand, as Anthropic documents, unless
    /// `exact_remaining`), reset the second by which the bucket is full again.
    pub fn header_values(&self, d: Dimension, now_unix_ms: f64) -> Option<(u64, u64, u64)> {
        let bucket = self.buckets[d.index()].as_ref()?;
        let limit = self.limits[d.index()]?;
        let whole = bucket.level(now_unix_ms).max(0.0).floor() as u64;
        let remaining = if d == Dimension::Requests || self.exact_remaining {
            whole
        } else {
            round_to_thousand(whole).min(limit)
        };
        let reset = (bucket.full_at_unix_ms(now_unix_ms) / 1000.0)
            .ceil()
            .max(0.0) as u64;
        Some((limit, remaining, reset))
    }

    /// Settings, as `GET /_sim/mode` shows them.
    pub fn settings_json(&self) -> Value {
        let mut m = Map::new();
        for d in Dimension::ALL {
            m.insert(d.field().into(), json!(self.limits[d.index()]));
        }
        m.insert("initial_fill".into(), json!(self.initial_fill));
        m.insert("origin".into(), self.origin_raw.clone());
        m.insert("exact_remaining".into(), json!(self.exact_remaining));
        Value::Object(m)
    }

    /// Settings plus counters, as `GET /_sim/stats` shows them.
    pub fn stats_json(&self, now_unix_ms: f64) -> Value {
        let mut dims = Map::new();
        for d in Dimension::ALL {
            let c = &self.counters[d.index()];
            let v = match &self.buckets[d.index()] {
                None => Value::Null,
                Some(b) => json!({
                    "limit": self.limits[d.index()],
                    "level": (b.level(now_unix_ms) * 1000.0).round() / 1000.0,
                    "full_at": rfc3339((b.full_at_unix_ms(now_unix_ms) / 1000.0).ceil().max(0.0) as u64),
                    "admitted": c.admitted,
                    "limited": c.limited,
                    "charged": c.charged.round() as i64,
                }),
            };
            dims.insert(d.stats_key().into(), v);
        }
        json!({
            "settings": self.settings_json(),
            "admitted": self.admitted,
            "limited": self.limited,
            "refunded_output_tokens": self.refunded_output_tokens,
            "dimensions": dims,
        })
    }
}

/// Rounds to the nearest multiple of 1,000 (halves up).
pub fn round_to_thousand(n: u64) -> u64 {
    n.saturating_add(500) / 1000 * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(v: Value) -> KeyLimits {
        KeyLimits::from_json(&v, 0.0).unwrap()
    }

    /// Within a millisecond (the wait is rounded up from float arithmetic).
    fn near(ms: u64, expected: u64) -> bool {
        ms.abs_diff(expected) <= 1
    }

    #[test]
    fn bucket_refills_continuously() {
        let mut b = Bucket::new(60.0, 1.0, 0.0);
        b.take(0.0, 60.0);
        assert_eq!(b.level(0.0), 0.0);
        assert!((b.level(500.0) - 0.5).abs() < 1e-9);
        assert!((b.level(30_000.0) - 30.0).abs() < 1e-9);
        assert_eq!(b.level(120_000.0), 60.0);
        assert!((b.wait_ms(0.0, 1.0) - 1000.0).abs() < 1e-6);
        // More than the bucket needs the whole bucket.
        assert!((b.wait_ms(0.0, 61.0) - 60_000.0).abs() < 1e-6);
        assert!((b.full_at_unix_ms(0.0) - 60_000.0).abs() < 1e-6);
    }

    #[test]
    fn refused_requests_are_not_charged() {
        let mut k = limits(json!({"rpm": 2, "input_tpm": 100}));
        let cost = Cost {
            input_tokens: 60,
            max_tokens: 10,
        };
        assert!(k.admit(0.0, &cost).is_ok());
        let err = k.admit(0.0, &cost).unwrap_err();
        assert_eq!(err.dimension, Dimension::InputTokens);
        // 20 tokens short at 100/60 s: 12 s.
        assert_eq!(err.retry_after_ms, 12_000);
        // Nothing was taken: a smaller request still fits.
        let small = Cost {
            input_tokens: 40,
            max_tokens: 10,
        };
        assert!(k.admit(0.0, &small).is_ok());
        let err = k.admit(0.0, &small).unwrap_err();
        assert_eq!(err.dimension, Dimension::Requests);
        assert_eq!(k.limited, 2);
    }

    #[test]
    fn larger_than_the_bucket_is_served_full_and_leaves_a_debt() {
        let mut k = limits(json!({"output_tpm": 1000, "exact_remaining": true}));
        let big = Cost {
            input_tokens: 1,
            max_tokens: 3000,
        };
        let small = Cost {
            input_tokens: 1,
            max_tokens: 10,
        };
        // A full bucket admits it and goes 2,000 below zero.
        assert!(k.admit(0.0, &big).is_ok());
        let (_, remaining, reset) = k.header_values(Dimension::OutputTokens, 0.0).unwrap();
        assert_eq!(remaining, 0);
        // 3,000 tokens at 1,000 a minute: full again after three minutes.
        assert_eq!(reset, 180);
        // In debt every request waits: the debt, then its own cost.
        let err = k.admit(0.0, &small).unwrap_err();
        assert_eq!(err.dimension, Dimension::OutputTokens);
        assert!(near(err.retry_after_ms, 120_600), "{err:?}");
        assert!(k.admit(120_000.0, &small).is_err());
        assert!(k.admit(121_000.0, &small).is_ok());
        // Another large one waits for the whole bucket (6.67 tokens are left
        // there), not for its own size.
        let err = k.admit(121_000.0, &big).unwrap_err();
        assert!(near(err.retry_after_ms, 59_600), "{err:?}");
        assert!(k.admit(181_000.0, &big).is_ok());
        assert_eq!(k.admitted, 3);
        assert_eq!(k.limited, 3);
    }

    #[test]
    fn settling_corrects_a_debt_to_the_real_output() {
        let mut k = limits(json!({"output_tpm": 1000, "exact_remaining": true}));
        let c = k
            .admit(
                0.0,
                &Cost {
                    input_tokens: 1,
                    max_tokens: 3000,
                },
            )
            .unwrap();
        assert_eq!(c.output_reserved, 3000);
        // 1,200 produced: 1,800 come back, 200 of debt remain.
        k.settle_output(0.0, 3000, 1200);
        assert_eq!(k.refunded_output_tokens, 1800);
        // 200 of debt at 1,000 a minute: 12 s until even a free request fits.
        let err = k.admit(0.0, &Cost::default()).unwrap_err();
        assert!(near(err.retry_after_ms, 12_000), "{err:?}");
        // An answer that reports more than it reserved is charged the rest.
        let mut k = limits(json!({"output_tpm": 1000, "exact_remaining": true}));
        k.admit(
            0.0,
            &Cost {
                input_tokens: 1,
                max_tokens: 100,
            },
        )
        .unwrap();
        k.settle_output(0.0, 100, 1500);
        assert_eq!(k.header_values(Dimension::OutputTokens, 0.0).unwrap().1, 0);
        assert!(k
            .admit(
                29_000.0,
                &Cost {
                    input_tokens: 0,
                    max_tokens: 1
                }
            )
            .is_err());
        assert!(k
            .admit(
                30_100.0,
                &Cost {
                    input_tokens: 0,
                    max_tokens: 1
                }
            )
            .is_ok());
    }

    #[test]
    fn overload_undo_restores_a_full_bucket() {
        let mut k = limits(json!({"input_tpm": 100}));
        let big = Cost {
            input_tokens: 250,
            max_tokens: 1,
        };
        assert!(k.admit(0.0, &big).is_ok());
        k.undo(0.0, &big);
        assert!(k.admit(0.0, &big).is_ok());
    }

    #[test]
    fn refund_goes_back_to_output() {
        let mut k = limits(json!({"output_tpm": 1000, "exact_remaining": true}));
        let c = k
            .admit(
                0.0,
                &Cost {
                    input_tokens: 1,
                    max_tokens: 800,
                },
            )
            .unwrap();
        assert_eq!(c.output_reserved, 800);
        assert_eq!(
            k.header_values(Dimension::OutputTokens, 0.0).unwrap().1,
            200
        );
        k.settle_output(0.0, 800, 10);
        assert_eq!(
            k.header_values(Dimension::OutputTokens, 0.0).unwrap().1,
            990
        );
    }

    #[test]
    fn remaining_tokens_round_to_the_nearest_thousand() {
        assert_eq!(round_to_thousand(0), 0);
        assert_eq!(round_to_thousand(499), 0);
        assert_eq!(round_to_thousand(500), 1000);
        assert_eq!(round_to_thousand(39_501), 40_000);
        let k = limits(json!({"input_tpm": 1500}));
        // Never above the limit.
        assert_eq!(
            k.header_values(Dimension::InputTokens, 0.0).unwrap().1,
            1500
        );
    }

    #[test]
    fn initial_fill_and_origin() {
        let mut k = KeyLimits::from_json(
            &json!({"rpm": 60, "initial_fill": 0, "origin": 10_000.0}),
            0.0,
        )
        .unwrap();
        let cost = Cost::default();
        let err = k.admit(5_000.0, &cost).unwrap_err();
        assert_eq!(err.retry_after_ms, 6_000);
        assert!(k.admit(11_000.0, &cost).is_ok());
        assert!(k.admit(11_500.0, &cost).is_err());
    }
}
