//! The daily and monthly quotas as the limiter keeps them, over random traffic: admissions
//! and settlements in any order never take a window past its quota, and once everything is
//! settled a window holds exactly what its requests used, priced, to the micro-dollar.

use std::num::{NonZeroU32, NonZeroU64};

use proptest::prelude::*;

use super::calendar::{Period, Window, Zone};
use super::prices::{PriceTable, PricedTokens};
use super::quota::{QuotaCharge, QuotaDimension, Quotas};
use super::*;
use crate::config::TierLimits;

/// 2026-12-07T13:45:00Z.
const T0: u64 = 1_796_651_100_000;
/// The midnight after T0, UTC.
const MIDNIGHT: u64 = 1_796_688_000_000;

fn tier(quotas: Quotas) -> TierLimits {
    TierLimits {
        rpm: NonZeroU32::new(1_000),
        concurrency: NonZeroU32::new(50),
        quotas,
        ..TierLimits::default()
    }
}

fn dollars_a_day(micros: u64) -> Quotas {
    Quotas {
        usd_per_day: NonZeroU64::new(micros),
        ..Quotas::default()
    }
}

/// A message to `claude-sonnet-4-6` ($3 / $15 per MTok) with this prompt estimate and
/// `max_tokens`, asking for its worst case.
fn message(prompt: u64, max_tokens: u64) -> AdmissionRequest {
    let price = PriceTable::default().of("claude-sonnet-4-6").unwrap();
    AdmissionRequest {
        input_tokens: prompt,
        output_tokens: max_tokens,
        lease_ms: 60_000,
        quota: Some(QuotaCharge {
            requests: 1,
            input_tokens: prompt,
            output_tokens: max_tokens,
            micros: price.worst_case_micros(prompt, max_tokens),
        }),
    }
}

fn used(state: &LimiterState, limits: &TierLimits, now: u64, d: QuotaDimension) -> u64 {
    state
        .quota_standing(limits, now)
        .iter()
        .find(|s| s.dimension == d)
        .map_or(0, |s| s.used)
}

#[test]
fn a_dollar_quota_refuses_at_its_cap_until_midnight_and_charges_nothing_else() {
    // 1 000 prompt tokens (at most $0.006 written to the cache for an hour) and 1 000 out
    // ($0.015): a worst case of $0.021 against $0.05 a day.
    let limits = tier(dollars_a_day(50_000));
    let mut state = LimiterState::new();
    let ask = message(1_000, 1_000);
    let first = match state.admit(&limits, T0, &ask) {
        Admission::Admitted(r) => r,
        other => panic!("{other:?}"),
    };
    let Admission::Admitted(_) = state.admit(&limits, T0, &ask) else {
        panic!("two worst cases fit");
    };
    let before = state.clone();
    let Admission::Exhausted(refusal) = state.admit(&limits, T0 + 5, &ask) else {
        panic!("a third does not");
    };
    assert_eq!(refusal.dimension, QuotaDimension::UsdPerDay);
    assert_eq!((refusal.limit, refusal.remaining), (50_000, 8_000));
    assert_eq!(refusal.retry_after_ms, MIDNIGHT - T0 - 5);
    assert!(!refusal.never_fits);
    // Refused: nothing charged, not even the per-minute request or a slot.
    assert_eq!(
        state.snapshot(&limits, T0 + 5),
        before.snapshot(&limits, T0 + 5)
    );
    assert_eq!(
        state.quota_standing(&limits, T0 + 5),
        before.quota_standing(&limits, T0 + 5)
    );
    // The first answer cost $0.0045: its settlement gives back the rest of its worst case.
    state.settle_priced(&limits, T0 + 10, &first, Used::default(), Some(4_500));
    assert_eq!(
        used(&state, &limits, T0 + 10, QuotaDimension::UsdPerDay),
        25_500
    );
    assert!(matches!(
        state.admit(&limits, T0 + 10, &ask),
        Admission::Admitted(_)
    ));
    // A settlement that comes again changes nothing.
    state.settle_priced(&limits, T0 + 11, &first, Used::default(), Some(0));
    assert_eq!(
        used(&state, &limits, T0 + 11, QuotaDimension::UsdPerDay),
        46_500
    );
    // The next day starts afresh.
    assert!(matches!(
        state.admit(&limits, MIDNIGHT, &ask),
        Admission::Admitted(_)
    ));
    // A request whose worst case is above the whole quota is told it never fits.
    let Admission::Exhausted(never) = state.admit(&limits, MIDNIGHT, &message(1_000, 10_000))
    else {
        panic!("refused");
    };
    assert!(never.never_fits);
    assert!(ProxyError::from(&never)
        .message()
        .contains("cannot be admitted"));
}

