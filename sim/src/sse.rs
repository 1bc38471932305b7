//! The streaming answer: the exact event sequence of the Messages API
//! (`message_start`, `content_block_start`, `ping`, one `content_block_delta`
//! per token, `content_block_stop`, `message_delta`, `message_stop`),
//! generated lazily one event per chunk so arbitrarily long answers stream in
//! constant memory, with hooks for mid-stream faults.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::conn::{reset_and_hang, ConnCtl};
use crate::respond::{Body, ErrorBody};
use crate::state::Settlement;
use crate::text::Words;

/// Everything needed to generate one streamed answer.
pub struct StreamPlan {
    pub message_id: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub stop_reason: &'static str,
    /// Overrides merged into the reported usage.
    pub usage: Option<Map<String, Value>>,
    pub words: Words,
    pub token_delay: Duration,
    pub pad: String,
    /// Send an `error` event after this many events, then end.
    pub error_event_after: Option<u64>,
    pub error_type: String,
    pub error_message: String,
    /// Stop sending after this many events, keeping the connection open.
    pub stall_after: Option<u64>,
    /// Reset the connection after this many events.
    pub reset_after: Option<u64>,
    /// The key's output reservation, settled by what the stream produced
    /// when it ends (or is dropped).
    pub settlement: Option<Settlement>,
}

/// A message object, fields in the order the API sends them.
#[derive(Serialize)]
pub struct MessageOut<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: Vec<TextBlock<'a>>,
    pub stop_reason: Option<&'a str>,
    pub stop_sequence: Option<&'a str>,
    pub usage: &'a Map<String, Value>,
}

#[derive(Serialize)]
pub struct TextBlock<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: &'a str,
}

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: MessageOut<'a>,
}

#[derive(Serialize)]
struct StopDelta<'a> {
    stop_reason: &'a str,
    stop_sequence: Option<&'a str>,
}

#[derive(Serialize)]
struct MessageDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta<'a>,
    usage: &'a Map<String, Value>,
}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorBody<'a>,
}

