//! `breakwater-sim`: a simulated Anthropic Messages API upstream.
//!
//! It answers `/v1/messages` (JSON and SSE), `/v1/messages/count_tokens`,
//! `/v1/models`, the OpenAI-compatible `/v1/chat/completions`, the Files API and
//! Message Batches the way the real API does, and lets a control API under
//! `/_sim/` script faults (error statuses, delays, hangs, TCP resets,
//! mid-stream errors, stalls, malformed bodies) and global modes (seeded
//! overload, finite capacity with outages, per-minute limits, one key's
//! Anthropic token buckets). It is the test double for end-to-end tests, the
//! upstream for local demos and the upstream for benchmarks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let (addr, handle) = breakwater_sim::serve(breakwater_sim::Config::default()).await?;
//! println!("listening on http://{addr}");
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

pub mod api;
pub mod capacity;
pub mod chat;
pub mod conn;
pub mod control;
pub mod keylimits;
pub mod log;
pub mod respond;
pub mod script;
pub mod sse;
pub mod state;
pub mod store;
pub mod text;
pub mod tokens;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::conn::{ConnCtl, ResetOnDrop};
use crate::respond::Body;
use crate::state::State;

/// How the simulator listens and authenticates.
#[derive(Clone, Debug)]
pub struct Config {
    /// Interface to bind (default `127.0.0.1`).
    pub host: String,
    /// Port to bind; 0 picks a free one.
    pub port: u16,
    /// Seed for generated text, message ids and the default overload seed.
    pub seed: u64,
    /// When set, `/v1/*` requires exactly this `x-api-key`; otherwise any
    /// non-empty key is accepted.
    pub api_key: Option<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            host: "127.0.0.1".into(),
            port: 0,
            seed: 0,
            api_key: None,
        }
    }
}

/// A running simulator. Dropping it stops the server too.
pub struct ServerHandle {
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    state: Arc<State>,
}

impl ServerHandle {
    /// Stops accepting, closes every connection and waits for the accept loop.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (it runs until shut down).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Connections currently open (useful to check that nothing leaks).
    pub fn connections_open(&self) -> u64 {
        self.state.connections_open.load(Ordering::Relaxed)
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Binds and starts the simulator in the current Tokio runtime.
pub async fn serve(config: Config) -> io::Result<(SocketAddr, ServerHandle)> {
    // Every answer counts tokens: without the tokenizer the simulator does not start.
    tokens::tokenizer().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))?;
    let listener = bind(&config.host, config.port).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(State::new(&config));
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(accept_loop(listener, state.clone(), rx));
    Ok((
        addr,
        ServerHandle {
            shutdown: tx,
            task: Some(task),
            state,
        },
    ))
}

async fn bind(host: &str, port: u16) -> io::Result<TcpListener> {
    let mut last_err = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => match socket.listen(4096) {
                Ok(listener) => return Ok(listener),
                Err(e) => last_err = Some(e),
            },
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    }))
}

async fn shutdown_signal(rx: &mut watch::Receiver<bool>) {
    // A dropped sender counts as shutdown too.
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut rx: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, state.clone(), rx.clone()));
                }
                // Out of file descriptors or a connection aborted in the
                // backlog: back off briefly and keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            _ = shutdown_signal(&mut rx) => break,
        }
    }
}

/// Counts an open connection for as long as it lives.
struct ConnGuard(Arc<State>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>, mut rx: watch::Receiver<bool>) {
    state.connections_open.fetch_add(1, Ordering::Relaxed);
    state.connections_total.fetch_add(1, Ordering::Relaxed);
    let _guard = ConnGuard(state.clone());
    let _ = stream.set_nodelay(true);
    let ctl = Arc::new(ConnCtl::default());
    let io = TokioIo::new(ResetOnDrop::new(stream, ctl.clone()));
    let svc_ctl = ctl.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        let ctl = svc_ctl.clone();
        async move { Ok::<_, Infallible>(route(state, ctl, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    // Whichever finishes first wins; dropping `conn` closes the socket (with
    // RST when a handler asked for a reset).
    tokio::select! {
        _ = conn => {}
        _ = ctl.reset_requested() => {}
        _ = shutdown_signal(&mut rx) => {}
    }
}

async fn route(state: Arc<State>, ctl: Arc<ConnCtl>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with("/_sim/") {
        control::handle(state, req).await
    } else if path.starts_with("/v1/") {
        api::handle(state, ctl, req).await
    } else {
        api::not_found(&state, path)
    }
}
