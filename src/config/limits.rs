//! `[limits]` and `[destinations]`: the window limits and which numbers are accepted at all,
//! with their defaults and checks.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use super::units::count32;
use super::{Config, CountryLimit, LimitMode, Seconds};
use crate::domain::parse_country;

/// `limits.max_in_flight` above this is refused rather than panicking at start.
const MAX_IN_FLIGHT: usize = 1_000_000;

/// Anti-abuse limits. The windows are exact across every process sharing the database.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `[[limits.recipient]]`, the dispatch's pacing per recipient: sliding windows on
    /// messages sent to one number; all must allow a send. A limited message waits for its
    /// window (or ends `rate_limited` at expiry).
    #[serde(rename = "recipient")]
    pub recipient_pacing: Vec<WindowLimit>,
    /// Requests accepted per client IP (Auth0's `req.ip`; IPv6 per /64), refused with 429.
    pub ip: Vec<WindowLimit>,
    /// `[[limits.ingress_recipient]]`, the ingress's cap per number: messages accepted per
    /// number, refused with 429 past it.
    #[serde(rename = "ingress_recipient")]
    pub number_cap: Vec<WindowLimit>,
    /// Messages accepted per destination country, refused with 429 (or monitored).
    pub country: Vec<CountryLimit>,
    /// Requests of one signer handled at once by one process (0: no cap); more get 429.
    pub max_in_flight: usize,
}

/// `[destinations]`: which numbers are accepted at all; a refusal is a 403.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationsConfig {
    /// ISO 3166-1 alpha-2 codes; when not empty, only numbers of these countries.
    pub allowed_countries: Vec<String>,
    pub blocked_countries: Vec<String>,
    /// E.164 prefixes such as "+882" or "+4470".
    pub blocked_prefixes: Vec<String>,
    /// Only mobile numbers (or, where a number's type cannot be told apart, fixed line or
    /// mobile): premium-rate, shared-cost, toll-free, VoIP and other types are refused.
    pub mobile_only: bool,
    /// `monitor`: a refusal is counted and logged, and the request accepted.
    pub mode: LimitMode,
}

/// At most `max` messages in any `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowLimit {
    pub max: NonZeroU32,
    pub window_seconds: Seconds,
    /// Ingress limits only: `monitor` counts and logs instead of refusing.
    #[serde(default)]
    pub mode: LimitMode,
}

impl WindowLimit {
    /// A limit written in the code (tests, benchmarks); a zero there is a programming error.
    pub const fn new(max: u32, window_seconds: u32) -> Self {
        Self {
            max: count32(max),
            window_seconds: Seconds::new(window_seconds),
            mode: LimitMode::Block,
        }
    }
}

impl Config {
    pub(super) fn validate_limits(&self, problem: &mut impl FnMut(String, String)) {
        // A semaphore holds at most usize::MAX >> 3 permits; far more than any process serves.
        if self.limits.max_in_flight > MAX_IN_FLIGHT {
            problem(
                "limits.max_in_flight".into(),
                format!("must be at most {MAX_IN_FLIGHT} (0: no cap)"),
            );
        }
    }

    pub(super) fn validate_destinations(&self, problem: &mut impl FnMut(String, String)) {
        let d = &self.destinations;
        for (name, codes) in [
            ("allowed_countries", &d.allowed_countries),
            ("blocked_countries", &d.blocked_countries),
        ] {
            for code in codes {
                if parse_country(code).is_none() {
                    problem(
                        format!("destinations.{name}"),
                        format!("{code:?} is not an ISO 3166-1 alpha-2 country code like \"GB\""),
                    );
                }
            }
        }
        for code in &d.blocked_countries {
            if d.allowed_countries
                .iter()
                .any(|a| a.eq_ignore_ascii_case(code))
            {
                problem(
                    "destinations.blocked_countries".into(),
                    format!("{code:?} is also in allowed_countries"),
                );
            }
        }
        for prefix in &d.blocked_prefixes {
            let digits = prefix.strip_prefix('+').unwrap_or("");
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                problem(
                    "destinations.blocked_prefixes".into(),
                    format!("{prefix:?} is not an E.164 prefix like \"+882\""),
                );
            }
        }
    }
}
