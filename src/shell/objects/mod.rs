//! The Durable Object shell, one for both objects: the core's loop ([`crate::durable::host`]:
//! load → `decide` → store, an alarm that forgets an idle state) on the runtime's storage and
//! timers, and the JSON calls in between.
//!
//! Calls are read with `serde_json` rather than `JSON.parse` (seeds are full 64-bit integers
//! that a JS number would round), and state goes through the JS boundary as one string rather
//! than a field-by-field conversion (smaller bundle, exact numbers). Trouble in storage fails
//! closed: a read that fails or a stored state that does not decode answers `503` and never
//! lets a default state overwrite the real one.

use std::pin::pin;

use futures_util::future::{select, Either};

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::wasm_bindgen::JsValue;
use worker::{web_sys, Env, Request, Response, ResponseBuilder, State};

use super::clock::now_ms;
use super::runtime::sleep_ms;
use super::timer::Timer;
use crate::durable::host::{Host, Storage, Trouble};
use crate::durable::{self, ObjectState};
use crate::error::ProxyError;
use crate::metrics::event_line;

pub mod limiter;
pub mod upstream;

/// How long a call to an object may take before the request gives up on it (`503`). Calls
/// decide in memory and answer in milliseconds, or are held while their request waits its
/// fair turn (at most [`crate::upstream::MAX_HOLD_MS`]); this only bounds one the runtime
/// lost.
const OBJECT_CALL_TIMEOUT_MS: u64 = crate::upstream::MAX_HOLD_MS + 5_000;

/// One object: the core's loop ([`Host`]) over the runtime's storage and timers.
pub struct Object<S> {
    state: State,
    host: Host<S>,
}

impl<S: ObjectState> Object<S> {
    pub fn new(state: State) -> Self {
        Object {
            state,
            host: Host::default(),
        }
    }

    /// One call, read from the request and answered as JSON.
    pub async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let Some(call) = read_call::<S::Call>(&mut req).await else {
            return Response::error("unreadable call", 400);
        };
        let storage = RuntimeStorage(self.state.storage());
        let answered = self
            .host
            .call((&ObjectTime, &ObjectTime), &storage, call, |reply| {
                serde_json::to_string(&reply).ok()
            })
            .await;
        let reply = match answered {
            Ok(reply) => reply,
            Err(Trouble::Unreadable(why)) => return unavailable(S::STORAGE_KEY, &why),
            Err(Trouble::Storage(error)) => return Err(error),
        };
        let headers = worker::Headers::new();
        let _ = headers.set("content-type", "application/json");
        Ok(ResponseBuilder::new()
            .with_headers(headers)
            .fixed(reply.into_bytes()))
    }

    /// Forgets the state once it is idle; otherwise looks again later.
    pub async fn alarm(&self) -> worker::Result<Response> {
        let storage = RuntimeStorage(self.state.storage());
        match self.host.alarm(&ObjectTime, &storage).await {
            // Nothing is deleted or overwritten; the next call answers 503 the same way.
            Err(Trouble::Unreadable(why)) => log_unreadable(S::STORAGE_KEY, &why),
            Err(Trouble::Storage(error)) => return Err(error),
            Ok(()) => {}
        }
        Response::ok("")
    }
}

/// The runtime's clock and timers inside an object: a held call's wait is not a request's
/// (it is not counted among the requests waiting).
struct ObjectTime;

impl crate::durable::Clock for ObjectTime {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

impl crate::durable::Sleep for ObjectTime {
    async fn sleep(&self, ms: u64) {
        sleep_ms(ms).await;
    }
}

/// The runtime's storage of one object, as the core's loop takes it.
struct RuntimeStorage(worker::Storage);

impl Storage for RuntimeStorage {
    type Error = worker::Error;

    /// The stored string as the runtime holds it, not decoded through `serde_wasm_bindgen` as
    /// `Storage::get` does (its deserializer and error messages were in the module for this
    /// one string). A value that is not a string is an error, as it was.
    async fn get(&self, key: &'static str) -> worker::Result<Option<String>> {
        let found = self
            .0
            .get_multiple(vec![key])
            .await?
            .get(&JsValue::from_str(key));
        if found.is_undefined() {
            return Ok(None);
        }
        match found.as_string() {
            Some(text) => Ok(Some(text)),
            None => Err(worker::Error::RustError(format!(
                "stored {key} is not a string"
            ))),
        }
    }

    async fn put(&self, key: &'static str, value: String) -> worker::Result<()> {
        self.0.put_raw(key, value).await
    }

    async fn delete_all(&self) -> worker::Result<()> {
        self.0.delete_all().await
    }

