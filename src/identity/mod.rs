//! Who is calling: credentials (client keys, signed browser tokens, passthrough keys), the
//! identity and tier that limits are kept per, and the secrets that must never leak.

mod auth;
pub mod prefixes;
pub mod secret;
pub mod token;

pub use auth::{authenticate, credential, Caller, UpstreamKey};
pub use prefixes::{PASSTHROUGH_PREFIX, RESERVED_ID_PREFIXES, TOKEN_PREFIX};
pub use secret::{fingerprint, FingerprintKey, Secret};
