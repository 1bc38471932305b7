//! Secrets that cannot leak by accident.
//!
//! Keys, tokens and signing secrets live in [`Secret`], whose `Debug` prints nothing of the
//! value, whose comparison takes the same time whatever the input, and whose only printable
//! form is a one-way fingerprint. Durable Object names use plain SHA-256 fingerprints; logs and
//! metrics use [`FingerprintKey`] tags, keyed, since an identity may be an e-mail address that
//! a dictionary would find behind a plain hash.

use std::fmt;

use hmac::{Hmac, Mac};
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
    hex16(&hasher.finalize())
}

/// The first 16 bytes as 32 lowercase hex digits, two a byte, without the formatter's
/// `{:02x}` (a request makes three fingerprints; each went through it byte by byte).
fn hex16(digest: &[u8]) -> String {
    let mut out = String::with_capacity(32);
    for byte in digest.iter().take(16) {
        for nibble in [byte >> 4, byte & 0x0f] {
            // A nibble is always a hex digit.
            out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    out
}

/// The key of the fingerprints that go into logs and metrics (`FINGERPRINT_KEY`, or derived
/// from another secret): HMAC-SHA256, so that without the key nobody can tell which identity
/// a tag stands for by hashing guesses. Prints nothing of itself.
#[derive(Clone)]
pub struct FingerprintKey {
    mac: Hmac<Sha256>,
}

/// What a derived [`FingerprintKey`] is the HMAC of, under the secret it is derived from: the
/// key is never the secret itself, and a tag says nothing usable about that secret.
const DERIVATION_LABEL: &[u8] = b"breakwater fingerprint key";

impl FingerprintKey {
    /// The key `key` itself (any length; `FINGERPRINT_KEY` asks for at least 32 bytes).
    #[must_use]
    pub fn new(key: &[u8]) -> FingerprintKey {
        // HMAC takes a key of any length: longer ones are hashed, shorter ones padded.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default()));
        FingerprintKey { mac }
    }

    /// A key derived from `secret`: HMAC-SHA256(`secret`, [`DERIVATION_LABEL`]).
    #[must_use]
    pub fn derived_from(secret: &[u8]) -> FingerprintKey {
        let mut mac = FingerprintKey::new(secret).mac;
        mac.update(DERIVATION_LABEL);
        FingerprintKey::new(&mac.finalize().into_bytes())
    }

    /// Hex HMAC-SHA256 of `label ‖ 0 ‖ value`, truncated to 32 hex digits like [`fingerprint`].
    #[must_use]
    pub fn tag(&self, label: &str, value: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(label.as_bytes());
        mac.update(&[0u8]);
        mac.update(value.as_bytes());
        hex16(&mac.finalize().into_bytes())
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
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
    fn tags_are_keyed_stable_and_labelled() {
        let key = FingerprintKey::new(b"a fingerprint key of 32 bytes...");
        let tag = key.tag("caller", "alice@example.com");
        assert_eq!(tag, key.tag("caller", "alice@example.com"));
        assert_ne!(tag, key.tag("other", "alice@example.com"));
        assert_eq!(tag.len(), 32);
        // Not the plain fingerprint anyone could compute, nor another key's tag.
        assert_ne!(tag, fingerprint("caller", "alice@example.com"));
        let other = FingerprintKey::new(b"another fingerprint key, 32 byte");
        assert_ne!(tag, other.tag("caller", "alice@example.com"));
        // HMAC-SHA256 as RFC 4231 test case 2 has it (key "Jefe").
        let mut mac = FingerprintKey::new(b"Jefe").mac;
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex16(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c7"
        );
        // A derived key is neither the secret nor the same as another secret's.
        let derived = FingerprintKey::derived_from(b"sk-ant-upstream");
        assert_ne!(
            derived.tag("caller", "x"),
            FingerprintKey::new(b"sk-ant-upstream").tag("caller", "x")
        );
        assert_ne!(
            derived.tag("caller", "x"),
            FingerprintKey::derived_from(b"sk-ant-other").tag("caller", "x")
        );
        assert!(!format!("{derived:?}").contains("sk-ant"));
    }

    #[test]
    fn hex_digits_are_the_first_sixteen_bytes_two_lowercase_digits_each() {
        let bytes: Vec<u8> = (0..20u8)
            .map(|i| i.wrapping_mul(37).wrapping_add(9))
            .collect();
        let expected: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex16(&bytes), expected);
        assert_eq!(hex16(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        // The SHA-256 of "abc" (FIPS 180-2), as `fingerprint`'s digest is printed.
        let abc = Sha256::digest(b"abc");
        assert_eq!(hex16(&abc), "ba7816bf8f01cfea414140de5dae2223");
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
