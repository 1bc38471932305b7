//! Finite-capacity behaviour for benchmarks and retry tests: a token bucket
//! with scheduled outages, a per-minute request limit that answers 429, and
//! seeded random overload. All decisions are pure functions of the state and
//! the clock passed in, so they are easy to test.

use serde_json::{json, Value};

use crate::respond::mix64;

/// One scheduled outage, relative to when the capacity mode was set.
#[derive(Clone, Debug)]
pub struct Outage {
    pub start_ms: f64,
    pub duration_ms: f64,
}

/// Why a request was turned away by a mode.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    Outage,
    OverCapacity,
    RateLimited {
        retry_after_ms: u64,
    },
    /// The `key_limits` buckets cannot hold the request.
    KeyLimited(crate::keylimits::Limited),
    Overloaded,
}

impl Refusal {
    /// The name recorded in the log's `mode` field.
    pub fn name(&self) -> &'static str {
        match self {
            Refusal::Outage => "outage",
            Refusal::OverCapacity => "capacity",
            Refusal::RateLimited { .. } => "rate_limit",
            Refusal::KeyLimited(_) => "key_limits",
            Refusal::Overloaded => "overload_probability",
        }
    }
}

/// A token bucket of `rps` requests per second (burst `rps/10`, at least 1)
/// plus outage windows during which everything is refused.
#[derive(Clone, Debug)]
pub struct Capacity {
    pub rps: f64,
    pub burst: f64,
    pub outages: Vec<Outage>,
    /// Unix ms the outage offsets are measured from.
    pub origin_unix_ms: f64,
    /// The `origin` as given, echoed back by `GET /_sim/mode`.
    pub origin_raw: Value,
    /// Only requests for these models meet this capacity; `None`: every request does.
    pub models: Option<Vec<String>>,
    tokens: f64,
    last_unix_ms: f64,
    pub admitted: u64,
    pub rejected_capacity: u64,
    pub rejected_outage: u64,
}

impl Capacity {
    /// Parses `{"rps": C, "outages": [{"start_ms": A, "duration_ms": T}], "origin": "now"}`.
    /// `origin` may also be a Unix time in milliseconds.
    pub fn from_json(v: &Value, now_unix_ms: f64) -> Result<Capacity, String> {
        let obj = v.as_object().ok_or("capacity must be an object")?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "rps" | "outages" | "origin" | "models") {
                return Err(format!("capacity: unknown field {key:?}"));
            }
        }
        let rps = obj
            .get("rps")
            .and_then(Value::as_f64)
            .filter(|r| r.is_finite() && *r >= 0.0)
            .ok_or("capacity.rps must be a non-negative number")?;
        let mut outages = Vec::new();
        match obj.get("outages") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let start = item.get("start_ms").and_then(Value::as_f64);
                    let dur = item.get("duration_ms").and_then(Value::as_f64);
                    match (start, dur) {
                        (Some(s), Some(d)) if s.is_finite() && d.is_finite() && d >= 0.0 => outages
                            .push(Outage {
                                start_ms: s,
                                duration_ms: d,
                            }),
                        _ => {
                            return Err(
                                "capacity.outages entries need numeric start_ms and duration_ms"
                                    .into(),
                            )
                        }
                    }
                }
            }
            Some(_) => return Err("capacity.outages must be an array".into()),
        }
        let origin_raw = obj
            .get("origin")
            .cloned()
            .unwrap_or(Value::String("now".into()));
        let origin_unix_ms = match &origin_raw {
            Value::String(s) if s == "now" => now_unix_ms,
            Value::Null => now_unix_ms,
            Value::Number(n) => n
                .as_f64()
                .ok_or("capacity.origin must be \"now\" or unix ms")?,
            _ => return Err("capacity.origin must be \"now\" or a Unix time in ms".into()),
        };
        let models = match obj.get("models") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|m| m.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
                    .ok_or("capacity.models must be an array of model names")?,
            ),
            Some(_) => return Err("capacity.models must be an array of model names".into()),
        };
        let burst = (rps / 10.0).max(1.0);
        Ok(Capacity {
            models,
            rps,
            burst,
            outages,
            origin_unix_ms,
            origin_raw,
            tokens: burst,
            last_unix_ms: now_unix_ms,
            admitted: 0,
            rejected_capacity: 0,
            rejected_outage: 0,
        })
    }

    /// Whether a request for `model` meets this capacity (with `models` set, only requests
    /// naming one of them do: one model overloaded while the others serve).
    pub fn applies_to(&self, model: Option<&str>) -> bool {
        match &self.models {
            None => true,
            Some(models) => model.is_some_and(|m| models.iter().any(|x| x == m)),
        }
    }

    pub fn in_outage(&self, now_unix_ms: f64) -> bool {
        let t = now_unix_ms - self.origin_unix_ms;
        self.outages
            .iter()
            .any(|o| t >= o.start_ms && t < o.start_ms + o.duration_ms)
    }

    /// Admits or refuses one request at `now_unix_ms`.
    pub fn admit(&mut self, now_unix_ms: f64) -> Result<(), Refusal> {
        if self.in_outage(now_unix_ms) {
            self.rejected_outage += 1;
            return Err(Refusal::Outage);
        }
        let elapsed_s = ((now_unix_ms - self.last_unix_ms) / 1000.0).max(0.0);
        self.last_unix_ms = self.last_unix_ms.max(now_unix_ms);
        self.tokens = (self.tokens + elapsed_s * self.rps).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.admitted += 1;
            Ok(())
        } else {
            self.rejected_capacity += 1;
            Err(Refusal::OverCapacity)
        }
    }

    /// The settings, as `GET /_sim/mode` shows them.
    pub fn settings_json(&self) -> Value {
        json!({
            "rps": self.rps,
            "outages": self.outages.iter()
                .map(|o| json!({"start_ms": o.start_ms, "duration_ms": o.duration_ms}))
                .collect::<Vec<_>>(),
            "origin": self.origin_raw,
            "models": self.models,
        })
    }

    /// Settings plus counters, as `GET /_sim/stats` shows them.
    pub fn stats_json(&self, now_unix_ms: f64) -> Value {
        json!({
            "rps": self.rps,
            "burst": self.burst,
            "origin_unix_ms": self.origin_unix_ms,
            "elapsed_ms": now_unix_ms - self.origin_unix_ms,
            "in_outage": self.in_outage(now_unix_ms),
            "outages": self.settings_json()["outages"],
            "admitted": self.admitted,
            "rejected_capacity": self.rejected_capacity,
            "rejected_outage": self.rejected_outage,
        })
    }
}

