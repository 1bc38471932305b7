//! The runtime's clock, randomness, sleep, configuration and request body, behind small
//! functions so the rest of the shell reads like the core it drives.

use std::time::Duration;

use futures_util::StreamExt;
use worker::{Delay, Env, Request};

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use crate::config::{Config, ConfigError, VARIABLES};
use crate::error::ProxyError;
use crate::request::{declared_body_length, over_limit};

/// Milliseconds since the Unix epoch. In Workers the clock advances on I/O, which is what the
/// budget arithmetic needs: time spent waiting on the upstream or sleeping.
pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// The runtime's clock and sleep, as the request runner takes them.
pub struct Platform;

impl crate::retry::runner::Clock for Platform {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl crate::retry::runner::Sleep for Platform {
    fn sleep(&self, ms: u64) -> impl std::future::Future<Output = ()> {
        sleep_ms(ms)
    }
}

pub async fn sleep_ms(ms: u64) {
    if ms > 0 {
        Delay::from(Duration::from_millis(ms)).await;
    }
}

/// A random 64-bit seed from the platform's CSPRNG (for backoff jitter and request ids).
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: fall back to the clock so jitter still differs between requests.
        return now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    u64::from_le_bytes(bytes)
}

/// A fresh request id for answers the proxy makes itself, shaped like the API's own.
pub fn new_request_id() -> String {
    format!("req_bw_{:016x}{:08x}", random_u64(), random_u64() as u32)
}

thread_local! {
    /// The configuration parsed last, and a hash of the raw values it was parsed from.
    static CONFIG: RefCell<Option<(u64, Rc<Config>)>> = const { RefCell::new(None) };
}

/// The validated configuration. Parsed once per isolate and reused while the raw values stay
/// the same (they are read on every request, so a changed secret takes effect at once).
pub fn config(env: &Env) -> Result<Rc<Config>, ConfigError> {
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

/// Reads the request body, refusing it as soon as it passes `limit` bytes.
pub async fn read_body(req: &mut Request, limit: u64) -> Result<Vec<u8>, ProxyError> {
    let unreadable =
        || ProxyError::InvalidRequest("the request body could not be read".to_string());
    let declared = req.headers().get("content-length").ok().flatten();
    if declared_body_length(declared.as_deref(), limit)?.is_some() {
        // A declared length within the limit (the runtime holds the body to it): read it in
        // one call rather than chunk by chunk across the JS boundary.
        return req.bytes().await.map_err(|_| unreadable());
    }
    let mut stream = match req.stream() {
        Ok(stream) => stream,
        // No body at all.
        Err(_) => return Ok(Vec::new()),
    };
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| unreadable())?;
        if over_limit(body.len(), chunk.len(), limit) {
            return Err(ProxyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
