//! The upstream key's Durable Object: its calls, replies and idle rule.

use serde::{Deserialize, Serialize};

use super::key_state::{AttemptReport, Change, Gate, Reply, UpstreamState, WaitReason};
use super::key_status::KeyStatus;
use super::outage_policy::OutagePolicy;
use super::pace::{Cost, KeyLimits};
use super::share::Claimant;
use crate::durable::ObjectState;
use crate::retry::runner::{Ask, Tell};

/// The alarm looks again this often whether the key's state can be forgotten.
const IDLE_CHECK_MS: u64 = 60_000;

/// A call's way from the edge, taken as its answer's way back: from the edge's clock when it
/// asked to the object's now. Clocks a little apart, or a call that waited in the runtime,
/// are bounded: at most a second, and nothing when the edge did not say.
fn one_way_ms(asked_ms: u64, now_ms: u64) -> u64 {
    if asked_ms == 0 {
        return 0;
    }
    now_ms.saturating_sub(asked_ms).min(1_000)
}

/// One call from the Worker to the upstream key's object, about one pool (`model`: a route,
/// or a model family of `/v1/messages`, as Anthropic pools its limits). Each carries the first
/// attempts the edge sent unasked since its last call (for the retry budget).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamCall {
    Before {
        model: String,
        is_retry: bool,
        deadline_ms: u64,
        request_seed: u64,
        unreported: u32,
        /// Successes the edge did not tell since its last call.
        #[serde(default)]
        served: u32,
        /// What the request costs the key's buckets.
        #[serde(default)]
        cost: Cost,
        /// Who asks, for the fair order when the pool is scarce.
        #[serde(default)]
        claimant: Claimant,
        /// When the edge asked, by its clock (0: not known).
        #[serde(default)]
        asked_ms: u64,
    },
    After {
        model: String,
        report: AttemptReport,
        rng_seed: u64,
        unreported: u32,
        #[serde(default)]
        served: u32,
        /// The key's limits as the answer's headers reported them.
        #[serde(default)]
        limits: KeyLimits,
        /// What the request costs the key's buckets.
        #[serde(default)]
        cost: Cost,
    },
    /// The operator's view of the key ([`UpstreamState::status`]): read only, nothing is
    /// counted, reserved or stored.
    Status {},
}

// Read as the derive reads it from what `serde_json` writes, the variant's name and fields by
// the shared decoders (`json::StructVariants`, `json::read_fields`), the same defaults and the
// same errors; a struct variant from its object form only (the derive also read an array
// form nothing writes).
impl<'de> Deserialize<'de> for UpstreamCall {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::json::deserialize_struct_variants(deserializer)
    }
}

impl crate::json::StructVariants for UpstreamCall {
    const ENUM: &'static str = "UpstreamCall";
    const NAMES: &'static [&'static str] = &["before", "after", "status"];
    const FIELDS: &'static [&'static [&'static str]] = &[
        &[
            "model",
            "is_retry",
            "deadline_ms",
            "request_seed",
            "unreported",
            "served",
            "cost",
            "claimant",
            "asked_ms",
        ],
        &[
            "model",
            "report",
            "rng_seed",
            "unreported",
            "served",
            "limits",
            "cost",
        ],
        &[],
    ];
    const EXPECTING: &'static [&'static str] = &[
        "struct variant UpstreamCall::Before",
        "struct variant UpstreamCall::After",
        "struct variant UpstreamCall::Status",
    ];

    fn read_variant<'de, A: serde::de::MapAccess<'de>>(
        variant: usize,
        map: A,
    ) -> Result<UpstreamCall, A::Error> {
        CallFields::read(variant, map)?.into_call()
    }
}

