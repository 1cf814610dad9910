//! The fraud and cost guard's settings: `[[limits.country]]`, each ingress limit's `mode`,
//! `[[prices]]`, `[spend]` and `[[test_numbers]]`, with their validation.

use std::collections::HashSet;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::{Config, Seconds};
use crate::domain::{PhoneNumber, parse_country};

/// Money in millionths of the currency unit: exact sums, no float drift across millions of
/// messages.
pub type Micros = i64;

/// A price or a ceiling above this (a million currency units) is a typo, not a price.
const MAX_AMOUNT: f64 = 1_000_000.0;

/// What a limit does with a request over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitMode {
    /// Refuse it.
    #[default]
    Block,
    /// Accept it, and count and log that it would have been refused: a policy tried on live
    /// traffic before it blocks.
    Monitor,
}

/// `[[limits.country]]`: at most `max` accepted messages per country in any `window_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CountryLimit {
    /// ISO 3166-1 alpha-2 codes, or `["*"]`: every country (each counted on its own).
    pub countries: Vec<String>,
    pub max: NonZeroU32,
    pub window_seconds: Seconds,
    #[serde(default)]
    pub mode: LimitMode,
}

impl CountryLimit {
    /// Whether the limit counts numbers of `country` (`None`: a number of no country, which
    /// only `"*"` counts).
    pub fn covers(&self, country: Option<&str>) -> bool {
        self.countries.iter().any(|c| c == "*")
            || country.is_some_and(|country| self.countries.iter().any(|c| c == country))
    }
}

/// `[[prices]]`: what a carrier charges per segment to numbers starting with `prefix`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub carrier: String,
    /// An E.164 prefix; `""` is the carrier's default. The longest match wins.
    #[serde(default)]
    pub prefix: String,
    pub per_segment: f64,
}

/// `[spend]`: the currency of `[[prices]]` and the daily ceilings (per UTC day).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpendConfig {
    /// ISO 4217 code, e.g. "USD"; only a label (prices are in it).
    pub currency: String,
    /// Estimated spend of all accepted messages in one UTC day, all processes together.
    #[serde(deserialize_with = "lenient_amount")]
    pub daily_limit: Option<f64>,
    /// The same, for each country on its own.
    #[serde(deserialize_with = "lenient_amount")]
    pub country_daily_limit: Option<f64>,
}

impl SpendConfig {
    pub fn has_ceiling(&self) -> bool {
        self.daily_limit.is_some() || self.country_daily_limit.is_some()
    }
}

/// An amount written as a number, or as text (environment overrides keep their exact text,
/// so `SMSGATE__SPEND__DAILY_LIMIT=0.5` arrives as "0.5").
fn lenient_amount<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Number(f64),
        Text(String),
    }
    match Option::<Amount>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Amount::Number(value)) => Ok(Some(value)),
        Some(Amount::Text(text)) => text
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom("expected an amount such as 500 or 0.5")),
    }
}

/// `[[test_numbers]]`: accepted and stored like any message, never handed to a carrier.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestNumberConfig {
    pub number: String,
    pub outcome: TestOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestOutcome {
    Sent,
    Failed,
}

/// An amount of the configuration in [`Micros`]; validation keeps it finite and in range.
pub fn micros(amount: f64) -> Micros {
    (amount.clamp(0.0, MAX_AMOUNT) * 1_000_000.0).round() as Micros
}

fn amount_problem(value: f64) -> Option<String> {
    if !(0.0..=MAX_AMOUNT).contains(&value) {
        return Some(format!("must be between 0 and {MAX_AMOUNT}"));
    }
    // Amounts are kept in millionths: a finer one would be rounded without a word.
    let millionths = value * 1_000_000.0;
    ((millionths - millionths.round()).abs() > 1e-6)
        .then(|| "has more than 6 decimal places (amounts are kept in millionths)".into())
}

impl Config {
    pub(super) fn validate_guard(&self, problem: &mut impl FnMut(String, String)) {
        self.validate_country_limits(problem);
        self.validate_prices(problem);
        self.validate_test_numbers(problem);
        for (i, limit) in self.limits.recipient_pacing.iter().enumerate() {
            if limit.mode == LimitMode::Monitor {
                problem(
                    format!("limits.recipient[{i}].mode"),
                    "must be \"block\": a recipient window defers sends, it refuses nothing \
                     that could be monitored"
                        .into(),
                );
            }
        }
    }

