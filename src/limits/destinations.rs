//! `[destinations]`: which numbers smsgate sends to at all. SMS pumping sends codes to premium
//! and other non-mobile numbers in countries the service has no users in; these rules refuse
//! such a request at the ingress, before anything is stored or sent.

use std::collections::HashSet;
use std::fmt;

use phonenumber::Type;
use phonenumber::country;

use crate::config::{DestinationsConfig, LimitMode};
use crate::domain::{Classification, PhoneNumber, classify, parse_country};

/// The rules, parsed once from the configuration.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    allowed_countries: HashSet<country::Id>,
    blocked_countries: HashSet<country::Id>,
    blocked_prefixes: Vec<String>,
    mobile_only: bool,
    mode: LimitMode,
}

/// Why a number was refused; the text is shown to the caller and logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Prefix(String),
    CountryNotAllowed(Option<String>),
    CountryBlocked(String),
    NotMobile(&'static str),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Prefix(prefix) => write!(f, "numbers starting with {prefix} are blocked"),
            Refusal::CountryNotAllowed(Some(country)) => {
                write!(f, "numbers of country {country} are not allowed")
            }
            Refusal::CountryNotAllowed(None) => {
                write!(
                    f,
                    "the number belongs to no country, and only listed countries are allowed"
                )
            }
            Refusal::CountryBlocked(country) => {
                write!(f, "numbers of country {country} are blocked")
            }
            Refusal::NotMobile(kind) => {
                write!(
                    f,
                    "the number is {kind}, and only mobile numbers are accepted"
                )
            }
        }
    }
}

impl DestinationPolicy {
    /// Expects a validated configuration: unknown country codes are skipped.
    pub fn new(config: &DestinationsConfig) -> Self {
        let countries = |codes: &[String]| codes.iter().filter_map(|c| parse_country(c)).collect();
        Self {
            allowed_countries: countries(&config.allowed_countries),
            blocked_countries: countries(&config.blocked_countries),
            blocked_prefixes: config.blocked_prefixes.clone(),
            mobile_only: config.mobile_only,
            mode: config.mode,
        }
    }

    /// In `monitor` mode a refusal is reported, and the request accepted.
    pub fn monitors(&self) -> bool {
        self.mode == LimitMode::Monitor
    }

    /// Whether a number passes every rule, classifying it when a rule needs its country or
    /// type. The ingress, which has the classification already, calls `check_classified`.
    pub fn check(&self, number: &PhoneNumber) -> Result<(), Refusal> {
        self.check_prefixes(number)?;
        if !self.classifies() {
            return Ok(());
        }
        self.check_classification(classify(number.as_str()).as_ref())
    }

    /// `check` with the number's classification (`domain::classify`) already made: `None`
    /// when the parser refuses the number, which then belongs to no country and is of no known
    /// type. Needed only when `classifies()`.
    pub fn check_classified(
        &self,
        number: &PhoneNumber,
        classification: Option<&Classification>,
    ) -> Result<(), Refusal> {
        self.check_prefixes(number)?;
        if !self.classifies() {
            return Ok(());
        }
        self.check_classification(classification)
    }

    /// Whether a rule needs the number's country or type.
    pub fn classifies(&self) -> bool {
        self.mobile_only || !self.allowed_countries.is_empty() || !self.blocked_countries.is_empty()
    }

    /// Prefixes come first because they need no classification.
    fn check_prefixes(&self, number: &PhoneNumber) -> Result<(), Refusal> {
        match self
            .blocked_prefixes
            .iter()
            .find(|prefix| number.as_str().starts_with(prefix.as_str()))
        {
            Some(prefix) => Err(Refusal::Prefix(prefix.clone())),
            None => Ok(()),
        }
    }

    fn check_classification(&self, classification: Option<&Classification>) -> Result<(), Refusal> {
        let country = classification.and_then(Classification::region);
        if !self.allowed_countries.is_empty()
            && !country.is_some_and(|c| self.allowed_countries.contains(&c))
        {
            return Err(Refusal::CountryNotAllowed(
                country.map(|c| c.as_ref().to_string()),
            ));
        }
        if let Some(c) = country.filter(|c| self.blocked_countries.contains(c)) {
            return Err(Refusal::CountryBlocked(c.as_ref().to_string()));
        }
        if self.mobile_only {
            let kind = classification.map_or(Type::Unknown, Classification::kind);
            if !matches!(kind, Type::Mobile | Type::FixedLineOrMobile) {
                return Err(Refusal::NotMobile(type_name(kind)));
            }
        }
        Ok(())
    }
}

