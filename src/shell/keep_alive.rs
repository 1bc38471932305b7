//! Work that outlives the answer (settlements, refills, returns, metrics) is handed to the
//! runtime with `ExecutionContext.waitUntil`. `worker::Context::wait_until` unwraps the
//! binding's result inside the crate, so a throw there (a context that no longer takes work)
//! would be a panic, which aborts the instance and every request in it. Here the binding is
//! called directly and a throw is a logged error: the work still runs while the isolate lives
//! (the promise is already under way), only without the runtime's promise to wait for it.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use worker::wasm_bindgen::{JsCast, JsValue};
use worker::Context;

/// Longest part of the runtime's error message that goes into the log line.
const MAX_LOGGED_ERROR_CHARS: usize = 200;

/// Runs `work` after the answer, under the request's `waitUntil`; whether the runtime took it
/// (when it did not, the error is logged and `work` runs on unguarded).
pub fn wait_until(ctx: &Context, work: impl Future<Output = ()> + 'static) -> bool {
    let promise = js_sys::futures::future_to_promise(AssertUnwindSafe(async move {
        work.await;
        Ok(JsValue::UNDEFINED)
    }));
    match ctx.as_ref().wait_until(&promise) {
        Ok(()) => true,
        Err(thrown) => {
            worker::console_error!(
                "{}",
                crate::metrics::event_line("wait_until_failed", &[("error", &message_of(&thrown))])
            );
            false
        }
    }
}

/// The runtime's "after the answer", as the request's port: its `waitUntil`.
impl crate::pipeline::AfterAnswer for Context {
    fn spawn(&self, work: impl Future<Output = ()> + 'static) {
        wait_until(self, work);
    }
}

/// What a throw says: an `Error`'s message, a thrown string, or its type.
fn message_of(thrown: &JsValue) -> String {
    let message = match thrown.dyn_ref::<js_sys::Error>() {
        Some(error) => String::from(error.message()),
        None => thrown
            .as_string()
            .unwrap_or_else(|| "a value that is not an Error".to_string()),
    };
    message.chars().take(MAX_LOGGED_ERROR_CHARS).collect()
}
