//! Who is calling: credentials (client keys, signed browser tokens, passthrough keys), the
//! identity and tier that limits are kept per, and the secrets that must never leak.

mod auth;
pub mod secret;
pub mod token;

pub use auth::{
    authenticate, credential, Caller, UpstreamKey, PASSTHROUGH_PREFIX, RESERVED_ID_PREFIXES,
    TOKEN_PREFIX,
};
pub use secret::{fingerprint, FingerprintKey, Secret};

impl Caller {
    /// The key the caller's requests go upstream with: its own (passthrough), or the
    /// deployment's `ANTHROPIC_API_KEY`, which must then be set.
    pub fn upstream_key(
        &self,
        config: &crate::config::Config,
    ) -> Result<Secret, crate::error::ProxyError> {
        match &self.upstream_key {
            UpstreamKey::Passthrough(key) => Ok(key.clone()),
            UpstreamKey::Managed => config
                .upstream_key
                .clone()
                .ok_or(crate::error::ProxyError::MissingSecret("ANTHROPIC_API_KEY")),
        }
    }
}
