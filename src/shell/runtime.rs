//! The runtime's sleep, configuration and request body, behind small functions so the rest
//! of the shell reads like the core it drives (its clock and randomness are in
//! [`super::clock`], a leaf).

use std::pin::{pin, Pin};

use futures_util::future::{select, Either};
use worker::Env;

use std::cell::RefCell;
use std::rc::Rc;

use super::clock::now_ms;
use super::reader::{cause_of, BodyReader};
use super::seen_env::SeenEnv;
use super::timer::Timer;
use crate::config::{Config, ConfigError, VARIABLES};
use crate::error::ProxyError;
use crate::request::body::{inspect, BodyFacts};
use crate::request::declared_body_length;
use crate::request::route::Route;
use crate::request::upload::{
    drain_allowance, grown_length, BodyGuard, InflightBodies, ReadPace, ReadRules,
};
use wasm_bindgen::{JsCast, JsValue};

/// The runtime's clock and sleep, as the request runner takes them.
pub struct WorkersTime;

impl crate::retry::runner::Clock for WorkersTime {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl crate::retry::runner::Sleep for WorkersTime {
    /// A request's wait (a backoff, a cooldown, an overload, its send time), counted in this
    /// isolate's tally while it lasts.
    async fn sleep(&self, ms: u64) {
        let _waiting = super::recorder::waiting();
        sleep_ms(ms).await;
    }
}

pub async fn sleep_ms(ms: u64) {
    if ms > 0 {
        super::timer::Timer::after_ms(ms).await;
    }
}

/// The configuration's variables as the runtime gave them, in the order of [`VARIABLES`].
type RawValues = Vec<Option<String>>;

thread_local! {
    /// The configuration parsed last, and the raw values it was parsed from (compared, not
    /// hashed: a hasher is kilobytes of module, and this runs only when `env` changes).
    static CONFIG: RefCell<Option<(RawValues, Rc<Config>)>> = const { RefCell::new(None) };
    /// The `env` object that configuration was read from.
    static CONFIG_ENV: SeenEnv = const { SeenEnv::new() };
}

/// The validated configuration. Parsed once per isolate: while the runtime hands the same
/// `env` object, nothing is read again; a different `env` has its raw values read and
/// compared, and they are parsed again only when they changed.
pub fn config(env: &Env) -> Result<Rc<Config>, ConfigError> {
    if CONFIG_ENV.with(|e| e.is(env)) {
        if let Some(config) = CONFIG.with(|c| c.borrow().as_ref().map(|(_, c)| c.clone())) {
            return Ok(config);
        }
    }
    let config = config_from_values(env)?;
    CONFIG_ENV.with(|e| e.remember(env));
    Ok(config)
}

fn config_from_values(env: &Env) -> Result<Rc<Config>, ConfigError> {
    let raw: Vec<Option<String>> = VARIABLES.iter().map(|name| variable(env, name)).collect();
    if let Some(config) = CONFIG.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(seen, _)| *seen == raw)
            .map(|(_, c)| c.clone())
    }) {
        return Ok(config);
    }
    let config = Rc::new(Config::from_lookup(|name| {
        VARIABLES
            .iter()
            .position(|v| *v == name)
            .and_then(|i| raw.get(i).cloned().flatten())
    })?);
    // Once per parse: what a plan may not allow is said, not refused (see `plan_warnings`).
    for warning in config.plan_warnings() {
        worker::console_warn!("{}", super::respond::config_warning_line(&warning));
    }
    CONFIG.with(|c| *c.borrow_mut() = Some((raw, config.clone())));
    Ok(config)
}

/// A configuration variable: a `[vars]` entry or a secret, whichever is set.
pub fn variable(env: &Env, name: &str) -> Option<String> {
    if let Ok(secret) = env.secret(name) {
        return Some(secret.to_string());
    }
    env.var(name).ok().map(|v| v.to_string())
}

thread_local! {
    /// The request bodies this isolate holds at once (see `request::upload`).
    static BODIES: InflightBodies = InflightBodies::default();
}