    fn validate_country_limits(&self, problem: &mut impl FnMut(String, String)) {
        for (i, limit) in self.limits.country.iter().enumerate() {
            let key = format!("limits.country[{i}].countries");
            if limit.countries.is_empty() {
                problem(key.clone(), "must name countries, or be [\"*\"]".into());
            }
            if limit.countries.iter().any(|c| c == "*") && limit.countries.len() > 1 {
                problem(
                    key.clone(),
                    "\"*\" stands alone: it already covers every country".into(),
                );
            }
            for code in limit.countries.iter().filter(|c| *c != "*") {
                if parse_country(code).is_none() || code.len() != 2 {
                    problem(
                        key.clone(),
                        format!("{code:?} is not an ISO 3166-1 alpha-2 country code like \"GB\""),
                    );
                }
            }
        }
    }

    fn validate_prices(&self, problem: &mut impl FnMut(String, String)) {
        let mut seen = HashSet::new();
        for (i, price) in self.prices.iter().enumerate() {
            let key = |field: &str| format!("prices[{i}].{field}");
            if !self.carriers.contains_key(&price.carrier) {
                problem(
                    key("carrier"),
                    format!("{:?} is not a configured carrier", price.carrier),
                );
            }
            let digits = price.prefix.strip_prefix('+').unwrap_or("");
            if !price.prefix.is_empty()
                && (digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()))
            {
                problem(key("prefix"), "must be \"\" or \"+\" and digits".into());
            }
            if !seen.insert((&price.carrier, &price.prefix)) {
                problem(key("prefix"), "is priced twice for this carrier".into());
            }
            if let Some(reason) = amount_problem(price.per_segment) {
                problem(key("per_segment"), reason);
            }
        }
        let spend = &self.spend;
        for (name, value) in [
            ("daily_limit", spend.daily_limit),
            ("country_daily_limit", spend.country_daily_limit),
        ] {
            if let Some(reason) = value.and_then(amount_problem) {
                problem(format!("spend.{name}"), reason);
            }
        }
        let currency_ok =
            spend.currency.len() == 3 && spend.currency.bytes().all(|b| b.is_ascii_uppercase());
        if (!self.prices.is_empty() || spend.has_ceiling()) && !currency_ok {
            problem(
                "spend.currency".into(),
                "must be an ISO 4217 code such as \"USD\" when prices or a ceiling are set".into(),
            );
        }
        if spend.has_ceiling() {
            self.validate_every_route_priced(problem);
        }
    }

    /// A ceiling holds only if every message has an estimate: every routed carrier needs a
    /// default price (prefix `""`), or a number without one would cost nothing.
    fn validate_every_route_priced(&self, problem: &mut impl FnMut(String, String)) {
        let defaults: HashSet<&str> = self
            .prices
            .iter()
            .filter(|p| p.prefix.is_empty())
            .map(|p| p.carrier.as_str())
            .collect();
        // The first carrier of each route prices texts; its first that places calls, calls.
        let firsts = self.routes.iter().flat_map(|route| {
            let calls = route.carriers.iter().find(|c| self.carrier_calls(c));
            route.carriers.first().into_iter().chain(calls)
        });
        let mut unpriced: Vec<&str> = firsts
            .map(String::as_str)
            .filter(|carrier| !defaults.contains(carrier))
            .collect();
        unpriced.sort_unstable();
        unpriced.dedup();
        if !unpriced.is_empty() {
            problem(
                "prices".into(),
                format!(
                    "a spend ceiling needs a default price (prefix = \"\") for every carrier \
                     that is first on a route (or first to place calls); missing for {}",
                    unpriced.join(", ")
                ),
            );
        }
    }

    fn validate_test_numbers(&self, problem: &mut impl FnMut(String, String)) {
        if !self.test_numbers.is_empty() && self.carriers.contains_key("test_numbers") {
            problem(
                "carriers.test_numbers".into(),
                "is the name [[test_numbers]] are recorded under; name the carrier otherwise"
                    .into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, test) in self.test_numbers.iter().enumerate() {
            let key = format!("test_numbers[{i}].number");
            match PhoneNumber::parse(&test.number) {
                Ok(number) if number.as_str() == test.number => {
                    if !seen.insert(test.number.as_str()) {
                        problem(key, "is listed twice".into());
                    }
                }
                Ok(number) => problem(key, format!("write it in E.164 form: {}", number.as_str())),
                Err(err) => problem(key, err.to_string()),
            }
        }
    }
}
