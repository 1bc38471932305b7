//! The caller's Durable Object: its calls, replies and idle rule.
//!
//! A Durable Object runs one event at a time per key and keeps its state in memory between
//! events, so admission is exact under any concurrency: every call is one synchronous
//! `decide` on the loaded state, followed by a durable write.

use serde::{Deserialize, Serialize};

use super::caller_headers::{limit_headers, quota_headers};
use super::credit::{Returns, Ticket};
use super::limiter_state::{
    Admission, AdmissionRequest, DimensionStatus, LimiterState, Reservation, Settlement, Used,
};
use super::quota::QuotaStanding;
use crate::config::TierLimits;
use crate::durable::ObjectState;
use crate::error::ProxyError;

/// The alarm looks again this long after the caller may be idle.
const IDLE_SLACK_MS: u64 = 1_000;

/// One call from the Worker to a caller's object.
///
/// `provisional` marks a caller the upstream has not yet accepted (a passthrough key): its
/// object keeps its state in memory only, and writes it to storage once a settlement says
/// the upstream accepted the key (`confirms`). Anyone can make up an `sk-ant-…` string; none
/// of them should leave a stored object behind.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterCall {
    Admit {
        limits: TierLimits,
        request: AdmissionRequest,
        #[serde(default)]
        provisional: bool,
        /// Tickets the isolate asks for, the size of `request` (see `limits::credit`); a
        /// provisional caller is granted none.
        #[serde(default, skip_serializing_if = "is_zero")]
        credit: u32,
        /// Settlements and unused tickets handed back on the way, taken before the decision.
        #[serde(default, skip_serializing_if = "Returns::is_empty")]
        returns: Returns,
        /// The request was counted against `rpm` while its body was arriving
        /// ([`LimiterCall::AdmitRequestOnly`]): not again.
        #[serde(default, skip_serializing_if = "is_false")]
        counted: bool,
    },
    /// No request of its own: hands back `returns`, then grants up to `credit` tickets the
    /// size of `ticket`.
    Refill {
        limits: TierLimits,
        #[serde(default)]
        ticket: Option<AdmissionRequest>,
        #[serde(default)]
        credit: u32,
        #[serde(default)]
        returns: Returns,
    },
    /// One request against `rpm` only, nothing to settle (`count_tokens`, model listings).
    AdmitRequestOnly {
        limits: TierLimits,
        #[serde(default)]
        provisional: bool,
    },
    Settle {
        limits: TierLimits,
        reservation: Reservation,
        usage: Used,
        /// The caller is known to the upstream: a managed caller, or a passthrough caller
        /// whose request the upstream answered with a 2xx.
        #[serde(default = "yes")]
        confirms: bool,
        /// What the answer cost in micro-dollars, for the dollar quotas; `None`: unknown.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost_micros: Option<u64>,
    },
    /// The answer is still moving: hold its slot for another `lease_ms`.
    Renew {
        limits: TierLimits,
        lease_id: u64,
        lease_ms: u64,
    },
    /// The caller's usage against `limits` (or, without them, the limits its object was last
    /// used with), for the operator's view: read only, nothing is charged or stored.
    Status {
        #[serde(default)]
        limits: Option<TierLimits>,
    },
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

// Read as the derive reads it from what `serde_json` writes, the variant's name and fields by
// the shared decoders (`json::StructVariants`, `json::read_fields`), the same defaults and the
// same errors; a struct variant from its object form only (the derive also read an array
// form nothing writes).
impl<'de> Deserialize<'de> for LimiterCall {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::json::deserialize_struct_variants(deserializer)
    }
}

impl crate::json::StructVariants for LimiterCall {
    const ENUM: &'static str = "LimiterCall";
    const NAMES: &'static [&'static str] = &[
        "admit",
        "refill",
        "admit_request_only",
        "settle",
        "renew",
        "status",
    ];
    const FIELDS: &'static [&'static [&'static str]] = &[
        &[
            "limits",
            "request",
            "provisional",
            "credit",
            "returns",
            "counted",
        ],
        &["limits", "ticket", "credit", "returns"],
        &["limits", "provisional"],
        &["limits", "reservation", "usage", "confirms", "cost_micros"],
        &["limits", "lease_id", "lease_ms"],
        &["limits"],
    ];
    const EXPECTING: &'static [&'static str] = &[
        "struct variant LimiterCall::Admit",
        "struct variant LimiterCall::Refill",
        "struct variant LimiterCall::AdmitRequestOnly",
        "struct variant LimiterCall::Settle",
        "struct variant LimiterCall::Renew",
        "struct variant LimiterCall::Status",
    ];

    fn read_variant<'de, A: serde::de::MapAccess<'de>>(
        variant: usize,
        map: A,
    ) -> Result<LimiterCall, A::Error> {
        CallFields::read(variant, map)?.into_call()
    }
}

