//! Deterministic answer text and token arithmetic: one word is one output
//! token, and input tokens are estimated as characters / 4, so every answer
//! is reproducible from the request (and `--seed`).

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

/// Counts the characters of every piece of text in a system prompt or a
/// message `content` (strings, text blocks, tool results, tool inputs).
pub fn text_chars(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.chars().count() as u64,
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(obj) => {
            let mut n = 0;
            if let Some(Value::String(t)) = obj.get("text") {
                n += t.chars().count() as u64;
            }
            if let Some(c) = obj.get("content") {
                n += text_chars(c);
            }
            if let Some(input) = obj.get("input") {
                n += input.to_string().chars().count() as u64;
            }
            n
        }
        _ => 0,
    }
}

/// `ceil(chars / 4)`, at least 1, over `system` and all messages.
pub fn input_tokens(system: Option<&Value>, messages: &[Value]) -> u64 {
    let mut chars = system.map(text_chars).unwrap_or(0);
    for m in messages {
        if let Some(c) = m.get("content") {
            chars += text_chars(c);
        }
    }
    chars.div_ceil(4).max(1)
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
        assert_eq!(input_tokens(None, &msgs), 2);
        assert_eq!(input_tokens(Some(&json!("abc")), &msgs), 2);
        let blocks =
            vec![json!({"role": "user", "content": [{"type": "text", "text": "abcdefghi"}]})];
        assert_eq!(input_tokens(None, &blocks), 3);
        assert_eq!(
            input_tokens(None, &[json!({"role": "user", "content": ""})]),
            1
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
