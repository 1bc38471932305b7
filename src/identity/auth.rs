//! Who is calling: the credential, the caller's identity and tier, and the upstream key.
//!
//! The identity is what rate limits are kept per. It is never the credential itself: client
//! keys map to their configured `id`, tokens to `token:<sub>`, passthrough keys to
//! `passthrough:<fingerprint of the key>`. Configuration refuses client ids with those
//! prefixes, so the three kinds can never name the same identity.

use crate::config::{Config, DEFAULT_TIER};
use crate::error::ProxyError;
use crate::identity::prefixes::{PASSTHROUGH_PREFIX, TOKEN_PREFIX};
use crate::identity::secret::{self, fingerprint, Secret};
use crate::identity::token;

/// What token verification requires beyond a good signature, from the configuration.
fn token_requirements(config: &Config) -> token::Requirements<'_> {
    token::Requirements {
        audience: config.jwt_audience.as_deref(),
        issuer: config.jwt_issuer.as_deref(),
        max_lifetime_ms: config.jwt_max_lifetime_ms,
    }
}

/// Which upstream key a caller's requests are forwarded with.
#[derive(Debug, Clone)]
pub enum UpstreamKey {
    /// The deployment's `ANTHROPIC_API_KEY`.
    Managed,
    /// The caller's own `sk-ant-…` key (with `ALLOW_PASSTHROUGH_KEYS`).
    Passthrough(Secret),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Stable identity rate limits are kept per (never a raw key).
    pub identity: String,
    pub tier: String,
    pub upstream_key: UpstreamKey,
}

impl Caller {
    /// The name of the caller's Durable Object and its log field: a fingerprint of the identity.
    pub fn identity_hash(&self) -> String {
        fingerprint("identity", &self.identity)
    }

    /// The key the caller's requests go upstream with: its own (passthrough), or the
    /// deployment's `ANTHROPIC_API_KEY`, which must then be set.
    pub fn upstream_key(&self, config: &Config) -> Result<Secret, ProxyError> {
        match &self.upstream_key {
            UpstreamKey::Passthrough(key) => Ok(key.clone()),
            UpstreamKey::Managed => config
                .upstream_key
                .clone()
                .ok_or(ProxyError::MissingSecret("ANTHROPIC_API_KEY")),
        }
    }
}

/// The credential a request presents, read from `x-api-key` or `Authorization: Bearer`.
/// Sending both is accepted only when they agree.
pub fn credential<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Result<&'a str, ProxyError> {
    let from_key = x_api_key.map(str::trim).filter(|k| !k.is_empty());
    let from_bearer = match authorization.map(str::trim).filter(|a| !a.is_empty()) {
        None => None,
        Some(value) => {
            let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
                return Err(ProxyError::Unauthenticated(
                    "the Authorization header must be \"Bearer <key or token>\"".to_string(),
                ));
            }
            Some(token.trim())
        }
    };
    match (from_key, from_bearer) {
        (Some(k), Some(b)) if k != b => Err(ProxyError::Unauthenticated(
            "x-api-key and Authorization carry different credentials; send one".to_string(),
        )),
        (Some(k), _) => Ok(k),
        (None, Some(b)) => Ok(b),
        (None, None) => Err(ProxyError::Unauthenticated(
            "missing credential: send x-api-key or Authorization: Bearer".to_string(),
        )),
    }
}

/// Longest credential looked at; anything longer is refused before any hashing.
const MAX_CREDENTIAL_LEN: usize = 8192;

/// Decides who the caller is, following the contract's order: a signed token, a client
/// key, a passthrough key. `now_ms` checks a token's expiry.
pub fn authenticate(config: &Config, presented: &str, now_ms: u64) -> Result<Caller, ProxyError> {
    if presented.len() > MAX_CREDENTIAL_LEN {
        return Err(ProxyError::Unauthenticated(
            "credential is too long".to_string(),
        ));
    }
    if let Some(secret) = &config.jwt_secret {
        if token::looks_like_jwt(presented) {
            let claims = token::verify_with(
                presented,
                secret.expose().as_bytes(),
                now_ms,
                &token_requirements(config),
            )
            .map_err(|e| ProxyError::Unauthenticated(format!("invalid token: {e}")))?;
            let tier = claims.tier.unwrap_or_else(|| DEFAULT_TIER.to_string());
            if tier != DEFAULT_TIER && !config.rate_limits.contains_key(&tier) {
                return Err(ProxyError::Unauthenticated(format!(
                    "invalid token: tier {tier:?} is not defined in RATE_LIMITS"
                )));
            }
            // Token subjects are named by the site's backend, possibly after its users; keep
            // them apart from client key ids so a user named like a key cannot share its limits.
            return Ok(Caller {
                identity: format!("{TOKEN_PREFIX}{}", claims.sub),
                tier,
                upstream_key: UpstreamKey::Managed,
            });
        }
    }
    // Every configured key is compared, so the time taken does not tell which one matched.
    let mut matched = None;
    let presented_digest = secret::digest(presented);
    for (key, entry) in &config.client_keys {
        if key.matches_digest(&presented_digest) && matched.is_none() {
            matched = Some(entry);
        }
    }
    if let Some(entry) = matched {
        return Ok(Caller {
            identity: entry.id.clone(),
            tier: entry.tier.clone(),
            upstream_key: UpstreamKey::Managed,
        });
    }
    if config.allow_passthrough_keys && looks_like_anthropic_key(presented) {
        return Ok(Caller {
            identity: format!(
                "{PASSTHROUGH_PREFIX}{}",
                fingerprint("passthrough", presented)
            ),
            tier: DEFAULT_TIER.to_string(),
            upstream_key: UpstreamKey::Passthrough(Secret::new(presented)),
        });
    }
    Err(ProxyError::Unauthenticated(
        "invalid credential".to_string(),
    ))
}

