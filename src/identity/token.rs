//! Signed browser tokens: short-lived HS256 JWTs minted by a site's backend.
//!
//! A browser cannot hold a client key safely, so a site's backend mints a token for its user
//! with the shared `JWT_SECRET`, and the browser presents it as its credential. This module
//! only verifies such a token: structure, algorithm (HS256 and nothing else), signature in
//! constant time, the `exp`/`nbf`/`iat` claims against a time passed in by the caller (no
//! clock is read here, so it runs the same on the host and in the Worker), the token's
//! lifetime, and, when the deployment asks for them, `aud` and `iss`. The crypto is the
//! RustCrypto `hmac` and `sha2` crates; the few lines of JWT framing are here.
//!
//! Errors name a short reason and never carry the token, its claims or the secret.

use std::fmt;

use crate::json::Json;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Longest token looked at; anything longer is refused before decoding or hashing.
pub const MAX_TOKEN_LEN: usize = 8192;

/// Clock skew tolerated between the minting backend and the edge, for `exp`, `nbf` and `iat`.
pub const LEEWAY_MS: u64 = 30_000;

/// Longest `sub`, in characters.
pub const MAX_SUB_CHARS: usize = 256;

/// Longest `tier`, in characters.
pub const MAX_TIER_CHARS: usize = 64;

/// The longest lifetime accepted when nothing else is asked: one hour (`JWT_MAX_LIFETIME_S`).
pub const DEFAULT_MAX_LIFETIME_MS: u64 = crate::config::DEFAULT_JWT_MAX_LIFETIME_S * 1000;

/// What a token must satisfy beyond its signature and its time claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirements<'a> {
    /// When set, `aud` (a string or an array of strings) must contain it.
    pub audience: Option<&'a str>,
    /// When set, `iss` must equal it.
    pub issuer: Option<&'a str>,
    /// `exp` may lie at most this far after now (plus [`LEEWAY_MS`]): a token minted for a
    /// year cannot be revoked short of rotating the secret.
    pub max_lifetime_ms: u64,
}

impl Default for Requirements<'_> {
    fn default() -> Self {
        Requirements {
            audience: None,
            issuer: None,
            max_lifetime_ms: DEFAULT_MAX_LIFETIME_MS,
        }
    }
}

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// The caller's identity (the `sub` claim), 1 to 256 characters.
    pub sub: String,
    /// The `tier` claim, if the token has one; the caller falls back to the default tier.
    pub tier: Option<String>,
    /// The `exp` claim, in milliseconds since the Unix epoch.
    pub exp_ms: u64,
}

/// Why a token was refused. Every variant becomes `401 authentication_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// The verifying secret is empty: nothing can be verified with it.
    NoSecret,
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLong,
    /// Not three base64url segments, or a header or payload that is not a JSON object.
    Malformed,
    /// The header names an algorithm other than HS256 (`none`, RS256, HS512, …), has none, or
    /// lists critical extensions.
    UnsupportedAlgorithm,
    /// The signature does not match the header and payload under the secret.
    BadSignature,
    /// No `exp` claim.
    MissingExp,
    /// No `sub` claim.
    MissingSub,
    /// A claim of the wrong type or out of range; the field is the claim's name.
    InvalidClaim(&'static str),
    /// `exp` is past, beyond the leeway.
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    NotYetValid,
    /// `iat` is in the future, beyond the leeway.
    IssuedInFuture,
    /// `exp` lies further ahead than the longest lifetime allowed.
    LifetimeTooLong,
    /// An audience is required and `aud` is missing or does not contain it.
    WrongAudience,
    /// An issuer is required and `iss` is missing or another.
    WrongIssuer,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::NoSecret => f.write_str("token verification is not configured"),
            TokenError::TooLong => f.write_str("token too long"),
            TokenError::Malformed => f.write_str("malformed token"),
            TokenError::UnsupportedAlgorithm => f.write_str("unsupported algorithm"),
            TokenError::BadSignature => f.write_str("bad signature"),
            TokenError::MissingExp => f.write_str("missing exp claim"),
            TokenError::MissingSub => f.write_str("missing sub claim"),
            TokenError::InvalidClaim(name) => write!(f, "invalid {name} claim"),
            TokenError::Expired => f.write_str("token expired"),
            TokenError::NotYetValid => f.write_str("token not yet valid"),
            TokenError::IssuedInFuture => f.write_str("token issued in the future"),
            TokenError::LifetimeTooLong => f.write_str("token lifetime too long"),
            TokenError::WrongAudience => f.write_str("token not meant for this audience"),
            TokenError::WrongIssuer => f.write_str("token from another issuer"),
        }
    }
}