/// A request body as read: the chunks as the runtime made them (never joined, never in Wasm
/// memory), and its hold on the budget for bodies in flight.
pub struct Body {
    parts: js_sys::Array,
    length: usize,
    held: BodyGuard,
}

/// A body ready to go upstream: one immutable `Blob`, made once from the chunks as they came,
/// that every attempt and every fallback sends (a fallback sends slices of it around a new
/// `model`), so no attempt copies the body. Released from the budget when dropped.
pub struct Upload {
    body: JsValue,
    _held: Option<BodyGuard>,
}

impl Upload {
    /// What an attempt sends.
    pub fn body(&self) -> &JsValue {
        &self.body
    }

    /// The body as a `Blob`, to be cut where a fallback rewrites its `model`; `None` for a
    /// body streamed through.
    pub fn blob(&self) -> Option<worker::web_sys::Blob> {
        self.body.dyn_ref::<worker::web_sys::Blob>().cloned()
    }
}

impl Body {
    /// Checks the body for `route`, reads what the proxy needs of it, and turns it into the
    /// upload every attempt sends. The bytes are copied into Wasm memory only for this
    /// synchronous call and freed before it returns, so an isolate's Wasm memory holds at
    /// most one body at a time, however many requests are in flight (Wasm memory never
    /// shrinks once grown).
    pub fn inspect(self, route: &Route) -> Result<(Upload, BodyFacts), ProxyError> {
        let unreadable = || ProxyError::Internal("could not read the request body".to_string());
        let mut copy = vec![0u8; self.length];
        let mut offset: usize = 0;
        for part in self.parts.iter() {
            let part = js_sys::Uint8Array::from(part);
            let end = offset.saturating_add(part.length() as usize);
            // Straight into place: one copy in Wasm memory, never a second.
            part.copy_to(copy.get_mut(offset..end).ok_or_else(unreadable)?);
            offset = end;
        }
        let facts = inspect(route, &copy)?;
        drop(copy);
        let blob =
            worker::web_sys::Blob::new_with_u8_array_sequence(&self.parts).map_err(|cause| {
                log_body_failure("could not hold the request body", &cause_of(&cause));
                ProxyError::Internal("could not hold the request body".into())
            })?;
        // The `Blob` has its own copy: the chunks' memory goes now, not at the next
        // collection, so a body is held once, not twice until then.
        release_all(&self.parts);
        Ok((
            Upload {
                body: blob.into(),
                _held: Some(self.held),
            },
            facts,
        ))
    }
}

/// Frees the memory of every chunk in `parts` at once (see [`release`]).
fn release_all(parts: &js_sys::Array) {
    for part in parts.iter() {
        release(&js_sys::Uint8Array::from(part).buffer());
    }
}

/// Frees a buffer's memory at once by detaching it (`ArrayBuffer.prototype.transfer(0)`),
/// where the runtime has it; otherwise the collector frees it later.
fn release(buffer: &js_sys::ArrayBuffer) {
    let transfer = js_sys::Reflect::get(buffer, &JsValue::from_str("transfer"))
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
    if let Some(transfer) = transfer {
        let _ = transfer.call1(buffer, &JsValue::from_f64(0.0));
    }
}

/// An upload streamed through: the client's body stream goes upstream as it arrives, so an
/// isolate never holds it (a file may be hundreds of megabytes; the platform's own request
/// limit bounds it). It can be sent once only.
pub fn streamed_upload(incoming: &super::boundary::Incoming) -> Upload {
    let body = incoming.request.body().map_or(JsValue::NULL, JsValue::from);
    Upload { body, _held: None }
}

/// The log line for a body the runtime failed to read or hold: what failed, and the
/// runtime's words for it (never the body).
fn log_body_failure(what: &str, cause: &dyn std::fmt::Display) {
    worker::console_warn!(
        "{}",
        crate::metrics::event_line(
            "request_body_failed",
            &[("error", what), ("cause", &cause.to_string())]
        )
    );
}

/// A request body read chunk by chunk under its [`ReadPace`]: one timer at a time, set again
/// only when it fires before the deadline (which each chunk moves on).
struct PacedBody {
    stream: BodyReader,
    pace: ReadPace,
    received: u64,
    timer: Timer,
}

