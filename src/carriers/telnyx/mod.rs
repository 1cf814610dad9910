//! Telnyx Messaging API v2: `POST {base_url}/v2/messages` with JSON and a Bearer API key;
//! 200 with `data.id`, or `{"errors": [{"code", "title", "detail"}]}` whose codes say whose
//! fault it is (docs/carriers.md, "Telnyx"; the contract and its sources:
//! docs/research/telnyx-messaging.md). With `public_url`, each message names smsgate's webhook
//! (`receipts`). Telnyx takes no validity period, and places no calls here: a call passes it
//! over.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::http::{self, class_of_status};
use super::{Accepted, Carrier, DynCarrier, FailureClass, HttpClients, Kind, OutboundSms};
use super::{ReceiptCheck, SendError};
use crate::config::{CarrierKindConfig, CarrierSettings};
use crate::secret::Secret;

mod config;
pub mod receipts;

pub use config::Telnyx;
use config::TelnyxSettings;

impl Kind for Telnyx {
    fn build<'a>(
        &'a self,
        name: &'a str,
        settings: &'a CarrierSettings,
        http: &'a mut HttpClients,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn DynCarrier>>> {
        Box::pin(async move {
            let own = super::own::<TelnyxSettings>(settings)?;
            let webhook_url = own.webhooks.as_ref().map(|(public_url, _)| {
                super::receipts::callback_url(public_url, self.name(), name)
            });
            let client = http.get(settings.transport.connect_timeout)?;
            let carrier = TelnyxCarrier::new(own, webhook_url, settings.transport.timeout, client);
            Ok(Box::new(carrier) as Box<dyn DynCarrier>)
        })
    }

    fn receipt_media_type(&self) -> Option<&'static str> {
        Some("application/json")
    }

    fn receipts(&self, _name: &str, settings: &CarrierSettings) -> Option<Arc<dyn ReceiptCheck>> {
        let own = super::own::<TelnyxSettings>(settings).ok()?;
        let (_, key) = own.webhooks.as_ref()?;
        Some(Arc::new(receipts::Webhooks { key: *key }))
    }
}

const DEFAULT_BASE_URL: &str = "https://api.telnyx.com";

/// Error codes that are about the number itself, so no carrier would do better: not routable
/// (a landline), not a messaging destination, the recipient opted out (STOP: to be honoured
/// on every route), and a `to` Telnyx cannot read.
const RECIPIENT_CODES: [&str; 4] = ["40001", "40012", "40300", "40310"];

pub struct TelnyxCarrier {
    http: reqwest::Client,
    url: String,
    api_token: Secret,
    from: Option<String>,
    messaging_profile_id: Option<String>,
    timeout: Duration,
    /// Where Telnyx sends this message's delivery webhooks (from `public_url`).
    webhook_url: Option<String>,
}

#[derive(Serialize)]
struct SendRequest<'a> {
    to: &'a str,
    text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messaging_profile_id: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    webhook_url: Option<&'a str>,
}

#[derive(Deserialize)]
struct SendResponse {
    data: Option<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<TelnyxError>,
}

#[derive(Deserialize)]
struct TelnyxError {
    /// A string of digits in Telnyx's answers ("40310").
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

impl TelnyxError {
    fn code(&self) -> Option<String> {
        match self.code.as_ref()? {
            serde_json::Value::String(code) => Some(code.clone()),
            serde_json::Value::Number(code) => Some(code.to_string()),
            _ => None,
        }
    }
}

impl TelnyxCarrier {
    /// `webhook_url` is where smsgate takes delivery webhooks (from `public_url`).
    pub fn new(
        settings: &TelnyxSettings,
        webhook_url: Option<String>,
        timeout: Duration,
        http: reqwest::Client,
    ) -> Self {
        let base = settings.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        Self {
            http,
            url: format!("{}/v2/messages", base.trim_end_matches('/')),
            api_token: settings.api_token.clone(),
            from: settings.from.clone(),
            messaging_profile_id: settings.messaging_profile_id.clone(),
            timeout,
            webhook_url,
        }
    }
}

impl Carrier for TelnyxCarrier {
    async fn send(&self, sms: &OutboundSms) -> Result<Accepted, SendError> {
        // The route's sender, then the carrier's, then the request's; none: the messaging
        // profile's number pool picks one.
        let from = sms.senders(self.from.as_deref()).next();
        let request = SendRequest {
            to: sms.to.as_str(),
            text: &sms.body,
            from,
            messaging_profile_id: self.messaging_profile_id.as_deref(),
            kind: "SMS",
            webhook_url: self.webhook_url.as_deref(),
        };
        let request = self
            .http
            .post(&self.url)
            .bearer_auth(self.api_token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&request);
        let answer = http::send(request, self.timeout, sms.trace.as_ref()).await?;
        let (status, retry_after, body) = (answer.status, answer.retry_after, answer.body);
        if status.is_success() {
            let sent: Option<SendResponse> = serde_json::from_slice(&body).ok();
            return Ok(Accepted {
                carrier_message_id: sent.and_then(|r| r.data).and_then(|m| m.id),
                http_status: Some(status.as_u16()),
            });
        }
        let errors = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.errors)
            .unwrap_or_default();
        let first = errors.first();
        let code = first.and_then(TelnyxError::code);
        let message = match first {
            Some(error) => [error.title.as_deref(), error.detail.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": "),
            None => format!("HTTP {status} without a Telnyx error body"),
        };
        // Stored with the attempt and logged: an answer that echoes our key must not carry it.
        let token = self.api_token.expose();
        let message = match token.is_empty() {
            true => message,
            false => message.replace(token, crate::secret::REDACTED),
        };
        Err(SendError {
            class: classify(status, code.as_deref()),
            http_status: Some(status.as_u16()),
            code,
            message,
            retry_after,
            unanswered: false,
        })
    }
}

/// A code about the number fails the message; a throttle (429, or code 10011) waits; anything
/// else (our account, the sender, a carrier upstream) is this carrier's problem: fail over.
fn classify(status: reqwest::StatusCode, code: Option<&str>) -> FailureClass {
    match code {
        Some(code) if RECIPIENT_CODES.contains(&code) => FailureClass::Recipient,
        Some("10011") => FailureClass::Throttled,
        _ => class_of_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn codes_about_the_number_fail_the_message_and_the_rest_fail_over() {
        for code in RECIPIENT_CODES {
            assert_eq!(
                classify(StatusCode::BAD_REQUEST, Some(code)),
                FailureClass::Recipient,
                "{code}"
            );
        }
        // A sender the profile does not hold, an unfunded account: another carrier may send.
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, Some("40305")),
            FailureClass::Carrier
        );
        assert_eq!(
            classify(StatusCode::PAYMENT_REQUIRED, Some("20100")),
            FailureClass::Carrier
        );
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, None),
            FailureClass::Carrier
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some("10011")),
            FailureClass::Throttled
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None),
            FailureClass::Carrier
        );
    }
}
