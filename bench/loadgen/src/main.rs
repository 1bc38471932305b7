//! The load generator of the breakwater benchmarks.
//!
//! One binary, four modes, each printing one JSON document on stdout:
//!
//! - `closed`: N clients in a closed loop (send, read the whole answer, send again) for a fixed
//!   time after a warm-up: throughput and latency percentiles.
//! - `ttfb`: sequential streaming requests: time to response headers, to the first body byte
//!   and to the end of the stream.
//! - `stream`: one (large) streaming answer read to the end while the resident memory of the
//!   given processes is sampled, at fixed fractions of the stream and every few milliseconds.
//! - `open`: open-loop arrivals at a fixed rate, each request with a time budget, under one of
//!   the client retry policies compared in the overload benchmark (`ours`, `none`, `sdk`,
//!   `fixed`). Records every request: arrival, end, final status, attempts.
//!
//! Options are `--name value` pairs; see `usage()`.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const DEFAULT_BODY: &str = r#"{"model":"claude-sonnet-4-6","max_tokens":64,"messages":[{"role":"user","content":"Hello there"}]}"#;

fn usage() -> &'static str {
    "usage: breakwater-loadgen <closed|ttfb|stream|open> [--option value]...

common:  --url BASE (http://127.0.0.1:8787)  --path /v1/messages  --key KEY
         --header 'name: value' (repeatable)  --body JSON  --stream true|false
         --threads N (1: a single-threaded runtime)
closed:  --concurrency N  --warmup-ms MS  --duration-ms MS  --raw true (also every latency, µs)
         --timeout-ms MS (per request, 30000)
ttfb:    --count N  --warmup N
stream:  --pids P,P  --sample-ms MS  --expect-bytes N  --read-mbps R (0: as fast as possible)
open:    --policy ours|none|sdk|fixed  --rate R  --duration-ms MS  --budget-ms MS
         --grace-ms MS (an answer may still come this long after the budget; it is
         recorded, but only answers within the budget count as successes)
         --seed S  --start-unix-ms T  --arrivals uniform|poisson"
}

/// `--name value` options; a name may repeat.
struct Args {
    map: BTreeMap<String, Vec<String>>,
}

impl Args {
    fn parse(items: &[String]) -> Args {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut it = items.iter();
        while let Some(name) = it.next() {
            let Some(name) = name.strip_prefix("--") else {
                fail(&format!("unexpected argument {name}"))
            };
            let Some(value) = it.next() else {
                fail(&format!("--{name} needs a value"))
            };
            map.entry(name.to_string()).or_default().push(value.clone());
        }
        Args { map }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.map
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_string()
    }

    fn num<T: FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name}: cannot parse {v:?}"))),
        }
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.map.get(name).cloned().unwrap_or_default()
    }
}

