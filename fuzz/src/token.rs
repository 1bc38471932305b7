//! Signed browser tokens: `token::verify` and `token::looks_like_jwt`.
//!
//! Input, mode bit 0 clear: `[mode] token \0 secret` (raw text). Set: the rest drives a token
//! properly signed from chosen header and claims, then perhaps altered by one character.
//!
//! Holds for every input:
//! - anything `verify` accepts also `looks_like_jwt`, and its claims are in range (`sub` of
//!   1 to 256 characters without control characters, a well-formed `tier`, not expired, and
//!   expiring within the default lifetime of a day);
//! - a well-formed HS256 token of at most 8 KiB with valid claims, signed with the secret, is
//!   accepted and gives back its `sub` and `tier`;
//! - a token altered in any character, or checked with another secret, is refused;
//! - an error message is one of a fixed set: it never contains the token or the secret.

use arbitrary::{Result, Unstructured};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::sync::OnceLock;

use breakwater::identity::token::{
    looks_like_jwt, verify, TokenClaims, TokenError, DEFAULT_MAX_LIFETIME_MS, LEEWAY_MS,
    MAX_SUB_CHARS, MAX_TOKEN_LEN,
};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{split_at_byte, text};

const NOW_MS: u64 = 1_800_000_000_000;
const DEFAULT_SECRET: &str = "fuzz-secret-0123456789abcdef-0123";

pub fn check(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let (token, secret) = split_at_byte(rest, 0);
        let token = text(token);
        let secret = secret.map_or_else(|| DEFAULT_SECRET.to_string(), text);
        check_raw(&token, secret.as_bytes());
    } else {
        let _ = check_signed(&mut Unstructured::new(rest));
    }
}

fn check_raw(token: &str, secret: &[u8]) -> Option<TokenClaims> {
    let looks = looks_like_jwt(token);
    match verify(token, secret, NOW_MS) {
        Ok(claims) => {
            assert!(
                looks,
                "verify accepted what looks_like_jwt refuses: {token:?}"
            );
            let chars = claims.sub.chars().count();
            assert!((1..=MAX_SUB_CHARS).contains(&chars));
            assert!(!claims.sub.chars().any(char::is_control));
            if let Some(tier) = &claims.tier {
                assert!(
                    !tier.is_empty()
                        && tier
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                );
            }
            assert!(
                NOW_MS < claims.exp_ms.saturating_add(LEEWAY_MS),
                "an expired token was accepted"
            );
            assert!(
                claims.exp_ms <= NOW_MS + DEFAULT_MAX_LIFETIME_MS + LEEWAY_MS,
                "a token living longer than a day was accepted"
            );
            Some(claims)
        }
        Err(e) => {
            // Every message is one of a fixed set: nothing of the token or the secret is in it.
            let shown = e.to_string();
            assert!(
                fixed_messages().contains(&shown),
                "an error message that varies: {shown:?}"
            );
            None
        }
    }
}

