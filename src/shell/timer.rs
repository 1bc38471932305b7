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
//! [`Timer`] ignores a refused timeout and never clears one. Every timeout calls the same
//! callback, made once per isolate and never freed, with the timer's number; a timer enters
//! itself in a table under that number and leaves it when dropped, so a callback for a timer
//! that is gone finds nothing and does nothing, and a timeout that never comes leaves
//! nothing behind. A poll also completes the timer once its deadline has passed.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};

use super::clock::now_ms;
use crate::sorted_map::SortedMap;

#[derive(Default)]
struct Shared {
    fired: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

thread_local! {
    /// The timers waiting for their timeout, by number.
    static WAITING: RefCell<SortedMap<u32, Weak<Shared>>> = const { RefCell::new(SortedMap::new()) };
    static NEXT: Cell<u32> = const { Cell::new(0) };
    /// The one callback of every timeout: told the timer's number.
    static CALLBACK: Closure<dyn FnMut(JsValue)> = Closure::new(fire);
}

/// Completes once `ms` have passed on the runtime's clock.
pub struct Timer {
    ms: u64,
    deadline_ms: u64,
    /// Set once the timeout is set (at the first poll).
    set: Option<(u32, Rc<Shared>)>,
}

impl Timer {
    pub fn after_ms(ms: u64) -> Timer {
        Timer {
            ms,
            deadline_ms: now_ms().saturating_add(ms),
            set: None,
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = match &self.set {
            Some((_, shared)) => shared.clone(),
            None => {
                let shared = Rc::new(Shared::default());
                let number = set_timeout(Rc::downgrade(&shared), self.ms);
                self.set = Some((number, shared.clone()));
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

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((number, _)) = self.set.take() {
            // `try_with`: the table may be gone already when the isolate shuts down.
            let _ = WAITING.try_with(|w| w.borrow_mut().remove(&number));
        }
    }
}

/// Enters `timer` in the table and sets its timeout; returns its number.
fn set_timeout(timer: Weak<Shared>, ms: u64) -> u32 {
    let number = NEXT.with(|n| {
        let number = n.get();
        n.set(number.wrapping_add(1));
        number
    });
    WAITING.with(|w| w.borrow_mut().insert(number, timer));
    let global: worker::web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    // Timeouts beyond i32 are days away; no timer here waits that long.
    let ms = i32::try_from(ms).unwrap_or(i32::MAX);
    CALLBACK.with(|callback| {
        let _ = global.set_timeout_with_callback_and_timeout_and_arguments_1(
            callback.as_ref().unchecked_ref(),
            ms,
            &JsValue::from(number),
        );
    });
    number
}

/// A timeout came: wakes its timer, if it is still there.
fn fire(number: JsValue) {
    let Some(number) = number.as_f64().and_then(|n| u32::try_from(n as u64).ok()) else {
        return;
    };
    let Some(timer) = WAITING.with(|w| w.borrow_mut().remove(&number)) else {
        return;
    };
    if let Some(timer) = timer.upgrade() {
        timer.fired.set(true);
        let waker = timer.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}
