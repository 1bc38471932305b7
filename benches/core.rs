//! Micro-benchmarks of the pure core (divan): what the Worker computes per request or per
//! chunk, without any I/O. Run with `cargo bench --bench core` (or `./scripts/bench.sh`,
//! which also puts the medians into `bench/results/RESULTS.md`).
// Benchmark fixtures may index and unwrap: a broken fixture should stop loudly.
#![allow(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    divan::main();
}

#[cfg(not(target_arch = "wasm32"))]
mod fixtures {
    use std::fmt::Write as _;

    /// A realistic Messages SSE stream of `deltas` text deltas, as the upstream sends it.
    pub fn sse_stream(deltas: usize) -> Vec<u8> {
        let mut s = String::new();
        s.push_str(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\
             \"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-6\",\
             \"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"output_tokens\":1}}}\n\n",
        );
        s.push_str(
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\
             \"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        );
        s.push_str("event: ping\ndata: {\"type\": \"ping\"}\n\n");
        let words = [
            "The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. ",
        ];
        for i in 0..deltas {
            let _ = write!(
                s,
                "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\
                 \"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n",
                words[i % words.len()]
            );
        }
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        let _ = write!(
            s,
            "event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\
             \"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{deltas}}}}}\n\n"
        );
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        s.into_bytes()
    }

    /// A `/v1/messages` body of `bytes` bytes (to within a few): a system prompt, a few turns,
    /// a tool, as a chat frontend sends them.
    pub fn message_body(bytes: usize) -> Vec<u8> {
        let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ";
        let text = |n: usize| {
            let mut t = filler.repeat(n / filler.len() + 1);
            t.truncate(n);
            t
        };
        let build = |share: usize| {
            serde_json::json!({
                "model": "claude-sonnet-4-6",
                "max_tokens": 1024,
                "stream": true,
                "system": text(share),
                "temperature": 0.7,
                "metadata": {"user_id": "user-1234"},
                "tools": [{"name": "get_weather", "description": "Weather for a city",
                           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                            "required": ["city"]}}],
                "messages": [
                    {"role": "user", "content": text(share)},
                    {"role": "assistant", "content": [{"type": "text", "text": text(share)}]},
                    {"role": "user", "content": [{"type": "text", "text": text(share)},
                                                 {"type": "text", "text": "Now summarise."}]},
                ],
            })
            .to_string()
        };
        let overhead = build(0).len();
        build(bytes.saturating_sub(overhead) / 4).into_bytes()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod retry {
    use breakwater::retry::{classify, upstream_wait_ms, Backoff, Outcome};
    use divan::black_box;

    fn outcomes() -> Vec<(&'static str, Outcome)> {
        vec![
            (
                "200",
                Outcome::Response {
                    status: 200,
                    should_retry: None,
                    wait_floor_ms: None,
                },
            ),
            (
                "529",
                Outcome::Response {
                    status: 529,
                    should_retry: None,
                    wait_floor_ms: Some(2000),
                },
            ),
            (
                "503_no_retry",
                Outcome::Response {
                    status: 503,
                    should_retry: Some(false),
                    wait_floor_ms: None,
                },
            ),
            (
                "stream_overloaded",
                Outcome::StreamError {
                    error_type: "overloaded_error".to_string(),
                    should_retry: None,
                    wait_floor_ms: None,
                },
            ),
            ("connect_failure", Outcome::ConnectFailure),
        ]
    }

    #[divan::bench(args = ["200", "529", "503_no_retry", "stream_overloaded", "connect_failure"])]
    fn classify_outcome(bencher: divan::Bencher, name: &str) {
        let outcome = outcomes()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o);
        let outcome = outcome.unwrap_or(Outcome::ConnectFailure);
        bencher.bench(|| classify(black_box(&outcome)));
    }

    /// One draw of the full-jitter iterator.
    #[divan::bench]
    fn backoff_draw(bencher: divan::Bencher) {
        let mut backoff = Backoff::new(500, 8000, 42);
        bencher.bench_local(|| black_box(&mut backoff).next());
    }

    /// A request's whole schedule: a fresh seeded iterator and the waits of its 3 retries.
    #[divan::bench]
    fn backoff_schedule_of_4_attempts(bencher: divan::Bencher) {
        let mut seed = 0u64;
        bencher.bench_local(|| {
            seed = seed.wrapping_add(1);
            Backoff::new(500, 8000, black_box(seed))
                .take(3)
                .sum::<u64>()
        });
    }

    const NOW_MS: u64 = 1_764_000_000_000;

    #[divan::bench(args = [
        ("retry-after-ms", "1500"),
        ("retry-after", "2"),
        ("retry-after", "1.25"),
        ("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT"),
        ("retry-after", "garbage"),
    ])]
    fn upstream_wait(bencher: divan::Bencher, header: (&str, &str)) {
        let (name, value) = header;
        let (ms, secs) = if name == "retry-after-ms" {
            (Some(value), None)
        } else {
            (None, Some(value))
        };
        bencher.bench(|| upstream_wait_ms(black_box(ms), black_box(secs), black_box(NOW_MS)));
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod sse {
    use breakwater::stream::sse::{EventScanner, Usage};
    use divan::black_box;
    use divan::counter::BytesCount;

    /// A 500-delta stream (~64 KB) fed in network-sized chunks; every event is parsed, as the
    /// usage tap does.
    #[divan::bench(args = [64, 1024, 16384])]
    fn event_scanner_push(bencher: divan::Bencher, chunk: usize) {
        let stream = super::fixtures::sse_stream(500);
        bencher.counter(BytesCount::new(stream.len())).bench(|| {
            let mut scanner = EventScanner::new();
            let mut events = 0usize;
            for piece in stream.chunks(chunk) {
                scanner.push(black_box(piece), |_| events += 1);
            }
            events
        });
    }

    /// The same, also folding every event into the usage tally.
    #[divan::bench]
    fn event_scanner_push_and_usage(bencher: divan::Bencher) {
        let stream = super::fixtures::sse_stream(500);
        bencher.counter(BytesCount::new(stream.len())).bench(|| {
            let mut scanner = EventScanner::new();
            let mut usage = Usage::default();
            for piece in stream.chunks(1024) {
                scanner.push(black_box(piece), |event| usage.observe(&event));
            }
            usage
        });
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod body {
    use breakwater::request::body::inspect;
    use breakwater::request::route::Route;
    use divan::black_box;
    use divan::counter::BytesCount;

    #[divan::bench(args = [1_000, 10_000, 100_000])]
    fn inspect_body(bencher: divan::Bencher, bytes: usize) {
        let body = super::fixtures::message_body(bytes);
        bencher
            .counter(BytesCount::new(body.len()))
            .bench(|| inspect(&Route::Messages, black_box(&body)));
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod limits {
    use std::num::NonZeroU32;

    use breakwater::config::TierLimits;
    use breakwater::limits::{Admission, AdmissionRequest, Credits, LimiterState, Used};
    use divan::black_box;

    fn limits(all: bool) -> TierLimits {
        let n = |v: u32| NonZeroU32::new(v);
        if all {
            TierLimits {
                rpm: n(1_000_000),
                input_tpm: n(4_000_000_000),
                output_tpm: n(4_000_000_000),
                concurrency: n(100_000),
                ..TierLimits::default()
            }
        } else {
            TierLimits {
                rpm: n(1_000_000),
                ..TierLimits::default()
            }
        }
    }

    const REQUEST: AdmissionRequest = AdmissionRequest {
        input_tokens: 300,
        output_tokens: 1024,
        lease_ms: 900_000,
        quota: None,
    };

    /// One admission decision and its settlement (a request every millisecond) with `in_flight`
    /// other requests admitted and not yet settled, as one Durable Object call pair does.
    #[divan::bench(args = [0, 8, 64])]
    fn admit_then_settle_rpm(bencher: divan::Bencher, in_flight: u64) {
        cycle(bencher, limits(false), in_flight);
    }

    /// The same with all four dimensions limited (tokens are reserved, then refunded).
    #[divan::bench(args = [0, 8, 64])]
    fn admit_then_settle_all(bencher: divan::Bencher, in_flight: u64) {
        cycle(bencher, limits(true), in_flight);
    }

    fn cycle(bencher: divan::Bencher, limits: TierLimits, in_flight: u64) {
        let mut state = LimiterState::new();
        let mut now = 1_764_000_000_000u64;
        for _ in 0..in_flight {
            now += 1;
            let _ = state.admit(&limits, now, &REQUEST);
        }
        bencher.bench_local(|| {
            now += 1;
            let admission = state.admit(&limits, black_box(now), &REQUEST);
            if let Admission::Admitted(reservation) = admission {
                let usage = Used {
                    input_tokens: Some(250),
                    output_tokens: Some(100),
                };
                let _ = state.settle(&limits, now, &reservation, usage);
            }
        });
    }

    /// A caller new to the isolate takes its place in a full table of local credit (1,024
    /// callers seen within the minute, none holding anything), as when a site mints a token
    /// per anonymous visitor: a sweep now and then makes room for a quarter of the table.
    /// Includes naming the caller.
    #[divan::bench(sample_count = 4_000)]
    fn new_caller_in_a_full_credit_table(bencher: divan::Bencher) {
        let limits = limits(true);
        let mut credits = Credits::default();
        let mut now = 1_764_000_000_000u64;
        let mut visitor = 0u64;
        while credits.len() < 1_024 {
            visitor += 1;
            if let Some(credit) = credits.of(&format!("visitor-{visitor}"), limits, now) {
                credit.arrive(limits, now);
            }
        }
        bencher.bench_local(|| {
            now += 1;
            visitor += 1;
            let identity = format!("visitor-{visitor}");
            if let Some(credit) = credits.of(black_box(&identity), limits, now) {
                credit.arrive(limits, now);
            }
        });
    }

    /// The state's round trip through JSON, which the Durable Object stores after each call.
    #[divan::bench]
    fn state_json_roundtrip(bencher: divan::Bencher) {
        let limits = limits(true);
        let mut state = LimiterState::new();
        for i in 0..32 {
            let _ = state.admit(&limits, 1_764_000_000_000 + i, &REQUEST);
        }
        bencher.bench(|| {
            let text = serde_json::to_string(black_box(&state)).unwrap_or_default();
            serde_json::from_str::<LimiterState>(&text).ok()
        });
    }
}
