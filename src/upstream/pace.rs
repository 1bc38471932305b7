//! Pacing one pool of the upstream key: the key's own Anthropic limits, learned from the
//! `anthropic-ratelimit-*` headers, and the upstream's sustainable rate, learned from how
//! attempts end. A request that must be paced gets a send time in one call ("not until T",
//! as in GCRA) at which the key's buckets hold its cost and the upstream can take it.
//!
//! - **Known limits.** Each dimension (requests, input tokens, output tokens per minute) is a
//!   GCRA lane: a theoretical arrival time that every reservation pushes on by its cost times
//!   the emission interval (one minute / limit), with a burst tolerance of one minute (a full
//!   bucket). An observation of `remaining` at time t implies the lane's time; the lane takes
//!   the later of its own and the observed one, so traffic the proxy did not pace (other
//!   edges before they were near, other users of the key) is accounted for, and reservations
//!   not yet seen by the upstream are not forgotten.
//! - **Sustainable rate.** When the upstream sheds (`529`, overloaded streams) while it still
//!   serves, the shedding is watched for half a second (by then every edge that saw it reports
//!   each answer), then the pool's rate is set a little below what the upstream served over
//!   the last second (a delivery-rate estimate, as in BBR); every success raises it
//!   additively, shedding lowers it again at most once a second. Requests go out at that rate
//!   (one per interval, a small burst) until none has had to wait or been shed for a while.
//!
//! All times are ms since the Unix epoch, lanes count in microseconds, and every stored number
//! stays below 2^53.

use serde::{Deserialize, Serialize};

use super::stored::stored;

/// One minute, in microseconds: the window of Anthropic's per-minute limits.
const MINUTE_US: u64 = 60_000_000;

/// What one request costs the key's buckets, as Anthropic charges at its start: one request,
/// its input (the proxy's estimate), and its `max_tokens` of output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cost {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A dimension of the key's own limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitDimension {
    Requests,
    InputTokens,
    OutputTokens,
}

crate::json::deserialize_by_name!(LimitDimension {
    Requests = "requests",
    InputTokens = "input_tokens",
    OutputTokens = "output_tokens",
});

impl LimitDimension {
    pub const ALL: [LimitDimension; 3] = [
        LimitDimension::Requests,
        LimitDimension::InputTokens,
        LimitDimension::OutputTokens,
    ];

    /// The name in the `anthropic-ratelimit-<name>-*` headers.
    #[must_use]
    pub fn header_name(self) -> &'static str {
        match self {
            LimitDimension::Requests => "requests",
            LimitDimension::InputTokens => "input-tokens",
            LimitDimension::OutputTokens => "output-tokens",
        }
    }

    /// The contract's name for the dimension in a structured answer.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LimitDimension::Requests => "rpm",
            LimitDimension::InputTokens => "input_tpm",
            LimitDimension::OutputTokens => "output_tpm",
        }
    }

    fn units(self, cost: Cost) -> u64 {
        match self {
            LimitDimension::Requests => 1,
            LimitDimension::InputTokens => cost.input_tokens,
            LimitDimension::OutputTokens => cost.output_tokens,
        }
    }

    fn index(self) -> usize {
        match self {
            LimitDimension::Requests => 0,
            LimitDimension::InputTokens => 1,
            LimitDimension::OutputTokens => 2,
        }
    }
}

/// One dimension as the upstream reported it on an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub limit: u64,
    pub remaining: u64,
}

/// The key's limits as one answer reported them (`None`: the answer did not say).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyLimits {
    pub requests: Option<Observed>,
    pub input_tokens: Option<Observed>,
    pub output_tokens: Option<Observed>,
    /// When the answered attempt was sent, by the edge's clock: the upstream counted what it
    /// admitted before that attempt, not what the proxy sent since (`None`: not known; the
    /// last second is assumed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_ms: Option<u64>,
    /// The latest `anthropic-ratelimit-*-reset` (ms since the epoch) of a dimension the
    /// answer reported empty: until then the upstream itself says the key has no room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub empty_until_ms: Option<u64>,
    /// The seed of the request the answer was to: the upstream counted its reservation and
    /// those made before it, not those made after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<u64>,
}

impl KeyLimits {
    /// Whether a `429` with these figures refused a request of `cost` for its own size, not
    /// for want of room on the key: in some dimension the request is larger than the whole
    /// bucket, or than what it still holds while it is not empty.
    #[must_use]
    pub fn refused_for_size(&self, cost: Cost) -> bool {
        LimitDimension::ALL.iter().any(|d| {
            self.get(*d).is_some_and(|o| {
                let units = d.units(cost);
                units > o.limit || (o.remaining > 0 && units > o.remaining)
            })
        })
    }

    #[must_use]
    pub fn get(&self, dimension: LimitDimension) -> Option<Observed> {
        match dimension {
            LimitDimension::Requests => self.requests,
            LimitDimension::InputTokens => self.input_tokens,
            LimitDimension::OutputTokens => self.output_tokens,
        }
    }

    /// Whether any dimension has less than `NEAR_PERCENT` of its limit left: from then on an
    /// edge asks the key's object before sending, so the requests are paced.
    #[must_use]
    pub fn near(&self) -> bool {
        LimitDimension::ALL
            .iter()
            .filter_map(|d| self.get(*d))
            .any(|o| {
                o.limit > 0
                    && o.remaining.saturating_mul(100) < o.limit.saturating_mul(NEAR_PERCENT)
            })
    }

    /// Reads the `anthropic-ratelimit-*` headers of an answer. A dimension counts only with a
    /// parseable limit and remaining.
    pub fn from_headers<'h>(
        headers: impl Iterator<Item = (&'h str, &'h str)> + Clone,
    ) -> KeyLimits {
        let read = |dimension: LimitDimension| {
            let value = |suffix: &str| {
                let name = format!("anthropic-ratelimit-{}-{suffix}", dimension.header_name());
                crate::stream::header::header_in(headers.clone(), &name)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            Some(Observed {
                limit: value("limit")?,
                remaining: value("remaining")?,
            })
        };
        let empty_until_ms = LimitDimension::ALL
            .iter()
            .filter(|d| read(**d).is_some_and(|o| o.remaining == 0))
            .filter_map(|d| {
                let name = format!("anthropic-ratelimit-{}-reset", d.header_name());
                crate::stream::header::header_in(headers.clone(), &name)
                    .and_then(|v| rfc3339_ms(v.trim()))
            })
            .max();
        KeyLimits {
            requests: read(LimitDimension::Requests),
            input_tokens: read(LimitDimension::InputTokens),
            output_tokens: read(LimitDimension::OutputTokens),
            sent_ms: None,
            empty_until_ms,
            answered: None,
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.input_tokens.is_none() && self.output_tokens.is_none()
    }
}

/// A key's known limits are kept this long after its bucket was last seen full again: a
/// burst that arrives at a quiet key is paced from its first request instead of learning the
/// limits again from the upstream's `429`s.
const KNOWN_LIMITS_KEPT_US: u64 = 5 * MINUTE_US;

/// An RFC 3339 time in UTC as Anthropic writes its resets (`2026-12-01T21:00:00Z`, fractions
/// of a second allowed), in ms since the Unix epoch; `None` for anything else.
fn rfc3339_ms(text: &str) -> Option<u64> {
    let text = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<u64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock = clock.splitn(3, ':').map(|p| p.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let millis = fraction
        .bytes()
        .take(3)
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u64, |ms, b| ms * 10 + u64::from(b - b'0'));
    // Days since the epoch of a civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000 + millis)
}

/// Below this share of a limit left (in percent), an edge asks before sending.
pub const NEAR_PERCENT: u64 = 25;

/// One GCRA lane: `tat_us` is when the lane would be empty of reservations (its bucket full).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Lane {
    /// Units per minute.
    limit: u64,
    tat_us: u64,
    /// Reservations the upstream may not have counted yet: sent in the last second, or
    /// scheduled for later.
    #[serde(default)]
    pending: Vec<Pending>,
    /// What the upstream charges per unit the proxy reserves, in per mille (0: not learned,
    /// taken as 1000). Learned for input tokens only (see [`Charge`]).
    #[serde(default)]
    charge_pm: u64,
    #[serde(default)]
    charge: Charge,
    /// The latest time an observation counted up to: an answer counted earlier (a slow one,
    /// overtaken by the answers of attempts sent after it) is older news than what the lane
    /// already took in.
    #[serde(default)]
    counted_us: u64,
}

