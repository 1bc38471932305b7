//! Test helpers: start a simulator in-process and talk to it over HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use breakwater_sim::{serve, Config, ServerHandle};

pub const KEY: &str = "sk-test";

pub struct Sim {
    pub addr: SocketAddr,
    pub handle: ServerHandle,
    client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A small Messages request body.
pub fn msg(extra: Value) -> Value {
    let mut body = json!({
        "model": "claude-sonnet-5-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello there, simulator!"}],
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

/// Parses an SSE body into (event name, data JSON) pairs.
pub fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            let data =
                serde_json::from_str(&data).unwrap_or_else(|e| panic!("bad data {data:?}: {e}"));
            (name, data)
        })
        .collect()
}

pub fn event_names(events: &[(String, Value)]) -> Vec<&str> {
    events.iter().map(|(n, _)| n.as_str()).collect()
}

pub async fn within<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .expect("timed out")
}

impl Sim {
    pub async fn start() -> Sim {
        Sim::start_with(Config::default()).await
    }

    pub async fn start_with(config: Config) -> Sim {
        let (addr, handle) = serve(config).await.expect("serve");
        let client = Client::builder(TokioExecutor::new()).build_http();
        Sim {
            addr,
            handle,
            client,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a request; `/v1/*` requests get the API key and JSON headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let mut req = Request::builder().method(method).uri(self.url(path));
        if path.starts_with("/v1/") {
            req = req
                .header("content-type", "application/json")
                .header("anthropic-version", "2023-06-01");
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("x-api-key"))
            {
                req = req.header("x-api-key", KEY);
            }
        }
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let req = req.body(Full::new(body.into())).expect("request");
        self.client.request(req).await
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let resp = within(20, self.send(method, path, headers, body))
            .await
            .expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = within(20, resp.into_body().collect())
            .await
            .expect("body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
        self.call(Method::POST, path, headers, body.to_string())
            .await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn messages(&self, body: &Value) -> Reply {
        self.post("/v1/messages", &[], body).await
    }

    pub async fn messages_with_fault(&self, body: &Value, fault: &Value) -> Reply {
        self.post("/v1/messages", &[("x-sim-fault", &fault.to_string())], body)
            .await
    }

    pub async fn script(&self, faults: Value) {
        let r = self.post("/_sim/script", &[], &faults).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }

    pub async fn mode(&self, mode: Value) -> Value {
        let r = self.post("/_sim/mode", &[], &mode).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    pub async fn reset(&self) {
        let r = self.post("/_sim/reset", &[], &json!({})).await;
        assert_eq!(r.status, 200);
    }

    pub async fn log(&self) -> Vec<Value> {
        match self.get("/_sim/log").await.json() {
            Value::Array(a) => a,
            other => panic!("log is not an array: {other}"),
        }
    }

    pub async fn stats(&self) -> Value {
        self.get("/_sim/stats").await.json()
    }

    /// Waits until the server has at most `n` open connections.
    pub async fn wait_connections_at_most(&self, n: u64) {
        for _ in 0..200 {
            if self.handle.connections_open() <= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "connections stayed open: {}",
            self.handle.connections_open()
        );
    }
}
