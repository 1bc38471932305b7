//! Scripted faults: the description of one misbehaviour (an error status,
//! a delay, a hang, a TCP reset, a broken stream...) and the FIFO queue that
//! `POST /_sim/script` fills and each Messages request drains.

use std::collections::VecDeque;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Largest `pad_bytes` accepted per delta (keeps one event bounded in memory).
pub const MAX_PAD_BYTES: u64 = 16 * 1024 * 1024;
/// Longest delay accepted (one day); longer values are clamped.
pub const MAX_DELAY_MS: u64 = 86_400_000;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResetKind {
    /// Close the connection with RST without sending anything.
    BeforeHeaders,
    /// Send 200 SSE headers and `after_events` events, then RST.
    AfterHeaders,
    /// Send the first `bytes` bytes of the body, then RST.
    AfterBodyBytes,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Malformed {
    /// A syntactically broken event stream.
    Sse,
    /// Truncated JSON with status 200.
    Json,
}

/// The JSON shape of one fault, as written by users of the control API.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub path: Option<String>,
    /// Only requests whose body names this `model` take the fault.
    pub model: Option<String>,
    pub times: Option<u64>,
    pub status: Option<u16>,
    pub body: Option<Value>,
    pub error_type: Option<String>,
    pub message: Option<String>,
    pub headers: Option<Map<String, Value>>,
    pub delay_ms: Option<u64>,
    pub hang: Option<bool>,
    pub reset: Option<ResetKind>,
    pub after_events: Option<u64>,
    pub bytes: Option<u64>,
    pub error_event_after: Option<u64>,
    pub stall_after_events: Option<u64>,
    /// Any answer (an error envelope, a JSON message, a stream): the first N body bytes, then
    /// nothing more, the connection held open until the client goes away.
    pub stall_after_bytes: Option<u64>,
    pub tokens: Option<u64>,
    pub token_delay_ms: Option<u64>,
    pub pad_bytes: Option<u64>,
    pub malformed: Option<Malformed>,
    pub usage: Option<Map<String, Value>>,
}

/// A validated fault: the spec, its headers parsed, and the JSON it came from
/// (recorded verbatim in the request log).
#[derive(Debug)]
pub struct Fault {
    pub spec: FaultSpec,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub raw: Value,
}

impl Fault {
    /// Validates one fault object.
    pub fn from_value(raw: Value) -> Result<Fault, String> {
        if !raw.is_object() {
            return Err("each fault must be a JSON object".into());
        }
        let spec: FaultSpec =
            serde_json::from_value(raw.clone()).map_err(|e| format!("invalid fault: {e}"))?;
        if let Some(status) = spec.status {
            if !(200..=599).contains(&status) {
                return Err(format!(
                    "invalid fault: status {status} is outside 200..=599"
                ));
            }
        }
        if spec.times == Some(0) {
            return Err("invalid fault: times must be at least 1".into());
        }
        if spec.pad_bytes.unwrap_or(0) > MAX_PAD_BYTES {
            return Err(format!(
                "invalid fault: pad_bytes must be at most {MAX_PAD_BYTES}"
            ));
        }
        if spec.reset == Some(ResetKind::AfterBodyBytes) && spec.bytes.is_none() {
            return Err("invalid fault: reset \"after_body_bytes\" needs \"bytes\"".into());
        }
        let mut headers = Vec::new();
        if let Some(map) = &spec.headers {
            for (name, value) in map {
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => continue,
                    other => other.to_string(),
                };
                let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("invalid fault: bad header name {name:?}"))?;
                let value = HeaderValue::from_str(&text)
                    .map_err(|_| format!("invalid fault: bad value for header {name}"))?;
                headers.push((name, value));
            }
        }
        Ok(Fault { spec, headers, raw })
    }

    /// Parses a JSON array of faults (a single object is accepted too).
    pub fn list_from_json(body: &[u8]) -> Result<Vec<Fault>, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
        match value {
            Value::Array(items) => items.into_iter().map(Fault::from_value).collect(),
            obj @ Value::Object(_) => Ok(vec![Fault::from_value(obj)?]),
            _ => Err("body must be a JSON array of fault objects".into()),
        }
    }

    /// Whether this fault decides the outcome on its own, so global modes
    /// (overload, capacity, rate limit) are not consulted.
    pub fn is_decisive(&self) -> bool {
        let s = &self.spec;
        s.status.is_some()
            || s.body.is_some()
            || s.hang == Some(true)
            || s.reset.is_some()
            || s.malformed.is_some()
            || s.error_event_after.is_some()
            || s.stall_after_events.is_some()
            || s.stall_after_bytes.is_some()
    }

    /// Whether the answer this fault shapes is broken (not a clean success).
    pub fn breaks_answer(&self) -> bool {
        let s = &self.spec;
        s.hang == Some(true)
            || s.reset.is_some()
            || s.malformed.is_some()
            || s.error_event_after.is_some()
            || s.stall_after_events.is_some()
            || s.stall_after_bytes.is_some()
    }

    pub fn delay_ms(&self) -> u64 {
        self.spec.delay_ms.unwrap_or(0).min(MAX_DELAY_MS)
    }
}

