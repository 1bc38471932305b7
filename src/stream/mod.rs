//! What comes back: Server-Sent Events and JSON answers read as they pass through, for the
//! first event that decides a retry and the usage that settles the caller's limits.

pub mod sse;
pub mod tap;
