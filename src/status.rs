//! The operator's view, `GET /proxy/status`: who may read it, which objects it asks, and the
//! one JSON document it answers with.
//!
//! It is meant for a person at 2 AM: is the upstream overloaded, which key is near its
//! Anthropic limits, how many requests wait, who is refused and why. So it reads what the
//! objects know (read-only calls), adds this isolate's tally of answers, and never shows a
//! secret: upstream keys and callers appear by fingerprint only.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::config::{Config, TierLimits, DEFAULT_TIER};
use crate::error::ProxyError;
use crate::identity::{fingerprint, Secret, PASSTHROUGH_PREFIX, TOKEN_PREFIX};
use crate::json::Json;
use crate::limits::{rfc3339_utc, CallerUsage};
use crate::metrics::EdgeTally;

/// Checks the `Authorization: Bearer <ADMIN_KEY>` of a status request, in constant time.
/// Without a configured `ADMIN_KEY` the route does not exist (`404`, so a deployment without
/// one does not even tell that it has an operator's view).
pub fn authorize(
    admin_key: Option<&Secret>,
    authorization: Option<&str>,
) -> Result<(), ProxyError> {
    let Some(admin_key) = admin_key else {
        return Err(ProxyError::NotFound);
    };
    let presented = authorization.map(str::trim).and_then(|value| {
        let (scheme, rest) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    match presented {
        Some(key) if admin_key.matches(key) => Ok(()),
        Some(_) => Err(ProxyError::Unauthenticated(
            "this key does not open the operator's view".to_string(),
        )),
        None => Err(ProxyError::Unauthenticated(
            "the operator's view needs Authorization: Bearer <ADMIN_KEY>".to_string(),
        )),
    }
}

/// Longest `caller` accepted, in bytes (client ids are at most 256 characters).
const MAX_CALLER_BYTES: usize = 1024;

/// The `caller` of the query string, percent-decoded; `None` when absent or empty.
pub fn caller_param(query: Option<&str>) -> Result<Option<String>, ProxyError> {
    let Some(query) = query else { return Ok(None) };
    let Some(raw) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("caller="))
    else {
        return Ok(None);
    };
    let bad = || ProxyError::InvalidRequest("caller: not a valid percent-encoded id".to_string());
    if raw.len() > MAX_CALLER_BYTES * 3 {
        return Err(bad());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    let id = String::from_utf8(out).map_err(|_| bad())?;
    if id.len() > MAX_CALLER_BYTES {
        return Err(bad());
    }
    Ok((!id.is_empty()).then_some(id))
}

/// What kind of identity a caller id is, as the proxy derives identities for requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// An `id` of `CLIENT_KEYS`.
    ClientKey,
    /// `token:<sub>`: a signed token's subject (its tier is in each token, not in the config).
    Token,
    /// `passthrough:<fingerprint>`: a caller's own upstream key.
    Passthrough,
    /// No configured client has this id: its object, if any, is read with its last limits.
    Unknown,
}

/// The caller a status request asks about: its object's name and the limits to read it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerQuery {
    pub id: String,
    pub kind: CallerKind,
    /// The name of its Durable Object (the identity's fingerprint, as for its requests).
    pub identity: String,
    /// Its tier, when the configuration says it.
    pub tier: Option<String>,
    /// The limits to measure by; `None`: those its object was last used with.
    pub limits: Option<TierLimits>,
}

/// The caller `id` (`alice`, `token:<sub>`, `passthrough:<fingerprint>`) as its requests
/// would be identified.
#[must_use]
pub fn caller_query(config: &Config, id: &str) -> CallerQuery {
    let (kind, tier) = if id.starts_with(TOKEN_PREFIX) {
        (CallerKind::Token, None)
    } else if id.starts_with(PASSTHROUGH_PREFIX) {
        (CallerKind::Passthrough, Some(DEFAULT_TIER.to_string()))
    } else {
        match config.client_keys.iter().find(|(_, entry)| entry.id == id) {
            Some((_, entry)) => (CallerKind::ClientKey, Some(entry.tier.clone())),
            None => (CallerKind::Unknown, None),
        }
    };
    CallerQuery {
        id: id.to_string(),
        kind,
        identity: fingerprint("identity", id),
        limits: tier.as_deref().map(|tier| config.tier_limits(tier)),
        tier,
    }
}

