//! MessageMedia (Sinch) Messages API: `POST {base_url}/v1/messages` with JSON, HTTP Basic
//! `api_key:api_secret`; 202 with `messages[0].message_id`. One message per request, because
//! one invalid message voids a whole batch (docs/design.md, "Carriers and failure classes").

use std::time::Duration;

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

mod config;
pub mod receipts;
pub mod signature;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::http::{self, class_of_status};
use super::{Accepted, Carrier, DynCarrier, FailureClass, HttpClients, Kind, OutboundSms};
use super::{ReceiptCheck, SendError};
use crate::config::{CarrierKindConfig, CarrierSettings, is_e164};
use crate::domain::Channel;
use crate::secret::Secret;
pub use config::MessageMedia;
use config::{MessageMediaSettings, VoiceFormat};

const DEFAULT_BASE_URL: &str = "https://api.messagemedia.com";

impl Kind for MessageMedia {
    fn build<'a>(
        &'a self,
        name: &'a str,
        settings: &'a CarrierSettings,
        http: &'a mut HttpClients,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn DynCarrier>>> {
        Box::pin(async move {
            let own = super::own::<MessageMediaSettings>(settings)?;
            let client = http.get(settings.transport.connect_timeout)?;
            let callback_url = callback_url(own, name);
            let carrier =
                MessageMediaCarrier::new(own, callback_url, settings.transport.timeout, client);
            Ok(Box::new(carrier) as Box<dyn DynCarrier>)
        })
    }

    fn receipt_media_type(&self) -> Option<&'static str> {
        Some("application/json")
    }

    fn receipts(&self, name: &str, settings: &CarrierSettings) -> Option<Arc<dyn ReceiptCheck>> {
        let own = super::own::<MessageMediaSettings>(settings).ok()?;
        let public_url = own.public_url.as_deref()?;
        if own.callback_secret.is_none() && own.keys.is_empty() {
            return None;
        }
        let base_path = reqwest::Url::parse(public_url)
            .map(|url| url.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        Some(Arc::new(receipts::DeliveryReports {
            secret: own.callback_secret.clone(),
            keys: own.keys.clone(),
            request_target: format!("POST {base_path}/v1/callbacks/{}/{name}", self.name()),
        }))
    }
}

/// Where reports go: with signature keys the plain callback URL, otherwise the URL with the
/// callback secret in its query.
fn callback_url(settings: &MessageMediaSettings, name: &str) -> Option<String> {
    let public_url = settings.public_url.as_deref()?;
    let url = super::receipts::callback_url(public_url, MessageMedia.name(), name);
    if !settings.keys.is_empty() {
        // Signed reports need no secret, so none goes into a URL that logs record.
        return Some(url);
    }
    let secret = settings
        .callback_secret
        .as_ref()
        .map(Secret::expose)
        .unwrap_or("");
    // Encoded: a base64 secret's `+ / =` would otherwise arrive decoded as other characters
    // (`+` as a space) and the report would be refused.
    let key: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    Some(format!("{url}?key={key}"))
}

pub struct MessageMediaCarrier {
    http: reqwest::Client,
    url: String,
    api_key: Secret,
    api_secret: Secret,
    from: Option<String>,
    voice_format: VoiceFormat,
    timeout: Duration,
    /// Holds the callback secret: never logged.
    callback_url: Option<String>,
}

#[derive(Serialize)]
struct SendRequest<'a> {
    messages: [OutgoingMessage<'a>; 1],
}

#[derive(Serialize)]
struct OutgoingMessage<'a> {
    content: &'a str,
    destination_number: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_number: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_number_type: Option<&'static str>,
    format: &'static str,
    /// The code's expiry: MessageMedia drops the message rather than deliver it late.
    message_expiry_timestamp: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    delivery_report: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    callback_url: Option<&'a str>,
}

#[derive(Deserialize)]
struct SendResponse {
    #[serde(default)]
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    message_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: Option<String>,
    #[serde(default)]
    details: Vec<String>,
}

