//! `[carriers.<name>]` of kind "messagemedia": its keys, their checks, and the settings they
//! give.

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::signature::{MAX_KEYS, RECOMMENDED_BITS, SignatureKeys};
use crate::config::checks::{REQUIRED, has, has_secret, public_url, url};
use crate::config::{CarrierKindConfig, Found, KindKeys, KindSettings};
use crate::config::{optional_string, problem};
use crate::secret::Secret;

/// The kind, as the registry lists it.
pub struct MessageMedia;

/// The table's own keys, as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MessageMediaTable {
    #[serde(default, deserialize_with = "optional_string")]
    api_key: Option<String>,
    #[serde(default)]
    api_secret: Option<Secret>,
    /// The `format` a call is sent with: "VOICE" (the default), or "TTS".
    #[serde(default)]
    voice_format: Option<VoiceFormat>,
    /// smsgate's own address as MessageMedia reaches it: every send then asks for a delivery
    /// report at /v1/callbacks/messagemedia/<name>.
    #[serde(default, deserialize_with = "optional_string")]
    public_url: Option<String>,
    /// Proves unsigned reports: this secret in the callback URL (at least 16 characters).
    #[serde(default)]
    callback_secret: Option<Secret>,
    /// The public keys of the account's signature keys: signed reports must carry a
    /// signature by one of them.
    #[serde(default, deserialize_with = "one_or_many")]
    callback_public_keys: Vec<String>,
    #[serde(default, deserialize_with = "optional_string")]
    from: Option<String>,
    #[serde(default, deserialize_with = "optional_string")]
    base_url: Option<String>,
}

/// How MessageMedia is asked to speak a message: "VOICE", or "TTS", the name MessageMedia's
/// published OpenAPI description gives text-to-speech.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VoiceFormat {
    #[default]
    Voice,
    Tts,
}

impl VoiceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            VoiceFormat::Voice => "VOICE",
            VoiceFormat::Tts => "TTS",
        }
    }
}

#[derive(Debug, Clone)]
pub struct MessageMediaSettings {
    /// Not a secret to MessageMedia, but one to Auth0's recipe with a published signer
    /// secret, whose subject it is: never shown.
    pub api_key: Secret,
    pub api_secret: Secret,
    pub from: Option<String>,
    pub base_url: Option<String>,
    pub voice_format: VoiceFormat,
    /// Where reports go, without a trailing slash, when they are asked for.
    pub public_url: Option<String>,
    /// Proves unsigned reports when set.
    pub callback_secret: Option<Secret>,
    /// Prove signed reports when not empty.
    pub keys: SignatureKeys,
}

impl KindSettings for MessageMediaSettings {
    fn places_calls(&self) -> bool {
        true
    }

    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        let mut secrets = vec![("api_secret", &self.api_secret)];
        secrets.extend(self.callback_secret.iter().map(|s| ("callback_secret", s)));
        secrets
    }

    fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let smallest = self.keys.smallest_bits();
        if smallest.is_some() && self.public_url.is_none() {
            warnings.push(
                "callback_public_keys: unused without public_url (no delivery reports are \
                 asked for)"
                    .to_string(),
            );
        }
        if let Some(bits) = smallest.filter(|&bits| bits < RECOMMENDED_BITS) {
            warnings.push(format!(
                "callback_public_keys: a {bits}-bit key is weaker than {RECOMMENDED_BITS} bits; \
                 create a larger signature key with MessageMedia"
            ));
        }
        warnings
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CarrierKindConfig for MessageMedia {
    fn name(&self) -> &'static str {
        "messagemedia"
    }

    fn read(&self, name: &str, keys: &KindKeys) -> (Arc<dyn KindSettings>, Found) {
        let (table, mut found): (MessageMediaTable, Found) = keys.read();
        found.extend(problems(name, &table));
        // Keys that do not parse were named above; none stand in.
        let keys = SignatureKeys::parse(&table.callback_public_keys).unwrap_or_default();
        let settings = Arc::new(MessageMediaSettings {
            api_key: Secret::new(table.api_key.unwrap_or_default()),
            api_secret: table.api_secret.unwrap_or_default(),
            from: table.from,
            base_url: table.base_url,
            voice_format: table.voice_format.unwrap_or_default(),
            public_url: table
                .public_url
                .map(|url| url.trim_end_matches('/').to_string()),
            callback_secret: table.callback_secret,
            keys,
        });
        (settings, found)
    }
}

fn problems(name: &str, table: &MessageMediaTable) -> Found {
    let mut found = Vec::new();
    if !has(&table.api_key) {
        found.push(problem("api_key", REQUIRED));
    }
    if !has_secret(&table.api_secret) {
        found.push(problem("api_secret", REQUIRED));
    }
    let secret_len = table
        .callback_secret
        .as_ref()
        .map_or(0, |s| s.expose().len());
    let signed = !table.callback_public_keys.is_empty();
    if table.public_url.is_some() && !signed && secret_len < 16 {
        found.push(problem(
            "callback_secret",
            "public_url needs callback_public_keys or a callback_secret of at least 16 \
             characters (they prove MessageMedia's delivery reports)",
        ));
    } else if table.callback_secret.is_some() && secret_len < 16 {
        // Beside keys too: it still admits unsigned reports.
        found.push(problem("callback_secret", "must be at least 16 characters"));
    }
    if table.callback_public_keys.len() > MAX_KEYS {
        let reason = format!("holds at most {MAX_KEYS} keys");
        found.push(problem("callback_public_keys", &reason));
    } else if let Err((i, why)) = SignatureKeys::parse(&table.callback_public_keys) {
        found.push((format!("callback_public_keys[{i}]"), why));
    }
    found.extend(url("base_url", &table.base_url));
    found.extend(public_url(name, &table.public_url));
    found
}

/// A list, or one string (an environment variable gives one).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "a string or a list of strings")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}
