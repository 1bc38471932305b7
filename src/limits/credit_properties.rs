//! Property tests of local credit: several isolates, each with its own [`Credits`], against one
//! caller's object, their calls interleaved (decided late, answered late, lost before or after
//! the object decided them) and isolates that die with tickets, requests and returns in hand.
//!
//! The world drives the core the way the shell does (`shell/objects/limiter.rs`): a request is
//! admitted from a ticket or asks its object with the outbox on board, a settlement on credit
//! waits in the outbox for its owner's turn, a grant gives its unused tickets back when its time
//! is up, and a request in flight renews its lease every 5 s. Checked after every step and at
//! the end:
//! - concurrency: never more requests in flight, over all isolates, than the limit;
//! - a ticket admits at most one request, only one that it covers, only within
//!   [`CREDIT_VALID_MS`] of its arrival in the isolate;
//! - the window bound over the requests that went, each counted at the instant the object
//!   admitted it (its ticket's grant), with what it used;
//! - the object never holds less than a ledger that charges every request that went its
//!   actual usage at that instant (nothing for tickets that admitted nothing);
//! - when no call was lost, no isolate died and no lease record had to be dropped (the state
//!   keeps at most [`MIN_LEASE_RECORDS`], or the concurrency limit): once the traffic is over
//!   and every owner has had its turn, no lease record is left and the object's levels are
//!   exactly that ledger's.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;

use proptest::prelude::*;

use super::bucket::{Level, UNITS_PER_TOKEN};
use super::credit::{Carry, OwnerStep, MAX_CREDIT_CALLERS, SWEEP_PAUSE_MS};
use super::*;
use crate::config::TierLimits;
use crate::durable::ObjectState;

const T0: u64 = 1_764_000_000_000;
const CALLER: &str = "caller";
/// The shell gives up on a call to the object after this long.
const CALL_TIMEOUT_MS: u64 = 10_000;

fn quota(min: u32, max: u32) -> impl Strategy<Value = Option<NonZeroU32>> {
    prop_oneof![1 => Just(None), 4 => (min..=max).prop_map(NonZeroU32::new)]
}

/// Tiers from tight (no credit is ever granted) to roomy (credit most of the time).
fn tier() -> impl Strategy<Value = TierLimits> {
    (
        quota(1, 3_000),
        quota(1, 400_000),
        quota(1, 200_000),
        quota(1, 80),
    )
        .prop_map(|(rpm, input_tpm, output_tpm, concurrency)| TierLimits {
            rpm,
            input_tpm,
            output_tpm,
            concurrency,
            quotas: Default::default(),
        })
        .prop_filter("a tier with a limit", |l| !l.is_unlimited())
}

#[derive(Debug, Clone)]
enum Op {
    Arrive {
        isolate: usize,
        input: u64,
        output: u64,
        used_permille: [u64; 2],
    },
    /// A call in flight is decided by the object, or, if it was, its answer arrives.
    Progress(usize),
    /// A call in flight is lost: before the object saw it, or its answer after.
    Lose(usize),
    /// A request in flight ends.
    Finish(usize),
    /// Every owner whose time has come has its turn.
    Tick,
    Crash(usize),
}

fn op(isolates: usize, losses: bool) -> impl Strategy<Value = Op> {
    let arrive = (
        0..isolates,
        // Clients mostly send the same few sizes (so tickets fit), sometimes anything.
        prop_oneof![4 => Just(12_u64), 2 => Just(300_u64), 1 => 0..4_000_u64],
        prop_oneof![4 => Just(64_u64), 2 => Just(1_024_u64), 1 => 0..3_500_u64],
        [0..=1000_u64, 0..=1000_u64],
    )
        .prop_map(|(isolate, input, output, used_permille)| Op::Arrive {
            isolate,
            input,
            output,
            used_permille,
        });
    let (lose, crash) = if losses { (1, 1) } else { (0, 0) };
    prop_oneof![
        8 => arrive,
        8 => any::<usize>().prop_map(Op::Progress),
        lose => any::<usize>().prop_map(Op::Lose),
        7 => any::<usize>().prop_map(Op::Finish),
        3 => Just(Op::Tick),
        crash => (0..isolates).prop_map(Op::Crash),
    ]
}

