//! One caller's limiter state and the decisions on it: admit, settle, snapshot.
//!
//! The Durable Object shell loads a [`LimiterState`], calls one method with the tier's
//! limits and the current time, and stores the state again; every decision is a pure function
//! of those. The state is a few numbers per dimension plus the records of leases not yet
//! settled, so it stays small enough to rewrite on every request.
//!
//! Four rules keep it honest:
//! - Admission is all-or-nothing: a request is charged in every dimension or in none.
//! - No request is refused for its size alone, as Anthropic refuses none: one that asks more
//!   than a whole bucket (a prompt above `input_tpm`, a `max_tokens` above `output_tpm`) is
//!   admitted once that bucket is full and reserves all of it; its settlement charges what it
//!   really used, which may leave the bucket in debt that the next requests wait out.
//! - Settlement never creates capacity. A refund needs the lease record (so it happens at
//!   most once), and it never lowers a bucket below what the charges admitted *after* the
//!   reservation would have left on their own (each record tracks that floor); without it, a
//!   long request settling after its bucket refilled would erase the charges of newer ones.
//!   Usage above the reservation is always charged, even without a record.
//! - The clock only moves forward: a `now_ms` earlier than the last decision is read as that
//!   decision's time (and retry-afters include the difference), so a wobbling clock can
//!   neither refill a bucket twice nor make a retry-after short.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::durable::advance_clock;

use super::bucket::{self, Level};
use super::quota::{QuotaCharge, QuotaDenial, QuotaHold, QuotaStanding, QuotaState};
use crate::config::TierLimits;

/// The longest lease a request can hold: one hour. Longer `lease_ms` values are cut to this,
/// so a bogus value cannot hold a slot for ever.
pub const MAX_LEASE_MS: u64 = 3_600_000;

/// The longest retry-after of a concurrency denial. A slot frees when any request of this
/// caller finishes, which cannot be foreseen; the earliest lease expiry is only a bound, so
/// the caller is told to look again within a second.
pub const CONCURRENCY_RETRY_CAP_MS: u64 = 1_000;

/// How long a lease record outlives its lease. An expired lease no longer holds a slot, but
/// its record stays this long so that a late settlement (a stream that outlasted its lease)
/// can still return the unused part of its reservation, once.
pub const LEASE_MEMORY_MS: u64 = 15 * 60_000;

/// Lease records kept at least, whatever the concurrency limit (more when the limit is
/// higher): room for a hot caller's requests in flight, the settlements on their way and the
/// tickets its isolates hold (`limits::credit`), at some 100 bytes each of a state rewritten on
/// every call. When full, the record dropped first is the earliest expired one, so a limited
/// caller never loses an active lease; a dropped record's settlement only charges extra usage.
pub const MIN_LEASE_RECORDS: usize = 256;

pub use crate::durable::MAX_CLOCK_LEAD_MS;

/// One limited quantity of a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Requests per minute.
    Rpm,
    /// Input tokens per minute.
    InputTpm,
    /// Output tokens (`max_tokens`) per minute.
    OutputTpm,
    /// Requests in flight at once.
    Concurrency,
}

crate::json::deserialize_by_name!(Dimension {
    Rpm = "rpm",
    InputTpm = "input_tpm",
    OutputTpm = "output_tpm",
    Concurrency = "concurrency",
});

impl Dimension {
    /// Every dimension, in the order of headers and snapshots.
    pub const ALL: [Dimension; 4] = [
        Dimension::Rpm,
        Dimension::InputTpm,
        Dimension::OutputTpm,
        Dimension::Concurrency,
    ];

    /// The name used in `RATE_LIMITS`, headers and messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Rpm => "rpm",
            Dimension::InputTpm => "input_tpm",
            Dimension::OutputTpm => "output_tpm",
            Dimension::Concurrency => "concurrency",
        }
    }

    /// This dimension's limit in a tier; `None` is unlimited.
    #[must_use]
    pub fn limit(self, limits: &TierLimits) -> Option<NonZeroU32> {
        match self {
            Dimension::Rpm => limits.rpm,
            Dimension::InputTpm => limits.input_tpm,
            Dimension::OutputTpm => limits.output_tpm,
            Dimension::Concurrency => limits.concurrency,
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an admission counts its request against `rpm`, or it was counted already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    New,
    Counted,
}

/// What a request asks to reserve before it is forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionRequest {
    /// Estimated input tokens. Deliberately high; an estimate above `input_tpm` waits for a
    /// full bucket and reserves the whole quota instead of being refused.
    pub input_tokens: u64,
    /// The request's `max_tokens`; above `output_tpm`, the same as for input.
    pub output_tokens: u64,
    /// How long the concurrency slot is held if no settlement comes, from 1 ms to
    /// [`MAX_LEASE_MS`] (values outside are clamped).
    pub lease_ms: u64,
    /// The worst case against the daily and monthly quotas (see `limits::quota`); `None`
    /// when the tier sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaCharge>,
}

/// What an admitted request was charged. The shell keeps it and hands it back to
/// [`LimiterState::settle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Identifies the lease. Assigned by the state, increasing over time.
    pub lease_id: u64,
    /// Input tokens charged: the estimate, capped at `input_tpm`; 0 when unlimited.
    pub input_tokens: u64,
    /// Output tokens charged: `max_tokens`, capped at `output_tpm`; 0 when unlimited.
    pub output_tokens: u64,
    /// When the concurrency slot frees by itself, in ms since the Unix epoch.
    pub lease_expires_ms: u64,
    /// What the quotas reserved, settled with the lease record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaHold>,
}

impl Reservation {
    /// What a request-only admission reserves: nothing (its lease id matches no record).
    pub const NOTHING: Reservation = Reservation {
        lease_id: 0,
        input_tokens: 0,
        output_tokens: 0,
        lease_expires_ms: 0,
        quota: None,
    };
}

/// The tokens a finished request used, as its settlement charges them (what an answer
/// reports as it passes is [`crate::stream::sse::Usage`]). `None` is unknown (the stream broke
/// before the usage arrived): the reservation is kept as charged, which is the safe side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Used {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
}

impl Used {
    /// Nothing known: keep the reservation as charged.
    pub const UNKNOWN: Used = Used {
        input_tokens: None,
        output_tokens: None,
    };
}

/// A request that must wait. This is data, not an error: the shell answers 429 with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    /// Exact wait in ms. For rpm and token dimensions, the same request sent this much later
    /// (with no other traffic in between) is admitted, and one sent 1 ms earlier is not. For
    /// concurrency it is the earliest lease expiry, capped at [`CONCURRENCY_RETRY_CAP_MS`].
    pub retry_after_ms: u64,
    /// The binding dimension: the one with the longest wait (the first of
    /// [`Dimension::ALL`] on a tie).
    pub dimension: Dimension,
    /// That dimension's limit.
    pub limit: u64,
    /// What that dimension has left now (whole tokens, requests or slots).
    pub remaining: u64,
}

/// The answer to [`LimiterState::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Charged in every dimension; forward the request, then settle this reservation.
    Admitted(Reservation),
    /// Nothing charged; retry later.
    Denied(Denial),
    /// Nothing charged: a daily or monthly quota has no room until its window resets.
    Exhausted(QuotaDenial),
}

// Read as the derive reads it (the same forms, the same errors), with the variant's name read
// by the one shared decoder (`json::VariantSeed`).
impl<'de> Deserialize<'de> for Admission {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["admitted", "denied", "exhausted"];
        struct Reading;
        impl<'de> serde::de::Visitor<'de> for Reading {
            type Value = Admission;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("enum Admission")
            }
            fn visit_enum<A: serde::de::EnumAccess<'de>>(
                self,
                data: A,
            ) -> Result<Admission, A::Error> {
                use serde::de::VariantAccess;
                match data.variant_seed(crate::json::VariantSeed(NAMES))? {
                    (0, variant) => variant.newtype_variant().map(Admission::Admitted),
                    (1, variant) => variant.newtype_variant().map(Admission::Denied),
                    (_, variant) => variant.newtype_variant().map(Admission::Exhausted),
                }
            }
        }
        deserializer.deserialize_enum("Admission", NAMES, Reading)
    }
}

