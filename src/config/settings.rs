//! A carrier as the rest of smsgate sees it: one type per kind, with what the kind requires
//! present (not optional) and counts that cannot be zero. Built from a `[carriers.<name>]`
//! table that passed validation ([`CarrierConfig::settings`]), so a table that is missing
//! something never gets this far, and no carrier checks its configuration again.

use std::num::NonZeroU32;
use std::time::Duration;

use super::problems::ConfigError;
use super::{CarrierConfig, CarrierKind, VoiceFormat};
use crate::messagemedia_signature::SignatureKeys;
use crate::secret::Secret;

/// A carrier's settings: how it is reached, and its kind's own.
#[derive(Debug, Clone)]
pub struct CarrierSettings {
    pub transport: Transport,
    pub kind: KindSettings,
    /// Where the carrier sends delivery receipts (from `public_url`), when it is asked to.
    pub callback_url: Option<String>,
    /// How those receipts are proven, when the carrier is asked for them.
    pub receipts: Option<Receipts>,
    /// Whether it places calls (`CarrierConfig::places_calls`).
    pub places_calls: bool,
}

/// A carrier that sends delivery receipts to `public_url`, and what proves them.
#[derive(Debug, Clone)]
pub struct Receipts {
    /// `public_url` without a trailing slash.
    pub public_url: String,
    pub proof: ReceiptProof,
}

#[derive(Debug, Clone)]
pub enum ReceiptProof {
    /// `X-Twilio-Signature`, made with the account's auth token.
    TwilioSignature(Secret),
    /// MessageMedia's RSA signature by one of `keys`, or `secret` in the callback URL.
    MessageMedia {
        secret: Option<Secret>,
        keys: SignatureKeys,
    },
    /// Telnyx's Ed25519 signature under the account's public key.
    TelnyxSignature(ed25519_dalek::VerifyingKey),
}

/// Timeouts, limits and the circuit breaker, shared by every kind.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_per_second: Option<NonZeroU32>,
    pub max_in_flight: Option<NonZeroU32>,
    pub breaker_failures: NonZeroU32,
    pub breaker_cooldown: Duration,
}

#[derive(Debug, Clone)]
pub enum KindSettings {
    Log,
    Twilio(TwilioSettings),
    MessageMedia(MessageMediaSettings),
    Sns(SnsSettings),
    Telnyx(TelnyxSettings),
}

#[derive(Debug, Clone)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub credentials: TwilioCredentials,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    /// An explicit `status_callback`; otherwise smsgate's own callback URL.
    pub status_callback: Option<String>,
    pub base_url: Option<String>,
}

/// HTTP Basic credentials: the account's auth token, or an API key.
#[derive(Debug, Clone)]
pub enum TwilioCredentials {
    AuthToken(Secret),
    ApiKey { sid: String, secret: Secret },
}

#[derive(Debug, Clone)]
pub struct MessageMediaSettings {
    pub api_key: String,
    pub api_secret: Secret,
    pub from: Option<String>,
    pub base_url: Option<String>,
    pub voice_format: VoiceFormat,
}

#[derive(Debug, Clone)]
pub struct SnsSettings {
    pub region: String,
    pub endpoint_url: Option<String>,
    pub sender_id: Option<String>,
    pub origination_number: Option<String>,
    /// `(access_key_id, secret_access_key)`; the AWS credential chain otherwise.
    pub static_credentials: Option<(String, Secret)>,
}

#[derive(Debug, Clone)]
pub struct TelnyxSettings {
    pub api_token: Secret,
    pub from: Option<String>,
    pub messaging_profile_id: Option<String>,
    pub base_url: Option<String>,
}