struct Queued {
    fault: Arc<Fault>,
    remaining: u64,
}

/// The FIFO of scripted faults.
#[derive(Default)]
pub struct FaultQueue {
    items: VecDeque<Queued>,
}

impl FaultQueue {
    pub fn push(&mut self, fault: Fault) {
        let remaining = fault.spec.times.unwrap_or(1).max(1);
        self.items.push_back(Queued {
            fault: Arc::new(fault),
            remaining,
        });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }

    /// Takes one use of the first fault that applies to `path` and to the
    /// body's `model` (faults without a `path` or a `model` apply to any),
    /// removing it once its `times` are used up.
    pub fn pop_for(&mut self, path: &str, model: Option<&str>) -> Option<Arc<Fault>> {
        let idx = self.items.iter().position(|q| {
            q.fault.spec.path.as_deref().is_none_or(|p| p == path)
                && q.fault
                    .spec
                    .model
                    .as_deref()
                    .is_none_or(|m| Some(m) == model)
        })?;
        let item = self.items.get_mut(idx)?;
        let fault = item.fault.clone();
        item.remaining = item.remaining.saturating_sub(1);
        if item.remaining == 0 {
            self.items.remove(idx);
        }
        Some(fault)
    }

    /// The queue as JSON: each fault with the uses it has left.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.items
                .iter()
                .map(|q| serde_json::json!({"fault": q.fault.raw, "remaining": q.remaining}))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_respects_times_and_paths() {
        let mut q = FaultQueue::default();
        q.push(Fault::from_value(json!({"status": 529, "times": 2})).unwrap());
        q.push(
            Fault::from_value(json!({"status": 500, "path": "/v1/messages/count_tokens"})).unwrap(),
        );
        q.push(Fault::from_value(json!({"status": 429})).unwrap());
        assert_eq!(
            q.pop_for("/v1/messages/count_tokens", None)
                .unwrap()
                .spec
                .status,
            Some(529)
        );
        assert_eq!(
            q.pop_for("/v1/messages", None).unwrap().spec.status,
            Some(529)
        );
        assert_eq!(
            q.pop_for("/v1/messages", None).unwrap().spec.status,
            Some(429)
        );
        assert!(q.pop_for("/v1/messages", None).is_none());
        assert_eq!(
            q.pop_for("/v1/messages/count_tokens", None)
                .unwrap()
                .spec
                .status,
            Some(500)
        );
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn rejects_bad_faults() {
        assert!(Fault::from_value(json!({"status": 42})).is_err());
        assert!(Fault::from_value(json!({"statsu": 500})).is_err());
        assert!(Fault::from_value(json!({"reset": "sometimes"})).is_err());
        assert!(Fault::from_value(json!({"headers": {"bad name": "x"}})).is_err());
        assert!(Fault::from_value(json!([1])).is_err());
        assert!(Fault::list_from_json(b"{not json").is_err());
        assert!(Fault::from_value(json!({"headers": {"retry-after": 2}})).is_ok());
    }
}
