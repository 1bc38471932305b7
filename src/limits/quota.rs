//! A caller's daily and monthly quotas: requests, tokens and dollars per calendar window,
//! reserved before a request goes and settled to what its answer used.
//!
//! Quotas counted only after the answer let concurrent requests spend past them; here a
//! request reserves its worst case first (its prompt estimate and `max_tokens`, priced at the
//! dearest rates it could pay), so requests in flight together never take a window past its
//! quota. The settlement replaces the reservation with the real usage, in the windows the
//! reservation was charged to: a request that began before midnight is paid for by the day it
//! began in.

use std::num::NonZeroU64;

use serde::{Deserialize, Serialize};

use super::calendar::{Period, Window, Zone, MAX_OFFSET_MINUTES};

/// A tier's quotas; `None` leaves a dimension unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct Quotas {
    pub rpd: Option<NonZeroU64>,
    pub input_tpd: Option<NonZeroU64>,
    pub output_tpd: Option<NonZeroU64>,
    /// Micro-dollars a day.
    pub usd_per_day: Option<NonZeroU64>,
    /// Micro-dollars a month.
    pub usd_per_month: Option<NonZeroU64>,
    /// Where the tier's days begin.
    pub zone: Zone,
}

impl Quotas {
    /// Whether any dimension is limited.
    #[must_use]
    pub fn any(&self) -> bool {
        self.rpd.is_some()
            || self.input_tpd.is_some()
            || self.output_tpd.is_some()
            || self.prices_matter()
    }

    /// Whether nothing is limited (the form a tier's limits leave out).
    #[must_use]
    pub fn is_none(&self) -> bool {
        !self.any() && self.zone == Zone::UTC
    }

    /// Whether a settlement needs the answer's usage: a token or dollar quota (`rpd` counts
    /// the request alone).
    #[must_use]
    pub fn settles_on_the_answer(&self) -> bool {
        self.input_tpd.is_some() || self.output_tpd.is_some() || self.prices_matter()
    }

    /// Whether a dollar quota is set, so every request must have a price.
    #[must_use]
    pub fn prices_matter(&self) -> bool {
        self.usd_per_day.is_some() || self.usd_per_month.is_some()
    }
}

/// A quota's dimension, named as in answers, headers and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaDimension {
    Rpd,
    InputTpd,
    OutputTpd,
    UsdPerDay,
    UsdPerMonth,
}

impl QuotaDimension {
    pub const ALL: [QuotaDimension; 5] = [
        QuotaDimension::Rpd,
        QuotaDimension::InputTpd,
        QuotaDimension::OutputTpd,
        QuotaDimension::UsdPerDay,
        QuotaDimension::UsdPerMonth,
    ];

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaDimension::Rpd => "rpd",
            QuotaDimension::InputTpd => "input_tpd",
            QuotaDimension::OutputTpd => "output_tpd",
            QuotaDimension::UsdPerDay => "usd_per_day",
            QuotaDimension::UsdPerMonth => "usd_per_month",
        }
    }

    fn period(self) -> Period {
        match self {
            QuotaDimension::UsdPerMonth => Period::Month,
            _ => Period::Day,
        }
    }

    fn limit(self, quotas: &Quotas) -> Option<u64> {
        let limit = match self {
            QuotaDimension::Rpd => quotas.rpd,
            QuotaDimension::InputTpd => quotas.input_tpd,
            QuotaDimension::OutputTpd => quotas.output_tpd,
            QuotaDimension::UsdPerDay => quotas.usd_per_day,
            QuotaDimension::UsdPerMonth => quotas.usd_per_month,
        };
        limit.map(NonZeroU64::get)
    }

    fn of(self, charge: QuotaCharge) -> u64 {
        match self {
            QuotaDimension::Rpd => charge.requests,
            QuotaDimension::InputTpd => charge.input_tokens,
            QuotaDimension::OutputTpd => charge.output_tokens,
            QuotaDimension::UsdPerDay | QuotaDimension::UsdPerMonth => charge.micros,
        }
    }
}