impl Admission {
    /// The reservation, when admitted.
    #[must_use]
    pub fn reservation(&self) -> Option<&Reservation> {
        match self {
            Admission::Admitted(reservation) => Some(reservation),
            Admission::Denied(_) | Admission::Exhausted(_) => None,
        }
    }
}

/// What a settlement did, for logs. Amounts are nominal: a refund never lowers a bucket
/// below empty or below what later charges hold, so less may actually come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Settlement {
    /// Whether the lease record was found (and removed). `false`: already settled, or
    /// forgotten; then nothing is returned and only extra usage is charged.
    pub lease_found: bool,
    pub returned_input_tokens: u64,
    pub returned_output_tokens: u64,
    pub extra_input_tokens: u64,
    pub extra_output_tokens: u64,
}

/// One configured dimension as of now, for response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimensionStatus {
    pub dimension: Dimension,
    pub limit: u64,
    /// Whole tokens, requests or free slots available now.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again if nothing else is charged. For
    /// concurrency: until the last current lease expires (slots usually free sooner, when
    /// requests finish).
    pub reset_ms: u64,
}

/// A lease not yet settled (or expired less than [`LEASE_MEMORY_MS`] ago).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    id: u64,
    /// Holds a concurrency slot until then.
    expires_ms: u64,
    /// The input level that the charges admitted after this lease would have left on their
    /// own: the floor a refund of this lease may not go below. An upper bound, never lower
    /// than the exact value, so a refund is never too generous.
    #[serde(default)]
    input_after: Level,
    /// The same for output tokens.
    #[serde(default)]
    output_after: Level,
    /// The same for requests: a ticket given back unused returns its request, never below
    /// this.
    #[serde(default)]
    requests_after: Level,
}

/// One caller's limits in use. `Default` is a fresh caller: every bucket full.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LimiterState {
    /// Time of the last decision, ms since the Unix epoch; never moves backwards.
    clock_ms: u64,
    requests: Level,
    input: Level,
    output: Level,
    /// In admission order.
    leases: Vec<Lease>,
    next_lease_id: u64,
    /// The daily and monthly quotas' spending (absent from states stored before them).
    #[serde(skip_serializing_if = "QuotaState::is_empty")]
    quota: QuotaState,
}

/// What an admission of `request` reserves in a token `dimension` of these limits (0 for
/// `rpm` and `concurrency`, which count requests, and for an unlimited dimension): the input
/// estimate or `max_tokens`, capped at the whole bucket.
pub(crate) fn reserved_tokens(
    limits: &TierLimits,
    request: &AdmissionRequest,
    dimension: Dimension,
) -> u64 {
    let (quota, tokens) = match dimension {
        Dimension::InputTpm => (limits.input_tpm, request.input_tokens),
        Dimension::OutputTpm => (limits.output_tpm, request.output_tokens),
        Dimension::Rpm | Dimension::Concurrency => (None, 0),
    };
    quota.map_or(0, |quota| bucket::fitting(quota, tokens))
}

/// Whether `request` asks more than a whole bucket of input or output tokens: it then reserves
/// a full bucket and may settle into debt.
pub(crate) fn exceeds_a_bucket(limits: &TierLimits, request: &AdmissionRequest) -> bool {
    let over = |quota: Option<NonZeroU32>, tokens: u64| {
        quota.is_some_and(|quota| tokens > u64::from(quota.get()))
    };
    over(limits.input_tpm, request.input_tokens) || over(limits.output_tpm, request.output_tokens)
}

fn refilled(level: Level, quota: Option<NonZeroU32>, elapsed_ms: u64) -> Level {
    match quota {
        Some(quota) => level.drained(quota, elapsed_ms),
        // An unlimited dimension keeps no debt: limiting it later starts from a full bucket.
        None => Level::EMPTY,
    }
}

/// Keeps the tightest denial: the longest wait, the earliest dimension on a tie.
fn bind(binding: &mut Option<Denial>, candidate: Denial) {
    if candidate.retry_after_ms > 0
        && binding.is_none_or(|current| candidate.retry_after_ms > current.retry_after_ms)
    {
        *binding = Some(candidate);
    }
}

/// Applies one token dimension of a settlement; returns (returned, extra). `leases` are the
/// other records, of which the first `earlier` were admitted before this reservation.
fn settle_dimension(
    level: &mut Level,
    leases: &mut [Lease],
    earlier: usize,
    floor_of: fn(&mut Lease) -> &mut Level,
    record_floor: Option<Level>,
    charged: u64,
    actual: Option<u64>,
) -> (u64, u64) {
    let actual = actual.unwrap_or(charged);
    if let Some(extra) = actual.checked_sub(charged).filter(|extra| *extra > 0) {
        // Charged now, as a new charge (later than at admission, so never more generous):
        // every other lease counts it among the charges made after it.
        *level = level.charged(extra);
        for lease in leases {
            let floor = floor_of(lease);
            *floor = floor.charged(extra).at_most(*level);
        }
        (0, extra)
    } else if let (Some(record_floor), Some(refund)) = (record_floor, charged.checked_sub(actual)) {
        // The level is max(chains through this reservation, chains after it); taking the
        // refund off the first kind only is max(level − refund, record_floor). The floors of
        // leases admitted before it contain this reservation the same way; later ones don't.
        *level = level.refunded(refund, record_floor);
        for lease in leases.iter_mut().take(earlier) {
            let floor = floor_of(lease);
            *floor = floor.refunded(refund, record_floor).at_most(*level);
        }
        (refund, 0)
    } else {
        (0, 0)
    }
}

/// Removes and returns the lease at `index`, if there is one.
fn take(leases: &mut Vec<Lease>, index: Option<usize>) -> Option<Lease> {
    let index = index.filter(|index| *index < leases.len())?;
    Some(leases.remove(index))
}

impl LimiterState {
    /// A fresh caller: every bucket full, nothing in flight.
    #[must_use]
    pub fn new() -> LimiterState {
        LimiterState::default()
    }

    /// Moves the state's clock to `now_ms` (never backwards), refills every bucket and
    /// forgets old lease records. Returns the state's time, which is `now_ms` or later.
    fn advance(&mut self, limits: &TierLimits, now_ms: u64) -> u64 {
        let mut before = self.clock_ms;
        if advance_clock(&mut self.clock_ms, now_ms).is_some() {
            // The clock jumped back, or the state came from a clock far ahead: start over
            // from now, without refilling the gap, and keep leases from living too long.
            before = self.clock_ms;
            let latest = now_ms.saturating_add(MAX_LEASE_MS);
            for lease in &mut self.leases {
                lease.expires_ms = lease.expires_ms.min(latest);
            }
        }
        let now = self.clock_ms;
        let elapsed = now.saturating_sub(before);
        self.requests = refilled(self.requests, limits.rpm, elapsed);
        self.input = refilled(self.input, limits.input_tpm, elapsed);
        self.output = refilled(self.output, limits.output_tpm, elapsed);
        for lease in &mut self.leases {
            lease.input_after =
                refilled(lease.input_after, limits.input_tpm, elapsed).at_most(self.input);
            lease.output_after =
                refilled(lease.output_after, limits.output_tpm, elapsed).at_most(self.output);
            lease.requests_after =
                refilled(lease.requests_after, limits.rpm, elapsed).at_most(self.requests);
        }
        self.leases
            .retain(|lease| lease.expires_ms.saturating_add(LEASE_MEMORY_MS) > now);
        now
    }

    /// Leases holding a concurrency slot at `now`: how many, and the earliest and latest
    /// expiry.
    fn holding(&self, now: u64) -> (u64, Option<u64>, Option<u64>) {
        let active = self.leases.iter().filter(|lease| lease.expires_ms > now);
        active.fold((0, None, None), |(count, earliest, latest), lease| {
            let at = lease.expires_ms;
            (
                count + 1_u64,
                Some(earliest.map_or(at, |e: u64| e.min(at))),
                Some(latest.map_or(at, |l: u64| l.max(at))),
            )
        })
    }

