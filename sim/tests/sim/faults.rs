//! Scripted faults: the queue, the header, and each kind of misbehaviour.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{event_names, msg, parse_sse, within, Sim, KEY};

/// Opens a raw connection and sends one streaming-capable Messages request.
async fn raw_request(addr: SocketAddr, body: &Value, fault: &Value) -> TcpStream {
    let body = body.to_string();
    let req = format!(
        "POST /v1/messages HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {KEY}\r\ncontent-type: application/json\r\n\
         x-sim-fault: {fault}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(req.as_bytes()).await.unwrap();
    stream
}

/// Reads until `needle` was seen (or panics after 5 s).
async fn read_until(stream: &mut TcpStream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    within(5, async {
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn queue_pops_in_order_and_respects_times() {
    let sim = Sim::start().await;
    sim.script(json!([
        {"status": 529, "headers": {"retry-after": "2"}, "times": 2},
        {"status": 429, "headers": {"retry-after-ms": "1500"}},
    ]))
    .await;
    for _ in 0..2 {
        let r = sim.messages(&msg(json!({}))).await;
        assert_eq!(r.status, 529);
        assert_eq!(r.header("retry-after"), Some("2"));
        let v = r.json();
        assert_eq!(
            v["error"],
            json!({"type": "overloaded_error", "message": "Overloaded"})
        );
        assert_eq!(v["request_id"], r.header("request-id").unwrap());
    }
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after-ms"), Some("1500"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let r = sim.messages(&msg(json!({}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(sim.get("/_sim/script").await.json(), json!([]));
}

#[tokio::test]
async fn queue_faults_can_target_a_path() {
    let sim = Sim::start().await;
    sim.script(json!([{"path": "/v1/messages/count_tokens", "status": 500, "error_type": "api_error", "message": "boom"}]))
        .await;
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
    let r = sim
        .post("/v1/messages/count_tokens", &[], &msg(json!({})))
        .await;
    assert_eq!(r.status, 500);
    assert_eq!(
        r.json()["error"],
        json!({"type": "api_error", "message": "boom"})
    );
    // Models are never answered from the queue.
    sim.script(json!([{"status": 503}])).await;
    assert_eq!(sim.get("/v1/models").await.status, 200);
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 503);
}

#[tokio::test]
async fn header_fault_bypasses_the_queue() {
    let sim = Sim::start().await;
    sim.script(json!([{"status": 529}])).await;
    let r = sim
        .messages_with_fault(
            &msg(json!({})),
            &json!({"status": 503, "message": "nope", "headers": {"x-should-retry": "false"}}),
        )
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert_eq!(
        r.json()["error"],
        json!({"type": "api_error", "message": "nope"})
    );
    // The queued fault is still there.
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 529);
    // A broken header is a 400, not a crash.
    let r = sim
        .post("/v1/messages", &[("x-sim-fault", "{oops")], &msg(json!({})))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    // Header faults work on other endpoints too.
    let r = sim
        .call(
            Method::GET,
            "/v1/models",
            &[("x-sim-fault", r#"{"status":502}"#)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn verbatim_body_and_usage_override() {
    let sim = Sim::start().await;
    let r = sim
        .messages_with_fault(
            &msg(json!({})),
            &json!({"status": 400, "body": {"custom": true}}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.json()),
        (400, json!({"custom": true}))
    );
    let r = sim
        .messages_with_fault(
            &msg(json!({})),
            &json!({"usage": {"input_tokens": 1000, "output_tokens": 7}}),
        )
        .await;
    assert_eq!(
        r.json()["usage"],
        json!({"input_tokens": 1000, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 7})
    );
    let r = sim
        .messages_with_fault(
            &msg(json!({"stream": true})),
            &json!({"usage": {"input_tokens": 1000, "output_tokens": 7}}),
        )
        .await;
    let events = parse_sse(&r.text());
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 1000);
    let last_delta = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(last_delta.1["usage"]["output_tokens"], 7);
}

#[tokio::test]
async fn cache_reads_and_writes_are_reported_at_start_and_again_in_the_delta() {
    let sim = Sim::start().await;
    let fault =
        json!({"usage": {"cache_read_input_tokens": 20000, "cache_creation_input_tokens": 300}});
    let r = sim
        .messages_with_fault(&msg(json!({"stream": true})), &fault)
        .await;
    let events = parse_sse(&r.text());
    let start = &events[0].1["message"]["usage"];
    assert_eq!(start["cache_read_input_tokens"], 20000);
    assert_eq!(start["cache_creation_input_tokens"], 300);
    // Cumulative, as current API versions send it: the input fields again, not a difference.
    let delta = &events.iter().find(|(n, _)| n == "message_delta").unwrap().1["usage"];
    assert_eq!(delta["cache_read_input_tokens"], 20000);
    assert_eq!(delta["cache_creation_input_tokens"], 300);
    assert_eq!(delta["input_tokens"], start["input_tokens"]);
    let r = sim.messages_with_fault(&msg(json!({})), &fault).await;
    assert_eq!(r.json()["usage"]["cache_read_input_tokens"], 20000);
}

#[tokio::test]
async fn delay_before_headers() {
    let sim = Sim::start().await;
    let started = Instant::now();
    let r = sim
        .messages_with_fault(&msg(json!({})), &json!({"delay_ms": 300}))
        .await;
    assert_eq!(r.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn reset_before_headers_is_a_client_error() {
    let sim = Sim::start().await;
    sim.script(json!([{"reset": "before_headers"}])).await;
    let err = within(
        5,
        sim.send(
            Method::POST,
            "/v1/messages",
            &[],
            msg(json!({})).to_string(),
        ),
    )
    .await
    .expect_err("a reset must not produce a response");
    assert!(
        err.is_connect()
            || format!("{err:?}").to_lowercase().contains("reset")
            || format!("{err:?}").contains("IncompleteMessage"),
        "{err:?}"
    );
    // Raw socket: the read fails with ECONNRESET.
    let mut stream = raw_request(
        sim.addr,
        &msg(json!({})),
        &json!({"reset": "before_headers"}),
    )
    .await;
    let mut buf = [0u8; 64];
    let res = within(5, stream.read(&mut buf)).await;
    match res {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a reset, read {n} bytes"),
    }
    let log = sim.log().await;
    assert_eq!(log[0]["status"], Value::Null);
    assert_eq!(log[0]["fault"], json!({"reset": "before_headers"}));
    // The server keeps serving.
    assert_eq!(sim.messages(&msg(json!({}))).await.status, 200);
}

#[tokio::test]
async fn reset_after_headers_and_events() {
    let sim = Sim::start().await;
    let fault = json!({"reset": "after_headers", "after_events": 2}).to_string();
    let resp = sim
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-sim-fault", &fault)],
            msg(json!({"stream": true})).to_string(),
        )
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut failed = false;
    while let Some(frame) = within(5, body.frame()).await {
        match frame {
            Ok(f) => text.push_str(&String::from_utf8_lossy(
                f.data_ref().map(|b| b.as_ref()).unwrap_or(&[]),
            )),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body should end with an error, got {text:?}");
    assert_eq!(
        event_names(&parse_sse(&text)),
        ["message_start", "content_block_start"]
    );
}

#[tokio::test]
async fn reset_after_body_bytes_for_json() {
    let sim = Sim::start().await;
    let fault = json!({"reset": "after_body_bytes", "bytes": 10}).to_string();
    let resp = sim
        .send(
            Method::POST,
            "/v1/messages",
            &[("x-sim-fault", &fault)],
            msg(json!({})).to_string(),
        )
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let err = within(5, resp.into_body().collect()).await;
    assert!(err.is_err(), "the body must not complete");
}

#[tokio::test]
async fn error_event_in_a_200_stream() {
    let sim = Sim::start().await;
    let r = sim
        .messages_with_fault(
            &msg(json!({"stream": true})),
            &json!({"error_event_after": 0}),
        )
        .await;
    assert_eq!(r.status, 200);
    let events = parse_sse(&r.text());
    assert_eq!(event_names(&events), ["error"]);
    assert_eq!(
        events[0].1,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    );
    let r = sim
        .messages_with_fault(
            &msg(json!({"stream": true})),
            &json!({"error_event_after": 4, "error_type": "api_error", "message": "Internal"}),
        )
        .await;
    let events = parse_sse(&r.text());
    assert_eq!(
        event_names(&events),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "error"
        ]
    );
    assert_eq!(
        events[4].1["error"],
        json!({"type": "api_error", "message": "Internal"})
    );
    let stats = sim.stats().await;
    assert_eq!(stats["by_status"]["200"], 2);
    assert_eq!(
        stats["per_second"][0][2], 0,
        "broken streams are not ok: {stats}"
    );
}

#[tokio::test]
async fn stall_and_hang_end_when_the_client_leaves() {
    let sim = Sim::start().await;
    let mut stream = raw_request(
        sim.addr,
        &msg(json!({"stream": true})),
        &json!({"stall_after_events": 3}),
    )
    .await;
    let seen = read_until(&mut stream, "event: ping").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let mut buf = [0u8; 256];
    let more = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(more.is_err(), "a stalled stream must send nothing more");
    drop(stream);

    let mut stream = raw_request(sim.addr, &msg(json!({})), &json!({"hang": true})).await;
    let more = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(more.is_err(), "a hang must send nothing");
    assert!(sim.handle.connections_open() >= 1);
    drop(stream);
    sim.wait_connections_at_most(0).await;
}

#[tokio::test]
async fn a_stalled_body_sends_its_first_bytes_and_holds_the_connection() {
    let sim = Sim::start().await;
    let mut buf = [0u8; 4096];
    // An error envelope: its head and the first 10 bytes of the body, then nothing.
    let mut stream = raw_request(
        sim.addr,
        &msg(json!({})),
        &json!({"status": 529, "stall_after_bytes": 10}),
    )
    .await;
    let seen = read_until(&mut stream, "\r\n\r\n").await;
    assert!(seen.starts_with("HTTP/1.1 529"), "{seen}");
    assert!(seen.contains("content-length:"), "{seen}");
    let mut body = seen.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    while body.len() < 10 {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the first bytes come")
            .unwrap();
        assert!(n > 0, "the connection stays open");
        body.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert_eq!(body, r#"{"type":"e"#);
    let more = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(more.is_err(), "a stalled body must send nothing more");
    assert!(sim.handle.connections_open() >= 1);
    drop(stream);
    sim.wait_connections_at_most(0).await;

    // A stream stalls the same way, mid-event.
    let mut stream = raw_request(
        sim.addr,
        &msg(json!({"stream": true})),
        &json!({"stall_after_bytes": 30}),
    )
    .await;
    let seen = read_until(&mut stream, "event: message_start").await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    let more = tokio::time::timeout(Duration::from_millis(300), async {
        let mut all = seen.clone();
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            if n == 0 || all.contains("content_block_start") {
                return all;
            }
        }
    })
    .await;
    assert!(more.is_err(), "nothing past the first 30 bytes: {more:?}");
    drop(stream);
    sim.wait_connections_at_most(0).await;
    let log = sim.log().await;
    assert_eq!(log[0]["status"], 529);
    assert_eq!(log[0]["fault"]["stall_after_bytes"], 10);
}

#[tokio::test]
async fn malformed_bodies() {
    let sim = Sim::start().await;
    let r = sim
        .messages_with_fault(&msg(json!({})), &json!({"malformed": "json"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.text().starts_with(r#"{"id":"msg_"#));
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    let r = sim
        .messages_with_fault(&msg(json!({"stream": true})), &json!({"malformed": "sse"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    assert!(
        std::str::from_utf8(&r.body).is_err(),
        "the broken stream contains invalid UTF-8"
    );
}

#[tokio::test]
async fn log_records_requests() {
    let sim = Sim::start().await;
    let body = msg(json!({"metadata": {"user_id": "u-1"}}));
    sim.post("/v1/messages", &[("x-custom", "abc")], &body)
        .await;
    sim.messages_with_fault(&msg(json!({})), &json!({"status": 529}))
        .await;
    let big = "x".repeat(70 * 1024);
    sim.post(
        "/v1/messages",
        &[],
        &msg(json!({"messages": [{"role": "user", "content": big}]})),
    )
    .await;
    sim.get("/_sim/health").await;

    let log = sim.log().await;
    assert_eq!(log.len(), 3, "control calls are not logged");
    let first = &log[0];
    assert_eq!(first["seq"], 1);
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/messages");
    assert_eq!(first["headers"]["x-custom"], "abc");
    assert_eq!(first["headers"]["x-api-key"], KEY);
    assert_eq!(first["headers"]["anthropic-version"], "2023-06-01");
    assert_eq!(
        serde_json::from_str::<Value>(first["body"].as_str().unwrap()).unwrap(),
        body
    );
    assert_eq!(first["status"], 200);
    assert_eq!(first["fault"], Value::Null);
    assert!(first["received_at_ms"].as_f64().unwrap() > 1.6e12);
    assert_eq!(log[1]["status"], 529);
    assert_eq!(log[1]["fault"], json!({"status": 529}));
    let third = &log[2];
    assert_eq!(third["body"].as_str().unwrap().len(), 64 * 1024);
    assert!(third["body_len"].as_u64().unwrap() > 70 * 1024);
    assert_eq!(
        sim.get("/_sim/log?after=2")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn bad_scripts_are_rejected() {
    let sim = Sim::start().await;
    for bad in [
        json!({"status": "x"}),
        json!([{"nope": 1}]),
        json!([{"status": 99}]),
        json!(5),
    ] {
        let r = sim.post("/_sim/script", &[], &bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    let r = sim
        .call(Method::POST, "/_sim/script", &[], Bytes::from_static(b"{{"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(sim.get("/_sim/script").await.json(), json!([]));
}

#[tokio::test]
async fn the_log_records_the_usage_each_answer_reported() {
    let sim = Sim::start().await;
    sim.messages(&msg(json!({}))).await;
    sim.messages_with_fault(
        &msg(json!({"stream": true})),
        &json!({"tokens": 3, "usage": {"cache_creation_input_tokens": 9}}),
    )
    .await;
    sim.messages_with_fault(&msg(json!({})), &json!({"malformed": "json"}))
        .await;
    sim.messages_with_fault(&msg(json!({})), &json!({"status": 529}))
        .await;
    let log = sim.log().await;
    let usage: Vec<&Value> = log.iter().map(|e| &e["usage"]).collect();
    let input = usage[0]["input_tokens"].as_u64().unwrap();
    assert!(input > 0);
    assert_eq!(usage[0]["output_tokens"], 12);
    assert_eq!(usage[0]["cache_read_input_tokens"], 0);
    assert_eq!(usage[1]["input_tokens"], input);
    assert_eq!(usage[1]["output_tokens"], 3);
    assert_eq!(usage[1]["cache_creation_input_tokens"], 9);
    assert_eq!(
        *usage[2],
        Value::Null,
        "a malformed answer reports no usage"
    );
    assert_eq!(*usage[3], Value::Null, "an error reports no usage");
}