/// A call's fields as read, before they make its variant.
#[derive(Default)]
struct CallFields {
    variant: usize,
    model: Option<String>,
    is_retry: Option<bool>,
    deadline_ms: Option<u64>,
    request_seed: Option<u64>,
    asked_ms: Option<u64>,
    rng_seed: Option<u64>,
    unreported: Option<u32>,
    served: Option<u32>,
    cost: Option<Cost>,
    claimant: Option<Claimant>,
    report: Option<AttemptReport>,
    limits: Option<KeyLimits>,
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
        let fields = <UpstreamCall as crate::json::StructVariants>::FIELDS
            .get(variant)
            .copied()
            .unwrap_or_default();
        crate::json::read_fields(map, fields, |field, map| {
            match (variant, field) {
                (_, 0) => read.model = Some(map.next_value()?),
                (0, 1) => read.is_retry = Some(map.next_value()?),
                (0, 2) => read.deadline_ms = Some(map.next_value()?),
                (0, 3) => read.request_seed = Some(map.next_value()?),
                (0, 4) | (1, 3) => read.unreported = Some(map.next_value()?),
                (0, 5) | (1, 4) => read.served = Some(map.next_value()?),
                (0, 6) | (1, 6) => read.cost = Some(map.next_value()?),
                (0, 7) => read.claimant = Some(map.next_value()?),
                (0, _) => read.asked_ms = Some(map.next_value()?),
                (_, 1) => read.report = Some(map.next_value()?),
                (_, 2) => read.rng_seed = Some(map.next_value()?),
                _ => read.limits = Some(map.next_value()?),
            }
            Ok(())
        })?;
        Ok(read)
    }

    /// The variant, with the derive's defaults and its errors for what is missing.
    fn into_call<E: serde::de::Error>(self) -> Result<UpstreamCall, E> {
        use crate::json::required;
        Ok(match self.variant {
            0 => UpstreamCall::Before {
                model: required(self.model, "model")?,
                is_retry: required(self.is_retry, "is_retry")?,
                deadline_ms: required(self.deadline_ms, "deadline_ms")?,
                request_seed: required(self.request_seed, "request_seed")?,
                unreported: required(self.unreported, "unreported")?,
                served: self.served.unwrap_or_default(),
                cost: self.cost.unwrap_or_default(),
                claimant: self.claimant.unwrap_or_default(),
                asked_ms: self.asked_ms.unwrap_or_default(),
            },
            1 => UpstreamCall::After {
                model: required(self.model, "model")?,
                report: required(self.report, "report")?,
                rng_seed: required(self.rng_seed, "rng_seed")?,
                unreported: required(self.unreported, "unreported")?,
                served: self.served.unwrap_or_default(),
                limits: self.limits.unwrap_or_default(),
                cost: self.cost.unwrap_or_default(),
            },
            _ => UpstreamCall::Status {},
        })
    }
}

impl UpstreamCall {
    /// The call for the runner's question before an attempt, about `pool`, from `claimant`.
    #[must_use]
    pub fn before(pool: &str, ask: Ask, claimant: &Claimant) -> UpstreamCall {
        UpstreamCall::Before {
            model: pool.to_string(),
            is_retry: ask.is_retry,
            deadline_ms: ask.deadline_ms,
            request_seed: ask.request_seed,
            unreported: ask.unreported,
            served: ask.unreported_served,
            cost: ask.cost,
            claimant: claimant.clone(),
            asked_ms: ask.asked_ms,
        }
    }

    /// The call for what the runner tells after an attempt, about `pool`; `rng_seed` jitters
    /// a probe this report schedules.
    #[must_use]
    pub fn after(pool: &str, tell: Tell, rng_seed: u64) -> UpstreamCall {
        UpstreamCall::After {
            model: pool.to_string(),
            report: tell.report,
            rng_seed,
            unreported: tell.unreported,
            served: tell.unreported_served,
            limits: tell.limits,
            cost: tell.cost,
        }
    }
}

/// The object's answer to a call.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum UpstreamReply {
    Gate(Gate),
    Change(Change),
    Status(KeyStatus),
}

impl ObjectState for UpstreamState {
    type Call = UpstreamCall;
    type Reply = UpstreamReply;
    const STORAGE_KEY: &'static str = "upstream";

