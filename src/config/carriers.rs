//! `[carriers.<name>]`: one table per carrier account. Every kind shares the transport settings;
//! the credential keys are checked per kind, so a key of another kind is an error, not ignored.

use serde::{Deserialize, Serialize};

use std::num::NonZeroU32;

use super::problems::Problem;
use super::{Millis, Seconds};
use crate::messagemedia_signature::{MAX_KEYS, SignatureKeys};
use crate::secret::{Secret, lenient_string};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CarrierKind {
    /// Development carrier: records the message as sent and logs it with the code masked.
    Log,
    /// Twilio Programmable Messaging (`POST /2010-04-01/Accounts/{sid}/Messages.json`).
    Twilio,
    /// MessageMedia (Sinch) Messages API (`POST /v1/messages`).
    Messagemedia,
    /// AWS SNS `Publish` to a phone number, through the AWS SDK and its credential chain.
    Sns,
    /// Telnyx Messaging API v2 (`POST /v2/messages`).
    Telnyx,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CarrierConfig {
    pub kind: CarrierKind,
    /// Connecting must succeed within this long.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: Millis,
    /// One whole request must finish within this long; keep the sum over a route well under
    /// Auth0's 30 s.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Millis,
    /// Sends per second through this carrier, per smsgate process; none = unlimited.
    #[serde(default)]
    pub max_per_second: Option<u32>,
    /// Concurrent requests to this carrier, per smsgate process; none = unlimited.
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Consecutive carrier failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: NonZeroU32,
    /// How long an open breaker skips the carrier before one message probes it.
    #[serde(default = "default_breaker_cooldown_seconds")]
    pub breaker_cooldown_seconds: Seconds,

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

    // Delivery receipts (Twilio, MessageMedia)
    /// smsgate's own address as the carrier reaches it (e.g. "https://sms.example.com"):
    /// when set, every send asks for a delivery receipt at /v1/callbacks/<kind>/<name>.
    #[serde(default, deserialize_with = "optional_string")]
    pub public_url: Option<String>,
    /// MessageMedia signs no callbacks by default: this secret in the callback URL proves
    /// them (at least 16 characters).
    #[serde(default)]
    pub callback_secret: Option<Secret>,
    /// With secure callbacks enabled on the MessageMedia account: the public keys of its
    /// signature keys (the `public_key` its key API returned, or PEM). Reports must then be
    /// signed by one of them and the callback URL carries no secret.
    #[serde(default, deserialize_with = "one_or_many")]
    pub callback_public_keys: Vec<String>,

    // MessageMedia
    #[serde(default, deserialize_with = "optional_string")]
    pub api_key: Option<String>,
    #[serde(default)]
    pub api_secret: Option<Secret>,
    /// The `format` a call is sent with: "VOICE" (the default), or "TTS", the name
    /// MessageMedia's published OpenAPI description gives text-to-speech.
    #[serde(default)]
    pub voice_format: Option<VoiceFormat>,

    // AWS SNS
    #[serde(default, deserialize_with = "optional_string")]
    pub region: Option<String>,
    /// A VPC endpoint or a local stand-in; the public SNS endpoint when absent.
    #[serde(default, deserialize_with = "optional_string")]
    pub endpoint_url: Option<String>,
    /// `AWS.SNS.SMS.SenderID`.
    #[serde(default, deserialize_with = "optional_string")]
    pub sender_id: Option<String>,
    /// Static credentials; without them the standard AWS credential chain is used.
    #[serde(default, deserialize_with = "optional_string")]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,

    // Telnyx
    /// The API key (v2) sent as a Bearer token.
    #[serde(default)]
    pub api_token: Option<Secret>,
    /// The messaging profile to send with: required without `from` (its number pool then
    /// picks the sender) and with an alphanumeric `from`.
    #[serde(default, deserialize_with = "optional_string")]
    pub messaging_profile_id: Option<String>,
    /// With `public_url`: the account's public key (base64, from Telnyx's portal) that its
    /// delivery webhooks are signed with (Ed25519).
    #[serde(default, deserialize_with = "optional_string")]
    pub webhook_public_key: Option<String>,

    // Shared by several kinds
    /// Sender: a carrier's `from` wins over the request's `sender`.
    #[serde(default, deserialize_with = "optional_string")]
    pub from: Option<String>,
    /// API base URL; tests and proxies point it elsewhere.
    #[serde(default, deserialize_with = "optional_string")]
    pub base_url: Option<String>,
}

/// How MessageMedia is asked to speak a message.
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

fn default_connect_timeout_ms() -> Millis {
    Millis::new(2000)
}

fn default_timeout_ms() -> Millis {
    Millis::new(5000)
}

fn default_breaker_failures() -> NonZeroU32 {
    super::units::count32(5)
}

fn default_breaker_cooldown_seconds() -> Seconds {
    Seconds::new(30)
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

fn optional_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_string(d).map(Some)
}

impl CarrierKind {
    /// Every kind: what mounts the receipt routes, so a kind cannot be left without one.
    pub const ALL: [CarrierKind; 5] = [
        CarrierKind::Log,
        CarrierKind::Twilio,
        CarrierKind::Messagemedia,
        CarrierKind::Sns,
        CarrierKind::Telnyx,
    ];

    /// Whether carriers of this kind send delivery receipts to smsgate
    /// (`/v1/callbacks/<kind>/<name>`). A new kind must answer here before it compiles.
    pub fn sends_receipts(self) -> bool {
        match self {
            CarrierKind::Twilio | CarrierKind::Messagemedia | CarrierKind::Telnyx => true,
            CarrierKind::Log | CarrierKind::Sns => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CarrierKind::Log => "log",
            CarrierKind::Twilio => "twilio",
            CarrierKind::Messagemedia => "messagemedia",
            CarrierKind::Sns => "sns",
            CarrierKind::Telnyx => "telnyx",
        }
    }
}

impl CarrierConfig {
    /// The credentials that are set, by key name.
    pub fn secret_values(&self) -> Vec<(&'static str, &str)> {
        [
            ("auth_token", &self.auth_token),
            ("api_key_secret", &self.api_key_secret),
            ("callback_secret", &self.callback_secret),
            ("api_secret", &self.api_secret),
            ("secret_access_key", &self.secret_access_key),
            ("api_token", &self.api_token),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| (key, v.expose())))
        .collect()
    }

    /// Where this carrier sends its delivery receipts, when `public_url` is set.
    pub fn callback_url(&self, name: &str) -> Option<String> {
        let base = self.public_url.as_deref()?.trim_end_matches('/');
        Some(match self.kind {
            CarrierKind::Messagemedia if !self.callback_public_keys.is_empty() => {
                // Signed reports need no secret, so none goes into a URL that logs record.
                format!("{base}/v1/callbacks/messagemedia/{name}")
            }
            CarrierKind::Messagemedia => {
                let secret = self
                    .callback_secret
                    .as_ref()
                    .map(Secret::expose)
                    .unwrap_or("");
                // Encoded: a base64 secret's `+ / =` would otherwise arrive decoded as other
                // characters (`+` as a space) and the report would be refused.
                let key: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
                format!("{base}/v1/callbacks/messagemedia/{name}?key={key}")
            }
            kind => format!("{base}/v1/callbacks/{}/{name}", kind.as_str()),
        })
    }

    /// The kind-specific keys that are set, with the kinds each belongs to.
    fn set_keys(&self) -> Vec<(&'static str, &'static [CarrierKind])> {
        use CarrierKind::{Messagemedia, Sns, Telnyx, Twilio};
        let keys: [(&str, bool, &'static [CarrierKind]); 22] = [
            ("account_sid", self.account_sid.is_some(), &[Twilio]),
            ("auth_token", self.auth_token.is_some(), &[Twilio]),
            ("api_key_sid", self.api_key_sid.is_some(), &[Twilio]),
            ("api_key_secret", self.api_key_secret.is_some(), &[Twilio]),
            (
                "messaging_service_sid",
                self.messaging_service_sid.is_some(),
                &[Twilio],
            ),
            ("status_callback", self.status_callback.is_some(), &[Twilio]),
            (
                "public_url",
                self.public_url.is_some(),
                &[Twilio, Messagemedia, Telnyx],
            ),
            (
                "webhook_public_key",
                self.webhook_public_key.is_some(),
                &[Telnyx],
            ),
            (
                "callback_secret",
                self.callback_secret.is_some(),
                &[Messagemedia],
            ),
            (
                "callback_public_keys",
                !self.callback_public_keys.is_empty(),
                &[Messagemedia],
            ),
            ("api_key", self.api_key.is_some(), &[Messagemedia]),
            ("api_secret", self.api_secret.is_some(), &[Messagemedia]),
            ("voice_format", self.voice_format.is_some(), &[Messagemedia]),
            ("region", self.region.is_some(), &[Sns]),
            ("endpoint_url", self.endpoint_url.is_some(), &[Sns]),
            ("sender_id", self.sender_id.is_some(), &[Sns]),
            ("access_key_id", self.access_key_id.is_some(), &[Sns]),
            (
                "secret_access_key",
                self.secret_access_key.is_some(),
                &[Sns],
            ),
            ("api_token", self.api_token.is_some(), &[Telnyx]),
            (
                "messaging_profile_id",
                self.messaging_profile_id.is_some(),
                &[Telnyx],
            ),
            (
                "from",
                self.from.is_some(),
                &[Twilio, Messagemedia, Sns, Telnyx],
            ),
            (
                "base_url",
                self.base_url.is_some(),
                &[Twilio, Messagemedia, Telnyx],
            ),
        ];
        keys.into_iter()
            .filter(|(_, set, _)| *set)
            .map(|(key, _, kinds)| (key, kinds))
            .collect()
    }

    /// Problems with this carrier's keys, each naming `carriers.<name>.<key>`.
    pub(super) fn problems(&self, name: &str) -> Vec<Problem> {
        let mut found = self.transport_problems();
        for (key, kinds) in self.set_keys() {
            if !kinds.contains(&self.kind) {
                let reason = format!("is not a key of kind \"{}\"", self.kind.as_str());
                found.push((key.to_string(), reason));
            }
        }
        found.extend(self.callback_problems(name));
        found.extend(match self.kind {
            CarrierKind::Log => Vec::new(),
            CarrierKind::Twilio => self.twilio_problems(),
            CarrierKind::Messagemedia => self.messagemedia_problems(),
            CarrierKind::Sns => self.sns_problems(),
            CarrierKind::Telnyx => self.telnyx_problems(),
        });
        for (key, url) in [
            ("base_url", &self.base_url),
            ("endpoint_url", &self.endpoint_url),
            ("public_url", &self.public_url),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                found.push(problem(key, "must be an http(s) URL"));
            }
        }
        found
            .into_iter()
            .map(|(field, reason)| Problem {
                key: format!("carriers.{name}.{field}"),
                reason,
            })
            .collect()
    }

    /// The callback URL is `public_url` + a path holding the carrier's name; carriers sign
    /// it, so it must read back exactly as it was handed out.
    fn callback_problems(&self, name: &str) -> Found {
        let Some(public_url) = &self.public_url else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if !name.chars().all(plain) {
            found.push(problem(
                "public_url",
                "needs a carrier name of letters, digits, '-' and '_' only (the name is part \
                 of the callback URL the carrier signs)",
            ));
        }
        // The path as written, not only as parsed: `/a/../b` or a space would be normalised
        // here but signed by the carrier as sent. (Host case and default ports may differ.)
        let usable = reqwest::Url::parse(public_url).is_ok_and(|url| {
            url.host().is_some()
                && url.query().is_none()
                && url.fragment().is_none()
                && url.username().is_empty()
                && url.password().is_none()
                && url.path().trim_end_matches('/') == written_path(public_url)
        });
        if !usable {
            found.push(problem(
                "public_url",
                "must be an absolute http(s) URL with a host and no query, fragment or user \
                 name, whose path reads back as written (no `..`, `.`, spaces or other \
                 characters a parser would rewrite; e.g. https://example.com/sms)",
            ));
        }
        found
    }

    /// Timeouts, limits and the breaker, shared by every kind.
    fn transport_problems(&self) -> Found {
        let mut found = Vec::new();
        if self.timeout_ms.get() > 25_000 {
            found.push(problem(
                "timeout_ms",
                "must be between 1 and 25000 (Auth0 waits 30 s in all)",
            ));
        }
        if self.connect_timeout_ms > self.timeout_ms {
            found.push(problem(
                "connect_timeout_ms",
                "must be between 1 and timeout_ms",
            ));
        }
        for (key, zero) in [
            ("max_per_second", self.max_per_second == Some(0)),
            ("max_in_flight", self.max_in_flight == Some(0)),
        ] {
            if zero {
                found.push(problem(key, "must be at least 1 (remove it for no limit)"));
            }
        }
        found
    }

    fn twilio_problems(&self) -> Found {
        let mut found = Vec::new();
        if !has(&self.account_sid) {
            found.push(problem("account_sid", REQUIRED));
        }
        let key = has(&self.api_key_sid) && has_secret(&self.api_key_secret);
        if !has_secret(&self.auth_token) && !key {
            found.push(problem(
                "auth_token",
                "is required for kind \"twilio\" (or api_key_sid with api_key_secret)",
            ));
        }
        if self.api_key_sid.is_some() != self.api_key_secret.is_some() {
            found.push(problem(
                "api_key_secret",
                "api_key_sid and api_key_secret go together",
            ));
        }
        if self.public_url.is_some() && !has_secret(&self.auth_token) {
            found.push(problem(
                "public_url",
                "Twilio signs status callbacks with the auth token: set auth_token too",
            ));
        }
        if !has(&self.from) && !has(&self.messaging_service_sid) {
            found.push(problem(
                "from",
                "kind \"twilio\" needs from or messaging_service_sid",
            ));
        }
        found
    }

    fn messagemedia_problems(&self) -> Found {
        let mut found = Vec::new();
        if !has(&self.api_key) {
            found.push(problem("api_key", REQUIRED));
        }
        if !has_secret(&self.api_secret) {
            found.push(problem("api_secret", REQUIRED));
        }
        let secret_len = self
            .callback_secret
            .as_ref()
            .map_or(0, |s| s.expose().len());
        let signed = !self.callback_public_keys.is_empty();
        if self.public_url.is_some() && !signed && secret_len < 16 {
            found.push(problem(
                "callback_secret",
                "public_url needs callback_public_keys or a callback_secret of at least 16 \
                 characters (they prove MessageMedia's delivery reports)",
            ));
        } else if self.callback_secret.is_some() && secret_len < 16 {
            // Beside keys too: it still admits unsigned reports.
            found.push(problem("callback_secret", "must be at least 16 characters"));
        }
        if self.callback_public_keys.len() > MAX_KEYS {
            let reason = format!("holds at most {MAX_KEYS} keys");
            found.push(problem("callback_public_keys", &reason));
        } else if let Err((i, why)) = SignatureKeys::parse(&self.callback_public_keys) {
            found.push((format!("callback_public_keys[{i}]"), why));
        }
        found
    }

    fn sns_problems(&self) -> Found {
        let mut found = Vec::new();
        if !has(&self.region) {
            found.push(problem("region", REQUIRED));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            found.push(problem(
                "secret_access_key",
                "access_key_id and secret_access_key go together",
            ));
        }
        found
    }
}