/// Learning what the upstream really charges for what the proxy reserved. The input estimate
/// is made before the answer and meant never to undercount (about 1.3-1.5 times the count on
/// English, more on JSON and other scripts: `docs/estimate.md`), so a queue reserved at the
/// estimate would hold back a quarter or more of the key's input tokens for ever. Between two observations of a bucket that never filled up, the upstream
/// charged what its level says (`level₂ − level₁ + elapsed`, in lane time), and the proxy sent
/// the reservations whose send times fell between them; over a window of at least
/// [`CHARGE_WINDOW_US`] of reserved lane time (or [`CHARGE_WINDOW_UNITS`]) the ratio of the two is one sample, and the
/// ratio in force moves a quarter of the way towards each sample. Traffic the proxy did not
/// send only raises the ratio (it never goes above one: what others send is taken in by the
/// observations themselves), so the learning can only give back what the estimate took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct Charge {
    /// The last observation: when, and the lane time until the upstream's bucket is full.
    seen_at_us: u64,
    seen_level_us: u64,
    /// Over the current window: the lane time the proxy sent and what the upstream charged.
    sent_us: u64,
    charged_us: u64,
}

/// A sample of [`Charge`] needs this much lane time sent: a twelfth of a minute's quota...
const CHARGE_WINDOW_US: u64 = MINUTE_US / 12;

/// ...and at least this many units, so that the upstream's rounding of what remains (to the
/// nearest thousand tokens, at each end of the window) stays within 5 % of a sample.
const CHARGE_WINDOW_UNITS: u64 = 20_000;

/// The learned charge never goes below this share (per mille) of the estimate.
const MIN_CHARGE_PM: u64 = 250;

/// The upstream reports tokens remaining rounded to this many.
const TOKEN_ROUNDING: u64 = 1_000;

/// One reservation of a lane: when it goes and the units it reserved at the proxy's estimate
/// (before the learned charge). Kept in units, not lane time, so that a limit the upstream
/// reports anew (a tier upgrade) re-prices what it has not seen yet at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct Pending {
    at_us: u64,
    units: u64,
    /// The request's seed (0: not known), so that its own answer's figures can tell which
    /// reservations the upstream had counted: it and those made before it.
    seed: u64,
    /// When its edge sends it: the send time, or when the answer reaches the edge if that
    /// is later (0: not known, taken as `at_us`).
    #[serde(default)]
    sent_us: u64,
}

impl Pending {
    fn sent_us(&self) -> u64 {
        self.sent_us.max(self.at_us)
    }
}

/// A reservation sent this recently may not be in the upstream's figures yet, when the
/// figures do not say when the attempt they answered was sent.
const IN_FLIGHT_US: u64 = 1_000_000;

/// Pending reservations remembered per lane; beyond it the oldest (most likely counted by the
/// upstream already) is forgotten.
const MAX_PENDING: usize = 256;

impl Lane {
    /// Microseconds of lane time one unit takes (rounded up: never faster than the limit).
    fn interval_us(&self) -> u64 {
        MINUTE_US.div_ceil(self.limit.max(1))
    }

    /// The lane time a cost takes at the estimate; a cost above a whole minute's quota takes
    /// a whole minute (it can only go with a full bucket, which the upstream then refuses or
    /// accepts itself).
    fn span_us(&self, units: u64) -> u64 {
        units.saturating_mul(self.interval_us()).min(MINUTE_US)
    }

    /// Lane time at the estimate, as the upstream is expected to charge it.
    fn charged(&self, span_us: u64) -> u64 {
        match self.charge_pm {
            0 => span_us,
            pm => span_us.saturating_mul(pm).div_ceil(1000),
        }
    }

    /// The earliest time (µs) at which `units` fit.
    fn earliest_us(&self, now_us: u64, units: u64) -> u64 {
        let span = self.charged(self.span_us(units));
        let new_tat = self.tat_us.max(now_us).saturating_add(span);
        new_tat.saturating_sub(MINUTE_US).max(now_us)
    }

    /// The lane time a cost takes in full, beyond a whole minute for one larger than the
    /// bucket: the debt the upstream's bucket runs into when it serves it.
    fn debt_us(&self, units: u64) -> u64 {
        self.charged(units.saturating_mul(self.interval_us()))
    }

    fn reserve(&mut self, at_us: u64, units: u64, (seed, sent_us): (u64, u64)) {
        self.tat_us = stored(self.tat_us.max(at_us).saturating_add(self.debt_us(units)));
        let units = units.min(self.limit.max(1));
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push(Pending {
            at_us,
            units,
            seed,
            sent_us,
        });
    }

    /// The upstream's figures at `now_us`: what it counts, plus the reservations it may not
    /// have counted yet. This may free what the proxy over-reserved (an input estimate above
    /// the real count) as well as take in traffic the proxy did not pace. With `learn`, the
    /// figures also teach what the upstream charges for what the proxy reserves.
    /// Reservations made after the answered request's own (`answered`, its seed), or when it
    /// is not among them after `counted_until_us`, are taken as not counted in the figures,
    /// and the bucket as holding `rounding` units less than it says.
    fn observe(
        &mut self,
        now_us: u64,
        observed: Observed,
        (answered, counted_until_us, exact): (Option<u64>, u64, bool),
        rounding: u64,
        learn: bool,
    ) {
        self.limit = observed.limit;
        let used = observed.limit.saturating_sub(observed.remaining);
        let level_us = self.span_us(used);
        // Reservations counted by a newer answer are let go after a second, so an older one
        // cannot see them all: it may only show less room, never more, and teaches no charge.
        let stale = counted_until_us < self.counted_us;
        self.counted_us = self.counted_us.max(counted_until_us);
        if learn && !stale {
            self.learn_charge(now_us, level_us);
        }
        // When the bucket would be full again given what the upstream counts (from when it
        // counted, when the answer says; otherwise from now, which only errs late)...
        let counted_at_us = if exact { counted_until_us } else { now_us };
        let implied = counted_at_us
            .saturating_add(level_us)
            .saturating_add(self.span_us(rounding));
        // ...and what it has not seen yet: what its edges sent after the answered attempt
        // (several sent at one instant reach the upstream in the order they were reserved).
        // Without the send time, the reservations after the answered one: the order in which
        // the object handed out turns, which the edges' ways back can shuffle.
        let through = answered
            .filter(|&seed| seed != 0)
            .and_then(|seed| self.pending.iter().position(|p| p.seed == seed));
        let after = |i: usize, p: &Pending| {
            let later = through.is_some_and(|t| i > t);
            match (exact, through) {
                (true, _) => {
                    p.sent_us() > counted_until_us || (p.sent_us() == counted_until_us && later)
                }
                (false, Some(_)) => later,
                (false, None) => p.at_us > counted_until_us,
            }
        };
        let mut unseen = 0u64;
        let mut kept = Vec::with_capacity(self.pending.len());
        for (i, p) in self.pending.iter().enumerate() {
            let not_counted = after(i, p);
            if not_counted {
                unseen = unseen.saturating_add(self.span_us(p.units));
            }
            if not_counted || p.sent_us().saturating_add(IN_FLIGHT_US) > now_us {
                kept.push(*p);
            }
        }
        self.pending = kept;
        let seen = implied.saturating_add(self.charged(unseen));
        // An empty bucket says nothing of how deep it is in debt (a request larger than the
        // bucket, served with it full): the lane keeps the later time then. Any room shown is
        // news the lane takes at once.
        self.tat_us = stored(if observed.remaining == 0 {
            seen.max(self.tat_us)
        } else if stale {
            self.tat_us
        } else {
            seen
        });
    }