/// Which configured variable an upstream key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KeySource {
    #[serde(rename = "ANTHROPIC_API_KEY")]
    AnthropicApiKey,
}

/// The upstream keys the Worker is configured with (passthrough keys are the callers' and
/// not known to it), with the name of each key's object.
#[must_use]
pub fn upstream_keys(config: &Config) -> Vec<(KeySource, String)> {
    config
        .upstream_key
        .iter()
        .map(|key| (KeySource::AnthropicApiKey, key.fingerprint("upstream")))
        .collect()
}

/// The whole answer of `GET /proxy/status`. Its shape is documented in docs/operating.md
/// ("Operating it") and kept stable: fields are added, never renamed or removed.
#[derive(Debug, Clone, Serialize)]
pub struct StatusDocument {
    pub version: &'static str,
    pub at_ms: u64,
    pub upstream_keys: Vec<UpstreamKeyStatus>,
    /// This isolate's answers since it started.
    pub edge: EdgeTally,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<CallerStatus>,
    /// Every model `MODEL_FALLBACKS` names, and whether requests leave it now.
    pub fallbacks: Vec<FallbackStatus>,
}

/// A model with fallbacks, as the upstream keys' objects see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FallbackStatus {
    pub model: String,
    /// The models its requests go to, in order.
    pub to: Vec<String>,
    /// Its pool is overloaded or recovering on some upstream key: a request that cannot be
    /// served there before its deadline goes to `to` (unless it opted out).
    pub in_force: bool,
    /// The least healthy phase of its pool over the keys (`healthy` when no key knows it).
    pub phase: String,
}

/// The fallbacks of `config`, in force where a key's object reports the model's pool
/// overloaded or recovering.
#[must_use]
pub fn fallbacks(config: &Config, keys: &[UpstreamKeyStatus]) -> Vec<FallbackStatus> {
    let rank = |phase: &str| match phase {
        "overloaded" => 2,
        "recovering" => 1,
        _ => 0,
    };
    // Each key's pools and their phases, read from the state its object answered. Read as a
    // plain JSON value: the module parses request bodies that way already, where a typed view
    // of these two fields would add its own decoder.
    let states: Vec<Json> = keys
        .iter()
        .filter_map(|k| k.state.as_deref())
        .filter_map(|state| serde_json::from_str(state.get()).ok())
        .collect();
    config
        .model_fallbacks
        .iter()
        .map(|(model, to)| {
            let pool =
                crate::upstream::pool_of(&crate::request::route::Route::Messages, Some(model));
            let phase = states
                .iter()
                .filter_map(|state| state.get("pools")?.as_list())
                .flatten()
                .filter(|p| p.get("pool").and_then(Json::as_str) == Some(&pool))
                .filter_map(|p| p.get("phase").and_then(Json::as_str))
                .max_by_key(|phase| rank(phase))
                .unwrap_or("healthy");
            FallbackStatus {
                model: model.clone(),
                to: to.clone(),
                in_force: rank(phase) > 0,
                phase: phase.to_string(),
            }
        })
        .collect()
}

/// One configured upstream key: its object's view, or why it could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamKeyStatus {
    /// A one-way fingerprint of the key (its object's name), never the key.
    pub key: String,
    pub source: KeySource,
    /// The object's [`crate::upstream::KeyStatus`], passed on as it answered (its JSON is
    /// not taken apart and put together again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl UpstreamKeyStatus {
    #[must_use]
    pub fn of(
        source: KeySource,
        key: String,
        answer: Result<Box<RawValue>, ProxyError>,
    ) -> UpstreamKeyStatus {
        let (state, error) = match answer {
            Ok(state) => (Some(state), None),
            Err(e) => (None, Some(e.message())),
        };
        UpstreamKeyStatus {
            key,
            source,
            state,
            error,
        }
    }
}