impl std::error::Error for TokenError {}

/// A cheap test of whether a credential is meant as a JWT rather than a key: three dot-separated
/// base64url segments whose first decodes to a JSON object. Client keys (`ck_…`) and Anthropic
/// keys (`sk-ant-…`) have no dots and never pass. No signature is checked here.
pub fn looks_like_jwt(credential: &str) -> bool {
    let mut parts = credential.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if header.is_empty()
        || header.len() > MAX_TOKEN_LEN
        || payload.is_empty()
        || ![header, payload, signature].iter().all(|s| is_base64url(s))
    {
        return false;
    }
    decode_segment(header).is_ok_and(|bytes| parse_object::<Header>(&bytes).is_ok())
}

/// Verifies an HS256 JWT with `secret` at time `now_ms` (milliseconds since the Unix epoch) and
/// returns its claims, with the default [`Requirements`] (no audience or issuer, a lifetime
/// of at most a day).
pub fn verify(token: &str, secret: &[u8], now_ms: u64) -> Result<TokenClaims, TokenError> {
    verify_with(token, secret, now_ms, &Requirements::default())
}

/// Verifies an HS256 JWT with `secret` at time `now_ms` (milliseconds since the Unix epoch)
/// against `required`, and returns its claims.
///
/// The signature is checked (in constant time) before the payload is read. `exp` and `sub` are
/// required; `nbf` and `iat` are checked when present; [`LEEWAY_MS`] of clock skew is allowed;
/// `aud` and `iss` are checked when `required` names them.
pub fn verify_with(
    token: &str,
    secret: &[u8],
    now_ms: u64,
    required: &Requirements<'_>,
) -> Result<TokenClaims, TokenError> {
    if secret.is_empty() {
        return Err(TokenError::NoSecret);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    if payload.contains('.') {
        return Err(TokenError::Malformed);
    }

    check_header(&decode_segment(header)?)?;

    let signature = decode_segment(signature)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| TokenError::NoSecret)?;
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;

    check_claims(&decode_segment(payload)?, now_ms, required)
}

/// The header fields looked at (`null` reads as absent). Duplicate fields are refused (by
/// serde) as malformed.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    alg: Json,
    #[serde(default)]
    crit: Json,
}

fn check_header(bytes: &[u8]) -> Result<(), TokenError> {
    let header: Header = parse_object(bytes)?;
    // Critical extensions (RFC 7515 §4.1.11) would change how the token must be read; none is
    // understood here, so a header that lists any is refused.
    if header.crit != Json::Null {
        return Err(TokenError::UnsupportedAlgorithm);
    }
    match header.alg {
        Json::Text(alg) if alg == "HS256" => Ok(()),
        _ => Err(TokenError::UnsupportedAlgorithm),
    }
}

/// The registered claims looked at, plus `tier` (`null` reads as absent). Other claims are
/// ignored; duplicates of these are refused (by serde) as malformed, so two readers cannot
/// disagree on which one counts.
#[derive(Default, Deserialize)]
#[serde(default)]
struct RawClaims {
    sub: Json,
    exp: Json,
    nbf: Json,
    iat: Json,
    tier: Json,
    aud: Json,
    iss: Json,
}

