use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::*;
use crate::testing::VirtualTime;

/// A count that a call adds to, reads, or waits on until a time.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    count: u64,
    #[serde(skip)]
    writes: u64,
}

#[derive(Debug, Clone, Deserialize)]
enum TallyCall {
    Add,
    Read,
    /// Answered once the clock reaches the time, with the count then.
    WaitUntil(u64),
}

#[derive(Debug, PartialEq, Eq, Serialize)]
enum TallyReply {
    Count(u64),
    Held(u64),
}

impl ObjectState for Tally {
    type Call = TallyCall;
    type Reply = TallyReply;
    const STORAGE_KEY: &'static str = "tally";

    fn decide(&mut self, now_ms: u64, call: TallyCall) -> TallyReply {
        match call {
            TallyCall::Add => self.count += 1,
            TallyCall::WaitUntil(at) if at > now_ms => return TallyReply::Held(at),
            TallyCall::Read | TallyCall::WaitUntil(_) => {}
        }
        TallyReply::Count(self.count)
    }

    fn is_idle(&self, _now_ms: u64) -> bool {
        self.count == 0
    }

    fn check_idle_in_ms(&self, _now_ms: u64) -> u64 {
        1_000
    }

    fn reads_only(call: &TallyCall) -> bool {
        matches!(call, TallyCall::Read)
    }

    fn hold_until(reply: &TallyReply) -> Option<u64> {
        match reply {
            TallyReply::Held(at) => Some(*at),
            TallyReply::Count(_) => None,
        }
    }

    fn poll(&mut self, now_ms: u64, call: &TallyCall) -> Option<TallyReply> {
        match call {
            TallyCall::WaitUntil(_) => Some(self.decide(now_ms, call.clone())),
            _ => None,
        }
    }

    fn stored(&mut self) {
        self.writes += 1;
    }
}

/// Storage in memory that can be told to fail its reads or its writes.
#[derive(Default)]
struct Store {
    values: RefCell<HashMap<&'static str, String>>,
    alarm_at: Cell<Option<u64>>,
    fail_reads: Cell<bool>,
    fail_writes: Cell<bool>,
    writes: Cell<u32>,
}

impl Storage for Store {
    type Error = String;

    async fn get(&self, key: &'static str) -> Result<Option<String>, String> {
        if self.fail_reads.get() {
            return Err("read refused".to_string());
        }
        Ok(self.values.borrow().get(key).cloned())
    }

    async fn put(&self, key: &'static str, value: String) -> Result<(), String> {
        if self.fail_writes.get() {
            return Err("write refused".to_string());
        }
        self.writes.set(self.writes.get() + 1);
        self.values.borrow_mut().insert(key, value);
        Ok(())
    }

    async fn delete_all(&self) -> Result<(), String> {
        self.values.borrow_mut().clear();
        Ok(())
    }

    async fn set_alarm(&self, at_ms: u64) -> bool {
        self.alarm_at.set(Some(at_ms));
        true
    }
}

fn count(reply: TallyReply) -> Option<u64> {
    match reply {
        TallyReply::Count(n) => Some(n),
        TallyReply::Held(_) => None,
    }
}

/// One call at the clock's time, run to its end.
fn call(
    host: &Host<Tally>,
    time: &Rc<VirtualTime>,
    store: &Store,
    call: TallyCall,
) -> Result<Option<u64>, Trouble<String>> {
    futures_executor::block_on(host.call((time, time), store, call, |r| Some(count(r))))
}

