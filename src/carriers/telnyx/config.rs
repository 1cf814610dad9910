//! `[carriers.<name>]` of kind "telnyx": its keys, their checks, and the settings they give.

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::checks::{REQUIRED, has, has_secret, public_url, url};
use crate::config::{CarrierKindConfig, Found, KindKeys, KindSettings};
use crate::config::{is_e164, optional_string, problem};
use crate::secret::Secret;

/// The kind, as the registry lists it.
pub struct Telnyx;

/// The table's own keys, as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TelnyxTable {
    /// The API key (v2) sent as a Bearer token.
    #[serde(default)]
    api_token: Option<Secret>,
    /// The messaging profile to send with: required without `from` (its number pool then
    /// picks the sender) and with an alphanumeric `from`.
    #[serde(default, deserialize_with = "optional_string")]
    messaging_profile_id: Option<String>,
    /// smsgate's own address as Telnyx reaches it: every send then names the webhook
    /// /v1/callbacks/telnyx/<name>.
    #[serde(default, deserialize_with = "optional_string")]
    public_url: Option<String>,
    /// With `public_url`: the account's public key (base64, from Telnyx's portal) that its
    /// delivery webhooks are signed with (Ed25519).
    #[serde(default, deserialize_with = "optional_string")]
    webhook_public_key: Option<String>,
    #[serde(default, deserialize_with = "optional_string")]
    from: Option<String>,
    #[serde(default, deserialize_with = "optional_string")]
    base_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TelnyxSettings {
    pub api_token: Secret,
    pub from: Option<String>,
    pub messaging_profile_id: Option<String>,
    pub base_url: Option<String>,
    /// Where webhooks go, and the key that signs them, when they are asked for.
    pub webhooks: Option<(String, ed25519_dalek::VerifyingKey)>,
}

impl KindSettings for TelnyxSettings {
    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        match self.api_token.is_empty() {
            true => Vec::new(),
            false => vec![("api_token", &self.api_token)],
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CarrierKindConfig for Telnyx {
    fn name(&self) -> &'static str {
        "telnyx"
    }

    fn read(&self, name: &str, keys: &KindKeys) -> (Arc<dyn KindSettings>, Found) {
        let (table, mut found): (TelnyxTable, Found) = keys.read();
        found.extend(problems(name, &table));
        let key = table.webhook_public_key.as_deref().map(public_key);
        let webhooks = match (table.public_url, key) {
            (Some(url), Some(Ok(key))) => Some((url, key)),
            _ => None,
        };
        let settings = Arc::new(TelnyxSettings {
            api_token: table.api_token.unwrap_or_default(),
            from: table.from,
            messaging_profile_id: table.messaging_profile_id,
            base_url: table.base_url,
            webhooks,
        });
        (settings, found)
    }
}

fn problems(name: &str, table: &TelnyxTable) -> Found {
    let mut found = Vec::new();
    if !has_secret(&table.api_token) {
        found.push(problem("api_token", REQUIRED));
    }
    let from_number = table.from.as_deref().is_some_and(is_e164);
    if !has(&table.messaging_profile_id) && !from_number {
        found.push(problem(
            "messaging_profile_id",
            "kind \"telnyx\" needs messaging_profile_id, or a from number (+E.164); an \
             alphanumeric from needs the profile too",
        ));
    }
    let key = table.webhook_public_key.as_deref().map(public_key);
    if table.public_url.is_some() && key.is_none() {
        found.push(problem(
            "webhook_public_key",
            "public_url needs the account's public key (Telnyx signs its webhooks with it)",
        ));
    } else if let Some(Err(why)) = key {
        found.push(problem("webhook_public_key", why));
    }
    found.extend(url("base_url", &table.base_url));
    found.extend(public_url(name, &table.public_url));
    found
}

/// Telnyx's webhook key: base64 of a 32-byte Ed25519 public key.
pub fn public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, &'static str> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "must be base64 (the public key Telnyx's portal shows)")?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| "must be a 32-byte Ed25519 public key")?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .map_err(|_| "is not an Ed25519 public key")?;
    // A small-order point verifies forged signatures (an identity key accepts s = 0 for any
    // message): never a key Telnyx signs with.
    if key.is_weak() {
        return Err("is a weak Ed25519 key (a small-order point), not Telnyx's public key");
    }
    Ok(key)
}