/// Whether `name` is one of the quotas' dimensions (a refusal by one is not worth retrying).
#[must_use]
pub fn is_quota_dimension(name: &str) -> bool {
    QuotaDimension::ALL.iter().any(|d| d.as_str() == name)
}

/// What a request takes from its caller's windows: reserved, or used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct QuotaCharge {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub micros: u64,
}

/// What one window has taken so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Spent {
    /// The window's start; a charge made in an earlier one is not counted here.
    start_ms: u64,
    charged: QuotaCharge,
}

impl Spent {
    fn at(&mut self, window: Window) -> &mut QuotaCharge {
        if self.start_ms != window.start_ms {
            *self = Spent {
                start_ms: window.start_ms,
                charged: QuotaCharge::default(),
            };
        }
        &mut self.charged
    }

    fn get(&self, window: Window) -> QuotaCharge {
        if self.start_ms == window.start_ms {
            self.charged
        } else {
            QuotaCharge::default()
        }
    }
}

/// A reservation against the quotas, to hand back at the settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct QuotaHold {
    day_start_ms: u64,
    month_start_ms: u64,
    pub reserved: QuotaCharge,
}

/// A request the quotas refuse, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct QuotaDenial {
    pub dimension: QuotaDimension,
    pub limit: u64,
    pub remaining: u64,
    /// Until the window resets.
    pub retry_after_ms: u64,
    /// The request alone is more than the whole quota: waiting does not help.
    pub never_fits: bool,
}

/// One dimension's standing, for the answer's headers and the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct QuotaStanding {
    pub dimension: QuotaDimension,
    pub limit: u64,
    pub used: u64,
    pub remaining: u64,
    /// When the window began and when it resets, in ms since the Unix epoch.
    pub starts_ms: u64,
    pub resets_ms: u64,
}

/// A caller's spending in its current day and month.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<u64>", into = "Vec<u64>")]
pub struct QuotaState {
    day: Spent,
    month: Spent,
}