fn check_signed(u: &mut Unstructured<'_>) -> Result<()> {
    let canonical_header = u.ratio(3u8, 4)?;
    let header = if canonical_header {
        (*u.choose(&[
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"HS256"}"#,
            r#" {"typ":"JWT","alg":"HS256"}"#,
        ])?)
        .to_string()
    } else {
        match u.int_in_range(0u8..=6)? {
            0 => r#"{"alg":"none"}"#.to_string(),
            1 => r#"{"alg":"HS512"}"#.to_string(),
            2 => r#"{"alg":"RS256"}"#.to_string(),
            3 => r#"{"alg":"HS256","crit":["exp"]}"#.to_string(),
            4 => r#"{"alg":"HS256","alg":"none"}"#.to_string(),
            5 => r#"["HS256"]"#.to_string(),
            _ => u.arbitrary::<String>()?,
        }
    };

    // Claims: each either a valid value, absent, or something odd.
    let valid_sub: String = {
        let s: String = u.arbitrary()?;
        let s: String = s
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_SUB_CHARS)
            .collect();
        if s.is_empty() {
            "user-1".to_string()
        } else {
            s
        }
    };
    let valid_tier = (*u.choose(&["pro", "free_2", "team-a"])?).to_string();
    let mut claims = serde_json::Map::new();
    let mut claims_valid = true;
    match u.int_in_range(0u8..=5)? {
        0 => claims_valid = false, // no sub
        1 => {
            claims.insert("sub".into(), odd_value(u)?);
            claims_valid = false;
        }
        _ => {
            claims.insert("sub".into(), valid_sub.clone().into());
        }
    }
    match u.int_in_range(0u8..=5)? {
        0 => claims_valid = false, // no exp
        1 => {
            claims.insert("exp".into(), odd_value(u)?);
            claims_valid = false;
        }
        2 => {
            // Anywhere around now: valid or expired.
            let secs = u.int_in_range(NOW_MS / 1000 - 3600..=NOW_MS / 1000 + 3600)?;
            claims.insert("exp".into(), secs.into());
            claims_valid &= secs * 1000 + LEEWAY_MS > NOW_MS;
        }
        _ => {
            claims.insert("exp".into(), (NOW_MS / 1000 + 300).into());
        }
    }
    let with_tier = u.arbitrary::<bool>()?;
    if with_tier {
        claims.insert("tier".into(), valid_tier.clone().into());
    }
    if u.ratio(1u8, 4)? {
        let name = (*u.choose(&["nbf", "iat", "tier", "aud"])?).to_string();
        claims.insert(name.clone(), odd_value(u)?);
        if name != "aud" {
            claims_valid = false;
        }
    }
    let payload = serde_json::Value::Object(claims).to_string();

    let mut secret: Vec<u8> = u.arbitrary()?;
    if secret.is_empty() {
        secret = DEFAULT_SECRET.as_bytes().to_vec();
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&header),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes any key");
    mac.update(signing_input.as_bytes());
    let token = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );

    let verdict = check_raw(&token, &secret);
    // Tokens above MAX_TOKEN_LEN are refused before anything else, by design.
    if canonical_header && claims_valid && token.len() <= MAX_TOKEN_LEN {
        let claims =
            verdict.unwrap_or_else(|| panic!("a valid token was refused: {token} ({payload})"));
        assert_eq!(claims.sub, valid_sub);
        assert_eq!(claims.tier, with_tier.then_some(valid_tier));
    }

    // Another secret never verifies it (HMAC pads keys with zero bytes, so append a non-zero one).
    let mut other = secret.clone();
    other.push(b'x');
    assert!(
        verify(&token, &other, NOW_MS).is_err(),
        "verified with another secret"
    );

    // One character changed: refused.
    if !token.is_empty() {
        let at = u.int_in_range(0..=token.len() - 1)?;
        let replacement = *u.choose(b"AB_-.=0z ")?;
        let mut altered = token.clone().into_bytes();
        altered[at] = replacement;
        let altered = String::from_utf8(altered).expect("ASCII in, ASCII out");
        if altered != token {
            assert!(
                check_raw(&altered, &secret).is_none(),
                "an altered token verified: {altered}"
            );
        }
    }
    Ok(())
}

pub(crate) fn fixed_messages() -> &'static [String] {
    static MESSAGES: OnceLock<Vec<String>> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        use TokenError::*;
        let claims = ["exp", "nbf", "iat", "sub", "tier", "aud", "iss"].map(InvalidClaim);
        [
            NoSecret,
            TooLong,
            Malformed,
            UnsupportedAlgorithm,
            BadSignature,
            MissingExp,
            MissingSub,
            Expired,
            NotYetValid,
            IssuedInFuture,
            LifetimeTooLong,
            WrongAudience,
            WrongIssuer,
        ]
        .into_iter()
        .chain(claims)
        .map(|e| e.to_string())
        .collect()
    })
}

fn odd_value(u: &mut Unstructured<'_>) -> Result<serde_json::Value> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => serde_json::Value::Null,
        1 => serde_json::Value::from(u.arbitrary::<i64>()?),
        2 => serde_json::Value::from(u.arbitrary::<f64>()?),
        3 => serde_json::Value::from(u.arbitrary::<String>()?),
        4 => serde_json::Value::from(vec![1, 2]),
        5 => serde_json::Value::from(u.arbitrary::<bool>()?),
        6 => serde_json::Value::from("x".repeat(300)),
        _ => serde_json::Value::from(u64::MAX),
    })
}
