//! Reading the upstream's retry hints: `retry-after-ms`, `retry-after` and `x-should-retry`.
//!
//! These headers come from a server we do not control, so every parse is total: a value that
//! is malformed, negative, not finite or absurdly large is ignored or capped, never a panic.

use std::time::{SystemTime, UNIX_EPOCH};

/// The longest wait an upstream hint may impose: 24 hours. Larger hints are capped to this.
pub const MAX_UPSTREAM_WAIT_MS: u64 = 24 * 60 * 60 * 1000;

/// The wait in milliseconds the upstream asks for, measured from `now_ms` (milliseconds since
/// the Unix epoch).
///
/// `retry-after-ms` (milliseconds, integer or decimal) wins when it is valid. Otherwise
/// `retry-after` is read as integer or decimal seconds, or as an HTTP-date; a date in the past
/// gives `Some(0)`. Fractions of a millisecond round up. Values above
/// [`MAX_UPSTREAM_WAIT_MS`] are capped to it. Anything else (empty, negative, `NaN`, `inf`,
/// exponents, garbage) is ignored.
#[must_use]
pub fn upstream_wait_ms(
    retry_after_ms: Option<&str>,
    retry_after: Option<&str>,
    now_ms: u64,
) -> Option<u64> {
    retry_after_ms
        .and_then(|value| parse_decimal(value).map(clamp_ms))
        .or_else(|| retry_after.and_then(|value| parse_retry_after(value, now_ms)))
}