    /// Decides whether a request may go now, and charges it if so.
    ///
    /// One request counts against `rpm`, the input estimate against `input_tpm`, `max_tokens`
    /// against `output_tpm` and one slot against `concurrency`. A token count above its
    /// quota reserves the whole bucket, so it is admitted once that bucket is full (a debt
    /// waited out first). If any dimension lacks room, nothing is charged and the [`Denial`]
    /// names the longest wait.
    #[must_use]
    pub fn admit(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        request: &AdmissionRequest,
    ) -> Admission {
        self.admit_as(limits, now_ms, request, Arrival::New)
    }

    /// [`LimiterState::admit`] for a request already counted against `rpm` while its body
    /// was arriving ([`LimiterState::admit_request_only`]): it is not counted twice.
    #[must_use]
    pub fn admit_counted(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        request: &AdmissionRequest,
    ) -> Admission {
        self.admit_as(limits, now_ms, request, Arrival::Counted)
    }

    fn admit_as(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        request: &AdmissionRequest,
        arrival: Arrival,
    ) -> Admission {
        let request_cost = u64::from(limits.rpm.is_some() && arrival == Arrival::New);
        let now = self.advance(limits, now_ms);
        let input_cost = reserved_tokens(limits, request, Dimension::InputTpm);
        let output_cost = reserved_tokens(limits, request, Dimension::OutputTpm);
        let costs = (request_cost, input_cost, output_cost);
        // Reserved on a copy, kept only if every per-minute bucket admits too.
        let mut quota = self.quota;
        let hold = match request.quota.filter(|_| limits.quotas.any()) {
            Some(mut charge) => {
                // Counted against `rpd` with `rpm` while its body arrived: not again.
                if arrival == Arrival::Counted {
                    charge.requests = 0;
                }
                match quota.reserve(&limits.quotas, now, charge) {
                    Ok(hold) => Some(hold),
                    Err(mut refusal) => {
                        refusal.retry_after_ms = refusal
                            .retry_after_ms
                            .saturating_add(now.saturating_sub(now_ms));
                        return Admission::Exhausted(refusal);
                    }
                }
            }
            None => None,
        };
        if let Some(mut denial) = self.binding_denial(limits, now, costs) {
            // The state's clock may be ahead of the caller's; the wait counts from the latter.
            denial.retry_after_ms = denial
                .retry_after_ms
                .saturating_add(now.saturating_sub(now_ms));
            return Admission::Denied(denial);
        }
        self.quota = quota;
        self.charge(request_cost, input_cost, output_cost);
        self.make_room_for_a_lease(limits, now);
        let (lease_id, lease_expires_ms) = self.open_lease(now, request.lease_ms);
        Admission::Admitted(Reservation {
            lease_id,
            input_tokens: input_cost,
            output_tokens: output_cost,
            lease_expires_ms,
            quota: hold,
        })
    }

    /// The dimension that holds a request of these costs back longest at `now`, if any lacks
    /// room.
    fn binding_denial(
        &self,
        limits: &TierLimits,
        now: u64,
        (request_cost, input_cost, output_cost): (u64, u64, u64),
    ) -> Option<Denial> {
        let buckets = [
            (Dimension::Rpm, limits.rpm, self.requests, request_cost),
            (
                Dimension::InputTpm,
                limits.input_tpm,
                self.input,
                input_cost,
            ),
            (
                Dimension::OutputTpm,
                limits.output_tpm,
                self.output,
                output_cost,
            ),
        ];
        let mut binding = None;
        for (dimension, quota, level, cost) in buckets {
            let Some(quota) = quota else { continue };
            let limit = u64::from(quota.get());
            let wait = level.wait_ms(quota, cost);
            let remaining = level.remaining(quota);
            bind(
                &mut binding,
                Denial {
                    retry_after_ms: wait,
                    dimension,
                    limit,
                    remaining,
                },
            );
        }
        if let Some(slots) = limits.concurrency {
            let limit = u64::from(slots.get());
            let (held, earliest, _) = self.holding(now);
            if let Some(earliest) = earliest.filter(|_| held >= limit) {
                let wait = earliest.saturating_sub(now).min(CONCURRENCY_RETRY_CAP_MS);
                let remaining = limit.saturating_sub(held);
                let dimension = Dimension::Concurrency;
                bind(
                    &mut binding,
                    Denial {
                        retry_after_ms: wait,
                        dimension,
                        limit,
                        remaining,
                    },
                );
            }
        }
        binding
    }

    /// Charges an admitted request in every dimension the tier counts (`request_cost` is 0
    /// for a request counted while its body arrived), and the same charge into every open
    /// lease's floor.
    fn charge(&mut self, request_cost: u64, input_cost: u64, output_cost: u64) {
        self.requests = self.requests.charged(request_cost);
        self.input = self.input.charged(input_cost);
        self.output = self.output.charged(output_cost);
        for lease in &mut self.leases {
            lease.input_after = lease.input_after.charged(input_cost).at_most(self.input);
            lease.output_after = lease.output_after.charged(output_cost).at_most(self.output);
            lease.requests_after = lease
                .requests_after
                .charged(request_cost)
                .at_most(self.requests);
        }
    }

    /// Records a new lease of `lease_ms` (clamped) from `now`: its id and when it expires.
    fn open_lease(&mut self, now: u64, lease_ms: u64) -> (u64, u64) {
        // Ids grow with time, so a state that is lost and started over does not reuse the
        // ids of reservations still out there (until the year 2255, below 2^53).
        let lease_id = self.next_lease_id.max(now.saturating_mul(1000));
        self.next_lease_id = lease_id.saturating_add(1);
        let lease_expires_ms = now.saturating_add(lease_ms.clamp(1, MAX_LEASE_MS));
        self.leases.push(Lease {
            id: lease_id,
            expires_ms: lease_expires_ms,
            input_after: Level::EMPTY,
            output_after: Level::EMPTY,
            requests_after: Level::EMPTY,
        });
        (lease_id, lease_expires_ms)
    }

    /// Charges one request against `rpm` and nothing else: no tokens, no concurrency slot,
    /// so nothing to settle afterwards (`count_tokens` and the model listings, which are cheap
    /// and short but must not be free to flood). `Some(denial)` when `rpm` has no room; then
    /// nothing is charged.
    #[must_use]
    pub fn admit_request_only(&mut self, limits: &TierLimits, now_ms: u64) -> Option<Denial> {
        let now = self.advance(limits, now_ms);
        let quota = limits.rpm?;
        let wait = self.requests.wait_ms(quota, 1);
        if wait > 0 {
            return Some(Denial {
                // The state's clock may be ahead of the caller's; the wait counts from the latter.
                retry_after_ms: wait.saturating_add(now.saturating_sub(now_ms)),
                dimension: Dimension::Rpm,
                limit: u64::from(quota.get()),
                remaining: self.requests.remaining(quota),
            });
        }
        self.requests = self.requests.charged(1);
        for lease in &mut self.leases {
            lease.requests_after = lease.requests_after.charged(1).at_most(self.requests);
        }
        None
    }

    /// [`LimiterState::admit_request_only`] with the request counted against `rpd` too, in the
    /// same decision: refused by either, charged in neither. Nothing is settled afterwards.
    #[must_use]
    pub fn admit_request(&mut self, limits: &TierLimits, now_ms: u64) -> Admission {
        let mut quota = self.quota;
        if limits.quotas.rpd.is_some() {
            let one = QuotaCharge {
                requests: 1,
                ..QuotaCharge::default()
            };
            let at = now_ms.max(self.clock_ms);
            if let Err(mut refusal) = quota.reserve(&limits.quotas, at, one) {
                refusal.retry_after_ms = refusal
                    .retry_after_ms
                    .saturating_add(at.saturating_sub(now_ms));
                return Admission::Exhausted(refusal);
            }
        }
        match self.admit_request_only(limits, now_ms) {
            Some(denial) => Admission::Denied(denial),
            None => {
                self.quota = quota;
                Admission::Admitted(Reservation::NOTHING)
            }
        }
    }

    /// The quotas' standing at `now_ms`, every limited dimension (none when the tier sets no
    /// quota).
    #[must_use]
    pub fn quota_standing(&self, limits: &TierLimits, now_ms: u64) -> Vec<QuotaStanding> {
        self.quota
            .standing(&limits.quotas, now_ms.max(self.clock_ms))
    }