/// Milliseconds between steps: often none, rarely more than a renewal period. A hot caller's
/// steps come within milliseconds, so that its isolates ask for credit and use it.
fn gap(hot: bool) -> BoxedStrategy<u64> {
    if hot {
        prop_oneof![40 => 0..3_u64, 1 => 0..400_u64, 1 => 0..2_000_u64].boxed()
    } else {
        prop_oneof![3 => Just(0_u64), 3 => 0..20_u64, 2 => 0..400_u64, 1 => 0..4_000_u64].boxed()
    }
}

fn ops(losses: bool) -> impl Strategy<Value = Vec<(u64, Op)>> {
    any::<bool>().prop_flat_map(move |hot| prop::collection::vec((gap(hot), op(4, losses)), 1..300))
}

enum Purpose {
    /// An admission for a request of this size and usage.
    Admit {
        request: AdmissionRequest,
        used_permille: [u64; 2],
    },
    /// A refill, or an owner's returns.
    Refill,
    /// A settlement sent at once.
    Settle,
}

struct Call {
    isolate: usize,
    /// The isolate's life the call belongs to: a dead isolate's calls may still be decided.
    life: u64,
    call: Option<LimiterCall>,
    reply: Option<LimiterReply>,
    sent_ms: u64,
    decided: (u64, u64),
    carried: Option<u64>,
    asking: bool,
    purpose: Purpose,
}

struct Request {
    isolate: usize,
    reservation: Reservation,
    on_credit: bool,
    used: Used,
    renewed_ms: u64,
}

struct Owner {
    isolate: usize,
    /// The returns it owns; `None`: the caller's flusher (every settlement).
    ids: Option<Vec<u64>>,
    at_ms: u64,
}

struct Expiry {
    isolate: usize,
    grant: u64,
    at_ms: u64,
}

/// A request that went upstream: when the object admitted it, and what it used.
struct Went {
    admitted_ms: u64,
    admitted_step: u64,
    actual: [u64; 3],
}

struct World {
    limits: TierLimits,
    object: LimiterObject,
    now: u64,
    isolates: Vec<(u64, Credits)>,
    calls: Vec<Call>,
    requests: Vec<Request>,
    owners: Vec<Owner>,
    expiries: Vec<Expiry>,
    /// Every ticket: when the object granted it (time, step), and when the isolate sent the
    /// call that brought it.
    tickets: HashMap<u64, ((u64, u64), u64)>,
    used_tickets: HashSet<u64>,
    went: Vec<Went>,
    /// The object's levels after each step, with its time.
    levels: Vec<(u64, [Level; 3])>,
    steps: u64,
    object_calls: u64,
    /// The most lease records the object held: at its cap, admissions drop records (the
    /// state's bound on its size), whose refunds are then lost, on the safe side.
    most_records: usize,
    /// Calls may be lost and isolates may die.
    losses: bool,
    /// Some were.
    lossy: bool,
}

impl World {
    fn new(limits: TierLimits, isolates: usize, losses: bool) -> World {
        World {
            limits,
            object: LimiterObject::default(),
            now: T0,
            isolates: (0..isolates).map(|_| (0, Credits::default())).collect(),
            calls: Vec::new(),
            requests: Vec::new(),
            owners: Vec::new(),
            expiries: Vec::new(),
            tickets: HashMap::new(),
            used_tickets: HashSet::new(),
            went: Vec::new(),
            levels: Vec::new(),
            steps: 0,
            object_calls: 0,
            most_records: 0,
            losses,
            lossy: false,
        }
    }

    fn credit(&mut self, isolate: usize) -> &mut Credit {
        let (limits, now) = (self.limits, self.now);
        self.isolates[isolate].1.of(CALLER, limits, now).unwrap()
    }

    fn send(
        &mut self,
        isolate: usize,
        call: LimiterCall,
        carried: Option<u64>,
        asking: bool,
        purpose: Purpose,
    ) {
        let life = self.isolates[isolate].0;
        self.calls.push(Call {
            isolate,
            life,
            call: Some(call),
            reply: None,
            sent_ms: self.now,
            decided: (0, 0),
            carried,
            asking,
            purpose,
        });
    }

    fn decide(&mut self, call: LimiterCall) -> LimiterReply {
        self.object_calls += 1;
        self.object.decide(self.now, call)
    }

