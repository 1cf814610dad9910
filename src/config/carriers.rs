//! `[carriers.<name>]`: one table per carrier account. Every kind shares the transport settings;
//! the credential keys are checked per kind, so a key of another kind is an error, not ignored.

use serde::{Deserialize, Serialize};

use super::validate::Problem;
use crate::secret::{Secret, lenient_string};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CarrierKind {
    /// Development carrier: records the message as sent and logs it with the code masked.
    Log,
    /// Twilio Programmable Messaging (`POST /2010-04-01/Accounts/{sid}/Messages.json`).
    Twilio,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierConfig {
    pub kind: CarrierKind,
    /// Connecting must succeed within this long.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// One whole request must finish within this long; keep the sum over a route well under
    /// Auth0's 30 s.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Sends per second through this carrier, per smsgate process; none = unlimited.
    #[serde(default)]
    pub max_per_second: Option<u32>,

    // Twilio
    #[serde(default, deserialize_with = "optional_string")]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub auth_token: Option<Secret>,
    #[serde(default, deserialize_with = "optional_string")]
    pub api_key_sid: Option<String>,
    #[serde(default)]
    pub api_key_secret: Option<Secret>,
    #[serde(default, deserialize_with = "optional_string")]
    pub messaging_service_sid: Option<String>,
    #[serde(default, deserialize_with = "optional_string")]
    pub status_callback: Option<String>,

    // Shared by the HTTP carriers
    /// Sender: a carrier's `from` wins over the request's `sender`.
    #[serde(default, deserialize_with = "optional_string")]
    pub from: Option<String>,
    /// API base URL; tests and proxies point it elsewhere.
    #[serde(default, deserialize_with = "optional_string")]
    pub base_url: Option<String>,
}

fn default_connect_timeout_ms() -> u64 {
    2000
}

fn default_timeout_ms() -> u64 {
    5000
}

fn optional_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_string(d).map(Some)
}

impl CarrierConfig {
    /// Problems with this carrier's keys, each naming `carriers.<name>.<key>`.
    pub(super) fn problems(&self, name: &str) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, reason: &str| {
            problems.push(Problem {
                key: format!("carriers.{name}.{field}"),
                reason: reason.to_string(),
            })
        };
        if self.timeout_ms == 0 || self.timeout_ms > 25_000 {
            problem(
                "timeout_ms",
                "must be between 1 and 25000 (Auth0 waits 30 s in all)",
            );
        }
        if self.connect_timeout_ms == 0 || self.connect_timeout_ms > self.timeout_ms {
            problem("connect_timeout_ms", "must be between 1 and timeout_ms");
        }
        if self.max_per_second == Some(0) {
            problem(
                "max_per_second",
                "must be at least 1 (remove it for no limit)",
            );
        }
        let twilio_keys = [
            ("account_sid", self.account_sid.is_some()),
            ("auth_token", self.auth_token.is_some()),
            ("api_key_sid", self.api_key_sid.is_some()),
            ("api_key_secret", self.api_key_secret.is_some()),
            (
                "messaging_service_sid",
                self.messaging_service_sid.is_some(),
            ),
            ("status_callback", self.status_callback.is_some()),
        ];
        let http_keys = [
            ("from", self.from.is_some()),
            ("base_url", self.base_url.is_some()),
        ];
        match self.kind {
            CarrierKind::Log => {
                for (key, _) in twilio_keys.iter().chain(&http_keys).filter(|(_, set)| *set) {
                    problem(key, "is not a key of kind \"log\"");
                }
            }
            CarrierKind::Twilio => {
                let sid = self.account_sid.as_deref().unwrap_or_default();
                if sid.is_empty() {
                    problem("account_sid", "is required for kind \"twilio\"");
                }
                let token = self.auth_token.as_ref().is_some_and(|t| !t.is_empty());
                let key = self.api_key_sid.is_some() && self.api_key_secret.is_some();
                if !token && !key {
                    problem(
                        "auth_token",
                        "is required for kind \"twilio\" (or api_key_sid with api_key_secret)",
                    );
                }
                if self.api_key_sid.is_some() != self.api_key_secret.is_some() {
                    problem(
                        "api_key_secret",
                        "api_key_sid and api_key_secret go together",
                    );
                }
                if self.from.is_none() && self.messaging_service_sid.is_none() {
                    problem(
                        "from",
                        "kind \"twilio\" needs from or messaging_service_sid",
                    );
                }
                if let Some(url) = &self.base_url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    problem("base_url", "must be an http(s) URL");
                }
            }
        }
        problems
    }
}
