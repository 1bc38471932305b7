//! How long one attempt may run before the proxy gives up on it, by what the attempt waits for.
//!
//! A stream shows life within seconds (its first SSE event), so `ATTEMPT_TIMEOUT_MS` bounds the
//! wait for it and a stuck attempt is retried early. A non-streaming Messages answer has no head
//! until the whole message is written; cutting it at the same bound would turn every long answer
//! into a `504`, so it is waited for as long as the official SDKs wait for it.

use crate::request::body::BodyFacts;
use crate::request::route::Route;

/// The official SDKs' timeout for a request that sets none (TypeScript and Python: 10 minutes).
pub const SDK_TIMEOUT_MS: u64 = 600_000;

/// The output rate the SDKs assume of a non-streaming answer: 128,000 tokens an hour
/// (`expected = 60 * 60 * max_tokens / 128_000` seconds; above 10 minutes they refuse to send
/// it without streaming unless the caller sets its own timeout).
pub const SDK_TOKENS_PER_HOUR: u64 = 128_000;

/// The longest a whole answer is waited for: the SDKs' estimate for 128,000 tokens, an hour.
pub const MAX_WHOLE_MESSAGE_MS: u64 = 3_600_000;

/// What an attempt waits for before anything of it can reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// A streaming Messages answer: its first SSE event.
    FirstEvent,
    /// A non-streaming Messages answer, whose head comes once the whole message is written.
    WholeMessage {
        /// The request's `max_tokens`: how long the message may be.
        max_tokens: u64,
    },
    /// An upload streamed through: its head comes once the whole body has gone up, which
    /// for a large file takes minutes; waited for as long as the SDKs wait.
    Upload,
    /// Any other route (a token count, a model listing): an answer the upstream gives at once.
    Head,
}

impl Awaited {
    /// What an attempt of this request waits for.
    #[must_use]
    pub fn of(route: &Route, facts: &BodyFacts) -> Awaited {
        match route {
            Route::Messages | Route::ChatCompletions if facts.stream => Awaited::FirstEvent,
            Route::Messages | Route::ChatCompletions => Awaited::WholeMessage {
                max_tokens: facts.max_tokens.unwrap_or(0),
            },
            Route::FileUpload | Route::BatchCreate => Awaited::Upload,
            _ => Awaited::Head,
        }
    }

    /// The attempt's timeout, given `ATTEMPT_TIMEOUT_MS`: that for a stream's first event and
    /// for a quick answer's head; for a whole message [`whole_message_ms`], never less than
    /// the configured value.
    #[must_use]
    pub fn timeout_ms(self, configured_ms: u64) -> u64 {
        match self {
            Awaited::FirstEvent | Awaited::Head => configured_ms,
            Awaited::Upload => SDK_TIMEOUT_MS.max(configured_ms),
            Awaited::WholeMessage { max_tokens } => whole_message_ms(max_tokens).max(configured_ms),
        }
    }
}

/// How long the official SDKs wait for a non-streaming message of up to `max_tokens`: 10
/// minutes for every request they send on their own (`max_tokens` up to 21,333); for a larger
/// one, which they send only with a caller's own timeout, their estimate of its duration at
/// 128,000 tokens an hour, at most an hour.
#[must_use]
pub fn whole_message_ms(max_tokens: u64) -> u64 {
    let expected =
        u128::from(max_tokens).saturating_mul(3_600_000) / u128::from(SDK_TOKENS_PER_HOUR);
    u64::try_from(expected)
        .unwrap_or(u64::MAX)
        .clamp(SDK_TIMEOUT_MS, MAX_WHOLE_MESSAGE_MS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts(stream: bool, max_tokens: Option<u64>) -> BodyFacts {
        BodyFacts {
            stream,
            max_tokens,
            ..BodyFacts::default()
        }
    }

    #[test]
    fn a_stream_waits_the_configured_time_for_its_first_event() {
        let awaited = Awaited::of(&Route::Messages, &facts(true, Some(64_000)));
        assert_eq!(awaited, Awaited::FirstEvent);
        assert_eq!(awaited.timeout_ms(60_000), 60_000);
        assert_eq!(awaited.timeout_ms(1_000), 1_000);
    }

    #[test]
    fn a_long_non_streaming_answer_outlasts_the_configured_timeout() {
        // The defect: a 60 s bound on a non-streaming answer's headers cut every answer that
        // took longer to write.
        let awaited = Awaited::of(&Route::Messages, &facts(false, Some(1024)));
        assert_eq!(awaited, Awaited::WholeMessage { max_tokens: 1024 });
        assert_eq!(awaited.timeout_ms(60_000), 600_000);
        assert_eq!(awaited.timeout_ms(1_000), 600_000);
    }

    #[test]
    fn the_sdks_ten_minutes_hold_up_to_where_they_require_streaming() {
        assert_eq!(whole_message_ms(1), SDK_TIMEOUT_MS);
        assert_eq!(whole_message_ms(21_333), SDK_TIMEOUT_MS);
        // Past 21,333 tokens the SDKs estimate more than 10 minutes.
        assert_eq!(whole_message_ms(21_334), 600_018);
        assert_eq!(whole_message_ms(64_000), 1_800_000);
        assert_eq!(whole_message_ms(128_000), 3_600_000);
        assert_eq!(whole_message_ms(1_000_000), MAX_WHOLE_MESSAGE_MS);
        assert_eq!(whole_message_ms(u64::MAX), MAX_WHOLE_MESSAGE_MS);
        assert_eq!(whole_message_ms(0), SDK_TIMEOUT_MS);
    }

    #[test]
    fn a_configured_timeout_longer_than_the_sdks_applies_to_whole_messages_too() {
        let awaited = Awaited::WholeMessage { max_tokens: 1024 };
        assert_eq!(awaited.timeout_ms(900_000), 900_000);
    }

    #[test]
    fn other_routes_wait_the_configured_time_for_their_head() {
        for route in [
            Route::CountTokens,
            Route::Models,
            Route::Model("claude-sonnet-4-6".to_string()),
        ] {
            let awaited = Awaited::of(&route, &facts(false, Some(64_000)));
            assert_eq!(awaited, Awaited::Head);
            assert_eq!(awaited.timeout_ms(60_000), 60_000);
        }
        // A token count's `stream` means nothing to it.
        let counted = Awaited::of(&Route::CountTokens, &facts(true, None));
        assert_eq!(counted.timeout_ms(2_000), 2_000);
    }

    proptest! {
        #[test]
        fn a_whole_message_is_waited_for_between_the_sdks_timeout_and_an_hour(
            max_tokens in any::<u64>(),
            configured in 1u64..=10_000_000,
        ) {
            let ms = Awaited::WholeMessage { max_tokens }.timeout_ms(configured);
            prop_assert!(ms >= configured);
            prop_assert!(ms >= SDK_TIMEOUT_MS);
            prop_assert!(ms <= MAX_WHOLE_MESSAGE_MS.max(configured));
            // Never shorter for a longer message.
            let longer = Awaited::WholeMessage { max_tokens: max_tokens.saturating_add(1) };
            prop_assert!(longer.timeout_ms(configured) >= ms);
        }
    }
}
