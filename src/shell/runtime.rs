//! The runtime's clock, randomness, sleep, configuration and request body, behind small
//! functions so the rest of the shell reads like the core it drives.

use futures_util::StreamExt;
use worker::Env;

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Write;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use super::reader::{whole, BodyReader};
use crate::config::{Config, ConfigError, VARIABLES};
use crate::error::ProxyError;
use crate::request::body::{inspect, BodyFacts};
use crate::request::route::Route;
use crate::request::{declared_body_length, over_limit, BodyGuard, InflightBodies};
use wasm_bindgen::{JsCast, JsValue};

/// Milliseconds since the Unix epoch. In Workers the clock advances on I/O, which is what the
/// budget arithmetic needs: time spent waiting on the upstream or sleeping.
pub fn now_ms() -> u64 {
    // The static `Date.now()`: no `Date` object is made for it.
    js_sys::Date::now() as u64
}

/// The runtime's clock and sleep, as the request runner takes them.
pub struct Platform;

impl crate::retry::runner::Clock for Platform {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl crate::retry::runner::Sleep for Platform {
    /// A request's wait (a backoff, a cooldown, an overload, its send time), counted in this
    /// isolate's tally while it lasts.
    async fn sleep(&self, ms: u64) {
        let _waiting = super::metrics::waiting();
        sleep_ms(ms).await;
    }
}

pub async fn sleep_ms(ms: u64) {
    if ms > 0 {
        super::timer::Timer::after_ms(ms).await;
    }
}

/// A random 64-bit seed from the platform's CSPRNG (for backoff jitter).
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes())
}

/// `N` bytes from the platform's CSPRNG, in one call.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: fall back to the clock so jitter and ids still differ between
        // requests.
        let clock = now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        for (byte, from) in bytes.iter_mut().zip(clock.iter().cycle()) {
            *byte = *from;
        }
    }
    bytes
}

/// A fresh request id for answers the proxy makes itself, shaped like the API's own.
pub fn new_request_id() -> String {
    let mut id = String::with_capacity(31);
    id.push_str("req_bw_");
    for byte in random_bytes::<12>() {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// One `env` object remembered, to tell whether the runtime hands the same one again: it hands
/// every request of an isolate the same object, so the same object means the same bindings and
/// values (a new secret or variable comes with a new version, hence a new isolate).
pub struct SeenEnv(RefCell<Option<worker::wasm_bindgen::JsValue>>);

impl SeenEnv {
    pub const fn new() -> SeenEnv {
        SeenEnv(RefCell::new(None))
    }

    /// Whether `env` is the object remembered last.
    pub fn is(&self, env: &Env) -> bool {
        let env_object: &worker::wasm_bindgen::JsValue = env.as_ref();
        self.0
            .borrow()
            .as_ref()
            .is_some_and(|seen| js_sys::Object::is(seen, env_object))
    }

    pub fn remember(&self, env: &Env) {
        let env_object: &worker::wasm_bindgen::JsValue = env.as_ref();
        *self.0.borrow_mut() = Some(env_object.clone());
    }
}

thread_local! {
    /// The configuration parsed last, and a hash of the raw values it was parsed from.
    static CONFIG: RefCell<Option<(u64, Rc<Config>)>> = const { RefCell::new(None) };
    /// The `env` object that configuration was read from.
    static CONFIG_ENV: SeenEnv = const { SeenEnv::new() };
}

/// The validated configuration. Parsed once per isolate: while the runtime hands the same
/// `env` object, nothing is read again; a different `env` has its raw values read and
/// hashed, and they are parsed again only when they changed.
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
    let mut hasher = DefaultHasher::new();
    raw.hash(&mut hasher);
    let key = hasher.finish();
    if let Some(config) = CONFIG.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(k, _)| *k == key)
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
    CONFIG.with(|c| *c.borrow_mut() = Some((key, config.clone())));
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
    /// The request bodies this isolate holds at once (see `MAX_INFLIGHT_BODY_BYTES`).
    static BODIES: InflightBodies = InflightBodies::default();
}

/// A request body as read, in JavaScript buffers, and its hold on the isolate's budget for
/// bodies in flight.
pub struct Body {
    read: Read,
    length: usize,
    held: BodyGuard,
}

enum Read {
    /// A declared length, read in one call.
    Whole(js_sys::ArrayBuffer),
    /// The chunks as they came.
    Chunks(js_sys::Array),
}

/// A body ready to go upstream, which every attempt sends as it is: the one buffer a body of
/// declared length was read into (the runtime copies it into each attempt; a body is sent
/// again only on a retry), or a `Blob` of the chunks of one without (never joined into one
/// more copy). Released from the isolate's budget when dropped.
pub struct Upload {
    body: JsValue,
    _held: BodyGuard,
}

