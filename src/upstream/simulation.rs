//! Fleet simulations: many requests, each driven by its own [`Retrier`], sharing one
//! [`UpstreamState`] in front of a simulated upstream that answers `529` during an outage.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::*;
use crate::retry::{classify, Outcome, Retrier, RetryPolicy, Step, MIN_RETRY_AFTER_MS};

const MODEL: &str = "claude-opus-4-1";
/// How long the upstream takes to shed a request, and to answer one (headers).
const SHED_MS: u64 = 40;
const SERVE_MS: u64 = 300;

#[derive(Debug, Clone, Copy)]
struct Scenario {
    clients: u64,
    /// Client `i` arrives at `i · spacing_ms`.
    spacing_ms: u64,
    /// Every attempt sent in `[0, outage_ms)` is shed.
    outage_ms: u64,
    budget_ms: u64,
    seed: u64,
    /// Without the shared state: every attempt goes (the per-request retrier alone).
    shared: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Served {
        at: u64,
    },
    Refused {
        at: u64,
        retry_after_ms: u64,
        reason: RefuseReason,
    },
    GaveUp {
        at: u64,
        retry_after_ms: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Ask {
        client: usize,
    },
    Reply {
        client: usize,
        sent_at: u64,
        probe: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Call {
    at: u64,
    probe: bool,
}

struct Client {
    arrival: u64,
    deadline: u64,
    seed: u64,
    retrier: Retrier,
    end: Option<End>,
}

struct Run {
    calls: Vec<Call>,
    clients: Vec<Client>,
    /// When the model was marked overloaded, if it was.
    marked_at: Option<u64>,
    /// When it started to recover, and the release window.
    recovered: Option<(u64, u64)>,
    max_wait_answers: usize,
}

fn simulate(scenario: Scenario) -> Run {
    let policy = OutagePolicy::default();
    let retry = RetryPolicy {
        budget_ms: scenario.budget_ms,
        ..RetryPolicy::default()
    };
    let mut seeds = fastrand::Rng::with_seed(scenario.seed);
    let mut state = UpstreamState::new();
    let mut queue: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut order = 0u64;
    let mut push = |queue: &mut BinaryHeap<Reverse<(u64, u64, Event)>>, at: u64, event: Event| {
        order += 1;
        queue.push(Reverse((at, order, event)));
    };
    let mut clients = Vec::new();
    for i in 0..scenario.clients {
        let arrival = i * scenario.spacing_ms;
        let seed = seeds.u64(..);
        clients.push(Client {
            arrival,
            deadline: arrival + scenario.budget_ms,
            seed,
            retrier: Retrier::new(retry, arrival, seed),
            end: None,
        });
        push(
            &mut queue,
            arrival,
            Event::Ask {
                client: clients.len() - 1,
            },
        );
    }
    let mut run = Run {
        calls: Vec::new(),
        clients: Vec::new(),
        marked_at: None,
        recovered: None,
        max_wait_answers: 0,
    };
    let mut waits_per_client = vec![0usize; clients.len()];

    while let Some(Reverse((now, _, event))) = queue.pop() {
        match event {
            Event::Ask { client } => {
                let c = &mut clients[client];
                assert!(c.end.is_none());
                let is_retry = c.retrier.attempts() > 0;
                let gate = if scenario.shared {
                    state.before_attempt(&policy, now, MODEL, is_retry, c.deadline, c.seed)
                } else {
                    Gate::Go { probe: None }
                };
                match gate {
                    Gate::Go { probe } => {
                        c.retrier.attempt_started(now);
                        run.calls.push(Call {
                            at: now,
                            probe: probe.is_some(),
                        });
                        let latency = if now < scenario.outage_ms {
                            SHED_MS
                        } else {
                            SERVE_MS
                        };
                        let probe = probe.map(ProbeTicket::id);
                        push(
                            &mut queue,
                            now + latency,
                            Event::Reply {
                                client,
                                sent_at: now,
                                probe,
                            },
                        );
                    }
                    Gate::Wait { until_ms, .. } => {
                        assert!(
                            until_ms > now && until_ms <= c.deadline,
                            "waits fit the budget"
                        );
                        waits_per_client[client] += 1;
                        push(&mut queue, until_ms, Event::Ask { client });
                    }
                    Gate::Refuse {
                        retry_after_ms,
                        reason,
                    } => {
                        c.end = Some(End::Refused {
                            at: now,
                            retry_after_ms,
                            reason,
                        });
                    }
                }
            }
            Event::Reply {
                client,
                sent_at,
                probe,
            } => {
                let status = if sent_at < scenario.outage_ms {
                    529
                } else {
                    200
                };
                let outcome = Outcome::Response {
                    status,
                    should_retry: None,
                    wait_floor_ms: None,
                };
                let c = &mut clients[client];
                let report = AttemptReport {
                    reply: Reply::of(&outcome),
                    probe: probe.map(ProbeTicket),
                };
                let change = state.after_attempt(&policy, now, MODEL, report, c.seed ^ now);
                match change {
                    Change::MarkedOverloaded { .. } => {
                        run.marked_at.get_or_insert(now);
                    }
                    Change::Recovering { window_ms } => {
                        run.recovered.get_or_insert((now, window_ms));
                    }
                    _ => {}
                }
                match c.retrier.after_attempt(now, classify(&outcome)) {
                    Step::Deliver => c.end = Some(End::Served { at: now }),
                    Step::Wait { ms, .. } => push(&mut queue, now + ms, Event::Ask { client }),
                    Step::GiveUp(give_up) => {
                        c.end = Some(End::GaveUp {
                            at: now,
                            retry_after_ms: give_up.retry_after_ms,
                        });
                    }
                }
            }
        }
    }
    run.max_wait_answers = waits_per_client.into_iter().max().unwrap_or(0);
    run.clients = clients;
    run
}

impl Run {
    fn calls_before(&self, at: u64) -> Vec<Call> {
        self.calls
            .iter()
            .copied()
            .filter(|call| call.at < at)
            .collect()
    }

    fn calls_per_request(&self) -> f64 {
        self.calls.len() as f64 / self.clients.len() as f64
    }
}

/// A 5 s outage (every attempt shed), 200 requests arriving over it, 30 s budgets.
fn short_outage(seed: u64, shared: bool) -> Scenario {
    Scenario {
        clients: 200,
        spacing_ms: 25,
        outage_ms: 5_000,
        budget_ms: 30_000,
        seed,
        shared,
    }
}

/// A 120 s outage, 200 requests arriving over its first minute, 30 s budgets.
fn long_outage(seed: u64, shared: bool) -> Scenario {
    Scenario {
        clients: 200,
        spacing_ms: 300,
        outage_ms: 120_000,
        budget_ms: 30_000,
        seed,
        shared,
    }
}

#[test]
fn short_outage_the_upstream_sees_only_probes_and_every_request_completes_after_it() {
    let policy = OutagePolicy::default();
    for seed in 0..30 {
        let scenario = short_outage(seed, true);
        let run = simulate(scenario);
        let outage = scenario.outage_ms;
        let marked = run.marked_at.unwrap_or(u64::MAX);
        let during = run.calls_before(outage);
        let probes = during.iter().filter(|call| call.probe).count() as u64;
        // Before the marking: the requests sent before the third 529 came back.
        let unmarked = during
            .iter()
            .filter(|call| !call.probe && call.at < marked)
            .count() as u64;
        let after_mark = during
            .iter()
            .filter(|call| !call.probe && call.at >= marked)
            .count();
        assert!(
            marked < policy.overload_min_span_ms + 200,
            "marked {marked} ms into the outage"
        );
        // Once marked, only probes reach the upstream, but for the few attempts let through
        // just before the marking and still on their way.
        assert!(after_mark <= 10, "{after_mark} calls after the marking");
        assert!(
            probes <= 1 + outage / policy.min_probe_interval_ms(),
            "{during:?}"
        );

        let mut finish = Vec::new();
        let mut spent = 0usize;
        for client in &run.clients {
            match client.end {
                Some(End::Served { at }) => {
                    assert!(at >= outage, "served after the outage ends");
                    assert!(at <= client.deadline + SERVE_MS, "served within the budget");
                    finish.push(at);
                }
                // The retries of the second before the marking may spend the retry budget;
                // a request that already retried several times is then answered, not retried.
                Some(End::Refused {
                    reason: RefuseReason::RetryBudget,
                    retry_after_ms,
                    ..
                }) => {
                    assert!(retry_after_ms >= 1_000);
                    spent += 1;
                }
                // Or it ran out of attempts before the marking, with a structured answer.
                Some(End::GaveUp { retry_after_ms, .. }) => {
                    assert!(retry_after_ms >= 1_000);
                    spent += 1;
                }
                other => panic!(
                    "seed {seed}: client from {} ended {other:?}",
                    client.arrival
                ),
            }
        }
        assert!(
            spent * 100 <= run.clients.len() * 3,
            "seed {seed}: {spent} answered before the outage ended"
        );
        let last = finish.iter().max().copied().unwrap_or(0);
        let first = finish.iter().min().copied().unwrap_or(0);
        let mean = finish.iter().sum::<u64>() / finish.len() as u64;
        let (recovered_at, window) = run.recovered.unwrap_or_default();
        assert!(recovered_at >= outage && last <= recovered_at + window + SERVE_MS);
        eprintln!(
            "seed {seed:2}: upstream calls during the outage {:2} ({unmarked} before the marking at {marked} ms, {probes} probes); \
             probe succeeded {} ms after it ends, release window {window} ms; \
             served {}..{} ms after it ends (mean {}); calls/request {:.3}; most wait answers to one request {}",
            during.len(),
            recovered_at - outage,
            first - outage,
            last - outage,
            mean - outage,
            run.calls_per_request(),
            run.max_wait_answers,
        );
        // Recovery is quick: the next probe (≤ 4 s) plus the release window (≤ 5 s).
        assert!(last - outage <= 4_000 + SHED_MS + SERVE_MS + policy.release_max_ms + SERVE_MS);
        assert!(run.calls_per_request() <= 1.25);
    }
}

#[test]
fn long_outage_each_request_costs_the_upstream_at_most_a_quarter_call_extra() {
    for seed in 0..30 {
        let scenario = long_outage(seed, true);
        let run = simulate(scenario);
        let per_request = run.calls_per_request();
        assert!(per_request <= 1.25, "seed {seed}: {per_request}");
        for client in &run.clients {
            match client.end {
                Some(End::Refused {
                    at,
                    retry_after_ms,
                    reason,
                }) => {
                    assert!(at <= client.deadline, "answered within the budget");
                    assert!(retry_after_ms >= MIN_RETRY_AFTER_MS);
                    assert_eq!(reason, RefuseReason::Overloaded);
                }
                // Its last attempt started within the budget; the 529 came back after it.
                Some(End::GaveUp { at, .. }) => assert!(at <= client.deadline + SHED_MS),
                other => panic!(
                    "seed {seed}: client from {} ended {other:?}",
                    client.arrival
                ),
            }
        }
        let refused = run
            .clients
            .iter()
            .filter(|c| matches!(c.end, Some(End::Refused { .. })))
            .count();
        let probes = run.calls.iter().filter(|call| call.probe).count();
        eprintln!(
            "seed {seed:2}: {} upstream calls for 200 requests ({probes} probes), {per_request:.3} per request; {refused} refused by the object",
            run.calls.len(),
        );
    }
}

#[test]
fn without_the_shared_state_the_same_outages_cost_far_more() {
    let alone = simulate(short_outage(1, false));
    let shared = simulate(short_outage(1, true));
    let outage = 5_000;
    eprintln!(
        "5 s outage: {} calls during it alone vs {} shared; long outage: {:.2} calls/request alone vs {:.2} shared",
        alone.calls_before(outage).len(),
        shared.calls_before(outage).len(),
        simulate(long_outage(1, false)).calls_per_request(),
        simulate(long_outage(1, true)).calls_per_request(),
    );
    // The shared state needs half a second of uninterrupted overload before it marks the model
    // (so an upstream merely at capacity is not taken for a dead one); the calls of that
    // half second are most of what it lets through.
    assert!(alone.calls_before(outage).len() > 5 * shared.calls_before(outage).len());
}
