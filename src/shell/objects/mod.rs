//! The Durable Object shell, one for both objects: load → `decide` → store, an alarm that
//! forgets an idle state, and the JSON calls in between.
//!
//! Calls are read with `serde_json` rather than `JSON.parse` (seeds are full 64-bit integers
//! that a JS number would round), and state goes through the JS boundary as one string rather
//! than a field-by-field conversion (smaller bundle, exact numbers). Trouble in storage fails
//! closed: a read that fails or a stored state that does not decode answers `503` and never
//! lets a default state overwrite the real one.

use std::cell::{Cell, RefCell};
use std::pin::pin;

use futures_util::future::{select, Either};

use serde::de::DeserializeOwned;
use serde::Serialize;
use worker::wasm_bindgen::JsValue;
use worker::{web_sys, Env, Request, Response, ResponseBuilder, State};

use super::runtime::now_ms;
use super::timer::Timer;
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

/// One object's state in memory, loaded once per object lifetime.
pub struct Object<S> {
    state: State,
    slot: RefCell<Option<S>>,
    /// An alarm is scheduled (so calls need not look for one each time).
    alarm_set: Cell<bool>,
}

impl<S: ObjectState> Object<S> {
    pub fn new(state: State) -> Self {
        Object {
            state,
            slot: RefCell::new(None),
            alarm_set: Cell::new(false),
        }
    }

    /// One call: decided synchronously on the loaded state (no other event can interleave
    /// between reading and updating), stored, answered.
    pub async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let Some(call) = read_call::<S::Call>(&mut req).await else {
            return Response::error("unreadable call", 400);
        };
        if let Err(why) = self.load().await {
            return unavailable(S::STORAGE_KEY, &why);
        }
        let mut now = now_ms();
        let kept = call.clone();
        let first = {
            let mut slot = self.slot.borrow_mut();
            let Some(state) = slot.as_mut() else {
                return unavailable(S::STORAGE_KEY, "state not loaded");
            };
            state.decide(now, call)
        };
        // A held call (a request waiting its fair turn) is answered when its turn comes: the
        // object looks again when the state says, with no call from the edge.
        let mut reply = first;
        while let Some(wake) = S::hold_until(&reply).filter(|&wake| wake > now) {
            Timer::after_ms(wake - now).await;
            now = now_ms();
            let polled = match self.slot.borrow_mut().as_mut() {
                Some(state) => state.poll(now, &kept),
                None => None,
            };
            match polled {
                Some(next) => reply = next,
                None => break,
            }
        }
        let decided = {
            let mut slot = self.slot.borrow_mut();
            let Some(state) = slot.as_mut() else {
                return unavailable(S::STORAGE_KEY, "state not loaded");
            };
            // A state that may not be stored yet stays in memory only: no write, no alarm;
            // nor after a call that only read it or whose change lasts in memory only.
            let stored =
                durable::stored_after(&*state, &kept).then(|| serde_json::to_string(&*state));
            (
                serde_json::to_string(&reply),
                stored.transpose(),
                state.check_idle_in_ms(now),
            )
        };
        let (Ok(reply), Ok(stored), check_in) = decided else {
            return unavailable(S::STORAGE_KEY, "state not encodable");
        };
        if let Some(stored) = stored {
            self.state.storage().put(S::STORAGE_KEY, stored).await?;
            if let Some(state) = self.slot.borrow_mut().as_mut() {
                state.stored();
            }
            if !self.alarm_set.get() {
                self.arm(now.saturating_add(check_in)).await;
            }
        }
        let headers = worker::Headers::new();
        let _ = headers.set("content-type", "application/json");
        Ok(ResponseBuilder::new()
            .with_headers(headers)
            .fixed(reply.into_bytes()))
    }

    /// Forgets the state once it is idle; otherwise looks again later.
    pub async fn alarm(&self) -> worker::Result<Response> {
        self.alarm_set.set(false);
        if let Err(why) = self.load().await {
            // Nothing is deleted or overwritten; the next call answers 503 the same way.
            log_unreadable(S::STORAGE_KEY, &why);
            return Response::ok("");
        }
        let now = now_ms();
        let (idle, check_in) = match self.slot.borrow().as_ref() {
            Some(state) => (state.is_idle(now), state.check_idle_in_ms(now)),
            None => (true, 0),
        };
        if idle {
            self.state.storage().delete_all().await?;
            *self.slot.borrow_mut() = None;
        } else {
            self.arm(now.saturating_add(check_in)).await;
        }
        Response::ok("")
    }

    async fn arm(&self, at_ms: u64) {
        // Times stay below 2^53 (the clock), so the cast is exact.
        if self.state.storage().set_alarm(at_ms as i64).await.is_ok() {
            self.alarm_set.set(true);
        }
    }

    /// Loads the state once per object lifetime (a fresh one when nothing is stored); it
    /// stays in memory afterwards, so every later event decides without a read.
    async fn load(&self) -> Result<(), String> {
        if self.slot.borrow().is_some() {
            return Ok(());
        }
        let stored = self
            .state
            .storage()
            .get::<String>(S::STORAGE_KEY)
            .await
            .map_err(|e| format!("storage read failed: {e}"))?;
        let state = match stored {
            Some(text) => serde_json::from_str::<S>(&text)
                .map_err(|e| format!("stored state does not decode: {e}"))?,
            None => S::default(),
        };
        let mut slot = self.slot.borrow_mut();
        // Another event may have loaded it while this one awaited storage.
        if slot.is_none() {
            *slot = Some(state);
        }
        Ok(())
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