    /// The most lease records kept for these limits.
    fn lease_cap(limits: &TierLimits) -> usize {
        let slots = limits.concurrency.map_or(0, NonZeroU32::get);
        usize::try_from(slots)
            .unwrap_or(usize::MAX)
            .max(MIN_LEASE_RECORDS)
    }

    /// Lease records that can be added before one must be dropped.
    pub(crate) fn lease_room(&self, limits: &TierLimits) -> usize {
        LimiterState::lease_cap(limits).saturating_sub(self.leases.len())
    }

    /// Gives back a ticket that admitted nothing (its `reservation`, and the `requests` it
    /// charged against `rpm`): its request (when it took one), its tokens and its slot, as if
    /// it had never been granted (never below what later charges hold, as for any refund).
    /// Needs the lease record, so it happens at most once; whether it was found.
    pub fn release(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        reservation: &Reservation,
        requests: u64,
    ) -> bool {
        self.advance(limits, now_ms);
        let found = self
            .leases
            .iter()
            .position(|lease| lease.id == reservation.lease_id);
        let Some(record) = take(&mut self.leases, found) else {
            return false;
        };
        let earlier = found.unwrap_or(0);
        let unused = Some(0);
        if limits.rpm.is_some() {
            settle_dimension(
                &mut self.requests,
                &mut self.leases,
                earlier,
                |lease| &mut lease.requests_after,
                Some(record.requests_after),
                requests,
                unused,
            );
        }
        if limits.input_tpm.is_some() {
            settle_dimension(
                &mut self.input,
                &mut self.leases,
                earlier,
                |lease| &mut lease.input_after,
                Some(record.input_after),
                reservation.input_tokens,
                unused,
            );
        }
        if limits.output_tpm.is_some() {
            settle_dimension(
                &mut self.output,
                &mut self.leases,
                earlier,
                |lease| &mut lease.output_after,
                Some(record.output_after),
                reservation.output_tokens,
                unused,
            );
        }
        true
    }

    /// Drops lease records until one more fits: expired ones first (earliest expiry first),
    /// active ones only when concurrency is unlimited.
    fn make_room_for_a_lease(&mut self, limits: &TierLimits, now: u64) {
        let cap = LimiterState::lease_cap(limits);
        while self.leases.len() >= cap {
            let victim = self
                .leases
                .iter()
                .enumerate()
                .min_by_key(|(_, lease)| (lease.expires_ms > now, lease.expires_ms))
                .map(|(index, _)| index);
            if take(&mut self.leases, victim).is_none() {
                break;
            }
        }
    }

    /// Settles a finished request with its real usage: frees its concurrency slot, returns
    /// what was reserved and not used, charges what was used beyond the reservation.
    ///
    /// Idempotent in what matters: a second settlement of the same reservation finds no
    /// lease record and returns nothing (it would charge extra usage again, erring on the
    /// safe side). The limits may differ from those at admission: a dimension unlimited now
    /// is skipped, one limited since is charged the real usage.
    pub fn settle(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        reservation: &Reservation,
        actual: Used,
    ) -> Settlement {
        self.settle_priced(limits, now_ms, reservation, actual, None)
    }

    /// [`LimiterState::settle`], with what the answer cost in micro-dollars (`None`:
    /// unknown, the reservation's worst case stays charged). The quotas' hold is settled
    /// once, with its lease record: a second settlement, or one whose record was dropped,
    /// leaves the quotas as they are (charged at least what was used).
    pub fn settle_priced(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        reservation: &Reservation,
        actual: Used,
        cost_micros: Option<u64>,
    ) -> Settlement {
        self.advance(limits, now_ms);
        let found = self
            .leases
            .iter()
            .position(|lease| lease.id == reservation.lease_id);
        let record = take(&mut self.leases, found);
        // Leases admitted before this one (refunds need the record, so the rest is moot).
        let earlier = found.unwrap_or(0);
        let mut settlement = Settlement {
            lease_found: record.is_some(),
            ..Settlement::default()
        };
        if let Some(hold) = reservation.quota.filter(|_| record.is_some()) {
            let reserved = hold.reserved;
            let used = QuotaCharge {
                requests: reserved.requests,
                input_tokens: actual.input_tokens.unwrap_or(reserved.input_tokens),
                output_tokens: actual.output_tokens.unwrap_or(reserved.output_tokens),
                micros: cost_micros.unwrap_or(reserved.micros),
            };
            self.quota.settle(&hold, used);
        }
        if limits.input_tpm.is_some() {
            (
                settlement.returned_input_tokens,
                settlement.extra_input_tokens,
            ) = settle_dimension(
                &mut self.input,
                &mut self.leases,
                earlier,
                |lease| &mut lease.input_after,
                record.map(|lease| lease.input_after),
                reservation.input_tokens,
                actual.input_tokens,
            );
        }
        if limits.output_tpm.is_some() {
            (
                settlement.returned_output_tokens,
                settlement.extra_output_tokens,
            ) = settle_dimension(
                &mut self.output,
                &mut self.leases,
                earlier,
                |lease| &mut lease.output_after,
                record.map(|lease| lease.output_after),
                reservation.output_tokens,
                actual.output_tokens,
            );
        }
        settlement
    }

    /// Holds the lease `lease_id` for another `lease_ms` from `now_ms` (clamped as at
    /// admission): a streaming answer still moving renews its slot, so a request the runtime
    /// drops, settlement and all, frees its slot a short lease after it stopped moving.
    /// Renewing may shorten a lease. Whether the lease was still held.
    pub fn renew(
        &mut self,
        limits: &TierLimits,
        now_ms: u64,
        lease_id: u64,
        lease_ms: u64,
    ) -> bool {
        let now = self.advance(limits, now_ms);
        let until = now.saturating_add(lease_ms.clamp(1, MAX_LEASE_MS));
        match self
            .leases
            .iter_mut()
            .find(|lease| lease.id == lease_id && lease.expires_ms > now)
        {
            Some(lease) => {
                lease.expires_ms = until;
                true
            }
            None => false,
        }
    }

    /// Every configured dimension as of `now_ms`, in the order of [`Dimension::ALL`];
    /// unlimited dimensions are left out. Does not change the state.
    #[must_use]
    pub fn snapshot(&self, limits: &TierLimits, now_ms: u64) -> Vec<DimensionStatus> {
        let mut state = self.clone();
        let now = state.advance(limits, now_ms);
        let lead = now.saturating_sub(now_ms);
        let buckets = [
            (Dimension::Rpm, limits.rpm, state.requests),
            (Dimension::InputTpm, limits.input_tpm, state.input),
            (Dimension::OutputTpm, limits.output_tpm, state.output),
        ];
        let mut statuses = Vec::with_capacity(4);
        for (dimension, quota, level) in buckets {
            let Some(quota) = quota else { continue };
            statuses.push(DimensionStatus {
                dimension,
                limit: u64::from(quota.get()),
                remaining: level.remaining(quota),
                reset_ms: lead.saturating_add(level.full_in_ms(quota)),
            });
        }
        if let Some(slots) = limits.concurrency {
            let limit = u64::from(slots.get());
            let (held, _, latest) = state.holding(now);
            statuses.push(DimensionStatus {
                dimension: Dimension::Concurrency,
                limit,
                remaining: limit.saturating_sub(held),
                reset_ms: latest.map_or(0, |latest| latest.saturating_sub(now_ms)),
            });
        }
        statuses
    }

    /// Whether the state is, as of `now_ms`, as good as a fresh one (every bucket full, no
    /// lease records): the shell may then delete it instead of storing it.
    #[must_use]
    pub fn is_idle(&self, limits: &TierLimits, now_ms: u64) -> bool {
        let mut state = self.clone();
        state.advance(limits, now_ms);
        state.requests == Level::EMPTY
            && state.input == Level::EMPTY
            && state.output == Level::EMPTY
            && state.leases.is_empty()
            && state.quota.spent_until(&limits.quotas, now_ms).is_none()
    }

