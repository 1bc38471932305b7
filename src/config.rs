//! Configuration, parsed and validated once into types that cannot hold nonsense.
//!
//! Every variable of the contract is read through one lookup function (wrangler `[vars]` and
//! secrets in production, a map in tests). A bad value becomes a [`ConfigError`] naming the
//! variable, which the shell answers with one clear error response instead of panicking.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::identity::Secret;

/// Every variable the proxy reads, as wrangler.toml and `wrangler secret put` name them.
pub const VARIABLES: &[&str] = &[
    "UPSTREAM_URL",
    "ANTHROPIC_API_KEY",
    "REQUEST_BUDGET_MS",
    "ATTEMPT_TIMEOUT_MS",
    "MAX_ATTEMPTS",
    "BACKOFF_BASE_MS",
    "BACKOFF_MAX_MS",
    "ALLOWED_ORIGINS",
    "RATE_LIMITS",
    "CLIENT_KEYS",
    "JWT_SECRET",
    "ALLOW_PASSTHROUGH_KEYS",
    "MAX_BODY_BYTES",
];

/// The tier every caller falls into unless a key or token names another.
pub const DEFAULT_TIER: &str = "default";

/// `RATE_LIMITS` when the variable is unset: the contract's example, close to Anthropic's own
/// first tier, so a fresh deployment never lets one caller spend the whole upstream key.
pub const DEFAULT_RATE_LIMITS: &str =
    r#"{"default": {"rpm": 50, "input_tpm": 40000, "output_tpm": 8000, "concurrency": 4}}"#;

/// A variable that could not be used, and why. The message never contains the value itself:
/// the variable may be a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "configuration variable {} is invalid: {}",
            self.variable, self.problem
        )
    }
}

impl std::error::Error for ConfigError {}

fn invalid(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}

/// Which browser origins may call the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// No browser access (the default): every request carrying `Origin` is refused.
    None,
    /// `*`: any origin.
    Any,
    /// An explicit list, compared exactly (scheme, host and port; no trailing slash).
    List(Vec<String>),
}

impl TierLimits {
    /// No dimension is limited: the caller's object need not be asked.
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none()
            && self.input_tpm.is_none()
            && self.output_tpm.is_none()
            && self.concurrency.is_none()
    }
}

impl AllowedOrigins {
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::None => false,
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

/// The limits of one tier. `None` means unlimited in that dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    pub rpm: Option<NonZeroU32>,
    pub input_tpm: Option<NonZeroU32>,
    pub output_tpm: Option<NonZeroU32>,
    pub concurrency: Option<NonZeroU32>,
}

/// What a key listed in `CLIENT_KEYS` stands for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub id: String,
    #[serde(default = "default_tier")]
    pub tier: String,
}

fn default_tier() -> String {
    DEFAULT_TIER.to_string()
}

