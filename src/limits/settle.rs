//! Which usage a request settles its reservation with, from how its answer ended.
//!
//! Where an answer was cut short the proxy cannot know how much the upstream generated, so it
//! keeps the output reservation (the input is settled); it never refunds on a guess.

use super::limiter_state::Used;
use super::prices::ModelPrice;
use crate::stream::sse;
use crate::stream::tap::Seen;

/// How the answer a reservation was made for ended. Made once per request and read at once,
/// so the size of its watched variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The body was watched: what the tap reported when it ended, failed or was dropped
    /// (`None` when the body stopped moving and the report never came), and the usage it had
    /// read so far.
    Watched {
        seen: Option<Seen>,
        so_far: sse::Usage,
    },
    /// The body was not watched (no answer, or one the tap could not be put on); whether it
    /// was a successful answer that reached the client.
    Unwatched { delivered_ok: bool },
}

/// The usage to settle with.
#[must_use]
pub fn settlement_usage(answered: Answered) -> Used {
    match answered {
        Answered::Watched {
            seen: Some(seen), ..
        } if seen.complete => Used::from(&seen.usage),
        // Cut short: the input was used, the output so far is not known for sure.
        Answered::Watched {
            seen: Some(seen), ..
        } => Used {
            input_tokens: seen.usage.input_tokens,
            output_tokens: None,
        },
        Answered::Watched { seen: None, so_far } => Used {
            input_tokens: so_far.input_tokens,
            output_tokens: None,
        },
        // A successful answer that could not be watched: keep the reservation.
        Answered::Unwatched { delivered_ok: true } => Used::UNKNOWN,
        // No answer came from the upstream, or an error did: no tokens were used.
        Answered::Unwatched {
            delivered_ok: false,
        } => Used {
            input_tokens: Some(0),
            output_tokens: Some(0),
        },
    }
}

/// What the answer cost at `price` (the model that answered), in micro-dollars, for the
/// dollar quotas: known only where the usage is (a complete answer, or none at all, which
/// costs nothing); `None` otherwise, and the reservation's worst case stays charged.
#[must_use]
pub fn settlement_cost(answered: Answered, price: Option<&ModelPrice>) -> Option<u64> {
    match answered {
        Answered::Watched {
            seen: Some(seen), ..
        } if seen.complete => {
            let output = seen.usage.output_tokens?;
            Some(price?.cost_micros(&seen.usage.reported.priced(output)))
        }
        Answered::Unwatched {
            delivered_ok: false,
        } => Some(0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(input: u64, output: u64) -> sse::Usage {
        sse::Usage {
            input_tokens: Some(input),
            output_tokens: Some(output),
            ..sse::Usage::default()
        }
    }

    #[test]
    fn each_ending_settles_as_documented() {
        let complete = Answered::Watched {
            seen: Some(Seen {
                usage: seen(10, 20),
                complete: true,
            }),
            so_far: seen(10, 20),
        };
        assert_eq!(
            settlement_usage(complete),
            Used {
                input_tokens: Some(10),
                output_tokens: Some(20)
            }
        );
        let cut = Answered::Watched {
            seen: Some(Seen {
                usage: seen(10, 5),
                complete: false,
            }),
            so_far: seen(10, 5),
        };
        assert_eq!(
            settlement_usage(cut),
            Used {
                input_tokens: Some(10),
                output_tokens: None
            }
        );
        let stalled = Answered::Watched {
            seen: None,
            so_far: seen(7, 3),
        };
        assert_eq!(
            settlement_usage(stalled),
            Used {
                input_tokens: Some(7),
                output_tokens: None
            }
        );
        assert_eq!(
            settlement_usage(Answered::Unwatched { delivered_ok: true }),
            Used::UNKNOWN
        );
        assert_eq!(
            settlement_usage(Answered::Unwatched {
                delivered_ok: false
            }),
            Used {
                input_tokens: Some(0),
                output_tokens: Some(0)
            }
        );
    }
}
