//! Secrets that cannot leak by accident.
//!
//! Keys, tokens and signing secrets live in [`Secret`], whose `Debug` prints nothing of the
//! value, whose comparison takes the same time whatever the input, and whose only printable
//! form is a one-way fingerprint. Logs, errors and Durable Object names use fingerprints.

use std::fmt::{self, Write as _};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct Secret {
    value: String,
    /// SHA-256 of the value, computed once: comparisons hash only the presented side.
    digest: [u8; 32],
}

/// The digest a presented credential is compared by.
pub fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        let value = value.into();
        let digest = digest(&value);
        Secret { value, digest }
    }

    /// The value itself, for the one place that needs it (the upstream request header).
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Compares with a presented credential in constant time. Both sides are hashed first so
    /// that neither the content nor the length of the secret shows in the timing.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_digest(&digest(presented))
    }

    /// [`Secret::matches`] for a credential already hashed with [`digest`] (hash it once when
    /// comparing with many secrets).
    pub fn matches_digest(&self, presented: &[u8; 32]) -> bool {
        self.digest.ct_eq(presented).into()
    }

    /// A stable, one-way fingerprint: `label` keeps fingerprints of different kinds apart.
    pub fn fingerprint(&self, label: &str) -> String {
        fingerprint(label, &self.value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Hex SHA-256 of `label ‖ 0 ‖ value`, truncated to 32 hex digits (128 bits): enough to never
/// collide between callers, short enough for Durable Object names and log lines.
pub fn fingerprint(label: &str, value: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(label.as_bytes());
    hasher.update([0u8]);
    hasher.update(value.as_bytes());
    let digest = hasher.finalize();
    digest
        .iter()
        .take(16)
        .fold(String::with_capacity(32), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("sk-ant-very-secret");
        assert!(!format!("{s:?}").contains("very-secret"));
    }

    #[test]
    fn matches_only_the_same_value() {
        let s = Secret::new("ck_live_0123456789");
        assert!(s.matches("ck_live_0123456789"));
        assert!(!s.matches("ck_live_012345678"));
        assert!(!s.matches(""));
    }

    #[test]
    fn fingerprints_are_stable_labelled_and_opaque() {
        let a = fingerprint("identity", "alice");
        assert_eq!(a, fingerprint("identity", "alice"));
        assert_ne!(a, fingerprint("upstream", "alice"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!Secret::new("sk-ant-x").fingerprint("k").contains("sk-ant"));
    }
}
