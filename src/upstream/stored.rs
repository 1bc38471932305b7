//! The bound on every number the key's object stores: below it, a time or a count survives
//! the trip through JSON and a JavaScript number exactly. Every part of the state caps what
//! it keeps here, so this sits beneath them all.

/// The largest time or count ever stored (a JavaScript number holds it exactly).
pub const MAX_STORED_MS: u64 = crate::durable::MAX_EXACT;

/// `t` capped at [`MAX_STORED_MS`].
pub(super) fn stored(t: u64) -> u64 {
    t.min(MAX_STORED_MS)
}
