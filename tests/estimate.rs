//! The input estimate against an independent count of the same request: the simulator's, which
//! runs the Claude tokenizer's BPE over the text and Anthropic's size rule over images. The
//! proxy reserves the estimate before sending, so it must never be below the count on the
//! text people and programs send (prose, code, JSON, numbers, any script, base64, images), and
//! on letters in no language not below a stated floor; how far above it goes is capacity held
//! back for nothing, so it is measured too (`figures_for_the_docs`). Host only (the simulator does not build for wasm32).
#![cfg(not(target_arch = "wasm32"))]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine as _;
use breakwater::request::body::inspect;
use breakwater::request::estimate::IMAGE_TOKENS;
use breakwater::request::route::Route;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{json, Value};

fn estimate(body: &Value) -> u64 {
    inspect(&Route::Messages, body.to_string().as_bytes())
        .unwrap()
        .input_tokens_estimate
}

/// The independent count: what the simulator answers in `usage.input_tokens`.
fn counted(body: &Value) -> u64 {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    breakwater_sim::text::input_tokens(body.get("system"), &messages, body.get("tools"))
}

/// The file of an image of this size: a PNG, GIF, JPEG or WebP header, then filler up to
/// `file_bytes`.
fn image_file(format: u8, width: u32, height: u32, file_bytes: usize) -> (Vec<u8>, &'static str) {
    let (w16, h16) = (width.min(0xffff) as u16, height.min(0xffff) as u16);
    let (mut file, media) = match format % 4 {
        0 => {
            let mut f = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
            f.extend_from_slice(&width.to_be_bytes());
            f.extend_from_slice(&height.to_be_bytes());
            (f, "image/png")
        }
        1 => {
            let mut f = b"GIF89a".to_vec();
            f.extend_from_slice(&w16.to_le_bytes());
            f.extend_from_slice(&h16.to_le_bytes());
            (f, "image/gif")
        }
        2 => {
            let mut f = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16];
            f.extend_from_slice(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
            f.extend_from_slice(&[0xff, 0xc0, 0, 17, 8]);
            f.extend_from_slice(&h16.to_be_bytes());
            f.extend_from_slice(&w16.to_be_bytes());
            (f, "image/jpeg")
        }
        _ => {
            let mut f = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\0\0\0\0".to_vec();
            let (w, h) = (width.clamp(1, 1 << 24) - 1, height.clamp(1, 1 << 24) - 1);
            f.extend_from_slice(&w.to_le_bytes()[..3]);
            f.extend_from_slice(&h.to_le_bytes()[..3]);
            (f, "image/webp")
        }
    };
    file.resize(file_bytes.max(file.len()), 0x5a);
    (file, media)
}

fn image_block(format: u8, width: u32, height: u32, file_bytes: usize) -> Value {
    let (file, media) = image_file(format, width, height, file_bytes);
    let data = base64::engine::general_purpose::STANDARD.encode(file);
    json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
}

/// A request: an optional system prompt, then turns alternating user and assistant, each a
/// plain string or text blocks (and any images in the first turn).
fn request(system: Option<String>, turns: Vec<(Vec<String>, bool)>, images: Vec<Value>) -> Value {
    let mut images = Some(images).filter(|i| !i.is_empty());
    let messages: Vec<Value> = turns
        .into_iter()
        .enumerate()
        .map(|(i, (texts, as_blocks))| {
            let content = match images.take() {
                None if !as_blocks => Value::String(texts.concat()),
                extra => {
                    let mut blocks: Vec<Value> = texts
                        .into_iter()
                        .map(|t| json!({"type": "text", "text": t}))
                        .collect();
                    blocks.extend(extra.unwrap_or_default());
                    Value::Array(blocks)
                }
            };
            json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": content})
        })
        .collect();
    let mut body = json!({"model": "claude-sonnet-5-5", "max_tokens": 64, "messages": messages});
    if let Some(s) = system {
        body["system"] = Value::String(s);
    }
    body
}

fn chars(ranges: &'static [(char, char)], n: std::ops::Range<usize>) -> BoxedStrategy<String> {
    let one =
        prop::sample::select(ranges.to_vec()).prop_flat_map(|(lo, hi)| prop::char::range(lo, hi));
    prop::collection::vec(one, n)
        .prop_map(|c| c.into_iter().collect())
        .boxed()
}

