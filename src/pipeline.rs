//! One request, phase by phase: **route** → **authenticate** → **inspect** (read the body) →
//! **admit** → **run** (attempts and fallbacks) → **deliver** → **settle** → **record**.
//!
//! What each phase decides lives here, pure and tested on the host: how a body is read and
//! charged while it arrives ([`Intake`]), and how the request goes upstream ([`Forwarding`]).
//! From the admission on, the phases themselves are one function of the core, [`serve`],
//! generic over ports besides the runner's own: the caller's [`Limiter`], the key's
//! [`KeyStates`], the client's side of the answer ([`Deliver`]) and the runtime's "after the
//! answer" ([`AfterAnswer`]). The shell routes, authenticates and reads the body, implements
//! the ports with the runtime, and decides nothing of its own.

mod ports;
mod serve;
mod settle;
#[cfg(test)]
mod tests;

pub use ports::{Admitted, AfterAnswer, Deliver, Delivered, KeyStates, Lease, Limiter, Terms};
pub use serve::{serve, Ports, Ready, Served, UsageToCome};
pub use settle::Spent;

use std::num::NonZeroU32;

use crate::config::{Config, TierLimits};
use crate::error::ProxyError;
use crate::identity::{Caller, UpstreamKey};
use crate::limits::prices::ModelPrice;
use crate::limits::quota::QuotaCharge;
use crate::request::body::BodyFacts;
use crate::request::route::{query_of, upstream_url, Metering, Route};
use crate::request::upload::{count_while_arriving, BodyCaps, ReadPace, ReadRules};
use crate::retry::fallback::{self, Fallbacks, OPT_OUT_HEADER};
use crate::retry::{Awaited, RetryPolicy};
use crate::upstream::{pool_of, Claimant, Cost, Priority};

/// The request headers by which a client asks the proxy for something: each may lower what
/// its tier allows, never raise it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientAsks<'a> {
    /// `x-proxy-priority`: `background` lowers an interactive tier's request.
    pub priority: Option<&'a str>,
    /// `x-proxy-budget-ms`: a shorter budget than the tier's.
    pub budget_ms: Option<&'a str>,
    /// `x-proxy-fallback`: `off` keeps the model the client named.
    pub fallback: Option<&'a str>,
}

impl<'a> ClientAsks<'a> {
    /// The asks among a request's headers, looked up by `value`.
    pub fn from_headers(value: impl Fn(&str) -> Option<&'a str>) -> ClientAsks<'a> {
        ClientAsks {
            priority: value("x-proxy-priority"),
            budget_ms: value("x-proxy-budget-ms"),
            fallback: value(OPT_OUT_HEADER),
        }
    }
}

/// The inspect phase: what the request is charged against its caller's limits, and how its
/// body is read: charged to the caller before a byte is read (where the route takes one of
/// its tier's concurrency slots, one of them in bodies being sent), held against the
/// isolate's and the caller's budgets as it arrives, and, still arriving after a moment,
/// counted against `rpm` then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intake {
    pub limits: TierLimits,
    pub metering: Metering,
    /// A passthrough caller: its object stores nothing until the upstream accepts its key.
    pub provisional: bool,
    pub rules: ReadRules,
    /// When a body still arriving has its request counted against `rpm`, if ever.
    pub count_due_ms: Option<u64>,
}

impl Intake {
    /// The intake of `route` for `caller`, for a request that began at `started_ms`.
    #[must_use]
    pub fn of(config: &Config, route: &Route, caller: &Caller, started_ms: u64) -> Intake {
        let limits = config.tier_limits(&caller.tier);
        let metering = route.metering(&limits);
        let rules = ReadRules {
            limit: config.max_body_bytes,
            caps: BodyCaps {
                isolate: config.max_inflight_body_bytes,
                caller: config.max_inflight_body_bytes_per_caller,
                bodies: limits
                    .concurrency
                    .filter(|_| metering == Metering::Full)
                    .map(NonZeroU32::get),
            },
            pace: ReadPace {
                started_ms,
                grace_ms: config.body_read_timeout_ms,
                min_bytes_per_s: config.min_body_bytes_per_s,
            },
        };
        Intake {
            limits,
            metering,
            provisional: matches!(caller.upstream_key, UpstreamKey::Passthrough(_)),
            rules,
            count_due_ms: count_while_arriving(metering, &limits, &rules.pace),
        }
    }

