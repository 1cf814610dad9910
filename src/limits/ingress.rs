//! The ingress's limits: `[[limits.ip]]` windows per client IP (Auth0's forwarded `req.ip`),
//! `[[limits.ingress_recipient]]` caps per number, `[[limits.country]]` caps per destination
//! country, and `[spend]`'s daily ceilings. All are decided on counts in the database before
//! the batch is stored (`db::ingress_hits`, `db::first_hits`; busy ones in slices,
//! `limits::slices`), so they hold exactly across processes; a refused request stores nothing
//! and counts nowhere. A limit in `monitor` mode refuses nothing: what
//! it would have refused is reported instead.

use std::fmt;
use std::net::IpAddr;

use crate::config::{
    CountryLimit, LimitMode, LimitsConfig, Micros, SpendConfig, WindowLimit, micros,
};
use crate::domain::NewMessage;

#[derive(Debug, Clone, Default)]
pub struct IngressLimits {
    pub ip: Vec<WindowLimit>,
    /// `[[limits.ingress_recipient]]`: the cap per number.
    pub number_cap: Vec<WindowLimit>,
    pub country: Vec<CountryLimit>,
    pub spend: SpendCeiling,
}

/// `[spend]`'s ceilings, per UTC day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpendCeiling {
    pub daily: Option<Micros>,
    pub country_daily: Option<Micros>,
}

impl SpendCeiling {
    pub fn new(config: &SpendConfig) -> Self {
        Self {
            daily: config.daily_limit.map(micros),
            country_daily: config.country_daily_limit.map(micros),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.daily.is_none() && self.country_daily.is_none()
    }
}

pub use crate::domain::LimitKind;

/// A refusal, with when the refusing window allows a request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub kind: LimitKind,
    pub retry_after_ms: i64,
}

impl Limited {
    /// For a `Retry-After` header: whole seconds, at least one.
    pub fn retry_after_seconds(&self) -> i64 {
        ((self.retry_after_ms + 999) / 1000).max(1)
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            LimitKind::Ip => "too many requests from this client IP",
            LimitKind::NumberCap => "too many messages to this number",
            LimitKind::Country => "too many messages to this number's country",
        };
        write!(f, "{what}; try again in {} s", self.retry_after_seconds())
    }
}

/// A daily spend ceiling a message's estimate would have crossed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverSpend {
    /// `None`: the ceiling of all countries together; else the country's own.
    pub country: Option<String>,
    pub limit: Micros,
    pub spent: Micros,
    /// Until the database's UTC day ends, as the database measured it when it decided.
    pub day_ends_in_ms: i64,
}

impl OverSpend {
    /// For a `Retry-After` header: whole seconds to the database's next day, at least one.
    pub fn retry_after_seconds(&self) -> i64 {
        ((self.day_ends_in_ms + 999) / 1000).max(1)
    }

    /// The `scope` label of `smsgate_rate_limited_total`.
    pub fn scope(&self) -> &'static str {
        match self.country {
            None => "spend_daily",
            Some(_) => "spend_country",
        }
    }
}

impl fmt::Display for OverSpend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.country {
            None => write!(f, "today's spend ceiling is reached"),
            Some(country) => write!(f, "today's spend ceiling for {country} is reached"),
        }
    }
}

/// Why the limits refused a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitRefusal {
    Window(Limited),
    Spend(OverSpend),
}

/// The limits' verdict on an admitted message: the monitoring limits it went past.
pub type Monitored = Vec<LimitKind>;

/// One log a message is counted in: its key, the windows on it and what they do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub key: String,
    pub windows: Vec<WindowLimit>,
    pub kind: LimitKind,
    pub mode: LimitMode,
    /// Decided on budget slices in this batch (`limits::slices`): a key whose cap allows a
    /// share that this process needed recently. Set by the batch, not by `checks`.
    pub sliced: bool,
}

impl Check {
    /// How many events beyond its needs a batch reserves of this check's key at once, when
    /// the key may be decided on budget slices (`limits::slices`) rather than on its row.
    pub fn slice_share(&self) -> Option<i64> {
        super::slices::events_share(&self.windows)
    }
}