/// Text written by people in Chinese, Japanese and Korean, and characters drawn from the
/// whole of those scripts (rare ideographs the tokenizer spells byte by byte).
fn cjk() -> BoxedStrategy<String> {
    const SENTENCES: &[&str] = &[
        "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
        "我们明天早上九点在火车站见面，然后一起去博物馆参观。",
        "이 문서는 서버의 설정 방법과 주의 사항을 설명합니다.",
        "申し訳ありませんが、そのファイルは見つかりませんでした。",
        "机器学习模型需要大量的数据进行训练和验证。",
        "「猫」という漢字は、けものへんに苗と書きます。",
    ];
    const SCRIPTS: &[(char, char)] = &[
        ('\u{4e00}', '\u{9fff}'),
        ('\u{3040}', '\u{309f}'),
        ('\u{30a0}', '\u{30ff}'),
        ('\u{ac00}', '\u{d7a3}'),
        ('\u{3000}', '\u{303f}'),
        ('\u{20000}', '\u{2a6df}'),
    ];
    prop_oneof![
        prop::collection::vec(prop::sample::select(SENTENCES), 1..40).prop_map(|s| s.concat()),
        chars(SCRIPTS, 1..600),
    ]
    .boxed()
}

/// Emoji alone, with skin tones, joined into families, as flags, between words.
fn emoji() -> BoxedStrategy<String> {
    let one = prop_oneof![
        prop::char::range('\u{1f300}', '\u{1faff}').prop_map(String::from),
        (
            prop::char::range('\u{1f466}', '\u{1f469}'),
            prop::char::range('\u{1f3fb}', '\u{1f3ff}')
        )
            .prop_map(|(a, b)| format!("{a}{b}")),
        Just("👨\u{200d}👩\u{200d}👧\u{200d}👦".to_string()),
        Just("🏳\u{fe0f}\u{200d}🌈".to_string()),
        (
            prop::char::range('\u{1f1e6}', '\u{1f1ff}'),
            prop::char::range('\u{1f1e6}', '\u{1f1ff}')
        )
            .prop_map(|(a, b)| format!("{a}{b}")),
        prop::char::range('\u{2600}', '\u{27bf}').prop_map(|c| format!("{c}\u{fe0f}")),
        "[a-z]{1,8} ",
    ];
    prop::collection::vec(one, 1..300)
        .prop_map(|s| s.concat())
        .boxed()
}

/// Source code: real snippets, and generated lines of indentation, names, operators and
/// literals.
fn code() -> BoxedStrategy<String> {
    const SNIPPETS: &[&str] = &[
        "fn main() {\n    let xs: Vec<u64> = (0..10).map(|x| x * x).collect();\n    println!(\"{xs:?}\");\n}\n",
        "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
        "export async function load(url) {\n  const res = await fetch(url, { method: 'GET' });\n  if (!res.ok) throw new Error(`HTTP ${res.status}`);\n  return res.json();\n}\n",
        "SELECT u.id, COUNT(o.id) AS n FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.id HAVING n > 3;\n",
        "#include <stdio.h>\nint main(void) {\n\tfor (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }\n\treturn 0;\n}\n",
        "<div class=\"card\"><h2>{{ title }}</h2><p>{{ body | safe }}</p></div>\n",
    ];
    let line = "[ \t]{0,16}[a-zA-Z_][a-zA-Z0-9_]{0,20}(\\.|::|->|\\(|\\)|\\{|\\}|\\[|\\]|;|, | = | == | != |\\+=|&&|\\|\\||<|>|'[a-z]{0,6}'|\"[^\"\\\\]{0,12}\"|[0-9]{1,6}|[a-zA-Z_]{1,10}){0,14}\n";
    prop_oneof![
        prop::collection::vec(prop::sample::select(SNIPPETS), 1..20).prop_map(|s| s.concat()),
        prop::collection::vec(line, 1..60).prop_map(|s| s.concat()),
    ]
    .boxed()
}

/// Long numbers: digits by the hundred, decimals, signs, grouped digits, hex.
fn numbers() -> BoxedStrategy<String> {
    prop_oneof![
        prop::collection::vec("-?[0-9]{1,200}([.,][0-9]{1,40})?[ ,;\n]", 1..20)
            .prop_map(|s| s.concat()),
        prop::collection::vec("[0-9]{1,3}(,[0-9]{3}){1,10} ", 1..30).prop_map(|s| s.concat()),
        prop::collection::vec("0x[0-9a-f]{1,64} ", 1..30).prop_map(|s| s.concat()),
    ]
    .boxed()
}

