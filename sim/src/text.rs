//! Deterministic answer text and the input count: one word is one output token, and input
//! tokens are what [`crate::tokens`] counts in the request's text, images and documents, so
//! every answer is reproducible from the request (and `--seed`).

use serde_json::Value;

use crate::respond::{fnv1a, mix64};
use crate::tokens::{image_block_tokens, text_tokens, MAX_IMAGE_TOKENS};

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

/// The system prompt Anthropic adds to a request that defines tools.
pub const TOOLS_PROMPT_TOKENS: u64 = 346;
/// What marks a user's turn, counted with the tokenizer (the prompt form the Claude
/// tokenizer was made for).
pub const USER_TURN: &str = "\n\nHuman:";
/// What marks the assistant's turn, and closes the prompt.
pub const ASSISTANT_TURN: &str = "\n\nAssistant:";

/// Adds the tokens of every piece of text in a system prompt or a message `content`
/// (strings, text blocks, tool results, tool inputs), every image and every document.
pub fn tally(v: &Value) -> u64 {
    match v {
        Value::String(s) => text_tokens(s),
        Value::Array(items) => items.iter().map(tally).sum(),
        Value::Object(obj) => match obj.get("type").and_then(Value::as_str) {
            Some("image") => image_block_tokens(obj.get("source")),
            Some("document") => document(obj.get("source")),
            _ => {
                let mut n = 0;
                if let Some(Value::String(text)) = obj.get("text") {
                    n += text_tokens(text);
                }
                if let Some(c) = obj.get("content") {
                    n += tally(c);
                }
                if let Some(input) = obj.get("input") {
                    n += text_tokens(&input.to_string());
                }
                n
            }
        },
        _ => 0,
    }
}

/// A document block: plain text by its tokens, a content source by its blocks, a base64
/// PDF by its pages; one the simulator cannot see (a URL, a file id) as one page.
fn document(source: Option<&Value>) -> u64 {
    let source = source.and_then(Value::as_object);
    let kind = source.and_then(|s| s.get("type")).and_then(Value::as_str);
    let data = source.and_then(|s| s.get("data")).and_then(Value::as_str);
    match (kind, data) {
        (Some("text"), Some(text)) => text_tokens(text),
        (Some("content"), _) => source.and_then(|s| s.get("content")).map_or(0, tally),
        (Some("base64"), Some(data)) => pdf_tokens(data),
        _ => MAX_IMAGE_TOKENS,
    }
}

/// A base64 PDF: every page as an image (at [`MAX_IMAGE_TOKENS`], a page rendered at any
/// usual resolution is scaled to the cap), plus the tokens of its text. The text is what
/// the text-showing operators of its uncompressed content streams hold; text inside
/// compressed streams is not seen.
pub fn pdf_tokens(base64_data: &str) -> u64 {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64_data.trim())
        .unwrap_or_default();
    pdf_pages(&bytes) * MAX_IMAGE_TOKENS + text_tokens(&pdf_text(&bytes))
}

/// The pages of a PDF: its `/Type /Page` objects (not `/Pages`), at least one.
pub fn pdf_pages(bytes: &[u8]) -> u64 {
    let mut pages = 0u64;
    for marker in [&b"/Type /Page"[..], &b"/Type/Page"[..]] {
        pages += bytes
            .windows(marker.len() + 1)
            .filter(|w| w.starts_with(marker) && w.last() != Some(&b's'))
            .count() as u64;
    }
    pages.max(1)
}

