//! What arrives: the route, the headers that cross the proxy, the browser's origin, and the
//! facts read from the body, all decided from the request alone before anything goes
//! upstream.

pub mod body;
pub mod cors;
pub mod estimate;
pub mod headers;
pub mod results_url;
pub mod route;
pub mod upload;

use crate::error::ProxyError;

/// A request body's declared `content-length` checked against `MAX_BODY_BYTES` before a byte
/// is read: `Ok(Some(n))` to read exactly that in one call, `Ok(None)` when no usable length
/// is declared (read in chunks, counting), `Err` when it is over the limit.
pub fn declared_body_length(
    content_length: Option<&str>,
    limit: u64,
) -> Result<Option<u64>, ProxyError> {
    match content_length.map(|l| l.trim().parse::<u64>()) {
        Some(Ok(n)) if n > limit => Err(ProxyError::TooLarge { limit }),
        Some(Ok(n)) => Ok(Some(n)),
        _ => Ok(None),
    }
}

/// Whether a body read in chunks has gone over the limit with `next` more bytes.
#[must_use]
pub fn over_limit(read: usize, next: usize, limit: u64) -> bool {
    (read as u64).saturating_add(next as u64) > limit
}

/// How long a request refused for a full isolate is told to wait: bodies pass through in
/// about the time it takes to upload them to the upstream.
pub const BUSY_RETRY_AFTER_MS: u64 = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths_are_checked_before_reading() {
        assert_eq!(declared_body_length(Some("10"), 10), Ok(Some(10)));
        assert_eq!(declared_body_length(Some(" 0 "), 10), Ok(Some(0)));
        assert_eq!(
            declared_body_length(Some("11"), 10),
            Err(ProxyError::TooLarge { limit: 10 })
        );
        assert_eq!(
            declared_body_length(Some("99999999999999999999999"), 10),
            Ok(None)
        );
        assert_eq!(declared_body_length(Some("ten"), 10), Ok(None));
        assert_eq!(declared_body_length(None, 10), Ok(None));
        assert!(!over_limit(5, 5, 10));
        assert!(over_limit(5, 6, 10));
        assert!(over_limit(usize::MAX, usize::MAX, u64::MAX - 1));
    }
}
