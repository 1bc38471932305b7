//! Global modes: defaults, seeded overload, capacity with outages, per-minute
//! limits, plus stats, reset and CORS on the control API.

use std::time::Duration;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};

use crate::common::{msg, parse_sse, Sim};

async fn statuses(sim: &Sim, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(sim.messages(&msg(json!({}))).await.status.as_u16());
    }
    out
}

#[tokio::test]
async fn mode_defaults_merge_and_clear() {
    let sim = Sim::start().await;
    let m = sim.mode(json!({"tokens": 3})).await;
    assert_eq!(m["tokens"], 3);
    let m = sim.mode(json!({"token_delay_ms": 1})).await;
    assert_eq!(
        (m["tokens"].clone(), m["token_delay_ms"].clone()),
        (json!(3), json!(1))
    );
    assert_eq!(
        sim.messages(&msg(json!({}))).await.json()["usage"]["output_tokens"],
        3
    );
    let r = sim.messages(&msg(json!({"stream": true}))).await;
    let deltas = parse_sse(&r.text())
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .count();
    assert_eq!(deltas, 3);
    // A scripted `tokens` beats the mode.
    let r = sim
        .messages_with_fault(&msg(json!({})), &json!({"tokens": 4}))
        .await;
    assert_eq!(r.json()["usage"]["output_tokens"], 4);
    let m = sim.mode(json!({"tokens": null})).await;
    assert_eq!(m["tokens"], Value::Null);
    assert_eq!(
        sim.messages(&msg(json!({}))).await.json()["usage"]["output_tokens"],
        12
    );
    for bad in [
        json!({"tokenz": 1}),
        json!({"overload_probability": 2}),
        json!({"capacity": {"rps": "x"}}),
        json!([1]),
    ] {
        assert_eq!(sim.post("/_sim/mode", &[], &bad).await.status, 400, "{bad}");
    }
    assert_eq!(sim.get("/_sim/mode").await.json()["token_delay_ms"], 1);
}

#[tokio::test]
async fn overload_probability_is_reproducible() {
    let sim = Sim::start().await;
    sim.mode(json!({"overload_probability": 0.5, "seed": 42}))
        .await;
    let a = statuses(&sim, 40).await;
    assert!(a.contains(&529) && a.contains(&200), "{a:?}");
    sim.mode(json!({"overload_probability": 0.5, "seed": 42}))
        .await;
    let b = statuses(&sim, 40).await;
    assert_eq!(a, b);
    sim.mode(json!({"seed": 43})).await;
    let c = statuses(&sim, 40).await;
    assert_ne!(a, c);
    let r = sim
        .messages_with_fault(&msg(json!({})), &json!({"tokens": 1}))
        .await;
    assert!(r.status == 200 || r.status == 529);
    let log = sim.log().await;
    let overloaded = log.iter().find(|e| e["status"] == 529).unwrap();
    assert_eq!(overloaded["mode"], "overload_probability");
    sim.mode(json!({"overload_probability": null})).await;
    assert!(statuses(&sim, 10).await.iter().all(|s| *s == 200));
}

#[tokio::test]
async fn capacity_refuses_above_the_rate_and_during_outages() {
    let sim = Sim::start().await;
    sim.mode(json!({"capacity": {"rps": 2}})).await;
    let s = statuses(&sim, 10).await;
    assert_eq!(s[0], 200);
    let refused = s.iter().filter(|x| **x == 529).count();
    assert!(refused >= 7, "{s:?}");
    let r = sim.messages(&msg(json!({}))).await;
    if r.status == 529 {
        assert_eq!(r.json()["error"]["type"], "overloaded_error");
    }
    let stats = sim.stats().await;
    assert_eq!(stats["capacity"]["rps"], 2.0);
    assert!(stats["capacity"]["rejected_capacity"].as_u64().unwrap() >= 7);

    sim.mode(json!({"capacity": {"rps": 1000, "outages": [{"start_ms": 0, "duration_ms": 400}], "origin": "now"}}))
        .await;
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 529);
    assert_eq!(sim.stats().await["capacity"]["in_outage"], true);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
    let stats = sim.stats().await;
    assert_eq!(stats["capacity"]["in_outage"], false);
    assert_eq!(stats["capacity"]["rejected_outage"], 1);
    // A decisive scripted fault is not subject to the capacity.
    sim.mode(json!({"capacity": {"rps": 0}})).await;
    assert_eq!(
        sim.messages_with_fault(&msg(json!({})), &json!({"status": 418}))
            .await
            .status,
        418
    );
    sim.mode(json!({"capacity": null})).await;
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
}