    /// What the request reserves against its tier's daily and monthly quotas: one request,
    /// its input estimate, its `max_tokens`, and its worst-case cost at the dearest of its
    /// model and the models it may fall back to (`fallbacks`: none when the route does not
    /// fall back or the client turned fallback off). `None` when the tier sets no quota or
    /// the route is not metered by tokens. Under a dollar quota a model without a price is
    /// refused here, before anything is charged.
    pub fn quota_charge(
        &self,
        config: &Config,
        facts: &BodyFacts,
        fallbacks: &[String],
    ) -> Result<Option<QuotaCharge>, ProxyError> {
        let quotas = &self.limits.quotas;
        if self.metering != Metering::Full || !quotas.any() {
            return Ok(None);
        }
        let max_tokens = facts.max_tokens.unwrap_or(0);
        let mut micros = 0;
        if quotas.prices_matter() {
            let Some(model) = facts.model.as_deref() else {
                return Err(ProxyError::InvalidRequest(
                    "this key has a dollar quota: the request must name its model".to_string(),
                ));
            };
            let candidates = std::iter::once(model).chain(fallbacks.iter().map(String::as_str));
            for candidate in candidates {
                let price = config.prices.of(candidate).ok_or_else(|| {
                    ProxyError::InvalidRequest(format!(
                        "model {candidate:?} has no price, and this key has a dollar quota: \
                         the proxy's operator can add it to MODEL_PRICES"
                    ))
                })?;
                micros = price
                    .worst_case_micros(facts.input_tokens_estimate, max_tokens)
                    .max(micros);
            }
        }
        Ok(Some(QuotaCharge {
            requests: 1,
            input_tokens: facts.input_tokens_estimate,
            output_tokens: max_tokens,
            micros,
        }))
    }

    /// Whether the answer's usage must be watched: to settle the admission (unless nothing
    /// it settles depends on the answer), or for metrics when they are kept.
    #[must_use]
    pub fn watches_usage(&self, metrics_kept: bool) -> bool {
        (self.metering == Metering::Full && self.limits.settles_on_the_answer()) || metrics_kept
    }
}

/// The run phase: how the request goes upstream, attempt after attempt, and what it is
/// charged for it.
#[derive(Debug)]
pub struct Forwarding {
    pub url: String,
    pub policy: RetryPolicy,
    /// Who claims the upstream key's capacity, in the fair order.
    pub claimant: Claimant,
    /// What one attempt costs the key, for its pacing (and the caller's per-minute limits).
    pub cost: Cost,
    /// What the admission reserves against the tier's daily and monthly quotas (see
    /// [`Intake::quota_charge`]).
    pub quota: Option<QuotaCharge>,
    /// The prices of the models that may answer, to price the answer at the one that did.
    pub prices: AnswerPrices,
    /// The key's pool this request answers to; `None`: none (model listings, files).
    pub pool: Option<String>,
    pub fallbacks: Fallbacks,
    /// A successful JSON answer of known length is read whole in its attempt: its usage is
    /// watched, or its `results_url` is pointed at the proxy.
    pub json_whole: bool,
}

impl Forwarding {
    /// How `route` goes upstream for `caller`, once its body was read (`facts`); `raw_url` is
    /// the client's URL, whose query goes along. A request its tier's dollar quota cannot
    /// price is refused here (see [`Intake::quota_charge`]).
    pub fn of(
        config: &Config,
        route: &Route,
        caller: &Caller,
        intake: &Intake,
        facts: &BodyFacts,
        asks: ClientAsks<'_>,
        (raw_url, watches_usage): (&str, bool),
    ) -> Result<Forwarding, ProxyError> {
        let path = route.upstream_path().ok_or(ProxyError::NotFound)?;
        // How the caller shares a scarce key: its tier's weight, priority and budget.
        let share = config.tier_share(&caller.tier);
        let claimant = Claimant {
            caller: caller.identity.clone(),
            weight: share.weight,
            priority: Priority::requested(share.priority, asks.priority),
        };
        let policy = RetryPolicy {
            budget_ms: share.budget_ms.unwrap_or(config.request_budget_ms),
            // A streamed body goes once: a second attempt would have nothing to send.
            max_attempts: if route.streams_body() {
                NonZeroU32::MIN
            } else {
                config.max_attempts
            },
            ..RetryPolicy::from_config(config, None)
        }
        .with_client_budget(asks.budget_ms)
        .awaiting(Awaited::of(route, facts));
        let fallbacks = match (route, facts.model.as_deref()) {
            (Route::Messages, Some(model)) => Fallbacks::new(
                model,
                config.fallbacks_of(model),
                fallback::allowed_by_header(asks.fallback),
            ),
            _ => Fallbacks::none(),
        };
        let quota = intake.quota_charge(config, facts, fallbacks.candidates())?;
        let prices = AnswerPrices::of(config, route, facts.model.as_deref());
        Ok(Forwarding {
            url: upstream_url(&config.upstream_url, &path, query_of(raw_url)),
            policy,
            claimant,
            cost: Cost {
                input_tokens: facts.input_tokens_estimate,
                output_tokens: facts.max_tokens.unwrap_or(0),
            },
            quota,
            prices,
            pool: route
                .carries_body()
                .then(|| pool_of(route.paced_as(), facts.model.as_deref())),
            fallbacks,
            json_whole: watches_usage || route.carries_results_url(),
        })
    }
}