/// A call's fields as read, before they make its variant.
#[derive(Default)]
struct CallFields {
    variant: usize,
    limits: Option<TierLimits>,
    status_limits: Option<TierLimits>,
    request: Option<AdmissionRequest>,
    ticket: Option<AdmissionRequest>,
    provisional: Option<bool>,
    counted: Option<bool>,
    confirms: Option<bool>,
    credit: Option<u32>,
    returns: Option<Returns>,
    reservation: Option<Reservation>,
    usage: Option<Used>,
    lease_id: Option<u64>,
    lease_ms: Option<u64>,
    cost_micros: Option<u64>,
}

impl CallFields {
    fn read<'de, A: serde::de::MapAccess<'de>>(
        variant: usize,
        map: A,
    ) -> Result<CallFields, A::Error> {
        let mut read = CallFields {
            variant,
            ..CallFields::default()
        };
        let fields = <LimiterCall as crate::json::StructVariants>::FIELDS
            .get(variant)
            .copied()
            .unwrap_or_default();
        crate::json::read_fields(map, fields, |field, map| {
            match (variant, field) {
                (5, _) => read.status_limits = map.next_value()?,
                (_, 0) => read.limits = Some(map.next_value()?),
                (0, 1) => read.request = Some(map.next_value()?),
                (1, 1) => read.ticket = map.next_value()?,
                (0, 2) | (2, 1) => read.provisional = Some(map.next_value()?),
                (0, 3) | (1, 2) => read.credit = Some(map.next_value()?),
                (0, 4) | (1, 3) => read.returns = Some(map.next_value()?),
                (0, _) => read.counted = Some(map.next_value()?),
                (3, 1) => read.reservation = Some(map.next_value()?),
                (3, 2) => read.usage = Some(map.next_value()?),
                (3, 3) => read.confirms = Some(map.next_value()?),
                (3, _) => read.cost_micros = map.next_value()?,
                (_, 1) => read.lease_id = Some(map.next_value()?),
                _ => read.lease_ms = Some(map.next_value()?),
            }
            Ok(())
        })?;
        Ok(read)
    }

    /// The variant, with the derive's defaults and its errors for what is missing.
    fn into_call<E: serde::de::Error>(self) -> Result<LimiterCall, E> {
        use crate::json::required;
        if self.variant == 5 {
            return Ok(LimiterCall::Status {
                limits: self.status_limits,
            });
        }
        let limits = required(self.limits, "limits")?;
        Ok(match self.variant {
            0 => LimiterCall::Admit {
                limits,
                request: required(self.request, "request")?,
                provisional: self.provisional.unwrap_or_default(),
                credit: self.credit.unwrap_or_default(),
                returns: self.returns.unwrap_or_default(),
                counted: self.counted.unwrap_or_default(),
            },
            1 => LimiterCall::Refill {
                limits,
                ticket: self.ticket,
                credit: self.credit.unwrap_or_default(),
                returns: self.returns.unwrap_or_default(),
            },
            2 => LimiterCall::AdmitRequestOnly {
                limits,
                provisional: self.provisional.unwrap_or_default(),
            },
            3 => LimiterCall::Settle {
                limits,
                reservation: required(self.reservation, "reservation")?,
                usage: required(self.usage, "usage")?,
                confirms: self.confirms.unwrap_or(true),
                cost_micros: self.cost_micros,
            },
            _ => LimiterCall::Renew {
                limits,
                lease_id: required(self.lease_id, "lease_id")?,
                lease_ms: required(self.lease_ms, "lease_ms")?,
            },
        })
    }
}

/// The object's answer to an admission: the decision and the caller's limits as of now.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdmitReply {
    pub admission: Admission,
    pub status: Vec<DimensionStatus>,
    /// The object's clock when it decided, so headers are computed on the same clock.
    pub now_ms: u64,
    /// The tickets granted with the admission (the status counts them as used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tickets: Vec<Ticket>,
    /// The daily and monthly quotas as of now (none when the tier sets none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaStanding>,
}

