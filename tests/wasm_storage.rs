//! What crosses the JS boundary in the Durable Objects: their state is stored as JSON text in
//! a JS string, and their calls carry full 64-bit seeds, which only `serde_json` reads exactly
//! (`JSON.parse` would round them). The states also stay within JS-safe integers, so a
//! generic JS conversion would keep them too. Runs in Node under
//! `wasm-bindgen-test-runner` (`cargo test --target wasm32-unknown-unknown --test wasm_storage`).
#![cfg(target_arch = "wasm32")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::num::NonZeroU32;

use breakwater::config::TierLimits;
use breakwater::limits::{AdmissionRequest, LimiterState, Used};
use breakwater::upstream::{AttemptReport, OutagePolicy, Reply, UpstreamState};
use wasm_bindgen_test::wasm_bindgen_test;

/// A far-future clock: 2100-01-01.
const FAR: u64 = 4_102_444_800_000;

fn busy_limiter() -> (LimiterState, TierLimits) {
    let limits = TierLimits {
        rpm: NonZeroU32::new(u32::MAX),
        input_tpm: NonZeroU32::new(u32::MAX),
        output_tpm: NonZeroU32::new(1_000_000),
        concurrency: NonZeroU32::new(64),
        ..TierLimits::default()
    };
    let mut state = LimiterState::new();
    for i in 0..200u64 {
        let request = AdmissionRequest {
            input_tokens: u64::from(u32::MAX),
            output_tokens: 900,
            lease_ms: 3_600_000,
            quota: None,
        };
        if let breakwater::limits::Admission::Admitted(r) =
            state.admit(&limits, FAR + i * 7, &request)
        {
            if i % 3 == 0 {
                state.settle(
                    &limits,
                    FAR + i * 7 + 5,
                    &r,
                    Used {
                        input_tokens: Some(12),
                        output_tokens: Some(7_000),
                    },
                );
            }
        }
    }
    (state, limits)
}

#[wasm_bindgen_test]
fn limiter_state_survives_durable_object_storage() {
    let (state, limits) = busy_limiter();
    let stored = wasm_bindgen::JsValue::from_str(&serde_json::to_string(&state).unwrap());
    let loaded: LimiterState =
        serde_json::from_str(&stored.as_string().unwrap()).expect("loadable");
    assert_eq!(loaded, state);
    let generic: LimiterState =
        serde_wasm_bindgen::from_value(serde_wasm_bindgen::to_value(&state).unwrap())
            .expect("JS-safe");
    assert_eq!(generic, state);
    let request = AdmissionRequest {
        input_tokens: 10,
        output_tokens: 10,
        lease_ms: 1000,
        quota: None,
    };
    let (mut a, mut b) = (state.clone(), loaded);
    assert_eq!(
        a.admit(&limits, FAR + 10_000, &request),
        b.admit(&limits, FAR + 10_000, &request)
    );
}

#[wasm_bindgen_test]
fn upstream_state_survives_durable_object_storage() {
    let policy = OutagePolicy::default();
    let mut state = UpstreamState::new();
    for i in 0..50u64 {
        let seed = u64::MAX - i;
        let _ = state.before_attempt(
            &policy,
            FAR + i * 100,
            "claude-x",
            i % 2 == 1,
            FAR + 30_000,
            seed,
        );
        let reply = if i % 5 == 0 {
            Reply::RateLimited {
                retry_after_ms: Some(1500),
            }
        } else {
            Reply::Overloaded
        };
        let _ = state.after_attempt(
            &policy,
            FAR + i * 100 + 40,
            "claude-x",
            AttemptReport { reply, probe: None },
            seed,
        );
    }
    let stored = wasm_bindgen::JsValue::from_str(&serde_json::to_string(&state).unwrap());
    let loaded: UpstreamState =
        serde_json::from_str(&stored.as_string().unwrap()).expect("loadable");
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(&state).unwrap()
    );
    let generic: UpstreamState =
        serde_wasm_bindgen::from_value(serde_wasm_bindgen::to_value(&state).unwrap())
            .expect("JS-safe");
    assert_eq!(
        serde_json::to_value(&generic).unwrap(),
        serde_json::to_value(&state).unwrap()
    );
}

#[wasm_bindgen_test]
fn full_width_seeds_need_serde_json_not_json_parse() {
    // JSON.parse turns 2^64 - 1 into a float; the objects therefore parse call bodies with
    // serde_json. This pins the reason.
    let seed = u64::MAX - 1;
    let text = format!("{{\"seed\":{seed}}}");
    let parsed = js_sys::JSON::parse(&text).unwrap();
    #[derive(serde::Deserialize)]
    struct Call {
        seed: u64,
    }
    assert!(serde_wasm_bindgen::from_value::<Call>(parsed).is_err());
    assert_eq!(serde_json::from_str::<Call>(&text).unwrap().seed, seed);
}

/// A failed object call reaches the shell as a `worker::Error` made from the runtime's JS
/// error; the marks that decide whether it goes again must survive that conversion.
#[wasm_bindgen_test]
fn the_runtime_marks_on_a_failed_object_call_survive_the_error_conversion() {
    use breakwater::durable::runtime_marks;
    let marked = |retryable: bool, overloaded: bool| {
        let error = js_sys::Error::new("Durable Object reset because its code was updated.");
        js_sys::Reflect::set(&error, &"retryable".into(), &retryable.into()).unwrap();
        js_sys::Reflect::set(&error, &"overloaded".into(), &overloaded.into()).unwrap();
        worker::Error::from(wasm_bindgen::JsValue::from(error))
    };
    assert_eq!(
        runtime_marks(&marked(true, false).to_js_value()),
        (true, false)
    );
    assert_eq!(
        runtime_marks(&marked(true, true).to_js_value()),
        (true, true)
    );
    // An error the object's own code threw carries no marks: never sent again.
    let thrown = worker::Error::from(wasm_bindgen::JsValue::from(js_sys::Error::new("boom")));
    assert_eq!(runtime_marks(&thrown.to_js_value()), (false, false));
    assert_eq!(
        runtime_marks(&wasm_bindgen::JsValue::from_str("text")),
        (false, false)
    );
}
