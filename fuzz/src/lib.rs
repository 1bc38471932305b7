//! The checks behind the fuzz targets: each `check(data)` feeds one input to a parser of
//! untrusted input and asserts what must hold for every input (no panic, and the properties
//! named in each module). libFuzzer drives them through `fuzz_targets/`; `smoke` (a stable
//! binary, no instrumentation) replays the seeds and random inputs through the same checks.
//!
//! Inputs are laid out so that plain-text seeds are meaningful: a selector byte where one is
//! needed, then the text, with `\0` between fields.

pub mod body;
pub mod config;
pub mod credential;
pub mod request_head;
pub mod retry_after;
pub mod sse;
pub mod token;

/// One target's check: panics when a property does not hold for the input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its binary and seed directory.
pub const TARGETS: &[(&str, Check)] = &[
    ("retry_after", retry_after::check),
    ("sse", sse::check),
    ("config", config::check),
    ("token", token::check),
    ("body", body::check),
    ("credential", credential::check),
    ("request_head", request_head::check),
];

/// Splits at the first `sep`: the part before it and the rest (empty when there is none).
pub(crate) fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// Header values reach the Worker as JS strings: any Unicode, so lossy UTF-8 is faithful.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
