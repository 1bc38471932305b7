//! Configuration, parsed and validated once into types that cannot hold nonsense.
//!
//! Every variable of the contract is read through one lookup function (wrangler `[vars]` and
//! secrets in production, a map in tests). A bad value becomes a [`ConfigError`] naming the
//! variable, which the shell answers with one clear error response instead of panicking.

use crate::sorted_map::SortedMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};

use serde::{Deserialize, Serialize};

use crate::identity::prefixes::RESERVED_ID_PREFIXES;
use crate::identity::secret::{FingerprintKey, Secret};
use crate::json::Json;
use crate::limits::calendar::Zone;
use crate::limits::prices::PriceTable;
use crate::limits::quota::Quotas;
use crate::upstream::{Priority, MAX_WEIGHT};

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
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "JWT_MAX_LIFETIME_S",
    "ALLOW_PASSTHROUGH_KEYS",
    "MAX_BODY_BYTES",
    "MAX_INFLIGHT_BODY_BYTES",
    "MAX_INFLIGHT_BODY_BYTES_PER_CALLER",
    "BODY_READ_TIMEOUT_MS",
    "MIN_BODY_BYTES_PER_S",
    "MODEL_FALLBACKS",
    "ADMIN_KEY",
    "REQUEST_LOG",
    "FINGERPRINT_KEY",
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

impl ConfigError {
    /// What the public may be told: the variable, nothing of what is wrong with it. Callers
    /// of a misconfigured deployment cannot fix it, and the problem text can describe the
    /// deployment's secrets (their length, their shape) to anyone who asks.
    pub fn public_message(&self) -> String {
        format!("the proxy is misconfigured: {}", self.variable)
    }

    /// The whole problem, for the operator's log line.
    pub fn detail(&self) -> String {
        self.to_string()
    }
}

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
            && !self.quotas.any()
    }

    /// Whether a settlement needs to see the answer: its usage (token limits) or its end
    /// (a concurrency slot is held until the body has passed). With `rpm` alone, neither.
    pub fn settles_on_the_answer(&self) -> bool {
        self.input_tpm.is_some()
            || self.output_tpm.is_some()
            || self.concurrency.is_some()
            || self.quotas.settles_on_the_answer()
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
    /// Daily and monthly quotas (`rpd`, `input_tpd`, `output_tpd`, `usd_per_day`,
    /// `usd_per_month`, `quota_tz`); left out when none is set.
    #[serde(default, skip_serializing_if = "Quotas::is_none")]
    pub quotas: Quotas,
}

/// A tier as `RATE_LIMITS` writes it: its limits, and optionally the `anthropic-beta` values
/// its callers may send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierSpec {
    rpm: Option<NonZeroU32>,
    input_tpm: Option<NonZeroU32>,
    output_tpm: Option<NonZeroU32>,
    concurrency: Option<NonZeroU32>,
    betas: Option<Vec<String>>,
    weight: Option<NonZeroU32>,
    priority: Option<String>,
    budget_ms: Option<NonZeroU64>,
    rpd: Option<NonZeroU64>,
    input_tpd: Option<NonZeroU64>,
    output_tpd: Option<NonZeroU64>,
    // Read as a JSON value, checked in `tier_quotas` (one reader the Worker has already, not
    // one more for each type).
    #[serde(default)]
    usd_per_day: Json,
    #[serde(default)]
    usd_per_month: Json,
    #[serde(default)]
    quota_tz: Json,
}

/// How a tier's callers share a scarce upstream key with the others (`RATE_LIMITS` options
/// `weight`, `priority`, `budget_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierShare {
    /// Its callers' weight in the fair order (1 to [`crate::upstream::MAX_WEIGHT`]).
    pub weight: u32,
    /// Interactive callers go before background ones.
    pub priority: Priority,
    /// The tier's own request budget (a job may wait minutes); `None`: `REQUEST_BUDGET_MS`.
    pub budget_ms: Option<u64>,
}

impl Default for TierShare {
    fn default() -> Self {
        TierShare {
            weight: 1,
            priority: Priority::Interactive,
            budget_ms: None,
        }
    }
}

/// The longest budget a tier may set: an hour.
const MAX_TIER_BUDGET_MS: u64 = 3_600_000;

/// `MAX_INFLIGHT_BODY_BYTES` when unset: 64 MiB, or `MAX_BODY_BYTES` if that is larger (one
/// body of the largest size always fits).
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// `MAX_INFLIGHT_BODY_BYTES_PER_CALLER` when unset: half the isolate's budget, or one body of
/// the largest size if that is more (so every caller can always send one), never more than
/// the isolate's whole budget.
#[must_use]
pub fn default_caller_share(isolate: u64, max_body: u64) -> u64 {
    (isolate / 2).max(max_body).min(isolate)
}

/// Longest `model` accepted, in bytes, in a request body or in `MODEL_FALLBACKS`. Model ids are
/// a few dozen characters; the model names Durable Object state, log lines and fallback
/// lookups, so an unbounded one is refused.
pub const MAX_MODEL_BYTES: usize = 256;

/// `BODY_READ_TIMEOUT_MS` when unset: a request body has 10 s to arrive, plus what it earns
/// at `MIN_BODY_BYTES_PER_S` (see `request::upload::ReadPace`).
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 10_000;

/// `MIN_BODY_BYTES_PER_S` when unset: 64 KiB a second (half a megabit), slower than any
/// working uplink; the largest body may then take its 32 MiB over about nine minutes.
pub const DEFAULT_MIN_BODY_BYTES_PER_S: u64 = 64 * 1024;

/// Longest beta name accepted in a tier's `betas`.
const MAX_BETA_BYTES: usize = 128;

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
    pub rate_limits: SortedMap<String, TierLimits>,
    /// Tiers whose `betas` list restricts `anthropic-beta`; a tier not here allows every beta.
    pub tier_betas: SortedMap<String, Vec<String>>,
    /// How each tier shares a scarce upstream key (a tier not here: the defaults).
    pub tier_shares: SortedMap<String, TierShare>,
    /// Client keys (as secrets) and what they stand for.
    pub client_keys: Vec<(Secret, ClientEntry)>,
    pub jwt_secret: Option<Secret>,
    /// `JWT_AUDIENCE`: when set, a token's `aud` must contain it.
    pub jwt_audience: Option<String>,
    /// `JWT_ISSUER`: when set, a token's `iss` must equal it.
    pub jwt_issuer: Option<String>,
    /// `JWT_MAX_LIFETIME_S` in milliseconds: the furthest a token's `exp` may lie ahead.
    pub jwt_max_lifetime_ms: u64,
    pub allow_passthrough_keys: bool,
    pub max_body_bytes: u64,
    /// Request bodies one isolate holds at once, in bytes; never below `max_body_bytes`.
    pub max_inflight_body_bytes: u64,
    /// Request bodies one caller holds at once in an isolate, in bytes; between
    /// `max_body_bytes` and `max_inflight_body_bytes`.
    pub max_inflight_body_bytes_per_caller: u64,
    /// `BODY_READ_TIMEOUT_MS`: how long a request body has to arrive, beyond what it earns
    /// by arriving at `min_body_bytes_per_s`.
    pub body_read_timeout_ms: u64,
    /// `MIN_BODY_BYTES_PER_S`: the slowest a request body may arrive, after its grace period.
    pub min_body_bytes_per_s: u64,
    /// `MODEL_FALLBACKS`: model → the models to answer with, in order, when it is overloaded.
    pub model_fallbacks: SortedMap<String, Vec<String>>,
    /// `ADMIN_KEY`: whoever presents it may read `GET /proxy/status`; unset, the route is a 404.
    pub admin_key: Option<Secret>,
    /// `REQUEST_LOG`: which requests write their log line.
    pub request_log: RequestLog,
    /// The key of the callers' tags in logs and metrics: `FINGERPRINT_KEY`, or derived from
    /// another secret (see [`fingerprint_key`]).
    pub fingerprint_key: FingerprintKey,
    /// `MODEL_PRICES` over the built-in price table, for dollar quotas.
    pub prices: PriceTable,
}