/// The upstream's `x-should-retry` verdict: `Some(true)` / `Some(false)` for `true` / `false`
/// in any case, `None` for a missing or unrecognised value.
#[must_use]
pub fn should_retry_header(value: Option<&str>) -> Option<bool> {
    let value = value?.trim();
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn parse_retry_after(value: &str, now_ms: u64) -> Option<u64> {
    if let Some(seconds) = parse_decimal(value) {
        return Some(clamp_ms(seconds * 1000.0));
    }
    let date = httpdate::parse_http_date(value.trim()).ok()?;
    let date_ms = millis_since_epoch(date);
    Some(date_ms.saturating_sub(now_ms).min(MAX_UPSTREAM_WAIT_MS))
}

/// A non-negative decimal number: ASCII digits with at most one `.`, at least one digit,
/// surrounding whitespace allowed. Signs, exponents, `inf` and `NaN` are refused, so the
/// result is finite unless the digit string is astronomically long (then it is `inf`, which
/// [`clamp_ms`] caps).
fn parse_decimal(value: &str) -> Option<f64> {
    let value = value.trim();
    let mut digits = 0usize;
    let mut dots = 0usize;
    for byte in value.bytes() {
        match byte {
            b'0'..=b'9' => digits = digits.saturating_add(1),
            b'.' => dots = dots.saturating_add(1),
            _ => return None,
        }
    }
    if digits == 0 || dots > 1 {
        return None;
    }
    value.parse::<f64>().ok()
}

/// Rounds a non-negative millisecond count up to a whole `u64`, capped at
/// [`MAX_UPSTREAM_WAIT_MS`].
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // guarded: 0 < ms < cap
fn clamp_ms(ms: f64) -> u64 {
    // `MAX_UPSTREAM_WAIT_MS` as a float (exact: far below 2^53).
    const CAP: f64 = 86_400_000.0;
    if ms.is_nan() || ms <= 0.0 {
        0
    } else if ms >= CAP {
        MAX_UPSTREAM_WAIT_MS
    } else {
        // In (0, CAP) and whole after `ceil`, so the cast is exact.
        ms.ceil() as u64
    }
}

fn millis_since_epoch(time: SystemTime) -> u64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => u64::try_from(since.as_millis()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// Sun, 06 Nov 1994 08:49:37 GMT.
    const DATE_MS: u64 = 784_111_777_000;
    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn http_date(ms: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
    }

    #[test]
    fn integer_seconds() {
        assert_eq!(upstream_wait_ms(None, Some("2"), 0), Some(2000));
        assert_eq!(upstream_wait_ms(None, Some("0"), 0), Some(0));
        assert_eq!(upstream_wait_ms(None, Some(" 30 "), 0), Some(30_000));
    }

    #[test]
    fn decimal_seconds() {
        assert_eq!(upstream_wait_ms(None, Some("1.5"), 0), Some(1500));
        assert_eq!(upstream_wait_ms(None, Some("0.25"), 0), Some(250));
        assert_eq!(upstream_wait_ms(None, Some(".5"), 0), Some(500));
        assert_eq!(upstream_wait_ms(None, Some("2."), 0), Some(2000));
        // A sub-millisecond remainder rounds up: the hint is a floor.
        assert_eq!(upstream_wait_ms(None, Some("1.0001"), 0), Some(1001));
    }

    #[test]
    fn http_date_in_the_future_is_relative_to_now() {
        let now = DATE_MS - 7_000;
        assert_eq!(upstream_wait_ms(None, Some(DATE), now), Some(7_000));
        assert_eq!(
            upstream_wait_ms(None, Some(&http_date(now + 3_000)), now),
            Some(3_000)
        );
    }

    #[test]
    fn http_date_in_the_past_is_zero() {
        assert_eq!(
            upstream_wait_ms(None, Some(DATE), DATE_MS + 60_000),
            Some(0)
        );
        assert_eq!(upstream_wait_ms(None, Some(DATE), DATE_MS), Some(0));
    }

    #[test]
    fn http_date_other_formats() {
        let now = DATE_MS - 1_000;
        // RFC 850 and asctime forms are still HTTP-dates.
        assert_eq!(
            upstream_wait_ms(None, Some("Sunday, 06-Nov-94 08:49:37 GMT"), now),
            Some(1_000)
        );
        assert_eq!(
            upstream_wait_ms(None, Some("Sun Nov  6 08:49:37 1994"), now),
            Some(1_000)
        );
    }

    #[test]
    fn http_date_far_in_the_future_is_capped() {
        let far = http_date(DATE_MS + 400 * 24 * 3600 * 1000);
        assert_eq!(
            upstream_wait_ms(None, Some(&far), DATE_MS),
            Some(MAX_UPSTREAM_WAIT_MS)
        );
    }

    #[test]
    fn retry_after_ms_forms() {
        assert_eq!(upstream_wait_ms(Some("1500"), None, 0), Some(1500));
        assert_eq!(upstream_wait_ms(Some("1500.5"), None, 0), Some(1501));
        assert_eq!(upstream_wait_ms(Some("0"), None, 0), Some(0));
        assert_eq!(upstream_wait_ms(Some("0.2"), None, 0), Some(1));
    }

    #[test]
    fn retry_after_ms_wins_over_retry_after() {
        assert_eq!(upstream_wait_ms(Some("250"), Some("9"), 0), Some(250));
        assert_eq!(upstream_wait_ms(Some("0"), Some("9"), 0), Some(0));
    }

    #[test]
    fn invalid_retry_after_ms_falls_back_to_retry_after() {
        for bad in ["", "abc", "-5", "NaN", "inf", "1e3", "1.2.3", "+5"] {
            assert_eq!(
                upstream_wait_ms(Some(bad), Some("3"), 0),
                Some(3000),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn garbage_is_ignored() {
        for bad in [
            "",
            " ",
            "soon",
            "-1",
            "-0.5",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "1e3",
            "1.5.2",
            ".",
            "1,5",
            "0x10",
            "+2",
            "2 s",
            "Sun, 32 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(
                upstream_wait_ms(None, Some(bad), 0),
                None,
                "retry-after {bad:?}"
            );
            assert_eq!(
                upstream_wait_ms(Some(bad), None, 0),
                None,
                "retry-after-ms {bad:?}"
            );
        }
        assert_eq!(upstream_wait_ms(None, None, 0), None);
    }

    #[test]
    fn huge_values_are_capped() {
        assert_eq!(
            upstream_wait_ms(None, Some("86401"), 0),
            Some(MAX_UPSTREAM_WAIT_MS)
        );
        assert_eq!(
            upstream_wait_ms(None, Some("18446744073709551616"), 0),
            Some(MAX_UPSTREAM_WAIT_MS)
        );
        assert_eq!(
            upstream_wait_ms(Some("99999999999999999999999999"), None, 0),
            Some(MAX_UPSTREAM_WAIT_MS)
        );
        // So many digits that the float is infinite.
        let endless = "9".repeat(400);
        assert_eq!(
            upstream_wait_ms(Some(&endless), None, 0),
            Some(MAX_UPSTREAM_WAIT_MS)
        );
        assert_eq!(
            upstream_wait_ms(None, Some(&endless), 0),
            Some(MAX_UPSTREAM_WAIT_MS)
        );
        // Exactly 24 h is allowed.
        assert_eq!(
            upstream_wait_ms(None, Some("86400"), 0),
            Some(MAX_UPSTREAM_WAIT_MS)
        );
    }

    #[test]
    fn cap_constant_matches_float_cap() {
        assert_eq!(clamp_ms(86_400_000.0), MAX_UPSTREAM_WAIT_MS);
        assert_eq!(clamp_ms(86_399_999.5), MAX_UPSTREAM_WAIT_MS);
        assert_eq!(clamp_ms(86_399_998.5), MAX_UPSTREAM_WAIT_MS - 1);
    }

    #[test]
    fn should_retry_values() {
        assert_eq!(should_retry_header(Some("true")), Some(true));
        assert_eq!(should_retry_header(Some("TRUE")), Some(true));
        assert_eq!(should_retry_header(Some(" True ")), Some(true));
        assert_eq!(should_retry_header(Some("false")), Some(false));
        assert_eq!(should_retry_header(Some("False")), Some(false));
        assert_eq!(should_retry_header(Some("")), None);
        assert_eq!(should_retry_header(Some("yes")), None);
        assert_eq!(should_retry_header(Some("1")), None);
        assert_eq!(should_retry_header(None), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_strings(
            a in any::<String>(),
            b in any::<String>(),
            now in any::<u64>(),
        ) {
            if let Some(ms) = upstream_wait_ms(Some(&a), Some(&b), now) {
                prop_assert!(ms <= MAX_UPSTREAM_WAIT_MS);
            }
            if let Some(ms) = upstream_wait_ms(None, Some(&a), now) {
                prop_assert!(ms <= MAX_UPSTREAM_WAIT_MS);
            }
            let _ = should_retry_header(Some(&a));
        }

        #[test]
        fn parsers_never_panic_on_number_like_strings(
            a in "[-+ 0-9.eEinfaN]{0,40}",
            now in any::<u64>(),
        ) {
            if let Some(ms) = upstream_wait_ms(Some(&a), Some(&a), now) {
                prop_assert!(ms <= MAX_UPSTREAM_WAIT_MS);
            }
        }

        #[test]
        fn integer_seconds_round_trip(seconds in 0u64..=86_400) {
            prop_assert_eq!(
                upstream_wait_ms(None, Some(&seconds.to_string()), 0),
                Some(seconds * 1000)
            );
        }

        #[test]
        fn http_dates_round_trip(now_s in 0u64..4_000_000_000, ahead_s in 0u64..=86_400) {
            let date = http_date((now_s + ahead_s) * 1000);
            prop_assert_eq!(
                upstream_wait_ms(None, Some(&date), now_s * 1000),
                Some(ahead_s * 1000)
            );
        }
    }
}