    /// See [`Charge`].
    fn learn_charge(&mut self, now_us: u64, level_us: u64) {
        let c = self.charge;
        if now_us <= c.seen_at_us {
            // Another answer of the same instant: nothing elapsed to learn from.
            return;
        }
        let mut next = Charge {
            seen_at_us: now_us,
            seen_level_us: level_us,
            ..c
        };
        if c.seen_at_us == 0 || c.seen_level_us == 0 || level_us == 0 {
            // First sight, or a full bucket between (its refill beyond full is lost): start
            // a new window.
            next.sent_us = 0;
            next.charged_us = 0;
        } else {
            let sent = self
                .pending
                .iter()
                .filter(|p| p.at_us > c.seen_at_us && p.at_us <= now_us)
                .fold(0u64, |sum, p| sum.saturating_add(self.span_us(p.units)));
            let charged = level_us
                .saturating_add(now_us - c.seen_at_us)
                .saturating_sub(c.seen_level_us);
            next.sent_us = stored(c.sent_us.saturating_add(sent));
            next.charged_us = stored(c.charged_us.saturating_add(charged));
            if next.sent_us >= CHARGE_WINDOW_US.max(self.span_us(CHARGE_WINDOW_UNITS)) {
                let sample = (u128::from(next.charged_us) * 1000 / u128::from(next.sent_us))
                    .clamp(u128::from(MIN_CHARGE_PM), 1000) as u64;
                self.charge_pm = match self.charge_pm {
                    0 => sample,
                    pm => (pm + sample).div_ceil(2),
                };
                next.sent_us = 0;
                next.charged_us = 0;
            }
        }
        self.charge = next;
    }
}

/// Why a request is paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaceReason {
    /// The key's own limit in this dimension.
    KeyLimit(LimitDimension),
    /// The upstream's sustainable rate.
    Capacity,
}

// Read as the derive reads it (the same forms, the same errors), with the variant's name read
// by the one shared decoder (`json::VariantSeed`).
impl<'de> Deserialize<'de> for PaceReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["key_limit", "capacity"];
        struct Reading;
        impl<'de> serde::de::Visitor<'de> for Reading {
            type Value = PaceReason;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("enum PaceReason")
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                data: A,
            ) -> Result<PaceReason, A::Error> {
                use serde::de::VariantAccess;
                match data.variant_seed(crate::json::VariantSeed(NAMES))? {
                    (0, variant) => variant.newtype_variant().map(PaceReason::KeyLimit),
                    (_, variant) => variant.unit_variant().map(|()| PaceReason::Capacity),
                }
            }
        }
        deserializer.deserialize_enum("PaceReason", NAMES, Reading)
    }
}

/// The upstream's sustainable rate for the pool, while it sheds load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Rate {
    /// Requests per second × 1000; 0 when not pacing.
    mrps: u64,
    /// The lane of the rate (µs).
    tat_us: u64,
    /// Pacing ends when nothing was shed until then.
    until_ms: u64,
    /// Below this rate a success raises it quickly (slow start).
    threshold_mrps: u64,
    /// When the rate last came down.
    decreased_ms: u64,
    /// Shedding began here (0: not measuring): pacing may start [`MEASURE_MS`] later.
    #[serde(default)]
    measure_from_ms: u64,
    /// Shed answers since then.
    #[serde(default)]
    measure_sheds: u32,
    /// Successes since then: without any, the shedding is an outage, not a capacity.
    #[serde(default)]
    measure_served: u32,
}

/// Shed answers within the measuring window that make a capacity to pace to (10 a second).
const MIN_SHEDS: u32 = 5;

/// How long shedding is watched before the first pacing rate is set.
const MEASURE_MS: u64 = 500;

impl Rate {
    fn interval_us(&self) -> u64 {
        1_000_000_000u64.div_ceil(self.mrps.max(1))
    }

    /// GCRA with a tolerance of `burst − 1` intervals: the earliest send time (µs).
    fn earliest_us(&self, now_us: u64, burst: u64) -> u64 {
        let tolerance = self.interval_us().saturating_mul(burst.max(1) - 1);
        self.tat_us.saturating_sub(tolerance).max(now_us)
    }

    fn reserve(&mut self, at_us: u64) {
        self.tat_us = stored(self.tat_us.max(at_us).saturating_add(self.interval_us()));
    }
}

/// Successes per whole second: the current second and the last one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Served {
    second: u64,
    this_second: u64,
    last_second: u64,
    /// The busiest whole second of the last [`PEAK_SECONDS`], and when it was.
    #[serde(default)]
    peak: u64,
    #[serde(default)]
    peak_second: u64,
}

/// How long the busiest second served is remembered: pacing slows what is served, so the
/// last second alone would spiral down (a delivery-rate estimate takes a windowed maximum).
const PEAK_SECONDS: u64 = 10;

impl Served {
    fn roll(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second == self.second {
            return;
        }
        self.last_second = if second == self.second.saturating_add(1) {
            self.this_second
        } else {
            0
        };
        if self.last_second >= self.peak || second > self.peak_second.saturating_add(PEAK_SECONDS) {
            self.peak = self.last_second;
            self.peak_second = second.saturating_sub(1);
        }
        self.this_second = 0;
        self.second = second;
    }

    fn count(&mut self, now_ms: u64, n: u64) {
        self.roll(now_ms);
        self.this_second = self.this_second.saturating_add(n);
    }

    /// Successes over the last full second, or the current one if it is busier.
    fn rate_per_s(&mut self, now_ms: u64) -> u64 {
        self.roll(now_ms);
        self.last_second.max(self.this_second)
    }

    /// The busiest second served lately (see [`PEAK_SECONDS`]).
    fn peak_per_s(&mut self, now_ms: u64) -> u64 {
        self.roll(now_ms);
        self.peak.max(self.rate_per_s(now_ms))
    }
}

/// The knobs of pacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacePolicy {
    /// Pace at the upstream's sustainable rate once it sheds (the key's own limits are
    /// always paced).
    pub capacity: bool,
    /// The rate set on shedding is this share (percent) of the served rate.
    pub shed_percent: u64,
    /// Each success raises the rate by this much (milli-requests per second).
    pub increase_mrps: u64,
    /// The rate never goes below this (milli-requests per second).
    pub min_mrps: u64,
    /// Pacing at the rate ends this long after the last shed answer.
    pub quiet_ms: u64,
    /// Requests the rate lets out at once (its burst).
    pub burst: u64,
    /// The rate grows to at most this share (percent) of the busiest second served lately.
    pub probe_percent: u64,
}

impl Default for PacePolicy {
    /// Capacity pacing on: half a second of shedding is measured, then requests go at 90 % of
    /// what the upstream served, +0.1 req/s per success up to 110 % of the busiest second
    /// served lately, at least 0.5 req/s, a burst of 2, until nothing has waited or been shed
    /// for 10 s.
    fn default() -> Self {
        PacePolicy {
            capacity: true,
            shed_percent: 90,
            increase_mrps: 100,
            min_mrps: 500,
            quiet_ms: 10_000,
            burst: 2,
            probe_percent: 110,
        }
    }
}

/// One dimension of the key's own limits as the pool knows it at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitOutlook {
    pub dimension: LimitDimension,
    /// The limit per minute the upstream last reported.
    pub limit: u64,
    /// What the key's bucket holds now, counting the reservations the upstream has not seen.
    pub remaining: u64,
    /// Until the bucket is full again if nothing else is sent.
    pub full_in_ms: u64,
}