    fn step(&mut self, gap: u64, op: &Op) -> Result<(), TestCaseError> {
        self.now += gap;
        self.steps += 1;
        self.time_out_calls()?;
        self.renew_in_flight()?;
        match op {
            Op::Arrive {
                isolate,
                input,
                output,
                used_permille,
            } => self.arrive(*isolate, *input, *output, *used_permille)?,
            Op::Progress(pick) if !self.calls.is_empty() => {
                let index = pick % self.calls.len();
                self.progress(index)?;
            }
            Op::Lose(pick) if !self.calls.is_empty() => {
                self.lossy = true;
                let call = self.calls.remove(pick % self.calls.len());
                self.outcome(&call, false);
            }
            Op::Finish(pick) if !self.requests.is_empty() => {
                let index = pick % self.requests.len();
                self.finish(index);
            }
            Op::Tick => self.tick(),
            Op::Crash(isolate) => self.crash(*isolate),
            Op::Progress(_) | Op::Lose(_) | Op::Finish(_) => {}
        }
        self.check_concurrency()?;
        let levels = self.object.limiter().levels_at(&self.limits, self.now);
        self.levels.push((self.now, levels));
        self.most_records = self.most_records.max(self.object.limiter().lease_records());
        debug_assert_eq!(self.levels.len() as u64, self.steps);
        Ok(())
    }

    /// A call unanswered for [`CALL_TIMEOUT_MS`] is given up by the shell (lost); where
    /// nothing is lost, the object answers every call before that.
    fn time_out_calls(&mut self) -> Result<(), TestCaseError> {
        while let Some(index) = self
            .calls
            .iter()
            .position(|c| self.now >= c.sent_ms + CALL_TIMEOUT_MS)
        {
            if self.losses {
                self.lossy = true;
                let call = self.calls.remove(index);
                self.outcome(&call, false);
            } else {
                if self.calls[index].call.is_some() {
                    self.progress(index)?;
                }
                self.progress(index)?;
            }
        }
        Ok(())
    }

    /// What the shell's `hold` does: a request in flight renews its lease every 5 s.
    fn renew_in_flight(&mut self) -> Result<(), TestCaseError> {
        for index in 0..self.requests.len() {
            let request = &self.requests[index];
            if self.now < request.renewed_ms + WAITING_RENEW_EVERY_MS {
                continue;
            }
            let lease_id = request.reservation.lease_id;
            let call = LimiterCall::Renew {
                limits: self.limits,
                lease_id,
                lease_ms: WAITING_LEASE_MS,
            };
            let reply = self.decide(call);
            if self.limits.concurrency.is_some() && !self.lossy {
                prop_assert!(
                    matches!(reply, LimiterReply::Renewed(true)),
                    "lease {lease_id} lost at {}: {:?}",
                    self.now - T0,
                    self.object.limiter()
                );
            }
            self.requests[index].renewed_ms = self.now;
        }
        Ok(())
    }

    fn arrive(
        &mut self,
        isolate: usize,
        input: u64,
        output: u64,
        used_permille: [u64; 2],
    ) -> Result<(), TestCaseError> {
        let (limits, now) = (self.limits, self.now);
        let request = AdmissionRequest {
            input_tokens: input,
            output_tokens: output,
            lease_ms: WAITING_LEASE_MS,
            quota: None,
        };
        let credit = self.credit(isolate);
        credit.arrive(limits, now);
        if let Some(local) = credit.take(&request, now) {
            let refill = local.refill.map(|wanted| {
                let size = credit.ticket_size();
                let carry = credit.outbox.take(now);
                (wanted, size, carry)
            });
            let lease_id = local.reservation.lease_id;
            let Some(&(granted, asked_ms)) = self.tickets.get(&lease_id) else {
                return Err(TestCaseError::fail(format!(
                    "ticket {lease_id} was never granted"
                )));
            };
            prop_assert!(
                now < asked_ms + CREDIT_VALID_MS,
                "ticket {lease_id} used too late"
            );
            prop_assert!(now < granted.0 + CREDIT_VALID_MS);
            prop_assert!(
                self.used_tickets.insert(lease_id),
                "ticket {lease_id} used twice"
            );
            self.start(
                isolate,
                local.reservation,
                true,
                granted,
                &request,
                used_permille,
            )?;
            if let Some((wanted, size, carry)) = refill {
                let (carried, returns) = split(carry);
                let call = LimiterCall::Refill {
                    limits,
                    ticket: size,
                    credit: wanted,
                    returns,
                };
                self.send(isolate, call, carried, true, Purpose::Refill);
            }
            return Ok(());
        }
        let (wanted, carry) = credit.ask(&request, now);
        let (carried, returns) = split(carry);
        let call = LimiterCall::Admit {
            limits,
            request,
            provisional: false,
            credit: wanted,
            returns,
            counted: false,
        };
        self.send(
            isolate,
            call,
            carried,
            wanted > 0,
            Purpose::Admit {
                request,
                used_permille,
            },
        );
        Ok(())
    }