fn fail(message: &str) -> ! {
    eprintln!("breakwater-loadgen: {message}\n{}", usage());
    std::process::exit(2)
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One request, prepared once and cloned for every send.
struct Target {
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Target {
    fn from_args(args: &Args) -> Target {
        let url = format!(
            "{}{}",
            args.string("url", "http://127.0.0.1:8787"),
            args.string("path", "/v1/messages")
        );
        let uri: Uri = url
            .parse()
            .unwrap_or_else(|_| fail(&format!("bad url {url}")));
        let mut body: Value = serde_json::from_str(&args.string("body", DEFAULT_BODY))
            .unwrap_or_else(|_| fail("--body is not JSON"));
        if let Some(stream) = args.get("stream") {
            body["stream"] = Value::Bool(stream == "true");
        }
        let mut headers = vec![
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            ),
        ];
        if let Some(key) = args.get("key") {
            let value = HeaderValue::from_str(key).unwrap_or_else(|_| fail("bad --key"));
            headers.push((HeaderName::from_static("x-api-key"), value));
        }
        for line in args.all("header") {
            let Some((name, value)) = line.split_once(':') else {
                fail(&format!("bad --header {line:?}"))
            };
            let name = HeaderName::from_str(name.trim())
                .unwrap_or_else(|_| fail(&format!("bad header name in {line:?}")));
            let value = HeaderValue::from_str(value.trim())
                .unwrap_or_else(|_| fail(&format!("bad header value in {line:?}")));
            headers.push((name, value));
        }
        Target {
            uri,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone());
        for (name, value) in &self.headers {
            builder = builder.header(name, value);
        }
        builder
            .body(Full::new(self.body.clone()))
            .unwrap_or_else(|_| fail("cannot build the request"))
    }
}

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// What one whole exchange produced.
struct Answer {
    status: u16,
    headers: HeaderMap,
    /// Time until the response headers.
    headers_at: Duration,
    /// Time until the first body byte (the end, for an empty body).
    first_byte_at: Duration,
    bytes: u64,
}

/// Sends one request and reads its body to the end.
async fn exchange(client: &HttpClient, target: &Target) -> Result<Answer, String> {
    let started = Instant::now();
    let response = client
        .request(target.request())
        .await
        .map_err(|e| format!("{e:?}"))?;
    let headers_at = started.elapsed();
    let status = response.status().as_u16();
    let (parts, mut body) = response.into_parts();
    let mut first_byte_at = None;
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{e:?}"))?;
        if let Some(data) = frame.data_ref() {
            if !data.is_empty() && first_byte_at.is_none() {
                first_byte_at = Some(started.elapsed());
            }
            bytes += data.len() as u64;
        }
    }
    Ok(Answer {
        status,
        headers: parts.headers,
        headers_at,
        first_byte_at: first_byte_at.unwrap_or_else(|| started.elapsed()),
        bytes,
    })
}

