//! `[[prices]]` and `[[test_numbers]]`: what a message is estimated to cost when it is
//! accepted (the first carrier of its route), and what a send through a given carrier cost.

use std::collections::HashMap;

use crate::config::{Config, Micros, TestOutcome, micros};
use crate::domain::{Channel, NewMessage, PhoneNumber, PrefixTable, classify, segments};

/// The price list, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    /// By route prefix: the route's first carrier, and its first that places calls.
    first_carriers: PrefixTable<(String, Option<String>)>,
    /// Carrier → price per segment by prefix.
    prices: HashMap<String, PrefixTable<Micros>>,
    test_numbers: HashMap<String, TestOutcome>,
    pub currency: String,
}

impl Pricing {
    pub fn new(config: &Config) -> Self {
        let first_carriers = config.routes.iter().filter_map(|r| {
            let calls = r.carriers.iter().find(|c| config.carrier_calls(c)).cloned();
            Some((r.prefix.clone(), (r.carriers.first()?.clone(), calls)))
        });
        let mut prices: HashMap<String, Vec<(String, Micros)>> = HashMap::new();
        for price in &config.prices {
            prices
                .entry(price.carrier.clone())
                .or_default()
                .push((price.prefix.clone(), micros(price.per_segment)));
        }
        Self {
            first_carriers: PrefixTable::new(first_carriers),
            prices: prices
                .into_iter()
                .map(|(carrier, list)| (carrier, PrefixTable::new(list)))
                .collect(),
            test_numbers: config
                .test_numbers
                .iter()
                .map(|t| (t.number.clone(), t.outcome))
                .collect(),
            currency: config.spend.currency.clone(),
        }
    }

    /// What `[[test_numbers]]` says happens to messages to `recipient`, if it is one.
    pub fn test_outcome(&self, recipient: &str) -> Option<TestOutcome> {
        self.test_numbers.get(recipient).copied()
    }

    /// The price of one segment to `recipient` through `carrier`, if one is listed.
    pub fn per_segment(&self, carrier: &str, recipient: &str) -> Option<Micros> {
        self.prices.get(carrier)?.get(recipient).copied()
    }

    /// What a send of `body` to `recipient` through `carrier` costs (nothing to a test number).
    pub fn cost(&self, carrier: &str, recipient: &str, parts: u32) -> Option<Micros> {
        if self.test_outcome(recipient).is_some() {
            return Some(0);
        }
        Some(self.per_segment(carrier, recipient)? * Micros::from(parts))
    }

    /// The estimate for `message` at the ingress: its segments through the first carrier of
    /// its route that takes its channel (a call: the first that places calls). `None` when no
    /// price applies (no `[[prices]]`, or none for that carrier).
    pub fn estimate(&self, message: &NewMessage) -> Option<Micros> {
        let recipient = message.recipient.as_str();
        // Every request passes here: without prices there is nothing to count.
        if self.prices.is_empty() {
            return self.test_outcome(recipient).map(|_| 0);
        }
        let carrier = self
            .first_carriers
            .get(recipient)
            .and_then(|(first, calls)| match message.channel {
                Channel::Sms => Some(first.as_str()),
                Channel::Voice => calls.as_deref(),
            });
        let parts = segments(message.body.as_str()).count;
        match carrier {
            Some(carrier) => self.cost(carrier, recipient, parts),
            None => self.test_outcome(recipient).map(|_| 0),
        }
    }
}

/// The ISO 3166-1 code of `number`'s country. A number libphonenumber cannot place within a
/// shared calling code (a range newer than its metadata, or not a valid one) counts for the
/// code's main country (+1 → US, +7 → RU, +44 → GB), so it cannot slip past that country's
/// caps; `+882` and other international networks have none. The ingress takes it from the
/// classification it already has (`Classification::country`).
pub fn country_of(number: &PhoneNumber) -> Option<String> {
    classify(number.as_str())?.country()
}

/// Renders micros as a decimal amount for JSON and logs ("0.0079").
pub fn amount(value: Micros) -> f64 {
    value as f64 / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing(toml: &str) -> Pricing {
        let config = Config::from_toml_str(&format!(
            "[auth0.a]\nsecret = \"{}\"\naudience = \"urn:a\"\n\
             [carriers.a]\nkind = \"log\"\n[carriers.b]\nkind = \"log\"\n\
             [[routes]]\nprefix = \"\"\ncarriers = [\"a\"]\n{toml}",
            "s".repeat(40)
        ))
        .expect("config");
        Pricing::new(&config)
    }

    #[test]
    fn numbers_libphonenumber_cannot_place_count_for_their_codes_main_country() {
        let country = |n: &str| country_of(&PhoneNumber::parse(n).expect("possible"));
        assert_eq!(country("+447400123456").as_deref(), Some("GB"));
        assert_eq!(country("+12005550001").as_deref(), Some("US"));
        assert_eq!(country("+447700900123").as_deref(), Some("GB"));
        assert_eq!(country("+88216123456").as_deref(), None);
        // Côte d'Ivoire keeps a leading 0 in its ten-digit numbers.
        assert_eq!(country("+2250701234567").as_deref(), Some("CI"));
    }

    #[test]
    fn the_longest_prefix_of_the_carrier_wins_and_empty_is_the_default() {
        let p = pricing(
            "[spend]\ncurrency = \"USD\"\n\
             [[prices]]\ncarrier = \"a\"\nprefix = \"\"\nper_segment = 0.05\n\
             [[prices]]\ncarrier = \"a\"\nprefix = \"+44\"\nper_segment = 0.04\n\
             [[prices]]\ncarrier = \"a\"\nprefix = \"+447\"\nper_segment = 0.0395\n",
        );
        assert_eq!(p.per_segment("a", "+447700900123"), Some(39_500));
        assert_eq!(p.per_segment("a", "+442079460000"), Some(40_000));
        assert_eq!(p.per_segment("a", "+14155552671"), Some(50_000));
        assert_eq!(p.per_segment("b", "+14155552671"), None);
        assert_eq!(p.cost("a", "+447700900123", 3), Some(118_500));
    }
}