fn type_name(kind: Type) -> &'static str {
    match kind {
        Type::FixedLine => "a fixed line",
        Type::Mobile | Type::FixedLineOrMobile => "mobile",
        Type::TollFree => "toll-free",
        Type::PremiumRate => "premium-rate",
        Type::SharedCost => "shared-cost",
        Type::PersonalNumber => "a personal number",
        Type::Voip => "VoIP",
        Type::Pager => "a pager",
        Type::Uan => "a universal access number",
        Type::Emergency => "an emergency number",
        Type::Voicemail => "voicemail access",
        Type::ShortCode => "a short code",
        Type::StandardRate => "standard-rate",
        Type::Carrier => "a carrier-specific number",
        Type::NoInternational => "not reachable internationally",
        Type::Unknown => "of no known type",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(e164: &str) -> PhoneNumber {
        PhoneNumber::parse(e164).expect("test numbers are valid")
    }

    fn policy(edit: impl FnOnce(&mut DestinationsConfig)) -> DestinationPolicy {
        let mut config = DestinationsConfig::default();
        edit(&mut config);
        DestinationPolicy::new(&config)
    }

    #[test]
    fn no_rules_allow_everything() {
        assert_eq!(policy(|_| {}).check(&number("+449012345678")), Ok(()));
    }

    #[test]
    fn mobile_only_refuses_premium_shared_cost_and_fixed_lines() {
        let p = policy(|c| c.mobile_only = true);
        let not_mobile = |kind| Err(Refusal::NotMobile(kind));
        let cases = [
            ("+447400123456", Ok(()), "GB mobile"),
            ("+12015550123", Ok(()), "US: fixed line or mobile"),
            ("+449012345678", not_mobile("premium-rate"), "GB 90"),
            ("+34901123456", not_mobile("shared-cost"), "ES 901"),
            ("+448001234567", not_mobile("toll-free"), "GB 800"),
            ("+441212345678", not_mobile("a fixed line"), "GB 121"),
        ];
        for (recipient, verdict, why) in cases {
            assert_eq!(p.check(&number(recipient)), verdict, "{why}");
        }
    }

    #[test]
    fn countries_are_allowed_or_blocked_by_iso_code() {
        let allowed = policy(|c| c.allowed_countries = vec!["gb".into(), "US".into()]);
        assert_eq!(allowed.check(&number("+447400123456")), Ok(()));
        assert_eq!(
            allowed.check(&number("+4915123456789")),
            Err(Refusal::CountryNotAllowed(Some("DE".into())))
        );
        let blocked = policy(|c| c.blocked_countries = vec!["DE".into()]);
        assert_eq!(
            blocked.check(&number("+4915123456789")),
            Err(Refusal::CountryBlocked("DE".into()))
        );
        assert_eq!(blocked.check(&number("+447400123456")), Ok(()));
    }

    #[test]
    fn blocked_prefixes_match_the_start_of_the_e164_form() {
        let p = policy(|c| c.blocked_prefixes = vec!["+4490".into()]);
        assert_eq!(
            p.check(&number("+44 90 1234 5678")),
            Err(Refusal::Prefix("+4490".into()))
        );
        assert_eq!(p.check(&number("+447400123456")), Ok(()));
    }

    #[test]
    fn the_ingress_path_answers_as_check_does() {
        let p = policy(|c| {
            c.mobile_only = true;
            c.blocked_countries = vec!["DE".into()];
            c.blocked_prefixes = vec!["+4490".into()];
        });
        for recipient in [
            "+447400123456",
            "+441212345678",
            "+4915123456789",
            "+449012345678",
            "+12015550123",
            "+2250701234567",
        ] {
            let number = number(recipient);
            let classification = classify(number.as_str());
            assert_eq!(
                p.check_classified(&number, classification.as_ref()),
                p.check(&number),
                "{recipient}"
            );
        }
    }

    #[test]
    fn a_number_the_parser_refuses_has_no_country_and_no_known_type() {
        let mobile = policy(|c| c.mobile_only = true);
        let allowed = policy(|c| c.allowed_countries = vec!["GB".into()]);
        let number = number("+447400123456");
        assert_eq!(
            mobile.check_classified(&number, None),
            Err(Refusal::NotMobile("of no known type"))
        );
        assert_eq!(
            allowed.check_classified(&number, None),
            Err(Refusal::CountryNotAllowed(None))
        );
    }
}