impl PacedBody {
    fn new(stream: BodyReader, pace: ReadPace) -> PacedBody {
        let timer = Timer::after_ms(pace.wait_ms(0, now_ms()).unwrap_or(0));
        PacedBody {
            stream,
            pace,
            received: 0,
            timer,
        }
    }

    /// The next chunk; `Ok(None)` at the end; [`ProxyError::BodyTimeout`] once the body has
    /// fallen behind its pace.
    async fn next(&mut self) -> Result<Option<js_sys::Uint8Array>, ProxyError> {
        loop {
            let chunk = pin!(self.stream.next_chunk());
            match select(chunk, &mut self.timer).await {
                Either::Left((None, _)) => return Ok(None),
                Either::Left((Some(Ok(chunk)), _)) => {
                    self.received = self.received.saturating_add(u64::from(chunk.length()));
                    return Ok(Some(chunk));
                }
                Either::Left((Some(Err(cause)), _)) => {
                    log_body_failure("the request body could not be read", &cause);
                    return Err(ProxyError::InvalidRequest(
                        "the request body could not be read".to_string(),
                    ));
                }
                Either::Right(((), _)) => match self.pace.wait_ms(self.received, now_ms()) {
                    Some(wait_ms) => self.timer = Timer::after_ms(wait_ms),
                    None => return Err(ProxyError::BodyTimeout),
                },
            }
        }
    }

    /// Reads and drops the rest, up to `most` bytes in all and within the pace, so a client
    /// still sending reads the answer instead of a reset connection. Chunks never enter Wasm
    /// memory.
    async fn drain(&mut self, most: u64) {
        while self.received < most {
            if !matches!(self.next().await, Ok(Some(_))) {
                return;
            }
        }
    }
}

/// Counting a request against `rpm` while its body arrives (see
/// `request::upload::count_while_arriving`): due at a time, then on its way, then done.
pub enum Counting<S, F> {
    /// Not counted while it arrives.
    Off,
    Due(Timer, S),
    Sent(Pin<Box<F>>),
    Done,
}

impl<S, F> Counting<S, F> {
    /// Counts with `send` at `due_ms`; `None`: the request is not counted while it arrives.
    pub fn at(due_ms: Option<u64>, send: S) -> Counting<S, F> {
        match due_ms {
            Some(due) => Counting::Due(Timer::after_ms(due.saturating_sub(now_ms())), send),
            None => Counting::Off,
        }
    }
}

/// How reading a body stopped early.
enum Stopped {
    /// The body failed or fell behind its pace.
    Body(ProxyError),
    /// The body or its request was refused while the body arrived: the rest is drained.
    Refused(ProxyError),
}

/// The body's next chunk, counting the request on the way when it is due.
async fn next_counting<S, F>(
    body: &mut PacedBody,
    counting: &mut Counting<S, F>,
) -> Result<Option<js_sys::Uint8Array>, Stopped>
where
    S: FnOnce() -> F,
    F: std::future::Future<Output = Result<(), ProxyError>>,
{
    loop {
        match counting {
            Counting::Off | Counting::Done => return body.next().await.map_err(Stopped::Body),
            Counting::Due(timer, _) => match select(pin!(body.next()), timer).await {
                Either::Left((next, _)) => return next.map_err(Stopped::Body),
                Either::Right(((), _)) => {
                    if let Counting::Due(_, send) = std::mem::replace(counting, Counting::Done) {
                        *counting = Counting::Sent(Box::pin(send()));
                    }
                }
            },
            Counting::Sent(count) => match select(pin!(body.next()), count.as_mut()).await {
                Either::Left((next, _)) => return next.map_err(Stopped::Body),
                Either::Right((counted, _)) => {
                    *counting = Counting::Done;
                    counted.map_err(Stopped::Refused)?;
                }
            },
        }
    }
}

impl<S, F> Counting<S, F>
where
    F: std::future::Future<Output = Result<(), ProxyError>>,
{
    /// Whether the request was counted while its body arrived. A count on its way when the
    /// body ended is waited for: it may have been counted.
    async fn counted(self) -> Result<bool, ProxyError> {
        match self {
            Counting::Off | Counting::Due(..) => Ok(false),
            Counting::Done => Ok(true),
            Counting::Sent(count) => {
                count.await?;
                Ok(true)
            }
        }
    }
}

