//! `POST /v1/chat/completions` in OpenAI's shapes, as the API's OpenAI-compatible endpoint
//! answers it: a `chat.completion` object, or with `"stream": true` `chat.completion.chunk`
//! events ending in `data: [DONE]` (usage in a last chunk when `stream_options.include_usage`).
//! The text and token counts follow the Messages answers (one word a token).

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::respond::mix64;
use crate::text::{delta_text, Words};
use crate::tokens::text_tokens;

/// A validated chat completion request.
pub struct ChatRequest {
    pub model: String,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub include_usage: bool,
    pub prompt_tokens: u64,
    pub prompt: String,
}

/// What one answer is: its id, text and counts.
pub struct ChatPlan {
    pub id: String,
    pub created: u64,
    pub request: ChatRequest,
    pub completion_tokens: u64,
    pub finish_reason: &'static str,
    pub words: Words,
    pub token_delay: Duration,
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Checks a body as the endpoint does: `model`, a non-empty `messages` list.
pub fn parse(body: &[u8]) -> Result<ChatRequest, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or("model: field required")?
        .to_string();
    let messages = value
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("messages: a non-empty list is required")?;
    let cap = |name: &str| value.get(name).and_then(Value::as_u64);
    let max_tokens = cap("max_tokens").or_else(|| cap("max_completion_tokens"));
    if max_tokens == Some(0) {
        return Err("max_tokens: must be at least 1".to_string());
    }
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| m.get("content").map_or(0, |c| text_tokens(&text_of(c))))
        .sum();
    let prompt = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(text_of)
        .unwrap_or_default();
    Ok(ChatRequest {
        model,
        max_tokens,
        stream: value.get("stream").and_then(Value::as_bool) == Some(true),
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
        prompt_tokens: prompt_tokens.max(1),
        prompt,
    })
}

impl ChatPlan {
    pub fn new(
        seed: u64,
        request_number: u64,
        request: ChatRequest,
        wanted: u64,
        token_delay: Duration,
    ) -> ChatPlan {
        let cap = request.max_tokens.unwrap_or(u64::MAX);
        let words = Words::new(seed, &request.prompt);
        ChatPlan {
            id: format!("chatcmpl-sim{:016x}", mix64(seed ^ request_number)),
            created: crate::respond::unix_ms() as u64 / 1000,
            completion_tokens: wanted.min(cap),
            finish_reason: if wanted > cap { "length" } else { "stop" },
            request,
            words,
            token_delay,
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.request.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.request.prompt_tokens + self.completion_tokens,
        })
    }

    fn text(&self) -> String {
        (0..self.completion_tokens)
            .map(|k| delta_text(self.words.word(k), ""))
            .collect()
    }

    /// The whole `chat.completion`.
    pub fn completion(&self) -> Bytes {
        let value = json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text()},
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage(),
        });
        Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Bytes {
        let value = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.request.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        Bytes::from(format!("data: {value}\n\n"))
    }

    /// The chunks, one per event: the role, a delta per token (after the token delay), the
    /// finish reason, the usage when asked for, `[DONE]`.
    pub fn events(self) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
        let mut head = vec![self.chunk(json!({"role": "assistant", "content": ""}), None)];
        let deltas: Vec<Bytes> = (0..self.completion_tokens)
            .map(|k| self.chunk(json!({"content": delta_text(self.words.word(k), "")}), None))
            .collect();
        let mut tail = vec![self.chunk(json!({}), Some(self.finish_reason))];
        if self.request.include_usage {
            let value = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.request.model,
                "choices": [],
                "usage": self.usage(),
            });
            tail.push(Bytes::from(format!("data: {value}\n\n")));
        }
        tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
        let delay = self.token_delay;
        let first = stream::iter(std::mem::take(&mut head));
        let middle = stream::iter(deltas).then(move |chunk| async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            chunk
        });
        first.chain(middle).chain(stream::iter(tail))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_and_its_stream_tell_the_same_text_and_usage() {
        let body = br#"{"model":"claude-sonnet-5-5","max_completion_tokens":3,"stream":true,
            "stream_options":{"include_usage":true},
            "messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there"}]}"#;
        let request = parse(body).unwrap();
        assert_eq!(request.max_tokens, Some(3));
        assert!(request.stream && request.include_usage);
        let plan = ChatPlan::new(1, 1, request, 12, Duration::ZERO);
        let whole: Value = serde_json::from_slice(&plan.completion()).unwrap();
        assert_eq!(whole["choices"][0]["finish_reason"], "length");
        assert_eq!(whole["usage"]["completion_tokens"], 3);
        let text = whole["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let chunks: Vec<Bytes> = futures_executor_block_on(plan.events().collect::<Vec<_>>());
        let mut streamed = String::new();
        let mut usage = None;
        for chunk in &chunks {
            let line = std::str::from_utf8(chunk).unwrap().trim();
            let data = line.strip_prefix("data: ").unwrap();
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            if let Some(c) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                streamed.push_str(c);
            }
            if !v["usage"].is_null() {
                usage = Some(v["usage"].clone());
            }
        }
        assert_eq!(streamed, text);
        assert_eq!(usage.unwrap()["completion_tokens"], 3);
        assert_eq!(chunks.last().unwrap().as_ref(), b"data: [DONE]\n\n");
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(parse(b"{").is_err());
        assert!(parse(br#"{"messages":[{"role":"user","content":"x"}]}"#).is_err());
        assert!(parse(br#"{"model":"m","messages":[]}"#).is_err());
        assert!(parse(
            br#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#
        )
        .is_err());
    }

    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }
}
