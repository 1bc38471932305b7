//! The upstream as the request runner's transport: one attempt under an `AbortController`
//! and a timer, and delivering the answer the runner settled on.
//!
//! A streaming answer is held until its first SSE event has been read, so an
//! `overloaded_error` in a `200` can still be retried; once the first byte is handed to the
//! client, nothing is retried.

use std::pin::pin;

use futures_util::future::{select, Either};
use futures_util::StreamExt;
use wasm_bindgen::prelude::*;
use worker::web_sys;

use super::boundary::{self, Answer, AnswerBody, HeadWait, HeaderList, InFlight};
use super::clock::now_ms;
use super::pass::{pass, CutEvents, Passing};
use super::reader::{whole, BodyReader};
use super::runtime::Upload;
use super::timer::Timer;
use crate::error::{incomplete_stream_event, ProxyError};
use crate::request::body::ModelRewrite;
use crate::request::headers::forward_upstream;
use crate::retry::runner::Transport;
use crate::retry::{delivered_headers, Outcome, Read, ReadPlan, Reading, MAX_ERROR_BODY_BYTES};
use crate::stream::exact_length;
use crate::stream::sse::{EventScanner, SseEvent};
use crate::stream::tap::{Watcher, MAX_JSON_BYTES};
use crate::upstream::KeyLimits;

/// A delivered upstream answer, and (when tapped) where its usage will be reported.
pub type Delivered = crate::pipeline::Delivered<Answer>;

/// What one attempt brought back, kept until the runner decides whether to deliver it.
pub struct UpstreamAnswer {
    status: u16,
    headers: HeaderList,
    body: UpstreamBody,
}

enum UpstreamBody {
    /// Not looked into: handed to the client as the runtime's own stream.
    Untouched(Unread),
    /// An SSE stream whose first event was read: those bytes, then the rest as it comes.
    Sse { head: Vec<u8>, rest: BodyReader },
    /// A small error body read whole (a `429`, to tell a spend limit), as it came.
    Read(Vec<u8>),
    /// A JSON answer of known length read whole in its attempt, in the runtime's buffer.
    Whole(js_sys::ArrayBuffer),
}