impl AdmitReply {
    /// The reservation, with the caller's limits (per minute, and its quotas) for the
    /// answer's headers; or the refusal, a `429` that carries those headers itself.
    pub fn answer(
        self,
        headers: &mut Vec<(&'static str, String)>,
    ) -> Result<Reservation, ProxyError> {
        match self.admission {
            Admission::Admitted(reservation) => {
                headers.extend(limit_headers(&self.status, None, self.now_ms));
                quota_headers(headers, &self.quotas, None, self.now_ms);
                Ok(reservation)
            }
            Admission::Exhausted(refusal) => {
                let mut refused = ProxyError::from(&refusal);
                if let ProxyError::RateLimited {
                    limit_headers: own, ..
                } = &mut refused
                {
                    *own = limit_headers(&self.status, None, self.now_ms);
                    quota_headers(own, &self.quotas, Some(&refusal), self.now_ms);
                }
                Err(refused)
            }
            Admission::Denied(denial) => {
                let mut refused = ProxyError::from(&denial);
                if let ProxyError::RateLimited {
                    limit_headers: own, ..
                } = &mut refused
                {
                    *own = limit_headers(&self.status, Some(&denial), self.now_ms);
                    quota_headers(own, &self.quotas, None, self.now_ms);
                }
                Err(refused)
            }
        }
    }
}

/// The object's answer to a refill.
#[derive(Debug, Serialize, Deserialize)]
pub struct RefillReply {
    pub tickets: Vec<Ticket>,
    pub status: Vec<DimensionStatus>,
    pub now_ms: u64,
}

/// The object's answer to a call.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum LimiterReply {
    Admitted(AdmitReply),
    Refilled(RefillReply),
    Settled(Settlement),
    Renewed(bool),
    Status(CallerUsage),
}

/// A caller's usage as its object knows it, for the operator's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerUsage {
    /// The limits the usage is measured against.
    pub limits: TierLimits,
    /// Every limited dimension: its limit, what remains now and when it is full again.
    pub dimensions: Vec<DimensionStatus>,
    /// Every limited quota window: its limit, what was spent, what remains and when it resets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<QuotaStanding>,
    /// Every bucket is full and no slot is held: the caller has not been seen lately.
    pub idle: bool,
    pub now_ms: u64,
    /// What the caller's object did since it was last loaded.
    #[serde(default)]
    pub object: ObjectCalls,
}

/// What a caller's object did since it was loaded into memory (a restart starts over at
/// zero): the calls it decided (the operator's view not counted), how many of them were
/// renewals, and how often it wrote its state. Each call is a request the plan counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectCalls {
    pub calls: u64,
    pub renewals: u64,
    pub writes: u64,
}

/// What a caller's object stores: its buckets and leases, and the limits it was last used
/// with (the alarm needs them to tell an idle caller from a busy one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LimiterObject {
    limiter: LimiterState,
    limits: TierLimits,
    /// Whether the state may be stored: false for a fresh object until a call that is not
    /// provisional (or a confirming settlement) arrives. A stored state was confirmed (and
    /// one stored before this field existed reads as such).
    #[serde(default = "yes")]
    confirmed: bool,
    /// Counted in memory only.
    #[serde(skip)]
    seen: ObjectCalls,
}

impl LimiterObject {
    /// The caller's limiter state, for the tests' ledgers.
    #[cfg(test)]
    pub(crate) fn limiter(&self) -> &LimiterState {
        &self.limiter
    }

    /// An admission, after taking back what the isolate returns; a request admitted for a
    /// confirmed caller also brings tickets for the isolate to admit on credit.
    fn admit(
        &mut self,
        now_ms: u64,
        (limits, request): (TierLimits, AdmissionRequest),
        (provisional, counted): (bool, bool),
        credit: u32,
        returns: &Returns,
    ) -> LimiterReply {
        self.confirmed |= self.limiter.take_back(&limits, now_ms, returns);
        self.confirmed |= !provisional;
        self.limits = limits;
        // A request counted while its body arrived is not counted again.
        let admission = if counted {
            self.limiter.admit_counted(&limits, now_ms, &request)
        } else {
            self.limiter.admit(&limits, now_ms, &request)
        };
        let tickets = match admission {
            Admission::Admitted(_) if !provisional => {
                self.limiter.grant(&limits, now_ms, &request, credit)
            }
            _ => Vec::new(),
        };
        let status = self.limiter.snapshot(&limits, now_ms);
        LimiterReply::Admitted(AdmitReply {
            admission,
            status,
            now_ms,
            tickets,
            quotas: self.limiter.quota_standing(&limits, now_ms),
        })
    }

    /// New tickets for an isolate admitting on credit (a confirmed caller only), after taking
    /// back what it returns.
    fn refill(
        &mut self,
        now_ms: u64,
        limits: TierLimits,
        ticket: Option<AdmissionRequest>,
        credit: u32,
        returns: &Returns,
    ) -> LimiterReply {
        self.confirmed |= self.limiter.take_back(&limits, now_ms, returns);
        self.limits = limits;
        let tickets = match (ticket, self.confirmed) {
            (Some(ticket), true) => self.limiter.grant(&limits, now_ms, &ticket, credit),
            _ => Vec::new(),
        };
        let status = self.limiter.snapshot(&limits, now_ms);
        LimiterReply::Refilled(RefillReply {
            tickets,
            status,
            now_ms,
        })
    }