/// `REQUEST_LOG`: which requests write their one log line. Every line is a log event that
/// Workers Logs keeps (and bills past its free allowance) and that costs the isolate CPU, so a
/// busy deployment may keep only the lines that tell something beyond "it worked".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RequestLog {
    /// Every request (the default).
    #[default]
    All,
    /// Every answer except a success at the first attempt that waited for nothing and came
    /// from the model asked for.
    Problems,
    /// None (configuration errors and the objects' own failures are still logged).
    Off,
}

impl RequestLog {
    /// Whether a request that ended so writes its line.
    pub fn wants(self, status: u16, attempts: u32, waited: bool, fell_back: bool) -> bool {
        match self {
            RequestLog::All => true,
            RequestLog::Off => false,
            RequestLog::Problems => {
                !(200..300).contains(&status) || attempts > 1 || waited || fell_back
            }
        }
    }
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
            .field("tier_betas", &self.tier_betas)
            .field("tier_shares", &self.tier_shares)
            .field("client_keys", &self.client_keys.len())
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_max_lifetime_ms", &self.jwt_max_lifetime_ms)
            .field("allow_passthrough_keys", &self.allow_passthrough_keys)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_inflight_body_bytes", &self.max_inflight_body_bytes)
            .field(
                "max_inflight_body_bytes_per_caller",
                &self.max_inflight_body_bytes_per_caller,
            )
            .field("body_read_timeout_ms", &self.body_read_timeout_ms)
            .field("min_body_bytes_per_s", &self.min_body_bytes_per_s)
            .field("model_fallbacks", &self.model_fallbacks)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<set>"))
            .field("request_log", &self.request_log)
            .field("fingerprint_key", &self.fingerprint_key)
            .finish()
    }
}

/// Longest budget or timeout accepted: one hour. Anything longer is almost certainly a unit
/// mistake (seconds written as milliseconds would be the other way round).
const MAX_DURATION_MS: u64 = 3_600_000;

/// Shortest `JWT_SECRET`, in bytes: RFC 7518 §3.2 requires an HS256 key at least as long as
/// the hash output (256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// Shortest `ADMIN_KEY`: it opens the operator's view, so it is at least as long as a client
/// key must be.
pub const MIN_ADMIN_KEY_BYTES: usize = 16;

/// `JWT_MAX_LIFETIME_S` when unset: one hour. A token is a bearer credential handed to a
/// browser; a short life bounds what a leaked one is worth, and a backend mints a new one cheaply.
pub const DEFAULT_JWT_MAX_LIFETIME_S: u64 = 3_600;

/// Shortest `FINGERPRINT_KEY`, in bytes: as long as the HMAC-SHA256 output, as for `JWT_SECRET`.
pub const MIN_FINGERPRINT_KEY_BYTES: usize = 32;

/// Longest `JWT_MAX_LIFETIME_S` accepted: one year.
const MAX_JWT_LIFETIME_S: u64 = 31_536_000;

/// Longest `JWT_AUDIENCE` or `JWT_ISSUER`, in bytes.
const MAX_JWT_NAME_BYTES: usize = 1024;

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
        let retries = Retries::parse(&get)?;
        let allowed_origins = parse_origins(get("ALLOWED_ORIGINS"))?;
        let (rate_limits, tier_betas, tier_shares) = parse_rate_limits(get("RATE_LIMITS"))?;
        let client_keys = parse_client_keys(get("CLIENT_KEYS"), &rate_limits)?;
        let tokens = Tokens::parse(&get)?;
        let allow_passthrough_keys = parse_switch(
            "ALLOW_PASSTHROUGH_KEYS",
            get("ALLOW_PASSTHROUGH_KEYS").as_deref(),
        )?;
        let bodies = Bodies::parse(&get)?;
        let model_fallbacks = parse_model_fallbacks(get("MODEL_FALLBACKS"))?;
        let admin_key = parse_admin_key(get("ADMIN_KEY"))?;
        let fingerprint_key = fingerprint_key(&get)?;
        let request_log = parse_request_log(get("REQUEST_LOG"))?;
        let prices = PriceTable::with_overrides(get("MODEL_PRICES").as_deref())
            .map_err(|e| invalid("MODEL_PRICES", e))?;

        Ok(Config {
            upstream_url,
            upstream_key,
            request_budget_ms: retries.request_budget_ms,
            attempt_timeout_ms: retries.attempt_timeout_ms,
            max_attempts: retries.max_attempts,
            backoff_base_ms: retries.backoff_base_ms,
            backoff_max_ms: retries.backoff_max_ms,
            allowed_origins,
            rate_limits,
            tier_betas,
            tier_shares,
            client_keys,
            jwt_secret: tokens.secret,
            jwt_audience: tokens.audience,
            jwt_issuer: tokens.issuer,
            jwt_max_lifetime_ms: tokens.max_lifetime_ms,
            allow_passthrough_keys,
            max_body_bytes: bodies.max_body_bytes,
            max_inflight_body_bytes: bodies.max_inflight_body_bytes,
            max_inflight_body_bytes_per_caller: bodies.max_inflight_body_bytes_per_caller,
            body_read_timeout_ms: bodies.body_read_timeout_ms,
            min_body_bytes_per_s: bodies.min_body_bytes_per_s,
            model_fallbacks,
            admin_key,
            request_log,
            fingerprint_key,
            prices,
        })
    }

    /// The caller's tag in logs and metrics: a keyed hash of its object's name
    /// (`identity_hash`), so every place that knows the name (the request, the settlement
    /// that runs after it) tags the caller alike, and nobody without the key can tell which
    /// identity it stands for.
    #[must_use]
    pub fn caller_tag(&self, identity_hash: &str) -> String {
        self.fingerprint_key.tag("caller", identity_hash)
    }

    /// The models a request for `model` may be answered with when `model` is overloaded, in
    /// order; empty when none are configured.
    pub fn fallbacks_of(&self, model: &str) -> &[String] {
        self.model_fallbacks.get(model).map_or(&[], Vec::as_slice)
    }

    /// What the configuration asks that a plan may not allow: warnings, not errors, since the
    /// Worker cannot tell which plan it runs on. `MAX_ATTEMPTS` above 50 is valid on a paid
    /// plan (10,000 subrequests an invocation), so it is not refused; on the Free plan an
    /// attempt past the 50th subrequest fails.
    #[must_use]
    pub fn plan_warnings(&self) -> Vec<ConfigError> {
        let mut warnings = Vec::new();
        if self.max_attempts.get() > crate::plan::FREE_EXTERNAL_SUBREQUESTS {
            warnings.push(invalid(
                "MAX_ATTEMPTS",
                format!(
                    "more attempts than the {} subrequests a Workers Free invocation may make; there the attempts past them fail",
                    crate::plan::FREE_EXTERNAL_SUBREQUESTS
                ),
            ));
        }
        if self.jwt_secret.is_some() && self.jwt_audience.is_none() {
            warnings.push(invalid(
                "JWT_AUDIENCE",
                "unset while JWT_SECRET is set: a token signed with the same secret for another service is accepted here too; set JWT_AUDIENCE (and have tokens carry it) unless the secret is this proxy's alone",
            ));
        }
        warnings
    }

    /// The limits of a tier. Every tier a caller can carry is checked against `RATE_LIMITS`
    /// (when the configuration is read, or when a token is verified), so a tier missing here
    /// is a mistake: it gets the default tier's limits (which `RATE_LIMITS` must define),
    /// never none at all.
    pub fn tier_limits(&self, tier: &str) -> TierLimits {
        self.rate_limits
            .get(tier)
            .or_else(|| self.rate_limits.get(DEFAULT_TIER))
            .copied()
            .unwrap_or_default()
    }

    /// How a tier's callers share a scarce key (an unknown tier: the default tier's).
    pub fn tier_share(&self, tier: &str) -> TierShare {
        let tier = if self.rate_limits.contains_key(tier) {
            tier
        } else {
            DEFAULT_TIER
        };
        self.tier_shares.get(tier).copied().unwrap_or_default()
    }

    /// The `anthropic-beta` values a tier's callers may send; `None` allows every beta. An
    /// unknown tier falls back to the default tier's list, as its limits do.
    pub fn allowed_betas(&self, tier: &str) -> Option<&[String]> {
        let tier = if self.rate_limits.contains_key(tier) {
            tier
        } else {
            DEFAULT_TIER
        };
        self.tier_betas.get(tier).map(Vec::as_slice)
    }

    /// A variable that some callers need and that is not set: `ANTHROPIC_API_KEY` when
    /// client keys or signed tokens are configured (their callers are forwarded with it).
    /// Not a configuration error, since passthrough callers still work, but worth reporting
    /// on a health check.
    pub fn missing_for_managed_callers(&self) -> Option<&'static str> {
        let has_managed_callers = !self.client_keys.is_empty() || self.jwt_secret.is_some();
        (has_managed_callers && self.upstream_key.is_none()).then_some("ANTHROPIC_API_KEY")
    }
}

