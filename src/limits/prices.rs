//! What the Claude models cost, to hold a caller's spending to its dollars a day or a month.
//!
//! Prices are whole micro-dollars per million tokens (`$0.01 / MTok` is `10_000`), so every
//! sum is exact: a request costs its tokens times their rates, rounded up once to the
//! micro-dollar. The built-in table is Anthropic's published price list (see
//! `docs/configuration.md` for its date); `MODEL_PRICES` adds or replaces models, for new ones
//! or negotiated rates. A model with no price is never admitted for free under a dollar quota.

use crate::json::Json;

/// Micro-dollars in a dollar.
const MICROS: u64 = 1_000_000;
/// Tokens in the "per million tokens" of a price.
const PER_TOKENS: u128 = 1_000_000;

/// One set of rates, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rates {
    pub input: u64,
    pub output: u64,
    /// Prompt written to the cache for five minutes.
    pub cache_write_5m: u64,
    /// Prompt written to the cache for an hour.
    pub cache_write_1h: u64,
    /// Prompt read from the cache.
    pub cache_read: u64,
}

impl Rates {
    /// Rates from dollars per million tokens for input and output, with Anthropic's cache
    /// multipliers: a five-minute write 1.25× input, an hour's 2×, a read 0.1×.
    const fn standard(
        input_dollars_per_mtok_x100: u64,
        output_dollars_per_mtok_x100: u64,
    ) -> Rates {
        let input = input_dollars_per_mtok_x100 * (MICROS / 100);
        Rates {
            input,
            output: output_dollars_per_mtok_x100 * (MICROS / 100),
            cache_write_5m: input / 4 * 5,
            cache_write_1h: input * 2,
            cache_read: input / 10,
        }
    }

    /// These rates with a different cache read.
    const fn reading_cache_at(self, cache_read: u64) -> Rates {
        Rates { cache_read, ..self }
    }

    /// These rates with a different five-minute cache write.
    const fn writing_5m_at(self, cache_write_5m: u64) -> Rates {
        Rates {
            cache_write_5m,
            ..self
        }
    }

    /// The highest rate a prompt token can be charged at: plain, or written to the cache.
    fn prompt_ceiling(&self) -> u64 {
        self.input.max(self.cache_write_5m).max(self.cache_write_1h)
    }
}

/// A model whose rates change for a long prompt: above `above_tokens` of prompt (input, cache
/// reads and cache writes together), every token of the request is charged at `rates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPrompt {
    pub above_tokens: u64,
    pub rates: Rates,
}

/// What one model costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrice {
    pub rates: Rates,
    pub long_prompt: Option<LongPrompt>,
}

/// The tokens of one answer, as its `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PricedTokens {
    /// Prompt tokens neither read from nor written to the cache.
    pub input: u64,
    pub output: u64,
    pub cache_write_5m: u64,
    pub cache_write_1h: u64,
    pub cache_read: u64,
}

impl PricedTokens {
    fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cache_write_5m)
            .saturating_add(self.cache_write_1h)
            .saturating_add(self.cache_read)
    }
}

impl ModelPrice {
    /// The rates a request with a prompt of `prompt_tokens` pays.
    fn rates_for(&self, prompt_tokens: u64) -> &Rates {
        match &self.long_prompt {
            Some(long) if prompt_tokens > long.above_tokens => &long.rates,
            _ => &self.rates,
        }
    }

    /// What an answer's tokens cost, in micro-dollars (rounded up once).
    #[must_use]
    pub fn cost_micros(&self, tokens: &PricedTokens) -> u64 {
        let rates = self.rates_for(tokens.prompt());
        let parts = [
            (tokens.input, rates.input),
            (tokens.output, rates.output),
            (tokens.cache_write_5m, rates.cache_write_5m),
            (tokens.cache_write_1h, rates.cache_write_1h),
            (tokens.cache_read, rates.cache_read),
        ];
        let total: u128 = parts
            .iter()
            .map(|&(n, rate)| u128::from(n) * u128::from(rate))
            .sum();
        u64::try_from(total.div_ceil(PER_TOKENS)).unwrap_or(u64::MAX)
    }

