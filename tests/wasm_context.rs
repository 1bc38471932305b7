//! Work handed to the runtime after the answer (`ExecutionContext.waitUntil`): a context that
//! throws is a logged error, not a panic, and the work runs all the same. Runs in Node under
//! `wasm-bindgen-test-runner` (`cargo test --target wasm32-unknown-unknown --test wasm_context`).
#![cfg(target_arch = "wasm32")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::Cell;
use std::rc::Rc;

use breakwater::keep_alive::wait_until;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_test::wasm_bindgen_test;
use worker::worker_sys::Context as JsContext;

/// A context whose `waitUntil(promise)` runs `body`.
fn context_whose_wait_until(body: &str) -> worker::Context {
    let context = js_sys::Object::new();
    let wait_until = js_sys::Function::new_with_args("promise", body);
    js_sys::Reflect::set(&context, &"waitUntil".into(), &wait_until).unwrap();
    worker::Context::new(context.unchecked_into::<JsContext>())
}

/// Lets the microtasks queued so far run.
async fn settle() {
    let resolved = js_sys::Promise::resolve(&JsValue::UNDEFINED);
    js_sys::futures::JsFuture::from(resolved).await.unwrap();
}

#[wasm_bindgen_test]
async fn a_throwing_wait_until_is_logged_and_the_work_still_runs() {
    let ctx = context_whose_wait_until("throw new Error('this context takes no more work')");
    let ran = Rc::new(Cell::new(false));
    let flag = ran.clone();
    assert!(!wait_until(&ctx, async move { flag.set(true) }));
    settle().await;
    settle().await;
    assert!(ran.get());
}

#[wasm_bindgen_test]
async fn a_working_wait_until_is_handed_the_work() {
    let ctx = context_whose_wait_until("globalThis.handedOver = promise;");
    let ran = Rc::new(Cell::new(false));
    let flag = ran.clone();
    assert!(wait_until(&ctx, async move { flag.set(true) }));
    let handed = js_sys::Reflect::get(&js_sys::global(), &"handedOver".into()).unwrap();
    let handed: js_sys::Promise = handed.dyn_into().unwrap();
    js_sys::futures::JsFuture::from(handed).await.unwrap();
    assert!(ran.get());
}