    /// An admission that counts the request alone (no tokens, no slot).
    fn admit_request_only(
        &mut self,
        now_ms: u64,
        limits: TierLimits,
        provisional: bool,
    ) -> LimiterReply {
        self.confirmed |= !provisional;
        self.limits = limits;
        let admission = self.limiter.admit_request(&limits, now_ms);
        let status = self.limiter.snapshot(&limits, now_ms);
        LimiterReply::Admitted(AdmitReply {
            admission,
            status,
            now_ms,
            tickets: Vec::new(),
            quotas: self.limiter.quota_standing(&limits, now_ms),
        })
    }

    /// Where the caller stands, under `limits` or those it was last used with.
    fn status(&self, now_ms: u64, limits: Option<TierLimits>) -> LimiterReply {
        let limits = limits.unwrap_or(self.limits);
        LimiterReply::Status(CallerUsage {
            limits,
            dimensions: self.limiter.snapshot(&limits, now_ms),
            quotas: self.limiter.quota_standing(&limits, now_ms),
            idle: self.limiter.is_idle(&limits, now_ms),
            now_ms,
            object: self.seen,
        })
    }
}

impl ObjectState for LimiterObject {
    type Call = LimiterCall;
    type Reply = LimiterReply;
    const STORAGE_KEY: &'static str = "limiter";

    fn decide(&mut self, now_ms: u64, call: LimiterCall) -> LimiterReply {
        if !Self::reads_only(&call) {
            self.seen.calls += 1;
        }
        if Self::memory_only(&call) {
            self.seen.renewals += 1;
        }
        match call {
            LimiterCall::Admit {
                limits,
                request,
                provisional,
                credit,
                returns,
                counted,
            } => self.admit(
                now_ms,
                (limits, request),
                (provisional, counted),
                credit,
                &returns,
            ),
            LimiterCall::Refill {
                limits,
                ticket,
                credit,
                returns,
            } => self.refill(now_ms, limits, ticket, credit, &returns),
            LimiterCall::AdmitRequestOnly {
                limits,
                provisional,
            } => self.admit_request_only(now_ms, limits, provisional),
            LimiterCall::Settle {
                limits,
                reservation,
                usage,
                confirms,
                cost_micros,
            } => {
                self.confirmed |= confirms;
                LimiterReply::Settled(self.limiter.settle_priced(
                    &limits,
                    now_ms,
                    &reservation,
                    usage,
                    cost_micros,
                ))
            }
            LimiterCall::Renew {
                limits,
                lease_id,
                lease_ms,
            } => LimiterReply::Renewed(self.limiter.renew(&limits, now_ms, lease_id, lease_ms)),
            LimiterCall::Status { limits } => self.status(now_ms, limits),
        }
    }

    fn reads_only(call: &LimiterCall) -> bool {
        matches!(call, LimiterCall::Status { .. })
    }

    fn should_store(&self) -> bool {
        self.confirmed
    }

    /// A renewal lasts as long as the object stays in memory; it is stored with the next
    /// write (an admission, a settlement). Renewals come from moving answers, which call at
    /// least every `RENEW_EVERY_MS`, so the object stays in memory while they need it. If
    /// it restarts anyway, the lease ends at its stored end, sooner than renewed: the slot
    /// comes back early, never late, and the lease record (kept `LEASE_MEMORY_MS`) still
    /// settles the tokens exactly. Writing every renewal cost a storage write per call.
    fn memory_only(call: &LimiterCall) -> bool {
        matches!(call, LimiterCall::Renew { .. })
    }

    fn stored(&mut self) {
        self.seen.writes += 1;
    }

    fn is_idle(&self, now_ms: u64) -> bool {
        self.limiter.idle_in_ms(&self.limits, now_ms) == 0
    }