/// JSON documents, compact and pretty.
fn json_text() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-zA-Z0-9 _.:/-]{0,30}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    let doc = leaf.prop_recursive(4, 200, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    (doc, any::<bool>())
        .prop_map(|(v, pretty)| {
            if pretty {
                serde_json::to_string_pretty(&v).unwrap()
            } else {
                v.to_string()
            }
        })
        .boxed()
}

/// Base64 of random bytes, as text (a pasted key, a file dumped into a prompt).
fn base64_text() -> BoxedStrategy<String> {
    (prop::collection::vec(any::<u8>(), 1..3000), any::<bool>())
        .prop_map(|(b, url_safe)| {
            if url_safe {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
            } else {
                base64::engine::general_purpose::STANDARD.encode(b)
            }
        })
        .boxed()
}

/// Words of many scripts side by side: Latin with accents, Cyrillic, Greek, Arabic, Hebrew,
/// Devanagari, Thai, Hangul, ideographs, emoji.
fn mixed_scripts() -> BoxedStrategy<String> {
    const SCRIPTS: &[&[(char, char)]] = &[
        &[('a', 'z')],
        &[('\u{c0}', '\u{ff}')],
        &[('\u{410}', '\u{44f}')],
        &[('\u{391}', '\u{3c9}')],
        &[('\u{621}', '\u{64a}')],
        &[('\u{5d0}', '\u{5ea}')],
        &[('\u{915}', '\u{939}'), ('\u{93e}', '\u{94c}')],
        &[('\u{e01}', '\u{e2e}')],
        &[('\u{ac00}', '\u{d7a3}')],
        &[('\u{4e00}', '\u{9fff}')],
        &[('\u{1f600}', '\u{1f64f}')],
    ];
    let word = prop::sample::select(SCRIPTS)
        .prop_flat_map(|s| chars(s, 1..12))
        .prop_map(|w| w + " ");
    prop::collection::vec(word, 1..150)
        .prop_map(|s| s.concat())
        .boxed()
}

/// Words of random ASCII letters in either case, punctuation and newlines.
fn prose() -> BoxedStrategy<String> {
    "([a-zA-Z]{1,12}[ ,.\n]){0,300}".boxed()
}

/// Printable ASCII in any order: punctuation runs, symbols, letters and digits interleaved.
fn ascii_noise() -> BoxedStrategy<String> {
    "[ -~]{0,800}".boxed()
}

/// Lowercase letters in no language: hashes, run-together identifiers, gibberish.
fn lowercase_gibberish() -> BoxedStrategy<String> {
    "([a-z]{1,40}[ _\n]){1,60}".boxed()
}

/// Characters that Unicode compatibility normalization (NFKC, which the tokenizer applies)
/// spells out in several: Arabic ligatures, squared and parenthesized signs, fractions,
/// full-width and half-width forms, among words.
fn compatibility_forms() -> BoxedStrategy<String> {
    const RANGES: &[(char, char)] = &[
        ('\u{fdf0}', '\u{fdfd}'),
        ('\u{fb50}', '\u{fdcf}'),
        ('\u{fe70}', '\u{fefc}'),
        ('\u{3300}', '\u{33ff}'),
        ('\u{3200}', '\u{32ff}'),
        ('\u{2460}', '\u{24ff}'),
        ('\u{2150}', '\u{218b}'),
        ('\u{bc}', '\u{be}'),
        ('\u{ff01}', '\u{ffee}'),
        ('\u{fb00}', '\u{fb4f}'),
        ('\u{1f100}', '\u{1f1ff}'),
        ('\u{1d400}', '\u{1d7ff}'),
    ];
    prop::collection::vec((chars(RANGES, 1..8), "[a-z]{0,6} ?"), 1..80)
        .prop_map(|w| w.into_iter().map(|(a, b)| a + &b).collect())
        .boxed()
}

/// Any Unicode text, control characters included.
fn any_text() -> BoxedStrategy<String> {
    any::<String>().boxed()
}

/// A request whose every text is from `corpus`: a system prompt, one to four turns.
fn requests(corpus: Corpus) -> BoxedStrategy<Value> {
    (
        prop::option::of(corpus()),
        prop::collection::vec((prop::collection::vec(corpus(), 1..3), any::<bool>()), 1..5),
    )
        .prop_map(|(system, turns)| request(system, turns, Vec::new()))
        .boxed()
}