/// The prices of the models that may answer a request: the one it names, and (a message)
/// those it may fall back to; a model without a price is left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerPrices {
    model: Option<ModelPrice>,
    fallbacks: Vec<(String, ModelPrice)>,
}

impl AnswerPrices {
    /// The prices, from `config`'s table, of `model` and of its fallbacks on `route`.
    #[must_use]
    pub fn of(config: &Config, route: &Route, model: Option<&str>) -> AnswerPrices {
        let Some(model) = model else {
            return AnswerPrices::default();
        };
        let fallbacks = match route {
            Route::Messages => config
                .fallbacks_of(model)
                .iter()
                .filter_map(|m| Some((m.clone(), config.prices.of(m)?)))
                .collect(),
            _ => Vec::new(),
        };
        AnswerPrices {
            model: config.prices.of(model),
            fallbacks,
        }
    }

    /// The price of the model that answered: the fallback `answered_by`, or else the
    /// request's own.
    #[must_use]
    pub fn answering(&self, answered_by: Option<&str>) -> Option<ModelPrice> {
        match answered_by {
            None => self.model,
            Some(to) => self
                .fallbacks
                .iter()
                .find(|(model, _)| model == to)
                .map(|(_, price)| *price),
        }
    }
}

#[cfg(test)]
mod decisions {
    use super::*;
    use crate::identity::Secret;