/// Reads the request body chunk by chunk, holding each chunk against the isolate's and the
/// caller's budgets as it arrives (a declared length is never held before its bytes come),
/// refusing it as soon as it passes `limit` bytes, and giving it up when it falls behind its
/// pace. A body still arriving when `counting` is due has its request counted then, and is
/// refused if the caller has none left. A refused body is read on and dropped, a bounded
/// amount, so the client still sending reads the answer. Also says whether the request was
/// counted on the way.
pub async fn read_body<S, F>(
    incoming: &super::boundary::Incoming,
    caller: &str,
    rules: ReadRules,
    mut counting: Counting<S, F>,
) -> Result<(Body, bool), ProxyError>
where
    S: FnOnce() -> F,
    F: std::future::Future<Output = Result<(), ProxyError>>,
{
    let ReadRules { limit, caps, pace } = rules;
    let stream = incoming.request.body().as_ref().and_then(BodyReader::new);
    let mut body = stream.map(|stream| PacedBody::new(stream, pace));
    let content_length = incoming.headers.value("content-length");
    let declared = match declared_body_length(content_length, limit) {
        Ok(declared) => declared,
        Err(too_large) => {
            let length = content_length
                .and_then(|d| d.trim().parse().ok())
                .unwrap_or(u64::MAX);
            return refuse(body, drain_allowance(length, limit), too_large).await;
        }
    };
    let drain_most = drain_allowance(declared.unwrap_or(u64::MAX), limit);
    let held = match BODIES.with(|b| b.begin(caller, caps)) {
        Ok(held) => held,
        Err(refused) => return refuse(body, drain_most, refused).await,
    };
    let Some(paced) = body.as_mut() else {
        let body = Body {
            parts: js_sys::Array::new(),
            length: 0,
            held,
        };
        return Ok((body, false));
    };
    let read = match read_chunks(paced, &mut counting, held, limit, declared).await {
        Ok(read) => read,
        Err(Stopped::Body(failed)) => return Err(failed),
        Err(Stopped::Refused(refused)) => return refuse(body, drain_most, refused).await,
    };
    Ok((read, counting.counted().await?))
}

/// Reads the chunks of a body into a [`Body`] held by `held`, each held as it comes and
/// counting the request on the way when `counting` is due. A body refused on the way (too
/// large, over a budget, or its request refused) keeps nothing while the rest is drained.
async fn read_chunks<S, F>(
    paced: &mut PacedBody,
    counting: &mut Counting<S, F>,
    mut held: BodyGuard,
    limit: u64,
    declared: Option<u64>,
) -> Result<Body, Stopped>
where
    S: FnOnce() -> F,
    F: std::future::Future<Output = Result<(), ProxyError>>,
{
    let parts = js_sys::Array::new();
    let mut length: u64 = 0;
    loop {
        let chunk = match next_counting(paced, counting).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(Stopped::Body(failed)) => return Err(Stopped::Body(failed)),
            Err(Stopped::Refused(refused)) => {
                release_all(&parts);
                return Err(Stopped::Refused(refused));
            }
        };
        let more = u64::from(chunk.length());
        let grown = grown_length(length, more, limit, declared)
            .and_then(|grown| held.try_grow(more).map(|()| grown));
        match grown {
            Ok(grown) => length = grown,
            Err(refused) => {
                // Nothing of a refused body is kept while the rest is drained.
                release_all(&parts);
                return Err(Stopped::Refused(refused));
            }
        }
        parts.push(&chunk);
    }
    Ok(Body {
        parts,
        length: usize::try_from(length).unwrap_or(usize::MAX),
        held,
    })
}

/// Refuses a body with `refused` once the rest of it, up to `most` bytes in all, has been
/// read and dropped.
async fn refuse<T>(
    mut body: Option<PacedBody>,
    most: u64,
    refused: ProxyError,
) -> Result<T, ProxyError> {
    if let Some(body) = body.as_mut() {
        body.drain(most).await;
    }
    Err(refused)
}