/// Images of sizes from an icon to 8000×8000, thin strips included, in each format, with
/// prose; some with no text at all.
fn image_requests() -> BoxedStrategy<Value> {
    let size = prop_oneof![
        prop::sample::select(vec![
            (16u32, 16u32),
            (200, 200),
            (640, 480),
            (1000, 1000),
            (1092, 1092),
            (1568, 784),
            (1920, 1080),
            (4000, 3000),
            (8000, 8000),
            (8000, 1),
        ]),
        (1u32..8000, 1u32..8000),
    ];
    let image = (0u8..4, size, 0usize..300_000).prop_map(|(f, (w, h), n)| image_block(f, w, h, n));
    (
        prop::collection::vec(image, 1..4),
        prop::collection::vec(prose(), 0..2),
    )
        .prop_map(|(images, text)| request(None, vec![(text, true)], images))
        .boxed()
}

/// A kind of text: a strategy for pieces of it.
type Corpus = fn() -> BoxedStrategy<String>;

const CORPORA: &[(&str, Corpus)] = &[
    ("English prose", english),
    ("random-letter words", prose),
    ("CJK", cjk),
    ("emoji", emoji),
    ("code", code),
    ("long numbers", numbers),
    ("JSON", json_text),
    ("base64", base64_text),
    ("mixed scripts", mixed_scripts),
    ("printable ASCII noise", ascii_noise),
    ("lowercase gibberish", lowercase_gibberish),
    ("compatibility forms (NFKC)", compatibility_forms),
    ("any Unicode", any_text),
];

fn check(body: &Value) -> Result<(), TestCaseError> {
    let (e, c) = (estimate(body), counted(body));
    prop_assert!(e >= c, "estimate {} below the count {} for {}", e, c, body);
    Ok(())
}

/// Letters in no language (random-letter words, lowercase gibberish) are rare in what chat
/// clients send, and weighing every letter as such would overcount English about twofold:
/// for these the estimate may run short, but not below `floor` of the count.
fn check_floor(body: &Value, floor: f64) -> Result<(), TestCaseError> {
    let (e, c) = (estimate(body), counted(body));
    prop_assert!(
        e as f64 >= floor * c as f64,
        "estimate {} below {} of the count {} for {}",
        e,
        floor,
        c,
        body
    );
    Ok(())
}

/// The least estimate / count allowed for random-letter words: the least measured over
/// 2,000 requests was 1.00, less a margin.
const RANDOM_WORDS_FLOOR: f64 = 0.9;
/// The least estimate / count allowed for lowercase gibberish: the least measured over
/// 2,000 requests was 0.65, less a margin.
const GIBBERISH_FLOOR: f64 = 0.6;

proptest! {
    // 64 cases a corpus in the suite; PROPTEST_CASES=N searches longer.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn english_is_never_undercounted(body in requests(english)) { check(&body)?; }

    #[test]
    fn random_letter_words_stay_above_their_floor(body in requests(prose)) {
        check_floor(&body, RANDOM_WORDS_FLOOR)?;
    }

    #[test]
    fn cjk_is_never_undercounted(body in requests(cjk)) { check(&body)?; }

    #[test]
    fn emoji_are_never_undercounted(body in requests(emoji)) { check(&body)?; }

    #[test]
    fn code_is_never_undercounted(body in requests(code)) { check(&body)?; }

    #[test]
    fn long_numbers_are_never_undercounted(body in requests(numbers)) { check(&body)?; }

    #[test]
    fn json_is_never_undercounted(body in requests(json_text)) { check(&body)?; }

    #[test]
    fn base64_text_is_never_undercounted(body in requests(base64_text)) { check(&body)?; }

    #[test]
    fn mixed_scripts_are_never_undercounted(body in requests(mixed_scripts)) { check(&body)?; }

    #[test]
    fn ascii_noise_is_never_undercounted(body in requests(ascii_noise)) { check(&body)?; }

    #[test]
    fn lowercase_gibberish_stays_above_its_floor(body in requests(lowercase_gibberish)) {
        check_floor(&body, GIBBERISH_FLOOR)?;
    }

    #[test]
    fn compatibility_forms_are_never_undercounted(body in requests(compatibility_forms)) { check(&body)?; }

    #[test]
    fn any_unicode_is_never_undercounted(body in requests(any_text)) { check(&body)?; }

    #[test]
    fn images_of_any_size_are_never_undercounted(body in image_requests()) {
        check(&body)?;
        // An image's data is never charged by its bytes: each image adds its flat figure and
        // the weight of its few words (`media_type`), whatever its size.
        let mut without = body.clone();
        let blocks = without["messages"][0]["content"].as_array_mut().unwrap();
        let images = blocks.iter().filter(|b| b["type"] == "image").count() as u64;
        blocks.retain(|b| b["type"] != "image");
        let e = estimate(&body);
        prop_assert!(e <= estimate(&without) + images * (IMAGE_TOKENS + 20), "{} for {} images", e, images);
    }
}