    /// The most a request can cost before its answer is known: its prompt estimate (an
    /// upper estimate) at the dearest rate a prompt token can have (written to the cache for
    /// an hour), and `max_tokens` of output, at the long-prompt rates when the estimate
    /// passes their threshold. No answer costs more, so reserving this never lets concurrent
    /// requests spend past a quota.
    #[must_use]
    pub fn worst_case_micros(&self, prompt_estimate: u64, max_tokens: u64) -> u64 {
        let rates = self.rates_for(prompt_estimate);
        let total = u128::from(prompt_estimate) * u128::from(rates.prompt_ceiling())
            + u128::from(max_tokens) * u128::from(rates.output);
        u64::try_from(total.div_ceil(PER_TOKENS)).unwrap_or(u64::MAX)
    }
}

/// Anthropic's published prices per million tokens, as of 2026-12-07 (platform.claude.com,
/// "Pricing" and each model's page): the current models and those still served.
const BUILT_IN: &[(&str, ModelPrice)] = &[
    (
        "claude-fable-5-1",
        flat(Rates::standard(1_000, 5_000).reading_cache_at(250_000)),
    ),
    (
        "claude-mythos-5-1",
        flat(Rates::standard(1_000, 5_000).reading_cache_at(250_000)),
    ),
    ("claude-fable-5", flat(Rates::standard(1_000, 5_000))),
    ("claude-mythos-5", flat(Rates::standard(1_000, 5_000))),
    (
        "claude-opus-5-5",
        flat(Rates::standard(400, 2_000).reading_cache_at(200_000)),
    ),
    ("claude-opus-5", flat(Rates::standard(500, 2_500))),
    ("claude-opus-4-8", flat(Rates::standard(500, 2_500))),
    ("claude-opus-4-7", flat(Rates::standard(500, 2_500))),
    ("claude-opus-4-6", flat(Rates::standard(500, 2_500))),
    ("claude-opus-4-5", flat(Rates::standard(500, 2_500))),
    ("claude-opus-4-1", flat(Rates::standard(1_500, 7_500))),
    ("claude-opus-4-0", flat(Rates::standard(1_500, 7_500))),
    ("claude-opus-4", flat(Rates::standard(1_500, 7_500))),
    (
        "claude-sonnet-5-5",
        flat(Rates::standard(200, 1_000).reading_cache_at(100_000)),
    ),
    ("claude-sonnet-5", flat(Rates::standard(200, 1_000))),
    ("claude-sonnet-4-6", flat(Rates::standard(300, 1_500))),
    ("claude-sonnet-4-5", SONNET_4_LONG),
    ("claude-sonnet-4-0", SONNET_4_LONG),
    ("claude-sonnet-4", SONNET_4_LONG),
    ("claude-3-7-sonnet", flat(Rates::standard(300, 1_500))),
    (
        "claude-haiku-5-5",
        ModelPrice {
            rates: Rates::standard(10, 50).reading_cache_at(10_000),
            long_prompt: Some(LongPrompt {
                above_tokens: 100_000,
                rates: Rates::standard(50, 250),
            }),
        },
    ),
    ("claude-haiku-4-5", flat(Rates::standard(100, 500))),
    ("claude-3-5-haiku", flat(Rates::standard(80, 400))),
    (
        "claude-3-haiku",
        flat(
            Rates::standard(25, 125)
                .writing_5m_at(300_000)
                .reading_cache_at(30_000),
        ),
    ),
];

/// Sonnet 4 and 4.5 with the 1M-token context: above 200K of prompt, input and cache rates
/// double and output goes to 1.5×.
const SONNET_4_LONG: ModelPrice = ModelPrice {
    rates: Rates::standard(300, 1_500),
    long_prompt: Some(LongPrompt {
        above_tokens: 200_000,
        rates: Rates::standard(600, 2_250),
    }),
};

const fn flat(rates: Rates) -> ModelPrice {
    ModelPrice {
        rates,
        long_prompt: None,
    }
}

