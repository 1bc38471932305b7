//! Deterministic answer text and token arithmetic: one word is one output
//! token, and input tokens are characters / 4 of the text, plus a fixed figure
//! per image and per PDF page, so every answer is reproducible from the request
//! (and `--seed`).

use serde_json::Value;

use crate::respond::{fnv1a, mix64};

pub const WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "river",
    "stones", "hum", "quietly", "under", "amber", "light", "and", "every", "small", "wave",
    "carries", "patient", "echo", "toward", "distant", "harbor", "walls", "where", "gulls",
    "circle", "slowly",
];

/// A deterministic word sequence starting at a seeded offset.
#[derive(Clone, Debug)]
pub struct Words {
    start: u64,
}

impl Words {
    /// Seeds the sequence from the server seed and the last user message.
    pub fn new(seed: u64, prompt: &str) -> Words {
        Words {
            start: mix64(seed ^ fnv1a(prompt.as_bytes())),
        }
    }

    /// The `k`-th word of the answer.
    pub fn word(&self, k: u64) -> &'static str {
        let len = WORDS.len() as u64;
        let idx = (self.start % len).wrapping_add(k) % len;
        WORDS.get(idx as usize).copied().unwrap_or("the")
    }
}

/// The text of one streamed delta (and of one word in a full answer):
/// the word, a space, then `pad` filler bytes.
pub fn delta_text(word: &str, pad: &str) -> String {
    let mut s = String::with_capacity(word.len() + 1 + pad.len());
    s.push_str(word);
    s.push(' ');
    s.push_str(pad);
    s
}

/// Tokens of one image block, whatever its source: Anthropic charges about
/// width x height / 750, at most about 1,600 for an image scaled to fit, and the
/// simulator does not decode images, so it charges the ceiling.
pub const IMAGE_TOKENS: u64 = 1_600;
/// Tokens of one PDF page (its text and the image of the page).
pub const PDF_PAGE_TOKENS: u64 = 3_000;
/// The system prompt Anthropic adds to a request that defines tools.
pub const TOOLS_PROMPT_TOKENS: u64 = 346;

/// What a request's input is made of: text characters (4 to a token) and
/// tokens charged per block (images, PDF pages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub chars: u64,
    pub tokens: u64,
}

/// Adds every piece of text in a system prompt or a message `content`
/// (strings, text blocks, tool results, tool inputs), every image and every
/// document to the tally.
pub fn tally(v: &Value, t: &mut Tally) {
    match v {
        Value::String(s) => t.chars += s.chars().count() as u64,
        Value::Array(items) => items.iter().for_each(|item| tally(item, t)),
        Value::Object(obj) => match obj.get("type").and_then(Value::as_str) {
            Some("image") => t.tokens += IMAGE_TOKENS,
            Some("document") => document(obj.get("source"), t),
            _ => {
                if let Some(Value::String(text)) = obj.get("text") {
                    t.chars += text.chars().count() as u64;
                }
                if let Some(c) = obj.get("content") {
                    tally(c, t);
                }
                if let Some(input) = obj.get("input") {
                    t.chars += input.to_string().chars().count() as u64;
                }
            }
        },
        _ => {}
    }
}

/// A document block: plain text by its characters, a content source by its
/// blocks, a base64 PDF by its pages; one the simulator cannot see (a URL, a
/// file id) as one page.
fn document(source: Option<&Value>, t: &mut Tally) {
    let source = source.and_then(Value::as_object);
    let kind = source.and_then(|s| s.get("type")).and_then(Value::as_str);
    let data = source.and_then(|s| s.get("data")).and_then(Value::as_str);
    match (kind, data) {
        (Some("text"), Some(text)) => t.chars += text.chars().count() as u64,
        (Some("content"), _) => {
            if let Some(c) = source.and_then(|s| s.get("content")) {
                tally(c, t);
            }
        }
        (Some("base64"), Some(data)) => t.tokens += pdf_pages(data) * PDF_PAGE_TOKENS,
        _ => t.tokens += PDF_PAGE_TOKENS,
    }
}