impl MessageMediaCarrier {
    /// `callback_url` is where smsgate takes delivery reports (from `public_url`).
    pub fn new(
        settings: &MessageMediaSettings,
        callback_url: Option<String>,
        timeout: Duration,
        http: reqwest::Client,
    ) -> Self {
        let base = settings.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Self {
            callback_url,
            http,
            url: format!("{}/v1/messages", base.trim_end_matches('/')),
            api_key: settings.api_key.clone(),
            api_secret: settings.api_secret.clone(),
            from: settings.from.clone(),
            voice_format: settings.voice_format,
            timeout,
        }
    }
}

/// MessageMedia wants the kind of sender spelled out when it is not a phone number.
fn source_type(source: &str) -> &'static str {
    if source.starts_with('+') {
        "INTERNATIONAL"
    } else if source.chars().all(|c| c.is_ascii_digit()) {
        "SHORTCODE"
    } else {
        "ALPHANUMERIC"
    }
}

impl Carrier for MessageMediaCarrier {
    async fn send(&self, sms: &OutboundSms) -> Result<Accepted, SendError> {
        // The route's sender, then the carrier's, then the request's; a call comes from a
        // number only (none: MessageMedia's own).
        let mut candidates = sms.senders(self.from.as_deref());
        let source = match sms.channel {
            Channel::Sms => candidates.next(),
            Channel::Voice => candidates.find(|s| is_e164(s)),
        };
        let request = SendRequest {
            messages: [OutgoingMessage {
                content: &sms.body,
                destination_number: sms.to.as_str(),
                source_number: source,
                source_number_type: source.map(source_type),
                // A spoken message: `voice_format` ("VOICE", or the OpenAPI's "TTS").
                format: match sms.channel {
                    Channel::Sms => "SMS",
                    Channel::Voice => self.voice_format.as_str(),
                },
                // The message's own expiry (database clock), never the gateway's now + validity.
                message_expiry_timestamp: sms.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                delivery_report: self.callback_url.is_some(),
                callback_url: self.callback_url.as_deref(),
            }],
        };
        let request = self
            .http
            .post(&self.url)
            .basic_auth(self.api_key.expose(), Some(self.api_secret.expose()))
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&request);
        let answer = http::send(request, self.timeout, sms.trace.as_ref()).await?;
        let (status, retry_after, body) = (answer.status, answer.retry_after, answer.body);
        if status.is_success() {
            let sent: Option<SendResponse> = serde_json::from_slice(&body).ok();
            let id = sent
                .and_then(|r| r.messages.into_iter().next())
                .and_then(|m| m.message_id);
            return Ok(Accepted {
                carrier_message_id: id,
                http_status: Some(status.as_u16()),
            });
        }
        let error: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let details = error
            .as_ref()
            .map(|e| e.details.join("; "))
            .unwrap_or_default();
        let class = classify(status, &details);
        let message = match error.and_then(|e| e.message) {
            Some(message) if details.is_empty() => message,
            Some(message) => format!("{message} ({details})"),
            None => format!("HTTP {status} without a MessageMedia error body"),
        };
        Err(SendError {
            class,
            http_status: Some(status.as_u16()),
            code: None,
            message,
            retry_after,
            unanswered: false,
        })
    }
}

/// A 400 names the offending field in `details`: the destination or the content is about the
/// message itself; anything else (the source number, our account) is this carrier's problem.
fn classify(status: reqwest::StatusCode, details: &str) -> FailureClass {
    let about_the_message = details.contains("destination_number") || details.contains("/content");
    if status == reqwest::StatusCode::BAD_REQUEST && about_the_message {
        FailureClass::Recipient
    } else {
        class_of_status(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn a_bad_destination_fails_the_message_and_a_bad_source_fails_over() {
        let bad_destination = "/messages/0/destination_number: International address must be between 8 and 15 characters";
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, bad_destination),
            FailureClass::Recipient
        );
        assert_eq!(
            classify(
                StatusCode::BAD_REQUEST,
                "/messages/0/source_number: not registered"
            ),
            FailureClass::Carrier
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, ""),
            FailureClass::Carrier
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, ""),
            FailureClass::Throttled
        );
        assert_eq!(classify(StatusCode::BAD_GATEWAY, ""), FailureClass::Carrier);
    }

    #[test]
    fn sender_kinds_are_named() {
        assert_eq!(source_type("+61491570157"), "INTERNATIONAL");
        assert_eq!(source_type("12345"), "SHORTCODE");
        assert_eq!(source_type("ACME"), "ALPHANUMERIC");
    }
}