/// What one pool's pacing holds at one instant ([`Pace::outlook`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PaceOutlook {
    /// The pacing rate in force, requests per second × 1000 (0: not paced at a rate).
    pub rate_mrps: u64,
    /// Successes served in the last whole second (or in this one, if busier).
    pub served_per_s: u64,
    /// The key's limits the upstream has reported, in the order of [`LimitDimension::ALL`].
    pub limits: Vec<LimitOutlook>,
    /// Requests holding a send time that has not come yet.
    pub scheduled: u64,
}

/// When a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTime {
    /// Now: nothing holds it back.
    Now,
    /// At this time (ms), for this reason.
    At { at_ms: u64, reason: PaceReason },
}

/// Pacing state of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pace {
    lanes: [Option<Lane>; 3],
    rate: Rate,
    served: Served,
}

impl Pace {
    /// When a request of `cost` could go, without reserving.
    #[must_use]
    pub fn send_time(&self, policy: &PacePolicy, now_ms: u64, cost: Cost) -> SendTime {
        let now_us = now_ms.saturating_mul(1000);
        let mut latest = (now_us, None);
        for dimension in LimitDimension::ALL {
            if let Some(Some(lane)) = self.lanes.get(dimension.index()) {
                let at = lane.earliest_us(now_us, dimension.units(cost));
                if at > latest.0 {
                    latest = (at, Some(PaceReason::KeyLimit(dimension)));
                }
            }
        }
        if self.rate_mrps(now_ms) > 0 {
            let at = self.rate.earliest_us(now_us, policy.burst);
            if at > latest.0 {
                latest = (at, Some(PaceReason::Capacity));
            }
        }
        match latest {
            (at_us, Some(reason)) => SendTime::At {
                at_ms: at_us.div_ceil(1000),
                reason,
            },
            (_, None) => SendTime::Now,
        }
    }

    /// The lane time `cost` takes in the pool's tightest dimension (µs): the cost the fair
    /// order charges a caller, so that requests, input and output tokens weigh by how scarce
    /// each is (a dominant-resource share). A request larger than the bucket is charged in
    /// full: its caller's share pays the debt. At least 1.
    #[must_use]
    pub fn lane_time_us(&self, now_ms: u64, cost: Cost) -> u64 {
        let lanes = LimitDimension::ALL.iter().filter_map(|d| {
            let lane = self.lanes.get(d.index())?.as_ref()?;
            Some(lane.debt_us(d.units(cost)))
        });
        let rate = (self.rate_mrps(now_ms) > 0).then(|| self.rate.interval_us());
        lanes.chain(rate).max().unwrap_or(0).max(1)
    }

    /// A copy of the lanes and the rate without their history: what a projection of the
    /// queue reserves on (cheap to copy, and its reservations are never stored).
    #[must_use]
    pub fn sketch(&self) -> Pace {
        let mut lanes = self.lanes.clone();
        for lane in lanes.iter_mut().flatten() {
            lane.pending = Vec::new();
        }
        Pace {
            lanes,
            rate: self.rate,
            served: Served::default(),
        }
    }

    /// Reserves `cost` at `at_ms` on a [`Pace::sketch`]: only the lanes' and the rate's times
    /// move (no history is kept), so a projection of a long queue stays cheap.
    pub fn reserve_projected(&mut self, at_ms: u64, cost: Cost) {
        let at_us = at_ms.saturating_mul(1000);
        for dimension in LimitDimension::ALL {
            if let Some(Some(lane)) = self.lanes.get_mut(dimension.index()) {
                lane.tat_us = stored(
                    lane.tat_us
                        .max(at_us)
                        .saturating_add(lane.debt_us(dimension.units(cost))),
                );
            }
        }
        if self.rate.mrps > 0 {
            self.rate.reserve(at_us);
        }
    }

    /// Reserves `cost` for a request that goes at `at_ms` (decided at `now_ms`). A request that had to wait for the rate keeps the pacing in
    /// force: pacing that works sheds nothing, and must not end for want of shedding while
    /// requests still queue.
    pub fn reserve(&mut self, policy: &PacePolicy, now_ms: u64, at_ms: u64, cost: Cost) {
        self.reserve_for(policy, (now_ms, at_ms, at_ms), cost, 0);
    }

    /// [`Pace::reserve`] for the request of `seed`, which its answer's figures name, decided
    /// at `now_ms` to go at `at_ms`, and sent by its edge at `lands_ms` (when the answer
    /// reaches it, if later).
    pub fn reserve_for(
        &mut self,
        policy: &PacePolicy,
        (now_ms, at_ms, lands_ms): (u64, u64, u64),
        cost: Cost,
        seed: u64,
    ) {
        let at_us = at_ms.saturating_mul(1000);
        let sent_us = lands_ms.max(at_ms).saturating_mul(1000);
        for dimension in LimitDimension::ALL {
            if let Some(Some(lane)) = self.lanes.get_mut(dimension.index()) {
                lane.reserve(at_us, dimension.units(cost), (seed, sent_us));
            }
        }
        if self.rate_mrps(now_ms) > 0 {
            self.rate.reserve(at_us);
            if at_ms > now_ms {
                self.rate.until_ms = self
                    .rate
                    .until_ms
                    .max(stored(at_ms.saturating_add(policy.quiet_ms)));
            }
        }
    }

    /// Learns the key's limits from an answer's headers at `now_ms`.
    pub fn observe(&mut self, now_ms: u64, limits: &KeyLimits) {
        let now_us = now_ms.saturating_mul(1000);
        // The figures count what the upstream admitted before the attempt they answer (sent
        // at `sent_ms`, its own reservation included: the proxy reserves a request at the
        // send time it then waits for).
        let counted_until_us = match limits.sent_ms {
            Some(sent) => sent.saturating_mul(1000).min(now_us),
            None => now_us.saturating_sub(IN_FLIGHT_US),
        };
        let exact = limits.sent_ms.is_some();
        for dimension in LimitDimension::ALL {
            if let (Some(observed), Some(slot)) =
                (limits.get(dimension), self.lanes.get_mut(dimension.index()))
            {
                if observed.limit == 0 {
                    continue;
                }
                // Anthropic charges input tokens as counted at the start and never gives
                // them back: the lane learns what its estimate overstates. Requests are
                // exact, and output is charged at `max_tokens` up front, so those lanes
                // reserve what the upstream needs free at arrival.
                let learn = dimension == LimitDimension::InputTokens;
                // Tokens remaining are rounded to the nearest thousand: up to half of one
                // may already be gone.
                let rounding = match dimension {
                    LimitDimension::Requests => 0,
                    _ => TOKEN_ROUNDING / 2,
                };
                slot.get_or_insert_with(Lane::default).observe(
                    now_us,
                    observed,
                    (limits.answered, counted_until_us, exact),
                    rounding,
                    learn,
                );
            }
        }
    }

    /// A success: counts towards the served rate and raises the pacing rate: by a whole
    /// request per second while below the rate the last shedding set (slow start: the rate
    /// doubles every second), additively above it.
    pub fn served(&mut self, policy: &PacePolicy, now_ms: u64) {
        self.served.count(now_ms, 1);
        if self.rate.measure_from_ms != 0 {
            self.rate.measure_served = self.rate.measure_served.saturating_add(1);
        }
        if self.rate_mrps(now_ms) > 0 {
            let step = if self.rate.mrps < self.rate.threshold_mrps {
                1000
            } else {
                policy.increase_mrps
            };
            // Probing upwards goes at most a little beyond what the upstream has been seen
            // to serve: a success is news of a send booked when the queue was shorter, so
            // growing on every one would book the whole queue above the capacity before the
            // first shed answer came back.
            let ceiling = (self
                .served
                .peak_per_s(now_ms)
                .saturating_mul(10 * policy.probe_percent))
            .max(self.rate.threshold_mrps);
            let grown = self.rate.mrps.saturating_add(step).min(ceiling);
            self.rate.mrps = stored(grown.max(self.rate.mrps));
        }
    }