/// The literal strings between `BT` and `ET` (a text object), with their escapes undone,
/// one text object to a line.
pub fn pdf_text(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut in_text = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let word = |w: &[u8]| {
            bytes.get(i..i + 2) == Some(w)
                && i.checked_sub(1)
                    .and_then(|p| bytes.get(p))
                    .is_none_or(|c| !c.is_ascii_alphanumeric())
                && bytes.get(i + 2).is_none_or(|c| !c.is_ascii_alphanumeric())
        };
        if !in_text && word(b"BT") {
            in_text = true;
            i += 2;
        } else if in_text && word(b"ET") {
            in_text = false;
            out.push(b'\n');
            i += 2;
        } else if in_text && b == b'(' {
            // A literal string: balanced parentheses, backslash escapes.
            let mut depth = 1;
            i += 1;
            while let Some(&c) = bytes.get(i) {
                i += 1;
                match c {
                    b'\\' => {
                        if let Some(&e) = bytes.get(i) {
                            i += 1;
                            out.push(match e {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                other => other,
                            });
                        }
                    }
                    b'(' => {
                        depth += 1;
                        out.push(c);
                    }
                    b')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        out.push(c);
                    }
                    _ => out.push(c),
                }
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Input tokens of a request: the tokens of all text in `system` and the messages, each
/// turn's marker and the closing assistant marker, the blocks' tokens, and the tool
/// definitions (their JSON, and the tool prompt); at least 1.
pub fn input_tokens(system: Option<&Value>, messages: &[Value], tools: Option<&Value>) -> u64 {
    let mut n = system.map_or(0, tally);
    for m in messages {
        let marker = match m.get("role").and_then(Value::as_str) {
            Some("assistant") => ASSISTANT_TURN,
            _ => USER_TURN,
        };
        n += text_tokens(marker) + m.get("content").map_or(0, tally);
    }
    if !messages.is_empty() {
        n += text_tokens(ASSISTANT_TURN);
    }
    if let Some(Value::Array(defs)) = tools {
        if !defs.is_empty() {
            n += defs
                .iter()
                .map(|d| text_tokens(&d.to_string()))
                .sum::<u64>()
                + TOOLS_PROMPT_TOKENS;
        }
    }
    n.max(1)
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

    fn turn_markers() -> u64 {
        text_tokens(USER_TURN) + text_tokens(ASSISTANT_TURN)
    }

    #[test]
    fn text_through_the_tokenizer() {
        let msgs = vec![json!({"role": "user", "content": "hello world"})];
        assert_eq!(input_tokens(None, &msgs, None), 2 + turn_markers());
        assert_eq!(
            input_tokens(Some(&json!("hello world")), &msgs, None),
            4 + turn_markers()
        );
        let blocks = vec![
            json!({"role": "user", "content": [{"type": "text", "text": "12345678901234567890"}]}),
        ];
        assert_eq!(input_tokens(None, &blocks, None), 3 + turn_markers());
        assert_eq!(input_tokens(None, &[], None), 1);
    }

    #[test]
    fn images_documents_and_tools() {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        // Data that is no image it can read: the most a scaled image costs.
        let unknown = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A".repeat(100_000)}});
        let by_url =
            json!({"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}});
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&[200, 0, 200, 0]);
        let small = json!({"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": b64(&gif)}});
        let msgs = vec![json!({"role": "user", "content": [unknown, by_url, small]})];
        assert_eq!(
            input_tokens(None, &msgs, None),
            2 * MAX_IMAGE_TOKENS + 54 + turn_markers()
        );
        let pdf = "%PDF-1.4 1 0 obj << /Type /Pages /Count 2 >> 2 0 obj << /Type /Page >> 3 0 obj <</Type/Page>> stream BT /F1 12 Tf (hello \\(world\\)) Tj ET endstream";
        assert_eq!(pdf_pages(pdf.as_bytes()), 2);
        assert_eq!(pdf_text(pdf.as_bytes()), "hello (world)\n");
        let doc = json!({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": b64(pdf.as_bytes())}});
        let text_doc = json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello world"}});
        let msgs = vec![json!({"role": "user", "content": [doc, text_doc]})];
        assert_eq!(
            input_tokens(None, &msgs, None),
            2 * MAX_IMAGE_TOKENS + text_tokens("hello (world)\n") + 2 + turn_markers()
        );
        let tools = json!([{"name": "x", "input_schema": {}}]);
        let plain = vec![json!({"role": "user", "content": "hello world"})];
        assert_eq!(
            input_tokens(None, &plain, Some(&tools)),
            2 + turn_markers() + text_tokens(&tools[0].to_string()) + TOOLS_PROMPT_TOKENS
        );
        assert_eq!(
            input_tokens(None, &plain, Some(&json!([]))),
            2 + turn_markers()
        );
    }

    #[test]
    fn words_are_deterministic() {
        let a = Words::new(1, "hello");
        let b = Words::new(1, "hello");
        assert_eq!(a.word(5), b.word(5));
        assert_eq!(delta_text("fox", ".."), "fox ..");
    }
}