/// Percentiles (nearest rank) of durations in microseconds, reported in milliseconds.
fn summary(mut micros: Vec<u64>) -> Value {
    if micros.is_empty() {
        return Value::Null;
    }
    micros.sort_unstable();
    let n = micros.len();
    let at = |q: f64| {
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        micros[rank - 1] as f64 / 1000.0
    };
    let mean = micros.iter().sum::<u64>() as f64 / n as f64 / 1000.0;
    json!({
        "n": n, "min": at(0.0), "p50": at(0.50), "p90": at(0.90), "p99": at(0.99),
        "p999": at(0.999), "max": micros[n - 1] as f64 / 1000.0, "mean": mean,
    })
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------- closed

async fn closed(args: &Args) -> Value {
    let concurrency: usize = args.num("concurrency", 1);
    let timeout = Duration::from_millis(args.num("timeout-ms", 30_000));
    let warmup = Duration::from_millis(args.num("warmup-ms", 1000));
    let duration = Duration::from_millis(args.num("duration-ms", 5000));
    let target = Arc::new(Target::from_args(args));
    let client = client();
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;

    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, target) = (client.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut errors = Vec::new();
            let mut all = 0u64;
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = match tokio::time::timeout(timeout, exchange(&client, &target)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                };
                all += 1;
                if sent < measure_from {
                    continue;
                }
                match result {
                    Ok(answer) => {
                        *statuses.entry(answer.status).or_default() += 1;
                        latencies.push(micros(sent.elapsed()));
                    }
                    Err(e) => {
                        errors.push(e);
                        // Do not spin on a refused connection.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies, statuses, errors, all)
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut all_requests = 0u64;
    for task in tasks {
        let Ok((l, s, e, all)) = task.await else {
            continue;
        };
        all_requests += all;
        latencies.extend(l);
        for (status, n) in s {
            *statuses.entry(status).or_default() += n;
        }
        errors.extend(e);
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let raw = if args.get("raw") == Some("true") {
        json!(latencies)
    } else {
        Value::Null
    };
    let ok: u64 = statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    json!({
        "mode": "closed",
        "concurrency": concurrency,
        "seconds": elapsed,
        "seconds_with_warmup": start.elapsed().as_secs_f64(),
        "requests_with_warmup": all_requests,
        "requests": latencies.len(),
        "ok": ok,
        "rps": latencies.len() as f64 / elapsed,
        "ok_rps": ok as f64 / elapsed,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": errors.len(),
        "first_error": errors.first(),
        "latency_ms": summary(latencies),
        "latencies_us": raw,
    })
}

// ---------------------------------------------------------------- ttfb

async fn ttfb(args: &Args) -> Value {
    let count: usize = args.num("count", 200);
    let warmup: usize = args.num("warmup", 20);
    let target = Target::from_args(args);
    let client = client();
    let (mut headers, mut first, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut bytes = 0;
    for i in 0..warmup + count {
        let sent = Instant::now();
        match exchange(&client, &target).await {
            Ok(answer) if i >= warmup => {
                *statuses.entry(answer.status).or_default() += 1;
                headers.push(micros(answer.headers_at));
                first.push(micros(answer.first_byte_at));
                total.push(micros(sent.elapsed()));
                bytes = answer.bytes;
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    json!({
        "mode": "ttfb",
        "count": count,
        "bytes_per_answer": bytes,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "errors": errors.len(),
        "first_error": errors.first(),
        "headers_ms": summary(headers),
        "first_byte_ms": summary(first),
        "total_ms": summary(total),
    })
}

// ---------------------------------------------------------------- stream

/// Resident memory of the processes, in KiB (summed); `None` when none could be read.
fn rss_kib(pids: &[u32]) -> Option<u64> {
    let mut total = None;
    for pid in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
        if let Some(kib) = kib {
            total = Some(total.unwrap_or(0) + kib);
        }
    }
    total
}

async fn stream(args: &Args) -> Value {
    let pids: Vec<u32> = args
        .string("pids", "")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|_| fail("bad --pids")))
        .collect();
    let sample_every = Duration::from_millis(args.num("sample-ms", 5));
    let expect: u64 = args.num("expect-bytes", 0);
    let read_mbps: f64 = args.num("read-mbps", 0.0);
    let target = Target::from_args(args);
    let client = client();

    let rss_before = rss_kib(&pids);
    let started = Instant::now();
    let response = match client.request(target.request()).await {
        Ok(r) => r,
        Err(e) => return json!({"mode": "stream", "error": format!("{e:?}")}),
    };
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = 0u64;
    let mut first_byte_ms = None;
    // (ms since start, bytes read so far, rss KiB)
    let mut samples: Vec<(f64, u64, Option<u64>)> = vec![(0.0, 0, rss_before)];
    let marks = [0.1, 0.5, 0.9];
    let mut at_marks: Vec<Option<u64>> = vec![None; marks.len()];
    let mut last_sample = Instant::now();
    let mut error = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                error = Some(format!("{e:?}"));
                break;
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if first_byte_ms.is_none() && !data.is_empty() {
            first_byte_ms = Some(ms(started.elapsed()));
        }
        let before = bytes;
        bytes += data.len() as u64;
        let mut sampled = None;
        if expect > 0 {
            for (i, mark) in marks.iter().enumerate() {
                let threshold = (expect as f64 * mark) as u64;
                if before < threshold && bytes >= threshold {
                    let rss = rss_kib(&pids);
                    at_marks[i] = rss;
                    sampled = rss;
                }
            }
        }
        if last_sample.elapsed() >= sample_every {
            last_sample = Instant::now();
            samples.push((
                ms(started.elapsed()),
                bytes,
                sampled.or_else(|| rss_kib(&pids)),
            ));
        }
        if read_mbps > 0.0 {
            let due = Duration::from_secs_f64(bytes as f64 / (read_mbps * 1_000_000.0));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    let elapsed = started.elapsed();
    let rss_end = rss_kib(&pids);
    samples.push((ms(elapsed), bytes, rss_end));
    // Without an expected size, take the marks from the samples afterwards.
    if expect == 0 {
        for (i, mark) in marks.iter().enumerate() {
            let threshold = (bytes as f64 * mark) as u64;
            at_marks[i] = samples.iter().find(|s| s.1 >= threshold).and_then(|s| s.2);
        }
    }
    let max = samples.iter().filter_map(|s| s.2).max();
    json!({
        "mode": "stream",
        "status": status,
        "bytes": bytes,
        "error": error,
        "seconds": elapsed.as_secs_f64(),
        "mb_per_s": bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        "first_byte_ms": first_byte_ms,
        "rss_kib": {
            "before": rss_before, "p10": at_marks[0], "p50": at_marks[1], "p90": at_marks[2],
            "end": rss_end, "max": max,
        },
        "samples": samples.iter().map(|s| json!([s.0, s.1, s.2])).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------- open

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Policy {
    /// One call (to the proxy, which retries by itself).
    Ours,
    /// One call, no retries.
    None,
    /// The official SDKs: 2 retries, 0.5 s doubling to 8 s, 75–100 % jitter, retry-after honoured.
    Sdk,
    /// Fixed doubling without jitter: 1, 2, 4, 8, 16 s.
    Fixed,
}

impl FromStr for Policy {
    type Err = ();
    fn from_str(s: &str) -> Result<Policy, ()> {
        match s {
            "ours" => Ok(Policy::Ours),
            "none" => Ok(Policy::None),
            "sdk" => Ok(Policy::Sdk),
            "fixed" => Ok(Policy::Fixed),
            _ => Err(()),
        }
    }
}

/// How the official SDKs decide that an answer is worth another attempt.
fn sdk_should_retry(status: u16, headers: &HeaderMap) -> bool {
    match headers.get("x-should-retry").and_then(|v| v.to_str().ok()) {
        Some("true") => return true,
        Some("false") => return false,
        _ => {}
    }
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// The SDKs' wait before retry number `retries_done + 1`: the upstream's `retry-after-ms` /
/// `retry-after` when it is in (0, 60 s), else `min(0.5·2^n, 8) s · (1 − 0.25·U)`.
fn sdk_wait(headers: Option<&HeaderMap>, retries_done: u32, rng: &mut fastrand::Rng) -> Duration {
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .and_then(|v| v.to_str().ok())
    };
    let mut hinted: Option<f64> =
        header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok());
    if hinted.is_none() {
        hinted = header("retry-after")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| s * 1000.0);
    }
    if let Some(ms) = hinted.filter(|ms| *ms > 0.0 && *ms < 60_000.0) {
        return Duration::from_secs_f64(ms / 1000.0);
    }
    let base = (0.5 * 2f64.powi(i32::try_from(retries_done).unwrap_or(30))).min(8.0);
    Duration::from_secs_f64(base * (1.0 - 0.25 * rng.f64()))
}

/// One request of the open loop: `[arrival_ms, end_ms, status, attempts, ok]`, times relative
/// to the start of the run. `status` is 0 for a connection failure, 1 for no answer at all
/// (budget and grace ran out). `ok` is a 2xx within the budget.
async fn one_request(
    client: HttpClient,
    target: Arc<Target>,
    policy: Policy,
    arrival: Instant,
    (budget, grace): (Duration, Duration),
    seed: u64,
) -> (Instant, i64, u32, bool) {
    let deadline = arrival + budget;
    let hard_deadline = deadline + grace;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut attempts = 0u32;
    let mut status = 0i64;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        attempts += 1;
        let answer =
            match tokio::time::timeout(hard_deadline - now, exchange(&client, &target)).await {
                Err(_) => {
                    status = 1;
                    break;
                }
                Ok(Err(_)) => {
                    status = 0;
                    None
                }
                Ok(Ok(answer)) => {
                    status = i64::from(answer.status);
                    if policy == Policy::Ours {
                        if let Some(n) = answer
                            .headers
                            .get("x-proxy-attempts")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u32>().ok())
                        {
                            attempts = n;
                        }
                    }
                    if (200..300).contains(&answer.status) {
                        let end = Instant::now();
                        return (end, status, attempts, end <= deadline);
                    }
                    Some(answer)
                }
            };
        let retries_done = attempts - 1;
        let wait = match policy {
            Policy::Ours | Policy::None => break,
            Policy::Sdk => {
                let retry = answer
                    .as_ref()
                    .is_none_or(|a| sdk_should_retry(a.status, &a.headers));
                if !retry || retries_done >= 2 {
                    break;
                }
                sdk_wait(answer.as_ref().map(|a| &a.headers), retries_done, &mut rng)
            }
            Policy::Fixed => {
                let retry = answer
                    .as_ref()
                    .is_none_or(|a| matches!(a.status, 408 | 429) || a.status >= 500);
                if !retry || retries_done >= 5 {
                    break;
                }
                Duration::from_secs(1u64 << retries_done)
            }
        };
        // A wait that ends past the budget is not slept: the request has failed.
        if Instant::now() + wait >= deadline {
            break;
        }
        tokio::time::sleep(wait).await;
    }
    (Instant::now(), status, attempts, false)
}

async fn open(args: &Args) -> Value {
    let policy: Policy = args
        .string("policy", "none")
        .parse()
        .unwrap_or_else(|()| fail("bad --policy"));
    let rate: f64 = args.num("rate", 10.0);
    let duration = Duration::from_millis(args.num("duration-ms", 20_000));
    let budget = Duration::from_millis(args.num("budget-ms", 30_000));
    let grace = Duration::from_millis(args.num("grace-ms", 5_000));
    let seed: u64 = args.num("seed", 1);
    let poisson = args.string("arrivals", "uniform") == "poisson";
    let (now_instant, now_unix) = (Instant::now(), unix_ms());
    let start_unix: f64 = args.num("start-unix-ms", now_unix);
    let start = now_instant + Duration::from_secs_f64(((start_unix - now_unix) / 1000.0).max(0.0));
    let target = Arc::new(Target::from_args(args));
    let client = client();

    // Arrival offsets, fixed by the rate (and the seed, for Poisson arrivals).
    let mut offsets = Vec::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut t = 0.0f64;
    while t < duration.as_secs_f64() {
        offsets.push(t);
        t += if poisson {
            -(1.0 - rng.f64()).ln() / rate
        } else {
            1.0 / rate
        };
    }

    let mut tasks = Vec::with_capacity(offsets.len());
    for (i, offset) in offsets.iter().enumerate() {
        let arrival = start + Duration::from_secs_f64(*offset);
        tokio::time::sleep_until(arrival.into()).await;
        let (client, target) = (client.clone(), target.clone());
        let request_seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        tasks.push(tokio::spawn(async move {
            let late = Instant::now().saturating_duration_since(arrival);
            let result = one_request(
                client,
                target,
                policy,
                arrival,
                (budget, grace),
                request_seed,
            )
            .await;
            (arrival, late, result)
        }));
    }
    let mut requests = Vec::with_capacity(tasks.len());
    let mut max_late = Duration::ZERO;
    for task in tasks {
        let Ok((arrival, late, (end, status, attempts, ok))) = task.await else {
            continue;
        };
        max_late = max_late.max(late);
        let rel = |t: Instant| (ms(t.saturating_duration_since(start)) * 10.0).round() / 10.0;
        requests.push(json!([
            rel(arrival),
            rel(end),
            status,
            attempts,
            u8::from(ok)
        ]));
    }
    json!({
        "mode": "open",
        "policy": args.string("policy", "none"),
        "rate": rate,
        "duration_ms": ms(duration),
        "budget_ms": ms(budget),
        "grace_ms": ms(grace),
        "seed": seed,
        "arrivals": if poisson { "poisson" } else { "uniform" },
        "start_unix_ms": start_unix,
        "max_dispatch_lateness_ms": ms(max_late),
        "columns": ["arrival_ms", "end_ms", "status", "attempts", "ok"],
        "requests": requests,
    })
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = argv.first().cloned() else {
        fail("missing mode")
    };
    let args = Args::parse(&argv[1..]);
    let threads: usize = args.num("threads", 1);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = runtime.unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    let out = runtime.block_on(async {
        match mode.as_str() {
            "closed" => closed(&args).await,
            "ttfb" => ttfb(&args).await,
            "stream" => stream(&args).await,
            "open" => open(&args).await,
            "help" | "--help" | "-h" => {
                println!("{}", usage());
                std::process::exit(0)
            }
            other => fail(&format!("unknown mode {other}")),
        }
    });
    let mut out = out;
    if let Some(map) = out.as_object_mut() {
        map.insert("loadgen_cpu_s".to_string(), json!(own_cpu_seconds()));
    }
    println!("{out}");
}

/// CPU time (user + system) this process used, from /proc/self/stat (in USER_HZ = 100 ticks).
fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}
