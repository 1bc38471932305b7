//! Request bodies: `body::inspect` for `/v1/messages` and `count_tokens`.
//!
//! Input: `[route] body bytes`; route bit 0 set is `count_tokens`. Bit 1 wraps the body's
//! tail in deep nesting (`{"model":…,"max_tokens":…,"x":[[[…]]]}`) to reach the recursion
//! paths.
//!
//! Holds for every input:
//! - a body is accepted only if it is UTF-8 and one JSON object (after whitespace or a BOM);
//! - an accepted `/v1/messages` body has a non-empty `model` of at most 256 bytes and
//!   `max_tokens` ≥ 1, agreeing with what a full JSON parse of those fields reads;
//! - the input estimate is `len / 3 + 1`;
//! - a refusal is a 400 `invalid_request_error` with a message.

use breakwater::request::body::{estimate_input_tokens, inspect};
use breakwater::request::route::Route;

pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let route = if selector & 1 == 0 { Route::Messages } else { Route::CountTokens };
    let owned;
    let body = if selector & 2 != 0 {
        let depth = 1 + usize::from(selector >> 2) * 1000;
        let mut deep = br#"{"model":"m","max_tokens":1,"x":"#.to_vec();
        deep.extend(std::iter::repeat_n(b'[', depth));
        deep.extend_from_slice(body);
        deep.extend(std::iter::repeat_n(b']', depth));
        deep.push(b'}');
        owned = deep;
        &owned[..]
    } else {
        body
    };

    match inspect(&route, body) {
        Ok(facts) => {
            let text = std::str::from_utf8(body).expect("accepted a body that is not UTF-8");
            let trimmed = text.trim_start_matches([' ', '\t', '\r', '\n', '\u{feff}']);
            assert!(trimmed.starts_with('{'), "accepted a body that is not an object");
            assert!(
                serde_json::from_str::<serde::de::IgnoredAny>(trimmed).is_ok(),
                "accepted a body that is not JSON"
            );
            assert_eq!(facts.input_tokens_estimate, estimate_input_tokens(body.len()));
            assert_eq!(estimate_input_tokens(body.len()), body.len() as u64 / 3 + 1);
            assert!(facts.model.as_ref().is_none_or(|m| m.len() <= 256), "accepted a model over 256 bytes");
            if route == Route::Messages {
                let model = facts.model.as_deref().expect("accepted a message without model");
                assert!(!model.is_empty());
                assert!(facts.max_tokens.is_some_and(|n| n >= 1));
            }
            // Where a full parse succeeds it must read the same fields.
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(trimmed) {
                assert_eq!(facts.model.as_deref(), map.get("model").and_then(|m| m.as_str()));
                assert_eq!(facts.max_tokens, map.get("max_tokens").and_then(serde_json::Value::as_u64));
                assert_eq!(facts.stream, map.get("stream").and_then(serde_json::Value::as_bool).unwrap_or(false));
            }
        }
        Err(e) => {
            assert_eq!(e.status(), 400);
            assert_eq!(e.error_type(), "invalid_request_error");
            assert!(!e.message().is_empty());
        }
    }
}