    fn config(vars: &[(&str, &str)]) -> Config {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        let lookup = move |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| (name == "ANTHROPIC_API_KEY").then(|| "sk-ant-test".to_string()))
        };
        Config::from_lookup(lookup).unwrap()
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

    fn message(model: &str) -> BodyFacts {
        BodyFacts {
            model: Some(model.to_string()),
            max_tokens: Some(300),
            input_tokens_estimate: 120,
            ..BodyFacts::default()
        }
    }

    const TIERS: &str = r#"{"default": {"rpm": 10, "concurrency": 2},
        "jobs": {"rpm": 5, "weight": 3, "priority": "background", "budget_ms": 120000},
        "open": {}}"#;

    #[test]
    fn the_intake_charges_what_the_route_is_metered_by() {
        let config = config(&[("RATE_LIMITS", TIERS)]);
        let intake = Intake::of(&config, &Route::Messages, &caller("default", false), 1_000);
        assert_eq!(intake.metering, Metering::Full);
        assert!(!intake.provisional);
        // The tier's concurrency bounds its bodies in flight; its rpm counts a slow body.
        assert_eq!(intake.rules.caps.bodies, Some(2));
        assert_eq!(intake.rules.pace.started_ms, 1_000);
        assert_eq!(intake.count_due_ms, Some(1_200));
        assert!(intake.watches_usage(false));
        // A token count takes no slot, so its body none of the bodies in flight.
        let count = Intake::of(
            &config,
            &Route::CountTokens,
            &caller("default", true),
            1_000,
        );
        assert_eq!(count.metering, Metering::RequestOnly);
        assert!(count.provisional);
        assert_eq!(count.rules.caps.bodies, None);
        assert_eq!(count.count_due_ms, Some(1_200));
        // Only rpm: nothing settles on the answer, unless metrics are kept.
        let jobs = Intake::of(&config, &Route::Messages, &caller("jobs", false), 1_000);
        assert!(!jobs.watches_usage(false));
        assert!(jobs.watches_usage(true));
        // An unlimited tier: nothing counted while the body arrives.
        let open = Intake::of(&config, &Route::Messages, &caller("open", false), 1_000);
        assert_eq!(open.count_due_ms, None);
        assert_eq!(open.rules.caps.bodies, None);
    }

    #[test]
    fn a_quota_reserves_the_worst_case_of_the_dearest_model_that_may_answer() {
        let config = config(&[
            (
                "RATE_LIMITS",
                r#"{"default": {"rpd": 50, "usd_per_day": 0.2}, "count": {"rpd": 5},
                    "minute": {"rpm": 5}}"#,
            ),
            (
                "MODEL_FALLBACKS",
                r#"{"claude-haiku-4-5": ["claude-opus-4-1"], "claude-sonnet-4-6": ["claude-unpriced"]}"#,
            ),
        ]);
        let intake =
            |tier: &str, route: &Route| Intake::of(&config, route, &caller(tier, false), 1_000);
        let messages = intake("default", &Route::Messages);
        let fallbacks = |model: &str| config.fallbacks_of(model);
        // Haiku may fall back to Opus 4.1, which is dearer: its worst case is reserved.
        let charge = messages
            .quota_charge(
                &config,
                &message("claude-haiku-4-5"),
                fallbacks("claude-haiku-4-5"),
            )
            .unwrap()
            .unwrap();
        let opus = config.prices.of("claude-opus-4-1").unwrap();
        assert_eq!(charge.micros, opus.worst_case_micros(120, 300));
        assert_eq!(
            (charge.requests, charge.input_tokens, charge.output_tokens),
            (1, 120, 300)
        );
        // A model without a price, or a fallback without one, is refused, named.
        for (model, named) in [
            ("claude-unknown-9", "claude-unknown-9"),
            ("claude-sonnet-4-6", "claude-unpriced"),
        ] {
            let Err(ProxyError::InvalidRequest(why)) =
                messages.quota_charge(&config, &message(model), fallbacks(model))
            else {
                panic!("{model} must be refused");
            };
            assert!(why.contains(named), "{why}");
        }
        // Without a dollar quota, no price is needed; without a quota, nothing is reserved.
        let count_only = intake("count", &Route::Messages)
            .quota_charge(&config, &message("claude-unknown-9"), &[])
            .unwrap();
        assert_eq!(count_only.map(|c| c.micros), Some(0));
        let minute = intake("minute", &Route::Messages)
            .quota_charge(&config, &message("claude-unknown-9"), &[])
            .unwrap();
        assert_eq!(minute, None);
        // A route charged by the request alone reserves nothing here (its object counts rpd).
        let listing = intake("default", &Route::CountTokens)
            .quota_charge(&config, &message("claude-unknown-9"), &[])
            .unwrap();
        assert_eq!(listing, None);
        // The forwarding carries the charge, and is refused (a 400) for an unpriced model
        // before anything is admitted.
        let forward_asking = |model: &str, asks: ClientAsks<'_>| {
            Forwarding::of(
                &config,
                &Route::Messages,
                &caller("default", false),
                &messages,
                &message(model),
                asks,
                ("https://proxy.example/v1/messages", true),
            )
        };
        let forward = |model: &str| forward_asking(model, ClientAsks::default());
        assert_eq!(
            forward("claude-haiku-4-5").map(|f| f.quota).ok(),
            Some(Some(charge))
        );
        let refused = forward("claude-unknown-9").map(|f| f.quota);
        assert_eq!(refused.map_err(|e| e.status()), Err(400));
        // With fallback turned off (`x-proxy-fallback: off`) only its own model may answer:
        // Haiku's own worst case is reserved, and Sonnet's unpriced fallback refuses nothing.
        let off = ClientAsks {
            fallback: Some("off"),
            ..ClientAsks::default()
        };
        let own = |model: &str| forward_asking(model, off).map(|f| f.quota.map(|q| q.micros));
        let haiku = config.prices.of("claude-haiku-4-5").unwrap();
        assert_eq!(
            own("claude-haiku-4-5").ok(),
            Some(Some(haiku.worst_case_micros(120, 300)))
        );
        assert!(haiku.worst_case_micros(120, 300) < charge.micros);
        let sonnet = config.prices.of("claude-sonnet-4-6").unwrap();
        assert_eq!(
            own("claude-sonnet-4-6").ok(),
            Some(Some(sonnet.worst_case_micros(120, 300)))
        );
    }

    #[test]
    fn an_answer_is_priced_at_the_model_that_answered_it() {
        let config = config(&[(
            "MODEL_FALLBACKS",
            r#"{"claude-haiku-4-5": ["claude-unpriced", "claude-opus-4-1"]}"#,
        )]);
        let prices = AnswerPrices::of(&config, &Route::Messages, Some("claude-haiku-4-5"));
        let price = |model: &str| config.prices.of(model);
        assert!(price("claude-haiku-4-5").is_some());
        assert_ne!(price("claude-haiku-4-5"), price("claude-opus-4-1"));
        assert_eq!(prices.answering(None), price("claude-haiku-4-5"));
        assert_eq!(
            prices.answering(Some("claude-opus-4-1")),
            price("claude-opus-4-1")
        );
        // A fallback without a price prices nothing; nor does a model it may not fall back to.
        assert_eq!(prices.answering(Some("claude-unpriced")), None);
        assert_eq!(prices.answering(Some("claude-sonnet-4-6")), None);
        // Only a message falls back: a token count is priced at its own model alone.
        let count = AnswerPrices::of(&config, &Route::CountTokens, Some("claude-haiku-4-5"));
        assert_eq!(count.answering(Some("claude-opus-4-1")), None);
        assert_eq!(
            AnswerPrices::of(&config, &Route::Messages, None),
            AnswerPrices::default()
        );
    }

    #[test]
    fn forwarding_takes_the_tier_and_what_the_client_may_lower() {
        let config = config(&[
            ("RATE_LIMITS", TIERS),
            (
                "MODEL_FALLBACKS",
                r#"{"claude-opus-5-5": ["claude-sonnet-5-5"]}"#,
            ),
        ]);
        let url = "https://proxy.example/v1/messages?beta=true";
        let plain = Forwarding::of(
            &config,
            &Route::Messages,
            &caller("default", false),
            &Intake::of(&config, &Route::Messages, &caller("default", false), 0),
            &message("claude-opus-5-5"),
            ClientAsks::default(),
            (url, true),
        )
        .unwrap();
        assert!(
            plain.url.ends_with("/v1/messages?beta=true"),
            "{}",
            plain.url
        );
        assert_eq!(plain.claimant.priority, Priority::Interactive);
        assert_eq!(plain.policy.budget_ms, config.request_budget_ms);
        assert_eq!(
            plain.cost,
            Cost {
                input_tokens: 120,
                output_tokens: 300
            }
        );
        assert!(plain.pool.is_some());
        assert!(plain.json_whole);
        assert!(plain.fallbacks.has_next());
        // The client lowers its priority, shortens its budget and keeps its model.
        let asked = Forwarding::of(
            &config,
            &Route::Messages,
            &caller("default", false),
            &Intake::of(&config, &Route::Messages, &caller("default", false), 0),
            &message("claude-opus-5-5"),
            ClientAsks {
                priority: Some("background"),
                budget_ms: Some("5000"),
                fallback: Some("off"),
            },
            (url, false),
        )
        .unwrap();
        assert_eq!(asked.claimant.priority, Priority::Background);
        assert_eq!(asked.policy.budget_ms, 5_000);
        assert!(!asked.fallbacks.has_next());
        assert!(!asked.json_whole);
        // A background tier stays background whatever the client asks; its budget is its own.
        let jobs = Forwarding::of(
            &config,
            &Route::Messages,
            &caller("jobs", false),
            &Intake::of(&config, &Route::Messages, &caller("jobs", false), 0),
            &message("claude-sonnet-5-5"),
            ClientAsks {
                priority: Some("interactive"),
                ..ClientAsks::default()
            },
            (url, false),
        )
        .unwrap();
        assert_eq!(jobs.claimant.priority, Priority::Background);
        assert_eq!(jobs.claimant.weight, 3);
        assert_eq!(jobs.policy.budget_ms, 120_000);
        // A streamed upload goes once, to no pool.
        let upload = Forwarding::of(
            &config,
            &Route::FileUpload,
            &caller("default", false),
            &Intake::of(&config, &Route::FileUpload, &caller("default", false), 0),
            &BodyFacts::default(),
            ClientAsks::default(),
            ("https://proxy.example/v1/files", false),
        )
        .unwrap();
        assert_eq!(upload.policy.max_attempts, NonZeroU32::MIN);
        assert_eq!(upload.pool, None);
        // A route with no upstream path is not forwarded.
        assert!(matches!(
            Forwarding::of(
                &config,
                &Route::Health,
                &caller("default", false),
                &Intake::of(&config, &Route::Health, &caller("default", false), 0),
                &BodyFacts::default(),
                ClientAsks::default(),
                (url, false),
            ),
            Err(ProxyError::NotFound)
        ));
    }
}