/// The pages of a base64 PDF: its `/Type /Page` objects (not `/Pages`), at
/// least one.
pub fn pdf_pages(base64_data: &str) -> u64 {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_data.trim())
        .unwrap_or_default();
    let mut pages = 0u64;
    for marker in [&b"/Type /Page"[..], &b"/Type/Page"[..]] {
        pages += bytes
            .windows(marker.len() + 1)
            .filter(|w| w.starts_with(marker) && w.last() != Some(&b's'))
            .count() as u64;
    }
    pages.max(1)
}

/// Input tokens of a request: `ceil(chars / 4)` of all text in `system` and
/// the messages, plus the blocks' tokens, plus the tool definitions (their JSON
/// at 4 characters a token, and the tool prompt); at least 1.
pub fn input_tokens(system: Option<&Value>, messages: &[Value], tools: Option<&Value>) -> u64 {
    let mut t = Tally::default();
    if let Some(s) = system {
        tally(s, &mut t);
    }
    for m in messages {
        if let Some(c) = m.get("content") {
            tally(c, &mut t);
        }
    }
    let mut tool_tokens = 0;
    if let Some(Value::Array(defs)) = tools {
        if !defs.is_empty() {
            let chars: u64 = defs
                .iter()
                .map(|d| d.to_string().chars().count() as u64)
                .sum();
            tool_tokens = chars.div_ceil(4) + TOOLS_PROMPT_TOKENS;
        }
    }
    (t.chars.div_ceil(4) + t.tokens + tool_tokens).max(1)
}

/// The text of the last user message (seeds the answer's words).
pub fn last_user_text(messages: &[Value]) -> String {
    messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .and_then(|m| m.get("content"))
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn token_estimate() {
        let msgs = vec![json!({"role": "user", "content": "abcde"})];
        assert_eq!(input_tokens(None, &msgs, None), 2);
        assert_eq!(input_tokens(Some(&json!("abc")), &msgs, None), 2);
        let blocks =
            vec![json!({"role": "user", "content": [{"type": "text", "text": "abcdefghi"}]})];
        assert_eq!(input_tokens(None, &blocks, None), 3);
        assert_eq!(
            input_tokens(None, &[json!({"role": "user", "content": ""})], None),
            1
        );
    }

    #[test]
    fn images_documents_and_tools() {
        let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(100_000)}});
        let msgs =
            vec![json!({"role": "user", "content": [image, {"type": "text", "text": "abcd"}]})];
        assert_eq!(input_tokens(None, &msgs, None), 1 + IMAGE_TOKENS);
        use base64::Engine as _;
        let pdf = "%PDF-1.4 1 0 obj << /Type /Pages /Count 2 >> 2 0 obj << /Type /Page >> 3 0 obj <</Type/Page>>";
        let data = base64::engine::general_purpose::STANDARD.encode(pdf);
        assert_eq!(pdf_pages(&data), 2);
        let doc = json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}});
        let text_doc = json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "abcdefgh"}});
        let msgs = vec![json!({"role": "user", "content": [doc, text_doc]})];
        assert_eq!(input_tokens(None, &msgs, None), 2 * PDF_PAGE_TOKENS + 2);
        let tools = json!([{"name": "x", "input_schema": {}}]);
        let plain = vec![json!({"role": "user", "content": "abcd"})];
        assert_eq!(
            input_tokens(None, &plain, Some(&tools)),
            1 + 8 + TOOLS_PROMPT_TOKENS
        );
        assert_eq!(input_tokens(None, &plain, Some(&json!([]))), 1);
    }

    #[test]
    fn words_are_deterministic() {
        let a = Words::new(1, "hello");
        let b = Words::new(1, "hello");
        assert_eq!(a.word(5), b.word(5));
        assert_eq!(delta_text("fox", ".."), "fox ..");
    }
}
