//! What arrives: the route, the headers that cross the proxy, the browser's origin, and the
//! facts read from the body, all decided from the request alone before anything goes
//! upstream.

pub mod body;
pub mod cors;
pub mod estimate;
pub mod headers;
pub mod results_url;
pub mod route;

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

/// The request bodies one isolate holds at once, in bytes, against `MAX_INFLIGHT_BODY_BYTES`.
///
/// A body of up to `MAX_BODY_BYTES` is held (as one JavaScript buffer) from the moment it is
/// read until the request's answer has come back; a few large posts at once could otherwise
/// take an isolate past its memory limit, which fails every request in it. Beyond the cap a
/// request is refused before its body is read: `503 overloaded_error` with `Retry-After`
/// (waiting helps, as bodies drain quickly), not `413` (the body itself is acceptable).
#[derive(Debug, Default)]
pub struct InflightBodies {
    held: std::rc::Rc<std::cell::Cell<u64>>,
}

/// Bytes held for one request; released when dropped.
#[derive(Debug)]
pub struct BodyGuard {
    bytes: u64,
    cap: u64,
    held: std::rc::Rc<std::cell::Cell<u64>>,
}

impl InflightBodies {
    /// Bytes held now, by every guard alive.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// Holds `bytes` more under `cap`, or refuses with [`ProxyError::Busy`] and holds nothing.
    pub fn try_reserve(&self, bytes: u64, cap: u64) -> Result<BodyGuard, ProxyError> {
        let mut guard = BodyGuard {
            bytes: 0,
            cap,
            held: self.held.clone(),
        };
        guard.try_grow(bytes)?;
        Ok(guard)
    }
}

impl BodyGuard {
    /// Holds `more` bytes (a body read in chunks grows as it arrives), or refuses with
    /// [`ProxyError::Busy`], holding what it held before.
    pub fn try_grow(&mut self, more: u64) -> Result<(), ProxyError> {
        let held = self.held.get();
        match held.checked_add(more).filter(|total| *total <= self.cap) {
            Some(total) => {
                self.held.set(total);
                self.bytes = self.bytes.saturating_add(more);
                Ok(())
            }
            None => Err(ProxyError::Busy {
                retry_after_ms: BUSY_RETRY_AFTER_MS,
            }),
        }
    }

    /// Bytes this guard holds.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

impl Drop for BodyGuard {
    fn drop(&mut self) {
        self.held.set(self.held.get().saturating_sub(self.bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_in_flight_are_capped_and_released() {
        let bodies = InflightBodies::default();
        let cap = 100;
        let a = bodies.try_reserve(60, cap).unwrap();
        let mut b = bodies.try_reserve(40, cap).unwrap();
        assert_eq!(bodies.held(), 100);
        // Full: the next is refused with a 503 worth retrying, and holds nothing.
        let refused = bodies.try_reserve(1, cap).unwrap_err();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.error_type(), "overloaded_error");
        assert_eq!(refused.retry_after_ms(), Some(BUSY_RETRY_AFTER_MS));
        assert_eq!(bodies.held(), 100);
        assert!(b.try_grow(1).is_err());
        assert_eq!((b.bytes(), bodies.held()), (40, 100));
        drop(a);
        assert_eq!(bodies.held(), 40);
        // A chunked body grows until it no longer fits.
        let mut c = bodies.try_reserve(0, cap).unwrap();
        for _ in 0..6 {
            c.try_grow(10).unwrap();
        }
        assert!(c.try_grow(1).is_err());
        drop(b);
        drop(c);
        assert_eq!(bodies.held(), 0);
        // Arithmetic at the edges refuses rather than wraps.
        let _huge = bodies.try_reserve(u64::MAX, u64::MAX).unwrap();
        assert!(bodies.try_reserve(1, u64::MAX).is_err());
    }

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
