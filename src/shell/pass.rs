//! Handing an answer's body to the runtime: the bytes go from the upstream's reader to the
//! client in JavaScript, and cross into Rust only when a [`Watcher`] must read them.
//!
//! Re-streaming every chunk through Rust cost a copy in, a copy out, a future and a timer per
//! chunk, which held a stream to a few percent of what the runtime pipes. Here a small
//! JavaScript source reads the upstream, enqueues each chunk as it is, and keeps the idle
//! guard with one timer per stream (re-armed only when it fires early). A watched body's
//! chunks are copied once into a reused Wasm buffer and scanned there. How the stream ended
//! is told to Rust once: complete, the connection lost, silent for the idle time (both end
//! an SSE stream with the incomplete event), or cancelled by the client.
//!
//! Everything that can fail runs in JavaScript and is caught there: nothing here throws into
//! WebAssembly, and a cancel that comes from outside any request only records the report,
//! waking nobody (see [`crate::stream::tap`]).

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Uint8Array;
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::*;
use worker::web_sys::ReadableStream;

use super::reader::Reader;
use crate::stream::tap::{Progress, Report, Watcher};

#[wasm_bindgen(inline_js = r#"
export function pass_on(head, reader, idleMs, sse, silent, lost, watch, end) {
  let timer = 0;
  let waitingSince = 0;
  let wake = null;
  let ended = false;
  const stopTimer = () => {
    if (timer !== 0) {
      try { clearTimeout(timer); } catch (_) {}
      timer = 0;
    }
  };
  const check = () => {
    timer = 0;
    if (ended || wake === null) return;
    const quiet = Date.now() - waitingSince;
    if (quiet >= idleMs) wake();
    else timer = setTimeout(check, idleMs - quiet);
  };
  const finish = (controller, how, error) => {
    ended = true;
    stopTimer();
    try {
      if (how === 0) controller.close();
      else if (!sse) controller.error(error);
      else {
        controller.enqueue(how === 1 ? lost : silent);
        controller.close();
      }
    } catch (_) {}
    if (how === 2) {
      try { reader.cancel().catch(() => {}); } catch (_) {}
    }
    if (end) end(how);
  };
  return new ReadableStream({
    start(controller) {
      if (head !== undefined && head.byteLength > 0) controller.enqueue(head);
    },
    pull(controller) {
      if (ended) return;
      return new Promise((resolve) => {
        let settled = false;
        const settle = () => { settled = true; wake = null; };
        wake = () => {
          if (settled) return;
          settle();
          finish(controller, 2);
          resolve();
        };
        waitingSince = Date.now();
        if (idleMs > 0 && timer === 0) timer = setTimeout(check, idleMs);
        let read;
        try { read = reader.read(); } catch (e) { read = Promise.reject(e); }
        read.then((r) => {
          if (settled) return;
          settle();
          if (r.done) finish(controller, 0);
          else {
            if (watch) watch(r.value);
            controller.enqueue(r.value);
          }
          resolve();
        }, (e) => {
          if (settled) return;
          settle();
          finish(controller, 1, e);
          resolve();
        });
      });
    },
    cancel(reason) {
      if (ended) return;
      ended = true;
      wake = null;
      stopTimer();
      if (end) end(3);
      try { return reader.cancel(reason).catch(() => {}); } catch (_) {}
    },
  });
}
"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    #[allow(clippy::too_many_arguments)]
    fn pass_on(
        head: &JsValue,
        reader: &Reader,
        idle_ms: f64,
        sse: bool,
        silent: &Uint8Array,
        lost: &Uint8Array,
        watch: &JsValue,
        end: &JsValue,
    ) -> Result<ReadableStream, JsValue>;
}

/// How the JavaScript side says a stream ended.
const COMPLETE: u32 = 0;
const LOST: u32 = 1;
const SILENT: u32 = 2;

/// What the client is handed: `head` (bytes already read, if any), then the rest of `reader`.
pub struct Passed {
    pub stream: ReadableStream,
    pub seen: Option<(Report, Progress)>,
}

/// The body's rest, piped by the runtime. `idle_ms` > 0 guards against an upstream that goes
/// silent; `sse` ends a cut stream with `silent` / `lost` events (a JSON body is errored
/// instead); `watch` reads the chunks for usage (SSE or JSON as `sse` says).
pub fn pass(
    head: Option<&[u8]>,
    reader: &Reader,
    idle_ms: u64,
    sse: bool,
    silent: &[u8],
    lost: &[u8],
    watch: bool,
) -> Option<Passed> {
    let head_bytes = head.filter(|h| !h.is_empty());
    let head: JsValue = head_bytes.map_or(JsValue::UNDEFINED, |h| Uint8Array::from(h).into());
    let (watch_fn, end_fn, seen) = if watch {
        let (mut watcher, report, progress) = Watcher::new(sse);
        if let Some(head) = head_bytes {
            watcher.observe(head);
        }
        let watcher = Rc::new(RefCell::new(watcher));
        let on_chunk = {
            let watcher = watcher.clone();
            let mut buffer: Vec<u8> = Vec::new();
            Closure::<dyn FnMut(Uint8Array)>::new(move |chunk: Uint8Array| {
                let length = chunk.length() as usize;
                buffer.clear();
                buffer.resize(length, 0);
                chunk.copy_to(&mut buffer);
                if let Ok(mut watcher) = watcher.try_borrow_mut() {
                    watcher.observe(&buffer);
                }
                // A large chunk's buffer is not kept for the rest of the stream.
                if buffer.capacity() > 1 << 16 {
                    buffer = Vec::new();
                }
            })
            .into_js_value()
        };
        let on_end = Closure::<dyn FnMut(u32)>::new(move |how: u32| {
            if let Ok(mut watcher) = watcher.try_borrow_mut() {
                match how {
                    COMPLETE => watcher.finish(true, true),
                    LOST | SILENT => watcher.finish(false, true),
                    // Cancelled: perhaps from outside any request, so nobody is woken.
                    _ => watcher.abandon(),
                }
            }
        })
        .into_js_value();
        (on_chunk, on_end, Some((report, progress)))
    } else {
        (JsValue::UNDEFINED, JsValue::UNDEFINED, None)
    };
    let stream = pass_on(
        &head,
        reader,
        idle_ms as f64,
        sse,
        &Uint8Array::from(silent),
        &Uint8Array::from(lost),
        &watch_fn,
        &end_fn,
    )
    .ok()?;
    Some(Passed { stream, seen })
}
