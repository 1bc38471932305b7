//! `Config::from_lookup`: every variable at once, each unset, arbitrary text, or a plausible
//! value (numbers, URLs, origin lists, `RATE_LIMITS` and `CLIENT_KEYS` JSON, possibly cut
//! short).
//!
//! Holds for every input:
//! - an error names one of the contract's variables, and neither it nor a valid config's
//!   `Debug` ever contains a secret (client keys, `ANTHROPIC_API_KEY`, `JWT_SECRET`);
//! - a valid config is within the documented ranges: budgets and timeouts 1 ms..1 h,
//!   `MAX_ATTEMPTS` 1..=100, backoff max ≥ base, keys of 16+ characters whose tiers exist and
//!   whose ids carry no reserved prefix, a `default` tier, a `JWT_SECRET` of 32+ bytes, a
//!   token lifetime of 1 s..1 year, an `https://` upstream (or `http://` on loopback) without
//!   a trailing slash; `MODEL_FALLBACKS` lists that are non-empty, never name their own model
//!   or a model twice, and form no cycle;
//! - parsing is deterministic.

use std::collections::BTreeMap;

use arbitrary::{Result, Unstructured};
use breakwater::config::{Config, VARIABLES};

/// Every secret the input contains starts with this; nothing else may contain it.
const MARKER: &str = "SEKRIT";

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(vars) = variables(&mut u) else { return };
    // The leak check is only meaningful when the marker appears in secrets alone.
    let marker_only_in_secrets = vars
        .iter()
        .filter(|(name, _)| {
            !["ANTHROPIC_API_KEY", "JWT_SECRET", "CLIENT_KEYS"].contains(&name.as_str())
        })
        .all(|(_, v)| !v.contains(MARKER))
        && client_ids_clean(&vars);

    let lookup = |name: &str| vars.get(name).cloned();
    let first = Config::from_lookup(lookup);
    let second = Config::from_lookup(lookup);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("parsing is not deterministic"),
    }
    match first {
        Err(e) => {
            assert!(
                VARIABLES.contains(&e.variable),
                "unknown variable {}",
                e.variable
            );
            let shown = e.to_string();
            assert!(shown.contains(e.variable));
            if marker_only_in_secrets {
                assert!(
                    !shown.contains(MARKER),
                    "a secret in a config error: {shown}"
                );
            }
        }
        Ok(c) => {
            let shown = format!("{c:?}");
            if marker_only_in_secrets {
                assert!(
                    !shown.contains(MARKER),
                    "a secret in the config's Debug: {shown}"
                );
            }
            assert!(
                c.upstream_url.starts_with("https://") || c.upstream_url.starts_with("http://")
            );
            assert!(!c.upstream_url.ends_with('/'));
            if let Some(rest) = c.upstream_url.strip_prefix("http://") {
                let host = rest
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                assert!(
                    ["127.0.0.1", "[::1]", "localhost"]
                        .iter()
                        .any(|h| host == *h || host.starts_with(&format!("{h}:"))),
                    "plain http to {host}"
                );
            }
            assert!(c.rate_limits.contains_key("default"), "no default tier");
            assert!(
                c.jwt_secret.as_ref().is_none_or(|s| s.expose().len() >= 32),
                "a short JWT_SECRET"
            );
            assert!((1_000..=31_536_000_000).contains(&c.jwt_max_lifetime_ms));
            for ms in [
                c.request_budget_ms,
                c.attempt_timeout_ms,
                c.backoff_base_ms,
                c.backoff_max_ms,
            ] {
                assert!((1..=3_600_000).contains(&ms), "{ms} ms out of range");
            }
            assert!(c.backoff_max_ms >= c.backoff_base_ms);
            assert!((1..=100).contains(&c.max_attempts.get()));
            assert!(c.max_body_bytes > 0);
            assert!(
                c.max_inflight_body_bytes >= c.max_body_bytes,
                "a body of the largest size could never fit"
            );
            assert!(
                (c.max_body_bytes..=c.max_inflight_body_bytes)
                    .contains(&c.max_inflight_body_bytes_per_caller),
                "a caller's share must hold one largest body and no more than the isolate"
            );
            assert!((1..=3_600_000).contains(&c.body_read_timeout_ms));
            assert!(c.min_body_bytes_per_s > 0);
            for (tier, betas) in &c.tier_betas {
                assert!(c.rate_limits.contains_key(tier));
                assert!(
                    betas
                        .iter()
                        .all(|b| breakwater::request::headers::is_quotable_beta(b)),
                    "{betas:?}"
                );
            }
            for (model, list) in &c.model_fallbacks {
                assert!(
                    !model.is_empty() && !list.is_empty(),
                    "an empty fallback entry"
                );
                assert!(!list.contains(model), "{model:?} falls back to itself");
                for (i, m) in list.iter().enumerate() {
                    assert!(!m.is_empty() && !list[..i].contains(m), "{list:?}");
                }
                // No chain of fallbacks leads back to the model.
                let mut seen = vec![model.as_str()];
                let mut next: Vec<&str> = list.iter().map(String::as_str).collect();
                while let Some(m) = next.pop() {
                    assert_ne!(m, model.as_str(), "a cycle through {model:?}");
                    if !seen.contains(&m) {
                        seen.push(m);
                        next.extend(c.fallbacks_of(m).iter().map(String::as_str));
                    }
                }
            }
            for (key, entry) in &c.client_keys {
                assert!(key.expose().len() >= 16);
                assert!(!entry.id.is_empty() && entry.id.len() <= 256);
                assert!(entry.tier == "default" || c.rate_limits.contains_key(&entry.tier));
                let id = entry.id.to_ascii_lowercase();
                assert!(
                    !id.starts_with("token:") && !id.starts_with("passthrough:"),
                    "reserved id {:?}",
                    entry.id
                );
            }
        }
    }
}

