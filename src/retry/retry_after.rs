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
        .and_then(|value| decimal_ms(value, Unit::Milliseconds))
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
    if let Some(ms) = decimal_ms(value, Unit::Seconds) {
        return Some(ms);
    }
    let date = httpdate::parse_http_date(value.trim()).ok()?;
    let date_ms = millis_since_epoch(date);
    Some(date_ms.saturating_sub(now_ms).min(MAX_UPSTREAM_WAIT_MS))
}

/// What a decimal hint counts.
#[derive(Clone, Copy)]
enum Unit {
    Seconds,
    Milliseconds,
}

/// Powers of ten a double holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// A non-negative decimal number of `unit` as whole milliseconds (rounded up, capped): ASCII
/// digits with at most one `.`, at least one digit, surrounding whitespace allowed. Signs,
/// exponents, `inf` and `NaN` are refused.
///
/// The value is what reading it as a double gives (`clamp_ms(x)`, `clamp_ms(x * 1000.0)`), to
/// the bit, without the standard library's decimal-to-float reader (a quarter of the
/// module's numeric code and tables, for a header): a number of at most 2^53 units over a
/// power of ten up to 10^22 is `units / 10^k` as a double, which the division rounds
/// correctly, as that reader does. Longer digit strings, which no server sends, are read
/// exactly and rounded up; the double reading of one could differ by a millisecond.
fn decimal_ms(value: &str, unit: Unit) -> Option<u64> {
    let value = value.trim();
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !digits(whole) || !digits(fraction) {
        return None;
    }
    let whole = whole.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    let shift: u32 = match unit {
        Unit::Seconds => 3,
        Unit::Milliseconds => 0,
    };
    // At or past the cap whatever the fraction (the double of such a value is too).
    let cap_whole = MAX_UPSTREAM_WAIT_MS / 10u64.pow(shift);
    let whole_value = if whole.len() > 8 {
        None
    } else {
        Some(value_of(whole.bytes()))
    };
    let Some(whole_value) = whole_value.filter(|&w| w < cap_whole) else {
        return Some(MAX_UPSTREAM_WAIT_MS);
    };
    let units = whole
        .bytes()
        .chain(fraction.bytes())
        .try_fold(0u64, |n, b| {
            n.checked_mul(10)?
                .checked_add(u64::from(b.wrapping_sub(b'0')))
        })
        .filter(|&n| n <= 1 << 53);
    if let (Some(units), Some(power)) = (units, EXACT_POWERS_OF_TEN.get(fraction.len())) {
        #[allow(clippy::cast_precision_loss)] // at most 2^53: exact
        let number = units as f64 / power;
        return Some(match unit {
            Unit::Seconds => clamp_ms(number * 1000.0),
            Unit::Milliseconds => clamp_ms(number),
        });
    }
    // Exact: the whole part and `shift` digits of the fraction, plus one for any rest.
    let shifted = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(shift as usize);
    let ms = whole_value
        .saturating_mul(10u64.pow(shift))
        .saturating_add(value_of(shifted));
    let rest = fraction.bytes().skip(shift as usize).any(|b| b != b'0');
    Some(ms.saturating_add(u64::from(rest)).min(MAX_UPSTREAM_WAIT_MS))
}

/// The number a short run of ASCII digits spells.
fn value_of(digits: impl Iterator<Item = u8>) -> u64 {
    digits.fold(0u64, |n, b| {
        n.saturating_mul(10)
            .saturating_add(u64::from(b.wrapping_sub(b'0')))
    })
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

    /// The reading this module used to make: the standard library's float parser.
    fn by_double(value: &str) -> Option<f64> {
        let value = value.trim();
        let valid = value.bytes().filter(u8::is_ascii_digit).count() > 0
            && value.bytes().filter(|&b| b == b'.').count() <= 1
            && value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        valid.then(|| value.parse::<f64>().unwrap())
    }

    #[test]
    fn decimals_at_the_edges_read_as_their_double_would() {
        for text in [
            "0",
            "0.",
            ".5",
            "5.",
            "00.000",
            "0.07",
            "0.0011",
            "1.005",
            "0.001",
            "86399.9995",
            "86399.99949999999",
            "86400",
            "86400.0001",
            "86399999.9999",
            "86400000",
            "1e3",
            "9007199254740993",
            "0.0000000000000000000001",
            "4.9e-324",
            ".",
            "",
            " 2.5 ",
        ] {
            let double = |scale: f64| by_double(text).map(|x| clamp_ms(x * scale));
            assert_eq!(decimal_ms(text, Unit::Seconds), double(1000.0), "{text} s");
            assert_eq!(
                decimal_ms(text, Unit::Milliseconds),
                double(1.0),
                "{text} ms"
            );
        }
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

        /// The reading without a float parser is the double reading, to the bit, for every
        /// number of up to 15 significant digits (and whatever the zeros around them).
        #[test]
        fn decimals_read_as_their_double_would(
            zeros in "0{0,3}",
            whole in "[0-9]{0,8}",
            fraction in proptest::option::of("[0-9]{0,10}"),
            tail in "0{0,3}",
        ) {
            let text = match &fraction {
                Some(fraction) => format!("{zeros}{whole}.{fraction}{tail}"),
                None => format!("{zeros}{whole}"),
            };
            let significant = whole.len() + fraction.as_ref().map_or(0, String::len);
            prop_assume!(significant <= 15);
            prop_assert_eq!(
                decimal_ms(&text, Unit::Seconds),
                by_double(&text).map(|s| clamp_ms(s * 1000.0)),
                "{} s", text
            );
            prop_assert_eq!(
                decimal_ms(&text, Unit::Milliseconds),
                by_double(&text).map(clamp_ms),
                "{} ms", text
            );
        }

        /// Longer digit strings are read exactly: never more than a millisecond from the
        /// double reading.
        #[test]
        fn long_decimals_are_within_a_millisecond_of_their_double(
            whole in "[0-9]{0,6}",
            fraction in "[0-9]{10,40}",
        ) {
            let text = format!("{whole}.{fraction}");
            for (unit, scale) in [(Unit::Seconds, 1000.0), (Unit::Milliseconds, 1.0)] {
                let exact = decimal_ms(&text, unit).unwrap();
                let double = by_double(&text).map(|x| clamp_ms(x * scale)).unwrap();
                prop_assert!(exact.abs_diff(double) <= 1, "{} {} {}", text, exact, double);
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