/// The whole validated configuration.
#[derive(Clone)]
pub struct Config {
    /// Base URL of the upstream, without a trailing slash.
    pub upstream_url: String,
    pub upstream_key: Option<Secret>,
    pub request_budget_ms: u64,
    pub attempt_timeout_ms: u64,
    pub max_attempts: NonZeroU32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub allowed_origins: AllowedOrigins,
    pub rate_limits: BTreeMap<String, TierLimits>,
    /// Client keys (as secrets) and what they stand for.
    pub client_keys: Vec<(Secret, ClientEntry)>,
    pub jwt_secret: Option<Secret>,
    pub allow_passthrough_keys: bool,
    pub max_body_bytes: u64,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("upstream_url", &self.upstream_url)
            .field("upstream_key", &self.upstream_key.as_ref().map(|_| "<set>"))
            .field("request_budget_ms", &self.request_budget_ms)
            .field("attempt_timeout_ms", &self.attempt_timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base_ms", &self.backoff_base_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("allowed_origins", &self.allowed_origins)
            .field("rate_limits", &self.rate_limits)
            .field("client_keys", &self.client_keys.len())
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("allow_passthrough_keys", &self.allow_passthrough_keys)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// Longest budget or timeout accepted: one hour. Anything longer is almost certainly a unit
/// mistake (seconds written as milliseconds would be the other way round).
const MAX_DURATION_MS: u64 = 3_600_000;

impl Config {
    /// Reads and validates every variable through `lookup`, which returns the raw value of a
    /// variable or secret (or `None` when unset). Empty strings count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let upstream_url = parse_upstream_url(get("UPSTREAM_URL"))?;
        let upstream_key = get("ANTHROPIC_API_KEY").map(Secret::new);
        let request_budget_ms = parse_ms("REQUEST_BUDGET_MS", get("REQUEST_BUDGET_MS"), 30_000)?;
        let attempt_timeout_ms = parse_ms("ATTEMPT_TIMEOUT_MS", get("ATTEMPT_TIMEOUT_MS"), 60_000)?;
        let max_attempts = match get("MAX_ATTEMPTS") {
            None => NonZeroU32::MIN.saturating_add(3),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .and_then(NonZeroU32::new)
                .filter(|n| n.get() <= 100)
                .ok_or_else(|| invalid("MAX_ATTEMPTS", "expected an integer from 1 to 100"))?,
        };
        let backoff_base_ms = parse_ms("BACKOFF_BASE_MS", get("BACKOFF_BASE_MS"), 500)?;
        let backoff_max_ms = parse_ms("BACKOFF_MAX_MS", get("BACKOFF_MAX_MS"), 8_000)?;
        if backoff_max_ms < backoff_base_ms {
            return Err(invalid(
                "BACKOFF_MAX_MS",
                "must not be smaller than BACKOFF_BASE_MS",
            ));
        }
        let allowed_origins = parse_origins(get("ALLOWED_ORIGINS"))?;
        let rate_limits = parse_rate_limits(get("RATE_LIMITS"))?;
        let client_keys = parse_client_keys(get("CLIENT_KEYS"), &rate_limits)?;
        let jwt_secret = get("JWT_SECRET").map(Secret::new);
        let allow_passthrough_keys = match get("ALLOW_PASSTHROUGH_KEYS").as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(_) => return Err(invalid("ALLOW_PASSTHROUGH_KEYS", "expected true or false")),
        };
        let max_body_bytes = match get("MAX_BODY_BYTES") {
            None => 33_554_432,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("MAX_BODY_BYTES", "expected a positive integer"))?,
        };

        Ok(Config {
            upstream_url,
            upstream_key,
            request_budget_ms,
            attempt_timeout_ms,
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
            allowed_origins,
            rate_limits,
            client_keys,
            jwt_secret,
            allow_passthrough_keys,
            max_body_bytes,
        })
    }

    /// The limits of a tier; a tier missing from `RATE_LIMITS` is unlimited.
    pub fn tier_limits(&self, tier: &str) -> TierLimits {
        self.rate_limits.get(tier).copied().unwrap_or_default()
    }
}