/// The request's budget and its retries: `REQUEST_BUDGET_MS`, `ATTEMPT_TIMEOUT_MS`,
/// `MAX_ATTEMPTS`, `BACKOFF_BASE_MS`, `BACKOFF_MAX_MS`.
struct Retries {
    request_budget_ms: u64,
    attempt_timeout_ms: u64,
    max_attempts: NonZeroU32,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
}

impl Retries {
    fn parse(get: &impl Fn(&str) -> Option<String>) -> Result<Retries, ConfigError> {
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
        Ok(Retries {
            request_budget_ms,
            attempt_timeout_ms,
            max_attempts,
            backoff_base_ms,
            backoff_max_ms,
        })
    }
}

/// What signed browser tokens must be: `JWT_SECRET`, `JWT_AUDIENCE`, `JWT_ISSUER`,
/// `JWT_MAX_LIFETIME_S`.
struct Tokens {
    secret: Option<Secret>,
    audience: Option<String>,
    issuer: Option<String>,
    max_lifetime_ms: u64,
}

impl Tokens {
    fn parse(get: &impl Fn(&str) -> Option<String>) -> Result<Tokens, ConfigError> {
        let secret = match get("JWT_SECRET") {
            None => None,
            // Only the length is named: the value is a secret.
            Some(raw) if raw.len() < MIN_JWT_SECRET_BYTES => {
                return Err(invalid(
                    "JWT_SECRET",
                    format!(
                        "must be at least {MIN_JWT_SECRET_BYTES} bytes (RFC 7518 section 3.2: an \
                         HS256 key is at least as long as its 256-bit hash)"
                    ),
                ))
            }
            Some(raw) => Some(Secret::new(raw)),
        };
        let audience = parse_jwt_name("JWT_AUDIENCE", get("JWT_AUDIENCE"))?;
        let issuer = parse_jwt_name("JWT_ISSUER", get("JWT_ISSUER"))?;
        let max_lifetime_ms = match get("JWT_MAX_LIFETIME_S") {
            None => DEFAULT_JWT_MAX_LIFETIME_S,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_JWT_LIFETIME_S).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "JWT_MAX_LIFETIME_S",
                        format!("expected seconds from 1 to {MAX_JWT_LIFETIME_S}"),
                    )
                })?,
        }
        .saturating_mul(1000);
        Ok(Tokens {
            secret,
            audience,
            issuer,
            max_lifetime_ms,
        })
    }
}

/// How large request bodies may be, how many bytes of them an isolate and a caller may hold,
/// and how fast they must arrive: `MAX_BODY_BYTES`, `MAX_INFLIGHT_BODY_BYTES`,
/// `MAX_INFLIGHT_BODY_BYTES_PER_CALLER`, `BODY_READ_TIMEOUT_MS`, `MIN_BODY_BYTES_PER_S`.
struct Bodies {
    max_body_bytes: u64,
    max_inflight_body_bytes: u64,
    max_inflight_body_bytes_per_caller: u64,
    body_read_timeout_ms: u64,
    min_body_bytes_per_s: u64,
}

impl Bodies {
    fn parse(get: &impl Fn(&str) -> Option<String>) -> Result<Bodies, ConfigError> {
        let max_body_bytes = match get("MAX_BODY_BYTES") {
            None => 33_554_432,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("MAX_BODY_BYTES", "expected a positive integer"))?,
        };
        let max_inflight_body_bytes = match get("MAX_INFLIGHT_BODY_BYTES") {
            None => DEFAULT_MAX_INFLIGHT_BODY_BYTES.max(max_body_bytes),
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= max_body_bytes)
                .ok_or_else(|| {
                    invalid(
                        "MAX_INFLIGHT_BODY_BYTES",
                        "expected an integer no smaller than MAX_BODY_BYTES",
                    )
                })?,
        };
        let max_inflight_body_bytes_per_caller = match get("MAX_INFLIGHT_BODY_BYTES_PER_CALLER") {
            None => default_caller_share(max_inflight_body_bytes, max_body_bytes),
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| (max_body_bytes..=max_inflight_body_bytes).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "MAX_INFLIGHT_BODY_BYTES_PER_CALLER",
                        "expected an integer between MAX_BODY_BYTES and MAX_INFLIGHT_BODY_BYTES",
                    )
                })?,
        };
        let body_read_timeout_ms = match get("BODY_READ_TIMEOUT_MS") {
            None => DEFAULT_BODY_READ_TIMEOUT_MS,
            Some(raw) => raw
                .parse::<u64>()
                .ok()
                .filter(|n| (1..=MAX_DURATION_MS).contains(n))
                .ok_or_else(|| {
                    invalid(
                        "BODY_READ_TIMEOUT_MS",
                        "expected a positive integer of milliseconds, at most an hour",
                    )
                })?,
        };
        let min_body_bytes_per_s =
            match get("MIN_BODY_BYTES_PER_S") {
                None => DEFAULT_MIN_BODY_BYTES_PER_S,
                Some(raw) => raw.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                    invalid("MIN_BODY_BYTES_PER_S", "expected a positive integer")
                })?,
            };
        Ok(Bodies {
            max_body_bytes,
            max_inflight_body_bytes,
            max_inflight_body_bytes_per_caller,
            body_read_timeout_ms,
            min_body_bytes_per_s,
        })
    }
}

/// A yes-or-no variable: `true`/`1` or `false`/`0` (any case), off when unset.
fn parse_switch(variable: &'static str, raw: Option<&str>) -> Result<bool, ConfigError> {
    match raw {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(_) => Err(invalid(variable, "expected true or false")),
    }
}

/// `ADMIN_KEY`: unset, or long enough not to be guessed.
fn parse_admin_key(raw: Option<String>) -> Result<Option<Secret>, ConfigError> {
    match raw {
        None => Ok(None),
        // Only the length is named: the value is a secret.
        Some(raw) if raw.len() < MIN_ADMIN_KEY_BYTES => Err(invalid(
            "ADMIN_KEY",
            format!("must be at least {MIN_ADMIN_KEY_BYTES} characters"),
        )),
        Some(raw) => Ok(Some(Secret::new(raw))),
    }
}

/// `REQUEST_LOG`: `all` (the default), `problems` or `off`, in any case.
fn parse_request_log(raw: Option<String>) -> Result<RequestLog, ConfigError> {
    match raw.as_deref().map(str::to_ascii_lowercase) {
        None => Ok(RequestLog::All),
        Some(v) if v == "all" => Ok(RequestLog::All),
        Some(v) if v == "problems" => Ok(RequestLog::Problems),
        Some(v) if v == "off" => Ok(RequestLog::Off),
        Some(_) => Err(invalid("REQUEST_LOG", "expected all, problems or off")),
    }
}