#[test]
fn a_call_is_decided_stored_and_arms_the_alarm_once() {
    let (host, store, time) = (
        Host::<Tally>::default(),
        Store::default(),
        VirtualTime::starting_at(5_000),
    );
    assert_eq!(call(&host, &time, &store, TallyCall::Add), Ok(Some(1)));
    assert_eq!(call(&host, &time, &store, TallyCall::Add), Ok(Some(2)));
    assert_eq!(store.values.borrow()["tally"], r#"{"count":2}"#);
    assert_eq!(store.alarm_at.get(), Some(6_000));
    assert_eq!(host.in_memory().map(|t| t.writes), Some(2));
    // A read stores nothing.
    assert_eq!(call(&host, &time, &store, TallyCall::Read), Ok(Some(2)));
    assert_eq!(store.writes.get(), 2);
}

#[test]
fn a_store_that_fails_fails_the_call_and_the_next_one_stores_again() {
    let (host, store, time) = (
        Host::<Tally>::default(),
        Store::default(),
        VirtualTime::starting_at(0),
    );
    store.fail_writes.set(true);
    assert_eq!(
        call(&host, &time, &store, TallyCall::Add),
        Err(Trouble::Storage("write refused".to_string()))
    );
    // Nothing was written, no alarm set, and the write is not counted.
    assert!(store.values.borrow().is_empty());
    assert_eq!(store.alarm_at.get(), None);
    assert_eq!(host.in_memory().map(|t| t.writes), Some(0));
    store.fail_writes.set(false);
    // The change stays in memory and is stored with the next call.
    assert_eq!(call(&host, &time, &store, TallyCall::Add), Ok(Some(2)));
    assert_eq!(store.values.borrow()["tally"], r#"{"count":2}"#);
    assert_eq!(store.alarm_at.get(), Some(1_000));
}

#[test]
fn a_state_that_does_not_decode_is_answered_unreadable_and_never_replaced() {
    let (host, store, time) = (
        Host::<Tally>::default(),
        Store::default(),
        VirtualTime::starting_at(0),
    );
    let garbled = r#"{"count":"many"}"#.to_string();
    store.values.borrow_mut().insert("tally", garbled.clone());
    for _ in 0..2 {
        let answer = call(&host, &time, &store, TallyCall::Add);
        assert!(
            matches!(&answer, Err(Trouble::Unreadable(why)) if why.starts_with("stored state does not decode")),
            "{answer:?}"
        );
    }
    // Nor does the alarm delete or replace it.
    let alarm = futures_executor::block_on(host.alarm(&time, &store));
    assert!(matches!(alarm, Err(Trouble::Unreadable(_))));
    assert_eq!(store.values.borrow()["tally"], garbled);
    assert_eq!(store.writes.get(), 0);
    assert!(host.in_memory().is_none());
}

#[test]
fn a_read_that_fails_is_answered_unreadable_and_loads_later() {
    let (host, store, time) = (
        Host::<Tally>::default(),
        Store::default(),
        VirtualTime::starting_at(0),
    );
    store
        .values
        .borrow_mut()
        .insert("tally", r#"{"count":7}"#.to_string());
    store.fail_reads.set(true);
    let answer = call(&host, &time, &store, TallyCall::Add);
    assert!(
        matches!(&answer, Err(Trouble::Unreadable(why)) if why.starts_with("storage read failed"))
    );
    store.fail_reads.set(false);
    // Not a fresh state: the stored one, once it can be read.
    assert_eq!(call(&host, &time, &store, TallyCall::Add), Ok(Some(8)));
}

#[test]
fn an_answer_that_cannot_be_sent_stores_nothing() {
    let (host, store, time) = (
        Host::<Tally>::default(),
        Store::default(),
        VirtualTime::starting_at(0),
    );
    let answer = futures_executor::block_on(host.call(
        (&time, &time),
        &store,
        TallyCall::Add,
        |_| None::<()>,
    ));
    assert_eq!(
        answer,
        Err(Trouble::Unreadable("state not encodable".to_string()))
    );
    assert_eq!(store.writes.get(), 0);
}

#[test]
fn a_held_call_is_answered_when_its_time_comes_with_what_happened_meanwhile() {
    let time = VirtualTime::starting_at(1_000);
    let host = Rc::new(Host::<Tally>::default());
    let store = Rc::new(Store::default());
    let log = Rc::new(RefCell::new(Vec::new()));
    let task = |start: u64, c: TallyCall| {
        let (time, host, store, log) = (time.clone(), host.clone(), store.clone(), log.clone());
        Box::pin(async move {
            time.until(start).await;
            let answer = host
                .call((&time, &time), &*store, c, |r| Some(count(r)))
                .await;
            log.borrow_mut().push((time.now_ms(), answer));
        }) as Pin<Box<dyn Future<Output = ()>>>
    };
    time.run(vec![
        task(1_000, TallyCall::WaitUntil(1_500)),
        task(1_200, TallyCall::Add),
        task(1_300, TallyCall::Add),
    ]);
    assert_eq!(
        *log.borrow(),
        [
            (1_200, Ok(Some(1))),
            (1_300, Ok(Some(2))),
            // Held from 1 000 to 1 500, then answered with the count as of then.
            (1_500, Ok(Some(2))),
        ]
    );
}

#[test]
fn the_alarm_forgets_an_idle_state_and_looks_again_at_a_busy_one() {
    let (host, store, time) = (
        Host::<Tally>::default(),
        Store::default(),
        VirtualTime::starting_at(0),
    );
    assert_eq!(call(&host, &time, &store, TallyCall::Add), Ok(Some(1)));
    futures_executor::block_on(host.alarm(&VirtualTime::starting_at(1_000), &store)).unwrap();
    assert_eq!(store.alarm_at.get(), Some(2_000));
    assert!(host.in_memory().is_some());
    // An idle state (count 0) is deleted, from memory and storage.
    store
        .values
        .borrow_mut()
        .insert("tally", r#"{"count":0}"#.to_string());
    let fresh = Host::<Tally>::default();
    futures_executor::block_on(fresh.alarm(&time, &store)).unwrap();
    assert!(store.values.borrow().is_empty());
    assert!(fresh.in_memory().is_none());
}

/// A caller's object whose tier has a dollar quota, hosted as the runtime hosts it.
mod quotas {
    use std::num::{NonZeroU32, NonZeroU64};

    use super::*;
    use crate::config::TierLimits;
    use crate::limits::quota::{QuotaCharge, Quotas};
    use crate::limits::{
        Admission, AdmissionRequest, LimiterCall, LimiterObject, LimiterReply, Returns,
    };

    /// 2026-12-07T13:45:00Z.
    const T0: u64 = 1_796_651_100_000;

    fn limits() -> TierLimits {
        TierLimits {
            rpm: NonZeroU32::new(100),
            quotas: Quotas {
                usd_per_day: NonZeroU64::new(1_000),
                ..Quotas::default()
            },
            ..TierLimits::default()
        }
    }

    fn admit(micros: u64) -> LimiterCall {
        LimiterCall::Admit {
            limits: limits(),
            request: AdmissionRequest {
                input_tokens: 10,
                output_tokens: 10,
                lease_ms: 60_000,
                quota: Some(QuotaCharge {
                    requests: 1,
                    micros,
                    ..QuotaCharge::default()
                }),
            },
            provisional: false,
            credit: 0,
            returns: Returns::default(),
            counted: false,
        }
    }

    /// Whether the object admitted the call: `Ok(true)`, refused it: `Ok(false)`, or could
    /// not answer.
    fn ask(
        host: &Host<LimiterObject>,
        time: &Rc<VirtualTime>,
        store: &Store,
        call: LimiterCall,
    ) -> Result<bool, Trouble<String>> {
        futures_executor::block_on(host.call((time, time), store, call, |reply| match reply {
            LimiterReply::Admitted(reply) => {
                Some(matches!(reply.admission, Admission::Admitted(_)))
            }
            _ => None,
        }))
    }

    #[test]
    fn a_restart_keeps_the_spending_and_storage_trouble_admits_nothing() {
        let (host, store, time) = (
            Host::<LimiterObject>::default(),
            Store::default(),
            VirtualTime::starting_at(T0),
        );
        assert_eq!(ask(&host, &time, &store, admit(600)), Ok(true));
        // After a restart the day's spending is still there: 600 of 1 000 spent.
        let restarted = Host::<LimiterObject>::default();
        assert_eq!(ask(&restarted, &time, &store, admit(600)), Ok(false));
        assert_eq!(ask(&restarted, &time, &store, admit(400)), Ok(true));
        // A state that cannot be read is never taken for a fresh one with nothing spent.
        store.fail_reads.set(true);
        let unreadable = Host::<LimiterObject>::default();
        assert!(matches!(
            ask(&unreadable, &time, &store, admit(1)),
            Err(Trouble::Unreadable(_))
        ));
        store.fail_reads.set(false);
        assert_eq!(ask(&unreadable, &time, &store, admit(1)), Ok(false));
        // A write refused: the admission is not answered, and what it reserved stays
        // charged (in memory, stored with the next write): refused, never free.
        let fresh_day = Host::<LimiterObject>::default();
        let tomorrow = VirtualTime::starting_at(T0 + 86_400_000);
        store.fail_writes.set(true);
        assert!(matches!(
            ask(&fresh_day, &tomorrow, &store, admit(700)),
            Err(Trouble::Storage(_))
        ));
        store.fail_writes.set(false);
        assert_eq!(ask(&fresh_day, &tomorrow, &store, admit(700)), Ok(false));
    }
}
