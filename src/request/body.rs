//! What the proxy needs to know of a request body, read without changing a byte of it.
//!
//! The body goes upstream exactly as the client sent it. The proxy only looks: is it a JSON
//! object, which model, how many output tokens it may cost, whether it streams, and a safe
//! estimate of its input tokens for the caller's limits.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

pub use crate::config::MAX_MODEL_BYTES;
use crate::error::ProxyError;
use crate::json::Json;
use crate::request::estimate::{Messages, System, Tally, Tools};
use crate::request::route::Route;

/// The facts about a request body that admission and forwarding need.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BodyFacts {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    /// Upper estimate of the input tokens (see [`estimate_input_tokens`]).
    pub input_tokens_estimate: u64,
    /// Where the top-level `model` value (its JSON string, quotes included) lies in the body,
    /// in bytes: the one part of a body the proxy may rewrite (see [`ModelRewrite`]).
    pub model_span: Option<Range<usize>>,
}

#[derive(Deserialize)]
struct Peek<'a> {
    // Borrowed as it stands in the body, so its place is known to the byte.
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    max_tokens: Json,
    /// The OpenAI-compatible name of the output cap (`max_tokens` is its older name).
    #[serde(default)]
    max_completion_tokens: Json,
    #[serde(default)]
    stream: Json,
    // What the input estimate reads, measured in the same pass (see `request::estimate`).
    #[serde(default)]
    system: System,
    #[serde(default)]
    messages: Messages,
    #[serde(default)]
    tools: Tools,
    // Every other field is skipped without being built, but still checked to be valid JSON.
}

/// Checks a body for a route that takes one and returns what the proxy needs of it.
pub fn inspect(route: &Route, body: &[u8]) -> Result<BodyFacts, ProxyError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ProxyError::InvalidRequest("request body is not valid UTF-8".to_string()))?;
    let peek = peek(text)?;
    let model = model_of(peek.model)?;
    let model_span = peek.model.and_then(|raw| span_in(text, raw.get()));
    let max_tokens = match positive("max_tokens", peek.max_tokens)? {
        Some(n) => Some(n),
        None if *route == Route::ChatCompletions => {
            positive("max_completion_tokens", peek.max_completion_tokens)?
        }
        None => None,
    };
    let stream = match peek.stream {
        Json::Null => false,
        Json::Bool(b) => b,
        _ => {
            return Err(ProxyError::InvalidRequest(
                "stream: expected a boolean".to_string(),
            ))
        }
    };
    require_fields(route, model.is_some(), max_tokens.is_some())?;
    Ok(BodyFacts {
        max_tokens,
        stream,
        input_tokens_estimate: estimate_input_tokens(&peek.system, &peek.messages, &peek.tools),
        model_span: model.as_ref().and(model_span),
        model,
    })
}

/// The fields the proxy reads, from a body that must be one JSON object.
fn peek(text: &str) -> Result<Peek<'_>, ProxyError> {
    let trimmed = text.trim_start_matches([' ', '\t', '\r', '\n', '\u{feff}']);
    if !trimmed.starts_with('{') {
        return Err(ProxyError::InvalidRequest(
            "request body must be a JSON object".to_string(),
        ));
    }
    serde_json::from_str(trimmed).map_err(|e| {
        ProxyError::InvalidRequest(format!(
            "request body is not valid JSON: {} at line {}, column {}",
            classify_json_error(&e),
            e.line(),
            e.column()
        ))
    })
}

/// The `model` named, if any: a non-empty string of at most [`MAX_MODEL_BYTES`] (`null`
/// names none).
fn model_of(raw: Option<&RawValue>) -> Result<Option<String>, ProxyError> {
    let value = match raw {
        None => None,
        Some(raw) => Some(serde_json::from_str::<Json>(raw.get()).map_err(|e| {
            ProxyError::InvalidRequest(format!("model: {}", classify_json_error(&e)))
        })?),
    };
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Text(s)) if s.len() > MAX_MODEL_BYTES => Err(ProxyError::InvalidRequest(
            format!("model: longer than {MAX_MODEL_BYTES} bytes"),
        )),
        Some(Json::Text(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(ProxyError::InvalidRequest(
            "model: expected a non-empty string".to_string(),
        )),
    }
}