/// The prices the proxy knows: the built-in table with `MODEL_PRICES` over it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriceTable {
    /// Models given in `MODEL_PRICES`, which win over the built-in ones (a few: a list is
    /// all they need).
    overrides: Vec<(String, ModelPrice)>,
}

/// The dearest rate accepted, in dollars per million tokens: far above any model's, low
/// enough that no sum overflows. Its messages write it as a whole number: the module has no
/// float printer (docs/dependencies.md).
const MAX_WHOLE_DOLLARS_PER_MTOK: u32 = 100_000;
#[allow(clippy::cast_lossless)] // `f64::from` is not const
const MAX_DOLLARS_PER_MTOK: f64 = MAX_WHOLE_DOLLARS_PER_MTOK as f64;

fn micros(model: &str, field: &str, dollars: f64) -> Result<u64, String> {
    if !dollars.is_finite() || !(0.0..=MAX_DOLLARS_PER_MTOK).contains(&dollars) {
        return Err(format!(
            "MODEL_PRICES: {model:?} {field} must be dollars per million tokens, 0 to {MAX_WHOLE_DOLLARS_PER_MTOK}"
        ));
    }
    // In range, so the cast neither truncates nor wraps.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((dollars * MICROS as f64).round() as u64)
}

/// One set of rates as `MODEL_PRICES` gives them, in dollars per million tokens: `input` and
/// `output`, and the cache rates, which follow Anthropic's multipliers of `input` when left
/// out. `also` is the one other field the object may have.
fn rates_of(model: &str, given: &Json, also: &str) -> Result<Rates, String> {
    const FIELDS: [&str; 5] = [
        "input",
        "output",
        "cache_write_5m",
        "cache_write_1h",
        "cache_read",
    ];
    let Json::Object(fields) = given else {
        return Err(format!(
            "MODEL_PRICES: {model:?} must be an object of prices"
        ));
    };
    if let Some((unknown, _)) = fields
        .iter()
        .find(|(name, _)| name != also && !FIELDS.contains(&name.as_str()))
    {
        return Err(format!(
            "MODEL_PRICES: {model:?} has an unknown field {unknown:?}"
        ));
    }
    let field = |name: &str| -> Result<Option<u64>, String> {
        match given.get(name) {
            None | Some(Json::Null) => Ok(None),
            #[allow(clippy::cast_precision_loss)] // prices far below 2^53
            Some(Json::Unsigned(n)) => micros(model, name, *n as f64).map(Some),
            Some(Json::Float(dollars)) => micros(model, name, *dollars).map(Some),
            Some(_) => micros(model, name, -1.0).map(Some),
        }
    };
    let required =
        |name: &str| field(name)?.ok_or_else(|| format!("MODEL_PRICES: {model:?} needs {name}"));
    let input = required("input")?;
    Ok(Rates {
        input,
        output: required("output")?,
        cache_write_5m: field("cache_write_5m")?.unwrap_or(input / 4 * 5),
        cache_write_1h: field("cache_write_1h")?.unwrap_or(input * 2),
        cache_read: field("cache_read")?.unwrap_or(input / 10),
    })
}

impl PriceTable {
    /// The built-in table with `MODEL_PRICES` (a JSON object of model ids) over it.
    pub fn with_overrides(json: Option<&str>) -> Result<PriceTable, String> {
        let Some(json) = json.map(str::trim).filter(|j| !j.is_empty()) else {
            return Ok(PriceTable::default());
        };
        let given: Json = serde_json::from_str(json)
            .map_err(|e| format!("MODEL_PRICES is not a JSON object of model prices: {e}"))?;
        let Json::Object(models) = given else {
            return Err("MODEL_PRICES is not a JSON object of model prices".to_string());
        };
        let mut overrides = Vec::with_capacity(models.len());
        for (model, price) in &models {
            let rates = rates_of(model, price, "long_prompt")?;
            let long_prompt = match price.get("long_prompt") {
                None | Some(Json::Null) => None,
                Some(long) => Some(LongPrompt {
                    above_tokens: match long.get("above_tokens") {
                        Some(Json::Unsigned(n)) => *n,
                        _ => {
                            return Err(format!(
                                "MODEL_PRICES: {model:?} long_prompt needs above_tokens, a whole number"
                            ))
                        }
                    },
                    rates: rates_of(model, long, "above_tokens")?,
                }),
            };
            // A model given twice: the last one counts, as for any JSON object.
            overrides.retain(|(given, _)| given != model);
            overrides.push((model.clone(), ModelPrice { rates, long_prompt }));
        }
        Ok(PriceTable { overrides })
    }

