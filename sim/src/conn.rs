//! Per-connection plumbing that lets a request handler break its own TCP
//! connection: the handler flags a reset, the connection task drops the
//! connection, and the socket wrapper sets `SO_LINGER` to zero as it is
//! dropped so the kernel sends RST instead of a clean FIN.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Shared between a connection task and the handlers of its requests.
#[derive(Default)]
pub struct ConnCtl {
    reset: AtomicBool,
    notify: Notify,
}

impl ConnCtl {
    /// Asks the connection task to abort the connection with RST.
    pub fn trigger_reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// Resolves once a reset was requested.
    pub async fn reset_requested(&self) {
        self.notify.notified().await;
    }
}

/// A `TcpStream` that closes with RST when dropped after `trigger_reset`.
pub struct ResetOnDrop {
    inner: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl ResetOnDrop {
    pub fn new(inner: TcpStream, ctl: Arc<ConnCtl>) -> ResetOnDrop {
        ResetOnDrop { inner, ctl }
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.ctl.reset.load(Ordering::SeqCst) {
            let _ = SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How long a handler waits after its last write before resetting, so the
/// bytes it already wrote leave the send buffer (RST discards unsent data).
pub const FLUSH_GRACE: Duration = Duration::from_millis(30);

/// Waits for the written bytes to drain, requests a reset, and never returns
/// (the connection task drops everything, including this future).
pub async fn reset_and_hang(ctl: &ConnCtl) -> std::convert::Infallible {
    tokio::time::sleep(FLUSH_GRACE).await;
    ctl.trigger_reset();
    std::future::pending().await
}
