//! The Messages API surface: shapes, streaming, validation, auth, headers.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};

use breakwater_sim::Config;

use crate::common::{event_names, msg, parse_sse, within, Sim};

#[tokio::test]
async fn json_message_has_the_api_shape() {
    let sim = Sim::start().await;
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let rid = r.header("request-id").unwrap().to_string();
    assert!(rid.starts_with("req_sim_"), "{rid}");
    for h in [
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-requests-reset",
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
        "anthropic-ratelimit-output-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
    ] {
        assert!(r.header(h).is_some(), "missing {h}");
    }
    let reset = r.header("anthropic-ratelimit-requests-reset").unwrap();
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && reset.as_bytes()[10] == b'T',
        "{reset}"
    );

    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-5-5");
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    assert_eq!(v["content"][0]["type"], "text");
    let text = v["content"][0]["text"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 12);
    // "Hello there, simulator!" is 5 tokens, and the user and assistant markers 4 each.
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 13, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 12})
    );
    // Field order follows the real API.
    let raw = r.text();
    assert!(raw.starts_with(r#"{"id":"msg_"#), "{raw}");
}

#[tokio::test]
async fn images_count_by_their_size_not_their_bytes() {
    use base64::Engine as _;
    let sim = Sim::start().await;
    // Data that is no image the simulator can read: the most a scaled image costs.
    let unknown = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QUFB".repeat(250_000)}});
    // A 400×300 PNG (its header, then 750 KB): 400 * 300 / 750 = 160 tokens.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&400u32.to_be_bytes());
    png.extend_from_slice(&300u32.to_be_bytes());
    png.resize(750_000, 7);
    let data = base64::engine::general_purpose::STANDARD.encode(&png);
    let known = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}});
    // "abcdefgh" is 1 token, and the markers 8.
    let body = msg(json!({
        "messages": [{"role": "user", "content": [unknown, known, {"type": "text", "text": "abcdefgh"}]}],
    }));
    let v = sim.messages(&body).await.json();
    assert_eq!(v["usage"]["input_tokens"], 1_600 + 160 + 1 + 8);
}

#[tokio::test]
async fn max_tokens_caps_the_answer_and_system_counts() {
    let sim = Sim::start().await;
    let body = msg(json!({
        "max_tokens": 5,
        "system": [{"type": "text", "text": "abcdefgh"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "abcd"}]},
            {"role": "assistant", "content": "ab"},
            {"role": "user", "content": "a"},
        ],
    }));
    // One token of text each, three turn markers and the closing one at 4 each.
    let v = sim.messages(&body).await.json();
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 5})
    );
    let count = sim.post("/v1/messages/count_tokens", &[], &body).await;
    assert_eq!(count.status, 200);
    assert_eq!(count.json(), json!({"input_tokens": 20}));
}

#[tokio::test]
async fn answers_are_deterministic_and_stream_matches_json() {
    let sim = Sim::start().await;
    let a = sim.messages(&msg(json!({}))).await.json();
    let b = sim.messages(&msg(json!({}))).await.json();
    assert_eq!(a["content"], b["content"]);
    let s = sim.messages(&msg(json!({"stream": true}))).await;
    let streamed: String = parse_sse(&s.text())
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(a["content"][0]["text"], streamed);
}

#[tokio::test]
async fn bad_requests_get_the_error_envelope() {
    let sim = Sim::start().await;
    let cases: Vec<(Bytes, &str)> = vec![
        (Bytes::from_static(b"{not json"), "invalid JSON"),
        (Bytes::from_static(b"[1,2]"), "JSON object"),
        (json!({"max_tokens": 1, "messages": []}).to_string().into(), "model"),
        (json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}).to_string().into(), "max_tokens"),
        (json!({"model": "m", "max_tokens": 1}).to_string().into(), "messages"),
        (json!({"model": "m", "max_tokens": 1, "messages": []}).to_string().into(), "messages"),
        (json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}).to_string().into(), "max_tokens"),
        (json!({"model": "m", "max_tokens": 1, "messages": [{"role": "bot", "content": "x"}]}).to_string().into(), "role"),
        (json!({"model": "m", "max_tokens": 1, "stream": "yes", "messages": [{"role": "user", "content": "x"}]}).to_string().into(), "stream"),
    ];
    for (body, needle) in cases {
        let r = sim
            .call(Method::POST, "/v1/messages", &[], body.clone())
            .await;
        assert_eq!(r.status, 400, "{body:?}");
        let v = r.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v} lacks {needle}"
        );
        assert_eq!(v["request_id"], r.header("request-id").unwrap());
    }
    let r = sim.get("/v1/messages").await;
    assert_eq!(r.status, 405);
    let r = sim.get("/nowhere").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    let r = sim.get("/v1/nowhere").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn api_key_checks() {
    let open = Sim::start().await;
    let r = open
        .call(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "")],
            msg(json!({})).to_string(),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = open
        .call(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "anything")],
            msg(json!({})).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);

    let locked = Sim::start_with(Config {
        api_key: Some("right".into()),
        ..Config::default()
    })
    .await;
    let r = locked
        .call(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "wrong")],
            msg(json!({})).to_string(),
        )
        .await;
    assert_eq!(r.status, 401);
    let v = r.json();
    assert_eq!(
        v["error"],
        json!({"type": "authentication_error", "message": "invalid x-api-key"})
    );
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));
    let r = locked
        .call(
            Method::POST,
            "/v1/messages",
            &[("x-api-key", "right")],
            msg(json!({})).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    // The control API needs no key.
    assert_eq!(
        locked.get("/_sim/health").await.json(),
        json!({"status": "ok"})
    );
}

