//! The ingress's limits: `[[limits.ip]]` windows per client IP (Auth0's forwarded `req.ip`)
//! and `[[limits.ingress_recipient]]` hard caps per number. Both are decided in the same
//! transaction that stores the batch (see `db::ingress_hits`), so they hold exactly across
//! processes; a refused request stores nothing and does not count.

use std::fmt;
use std::net::IpAddr;

use crate::config::{LimitsConfig, WindowLimit};
use crate::domain::NewMessage;

#[derive(Debug, Clone, Default)]
pub struct IngressLimits {
    pub ip: Vec<WindowLimit>,
    pub recipient: Vec<WindowLimit>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Ip,
    Recipient,
}

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
            LimitKind::Recipient => "too many messages to this number",
        };
        write!(f, "{what}; try again in {} s", self.retry_after_seconds())
    }
}

impl IngressLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            ip: config.ip.clone(),
            recipient: config.ingress_recipient.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ip.is_empty() && self.recipient.is_empty()
    }

    /// How long a key's log must be kept.
    pub fn longest_window_seconds(&self) -> u32 {
        self.ip
            .iter()
            .chain(&self.recipient)
            .map(|w| w.window_seconds.get())
            .max()
            .unwrap_or(0)
    }

    /// The log key of the message's client IP, when an IP limit applies to it. A request
    /// without `req.ip` has no IP to count (`server.require_request_info` refuses those).
    pub fn ip_key(&self, message: &NewMessage) -> Option<String> {
        if self.ip.is_empty() {
            return None;
        }
        message
            .request
            .ip
            .map(|ip| format!("ip:{}", client_network(ip)))
    }

    pub fn recipient_key(&self, message: &NewMessage) -> Option<String> {
        if self.recipient.is_empty() {
            return None;
        }
        Some(format!("to:{}", message.recipient.as_str()))
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