#[test]
fn a_quota_refusal_is_a_429_that_says_not_to_retry_and_when_the_window_resets() {
    let limits = tier(dollars_a_day(1_000));
    let mut state = LimiterState::new();
    let Admission::Exhausted(refusal) = state.admit(&limits, T0, &message(1_000, 1_000)) else {
        panic!("refused");
    };
    let error = ProxyError::from(&refusal);
    let answer = error.answer("req_1");
    assert_eq!(error.status(), 429);
    assert!(
        answer.body.contains(r#""dimension":"usd_per_day""#),
        "{}",
        answer.body
    );
    assert!(answer.body.contains(r#""scope":"key""#), "{}", answer.body);
    let header = |name: &str| {
        answer
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-should-retry").as_deref(), Some("false"));
    let wait = MIDNIGHT - T0;
    assert_eq!(header("retry-after"), Some(wait.div_ceil(1000).to_string()));
    assert_eq!(header("retry-after-ms"), Some(wait.to_string()));
    // The per-minute limits still say to retry.
    let minute = Denial {
        retry_after_ms: 1_000,
        dimension: Dimension::Rpm,
        limit: 1,
        remaining: 0,
    };
    assert!(ProxyError::from(&minute).should_retry());
}

#[test]
fn the_quota_headers_carry_each_window_beside_the_minute_ones() {
    let limits = tier(Quotas {
        rpd: NonZeroU64::new(50),
        usd_per_day: NonZeroU64::new(200_000),
        ..Quotas::default()
    });
    let mut state = LimiterState::new();
    let Admission::Admitted(_) = state.admit(&limits, T0, &message(100, 100)) else {
        panic!("admitted");
    };
    let now = T0 + 1;
    let mut headers = limit_headers(&state.snapshot(&limits, now), None, now);
    quota_headers(&mut headers, &state.quota_standing(&limits, now), None, now);
    let value = |name: &str| headers.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    let to_midnight = (MIDNIGHT - now).div_ceil(1000);
    assert_eq!(
        value("ratelimit-policy"),
        r#""rpm";q=1000;w=60, "concurrency";q=50;qu="concurrent-requests", "rpd";q=50;w=86400, "usd_per_day";q=200000;w=86400"#
    );
    let worst = message(100, 100).quota.unwrap().micros;
    assert!(value("ratelimit").ends_with(&format!(
        r#""rpd";r=49;t={to_midnight}, "usd_per_day";r={};t={to_midnight}"#,
        200_000 - worst
    )));
    // A tier with quotas only has them alone; one with neither has no such headers.
    let mut alone = Vec::new();
    quota_headers(&mut alone, &state.quota_standing(&limits, now), None, now);
    assert_eq!(
        alone[0].1,
        r#""rpd";q=50;w=86400, "usd_per_day";q=200000;w=86400"#
    );
    let mut none = Vec::new();
    quota_headers(&mut none, &[], None, now);
    assert!(none.is_empty());
}

#[test]
fn request_only_routes_count_against_rpd_as_against_rpm() {
    let limits = TierLimits {
        rpm: NonZeroU32::new(100),
        quotas: Quotas {
            rpd: NonZeroU64::new(2),
            ..Quotas::default()
        },
        ..TierLimits::default()
    };
    let mut state = LimiterState::new();
    assert!(matches!(
        state.admit_request(&limits, T0),
        Admission::Admitted(_)
    ));
    assert!(matches!(
        state.admit_request(&limits, T0),
        Admission::Admitted(_)
    ));
    let before = state.snapshot(&limits, T0);
    let Admission::Exhausted(refusal) = state.admit_request(&limits, T0) else {
        panic!("the third of the day is refused");
    };
    assert_eq!(refusal.dimension, QuotaDimension::Rpd);
    // Refused by the quota: not counted against rpm either.
    assert_eq!(state.snapshot(&limits, T0), before);
    // Refused by rpm: not counted against rpd.
    let tight = TierLimits {
        rpm: NonZeroU32::new(1),
        ..limits
    };
    let mut state = LimiterState::new();
    assert!(matches!(
        state.admit_request(&tight, T0),
        Admission::Admitted(_)
    ));
    assert!(matches!(
        state.admit_request(&tight, T0),
        Admission::Denied(_)
    ));
    assert_eq!(used(&state, &tight, T0, QuotaDimension::Rpd), 1);
    // A message counted while its body arrived is not counted against rpd again.
    let mut state = LimiterState::new();
    assert!(matches!(
        state.admit_request(&limits, T0),
        Admission::Admitted(_)
    ));
    let counted = state.admit_counted(&limits, T0, &message(10, 10));
    assert!(matches!(counted, Admission::Admitted(_)), "{counted:?}");
    assert_eq!(used(&state, &limits, T0, QuotaDimension::Rpd), 1);
    // A tier with rpd alone meters the request-only routes too.
    let rpd_only = TierLimits {
        quotas: limits.quotas,
        ..TierLimits::default()
    };
    assert_eq!(
        crate::request::route::Route::CountTokens.metering(&rpd_only),
        crate::request::route::Metering::RequestOnly
    );
}

#[test]
fn spending_keeps_the_state_until_its_window_ends_and_old_states_still_decode() {
    let limits = tier(dollars_a_day(50_000));
    let mut state = LimiterState::new();
    let Admission::Admitted(reservation) = state.admit(&limits, T0, &message(10, 10)) else {
        panic!("admitted");
    };
    state.settle_priced(&limits, T0 + 1, &reservation, Used::default(), Some(7));
    // The buckets are full and the lease forgotten long before midnight; the spending is
    // not, so the state is not idle (it would be deleted) until the day is over.
    let later = T0 + 3_600_000;
    assert!(!state.is_idle(&limits, later));
    assert_eq!(state.idle_in_ms(&limits, later), MIDNIGHT - later);
    assert!(state.is_idle(&limits, MIDNIGHT));
    // A state stored before quotas existed decodes, with nothing spent.
    let old: LimiterState = serde_json::from_str(r#"{"clock_ms": 5, "leases": []}"#).unwrap();
    assert!(old.quota_standing(&limits, T0).iter().all(|s| s.used == 0));
    // And one stored with spending keeps it.
    let text = serde_json::to_string(&state).unwrap();
    let back: LimiterState = serde_json::from_str(&text).unwrap();
    assert_eq!(
        back.quota_standing(&limits, T0 + 2),
        state.quota_standing(&limits, T0 + 2)
    );
    assert_eq!(used(&back, &limits, T0 + 2, QuotaDimension::UsdPerDay), 7);
    // A state without spending writes nothing of the quotas.
    assert!(!serde_json::to_string(&LimiterState::new())
        .unwrap()
        .contains("quota"));
}

#[test]
fn a_tier_with_quotas_takes_no_credit() {
    // A busy tier that would be granted tickets...
    let minute_only = TierLimits {
        rpm: NonZeroU32::new(100_000),
        ..TierLimits::default()
    };
    let mut state = LimiterState::new();
    assert!(!state
        .grant(&minute_only, T0, &message(10, 10), 20)
        .is_empty());
    // ...is granted none once it has a quota: every request must ask its object.
    let with_quota = TierLimits {
        quotas: dollars_a_day(50_000_000),
        ..minute_only
    };
    let mut state = LimiterState::new();
    assert!(state
        .grant(&with_quota, T0, &message(10, 10), 20)
        .is_empty());
}

/// One step of the random traffic: admit a request (its prompt, its `max_tokens`, what part
/// of them it really uses, how its prompt splits over the cache), or settle one in flight.
#[derive(Debug, Clone)]
enum Step {
    Admit {
        prompt: u64,
        max_tokens: u64,
        share: (u64, u64),
        split: (u64, u64, u64),
    },
    Settle(usize),
    /// The settlement is lost (the stream broke before its usage): nothing known.
    SettleUnknown(usize),
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..4_000, 0u64..2_000, (0u64..=100, 0u64..=100), (0u64..=10, 0u64..=10, 0u64..=10))
            .prop_map(|(prompt, max_tokens, share, split)| Step::Admit { prompt, max_tokens, share, split }),
        3 => any::<prop::sample::Index>().prop_map(|i| Step::Settle(i.index(1 << 16))),
        1 => any::<prop::sample::Index>().prop_map(|i| Step::SettleUnknown(i.index(1 << 16))),
        1 => prop_oneof![0u64..1_000, 0u64..3_600_000].prop_map(Step::Wait),
    ]
}

proptest! {
    /// Requests admitted together and settled in any order, each using anything up to its
    /// worst case: no window ever holds more than its quota, and when all are settled each
    /// day holds exactly the sum of what its requests cost, priced, and used.
    #[test]
    fn no_window_passes_its_quota_and_settlement_is_exact(
        steps in prop::collection::vec(step(), 1..300),
        start in 0u64..86_400_000,
    ) {
        let quotas = Quotas {
            rpd: NonZeroU64::new(60),
            input_tpd: NonZeroU64::new(60_000),
            output_tpd: NonZeroU64::new(40_000),
            usd_per_day: NonZeroU64::new(300_000),
            usd_per_month: NonZeroU64::new(900_000),
            ..Quotas::default()
        };
        let limits = tier(quotas);
        let price = PriceTable::default().of("claude-sonnet-4-6").unwrap();
        let mut state = LimiterState::new();
        let mut now = T0 - T0 % 86_400_000 + start;
        // In flight: the reservation and what its answer will report.
        let mut in_flight: Vec<(Reservation, u64, u64, u64, u64)> = Vec::new();
        // Per day start: [requests, input, output, micros] charged by the settled requests
        // (what they used; the worst case where a settlement was lost).
        let mut days: std::collections::BTreeMap<u64, [u64; 4]> = std::collections::BTreeMap::new();
        for step in steps {
            match step {
                Step::Admit { prompt, max_tokens, share, split } => {
                    if let Admission::Admitted(reservation) = state.admit(&limits, now, &message(prompt, max_tokens)) {
                        let real_prompt = prompt * share.0 / 100;
                        let sum = (split.0 + split.1 + split.2).max(1);
                        let tokens = PricedTokens {
                            input: real_prompt * split.0 / sum,
                            cache_write_5m: real_prompt * split.1 / sum,
                            cache_write_1h: real_prompt * split.2 / sum,
                            cache_read: real_prompt - real_prompt * (split.0 + split.1 + split.2) / sum,
                            output: max_tokens * share.1 / 100,
                        };
                        let counted_input = tokens.input + tokens.cache_write_5m + tokens.cache_write_1h;
                        in_flight.push((reservation, now, counted_input, tokens.output, price.cost_micros(&tokens)));
                    }
                }
                Step::Settle(i) | Step::SettleUnknown(i) if !in_flight.is_empty() => {
                    let (reservation, admitted_at, input, output, micros) = in_flight.remove(i % in_flight.len());
                    let lost = matches!(step, Step::SettleUnknown(_));
                    let (usage, cost) = if lost {
                        (Used::UNKNOWN, None)
                    } else {
                        (Used { input_tokens: Some(input), output_tokens: Some(output) }, Some(micros))
                    };
                    let settled = state.settle_priced(&limits, now, &reservation, usage, cost);
                    let hold = reservation.quota.unwrap();
                    let day = Window::holding(admitted_at, Period::Day, Zone::UTC).start_ms;
                    let entry = days.entry(day).or_default();
                    // A lease record forgotten (its lease long over) settles nothing: the
                    // worst case stays charged, as for a lost settlement.
                    let charged = if lost || !settled.lease_found { hold.reserved } else {
                        QuotaCharge { requests: 1, input_tokens: input, output_tokens: output, micros }
                    };
                    entry[0] += charged.requests;
                    entry[1] += charged.input_tokens;
                    entry[2] += charged.output_tokens;
                    entry[3] += charged.micros;
                }
                Step::Settle(_) | Step::SettleUnknown(_) => {}
                Step::Wait(ms) => now += ms,
            }
            for standing in state.quota_standing(&limits, now) {
                prop_assert!(standing.used <= standing.limit, "{standing:?}");
            }
        }
        // Settle what is left, exactly, then each window holds what was used.
        for (reservation, admitted_at, input, output, micros) in in_flight.drain(..) {
            let usage = Used { input_tokens: Some(input), output_tokens: Some(output) };
            let settled = state.settle_priced(&limits, now, &reservation, usage, Some(micros));
            let day = Window::holding(admitted_at, Period::Day, Zone::UTC).start_ms;
            let entry = days.entry(day).or_default();
            let charged = if settled.lease_found {
                QuotaCharge { requests: 1, input_tokens: input, output_tokens: output, micros }
            } else {
                reservation.quota.unwrap().reserved
            };
            entry[0] += charged.requests;
            entry[1] += charged.input_tokens;
            entry[2] += charged.output_tokens;
            entry[3] += charged.micros;
        }
        let today = Window::holding(now, Period::Day, Zone::UTC).start_ms;
        let expected = days.get(&today).copied().unwrap_or_default();
        let standing = state.quota_standing(&limits, now);
        let of = |d: QuotaDimension| standing.iter().find(|s| s.dimension == d).map_or(0, |s| s.used);
        prop_assert_eq!(
            [of(QuotaDimension::Rpd), of(QuotaDimension::InputTpd), of(QuotaDimension::OutputTpd), of(QuotaDimension::UsdPerDay)],
            expected
        );
    }
}