#[tokio::test]
async fn sse_event_sequence_is_exact() {
    let sim = Sim::start().await;
    let r = sim
        .messages_with_fault(&msg(json!({"stream": true})), &json!({"tokens": 3}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    assert!(r.header("request-id").is_some());
    let text = r.text();
    assert!(text.starts_with("event: message_start\ndata: {"), "{text}");
    let events = parse_sse(&text);
    assert_eq!(
        event_names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let start = &events[0].1;
    assert_eq!(start["type"], "message_start");
    assert_eq!(start["message"]["content"], json!([]));
    assert_eq!(start["message"]["stop_reason"], Value::Null);
    assert_eq!(
        start["message"]["usage"],
        json!({"input_tokens": 13, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 1})
    );
    assert_eq!(
        events[1].1,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(events[2].1, json!({"type": "ping"}));
    for (_, d) in &events[3..6] {
        assert_eq!(d["type"], "content_block_delta");
        assert_eq!(d["index"], 0);
        assert_eq!(d["delta"]["type"], "text_delta");
        assert!(d["delta"]["text"].as_str().unwrap().ends_with(' '));
    }
    assert_eq!(
        events[6].1,
        json!({"type": "content_block_stop", "index": 0})
    );
    assert_eq!(
        events[7].1,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"input_tokens": 13, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3}})
    );
    assert_eq!(events[8].1, json!({"type": "message_stop"}));
}

#[tokio::test]
async fn sse_arrives_incrementally() {
    let sim = Sim::start().await;
    let fault = json!({"tokens": 5, "token_delay_ms": 150}).to_string();
    let started = Instant::now();
    let resp = sim
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-sim-fault", &fault)],
            msg(json!({"stream": true})).to_string(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut first = None;
    let mut text = String::new();
    while let Some(frame) = within(10, body.frame()).await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            first.get_or_insert_with(|| started.elapsed());
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    let total = started.elapsed();
    let first = first.unwrap();
    assert!(
        first < Duration::from_millis(300),
        "first event after {first:?}"
    );
    assert!(
        total >= Duration::from_millis(700),
        "whole stream took only {total:?}"
    );
    assert!(total - first >= Duration::from_millis(600));
    assert_eq!(event_names(&parse_sse(&text)).len(), 11);
}

#[tokio::test]
async fn long_padded_stream_is_generated_lazily() {
    let sim = Sim::start().await;
    let fault = json!({"tokens": 20_000, "pad_bytes": 500}).to_string();
    let resp = sim
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-sim-fault", &fault)],
            msg(json!({"stream": true, "max_tokens": 1_000_000})).to_string(),
        )
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut bytes = 0usize;
    let mut tail = Vec::new();
    while let Some(frame) = within(30, body.frame()).await {
        if let Some(data) = frame.unwrap().data_ref() {
            bytes += data.len();
            tail = data.to_vec();
        }
    }
    assert!(bytes > 20_000 * 500, "{bytes}");
    assert_eq!(
        String::from_utf8(tail).unwrap(),
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
    );
}

#[tokio::test]
async fn models_endpoints() {
    let sim = Sim::start().await;
    let v = sim.get("/v1/models").await.json();
    let data = v["data"].as_array().unwrap();
    assert!(data.len() >= 2);
    assert_eq!(
        data[0],
        json!({"type": "model", "id": "claude-sonnet-5-5", "display_name": "Claude Sonnet 5.5", "created_at": "2026-09-01T00:00:00Z"})
    );
    assert_eq!(v["has_more"], false);
    assert_eq!(v["first_id"], data[0]["id"]);
    assert_eq!(v["last_id"], data[data.len() - 1]["id"]);
    let one = sim.get("/v1/models/claude-sonnet-5-5").await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["display_name"], "Claude Sonnet 5.5");
    let missing = sim.get("/v1/models/claude-nope").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "not_found_error");
}
