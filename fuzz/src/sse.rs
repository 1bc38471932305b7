//! The SSE reader: `EventScanner` (the first event decides a retry; every event feeds the
//! usage tally), `SseEvent::error_type`, `Usage::observe`, and the `Tap` that watches an
//! answer on its way to the client.
//!
//! Input: `[mode] [chunking seed] stream bytes`. Mode bit 0: also run the bytes through a
//! JSON tap. (The 1 MiB event limit is out of reach of fuzz-sized inputs; unit tests cover it.)
//!
//! Holds for every input:
//! - the events found do not depend on how the stream is cut into chunks (whole, random
//!   chunks, byte by byte), and a scanner for the usage events finds exactly those;
//! - the tap passes every chunk through unchanged, reports exactly once, and reports the
//!   same usage as tallying the scanner's events.

use breakwater::stream::sse::{EventScanner, SseEvent, Usage, MAX_EVENT_BYTES, USAGE_EVENTS};
use breakwater::stream::tap::{json_usage, Tap, Watcher};
use futures_util::{stream, StreamExt};

pub fn check(data: &[u8]) {
    let [mode, seed, body @ ..] = data else {
        return;
    };
    let whole = scan(&[body]);
    let chunks = cut(body, *seed);
    assert_eq!(scan(&chunks), whole, "events depend on the chunking");
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(scan(&bytes), whole, "events differ when fed byte by byte");
    // A scanner for the usage events finds exactly those among all the events.
    let mut usage_events = Vec::new();
    let mut only = EventScanner::only(USAGE_EVENTS);
    for chunk in &chunks {
        only.push(chunk, |e| usage_events.push(e));
    }
    let wanted: Vec<SseEvent> = whole
        .iter()
        .filter(|e| USAGE_EVENTS.contains(&e.name.as_str()))
        .cloned()
        .collect();
    assert_eq!(
        usage_events, wanted,
        "the usage scanner missed or added an event"
    );

    let mut usage = Usage::default();
    for event in &whole {
        let error = event.error_type();
        assert_eq!(error.is_some(), event.name == "error");
        usage.observe(event);
    }

    // The tap: unchanged bytes, one report, the same usage.
    let items: Vec<Result<Vec<u8>, ()>> = chunks.iter().map(|c| Ok(c.to_vec())).collect();
    let (tap, seen) = Tap::new(stream::iter(items.clone()), true);
    let out: Vec<Result<Vec<u8>, ()>> = futures_executor::block_on(tap.collect());
    assert_eq!(out, items, "the tap changed the stream");
    let report = seen.seen().expect("the tap did not report");
    assert!(report.complete);
    assert_eq!(
        report.usage, usage,
        "the tap's usage differs from the events'"
    );

    // The watcher the shell drives from piped chunks: the same one report.
    let (mut watcher, watched, progress) = Watcher::new(true);
    for chunk in &chunks {
        watcher.observe(chunk);
    }
    watcher.finish(true, true);
    assert_eq!(
        watched.seen(),
        Some(report),
        "the watcher and the tap disagree"
    );
    assert_eq!(progress.chunks(), chunks.len() as u64);

    if mode & 1 != 0 {
        let (tap, seen) = Tap::new(stream::iter(items.clone()), false);
        let out: Vec<Result<Vec<u8>, ()>> = futures_executor::block_on(tap.collect());
        assert_eq!(out, items, "the JSON tap changed the body");
        let report = seen.seen().expect("the JSON tap did not report");
        assert_eq!(report.usage, json_usage(body));
    }

    // A client that goes away after the first chunk: still exactly one report.
    let (mut tap, seen) = Tap::new(stream::iter(items), true);
    let _ = futures_executor::block_on(tap.next());
    drop(tap);
    let report = seen.seen().expect("a dropped tap did not report");
    assert!(!report.complete || chunks.len() <= 1);
}

fn scan(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut scanner = EventScanner::new();
    let mut events = Vec::new();
    for chunk in chunks {
        scanner.push(chunk, |e| events.push(e));
        assert!(
            scanner.buffered() <= MAX_EVENT_BYTES,
            "the scanner holds {} bytes",
            scanner.buffered()
        );
    }
    events
}

/// Cuts `body` into chunks of pseudo-random sizes (1 to 64 bytes, some empty).
fn cut(body: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut rng = fastrand::Rng::with_seed(u64::from(seed));
    let mut chunks = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let size = if rng.u8(..) < 8 {
            0
        } else {
            rng.usize(1..=64).min(rest.len())
        };
        let (chunk, tail) = rest.split_at(size);
        chunks.push(chunk);
        rest = tail;
        if chunks.len() > 100_000 {
            chunks.push(rest);
            break;
        }
    }
    chunks
}