    /// Milliseconds from `now_ms` until [`is_idle`](Self::is_idle) becomes true if nothing
    /// else happens: every bucket full and every lease record forgotten (records outlive
    /// their lease by [`LEASE_MEMORY_MS`]). The time for an alarm that deletes an idle state.
    #[must_use]
    pub fn idle_in_ms(&self, limits: &TierLimits, now_ms: u64) -> u64 {
        let mut state = self.clone();
        let now = state.advance(limits, now_ms);
        let buckets = [
            (limits.rpm, state.requests),
            (limits.input_tpm, state.input),
            (limits.output_tpm, state.output),
        ];
        let full_in = buckets
            .into_iter()
            .filter_map(|(quota, level)| quota.map(|quota| level.full_in_ms(quota)))
            .max()
            .unwrap_or(0);
        let forgotten_at = state
            .leases
            .iter()
            .map(|lease| lease.expires_ms.saturating_add(LEASE_MEMORY_MS))
            .max()
            .unwrap_or(now);
        let spent_until = state.quota.spent_until(&limits.quotas, now).unwrap_or(now);
        now.saturating_add(full_in)
            .max(forgotten_at)
            .max(spent_until)
            .saturating_sub(now_ms)
    }

    /// The levels of (rpm, input, output), for the tests' reference ledgers.
    #[cfg(test)]
    pub(crate) fn levels(&self) -> [Level; 3] {
        [self.requests, self.input, self.output]
    }

    /// The levels as of `now_ms`, refilled as a decision then would.
    #[cfg(test)]
    pub(crate) fn levels_at(&self, limits: &TierLimits, now_ms: u64) -> [Level; 3] {
        let mut state = self.clone();
        state.advance(limits, now_ms);
        state.levels()
    }

    #[cfg(test)]
    pub(crate) fn lease_records(&self) -> usize {
        self.leases.len()
    }
}

#[cfg(test)]
mod renew_tests {
    use std::num::NonZeroU32;

    use super::*;

