//! breakwater: an edge proxy for the Anthropic Messages API.
//!
//! The crate is a pure core (configuration, errors, authentication, routing, body and stream
//! inspection, retries) that builds and tests on the host, and a thin WebAssembly shell
//! (`shell`) that is the only code touching the Workers runtime.
#![forbid(unsafe_code)]
// Tests may unwrap and index: a failing test should stop loudly.
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod config;
pub mod durable;
pub mod error;
pub mod identity;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod request;
pub mod retry;
pub mod sorted_map;
pub mod status;
pub mod stream;
pub mod upstream;

#[cfg(test)]
mod testing;

#[cfg(target_arch = "wasm32")]
mod shell;
#[cfg(target_arch = "wasm32")]
pub use shell::keep_alive;