impl CarrierConfig {
    fn telnyx_problems(&self) -> Found {
        let mut found = Vec::new();
        if !has_secret(&self.api_token) {
            found.push(problem("api_token", REQUIRED));
        }
        let from_number = self.from.as_deref().is_some_and(super::is_e164);
        if !has(&self.messaging_profile_id) && !from_number {
            found.push(problem(
                "messaging_profile_id",
                "kind \"telnyx\" needs messaging_profile_id, or a from number (+E.164); an \
                 alphanumeric from needs the profile too",
            ));
        }
        let key = self.webhook_public_key.as_deref().map(telnyx_public_key);
        if self.public_url.is_some() && key.is_none() {
            found.push(problem(
                "webhook_public_key",
                "public_url needs the account's public key (Telnyx signs its webhooks with it)",
            ));
        } else if let Some(Err(why)) = key {
            found.push(problem("webhook_public_key", why));
        }
        found
    }
}

/// Telnyx's webhook key: base64 of a 32-byte Ed25519 public key.
pub fn telnyx_public_key(text: &str) -> Result<ed25519_dalek::VerifyingKey, &'static str> {
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

/// The path of `url` as written (after the authority), without a trailing slash.
fn written_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme.find('/').map_or("", |at| &after_scheme[at..]);
    path.trim_end_matches('/')
}

/// Problems under one carrier: (key, reason).
type Found = Vec<(String, String)>;

const REQUIRED: &str = "is required for this kind";

fn problem(key: &str, reason: &str) -> (String, String) {
    (key.to_string(), reason.to_string())
}

fn has(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| !v.trim().is_empty())
}

fn has_secret(value: &Option<Secret>) -> bool {
    value.as_ref().is_some_and(|v| !v.is_empty())
}
