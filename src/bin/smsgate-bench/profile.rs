//! The configurations the gateway is measured in: `none` (no defence configured) and
//! `production` (every defence config/production.example.toml turns on or recommends), so the
//! cost of the defences shows beside the bare gateway in the same run.

/// Which configurations a standard run measures (`--profile`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ProfileChoice {
    None,
    Production,
    Both,
}

impl ProfileChoice {
    pub fn profiles(self) -> Vec<Profile> {
        match self {
            ProfileChoice::None => vec![Profile::None],
            ProfileChoice::Production => vec![Profile::Production],
            ProfileChoice::Both => vec![Profile::None, Profile::Production],
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    None,
    Production,
    /// `production` with the per-number cap at 1,000,000 instead of 10, for `--scenario
    /// windows` (whose run also fills the busy keys with a million events first).
    Seen,
}

/// The per-number cap of `Profile::Seen`.
pub const SEEN_CAP: u32 = 1_000_000;

/// Caps that no run of the benchmark reaches: one client address sends every request, and a
/// single country receives every message, so production's own caps would refuse nearly all of
/// them; set this high, the limits still do all their work and only their cost shows.
const UNREACHED_CAP: u32 = 1_000_000_000;
/// Daily spend ceilings (USD) no run reaches, the highest the configuration accepts: 120
/// million segments at 0.0083, and every phase starts the day's spend from nothing.
const UNREACHED_SPEND: f64 = 1_000_000.0;

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::None => "none",
            Profile::Production => "production",
            Profile::Seen => "production-seen",
        }
    }

    /// Keys added to `[server]`: production.example.toml's request hygiene.
    pub fn server_keys(self) -> &'static str {
        match self {
            Profile::None => "",
            Profile::Production | Profile::Seen => {
                "require_request_info = true\nmax_connections = 1024\nheader_timeout_ms = 5000\n\
                 max_header_bytes = 16384\nrequest_timeout_ms = 15000\n"
            }
        }
    }

    /// Tables appended to the configuration. The per-number limits keep production's values:
    /// every message goes to its own number, so they never refuse, yet each one is checked and
    /// recorded as in production.
    pub fn sections(self) -> String {
        match self {
            Profile::None => String::new(),
            Profile::Seen => Profile::Production.sections().replace(
                "[[limits.ingress_recipient]]\nmax = 10\n",
                &format!("[[limits.ingress_recipient]]\nmax = {SEEN_CAP}\n"),
            ),
            Profile::Production => format!(
                r#"[limits]
max_in_flight = 256
[[limits.recipient]]
max = 3
window_seconds = 600
[[limits.recipient]]
max = 10
window_seconds = 86400
[[limits.ip]]
max = {UNREACHED_CAP}
window_seconds = 3600
[[limits.ingress_recipient]]
max = 10
window_seconds = 3600
[[limits.country]]
countries = ["*"]
max = {UNREACHED_CAP}
window_seconds = 3600
mode = "block"
[destinations]
blocked_prefixes = ["+882", "+883", "+881"]
mobile_only = true
mode = "block"
[spend]
currency = "USD"
daily_limit = {UNREACHED_SPEND:.1}
country_daily_limit = {UNREACHED_SPEND:.1}
[[prices]]
carrier = "standin"
prefix = ""
per_segment = 0.0083
[[prices]]
carrier = "standin"
prefix = "+44"
per_segment = 0.0400
"#
            ),
        }
    }
}

/// The `n`-th recipient of a phase: a US mobile-capable number ("fixed line or mobile", which
/// `mobile_only` admits) in area code 201, with a subscriber part from 200-0000 to 999-9999,
/// so every message of a phase up to 8 million goes to its own number, all in one country
/// (the busy-country case a `*` country cap and the country spend ceiling see).
pub fn recipient(n: u64) -> String {
    format!("+1201{}", SUBSCRIBER_FIRST + n % SUBSCRIBERS)
}

pub const SUBSCRIBER_FIRST: u64 = 2_000_000;
pub const SUBSCRIBERS: u64 = 8_000_000;

/// The same numbers in SQL, for the rows the dispatch phase inserts straight into the queue
/// (`g` counts from 1).
pub fn recipient_sql(g: &str) -> String {
    format!("'+1201' || ({SUBSCRIBER_FIRST} + ({g} - 1) % {SUBSCRIBERS})::text")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::smsgate_config;
    use smsgate::domain::PhoneNumber;
    use smsgate::limits::destinations::DestinationPolicy;

    fn config(profile: Profile) -> smsgate::Config {
        let carrier = "127.0.0.1:9".parse().expect("an address");
        smsgate::Config::from_toml_str(&smsgate_config(
            8080,
            "postgres://bench@localhost/bench",
            carrier,
            profile,
        ))
        .unwrap_or_else(|e| panic!("the {} profile is valid: {e}", profile.name()))
    }

    #[test]
    fn both_profiles_are_valid_configurations() {
        let none = config(Profile::None);
        assert!(!none.destinations.mobile_only);
        assert!(none.limits.ip.is_empty());
        let production = config(Profile::Production);
        assert!(production.destinations.mobile_only);
        assert!(production.server.require_request_info);
        assert_eq!(production.limits.recipient_pacing.len(), 2);
        assert_eq!(production.limits.ip.len(), 1);
        assert_eq!(production.limits.number_cap.len(), 1);
        assert_eq!(production.limits.country.len(), 1);
        assert!(production.spend.daily_limit.is_some());
        assert!(production.spend.country_daily_limit.is_some());
        assert_eq!(production.prices.len(), 2);
    }

    #[test]
    fn the_seen_profile_differs_from_production_only_in_the_per_number_cap() {
        let seen = config(Profile::Seen);
        assert_eq!(seen.limits.number_cap[0].max.get(), SEEN_CAP);
        let production = config(Profile::Production);
        assert_eq!(production.limits.number_cap[0].max.get(), 10);
        assert_eq!(seen.limits.ip, production.limits.ip);
        assert_eq!(
            seen.limits.recipient_pacing,
            production.limits.recipient_pacing
        );
    }

    #[test]
    fn the_destination_policy_admits_every_recipient_the_bench_sends_to() {
        let policy = DestinationPolicy::new(&config(Profile::Production).destinations);
        for n in [0, 1, 7_999_999, 8_000_000, 123_456_789] {
            let number = PhoneNumber::parse(&recipient(n)).expect("a valid number");
            assert_eq!(policy.check(&number), Ok(()), "{}", recipient(n));
        }
    }

    #[test]
    fn recipients_are_distinct_within_a_phase_and_match_the_sql_form() {
        assert_eq!(recipient(0), "+12012000000");
        assert_eq!(recipient(SUBSCRIBERS - 1), "+12019999999");
        assert_ne!(recipient(1), recipient(0));
        assert_eq!(
            recipient_sql("g"),
            "'+1201' || (2000000 + (g - 1) % 8000000)::text"
        );
    }
}