    fn start(
        &mut self,
        isolate: usize,
        reservation: Reservation,
        on_credit: bool,
        (admitted_ms, admitted_step): (u64, u64),
        request: &AdmissionRequest,
        used_permille: [u64; 2],
    ) -> Result<(), TestCaseError> {
        // The shell's renewals start with the request, at most a call's timeout after the
        // object admitted it; the world's steps may come up to 4 s late, so they count from
        // the admission.
        let limits = self.limits;
        let input = limits
            .input_tpm
            .map_or(0, |q| request.input_tokens.min(u64::from(q.get())));
        let output = limits
            .output_tpm
            .map_or(0, |q| request.output_tokens.min(u64::from(q.get())));
        prop_assert!(reservation.input_tokens >= input && reservation.output_tokens >= output);
        let used = [
            reservation.input_tokens * used_permille[0] / 1000,
            reservation.output_tokens * used_permille[1] / 1000,
        ];
        let requests = u64::from(limits.rpm.is_some());
        self.went.push(Went {
            admitted_ms,
            admitted_step,
            actual: [requests, used[0], used[1]],
        });
        self.requests.push(Request {
            isolate,
            reservation,
            on_credit,
            used: Used {
                input_tokens: Some(used[0]),
                output_tokens: Some(used[1]),
            },
            renewed_ms: admitted_ms,
        });
        Ok(())
    }

    fn progress(&mut self, index: usize) -> Result<(), TestCaseError> {
        if let Some(call) = self.calls[index].call.take() {
            let reply = self.decide(call);
            let call = &mut self.calls[index];
            call.reply = Some(reply);
            call.decided = (self.now, self.steps);
            return Ok(());
        }
        let call = self.calls.remove(index);
        self.outcome(&call, true);
        if self.isolates[call.isolate].0 != call.life {
            return Ok(());
        }
        let (isolate, now, limits) = (call.isolate, self.now, self.limits);
        let (tickets, status, status_ms, admission) = match call.reply {
            Some(LimiterReply::Admitted(reply)) => (
                reply.tickets,
                reply.status,
                reply.now_ms,
                Some(reply.admission),
            ),
            Some(LimiterReply::Refilled(reply)) => {
                (reply.tickets, reply.status, reply.now_ms, None)
            }
            _ => return Ok(()),
        };
        for ticket in &tickets {
            self.tickets
                .insert(ticket.reservation.lease_id, (call.decided, call.sent_ms));
        }
        let on_credit = !tickets.is_empty();
        if on_credit {
            let grant = self
                .credit(isolate)
                .granted(&tickets, status, status_ms, call.sent_ms);
            self.expiries.push(Expiry {
                isolate,
                grant,
                at_ms: call.sent_ms.max(now) + CREDIT_VALID_MS,
            });
        }
        if let (
            Purpose::Admit {
                request,
                used_permille,
            },
            Some(Admission::Admitted(reservation)),
        ) = (&call.purpose, admission)
        {
            self.start(
                isolate,
                reservation,
                on_credit,
                call.decided,
                request,
                *used_permille,
            )?;
        }
        let _ = limits;
        Ok(())
    }

    /// What `OnItsWay` does when a call arrives or is dropped.
    fn outcome(&mut self, call: &Call, delivered: bool) {
        if self.isolates[call.isolate].0 != call.life {
            return;
        }
        let Some(credit) = self.isolates[call.isolate].1.get(CALLER) else {
            return;
        };
        if let Some(carried) = call.carried {
            if delivered {
                credit.outbox.delivered(carried);
            } else {
                credit.outbox.failed(carried);
            }
        }
        if call.asking {
            credit.answered();
        }
    }

