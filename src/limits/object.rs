//! The caller's Durable Object: its calls, replies and idle rule.
//!
//! A Durable Object runs one event at a time per key and keeps its state in memory between
//! events, so admission is exact under any concurrency: every call is one synchronous
//! `decide` on the loaded state, followed by a durable write.

use serde::{Deserialize, Serialize};

use super::state::{
    Admission, AdmissionRequest, DimensionStatus, LimiterState, Reservation, Settlement, Usage,
};
use crate::config::TierLimits;
use crate::durable::ObjectState;

/// The alarm looks again this long after the caller may be idle.
const IDLE_SLACK_MS: u64 = 1_000;

/// One call from the Worker to a caller's object.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterCall {
    Admit {
        limits: TierLimits,
        request: AdmissionRequest,
    },
    Settle {
        limits: TierLimits,
        reservation: Reservation,
        usage: Usage,
    },
    /// The answer is still moving: hold its slot for another `lease_ms`.
    Renew {
        limits: TierLimits,
        lease_id: u64,
        lease_ms: u64,
    },
}

/// The object's answer to an admission: the decision and the caller's limits as of now.
#[derive(Debug, Serialize, Deserialize)]
pub struct AdmitReply {
    pub admission: Admission,
    pub status: Vec<DimensionStatus>,
    /// The object's clock when it decided, so headers are computed on the same clock.
    pub now_ms: u64,
}

/// The object's answer to a call.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum LimiterReply {
    Admitted(AdmitReply),
    Settled(Settlement),
    Renewed(bool),
}

/// What a caller's object stores: its buckets and leases, and the limits it was last used
/// with (the alarm needs them to tell an idle caller from a busy one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LimiterObject {
    limiter: LimiterState,
    limits: TierLimits,
}

impl ObjectState for LimiterObject {
    type Call = LimiterCall;
    type Reply = LimiterReply;
    const STORAGE_KEY: &'static str = "limiter";

    fn decide(&mut self, now_ms: u64, call: LimiterCall) -> LimiterReply {
        match call {
            LimiterCall::Admit { limits, request } => {
                self.limits = limits;
                let admission = self.limiter.admit(&limits, now_ms, &request);
                let status = self.limiter.snapshot(&limits, now_ms);
                LimiterReply::Admitted(AdmitReply {
                    admission,
                    status,
                    now_ms,
                })
            }
            LimiterCall::Settle {
                limits,
                reservation,
                usage,
            } => LimiterReply::Settled(self.limiter.settle(&limits, now_ms, &reservation, usage)),
            LimiterCall::Renew {
                limits,
                lease_id,
                lease_ms,
            } => LimiterReply::Renewed(self.limiter.renew(&limits, now_ms, lease_id, lease_ms)),
        }
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
        };
        let LimiterReply::Admitted(reply) =
            object.decide(t0, LimiterCall::Admit { limits, request })
        else {
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
                usage: Usage::UNKNOWN,
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
}