fn check_claims(
    bytes: &[u8],
    now_ms: u64,
    required: &Requirements<'_>,
) -> Result<TokenClaims, TokenError> {
    let claims: RawClaims = parse_object(bytes)?;

    let exp_ms = match &claims.exp {
        Json::Null => return Err(TokenError::MissingExp),
        value => numeric_date_ms(value).ok_or(TokenError::InvalidClaim("exp"))?,
    };
    let nbf_ms = match &claims.nbf {
        Json::Null => None,
        value => Some(numeric_date_ms(value).ok_or(TokenError::InvalidClaim("nbf"))?),
    };
    let iat_ms = match &claims.iat {
        Json::Null => None,
        value => Some(numeric_date_ms(value).ok_or(TokenError::InvalidClaim("iat"))?),
    };
    let sub = match claims.sub {
        Json::Null => return Err(TokenError::MissingSub),
        Json::Text(sub) if valid_sub(&sub) => sub,
        _ => return Err(TokenError::InvalidClaim("sub")),
    };
    let tier = match claims.tier {
        Json::Null => None,
        Json::Text(tier) if valid_tier(&tier) => Some(tier),
        _ => return Err(TokenError::InvalidClaim("tier")),
    };

    // Valid while now < exp (RFC 7519 §4.1.4), give or take the leeway.
    if now_ms >= exp_ms.saturating_add(LEEWAY_MS) {
        return Err(TokenError::Expired);
    }
    if nbf_ms.is_some_and(|nbf| nbf > now_ms.saturating_add(LEEWAY_MS)) {
        return Err(TokenError::NotYetValid);
    }
    if iat_ms.is_some_and(|iat| iat > now_ms.saturating_add(LEEWAY_MS)) {
        return Err(TokenError::IssuedInFuture);
    }
    if exp_ms
        > now_ms
            .saturating_add(required.max_lifetime_ms)
            .saturating_add(LEEWAY_MS)
    {
        return Err(TokenError::LifetimeTooLong);
    }
    if let Some(audience) = required.audience {
        // RFC 7519 §4.1.3: a single string, or an array of strings one of which must match.
        let matches = match &claims.aud {
            Json::Null => false,
            Json::Text(aud) => aud == audience,
            Json::List(list) => {
                if !list.iter().all(|aud| aud.as_str().is_some()) {
                    return Err(TokenError::InvalidClaim("aud"));
                }
                list.iter().any(|aud| aud.as_str() == Some(audience))
            }
            _ => return Err(TokenError::InvalidClaim("aud")),
        };
        if !matches {
            return Err(TokenError::WrongAudience);
        }
    }
    if let Some(issuer) = required.issuer {
        match &claims.iss {
            Json::Text(iss) if iss == issuer => {}
            Json::Null | Json::Text(_) => return Err(TokenError::WrongIssuer),
            _ => return Err(TokenError::InvalidClaim("iss")),
        }
    }
    Ok(TokenClaims { sub, tier, exp_ms })
}

/// A JWT NumericDate (seconds since the epoch, possibly fractional) in milliseconds; `None` for
/// anything that is not a non-negative finite number. Far-future dates saturate.
fn numeric_date_ms(value: &Json) -> Option<u64> {
    match *value {
        Json::Unsigned(seconds) => Some(seconds.saturating_mul(1000)),
        // `as` saturates for values beyond u64, and the range check keeps out NaN and negatives.
        Json::Float(seconds) if seconds.is_finite() && seconds >= 0.0 => {
            Some((seconds * 1000.0) as u64)
        }
        _ => None,
    }
}

fn valid_sub(sub: &str) -> bool {
    let chars = sub.chars().count();
    (1..=MAX_SUB_CHARS).contains(&chars) && !sub.chars().any(char::is_control)
}

