//! Reading an upstream body as a stream of byte chunks, in a way that is safe to drop anywhere.
//!
//! The runtime may drop an abandoned answer's body (a client that went away) when it collects
//! it, outside any request. `worker::ByteStream` releases its reader's lock on drop, and the
//! runtime refuses that call there; an exception the WebAssembly side does not catch is a
//! critical error, which restarts the instance and strands every request in flight in it (the
//! soak run found this). [`BodyReader`] cancels its reader on drop, through a call that
//! catches, so a refused cancel is simply ignored: the runtime frees the body with the request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use js_sys::{Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use worker::wasm_bindgen_futures::JsFuture;
use worker::web_sys::{ReadableStream, ReadableStreamDefaultReader};

#[wasm_bindgen]
extern "C" {
    /// A `ReadableStreamDefaultReader`, with the calls this module makes, each one catching.
    #[wasm_bindgen(js_name = ReadableStreamDefaultReader)]
    pub type Reader;

    #[wasm_bindgen(method, catch)]
    fn read(this: &Reader) -> Result<js_sys::Promise, JsValue>;

    #[wasm_bindgen(method, catch)]
    fn cancel(this: &Reader) -> Result<js_sys::Promise, JsValue>;
}

/// An upstream body, chunk by chunk.
pub struct BodyReader {
    stream: ReadableStream,
    reader: Option<Reader>,
    pending: Option<JsFuture>,
}

impl BodyReader {
    /// Locks `stream` for reading; `None` when it cannot be read (already locked).
    pub fn new(stream: &ReadableStream) -> Option<BodyReader> {
        let reader = stream
            .get_reader()
            .dyn_into::<ReadableStreamDefaultReader>()
            .ok()?;
        Some(BodyReader {
            stream: stream.clone(),
            reader: Some(reader.unchecked_into()),
            pending: None,
        })
    }
}

/// A body read whole in one call (`arrayBuffer()`); `None` when it fails before its end.
pub async fn whole(array_buffer: js_sys::Promise) -> Option<js_sys::ArrayBuffer> {
    JsFuture::from(array_buffer).await.ok()?.dyn_into().ok()
}

impl BodyReader {
    /// The body and its reader, for the runtime to read the rest (see `shell::pass`); `None`
    /// while a read is still pending or once the body has ended.
    pub fn into_parts(mut self) -> Option<(ReadableStream, Reader)> {
        if self.pending.is_some() {
            return None;
        }
        let reader = self.reader.take()?;
        Some((self.stream.clone(), reader))
    }
}

/// The runtime's words for a JavaScript error, for a log line: its `message` (or the value
/// itself when it is a string), at most 200 characters. These are the runtime's messages
/// about what failed (a stream, a buffer), never the content of a request or a credential.
pub fn cause_of(value: &JsValue) -> String {
    let message = if value.is_object() {
        Reflect::get(value, &JsValue::from_str("message"))
            .ok()
            .and_then(|m| m.as_string())
    } else {
        value.as_string()
    };
    message
        .unwrap_or_else(|| "no message".to_string())
        .chars()
        .take(200)
        .collect()
}

fn failed(why: &str, cause: &JsValue) -> worker::Error {
    worker::Error::RustError(format!("{why}: {}", cause_of(cause)))
}

impl BodyReader {
    /// The next chunk as the runtime made it, never copied into Wasm memory.
    pub async fn next_chunk(&mut self) -> Option<worker::Result<Uint8Array>> {
        futures_util::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<worker::Result<Uint8Array>>> {
        let this = self;
        let Some(reader) = this.reader.as_ref() else {
            return Poll::Ready(None);
        };
        if this.pending.is_none() {
            match reader.read() {
                Ok(promise) => this.pending = Some(JsFuture::from(promise)),
                Err(cause) => {
                    this.reader = None;
                    return Poll::Ready(Some(Err(failed("the body could not be read", &cause))));
                }
            }
        }
        let Some(pending) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let result = match Pin::new(pending).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        this.pending = None;
        let chunk = result
            .map_err(|cause| failed("the body failed", &cause))
            .and_then(|r| {
                let done = Reflect::get(&r, &JsValue::from_str("done"))
                    .map_err(|cause| failed("unreadable chunk", &cause))?;
                if done.is_truthy() {
                    return Ok(None);
                }
                let value = Reflect::get(&r, &JsValue::from_str("value"))
                    .map_err(|cause| failed("unreadable chunk", &cause))?;
                let bytes = value
                    .dyn_into::<Uint8Array>()
                    .map_err(|value| failed("a chunk that is not bytes", &value.js_typeof()))?;
                Ok(Some(bytes))
            });
        match chunk {
            Ok(Some(bytes)) => Poll::Ready(Some(Ok(bytes))),
            Ok(None) => {
                this.reader = None;
                Poll::Ready(None)
            }
            Err(e) => {
                this.reader = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }
}

impl Stream for BodyReader {
    type Item = worker::Result<Vec<u8>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_chunk(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(|bytes| bytes.to_vec())))
    }
}

impl Drop for BodyReader {
    fn drop(&mut self) {
        // Stops the upstream body the client no longer reads; refused outside a request.
        if let Some(reader) = self.reader.take() {
            let _ = reader.cancel();
        }
    }
}