    #[test]
    fn a_renewed_lease_holds_its_slot_and_an_unrenewed_one_frees_it() {
        let limits = TierLimits {
            concurrency: NonZeroU32::new(1),
            ..TierLimits::default()
        };
        let t0 = 1_764_000_000_000;
        let mut state = LimiterState::new();
        let ask = AdmissionRequest {
            input_tokens: 0,
            output_tokens: 0,
            lease_ms: 100_000,
            quota: None,
        };
        let Admission::Admitted(held) = state.admit(&limits, t0, &ask) else {
            panic!("admitted")
        };
        // Renewed to a short lease, again and again while the answer moves...
        for i in 1..=5 {
            assert!(state.renew(&limits, t0 + i * 2_000, held.lease_id, 7_000));
            assert!(matches!(
                state.admit(&limits, t0 + i * 2_000, &ask),
                Admission::Denied(_)
            ));
        }
        // ...then no more renewals: the slot is free 7 s after the last one, not 100 s.
        assert!(matches!(
            state.admit(&limits, t0 + 10_000 + 6_999, &ask),
            Admission::Denied(_)
        ));
        assert!(matches!(
            state.admit(&limits, t0 + 10_000 + 7_000, &ask),
            Admission::Admitted(_)
        ));
        // An expired lease is not brought back.
        assert!(!state.renew(&limits, t0 + 20_000, held.lease_id, 7_000));
        assert!(!state.renew(&limits, t0 + 20_000, 999, 7_000));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_764_000_000_000;

    fn limits(rpm: u32, input_tpm: u32, output_tpm: u32, concurrency: u32) -> TierLimits {
        TierLimits {
            rpm: NonZeroU32::new(rpm),
            input_tpm: NonZeroU32::new(input_tpm),
            output_tpm: NonZeroU32::new(output_tpm),
            concurrency: NonZeroU32::new(concurrency),
            quotas: Default::default(),
        }
    }

    fn request(input_tokens: u64, output_tokens: u64) -> AdmissionRequest {
        AdmissionRequest {
            input_tokens,
            output_tokens,
            lease_ms: 600_000,
            quota: None,
        }
    }

    fn admitted(admission: Admission) -> Reservation {
        match admission {
            Admission::Admitted(reservation) => reservation,
            other => panic!("expected admission, got {other:?}"),
        }
    }

    fn denied(admission: Admission) -> Denial {
        match admission {
            Admission::Denied(denial) => denial,
            other => panic!("expected denial, got {other:?}"),
        }
    }

    fn status(state: &LimiterState, l: &TierLimits, now: u64, d: Dimension) -> DimensionStatus {
        *state
            .snapshot(l, now)
            .iter()
            .find(|s| s.dimension == d)
            .unwrap()
    }

    #[test]
    fn a_fresh_key_bursts_its_minute_then_refills_at_the_quota_rate() {
        let l = limits(50, 0, 0, 0);
        let mut state = LimiterState::new();
        for _ in 0..50 {
            admitted(state.admit(&l, T0, &request(0, 0)));
        }
        let denial = denied(state.admit(&l, T0, &request(0, 0)));
        assert_eq!(
            denial,
            Denial {
                retry_after_ms: 1200,
                dimension: Dimension::Rpm,
                limit: 50,
                remaining: 0
            }
        );
        // One request every 1.2 s from then on.
        for k in 1..=10 {
            let at = T0 + 1200 * k;
            denied(state.admit(&l, at - 1, &request(0, 0)));
            admitted(state.admit(&l, at, &request(0, 0)));
        }
    }

    #[test]
    fn token_buckets_burst_and_refill_the_same_way() {
        let l = limits(0, 40_000, 8_000, 0);
        let mut state = LimiterState::new();
        admitted(state.admit(&l, T0, &request(40_000, 8_000)));
        let denial = denied(state.admit(&l, T0, &request(1, 1)));
        // 40 000 / min refills 1 token in 1.5 ms; 8 000 / min in 7.5 ms: output binds.
        assert_eq!(denial.dimension, Dimension::OutputTpm);
        assert_eq!(denial.retry_after_ms, 8);
        assert_eq!(
            status(&state, &l, T0 + 30_000, Dimension::InputTpm).remaining,
            20_000
        );
        assert_eq!(
            status(&state, &l, T0 + 30_000, Dimension::OutputTpm).remaining,
            4_000
        );
        assert_eq!(status(&state, &l, T0, Dimension::InputTpm).reset_ms, 60_000);
    }

    #[test]
    fn retry_after_is_exact_to_the_millisecond() {
        let l = limits(3, 1_000, 700, 0);
        let mut state = LimiterState::new();
        admitted(state.admit(&l, T0, &request(900, 650)));
        admitted(state.admit(&l, T0 + 5, &request(50, 40)));
        let asked = request(333, 123);
        let denial = denied(state.admit(&l, T0 + 17, &asked));
        let at = T0 + 17 + denial.retry_after_ms;
        let mut early = state.clone();
        denied(early.admit(&l, at - 1, &asked));
        admitted(state.admit(&l, at, &asked));
    }

    #[test]
    fn the_binding_dimension_is_the_longest_wait() {
        let mut state = LimiterState::new();
        let l = limits(1, 100, 200, 0);
        admitted(state.admit(&l, T0, &request(10, 200)));
        // rpm needs 60 s, output 50 tokens 15 s: rpm binds.
        let denial = denied(state.admit(&l, T0, &request(10, 50)));
        assert_eq!(
            (denial.dimension, denial.retry_after_ms),
            (Dimension::Rpm, 60_000)
        );
        // rpm needs 60 s, output 200 tokens 60 s too: a tie goes to the first, rpm.
        let denial = denied(state.admit(&l, T0, &request(10, 200)));
        assert_eq!(
            (denial.dimension, denial.retry_after_ms),
            (Dimension::Rpm, 60_000)
        );
        // With room for a second request, output binds alone.
        let l = limits(2, 100, 200, 0);
        let denial = denied(state.admit(&l, T0, &request(10, 50)));
        assert_eq!(
            (denial.dimension, denial.retry_after_ms),
            (Dimension::OutputTpm, 15_000)
        );
        assert_eq!((denial.limit, denial.remaining), (200, 0));
    }

    #[test]
    fn admission_is_all_or_nothing() {
        let l = limits(10, 1_000, 100, 2);
        let mut state = LimiterState::new();
        admitted(state.admit(&l, T0, &request(100, 90)));
        let before = state.clone();
        let denial = denied(state.admit(&l, T0, &request(500, 20)));
        assert_eq!(denial.dimension, Dimension::OutputTpm);
        assert_eq!(state.levels(), before.levels());
        assert_eq!(state.lease_records(), 1);
        assert_eq!(state.snapshot(&l, T0), before.snapshot(&l, T0));
    }

    /// Claude Code asks for 32 000 (64 000 on Opus) output tokens; a tier of 8 000 a minute
    /// serves it as Anthropic does: once the bucket is full, reserving all of it.
    #[test]
    fn max_tokens_above_output_tpm_waits_for_a_full_bucket_and_reserves_it() {
        let l = limits(50, 40_000, 8_000, 4);
        let mut state = LimiterState::new();
        let big = request(10, 32_000);
        let first = admitted(state.admit(&l, T0, &big));
        assert_eq!((first.input_tokens, first.output_tokens), (10, 8_000));
        assert_eq!(status(&state, &l, T0, Dimension::OutputTpm).remaining, 0);
        // Nothing else gets output tokens until the bucket refills (7.5 ms a token).
        let denial = denied(state.admit(&l, T0, &request(10, 1)));
        assert_eq!(
            (denial.dimension, denial.retry_after_ms, denial.remaining),
            (Dimension::OutputTpm, 8, 0)
        );
        // The answer used 100 tokens: 7 900 come back.
        let used = Used {
            input_tokens: Some(10),
            output_tokens: Some(100),
        };
        let settlement = state.settle(&l, T0, &first, used);
        assert_eq!(
            (
                settlement.returned_output_tokens,
                settlement.extra_output_tokens
            ),
            (7_900, 0)
        );
        // The next large request waits for a full bucket: 100 tokens, 750 ms. No longer.
        let denial = denied(state.admit(&l, T0, &request(10, 64_000)));
        assert_eq!(
            (denial.dimension, denial.retry_after_ms),
            (Dimension::OutputTpm, 750)
        );
        denied(state.clone().admit(&l, T0 + 749, &request(10, 64_000)));
        let second = admitted(state.admit(&l, T0 + 750, &request(10, 64_000)));
        assert_eq!(second.output_tokens, 8_000);
    }

    #[test]
    fn output_beyond_the_bucket_settles_into_debt_and_the_retry_after_says_so() {
        let l = limits(50, 40_000, 8_000, 4);
        let mut state = LimiterState::new();
        let big = admitted(state.admit(&l, T0, &request(10, 32_000)));
        // Ten seconds later the answer ends with 10 000 tokens: 2 000 more than reserved.
        let at = T0 + 10_000;
        let used = Used {
            input_tokens: Some(10),
            output_tokens: Some(10_000),
        };
        let settlement = state.settle(&l, at, &big, used);
        assert_eq!(
            (
                settlement.returned_output_tokens,
                settlement.extra_output_tokens
            ),
            (0, 2_000)
        );
        // 10 000 used, 1 333⅓ refilled: 666⅔ tokens of debt, 5 s at 8 000 a minute.
        let output = status(&state, &l, at, Dimension::OutputTpm);
        assert_eq!((output.remaining, output.reset_ms), (0, 65_000));
        let one = request(10, 1);
        let denial = denied(state.admit(&l, at, &one));
        assert_eq!(
            denial,
            Denial {
                retry_after_ms: 5_008,
                dimension: Dimension::OutputTpm,
                limit: 8_000,
                remaining: 0
            }
        );
        denied(state.clone().admit(&l, at + 5_007, &one));
        admitted(state.clone().admit(&l, at + 5_008, &one));
        // Another large request waits for the whole bucket: the debt, then a full minute.
        let denial = denied(state.admit(&l, at, &request(10, 32_000)));
        assert_eq!(denial.retry_after_ms, 65_000);
        admitted(state.admit(&l, at + 65_000, &request(10, 32_000)));
    }

    /// A broken stream (no usage) keeps what was reserved, the whole bucket: not `max_tokens`,
    /// which it may never have produced.
    #[test]
    fn unknown_usage_of_a_large_request_keeps_the_whole_bucket_and_no_more() {
        let l = limits(0, 0, 8_000, 0);
        let mut state = LimiterState::new();
        let big = admitted(state.admit(&l, T0, &request(0, 64_000)));
        let settlement = state.settle(&l, T0, &big, Used::UNKNOWN);
        assert_eq!(
            (
                settlement.returned_output_tokens,
                settlement.extra_output_tokens
            ),
            (0, 0)
        );
        assert_eq!(
            status(&state, &l, T0, Dimension::OutputTpm).reset_ms,
            60_000
        );
    }

    #[test]
    fn an_input_estimate_above_the_quota_reserves_the_whole_quota() {
        let l = limits(0, 40_000, 0, 0);
        let mut state = LimiterState::new();
        let reservation = admitted(state.admit(&l, T0, &request(100_000, 0)));
        assert_eq!(reservation.input_tokens, 40_000);
        // Only with a full bucket: after any use it waits for the whole bucket.
        let mut state = LimiterState::new();
        admitted(state.admit(&l, T0, &request(1, 0)));
        let denial = denied(state.admit(&l, T0, &request(100_000, 0)));
        assert_eq!(
            (denial.dimension, denial.retry_after_ms),
            (Dimension::InputTpm, 2)
        );
        let reservation = admitted(state.admit(&l, T0 + 2, &request(100_000, 0)));
        // Settlement charges the real count: 70 000 tokens is 30 000 of debt, 45 s more.
        let actual = Used {
            input_tokens: Some(70_000),
            output_tokens: None,
        };
        let settlement = state.settle(&l, T0 + 2, &reservation, actual);
        assert_eq!(settlement.extra_input_tokens, 30_000);
        assert_eq!(
            status(&state, &l, T0 + 2, Dimension::InputTpm).reset_ms,
            105_000
        );
        let denial = denied(state.admit(&l, T0 + 2, &request(40_000, 0)));
        assert_eq!(denial.retry_after_ms, 105_000);
    }

    #[test]
    fn concurrency_leases_hold_slots_until_settled_or_expired() {
        let l = limits(0, 0, 0, 2);
        let mut state = LimiterState::new();
        let short = AdmissionRequest {
            input_tokens: 0,
            output_tokens: 0,
            lease_ms: 300,
            quota: None,
        };
        let first = admitted(state.admit(&l, T0, &short));
        admitted(state.admit(&l, T0 + 100, &request(0, 0)));
        let denial = denied(state.admit(&l, T0 + 100, &request(0, 0)));
        // The first lease expires in 200 ms.
        assert_eq!(
            denial,
            Denial {
                retry_after_ms: 200,
                dimension: Dimension::Concurrency,
                limit: 2,
                remaining: 0
            }
        );
        // Settling frees the slot at once.
        let mut settled = state.clone();
        settled.settle(&l, T0 + 150, &first, Used::UNKNOWN);
        admitted(settled.admit(&l, T0 + 150, &request(0, 0)));
        // Without settlement it frees at expiry, not a millisecond before.
        denied(state.admit(&l, T0 + 299, &request(0, 0)));
        admitted(state.admit(&l, T0 + 300, &request(0, 0)));
        // With only long leases in flight the wait is capped at a second.
        let denial = denied(state.admit(&l, T0 + 300, &request(0, 0)));
        assert_eq!(denial.retry_after_ms, CONCURRENCY_RETRY_CAP_MS);
        assert_eq!(
            status(&state, &l, T0 + 300, Dimension::Concurrency).reset_ms,
            600_000
        );
    }

    #[test]
    fn settling_twice_returns_capacity_once() {
        let l = limits(0, 1_000, 1_000, 1);
        let mut state = LimiterState::new();
        let reservation = admitted(state.admit(&l, T0, &request(800, 900)));
        let actual = Used {
            input_tokens: Some(100),
            output_tokens: Some(100),
        };
        let first = state.settle(&l, T0, &reservation, actual);
        assert_eq!(
            first,
            Settlement {
                lease_found: true,
                returned_input_tokens: 700,
                returned_output_tokens: 800,
                extra_input_tokens: 0,
                extra_output_tokens: 0,
            }
        );
        let after_first = state.clone();
        let second = state.settle(&l, T0, &reservation, actual);
        assert_eq!(second, Settlement::default());
        assert_eq!(state, after_first);
        assert_eq!(status(&state, &l, T0, Dimension::InputTpm).remaining, 900);
        assert_eq!(status(&state, &l, T0, Dimension::Concurrency).remaining, 1);
    }

    #[test]
    fn unknown_usage_keeps_the_reservation_and_frees_the_slot() {
        let l = limits(0, 1_000, 1_000, 1);
        let mut state = LimiterState::new();
        let reservation = admitted(state.admit(&l, T0, &request(800, 900)));
        let before = state.levels();
        let settlement = state.settle(&l, T0 + 1, &reservation, Used::UNKNOWN);
        assert!(settlement.lease_found);
        assert_eq!(
            (
                settlement.returned_input_tokens,
                settlement.returned_output_tokens
            ),
            (0, 0)
        );
        assert_eq!(
            state.levels()[1],
            before[1].drained(NonZeroU32::new(1_000).unwrap(), 1)
        );
        assert_eq!(
            status(&state, &l, T0 + 1, Dimension::Concurrency).remaining,
            1
        );
    }

    #[test]
    fn a_late_settlement_after_the_lease_expired_still_refunds_once() {
        let l = limits(0, 0, 1_000, 1);
        let mut state = LimiterState::new();
        let short = AdmissionRequest {
            input_tokens: 0,
            output_tokens: 1_000,
            lease_ms: 1_000,
            quota: None,
        };
        let reservation = admitted(state.admit(&l, T0, &short));
        // The lease expired (the slot is free again) but the record remains.
        assert_eq!(
            status(&state, &l, T0 + 1_000, Dimension::Concurrency).remaining,
            1
        );
        let actual = Used {
            input_tokens: None,
            output_tokens: Some(100),
        };
        let settlement = state.settle(&l, T0 + 1_000, &reservation, actual);
        assert!(settlement.lease_found);
        assert_eq!(settlement.returned_output_tokens, 900);
        // 1 000 used minus 1 s of refill (16.7) minus 900 returned: 83.3 used, 916 left.
        assert_eq!(
            status(&state, &l, T0 + 1_000, Dimension::OutputTpm).remaining,
            916
        );
        // Once forgotten, a settlement returns nothing.
        let mut state = LimiterState::new();
        let reservation = admitted(state.admit(&l, T0, &short));
        let at = T0 + 1_000 + LEASE_MEMORY_MS;
        assert_eq!(
            state.settle(&l, at, &reservation, actual),
            Settlement::default()
        );
    }

    #[test]
    fn extra_usage_is_charged_even_without_a_lease_record() {
        let l = limits(0, 1_000, 0, 0);
        let mut state = LimiterState::new();
        let reservation = admitted(state.admit(&l, T0, &request(100, 0)));
        let actual = Used {
            input_tokens: Some(400),
            output_tokens: None,
        };
        state.settle(&l, T0, &reservation, actual);
        assert_eq!(status(&state, &l, T0, Dimension::InputTpm).remaining, 600);
        // A repeated settlement charges the extra again: wrong, but on the safe side.
        let again = state.settle(&l, T0, &reservation, actual);
        assert_eq!((again.lease_found, again.extra_input_tokens), (false, 300));
        assert_eq!(status(&state, &l, T0, Dimension::InputTpm).remaining, 300);
    }

    /// A long request that settles after its bucket refilled must not take its refund out of
    /// the charges of requests admitted after it.
    #[test]
    fn regression_refund_after_refill_erased_later_charges() {
        let l = limits(0, 0, 10, 0);
        let mut state = LimiterState::new();
        let long = admitted(state.admit(&l, T0, &request(0, 10)));
        // A minute later the bucket is full again; a new request takes 1 token.
        admitted(state.admit(&l, T0 + 60_000, &request(0, 1)));
        // The long request used 1 of its 10: the 9 returned had already refilled.
        let actual = Used {
            input_tokens: None,
            output_tokens: Some(1),
        };
        let settlement = state.settle(&l, T0 + 60_000, &long, actual);
        assert_eq!(settlement.returned_output_tokens, 9);
        // Still 1 token used: the new request's.
        assert_eq!(
            status(&state, &l, T0 + 60_000, Dimension::OutputTpm).remaining,
            9
        );
        admitted(state.admit(&l, T0 + 60_000, &request(0, 9)));
        denied(state.admit(&l, T0 + 60_000, &request(0, 1)));
    }

    /// Found by `extra_usage_is_never_forgiven`: extra usage charged at settlement only raised
    /// the refund floors of leases admitted *before* the settled one, so a later lease's
    /// refund could take the extra back out.
    #[test]
    fn regression_extra_usage_was_refunded_away_by_a_later_lease() {
        let l = limits(0, 100, 0, 0);
        let mut state = LimiterState::new();
        let first = admitted(state.admit(&l, T0, &request(10, 0)));
        let second = admitted(state.admit(&l, T0, &request(10, 0)));
        // 12 s later both charges have refilled; the first turns out to have used 30.
        let t1 = T0 + 12_000;
        let used = |n| Used {
            input_tokens: Some(n),
            output_tokens: None,
        };
        assert_eq!(
            state.settle(&l, t1, &first, used(30)).extra_input_tokens,
            20
        );
        assert_eq!(status(&state, &l, t1, Dimension::InputTpm).remaining, 80);
        // The second used nothing: its 10 tokens had already refilled, the 20 extra stay.
        assert_eq!(
            state.settle(&l, t1, &second, used(0)).returned_input_tokens,
            10
        );
        assert_eq!(status(&state, &l, t1, Dimension::InputTpm).remaining, 80);
    }

    #[test]
    fn a_refund_right_after_admission_is_exactly_a_smaller_reservation() {
        let l = limits(0, 1_000, 1_000, 0);
        let mut reserved_more = LimiterState::new();
        let mut reserved_actual = LimiterState::new();
        admitted(reserved_more.admit(&l, T0, &request(100, 100)));
        admitted(reserved_actual.admit(&l, T0, &request(100, 100)));
        let big = admitted(reserved_more.admit(&l, T0 + 10, &request(700, 800)));
        admitted(reserved_actual.admit(&l, T0 + 10, &request(300, 250)));
        let actual = Used {
            input_tokens: Some(300),
            output_tokens: Some(250),
        };
        reserved_more.settle(&l, T0 + 500, &big, actual);
        assert_eq!(
            reserved_more.snapshot(&l, T0 + 500),
            reserved_actual.snapshot(&l, T0 + 500)
        );
        // Bring the reference's clock to the same time with an empty request.
        admitted(reserved_actual.admit(&l, T0 + 500, &request(0, 0)));
        assert_eq!(reserved_more.levels(), reserved_actual.levels());
    }

    #[test]
    fn a_tier_change_between_admit_and_settle_breaks_nothing() {
        let before = limits(10, 1_000, 0, 2);
        let mut state = LimiterState::new();
        let reservation = admitted(state.admit(&before, T0, &request(900, 500)));
        assert_eq!(
            (reservation.input_tokens, reservation.output_tokens),
            (900, 0)
        );
        // Now input is unlimited, output newly limited and smaller quotas elsewhere.
        let after = limits(1, 0, 100, 1);
        let actual = Used {
            input_tokens: Some(10),
            output_tokens: Some(300),
        };
        let settlement = state.settle(&after, T0 + 1, &reservation, actual);
        // Output was not charged at admission; the real usage is charged now.
        assert_eq!(settlement.extra_output_tokens, 300);
        assert_eq!(settlement.returned_input_tokens, 0);
        let denial = denied(state.admit(&after, T0 + 1, &request(0, 1)));
        assert_eq!(denial.dimension, Dimension::OutputTpm);
        // 300 tokens used of 100 / min: 201 must drain before 1 more fits, 600 ms each.
        assert_eq!(denial.retry_after_ms, 120_600);
        // And back: the used rpm slot counts against the new, smaller quota.
        let shrunk = limits(1, 1_000, 0, 1);
        let denial = denied(state.admit(&shrunk, T0 + 2, &request(0, 0)));
        assert_eq!(denial.dimension, Dimension::Rpm);
        assert!(denial.retry_after_ms <= 60_000);
        admitted(state.admit(&shrunk, T0 + 2 + denial.retry_after_ms, &request(1_000, 0)));
    }

    #[test]
    fn a_clock_that_runs_backwards_neither_refills_nor_shortens_waits() {
        let l = limits(60, 0, 0, 0);
        let mut state = LimiterState::new();
        for _ in 0..60 {
            admitted(state.admit(&l, T0 + 5_000, &request(0, 0)));
        }
        // Asked 3 s "earlier": the state's time is still T0 + 5 s, so the wait is 1 s + 3 s.
        let denial = denied(state.admit(&l, T0 + 2_000, &request(0, 0)));
        assert_eq!(denial.retry_after_ms, 4_000);
        denied(state.clone().admit(&l, T0 + 5_999, &request(0, 0)));
        admitted(state.admit(&l, T0 + 6_000, &request(0, 0)));
        // A stored clock more than a minute ahead is taken for a jump and reset.
        let far = T0 + 6_000 - MAX_CLOCK_LEAD_MS - 1;
        assert_eq!(
            denied(state.admit(&l, far, &request(0, 0))).retry_after_ms,
            1_000
        );
    }

    #[test]
    fn lease_records_stay_bounded() {
        let l = limits(0, 0, 0, 3);
        let mut state = LimiterState::new();
        let short = AdmissionRequest {
            input_tokens: 0,
            output_tokens: 0,
            lease_ms: 1,
            quota: None,
        };
        for i in 0..1_000 {
            admitted(state.admit(&l, T0 + i, &short));
        }
        assert_eq!(state.lease_records(), MIN_LEASE_RECORDS);
        // Active leases are never the ones dropped while concurrency is limited.
        let long = request(0, 0);
        for _ in 0..3 {
            admitted(state.admit(&l, T0 + 1_000, &long));
        }
        for i in 0..100 {
            denied(state.admit(&l, T0 + 1_000 + i, &long));
        }
        assert_eq!(
            status(&state, &l, T0 + 2_000, Dimension::Concurrency).remaining,
            0
        );
        // Forgotten after their memory runs out.
        let later = T0 + 1_000 + 600_000 + LEASE_MEMORY_MS;
        assert!(state.is_idle(&l, later));
        assert!(!state.is_idle(&l, later - 1));
        assert_eq!(state.idle_in_ms(&l, T0 + 2_000), later - (T0 + 2_000));
        assert_eq!(state.idle_in_ms(&l, later), 0);
    }

    #[test]
    fn lease_ms_is_clamped() {
        let l = limits(0, 0, 0, 1);
        let mut state = LimiterState::new();
        let zero = AdmissionRequest {
            input_tokens: 0,
            output_tokens: 0,
            lease_ms: 0,
            quota: None,
        };
        let reservation = admitted(state.admit(&l, T0, &zero));
        assert_eq!(reservation.lease_expires_ms, T0 + 1);
        let mut state = LimiterState::new();
        let huge = AdmissionRequest {
            input_tokens: 0,
            output_tokens: 0,
            lease_ms: u64::MAX,
            quota: None,
        };
        let reservation = admitted(state.admit(&l, T0, &huge));
        assert_eq!(reservation.lease_expires_ms, T0 + MAX_LEASE_MS);
    }

    #[test]
    fn lease_ids_are_unique_and_grow_with_time() {
        let l = limits(0, 0, 0, 0);
        let mut state = LimiterState::new();
        let a = admitted(state.admit(&l, T0, &request(0, 0))).lease_id;
        let b = admitted(state.admit(&l, T0, &request(0, 0))).lease_id;
        let c = admitted(LimiterState::new().admit(&l, T0 + 1, &request(0, 0))).lease_id;
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn the_state_round_trips_through_json() {
        let l = limits(5, 1_000, 1_000, 3);
        let mut state = LimiterState::new();
        let reservation = admitted(state.admit(&l, T0, &request(500, 700)));
        admitted(state.admit(&l, T0 + 1, &request(100, 100)));
        let json = serde_json::to_string(&state).unwrap();
        let mut restored: LimiterState = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, state);
        let actual = Used {
            input_tokens: Some(1),
            output_tokens: Some(1),
        };
        assert_eq!(
            restored.settle(&l, T0 + 2, &reservation, actual),
            state.settle(&l, T0 + 2, &reservation, actual)
        );
        assert_eq!(restored, state);
        // A missing or partial state is a fresh one.
        assert_eq!(
            serde_json::from_str::<LimiterState>("{}").unwrap(),
            LimiterState::new()
        );
        let admission: Admission = serde_json::from_str(
            &serde_json::to_string(&Admission::Admitted(reservation)).unwrap(),
        )
        .unwrap();
        assert_eq!(admission, Admission::Admitted(reservation));
    }

    #[test]
    fn a_request_only_admission_counts_against_rpm_and_nothing_else() {
        let l = limits(3, 1_000, 1_000, 1);
        let mut state = LimiterState::new();
        // The one concurrency slot is held by a message in flight.
        admitted(state.admit(&l, T0, &request(500, 500)));
        let levels = state.levels();
        // Token counts and model listings still go: no slot, no tokens...
        assert_eq!(state.admit_request_only(&l, T0), None);
        assert_eq!(state.admit_request_only(&l, T0), None);
        assert_eq!(state.levels()[1..], levels[1..]);
        assert_eq!(state.lease_records(), 1);
        // ...but each is one request of the rpm the messages share.
        let denial = state.admit_request_only(&l, T0).unwrap();
        assert_eq!(
            denial,
            Denial {
                retry_after_ms: 20_000,
                dimension: Dimension::Rpm,
                limit: 3,
                remaining: 0
            }
        );
        let denial = denied(state.admit(&l, T0, &request(0, 0)));
        assert_eq!(denial.dimension, Dimension::Rpm);
        assert_eq!(
            state
                .admit_request_only(&l, T0 + 19_999)
                .map(|d| d.retry_after_ms),
            Some(1)
        );
        assert_eq!(state.admit_request_only(&l, T0 + 20_000), None);
        // Without an rpm limit it is always admitted and charges nothing.
        let no_rpm = limits(0, 1_000, 1_000, 1);
        let before = state.clone();
        for _ in 0..100 {
            assert_eq!(state.admit_request_only(&no_rpm, T0 + 20_000), None);
        }
        assert_eq!(state.lease_records(), before.lease_records());
    }

    #[test]
    fn a_request_counted_while_its_body_arrived_is_not_counted_again() {
        let l = limits(2, 1_000, 1_000, 2);
        let mut state = LimiterState::new();
        // Counted as its body began arriving; the admission that follows the body charges
        // its tokens and its slot, and no second request.
        assert_eq!(state.admit_request_only(&l, T0), None);
        let requests = state.levels()[0];
        admitted(state.admit_counted(&l, T0, &request(100, 100)));
        assert_eq!(state.levels()[0], requests);
        // rpm now full: a counted request still goes (its count was taken), a new one waits.
        assert_eq!(state.admit_request_only(&l, T0), None);
        admitted(state.admit_counted(&l, T0, &request(100, 100)));
        assert_eq!(
            denied(state.admit(&l, T0, &request(0, 0))).dimension,
            Dimension::Rpm
        );
        // Its other dimensions bind as for any request.
        let mut other = LimiterState::new();
        admitted(other.admit(&l, T0, &request(800, 0)));
        assert_eq!(other.admit_request_only(&l, T0), None);
        assert_eq!(
            denied(other.admit_counted(&l, T0, &request(500, 0))).dimension,
            Dimension::InputTpm
        );
    }

    #[test]
    fn unlimited_dimensions_never_deny() {
        let l = TierLimits::default();
        let mut state = LimiterState::new();
        for i in 0..10_000 {
            admitted(state.admit(&l, T0, &request(u64::MAX - i, u64::MAX)));
        }
        assert!(state.snapshot(&l, T0).is_empty());
        assert_eq!(state.lease_records(), MIN_LEASE_RECORDS);
        let only_rpm = limits(5, 0, 0, 0);
        for _ in 0..5 {
            admitted(state.admit(&only_rpm, T0, &request(u64::MAX, u64::MAX)));
        }
        assert_eq!(
            denied(state.admit(&only_rpm, T0, &request(0, 0))).dimension,
            Dimension::Rpm
        );
    }
}