/// The caller asked about with `?caller=`.
#[derive(Debug, Clone, Serialize)]
pub struct CallerStatus {
    /// The id asked about, unless it is of no known kind (it might be a key pasted by mistake,
    /// and the answer never repeats one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub kind: CallerKind,
    /// The identity's fingerprint: its object's name and the `identity` of its log lines.
    pub identity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CallerUsage>,
    /// The daily and monthly quotas: spent and remaining in each window.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One quota window as the operator reads it (dollar quotas in micro-dollars).
#[derive(Debug, Clone, Serialize)]
pub struct QuotaView {
    pub dimension: &'static str,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// When the window began and when it resets, RFC 3339 UTC.
    pub since: String,
    pub resets: String,
}

impl CallerStatus {
    #[must_use]
    pub fn of(query: CallerQuery, usage: Result<CallerUsage, ProxyError>) -> CallerStatus {
        let (mut usage, error) = match usage {
            Ok(usage) => (Some(usage), None),
            Err(e) => (None, Some(e.message())),
        };
        let quotas = usage
            .as_mut()
            .map(|u| std::mem::take(&mut u.quotas))
            .unwrap_or_default()
            .into_iter()
            .map(|q| QuotaView {
                dimension: q.dimension.as_str(),
                limit: q.limit,
                used: q.used,
                remaining: q.remaining,
                since: rfc3339_utc(q.starts_ms / 1000),
                resets: rfc3339_utc(q.resets_ms / 1000),
            })
            .collect();
        CallerStatus {
            id: (query.kind != CallerKind::Unknown).then_some(query.id),
            kind: query.kind,
            identity: query.identity,
            tier: query.tier,
            usage,
            quotas,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    /// A key's state as its object would answer it.
    fn raw(state: serde_json::Value) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(state.to_string()).unwrap()
    }

    #[test]
    fn a_fallback_is_in_force_while_its_model_is_overloaded_on_a_key() {
        let mut vars: HashMap<&str, String> = HashMap::new();
        vars.insert(
            "MODEL_FALLBACKS",
            r#"{"claude-opus-4-7": ["claude-sonnet-4-6"], "claude-haiku-4-5": ["claude-sonnet-4-6"]}"#
                .to_string(),
        );
        let config = Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
        let key = |phase: &str| UpstreamKeyStatus {
            key: "k".to_string(),
            source: KeySource::AnthropicApiKey,
            state: Some(raw(serde_json::json!({"pools": [
                {"pool": "messages:claude-opus-4", "phase": phase},
                {"pool": "messages:claude-sonnet-4", "phase": "overloaded"},
            ]}))),
            error: None,
        };
        let unread = UpstreamKeyStatus {
            key: "u".to_string(),
            source: KeySource::AnthropicApiKey,
            state: None,
            error: Some("unreachable".to_string()),
        };
        let listed = fallbacks(&config, &[key("healthy"), key("recovering"), unread]);
        let opus = listed
            .iter()
            .find(|f| f.model == "claude-opus-4-7")
            .unwrap();
        assert!(opus.in_force);
        assert_eq!(opus.phase, "recovering");
        assert_eq!(opus.to, vec!["claude-sonnet-4-6".to_string()]);
        // Haiku's pool is known to no key; the overloaded sonnet is nobody's source.
        let haiku = listed
            .iter()
            .find(|f| f.model == "claude-haiku-4-5")
            .unwrap();
        assert!(!haiku.in_force);
        assert_eq!(haiku.phase, "healthy");
        assert_eq!(listed.len(), 2);
        assert!(fallbacks(&config, &[key("healthy")])
            .iter()
            .all(|f| !f.in_force));
    }

    use super::*;
    use crate::limits::{Dimension, DimensionStatus};

    const ADMIN: &str = "adm_0123456789abcdef";
    const UPSTREAM: &str = "sk-ant-upstream-secret-value-1";
    const CLIENT: &str = "ck_client_secret_value_0001";
    const JWT: &str = "jwt-secret-that-is-long-enough-for-hs256!!";

    fn config() -> Config {
        let vars: HashMap<&str, String> = [
            ("ADMIN_KEY", ADMIN.to_string()),
            ("ANTHROPIC_API_KEY", UPSTREAM.to_string()),
            ("JWT_SECRET", JWT.to_string()),
            (
                "CLIENT_KEYS",
                format!(r#"{{"{CLIENT}": {{"id": "alice", "tier": "pro"}}}}"#),
            ),
            (
                "RATE_LIMITS",
                r#"{"default": {"rpm": 5}, "pro": {"rpm": 50, "concurrency": 2}}"#.to_string(),
            ),
        ]
        .into_iter()
        .collect();
        Config::from_lookup(|name| vars.get(name).cloned()).unwrap()
    }

    #[test]
    fn only_the_admin_key_opens_it_and_without_one_there_is_nothing() {
        let c = config();
        let key = c.admin_key.as_ref();
        assert_eq!(authorize(key, Some(&format!("Bearer {ADMIN}"))), Ok(()));
        assert_eq!(authorize(key, Some(&format!("bearer  {ADMIN} "))), Ok(()));
        for wrong in [
            None,
            Some(String::new()),
            Some(ADMIN.to_string()),
            Some(format!("Basic {ADMIN}")),
            Some(format!("Bearer {ADMIN}x")),
            Some(format!("Bearer {CLIENT}")),
        ] {
            let e = authorize(key, wrong.as_deref()).unwrap_err();
            assert_eq!(e.status(), 401, "{wrong:?}");
            assert!(!e.message().contains(ADMIN));
        }
        assert_eq!(
            authorize(None, Some(&format!("Bearer {ADMIN}"))),
            Err(ProxyError::NotFound)
        );
    }

    #[test]
    fn the_caller_parameter_is_percent_decoded() {
        assert_eq!(caller_param(None), Ok(None));
        assert_eq!(caller_param(Some("x=1")), Ok(None));
        assert_eq!(caller_param(Some("caller=")), Ok(None));
        assert_eq!(caller_param(Some("caller=alice")), Ok(Some("alice".into())));
        assert_eq!(
            caller_param(Some("a=b&caller=token%3Abob+smith")),
            Ok(Some("token:bob smith".into()))
        );
        assert_eq!(caller_param(Some("caller=%C3%A9")), Ok(Some("é".into())));
        for bad in ["caller=%", "caller=%4", "caller=%zz", "caller=%FF"] {
            assert_eq!(caller_param(Some(bad)).unwrap_err().status(), 400, "{bad}");
        }
        let long = format!("caller={}", "a".repeat(MAX_CALLER_BYTES + 1));
        assert_eq!(caller_param(Some(&long)).unwrap_err().status(), 400);
    }

    #[test]
    fn callers_are_identified_as_their_requests_are() {
        let c = config();
        let alice = caller_query(&c, "alice");
        assert_eq!(alice.kind, CallerKind::ClientKey);
        assert_eq!(alice.tier.as_deref(), Some("pro"));
        assert_eq!(alice.limits, Some(c.tier_limits("pro")));
        // The same object the requests of alice's key use.
        let presented = crate::identity::authenticate(&c, CLIENT, 0).unwrap();
        assert_eq!(alice.identity, presented.identity_hash());
        let token = caller_query(&c, "token:bob");
        assert_eq!(token.kind, CallerKind::Token);
        assert_eq!((token.tier, token.limits), (None, None));
        assert_eq!(token.identity, fingerprint("identity", "token:bob"));
        let pass = caller_query(&c, "passthrough:0123");
        assert_eq!(pass.kind, CallerKind::Passthrough);
        assert_eq!(pass.limits, Some(c.tier_limits(DEFAULT_TIER)));
        assert_eq!(caller_query(&c, "mallory").kind, CallerKind::Unknown);
    }

    #[test]
    fn the_document_names_keys_and_callers_by_fingerprint_only() {
        let c = config();
        let keys = upstream_keys(&c);
        assert_eq!(keys.len(), 1);
        assert_eq!(
            keys[0].1,
            c.upstream_key.as_ref().unwrap().fingerprint("upstream")
        );
        let query = caller_query(&c, "alice");
        let usage = CallerUsage {
            limits: c.tier_limits("pro"),
            dimensions: vec![DimensionStatus {
                dimension: Dimension::Rpm,
                limit: 50,
                remaining: 49,
                reset_ms: 1_200,
            }],
            idle: false,
            now_ms: 7,
            object: Default::default(),
            quotas: vec![crate::limits::quota::QuotaStanding {
                dimension: crate::limits::quota::QuotaDimension::UsdPerDay,
                limit: 200_000,
                used: 1_234,
                remaining: 198_766,
                starts_ms: 1_796_601_600_000,
                resets_ms: 1_796_688_000_000,
            }],
        };
        let doc = StatusDocument {
            version: "0.0.0",
            at_ms: 7,
            upstream_keys: keys
                .into_iter()
                .map(|(source, key)| {
                    UpstreamKeyStatus::of(source, key, Ok(raw(serde_json::json!({"pools": []}))))
                })
                .collect(),
            edge: EdgeTally::starting(1),
            caller: Some(CallerStatus::of(query, Ok(usage))),
            fallbacks: Vec::new(),
        };
        let text = serde_json::to_string(&doc).unwrap();
        for secret in [ADMIN, UPSTREAM, CLIENT, JWT] {
            assert!(!text.contains(secret), "{text}");
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["upstream_keys"][0]["source"], "ANTHROPIC_API_KEY");
        assert_eq!(v["upstream_keys"][0]["key"].as_str().unwrap().len(), 32);
        assert_eq!(v["caller"]["kind"], "client_key");
        assert_eq!(v["caller"]["id"], "alice");
        assert_eq!(v["caller"]["tier"], "pro");
        assert_eq!(v["caller"]["usage"]["dimensions"][0]["remaining"], 49);
        // The quotas read as the operator reads them, once.
        assert_eq!(v["caller"]["quotas"][0]["dimension"], "usd_per_day");
        assert_eq!(v["caller"]["quotas"][0]["used"], 1_234);
        assert_eq!(v["caller"]["quotas"][0]["remaining"], 198_766);
        assert_eq!(v["caller"]["quotas"][0]["since"], "2026-12-07T00:00:00Z");
        assert_eq!(v["caller"]["quotas"][0]["resets"], "2026-12-08T00:00:00Z");
        assert!(v["caller"]["usage"].get("quotas").is_none());
        assert_eq!(v["edge"]["answers"]["success"], 0);
        // A key's state is passed on as its object answered it, byte for byte.
        let answered = r#"{"at_ms":7,"pools":[{"pool":"messages:claude-opus-4","phase":"healthy","learned_rate_rps":1.5}]}"#;
        let passed = UpstreamKeyStatus::of(
            KeySource::AnthropicApiKey,
            "k".into(),
            Ok(serde_json::value::RawValue::from_string(answered.to_string()).unwrap()),
        );
        let text = serde_json::to_string(&passed).unwrap();
        assert!(text.contains(&format!(r#""state":{answered}"#)), "{text}");
        // An object that did not answer is said so, by name.
        let failed = UpstreamKeyStatus::of(
            KeySource::AnthropicApiKey,
            "k".into(),
            Err(ProxyError::Unavailable(
                "upstream state did not answer".into(),
            )),
        );
        let v = serde_json::to_value(failed).unwrap();
        assert!(v["error"]
            .as_str()
            .unwrap()
            .starts_with("upstream state did not answer"));
        assert!(v.get("state").is_none());
        // An id of no known kind (say, a key pasted instead of an id) is never repeated.
        let pasted = CallerStatus::of(caller_query(&c, CLIENT), Err(ProxyError::NotFound));
        let text = serde_json::to_string(&pasted).unwrap();
        assert!(!text.contains(CLIENT), "{text}");
    }
}
