//! breakwater: an edge proxy for the Anthropic Messages API.
//!
//! The crate is a pure core (configuration, errors, authentication, routing, body and stream
//! inspection, retries) that builds and tests on the host, and a thin WebAssembly shell
//! (`shell`) that is the only code touching the Workers runtime.
#![forbid(unsafe_code)]
// Tests may unwrap and index: a failing test should stop loudly.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing))]

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod headers;
pub mod limits;
pub mod outage;
pub mod retry;
pub mod route;
pub mod secret;
pub mod sse;
pub mod tap;
pub mod token;

#[cfg(target_arch = "wasm32")]
mod shell;