/// `FINGERPRINT_KEY` (at least [`MIN_FINGERPRINT_KEY_BYTES`]), or when unset a key derived
/// from the first secret set among `ANTHROPIC_API_KEY`, `ADMIN_KEY`, `CLIENT_KEYS` and
/// `JWT_SECRET` (see [`FingerprintKey::derived_from`]). `ANTHROPIC_API_KEY` comes first: every
/// deployment with named callers has it, it is long and random, and it is shared with no
/// caller and no other service (`JWT_SECRET` comes last: a backend that mints tokens, perhaps
/// another service too, holds it). Rotating the secret a key is derived from changes every
/// tag; setting `FINGERPRINT_KEY` keeps them across rotations. With none of them set the only
/// callers are passthrough keys, whose identities are fingerprints of long random keys that no
/// dictionary holds; the key is then empty (public).
fn fingerprint_key(get: &impl Fn(&str) -> Option<String>) -> Result<FingerprintKey, ConfigError> {
    if let Some(raw) = get("FINGERPRINT_KEY") {
        if raw.len() < MIN_FINGERPRINT_KEY_BYTES {
            return Err(invalid(
                "FINGERPRINT_KEY",
                format!("must be at least {MIN_FINGERPRINT_KEY_BYTES} bytes"),
            ));
        }
        return Ok(FingerprintKey::new(raw.as_bytes()));
    }
    let source = [
        "ANTHROPIC_API_KEY",
        "ADMIN_KEY",
        "CLIENT_KEYS",
        "JWT_SECRET",
    ]
    .into_iter()
    .find_map(get);
    Ok(FingerprintKey::derived_from(
        source.as_deref().unwrap_or("").as_bytes(),
    ))
}

fn parse_upstream_url(raw: Option<String>) -> Result<String, ConfigError> {
    let url = raw.unwrap_or_else(|| "https://api.anthropic.com".to_string());
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("UPSTREAM_URL", "must start with https:// or http://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || rest.contains(['?', '#', ' ', '\\']) || authority.contains('@') {
        return Err(invalid(
            "UPSTREAM_URL",
            "expected a base URL like https://api.anthropic.com",
        ));
    }
    let Some(host) = host_of(authority) else {
        return Err(invalid(
            "UPSTREAM_URL",
            "expected a host with an optional numeric port, like https://api.anthropic.com:443",
        ));
    };
    // Plain HTTP would carry the upstream key in the clear; it is only for a local upstream
    // (the simulator, a test double) on the loopback interface.
    if url.starts_with("http://") && !is_loopback(host) {
        return Err(invalid(
            "UPSTREAM_URL",
            "plain http:// is only allowed for a loopback host (127.0.0.1, [::1], localhost); \
             use https://",
        ));
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The host of a URL's authority (`host`, `host:port`, `[v6]`, `[v6]:port`), or `None` when
/// the port is not a number or a bracketed address is not closed.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end.checked_add(1)?);
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':')?),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    (!host.is_empty() && port_ok).then_some(host)
}

fn is_loopback(host: &str) -> bool {
    ["127.0.0.1", "[::1]", "localhost"]
        .iter()
        .any(|h| host.eq_ignore_ascii_case(h))
}

fn parse_jwt_name(
    variable: &'static str,
    raw: Option<String>,
) -> Result<Option<String>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(raw) if raw.len() > MAX_JWT_NAME_BYTES || raw.chars().any(char::is_control) => {
            Err(invalid(
                variable,
                format!("expected at most {MAX_JWT_NAME_BYTES} bytes without control characters"),
            ))
        }
        Some(raw) => Ok(Some(raw)),
    }
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

/// Tier name → limits, tier name → allowed betas (only tiers that list them), and tier name →
/// its share of a scarce key (only tiers that set one of its options).
type Tiers = (
    SortedMap<String, TierLimits>,
    SortedMap<String, Vec<String>>,
    SortedMap<String, TierShare>,
);

fn parse_rate_limits(raw: Option<String>) -> Result<Tiers, ConfigError> {
    let raw = raw.unwrap_or_else(|| DEFAULT_RATE_LIMITS.to_string());
    let specs: SortedMap<String, TierSpec> = serde_json::from_str(&raw).map_err(|e| {
        invalid(
            "RATE_LIMITS",
            format!(
                "expected JSON like {{\"default\": {{\"rpm\": 50, \"input_tpm\": 40000}}}} \
                 with positive integers for rpm, input_tpm, output_tpm, concurrency, rpd, input_tpd, \
                 output_tpd, weight and budget_ms, dollars for usd_per_day and usd_per_month, \
                 a fixed offset like \"+05:30\" for quota_tz, \"interactive\" or \"background\" for priority, and an optional \
                 list of beta names for betas ({e})"
            ),
        )
    })?;
    let mut tiers = SortedMap::new();
    let mut betas = SortedMap::new();
    let mut shares = SortedMap::new();
    for (name, spec) in specs {
        if let Some(share) = tier_share(&name, &spec)? {
            shares.insert(name.clone(), share);
        }
        let quotas = tier_quotas(&name, &spec)?;
        if let Some(list) = spec.betas {
            check_betas(&name, &list)?;
            betas.insert(name.clone(), list);
        }
        let limits = TierLimits {
            rpm: spec.rpm,
            input_tpm: spec.input_tpm,
            output_tpm: spec.output_tpm,
            concurrency: spec.concurrency,
            quotas,
        };
        tiers.insert(name, limits);
    }
    // Every caller without a tier of its own is a default caller: without this tier they
    // would be unlimited by omission. `{"default": {}}` says "unlimited" on purpose.
    if !tiers.contains_key(DEFAULT_TIER) {
        return Err(invalid(
            "RATE_LIMITS",
            "must define the \"default\" tier (write {\"default\": {}} for unlimited default callers)",
        ));
    }
    Ok((tiers, betas, shares))
}

/// A tier's fair share of a scarce upstream, when its spec sets any of `weight`, `priority`
/// or `budget_ms`.
fn tier_share(name: &str, spec: &TierSpec) -> Result<Option<TierShare>, ConfigError> {
    if spec.weight.is_none() && spec.priority.is_none() && spec.budget_ms.is_none() {
        return Ok(None);
    }
    let weight = spec.weight.map_or(1, NonZeroU32::get);
    if weight > MAX_WEIGHT {
        return Err(invalid(
            "RATE_LIMITS",
            format!("tier {name:?}: weight must be 1 to {MAX_WEIGHT}, not {weight}"),
        ));
    }
    let priority = match spec.priority.as_deref() {
        None => Priority::Interactive,
        Some(text) => Priority::parse(text).ok_or_else(|| {
            invalid(
                "RATE_LIMITS",
                format!("tier {name:?}: priority must be \"interactive\" or \"background\""),
            )
        })?,
    };
    let budget_ms = spec.budget_ms.map(NonZeroU64::get);
    if budget_ms.is_some_and(|ms| ms > MAX_TIER_BUDGET_MS) {
        return Err(invalid(
            "RATE_LIMITS",
            format!("tier {name:?}: budget_ms must be at most {MAX_TIER_BUDGET_MS}"),
        ));
    }
    Ok(Some(TierShare {
        weight,
        priority,
        budget_ms,
    }))
}