impl QuotaState {
    /// Nothing spent in any window (the form a stored state leaves out).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == QuotaState::default()
    }

    /// Until when the spending in a limited window at `now_ms` must be kept: the end of the
    /// latest such window with something charged; `None` when nothing limited is spent (the
    /// state is then as good as a fresh one).
    #[must_use]
    pub fn spent_until(&self, quotas: &Quotas, now_ms: u64) -> Option<u64> {
        self.standing(quotas, now_ms)
            .iter()
            .filter(|standing| standing.used > 0)
            .map(|standing| standing.resets_ms)
            .max()
    }

    fn spent(&mut self, dimension: QuotaDimension, windows: (Window, Window)) -> &mut QuotaCharge {
        match dimension.period() {
            Period::Day => self.day.at(windows.0),
            Period::Month => self.month.at(windows.1),
        }
    }

    /// Reserves `charge` at `now_ms`, or says which quota refuses it: the one whose window
    /// resets last, among those the request does not fit.
    pub fn reserve(
        &mut self,
        quotas: &Quotas,
        now_ms: u64,
        charge: QuotaCharge,
    ) -> Result<QuotaHold, QuotaDenial> {
        let windows = windows(quotas, now_ms);
        let mut refusal: Option<QuotaDenial> = None;
        for dimension in QuotaDimension::ALL {
            let Some(limit) = dimension.limit(quotas) else {
                continue;
            };
            let used = dimension.of(*self.spent(dimension, windows));
            let wanted = dimension.of(charge);
            if used.saturating_add(wanted) <= limit {
                continue;
            }
            let window = window_of(dimension, windows);
            let denial = QuotaDenial {
                dimension,
                limit,
                remaining: limit.saturating_sub(used),
                retry_after_ms: window.end_ms.saturating_sub(now_ms),
                never_fits: wanted > limit,
            };
            let binds = refusal.as_ref().is_none_or(|r| {
                (denial.never_fits, denial.retry_after_ms) > (r.never_fits, r.retry_after_ms)
            });
            if binds {
                refusal = Some(denial);
            }
        }
        if let Some(denial) = refusal {
            return Err(denial);
        }
        for spent in [&mut self.day.at(windows.0), &mut self.month.at(windows.1)] {
            **spent = add(**spent, charge);
        }
        Ok(QuotaHold {
            day_start_ms: windows.0.start_ms,
            month_start_ms: windows.1.start_ms,
            reserved: charge,
        })
    }

    /// Replaces what `hold` reserved with what the request `used`, in the windows it was
    /// reserved in (a window since ended keeps no count). Usage above the reservation is
    /// charged too: what was spent was spent.
    pub fn settle(&mut self, hold: &QuotaHold, used: QuotaCharge) {
        for spent in [
            (&mut self.day, hold.day_start_ms),
            (&mut self.month, hold.month_start_ms),
        ]
        .into_iter()
        .filter(|(spent, start)| spent.start_ms == *start)
        .map(|(spent, _)| &mut spent.charged)
        {
            *spent = add(sub(*spent, hold.reserved), used);
        }
    }

    /// Every limited dimension's standing at `now_ms`.
    #[must_use]
    pub fn standing(&self, quotas: &Quotas, now_ms: u64) -> Vec<QuotaStanding> {
        let windows = windows(quotas, now_ms);
        QuotaDimension::ALL
            .into_iter()
            .filter_map(|dimension| {
                let limit = dimension.limit(quotas)?;
                let window = window_of(dimension, windows);
                let spent = match dimension.period() {
                    Period::Day => self.day.get(windows.0),
                    Period::Month => self.month.get(windows.1),
                };
                let used = dimension.of(spent);
                Some(QuotaStanding {
                    dimension,
                    limit,
                    used,
                    remaining: limit.saturating_sub(used),
                    starts_ms: window.start_ms,
                    resets_ms: window.end_ms,
                })
            })
            .collect()
    }
}

// On the wire (between the Worker and the caller's object, and in its storage) every quota
// type is a list of numbers: one shared reader of `Vec<u64>` instead of one per struct, which
// the Worker's size cannot afford. A missing number reads as 0 (none, or nothing spent), so
// a shorter list from an older Worker still reads.

/// The `i`th number of a packed list, 0 when absent.
fn at(packed: &[u64], i: usize) -> u64 {
    packed.get(i).copied().unwrap_or(0)
}

impl QuotaDimension {
    fn packed(self) -> u64 {
        match self {
            QuotaDimension::Rpd => 0,
            QuotaDimension::InputTpd => 1,
            QuotaDimension::OutputTpd => 2,
            QuotaDimension::UsdPerDay => 3,
            QuotaDimension::UsdPerMonth => 4,
        }
    }

    fn unpacked(n: u64) -> QuotaDimension {
        usize::try_from(n)
            .ok()
            .and_then(|i| QuotaDimension::ALL.get(i).copied())
            .unwrap_or(QuotaDimension::UsdPerMonth)
    }
}

/// A zone's offset as a number: minutes east of UTC, plus 14 hours (never negative).
fn zone_packed(zone: Zone) -> u64 {
    u64::try_from(zone.offset_minutes.saturating_add(MAX_OFFSET_MINUTES)).unwrap_or(0)
}

fn zone_unpacked(n: u64) -> Zone {
    let offset = i32::try_from(n.min(2 * MAX_OFFSET_MINUTES as u64)).unwrap_or(MAX_OFFSET_MINUTES);
    Zone {
        offset_minutes: offset - MAX_OFFSET_MINUTES,
    }
}

impl From<Quotas> for Vec<u64> {
    fn from(q: Quotas) -> Vec<u64> {
        let n = |v: Option<NonZeroU64>| v.map_or(0, NonZeroU64::get);
        vec![
            n(q.rpd),
            n(q.input_tpd),
            n(q.output_tpd),
            n(q.usd_per_day),
            n(q.usd_per_month),
            zone_packed(q.zone),
        ]
    }
}