    async fn set_alarm(&self, at_ms: u64) -> bool {
        // Times stay below 2^53 (the clock), so the cast is exact.
        self.0.set_alarm(at_ms as i64).await.is_ok()
    }
}

fn log_unreadable(object: &str, why: &str) {
    worker::console_error!(
        "{}",
        event_line(
            "object_state_unreadable",
            &[("object", object), ("error", why)]
        )
    );
}

/// The object's answer when its state cannot be read: `503`, nothing stored.
fn unavailable(object: &str, why: &str) -> worker::Result<Response> {
    log_unreadable(object, why);
    Response::error("object state unreadable", 503)
}

/// Sends one call to the object named `name` under `binding` and reads its JSON answer.
/// `what` names the object in errors ("rate limiter", "upstream state").
pub async fn call<C: Serialize, T: DeserializeOwned>(
    env: &Env,
    binding: &str,
    name: &str,
    call: &C,
    what: &str,
) -> Result<T, ProxyError> {
    let body =
        serde_json::to_string(call).map_err(|e| call_failed(what, "call not encodable", &e))?;
    let text = send_call(env, binding, name, body, what).await?;
    serde_json::from_str::<T>(&text).map_err(|e| call_failed(what, "answer unreadable", &e))
}

/// An object call that failed: the answer names what failed; the cause (the runtime's words)
/// goes to the log line.
fn call_failed(what: &str, why: &str, cause: &dyn std::fmt::Display) -> ProxyError {
    worker::console_error!(
        "{}",
        event_line(
            "object_call_failed",
            &[
                ("object", what),
                ("error", why),
                ("cause", &cause.to_string())
            ]
        )
    );
    ProxyError::Unavailable(format!("{what} {why}"))
}

/// The part of [`call`] that does not depend on the call's types, once in the module rather
/// than once per kind of call: sends the encoded call and answers the object's text.
async fn send_call(
    env: &Env,
    binding: &str,
    name: &str,
    body: String,
    what: &str,
) -> Result<String, ProxyError> {
    let unavailable = |why: &str, cause: &dyn std::fmt::Display| call_failed(what, why, cause);
    let namespace = env
        .durable_object(binding)
        .map_err(|e| unavailable("not bound", &e))?;
    let stub = namespace
        .id_from_name(name)
        .and_then(|id| id.get_stub())
        .map_err(|e| unavailable("not reachable", &e))?;
    let answer = async {
        let send = || async {
            // Built with the runtime's own types: worker's `RequestInit` conversion carries
            // every `cf` option (image resizing and more) into the module for a plain POST.
            let init = web_sys::RequestInit::new();
            init.set_method("POST");
            init.set_body(&JsValue::from_str(&body));
            let request = web_sys::Request::new_with_str_and_init("https://object/call", &init)
                .map_err(worker::Error::from)?;
            stub.fetch_with_request(Request::from(request)).await
        };
        let response = durable::send_with_retry(send, |e: &worker::Error| {
            durable::runtime_marks(&e.to_js_value())
        })
        .await
        .map_err(|e| unavailable("did not answer", &e))?;
        if response.status_code() != 200 {
            let status = response.status_code();
            return Err(unavailable(
                &format!("refused the call ({status})"),
                &status,
            ));
        }
        answer_text(&response)
            .await
            .ok_or_else(|| unavailable("answer unreadable", &"no text"))
    };
    // A call the runtime lost must not hold the request forever.
    let timer = Timer::after_ms(OBJECT_CALL_TIMEOUT_MS);
    let outcome = match select(pin!(answer), pin!(timer)).await {
        Either::Left((answer, _)) => answer,
        Either::Right(((), _)) => Err(unavailable(
            "did not answer in time",
            &OBJECT_CALL_TIMEOUT_MS,
        )),
    };
    outcome
}

/// An object's answer as text, read by the runtime in one call (reading it chunk by chunk
/// through a Rust stream cost more than the object's decision).
async fn answer_text(response: &Response) -> Option<String> {
    let stream = match response.body() {
        worker::ResponseBody::Stream(stream) => stream,
        worker::ResponseBody::Body(bytes) => return String::from_utf8(bytes.clone()).ok(),
        worker::ResponseBody::Empty => return Some(String::new()),
    };
    let whole = worker::web_sys::Response::new_with_opt_readable_stream(Some(stream)).ok()?;
    let text = worker::wasm_bindgen_futures::JsFuture::from(whole.text().ok()?)
        .await
        .ok()?;
    text.as_string()
}

/// Reads a call sent with [`call`]; `None` when it is not one.
async fn read_call<C: DeserializeOwned>(req: &mut Request) -> Option<C> {
    let text = req.text().await.ok()?;
    serde_json::from_str(&text).ok()
}