/// A tier's daily and monthly quotas: dollars become whole micro-dollars (exact for up to six
/// decimals), `quota_tz` a fixed offset.
fn tier_quotas(name: &str, spec: &TierSpec) -> Result<Quotas, ConfigError> {
    let dollars = |field: &str, given: &Json| -> Result<Option<NonZeroU64>, ConfigError> {
        #[allow(clippy::cast_precision_loss)] // a whole number of dollars far below 2^53
        let dollars = match given {
            Json::Null => return Ok(None),
            Json::Unsigned(n) => *n as f64,
            Json::Float(f) => *f,
            _ => f64::NAN,
        };
        // At most a billion dollars: far above any quota, far below where micro-dollars
        // stop being exact in a double.
        if !(dollars > 0.0 && dollars <= 1e9) {
            return Err(invalid(
                "RATE_LIMITS",
                format!("tier {name:?}: {field} must be a positive number of dollars, at most 1e9"),
            ));
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let micros = (dollars * 1e6).round() as u64;
        Ok(NonZeroU64::new(micros.max(1)))
    };
    let zone = match &spec.quota_tz {
        Json::Null => Zone::UTC,
        given => Zone::parse(given.as_str().unwrap_or("?")).map_err(|e| {
            invalid(
                "RATE_LIMITS",
                format!(
                    "tier {name:?}: quota_tz {e}; named zones (IANA) are not supported, \
                     see docs/limits.md"
                ),
            )
        })?,
    };
    Ok(Quotas {
        rpd: spec.rpd,
        input_tpd: spec.input_tpd,
        output_tpd: spec.output_tpd,
        usd_per_day: dollars("usd_per_day", &spec.usd_per_day)?,
        usd_per_month: dollars("usd_per_month", &spec.usd_per_month)?,
        zone,
    })
}

/// A tier's `betas`: every one a plausible beta name.
fn check_betas(name: &str, list: &[String]) -> Result<(), ConfigError> {
    let Some(bad) = list
        .iter()
        .find(|b| b.is_empty() || b.len() > MAX_BETA_BYTES || !is_beta_name(b))
    else {
        return Ok(());
    };
    let shown: String = bad.chars().take(MAX_BETA_BYTES).collect();
    Err(invalid(
        "RATE_LIMITS",
        format!(
            "tier {name:?}: betas must be names like \"prompt-caching-2024-07-31\" \
             (letters, digits, '-', '_', '.'; at most {MAX_BETA_BYTES} bytes), \
             not {shown:?}"
        ),
    ))
}

/// Parses `MODEL_FALLBACKS`: `{"claude-opus-4-7": ["claude-sonnet-4-6", "claude-haiku-4-5"]}`.
/// Every list is non-empty, names each model once and never the model itself, and no model
/// leads back to itself through the lists (a cycle would make "the model that answered" and
/// "the model that was asked for" trade places depending on which one the client named).
fn parse_model_fallbacks(
    raw: Option<String>,
) -> Result<SortedMap<String, Vec<String>>, ConfigError> {
    const VARIABLE: &str = "MODEL_FALLBACKS";
    let Some(raw) = raw else {
        return Ok(SortedMap::new());
    };
    let map: SortedMap<String, Vec<String>> = serde_json::from_str(&raw).map_err(|e| {
        invalid(
            VARIABLE,
            format!(
                "expected JSON like {{\"claude-opus-4-7\": [\"claude-sonnet-4-6\", \"claude-haiku-4-5\"]}}: \
                 a model and the list of models to fall back to, in order ({e})"
            ),
        )
    })?;
    let max = MAX_MODEL_BYTES;
    let shown = |m: &str| m.chars().take(max).collect::<String>();
    for (model, list) in map.iter() {
        if model.is_empty() || model.len() > max {
            return Err(invalid(
                VARIABLE,
                format!("model names must be 1 to {max} bytes"),
            ));
        }
        if list.is_empty() {
            return Err(invalid(
                VARIABLE,
                format!(
                    "the list of {:?} is empty (leave the model out instead)",
                    shown(model)
                ),
            ));
        }
        for (i, fallback) in list.iter().enumerate() {
            if fallback.is_empty() || fallback.len() > max {
                return Err(invalid(
                    VARIABLE,
                    format!(
                        "model names must be 1 to {max} bytes (in the list of {:?})",
                        shown(model)
                    ),
                ));
            }
            if fallback == model {
                return Err(invalid(
                    VARIABLE,
                    format!("{:?} is listed as its own fallback", shown(model)),
                ));
            }
            if list.iter().take(i).any(|earlier| earlier == fallback) {
                return Err(invalid(
                    VARIABLE,
                    format!(
                        "{:?} is listed twice for {:?}",
                        shown(fallback),
                        shown(model)
                    ),
                ));
            }
        }
    }
    if let Some(cycle) = fallback_cycle(&map) {
        let mut shown_cycle = String::new();
        for (i, model) in cycle.iter().enumerate() {
            if i > 0 {
                shown_cycle.push_str(" -> ");
            }
            shown_cycle.push_str(&format!("{:?}", shown(model)));
        }
        return Err(invalid(
            VARIABLE,
            format!("the fallbacks form a cycle: {shown_cycle}"),
        ));
    }
    Ok(map)
}

/// A cycle through the fallback lists, as the models along it (the first repeated at the
/// end), if there is one. Depth-first with an explicit stack: the configuration is small,
/// but its shape is the operator's.
fn fallback_cycle(map: &SortedMap<String, Vec<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: SortedMap<&str, Mark> = SortedMap::new();
    for start in map.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        // (model, index of the next fallback to visit)
        let mut path: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks.insert(start.as_str(), Mark::Open);
        while let Some((model, next)) = path.last().copied() {
            let list = map.get(model).map_or(&[][..], Vec::as_slice);
            let Some(fallback) = list.get(next) else {
                marks.insert(model, Mark::Done);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 = next.saturating_add(1);
            }
            match marks.get(fallback.as_str()) {
                Some(Mark::Open) => {
                    let from = path.iter().position(|(m, _)| *m == fallback.as_str())?;
                    let mut cycle: Vec<String> = path
                        .iter()
                        .skip(from)
                        .map(|(m, _)| (*m).to_string())
                        .collect();
                    cycle.push(fallback.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    marks.insert(fallback.as_str(), Mark::Open);
                    path.push((fallback.as_str(), 0));
                }
            }
        }
    }
    None
}

fn is_beta_name(beta: &str) -> bool {
    beta.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn parse_client_keys(
    raw: Option<String>,
    tiers: &SortedMap<String, TierLimits>,
) -> Result<Vec<(Secret, ClientEntry)>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    // The error from serde_json would quote the offending input, which may be a key.
    let map: SortedMap<String, ClientEntry> = serde_json::from_str(&raw).map_err(|e| {
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
        // Token and passthrough identities carry these prefixes; an id with one could share
        // (or take) such a caller's limits.
        if RESERVED_ID_PREFIXES.iter().any(|prefix| {
            entry
                .id
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        }) {
            return Err(invalid(
                "CLIENT_KEYS",
                format!(
                    "id {:?} starts with a prefix reserved for other kinds of callers ({})",
                    entry.id,
                    RESERVED_ID_PREFIXES.iter().enumerate().fold(
                        String::new(),
                        |all, (i, prefix)| if i > 0 {
                            all + ", " + prefix
                        } else {
                            all + prefix
                        }
                    )
                ),
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
    fn the_caller_share_defaults_to_half_the_isolate_or_one_largest_body() {
        let mib = 1024 * 1024;
        assert_eq!(default_caller_share(64 * mib, 32 * mib), 32 * mib);
        assert_eq!(default_caller_share(64 * mib, mib), 32 * mib);
        assert_eq!(default_caller_share(100 * mib, 100 * mib), 100 * mib);
        assert_eq!(default_caller_share(300 * mib, 100 * mib), 150 * mib);
        assert_eq!(default_caller_share(1, 1), 1);
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
    fn callers_are_tagged_with_a_keyed_hash() {
        let object = crate::identity::fingerprint("identity", "alice@example.com");
        let tag = |vars: &[(&str, &str)]| config(vars).unwrap().caller_tag(&object);
        let key = "k".repeat(MIN_FINGERPRINT_KEY_BYTES);
        let upstream = ("ANTHROPIC_API_KEY", "sk-ant-upstream-key");
        let set = tag(&[upstream, ("FINGERPRINT_KEY", &key)]);
        assert_eq!(
            set,
            FingerprintKey::new(key.as_bytes()).tag("caller", &object)
        );
        // Unset: derived from the upstream key, else the next secret that is set.
        let derived = tag(&[upstream]);
        assert_eq!(
            derived,
            FingerprintKey::derived_from(b"sk-ant-upstream-key").tag("caller", &object)
        );
        assert_ne!(derived, set);
        assert_ne!(derived, tag(&[("ANTHROPIC_API_KEY", "sk-ant-another-key")]));
        let admin = ("ADMIN_KEY", "an-admin-key-0123456789");
        assert_eq!(
            tag(&[admin, ("JWT_SECRET", &"j".repeat(32))]),
            FingerprintKey::derived_from(admin.1.as_bytes()).tag("caller", &object)
        );
        // Never the plain fingerprint of the object's name, which anyone can compute.
        for t in [&set, &derived] {
            assert_ne!(t, &crate::identity::fingerprint("caller", &object));
            assert_ne!(t, &object);
        }
        // A short key is refused, and not quoted.
        let err = config(&[("FINGERPRINT_KEY", "short-key")]).unwrap_err();
        assert_eq!(err.variable, "FINGERPRINT_KEY");
        assert!(!err.problem.contains("short-key"));
        assert!(!format!("{:?}", config(&[("FINGERPRINT_KEY", &key)]).unwrap()).contains(&key));
    }

    #[test]
    fn a_jwt_secret_without_an_audience_is_a_warning() {
        let secret = "s".repeat(32);
        let warned = |vars: &[(&str, &str)]| {
            config(vars)
                .unwrap()
                .plan_warnings()
                .iter()
                .any(|w| w.variable == "JWT_AUDIENCE")
        };
        assert!(warned(&[("JWT_SECRET", &secret)]));
        assert!(!warned(&[
            ("JWT_SECRET", &secret),
            ("JWT_AUDIENCE", "chat")
        ]));
        assert!(!warned(&[]));
        let line = config(&[("JWT_SECRET", &secret)]).unwrap().plan_warnings();
        assert!(!format!("{line:?}").contains(&secret));
    }

    #[test]
    fn more_attempts_than_a_free_invocation_may_make_are_a_warning() {
        let with = |n: &str| {
            Config::from_lookup(|name| (name == "MAX_ATTEMPTS").then(|| n.to_string())).unwrap()
        };
        assert!(with("50").plan_warnings().is_empty());
        assert!(Config::from_lookup(|_| None)
            .unwrap()
            .plan_warnings()
            .is_empty());
        let warnings = with("51").plan_warnings();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].variable, "MAX_ATTEMPTS");
        assert!(
            warnings[0].problem.contains("50"),
            "{}",
            warnings[0].problem
        );
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
            ("RATE_LIMITS", "{}"),
            ("RATE_LIMITS", r#"{"pro": {"rpm": 5}}"#),
            ("JWT_SECRET", "too-short"),
            ("JWT_AUDIENCE", "a\u{7}b"),
            ("JWT_ISSUER", &"i".repeat(2000)),
            ("JWT_MAX_LIFETIME_S", "0"),
            ("JWT_MAX_LIFETIME_S", "1.5"),
            ("JWT_MAX_LIFETIME_S", "99999999999"),
            ("UPSTREAM_URL", "http://api.anthropic.com"),
            ("UPSTREAM_URL", "http://127.0.0.1:port"),
            (
                "CLIENT_KEYS",
                r#"{"ck_0123456789abcdef": {"id": "token:alice"}}"#,
            ),
        ];
        for (variable, value) in cases {
            let err = config(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable, "{variable}={value}");
        }
    }

    #[test]
    fn regression_rate_limits_without_default_left_default_callers_unlimited() {
        // Before, a RATE_LIMITS naming only other tiers parsed, and every caller without a
        // tier of its own (most of them) was admitted without any limit.
        for raw in [
            "{}",
            r#"{"pro": {"rpm": 50}}"#,
            r#"{"Default": {"rpm": 5}}"#,
        ] {
            let err = config(&[("RATE_LIMITS", raw)]).unwrap_err();
            assert_eq!(err.variable, "RATE_LIMITS", "{raw}");
            assert!(err.problem.contains("default"), "{}", err.problem);
        }
        // Saying "unlimited" stays possible, explicitly.
        let c = config(&[("RATE_LIMITS", r#"{"default": {}, "pro": {"rpm": 50}}"#)]).unwrap();
        assert!(c.tier_limits(DEFAULT_TIER).is_unlimited());
        assert_eq!(c.tier_limits("pro").rpm.map(|n| n.get()), Some(50));
    }

    #[test]
    fn unknown_tier_gets_the_default_limits() {
        let c = config(&[("RATE_LIMITS", r#"{"default": {"rpm": 7}}"#)]).unwrap();
        assert_eq!(c.tier_limits("nope").rpm.map(|n| n.get()), Some(7));
    }

    #[test]
    fn jwt_secret_is_at_least_32_bytes() {
        let err = config(&[("JWT_SECRET", "SEKRIT-0123456789-abcdefghijkl")]).unwrap_err();
        assert_eq!(err.variable, "JWT_SECRET");
        assert!(err.problem.contains("32 bytes"), "{}", err.problem);
        assert!(!err.to_string().contains("SEKRIT"), "{err}");
        // 32 bytes, counted in bytes: 16 two-byte characters are enough.
        assert!(config(&[("JWT_SECRET", &"s".repeat(32))]).is_ok());
        assert!(config(&[("JWT_SECRET", &"é".repeat(16))]).is_ok());
        assert!(config(&[("JWT_SECRET", &"s".repeat(31))]).is_err());
        // Surrounding whitespace does not count.
        assert!(config(&[("JWT_SECRET", &format!(" {} ", "s".repeat(31)))]).is_err());
    }

    #[test]
    fn jwt_audience_issuer_and_lifetime() {
        let c = config(&[]).unwrap();
        assert_eq!(
            (c.jwt_audience.as_deref(), c.jwt_issuer.as_deref()),
            (None, None)
        );
        assert_eq!(c.jwt_max_lifetime_ms, 3_600_000);
        let c = config(&[
            ("JWT_AUDIENCE", " https://chat.example "),
            ("JWT_ISSUER", "https://auth.example"),
            ("JWT_MAX_LIFETIME_S", "600"),
        ])
        .unwrap();
        assert_eq!(c.jwt_audience.as_deref(), Some("https://chat.example"));
        assert_eq!(c.jwt_issuer.as_deref(), Some("https://auth.example"));
        assert_eq!(c.jwt_max_lifetime_ms, 600_000);
    }

    #[test]
    fn plain_http_upstream_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8788",
            "http://127.0.0.1",
            "http://[::1]:8788/",
            "http://localhost:8788",
            "http://LOCALHOST",
            "https://api.anthropic.com",
            "https://api.anthropic.com:443/",
            "https://gateway.example/anthropic",
            "https://[2001:db8::1]:8443",
        ] {
            assert!(config(&[("UPSTREAM_URL", ok)]).is_ok(), "{ok}");
        }
        for bad in [
            "http://api.anthropic.com",
            "http://10.0.0.5:8080",
            "http://127.0.0.2",
            "http://localhost.evil.example",
            "http://127.0.0.1.nip.io",
            "http://[::2]",
            "http://[::1",
            "http://127.0.0.1:",
            "http://127.0.0.1:80x",
            "http://127.0.0.1:123456",
            "https://api.anthropic.com:https",
            "http://evil.example\\@127.0.0.1",
        ] {
            let err = config(&[("UPSTREAM_URL", bad)]).unwrap_err();
            assert_eq!(err.variable, "UPSTREAM_URL", "{bad}");
        }
        let err = config(&[("UPSTREAM_URL", "http://api.anthropic.com")]).unwrap_err();
        assert!(err.problem.contains("loopback"), "{}", err.problem);
    }

    #[test]
    fn regression_client_ids_could_collide_with_token_subjects() {
        // A client id "token:alice" was the identity of a token with sub "alice": the two
        // callers shared one limiter.
        for id in [
            "token:alice",
            "passthrough:0123abcd",
            "TOKEN:alice",
            "Passthrough:x",
        ] {
            let keys = format!(r#"{{"ck_0123456789abcdef": {{"id": "{id}"}}}}"#);
            let err = config(&[("CLIENT_KEYS", &keys)]).unwrap_err();
            assert_eq!(err.variable, "CLIENT_KEYS", "{id}");
            assert!(
                err.problem
                    .contains("reserved for other kinds of callers (token:, passthrough:)"),
                "{}",
                err.problem
            );
            assert!(!err.problem.contains("ck_0123456789abcdef"));
        }
        // The prefixes only matter at the start.
        let ok = config(&[(
            "CLIENT_KEYS",
            r#"{"ck_0123456789abcdef": {"id": "my-token:alice"}, "ck_0123456789abcdeg": {"id": "token"}}"#,
        )]);
        assert!(ok.is_ok());
    }

    #[test]
    fn the_public_hears_only_the_variable() {
        let err = config(&[("RATE_LIMITS", r#"{"default": {"rpm": "fifty"}}"#)]).unwrap_err();
        assert_eq!(
            err.public_message(),
            "the proxy is misconfigured: RATE_LIMITS"
        );
        assert!(
            err.detail().contains("positive integers"),
            "{}",
            err.detail()
        );
        let answer = crate::error::ProxyError::Misconfigured(err.clone());
        assert_eq!(answer.status(), 500);
        assert_eq!(answer.message(), err.public_message());
        assert!(!answer.answer("req_x").body.contains("positive integers"));
    }

    #[test]
    fn a_missing_upstream_key_is_reported_when_managed_callers_need_it() {
        let keys = ("CLIENT_KEYS", r#"{"ck_0123456789abcdef": {"id": "a"}}"#);
        assert_eq!(
            config(&[keys]).unwrap().missing_for_managed_callers(),
            Some("ANTHROPIC_API_KEY")
        );
        assert_eq!(
            config(&[("JWT_SECRET", &"s".repeat(32))])
                .unwrap()
                .missing_for_managed_callers(),
            Some("ANTHROPIC_API_KEY")
        );
        assert_eq!(
            config(&[keys, ("ANTHROPIC_API_KEY", "sk-ant-x")])
                .unwrap()
                .missing_for_managed_callers(),
            None
        );
        // Passthrough only: nobody needs it.
        assert_eq!(
            config(&[("ALLOW_PASSTHROUGH_KEYS", "true")])
                .unwrap()
                .missing_for_managed_callers(),
            None
        );
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
            ("RATE_LIMITS", r#"{"default": {}, "gold": {"rpm": 5}}"#),
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
    fn tiers_may_set_how_their_callers_share_a_scarce_key() {
        let c = config(&[(
            "RATE_LIMITS",
            r#"{"default": {"rpm": 5}, "paid": {"weight": 3},
                "batch": {"priority": "background", "budget_ms": 300000}}"#,
        )])
        .unwrap();
        assert_eq!(c.tier_share(DEFAULT_TIER), TierShare::default());
        assert_eq!(c.tier_share("paid").weight, 3);
        let batch = c.tier_share("batch");
        assert_eq!(batch.priority, Priority::Background);
        assert_eq!(batch.budget_ms, Some(300_000));
        // An unknown tier shares as the default one.
        assert_eq!(c.tier_share("nope"), TierShare::default());
        for bad in [
            r#"{"default": {"weight": 0}}"#,
            r#"{"default": {"weight": 1001}}"#,
            r#"{"default": {"priority": "urgent"}}"#,
            r#"{"default": {"budget_ms": 3600001}}"#,
        ] {
            assert!(config(&[("RATE_LIMITS", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn tiers_may_set_daily_and_monthly_quotas_and_model_prices_may_be_given() {
        let c = config(&[
            (
                "RATE_LIMITS",
                r#"{"default": {"rpm": 5}, "free": {"rpd": 50, "usd_per_day": 0.2},
                    "paid": {"usd_per_month": 20, "input_tpd": 1000000, "output_tpd": 200000,
                        "quota_tz": "+05:30"},
                    "odd": {"usd_per_day": 0.0000014}}"#,
            ),
            (
                "MODEL_PRICES",
                r#"{"claude-next": {"input": 2, "output": 8}}"#,
            ),
        ])
        .unwrap();
        assert_eq!(c.tier_limits(DEFAULT_TIER).quotas, Quotas::default());
        let free = c.tier_limits("free").quotas;
        assert_eq!(free.rpd, NonZeroU64::new(50));
        assert_eq!(free.usd_per_day, NonZeroU64::new(200_000));
        assert!(!c.tier_limits("free").is_unlimited());
        let paid = c.tier_limits("paid").quotas;
        assert_eq!(paid.usd_per_month, NonZeroU64::new(20_000_000));
        assert_eq!(paid.input_tpd, NonZeroU64::new(1_000_000));
        assert_eq!(paid.output_tpd, NonZeroU64::new(200_000));
        assert_eq!(paid.zone.offset_minutes, 330);
        // Rounded to the micro-dollar.
        assert_eq!(c.tier_limits("odd").quotas.usd_per_day, NonZeroU64::new(1));
        assert_eq!(
            c.prices.of("claude-next").map(|p| p.rates.input),
            Some(2_000_000)
        );
        // The tier's limits travel to its object with their quotas, and without when none.
        let json = serde_json::to_string(&c.tier_limits("paid")).unwrap();
        let back: TierLimits = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c.tier_limits("paid"));
        assert!(!serde_json::to_string(&c.tier_limits(DEFAULT_TIER))
            .unwrap()
            .contains("quotas"));
        for bad in [
            r#"{"default": {"usd_per_day": 0}}"#,
            r#"{"default": {"usd_per_day": -1}}"#,
            r#"{"default": {"usd_per_month": "20"}}"#,
            r#"{"default": {"rpd": 0}}"#,
            r#"{"default": {"rpd": 2.5}}"#,
            r#"{"default": {"quota_tz": "Europe/Paris"}}"#,
            r#"{"default": {"quota_tz": "+15:00"}}"#,
        ] {
            let e = config(&[("RATE_LIMITS", bad)]).unwrap_err();
            assert_eq!(e.variable, "RATE_LIMITS", "{bad}");
        }
        let named =
            config(&[("RATE_LIMITS", r#"{"default": {"quota_tz": "Asia/Tokyo"}}"#)]).unwrap_err();
        assert!(named.problem.contains("IANA"), "{}", named.problem);
        let e = config(&[("MODEL_PRICES", r#"{"m": {"input": 1}}"#)]).unwrap_err();
        assert_eq!(e.variable, "MODEL_PRICES");
    }

    #[test]
    fn tiers_may_list_the_betas_their_callers_may_send() {
        let c = config(&[(
            "RATE_LIMITS",
            r#"{"default": {"rpm": 5, "betas": ["prompt-caching-2024-07-31"]},
                "open": {"rpm": 9}, "none": {"betas": []}}"#,
        )])
        .unwrap();
        assert_eq!(
            c.allowed_betas(DEFAULT_TIER),
            Some(&["prompt-caching-2024-07-31".to_string()][..])
        );
        assert_eq!(c.tier_limits(DEFAULT_TIER).rpm, NonZeroU32::new(5));
        assert_eq!(c.allowed_betas("open"), None);
        assert_eq!(c.allowed_betas("none"), Some(&[][..]));
        // An unknown tier gets the default tier's list, as it gets its limits.
        assert_eq!(c.allowed_betas("nope"), c.allowed_betas(DEFAULT_TIER));
        // Without lists, everything is allowed (as before).
        assert_eq!(config(&[]).unwrap().allowed_betas(DEFAULT_TIER), None);
        for bad in [
            r#"{"default": {"betas": "prompt-caching-2024-07-31"}}"#,
            r#"{"default": {"betas": [""]}}"#,
            r#"{"default": {"betas": ["a b"]}}"#,
            r#"{"default": {"betas": [7]}}"#,
        ] {
            let e = config(&[("RATE_LIMITS", bad)]).unwrap_err();
            assert_eq!(e.variable, "RATE_LIMITS", "{bad}");
        }
    }

    #[test]
    fn inflight_body_bytes_default_and_floor() {
        let c = config(&[]).unwrap();
        assert_eq!(c.max_inflight_body_bytes, 64 * 1024 * 1024);
        let c = config(&[("MAX_BODY_BYTES", "100000000")]).unwrap();
        assert_eq!(c.max_inflight_body_bytes, 100_000_000);
        let c = config(&[("MAX_INFLIGHT_BODY_BYTES", "40000000")]).unwrap();
        assert_eq!(c.max_inflight_body_bytes, 40_000_000);
        for bad in ["1000", "0", "-5", "lots"] {
            let e = config(&[("MAX_INFLIGHT_BODY_BYTES", bad)]).unwrap_err();
            assert_eq!(e.variable, "MAX_INFLIGHT_BODY_BYTES", "{bad}");
        }
    }

    #[test]
    fn body_read_limits_default_and_bounds() {
        let c = config(&[]).unwrap();
        assert_eq!(c.max_inflight_body_bytes_per_caller, 32 * 1024 * 1024);
        assert_eq!(c.body_read_timeout_ms, 10_000);
        assert_eq!(c.min_body_bytes_per_s, 65_536);
        let c = config(&[
            ("MAX_INFLIGHT_BODY_BYTES", "100000000"),
            ("MAX_INFLIGHT_BODY_BYTES_PER_CALLER", "40000000"),
            ("BODY_READ_TIMEOUT_MS", "2000"),
            ("MIN_BODY_BYTES_PER_S", "1000"),
        ])
        .unwrap();
        assert_eq!(
            (
                c.max_inflight_body_bytes_per_caller,
                c.body_read_timeout_ms,
                c.min_body_bytes_per_s
            ),
            (40_000_000, 2_000, 1_000)
        );
        // A caller's share holds one body of the largest size and no more than the isolate.
        for bad in ["1000", "100000001", "0", "lots"] {
            let e = config(&[
                ("MAX_INFLIGHT_BODY_BYTES", "100000000"),
                ("MAX_INFLIGHT_BODY_BYTES_PER_CALLER", bad),
            ])
            .unwrap_err();
            assert_eq!(e.variable, "MAX_INFLIGHT_BODY_BYTES_PER_CALLER", "{bad}");
        }
        for (name, bad) in [
            ("BODY_READ_TIMEOUT_MS", "0"),
            ("BODY_READ_TIMEOUT_MS", "3600001"),
            ("MIN_BODY_BYTES_PER_S", "0"),
            ("MIN_BODY_BYTES_PER_S", "-1"),
        ] {
            assert_eq!(config(&[(name, bad)]).unwrap_err().variable, name, "{bad}");
        }
    }

    #[test]
    fn model_fallbacks_parse_in_order() {
        let c = config(&[]).unwrap();
        assert!(c.model_fallbacks.is_empty());
        assert!(c.fallbacks_of("claude-opus-4-7").is_empty());
        let c = config(&[(
            "MODEL_FALLBACKS",
            r#"{"claude-opus-4-7": ["claude-sonnet-4-6", "claude-haiku-4-5"],
                "claude-sonnet-4-6": ["claude-haiku-4-5"]}"#,
        )])
        .unwrap();
        assert_eq!(
            c.fallbacks_of("claude-opus-4-7"),
            ["claude-sonnet-4-6", "claude-haiku-4-5"]
        );
        assert_eq!(c.fallbacks_of("claude-sonnet-4-6"), ["claude-haiku-4-5"]);
        assert!(c.fallbacks_of("claude-haiku-4-5").is_empty());
        // A chain that meets itself again further down is fine, as long as it never loops.
        assert!(config(&[(
            "MODEL_FALLBACKS",
            r#"{"a": ["b", "c"], "b": ["c"], "c": ["d"]}"#
        )])
        .is_ok());
    }

    #[test]
    fn bad_model_fallbacks_are_one_error_naming_the_variable() {
        let long = format!(r#"{{"a": ["{}"]}}"#, "m".repeat(300));
        for (raw, problem) in [
            ("[]", "expected JSON"),
            (r#"{"a": "b"}"#, "expected JSON"),
            (r#"{"a": [1]}"#, "expected JSON"),
            (r#"{"a": {"b": 1}}"#, "expected JSON"),
            ("not json", "expected JSON"),
            (r#"{"a": []}"#, "empty"),
            (r#"{"a": [""]}"#, "1 to 256 bytes"),
            (long.as_str(), "1 to 256 bytes"),
            (r#"{"a": ["b", "a"]}"#, "its own fallback"),
            (r#"{"a": ["b", "b"]}"#, "listed twice"),
            (r#"{"a": ["b"], "b": ["a"]}"#, "cycle"),
            (r#"{"a": ["x", "b"], "b": ["c"], "c": ["a"]}"#, "cycle"),
        ] {
            let err = config(&[("MODEL_FALLBACKS", raw)]).unwrap_err();
            assert_eq!(err.variable, "MODEL_FALLBACKS", "{raw}");
            assert!(err.problem.contains(problem), "{raw}: {}", err.problem);
            assert_eq!(
                err.public_message(),
                "the proxy is misconfigured: MODEL_FALLBACKS"
            );
        }
        let err = config(&[(
            "MODEL_FALLBACKS",
            r#"{"a": ["x", "b"], "b": ["c"], "c": ["a"]}"#,
        )])
        .unwrap_err();
        assert!(
            err.problem.contains(r#""a" -> "b" -> "c" -> "a""#),
            "{}",
            err.problem
        );
    }

    #[test]
    fn explicit_empty_default_is_unlimited() {
        let c = config(&[("RATE_LIMITS", r#"{"default": {}}"#)]).unwrap();
        assert_eq!(c.tier_limits("nope"), TierLimits::default());
        assert_eq!(c.tier_limits(DEFAULT_TIER), TierLimits::default());
    }

    #[test]
    fn an_admin_key_is_optional_long_and_never_printed() {
        assert!(config(&[]).unwrap().admin_key.is_none());
        let key = "adm_0123456789abcdef";
        let c = config(&[("ADMIN_KEY", key)]).unwrap();
        assert!(c.admin_key.as_ref().is_some_and(|k| k.matches(key)));
        assert!(!format!("{c:?}").contains(key));
        let e = config(&[("ADMIN_KEY", "short-key")]).unwrap_err();
        assert_eq!(e.variable, "ADMIN_KEY");
        assert!(!e.detail().contains("short-key"));
    }

    #[test]
    fn request_log_keeps_all_lines_unless_told() {
        assert_eq!(config(&[]).unwrap().request_log, RequestLog::All);
        assert_eq!(
            config(&[("REQUEST_LOG", "Problems")]).unwrap().request_log,
            RequestLog::Problems
        );
        assert_eq!(
            config(&[("REQUEST_LOG", "off")]).unwrap().request_log,
            RequestLog::Off
        );
        let e = config(&[("REQUEST_LOG", "some")]).unwrap_err();
        assert_eq!(e.variable, "REQUEST_LOG");
        // `problems` drops only a clean first-attempt success.
        let p = RequestLog::Problems;
        assert!(!p.wants(200, 1, false, false));
        assert!(p.wants(200, 2, false, false));
        assert!(p.wants(200, 1, true, false));
        assert!(p.wants(200, 1, false, true));
        assert!(p.wants(429, 1, false, false));
        assert!(p.wants(503, 0, false, false));
        assert!(RequestLog::All.wants(200, 1, false, false));
        assert!(!RequestLog::Off.wants(500, 4, true, true));
    }
}