/// The fields a route cannot do without: `model` (Messages and chat completions) and
/// `max_tokens` (Messages).
fn require_fields(route: &Route, has_model: bool, has_max_tokens: bool) -> Result<(), ProxyError> {
    if *route == Route::ChatCompletions && !has_model {
        return Err(ProxyError::InvalidRequest(
            "model: field required".to_string(),
        ));
    }
    if *route == Route::Messages {
        if !has_model {
            return Err(ProxyError::InvalidRequest(
                "model: field required".to_string(),
            ));
        }
        if !has_max_tokens {
            return Err(ProxyError::InvalidRequest(
                "max_tokens: field required".to_string(),
            ));
        }
    }
    Ok(())
}

/// An output cap: absent, or a positive integer.
fn positive(name: &str, value: Json) -> Result<Option<u64>, ProxyError> {
    match value {
        Json::Null => Ok(None),
        Json::Unsigned(v) if v >= 1 => Ok(Some(v)),
        _ => Err(ProxyError::InvalidRequest(format!(
            "{name}: expected a positive integer"
        ))),
    }
}

/// Where `part`, a slice borrowed from `whole`, lies in it.
fn span_in(whole: &str, part: &str) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len() && whole.get(start..end) == Some(part)).then_some(start..end)
}

/// A body with its top-level `model` replaced and every other byte as the client sent it:
/// the bytes before the model's value, the new value (a JSON string), the bytes after it.
/// The shell builds the upload from these three parts without copying the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRewrite {
    /// The body's bytes before the value.
    pub head: Range<usize>,
    /// The new value, as JSON.
    pub value: String,
    /// The body's bytes after the value, to its end.
    pub tail: Range<usize>,
}

impl ModelRewrite {
    /// The rewrite of a body of `length` bytes whose model lies at `span` to `model`.
    #[must_use]
    pub fn new(span: &Range<usize>, length: usize, model: &str) -> Option<ModelRewrite> {
        if span.start > span.end || span.end > length {
            return None;
        }
        Some(ModelRewrite {
            head: 0..span.start,
            value: serde_json::to_string(model).ok()?,
            tail: span.end..length,
        })
    }

    /// The rewritten body, from the original's bytes.
    #[must_use]
    pub fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        let head = body.get(self.head.clone())?;
        let tail = body.get(self.tail.clone())?;
        let mut out = Vec::with_capacity(head.len() + self.value.len() + tail.len());
        out.extend_from_slice(head);
        out.extend_from_slice(self.value.as_bytes());
        out.extend_from_slice(tail);
        Some(out)
    }
}

/// An estimate of a body's input tokens made before the upstream counts them, from its
/// `system`, `messages` and `tools`: text weighed byte by byte so that no kind of text but
/// letters in no language falls short of a byte-pair tokenizer's count, an image block at
/// 1,600, a PDF by its pages, plus a few tokens per message and the tool prompt (the figures
/// are in [`crate::request::estimate`]). On English this over-reserves about 1.3–1.5×;
/// settlement returns the difference. Should it ever under-reserve, settlement charges the real count,
/// so the limit still holds over time.
pub fn estimate_input_tokens(system: &System, messages: &Messages, tools: &Tools) -> u64 {
    let mut all = Tally::default();
    for part in [system.0, messages.0, tools.0] {
        all.add(part);
    }
    all.estimate()
}