/// A fixed 60-second window counting requests.
#[derive(Clone, Debug)]
pub struct Window {
    pub limit: u64,
    pub start_unix_ms: f64,
    pub count: u64,
}

pub const WINDOW_MS: f64 = 60_000.0;

impl Window {
    pub fn new(limit: u64, now_unix_ms: f64) -> Window {
        Window {
            limit,
            start_unix_ms: now_unix_ms,
            count: 0,
        }
    }

    fn roll(&mut self, now_unix_ms: f64) {
        if now_unix_ms - self.start_unix_ms >= WINDOW_MS {
            let windows = ((now_unix_ms - self.start_unix_ms) / WINDOW_MS).floor();
            self.start_unix_ms += windows * WINDOW_MS;
            self.count = 0;
        }
    }

    /// Counts a request if the window has room; otherwise says how long
    /// until the window ends.
    pub fn admit(&mut self, now_unix_ms: f64) -> Result<(), u64> {
        self.roll(now_unix_ms);
        if self.count < self.limit {
            self.count += 1;
            Ok(())
        } else {
            Err(self.ms_until_reset(now_unix_ms))
        }
    }

    /// Counts a request unconditionally (for the informational headers).
    pub fn count(&mut self, now_unix_ms: f64) {
        self.roll(now_unix_ms);
        self.count = self.count.saturating_add(1);
    }

    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.count)
    }

    pub fn ms_until_reset(&self, now_unix_ms: f64) -> u64 {
        (self.start_unix_ms + WINDOW_MS - now_unix_ms)
            .ceil()
            .max(1.0) as u64
    }

    pub fn reset_unix_ms(&self) -> f64 {
        self.start_unix_ms + WINDOW_MS
    }
}

/// The `rate_limit` mode: `{"rpm": N}`.
#[derive(Clone, Debug)]
pub struct RateLimit {
    pub window: Window,
    pub limited: u64,
}

impl RateLimit {
    pub fn from_json(v: &Value, now_unix_ms: f64) -> Result<RateLimit, String> {
        let obj = v.as_object().ok_or("rate_limit must be an object")?;
        for key in obj.keys() {
            if key != "rpm" {
                return Err(format!("rate_limit: unknown field {key:?}"));
            }
        }
        let rpm = obj
            .get("rpm")
            .and_then(Value::as_u64)
            .ok_or("rate_limit.rpm must be a non-negative integer")?;
        Ok(RateLimit {
            window: Window::new(rpm, now_unix_ms),
            limited: 0,
        })
    }

    pub fn admit(&mut self, now_unix_ms: f64) -> Result<(), Refusal> {
        self.window.admit(now_unix_ms).map_err(|retry_after_ms| {
            self.limited += 1;
            Refusal::RateLimited { retry_after_ms }
        })
    }
}

/// Whether request number `n` is overloaded, for probability `p` and `seed`:
/// the same (seed, n) always gives the same answer.
pub fn overload_roll(seed: u64, n: u64, p: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    if p >= 1.0 {
        return true;
    }
    let h = mix64(seed ^ mix64(n));
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    unit < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let mut c = Capacity::from_json(&json!({"rps": 10}), 0.0).unwrap();
        assert_eq!(c.burst, 1.0);
        assert!(c.admit(0.0).is_ok());
        assert_eq!(c.admit(10.0), Err(Refusal::OverCapacity));
        assert!(c.admit(110.0).is_ok());
    }

    #[test]
    fn outage_window() {
        let mut c = Capacity::from_json(
            &json!({"rps": 1000, "outages": [{"start_ms": 100, "duration_ms": 50}]}),
            1000.0,
        )
        .unwrap();
        assert!(c.admit(1050.0).is_ok());
        assert_eq!(c.admit(1120.0), Err(Refusal::Outage));
        assert!(c.admit(1160.0).is_ok());
        assert!(Capacity::from_json(&json!({"rps": -1}), 0.0).is_err());
        assert!(Capacity::from_json(&json!({"rps": 1, "x": 1}), 0.0).is_err());
    }

    #[test]
    fn window_limits_and_rolls() {
        let mut r = RateLimit::from_json(&json!({"rpm": 2}), 0.0).unwrap();
        assert!(r.admit(1.0).is_ok());
        assert!(r.admit(2.0).is_ok());
        assert_eq!(
            r.admit(1000.0),
            Err(Refusal::RateLimited {
                retry_after_ms: 59_000
            })
        );
        assert!(r.admit(60_001.0).is_ok());
    }

    #[test]
    fn overload_is_deterministic() {
        let a: Vec<bool> = (0..100).map(|n| overload_roll(7, n, 0.3)).collect();
        let b: Vec<bool> = (0..100).map(|n| overload_roll(7, n, 0.3)).collect();
        assert_eq!(a, b);
        let hits = a.iter().filter(|x| **x).count();
        assert!((10..60).contains(&hits), "{hits}");
    }
}