impl UpstreamAnswer {
    /// A successful JSON answer with its body rewritten by `rewrite` (which returns `None` to
    /// keep it as it came); any other answer untouched. A body of unknown length is read here,
    /// up to [`MAX_JSON_BYTES`] and within `within_ms`: the answers rewritten are small JSON
    /// objects, which come with their head.
    pub async fn rewritten(
        self,
        within_ms: u64,
        rewrite: impl FnOnce(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<UpstreamAnswer, ProxyError> {
        if !(200..300).contains(&self.status) {
            return Ok(self);
        }
        let UpstreamAnswer {
            status,
            headers,
            body,
        } = self;
        let bytes = match body {
            UpstreamBody::Whole(buffer) => js_sys::Uint8Array::new(&buffer).to_vec(),
            UpstreamBody::Read(bytes) => bytes,
            UpstreamBody::Untouched(unread) => match unread.deliver() {
                None => Vec::new(),
                Some(stream) => {
                    let timer = pin!(Timer::after_ms(within_ms));
                    match select(pin!(read_json(&stream)), timer).await {
                        Either::Left((read, _)) => read?,
                        Either::Right(((), _)) => {
                            return Err(ProxyError::UpstreamTimeout {
                                retry_after_ms: 1_000,
                            })
                        }
                    }
                }
            },
            sse @ UpstreamBody::Sse { .. } => {
                return Ok(UpstreamAnswer {
                    status,
                    headers,
                    body: sse,
                })
            }
        };
        let bytes = rewrite(&bytes).unwrap_or(bytes);
        Ok(UpstreamAnswer {
            status,
            headers,
            body: UpstreamBody::Read(bytes),
        })
    }
}

/// A JSON body read whole, refused above [`MAX_JSON_BYTES`].
async fn read_json(stream: &web_sys::ReadableStream) -> Result<Vec<u8>, ProxyError> {
    let broken = || ProxyError::UpstreamUnreachable {
        retry_after_ms: 1_000,
    };
    let mut reader = BodyReader::new(stream).ok_or_else(broken)?;
    let mut bytes = Vec::new();
    while let Some(chunk) = reader.next().await {
        bytes.extend_from_slice(&chunk.map_err(|_| broken())?);
        if bytes.len() > MAX_JSON_BYTES {
            return Err(ProxyError::Internal(
                "the upstream's answer is too large to point its results_url at the proxy"
                    .to_string(),
            ));
        }
    }
    Ok(bytes)
}

/// A body nobody has read yet. Dropped undelivered (the answer of an attempt that is retried,
/// or one a fallback leaves behind), it is cancelled at once: its connection would otherwise
/// stay open until the runtime collects it, and a Worker may hold only six at a time.
struct Unread(Option<web_sys::ReadableStream>);

impl Unread {
    /// The body, for the client; it is no longer cancelled.
    fn deliver(mut self) -> Option<web_sys::ReadableStream> {
        self.0.take()
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        if let Some(body) = self.0.take() {
            boundary::cancel_body(&body);
        }
    }
}

/// One request's way to the upstream: the same URL, headers and body for every attempt.
pub struct UpstreamRequest<'a> {
    url: String,
    method: String,
    /// The headers every attempt sends, as the lines they cross the boundary in.
    headers: String,
    /// The body every attempt sends.
    body: Option<&'a Upload>,
    /// The body for a fallback model, built from the client's `Blob` without copying it.
    fallback_body: Option<worker::web_sys::Blob>,
    /// Where the body's top-level `model` value lies, for a fallback to rewrite it.
    model_span: Option<std::ops::Range<usize>>,
    reading: Reading,
    /// The upstream's `request-id` of the last attempt that had one.
    pub request_id: Option<String>,
    /// The key's limits as the last answer's `anthropic-ratelimit-*` headers reported them.
    key_limits: KeyLimits,
}

impl<'a> UpstreamRequest<'a> {
    /// The request to send to `url`: the client's headers that may cross (never its
    /// credential), the upstream key, and the body byte for byte.
    pub fn new(
        url: String,
        method: &str,
        client_headers: &HeaderList,
        upstream_key: &crate::identity::Secret,
        body: Option<&'a Upload>,
        streaming: bool,
    ) -> UpstreamRequest<'a> {
        let headers = boundary::lines_of(
            client_headers
                .iter()
                .filter(|(name, _)| forward_upstream(name))
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .chain(std::iter::once(("x-api-key", upstream_key.expose()))),
        );
        UpstreamRequest {
            url,
            method: method.to_string(),
            headers,
            body,
            fallback_body: None,
            model_span: None,
            reading: Reading {
                streaming,
                json_whole: false,
                body_ms: u64::MAX,
            },
            request_id: None,
            key_limits: KeyLimits::default(),
        }
    }

    /// Reads a successful JSON answer of known length whole in its attempt (when its usage is
    /// watched): its usage is then read without a pipe, and a body cut before its end is
    /// retried like a lost connection, since nothing of it has reached the client.
    pub fn reading_json_whole(mut self, whole: bool) -> UpstreamRequest<'a> {
        self.reading.json_whole = whole;
        self
    }

    /// Bounds the reading of a body read whole to `ms` after its head (see
    /// [`Reading::body_ms`]).
    pub fn reading_errors_within(mut self, ms: u64) -> UpstreamRequest<'a> {
        self.reading.body_ms = ms;
        self
    }

    /// Lets a fallback rewrite the body's `model`, which lies at `span`.
    pub fn with_model_span(mut self, span: Option<std::ops::Range<usize>>) -> UpstreamRequest<'a> {
        self.model_span = span;
        self
    }
}