impl Upload {
    /// What an attempt sends.
    pub fn body(&self) -> &JsValue {
        &self.body
    }

    /// The body as a `Blob`, to be cut where a fallback rewrites its `model`.
    pub fn blob(&self) -> Option<worker::web_sys::Blob> {
        if let Some(blob) = self.body.dyn_ref::<worker::web_sys::Blob>() {
            return Some(blob.clone());
        }
        worker::web_sys::Blob::new_with_buffer_source_sequence(&js_sys::Array::of1(&self.body)).ok()
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
        let body: JsValue = match self.read {
            Read::Whole(buffer) => {
                js_sys::Uint8Array::new(&buffer).copy_to(copy.as_mut_slice());
                buffer.into()
            }
            Read::Chunks(parts) => {
                let mut offset: usize = 0;
                for part in parts.iter() {
                    let part = js_sys::Uint8Array::from(part);
                    let end = offset.saturating_add(part.length() as usize);
                    // Straight into place: one copy in Wasm memory, never a second.
                    part.copy_to(copy.get_mut(offset..end).ok_or_else(unreadable)?);
                    offset = end;
                }
                worker::web_sys::Blob::new_with_u8_array_sequence(&parts)
                    .map_err(|_| ProxyError::Internal("could not hold the request body".into()))?
                    .into()
            }
        };
        let facts = inspect(route, &copy)?;
        Ok((
            Upload {
                body,
                _held: self.held,
            },
            facts,
        ))
    }
}

/// An upload streamed through: the client's body stream goes upstream as it arrives, so an
/// isolate never holds it (a file may be hundreds of megabytes; the platform's own request
/// limit bounds it). It can be sent once only.
pub fn streamed_upload(incoming: &super::boundary::Incoming) -> Result<Upload, ProxyError> {
    let held = BODIES.with(|b| b.try_reserve(0, u64::MAX))?;
    let body = incoming.request.body().map_or(JsValue::NULL, JsValue::from);
    Ok(Upload { body, _held: held })
}

/// Reads the request body into one JavaScript buffer, refusing it as soon as it passes
/// `limit` bytes, and holding its size against the isolate's `cap` for bodies in flight.
pub async fn read_body(
    incoming: &super::boundary::Incoming,
    limit: u64,
    cap: u64,
) -> Result<Body, ProxyError> {
    let unreadable =
        || ProxyError::InvalidRequest("the request body could not be read".to_string());
    let req = &incoming.request;
    let declared = incoming.headers.value("content-length");
    if let Some(length) = declared_body_length(declared, limit)? {
        // A declared length within the limit (the runtime holds the body to it): held before
        // a byte is read, then read in one call, staying on the JavaScript side.
        let held = match BODIES.with(|b| b.try_reserve(length, cap)) {
            Ok(held) => held,
            Err(busy) => {
                drain(req).await;
                return Err(busy);
            }
        };
        let promise = req.array_buffer().map_err(|_| unreadable())?;
        let buffer = whole(promise).await.ok_or_else(unreadable)?;
        if u64::from(buffer.byte_length()) > length {
            return Err(ProxyError::TooLarge { limit });
        }
        return Ok(Body {
            length: buffer.byte_length() as usize,
            read: Read::Whole(buffer),
            held,
        });
    }
    let mut held = BODIES.with(|b| b.try_reserve(0, cap))?;
    let parts = js_sys::Array::new();
    let mut length: usize = 0;
    if let Some(mut stream) = req.body().as_ref().and_then(BodyReader::new) {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| unreadable())?;
            if over_limit(length, chunk.len(), limit) {
                return Err(ProxyError::TooLarge { limit });
            }
            if let Err(busy) = held.try_grow(chunk.len() as u64) {
                drain_stream(&mut stream).await;
                return Err(busy);
            }
            length = length.saturating_add(chunk.len());
            // Each chunk leaves Wasm memory as soon as it arrives; the upload's `Blob` is made
            // of these parts, so they are never joined into one more copy.
            parts.push(&js_sys::Uint8Array::from(chunk.as_slice()));
        }
    }
    Ok(Body {
        read: Read::Chunks(parts),
        length,
        held,
    })
}

/// Reads a refused body to its end without keeping it, so the client (still sending) gets
/// the answer instead of a reset connection. Chunks pass through Wasm memory one at a time.
async fn drain(req: &worker::web_sys::Request) {
    if let Some(mut stream) = req.body().as_ref().and_then(BodyReader::new) {
        drain_stream(&mut stream).await;
    }
}

async fn drain_stream(stream: &mut BodyReader) {
    while let Some(Ok(_)) = stream.next().await {}
}