impl From<Vec<u64>> for Quotas {
    fn from(p: Vec<u64>) -> Quotas {
        Quotas {
            rpd: NonZeroU64::new(at(&p, 0)),
            input_tpd: NonZeroU64::new(at(&p, 1)),
            output_tpd: NonZeroU64::new(at(&p, 2)),
            usd_per_day: NonZeroU64::new(at(&p, 3)),
            usd_per_month: NonZeroU64::new(at(&p, 4)),
            zone: p.get(5).map_or(Zone::UTC, |z| zone_unpacked(*z)),
        }
    }
}

impl QuotaCharge {
    fn pack_into(self, packed: &mut Vec<u64>) {
        packed.extend([
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.micros,
        ]);
    }

    fn unpack(p: &[u64], from: usize) -> QuotaCharge {
        QuotaCharge {
            requests: at(p, from),
            input_tokens: at(p, from + 1),
            output_tokens: at(p, from + 2),
            micros: at(p, from + 3),
        }
    }
}

impl From<QuotaCharge> for Vec<u64> {
    fn from(c: QuotaCharge) -> Vec<u64> {
        let mut packed = Vec::with_capacity(4);
        c.pack_into(&mut packed);
        packed
    }
}

impl From<Vec<u64>> for QuotaCharge {
    fn from(p: Vec<u64>) -> QuotaCharge {
        QuotaCharge::unpack(&p, 0)
    }
}

impl From<QuotaHold> for Vec<u64> {
    fn from(h: QuotaHold) -> Vec<u64> {
        let mut packed = vec![h.day_start_ms, h.month_start_ms];
        h.reserved.pack_into(&mut packed);
        packed
    }
}

impl From<Vec<u64>> for QuotaHold {
    fn from(p: Vec<u64>) -> QuotaHold {
        QuotaHold {
            day_start_ms: at(&p, 0),
            month_start_ms: at(&p, 1),
            reserved: QuotaCharge::unpack(&p, 2),
        }
    }
}

impl From<QuotaState> for Vec<u64> {
    fn from(s: QuotaState) -> Vec<u64> {
        let mut packed = Vec::with_capacity(10);
        for spent in [s.day, s.month] {
            packed.push(spent.start_ms);
            spent.charged.pack_into(&mut packed);
        }
        packed
    }
}

impl From<Vec<u64>> for QuotaState {
    fn from(p: Vec<u64>) -> QuotaState {
        let spent = |from: usize| Spent {
            start_ms: at(&p, from),
            charged: QuotaCharge::unpack(&p, from + 1),
        };
        QuotaState {
            day: spent(0),
            month: spent(5),
        }
    }
}

impl From<QuotaDenial> for Vec<u64> {
    fn from(d: QuotaDenial) -> Vec<u64> {
        vec![
            d.dimension.packed(),
            d.limit,
            d.remaining,
            d.retry_after_ms,
            u64::from(d.never_fits),
        ]
    }
}

impl From<Vec<u64>> for QuotaDenial {
    fn from(p: Vec<u64>) -> QuotaDenial {
        QuotaDenial {
            dimension: QuotaDimension::unpacked(at(&p, 0)),
            limit: at(&p, 1),
            remaining: at(&p, 2),
            retry_after_ms: at(&p, 3),
            never_fits: at(&p, 4) != 0,
        }
    }
}

impl From<QuotaStanding> for Vec<u64> {
    fn from(s: QuotaStanding) -> Vec<u64> {
        vec![
            s.dimension.packed(),
            s.limit,
            s.used,
            s.remaining,
            s.starts_ms,
            s.resets_ms,
        ]
    }
}

impl From<Vec<u64>> for QuotaStanding {
    fn from(p: Vec<u64>) -> QuotaStanding {
        QuotaStanding {
            dimension: QuotaDimension::unpacked(at(&p, 0)),
            limit: at(&p, 1),
            used: at(&p, 2),
            remaining: at(&p, 3),
            starts_ms: at(&p, 4),
            resets_ms: at(&p, 5),
        }
    }
}

