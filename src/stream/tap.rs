//! Watching an answer's body on its way to the client, to learn its real token usage.
//!
//! The caller's reservation is settled when the answer ends: from the JSON `usage` of a
//! message, or the `message_start` / `message_delta` usage of a stream. [`Tap`] passes every
//! chunk through unchanged and unbuffered; it keeps only one partial SSE event (or, for JSON,
//! at most [`MAX_JSON_BYTES`]). When the body ends, fails, or is dropped because the client
//! went away, it reports what it saw exactly once.
//!
//! A report from a drop wakes nobody: the runtime may drop an abandoned body from outside
//! any request (when it collects it), and a future woken there is polled there, where
//! nothing it does is allowed. The settlement finds such a report on its next tick instead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use serde::Deserialize;

use crate::stream::sse::{Counts, EventScanner, Usage, USAGE_EVENTS};

/// JSON answers larger than this are not parsed for usage; the reservation then stands.
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// How the answer ended, for settlement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub usage: Usage,
    /// The body reached its end (not cut by an error or a client disconnect).
    pub complete: bool,
}

pub enum BodyKind {
    Sse(Box<EventScanner>),
    Json(Vec<u8>),
}

/// What a tap has seen so far, readable while the body is still flowing: the number of chunks
/// passed and the usage read from them. A settlement that waits for the body can tell from it
/// that the body stopped moving (a client gone without the runtime dropping the stream).
#[derive(Debug, Clone, Default)]
pub struct Progress(Rc<Cell<(u64, Usage)>>);

impl Progress {
    pub fn chunks(&self) -> u64 {
        self.0.get().0
    }

    pub fn usage(&self) -> Usage {
        self.0.get().1
    }
}

/// Where a tap's one report goes.
#[derive(Debug, Clone, Default)]
pub struct Report(Rc<RefCell<ReportState>>);

#[derive(Debug, Default)]
struct ReportState {
    seen: Option<Seen>,
    waker: Option<Waker>,
}

impl Report {
    /// The report, once made.
    pub fn seen(&self) -> Option<Seen> {
        self.0.borrow().seen
    }

    /// Completes when a report is made by the body ending while it was read; one made by a
    /// drop is only found by [`Report::seen`].
    pub fn ended(&self) -> Ended<'_> {
        Ended(self)
    }

    fn make(&self, seen: Seen, wake: bool) {
        let waker = {
            let mut state = self.0.borrow_mut();
            state.seen = Some(seen);
            state.waker.take()
        };
        if let Some(waker) = waker.filter(|_| wake) {
            waker.wake();
        }
    }
}

/// See [`Report::ended`].
pub struct Ended<'a>(&'a Report);