    /// The price of `model`: its id as listed, or a listed id with a date (`-20250929`) or
    /// `-latest` after it. Nothing else matches, so a model the table does not know is never
    /// priced as a neighbour.
    #[must_use]
    pub fn of(&self, model: &str) -> Option<ModelPrice> {
        let base = base_id(model);
        let given = |id: &str| {
            self.overrides
                .iter()
                .find(|(given, _)| given == id)
                .map(|(_, price)| *price)
        };
        given(model).or_else(|| given(base)).or_else(|| {
            BUILT_IN
                .iter()
                .find(|(id, _)| *id == model || *id == base)
                .map(|(_, price)| *price)
        })
    }
}

/// A model id without a trailing date (`-YYYYMMDD`) or `-latest`.
fn base_id(model: &str) -> &str {
    if let Some(base) = model.strip_suffix("-latest") {
        return base;
    }
    // The last nine bytes: `-` and eight digits (ASCII, so the cut is a character boundary).
    let cut = model.len().saturating_sub(9);
    match model.as_bytes().get(cut..) {
        Some([b'-', date @ ..]) if cut > 0 && date.iter().all(u8::is_ascii_digit) => {
            model.get(..cut).unwrap_or(model)
        }
        _ => model,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table() -> PriceTable {
        PriceTable::default()
    }

    #[test]
    fn the_table_knows_the_current_models_and_their_dated_ids() {
        let t = table();
        let sonnet = t.of("claude-sonnet-5-5").unwrap();
        assert_eq!(sonnet.rates.input, 2_000_000);
        assert_eq!(sonnet.rates.output, 10_000_000);
        assert_eq!(sonnet.rates.cache_write_5m, 2_500_000);
        assert_eq!(sonnet.rates.cache_write_1h, 4_000_000);
        assert_eq!(sonnet.rates.cache_read, 100_000);
        assert_eq!(
            t.of("claude-sonnet-4-5-20250929"),
            t.of("claude-sonnet-4-5")
        );
        assert_eq!(t.of("claude-3-5-haiku-latest"), t.of("claude-3-5-haiku"));
        assert_eq!(t.of("claude-opus-4-20250514"), t.of("claude-opus-4-0"));
        assert_eq!(
            t.of("claude-haiku-5-5").unwrap().rates.cache_write_5m,
            125_000
        );
        // Nothing is priced as a neighbour.
        for unknown in [
            "claude-sonnet-4-7",
            "claude-opus-6",
            "claude-sonnet-5-5-x",
            "gpt-5",
            "",
        ] {
            assert_eq!(t.of(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn an_answer_costs_its_tokens_at_their_rates_rounded_up_once() {
        let sonnet = table().of("claude-sonnet-4-6").unwrap();
        let tokens = PricedTokens {
            input: 1_000,
            output: 500,
            cache_write_5m: 2_000,
            cache_write_1h: 100,
            cache_read: 10_000,
        };
        // 1000×3 + 500×15 + 2000×3.75 + 100×6 + 10000×0.3 = 21,600 µ$.
        assert_eq!(sonnet.cost_micros(&tokens), 21_600);
        // One token of Haiku 3 input is a quarter of a micro-dollar: it costs one.
        let haiku = table().of("claude-3-haiku").unwrap();
        let one = PricedTokens {
            input: 1,
            ..PricedTokens::default()
        };
        assert_eq!(haiku.cost_micros(&one), 1);
        assert_eq!(haiku.cost_micros(&PricedTokens::default()), 0);
    }

    #[test]
    fn a_long_prompt_changes_the_rate_of_every_token() {
        let sonnet = table().of("claude-sonnet-4-5").unwrap();
        let at = |input: u64| PricedTokens {
            input,
            output: 1_000,
            ..PricedTokens::default()
        };
        assert_eq!(sonnet.cost_micros(&at(200_000)), 200_000 * 3 + 15_000);
        assert_eq!(sonnet.cost_micros(&at(200_001)), 200_001 * 6 + 22_500);
        // Cache reads count toward the threshold.
        let cached = PricedTokens {
            input: 1,
            cache_read: 200_000,
            ..PricedTokens::default()
        };
        assert_eq!(
            sonnet.cost_micros(&cached),
            (6_000_000 + 200_000 * 600_000u64).div_ceil(1_000_000)
        );
        let haiku = table().of("claude-haiku-5-5").unwrap();
        assert_eq!(
            haiku.cost_micros(&at(100_001)),
            (100_001 * 500_000 + 1_000 * 2_500_000u64).div_ceil(1_000_000)
        );
    }

    #[test]
    fn model_prices_add_and_replace_with_cache_rates_by_default() {
        let t = PriceTable::with_overrides(Some(
            r#"{"claude-next": {"input": 1.5, "output": 7.5},
                "claude-sonnet-5-5": {"input": 1, "output": 5, "cache_read": 0.05,
                    "long_prompt": {"above_tokens": 500000, "input": 2, "output": 10}}}"#,
        ))
        .unwrap();
        let next = t.of("claude-next-20270101").unwrap();
        assert_eq!(next.rates.input, 1_500_000);
        assert_eq!(next.rates.cache_write_5m, 1_875_000);
        assert_eq!(next.rates.cache_write_1h, 3_000_000);
        assert_eq!(next.rates.cache_read, 150_000);
        let sonnet = t.of("claude-sonnet-5-5").unwrap();
        assert_eq!(sonnet.rates.cache_read, 50_000);
        assert_eq!(sonnet.long_prompt.unwrap().above_tokens, 500_000);
        // The rest of the table stays.
        assert_eq!(t.of("claude-opus-5-5"), table().of("claude-opus-5-5"));
        assert_eq!(
            PriceTable::with_overrides(Some("  ")),
            Ok(PriceTable::default())
        );
        for bad in [
            "[]",
            r#"{"m": {"input": -1, "output": 1}}"#,
            r#"{"m": {"input": 1}}"#,
            r#"{"m": {"input": 1, "output": 1e9}}"#,
            r#"{"m": {"input": 1, "output": 1, "batch": 0.5}}"#,
        ] {
            let error = PriceTable::with_overrides(Some(bad)).unwrap_err();
            assert!(error.contains("MODEL_PRICES"), "{bad}: {error}");
        }
        // The dearest rate written as a whole number, as before the module lost its float
        // printer.
        assert_eq!(
            PriceTable::with_overrides(Some(r#"{"m": {"input": 1, "output": 1e9}}"#)),
            Err(
                r#"MODEL_PRICES: "m" output must be dollars per million tokens, 0 to 100000"#
                    .to_string()
            )
        );
    }

    proptest! {
        #[test]
        fn no_answer_costs_more_than_its_worst_case(
            model in prop::sample::select(BUILT_IN.iter().map(|(id, _)| *id).collect::<Vec<_>>()),
            estimate in 0u64..2_000_000,
            max_tokens in 0u64..200_000,
            // How the real prompt (never above the estimate) splits, and the real output.
            split in (0u64..=100, 0u64..=100, 0u64..=100, 0u64..=100),
            prompt_share in 0u64..=100,
            output_share in 0u64..=100,
        ) {
            let price = table().of(model).unwrap();
            let prompt = estimate * prompt_share / 100;
            let weights = [split.0, split.1, split.2, split.3];
            let sum: u64 = weights.iter().sum::<u64>().max(1);
            let part = |w: u64| prompt * w / sum;
            let tokens = PricedTokens {
                input: part(split.0),
                cache_write_5m: part(split.1),
                cache_write_1h: part(split.2),
                cache_read: part(split.3),
                output: max_tokens * output_share / 100,
            };
            prop_assert!(tokens.prompt() <= estimate);
            prop_assert!(price.cost_micros(&tokens) <= price.worst_case_micros(estimate, max_tokens));
        }
    }
}
