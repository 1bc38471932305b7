//! The caller's own limits as response headers, formatted from a snapshot.
//!
//! Two vocabularies, because clients read either: the IETF draft
//! (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` and `RateLimit`, structured
//! field lists with one item per configured dimension) and the `anthropic-ratelimit-*`
//! headers the official SDKs and dashboards already know, here describing the caller's key
//! at the proxy rather than the upstream key.
//!
//! Choices the draft leaves open:
//! - Bucket dimensions have `w=60` (one minute's quota) and `t` = whole seconds until the
//!   bucket is full again, rounded up; on a denial the binding dimension's `t` is the
//!   `Retry-After` of the answer instead.
//! - Concurrency has `qu="concurrent-requests"` (the draft's own unit) and no `w` or `t`: a
//!   slot frees when a request finishes, which cannot be foreseen. On a concurrency denial
//!   it gets `t` = `Retry-After` like any binding dimension.
//! - Anthropic's `-reset` is the RFC 3339 UTC time at which the bucket is full again,
//!   rounded up to the second. Concurrency has no Anthropic header.

use std::fmt::Write as _;

use super::limiter_state::{Denial, Dimension, DimensionStatus};
use super::quota::{QuotaDenial, QuotaStanding};
use crate::error::whole_seconds;

/// `ratelimit-policy` and `ratelimit` for these statuses (none when nothing is limited).
/// Pass the denial when answering one, so its dimension's `t` equals the `Retry-After`.
#[must_use]
pub fn rate_limit_headers(
    statuses: &[DimensionStatus],
    denial: Option<&Denial>,
) -> Vec<(&'static str, String)> {
    if statuses.is_empty() {
        return Vec::new();
    }
    let mut policy = String::new();
    let mut current = String::new();
    for status in statuses {
        let separator = if policy.is_empty() { "" } else { ", " };
        let name = status.dimension.as_str();
        let binding = denial.filter(|denial| denial.dimension == status.dimension);
        let seconds = match (binding, status.dimension) {
            (Some(denial), _) => Some(whole_seconds(denial.retry_after_ms)),
            (None, Dimension::Concurrency) => None,
            (None, _) => Some(status.reset_ms.div_ceil(1000)),
        };
        // Writing to a String cannot fail.
        let _ = match status.dimension {
            Dimension::Concurrency => write!(
                policy,
                "{separator}\"{name}\";q={};qu=\"concurrent-requests\"",
                status.limit
            ),
            _ => write!(policy, "{separator}\"{name}\";q={};w=60", status.limit),
        };
        let _ = write!(current, "{separator}\"{name}\";r={}", status.remaining);
        if let Some(seconds) = seconds {
            let _ = write!(current, ";t={seconds}");
        }
    }
    vec![("ratelimit-policy", policy), ("ratelimit", current)]
}

/// `anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining,reset}` for
/// the configured bucket dimensions.
#[must_use]
pub fn anthropic_headers(statuses: &[DimensionStatus], now_ms: u64) -> Vec<(&'static str, String)> {
    let mut headers = Vec::with_capacity(9);
    for status in statuses {
        let (limit, remaining, reset) = match status.dimension {
            Dimension::Rpm => (
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
            ),
            Dimension::InputTpm => (
                "anthropic-ratelimit-input-tokens-limit",
                "anthropic-ratelimit-input-tokens-remaining",
                "anthropic-ratelimit-input-tokens-reset",
            ),
            Dimension::OutputTpm => (
                "anthropic-ratelimit-output-tokens-limit",
                "anthropic-ratelimit-output-tokens-remaining",
                "anthropic-ratelimit-output-tokens-reset",
            ),
            Dimension::Concurrency => continue,
        };
        let full_at_ms = now_ms.saturating_add(status.reset_ms);
        headers.push((limit, status.limit.to_string()));
        headers.push((remaining, status.remaining.to_string()));
        headers.push((reset, rfc3339_utc(full_at_ms.div_ceil(1000))));
    }
    headers
}

/// Every limit header of an answer: [`rate_limit_headers`] then [`anthropic_headers`].
#[must_use]
pub fn limit_headers(
    statuses: &[DimensionStatus],
    denial: Option<&Denial>,
    now_ms: u64,
) -> Vec<(&'static str, String)> {
    let mut headers = rate_limit_headers(statuses, denial);
    headers.extend(anthropic_headers(statuses, now_ms));
    headers
}