/// Client ids and tiers are shown in errors on purpose; they must not carry the marker.
fn client_ids_clean(vars: &BTreeMap<String, String>) -> bool {
    let Some(raw) = vars.get("CLIENT_KEYS") else {
        return true;
    };
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(map)) => map.values().all(|v| !v.to_string().contains(MARKER)),
        // Unparseable: the error quotes nothing of it anyway.
        Ok(_) | Err(_) => true,
    }
}

fn variables(u: &mut Unstructured<'_>) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for &name in VARIABLES {
        let value = match u.int_in_range(0u8..=3)? {
            0 => None,
            1 => Some(u.arbitrary::<String>()?),
            _ => Some(plausible(name, u)?),
        };
        if let Some(value) = value {
            vars.insert(name.to_string(), value);
        }
    }
    Ok(vars)
}

fn plausible(name: &str, u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match name {
        "UPSTREAM_URL" => {
            let scheme = *u.choose(&["https://", "http://", "ftp://", ""])?;
            let host = *u.choose(&[
                "api.anthropic.com",
                "127.0.0.1:8788",
                "[::1]:8788",
                "localhost",
                "localhost.evil.example",
                "127.0.0.1:x",
                "[::1",
                "user@host",
                "",
                "h/x?y",
                "a b",
            ])?;
            let slash = if u.arbitrary()? { "/" } else { "" };
            format!("{scheme}{host}{slash}")
        }
        "ANTHROPIC_API_KEY" | "JWT_SECRET" => format!("{MARKER}{}", u.arbitrary::<String>()?),
        "JWT_AUDIENCE" | "JWT_ISSUER" => {
            (*u.choose(&["chat", "https://auth.example", "a\u{7}b", ""])?).to_string()
        }
        "JWT_MAX_LIFETIME_S" => {
            let n: u64 = match u.int_in_range(0u8..=2)? {
                0 => u.int_in_range(0..=100_000)?,
                1 => u.int_in_range(31_535_000..=31_537_000)?,
                _ => u.arbitrary()?,
            };
            n.to_string()
        }
        "ALLOWED_ORIGINS" => {
            if u.ratio(1u8, 8)? {
                "*".to_string()
            } else {
                let n = u.int_in_range(0..=4)?;
                let mut origins = Vec::new();
                for _ in 0..n {
                    let scheme = *u.choose(&["https://", "http://", ""])?;
                    let host =
                        *u.choose(&["chat.example", "localhost:8080", "exämple.com", "a/b", ""])?;
                    origins.push(format!("{scheme}{host}"));
                }
                origins.join(*u.choose(&[",", ", ", " ,"])?)
            }
        }
        "RATE_LIMITS" => {
            let mut tiers = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let tier = u
                    .choose(&["default", "default", "pro", "free", ""])?
                    .to_string();
                let mut limits = serde_json::Map::new();
                for dim in ["rpm", "input_tpm", "output_tpm", "concurrency", "rpn"] {
                    if u.ratio(1u8, 2)? {
                        limits.insert(dim.to_string(), json_number(u)?);
                    }
                }
                tiers.insert(tier, serde_json::Value::Object(limits));
            }
            cut(serde_json::Value::Object(tiers).to_string(), u)?
        }
        "CLIENT_KEYS" => {
            let mut keys = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let key = format!("{MARKER}{}", u.arbitrary::<String>()?);
                let mut entry = serde_json::Map::new();
                if u.ratio(7u8, 8)? {
                    let id: String = u.arbitrary()?;
                    let prefix = *u.choose(&["", "", "", "token:", "passthrough:", "Token:"])?;
                    entry.insert(
                        "id".to_string(),
                        format!("{prefix}{}", id.replace(MARKER, "")).into(),
                    );
                }
                if u.arbitrary()? {
                    entry.insert(
                        "tier".to_string(),
                        u.choose(&["default", "pro", "gold"])?.to_string().into(),
                    );
                }
                if u.ratio(1u8, 8)? {
                    entry.insert("extra".to_string(), true.into());
                }
                keys.insert(key, serde_json::Value::Object(entry));
            }
            cut(serde_json::Value::Object(keys).to_string(), u)?
        }
        "MODEL_FALLBACKS" => {
            const MODELS: [&str; 5] = ["a", "b", "c", "claude-opus-4-7", ""];
            let mut map = serde_json::Map::new();
            for _ in 0..u.int_in_range(0..=3)? {
                let model = u.choose(&MODELS)?.to_string();
                let list: Vec<serde_json::Value> = (0..u.int_in_range(0..=3)?)
                    .map(|_| u.choose(&MODELS).map(|m| serde_json::Value::from(*m)))
                    .collect::<Result<_>>()?;
                map.insert(model, serde_json::Value::Array(list));
            }
            cut(serde_json::Value::Object(map).to_string(), u)?
        }
        "ALLOW_PASSTHROUGH_KEYS" => u
            .choose(&["true", "false", "1", "0", "TRUE", "False", "yes"])?
            .to_string(),
        _ => {
            // Milliseconds, attempts, body bytes.
            let n: u64 = match u.int_in_range(0u8..=2)? {
                0 => u.int_in_range(0..=200)?,
                1 => u.int_in_range(0..=4_000_000)?,
                _ => u.arbitrary()?,
            };
            let pad = *u.choose(&["", " ", "-", "+", "0"])?;
            format!("{pad}{n}")
        }
    })
}

fn json_number(u: &mut Unstructured<'_>) -> Result<serde_json::Value> {
    Ok(match u.int_in_range(0u8..=3)? {
        0 => serde_json::Value::from(u.int_in_range(0u64..=100_000)?),
        1 => serde_json::Value::from(u.arbitrary::<i64>()?),
        2 => serde_json::Value::from(u.arbitrary::<f64>()?),
        _ => serde_json::Value::from("fifty"),
    })
}

/// Sometimes cuts a JSON text short (on a character boundary), to reach the parse errors.
fn cut(json: String, u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1u8, 4)? {
        let at = u.int_in_range(0..=json.len())?;
        let at = (0..=at)
            .rev()
            .find(|&i| json.is_char_boundary(i))
            .unwrap_or(0);
        Ok(json[..at].to_string())
    } else {
        Ok(json)
    }
}