fn parse_upstream_url(raw: Option<String>) -> Result<String, ConfigError> {
    let url = raw.unwrap_or_else(|| "https://api.anthropic.com".to_string());
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("UPSTREAM_URL", "must start with https:// or http://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || rest.contains(['?', '#', ' ']) || host.contains('@') {
        return Err(invalid(
            "UPSTREAM_URL",
            "expected a base URL like https://api.anthropic.com",
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn parse_ms(variable: &'static str, raw: Option<String>, default: u64) -> Result<u64, ConfigError> {
    match raw {
        None => Ok(default),
        Some(raw) => raw
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0 && *n <= MAX_DURATION_MS)
            .ok_or_else(|| {
                invalid(
                    variable,
                    format!("expected milliseconds from 1 to {MAX_DURATION_MS}"),
                )
            }),
    }
}

fn parse_origins(raw: Option<String>) -> Result<AllowedOrigins, ConfigError> {
    let Some(raw) = raw else {
        return Ok(AllowedOrigins::None);
    };
    if raw == "*" {
        return Ok(AllowedOrigins::Any);
    }
    let mut list = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let origin = origin.trim_end_matches('/');
        let rest = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .filter(|rest| !rest.is_empty() && !rest.contains('/') && !rest.contains(' '));
        if rest.is_none() {
            return Err(invalid(
                "ALLOWED_ORIGINS",
                "expected * or comma-separated origins like https://chat.example.com",
            ));
        }
        // Browsers send an internationalized host in its ASCII (punycode) form, so a Unicode
        // origin here could never match one.
        if !origin.is_ascii() {
            return Err(invalid(
                "ALLOWED_ORIGINS",
                "origins must be ASCII: write an internationalized host in its punycode form \
                 (https://xn--…), as browsers send it",
            ));
        }
        list.push(origin.to_string());
    }
    Ok(if list.is_empty() {
        AllowedOrigins::None
    } else {
        AllowedOrigins::List(list)
    })
}

fn parse_rate_limits(raw: Option<String>) -> Result<BTreeMap<String, TierLimits>, ConfigError> {
    let raw = raw.unwrap_or_else(|| DEFAULT_RATE_LIMITS.to_string());
    let tiers: BTreeMap<String, TierLimits> = serde_json::from_str(&raw).map_err(|e| {
        invalid(
            "RATE_LIMITS",
            format!(
                "expected JSON like {{\"default\": {{\"rpm\": 50, \"input_tpm\": 40000}}}} \
                 with positive integers for rpm, input_tpm, output_tpm, concurrency ({e})"
            ),
        )
    })?;
    Ok(tiers)
}

fn parse_client_keys(
    raw: Option<String>,
    tiers: &BTreeMap<String, TierLimits>,
) -> Result<Vec<(Secret, ClientEntry)>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    // The error from serde_json would quote the offending input, which may be a key.
    let map: BTreeMap<String, ClientEntry> = serde_json::from_str(&raw).map_err(|e| {
        invalid(
            "CLIENT_KEYS",
            format!(
                "expected JSON like {{\"<client key>\": {{\"id\": \"alice\", \"tier\": \"default\"}}}} \
                 (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let mut keys = Vec::with_capacity(map.len());
    for (key, entry) in map {
        if key.len() < 16 {
            return Err(invalid(
                "CLIENT_KEYS",
                "every client key must be at least 16 characters",
            ));
        }
        if entry.id.is_empty() || entry.id.len() > 256 {
            return Err(invalid(
                "CLIENT_KEYS",
                "every id must be 1 to 256 characters",
            ));
        }
        if entry.tier != DEFAULT_TIER && !tiers.contains_key(&entry.tier) {
            return Err(invalid(
                "CLIENT_KEYS",
                format!(
                    "tier {:?} of client {:?} is not defined in RATE_LIMITS",
                    entry.tier, entry.id
                ),
            ));
        }
        keys.push((Secret::new(key), entry));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = config(&[]).unwrap();
        assert_eq!(c.upstream_url, "https://api.anthropic.com");
        assert_eq!(c.request_budget_ms, 30_000);
        assert_eq!(c.attempt_timeout_ms, 60_000);
        assert_eq!(c.max_attempts.get(), 4);
        assert_eq!((c.backoff_base_ms, c.backoff_max_ms), (500, 8_000));
        assert_eq!(c.allowed_origins, AllowedOrigins::None);
        assert_eq!(c.max_body_bytes, 33_554_432);
        assert!(!c.allow_passthrough_keys);
        let default = c.tier_limits(DEFAULT_TIER);
        assert_eq!(default.rpm.map(|n| n.get()), Some(50));
        assert_eq!(default.output_tpm.map(|n| n.get()), Some(8000));
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases = [
            ("UPSTREAM_URL", "ftp://x"),
            ("UPSTREAM_URL", "https://"),
            ("REQUEST_BUDGET_MS", "-1"),
            ("REQUEST_BUDGET_MS", "0"),
            ("ATTEMPT_TIMEOUT_MS", "soon"),
            ("MAX_ATTEMPTS", "0"),
            ("MAX_ATTEMPTS", "1000"),
            ("BACKOFF_BASE_MS", "1.5"),
            ("ALLOWED_ORIGINS", "example.com"),
            ("RATE_LIMITS", "{\"default\": {\"rpm\": 0}}"),
            ("RATE_LIMITS", "{\"default\": {\"rpn\": 5}}"),
            ("RATE_LIMITS", "[]"),
            ("CLIENT_KEYS", "{\"short\": {\"id\": \"a\"}}"),
            ("CLIENT_KEYS", "not json"),
            ("ALLOW_PASSTHROUGH_KEYS", "yes please"),
            ("MAX_BODY_BYTES", "0"),
        ];
        for (variable, value) in cases {
            let err = config(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable, "{variable}={value}");
        }
    }

    #[test]
    fn backoff_max_below_base_is_refused() {
        let err = config(&[("BACKOFF_BASE_MS", "1000"), ("BACKOFF_MAX_MS", "10")]).unwrap_err();
        assert_eq!(err.variable, "BACKOFF_MAX_MS");
    }

    #[test]
    fn client_keys_must_name_defined_tiers() {
        let err = config(&[(
            "CLIENT_KEYS",
            r#"{"ck_0123456789abcdef": {"id": "a", "tier": "gold"}}"#,
        )])
        .unwrap_err();
        assert_eq!(err.variable, "CLIENT_KEYS");
        assert!(!err.problem.contains("ck_0123456789abcdef"));
        let ok = config(&[
            ("RATE_LIMITS", r#"{"gold": {"rpm": 5}}"#),
            (
                "CLIENT_KEYS",
                r#"{"ck_0123456789abcdef": {"id": "a", "tier": "gold"}}"#,
            ),
        ])
        .unwrap();
        assert_eq!(ok.client_keys.len(), 1);
        assert_eq!(ok.client_keys[0].1.tier, "gold");
    }

    #[test]
    fn client_key_errors_never_quote_the_input() {
        let err = config(&[("CLIENT_KEYS", r#"{"sk-secret-value-123456": 5}"#)]).unwrap_err();
        assert!(!err.to_string().contains("sk-secret-value"), "{err}");
    }

    #[test]
    fn origins_parse() {
        let c = config(&[(
            "ALLOWED_ORIGINS",
            "https://a.example, http://localhost:8080/",
        )])
        .unwrap();
        assert!(c.allowed_origins.allows("https://a.example"));
        assert!(c.allowed_origins.allows("http://localhost:8080"));
        assert!(!c.allowed_origins.allows("https://b.example"));
        assert_eq!(
            config(&[("ALLOWED_ORIGINS", "*")]).unwrap().allowed_origins,
            AllowedOrigins::Any
        );
    }

    #[test]
    fn regression_unicode_origin_could_never_match() {
        let err = config(&[(
            "ALLOWED_ORIGINS",
            "https://chat.example, https://exämple.com",
        )])
        .unwrap_err();
        assert_eq!(err.variable, "ALLOWED_ORIGINS");
        assert!(err.problem.contains("punycode"), "{}", err.problem);
        let c = config(&[("ALLOWED_ORIGINS", "https://xn--exmple-cua.com")]).unwrap();
        assert!(c.allowed_origins.allows("https://xn--exmple-cua.com"));
    }

    #[test]
    fn upstream_url_loses_its_trailing_slash() {
        let c = config(&[("UPSTREAM_URL", "http://127.0.0.1:8080/")]).unwrap();
        assert_eq!(c.upstream_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn unknown_tier_is_unlimited() {
        let c = config(&[("RATE_LIMITS", r#"{"default": {}}"#)]).unwrap();
        assert_eq!(c.tier_limits("nope"), TierLimits::default());
        assert_eq!(c.tier_limits(DEFAULT_TIER), TierLimits::default());
    }
}