impl Future for Ended<'_> {
    type Output = Seen;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Seen> {
        let mut state = (self.0).0.borrow_mut();
        match state.seen {
            Some(seen) => Poll::Ready(seen),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// What watches one body: its usage so far, its one report, and its progress. [`Tap`] drives
/// it from a Rust stream; the shell drives it from chunks the runtime pipes (see
/// `shell::pass`), so the bytes need not cross into Rust and back.
pub struct Watcher {
    kind: BodyKind,
    usage: Usage,
    report: Option<Report>,
    progress: Progress,
}

impl Watcher {
    /// A watcher of an SSE (`sse`) or JSON body, with where it reports and its progress.
    pub fn new(sse: bool) -> (Watcher, Report, Progress) {
        let report = Report::default();
        let kind = if sse {
            BodyKind::Sse(Box::new(EventScanner::only(USAGE_EVENTS)))
        } else {
            BodyKind::Json(Vec::new())
        };
        let progress = Progress::default();
        (
            Watcher {
                kind,
                usage: Usage::default(),
                report: Some(report.clone()),
                progress: progress.clone(),
            },
            report,
            progress,
        )
    }

    /// One chunk of the body, as it passes.
    pub fn observe(&mut self, chunk: &[u8]) {
        let (chunks, _) = self.progress.0.get();
        self.observe_usage(chunk);
        self.progress.0.set((chunks.saturating_add(1), self.usage));
    }

    fn observe_usage(&mut self, chunk: &[u8]) {
        match &mut self.kind {
            BodyKind::Sse(scanner) => {
                let usage = &mut self.usage;
                scanner.push(chunk, |event| usage.observe(&event));
            }
            BodyKind::Json(buf) => {
                if self.report.is_none() {
                    return;
                }
                if buf.len().saturating_add(chunk.len()) <= MAX_JSON_BYTES {
                    buf.extend_from_slice(chunk);
                } else {
                    buf.clear();
                    buf.shrink_to_fit();
                    self.kind = BodyKind::Json(Vec::new());
                    // Too large to parse: leave the reservation as charged.
                    self.report_now(false, true);
                }
            }
        }
    }

    /// The body ended (`complete`) or failed. `wake` wakes the settlement waiting on the
    /// report; pass `false` where the runtime may be outside any request.
    pub fn finish(&mut self, complete: bool, wake: bool) {
        if self.report.is_none() {
            return;
        }
        if let BodyKind::Json(buf) = &self.kind {
            self.usage = json_usage(buf);
        }
        self.report_now(complete, wake);
    }

    /// The client went away mid-answer: report what was seen so far, waking nobody.
    pub fn abandon(&mut self) {
        if self.report.is_some() {
            if let BodyKind::Sse(_) = self.kind {
                self.report_now(false, false);
            } else {
                self.finish(false, false);
            }
        }
    }

    fn report_now(&mut self, complete: bool, wake: bool) {
        if let Some(report) = self.report.take() {
            let seen = Seen {
                usage: self.usage,
                complete,
            };
            report.make(seen, wake);
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        // Dropped unreported (a body abandoned or collected): report without waking anyone.
        self.abandon();
    }
}

/// A Rust stream of chunks, passed through unchanged while a [`Watcher`] reads them.
pub struct Tap<S> {
    inner: S,
    watcher: Watcher,
}

impl<S> Tap<S> {
    pub fn new(inner: S, sse: bool) -> (Tap<S>, Report) {
        let (tap, report, _) = Tap::watched(inner, sse);
        (tap, report)
    }

    /// Like [`Tap::new`], with a [`Progress`] handle to watch the body while it flows.
    pub fn watched(inner: S, sse: bool) -> (Tap<S>, Report, Progress) {
        let (watcher, report, progress) = Watcher::new(sse);
        (Tap { inner, watcher }, report, progress)
    }
}

impl<S, E> Stream for Tap<S>
where
    S: Stream<Item = Result<Vec<u8>, E>> + Unpin,
{
    type Item = Result<Vec<u8>, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => this.watcher.observe(chunk),
            Poll::Ready(Some(Err(_))) => this.watcher.finish(false, true),
            Poll::Ready(None) => this.watcher.finish(true, true),
            Poll::Pending => {}
        }
        polled
    }
}

/// The `usage` of a Messages API JSON answer, counted as [`Usage`] says (cache writes are
/// input, cache reads are not).
pub fn json_usage(body: &[u8]) -> Usage {
    #[derive(Deserialize)]
    struct Answer {
        usage: Option<Counts>,
    }
    let mut usage = Usage::default();
    if let Some(c) = serde_json::from_str::<Answer>(&crate::json::as_text(body))
        .ok()
        .and_then(|a| a.usage)
    {
        usage.apply(&c);
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};

    type Chunk = Result<Vec<u8>, ()>;

    fn run(chunks: Vec<Chunk>, sse: bool) -> (Vec<Chunk>, Option<Seen>) {
        let (tap, report) = Tap::new(stream::iter(chunks), sse);
        let out: Vec<Chunk> = futures_executor::block_on(tap.collect());
        (out, report.seen())
    }

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":30,\"output_tokens\":1}}}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n";

    #[test]
    fn a_stream_passes_unchanged_and_reports_its_usage_once() {
        let chunks: Vec<Chunk> = STREAM
            .as_bytes()
            .chunks(7)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let (out, seen) = run(chunks.clone(), true);
        assert_eq!(out, chunks);
        let seen = seen.unwrap();
        assert!(seen.complete);
        assert_eq!(seen.usage.input_tokens, Some(30));
        assert_eq!(seen.usage.output_tokens, Some(7));
    }

    #[test]
    fn a_chat_completion_reports_its_usage_by_the_openai_names() {
        let stream = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
            data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":21,\"completion_tokens\":4,\"total_tokens\":25}}\n\n\
            data: [DONE]\n\n";
        let chunks: Vec<Chunk> = stream
            .as_bytes()
            .chunks(5)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let (_, seen) = run(chunks, true);
        let usage = seen.unwrap().usage;
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (Some(21), Some(4))
        );
        let body =
            br#"{"object":"chat.completion","usage":{"prompt_tokens":9,"completion_tokens":3}}"#;
        let (_, seen) = run(vec![Ok(body.to_vec())], false);
        let usage = seen.unwrap().usage;
        assert_eq!(
            (usage.input_tokens, usage.output_tokens),
            (Some(9), Some(3))
        );
    }

    #[test]
    fn a_json_answer_counts_cache_writes_but_not_cache_reads() {
        let body = br#"{"type":"message","usage":{"input_tokens":10,"cache_read_input_tokens":5,"cache_creation_input_tokens":7,"output_tokens":3}}"#;
        let (_, seen) = run(
            vec![Ok(body[..20].to_vec()), Ok(body[20..].to_vec())],
            false,
        );
        let usage = seen.unwrap().usage;
        assert_eq!(usage.input_tokens, Some(17));
        assert_eq!(usage.output_tokens, Some(3));
        assert_eq!(usage.reported.cache_read_input_tokens, Some(5));
    }

    #[test]
    fn regression_a_json_answer_read_from_the_cache_charged_the_reads() {
        let body = br#"{"type":"message","usage":{"input_tokens":4,"cache_read_input_tokens":20000,"cache_creation_input_tokens":0,"output_tokens":3}}"#;
        assert_eq!(json_usage(body).input_tokens, Some(4));
        // No usage at all: nothing known.
        assert_eq!(json_usage(br#"{"type":"message"}"#), Usage::default());
    }

    #[test]
    fn a_client_that_goes_away_still_settles() {
        let chunks: Vec<Chunk> = vec![Ok(STREAM.as_bytes()[..120].to_vec()), Ok(b"more".to_vec())];
        let (tap, report) = Tap::new(stream::iter(chunks), true);
        let mut tap = tap;
        let first = futures_executor::block_on(tap.next());
        assert!(first.is_some());
        assert_eq!(report.seen(), None);
        drop(tap);
        let seen = report.seen().unwrap();
        assert!(!seen.complete);
        assert_eq!(seen.usage.input_tokens, Some(30));
    }

    /// Counts how often it is woken.
    struct Wakes(std::sync::atomic::AtomicUsize);
    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn waiting_on(report: &Report) -> std::sync::Arc<Wakes> {
        let wakes = std::sync::Arc::new(Wakes(Default::default()));
        let waker = Waker::from(wakes.clone());
        let mut ended = report.ended();
        let polled = Pin::new(&mut ended).poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending());
        wakes
    }

    #[test]
    fn a_body_that_ends_wakes_its_settlement_but_a_dropped_one_does_not() {
        let (mut tap, report) = Tap::new(
            stream::iter(vec![Chunk::Ok(STREAM.as_bytes().to_vec())]),
            true,
        );
        let wakes = waiting_on(&report);
        while futures_executor::block_on(tap.next()).is_some() {}
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(report.seen().is_some_and(|s| s.complete));

        let chunks: Vec<Chunk> = vec![Ok(STREAM.as_bytes()[..120].to_vec()), Ok(b"more".to_vec())];
        let (mut tap, report) = Tap::new(stream::iter(chunks), true);
        let wakes = waiting_on(&report);
        futures_executor::block_on(tap.next());
        drop(tap);
        // The drop may happen outside any request: it leaves the report and wakes nobody.
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(report.seen().is_some_and(|s| !s.complete));
        let mut ended = report.ended();
        let waker = Waker::from(wakes);
        assert!(Pin::new(&mut ended)
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
    }

    #[test]
    fn an_upstream_error_mid_body_reports_incomplete() {
        let (_, seen) = run(vec![Ok(STREAM.as_bytes().to_vec()), Err(())], true);
        let seen = seen.unwrap();
        assert!(!seen.complete);
        assert_eq!(seen.usage.output_tokens, Some(7));
    }

    #[test]
    fn progress_is_visible_while_the_body_flows() {
        let chunks: Vec<Chunk> = STREAM
            .as_bytes()
            .chunks(40)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let n = chunks.len() as u64;
        let (mut tap, _rx, progress) = Tap::watched(stream::iter(chunks), true);
        assert_eq!(progress.chunks(), 0);
        futures_executor::block_on(tap.next());
        assert_eq!(progress.chunks(), 1);
        while futures_executor::block_on(tap.next()).is_some() {}
        assert_eq!(progress.chunks(), n);
        assert_eq!(progress.usage().output_tokens, Some(7));
    }

    #[test]
    fn garbage_json_reports_no_usage() {
        let (_, seen) = run(vec![Ok(b"{not json".to_vec())], false);
        assert_eq!(seen.unwrap().usage, Usage::default());
    }
}
