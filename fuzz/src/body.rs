//! Request bodies: `body::inspect` for `/v1/messages` and `count_tokens`.
//!
//! Input: `[route] body bytes`; route bit 0 set is `count_tokens`. Bit 1 wraps the body's
//! tail in deep nesting (`{"model":…,"max_tokens":…,"x":[[[…]]]}`) to reach the recursion
//! paths.
//!
//! Holds for every input:
//! - a body is accepted only if it is UTF-8 and one JSON object (after whitespace or a BOM);
//! - an accepted `/v1/messages` body has a non-empty `model` of at most 256 bytes and
//!   `max_tokens` ≥ 1, agreeing with what a full JSON parse of those fields reads;
//! - the input estimate weighs every byte of the text it reads (strings of `system`, message
//!   `content`, `text` fields) at least as the lightest kind of text, and is at most the
//!   heaviest weight a byte can have times the body's length, plus the fixed figures of its
//!   image and document blocks, messages, tools and the request;
//! - a refusal is a 400 `invalid_request_error` with a message.

use breakwater::request::body::inspect;
use breakwater::request::estimate::{
    IMAGE_TOKENS, MAX_TEXT_BYTES_PER_TOKEN, MAX_TOKENS_PER_TEXT_BYTE, MESSAGE_TOKENS,
    PDF_MAX_PAGES, PDF_PAGE_TOKENS, REQUEST_TOKENS, TOOLS_PROMPT_TOKENS, UNSEEN_DOCUMENT_TOKENS,
};
use breakwater::request::route::Route;
use serde_json::Value;

/// Bytes of text the estimate must count: `system`, message contents, and the `text` and
/// `content` of their blocks (decoded, as a full parse reads them).
fn text_bytes(v: &Value, depth: u32) -> u64 {
    match v {
        Value::String(s) => s.len() as u64,
        Value::Array(items) if depth < 3 => items.iter().map(|i| text_bytes(i, depth)).sum(),
        Value::Object(o) if depth < 3 => {
            let text = o
                .get("text")
                .and_then(Value::as_str)
                .map_or(0, |t| t.len() as u64);
            text + o.get("content").map_or(0, |c| text_bytes(c, depth + 1))
        }
        _ => 0,
    }
}

/// Image and document blocks anywhere in a value.
fn blocks(v: &Value) -> (u64, u64) {
    let sum = |a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1);
    match v {
        Value::Array(items) => items.iter().map(blocks).fold((0, 0), sum),
        Value::Object(o) => {
            let own = match o.get("type").and_then(Value::as_str) {
                Some("image") => (1, 0),
                Some("document") => (0, 1),
                _ => (0, 0),
            };
            o.values().map(blocks).fold(own, sum)
        }
        _ => (0, 0),
    }
}

pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = match selector & 0x81 {
        0 => Route::Messages,
        0x80 => Route::ChatCompletions,
        _ => Route::CountTokens,
    };
    let owned;
    let body = if selector & 2 != 0 {
        let depth = 1 + usize::from(selector >> 2) * 1000;
        let mut deep = br#"{"model":"m","max_tokens":1,"x":"#.to_vec();
        deep.extend(std::iter::repeat_n(b'[', depth));
        deep.extend_from_slice(body);
        deep.extend(std::iter::repeat_n(b']', depth));
        deep.push(b'}');
        owned = deep;
        &owned[..]
    } else {
        body
    };

    match inspect(&route, body) {
        Ok(facts) => {
            let text = std::str::from_utf8(body).expect("accepted a body that is not UTF-8");
            let trimmed = text.trim_start_matches([' ', '\t', '\r', '\n', '\u{feff}']);
            assert!(
                trimmed.starts_with('{'),
                "accepted a body that is not an object"
            );
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok(),
                "accepted a body that is not JSON"
            );
            let estimate = facts.input_tokens_estimate;
            assert!(estimate >= 1);
            assert_eq!(
                inspect(&route, body).map(|f| f.input_tokens_estimate).ok(),
                Some(estimate)
            );
            assert!(
                facts.model.as_ref().is_none_or(|m| m.len() <= 256),
                "accepted a model over 256 bytes"
            );
            if route == Route::Messages {
                let model = facts
                    .model
                    .as_deref()
                    .expect("accepted a message without model");
                assert!(!model.is_empty());
                assert!(facts.max_tokens.is_some_and(|n| n >= 1));
            }
            // Where a full parse succeeds it must read the same fields.
            if let Ok(serde_json::Value::Object(map)) =
                serde_json::from_str::<serde_json::Value>(trimmed)
            {
                assert_eq!(
                    facts.model.as_deref(),
                    map.get("model").and_then(|m| m.as_str())
                );
                let cap = |name: &str| map.get(name).and_then(serde_json::Value::as_u64);
                let max_tokens = match route {
                    // The OpenAI-compatible route reads either name of the output cap.
                    Route::ChatCompletions => {
                        cap("max_tokens").or_else(|| cap("max_completion_tokens"))
                    }
                    _ => cap("max_tokens"),
                };
                assert_eq!(facts.max_tokens, max_tokens);
                assert_eq!(
                    facts.stream,
                    map.get("stream")
                        .and_then(serde_json::Value::as_bool)
                        .unwrap_or(false)
                );
                let messages = match map.get("messages") {
                    Some(Value::Array(items)) => &items[..],
                    _ => &[],
                };
                let text = messages
                    .iter()
                    .map(|m| m.get("content").map_or(0, |c| text_bytes(c, 0)))
                    .sum::<u64>()
                    + map.get("system").map_or(0, |s| text_bytes(s, 0));
                assert!(
                    estimate >= text / MAX_TEXT_BYTES_PER_TOKEN,
                    "estimate {estimate} below the lightest weight of {text} text bytes"
                );
                let (images, documents) = blocks(&Value::Object(map.clone()));
                let per_document = (PDF_MAX_PAGES * PDF_PAGE_TOKENS).max(UNSEEN_DOCUMENT_TOKENS);
                let ceiling = body.len() as u64 * MAX_TOKENS_PER_TEXT_BYTE
                    + REQUEST_TOKENS
                    + messages.len() as u64 * MESSAGE_TOKENS
                    + TOOLS_PROMPT_TOKENS
                    + images * IMAGE_TOKENS
                    + documents * per_document;
                assert!(estimate <= ceiling, "estimate {estimate} above {ceiling}");
            }
        }
        Err(e) => {
            assert_eq!(e.status(), 400);
            assert_eq!(e.error_type(), "invalid_request_error");
            assert!(!e.message().is_empty());
        }
    }
}