fn classify_json_error(e: &serde_json::Error) -> &'static str {
    // serde_json files these under syntax and data; they deserve their own words.
    let shown = e.to_string();
    if shown.starts_with("recursion limit exceeded") {
        return "nested too deeply";
    }
    if shown.starts_with("duplicate field") {
        return "a duplicate model, max_tokens, stream, system, messages or tools field";
    }
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Io => "read error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> BodyFacts {
        inspect(&Route::Messages, body.as_bytes()).unwrap()
    }

    fn bad(body: &[u8]) -> String {
        let e = inspect(&Route::Messages, body).unwrap_err();
        assert_eq!(e.status(), 400);
        e.message()
    }

    #[test]
    fn chat_completions_read_either_output_cap_and_need_a_model() {
        let chat = |body: &str| inspect(&Route::ChatCompletions, body.as_bytes());
        let body = r#"{"model":"claude-x","max_completion_tokens":40,"stream":true,
            "messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}"#;
        let facts = chat(body).unwrap();
        assert_eq!(facts.max_tokens, Some(40));
        assert!(facts.stream);
        assert!(facts.input_tokens_estimate >= 2);
        let both = r#"{"model":"m","max_tokens":7,"max_completion_tokens":40,"messages":[]}"#;
        assert_eq!(chat(both).unwrap().max_tokens, Some(7));
        assert_eq!(
            chat(r#"{"model":"m","messages":[]}"#).unwrap().max_tokens,
            None
        );
        assert_eq!(chat(r#"{"messages":[]}"#).unwrap_err().status(), 400);
        let zero = chat(r#"{"model":"m","max_completion_tokens":0}"#).unwrap_err();
        assert!(zero.message().contains("max_completion_tokens"));
        // Only chat completions read the OpenAI name.
        let messages = r#"{"model":"m","max_completion_tokens":5,"messages":[]}"#;
        assert!(inspect(&Route::Messages, messages.as_bytes()).is_err());
    }

    #[test]
    fn reads_model_max_tokens_and_stream() {
        let f = ok(
            r#"{"model":"claude-x","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(f.model.as_deref(), Some("claude-x"));
        assert_eq!(f.max_tokens, Some(64));
        assert!(f.stream);
        assert!(f.input_tokens_estimate >= 1);
    }

    #[test]
    fn every_bad_body_is_a_400_with_a_clear_message() {
        assert!(bad(b"").contains("JSON object"));
        assert!(bad(b"[1,2]").contains("JSON object"));
        assert!(bad(b"\"str\"").contains("JSON object"));
        assert!(bad(b"{\"model\": ").contains("end of input"));
        assert!(bad(b"\xff\xfe{}").contains("UTF-8"));
        assert!(bad(br#"{"max_tokens": 5}"#).contains("model"));
        assert!(bad(br#"{"model": "m"}"#).contains("max_tokens"));
        assert!(bad(br#"{"model": "m", "max_tokens": -1}"#).contains("max_tokens"));
        assert!(bad(br#"{"model": "m", "max_tokens": 1.5}"#).contains("max_tokens"));
        assert!(bad(br#"{"model": 7, "max_tokens": 1}"#).contains("model"));
        assert!(bad(br#"{"model": "m", "max_tokens": 1, "stream": "yes"}"#).contains("stream"));
    }

    #[test]
    fn model_is_at_most_256_bytes() {
        let body = |model: &str| format!(r#"{{"model":"{model}","max_tokens":1}}"#);
        let longest = "m".repeat(MAX_MODEL_BYTES);
        assert_eq!(ok(&body(&longest)).model.as_deref(), Some(longest.as_str()));
        let message = bad(body(&"m".repeat(MAX_MODEL_BYTES + 1)).as_bytes());
        assert!(message.contains("256 bytes"), "{message}");
        // Bytes, not characters: 129 two-byte characters are 258 bytes.
        assert!(bad(body(&"é".repeat(129)).as_bytes()).contains("256 bytes"));
        // count_tokens reads the model too.
        let long = body(&"m".repeat(1000));
        assert_eq!(
            inspect(&Route::CountTokens, long.as_bytes())
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        // Fields the proxy does not read are skipped iteratively and left to the upstream.
        let deep = format!(
            "{{\"model\":\"m\",\"max_tokens\":1,\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(inspect(&Route::Messages, deep.as_bytes()).is_ok());
        // Fields it reads hit serde_json's recursion limit: a 400, not a crash.
        let deep_model = format!(
            "{{\"model\":{}{},\"max_tokens\":1}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            inspect(&Route::Messages, deep_model.as_bytes())
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn regression_deep_nesting_was_called_a_syntax_error() {
        let deep = format!(
            "{{\"model\":{}{},\"max_tokens\":1}}",
            "[".repeat(1000),
            "]".repeat(1000)
        );
        let message = bad(deep.as_bytes());
        assert!(message.contains("nested too deeply"), "{message}");
        assert!(!message.contains("syntax error"), "{message}");
    }

    #[test]
    fn regression_duplicate_fields_were_called_unexpected_data() {
        // The proxy and the upstream could read different values from such a body.
        let message = bad(br#"{"model":"a","model":"b","max_tokens":1}"#);
        assert!(message.contains("duplicate"), "{message}");
    }

    #[test]
    fn only_the_top_level_model_is_rewritten_and_every_other_byte_stays() {
        // Odd spacing, a BOM, escapes, nested "model" keys and the name inside strings: a
        // string search would find the wrong one.
        let body = "\u{feff} {\"system\":\"say \\\"model\\\": \\\"claude-opus-4-7\\\"\",\r\n\
                    \"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"hi\",\
                    \"model\":\"claude-opus-4-7\"}]}],\"metadata\":{\"model\":\"claude-opus-4-7\"},\
                    \"model\" :\t\"claude-opus\\u002d4-7\" , \"max_tokens\":64, \"é\":\"ü\"}";
        let facts = ok(body);
        assert_eq!(facts.model.as_deref(), Some("claude-opus-4-7"));
        let span = facts.model_span.clone().unwrap();
        assert_eq!(&body[span.clone()], "\"claude-opus\\u002d4-7\"");
        let rewrite = ModelRewrite::new(&span, body.len(), "claude-sonnet-4-6").unwrap();
        let out = rewrite.apply(body.as_bytes()).unwrap();
        let expected = body.replace(
            "\"model\" :\t\"claude-opus\\u002d4-7\"",
            "\"model\" :\t\"claude-sonnet-4-6\"",
        );
        assert_eq!(out, expected.as_bytes());
        // Everything but the value, byte for byte.
        assert_eq!(&out[..span.start], &body.as_bytes()[..span.start]);
        assert_eq!(
            &out[out.len() - (body.len() - span.end)..],
            &body.as_bytes()[span.end..]
        );
        // The result reads as the same request for another model.
        let again = ok(std::str::from_utf8(&out).unwrap());
        assert_eq!(again.model.as_deref(), Some("claude-sonnet-4-6"));
        assert_eq!(
            (again.max_tokens, again.input_tokens_estimate),
            (facts.max_tokens, facts.input_tokens_estimate)
        );
        // A model needing escapes is written as valid JSON.
        let odd = ModelRewrite::new(&span, body.len(), "a\"b\\c").unwrap();
        let out = odd.apply(body.as_bytes()).unwrap();
        assert_eq!(
            ok(std::str::from_utf8(&out).unwrap()).model.as_deref(),
            Some("a\"b\\c")
        );
        // A span that does not fit the body is no rewrite.
        let reversed = std::ops::Range { start: 5, end: 3 };
        assert!(ModelRewrite::new(&reversed, body.len(), "m").is_none());
        assert!(ModelRewrite::new(&(0..body.len() + 1), body.len(), "m").is_none());
    }

    #[test]
    fn count_tokens_needs_only_an_object() {
        assert!(inspect(&Route::CountTokens, br#"{"model":"m","messages":[]}"#).is_ok());
        assert!(inspect(&Route::CountTokens, b"[]").is_err());
    }

    fn estimate(body: serde_json::Value) -> u64 {
        ok(&body.to_string()).input_tokens_estimate
    }

    fn with_content(content: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": content}]})
    }

    fn base64_image(file_bytes: usize, source_first: bool) -> serde_json::Value {
        let source = serde_json::json!({"type": "base64", "media_type": "image/png", "data": "iVBO".repeat(file_bytes / 3)});
        if source_first {
            serde_json::json!({"source": source, "type": "image"})
        } else {
            serde_json::json!({"type": "image", "source": source})
        }
    }

    #[test]
    fn regression_a_base64_image_was_estimated_per_byte() {
        // A 1 MB image used to be estimated at 444 445 tokens (one per three body bytes).
        let body = with_content(
            serde_json::json!([base64_image(1_000_000, false), {"type": "text", "text": "What is this?"}]),
        );
        let e = estimate(body.clone());
        assert!((1_600..1_640).contains(&e), "{e}");
        // The same whatever the order of the block's fields, and for a URL source.
        let body = with_content(
            serde_json::json!([base64_image(1_000_000, true), {"type": "text", "text": "What is this?"}]),
        );
        assert_eq!(estimate(body), e);
        let url = serde_json::json!({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}});
        assert!((1_600..1_640).contains(&estimate(with_content(serde_json::json!([url])))));
    }

    #[test]
    fn images_inside_tool_results_are_found() {
        let result = serde_json::json!({"type": "tool_result", "tool_use_id": "t1", "content": [base64_image(600_000, false), {"type": "text", "text": "a screenshot"}]});
        let e = estimate(with_content(serde_json::json!([result])));
        assert!((1_600..1_640).contains(&e), "{e}");
    }

    #[test]
    fn documents_by_pages_text_documents_by_text() {
        use crate::request::estimate::{PDF_MAX_PAGES, PDF_PAGE_TOKENS, UNSEEN_DOCUMENT_TOKENS};
        // 160 KiB of PDF: ten pages at 16 KiB a page.
        let pdf = serde_json::json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE".repeat(160 * 1024 / 3)}});
        let e = estimate(with_content(serde_json::json!([pdf])));
        assert!(
            (10 * PDF_PAGE_TOKENS..10 * PDF_PAGE_TOKENS + 30).contains(&e),
            "{e}"
        );
        // 30 MB of PDF is capped at the pages one request may carry.
        let big = serde_json::json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE".repeat(10_000_000)}});
        let e = estimate(with_content(serde_json::json!([big])));
        assert!(
            (PDF_MAX_PAGES * PDF_PAGE_TOKENS..PDF_MAX_PAGES * PDF_PAGE_TOKENS + 30).contains(&e),
            "{e}"
        );
        // A plain-text document is text: weighed as the same text in a text block.
        let words = "plain words of a document, ".repeat(1_000);
        let text = serde_json::json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": words}});
        let e = estimate(with_content(serde_json::json!([text])));
        let block = estimate(with_content(
            serde_json::json!([{"type": "text", "text": words}]),
        ));
        assert!(e >= block && e < block + 30, "{e} against {block}");
        // A document the proxy cannot see.
        let url = serde_json::json!({"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}});
        let e = estimate(with_content(serde_json::json!([url])));
        assert!(
            (UNSEEN_DOCUMENT_TOKENS..UNSEEN_DOCUMENT_TOKENS + 40).contains(&e),
            "{e}"
        );
    }

    #[test]
    fn system_tools_and_tool_inputs_count_as_text() {
        use crate::request::estimate::TOOLS_PROMPT_TOKENS;
        let base = estimate(with_content(serde_json::json!("hi")));
        let mut body = with_content(serde_json::json!("hi"));
        body["system"] = serde_json::json!([{"type": "text", "text": "s".repeat(3000)}]);
        assert!(estimate(body.clone()) >= base + 1000);
        body["system"] = serde_json::json!("s".repeat(3000));
        assert!(estimate(body) >= base + 1000);
        let mut body = with_content(serde_json::json!("hi"));
        body["tools"] = serde_json::json!([{"name": "get_weather", "description": "d".repeat(3000), "input_schema": {"type": "object"}}]);
        assert!(estimate(body) >= base + 1000 + TOOLS_PROMPT_TOKENS);
        let tool_use = serde_json::json!({"type": "tool_use", "id": "t", "name": "n", "input": {"q": "q".repeat(3000)}});
        assert!(estimate(with_content(serde_json::json!([tool_use]))) >= base + 1000);
    }

    #[test]
    fn odd_shapes_are_estimated_and_left_to_the_upstream() {
        // Whatever stands where the estimate looks, the body is forwarded and the upstream
        // judges it; the estimate counts what it cannot read as text.
        for body in [
            r#"{"model":"m","max_tokens":1,"messages":"hello"}"#,
            r#"{"model":"m","max_tokens":1,"messages":{"role":"user"}}"#,
            r#"{"model":"m","max_tokens":1,"messages":[1,true,null,"x",[{"type":"image"}]]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[{"content":7},{"content":{"type":"image"}}]}"#,
            r#"{"model":"m","max_tokens":1,"messages":[{"content":[{"type":["image"],"source":"s"}]}]}"#,
            r#"{"model":"m","max_tokens":1,"system":7,"tools":{"a":1},"messages":null}"#,
            r#"{"model":"m","max_tokens":1,"messages":[{"content":[{"type":"document","source":{"type":5,"data":[1]}}]}]}"#,
        ] {
            assert!(ok(body).input_tokens_estimate >= 1, "{body}");
        }
    }

    #[test]
    fn deep_nesting_where_the_estimate_reads_never_overflows_the_stack() {
        let deep =
            |open: &str, close: &str| format!("{}1{}", open.repeat(100_000), close.repeat(100_000));
        let bodies = [
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":{}}}"#,
                deep("[", "]")
            ),
            format!(
                r#"{{"model":"m","max_tokens":1,"system":{}}}"#,
                deep("[", "]")
            ),
            format!(
                r#"{{"model":"m","max_tokens":1,"tools":{}}}"#,
                deep("[", "]")
            ),
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":[{{"content":{}}}]}}"#,
                deep("[", "]")
            ),
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":[{{"content":[{{"type":{},"source":{}}}]}}]}}"#,
                deep("[", "]"),
                deep("[", "]")
            ),
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":[{{"content":[{{"type":"image","input":{}}}]}}]}}"#,
                deep(r#"{"a":"#, "}")
            ),
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":[{{"content":[{{"type":"document","source":{{"content":{}}}}}]}}]}}"#,
                deep("[", "]")
            ),
            // Tool results inside tool results: followed a few levels, then counted as text.
            format!(
                r#"{{"model":"m","max_tokens":1,"messages":[{{"content":{}"x"{}}}]}}"#,
                r#"[{"type":"tool_result","content":"#.repeat(20_000),
                "}]".repeat(20_000)
            ),
        ];
        for body in &bodies {
            let facts = inspect(&Route::Messages, body.as_bytes());
            assert!(facts.is_ok(), "{:?}", facts.map_err(|e| e.message()));
        }
    }

    #[test]
    fn a_duplicate_messages_field_is_refused_like_a_duplicate_model() {
        let message = bad(br#"{"model":"m","max_tokens":1,"messages":[],"messages":[]}"#);
        assert!(message.contains("duplicate"), "{message}");
    }

    #[test]
    fn estimate_never_undercounts_plain_text() {
        // Four bytes of English per token is the usual average; the estimate assumes three.
        let body = format!(
            r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"user","content":"{}"}}]}}"#,
            "word ".repeat(1000)
        );
        let f = ok(&body);
        assert!(f.input_tokens_estimate >= 5000 / 4);
    }
}
