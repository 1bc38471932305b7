//! Talking to a Durable Object and keeping its state: JSON calls in, JSON answers out, state
//! stored as JSON text.
//!
//! Calls are read with `serde_json` rather than `JSON.parse` (seeds are full 64-bit integers
//! that a JS number would round), and state goes through the JS boundary as one string rather
//! than a field-by-field conversion (smaller bundle, exact numbers).

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::{Env, Method, Request, RequestInit, State};

use crate::error::ProxyError;

pub mod limiter;
pub mod upstream;

/// Sends one call to the object named `name` under `binding` and reads its JSON answer.
/// `what` names the object in errors ("rate limiter", "upstream state").
pub async fn call<C: Serialize, T: DeserializeOwned>(
    env: &Env,
    binding: &str,
    name: &str,
    call: &C,
    what: &str,
) -> Result<T, ProxyError> {
    let unavailable = |why: &str| ProxyError::Unavailable(format!("{what} {why}"));
    let namespace = env
        .durable_object(binding)
        .map_err(|_| unavailable("not bound"))?;
    let stub = namespace
        .id_from_name(name)
        .and_then(|id| id.get_stub())
        .map_err(|_| unavailable("not reachable"))?;
    let body = serde_json::to_string(call).map_err(|_| unavailable("call not encodable"))?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body.into()));
    let request = Request::new_with_init("https://object/call", &init)
        .map_err(|_| unavailable("call not built"))?;
    let mut response = stub
        .fetch_with_request(request)
        .await
        .map_err(|_| unavailable("did not answer"))?;
    if response.status_code() != 200 {
        let status = response.status_code();
        return Err(unavailable(&format!("refused the call ({status})")));
    }
    response
        .json::<T>()
        .await
        .map_err(|_| unavailable("answer unreadable"))
}

/// Reads a call sent with [`call`]; `None` when it is not one.
pub async fn read_call<C: DeserializeOwned>(req: &mut Request) -> Option<C> {
    let text = req.text().await.ok()?;
    serde_json::from_str(&text).ok()
}

/// The object's stored state under `key`, if any (and readable).
pub async fn load<T: DeserializeOwned>(state: &State, key: &str) -> Option<T> {
    let text = state.storage().get::<String>(key).await.ok().flatten()?;
    serde_json::from_str(&text).ok()
}

/// Stores the object's state under `key`.
pub async fn store<T: Serialize>(state: &State, key: &str, value: &T) -> worker::Result<()> {
    let text = serde_json::to_string(value).map_err(|e| worker::Error::RustError(e.to_string()))?;
    state.storage().put(key, text).await
}

/// Loads the object's state into `slot` once per object lifetime (fresh state when nothing is
/// stored); it stays in memory afterwards, so every later event decides without a read.
pub async fn load_once<T: DeserializeOwned + Default>(
    slot: &RefCell<Option<T>>,
    state: &State,
    key: &str,
) {
    if slot.borrow().is_some() {
        return;
    }
    let stored = load(state, key).await;
    let mut slot = slot.borrow_mut();
    // Another event may have loaded it while this one awaited storage.
    if slot.is_none() {
        *slot = Some(stored.unwrap_or_default());
    }
}
