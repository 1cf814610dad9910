//! `[carriers.<name>]` of kind "twilio": its keys, their checks, and the settings they give.

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::checks::{REQUIRED, has, has_secret, public_url, url};
use crate::config::{CarrierKindConfig, Found, KindKeys, KindSettings};
use crate::config::{is_e164, optional_string, problem};
use crate::secret::Secret;

/// The kind, as the registry lists it.
pub struct Twilio;

/// The table's own keys, as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TwilioTable {
    #[serde(default, deserialize_with = "optional_string")]
    account_sid: Option<String>,
    #[serde(default)]
    auth_token: Option<Secret>,
    #[serde(default, deserialize_with = "optional_string")]
    api_key_sid: Option<String>,
    #[serde(default)]
    api_key_secret: Option<Secret>,
    #[serde(default, deserialize_with = "optional_string")]
    messaging_service_sid: Option<String>,
    /// An explicit status callback URL; otherwise smsgate's own (from `public_url`).
    #[serde(default, deserialize_with = "optional_string")]
    status_callback: Option<String>,
    /// smsgate's own address as Twilio reaches it: every send then asks for status
    /// callbacks at /v1/callbacks/twilio/<name>.
    #[serde(default, deserialize_with = "optional_string")]
    public_url: Option<String>,
    #[serde(default, deserialize_with = "optional_string")]
    from: Option<String>,
    #[serde(default, deserialize_with = "optional_string")]
    base_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub credentials: TwilioCredentials,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub status_callback: Option<String>,
    pub base_url: Option<String>,
    /// With the auth token that signs Twilio's status callbacks.
    pub receipts: Option<(String, Secret)>,
    /// The secrets set, by key.
    secrets: Vec<(&'static str, Secret)>,
}

/// HTTP Basic credentials: the account's auth token, or an API key.
#[derive(Debug, Clone)]
pub enum TwilioCredentials {
    AuthToken(Secret),
    ApiKey { sid: String, secret: Secret },
}

impl KindSettings for TwilioSettings {
    /// With a `from` number to call from.
    fn places_calls(&self) -> bool {
        self.from.as_deref().is_some_and(is_e164)
    }

    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        self.secrets
            .iter()
            .map(|(key, value)| (*key, value))
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CarrierKindConfig for Twilio {
    fn name(&self) -> &'static str {
        "twilio"
    }

    fn read(&self, name: &str, keys: &KindKeys) -> (Arc<dyn KindSettings>, Found) {
        let (table, mut found): (TwilioTable, Found) = keys.read();
        found.extend(problems(name, &table));
        let secrets: Vec<(&'static str, Secret)> = [
            ("auth_token", &table.auth_token),
            ("api_key_secret", &table.api_key_secret),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.clone()?)))
        .collect();
        // Without either, validation named auth_token: an empty one stands in.
        let credentials = match (table.api_key_sid, table.api_key_secret, &table.auth_token) {
            (Some(sid), Some(secret), _) => TwilioCredentials::ApiKey { sid, secret },
            (_, _, token) => TwilioCredentials::AuthToken(token.clone().unwrap_or_default()),
        };
        let settings = Arc::new(TwilioSettings {
            account_sid: table.account_sid.unwrap_or_default(),
            credentials,
            from: table.from,
            messaging_service_sid: table.messaging_service_sid,
            status_callback: table.status_callback,
            base_url: table.base_url,
            receipts: table.public_url.zip(table.auth_token),
            secrets,
        });
        (settings, found)
    }
}

fn problems(name: &str, table: &TwilioTable) -> Found {
    let mut found = Vec::new();
    if !has(&table.account_sid) {
        found.push(problem("account_sid", REQUIRED));
    }
    let key = has(&table.api_key_sid) && has_secret(&table.api_key_secret);
    if !has_secret(&table.auth_token) && !key {
        found.push(problem(
            "auth_token",
            "is required for kind \"twilio\" (or api_key_sid with api_key_secret)",
        ));
    }
    if table.api_key_sid.is_some() != table.api_key_secret.is_some() {
        found.push(problem(
            "api_key_secret",
            "api_key_sid and api_key_secret go together",
        ));
    }
    if table.public_url.is_some() && !has_secret(&table.auth_token) {
        found.push(problem(
            "public_url",
            "Twilio signs status callbacks with the auth token: set auth_token too",
        ));
    }
    if !has(&table.from) && !has(&table.messaging_service_sid) {
        found.push(problem(
            "from",
            "kind \"twilio\" needs from or messaging_service_sid",
        ));
    }
    found.extend(url("base_url", &table.base_url));
    found.extend(public_url(name, &table.public_url));
    found
}
