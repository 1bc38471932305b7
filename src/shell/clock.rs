//! The runtime's clock and randomness: a leaf every shell module may use (the timer, the
//! metrics, the answers, the objects) without reaching back into the rest of the shell.

/// Milliseconds since the Unix epoch. In Workers the clock advances on I/O, which is what the
/// budget arithmetic needs: time spent waiting on the upstream or sleeping.
pub fn now_ms() -> u64 {
    // The static `Date.now()`: no `Date` object is made for it.
    js_sys::Date::now() as u64
}

/// A random 64-bit seed from the platform's CSPRNG (for backoff jitter).
pub fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes())
}

/// `N` bytes from the platform's CSPRNG, in one call.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: fall back to the clock so jitter and ids still differ between
        // requests.
        let clock = now_ms().wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
        for (byte, from) in bytes.iter_mut().zip(clock.iter().cycle()) {
            *byte = *from;
        }
    }
    bytes
}

/// A fresh request id for answers the proxy makes itself, shaped like the API's own.
pub fn new_request_id() -> String {
    let mut id = String::with_capacity(31);
    id.push_str("req_bw_");
    // Two lowercase hex digits a byte, without the formatter (one call a byte).
    for byte in random_bytes::<12>() {
        for nibble in [byte >> 4, byte & 0x0f] {
            id.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    id
}