    /// Successes reported in bulk: they count towards the served rate only (they are old news
    /// for the pacing rate).
    pub fn count_served(&mut self, now_ms: u64, n: u32) {
        self.served.count(now_ms, u64::from(n));
        if self.rate.measure_from_ms != 0 {
            self.rate.measure_served = self.rate.measure_served.saturating_add(n);
        }
    }

    /// The upstream shed an attempt: pace at a little below what it served over the last
    /// second. Repeated shedding never compounds: the rate only comes down to that figure.
    pub fn shed(&mut self, policy: &PacePolicy, now_ms: u64) {
        let served_mrps = self.served.peak_per_s(now_ms).saturating_mul(1000);
        let pacing = self.rate_mrps(now_ms) > 0;
        if !policy.capacity || (served_mrps == 0 && !pacing) {
            // Nothing served lately: not a rate to learn but an outage (or its start), which
            // the probes handle.
            return;
        }
        let target = (served_mrps.saturating_mul(policy.shed_percent) / 100).max(policy.min_mrps);
        if pacing {
            // Shed at the rate: about what the upstream takes. One decrease a second: the
            // attempts already on their way when it shed carry the same news.
            if now_ms >= self.rate.decreased_ms.saturating_add(1_000) {
                self.rate.mrps = target;
                self.rate.threshold_mrps = target;
                self.rate.decreased_ms = now_ms;
            }
        } else if let Some(window_mrps) = self.measured(now_ms) {
            // Then pace at what it served (measured, so near the upstream's rate: grow from
            // it additively, no slow start): over the window, or its busiest whole second (a
            // window that began within a second holds only part of it, and shedding that
            // starts with the traffic has no whole second behind it).
            let target = target.max(window_mrps.saturating_mul(policy.shed_percent) / 100);
            self.rate.measure_from_ms = 0;
            self.rate.measure_served = 0;
            self.rate.mrps = target;
            self.rate.tat_us = stored(now_ms.saturating_mul(1000));
            self.rate.threshold_mrps = target;
            self.rate.decreased_ms = now_ms;
        } else {
            return;
        }
        self.rate.until_ms = stored(now_ms.saturating_add(policy.quiet_ms));
    }

    /// Before the first rate: watches the shedding for [`MEASURE_MS`] (by then the edges that
    /// saw it report every answer, so the served rate is the upstream's, not the few
    /// successes heard of so far; send times promised at too low a rate would hold the queue
    /// back long after the rate rose). When the window is over with shedding dense enough
    /// ([`MIN_SHEDS`]) to be a capacity rather than the odd `529` of a quiet key: the rate
    /// served over the window (requests per second × 1000).
    fn measured(&mut self, now_ms: u64) -> Option<u64> {
        let from = self.rate.measure_from_ms;
        let elapsed = now_ms.saturating_sub(from);
        if from == 0 || elapsed >= 4 * MEASURE_MS {
            self.restart_measuring(now_ms);
            return None;
        }
        self.rate.measure_sheds = self.rate.measure_sheds.saturating_add(1);
        if elapsed < MEASURE_MS {
            return None;
        }
        if self.rate.measure_sheds < MIN_SHEDS || self.rate.measure_served == 0 {
            self.restart_measuring(now_ms);
            return None;
        }
        // What the upstream served over the window, per second × 1000.
        Some(u64::from(self.rate.measure_served).saturating_mul(1_000_000) / elapsed.max(1))
    }

    /// While dense shedding is being measured (two or more shed answers in the window, no
    /// rate yet): when the window ends. A retry waits for it (a wait, not an attempt) rather
    /// than meet the same shedding again: by then the request is paced at the measured rate.
    #[must_use]
    pub fn measuring_until(&self, now_ms: u64) -> Option<u64> {
        let end = self.rate.measure_from_ms.saturating_add(MEASURE_MS);
        (self.rate.measure_from_ms != 0
            && self.rate.measure_sheds >= 2
            && now_ms < end
            && self.rate_mrps(now_ms) == 0)
            .then_some(end)
    }

    fn restart_measuring(&mut self, now_ms: u64) {
        self.rate.measure_from_ms = now_ms.max(1);
        self.rate.measure_sheds = 1;
        self.rate.measure_served = 0;
    }

    /// Stops pacing at a rate: an outage was detected, and its probes and paced release take
    /// over.
    pub fn outage(&mut self) {
        self.rate.mrps = 0;
        self.rate.until_ms = 0;
    }

    /// Paced at a rate, and the upstream served something in the last second.
    pub fn serving(&mut self, now_ms: u64) -> bool {
        self.rate_mrps(now_ms) > 0 && self.served.rate_per_s(now_ms) > 0
    }

    /// The pacing rate in force at `now_ms`, in requests per second × 1000 (0 when none).
    #[must_use]
    pub fn rate_mrps(&self, now_ms: u64) -> u64 {
        if now_ms < self.rate.until_ms {
            self.rate.mrps
        } else {
            0
        }
    }

    /// The known limit of a dimension, if any answer reported it.
    #[must_use]
    pub fn known_limit(&self, dimension: LimitDimension) -> Option<u64> {
        self.lanes
            .get(dimension.index())
            .and_then(Option::as_ref)
            .map(|lane| lane.limit)
    }

    /// Nothing worth remembering at `now_ms`: no lane holds a reservation, no rate in force,
    /// nothing served in the last second (the served rate is what shedding paces to).
    #[must_use]
    pub fn is_idle(&self, now_ms: u64) -> bool {
        let now_us = now_ms.saturating_mul(1000);
        let served_lately = (self.served.this_second > 0 || self.served.last_second > 0)
            && self.served.second.saturating_add(1) >= now_ms / 1000;
        self.rate_mrps(now_ms) == 0
            && !served_lately
            && self
                .lanes
                .iter()
                .flatten()
                .all(|lane| lane.tat_us.saturating_add(KNOWN_LIMITS_KEPT_US) <= now_us)
    }

    /// What the pool's pacing holds at `now_ms`, without changing it (the operator's view).
    #[must_use]
    pub fn outlook(&self, now_ms: u64) -> PaceOutlook {
        let now_us = now_ms.saturating_mul(1000);
        let mut served = self.served;
        let mut limits = Vec::new();
        let mut scheduled = 0;
        for dimension in LimitDimension::ALL {
            let Some(Some(lane)) = self.lanes.get(dimension.index()) else {
                continue;
            };
            let outstanding_us = lane.tat_us.saturating_sub(now_us);
            let used = outstanding_us.div_ceil(lane.interval_us()).min(lane.limit);
            limits.push(LimitOutlook {
                dimension,
                limit: lane.limit,
                remaining: lane.limit.saturating_sub(used),
                full_in_ms: outstanding_us.div_ceil(1000),
            });
            let ahead = lane.pending.iter().filter(|p| p.at_us > now_us).count();
            scheduled = scheduled.max(u64::try_from(ahead).unwrap_or(u64::MAX));
        }
        let rate_mrps = self.rate_mrps(now_ms);
        if rate_mrps > 0 {
            let queued = self.rate.tat_us.saturating_sub(now_us) / self.rate.interval_us();
            scheduled = scheduled.max(queued);
        }
        PaceOutlook {
            rate_mrps,
            served_per_s: served.rate_per_s(now_ms),
            limits,
            scheduled,
        }
    }

