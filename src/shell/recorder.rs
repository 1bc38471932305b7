//! Recording a request's metrics: the data point to the `METRICS` Analytics Engine dataset when
//! it is bound, and this isolate's tally for the operator's view. What the point holds is the
//! core's ([`crate::metrics`]); this only writes it.

use std::cell::RefCell;

use futures_util::future::LocalBoxFuture;
use worker::{AnalyticsEngineDataPointBuilder, Context, Env};

use super::clock::now_ms;
use super::seen_env::SeenEnv;
use crate::limits::Used;
use crate::metrics::{data_point, event_line, EdgeTally, RequestFacts};
use crate::upstream::Reply;

/// The binding name in wrangler.toml (`[[analytics_engine_datasets]]`).
pub const BINDING: &str = "METRICS";

thread_local! {
    /// This isolate's answers since it started.
    static TALLY: RefCell<Option<EdgeTally>> = const { RefCell::new(None) };
}

fn with_tally<T>(f: impl FnOnce(&mut EdgeTally) -> T) -> T {
    TALLY.with(|tally| {
        let mut tally = tally.borrow_mut();
        f(tally.get_or_insert_with(|| EdgeTally::starting(now_ms())))
    })
}

/// A request began (it is in flight until [`record`]).
pub fn begin() {
    with_tally(EdgeTally::begin);
}

/// A request ended that is not traffic (the operator's view polling itself).
pub fn end_uncounted() {
    with_tally(EdgeTally::end_uncounted);
}

/// A wait begins; it is counted as waiting until the value is dropped (the wait ended, or
/// the request was dropped during it).
pub fn waiting() -> Waiting {
    with_tally(EdgeTally::wait_started);
    Waiting
}

pub struct Waiting;

impl Drop for Waiting {
    fn drop(&mut self) {
        with_tally(EdgeTally::wait_ended);
    }
}

/// An attempt's answer as the upstream key's state is told it, counted when it comes.
pub fn upstream_reply(reply: Reply) {
    with_tally(|tally| tally.count_reply(reply));
}

/// This isolate's tally as of now.
pub fn tally() -> EdgeTally {
    with_tally(|tally| *tally)
}

/// Whether the deployment has a `METRICS` dataset (then answers are watched for their usage
/// even when no limit needs it).
pub fn bound(env: &Env) -> bool {
    dataset(env).is_some()
}

thread_local! {
    /// The `env` object found without a `METRICS` binding: the same object has none later
    /// either, so a request does not look it up (twice) again.
    static UNBOUND_IN: SeenEnv = const { SeenEnv::new() };
}

fn dataset(env: &Env) -> Option<worker::AnalyticsEngineDataset> {
    if UNBOUND_IN.with(|u| u.is(env)) {
        return None;
    }
    match env.analytics_engine(BINDING) {
        Ok(dataset) => Some(dataset),
        Err(_) => {
            UNBOUND_IN.with(|u| u.remember(env));
            None
        }
    }
}

/// Counts the answered request in the tally, and writes its data point when `METRICS` is
/// bound: at once, or once `usage` (the tokens the answer reported, known when its body has
/// passed) arrives, off the client's path.
pub fn record(
    env: &Env,
    ctx: &Context,
    mut facts: RequestFacts,
    usage: Option<LocalBoxFuture<'static, (Used, Option<u64>)>>,
) {
    with_tally(|tally| tally.record(&facts));
    let Some(dataset) = dataset(env) else {
        return;
    };
    let write = move |facts: &RequestFacts| {
        let point = data_point(facts);
        let written = AnalyticsEngineDataPointBuilder::new()
            .indexes([point.index.as_str()])
            .blobs(point.blobs)
            .doubles(point.doubles)
            .write_to(&dataset);
        if let Err(e) = written {
            let error = e.to_string();
            worker::console_error!(
                "{}",
                event_line("metrics_write_failed", &[("error", &error)])
            );
        }
    };
    match usage {
        None => write(&facts),
        Some(usage) => {
            crate::shell::keep_alive::wait_until(ctx, async move {
                let (usage, cost_micros) = usage.await;
                facts.cost_micros = cost_micros;
                facts.input_tokens = usage.input_tokens;
                facts.output_tokens = usage.output_tokens;
                write(&facts);
            });
        }
    }
}
