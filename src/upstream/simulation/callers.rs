//! The callers' own limits in the fleet simulation: each request goes through
//! [`crate::pipeline::serve`], as the Worker's do, over a [`Limiter`] port that reaches its
//! caller's limiter object ([`LimiterObject`], run by the same object loop and over the same
//! round trips, write confirmations and restarts as the key's) on the path without credit:
//! admitted, its slot held in renewed leases while its attempts run, and settled with what
//! its answer really used once it is over.
//!
//! Every decision the objects make goes into a ledger, in the order they made them, so a run
//! can be checked against the tier exactly: in any stretch of time that ends with an
//! admission, a caller was charged no more than its bucket holds plus what it refilled.

use crate::config::TierLimits;
use crate::error::ProxyError;
use crate::limits::{
    Admission, AdmissionRequest, AdmitReply, LimiterCall, LimiterObject, LimiterReply, Reservation,
    Returns, Settled, Settlement,
};
use crate::pipeline::{Admitted, Lease, Limiter, Terms};

use super::*;

/// One decision of a caller's object, in the order it was made.
#[derive(Debug, Clone, Copy)]
pub(super) enum Entry {
    Admitted(Reservation),
    Settled(u64, Settlement),
}

/// What a caller's object decided over a run, and what its requests saw.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Each decision, with when the object made it.
    pub entries: Vec<(Decided, Entry)>,
    pub denied: u64,
    /// Admissions that never reached the object (it restarted under both sends).
    pub unreachable: u64,
    /// Leases whose settlement never reached the object.
    pub unsettled: Vec<u64>,
}

/// The callers of a run: their tier, their objects and their ledgers. Request `i` is sent by
/// caller `i mod n`.
pub(super) struct Callers {
    pub limits: TierLimits,
    pub objects: Vec<Rc<RefCell<SimObject<LimiterObject>>>>,
    pub ledgers: Vec<Rc<RefCell<Ledger>>>,
    /// What each served answer really generates, up to its `max_tokens`.
    outputs: RefCell<fastrand::Rng>,
}

impl Callers {
    /// `count` callers of one tier; caller `i`'s object restarts first at
    /// `first_restart_ms + i · stagger_ms`, then as the platform restarts objects.
    pub fn new(
        count: usize,
        limits: TierLimits,
        seed: u64,
        (first_restart_ms, stagger_ms): (u64, u64),
    ) -> Rc<Callers> {
        Rc::new(Callers {
            limits,
            objects: (0..count as u64)
                .map(|i| {
                    Rc::new(RefCell::new(SimObject::new(
                        seed ^ i,
                        Some(first_restart_ms + i * stagger_ms),
                    )))
                })
                .collect(),
            ledgers: (0..count)
                .map(|_| Rc::new(RefCell::new(Ledger::default())))
                .collect(),
            outputs: RefCell::new(fastrand::Rng::with_seed(seed ^ 0x07)),
        })
    }

    /// The caller of request `i` as it reaches its object from an edge `rtt_ms` away.
    pub fn for_request(
        &self,
        i: usize,
        time: &Rc<VirtualTime>,
        rtt_ms: u64,
        rng: &Rc<RefCell<fastrand::Rng>>,
    ) -> Caller {
        let caller = i % self.objects.len();
        Caller {
            limits: self.limits,
            object: self.objects[caller].clone(),
            ledger: self.ledgers[caller].clone(),
            time: time.clone(),
            rtt_ms,
            rng: rng.clone(),
            output_tokens: self.outputs.borrow_mut().u64(1..=MAX_TOKENS),
        }
    }

    /// The leases a caller's object still holds a record of (none once all are settled).
    pub fn leases_left(&self, caller: usize) -> usize {
        let object = self.objects[caller].borrow();
        if let Some(state) = object.host.in_memory() {
            return state.limiter().lease_records();
        }
        let stored = object.store.stored.borrow();
        stored.as_deref().map_or(0, |text| {
            serde_json::from_str::<LimiterObject>(text)
                .expect("a stored state decodes")
                .limiter()
                .lease_records()
        })
    }
}

/// One request's caller: its limits, its object and its ledger.
pub(super) struct Caller {
    limits: TierLimits,
    object: Rc<RefCell<SimObject<LimiterObject>>>,
    ledger: Rc<RefCell<Ledger>>,
    time: Rc<VirtualTime>,
    rtt_ms: u64,
    rng: Rc<RefCell<fastrand::Rng>>,
    /// What the answer generates if it is served.
    output_tokens: u64,
}

impl Caller {
    /// One call, sent again once when the object restarts under it (as the shell's).
    async fn call(&self, call: LimiterCall) -> Result<(Decided, LimiterReply), Reset> {
        let send = || {
            let trip = Trip::draw(&self.rng, self.rtt_ms);
            carry(&self.time, &self.object, call.clone(), trip)
        };
        crate::durable::send_with_retry(send, |_: &Reset| (true, false)).await
    }