/// The client's body with its top-level `model` value replaced: a `Blob` made of the
/// original's bytes before the value, the new value, and its bytes after, so the body is
/// neither copied into Wasm memory nor changed anywhere else.
fn body_for_model(
    body: &worker::web_sys::Blob,
    span: &std::ops::Range<usize>,
    model: &str,
) -> Option<worker::web_sys::Blob> {
    let length = usize::try_from(body.size() as u64).ok()?;
    let rewrite = ModelRewrite::new(span, length, model)?;
    let at = |n: usize| u32::try_from(n).ok().map(f64::from);
    let head = body
        .slice_with_f64_and_f64(at(rewrite.head.start)?, at(rewrite.head.end)?)
        .ok()?;
    let tail = body
        .slice_with_f64_and_f64(at(rewrite.tail.start)?, at(rewrite.tail.end)?)
        .ok()?;
    let parts = js_sys::Array::of3(&head, &JsValue::from_str(&rewrite.value), &tail);
    worker::web_sys::Blob::new_with_blob_sequence(&parts).ok()
}

impl Transport for UpstreamRequest<'_> {
    type Answer = UpstreamAnswer;

    async fn attempt(&mut self, timeout_ms: u64) -> (Outcome, Option<UpstreamAnswer>) {
        let (outcome, answer) = attempt(
            &self.url,
            &self.method,
            &self.headers,
            self.fallback_body
                .as_ref()
                .map(AsRef::as_ref)
                .or(self.body.map(Upload::body)),
            timeout_ms,
            self.reading,
        )
        .await;
        if let Some(id) = answer.as_ref().and_then(|a| a.headers.value("request-id")) {
            self.request_id = Some(id.to_string());
        }
        self.key_limits = answer.as_ref().map_or_else(KeyLimits::default, |a| {
            KeyLimits::from_headers(a.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        });
        (outcome, answer)
    }

    fn key_limits(&self) -> KeyLimits {
        self.key_limits
    }

    fn switch_model(&mut self, model: &str) -> bool {
        let (Some(body), Some(span)) = (self.body.and_then(Upload::blob), self.model_span.as_ref())
        else {
            return false;
        };
        match body_for_model(&body, span, model) {
            Some(rewritten) => {
                self.fallback_body = Some(rewritten);
                true
            }
            None => false,
        }
    }
}

/// Hands an answer the runner settled on to the client. A successful answer's body is
/// tapped when asked, so its real usage can settle the caller's reservation once it has
/// passed through.
pub fn deliver(answer: UpstreamAnswer, tap: bool, idle_ms: u64) -> Result<Delivered, ProxyError> {
    let status = answer.status;
    if let Some(refused) = crate::stream::refused_answer(status) {
        return Err(refused);
    }
    let read_body = match &answer.body {
        UpstreamBody::Read(bytes) => Some(bytes.as_slice()),
        _ => None,
    };
    let headers: HeaderList = delivered_headers(status, answer.headers.pairs(), read_body)
        .into_iter()
        .collect();
    let not_passed =
        || ProxyError::Internal("the answer's body could not be passed on".to_string());
    let tap = tap && (200..300).contains(&status);
    let (body, seen) = match answer.body {
        UpstreamBody::Untouched(unread) => match unread.deliver() {
            None => (AnswerBody::Empty, None),
            Some(body) if !tap => (AnswerBody::Stream(body), None),
            Some(body) => {
                let how = Passing {
                    idle_ms: 0,
                    cut: None,
                    length: exact_length(answer.headers.pairs()),
                    watch: true,
                };
                let passed = pass(None, &body, None, how).ok_or_else(not_passed)?;
                (AnswerBody::Stream(passed.stream), passed.seen)
            }
        },
        UpstreamBody::Read(bytes) => (AnswerBody::Bytes(bytes), None),
        UpstreamBody::Whole(buffer) if !tap => (AnswerBody::Buffer(buffer), None),
        UpstreamBody::Whole(buffer) => {
            let (mut watcher, report, progress) = Watcher::new(false);
            watcher.observe(&js_sys::Uint8Array::new(&buffer).to_vec());
            watcher.finish(true, true);
            (AnswerBody::Buffer(buffer), Some((report, progress)))
        }
        UpstreamBody::Sse { head, rest } => {
            // The runtime pipes the rest; a cut stream ends with the incomplete event, which
            // the watcher (when there is one) sees as an incomplete answer.
            let (body, reader) = rest.into_parts().ok_or_else(not_passed)?;
            let how = Passing {
                idle_ms,
                cut: Some(CutEvents {
                    silent: &incomplete_stream_event("the upstream stream went silent"),
                    lost: &incomplete_stream_event("the upstream connection was lost mid-stream"),
                }),
                length: None,
                watch: tap,
            };
            let passed = pass(Some(&head), &body, Some(reader), how).ok_or_else(not_passed)?;
            (AnswerBody::Stream(passed.stream), passed.seen)
        }
    };
    Ok(Delivered {
        response: Answer::new(status, headers, body),
        status,
        seen,
    })
}

