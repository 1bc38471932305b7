//! The input estimate against the simulator's count of the same request: never below it on
//! text, within a stated factor of it on text with images, and never charging base64 data
//! byte by byte. Host only (the simulator does not build for wasm32).
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use breakwater::request::body::inspect;
use breakwater::request::estimate::IMAGE_TOKENS;
use breakwater::request::route::Route;
use proptest::prelude::*;
use serde_json::{json, Value};

fn estimate(body: &Value) -> u64 {
    inspect(&Route::Messages, body.to_string().as_bytes())
        .unwrap()
        .input_tokens_estimate
}

fn simulated(body: &Value) -> u64 {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    breakwater_sim::text::input_tokens(body.get("system"), &messages, body.get("tools"))
}

fn text_bytes(body: &Value) -> u64 {
    fn walk(v: &Value) -> u64 {
        match v {
            Value::String(s) => s.len() as u64,
            Value::Array(items) => items.iter().map(walk).sum(),
            Value::Object(o) => o.get("text").map_or(0, walk) + o.get("content").map_or(0, walk),
            _ => 0,
        }
    }
    body.get("system").map_or(0, walk)
        + body["messages"]
            .as_array()
            .map_or(0, |m| m.iter().map(|m| walk(&m["content"])).sum())
}

/// An image block of a file of this many bytes (in base64, 4 characters per 3 bytes).
fn image(file_bytes: usize) -> Value {
    json!({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/".repeat(file_bytes.div_ceil(3))}})
}

/// A content: a plain string or a list of text blocks (and images, when asked).
fn content(texts: Vec<String>, as_blocks: bool, images: &[usize]) -> Value {
    if !as_blocks && images.is_empty() {
        return Value::String(texts.concat());
    }
    let mut blocks: Vec<Value> = texts
        .into_iter()
        .map(|t| json!({"type": "text", "text": t}))
        .collect();
    blocks.extend(images.iter().map(|&n| image(n)));
    Value::Array(blocks)
}

fn request(system: Option<Value>, turns: Vec<Value>) -> Value {
    let messages: Vec<Value> = turns
        .into_iter()
        .enumerate()
        .map(|(i, c)| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": c}))
        .collect();
    let mut body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": messages});
    if let Some(s) = system {
        body["system"] = s;
    }
    body
}

/// Any Unicode text, escapes and control characters included.
fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(any::<String>(), 1..4)
}

/// English-like text: words of ASCII letters, punctuation and newlines.
fn prose() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("([a-zA-Z]{1,12}[ ,.\n]){0,200}", 1..4)
}

/// For mixed content of at least 1,000 tokens, the estimate is at most this many times the
/// simulator's count (text as prose).
const MIXED_FACTOR: f64 = 1.5;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn text_is_never_undercounted(
        system in prop::option::of(texts()),
        turns in prop::collection::vec((texts(), any::<bool>()), 1..6),
        system_blocks in any::<bool>(),
    ) {
        let system = system.map(|s| content(s, system_blocks, &[]));
        let body = request(system, turns.into_iter().map(|(t, b)| content(t, b, &[])).collect());
        let e = estimate(&body);
        prop_assert!(e >= text_bytes(&body) / 4, "estimate {} below bytes/4 of {}", e, text_bytes(&body));
        prop_assert!(e >= simulated(&body), "estimate {} below the simulator's {}", e, simulated(&body));
    }

    #[test]
    fn text_with_images_is_within_the_factor(
        turns in prop::collection::vec((prose(), prop::collection::vec(0usize..300_000, 0..3)), 1..5),
        system in prop::option::of(prose()),
    ) {
        let system = system.map(|s| content(s, false, &[]));
        let body = request(
            system,
            turns.into_iter().map(|(t, images)| content(t, true, &images)).collect(),
        );
        let (e, s) = (estimate(&body), simulated(&body));
        prop_assert!(e >= s, "estimate {} below the simulator's {}", e, s);
        // Below 1,000 tokens the per-message figures dominate; a bound that holds anyway:
        prop_assert!((e as f64) <= MIXED_FACTOR * s as f64 + 40.0, "estimate {} vs simulator {}", e, s);
    }
}

#[test]
fn figures_for_the_readme() {
    // A 1 MB JPEG with a question, before (one token per 3 bytes of body) and after.
    let body = request(
        None,
        vec![content(
            vec!["What is in this picture?".into()],
            true,
            &[1_000_000],
        )],
    );
    let before = body.to_string().len() as u64 / 3 + 1;
    let after = estimate(&body);
    let sim = simulated(&body);
    println!("1 MB image: before {before}, after {after}, simulator {sim}");
    assert!(before > 400_000);
    assert!(after < IMAGE_TOKENS + 50);
    // A conversation of prose and images: the measured factor.
    let words = "the quick brown fox jumps over the lazy dog, ".repeat(200);
    let body = request(
        Some(Value::String(words.clone())),
        vec![
            content(vec![words.clone()], true, &[500_000, 80_000]),
            Value::String(words.clone()),
            content(vec![words], true, &[2_000_000]),
        ],
    );
    let (e, s) = (estimate(&body), simulated(&body));
    println!(
        "prose and 3 images: estimate {e}, simulator {s}, factor {:.3}",
        e as f64 / s as f64
    );
    assert!(e >= s && (e as f64) <= MIXED_FACTOR * s as f64);
}
