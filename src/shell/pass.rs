//! Handing an answer's body to the runtime: the bytes go from the upstream's reader to the
//! client in JavaScript, and cross into Rust only when a [`Watcher`] must read them.
//!
//! Re-streaming every chunk through Rust cost a copy in, a copy out, a future and a timer per
//! chunk, which held a stream to a few percent of what the runtime pipes. Here a small
//! JavaScript loop reads the upstream and writes each chunk into an `IdentityTransformStream`
//! whose readable side is the client's body, and keeps the idle guard with one timer per
//! stream (re-armed only when it fires early). The upstream is read with a BYOB reader into
//! one 64 KiB buffer, reused once the client's side has taken a chunk: a default reader
//! hands the runtime's bytes over in 4 KiB pieces, which cost a JavaScript turn each, so a
//! read as large as what has arrived halves the turns, and no buffer is allocated per chunk.
//! A watched body's chunks are copied once into a reused Wasm buffer and scanned there. How
//! the stream ended is told to Rust once: complete, the connection lost, silent for the idle
//! time (both end an SSE stream with the incomplete event), or cancelled by the client.
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
const CHUNK = 65536;
export function pass_on(head, stream, locked, length, idleMs, sse, silent, lost, watch, end) {
  let source = null;
  let byob = false;
  if (locked) {
    try { locked.releaseLock(); } catch (_) { source = locked; }
  }
  if (source === null) {
    try { source = stream.getReader({ mode: 'byob' }); byob = true; }
    catch (_) { source = stream.getReader(); }
  }
  let pipe = null;
  // A known length is told to the client up front; a body cut short then reaches it as a
  // broken connection, not as a clean end.
  if (length !== undefined) {
    try { pipe = new FixedLengthStream(length); } catch (_) {}
  }
  if (pipe === null) pipe = new IdentityTransformStream();
  const writer = pipe.writable.getWriter();
  let ended = false;
  let reading = false;
  let since = 0;
  let timer = 0;
  let idled = false;
  let gone = false;
  const cancelSource = () => {
    try { source.cancel().catch(() => {}); } catch (_) {}
  };
  const stopTimer = () => {
    if (timer !== 0) {
      try { clearTimeout(timer); } catch (_) {}
      timer = 0;
    }
  };
  const arm = (ms) => {
    try { timer = setTimeout(check, ms); } catch (_) { timer = 0; }
  };
  const check = () => {
    timer = 0;
    if (ended) return;
    // Only a wait for the upstream counts: a client that reads slowly is not a silent upstream.
    const quiet = reading ? Date.now() - since : 0;
    if (quiet >= idleMs) {
      idled = true;
      cancelSource();
    } else arm(idleMs - quiet);
  };
  writer.closed.then(() => {}, () => {
    if (ended) return;
    gone = true;
    cancelSource();
  });
  const finish = (how, error) => {
    ended = true;
    stopTimer();
    try {
      if (how === 3) cancelSource();
      else if (how === 0) writer.close().catch(() => {});
      else if (!sse) writer.abort(error).catch(() => {});
      else writer.write(how === 1 ? lost : silent).then(() => writer.close()).catch(() => {});
    } catch (_) {}
    if (end) {
      try { end(how); } catch (_) {}
    }
  };
  const run = async () => {
    let buffer = byob ? new ArrayBuffer(CHUNK) : null;
    if (head !== undefined && head.byteLength > 0) {
      try { await writer.write(head); } catch (_) { return finish(3); }
    }
    for (;;) {
      let read;
      reading = true;
      since = Date.now();
      if (idleMs > 0 && timer === 0) arm(idleMs);
      try {
        read = await (byob ? source.read(new Uint8Array(buffer)) : source.read());
      } catch (e) {
        reading = false;
        return finish(gone ? 3 : idled ? 2 : 1, e);
      }
      reading = false;
      if (gone) return finish(3);
      if (idled) return finish(2);
      if (read.done) return finish(0);
      const chunk = read.value;
      if (watch) {
        try { watch(chunk); } catch (_) {}
      }
      try { await writer.write(chunk); } catch (_) { return finish(3); }
      // The write resolved once the bytes were taken, so the buffer can be read into again.
      if (byob) buffer = chunk.buffer.byteLength > 0 ? chunk.buffer : new ArrayBuffer(CHUNK);
    }
  };
  run().catch(() => {});
  return pipe.readable;
}
"#)]
extern "C" {
    #[wasm_bindgen(catch)]
    #[allow(clippy::too_many_arguments)]
    fn pass_on(
        head: &JsValue,
        stream: &ReadableStream,
        locked: &JsValue,
        length: &JsValue,
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

/// How an SSE stream the proxy has to cut ends: the event for an upstream gone silent, and
/// the one for a lost connection.
pub struct CutEvents<'a> {
    pub silent: &'a [u8],
    pub lost: &'a [u8],
}

/// How a body's rest is passed on.
pub struct Passing<'a> {
    /// More than 0: the longest the upstream may stay silent.
    pub idle_ms: u64,
    /// An SSE stream: how it ends when cut (a JSON body is errored instead).
    pub cut: Option<CutEvents<'a>>,
    /// The body's length, when the upstream told it: the client is told it too.
    pub length: Option<u64>,
    /// The chunks are read for usage (SSE or JSON as `cut` says).
    pub watch: bool,
}

/// The body's rest, piped by the runtime: `body`, locked by `locked` when its first bytes were
/// read already (the lock is handed over), after `head`.
pub fn pass(
    head: Option<&[u8]>,
    body: &ReadableStream,
    locked: Option<Reader>,
    how: Passing<'_>,
) -> Option<Passed> {
    let Passing {
        idle_ms,
        cut,
        length,
        watch,
    } = how;
    let sse = cut.is_some();
    let (silent, lost) = cut.map_or((&[][..], &[][..]), |c| (c.silent, c.lost));
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
    let locked: JsValue = locked.map_or(JsValue::UNDEFINED, Into::into);
    let stream = pass_on(
        &head,
        body,
        &locked,
        &length.map_or(JsValue::UNDEFINED, |l| JsValue::from_f64(l as f64)),
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
