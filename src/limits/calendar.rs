//! Calendar windows for daily and monthly quotas: a day from local midnight, a month from the
//! 1st, in UTC or at a fixed offset from it.
//!
//! Quotas people sell are calendar quotas ("50 messages a day", "$20 a month"), not sliding
//! ones: a caller who used its day at 23:00 starts again at midnight, and a page can say when.
//! A window is named by its start, so a reservation made in one window and settled in the next
//! settles where it was charged. Offsets are fixed (`+09:00`, `-05:30`): a zone with summer
//! time would make some days 23 or 25 hours long, and its rules are data the Worker does not
//! carry (see `docs/configuration.md`).

use serde::{Deserialize, Serialize};

const MS_PER_MINUTE: i64 = 60_000;
const MS_PER_DAY: i64 = 86_400_000;
/// The widest offset from UTC any zone uses (±14:00), in minutes.
pub const MAX_OFFSET_MINUTES: i32 = 14 * 60;

/// A calendar window's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    Month,
}

/// Where a tier's days begin: UTC, or a fixed offset east of it, in minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    pub offset_minutes: i32,
}

impl Zone {
    pub const UTC: Zone = Zone { offset_minutes: 0 };

    /// Reads `UTC`, `Z`, or an offset `+HH:MM` / `-HH:MM` / `+HH` (at most 14 hours).
    pub fn parse(text: &str) -> Result<Zone, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("utc") || text.eq_ignore_ascii_case("z") {
            return Ok(Zone::UTC);
        }
        let bad = || {
            format!(
                "{text:?} is not a fixed offset: give \"UTC\" or one like \"+09:00\" or \"-05:30\""
            )
        };
        let (sign, rest) = match text.as_bytes().first() {
            Some(b'+') => (1, text.get(1..).ok_or_else(bad)?),
            Some(b'-') => (-1, text.get(1..).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        let (hours, minutes) = rest.split_once(':').unwrap_or((rest, "0"));
        let two_digits =
            |s: &str| s.len() <= 2 && !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !two_digits(hours) || !two_digits(minutes) {
            return Err(bad());
        }
        // One or two ASCII digits each (checked above).
        let number = |s: &str| s.bytes().fold(0, |n, b| n * 10 + i32::from(b - b'0'));
        let (hours, minutes) = (number(hours), number(minutes));
        let offset = hours * 60 + minutes;
        if minutes >= 60 || offset > MAX_OFFSET_MINUTES {
            return Err(bad());
        }
        Ok(Zone {
            offset_minutes: sign * offset,
        })
    }
}

/// One calendar window: from `start_ms` (included) to `end_ms` (excluded), in ms since the
/// Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Window {
    /// The window of `period` in `zone` that holds the instant `now_ms`.
    #[must_use]
    pub fn holding(now_ms: u64, period: Period, zone: Zone) -> Window {
        let offset_ms = i64::from(zone.offset_minutes) * MS_PER_MINUTE;
        let local_ms = i64::try_from(now_ms)
            .unwrap_or(i64::MAX)
            .saturating_add(offset_ms);
        let day = local_ms.div_euclid(MS_PER_DAY);
        let (first, next) = match period {
            Period::Day => (day, day.saturating_add(1)),
            Period::Month => {
                let (year, month, _) = civil_from_days(day);
                let (next_year, next_month) = if month == 12 {
                    (year.saturating_add(1), 1)
                } else {
                    (year, month + 1)
                };
                (
                    days_from_civil(year, month, 1),
                    days_from_civil(next_year, next_month, 1),
                )
            }
        };
        let at = |day: i64| {
            let utc = day.saturating_mul(MS_PER_DAY).saturating_sub(offset_ms);
            u64::try_from(utc).unwrap_or(0)
        };
        Window {
            start_ms: at(first),
            end_ms: at(next),
        }
    }

