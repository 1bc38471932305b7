//! The whole request from its admission to its settlement, on a virtual clock, with a fake of
//! every port: the caller's limiter keeps a real [`LimiterState`], the upstream answers from a
//! script, and the answer's body arrives when the test says.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use futures_util::future::join;

use super::*;
use crate::config::{Config, TierLimits};
use crate::error::ProxyError;
use crate::identity::{Caller, Secret, UpstreamKey};
use crate::limits::quota::{QuotaCharge, QuotaDimension, QuotaStanding};
use crate::limits::{
    limit_headers, Admission, AdmissionRequest, AdmitReply, LimiterState, Settled, Settlement,
    Used, WAITING_LEASE_MS,
};
use crate::request::body::BodyFacts;
use crate::request::route::Route;
use crate::retry::runner::{Ask, Clock, Journal, SharedState, Sleep, Tell, Transport, Unreachable};
use crate::retry::Outcome;
use crate::stream::tap::Watcher;
use crate::testing::VirtualTime;
use crate::upstream::{Claimant, EdgeMemory, Gate};

const T0: u64 = 1_764_000_000_000;

/// One call the limiter port took, with when.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Admit(AdmissionRequest, Terms),
    RequestOnly { provisional: bool },
    Renew { lease_id: u64, lease_ms: u64 },
    Settle(Settled, bool, Settlement),
}

/// The caller's object, as a fake: a real limiter state, and every call made to it.
struct Book {
    limits: TierLimits,
    state: LimiterState,
    time: Rc<VirtualTime>,
    calls: Vec<(u64, Call)>,
}

#[derive(Clone)]
struct FakeLimiter(Rc<RefCell<Book>>);

impl FakeLimiter {
    fn new(time: &Rc<VirtualTime>, limits: TierLimits) -> FakeLimiter {
        FakeLimiter(Rc::new(RefCell::new(Book {
            limits,
            state: LimiterState::new(),
            time: time.clone(),
            calls: Vec::new(),
        })))
    }

    fn note(&self, call: Call) {
        let mut book = self.0.borrow_mut();
        let at = book.time.now_ms();
        book.calls.push((at - T0, call));
    }
}

impl Limiter for FakeLimiter {
    type Settling = FakeLimiter;