/// One attempt: the request and its timeout, then what the answer's [`ReadPlan`] reads of its
/// body before the runner decides (an error body, a JSON answer, a stream's first event).
async fn attempt(
    url: &str,
    method: &str,
    headers: &str,
    body: Option<&JsValue>,
    timeout_ms: u64,
    reading: Reading,
) -> (Outcome, Option<UpstreamAnswer>) {
    let deadline = now_ms().saturating_add(timeout_ms);
    let Some(in_flight) = InFlight::new(url, method, headers, body, timeout_ms) else {
        return (Outcome::ConnectFailure, None);
    };
    let response = match in_flight.answer().await {
        HeadWait::Answered(response) => response,
        HeadWait::TimedOut => return (Outcome::AttemptTimeout, None),
        HeadWait::Failed => return (Outcome::ConnectFailure, None),
    };
    let (status, upstream_headers) = boundary::head_of(&response);
    let plan = ReadPlan::of(status, upstream_headers.pairs(), reading, now_ms());
    let head = plan.head;
    // An error body or a JSON answer is read in bounded time: a body that stalls after its
    // head is an attempt that timed out, and is retried.
    let body_by = || ReadPlan::body_deadline_ms(reading, deadline, now_ms());
    let read = match plan.read {
        Read::Untouched => Ok((
            head.outcome(None),
            UpstreamBody::Untouched(Unread(response.body())),
        )),
        Read::ErrorBody => read_error_body(&response, body_by())
            .await
            .map(|bytes| (head.outcome(Some(&bytes)), UpstreamBody::Read(bytes))),
        Read::WholeJson => read_whole_json(&response, body_by())
            .await
            .map(|buffer| (head.outcome(None), UpstreamBody::Whole(buffer))),
        Read::FirstEvent => read_first_event(&response, deadline)
            .await
            .map(|(event, body)| (head.first_event_outcome(event.error_type()), body)),
    };
    match read {
        Ok((outcome, body)) => {
            let answer = UpstreamAnswer {
                status,
                headers: upstream_headers,
                body,
            };
            (outcome, Some(answer))
        }
        Err(ReadFailed::TimedOut) => {
            in_flight.abort();
            (Outcome::AttemptTimeout, None)
        }
        Err(ReadFailed::Broken) => (Outcome::ConnectFailure, None),
    }
}

/// A reader of the answer's body; `None` when it has none.
fn body_of(response: &web_sys::Response) -> Option<BodyReader> {
    BodyReader::new(&response.body()?)
}

/// How reading what an attempt needed of an answer's body failed.
enum ReadFailed {
    /// The body failed, or ended before what was needed of it: nothing reached the client
    /// yet, so this is retried like a connection failure.
    Broken,
    /// The attempt's deadline came first: a body that stalls must not hold the request.
    TimedOut,
}