/// One server-sent event: `event: NAME\ndata: DATA\n\n`.
pub fn event_bytes(name: &str, data: &str) -> Bytes {
    let mut s = String::with_capacity(name.len() + data.len() + 16);
    s.push_str("event: ");
    s.push_str(name);
    s.push_str("\ndata: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

fn event_json<T: Serialize>(name: &str, data: &T) -> Bytes {
    event_bytes(name, &serde_json::to_string(data).unwrap_or_default())
}

impl StreamPlan {
    /// Number of events in a complete stream.
    pub fn total_events(&self) -> u64 {
        self.output_tokens.saturating_add(6)
    }

    fn is_delta(&self, i: u64) -> bool {
        i >= 3 && i - 3 < self.output_tokens
    }

    fn start_usage(&self) -> Map<String, Value> {
        let mut usage = Map::new();
        usage.insert("input_tokens".into(), json!(self.input_tokens));
        usage.insert("cache_creation_input_tokens".into(), json!(0));
        usage.insert("cache_read_input_tokens".into(), json!(0));
        usage.insert("output_tokens".into(), json!(1));
        if let Some(over) = &self.usage {
            for (k, v) in over {
                if k != "output_tokens" {
                    usage.insert(k.clone(), v.clone());
                }
            }
        }
        usage
    }

    /// Usage of the complete answer (for non-streaming answers).
    pub fn full_usage(&self) -> Map<String, Value> {
        let mut usage = Map::new();
        usage.insert("input_tokens".into(), json!(self.input_tokens));
        usage.insert("cache_creation_input_tokens".into(), json!(0));
        usage.insert("cache_read_input_tokens".into(), json!(0));
        usage.insert("output_tokens".into(), json!(self.output_tokens));
        if let Some(over) = &self.usage {
            for (k, v) in over {
                usage.insert(k.clone(), v.clone());
            }
        }
        usage
    }

    /// The output tokens the answer reports at its end.
    pub fn reported_output(&self) -> u64 {
        self.usage
            .as_ref()
            .and_then(|u| u.get("output_tokens"))
            .and_then(Value::as_u64)
            .unwrap_or(self.output_tokens)
    }

    /// The usage of `message_delta`: cumulative, as current API versions send it (the input
    /// and cache fields of `message_start` again, and the final output count).
    fn delta_usage(&self) -> Map<String, Value> {
        let mut usage = Map::new();
        for (k, v) in self.start_usage() {
            if k.ends_with("input_tokens") {
                usage.insert(k, v);
            }
        }
        let output = self
            .usage
            .as_ref()
            .and_then(|u| u.get("output_tokens").cloned())
            .unwrap_or_else(|| json!(self.output_tokens));
        usage.insert("output_tokens".into(), output);
        usage
    }

    /// The `i`-th event of the complete stream.
    pub fn event(&self, i: u64) -> Bytes {
        let m = self.output_tokens;
        match i {
            0 => event_json(
                "message_start",
                &MessageStart {
                    kind: "message_start",
                    message: MessageOut {
                        id: &self.message_id,
                        kind: "message",
                        role: "assistant",
                        model: &self.model,
                        content: Vec::new(),
                        stop_reason: None,
                        stop_sequence: None,
                        usage: &self.start_usage(),
                    },
                },
            ),
            1 => event_bytes(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            2 => event_bytes("ping", r#"{"type": "ping"}"#),
            _ if self.is_delta(i) => self.delta_event(i - 3),
            _ if i == m.saturating_add(3) => event_bytes(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            _ if i == m.saturating_add(4) => event_json(
                "message_delta",
                &MessageDelta {
                    kind: "message_delta",
                    delta: StopDelta {
                        stop_reason: self.stop_reason,
                        stop_sequence: None,
                    },
                    usage: &self.delta_usage(),
                },
            ),
            _ => event_bytes("message_stop", r#"{"type":"message_stop"}"#),
        }
    }

    fn delta_event(&self, k: u64) -> Bytes {
        // Words and padding are plain ASCII letters and dots: no JSON escaping needed.
        let word = self.words.word(k);
        let mut s = String::with_capacity(word.len() + self.pad.len() + 128);
        s.push_str("event: content_block_delta\ndata: ");
        s.push_str(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""#,
        );
        s.push_str(word);
        s.push(' ');
        s.push_str(&self.pad);
        s.push_str("\"}}\n\n");
        Bytes::from(s)
    }

    /// `event: error` in the shape the real API uses mid-stream.
    pub fn error_event(&self) -> Bytes {
        event_json(
            "error",
            &ErrorEvent {
                kind: "error",
                error: ErrorBody {
                    kind: &self.error_type,
                    message: &self.error_message,
                },
            },
        )
    }
}

struct Gen {
    plan: StreamPlan,
    next: u64,
    done: bool,
    ctl: Arc<ConnCtl>,
}

/// The lazy event stream for `plan`, one event per item.
pub fn event_stream(plan: StreamPlan, ctl: Arc<ConnCtl>) -> impl Stream<Item = Bytes> + Send {
    let gen = Gen {
        plan,
        next: 0,
        done: false,
        ctl,
    };
    stream::unfold(gen, |mut g| async move {
        if g.done {
            return None;
        }
        let i = g.next;
        if g.plan.error_event_after == Some(i) {
            g.done = true;
            let ev = g.plan.error_event();
            return Some((ev, g));
        }
        if g.plan.stall_after == Some(i) {
            // Held until the client goes away and the connection is dropped.
            std::future::pending::<()>().await;
        }
        if g.plan.reset_after == Some(i) {
            match reset_and_hang(&g.ctl).await {}
        }
        if i >= g.plan.total_events() {
            // Complete: the reservation is settled with the reported output.
            let output = g.plan.reported_output();
            if let Some(s) = g.plan.settlement.as_mut() {
                s.produced(output);
            }
            return None;
        }
        if g.plan.is_delta(i) && !g.plan.token_delay.is_zero() {
            tokio::time::sleep(g.plan.token_delay).await;
        }
        let ev = g.plan.event(i);
        g.next += 1;
        if g.plan.is_delta(i) {
            if let Some(s) = g.plan.settlement.as_mut() {
                s.produced(i - 2);
            }
        }
        Some((ev, g))
    })
}

/// Passes through the first `limit` bytes of `inner`, then resets the
/// connection (also if `inner` ends first).
pub fn truncate_then_reset(
    inner: BoxStream<'static, Bytes>,
    limit: u64,
    ctl: Arc<ConnCtl>,
) -> impl Stream<Item = Bytes> + Send {
    stream::unfold((inner, limit, ctl), |(mut inner, left, ctl)| async move {
        if left == 0 {
            match reset_and_hang(&ctl).await {}
        }
        match inner.next().await {
            Some(chunk) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                let piece = chunk.slice(..take);
                Some((piece, (inner, left - take as u64, ctl)))
            }
            None => match reset_and_hang(&ctl).await {},
        }
    })
}

/// Passes through the first `limit` bytes of `inner`, then sends nothing more and keeps the
/// connection open (until the client goes away and the connection is dropped).
pub fn truncate_then_stall(
    inner: BoxStream<'static, Bytes>,
    limit: u64,
) -> impl Stream<Item = Bytes> + Send {
    stream::unfold((inner, limit), |(mut inner, left)| async move {
        if left == 0 {
            std::future::pending::<()>().await;
        }
        match inner.next().await {
            Some(chunk) => {
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
                let piece = chunk.slice(..take);
                Some((piece, (inner, left - take as u64)))
            }
            None => {
                std::future::pending::<()>().await;
                None
            }
        }
    })
}

/// A syntactically broken event stream: data lines without an event name
/// or blank line, invalid UTF-8, unparsable JSON and a cut-off last event.
pub fn malformed_stream() -> impl Stream<Item = Bytes> + Send {
    let chunks: Vec<Bytes> = vec![
        Bytes::from_static(b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_broken\"\n"),
        Bytes::from_static(b"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"half\n"),
        Bytes::from_static(b"\xff\xfe\x00\x01garbage bytes\r\r\n"),
        Bytes::from_static(b"event content_block_delta\ndata {not json}\n\n"),
        Bytes::from_static(b"data: ]]]\n\n"),
        Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"mess"),
    ];
    stream::iter(chunks)
}

/// Wraps a byte stream as a response body.
pub fn stream_body<S>(s: S) -> Body
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    StreamBody::new(s.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(tokens: u64) -> StreamPlan {
        StreamPlan {
            message_id: "msg_x".into(),
            model: "m\"odel".into(),
            input_tokens: 3,
            output_tokens: tokens,
            stop_reason: "end_turn",
            usage: None,
            words: Words::new(0, ""),
            token_delay: Duration::ZERO,
            pad: String::new(),
            error_event_after: None,
            error_type: "overloaded_error".into(),
            error_message: "Overloaded".into(),
            stall_after: None,
            reset_after: None,
            settlement: None,
        }
    }

    #[test]
    fn events_are_valid_json() {
        let p = plan(2);
        for i in 0..p.total_events() {
            let ev = p.event(i);
            let text = std::str::from_utf8(&ev).unwrap();
            let data = text.lines().nth(1).unwrap().strip_prefix("data: ").unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            assert!(v["type"].is_string());
            assert!(text.ends_with("\n\n"));
        }
    }
}
