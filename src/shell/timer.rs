//! A timer that is safe whichever request's code sets or drops it.
//!
//! The Rust futures of all requests in an isolate share one executor, so a request's future
//! is sometimes polled while another request's code runs, and workerd ties a `setTimeout` to
//! the request that was running when it was set, and refuses one set outside any request.
//! `worker::Delay` unwraps that refusal (a panic), and on drop it clears its timeout and frees
//! its callback, though a timeout set under another request is out of the drop's reach and
//! its callback may still run. A panic or an uncaught exception there is a critical error: the
//! WebAssembly instance restarts, and every request in flight in it never ends (the soak run
//! found such requests).
//!
//! [`Timer`] ignores a refused timeout, never clears one and never frees the callback early:
//! the callback is owned by JavaScript (freed after its one call, or when collected) and holds
//! only a weak reference to the timer, so a timer that is gone, or a callback that never
//! comes, is harmless. A poll also completes the timer once its deadline has passed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use wasm_bindgen::closure::Closure;
use wasm_bindgen::JsCast;

use super::runtime::now_ms;

#[derive(Default)]
struct Shared {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// Completes once `ms` have passed on the runtime's clock.
pub struct Timer {
    ms: u64,
    deadline_ms: u64,
    /// Set once the timeout is set (at the first poll).
    shared: Option<Rc<Shared>>,
}

impl Timer {
    pub fn after_ms(ms: u64) -> Timer {
        Timer {
            ms,
            deadline_ms: now_ms().saturating_add(ms),
            shared: None,
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = match &self.shared {
            Some(shared) => shared.clone(),
            None => {
                let shared = Rc::new(Shared::default());
                set_timeout(Rc::downgrade(&shared), self.ms);
                self.shared = Some(shared.clone());
                shared
            }
        };
        if shared.fired.get() || now_ms() >= self.deadline_ms {
            return Poll::Ready(());
        }
        *shared.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Sets the timeout whose callback wakes `timer`, if it still exists when the callback runs.
fn set_timeout(timer: Weak<Shared>, ms: u64) {
    let callback = Closure::once_into_js(move || {
        if let Some(timer) = timer.upgrade() {
            timer.fired.set(true);
            if let Some(waker) = timer.waker.borrow_mut().take() {
                waker.wake();
            }
        }
    });
    let global: worker::web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    // Timeouts beyond i32 are days away; no timer here waits that long.
    let ms = i32::try_from(ms).unwrap_or(i32::MAX);
    let _ =
        global.set_timeout_with_callback_and_timeout_and_arguments_0(callback.unchecked_ref(), ms);
}