impl IngressLimits {
    pub fn new(config: &LimitsConfig, spend: &SpendConfig) -> Self {
        Self {
            ip: config.ip.clone(),
            number_cap: config.number_cap.clone(),
            // "gb" passes validation as GB: compared as written, it would never match.
            country: config
                .country
                .iter()
                .map(|limit| CountryLimit {
                    countries: {
                        let mut countries: Vec<String> = limit
                            .countries
                            .iter()
                            .map(|c| c.to_ascii_uppercase())
                            .collect();
                        countries.sort();
                        countries
                    },
                    ..limit.clone()
                })
                .collect(),
            spend: SpendCeiling::new(spend),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ip.is_empty()
            && self.number_cap.is_empty()
            && self.country.is_empty()
            && self.spend.is_empty()
    }

    /// Whether a message's country must be known: a country cap or ceiling, or a limit
    /// that reports by country.
    pub fn need_country(&self) -> bool {
        !self.country.is_empty()
            || self.spend.country_daily.is_some()
            || self
                .ip
                .iter()
                .chain(&self.number_cap)
                .any(|w| w.mode == LimitMode::Monitor)
    }

    /// How long a key's log must be kept.
    pub fn longest_window_seconds(&self) -> u32 {
        let windows = self.ip.iter().chain(&self.number_cap);
        windows
            .map(|w| w.window_seconds.get())
            .chain(self.country.iter().map(|c| c.window_seconds.get()))
            .max()
            .unwrap_or(0)
    }

    /// The logs `message` is counted in. Blocking and monitoring windows of one kind keep
    /// separate logs: a monitored refusal must not count where a real one would not.
    pub fn checks(&self, message: &NewMessage) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Some(ip) = message.request.ip {
            split_by_mode(
                &mut checks,
                &self.ip,
                &format!("ip:{}", client_network(ip)),
                LimitKind::Ip,
            );
        }
        let to = format!("to:{}", message.recipient.as_str());
        split_by_mode(&mut checks, &self.number_cap, &to, LimitKind::NumberCap);
        let country = message.guard.country.as_deref();
        for limit in &self.country {
            if limit.covers(country) {
                let window = WindowLimit {
                    max: limit.max,
                    window_seconds: limit.window_seconds,
                    mode: limit.mode,
                };
                // Named by what the rule counts (its countries and window), not its place in
                // the list: reordering the rules keeps every log. "ZZ": ISO's user-assigned
                // code, for numbers of no country under "*".
                let key = format!(
                    "{}cc:{}:{}:{}",
                    mode_prefix(&window),
                    limit.window_seconds.get(),
                    limit.countries.join(","),
                    country.unwrap_or("ZZ")
                );
                // Two blocking rules of the same countries and window share one log: each
                // adds its maximum to it, so the tighter one holds.
                match checks.iter_mut().find(|c| c.key == key) {
                    Some(same) => same.windows.push(window),
                    None => checks.push(Check {
                        key,
                        windows: vec![window],
                        kind: LimitKind::Country,
                        mode: limit.mode,
                        sliced: false,
                    }),
                }
            }
        }
        checks
    }
}

/// Adds one check for the blocking windows of `windows` under `key` (together they decide,
/// so one log counts what all of them let through), and one per monitoring window under a
/// key of its own.
fn split_by_mode(checks: &mut Vec<Check>, windows: &[WindowLimit], key: &str, kind: LimitKind) {
    let (block, monitor): (Vec<WindowLimit>, Vec<WindowLimit>) =
        windows.iter().partition(|w| w.mode == LimitMode::Block);
    if !block.is_empty() {
        checks.push(Check {
            key: key.to_string(),
            windows: block,
            kind,
            mode: LimitMode::Block,
            sliced: false,
        });
    }
    for window in monitor {
        checks.push(Check {
            key: format!("{}{key}", mode_prefix(&window)),
            windows: vec![window],
            kind,
            mode: LimitMode::Monitor,
            sliced: false,
        });
    }
}

/// Where a log's key says who counts in it. Blocking windows of a kind share the plain key.
/// A monitoring window refuses nothing, so it must count only what it alone would have let
/// through: beside a blocking rule, or another monitoring rule of other numbers, a shared log
/// would hold requests it would have refused. Its key carries its own window and maximum.
fn mode_prefix(window: &WindowLimit) -> String {
    match window.mode {
        LimitMode::Block => String::new(),
        LimitMode::Monitor => format!("m{}/{}:", window.max.get(), window.window_seconds.get()),
    }
}

/// What one client controls: an IPv4 address, or the /64 an IPv6 host gets from its provider
/// (a single host can use any address in it, so counting addresses would count nothing).
fn client_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("literal");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("literal");
        assert_eq!(client_network(a), client_network(b));
        assert_eq!(client_network(a), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("literal");
        assert_eq!(client_network(mapped), "203.0.113.7");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limited = |ms| Limited {
            kind: LimitKind::Ip,
            retry_after_ms: ms,
        };
        assert_eq!(limited(1).retry_after_seconds(), 1);
        assert_eq!(limited(1000).retry_after_seconds(), 1);
        assert_eq!(limited(1001).retry_after_seconds(), 2);
    }
}
