//! Credentials: `auth::credential` (from `x-api-key` and `Authorization`) and
//! `auth::authenticate` against a configuration with client keys, a JWT secret and
//! passthrough keys on.
//!
//! Input: `[flags] x-api-key \0 authorization`; flags bit 0 / bit 1 say whether each header
//! is present.
//!
//! Holds for every input:
//! - an accepted credential is non-empty, trimmed, and taken from one of the headers; when
//!   both headers carry one, they agree;
//! - every refusal is a 401 `authentication_error` with a fixed message (nothing of the
//!   credential in it);
//! - a passthrough caller's identity never contains its key; only a configured key maps to
//!   its configured id.

use std::collections::HashMap;
use std::sync::OnceLock;

use breakwater::config::Config;
use breakwater::identity::{authenticate, credential, UpstreamKey};

use crate::{split_at_byte, text};

const NOW_MS: u64 = 1_800_000_000_000;
pub const CLIENT_KEY: &str = "ck_fuzz_client_key_0001";

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let vars: HashMap<&str, String> = HashMap::from([
            (
                "CLIENT_KEYS",
                format!(r#"{{"{CLIENT_KEY}": {{"id": "alice", "tier": "pro"}}}}"#),
            ),
            (
                "RATE_LIMITS",
                r#"{"default": {"rpm": 5}, "pro": {"rpm": 50}}"#.to_string(),
            ),
            (
                "JWT_SECRET",
                "fuzz-secret-0123456789abcdef-0123".to_string(),
            ),
            ("ALLOW_PASSTHROUGH_KEYS", "true".to_string()),
        ]);
        Config::from_lookup(|name| vars.get(name).cloned())
            .expect("the fuzz configuration is valid")
    })
}

pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = split_at_byte(rest, 0);
    let key = text(a);
    let auth = text(b.unwrap_or_default());
    let key = (flags & 1 != 0).then_some(key.as_str());
    let auth = (flags & 2 != 0).then_some(auth.as_str());

    match credential(key, auth) {
        Ok(presented) => {
            assert!(!presented.is_empty());
            assert_eq!(presented, presented.trim());
            let from_key = key.is_some_and(|k| k.trim() == presented);
            let from_auth = auth.is_some_and(|a| a.contains(presented));
            assert!(
                from_key || from_auth,
                "{presented:?} came from neither header"
            );
            if let (Some(k), Some(_)) = (key.map(str::trim).filter(|k| !k.is_empty()), auth) {
                assert_eq!(k, presented, "two headers that disagree were accepted");
            }
            match authenticate(config(), presented, NOW_MS) {
                Ok(caller) => {
                    if let UpstreamKey::Passthrough(ref own) = caller.upstream_key {
                        assert_eq!(own.expose(), presented);
                        assert!(!caller.identity.contains(presented));
                        assert!(presented.starts_with("sk-ant-"));
                    }
                    if caller.identity == "alice" {
                        assert_eq!(presented, CLIENT_KEY);
                        assert_eq!(caller.tier, "pro");
                    }
                    assert!(!caller.identity_hash().contains(presented));
                }
                Err(e) => refused(&e),
            }
        }
        Err(e) => refused(&e),
    }
}

fn refused(e: &breakwater::error::ProxyError) {
    assert_eq!(e.status(), 401);
    assert_eq!(e.error_type(), "authentication_error");
    // The messages are fixed, except a verified token's tier, which only the holder of
    // JWT_SECRET can choose: nothing of an unverified credential is ever quoted.
    let message = e.message();
    let fixed = [
        "the Authorization header must be \"Bearer <key or token>\"",
        "x-api-key and Authorization carry different credentials; send one",
        "missing credential: send x-api-key or Authorization: Bearer",
        "credential is too long",
        "invalid credential",
    ];
    assert!(
        fixed.contains(&message.as_str()) || message.starts_with("invalid token: "),
        "a 401 message that varies: {message:?}"
    );
    if let Some(reason) = message.strip_prefix("invalid token: ") {
        // A tier is only read from a token whose signature holds: none can be forged here.
        assert!(
            crate::token::fixed_messages().iter().any(|m| m == reason),
            "{message:?}"
        );
    }
}
