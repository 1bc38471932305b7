//! `retry-after-ms`, `retry-after` and `x-should-retry` from the upstream.
//!
//! Input: `[flags] retry-after-ms \0 retry-after \0 [now: 8 bytes LE]`; flags bit 0 / bit 1
//! say whether each header is present. Without `now`, a time 7 s before the seeds' HTTP-date.
//!
//! Holds for every input:
//! - the wait is at most 24 h;
//! - a valid `retry-after-ms` wins, an invalid one falls back to `retry-after`;
//! - decimal values (seconds or ms) give the exact wait in whole ms, rounded up, ±1 ms;
//! - an HTTP-date's wait never grows as the clock advances;
//! - `x-should-retry` is `true`/`false` exactly for those words, in any case, trimmed.

use breakwater::retry::{should_retry_header, upstream_wait_ms, MAX_UPSTREAM_WAIT_MS};

use crate::{split_at_byte, text};

/// Sun, 06 Nov 1994 08:49:37 GMT minus 7 s.
const DEFAULT_NOW_MS: u64 = 784_111_770_000;

pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (a, rest) = split_at_byte(rest, 0);
    let (b, rest) = split_at_byte(rest.unwrap_or_default(), 0);
    let now = match rest {
        Some(bytes) if bytes.len() >= 8 => {
            let mut le = [0u8; 8];
            le.copy_from_slice(&bytes[..8]);
            u64::from_le_bytes(le)
        }
        _ => DEFAULT_NOW_MS,
    };
    let a = text(a);
    let b = text(b);
    let ms_header = (flags & 1 != 0).then_some(a.as_str());
    let seconds_header = (flags & 2 != 0).then_some(b.as_str());

    let both = upstream_wait_ms(ms_header, seconds_header, now);
    let ms_only = upstream_wait_ms(ms_header, None, now);
    let seconds_only = upstream_wait_ms(None, seconds_header, now);
    for wait in [both, ms_only, seconds_only].into_iter().flatten() {
        assert!(wait <= MAX_UPSTREAM_WAIT_MS, "wait {wait} above the cap");
    }
    match ms_only {
        Some(ms) => assert_eq!(both, Some(ms), "a valid retry-after-ms must win"),
        None => assert_eq!(
            both, seconds_only,
            "an invalid retry-after-ms must fall back"
        ),
    }

    // Decimal values against exact integer arithmetic.
    if let Some(exact) = ms_header.and_then(|v| exact_ms(v, 0)) {
        assert_close(ms_only, exact, ms_header);
    }
    if let Some(exact) = seconds_header.and_then(|v| exact_ms(v, 3)) {
        assert_close(seconds_only, exact, seconds_header);
    }

    // An HTTP-date is an instant: the wait until it shrinks as time passes.
    let step = u64::from(flags >> 2) * 997;
    if let (Some(earlier), Some(later)) = (
        seconds_only,
        upstream_wait_ms(None, seconds_header, now.saturating_add(step)),
    ) {
        assert!(
            later <= earlier,
            "the wait grew from {earlier} to {later} as time passed"
        );
    }

    let verdict = should_retry_header(Some(&a));
    let word = a.trim();
    let expected = if word.eq_ignore_ascii_case("true") {
        Some(true)
    } else if word.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    };
    assert_eq!(verdict, expected, "x-should-retry {a:?}");
    assert_eq!(should_retry_header(None), None);
}

fn assert_close(got: Option<u64>, exact: u64, input: Option<&str>) {
    let got = got.unwrap_or_else(|| panic!("{input:?} is a decimal number but was refused"));
    let expected = exact.min(MAX_UPSTREAM_WAIT_MS);
    assert!(
        got.abs_diff(expected) <= 1,
        "{input:?}: got {got} ms, exact {expected} ms"
    );
}

/// The exact value of a plain decimal string (digits, at most one `.`, surrounding
/// whitespace) times 10^`shift`, rounded up; `None` for anything else or absurd lengths.
fn exact_ms(value: &str, shift: u32) -> Option<u64> {
    let value = value.trim();
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !digits_ok(int) || !digits_ok(frac) || int.len() > 30 {
        return None;
    }
    let int = int.trim_start_matches('0');
    if int.len() > 15 {
        return Some(u64::MAX);
    }
    let mut ms: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    ms = ms.checked_mul(10u64.pow(shift))?;
    let shift = shift as usize;
    let (kept, dropped) = if frac.len() > shift {
        frac.split_at(shift)
    } else {
        (frac, "")
    };
    let mut kept_value: u64 = 0;
    for i in 0..shift {
        let digit = kept.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
        kept_value = kept_value * 10 + digit;
    }
    ms += kept_value;
    if dropped.bytes().any(|b| b != b'0') {
        ms += 1;
    }
    Some(ms)
}