/// Adds the daily and monthly quotas to the `ratelimit-policy` and `ratelimit` in `headers`
/// (made when nothing per-minute is limited): `"rpd";q=50;w=86400` and `"rpd";r=3;t=…`, `w`
/// the window's length and `t` the seconds until it resets (the `Retry-After` for the quota
/// that refused). Dollar quotas count micro-dollars (`"usd_per_day";q=200000` is $0.20).
pub fn quota_headers(
    headers: &mut Vec<(&'static str, String)>,
    standings: &[QuotaStanding],
    denial: Option<&QuotaDenial>,
    now_ms: u64,
) {
    if standings.is_empty() {
        return;
    }
    let mut policy = String::new();
    let mut current = String::new();
    for standing in standings {
        let name = standing.dimension.as_str();
        let window_s = standing.resets_ms.saturating_sub(standing.starts_ms) / 1000;
        let seconds = match denial.filter(|d| d.dimension == standing.dimension) {
            Some(denial) => whole_seconds(denial.retry_after_ms),
            None => standing.resets_ms.saturating_sub(now_ms).div_ceil(1000),
        };
        let _ = write!(policy, ", \"{name}\";q={};w={window_s}", standing.limit);
        let _ = write!(current, ", \"{name}\";r={};t={seconds}", standing.remaining);
    }
    for (header, items) in [("ratelimit-policy", policy), ("ratelimit", current)] {
        match headers.iter_mut().find(|(name, _)| *name == header) {
            Some((_, value)) => value.push_str(&items),
            None => headers.push((header, items.trim_start_matches(", ").to_string())),
        }
    }
}

/// The last second RFC 3339 can write with a four-digit year: 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// Seconds since the Unix epoch as an RFC 3339 UTC timestamp, e.g. `2026-11-27T21:03:12Z`.
/// Times after the year 9999 are written as its last second.
#[must_use]
pub fn rfc3339_utc(epoch_secs: u64) -> String {
    let secs = epoch_secs.min(LAST_RFC3339_SECOND);
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days). Exact; no overflow below 10^14 days.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days.saturating_add(719_468); // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March is 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn status(dimension: Dimension, limit: u64, remaining: u64, reset_ms: u64) -> DimensionStatus {
        DimensionStatus {
            dimension,
            limit,
            remaining,
            reset_ms,
        }
    }

    fn all() -> Vec<DimensionStatus> {
        vec![
            status(Dimension::Rpm, 50, 0, 11_734),
            status(Dimension::InputTpm, 40_000, 39_000, 1_500),
            status(Dimension::OutputTpm, 8_000, 8_000, 0),
            status(Dimension::Concurrency, 4, 3, 600_000),
        ]
    }

    #[test]
    fn draft_headers_list_every_configured_dimension() {
        let headers = rate_limit_headers(&all(), None);
        assert_eq!(
            headers,
            vec![
                (
                    "ratelimit-policy",
                    "\"rpm\";q=50;w=60, \"input_tpm\";q=40000;w=60, \"output_tpm\";q=8000;w=60, \
                     \"concurrency\";q=4;qu=\"concurrent-requests\""
                        .to_string()
                ),
                (
                    "ratelimit",
                    "\"rpm\";r=0;t=12, \"input_tpm\";r=39000;t=2, \"output_tpm\";r=8000;t=0, \
                     \"concurrency\";r=3"
                        .to_string()
                ),
            ]
        );
        assert!(rate_limit_headers(&[], None).is_empty());
    }

    #[test]
    fn the_binding_dimension_carries_the_retry_after() {
        let denial = Denial {
            retry_after_ms: 1_000,
            dimension: Dimension::Concurrency,
            limit: 4,
            remaining: 0,
        };
        let headers = rate_limit_headers(&all(), Some(&denial));
        assert!(
            headers[1].1.ends_with("\"concurrency\";r=3;t=1"),
            "{}",
            headers[1].1
        );
        let denial = Denial {
            retry_after_ms: 1_200,
            dimension: Dimension::Rpm,
            limit: 50,
            remaining: 0,
        };
        let statuses = [status(Dimension::Rpm, 50, 0, 60_000)];
        assert_eq!(
            rate_limit_headers(&statuses, Some(&denial))[1].1,
            "\"rpm\";r=0;t=2"
        );
    }

    #[test]
    fn anthropic_headers_describe_the_key_at_the_proxy() {
        // 2026-11-27T21:03:00.250Z
        let now_ms = 1_795_813_380_250;
        let headers = anthropic_headers(&all(), now_ms);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(headers.len(), 9);
        assert_eq!(get("anthropic-ratelimit-requests-limit"), Some("50"));
        assert_eq!(get("anthropic-ratelimit-requests-remaining"), Some("0"));
        // 11.734 s later is 21:03:11.984, rounded up to the second.
        assert_eq!(
            get("anthropic-ratelimit-requests-reset"),
            Some("2026-11-27T21:03:12Z")
        );
        assert_eq!(
            get("anthropic-ratelimit-input-tokens-reset"),
            Some("2026-11-27T21:03:02Z")
        );
        assert_eq!(
            get("anthropic-ratelimit-output-tokens-reset"),
            Some("2026-11-27T21:03:01Z")
        );
        assert_eq!(
            get("anthropic-ratelimit-output-tokens-remaining"),
            Some("8000")
        );
        assert_eq!(limit_headers(&all(), None, now_ms).len(), 11);
    }

    #[test]
    fn rfc3339_handles_the_calendar() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(u64::MAX), "9999-12-31T23:59:59Z");
    }

    /// httpdate writes the same instant as `Sun, 06 Nov 1994 08:49:37 GMT`.
    fn via_httpdate(secs: u64) -> String {
        let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
        let parts: Vec<&str> = text.split([' ', ',']).filter(|p| !p.is_empty()).collect();
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == parts[2]).unwrap() + 1;
        format!("{}-{month:02}-{}T{}Z", parts[3], parts[1], parts[4])
    }

    proptest! {
        #[test]
        fn rfc3339_agrees_with_httpdate(secs in 0..LAST_RFC3339_SECOND) {
            prop_assert_eq!(rfc3339_utc(secs), via_httpdate(secs));
        }
    }
}