    /// What the answer generates if it is served.
    pub fn output_tokens(&self) -> u64 {
        self.output_tokens
    }

    /// Admits `request`: its reservation, or how it ended (refused by the caller's limits,
    /// or the object out of reach).
    async fn admit(&self, request: AdmissionRequest) -> Result<Reservation, End> {
        let call = LimiterCall::Admit {
            limits: self.limits,
            request,
            provisional: false,
            credit: 0,
            returns: Returns::default(),
            counted: false,
        };
        let replied = self.call(call).await;
        let at = self.time.now_ms();
        let mut ledger = self.ledger.borrow_mut();
        match replied {
            Ok((decided, LimiterReply::Admitted(AdmitReply { admission, .. }))) => {
                match admission {
                    Admission::Admitted(reservation) => {
                        ledger.entries.push((decided, Entry::Admitted(reservation)));
                        Ok(reservation)
                    }
                    Admission::Denied(denial) => {
                        ledger.denied += 1;
                        Err(End::Limited {
                            at,
                            retry_after_ms: denial.retry_after_ms,
                        })
                    }
                    Admission::Exhausted(refusal) => {
                        ledger.denied += 1;
                        Err(End::Limited {
                            at,
                            retry_after_ms: refusal.retry_after_ms,
                        })
                    }
                }
            }
            Ok((_, other)) => panic!("an admission answers an admission: {other:?}"),
            Err(Reset) => {
                ledger.unreachable += 1;
                Err(End::GaveUp {
                    at,
                    retry_after_ms: 0,
                })
            }
        }
    }
}

/// A request's way to its caller's limits (none when the run has no callers), and how its
/// admission ended when it was not admitted, for the client's end.
pub(super) struct CallerPort {
    pub caller: Option<Caller>,
    pub not_admitted: Rc<Cell<Option<End>>>,
}

impl Limiter for CallerPort {
    type Settling = CallerPort;

