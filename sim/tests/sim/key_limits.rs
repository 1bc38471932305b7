//! The `key_limits` mode: one key's Anthropic limits as continuous token
//! buckets, honest `retry-after`, true `anthropic-ratelimit-*` headers and the
//! output refund at completion.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};

use crate::common::{msg, parse_sse, within, Reply, Sim};

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// `YYYY-MM-DDTHH:MM:SSZ` to Unix seconds.
fn parse_rfc3339(s: &str) -> i64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    assert!(s.len() == 20 && s.ends_with('Z'), "{s}");
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

fn num(r: &Reply, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

fn reset_in_s(r: &Reply, dim: &str) -> f64 {
    let name = format!("anthropic-ratelimit-{dim}-reset");
    parse_rfc3339(r.header(&name).unwrap_or_else(|| panic!("no {name}"))) as f64 - now_s()
}

/// A body whose input is exactly `tokens` tokens (4 characters each).
/// A request of exactly `tokens` input tokens: the two turn markers, then " the" (one token
/// each) for the rest.
fn prompt_of(tokens: usize, extra: Value) -> Value {
    use breakwater_sim::text::{input_tokens, ASSISTANT_TURN, USER_TURN};
    use breakwater_sim::tokens::text_tokens;
    let markers = (text_tokens(USER_TURN) + text_tokens(ASSISTANT_TURN)) as usize;
    let mut body = msg(extra);
    body["messages"] = json!([{"role": "user", "content": " the".repeat(tokens - markers)}]);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(input_tokens(None, messages, None), tokens as u64);
    body
}

async fn level(sim: &Sim, dim: &str) -> f64 {
    sim.stats().await["key_limits"]["dimensions"][dim]["level"]
        .as_f64()
        .unwrap()
}

#[tokio::test]
async fn headers_tell_the_truth_on_json_sse_and_429() {
    let sim = Sim::start().await;
    let m = sim
        .mode(json!({"key_limits": {"rpm": 10, "input_tpm": 100_000, "output_tpm": 10_000, "exact_remaining": true}}))
        .await;
    assert_eq!(m["key_limits"]["rpm"], 10);
    assert_eq!(m["key_limits"]["initial_fill"], 1.0);

    // JSON: charged 1 request, 1,000 input tokens, max_tokens 100; 12 tokens
    // produced, so 88 were given back before the headers were written.
    let r = sim.messages(&prompt_of(1000, json!({}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(num(&r, "anthropic-ratelimit-requests-limit"), 10);
    assert_eq!(num(&r, "anthropic-ratelimit-requests-remaining"), 9);
    assert_eq!(num(&r, "anthropic-ratelimit-input-tokens-limit"), 100_000);
    let input_left = num(&r, "anthropic-ratelimit-input-tokens-remaining");
    assert!((99_000..99_100).contains(&input_left), "{input_left}");
    assert_eq!(num(&r, "anthropic-ratelimit-output-tokens-limit"), 10_000);
    let output_left = num(&r, "anthropic-ratelimit-output-tokens-remaining");
    assert!((9_988..=10_000).contains(&output_left), "{output_left}");
    // One request short of 10, refilling at 10/min: full again in ~6 s.
    let req_reset = reset_in_s(&r, "requests");
    assert!((4.5..=7.5).contains(&req_reset), "{req_reset}");
    let in_reset = reset_in_s(&r, "input-tokens");
    assert!((-0.5..=2.0).contains(&in_reset), "{in_reset}");
    // tokens-*: the most restrictive token limit in effect.
    assert_eq!(num(&r, "anthropic-ratelimit-tokens-limit"), 10_000);
    assert_eq!(num(&r, "anthropic-ratelimit-tokens-remaining"), output_left);

    // SSE: the headers go out at the start, with max_tokens still reserved.
    let r = sim
        .messages(&prompt_of(10, json!({"stream": true, "max_tokens": 2000})))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(num(&r, "anthropic-ratelimit-requests-remaining"), 8);
    let out = num(&r, "anthropic-ratelimit-output-tokens-remaining");
    assert!((7_988..=8_050).contains(&out), "{out}");
    assert!(parse_sse(&r.text()).len() > 6);

    // A 429 carries them too, and the charge was not taken.
    sim.mode(json!({"key_limits": {"rpm": 1, "exact_remaining": true}}))
        .await;
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert_eq!(num(&r, "anthropic-ratelimit-requests-limit"), 1);
    assert_eq!(num(&r, "anthropic-ratelimit-requests-remaining"), 0);
    // Dimensions left out show the usual fixed figures.
    assert_eq!(
        num(&r, "anthropic-ratelimit-input-tokens-limit"),
        breakwater_sim::state::INPUT_TOKENS_LIMIT
    );
    assert!(r.header("anthropic-ratelimit-tokens-limit").is_none());
    // Models and count_tokens answers carry the true state, and count_tokens is not charged.
    let before = level(&sim, "requests").await;
    let c = sim
        .post("/v1/messages/count_tokens", &[], &msg(json!({})))
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(num(&c, "anthropic-ratelimit-requests-remaining"), 0);
    let models = sim.get("/v1/models").await;
    assert_eq!(num(&models, "anthropic-ratelimit-requests-limit"), 1);
    assert!(level(&sim, "requests").await >= before);
    assert_eq!(sim.log().await.last().unwrap()["path"], "/v1/models");
}

#[tokio::test]
async fn remaining_tokens_are_rounded_to_the_nearest_thousand() {
    let sim = Sim::start().await;
    sim.mode(json!({"key_limits": {"input_tpm": 100_000, "output_tpm": 10_000}}))
        .await;
    let r = sim
        .messages(&prompt_of(
            1_400,
            json!({"max_tokens": 1_600, "stream": true}),
        ))
        .await;
    // 98,600 left → 99,000; 8,400 left (during the stream) → 8,000.
    assert_eq!(
        num(&r, "anthropic-ratelimit-input-tokens-remaining"),
        99_000
    );
    assert_eq!(
        num(&r, "anthropic-ratelimit-output-tokens-remaining"),
        8_000
    );
    // Requests are exact.
    assert_eq!(
        num(&r, "anthropic-ratelimit-requests-limit"),
        breakwater_sim::state::DEFAULT_REQUESTS_LIMIT
    );
}

#[tokio::test]
async fn retry_after_is_the_time_until_the_bucket_holds_the_request() {
    let sim = Sim::start().await;
    // 2 requests a minute: one request refills in 30 s.
    sim.mode(json!({"key_limits": {"rpm": 2}})).await;
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 429);
    let ms = num(&r, "retry-after-ms");
    assert!((29_000..=30_000).contains(&ms), "{ms}");
    assert_eq!(num(&r, "retry-after"), ms.div_ceil(1000));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("2 requests per minute"));

    // Input tokens: 600 a minute (10/s); 500 charged, then another 500 needs
    // 400 more: 40 s. The refused one is not charged.
    sim.mode(json!({"key_limits": {"input_tpm": 600}})).await;
    assert_eq!(sim.messages(&prompt_of(500, json!({}))).await.status, 200);
    let r = sim.messages(&prompt_of(500, json!({}))).await;
    assert_eq!(r.status, 429);
    let ms = num(&r, "retry-after-ms");
    assert!((39_000..=40_000).contains(&ms), "{ms}");
    assert_eq!(num(&r, "retry-after"), ms.div_ceil(1000));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("600 input tokens per minute"));
    // 100 tokens are there: a 90-token request still fits.
    assert_eq!(sim.messages(&prompt_of(90, json!({}))).await.status, 200);
    let stats = sim.stats().await["key_limits"].clone();
    assert_eq!(stats["admitted"], 2);
    assert_eq!(stats["limited"], 1);
    assert_eq!(stats["dimensions"]["input_tokens"]["limited"], 1);
    assert_eq!(stats["dimensions"]["input_tokens"]["admitted"], 2);
    assert_eq!(stats["dimensions"]["input_tokens"]["charged"], 590);
    assert_eq!(stats["dimensions"]["requests"], Value::Null);
    let log = sim.log().await;
    assert_eq!(log.iter().filter(|e| e["mode"] == "key_limits").count(), 2);

    // A fault's usage.input_tokens is what gets charged.
    sim.mode(json!({"key_limits": {"input_tpm": 600}})).await;
    let r = sim
        .messages_with_fault(&msg(json!({})), &json!({"usage": {"input_tokens": 500}}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(stats_charged(&sim, "input_tokens").await, 500);
}

async fn stats_charged(sim: &Sim, dim: &str) -> i64 {
    sim.stats().await["key_limits"]["dimensions"][dim]["charged"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn a_request_larger_than_a_bucket_is_served_and_leaves_a_debt() {
    let sim = Sim::start().await;
    // 600 input tokens a minute (10/s): a 700-token prompt is served by the
    // full bucket, which goes 100 below zero.
    sim.mode(json!({"key_limits": {"input_tpm": 600, "exact_remaining": true}}))
        .await;
    let r = sim.messages(&prompt_of(700, json!({}))).await;
    assert_eq!(r.status, 200);
    assert!(r.header("x-should-retry").is_none());
    // Remaining shows 0, never negative; the reset counts the debt: 700 to
    // refill at 10/s.
    assert_eq!(num(&r, "anthropic-ratelimit-input-tokens-remaining"), 0);
    let reset = reset_in_s(&r, "input-tokens");
    assert!((68.0..=71.0).contains(&reset), "{reset}");
    let lvl = level(&sim, "input_tokens").await;
    assert!((-100.0..-99.0).contains(&lvl), "{lvl}");
    // While in debt every request is refused, with a retry-after that counts
    // the debt: 100 + 10 tokens at 10/s.
    let r = sim.messages(&prompt_of(10, json!({}))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let ms = num(&r, "retry-after-ms");
    assert!((10_500..=11_000).contains(&ms), "{ms}");
    assert_eq!(num(&r, "retry-after"), ms.div_ceil(1000));
    assert!(r.header("x-should-retry").is_none());
    assert_eq!(num(&r, "anthropic-ratelimit-input-tokens-remaining"), 0);
    // Another large one waits for the whole bucket: the debt and a full minute.
    let r = sim.messages(&prompt_of(700, json!({}))).await;
    assert_eq!(r.status, 429);
    let ms = num(&r, "retry-after-ms");
    assert!((69_500..=70_000).contains(&ms), "{ms}");
    let stats = sim.stats().await["key_limits"].clone();
    assert_eq!(stats["admitted"], 1);
    assert_eq!(stats["limited"], 2);
    assert_eq!(stats["dimensions"]["input_tokens"]["charged"], 700);

    // A key whose bucket is not full does not serve it: it waits until the
    // bucket is full, not forever.
    sim.mode(json!({"key_limits": {"input_tpm": 600, "initial_fill": 0.5}}))
        .await;
    let r = sim.messages(&prompt_of(700, json!({}))).await;
    assert_eq!(r.status, 429);
    let ms = num(&r, "retry-after-ms");
    assert!((29_500..=30_000).contains(&ms), "{ms}");
}

#[tokio::test]
async fn output_above_the_bucket_is_charged_at_max_tokens_then_corrected() {
    let sim = Sim::start().await;
    // 6,000 output tokens a minute (100/s); max_tokens 9,000 is charged at the
    // start, 3,000 below zero while the stream runs.
    sim.mode(json!({"key_limits": {"output_tpm": 6_000, "exact_remaining": true}}))
        .await;
    let body = msg(json!({"stream": true, "max_tokens": 9_000}));
    let fault = json!({"tokens": 5, "token_delay_ms": 200});
    let resp = sim
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-sim-fault", &fault.to_string())],
            body.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let remaining = &resp.headers()["anthropic-ratelimit-output-tokens-remaining"];
    assert_eq!(remaining.to_str().unwrap(), "0");
    // During the stream: refused, the retry-after counting the debt (3,000 +
    // 100 at 100/s, ~31 s).
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 429);
    let ms = num(&r, "retry-after-ms");
    assert!((30_000..=31_000).contains(&ms), "{ms}");
    // At the end the charge is corrected to the 5 tokens produced: the key
    // serves again at once.
    let text = within(10, resp.into_body().collect()).await.unwrap();
    assert!(String::from_utf8_lossy(&text.to_bytes()).contains("message_stop"));
    let after = level(&sim, "output_tokens").await;
    assert!(after > 5_990.0, "{after}");
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
    let stats = sim.stats().await["key_limits"].clone();
    assert_eq!(stats["refunded_output_tokens"], 8_995 + 88);

    // A JSON answer is settled before it is sent: its headers already show
    // the correction.
    sim.mode(json!({"key_limits": {"output_tpm": 6_000, "exact_remaining": true}}))
        .await;
    let r = sim.messages(&msg(json!({"max_tokens": 9_000}))).await;
    assert_eq!(r.status, 200);
    assert!(num(&r, "anthropic-ratelimit-output-tokens-remaining") >= 5_988);

    // An answer that reports more output than it reserved (a fault's usage)
    // is charged the difference, into debt.
    sim.mode(json!({"key_limits": {"output_tpm": 6_000, "exact_remaining": true}}))
        .await;
    let r = sim
        .messages_with_fault(
            &msg(json!({"max_tokens": 100})),
            &json!({"usage": {"output_tokens": 7_000}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(num(&r, "anthropic-ratelimit-output-tokens-remaining"), 0);
    assert_eq!(stats_charged(&sim, "output_tokens").await, 7_000);
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 429);
}

#[tokio::test]
async fn buckets_refill_continuously() {
    let sim = Sim::start().await;
    // 600 requests a minute (10/s), starting empty: one request every 100 ms.
    sim.mode(json!({"key_limits": {"rpm": 600, "initial_fill": 0}}))
        .await;
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 429);
    let ms = num(&r, "retry-after-ms");
    assert!((1..=100).contains(&ms), "{ms}");
    assert_eq!(num(&r, "retry-after"), 1);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut ok = 0;
    for _ in 0..6 {
        if sim.messages(&msg(json!({}))).await.status == 200 {
            ok += 1;
        }
    }
    // ~3.5 requests had refilled (a few more while the loop ran), never 6.
    assert!((3..=5).contains(&ok), "{ok}");
    // The level keeps rising between requests, a little at a time.
    let a = level(&sim, "requests").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = level(&sim, "requests").await;
    assert!(b > a && b - a < 2.0, "{a} {b}");
    // Full again after a minute's quota, never above it.
    sim.mode(json!({"key_limits": {"rpm": 600, "initial_fill": 1}}))
        .await;
    assert_eq!(level(&sim, "requests").await, 600.0);
}

#[tokio::test]
async fn output_is_refunded_when_the_answer_completes() {
    let sim = Sim::start().await;
    // 60,000 a minute refills 1,000/s; the reservation of 30,000 dominates.
    sim.mode(json!({"key_limits": {"output_tpm": 60_000, "exact_remaining": true}}))
        .await;
    let body = msg(json!({"stream": true, "max_tokens": 30_000}));
    let fault = json!({"tokens": 5, "token_delay_ms": 150});
    let resp = sim
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-sim-fault", &fault.to_string())],
            body.to_string(),
        )
        .await
        .unwrap();
    let remaining: u64 = resp.headers()["anthropic-ratelimit-output-tokens-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30_000..31_000).contains(&remaining), "{remaining}");
    // While the stream runs, the reservation holds.
    let during = level(&sim, "output_tokens").await;
    assert!(during < 32_000.0, "{during}");
    let text = within(10, resp.into_body().collect()).await.unwrap();
    assert!(String::from_utf8_lossy(&text.to_bytes()).contains("message_stop"));
    // At the end, 30,000 − 5 came back.
    let after = level(&sim, "output_tokens").await;
    assert!(after > 59_000.0, "{during} -> {after}");
    let stats = sim.stats().await["key_limits"].clone();
    assert_eq!(stats["refunded_output_tokens"], 29_995);

    // JSON: refunded before the answer is sent.
    sim.mode(json!({"key_limits": {"output_tpm": 60_000, "exact_remaining": true}}))
        .await;
    let r = sim.messages(&msg(json!({"max_tokens": 30_000}))).await;
    let remaining = num(&r, "anthropic-ratelimit-output-tokens-remaining");
    assert!(remaining >= 59_988, "{remaining}");

    // A client that goes away mid-stream: what was not produced comes back.
    sim.mode(json!({"key_limits": {"output_tpm": 60_000, "exact_remaining": true}}))
        .await;
    let fault = json!({"tokens": 1_000, "token_delay_ms": 50});
    let resp = sim
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-sim-fault", &fault.to_string())],
            body.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(resp);
    let mut refunded = 0;
    for _ in 0..100 {
        refunded = sim.stats().await["key_limits"]["refunded_output_tokens"]
            .as_u64()
            .unwrap();
        if refunded > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((29_900..30_000).contains(&refunded), "{refunded}");
}

#[tokio::test]
async fn a_529_from_another_mode_is_not_charged() {
    let sim = Sim::start().await;
    sim.mode(json!({"key_limits": {"rpm": 5, "exact_remaining": true}, "overload_probability": 1}))
        .await;
    for _ in 0..3 {
        assert_eq!(sim.messages(&msg(json!({}))).await.status, 529);
    }
    sim.mode(json!({"overload_probability": null})).await;
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(num(&r, "anthropic-ratelimit-requests-remaining"), 4);
    // An invalid request is not charged either (and is still a 400).
    let r = sim.messages(&json!({"model": "m", "messages": []})).await;
    assert_eq!(r.status, 400);
    let stats = sim.stats().await["key_limits"].clone();
    assert_eq!(stats["admitted"], 1);
    assert_eq!(stats["dimensions"]["requests"]["admitted"], 1);
    // Bad settings are refused.
    for bad in [
        json!({"key_limits": {"rpm": 0}}),
        json!({"key_limits": {"rpm": "x"}}),
        json!({"key_limits": {"initial_fill": 2}}),
        json!({"key_limits": {"tpm": 5}}),
    ] {
        assert_eq!(sim.post("/_sim/mode", &[], &bad).await.status, 400, "{bad}");
    }
    sim.mode(json!({"key_limits": null})).await;
    assert_eq!(sim.stats().await["key_limits"], Value::Null);
}

#[tokio::test]
async fn spend_limit_fault() {
    let sim = Sim::start().await;
    let body = json!({"type": "error", "error": {"type": "rate_limit_error",
        "message": "You have reached your specified API usage limits. You will regain access on 2026-12-01 at 00:00 UTC.",
        "details": {"error_code": "enforced_spend_limit_reached"}}});
    sim.script(json!([{"status": 429, "body": body}])).await;
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_none());
    assert_eq!(
        r.json()["error"]["details"]["error_code"],
        "enforced_spend_limit_reached"
    );
}