#[tokio::test]
async fn a_capacity_or_a_fault_may_overload_one_model_only() {
    let sim = Sim::start().await;
    let opus = msg(json!({"model": "claude-opus-5-5"}));
    let sonnet = msg(json!({"model": "claude-sonnet-5-5"}));
    sim.mode(
        json!({"capacity": {"rps": 1000, "models": ["claude-opus-5-5"],
                                  "outages": [{"start_ms": 0, "duration_ms": 60000}]}}),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(sim.messages(&opus).await.status, 529);
        assert_eq!(sim.messages(&sonnet).await.status, 200);
    }
    assert_eq!(sim.stats().await["capacity"]["rejected_outage"], 3);
    sim.mode(json!({"capacity": null})).await;
    // A queued fault with a model is taken only by requests for that model.
    sim.script(json!([{"model": "claude-opus-5-5", "status": 529, "times": 2}]))
        .await;
    assert_eq!(sim.messages(&sonnet).await.status, 200);
    assert_eq!(sim.messages(&opus).await.status, 529);
    assert_eq!(sim.messages(&sonnet).await.status, 200);
    assert_eq!(sim.messages(&opus).await.status, 529);
    assert_eq!(sim.messages(&opus).await.status, 200);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let sim = Sim::start().await;
    sim.mode(json!({"rate_limit": {"rpm": 2}})).await;
    let first = sim.messages(&msg(json!({}))).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("anthropic-ratelimit-requests-limit"),
        Some("2")
    );
    assert_eq!(
        first.header("anthropic-ratelimit-requests-remaining"),
        Some("1")
    );
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
    let ms: u64 = r.header("retry-after-ms").unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    assert!(ms > 50_000 && ms <= 60_000, "{ms}");
    assert_eq!(secs, ms.div_ceil(1000));
    assert_eq!(
        r.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    assert_eq!(sim.log().await[2]["mode"], "rate_limit");
}

#[tokio::test]
async fn stats_count_per_status_and_second() {
    let sim = Sim::start().await;
    sim.script(json!([{"status": 529, "times": 2}])).await;
    statuses(&sim, 5).await;
    let stats = sim.stats().await;
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["by_status"], json!({"200": 3, "529": 2}));
    let per_second = stats["per_second"].as_array().unwrap();
    let total: u64 = per_second.iter().map(|s| s[1].as_u64().unwrap()).sum();
    let ok: u64 = per_second.iter().map(|s| s[2].as_u64().unwrap()).sum();
    assert_eq!((total, ok), (5, 3));
    assert!(per_second[0][0].as_u64().unwrap() > 1_600_000_000);
}

#[tokio::test]
async fn reset_clears_everything() {
    let sim = Sim::start().await;
    sim.script(json!([{"status": 500, "times": 5}])).await;
    sim.mode(json!({"tokens": 2, "rate_limit": {"rpm": 100}}))
        .await;
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 500);
    sim.reset().await;
    assert_eq!(sim.log().await.len(), 0);
    assert_eq!(sim.stats().await["requests"], 0);
    let m = sim.get("/_sim/mode").await.json();
    assert_eq!(
        (m["tokens"].clone(), m["rate_limit"].clone()),
        (Value::Null, Value::Null)
    );
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["output_tokens"], 12);
    assert_eq!(sim.log().await[0]["seq"], 1);
}

#[tokio::test]
async fn cors_on_the_demo_endpoints() {
    let sim = Sim::start().await;
    for path in ["/_sim/mode", "/_sim/reset", "/_sim/script"] {
        let r = sim
            .call(
                Method::OPTIONS,
                path,
                &[
                    ("origin", "http://localhost:8787"),
                    ("access-control-request-method", "POST"),
                ],
                Bytes::new(),
            )
            .await;
        assert_eq!(r.status, 204, "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(r.header("access-control-allow-methods"), Some("GET, POST"));
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("content-type")
        );
    }
    let r = sim.post("/_sim/mode", &[], &json!({"tokens": 1})).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let r = sim.get("/_sim/stats").await;
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn many_concurrent_streams() {
    let sim = std::sync::Arc::new(Sim::start().await);
    sim.mode(json!({"token_delay_ms": 20, "tokens": 10})).await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let sim = sim.clone();
        tasks.push(tokio::spawn(async move {
            let r = sim.messages(&msg(json!({"stream": true}))).await;
            parse_sse(&r.text()).len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 16);
    }
    assert_eq!(sim.stats().await["by_status"]["200"], 200);
}