    async fn admit(
        &self,
        request: AdmissionRequest,
        terms: Terms,
        headers: &mut Vec<(&'static str, String)>,
    ) -> Result<Admitted, ProxyError> {
        self.note(Call::Admit(request, terms));
        let mut book = self.0.borrow_mut();
        let (limits, now) = (book.limits, book.time.now_ms());
        let admission = if terms.counted {
            book.state.admit_counted(&limits, now, &request)
        } else {
            book.state.admit(&limits, now, &request)
        };
        // The object's reply, read as the Worker reads it.
        let reply = AdmitReply {
            admission,
            status: book.state.snapshot(&limits, now),
            now_ms: now,
            tickets: Vec::new(),
            quotas: book.state.quota_standing(&limits, now),
        };
        let reservation = reply.answer(headers)?;
        Ok(Admitted {
            reservation,
            on_credit: false,
        })
    }

    async fn admit_request_only(
        &self,
        provisional: bool,
        headers: &mut Vec<(&'static str, String)>,
    ) -> Result<(), ProxyError> {
        self.note(Call::RequestOnly { provisional });
        let mut book = self.0.borrow_mut();
        let (limits, now) = (book.limits, book.time.now_ms());
        match book.state.admit_request_only(&limits, now) {
            None => {
                headers.extend(limit_headers(&book.state.snapshot(&limits, now), None, now));
                Ok(())
            }
            Some(denial) => Err(ProxyError::from(&denial)),
        }
    }

    fn settling(self) -> FakeLimiter {
        self
    }
}

impl Lease for FakeLimiter {
    async fn renew(&self, lease_id: u64, lease_ms: u64) {
        self.note(Call::Renew { lease_id, lease_ms });
        let mut book = self.0.borrow_mut();
        let (limits, now) = (book.limits, book.time.now_ms());
        book.state.renew(&limits, now, lease_id, lease_ms);
    }

    async fn settle(&self, settled: Settled, on_credit: bool) {
        let settlement = {
            let mut book = self.0.borrow_mut();
            let (limits, now) = (book.limits, book.time.now_ms());
            book.state.settle_priced(
                &limits,
                now,
                &settled.reservation,
                settled.usage,
                settled.cost_micros,
            )
        };
        self.note(Call::Settle(settled, on_credit, settlement));
    }
}

/// The key's shared state: always go.
struct Open;

impl SharedState for Open {
    async fn before(&mut self, _ask: Ask) -> Result<Gate, Unreachable> {
        Ok(Gate::Go { probe: None })
    }
    async fn after(&mut self, _tell: Tell) {}
}

/// The key's states, counting the pools a request drew on.
struct Keys(Rc<RefCell<u32>>);

impl KeyStates for Keys {
    type Shared = Open;
    fn of_pool(&self, _pool: String, _claimant: Claimant) -> (Open, Rc<RefCell<EdgeMemory>>) {
        *self.0.borrow_mut() += 1;
        (Open, Rc::default())
    }
}

/// The upstream: each attempt takes a while and answers from the script (then cannot be
/// reached). An answer is its status.
struct Upstream {
    time: Rc<VirtualTime>,
    script: VecDeque<(u64, Outcome)>,
    sent: u32,
}

impl Transport for Upstream {
    type Answer = u16;
    async fn attempt(&mut self, _timeout_ms: u64) -> (Outcome, Option<u16>) {
        self.sent += 1;
        let (took_ms, outcome) = self
            .script
            .pop_front()
            .unwrap_or((10, Outcome::ConnectFailure));
        self.time.sleep(took_ms).await;
        let answer = match outcome {
            Outcome::Response { status, .. } => Some(status),
            _ => None,
        };
        (outcome, answer)
    }
}

/// The client's side: a tapped answer's body is watched by the watcher kept here, which the
/// test feeds.
#[derive(Default)]
struct Client {
    watcher: RefCell<Option<Watcher>>,
}

impl Deliver for Client {
    type Answer = u16;
    type Response = u16;
    async fn deliver(&self, status: u16, tap: bool) -> Result<Delivered<u16>, ProxyError> {
        let seen = tap.then(|| {
            let (watcher, report, progress) = Watcher::new(true);
            *self.watcher.borrow_mut() = Some(watcher);
            (report, progress)
        });
        Ok(Delivered {
            response: status,
            status,
            seen,
        })
    }
}

/// The runtime's "after the answer": work kept to be run beside the answer's body.
#[derive(Default)]
struct After(RefCell<Vec<Pin<Box<dyn Future<Output = ()>>>>>);

impl AfterAnswer for After {
    fn spawn(&self, work: impl Future<Output = ()> + 'static) {
        self.0.borrow_mut().push(Box::pin(work));
    }
}

fn config() -> Config {
    // `quota`: 1 cent a day, and at most 3 requests.
    let tiers = r#"{"default": {"rpm": 10, "input_tpm": 100000, "output_tpm": 10000, "concurrency": 1},
        "quota": {"rpm": 10, "rpd": 3, "usd_per_day": 0.01}}"#;
    Config::from_lookup(|name| match name {
        "ANTHROPIC_API_KEY" => Some("sk-ant-test".to_string()),
        "RATE_LIMITS" => Some(tiers.to_string()),
        _ => None,
    })
    .unwrap()
}

fn caller(tier: &str, passthrough: bool) -> Caller {
    Caller {
        identity: "client:alice".to_string(),
        tier: tier.to_string(),
        upstream_key: if passthrough {
            UpstreamKey::Passthrough(Secret::new("sk-ant-made-up".to_string()))
        } else {
            UpstreamKey::Managed
        },
    }
}

fn ok(status: u16) -> Outcome {
    Outcome::Response {
        status,
        should_retry: None,
        wait_floor_ms: None,
    }
}

/// One request to run.
struct Case {
    tier: &'static str,
    route: Route,
    passthrough: bool,
    counted: Option<Vec<(&'static str, String)>>,
    /// Each attempt: how long it takes, and what it brings.
    script: Vec<(u64, Outcome)>,
    watches_usage: bool,
    /// The answer's body, when it is watched: chunks by when they arrive (ms after the
    /// answer), and when it ends.
    body: Vec<(u64, &'static str)>,
    ends_after_ms: u64,
    /// Held before the request: a slot taken by an earlier request of the caller.
    slot_taken: bool,
    /// Spent today before the request, in micro-dollars, by an earlier request of the
    /// caller (settled).
    spent_before: Option<u64>,
}

impl Default for Case {
    fn default() -> Case {
        Case {
            tier: "default",
            route: Route::Messages,
            passthrough: false,
            counted: None,
            script: vec![(300, ok(200))],
            watches_usage: false,
            body: Vec::new(),
            ends_after_ms: 0,
            slot_taken: false,
            spent_before: None,
        }
    }
}

/// What came of it.
struct Seen {
    answer: Result<u16, ProxyError>,
    /// When the answer was handed over (ms after the request began).
    answered_at: u64,
    headers: Vec<(&'static str, String)>,
    sent: u32,
    /// The pools of the key the request drew on.
    pools: u32,
    calls: Vec<(u64, Call)>,
    usage: Option<Spent>,
    leases_left: usize,
    /// The caller's daily and monthly quotas after the request.
    quotas: Vec<QuotaStanding>,
}

fn facts() -> BodyFacts {
    BodyFacts {
        model: Some("claude-sonnet-5-5".to_string()),
        max_tokens: Some(300),
        input_tokens_estimate: 120,
        ..BodyFacts::default()
    }
}

fn go(case: Case) -> Seen {
    let config = config();
    let time = VirtualTime::starting_at(T0);
    let caller = caller(case.tier, case.passthrough);
    let intake = Intake::of(&config, &case.route, &caller, T0);
    let limiter = FakeLimiter::new(&time, intake.limits);
    if case.slot_taken {
        let mut book = limiter.0.borrow_mut();
        let limits = book.limits;
        let earlier = AdmissionRequest {
            input_tokens: 10,
            output_tokens: 10,
            lease_ms: 60_000,
            quota: None,
        };
        assert!(matches!(
            book.state.admit(&limits, T0 - 1_000, &earlier),
            Admission::Admitted(_)
        ));
    }
    if let Some(micros) = case.spent_before {
        let mut book = limiter.0.borrow_mut();
        let limits = book.limits;
        let earlier = AdmissionRequest {
            input_tokens: 10,
            output_tokens: 10,
            lease_ms: 60_000,
            quota: Some(QuotaCharge {
                requests: 1,
                input_tokens: 10,
                output_tokens: 10,
                micros,
            }),
        };
        let Admission::Admitted(reservation) = book.state.admit(&limits, T0 - 2_000, &earlier)
        else {
            panic!("the earlier request is admitted");
        };
        let used = Used {
            input_tokens: Some(10),
            output_tokens: Some(10),
        };
        book.state
            .settle_priced(&limits, T0 - 1_000, &reservation, used, Some(micros));
    }
    let mut forwarding = Forwarding::of(
        &config,
        &case.route,
        &caller,
        &intake,
        &facts(),
        ClientAsks::default(),
        ("https://proxy.example/v1/messages", case.watches_usage),
    )
    .unwrap();
    forwarding.policy.budget_ms = 120_000;
    let ready = Ready {
        intake,
        counted: case.counted,
        forwarding,
        watches_usage: case.watches_usage,
        started_ms: T0,
        seed: 7,
    };
    let seen = Rc::new(RefCell::new(None));
    let key_asked = Rc::new(RefCell::new(0));
    let task = {
        let (time, seen, limiter, key_asked) = (
            time.clone(),
            seen.clone(),
            limiter.clone(),
            key_asked.clone(),
        );
        let (script, body, ends_after_ms) = (case.script, case.body, case.ends_after_ms);
        async move {
            let mut upstream = Upstream {
                time: time.clone(),
                script: script.into(),
                sent: 0,
            };
            let (client, after) = (Client::default(), After::default());
            let ports = Ports {
                clock: &time,
                sleep: &time,
                limiter,
                keys: &Keys(key_asked),
                delivery: &client,
                after: &after,
                off_path: time.clone(),
            };
            let (mut journal, mut headers) = (Journal::default(), Vec::new());
            let served = serve(ports, ready, &mut upstream, &mut journal, &mut headers).await;
            let answered_at = time.now_ms() - T0;
            // The body passes to the client while the work after the answer runs.
            let watcher = client.watcher.borrow_mut().take();
            let feed = async {
                if let Some(mut watcher) = watcher {
                    for (at, chunk) in body {
                        time.until(T0 + answered_at + at).await;
                        watcher.observe(chunk.as_bytes());
                    }
                    time.until(T0 + answered_at + ends_after_ms).await;
                    watcher.finish(true, true);
                }
            };
            let spawned = futures_util::future::join_all(after.0.take());
            let usage = async {
                match served.usage {
                    Some(usage) => Some(usage.arrived().await),
                    None => None,
                }
            };
            let (_, usage) = join(join(feed, spawned), usage).await;
            *seen.borrow_mut() = Some(Seen {
                answer: served.answer,
                answered_at,
                headers,
                sent: upstream.sent,
                pools: 0,
                calls: Vec::new(),
                usage,
                leases_left: 0,
                quotas: Vec::new(),
            });
        }
    };
    time.run(vec![Box::pin(task)]);
    let mut seen = seen.take().expect("the request ran to its end");
    let book = limiter.0.borrow();
    seen.calls.clone_from(&book.calls);
    seen.leases_left = book.state.lease_records();
    seen.quotas = book.state.quota_standing(&book.limits, book.time.now_ms());
    seen.pools = *key_asked.borrow();
    seen
}

fn settlements(seen: &Seen) -> Vec<(u64, Settled, Settlement)> {
    seen.calls
        .iter()
        .filter_map(|(at, call)| match call {
            Call::Settle(settled, _, settlement) => Some((*at, *settled, *settlement)),
            _ => None,
        })
        .collect()
}

fn renewals(seen: &Seen) -> Vec<(u64, u64)> {
    seen.calls
        .iter()
        .filter_map(|(at, call)| match call {
            Call::Renew { lease_ms, .. } => Some((*at, *lease_ms)),
            _ => None,
        })
        .collect()
}

const MESSAGE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":90,\"output_tokens\":1}}}\n\n";
const MESSAGE_DELTA: &str = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":240}}\n\n";

#[test]
fn an_admitted_request_is_answered_and_settled_once_with_the_usage_it_reported() {
    let seen = go(Case {
        watches_usage: true,
        body: vec![(0, MESSAGE_START), (400, MESSAGE_DELTA)],
        ends_after_ms: 500,
        ..Case::default()
    });
    assert_eq!(seen.answer.as_ref().ok(), Some(&200));
    assert_eq!(seen.sent, 1);
    assert_eq!(seen.pools, 1, "a message answers to its pool of the key");
    // Admitted once, with what the request may use, for a waiting lease.
    let Some((0, Call::Admit(request, terms))) = seen.calls.first().cloned() else {
        panic!("admitted first: {:?}", seen.calls);
    };
    assert_eq!(
        request,
        AdmissionRequest {
            input_tokens: 120,
            output_tokens: 300,
            lease_ms: WAITING_LEASE_MS,
            quota: None,
        }
    );
    assert_eq!(
        terms,
        Terms {
            provisional: false,
            counted: false
        }
    );
    // The caller's limits go on the answer.
    assert!(
        seen.headers
            .iter()
            .any(|(name, _)| name.contains("ratelimit")),
        "{:?}",
        seen.headers
    );
    let reported = Used {
        input_tokens: Some(90),
        output_tokens: Some(240),
    };
    let settled = settlements(&seen);
    assert_eq!(settled.len(), 1, "{:?}", seen.calls);
    let (_, settled, settlement) = settled[0];
    assert_eq!(settled.usage, reported);
    assert!(settled.confirms);
    assert!(settlement.lease_found);
    // Claude Sonnet 5.5: $2 and $10 per million tokens in and out.
    assert_eq!(settled.cost_micros, Some(90 * 2 + 240 * 10));
    assert_eq!(
        seen.usage,
        Some((reported, Some(2_580))),
        "the record hears the same usage, and its cost"
    );
    assert_eq!(seen.leases_left, 0, "the slot is free again");
}

/// The caller's standing in one of its quotas after the request: what it used, what remains.
fn standing(seen: &Seen, dimension: QuotaDimension) -> (u64, u64) {
    let standing = seen
        .quotas
        .iter()
        .find(|q| q.dimension == dimension)
        .unwrap_or_else(|| panic!("{dimension:?} is limited: {:?}", seen.quotas));
    (standing.used, standing.remaining)
}

#[test]
fn a_quota_tier_reserves_the_worst_case_and_is_charged_the_answer_at_its_price() {
    let seen = go(Case {
        tier: "quota",
        watches_usage: true,
        body: vec![(0, MESSAGE_START), (400, MESSAGE_DELTA)],
        ends_after_ms: 500,
        ..Case::default()
    });
    assert_eq!(seen.answer.as_ref().ok(), Some(&200));
    assert_eq!(seen.sent, 1);
    let Some((0, Call::Admit(request, _))) = seen.calls.first().cloned() else {
        panic!("admitted first: {:?}", seen.calls);
    };
    // Claude Sonnet 5.5: a prompt token costs at most $4 per million (written to the cache
    // for an hour), an output token $10; the request may send 120 and ask for 300.
    assert_eq!(
        request.quota,
        Some(QuotaCharge {
            requests: 1,
            input_tokens: 120,
            output_tokens: 300,
            micros: 120 * 4 + 300 * 10,
        })
    );
    // The answer carries what is left of the quotas as of the admission.
    assert!(
        seen.headers
            .iter()
            .any(|(name, value)| *name == "ratelimit" && value.contains("\"usd_per_day\";r=6520")),
        "{:?}",
        seen.headers
    );
    // Settled once, at what the answer used priced at $2 and $10 per million tokens.
    let settled = settlements(&seen);
    assert_eq!(settled.len(), 1, "{:?}", seen.calls);
    let (_, settled, settlement) = settled[0];
    assert!(settlement.lease_found);
    assert_eq!(settled.cost_micros, Some(90 * 2 + 240 * 10));
    let reported = Used {
        input_tokens: Some(90),
        output_tokens: Some(240),
    };
    assert_eq!(
        seen.usage,
        Some((reported, Some(2_580))),
        "the record hears the usage and its cost"
    );
    // The day is charged the answer's cost, not its worst case; one request of three.
    assert_eq!(
        standing(&seen, QuotaDimension::UsdPerDay),
        (2_580, 10_000 - 2_580)
    );
    assert_eq!(standing(&seen, QuotaDimension::Rpd), (1, 2));
    assert_eq!(seen.leases_left, 0);
}

#[test]
fn a_quota_tier_at_its_cap_is_refused_with_the_quotas_429_and_nothing_goes_upstream() {
    // 8 000 of the day's 10 000 micro-dollars spent: the request's worst case (3 480) does
    // not fit in what is left.
    let seen = go(Case {
        tier: "quota",
        spent_before: Some(8_000),
        ..Case::default()
    });
    let Err(
        refused @ ProxyError::RateLimited {
            limit,
            limit_headers,
            retry_after_ms,
            ..
        },
    ) = &seen.answer
    else {
        panic!("a 429 of the caller's quota: {:?}", seen.answer);
    };
    assert_eq!(refused.status(), 429);
    assert_eq!(limit.dimension.as_deref(), Some("usd_per_day"));
    assert_eq!((limit.limit, limit.remaining), (Some(10_000), Some(2_000)));
    // Not before the day ends (UTC), which no client should wait for.
    let day_ends = (T0 / 86_400_000 + 1) * 86_400_000;
    assert_eq!(*retry_after_ms, day_ends - T0);
    assert!(!refused.should_retry());
    assert!(
        limit_headers
            .iter()
            .any(|(name, value)| *name == "ratelimit" && value.contains("\"usd_per_day\";r=2000")),
        "the refusal's own headers: {limit_headers:?}"
    );
    assert_eq!(seen.sent, 0, "nothing was sent upstream");
    assert_eq!(seen.pools, 0, "nor was the key's state reached");
    assert_eq!(seen.calls.len(), 1, "{:?}", seen.calls);
    assert!(seen.usage.is_none());
    // Nothing of the refused request was charged.
    assert_eq!(standing(&seen, QuotaDimension::UsdPerDay), (8_000, 2_000));
    assert_eq!(standing(&seen, QuotaDimension::Rpd), (1, 2));
    assert_eq!(seen.leases_left, 0);
}

#[test]
fn a_refused_request_gets_the_refusal_and_nothing_goes_upstream() {
    let seen = go(Case {
        slot_taken: true,
        ..Case::default()
    });
    let Err(ProxyError::RateLimited {
        limit_headers,
        retry_after_ms,
        ..
    }) = &seen.answer
    else {
        panic!("a 429 of the caller's limits: {:?}", seen.answer);
    };
    assert!(*retry_after_ms > 0);
    assert!(
        limit_headers
            .iter()
            .any(|(_, value)| value.contains("concurrent")),
        "the refusal's own headers: {limit_headers:?}"
    );
    assert_eq!(
        seen.answer.as_ref().err().map(ProxyError::status),
        Some(429)
    );
    assert_eq!(seen.sent, 0, "nothing was sent upstream");
    assert_eq!(seen.pools, 0, "nor was the key's state reached");
    assert_eq!(seen.calls.len(), 1, "{:?}", seen.calls);
    assert!(seen.usage.is_none());
}

#[test]
fn an_upstream_failure_after_admission_settles_releasing_the_reservation() {
    let seen = go(Case {
        script: Vec::new(),
        ..Case::default()
    });
    assert!(seen.answer.is_err(), "{:?}", seen.answer);
    assert!(seen.sent > 1, "retried before giving up");
    let settled = settlements(&seen);
    assert_eq!(settled.len(), 1, "{:?}", seen.calls);
    let (_, settled, settlement) = settled[0];
    // No answer came: nothing was used, all that was reserved goes back.
    assert_eq!(
        settled.usage,
        Used {
            input_tokens: Some(0),
            output_tokens: Some(0)
        }
    );
    assert!(settlement.lease_found);
    assert_eq!(settlement.returned_input_tokens, 120);
    assert_eq!(settlement.returned_output_tokens, 300);
    assert_eq!(seen.leases_left, 0);
}

#[test]
fn the_slot_is_held_while_a_slow_attempt_runs_and_released_after() {
    // One attempt of 27 s: longer than the lease the request was admitted with.
    let seen = go(Case {
        script: vec![(27_000, ok(200))],
        ..Case::default()
    });
    assert_eq!(seen.answer.as_ref().ok(), Some(&200));
    assert_eq!(seen.answered_at, 27_000);
    let held = renewals(&seen);
    assert_eq!(
        held,
        [5_000, 10_000, 15_000, 20_000, 25_000].map(|at| (at, WAITING_LEASE_MS)),
        "renewed every 5 s while the attempt ran, and not after"
    );
    let settled = settlements(&seen);
    assert_eq!(settled.len(), 1, "{:?}", seen.calls);
    let (at, settled, settlement) = settled[0];
    assert_eq!(at, 27_000);
    assert!(settlement.lease_found, "the lease outlived its first term");
    // An answer that was not watched keeps its reservation.
    assert_eq!(settled.usage, Used::UNKNOWN);
    assert_eq!(seen.leases_left, 0, "the slot is released after the answer");
}

#[test]
fn a_request_only_route_is_counted_once_and_settles_nothing() {
    let count = go(Case {
        route: Route::CountTokens,
        ..Case::default()
    });
    assert_eq!(count.answer.as_ref().ok(), Some(&200));
    assert_eq!(
        count.calls,
        [(0, Call::RequestOnly { provisional: false })],
        "one count, nothing reserved, renewed or settled"
    );
    assert!(!count.headers.is_empty());
    // Counted while its body arrived: that was its admission, with its headers.
    let counted = go(Case {
        route: Route::CountTokens,
        counted: Some(vec![("x-counted", "yes".to_string())]),
        ..Case::default()
    });
    assert_eq!(counted.answer.as_ref().ok(), Some(&200));
    assert!(counted.calls.is_empty(), "{:?}", counted.calls);
    assert_eq!(counted.headers, [("x-counted", "yes".to_string())]);
}

#[test]
fn a_message_counted_while_its_body_arrived_is_admitted_as_counted() {
    let seen = go(Case {
        counted: Some(vec![("x-counted", "yes".to_string())]),
        ..Case::default()
    });
    let Some((_, Call::Admit(_, terms))) = seen.calls.first() else {
        panic!("admitted: {:?}", seen.calls);
    };
    assert!(terms.counted);
    assert_eq!(settlements(&seen).len(), 1);
}

#[test]
fn a_provisional_caller_is_confirmed_only_when_the_upstream_accepted_its_key() {
    let accepted = go(Case {
        passthrough: true,
        ..Case::default()
    });
    let Some((_, Call::Admit(_, terms))) = accepted.calls.first() else {
        panic!("admitted: {:?}", accepted.calls);
    };
    assert!(terms.provisional);
    let settled = settlements(&accepted);
    assert_eq!(settled.len(), 1);
    assert!(settled[0].1.confirms, "a 200: the upstream took the key");
    let rejected = go(Case {
        passthrough: true,
        script: vec![(50, ok(401))],
        ..Case::default()
    });
    assert_eq!(rejected.answer.as_ref().ok(), Some(&401));
    let settled = settlements(&rejected);
    assert_eq!(settled.len(), 1);
    assert!(!settled[0].1.confirms, "a 401: the key is not confirmed");
    assert_eq!(
        settled[0].1.usage,
        Used {
            input_tokens: Some(0),
            output_tokens: Some(0)
        }
    );
    // A managed caller confirms whatever its answer.
    let managed = go(Case {
        script: vec![(50, ok(401))],
        ..Case::default()
    });
    assert!(settlements(&managed)[0].1.confirms);
}

#[test]
fn a_stream_whose_usage_comes_at_its_end_settles_after_the_end() {
    let seen = go(Case {
        watches_usage: true,
        body: vec![(0, MESSAGE_START), (20_000, MESSAGE_DELTA)],
        ends_after_ms: 41_000,
        ..Case::default()
    });
    assert_eq!(seen.answer.as_ref().ok(), Some(&200));
    let settled = settlements(&seen);
    assert_eq!(settled.len(), 1, "{:?}", seen.calls);
    let (at, settled, settlement) = settled[0];
    assert_eq!(
        at,
        seen.answered_at + 41_000,
        "settled when the stream ended, not before"
    );
    assert_eq!(
        settled.usage,
        Used {
            input_tokens: Some(90),
            output_tokens: Some(240)
        }
    );
    assert!(
        settlement.lease_found,
        "the slot was renewed while the stream moved"
    );
    assert!(
        renewals(&seen).iter().any(|&(at, _)| at > seen.answered_at),
        "{:?}",
        seen.calls
    );
    assert_eq!(seen.leases_left, 0);
}
