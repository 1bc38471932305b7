//! How an identity says what kind of caller it names. Configuration checks client ids
//! against these, and authentication builds identities with them, so they sit beneath both.

/// The prefix of a signed token's identity (`token:<sub>`).
pub const TOKEN_PREFIX: &str = "token:";

/// The prefix of a passthrough caller's identity (`passthrough:<fingerprint>`).
pub const PASSTHROUGH_PREFIX: &str = "passthrough:";

/// Prefixes no client id in `CLIENT_KEYS` may start with (compared without regard to case).
pub const RESERVED_ID_PREFIXES: &[&str] = &[TOKEN_PREFIX, PASSTHROUGH_PREFIX];