    fn check_idle_in_ms(&self, now_ms: u64) -> u64 {
        self.limiter
            .idle_in_ms(&self.limits, now_ms)
            .saturating_add(IDLE_SLACK_MS)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn admit_call(limits: TierLimits, provisional: bool) -> LimiterCall {
        let request = AdmissionRequest {
            input_tokens: 10,
            output_tokens: 10,
            lease_ms: 60_000,
            quota: None,
        };
        LimiterCall::Admit {
            limits,
            request,
            provisional,
            credit: 0,
            returns: Returns::default(),
            counted: false,
        }
    }

    fn reservation_of(reply: LimiterReply) -> Reservation {
        match reply {
            LimiterReply::Admitted(AdmitReply {
                admission: Admission::Admitted(reservation),
                ..
            }) => reservation,
            other => panic!("expected an admission, got {other:?}"),
        }
    }

    #[test]
    fn a_passthrough_caller_is_stored_only_once_the_upstream_accepted_it() {
        let limits = TierLimits {
            rpm: NonZeroU32::new(2),
            ..TierLimits::default()
        };
        let t0 = 1_764_000_000_000;
        let settle = |reservation, confirms| LimiterCall::Settle {
            limits,
            reservation,
            usage: Used::UNKNOWN,
            confirms,
            cost_micros: None,
        };
        // A made-up key: admitted, limited in memory, refused upstream, never stored.
        let mut object = LimiterObject::default();
        let reservation = reservation_of(object.decide(t0, admit_call(limits, true)));
        assert!(!object.should_store());
        let only = LimiterCall::AdmitRequestOnly {
            limits,
            provisional: true,
        };
        let LimiterReply::Admitted(reply) = object.decide(t0, only) else {
            panic!("an admission answers with an admission");
        };
        assert!(matches!(reply.admission, Admission::Admitted(_)));
        assert!(!object.should_store());
        object.decide(t0 + 1, settle(reservation, false));
        assert!(!object.should_store());
        // The limits still hold while the object lives.
        let LimiterReply::Admitted(reply) = object.decide(t0 + 2, admit_call(limits, true)) else {
            panic!("an admission answers with an admission");
        };
        assert!(matches!(reply.admission, Admission::Denied(_)));
        // A real key: stored from the settlement that reports a 2xx on.
        let mut object = LimiterObject::default();
        let reservation = reservation_of(object.decide(t0, admit_call(limits, true)));
        object.decide(t0 + 1, settle(reservation, true));
        assert!(object.should_store());
        reservation_of(object.decide(t0 + 2, admit_call(limits, true)));
        assert!(object.should_store());
        // Managed callers are stored from their first admission, as before.
        let mut object = LimiterObject::default();
        reservation_of(object.decide(t0, admit_call(limits, false)));
        assert!(object.should_store());
        // A state stored before the flag existed reads as confirmed.
        let stored: LimiterObject =
            serde_json::from_str(r#"{"limiter": {}, "limits": {"rpm": 2}}"#).unwrap();
        assert!(stored.should_store());
        // And a settlement call without the flag (from an older Worker) confirms.
        let old: LimiterCall = serde_json::from_str(&format!(
            r#"{{"settle": {{"limits": {{}}, "reservation": {}, "usage": {{}}}}}}"#,
            serde_json::to_string(&reservation).unwrap()
        ))
        .unwrap();
        assert!(matches!(old, LimiterCall::Settle { confirms: true, .. }));
    }

    /// The object as the shell keeps it: decides in memory, and what it would read after a
    /// restart is the text of its last write.
    struct Shelled {
        memory: LimiterObject,
        stored: Option<String>,
    }

    impl Shelled {
        fn call(&mut self, now_ms: u64, call: LimiterCall) -> LimiterReply {
            let kept = call.clone();
            let reply = self.memory.decide(now_ms, call);
            if crate::durable::stored_after(&self.memory, &kept) {
                self.stored = Some(serde_json::to_string(&self.memory).unwrap());
                self.memory.stored();
            }
            reply
        }

        fn restart(&mut self) {
            self.memory = self
                .stored
                .as_deref()
                .map(|text| serde_json::from_str(text).unwrap())
                .unwrap_or_default();
        }
    }

    fn one_slot() -> TierLimits {
        TierLimits {
            concurrency: NonZeroU32::new(1),
            output_tpm: NonZeroU32::new(1_000),
            ..TierLimits::default()
        }
    }

    fn admit_for(limits: TierLimits, lease_ms: u64) -> LimiterCall {
        LimiterCall::Admit {
            limits,
            request: AdmissionRequest {
                input_tokens: 10,
                output_tokens: 100,
                lease_ms,
                quota: None,
            },
            provisional: false,
            credit: 0,
            returns: Returns::default(),
            counted: false,
        }
    }

    fn admitted(reply: &LimiterReply) -> bool {
        matches!(
            reply,
            LimiterReply::Admitted(AdmitReply {
                admission: Admission::Admitted(_),
                ..
            })
        )
    }

    #[test]
    fn regression_every_renewal_was_a_storage_write() {
        // A streamed answer renewed its slot every 1.5 s, each renewal one object request
        // and one write of the whole state: a minute of streaming was 40 writes.
        let limits = one_slot();
        let t0 = 1_764_000_000_000;
        let mut object = Shelled {
            memory: LimiterObject::default(),
            stored: None,
        };
        let reservation = reservation_of(object.call(t0, admit_for(limits, 15_000)));
        let after_admission = object.stored.clone();
        assert!(after_admission.is_some());
        for i in 1..=10 {
            let renew = LimiterCall::Renew {
                limits,
                lease_id: reservation.lease_id,
                lease_ms: 60_000,
            };
            assert!(!crate::durable::stored_after(&object.memory, &renew));
            let reply = object.call(t0 + i * 10_000, renew);
            assert!(matches!(reply, LimiterReply::Renewed(true)));
        }
        assert_eq!(object.stored, after_admission, "no renewal was written");
        let settle = LimiterCall::Settle {
            limits,
            reservation,
            usage: Used::UNKNOWN,
            confirms: true,
            cost_micros: None,
        };
        object.call(t0 + 101_000, settle);
        let LimiterReply::Status(usage) =
            object.call(t0 + 102_000, LimiterCall::Status { limits: None })
        else {
            panic!("a status call answers with usage");
        };
        assert_eq!(
            usage.object,
            ObjectCalls {
                calls: 12,
                renewals: 10,
                writes: 2
            }
        );
    }

    #[test]
    fn a_restart_forgets_renewals_and_the_slot_comes_back_at_the_stored_end() {
        let limits = one_slot();
        let t0 = 1_764_000_000_000;
        let mut object = Shelled {
            memory: LimiterObject::default(),
            stored: None,
        };
        let reservation = reservation_of(object.call(t0, admit_for(limits, 15_000)));
        let renew = LimiterCall::Renew {
            limits,
            lease_id: reservation.lease_id,
            lease_ms: 60_000,
        };
        assert!(matches!(
            object.call(t0 + 10_000, renew.clone()),
            LimiterReply::Renewed(true)
        ));
        // In memory the slot is held past its stored end.
        let mut kept = object.memory.clone();
        assert!(!admitted(
            &kept.decide(t0 + 20_000, admit_for(limits, 15_000))
        ));
        // Restarted: the lease ends at its stored end; the slot is free, not held longer.
        object.restart();
        assert!(!admitted(
            &object
                .memory
                .clone()
                .decide(t0 + 14_000, admit_for(limits, 15_000))
        ));
        assert!(admitted(
            &object
                .memory
                .clone()
                .decide(t0 + 16_000, admit_for(limits, 15_000))
        ));
        // A lapsed lease is not renewed back to life.
        assert!(matches!(
            object.call(t0 + 20_000, renew),
            LimiterReply::Renewed(false)
        ));
        // Its record still settles the tokens: what was not used comes back, once.
        let settle = LimiterCall::Settle {
            limits,
            reservation,
            usage: Used {
                input_tokens: Some(10),
                output_tokens: Some(40),
            },
            confirms: true,
            cost_micros: None,
        };
        let LimiterReply::Settled(settled) = object.call(t0 + 30_000, settle.clone()) else {
            panic!("a settlement answers with a settlement");
        };
        assert!(settled.lease_found);
        assert_eq!(settled.returned_output_tokens, 60);
        let LimiterReply::Settled(again) = object.call(t0 + 31_000, settle) else {
            panic!("a settlement answers with a settlement");
        };
        assert!(!again.lease_found);
        assert_eq!(again.returned_output_tokens, 0);
    }

    #[test]
    fn a_request_only_admission_holds_no_slot_and_leaves_nothing_to_settle() {
        let limits = TierLimits {
            rpm: NonZeroU32::new(2),
            concurrency: NonZeroU32::new(1),
            ..TierLimits::default()
        };
        let t0 = 1_764_000_000_000;
        let mut object = LimiterObject::default();
        reservation_of(object.decide(t0, admit_call(limits, false)));
        let only = || LimiterCall::AdmitRequestOnly {
            limits,
            provisional: false,
        };
        assert_eq!(
            reservation_of(object.decide(t0, only())),
            Reservation::NOTHING
        );
        let LimiterReply::Admitted(reply) = object.decide(t0, only()) else {
            panic!("an admission answers with an admission");
        };
        let Admission::Denied(denial) = reply.admission else {
            panic!("the third request of an rpm of 2 is denied");
        };
        assert_eq!(denial.dimension, crate::limits::Dimension::Rpm);
    }

    #[test]
    fn a_caller_is_admitted_settled_and_then_idle() {
        let limits = TierLimits {
            rpm: NonZeroU32::new(2),
            ..TierLimits::default()
        };
        let mut object = LimiterObject::default();
        let t0 = 1_764_000_000_000;
        assert!(object.is_idle(t0));
        let request = AdmissionRequest {
            input_tokens: 0,
            output_tokens: 0,
            lease_ms: 60_000,
            quota: None,
        };
        let LimiterReply::Admitted(reply) = object.decide(
            t0,
            LimiterCall::Admit {
                limits,
                request,
                provisional: false,
                credit: 0,
                returns: Returns::default(),
                counted: false,
            },
        ) else {
            panic!("an admission answers with an admission");
        };
        let Admission::Admitted(reservation) = reply.admission else {
            panic!("admitted")
        };
        assert_eq!(reply.now_ms, t0);
        assert!(!object.is_idle(t0));
        // Not before the rpm bucket is full again (30 s at 2 per minute), plus the slack.
        assert!(object.check_idle_in_ms(t0) >= 30_000 + IDLE_SLACK_MS);
        let settled = object.decide(
            t0 + 10,
            LimiterCall::Settle {
                limits,
                reservation,
                usage: Used::UNKNOWN,
                confirms: true,
                cost_micros: None,
            },
        );
        assert!(matches!(settled, LimiterReply::Settled(_)));
        let check = object.check_idle_in_ms(t0 + 10);
        assert!(!object.is_idle(t0 + 10));
        assert!(object.is_idle(t0 + 10 + check));
        // The stored form is plain JSON, and reads back the same.
        let text = serde_json::to_string(&object).unwrap();
        let back: LimiterObject = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn the_status_call_shows_usage_and_changes_nothing() {
        let limits = TierLimits {
            rpm: NonZeroU32::new(10),
            concurrency: NonZeroU32::new(2),
            ..TierLimits::default()
        };
        let t0 = 1_764_000_000_000;
        let mut object = LimiterObject::default();
        let status = LimiterCall::Status { limits: None };
        assert!(LimiterObject::reads_only(&status));
        assert!(!LimiterObject::reads_only(&admit_call(limits, false)));
        let LimiterReply::Status(fresh) = object.decide(
            t0,
            LimiterCall::Status {
                limits: Some(limits),
            },
        ) else {
            panic!("a status answers with a status");
        };
        assert!(fresh.idle);
        assert_eq!(fresh.dimensions.len(), 2);
        assert_eq!(fresh.dimensions[0].remaining, 10);
        reservation_of(object.decide(t0, admit_call(limits, false)));
        reservation_of(object.decide(t0, admit_call(limits, false)));
        let before = serde_json::to_string(&object).unwrap();
        // Without limits given, the ones the object was last used with.
        let LimiterReply::Status(usage) = object.decide(t0 + 10, status) else {
            panic!("a status answers with a status");
        };
        assert_eq!(serde_json::to_string(&object).unwrap(), before);
        assert_eq!(usage.limits, limits);
        assert!(!usage.idle);
        let rpm = usage
            .dimensions
            .iter()
            .find(|d| d.dimension == crate::limits::Dimension::Rpm)
            .unwrap();
        assert_eq!((rpm.limit, rpm.remaining), (10, 8));
        let slots = usage
            .dimensions
            .iter()
            .find(|d| d.dimension == crate::limits::Dimension::Concurrency)
            .unwrap();
        assert_eq!(slots.remaining, 0);
    }

    /// `LimiterCall` as serde's derive read it, to hold the written-out decoder to.
    mod derived {
        use super::super::{is_false, is_zero, yes};
        use super::*;

        #[derive(Debug, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub(super) enum LimiterCall {
            Admit {
                limits: TierLimits,
                request: AdmissionRequest,
                #[serde(default)]
                provisional: bool,
                #[serde(default, skip_serializing_if = "is_zero")]
                credit: u32,
                #[serde(default, skip_serializing_if = "Returns::is_empty")]
                returns: Returns,
                #[serde(default, skip_serializing_if = "is_false")]
                counted: bool,
            },
            Refill {
                limits: TierLimits,
                #[serde(default)]
                ticket: Option<AdmissionRequest>,
                #[serde(default)]
                credit: u32,
                #[serde(default)]
                returns: Returns,
            },
            AdmitRequestOnly {
                limits: TierLimits,
                #[serde(default)]
                provisional: bool,
            },
            Settle {
                limits: TierLimits,
                reservation: Reservation,
                usage: Used,
                #[serde(default = "yes")]
                confirms: bool,
            },
            Renew {
                limits: TierLimits,
                lease_id: u64,
                lease_ms: u64,
            },
            Status {
                #[serde(default)]
                limits: Option<TierLimits>,
            },
        }
    }

    /// What each decoder reads from `text`, written back (or its error's words).
    fn both_read(text: &str) -> (Result<String, String>, Result<String, String>) {
        let hand = serde_json::from_str::<LimiterCall>(text)
            .map(|call| serde_json::to_string(&call).unwrap())
            .map_err(|e| e.to_string());
        let derived = serde_json::from_str::<derived::LimiterCall>(text)
            .map(|call| serde_json::to_string(&call).unwrap())
            .map_err(|e| e.to_string());
        (hand, derived)
    }

    #[test]
    fn a_call_reads_as_the_derive_read_it() {
        let limits = TierLimits {
            rpm: NonZeroU32::new(2),
            output_tpm: NonZeroU32::new(900),
            ..TierLimits::default()
        };
        let request = AdmissionRequest {
            input_tokens: 3,
            output_tokens: 4,
            lease_ms: 5,
            quota: None,
        };
        let reservation = Reservation {
            lease_id: 6,
            input_tokens: 7,
            output_tokens: 8,
            lease_expires_ms: 9,
            quota: None,
        };
        let returns = Returns {
            settle: Vec::new(),
            release: vec![Ticket {
                reservation,
                requests: 1,
            }],
        };
        let written = [
            admit_call(limits, true),
            LimiterCall::Admit {
                limits,
                request,
                provisional: false,
                credit: 3,
                returns: returns.clone(),
                counted: true,
            },
            LimiterCall::Refill {
                limits,
                ticket: Some(request),
                credit: 2,
                returns,
            },
            LimiterCall::Refill {
                limits,
                ticket: None,
                credit: 0,
                returns: Returns::default(),
            },
            LimiterCall::AdmitRequestOnly {
                limits,
                provisional: true,
            },
            LimiterCall::Settle {
                limits,
                reservation,
                usage: Used {
                    input_tokens: Some(1),
                    output_tokens: None,
                },
                confirms: false,
                cost_micros: None,
            },
            LimiterCall::Renew {
                limits,
                lease_id: 6,
                lease_ms: 7,
            },
            LimiterCall::Status {
                limits: Some(limits),
            },
            LimiterCall::Status { limits: None },
        ];
        for call in &written {
            let text = serde_json::to_string(call).unwrap();
            let (hand, derived) = both_read(&text);
            assert_eq!(hand.as_ref(), Ok(&text));
            assert_eq!(hand, derived, "{text}");
        }
        let request = serde_json::to_string(&request).unwrap();
        let reservation = serde_json::to_string(&reservation).unwrap();
        // Defaults, fields skipped, and every refusal in the same words at the same place.
        for text in [
            format!(r#"{{"admit": {{"limits": {{}}, "request": {request}}}}}"#),
            format!(r#"{{"admit": {{"request": {request}, "later": [1], "limits": {{}}}}}}"#),
            r#"{"refill": {"limits": {}}}"#.to_string(),
            r#"{"refill": {"limits": {}, "ticket": null}}"#.to_string(),
            r#"{"admit_request_only": {"limits": {}}}"#.to_string(),
            format!(
                r#"{{"settle": {{"limits": {{}}, "reservation": {reservation}, "usage": {{}}}}}}"#
            ),
            r#"{"status": {}}"#.to_string(),
            r#"{"status": {"limits": null}}"#.to_string(),
            r#"{"status": {"limits": {"rpm": 1}, "x": 2}}"#.to_string(),
            r#"{"admit": {"limits": {}}}"#.to_string(),
            format!(r#"{{"admit": {{"request": {request}}}}}"#),
            format!(r#"{{"admit": {{"limits": null, "request": {request}}}}}"#),
            format!(r#"{{"admit": {{"limits": {{}}, "limits": {{}}, "request": {request}}}}}"#),
            format!(r#"{{"admit": {{"limits": {{}}, "request": {request}, "credit": -1}}}}"#),
            format!(r#"{{"admit": {{"limits": {{}}, "request": {request}, "counted": 1}}}}"#),
            r#"{"refill": {"limits": {}, "credit": 1, "credit": 2}}"#.to_string(),
            r#"{"admit_request_only": {"limits": {}, "provisional": "yes"}}"#.to_string(),
            format!(r#"{{"settle": {{"limits": {{}}, "reservation": {reservation}}}}}"#),
            r#"{"settle": {"limits": {}, "usage": {}}}"#.to_string(),
            format!(
                r#"{{"settle": {{"limits": {{}}, "reservation": {reservation}, "usage": {{}}, "confirms": null}}}}"#
            ),
            r#"{"renew": {"limits": {}, "lease_id": 1}}"#.to_string(),
            r#"{"renew": {"lease_ms": 1, "lease_id": 1}}"#.to_string(),
            r#"{"renew": {"limits": {}, "lease_id": 1, "lease_ms": 2.5}}"#.to_string(),
            r#"{"status": {"limits": {}, "limits": {}}}"#.to_string(),
            r#"{"status": 1}"#.to_string(),
            r#"{"status": null}"#.to_string(),
            r#""status""#.to_string(),
            r#"{"later": {}}"#.to_string(),
            r#"{"renew": {"limits": {}, "lease_id": 1, "lease_ms": 2}"#.to_string(),
            r#"{"renew": {"limits": {}, "lease_id": 1, "lease_ms": 2}} 1"#.to_string(),
            "[]".to_string(),
            "7".to_string(),
        ] {
            let (hand, derived) = both_read(&text);
            assert_eq!(hand, derived, "{text}");
        }
    }
}