fn windows(quotas: &Quotas, now_ms: u64) -> (Window, Window) {
    (
        Window::holding(now_ms, Period::Day, quotas.zone),
        Window::holding(now_ms, Period::Month, quotas.zone),
    )
}

fn window_of(dimension: QuotaDimension, windows: (Window, Window)) -> Window {
    match dimension.period() {
        Period::Day => windows.0,
        Period::Month => windows.1,
    }
}

fn add(a: QuotaCharge, b: QuotaCharge) -> QuotaCharge {
    QuotaCharge {
        requests: a.requests.saturating_add(b.requests),
        input_tokens: a.input_tokens.saturating_add(b.input_tokens),
        output_tokens: a.output_tokens.saturating_add(b.output_tokens),
        micros: a.micros.saturating_add(b.micros),
    }
}

fn sub(a: QuotaCharge, b: QuotaCharge) -> QuotaCharge {
    QuotaCharge {
        requests: a.requests.saturating_sub(b.requests),
        input_tokens: a.input_tokens.saturating_sub(b.input_tokens),
        output_tokens: a.output_tokens.saturating_sub(b.output_tokens),
        micros: a.micros.saturating_sub(b.micros),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-12-07T13:45:00Z
    const NOW: u64 = 1_796_651_100_000;
    /// Midnight after NOW, UTC.
    const MIDNIGHT: u64 = 1_796_688_000_000;

    fn quotas(rpd: u64, usd_micros_per_day: u64) -> Quotas {
        Quotas {
            rpd: NonZeroU64::new(rpd),
            usd_per_day: NonZeroU64::new(usd_micros_per_day),
            ..Quotas::default()
        }
    }

    fn charge(micros: u64) -> QuotaCharge {
        QuotaCharge {
            requests: 1,
            micros,
            ..QuotaCharge::default()
        }
    }

    #[test]
    fn a_window_is_reserved_up_to_its_quota_and_refused_until_it_resets() {
        let q = quotas(50, 200_000);
        let mut state = QuotaState::default();
        let first = state.reserve(&q, NOW, charge(150_000)).unwrap();
        let denial = state.reserve(&q, NOW, charge(60_000)).unwrap_err();
        assert_eq!(denial.dimension, QuotaDimension::UsdPerDay);
        assert_eq!((denial.limit, denial.remaining), (200_000, 50_000));
        assert_eq!(denial.retry_after_ms, MIDNIGHT - NOW);
        assert!(!denial.never_fits);
        // The answer used less: the rest comes back.
        state.settle(&first, charge(20_000));
        state.reserve(&q, NOW, charge(60_000)).unwrap();
        let standing = state.standing(&q, NOW);
        assert_eq!(standing[1].dimension, QuotaDimension::UsdPerDay);
        assert_eq!((standing[1].used, standing[1].remaining), (80_000, 120_000));
        assert_eq!(standing[0].used, 2);
        // The next day starts afresh.
        state.reserve(&q, MIDNIGHT, charge(200_000)).unwrap();
        // A request bigger than the whole quota is told so.
        assert!(
            state
                .reserve(&q, MIDNIGHT, charge(300_000))
                .unwrap_err()
                .never_fits
        );
    }

    #[test]
    fn a_request_is_paid_for_by_the_window_it_began_in() {
        let q = Quotas {
            usd_per_day: NonZeroU64::new(1_000),
            usd_per_month: NonZeroU64::new(2_000),
            ..Quotas::default()
        };
        let mut state = QuotaState::default();
        let late = state.reserve(&q, MIDNIGHT - 1, charge(900)).unwrap();
        // Settled after midnight: the new day is untouched, the month counts what was used.
        state.settle(&late, charge(400));
        let standing = state.standing(&q, MIDNIGHT);
        assert_eq!(standing[0].used, 0);
        assert_eq!(standing[1].used, 400);
        // Of two quotas that refuse, the one that resets last binds.
        state.reserve(&q, MIDNIGHT, charge(1_000)).unwrap();
        let refused = state.reserve(&q, MIDNIGHT, charge(900)).unwrap_err();
        assert_eq!(refused.dimension, QuotaDimension::UsdPerMonth);
        assert_eq!(refused.remaining, 600);
        // One the request can never fit binds before any.
        let never = state.reserve(&q, MIDNIGHT, charge(1_500)).unwrap_err();
        assert_eq!(
            (never.dimension, never.never_fits),
            (QuotaDimension::UsdPerDay, true)
        );
    }

    #[test]
    fn every_quota_type_travels_as_a_list_of_numbers_and_back() {
        let quotas = Quotas {
            rpd: NonZeroU64::new(50),
            usd_per_month: NonZeroU64::new(20_000_000),
            zone: Zone::parse("-09:30").unwrap(),
            ..Quotas::default()
        };
        let json = serde_json::to_string(&quotas).unwrap();
        assert_eq!(json, "[50,0,0,0,20000000,270]");
        assert_eq!(serde_json::from_str::<Quotas>(&json).unwrap(), quotas);
        let mut state = QuotaState::default();
        let hold = state.reserve(&quotas, NOW, charge(7)).unwrap();
        let denial = state
            .reserve(
                &Quotas {
                    rpd: NonZeroU64::new(1),
                    ..quotas
                },
                NOW,
                charge(1),
            )
            .unwrap_err();
        let standing = state.standing(&quotas, NOW)[0];
        fn round_trip<T: Serialize + for<'de> Deserialize<'de>>(value: &T) -> T {
            serde_json::from_str(&serde_json::to_string(value).unwrap()).unwrap()
        }
        assert_eq!(round_trip(&hold), hold);
        assert_eq!(round_trip(&denial), denial);
        assert_eq!(round_trip(&standing), standing);
        assert_eq!(round_trip(&state), state);
        for dimension in QuotaDimension::ALL {
            assert_eq!(QuotaDimension::unpacked(dimension.packed()), dimension);
        }
        // A shorter list (nothing spent in the month) reads with zeros.
        assert_eq!(
            serde_json::from_str::<QuotaCharge>("[1]").unwrap(),
            QuotaCharge {
                requests: 1,
                ..QuotaCharge::default()
            }
        );
    }

    proptest! {
        /// However requests interleave (reserve, then settle to any usage up to what was
        /// reserved), no window ever holds more than its quota.
        #[test]
        fn no_window_passes_its_quota_under_concurrency(
            steps in prop::collection::vec((0u64..60_000, 0u64..3_000, any::<bool>(), 0u64..=100), 1..200),
        ) {
            let q = Quotas {
                rpd: NonZeroU64::new(40),
                input_tpd: NonZeroU64::new(50_000),
                usd_per_day: NonZeroU64::new(30_000),
                usd_per_month: NonZeroU64::new(100_000),
                ..Quotas::default()
            };
            let mut state = QuotaState::default();
            let mut in_flight: Vec<QuotaHold> = Vec::new();
            let mut now = NOW;
            for (advance, micros, settle_one, share) in steps {
                now += advance * 10;
                if settle_one && !in_flight.is_empty() {
                    let hold = in_flight.remove(0);
                    let used = QuotaCharge {
                        requests: 1,
                        input_tokens: hold.reserved.input_tokens * share / 100,
                        output_tokens: 0,
                        micros: hold.reserved.micros * share / 100,
                    };
                    state.settle(&hold, used);
                } else {
                    let wanted = QuotaCharge { requests: 1, input_tokens: micros * 3, output_tokens: 0, micros };
                    if let Ok(hold) = state.reserve(&q, now, wanted) {
                        in_flight.push(hold);
                    }
                }
                for standing in state.standing(&q, now) {
                    prop_assert!(standing.used <= standing.limit, "{:?}", standing);
                }
            }
        }
    }
}