    fn finish(&mut self, index: usize) {
        let request = self.requests.remove(index);
        let settled = Settled {
            reservation: request.reservation,
            usage: request.used,
            confirms: true,
            cost_micros: None,
        };
        if settled.charges_extra(&self.limits) {
            self.credit(request.isolate).stop_admitting();
        }
        if request.on_credit && !settled.charges_extra(&self.limits) {
            if self.credit(request.isolate).defer(settled) {
                self.owners.push(Owner {
                    isolate: request.isolate,
                    ids: None,
                    at_ms: self.now + SETTLE_DELAY_MS,
                });
            }
        } else {
            let call = LimiterCall::Settle {
                limits: self.limits,
                reservation: settled.reservation,
                usage: settled.usage,
                confirms: true,
                cost_micros: None,
            };
            self.send(request.isolate, call, None, false, Purpose::Settle);
        }
    }

    fn tick(&mut self) {
        let now = self.now;
        let (due, later): (Vec<Expiry>, Vec<Expiry>) =
            self.expiries.drain(..).partition(|e| e.at_ms <= now);
        self.expiries = later;
        for expiry in due {
            let ids = self.credit(expiry.isolate).expire(expiry.grant);
            if !ids.is_empty() {
                self.owners.push(Owner {
                    isolate: expiry.isolate,
                    ids: Some(ids),
                    at_ms: now,
                });
            }
        }
        let owners = std::mem::take(&mut self.owners);
        for mut owner in owners {
            if owner.at_ms > now {
                self.owners.push(owner);
                continue;
            }
            let credit = self.credit(owner.isolate);
            let step = match &owner.ids {
                Some(ids) => credit.outbox.owner_step(ids, now),
                None => credit.flush_step(now),
            };
            match step {
                OwnerStep::Done => continue,
                OwnerStep::Wait => {}
                OwnerStep::Send(Carry { call, returns }) => {
                    let refill = LimiterCall::Refill {
                        limits: self.limits,
                        ticket: None,
                        credit: 0,
                        returns,
                    };
                    self.send(owner.isolate, refill, Some(call), false, Purpose::Refill);
                }
            }
            owner.at_ms = now + OWNER_TICK_MS;
            self.owners.push(owner);
        }
    }

    fn crash(&mut self, isolate: usize) {
        self.lossy = true;
        let life = &mut self.isolates[isolate];
        life.0 += 1;
        life.1 = Credits::default();
        self.requests.retain(|r| r.isolate != isolate);
        self.owners.retain(|o| o.isolate != isolate);
        self.expiries.retain(|e| e.isolate != isolate);
    }