/// Reads an error body up to [`MAX_ERROR_BODY_BYTES`] (the rest, if any, is cancelled: the
/// API's error bodies are far smaller), until `deadline_ms` at the latest.
async fn read_error_body(
    response: &web_sys::Response,
    deadline_ms: u64,
) -> Result<Vec<u8>, ReadFailed> {
    let Some(mut stream) = body_of(response) else {
        return Ok(Vec::new());
    };
    let mut bytes = Vec::new();
    loop {
        let remaining = deadline_ms.saturating_sub(now_ms());
        if remaining == 0 {
            return Err(ReadFailed::TimedOut);
        }
        let next = pin!(stream.next());
        let timer = pin!(Timer::after_ms(remaining));
        match select(next, timer).await {
            Either::Left((Some(Ok(chunk)), _)) => bytes.extend_from_slice(&chunk),
            Either::Left((None, _)) => return Ok(bytes),
            Either::Left((Some(Err(_)), _)) => return Err(ReadFailed::Broken),
            Either::Right(_) => return Err(ReadFailed::TimedOut),
        }
        if bytes.len() > MAX_ERROR_BODY_BYTES {
            bytes.truncate(MAX_ERROR_BODY_BYTES);
            return Ok(bytes);
        }
    }
}

/// Reads a JSON answer whole, in the runtime's buffer, until `deadline_ms` at the latest.
async fn read_whole_json(
    response: &web_sys::Response,
    deadline_ms: u64,
) -> Result<js_sys::ArrayBuffer, ReadFailed> {
    let read = response.array_buffer().map_err(|_| ReadFailed::Broken)?;
    let timer = pin!(Timer::after_ms(deadline_ms.saturating_sub(now_ms())));
    match select(pin!(whole(read)), timer).await {
        Either::Left((Some(buffer), _)) => Ok(buffer),
        Either::Left((None, _)) => Err(ReadFailed::Broken),
        Either::Right(((), _)) => Err(ReadFailed::TimedOut),
    }
}

/// Reads a stream's first complete event, until `deadline_ms` at the latest: the event, and
/// the body as it goes on (those bytes, then the rest).
async fn read_first_event(
    response: &web_sys::Response,
    deadline_ms: u64,
) -> Result<(SseEvent, UpstreamBody), ReadFailed> {
    let mut rest = body_of(response).ok_or(ReadFailed::Broken)?;
    let (head, event) = first_event(&mut rest, deadline_ms).await?;
    Ok((event, UpstreamBody::Sse { head, rest }))
}

/// Reads until the first complete SSE event, or the attempt's deadline.
async fn first_event(
    stream: &mut BodyReader,
    deadline_ms: u64,
) -> Result<(Vec<u8>, SseEvent), ReadFailed> {
    let mut scanner = EventScanner::new();
    let mut head = Vec::new();
    loop {
        let remaining = deadline_ms.saturating_sub(now_ms());
        if remaining == 0 {
            return Err(ReadFailed::TimedOut);
        }
        let next = pin!(stream.next());
        let timer = pin!(Timer::after_ms(remaining));
        let chunk = match select(next, timer).await {
            Either::Left((Some(Ok(chunk)), _)) => chunk,
            Either::Left((Some(Err(_)) | None, _)) => return Err(ReadFailed::Broken),
            Either::Right(_) => return Err(ReadFailed::TimedOut),
        };
        let mut found = None;
        scanner.push(&chunk, |event| {
            if found.is_none() {
                found = Some(event);
            }
        });
        head.extend_from_slice(&chunk);
        if let Some(event) = found {
            return Ok((head, event));
        }
        if head.len() > crate::stream::sse::MAX_EVENT_BYTES {
            // Not an event stream the proxy can read; treat it as delivered content.
            let event = SseEvent {
                name: "message".to_string(),
                data: String::new(),
            };
            return Ok((head, event));
        }
    }
}