/// The smallest and largest estimate / count over `cases` requests drawn with a fixed seed.
fn ratios(strategy: BoxedStrategy<Value>, cases: usize) -> (f64, f64) {
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let (mut lo, mut hi) = (f64::MAX, 0f64);
    for _ in 0..cases {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        let r = estimate(&body) as f64 / counted(&body) as f64;
        lo = lo.min(r);
        hi = hi.max(r);
    }
    (lo, hi)
}

#[test]
fn figures_for_the_docs() {
    // Prints the table in docs/estimate.md: `cargo test --test estimate figures -- --nocapture`.
    println!("| corpus | min estimate/count | max estimate/count |");
    println!("| --- | --- | --- |");
    let mut worst = f64::MAX;
    for (name, corpus) in CORPORA {
        let (lo, hi) = ratios(requests(*corpus), 200);
        println!("| {name} | {lo:.2} | {hi:.2} |");
        match *name {
            "random-letter words" => assert!(lo >= RANDOM_WORDS_FLOOR, "{name}: {lo:.3}"),
            "lowercase gibberish" => assert!(lo >= GIBBERISH_FLOOR, "{name}: {lo:.3}"),
            _ => worst = worst.min(lo),
        }
    }
    let (lo, hi) = ratios(image_requests(), 200);
    println!("| images of several sizes | {lo:.2} | {hi:.2} |");
    worst = worst.min(lo);
    assert!(worst >= 1.0, "an estimate fell below the count: {worst:.3}");
}

#[test]
fn a_photo_is_estimated_by_the_block_not_its_bytes() {
    // A 1 MB, 4000×3000 JPEG with a question: one token per 3 bytes of body would be
    // some 450,000; the count is the scaled image's.
    let body = request(
        None,
        vec![(vec!["What is in this picture?".into()], true)],
        vec![image_block(2, 4000, 3000, 1_000_000)],
    );
    let (e, c) = (estimate(&body), counted(&body));
    assert!(body.to_string().len() / 3 > 400_000);
    assert!(e >= c && e < IMAGE_TOKENS + 50, "estimate {e}, count {c}");
    // A 16×16 icon costs one token; the estimate still reserves a whole image.
    let icon = request(
        None,
        vec![(vec![], true)],
        vec![image_block(0, 16, 16, 600)],
    );
    assert!(counted(&icon) < 20 && estimate(&icon) >= IMAGE_TOKENS);
}

/// English as people write it: requests, prose, a letter.
fn english() -> BoxedStrategy<String> {
    const P: &[&str] = &[
        "The proxy reserves an estimate of the request's input tokens before it sends the request upstream. ",
        "When the answer arrives, the reservation is settled against the usage the upstream reports, and the difference is returned to the caller's bucket. ",
        "Please summarize the following article in three sentences, keeping the names of the people involved. ",
        "I'm getting an error when I run the build script: it says the linker cannot find the library, although it's installed. ",
        "Here is the meeting transcript from Tuesday. Can you list the action items, who owns each one, and the deadlines?\n\n",
        "Dear team,\nThank you for your patience while we investigated the outage. The root cause was a misconfigured load balancer.\n",
        "Can you help me write a cover letter for a junior data analyst position? I have two years of experience with Excel and SQL. ",
        "What's the difference between a list and a tuple in Python, and when should I use each one?\n",
        "Our quarterly revenue grew by eleven percent, driven mostly by subscriptions in Europe and North America. ",
        "She opened the window, looked at the rain, and decided that the walk could wait until tomorrow. ",
        "Thanks! That worked. One more question: how do I make the change permanent after a reboot?\n",
        "The review is at 3:30 pm on March 14, 2025, in room 204; bring the draft (about 12 pages) and your notes. ",
    ];
    prop::collection::vec(prop::sample::select(P), 1..30)
        .prop_map(|s| s.concat())
        .boxed()
}