    /// Whether the instant `at_ms` lies in this window.
    #[must_use]
    pub fn holds(&self, at_ms: u64) -> bool {
        (self.start_ms..self.end_ms).contains(&at_ms)
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar (the standard
/// era-of-400-years arithmetic).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a count of days since 1970-01-01: (year, month 1–12, day 1–31).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    // Both are in range by construction (1–12, 1–31).
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-12-07T13:45:00Z
    const NOW: u64 = 1_796_651_100_000;

    fn utc(year: i64, month: u32, day: u32) -> u64 {
        u64::try_from(days_from_civil(year, month, day) * MS_PER_DAY).unwrap()
    }

    #[test]
    fn days_and_months_begin_at_local_midnight() {
        assert_eq!(utc(2026, 12, 7), 1_796_601_600_000);
        let day = Window::holding(NOW, Period::Day, Zone::UTC);
        assert_eq!(
            (day.start_ms, day.end_ms),
            (utc(2026, 12, 7), utc(2026, 12, 8))
        );
        let month = Window::holding(NOW, Period::Month, Zone::UTC);
        assert_eq!(
            (month.start_ms, month.end_ms),
            (utc(2026, 12, 1), utc(2027, 1, 1))
        );
        // Tokyo's day began at 15:00 UTC the day before, and its December at 15:00 on 30 Nov.
        let tokyo = Zone::parse("+09:00").unwrap();
        let day = Window::holding(NOW, Period::Day, tokyo);
        assert_eq!(day.start_ms, utc(2026, 12, 7) - 9 * 3_600_000);
        assert_eq!(day.end_ms - day.start_ms, 86_400_000);
        let month = Window::holding(NOW, Period::Month, tokyo);
        assert_eq!(month.start_ms, utc(2026, 12, 1) - 9 * 3_600_000);
        // At 22:00 in New York (-05:00) it is 03:00 UTC the next day: still the local day.
        let new_york = Zone::parse("-05:00").unwrap();
        let late = utc(2026, 12, 8) + 3 * 3_600_000;
        let day = Window::holding(late, Period::Day, new_york);
        assert_eq!(day.start_ms, utc(2026, 12, 7) + 5 * 3_600_000);
        // February in a leap year, and the year's turn.
        let leap = Window::holding(utc(2028, 2, 29) + 1, Period::Month, Zone::UTC);
        assert_eq!(
            (leap.start_ms, leap.end_ms),
            (utc(2028, 2, 1), utc(2028, 3, 1))
        );
        assert_eq!((leap.end_ms - leap.start_ms) / 86_400_000, 29);
    }

    #[test]
    fn offsets_are_read_strictly() {
        assert_eq!(Zone::parse("UTC"), Ok(Zone::UTC));
        assert_eq!(Zone::parse(" z "), Ok(Zone::UTC));
        assert_eq!(Zone::parse("+05:30").map(|z| z.offset_minutes), Ok(330));
        assert_eq!(Zone::parse("-03").map(|z| z.offset_minutes), Ok(-180));
        assert_eq!(Zone::parse("+14:00").map(|z| z.offset_minutes), Ok(840));
        for bad in [
            "",
            "+",
            "Europe/Paris",
            "+14:01",
            "+15",
            "+5:60",
            "09:00",
            "+123",
            "+1:2:3",
            "+-1",
            "+٣",
        ] {
            assert!(Zone::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn dates_round_trip(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn a_window_holds_its_instant_and_its_neighbours_follow_on(
            now in 0u64..8_000_000_000_000,
            offset in -MAX_OFFSET_MINUTES..=MAX_OFFSET_MINUTES,
            monthly in any::<bool>(),
        ) {
            let zone = Zone { offset_minutes: offset };
            let period = if monthly { Period::Month } else { Period::Day };
            let window = Window::holding(now, period, zone);
            prop_assume!(window.start_ms > 0);
            prop_assert!(window.holds(now));
            let days = (window.end_ms - window.start_ms) / 86_400_000;
            prop_assert_eq!((window.end_ms - window.start_ms) % 86_400_000, 0);
            let expected = if monthly { (28..=31).contains(&days) } else { days == 1 };
            prop_assert!(expected, "{} days", days);
            // The next window starts where this one ends; the one before ends where it starts.
            prop_assert_eq!(Window::holding(window.end_ms, period, zone).start_ms, window.end_ms);
            prop_assert_eq!(Window::holding(window.start_ms - 1, period, zone).end_ms, window.start_ms);
        }
    }
}