impl CarrierConfig {
    /// The typed settings of this table. Validation refused every table this cannot build, so
    /// an error here names a key validation missed.
    pub(super) fn settings(&self, name: &str) -> Result<CarrierSettings, ConfigError> {
        let missing = |key: &str| {
            ConfigError::single(
                format!("carriers.{name}.{key}"),
                "is required for this kind",
            )
        };
        let transport = self.transport(name)?;
        let kind = match self.kind {
            CarrierKind::Log => KindSettings::Log,
            CarrierKind::Twilio => {
                let credentials = match (&self.api_key_sid, &self.api_key_secret, &self.auth_token)
                {
                    (Some(sid), Some(secret), _) => TwilioCredentials::ApiKey {
                        sid: sid.clone(),
                        secret: secret.clone(),
                    },
                    (_, _, Some(token)) => TwilioCredentials::AuthToken(token.clone()),
                    _ => return Err(missing("auth_token")),
                };
                KindSettings::Twilio(TwilioSettings {
                    account_sid: self
                        .account_sid
                        .clone()
                        .ok_or_else(|| missing("account_sid"))?,
                    credentials,
                    from: self.from.clone(),
                    messaging_service_sid: self.messaging_service_sid.clone(),
                    status_callback: self.status_callback.clone(),
                    base_url: self.base_url.clone(),
                })
            }
            CarrierKind::Messagemedia => KindSettings::MessageMedia(MessageMediaSettings {
                api_key: self.api_key.clone().ok_or_else(|| missing("api_key"))?,
                api_secret: self
                    .api_secret
                    .clone()
                    .ok_or_else(|| missing("api_secret"))?,
                from: self.from.clone(),
                base_url: self.base_url.clone(),
                voice_format: self.voice_format.unwrap_or_default(),
            }),
            CarrierKind::Sns => KindSettings::Sns(SnsSettings {
                region: self.region.clone().ok_or_else(|| missing("region"))?,
                endpoint_url: self.endpoint_url.clone(),
                sender_id: self.sender_id.clone(),
                origination_number: self.from.clone(),
                static_credentials: self
                    .access_key_id
                    .clone()
                    .zip(self.secret_access_key.clone()),
            }),
            CarrierKind::Telnyx => KindSettings::Telnyx(TelnyxSettings {
                api_token: self.api_token.clone().ok_or_else(|| missing("api_token"))?,
                ..self.telnyx_settings()
            }),
        };
        Ok(CarrierSettings {
            transport,
            kind,
            callback_url: self.callback_url(name),
            receipts: self.receipts(),
            places_calls: self.places_calls(),
        })
    }

    /// Timeouts, limits and the breaker, shared by every kind.
    fn transport(&self, name: &str) -> Result<Transport, ConfigError> {
        let at_least_one = |key: &str, value: u32| {
            NonZeroU32::new(value).ok_or_else(|| {
                ConfigError::single(format!("carriers.{name}.{key}"), "must be at least 1")
            })
        };
        Ok(Transport {
            connect_timeout: self.connect_timeout_ms.duration(),
            timeout: self.timeout_ms.duration(),
            max_per_second: self
                .max_per_second
                .map(|n| at_least_one("max_per_second", n))
                .transpose()?,
            max_in_flight: self
                .max_in_flight
                .map(|n| at_least_one("max_in_flight", n))
                .transpose()?,
            breaker_failures: self.breaker_failures,
            breaker_cooldown: self.breaker_cooldown_seconds.duration(),
        })
    }

    /// Telnyx's optional settings (the caller sets the required key).
    fn telnyx_settings(&self) -> TelnyxSettings {
        TelnyxSettings {
            api_token: Secret::default(),
            from: self.from.clone(),
            messaging_profile_id: self.messaging_profile_id.clone(),
            base_url: self.base_url.clone(),
        }
    }

    /// What proves this carrier's receipts; none without `public_url`, or without a proof
    /// (validation refuses such a table).
    fn receipts(&self) -> Option<Receipts> {
        let public_url = self
            .public_url
            .as_deref()?
            .trim_end_matches('/')
            .to_string();
        let proof = match self.kind {
            CarrierKind::Twilio => ReceiptProof::TwilioSignature(self.auth_token.clone()?),
            CarrierKind::Messagemedia => {
                let keys = SignatureKeys::parse(&self.callback_public_keys).ok()?;
                if self.callback_secret.is_none() && keys.is_empty() {
                    return None;
                }
                ReceiptProof::MessageMedia {
                    secret: self.callback_secret.clone(),
                    keys,
                }
            }
            CarrierKind::Telnyx => ReceiptProof::TelnyxSignature(
                super::carriers::telnyx_public_key(self.webhook_public_key.as_deref()?).ok()?,
            ),
            CarrierKind::Log | CarrierKind::Sns => return None,
        };
        Some(Receipts { public_url, proof })
    }
}
