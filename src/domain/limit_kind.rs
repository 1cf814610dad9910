//! The kinds of ingress limit: one list, with every name a kind goes by, so metrics, errors and
//! the limits themselves cannot disagree. (The dispatch's per-recipient pacing,
//! `[[limits.recipient]]`, delays sends instead of refusing requests: it is not one of these.)

/// Which ingress limit refused (or would have refused) a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// `[[limits.ip]]`: requests from one client address (an IPv6 /64).
    Ip,
    /// `[[limits.ingress_recipient]]`: the ingress's cap on requests to one number.
    NumberCap,
    /// `[[limits.country]]`: requests to one destination country.
    Country,
}

impl LimitKind {
    pub const ALL: [LimitKind; 3] = [LimitKind::Ip, LimitKind::NumberCap, LimitKind::Country];

    /// The `limit` label of `smsgate_limit_monitored_total`.
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Ip => "ip",
            LimitKind::NumberCap => "ingress_recipient",
            LimitKind::Country => "country",
        }
    }

    /// The `scope` of `smsgate_rate_limited_total` a refusal by this kind counts under.
    pub fn refusal_scope(self) -> &'static str {
        match self {
            LimitKind::Ip => "ingress_ip",
            LimitKind::NumberCap => "ingress_recipient",
            LimitKind::Country => "ingress_country",
        }
    }
}