    async fn admit(
        &self,
        request: AdmissionRequest,
        _terms: Terms,
        _headers: &mut Vec<(&'static str, String)>,
    ) -> Result<Admitted, ProxyError> {
        let caller = self
            .caller
            .as_ref()
            .expect("only a run with callers admits");
        match caller.admit(request).await {
            Ok(reservation) => Ok(Admitted {
                reservation,
                on_credit: false,
            }),
            Err(end) => {
                self.not_admitted.set(Some(end));
                Err(ProxyError::Internal("not admitted".to_string()))
            }
        }
    }

    async fn admit_request_only(
        &self,
        _provisional: bool,
        _headers: &mut Vec<(&'static str, String)>,
    ) -> Result<(), ProxyError> {
        unreachable!("a message is metered in full")
    }

    fn settling(self) -> CallerPort {
        self
    }
}

impl Lease for CallerPort {
    async fn renew(&self, lease_id: u64, lease_ms: u64) {
        let Some(caller) = &self.caller else { return };
        let renew = LimiterCall::Renew {
            limits: caller.limits,
            lease_id,
            lease_ms,
        };
        // A renewal that fails leaves the lease to end on its own.
        let _ = caller.call(renew).await;
    }

    async fn settle(&self, settled: Settled, _on_credit: bool) {
        let Some(caller) = &self.caller else { return };
        let reservation = settled.reservation;
        let call = LimiterCall::Settle {
            limits: caller.limits,
            reservation,
            usage: settled.usage,
            confirms: settled.confirms,
            cost_micros: settled.cost_micros,
        };
        let replied = caller.call(call).await;
        let mut ledger = caller.ledger.borrow_mut();
        match replied {
            Ok((decided, LimiterReply::Settled(settlement))) => {
                let entry = Entry::Settled(reservation.lease_id, settlement);
                ledger.entries.push((decided, entry));
            }
            Ok((_, other)) => panic!("a settlement answers a settlement: {other:?}"),
            Err(Reset) => ledger.unsettled.push(reservation.lease_id),
        }
    }
}

/// What an entry charges one dimension of the tier (a refund is negative): `rpm` (0), input
/// tokens (1), output tokens (2).
fn charge(entry: &Entry, dimension: usize) -> i128 {
    let signed = |extra: u64, returned: u64| i128::from(extra) - i128::from(returned);
    match (entry, dimension) {
        (Entry::Admitted(_), 0) => 1,
        (Entry::Admitted(r), 1) => i128::from(r.input_tokens),
        (Entry::Admitted(r), _) => i128::from(r.output_tokens),
        (Entry::Settled(..), 0) => 0,
        (Entry::Settled(_, s), 1) => signed(s.extra_input_tokens, s.returned_input_tokens),
        (Entry::Settled(_, s), _) => signed(s.extra_output_tokens, s.returned_output_tokens),
    }
}

/// The most a caller was charged of one dimension of `quota` a minute, over every stretch of
/// time that ends with an admission, as a share of what its bucket allowed then: all it
/// holds (it starts full) and what it refilled meanwhile. Above 1 the caller got past its
/// limit. In exact integers: a stretch from `t0` to `t1` allows `quota · (60 000 + t1 − t0)`
/// sixty-thousandths of a token.
fn most_of_the_bucket(ledger: &Ledger, dimension: usize, quota: u64) -> (bool, f64) {
    let mut entries: Vec<&(Decided, Entry)> = ledger.entries.iter().collect();
    entries.sort_by_key(|(decided, _)| decided.order);
    let mut prefix = vec![0i128];
    for (_, entry) in &entries {
        let last = prefix[prefix.len() - 1];
        prefix.push(last + charge(entry, dimension));
    }
    let (mut within, mut most) = (true, 0f64);
    for (j, (end, entry)) in entries.iter().enumerate() {
        if !matches!(entry, Entry::Admitted(_)) {
            continue;
        }
        for (i, (start, _)) in entries[..=j].iter().enumerate() {
            let charged = (prefix[j + 1] - prefix[i]) * 60_000;
            let allowed = i128::from(quota) * i128::from(60_000 + end.at - start.at);
            within &= charged <= allowed;
            most = most.max(charged as f64 / allowed as f64);
        }
    }
    (within, most)
}

/// Requests from 4 callers of one tier, 8 a second for a minute (each caller sends twice
/// its `rpm`) on 8 edges at random; prompts of 2,000 tokens on average estimated 30 % over,
/// on a key whose own limits never bind; 30 s budgets.
fn four_callers_at_twice_their_tier(seed: u64) -> Scenario {
    Scenario {
        clients: 480,
        spacing_ms: 125,
        edges: 8,
        outage_ms: 0,
        outage_from_ms: 0,
        offset_ms: 0,
        capacity_rps: None,
        key_rpm: None,
        key_input: Some(InputLimit {
            tpm: 100_000_000,
            tokens: 2_000,
            estimate: 2_600,
        }),
        key_empty: false,
        budget_ms: 30_000,
        seed,
        shared: true,
        random_arrivals: true,
        key_raise: None,
        restart_at_ms: None,
        mix: None,
    }
}

#[test]
fn no_caller_is_admitted_past_its_tier_and_every_admission_is_settled_across_restarts() {
    let quota = |n: u32| std::num::NonZeroU32::new(n);
    let limits = TierLimits {
        rpm: quota(60),
        input_tpm: quota(100_000),
        output_tpm: quota(30_000),
        concurrency: None,
        quotas: Default::default(),
    };
    let quotas = [60, 100_000, 30_000];
    for seed in 0..4 {
        // Each caller's object restarts once in the middle of the traffic.
        let callers = Callers::new(4, limits, seed, (20_000, 9_000));
        let run = simulate_callers(
            four_callers_at_twice_their_tier(seed),
            false,
            Some(callers.clone()),
        );
        let mut across = 0;
        for (caller, ledger) in callers.ledgers.iter().enumerate() {
            let ledger = ledger.borrow();
            let mut most = [0f64; 3];
            for (dimension, quota) in quotas.into_iter().enumerate() {
                let (within, share) = most_of_the_bucket(&ledger, dimension, quota);
                assert!(
                    within,
                    "seed {seed}: caller {caller} got {share:.3} of its bucket of dimension {dimension}"
                );
                most[dimension] = share;
            }
            // Every admission is settled once, and its lease was found (none leaked).
            let restarts = callers.objects[caller].borrow().restarted_at.clone();
            let mut admitted = std::collections::HashMap::new();
            for (decided, entry) in &ledger.entries {
                if let Entry::Admitted(r) = entry {
                    admitted.insert(r.lease_id, decided.at);
                }
            }
            let mut settled = 0;
            for (decided, entry) in &ledger.entries {
                if let Entry::Settled(lease, settlement) = entry {
                    let since = admitted.remove(lease).expect("a lease is settled once");
                    assert!(
                        settlement.lease_found,
                        "seed {seed}: lease {lease} was lost"
                    );
                    settled += 1;
                    across += usize::from(restarts.iter().any(|&r| since < r && r <= decided.at));
                }
            }
            assert!(admitted.is_empty(), "seed {seed}: unsettled {admitted:?}");
            assert!(ledger.unsettled.is_empty());
            assert_eq!(callers.leases_left(caller), 0, "seed {seed}: a slot leaked");
            assert!(ledger.denied > 0, "seed {seed}: the tier never bound");
            assert_eq!(restarts.len(), 1);
            eprintln!(
                "seed {seed}, caller {caller}: {settled} admitted and settled, {} refused by its limits, \
                 {} unreachable; most of its buckets used in any stretch: rpm {:.3}, input {:.3}, output {:.3}",
                ledger.denied, ledger.unreachable, most[0], most[1], most[2],
            );
        }
        let served = run
            .clients
            .iter()
            .filter(|c| matches!(c.end, Some(End::Served { .. })))
            .count();
        eprintln!("seed {seed}: {served} served, {across} settled across a restart of their caller's object");
        assert!(across > 0, "seed {seed}: no admission outlived a restart");
    }
}
