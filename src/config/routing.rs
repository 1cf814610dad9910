//! What the routes mean beyond their carriers: the route a number takes, a route's own
//! sender, and which carriers can place calls. Used by validation, the ingress (a voice
//! request needs a route that can call) and pricing (the first carrier of the route).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::Config;

/// Prefixes whose countries accept no alphanumeric sender ID: a text from "ACME" would be
/// refused or rewritten there: the NANP countries behind +1 and China among them
/// (docs/carriers.md, "Senders", cites the carriers' own lists).
const NO_ALPHANUMERIC_SENDER: [&str; 2] = ["+1", "+86"];

impl Config {
    /// The route `recipient` (E.164) takes: the longest matching prefix.
    pub fn route_for(&self, recipient: &str) -> Option<&RouteConfig> {
        crate::domain::longest_match(&self.routes, |route| &route.prefix, recipient)
    }

    /// Whether carrier `name` places calls: its kind says (`KindSettings::places_calls`), the
    /// one statement of it that the ingress, pricing and the dispatch's carrier handles ask.
    pub fn carrier_calls(&self, name: &str) -> bool {
        self.carrier_settings
            .get(name)
            .is_some_and(|carrier| carrier.settings.places_calls())
    }

    /// Whether a call to `recipient` has a carrier on its route (or it is a test number).
    pub fn can_call(&self, recipient: &str) -> bool {
        self.test_numbers.iter().any(|t| t.number == recipient)
            || self
                .route_for(recipient)
                .is_some_and(|route| route.carriers.iter().any(|c| self.carrier_calls(c)))
    }

    pub(super) fn validate_senders(&self, problem: &mut impl FnMut(String, String)) {
        for (i, route) in self.routes.iter().enumerate() {
            let Some(sender) = &route.sender else {
                continue;
            };
            let key = format!("routes[{i}].sender");
            if is_e164(sender) {
                continue;
            }
            if !is_alphanumeric_sender(sender) {
                problem(
                    key,
                    "must be an E.164 number (\"+15005550006\") or an alphanumeric sender ID: \
                     1 to 11 letters, digits or spaces, at least one letter"
                        .into(),
                );
                continue;
            }
            if let Some(country) = self.refuses_alphanumeric(route) {
                problem(
                    key,
                    format!(
                        "an alphanumeric sender ID is not accepted for numbers starting with \
                         {country}, which this route sends to; use a number, or a route for \
                         {country} without one"
                    ),
                );
            }
        }
    }

    /// A no-alphanumeric prefix whose numbers `route` carries: one inside the route's prefix,
    /// or one the route's prefix covers and no longer route takes whole.
    fn refuses_alphanumeric(&self, route: &RouteConfig) -> Option<&'static str> {
        NO_ALPHANUMERIC_SENDER.into_iter().find(|country| {
            route.prefix.starts_with(country)
                || (country.starts_with(route.prefix.as_str())
                    && !self.routes.iter().any(|other| {
                        other.prefix.len() > route.prefix.len()
                            && country.starts_with(other.prefix.as_str())
                    }))
        })
    }
}

/// `+` and 8 to 15 digits, the first not 0 (no country code starts with 0).
pub fn is_e164(sender: &str) -> bool {
    sender.strip_prefix('+').is_some_and(|digits| {
        (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// 1 to 11 ASCII letters, digits or spaces, at least one letter, no space at either end
/// (what carriers accept).
fn is_alphanumeric_sender(sender: &str) -> bool {
    (1..=11).contains(&sender.len())
        && sender.trim() == sender
        && sender
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && sender.bytes().any(|b| b.is_ascii_alphabetic())
}

/// Messages to numbers starting with `prefix` go to `carriers`, first one first.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub carriers: Vec<String>,
    /// Sends to this prefix from this sender instead of the carrier's `from`: an
    /// alphanumeric sender ID or an E.164 number.
    #[serde(default)]
    pub sender: Option<String>,
    /// `static` (the listed order) or `measured`: per destination country, the carriers in
    /// the order of their recent success (`dispatch::measured`).
    #[serde(default)]
    pub order: RouteOrder,
    /// `measured`: the sends (or verdicts) a carrier needs in a country before its figures
    /// count; until then the listed order holds.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// `measured`: the share of messages sent first through a carrier other than the leader,
    /// so a recovering carrier is noticed.
    #[serde(default = "default_explore")]
    pub explore: f64,
    /// `measured`: how much better (as a share: 0.05 is five points) a carrier must do than
    /// the leader to take its place, so the order does not flap.
    #[serde(default = "default_margin")]
    pub margin: f64,
}

/// How a route orders its carriers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteOrder {
    #[default]
    Static,
    Measured,
}

fn default_min_samples() -> u32 {
    50
}

fn default_explore() -> f64 {
    0.05
}

fn default_margin() -> f64 {
    0.05
}

impl Config {
    pub(super) fn validate_routes(&self, problem: &mut impl FnMut(String, String)) {
        let mut prefixes = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            let digits = route.prefix.strip_prefix('+').unwrap_or("-");
            if !route.prefix.is_empty()
                && (digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()))
            {
                problem(
                    key("prefix"),
                    format!(
                        "{:?} is not an E.164 prefix like \"+44\" (or \"\" for the default route)",
                        route.prefix
                    ),
                );
            }
            if !prefixes.insert(route.prefix.as_str()) {
                problem(key("prefix"), format!("{:?} appears twice", route.prefix));
            }
            if route.carriers.is_empty() {
                problem(key("carriers"), "must name at least one carrier".into());
            }
            if !(0.0..=0.5).contains(&route.explore) {
                problem(key("explore"), "must be between 0 and 0.5".into());
            }
            if !(0.0..=1.0).contains(&route.margin) {
                problem(key("margin"), "must be between 0 and 1".into());
            }
            if !(1..=1_000_000).contains(&route.min_samples) {
                problem(key("min_samples"), "must be between 1 and 1000000".into());
            }
            for carrier in &route.carriers {
                if !self.carriers.contains_key(carrier) {
                    problem(
                        key("carriers"),
                        format!(
                            "names carrier {carrier:?}, which has no [carriers.{carrier}] table"
                        ),
                    );
                }
            }
        }
        if !prefixes.contains("") {
            problem(
                "routes".into(),
                "a default route (prefix = \"\") is required".into(),
            );
        }
    }
}