    fn decide(&mut self, now_ms: u64, call: UpstreamCall) -> UpstreamReply {
        let policy = OutagePolicy::default();
        match call {
            UpstreamCall::Before {
                model,
                is_retry,
                deadline_ms,
                request_seed,
                unreported,
                served,
                cost,
                claimant,
                asked_ms,
            } => {
                self.record_requests(&policy, now_ms, unreported);
                self.record_served(&policy, now_ms, &model, served);
                let way_ms = one_way_ms(asked_ms, now_ms);
                UpstreamReply::Gate(self.before_paced_attempt(
                    &policy,
                    now_ms,
                    &model,
                    is_retry,
                    deadline_ms,
                    request_seed,
                    (cost, way_ms),
                    &claimant,
                ))
            }
            UpstreamCall::After {
                model,
                report,
                rng_seed,
                unreported,
                served,
                limits,
                cost,
            } => {
                self.record_requests(&policy, now_ms, unreported);
                self.record_served(&policy, now_ms, &model, served);
                // Only an answer of the pool itself (not a 404 for a made-up model, nor a 401
                // for a made-up key) teaches its limits, and so makes the pool remembered.
                if report.reply != Reply::OtherFailure {
                    self.observe_limits(&policy, now_ms, &model, &limits);
                }
                UpstreamReply::Change(self.after_answer(
                    &policy,
                    now_ms,
                    &model,
                    report,
                    rng_seed,
                    (&limits, cost),
                ))
            }
            UpstreamCall::Status {} => UpstreamReply::Status(self.status(&policy, now_ms)),
        }
    }

    fn reads_only(call: &UpstreamCall) -> bool {
        matches!(call, UpstreamCall::Status {})
    }

    /// A request waiting its fair turn is held, not told to come back: one call per request
    /// however long it waits (up to [`crate::upstream::MAX_HOLD_MS`] a call).
    fn hold_until(reply: &UpstreamReply) -> Option<u64> {
        match reply {
            UpstreamReply::Gate(Gate::Wait {
                until_ms,
                reason: WaitReason::Queued,
            }) => Some(*until_ms),
            _ => None,
        }
    }

    fn poll(&mut self, now_ms: u64, call: &UpstreamCall) -> Option<UpstreamReply> {
        match call {
            UpstreamCall::Before {
                model,
                request_seed,
                ..
            } => Some(UpstreamReply::Gate(self.poll_turn(
                &OutagePolicy::default(),
                now_ms,
                model,
                *request_seed,
            ))),
            _ => None,
        }
    }

    fn is_idle(&self, now_ms: u64) -> bool {
        UpstreamState::is_idle(self, &OutagePolicy::default(), now_ms)
    }