fn looks_like_anthropic_key(value: &str) -> bool {
    value.starts_with("sk-ant-")
        && value.len() >= 20
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned()).unwrap()
    }

    const NOW: u64 = 1_800_000_000_000;

    const KEYS: &str = r#"{"ck_alice_0123456789": {"id": "alice"}, "ck_bob_0123456789ab": {"id": "bob", "tier": "pro"}}"#;
    const TIERS: &str = r#"{"default": {"rpm": 5}, "pro": {"rpm": 50}}"#;

    #[test]
    fn credential_comes_from_either_header() {
        assert_eq!(credential(Some("k"), None).unwrap(), "k");
        assert_eq!(credential(None, Some("Bearer t")).unwrap(), "t");
        assert_eq!(credential(None, Some("bearer   t ")).unwrap(), "t");
        assert_eq!(credential(Some("t"), Some("Bearer t")).unwrap(), "t");
    }

    #[test]
    fn bad_or_conflicting_credentials_are_401() {
        for (k, a) in [
            (None, None),
            (Some(""), None),
            (None, Some("Basic dXNlcjpwYXNz")),
            (None, Some("Bearer")),
            (None, Some("Bearer ")),
            (Some("a"), Some("Bearer b")),
        ] {
            let err = credential(k, a).unwrap_err();
            assert_eq!(err.status(), 401, "{k:?} {a:?}");
        }
    }

    #[test]
    fn client_keys_map_to_their_id_and_tier() {
        let c = config(&[("CLIENT_KEYS", KEYS), ("RATE_LIMITS", TIERS)]);
        let alice = authenticate(&c, "ck_alice_0123456789", NOW).unwrap();
        assert_eq!(alice.identity, "alice");
        assert_eq!(alice.tier, "default");
        assert!(matches!(alice.upstream_key, UpstreamKey::Managed));
        let bob = authenticate(&c, "ck_bob_0123456789ab", NOW).unwrap();
        assert_eq!(bob.tier, "pro");
        assert!(authenticate(&c, "ck_alice_012345678", NOW).is_err());
    }

    #[test]
    fn passthrough_keys_need_the_switch_and_hide_the_key() {
        let key = "sk-ant-api03-abcdefghijklmnop";
        assert!(authenticate(&config(&[]), key, NOW).is_err());
        let c = config(&[("ALLOW_PASSTHROUGH_KEYS", "true")]);
        let caller = authenticate(&c, key, NOW).unwrap();
        assert!(!caller.identity.contains("abcdefghijklmnop"));
        assert!(!caller.identity_hash().contains("abcdefghijklmnop"));
        assert!(
            matches!(caller.upstream_key, UpstreamKey::Passthrough(ref s) if s.expose() == key)
        );
        assert!(authenticate(&c, "sk-other-abcdefghijklmnopqrst", NOW).is_err());
        assert!(authenticate(&c, "sk-ant-short", NOW).is_err());
    }

    fn mint(secret: &str, claims: &str) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{payload}.{signature}")
    }

    #[test]
    fn signed_tokens_come_first_and_carry_sub_and_tier() {
        let secret = "jwt-secret-for-tests-0123456789-abcdef";
        let c = config(&[
            ("JWT_SECRET", secret),
            ("CLIENT_KEYS", KEYS),
            ("RATE_LIMITS", TIERS),
        ]);
        let exp = NOW / 1000 + 300;
        let token = mint(
            secret,
            &format!(r#"{{"sub":"alice","tier":"pro","exp":{exp}}}"#),
        );
        let caller = authenticate(&c, &token, NOW).unwrap();
        assert_eq!(caller.identity, "token:alice");
        assert_eq!(caller.tier, "pro");
        assert!(matches!(caller.upstream_key, UpstreamKey::Managed));
        let plain = mint(secret, &format!(r#"{{"sub":"bob","exp":{exp}}}"#));
        assert_eq!(authenticate(&c, &plain, NOW).unwrap().tier, "default");

        let expired = mint(
            secret,
            &format!(r#"{{"sub":"alice","exp":{}}}"#, NOW / 1000 - 3600),
        );
        let forged = mint(
            "another-secret-entirely-0000000000000000",
            &format!(r#"{{"sub":"alice","exp":{exp}}}"#),
        );
        let unknown_tier = mint(
            secret,
            &format!(r#"{{"sub":"alice","tier":"gold","exp":{exp}}}"#),
        );
        for bad in [expired, forged, unknown_tier] {
            let err = authenticate(&c, &bad, NOW).unwrap_err();
            assert_eq!(err.status(), 401);
            assert!(!err.message().contains(&bad));
        }
        // Client keys still work next to tokens.
        assert_eq!(
            authenticate(&c, "ck_alice_0123456789", NOW)
                .unwrap()
                .identity,
            "alice"
        );
    }

    #[test]
    fn configured_audience_issuer_and_lifetime_are_enforced() {
        let secret = "jwt-secret-for-tests-0123456789-abcdef";
        let c = config(&[
            ("JWT_SECRET", secret),
            ("JWT_AUDIENCE", "chat"),
            ("JWT_ISSUER", "https://auth.example"),
            ("JWT_MAX_LIFETIME_S", "600"),
        ]);
        let exp = NOW / 1000 + 300;
        let good = mint(
            secret,
            &format!(r#"{{"sub":"a","exp":{exp},"aud":["chat"],"iss":"https://auth.example"}}"#),
        );
        assert_eq!(authenticate(&c, &good, NOW).unwrap().identity, "token:a");
        let cases = [
            (
                format!(r#"{{"sub":"a","exp":{exp},"iss":"https://auth.example"}}"#),
                "audience",
            ),
            (
                format!(r#"{{"sub":"a","exp":{exp},"aud":"chat","iss":"https://other.example"}}"#),
                "issuer",
            ),
            (
                format!(
                    r#"{{"sub":"a","exp":{},"aud":"chat","iss":"https://auth.example"}}"#,
                    NOW / 1000 + 3600
                ),
                "lifetime too long",
            ),
        ];
        for (claims, why) in cases {
            let err = authenticate(&c, &mint(secret, &claims), NOW).unwrap_err();
            assert_eq!(err.status(), 401, "{claims}");
            assert_eq!(err.error_type(), "authentication_error");
            assert!(err.message().contains(why), "{}", err.message());
        }
    }

    #[test]
    fn token_and_client_identities_never_meet() {
        // The id a token for sub "alice" gets cannot be configured for a client key.
        let secret = "jwt-secret-for-tests-0123456789-abcdef";
        let c = config(&[
            ("JWT_SECRET", secret),
            ("CLIENT_KEYS", KEYS),
            ("RATE_LIMITS", TIERS),
        ]);
        let token = mint(
            secret,
            &format!(r#"{{"sub":"alice","exp":{}}}"#, NOW / 1000 + 60),
        );
        let from_token = authenticate(&c, &token, NOW).unwrap().identity;
        let from_key = authenticate(&c, "ck_alice_0123456789", NOW)
            .unwrap()
            .identity;
        assert_ne!(from_token, from_key);
        assert!(from_token.starts_with(TOKEN_PREFIX));
        let colliding = format!(r#"{{"ck_alice_0123456789": {{"id": "{from_token}"}}}}"#);
        let map: HashMap<String, String> = [("CLIENT_KEYS".to_string(), colliding)].into();
        let err = Config::from_lookup(|name| map.get(name).cloned()).unwrap_err();
        assert_eq!(err.variable, "CLIENT_KEYS");
    }

    #[test]
    fn tokens_are_refused_without_a_jwt_secret() {
        let c = config(&[("CLIENT_KEYS", KEYS), ("RATE_LIMITS", TIERS)]);
        let token = mint(
            "whatever-secret-00000000000000000000",
            &format!(r#"{{"sub":"a","exp":{}}}"#, NOW / 1000 + 60),
        );
        assert_eq!(authenticate(&c, &token, NOW).unwrap_err().status(), 401);
    }

    #[test]
    fn huge_credentials_are_refused() {
        let c = config(&[("CLIENT_KEYS", KEYS), ("RATE_LIMITS", TIERS)]);
        assert!(authenticate(&c, &"x".repeat(100_000), NOW).is_err());
    }
}