    /// Moves every stored time back by `back` ms (a clock jump).
    pub fn shift_back(&mut self, back: u64) {
        let back_us = back.saturating_mul(1000);
        for lane in self.lanes.iter_mut().flatten() {
            lane.tat_us = lane.tat_us.saturating_sub(back_us);
            for p in &mut lane.pending {
                p.at_us = p.at_us.saturating_sub(back_us);
            }
        }
        self.rate.tat_us = self.rate.tat_us.saturating_sub(back_us);
        self.rate.until_ms = self.rate.until_ms.saturating_sub(back);
        self.rate.decreased_ms = self.rate.decreased_ms.saturating_sub(back);
        self.served = Served::default();
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const T0: u64 = 1_764_000_000_000;

    fn observed(limit: u64, remaining: u64) -> Observed {
        Observed { limit, remaining }
    }

    fn requests_only(limit: u64, remaining: u64) -> KeyLimits {
        KeyLimits {
            requests: Some(observed(limit, remaining)),
            ..KeyLimits::default()
        }
    }

    /// Sends `n` requests of `cost` as early as the pace allows, from `now`; their send times.
    fn send_all(pace: &mut Pace, now: u64, n: usize, cost: Cost) -> Vec<u64> {
        let policy = PacePolicy::default();
        (0..n)
            .map(|_| {
                let at = match pace.send_time(&policy, now, cost) {
                    SendTime::Now => now,
                    SendTime::At { at_ms, .. } => at_ms,
                };
                pace.reserve(&policy, now, at, cost);
                at
            })
            .collect()
    }

    #[test]
    fn a_full_key_bursts_its_minute_then_goes_at_the_limit() {
        let mut pace = Pace::default();
        pace.observe(T0, &requests_only(60, 60));
        let times = send_all(&mut pace, T0, 63, Cost::default());
        assert!(times[..60].iter().all(|&t| t == T0), "{:?}", &times[..60]);
        assert_eq!(&times[60..], [T0 + 1_000, T0 + 2_000, T0 + 3_000]);
    }

    #[test]
    fn an_observed_remaining_is_honoured_with_what_it_has_not_seen() {
        let mut pace = Pace::default();
        // The upstream says 2 of 60 are left: two go now, the next one a second later.
        pace.observe(T0, &requests_only(60, 2));
        let times = send_all(&mut pace, T0, 3, Cost::default());
        assert_eq!(times, [T0, T0, T0 + 1_000]);
        // A later answer's figures count with the reservations it may not have seen: 50 of
        // 60 left and 3 not seen means 47, so the next request goes at once (what the proxy
        // over-reserved comes back)...
        pace.observe(T0 + 10, &requests_only(60, 50));
        assert_eq!(
            pace.send_time(&PacePolicy::default(), T0 + 10, Cost::default()),
            SendTime::Now
        );
        // ...and one that reports less pushes the lane on.
        pace.observe(T0 + 20, &requests_only(60, 0));
        match pace.send_time(&PacePolicy::default(), T0 + 20, Cost::default()) {
            SendTime::At { at_ms, .. } => assert!(at_ms >= T0 + 20 + 1_000),
            SendTime::Now => panic!("an empty bucket let a request through"),
        }
    }

    #[test]
    fn figures_that_say_when_their_attempt_went_count_it_once() {
        let policy = PacePolicy::default();
        let at = |pace: &Pace, now: u64| match pace.send_time(&policy, now, Cost::default()) {
            SendTime::At { at_ms, .. } => at_ms,
            SendTime::Now => now,
        };
        // One request of 60 a minute left: it goes at once, and its answer 300 ms later says
        // none is left, the upstream having counted it.
        let answered = |sent_ms| {
            let mut pace = Pace::default();
            pace.observe(T0, &requests_only(60, 1));
            pace.reserve(&policy, T0, T0, Cost::default());
            pace.observe(
                T0 + 300,
                &KeyLimits {
                    sent_ms,
                    ..requests_only(60, 0)
                },
            );
            pace
        };
        // Sent 300 ms before: it is in the figures, which the upstream counted when it came
        // in; the next goes when one unit is back from then.
        assert_eq!(at(&answered(Some(T0)), T0 + 300), T0 + 1_000);
        // Not said: a reservation of the last second may not be in them, and counts again.
        assert_eq!(at(&answered(None), T0 + 300), T0 + 2_300);
        // What was sent after the answered attempt is not in its figures: of two sent with
        // two left, the answer to the first says one is left, which the second has taken.
        let mut pace = Pace::default();
        pace.observe(T0, &requests_only(60, 2));
        pace.reserve(&policy, T0, T0, Cost::default());
        pace.reserve(&policy, T0 + 100, T0 + 100, Cost::default());
        // The report takes its time to reach the object; the edge's send time says what went
        // after it, which is not in the figures.
        pace.observe(
            T0 + 450,
            &KeyLimits {
                sent_ms: Some(T0),
                ..requests_only(60, 1)
            },
        );
        assert_eq!(at(&pace, T0 + 450), T0 + 1_000);
    }

    #[test]
    fn an_answer_older_than_what_the_lane_knows_never_shows_more_room() {
        let policy = PacePolicy::default();
        // Six a minute, two left: two go, 100 ms apart.
        let mut pace = Pace::default();
        pace.observe(T0, &requests_only(6, 2));
        pace.reserve_for(&policy, (T0, T0, T0), Cost::default(), 1);
        pace.reserve_for(&policy, (T0, T0 + 100, T0 + 100), Cost::default(), 2);
        let answer = |sent_ms: u64, seed, remaining| KeyLimits {
            sent_ms: Some(sent_ms),
            answered: Some(seed),
            ..requests_only(6, remaining)
        };
        // The second one's answer comes first: none left, the next one in 10 s...
        pace.observe(T0 + 400, &answer(T0 + 100, 2, 0));
        let known = pace.send_time(&policy, T0 + 2_500, Cost::default());
        assert!(matches!(known, SendTime::At { at_ms, .. } if at_ms == T0 + 10_100));
        // ...then the first one's, slow, with figures counted before the second went (one
        // left): its reservation is long let go, and what it shows is old news.
        pace.observe(T0 + 2_500, &answer(T0, 1, 1));
        assert_eq!(pace.send_time(&policy, T0 + 2_500, Cost::default()), known);
    }

    #[test]
    fn a_turn_whose_answer_reaches_its_edge_late_counts_as_sent_then() {
        let policy = PacePolicy::default();
        let at = |pace: &Pace, now: u64| match pace.send_time(&policy, now, Cost::default()) {
            SendTime::At { at_ms, .. } => at_ms,
            SendTime::Now => now,
        };
        // Two requests cleared at once with two left; the second's edge is far and sends it
        // 90 ms later, after the first (near) edge sent its own at once.
        let mut pace = Pace::default();
        pace.observe(T0, &requests_only(60, 2));
        pace.reserve_for(&policy, (T0, T0, T0 + 90), Cost::default(), 2);
        pace.reserve_for(&policy, (T0, T0, T0 + 5), Cost::default(), 1);
        // The first one's answer counted what came before it: one left, which the far
        // request took after.
        pace.observe(
            T0 + 300,
            &KeyLimits {
                sent_ms: Some(T0 + 5),
                answered: Some(1),
                ..requests_only(60, 1)
            },
        );
        assert_eq!(at(&pace, T0 + 300), T0 + 1_005);
    }

    #[test]
    fn token_costs_pace_by_the_binding_dimension() {
        let mut pace = Pace::default();
        let limits = KeyLimits {
            requests: Some(observed(1_000, 1_000)),
            input_tokens: Some(observed(60_000, 60_000)),
            output_tokens: Some(observed(8_000, 8_000)),
            sent_ms: None,
            empty_until_ms: None,
            answered: None,
        };
        pace.observe(T0, &limits);
        // 3,000-token prompts: of the 60,000 the bucket says it holds, up to 500 may be gone
        // (the figure is rounded to the thousand), so 19 fit at once, the 20th half a second
        // later, then one every 3 s.
        let big = Cost {
            input_tokens: 3_000,
            output_tokens: 100,
        };
        let times = send_all(&mut pace, T0, 22, big);
        assert!(times[..19].iter().all(|&t| t == T0));
        assert_eq!(&times[19..], [T0 + 500, T0 + 3_500, T0 + 6_500]);
        assert_eq!(
            pace.send_time(&PacePolicy::default(), T0, big),
            SendTime::At {
                at_ms: T0 + 9_500,
                reason: PaceReason::KeyLimit(LimitDimension::InputTokens)
            }
        );
        // A cost above the whole minute waits for a full bucket, never for ever.
        let huge = Cost {
            input_tokens: 10_000_000,
            output_tokens: 0,
        };
        let at = match pace.send_time(&PacePolicy::default(), T0, huge) {
            SendTime::At { at_ms, .. } => at_ms,
            SendTime::Now => T0,
        };
        assert!(at <= T0 + 9_500 + 60_000);
    }

    /// Sends a request of `estimate` input tokens every `every_ms` for `seconds` as early as
    /// the pace allows, to an upstream whose bucket of `limit` a minute starts empty and
    /// charges `charged_percent` of the estimate (plus `others` tokens a second of traffic the
    /// proxy does not send); the pace observes the bucket after each send. What was sent in
    /// the last `tail_s` seconds, and the pace.
    fn learn(
        estimate: u64,
        charged_percent: u64,
        others: u64,
        seconds: u64,
        tail_s: u64,
    ) -> (u64, Pace) {
        let (limit, policy) = (60_000u64, PacePolicy::default());
        let mut pace = Pace::default();
        let tokens = |level: f64| KeyLimits {
            input_tokens: Some(observed(limit, (level.max(0.0) as u64 + 500) / 1000 * 1000)),
            ..KeyLimits::default()
        };
        pace.observe(T0, &tokens(0.0));
        let cost = Cost {
            input_tokens: estimate,
            output_tokens: 0,
        };
        // Send times handed out, in order; the upstream's level and when it was last moved.
        let mut queue = std::collections::VecDeque::new();
        let (mut level, mut at, mut sent_tail) = (0.0f64, T0, 0);
        for now in (T0..T0 + seconds * 1000).step_by(50) {
            let refill = |level: f64, from: u64, to: u64| {
                (level + (to - from) as f64 * (limit as f64 / 60_000.0 - others as f64 / 1000.0))
                    .min(limit as f64)
            };
            if (now - T0).is_multiple_of(1000) {
                let send = match pace.send_time(&policy, now, cost) {
                    SendTime::Now => now,
                    SendTime::At { at_ms, .. } => at_ms,
                };
                pace.reserve(&policy, now, send, cost);
                queue.push_back(send);
            }
            while queue.front().is_some_and(|&t| t <= now) {
                level = refill(level, at, now);
                at = now;
                level -= (estimate * charged_percent / 100) as f64;
                queue.pop_front();
                if now >= T0 + (seconds - tail_s) * 1000 {
                    sent_tail += 1;
                }
                pace.observe(now, &tokens(level));
            }
        }
        (sent_tail, pace)
    }

    #[test]
    fn what_the_input_estimate_overstates_is_learned_and_given_back() {
        // A request a second estimated at 1,333 tokens where the upstream charges 1,000, to
        // a key of 60,000 a minute (1,000 a second): paced at the estimate only 3 of 4 go.
        let (sent, pace) = learn(1_333, 75, 0, 90, 30);
        let pm = pace.lanes[1].as_ref().map_or(0, |lane| lane.charge_pm);
        assert!((700..=800).contains(&pm), "learned {pm} per mille");
        assert!(
            sent >= 28,
            "{sent} sent in the last 30 s at 1,000 tokens a second"
        );
        // Charged as estimated: nothing to give back, and the key's bucket is not overdrawn.
        let (sent, pace) = learn(1_000, 100, 0, 90, 30);
        assert!(pace.lanes[1]
            .as_ref()
            .is_some_and(|lane| lane.charge_pm >= 950));
        assert!(sent <= 31, "{sent}");
        // Traffic the proxy does not send never makes it reserve less than its estimate.
        let (_, pace) = learn(1_000, 100, 300, 90, 30);
        assert!(pace.lanes[1]
            .as_ref()
            .is_some_and(|lane| lane.charge_pm == 1_000));
    }

    #[test]
    fn shedding_is_measured_then_paced_just_below_the_served_rate() {
        let policy = PacePolicy {
            capacity: true,
            ..PacePolicy::default()
        };
        let mut pace = Pace::default();
        // 20 successes a second, then a 529: half a second of measuring first...
        for i in 0..40 {
            pace.served(&policy, T0 + i * 50);
        }
        for i in 0..5 {
            pace.shed(&policy, T0 + 2_000 + i * 100);
        }
        assert_eq!(
            pace.rate_mrps(T0 + 2_400),
            0,
            "no rate before it was measured"
        );
        for i in 0..10 {
            pace.served(&policy, T0 + 2_000 + i * 50);
        }
        // ...then pacing at 90 % of what it served.
        pace.shed(&policy, T0 + 2_600);
        let rate = pace.rate_mrps(T0 + 2_600);
        assert_eq!(rate, 18_000);
        // More 529s from requests already on their way do not compound.
        pace.shed(&policy, T0 + 2_610);
        pace.shed(&policy, T0 + 2_620);
        assert_eq!(pace.rate_mrps(T0 + 2_620), 18_000);
        // Paced at 18/s with a burst of 2: the third request waits one interval, the fourth two.
        let times = send_all(&mut pace, T0 + 2_620, 4, Cost::default());
        assert_eq!(times[0], T0 + 2_620);
        assert!(
            times[3] >= T0 + 2_620 + 2 * 55 && times[3] <= T0 + 2_620 + 3 * 56,
            "{times:?}"
        );
        // Each success raises the rate by 0.1 requests a second (5-10 % a second)...
        pace.served(&policy, T0 + 2_700);
        assert_eq!(pace.rate_mrps(T0 + 2_700), 18_100);
        // ...up to a tenth above the busiest second served (20 a second here).
        for i in 1..60 {
            pace.served(&policy, T0 + 2_700 + i * 50);
        }
        assert_eq!(pace.rate_mrps(T0 + 5_650), 22_000);
        // A request that waits keeps the pacing on; with no wait and no shedding for 10 s
        // it ends.
        assert!(pace.rate_mrps(T0 + 2_620 + 10_000) > 0);
        assert_eq!(pace.rate_mrps(T0 + 2_620 + 56 * 3 + 10_000), 0);
        assert!(pace.is_idle(T0 + 2_620 + 56 * 3 + 10_000 + 2_000));
    }

    #[test]
    fn an_outage_stops_the_rate_and_shedding_with_nothing_served_is_not_one() {
        let policy = PacePolicy {
            capacity: true,
            ..PacePolicy::default()
        };
        let mut pace = Pace::default();
        for i in 0..20 {
            pace.served(&policy, T0 + i * 50);
        }
        for i in 0..6 {
            pace.shed(&policy, T0 + 1_000 + i * 120);
            pace.served(&policy, T0 + 1_010 + i * 120);
        }
        assert!(pace.rate_mrps(T0 + 1_600) > 0);
        // Shedding with nothing served while it was watched is the start of an outage.
        let mut dark = Pace::default();
        for i in 0..20 {
            dark.served(&policy, T0 + i * 50);
        }
        for i in 0..10 {
            dark.shed(&policy, T0 + 1_000 + i * 100);
        }
        assert_eq!(dark.rate_mrps(T0 + 2_000), 0);
        pace.outage();
        assert_eq!(pace.rate_mrps(T0 + 1_601), 0);
        // Shedding with nothing served is an outage, not a rate.
        pace.shed(&policy, T0 + 20_000);
        pace.shed(&policy, T0 + 21_000);
        assert_eq!(pace.rate_mrps(T0 + 21_000), 0);
        // The upstream comes back, serves three in a second and sheds: measured, then 90 %
        // of what it served over the window (two in 0.6 s).
        pace.served(&policy, T0 + 32_000);
        for i in 0..5 {
            pace.shed(&policy, T0 + 32_100 + i * 50);
        }
        pace.served(&policy, T0 + 32_400);
        pace.served(&policy, T0 + 32_450);
        pace.shed(&policy, T0 + 32_700);
        assert_eq!(pace.rate_mrps(T0 + 32_700), 2_999);
        // A quiet key's odd 529 (fewer than five in half a second) sets no rate.
        let mut quiet = Pace::default();
        for i in 0..20 {
            quiet.served(&policy, T0 + i * 50);
        }
        for i in 0..4 {
            quiet.shed(&policy, T0 + 1_000 + i * 200);
        }
        assert_eq!(quiet.rate_mrps(T0 + 1_600), 0);
        // Capacity pacing off: shedding never sets a rate.
        let mut off = Pace::default();
        for i in 0..20 {
            off.served(&PacePolicy::default(), T0 + i * 50);
        }
        off.shed(
            &PacePolicy {
                capacity: false,
                ..PacePolicy::default()
            },
            T0 + 1_000,
        );
        off.shed(
            &PacePolicy {
                capacity: false,
                ..PacePolicy::default()
            },
            T0 + 2_000,
        );
        assert_eq!(off.rate_mrps(T0 + 2_000), 0);
    }

    #[test]
    fn headers_are_read_and_near_is_a_quarter_left() {
        let headers = [
            ("anthropic-ratelimit-requests-limit", "50"),
            ("Anthropic-Ratelimit-Requests-Remaining", " 12 "),
            ("anthropic-ratelimit-requests-reset", "2026-12-01T21:00:00Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "lots"),
        ];
        let limits = KeyLimits::from_headers(headers.iter().copied());
        assert_eq!(limits.requests, Some(observed(50, 12)));
        assert_eq!(limits.input_tokens, Some(observed(40_000, 39_000)));
        assert_eq!(limits.output_tokens, None);
        assert!(limits.near(), "12 of 50 is under a quarter");
        assert!(!requests_only(50, 13).near());
        assert!(KeyLimits::from_headers([("content-type", "x")].iter().copied()).is_empty());
    }

    #[test]
    fn a_request_larger_than_the_bucket_goes_with_it_full_and_the_lane_runs_in_debt() {
        let policy = PacePolicy::default();
        let mut pace = Pace::default();
        pace.observe(
            T0,
            &KeyLimits {
                input_tokens: Some(observed(30_000, 30_000)),
                sent_ms: Some(T0),
                ..KeyLimits::default()
            },
        );
        // 57,000 tokens on a key of 30,000 a minute: never refused for its size, it goes when
        // the bucket is full (a second on, as up to 500 tokens of the figure may be gone)...
        let huge = Cost {
            input_tokens: 57_000,
            output_tokens: 0,
        };
        assert_eq!(
            pace.send_time(&policy, T0, huge),
            SendTime::At {
                at_ms: T0 + 1_000,
                reason: PaceReason::KeyLimit(LimitDimension::InputTokens)
            }
        );
        pace.reserve(&policy, T0, T0 + 1_000, huge);
        // ...and the bucket owes 27,000 tokens: a prompt of 3,000 waits until it is back at
        // 3,000, 54 s to repay the debt and 6 s more.
        let small = Cost {
            input_tokens: 3_000,
            output_tokens: 0,
        };
        let at = |pace: &Pace| match pace.send_time(&policy, T0, small) {
            SendTime::At { at_ms, .. } => at_ms,
            SendTime::Now => T0,
        };
        assert_eq!(at(&pace), T0 + 1_000 + 54_000 + 6_000);
        // The upstream's answer says the bucket is empty: it cannot say how deep, so the debt
        // is kept.
        pace.observe(
            T0 + 1_500,
            &KeyLimits {
                input_tokens: Some(observed(30_000, 0)),
                sent_ms: Some(T0 + 1_000),
                ..KeyLimits::default()
            },
        );
        assert_eq!(at(&pace), T0 + 1_000 + 54_000 + 6_000);
        // An answer that shows room is taken at once.
        pace.observe(
            T0 + 2_000,
            &KeyLimits {
                input_tokens: Some(observed(30_000, 20_000)),
                sent_ms: Some(T0 + 2_000),
                ..KeyLimits::default()
            },
        );
        assert_eq!(pace.send_time(&policy, T0 + 2_000, small), SendTime::Now);
        // The fair order charges the whole request to its caller.
        assert_eq!(pace.lane_time_us(T0, huge), 114_000_000);
    }

    #[test]
    fn resets_are_read_as_rfc3339_times() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_ms("2026-12-01T21:00:00Z"), Some(1_796_158_800_000));
        assert_eq!(
            rfc3339_ms("2026-12-01T21:00:00.25Z"),
            Some(1_796_158_800_250)
        );
        assert_eq!(
            rfc3339_ms("2026-12-01T21:00:00+00:00"),
            Some(1_796_158_800_000)
        );
        for bad in [
            "",
            "2026-12-01",
            "2026-13-01T00:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T21:00:00+02:00",
            "2026-12-01T21:00:00.x5Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(rfc3339_ms(bad), None, "{bad}");
        }
        let headers = [
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2026-12-01T21:00:00Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "1000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2026-12-01T22:00:00Z",
            ),
        ];
        let limits = KeyLimits::from_headers(headers.iter().copied());
        // Only an empty dimension's reset says the key has no room until then.
        assert_eq!(limits.empty_until_ms, Some(1_796_158_800_000));
        let small = Cost {
            input_tokens: 500,
            output_tokens: 0,
        };
        assert!(!limits.refused_for_size(small));
        let large = Cost {
            input_tokens: 2_000,
            output_tokens: 0,
        };
        assert!(limits.refused_for_size(large));
    }

    proptest! {
        /// Whatever the arrivals and costs, the requests a lane lets go within any window of
        /// w ms cost at most the limit's share of (w + one minute): the key's bucket never
        /// runs dry from the proxy's own sending.
        #[test]
        fn a_lane_never_lets_a_window_exceed_the_limit(
            limit in 1u64..500,
            remaining in 0u64..500,
            arrivals in prop::collection::vec((0u64..120_000, 0u64..50), 1..200),
        ) {
            let remaining = remaining.min(limit);
            let mut pace = Pace::default();
            pace.observe(T0, &KeyLimits { input_tokens: Some(observed(limit, remaining)), ..KeyLimits::default() });
            let policy = PacePolicy::default();
            let mut arrivals = arrivals;
            arrivals.sort_unstable();
            let mut sent: Vec<(u64, u64)> = Vec::new();
            for (offset, tokens) in arrivals {
                let tokens = tokens.min(limit);
                let cost = Cost { input_tokens: tokens, output_tokens: 0 };
                let now = T0 + offset;
                let at = match pace.send_time(&policy, now, cost) {
                    SendTime::Now => now,
                    SendTime::At { at_ms, .. } => { prop_assert!(at_ms >= now); at_ms }
                };
                pace.reserve(&policy, now, at, cost);
                sent.push((at, tokens));
            }
            sent.sort_unstable();
            let used = limit - remaining;
            let slack = sent.len() as u64;
            for (i, &(start, _)) in sent.iter().enumerate() {
                for &(end, _) in &sent[i..] {
                    let w = end - start;
                    let total: u64 = sent.iter().filter(|(t, _)| *t >= start && *t <= end).map(|(_, c)| c).sum();
                    // One minute's quota plus the refill over w (a microsecond of rounding
                    // per send at most).
                    prop_assert!(total <= limit + (limit * (w + slack)).div_ceil(60_000),
                        "{total} sent in {w} ms, limit {limit}/min");
                }
                // From the observation on, what the upstream had already counted is taken off.
                let total: u64 = sent.iter().filter(|(t, _)| *t <= start).map(|(_, c)| c).sum();
                prop_assert!(total + used <= limit + (limit * (start - T0 + slack)).div_ceil(60_000),
                    "{total} sent by {start} with {used} already used, limit {limit}/min");
            }
        }
    }
}