    fn check_idle_in_ms(&self, _now_ms: u64) -> u64 {
        IDLE_CHECK_MS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Reply;

    #[test]
    fn calls_decide_on_the_state_and_replies_are_the_core_values() {
        let t0 = 1_764_000_000_000;
        let mut state = UpstreamState::new();
        let before = |seed| UpstreamCall::Before {
            model: "m".to_string(),
            is_retry: false,
            deadline_ms: t0 + 30_000,
            request_seed: seed,
            unreported: 0,
            served: 0,
            cost: Cost::default(),
            claimant: Claimant::default(),
            asked_ms: 0,
        };
        let reply = serde_json::to_value(state.decide(t0, before(1))).unwrap();
        assert_eq!(
            reply,
            serde_json::to_value(Gate::Go { probe: None }).unwrap()
        );
        let after = UpstreamCall::After {
            model: "m".to_string(),
            report: AttemptReport {
                reply: Reply::RateLimited {
                    retry_after_ms: Some(5_000),
                },
                probe: None,
            },
            rng_seed: 2,
            unreported: 3,
            served: 0,
            limits: KeyLimits::default(),
            cost: Cost::default(),
        };
        let UpstreamReply::Change(change) = state.decide(t0 + 100, after) else {
            panic!("a change")
        };
        assert!(matches!(change, Change::Cooldown { .. }));
        assert!(!ObjectState::is_idle(&state, t0 + 100));
        let UpstreamReply::Gate(gate) = state.decide(t0 + 200, before(3)) else {
            panic!("a gate")
        };
        assert!(matches!(gate, Gate::Wait { .. }), "{gate:?}");
        // Calls read back from their JSON as the Worker sends them.
        let call: UpstreamCall =
            serde_json::from_str(&serde_json::to_string(&before(4)).unwrap()).unwrap();
        assert!(matches!(
            call,
            UpstreamCall::Before {
                request_seed: 4,
                ..
            }
        ));
    }

    #[test]
    fn only_answers_of_the_pool_itself_make_it_remembered() {
        let t0 = 1_764_000_000_000;
        let limits = KeyLimits {
            requests: Some(crate::upstream::Observed {
                limit: 50,
                remaining: 10,
            }),
            ..KeyLimits::default()
        };
        let after = |reply| UpstreamCall::After {
            model: "messages:claude-made-up-9".to_string(),
            report: AttemptReport { reply, probe: None },
            rng_seed: 1,
            unreported: 0,
            served: 0,
            limits,
            cost: Cost::default(),
        };
        let mut state = UpstreamState::new();
        // A 404 for a made-up model (or a 401 for a made-up key), limits headers or not.
        state.decide(t0, after(Reply::OtherFailure));
        assert!(state.pools(&OutagePolicy::default(), t0).is_empty());
        state.decide(t0, after(Reply::Success));
        assert_eq!(state.pools(&OutagePolicy::default(), t0).len(), 1);
    }

    #[test]
    fn the_status_call_reads_without_changing_anything() {
        let t0 = 1_764_000_000_000;
        let mut state = UpstreamState::new();
        let limits = KeyLimits {
            requests: Some(crate::upstream::Observed {
                limit: 50,
                remaining: 10,
            }),
            ..KeyLimits::default()
        };
        state.observe_limits(&OutagePolicy::default(), t0, "claude-sonnet", &limits);
        let before = state.clone();
        let call: UpstreamCall = serde_json::from_str(r#"{"status": {}}"#).unwrap();
        assert!(<UpstreamState as ObjectState>::reads_only(&call));
        let reply = serde_json::to_value(state.decide(t0 + 1_000, call)).unwrap();
        assert_eq!(state, before);
        assert_eq!(reply["pools"][0]["pool"], "claude-sonnet");
        assert_eq!(reply["pools"][0]["limits"][0]["dimension"], "requests");
        assert_eq!(reply["pools"][0]["limits"][0]["limit"], 50);
        let before_call = UpstreamCall::Before {
            model: "m".to_string(),
            is_retry: false,
            deadline_ms: t0,
            request_seed: 1,
            unreported: 0,
            served: 0,
            cost: Cost::default(),
            claimant: Claimant::default(),
            asked_ms: 0,
        };
        assert!(!<UpstreamState as ObjectState>::reads_only(&before_call));
    }

    /// `UpstreamCall` as serde's derive read it, to hold the written-out decoder to.
    mod derived {
        use super::*;

        #[derive(Debug, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub(super) enum UpstreamCall {
            Before {
                model: String,
                is_retry: bool,
                deadline_ms: u64,
                request_seed: u64,
                unreported: u32,
                #[serde(default)]
                served: u32,
                #[serde(default)]
                cost: Cost,
                #[serde(default)]
                claimant: Claimant,
                #[serde(default)]
                asked_ms: u64,
            },
            After {
                model: String,
                report: AttemptReport,
                rng_seed: u64,
                unreported: u32,
                #[serde(default)]
                served: u32,
                #[serde(default)]
                limits: KeyLimits,
                #[serde(default)]
                cost: Cost,
            },
            Status {},
        }
    }

    /// What each decoder reads from `text`, written back (or its error's words).
    fn both_read(text: &str) -> (Result<String, String>, Result<String, String>) {
        let hand = serde_json::from_str::<UpstreamCall>(text)
            .map(|call| serde_json::to_string(&call).unwrap())
            .map_err(|e| e.to_string());
        let derived = serde_json::from_str::<derived::UpstreamCall>(text)
            .map(|call| serde_json::to_string(&call).unwrap())
            .map_err(|e| e.to_string());
        (hand, derived)
    }

    #[test]
    fn a_call_reads_as_the_derive_read_it() {
        let cost = Cost {
            input_tokens: 11,
            output_tokens: 12,
        };
        let claimant = Claimant {
            caller: "caller-1".to_string(),
            weight: 3,
            priority: crate::upstream::Priority::Background,
        };
        let limits = KeyLimits {
            requests: Some(crate::upstream::Observed {
                limit: 50,
                remaining: 10,
            }),
            sent_ms: Some(4),
            answered: Some(5),
            ..KeyLimits::default()
        };
        let written = [
            UpstreamCall::Before {
                model: "m".to_string(),
                is_retry: true,
                deadline_ms: 1,
                request_seed: 2,
                unreported: 3,
                served: 4,
                cost,
                claimant,
                asked_ms: 5,
            },
            UpstreamCall::After {
                model: "messages:claude-x".to_string(),
                report: AttemptReport {
                    reply: Reply::RateLimited {
                        retry_after_ms: Some(7),
                    },
                    probe: None,
                },
                rng_seed: 8,
                unreported: 9,
                served: 10,
                limits,
                cost,
            },
            UpstreamCall::Status {},
        ];
        for call in &written {
            let text = serde_json::to_string(call).unwrap();
            let (hand, derived) = both_read(&text);
            assert_eq!(hand.as_ref(), Ok(&text));
            assert_eq!(hand, derived, "{text}");
        }
        let report = r#"{"reply": "success", "probe": null}"#;
        // Defaults, fields skipped, and every refusal in the same words at the same place.
        for text in [
            r#"{"before": {"model": "m", "is_retry": false, "deadline_ms": 1, "request_seed": 2, "unreported": 0}}"#.to_string(),
            r#"{"before": {"later": {}, "model": "m", "is_retry": false, "deadline_ms": 1, "request_seed": 2, "unreported": 0, "claimant": {}}}"#.to_string(),
            format!(r#"{{"after": {{"model": "m", "report": {report}, "rng_seed": 1, "unreported": 0}}}}"#),
            r#"{"status": {}}"#.to_string(),
            r#"{"status": {"model": "m"}}"#.to_string(),
            r#"{"before": {"model": "m", "deadline_ms": 1, "request_seed": 2, "unreported": 0}}"#.to_string(),
            r#"{"before": {"is_retry": false, "deadline_ms": 1, "request_seed": 2, "unreported": 0}}"#.to_string(),
            r#"{"before": {"model": "m", "is_retry": false, "request_seed": 2, "unreported": 0}}"#.to_string(),
            r#"{"before": {"model": "m", "is_retry": false, "deadline_ms": 1, "unreported": 0}}"#.to_string(),
            r#"{"before": {"model": "m", "is_retry": false, "deadline_ms": 1, "request_seed": 2}}"#.to_string(),
            r#"{"before": {"model": "m", "model": "n", "is_retry": false, "deadline_ms": 1, "request_seed": 2, "unreported": 0}}"#.to_string(),
            r#"{"before": {"model": 1, "is_retry": false, "deadline_ms": 1, "request_seed": 2, "unreported": 0}}"#.to_string(),
            r#"{"before": {"model": "m", "is_retry": false, "deadline_ms": 1, "request_seed": 2, "unreported": 5000000000}}"#.to_string(),
            r#"{"before": {"model": "m", "is_retry": false, "deadline_ms": 1, "request_seed": 2, "unreported": 0, "asked_ms": null}}"#.to_string(),
            r#"{"after": {"model": "m", "rng_seed": 1, "unreported": 0}}"#.to_string(),
            format!(r#"{{"after": {{"model": "m", "report": {report}, "unreported": 0}}}}"#),
            format!(r#"{{"after": {{"model": "m", "report": {report}, "rng_seed": 1}}}}"#),
            format!(r#"{{"after": {{"model": "m", "report": {report}, "rng_seed": 1, "unreported": 0, "limits": 1}}}}"#),
            format!(r#"{{"after": {{"model": "m", "report": {report}, "rng_seed": 1, "unreported": 0, "cost": {{}}, "cost": {{}}}}}}"#),
            r#"{"status": 1}"#.to_string(),
            r#"{"status": null}"#.to_string(),
            r#""status""#.to_string(),
            r#"{"later": {}}"#.to_string(),
            r#"{"status": {}"#.to_string(),
            "[]".to_string(),
        ] {
            let (hand, derived) = both_read(&text);
            assert_eq!(hand, derived, "{text}");
        }
    }
}