    /// Ends the traffic: every request finishes, every call goes through, every owner has its
    /// turns, until nothing is left to do.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        for _ in 0..100_000 {
            if !self.requests.is_empty() {
                self.step(1, &Op::Finish(0))?;
            } else if !self.calls.is_empty() {
                self.step(1, &Op::Progress(0))?;
            } else if !self.owners.is_empty() || !self.expiries.is_empty() {
                self.step(OWNER_TICK_MS, &Op::Tick)?;
            } else {
                return Ok(());
            }
        }
        Err(TestCaseError::fail("the returns never settled"))
    }

    fn check_concurrency(&self) -> Result<(), TestCaseError> {
        if let Some(slots) = self.limits.concurrency {
            let held = self.requests.len() as u64;
            prop_assert!(held <= u64::from(slots.get()), "{held} requests in flight");
        }
        Ok(())
    }

    fn quotas(&self) -> [Option<NonZeroU32>; 3] {
        [
            self.limits.rpm,
            self.limits.input_tpm,
            self.limits.output_tpm,
        ]
    }

    /// The window bound over what went, at its admission, with what it used (settlements
    /// return the rest, and never create capacity).
    fn check_windows(&self) -> Result<(), TestCaseError> {
        let mut went: Vec<&Went> = self.went.iter().collect();
        went.sort_by_key(|w| w.admitted_ms);
        for (dimension, quota) in self.quotas().into_iter().enumerate() {
            let Some(quota) = quota else { continue };
            let quota = u128::from(quota.get());
            for (i, first) in went.iter().enumerate() {
                let mut total: u128 = 0;
                for last in &went[i..] {
                    total += u128::from(last.actual[dimension]);
                    let width = u128::from(last.admitted_ms - first.admitted_ms) + 1;
                    prop_assert!(
                        total * u128::from(UNITS_PER_TOKEN)
                            <= quota * (u128::from(UNITS_PER_TOKEN) + width - 1),
                        "dimension {dimension}: {total} went in {width} ms at quota {quota}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The ledger of what went, charged its actual usage at its admission, at each step's
    /// time; the object's levels must never be below it. Returns the ledger's last levels.
    fn check_ledger(&self) -> Result<[Level; 3], TestCaseError> {
        let mut charges: Vec<(u64, u64, [u64; 3])> = self
            .went
            .iter()
            .map(|w| (w.admitted_step, w.admitted_ms, w.actual))
            .collect();
        charges.sort_by_key(|c| c.0);
        let quotas = self.quotas();
        let mut ledger = [Level::EMPTY; 3];
        let mut clock = T0;
        let mut next = charges.iter().peekable();
        let mut advance = |ledger: &mut [Level; 3], to: u64| {
            for (level, quota) in ledger.iter_mut().zip(quotas) {
                if let Some(quota) = quota {
                    *level = level.drained(quota, to - clock);
                }
            }
            clock = to;
        };
        for (step, &(at, levels)) in (1_u64..).zip(&self.levels) {
            while let Some(&&(charged_step, charged_ms, cost)) = next.peek() {
                if charged_step > step {
                    break;
                }
                advance(&mut ledger, charged_ms);
                for (level, cost) in ledger.iter_mut().zip(cost) {
                    *level = level.charged(cost);
                }
                next.next();
            }
            advance(&mut ledger, at);
            for (dimension, quota) in quotas.iter().enumerate() {
                if quota.is_some() {
                    prop_assert!(
                        levels[dimension] >= ledger[dimension],
                        "at {}: dimension {dimension}: {:?} below the ledger's {:?}",
                        at - T0,
                        levels[dimension],
                        ledger[dimension]
                    );
                }
            }
        }
        Ok(ledger)
    }
}

fn split(carry: Option<Carry>) -> (Option<u64>, Returns) {
    match carry {
        Some(Carry { call, returns }) => (Some(call), returns),
        None => (None, Returns::default()),
    }
}

fn run(limits: TierLimits, isolates: usize, ops: &[(u64, Op)]) -> Result<World, TestCaseError> {
    let losses = ops
        .iter()
        .any(|(_, op)| matches!(op, Op::Lose(_) | Op::Crash(_)));
    let mut world = World::new(limits, isolates, losses);
    for (gap, op) in ops {
        world.step(*gap, &clamp(op.clone(), isolates))?;
    }
    world.drain()?;
    world.check_windows()?;
    let ledger = world.check_ledger()?;
    let cap = limits
        .concurrency
        .map_or(0, |c| c.get() as usize)
        .max(MIN_LEASE_RECORDS);
    if !world.lossy && world.most_records < cap {
        let limiter = world.object.limiter();
        prop_assert_eq!(
            limiter.lease_records(),
            0,
            "lease records left after the traffic"
        );
        let levels = limiter.levels_at(&limits, world.now);
        for (dimension, quota) in world.quotas().iter().enumerate() {
            if quota.is_some() {
                let (ours, exact) = (levels[dimension].units(), ledger[dimension].units());
                prop_assert!(
                    ours == exact,
                    "dimension {}: {} units, the ledger {}",
                    dimension,
                    ours,
                    exact
                );
            }
        }
    }
    Ok(world)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    /// Isolates that never lose a call nor die: every bound holds, and once the traffic is
    /// over the object's ledger is exactly what went, with nothing left held.
    #[test]
    fn credit_is_exact_across_isolates(
        limits in tier(),
        isolates in 1..5_usize,
        ops in ops(false),
    ) {
        run(limits, isolates, &ops)?;
    }

    /// With calls lost before or after the object decided them, and isolates that die with
    /// credit in hand: never more admitted, never more in flight, never less charged.
    #[test]
    fn credit_lost_never_admits_more(
        limits in tier(),
        isolates in 1..5_usize,
        ops in ops(true),
    ) {
        run(limits, isolates, &ops)?;
    }
}

fn clamp(op: Op, isolates: usize) -> Op {
    match op {
        Op::Arrive {
            isolate,
            input,
            output,
            used_permille,
        } => Op::Arrive {
            isolate: isolate % isolates,
            input,
            output,
            used_permille,
        },
        Op::Crash(isolate) => Op::Crash(isolate % isolates),
        other => other,
    }
}

/// One isolate, eight clients back to back on a roomy key, calls answered at once: how many
/// object calls the requests cost, and that credit was really used.
fn hot_key_calls(limits: TierLimits) -> (u64, u64) {
    let mut world = World::new(limits, 1, false);
    let mut sent = 0_u64;
    for round in 0..2_000_u64 {
        // Eight arrivals, then everything in flight answered and ended, every 8 ms.
        for _ in 0..8 {
            world
                .step(
                    0,
                    &Op::Arrive {
                        isolate: 0,
                        input: 10,
                        output: 64,
                        used_permille: [1000, 500],
                    },
                )
                .unwrap();
            sent += 1;
        }
        while !world.calls.is_empty() {
            world.step(0, &Op::Progress(0)).unwrap();
        }
        while !world.requests.is_empty() {
            world.step(0, &Op::Finish(0)).unwrap();
        }
        world
            .step(if round % 2 == 0 { 8 } else { 0 }, &Op::Tick)
            .unwrap();
    }
    world.drain().unwrap();
    world.check_ledger().unwrap();
    (world.object_calls, sent)
}

#[test]
fn a_hot_key_costs_a_call_per_several_requests() {
    let rpm_only = TierLimits {
        rpm: NonZeroU32::new(1_000_000_000),
        ..TierLimits::default()
    };
    let all = TierLimits {
        rpm: NonZeroU32::new(1_000_000_000),
        input_tpm: NonZeroU32::new(4_000_000_000),
        output_tpm: NonZeroU32::new(4_000_000_000),
        concurrency: NonZeroU32::new(1_000_000),
        quotas: Default::default(),
    };
    for limits in [rpm_only, all] {
        let (calls, requests) = hot_key_calls(limits);
        // Without credit: two calls per request (admission, settlement).
        assert!(
            calls * 4 < requests,
            "{calls} object calls for {requests} requests ({limits:?})"
        );
    }
}

#[test]
fn near_its_limits_a_caller_gets_no_credit() {
    // 8 requests per minute: a grant would take more than an eighth of what remains.
    let tight = TierLimits {
        rpm: NonZeroU32::new(60),
        concurrency: NonZeroU32::new(4),
        ..TierLimits::default()
    };
    let mut world = World::new(tight, 1, false);
    for _ in 0..40 {
        world
            .step(
                10,
                &Op::Arrive {
                    isolate: 0,
                    input: 0,
                    output: 0,
                    used_permille: [0, 0],
                },
            )
            .unwrap();
        while !world.calls.is_empty() {
            world.step(0, &Op::Progress(0)).unwrap();
        }
        while !world.requests.is_empty() {
            world.step(0, &Op::Finish(0)).unwrap();
        }
    }
    assert!(
        world.tickets.is_empty(),
        "{} tickets granted",
        world.tickets.len()
    );
}

/// What one isolate's table of callers does to a caller, in the table-of-callers property.
#[derive(Debug, Clone, Copy)]
enum CallerOp {
    /// A request arrives (the caller is looked up, made when missing).
    Arrive,
    /// A grant of this many tickets comes back for it.
    Grant(u8),
    /// A request takes one of its tickets.
    Take,
    /// Its grants' time is up and their returns are delivered: it holds nothing any more.
    GiveBack,
}

fn caller_op() -> impl Strategy<Value = CallerOp> {
    prop_oneof![
        3 => Just(CallerOp::Arrive),
        3 => (1..=3_u8).prop_map(CallerOp::Grant),
        1 => Just(CallerOp::Take),
        2 => Just(CallerOp::GiveBack),
    ]
}

/// One caller's holdings as the table-of-callers property expects them.
#[derive(Debug, Default)]
struct Holding {
    tickets: usize,
    grants: Vec<u64>,
}

fn ticket(lease_id: u64, now_ms: u64) -> Ticket {
    Ticket {
        reservation: Reservation {
            lease_id,
            input_tokens: 10,
            output_tokens: 10,
            lease_expires_ms: now_ms + 15_000,
            quota: None,
        },
        requests: 1,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// More callers than an isolate keeps, some holding tickets and returns: the table never
    /// grows past [`MAX_CREDIT_CALLERS`], never forgets a caller that holds something, refuses
    /// a new caller only when it is full, and once everything is given back makes room again.
    #[test]
    fn the_callers_table_is_capped_and_keeps_what_callers_hold(
        steps in prop::collection::vec((0..1_400_u32, caller_op(), 0..40_u64), 1_500..3_000),
    ) {
        let limits = TierLimits {
            rpm: NonZeroU32::new(100_000),
            input_tpm: NonZeroU32::new(10_000_000),
            output_tpm: NonZeroU32::new(10_000_000),
            concurrency: NonZeroU32::new(10_000),
            quotas: Default::default(),
        };
        let small = AdmissionRequest { input_tokens: 1, output_tokens: 1, lease_ms: 15_000, quota: None };
        let mut credits = Credits::default();
        let mut holdings: HashMap<String, Holding> = HashMap::new();
        let (mut now, mut lease) = (T0, 0_u64);
        for (index, &(who, op, gap)) in steps.iter().enumerate() {
            now += gap;
            let identity = format!("visitor-{who}");
            match op {
                CallerOp::Arrive | CallerOp::Grant(_) => {
                    let full = credits.len() >= MAX_CREDIT_CALLERS;
                    match credits.of(&identity, limits, now) {
                        None => prop_assert!(full, "refused a caller with room in the table"),
                        Some(credit) => {
                            credit.arrive(limits, now);
                            if let CallerOp::Grant(count) = op {
                                let tickets: Vec<Ticket> = (0..count)
                                    .map(|_| { lease += 1; ticket(lease, now) })
                                    .collect();
                                let grant = credit.granted(&tickets, Vec::new(), now, now);
                                let holding = holdings.entry(identity.clone()).or_default();
                                holding.tickets += tickets.len();
                                holding.grants.push(grant);
                            }
                        }
                    }
                }
                CallerOp::Take => {
                    if let Some(credit) = credits.get(&identity) {
                        if let Some(local) = credit.take(&small, now) {
                            if local.refill.is_some() {
                                // The refill came back empty.
                                credit.answered();
                            }
                            if let Some(holding) = holdings.get_mut(&identity) {
                                holding.tickets -= 1;
                            }
                        }
                    }
                }
                CallerOp::GiveBack => {
                    if let (Some(credit), Some(holding)) =
                        (credits.get(&identity), holdings.remove(&identity))
                    {
                        for grant in holding.grants {
                            credit.expire(grant);
                        }
                        if let Some(carry) = credit.outbox.take(now) {
                            credit.outbox.delivered(carry.call);
                        }
                        prop_assert!(credit.holds_nothing());
                    }
                }
            }
            prop_assert!(credits.len() <= MAX_CREDIT_CALLERS);
            if index % 97 == 0 || index + 1 == steps.len() {
                // A caller whose tickets were all used holds nothing, and may go.
                for (identity, holding) in holdings.iter().filter(|(_, h)| h.tickets > 0) {
                    prop_assert_eq!(
                        credits.get(identity).map(|c| c.tickets_held()),
                        Some(holding.tickets),
                        "{} was forgotten or lost tickets", identity
                    );
                }
            }
        }
        // Everything given back: a new caller finds room once sweeps may run again.
        for (identity, holding) in holdings.drain() {
            if let Some(credit) = credits.get(&identity) {
                for grant in holding.grants {
                    credit.expire(grant);
                }
                if let Some(carry) = credit.outbox.take(now) {
                    credit.outbox.delivered(carry.call);
                }
            }
        }
        let later = now + SWEEP_PAUSE_MS;
        prop_assert!(credits.of("a-new-visitor", limits, later).is_some());
        prop_assert!(credits.len() <= MAX_CREDIT_CALLERS);
    }
}