fn valid_tier(tier: &str) -> bool {
    (1..=MAX_TIER_CHARS).contains(&tier.len())
        && tier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_base64url(segment: &str) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decodes one unpadded base64url segment (RFC 4648 §5). Padding, other alphabets and
/// non-canonical trailing bits are refused, so each token has exactly one spelling. A few
/// lines of its own: a general base64 engine is kilobytes of module for three segments.
fn decode_segment(segment: &str) -> Result<Vec<u8>, TokenError> {
    // Four characters carry three bytes; a lone last character carries none.
    if segment.len() % 4 == 1 {
        return Err(TokenError::Malformed);
    }
    let mut bytes = Vec::with_capacity(segment.len() / 4 * 3 + 2);
    let (mut held, mut held_bits) = (0u32, 0u32);
    for c in segment.bytes() {
        held = (held << 6) | u32::from(sextet(c).ok_or(TokenError::Malformed)?);
        held_bits += 6;
        if held_bits >= 8 {
            held_bits -= 8;
            bytes.push((held >> held_bits) as u8);
            held &= (1 << held_bits) - 1;
        }
    }
    // The bits left over (none, two or four) must be zero.
    if held != 0 {
        return Err(TokenError::Malformed);
    }
    Ok(bytes)
}

/// The six bits a base64url character stands for.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Parses a JSON object (and only an object: serde would also read a struct from an array).
/// Going through `&str` shares the JSON reader the rest of the crate already uses.
fn parse_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, TokenError> {
    let text = std::str::from_utf8(bytes).map_err(|_| TokenError::Malformed)?;
    if !text.trim_start().starts_with('{') {
        return Err(TokenError::Malformed);
    }
    serde_json::from_str(text).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"test-secret-0123456789-abcdefghij";
    /// 2026-01-01T00:00:00Z.
    const NOW_S: u64 = 1_767_225_600;
    const NOW_MS: u64 = NOW_S * 1000;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn sign(signing_input: &str, secret: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        b64(&mac.finalize().into_bytes())
    }

    /// Mints a token by hand: any header, any payload, signed HS256 with `secret`.
    fn mint_raw(header: &str, payload: &str, secret: &[u8]) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = sign(&input, secret);
        format!("{input}.{signature}")
    }

    fn mint(payload: &str) -> String {
        mint_raw(r#"{"alg":"HS256","typ":"JWT"}"#, payload, SECRET)
    }

    fn exp_in(seconds: i64) -> u64 {
        NOW_S.checked_add_signed(seconds).unwrap()
    }

    #[test]
    fn valid_token() {
        let token = mint(&format!(r#"{{"sub":"user-42","exp":{}}}"#, exp_in(300)));
        assert!(looks_like_jwt(&token));
        let claims = verify(&token, SECRET, NOW_MS).unwrap();
        assert_eq!(
            claims,
            TokenClaims {
                sub: "user-42".into(),
                tier: None,
                exp_ms: exp_in(300) * 1000
            }
        );
    }

    #[test]
    fn valid_token_with_tier_and_other_claims() {
        let token = mint(&format!(
            r#"{{"sub":"alice@example.com","tier":"pro_2-x","exp":{},"nbf":{},"iat":{},"aud":"x","extra":[1,2]}}"#,
            exp_in(300),
            NOW_S,
            NOW_S
        ));
        let claims = verify(&token, SECRET, NOW_MS).unwrap();
        assert_eq!(claims.sub, "alice@example.com");
        assert_eq!(claims.tier.as_deref(), Some("pro_2-x"));
    }

    #[test]
    fn header_without_typ_and_fractional_dates_are_fine() {
        let token = mint_raw(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"u","exp":{}.5,"iat":{}.25}}"#, exp_in(60), NOW_S),
            SECRET,
        );
        let claims = verify(&token, SECRET, NOW_MS).unwrap();
        assert_eq!(claims.exp_ms, exp_in(60) * 1000 + 500);
    }

    #[test]
    fn expiry_with_leeway() {
        // Expired 10 s ago: within the 30 s leeway.
        let token = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(-10)));
        assert!(verify(&token, SECRET, NOW_MS).is_ok());
        // Expired 31 s ago, or exactly at the edge of the leeway: refused.
        for ago in [-31, -30, -3600] {
            let token = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(ago)));
            assert_eq!(
                verify(&token, SECRET, NOW_MS),
                Err(TokenError::Expired),
                "{ago}"
            );
        }
        let token = mint(r#"{"sub":"u","exp":0}"#);
        assert_eq!(verify(&token, SECRET, NOW_MS), Err(TokenError::Expired));
    }

    #[test]
    fn not_before_and_issued_at_in_the_future() {
        let token = mint(&format!(
            r#"{{"sub":"u","exp":{},"nbf":{}}}"#,
            exp_in(600),
            exp_in(20)
        ));
        assert!(verify(&token, SECRET, NOW_MS).is_ok());
        let token = mint(&format!(
            r#"{{"sub":"u","exp":{},"nbf":{}}}"#,
            exp_in(600),
            exp_in(120)
        ));
        assert_eq!(verify(&token, SECRET, NOW_MS), Err(TokenError::NotYetValid));
        let token = mint(&format!(
            r#"{{"sub":"u","exp":{},"iat":{}}}"#,
            exp_in(600),
            exp_in(20)
        ));
        assert!(verify(&token, SECRET, NOW_MS).is_ok());
        let token = mint(&format!(
            r#"{{"sub":"u","exp":{},"iat":{}}}"#,
            exp_in(600),
            exp_in(3600)
        ));
        assert_eq!(
            verify(&token, SECRET, NOW_MS),
            Err(TokenError::IssuedInFuture)
        );
    }

    #[test]
    fn forged_signature_is_refused() {
        let payload = format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(300));
        let token = mint_raw(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &payload,
            b"some-other-secret",
        );
        assert_eq!(
            verify(&token, SECRET, NOW_MS),
            Err(TokenError::BadSignature)
        );
        // A truncated or extended signature is refused too.
        let good = mint(&payload);
        let (input, sig) = good.rsplit_once('.').unwrap();
        let short = format!("{input}.{}", &sig[..sig.len() - 4]);
        assert!(verify(&short, SECRET, NOW_MS).is_err());
        let long = format!("{input}.{sig}AAAA");
        assert!(verify(&long, SECRET, NOW_MS).is_err());
        let empty = format!("{input}.");
        assert_eq!(
            verify(&empty, SECRET, NOW_MS),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let token = mint(&format!(r#"{{"sub":"user","exp":{}}}"#, exp_in(300)));
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[1] = b64(format!(r#"{{"sub":"admin","exp":{}}}"#, exp_in(300)).as_bytes());
        let tampered = parts.join(".");
        assert_eq!(
            verify(&tampered, SECRET, NOW_MS),
            Err(TokenError::BadSignature)
        );
        // Tampered header (still HS256, so the signature is what refuses it).
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        parts[0] = b64(br#"{"alg":"HS256","typ":"JWT","kid":"x"}"#);
        assert_eq!(
            verify(&parts.join("."), SECRET, NOW_MS),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let payload = b64(format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(300)).as_bytes());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
        ] {
            let unsigned = format!("{}.{payload}.", b64(header.as_bytes()));
            assert!(looks_like_jwt(&unsigned));
            assert_eq!(
                verify(&unsigned, SECRET, NOW_MS),
                Err(TokenError::UnsupportedAlgorithm)
            );
            // Even with a valid HS256 signature attached, the header decides.
            let input = format!("{}.{payload}", b64(header.as_bytes()));
            let signed = format!("{input}.{}", sign(&input, SECRET));
            assert_eq!(
                verify(&signed, SECRET, NOW_MS),
                Err(TokenError::UnsupportedAlgorithm)
            );
        }
    }

    #[test]
    fn other_algorithms_are_refused() {
        let payload = format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(300));
        for header in [
            r#"{"alg":"HS512","typ":"JWT"}"#,
            r#"{"alg":"HS384"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
            r#"{"alg":"ES256"}"#,
            r#"{"alg":"EdDSA"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"HS256 "}"#,
            r#"{"alg":256}"#,
            r#"{"alg":null}"#,
            r#"{"typ":"JWT"}"#,
            r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        ] {
            let token = mint_raw(header, &payload, SECRET);
            assert_eq!(
                verify(&token, SECRET, NOW_MS),
                Err(TokenError::UnsupportedAlgorithm),
                "{header}"
            );
        }
        // Two `alg` fields: refused rather than picking one.
        let token = mint_raw(r#"{"alg":"none","alg":"HS256"}"#, &payload, SECRET);
        assert_eq!(verify(&token, SECRET, NOW_MS), Err(TokenError::Malformed));
    }

    #[test]
    fn missing_or_bad_claims_are_refused() {
        let exp = exp_in(300);
        let cases: Vec<(String, TokenError)> = vec![
            (r#"{"sub":"u"}"#.into(), TokenError::MissingExp),
            (r#"{"sub":"u","exp":null}"#.into(), TokenError::MissingExp),
            (format!(r#"{{"exp":{exp}}}"#), TokenError::MissingSub),
            (
                r#"{"sub":"u","exp":"soon"}"#.into(),
                TokenError::InvalidClaim("exp"),
            ),
            (
                format!(r#"{{"sub":"u","exp":"{exp}"}}"#),
                TokenError::InvalidClaim("exp"),
            ),
            (
                r#"{"sub":"u","exp":-5}"#.into(),
                TokenError::InvalidClaim("exp"),
            ),
            (
                r#"{"sub":"u","exp":true}"#.into(),
                TokenError::InvalidClaim("exp"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"nbf":"x"}}"#),
                TokenError::InvalidClaim("nbf"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"iat":[]}}"#),
                TokenError::InvalidClaim("iat"),
            ),
            (
                format!(r#"{{"sub":"","exp":{exp}}}"#),
                TokenError::InvalidClaim("sub"),
            ),
            (
                format!(r#"{{"sub":42,"exp":{exp}}}"#),
                TokenError::InvalidClaim("sub"),
            ),
            (
                format!(r#"{{"sub":"a\nb","exp":{exp}}}"#),
                TokenError::InvalidClaim("sub"),
            ),
            (
                format!(r#"{{"sub":"{}","exp":{exp}}}"#, "x".repeat(257)),
                TokenError::InvalidClaim("sub"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"tier":""}}"#),
                TokenError::InvalidClaim("tier"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"tier":"pro plus"}}"#),
                TokenError::InvalidClaim("tier"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"tier":"pró"}}"#),
                TokenError::InvalidClaim("tier"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"tier":7}}"#),
                TokenError::InvalidClaim("tier"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"tier":"{}"}}"#, "t".repeat(65)),
                TokenError::InvalidClaim("tier"),
            ),
            (
                format!(r#"{{"sub":"u","sub":"admin","exp":{exp}}}"#),
                TokenError::Malformed,
            ),
            (format!(r#"["u",{exp}]"#), TokenError::Malformed),
            ("not json".into(), TokenError::Malformed),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                verify(&mint(&payload), SECRET, NOW_MS),
                Err(expected),
                "{payload}"
            );
        }
        // The limits themselves are accepted.
        let sub = "é".repeat(256);
        let tier = "t".repeat(64);
        let token = mint(&format!(r#"{{"sub":"{sub}","exp":{exp},"tier":"{tier}"}}"#));
        assert!(verify(&token, SECRET, NOW_MS).is_ok());
    }

    #[test]
    fn malformed_and_oversize_tokens_are_refused() {
        let good = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(300)));
        for bad in [
            "",
            ".",
            "..",
            "...",
            "a.b",
            "a.b.c.d",
            "ck_live_abc",
            "sk-ant-api03-abc",
        ] {
            assert_eq!(
                verify(bad, SECRET, NOW_MS),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify(&format!("{good}.x"), SECRET, NOW_MS),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            verify(&format!(" {good}"), SECRET, NOW_MS),
            Err(TokenError::Malformed)
        );
        // Standard base64 or padding instead of unpadded base64url.
        let padded = good.replacen('.', "=.", 1);
        assert_eq!(verify(&padded, SECRET, NOW_MS), Err(TokenError::Malformed));
        let huge = format!("{good}{}", "A".repeat(MAX_TOKEN_LEN));
        assert_eq!(verify(&huge, SECRET, NOW_MS), Err(TokenError::TooLong));
        let big_payload = format!(
            r#"{{"sub":"u","exp":{},"pad":"{}"}}"#,
            exp_in(300),
            "p".repeat(7000)
        );
        assert_eq!(
            verify(&mint(&big_payload), SECRET, NOW_MS),
            Err(TokenError::TooLong)
        );
        assert_eq!(verify(&good, b"", NOW_MS), Err(TokenError::NoSecret));
    }

    #[test]
    fn looks_like_jwt_tells_tokens_from_keys() {
        let token = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(300)));
        assert!(looks_like_jwt(&token));
        // Signature is not checked here: a forged token still looks like one.
        assert!(looks_like_jwt(&mint_raw(r#"{"alg":"RS256"}"#, "{}", b"x")));
        for not_jwt in [
            "",
            "ck_live_abc",
            "ck_alice_0123456789",
            "sk-ant-api03-abcdefghijklmnopqrstuvwxyz_0123456789-ABCDEFG",
            "a.b.c",
            "...",
            "eyJhbGciOiJIUzI1NiJ9..sig",
            "eyJhbGciOiJIUzI1NiJ9.e30",
            "eyJhbGciOiJIUzI1NiJ9.e30.sig.more",
            "eyJhbGciOiJIUzI1NiJ9=.e30.sig",
            "eyJhbGciOiJIUzI1NiJ9.e30.si+g",
            "bm90IGpzb24.e30.c2ln", // header "not json"
            "WzFd.e30.c2ln",        // header "[1]"
        ] {
            assert!(!looks_like_jwt(not_jwt), "{not_jwt:?}");
        }
    }

    #[test]
    fn errors_never_contain_the_token_or_the_secret() {
        let exp = exp_in(300);
        let tokens = [
            mint_raw(
                r#"{"alg":"HS256"}"#,
                &format!(r#"{{"sub":"u","exp":{exp}}}"#),
                b"wrong",
            ),
            mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(-3600))),
            mint(r#"{"sub":"u"}"#),
            mint(r#"{"sub":"u","exp":"later"}"#),
            mint_raw(r#"{"alg":"none"}"#, "{}", SECRET),
            "garbage.garbage.garbage".to_string(),
            "x".repeat(10_000),
        ];
        let secret_text = std::str::from_utf8(SECRET).unwrap();
        for token in &tokens {
            let err = verify(token, SECRET, NOW_MS).unwrap_err();
            for text in [err.to_string(), format!("{err:?}")] {
                assert!(!text.contains(secret_text), "{text}");
                assert!(!text.contains(token.as_str()), "{text}");
                for segment in token.split('.').filter(|s| s.len() >= 8) {
                    assert!(!text.contains(segment), "{text}");
                }
                assert!(text.len() < 64, "{text}");
            }
        }
    }

    #[test]
    fn error_messages() {
        assert_eq!(TokenError::Expired.to_string(), "token expired");
        assert_eq!(TokenError::BadSignature.to_string(), "bad signature");
        assert_eq!(TokenError::Malformed.to_string(), "malformed token");
        assert_eq!(
            TokenError::UnsupportedAlgorithm.to_string(),
            "unsupported algorithm"
        );
        assert_eq!(TokenError::MissingExp.to_string(), "missing exp claim");
        assert_eq!(
            TokenError::InvalidClaim("tier").to_string(),
            "invalid tier claim"
        );
    }

    fn required<'a>(audience: Option<&'a str>, issuer: Option<&'a str>) -> Requirements<'a> {
        Requirements {
            audience,
            issuer,
            ..Requirements::default()
        }
    }

    #[test]
    fn audience_is_checked_when_required() {
        let exp = exp_in(300);
        let want = required(Some("https://chat.example"), None);
        for ok in [
            format!(r#"{{"sub":"u","exp":{exp},"aud":"https://chat.example"}}"#),
            format!(r#"{{"sub":"u","exp":{exp},"aud":["other","https://chat.example"]}}"#),
        ] {
            assert!(
                verify_with(&mint(&ok), SECRET, NOW_MS, &want).is_ok(),
                "{ok}"
            );
        }
        for (payload, expected) in [
            (
                format!(r#"{{"sub":"u","exp":{exp}}}"#),
                TokenError::WrongAudience,
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"aud":"https://evil.example"}}"#),
                TokenError::WrongAudience,
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"aud":["a","b"]}}"#),
                TokenError::WrongAudience,
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"aud":[]}}"#),
                TokenError::WrongAudience,
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"aud":"HTTPS://CHAT.EXAMPLE"}}"#),
                TokenError::WrongAudience,
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"aud":7}}"#),
                TokenError::InvalidClaim("aud"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"aud":["https://chat.example",7]}}"#),
                TokenError::InvalidClaim("aud"),
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"aud":"a","aud":"https://chat.example"}}"#),
                TokenError::Malformed,
            ),
        ] {
            assert_eq!(
                verify_with(&mint(&payload), SECRET, NOW_MS, &want),
                Err(expected),
                "{payload}"
            );
        }
        // Without a required audience, `aud` is not looked at.
        let odd = mint(&format!(r#"{{"sub":"u","exp":{exp},"aud":7}}"#));
        assert!(verify(&odd, SECRET, NOW_MS).is_ok());
    }

    #[test]
    fn issuer_is_checked_when_required() {
        let exp = exp_in(300);
        let want = required(None, Some("https://auth.example"));
        let good = mint(&format!(
            r#"{{"sub":"u","exp":{exp},"iss":"https://auth.example"}}"#
        ));
        assert!(verify_with(&good, SECRET, NOW_MS, &want).is_ok());
        for (payload, expected) in [
            (
                format!(r#"{{"sub":"u","exp":{exp}}}"#),
                TokenError::WrongIssuer,
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"iss":"https://auth.example/"}}"#),
                TokenError::WrongIssuer,
            ),
            (
                format!(r#"{{"sub":"u","exp":{exp},"iss":["https://auth.example"]}}"#),
                TokenError::InvalidClaim("iss"),
            ),
        ] {
            assert_eq!(
                verify_with(&mint(&payload), SECRET, NOW_MS, &want),
                Err(expected),
                "{payload}"
            );
        }
        // Both at once.
        let both = required(Some("chat"), Some("https://auth.example"));
        let token = mint(&format!(
            r#"{{"sub":"u","exp":{exp},"iss":"https://auth.example","aud":"chat"}}"#
        ));
        assert!(verify_with(&token, SECRET, NOW_MS, &both).is_ok());
        assert_eq!(
            verify_with(&good, SECRET, NOW_MS, &both),
            Err(TokenError::WrongAudience)
        );
    }

    #[test]
    fn lifetime_is_capped() {
        // The default cap is an hour, give or take the leeway.
        let (hour, day) = (3_600, 86_400);
        let within = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(hour + 20)));
        assert!(verify(&within, SECRET, NOW_MS).is_ok());
        for seconds in [hour + 31, day, 365 * day] {
            let token = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(seconds)));
            assert_eq!(
                verify(&token, SECRET, NOW_MS),
                Err(TokenError::LifetimeTooLong),
                "{seconds}"
            );
        }
        let far = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, u64::MAX));
        assert_eq!(
            verify(&far, SECRET, NOW_MS),
            Err(TokenError::LifetimeTooLong)
        );
        // A shorter cap, as JWT_MAX_LIFETIME_S sets it.
        let short = Requirements {
            max_lifetime_ms: 600_000,
            ..Requirements::default()
        };
        let ten_minutes = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(600)));
        assert!(verify_with(&ten_minutes, SECRET, NOW_MS, &short).is_ok());
        let hour = mint(&format!(r#"{{"sub":"u","exp":{}}}"#, exp_in(3600)));
        assert_eq!(
            verify_with(&hour, SECRET, NOW_MS, &short),
            Err(TokenError::LifetimeTooLong)
        );
        assert_eq!(
            TokenError::LifetimeTooLong.to_string(),
            "token lifetime too long"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            let _ = looks_like_jwt(&s);
            let _ = verify(&s, SECRET, NOW_MS);
            let _ = verify(&s, SECRET, u64::MAX);
        }

        #[test]
        fn jwt_shaped_strings_never_panic(
            h in "[A-Za-z0-9_-]{0,40}",
            p in "[A-Za-z0-9_-]{0,80}",
            s in "[A-Za-z0-9_=+/.-]{0,60}",
            now in any::<u64>(),
        ) {
            let token = format!("{h}.{p}.{s}");
            let _ = looks_like_jwt(&token);
            prop_assert!(verify(&token, SECRET, now).is_err());
        }

        #[test]
        fn segments_decode_as_the_strict_base64url_engine_decodes(
            segment in "[A-Za-z0-9_=+/-]{0,13}",
        ) {
            prop_assert_eq!(
                decode_segment(&segment).ok(),
                URL_SAFE_NO_PAD.decode(&segment).ok(),
                "{}", segment
            );
        }

        #[test]
        fn every_byte_string_comes_back_from_its_segment(bytes in any::<Vec<u8>>()) {
            prop_assert_eq!(decode_segment(&URL_SAFE_NO_PAD.encode(&bytes)).ok(), Some(bytes));
        }

        #[test]
        fn arbitrary_signed_payloads_never_panic(payload in any::<String>(), now in any::<u64>()) {
            let token = mint(&payload);
            let _ = verify(&token, SECRET, now);
        }

        #[test]
        fn any_numeric_dates_never_panic(
            exp in any::<u64>(),
            nbf in any::<i64>(),
            frac in any::<f64>(),
            now in any::<u64>(),
        ) {
            let frac = if frac.is_finite() { frac } else { 1.5 };
            let token = mint(&format!(r#"{{"sub":"u","exp":{exp},"nbf":{nbf},"iat":{frac}}}"#));
            let _ = verify(&token, SECRET, now);
        }
    }
}
