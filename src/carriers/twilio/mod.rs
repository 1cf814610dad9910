//! Twilio Programmable Messaging: `POST {base_url}/2010-04-01/Accounts/{sid}/Messages.json`,
//! form-encoded, HTTP Basic; 201 with the message resource on success. Calls (voice requests):
//! `POST …/Calls.json` with `To`, `From` and inline `Twiml`; 201 with the call resource. Error codes and their
//! classes follow Twilio's error dictionary (docs/design.md, "Carriers and failure classes").

use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;

mod config;
pub mod receipts;
mod twiml;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::http::{self, class_of_status};
use super::{Accepted, Carrier, DynCarrier, FailureClass, HttpClients, Kind, OutboundSms};
use super::{ReceiptCheck, SendError};
use crate::config::{CarrierKindConfig, CarrierSettings, is_e164};
use crate::domain::Channel;
use crate::secret::Secret;
pub use config::Twilio;
use config::{TwilioCredentials, TwilioSettings};

const DEFAULT_BASE_URL: &str = "https://api.twilio.com";
/// Twilio's `ValidityPeriod` range, in seconds.
const VALIDITY_RANGE: (u64, u64) = (1, 36_000);

/// Codes about the recipient or the message itself: every carrier would refuse them.
const RECIPIENT_CODES: [i64; 7] = [21211, 21614, 21610, 21635, 21604, 21602, 21617];
/// Codes that mean "slow down": 20429 REST concurrency, 21611 sender queue full.
const THROTTLE_CODES: [i64; 2] = [20429, 21611];

impl Kind for Twilio {
    fn build<'a>(
        &'a self,
        name: &'a str,
        settings: &'a CarrierSettings,
        http: &'a mut HttpClients,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn DynCarrier>>> {
        Box::pin(async move {
            let own = super::own::<TwilioSettings>(settings)?;
            let callback_url = own.receipts.as_ref().map(|(public_url, _)| {
                super::receipts::callback_url(public_url, self.name(), name)
            });
            let client = http.get(settings.transport.connect_timeout)?;
            let carrier = TwilioCarrier::new(own, callback_url, settings.transport.timeout, client);
            Ok(Box::new(carrier) as Box<dyn DynCarrier>)
        })
    }

    fn receipt_media_type(&self) -> Option<&'static str> {
        Some("application/x-www-form-urlencoded")
    }

    fn receipts(&self, name: &str, settings: &CarrierSettings) -> Option<Arc<dyn ReceiptCheck>> {
        let own = super::own::<TwilioSettings>(settings).ok()?;
        let (public_url, auth_token) = own.receipts.clone()?;
        Some(Arc::new(receipts::StatusCallbacks {
            url: super::receipts::callback_url(&public_url, self.name(), name),
            auth_token,
        }))
    }
}

pub struct TwilioCarrier {
    http: reqwest::Client,
    url: String,
    calls_url: String,
    username: String,
    password: Secret,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    status_callback: Option<String>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct MessageResource {
    sid: Option<String>,
}

#[derive(Deserialize)]
struct TwilioError {
    code: Option<i64>,
    message: Option<String>,
}

impl TwilioCarrier {
    /// `callback_url` is where smsgate takes Twilio's status callbacks (from `public_url`);
    /// an explicit `status_callback` wins.
    pub fn new(
        settings: &TwilioSettings,
        callback_url: Option<String>,
        timeout: Duration,
        http: reqwest::Client,
    ) -> Self {
        let account_sid = &settings.account_sid;
        let (username, password) = match &settings.credentials {
            TwilioCredentials::ApiKey { sid, secret } => (sid.clone(), secret.clone()),
            TwilioCredentials::AuthToken(token) => (account_sid.clone(), token.clone()),
        };
        let base = settings
            .base_url
            .as_deref()
            .unwrap_or(DEFAULT_BASE_URL)
            .trim_end_matches('/');
        Self {
            http,
            url: format!("{base}/2010-04-01/Accounts/{account_sid}/Messages.json"),
            calls_url: format!("{base}/2010-04-01/Accounts/{account_sid}/Calls.json"),
            username,
            password,
            from: settings.from.clone(),
            messaging_service_sid: settings.messaging_service_sid.clone(),
            status_callback: settings.status_callback.clone().or(callback_url),
            timeout,
        }
    }

    /// A call: the text said twice by `<Say>` (`twiml`), from a number.
    fn call_form(&self, sms: &OutboundSms) -> Vec<(&'static str, String)> {
        let from = sms
            .route_sender
            .clone()
            .filter(|sender| is_e164(sender))
            .or_else(|| self.from.clone())
            .unwrap_or_default();
        let mut form = vec![
            ("To", sms.to.as_str().to_string()),
            ("From", from),
            (
                "Twiml",
                twiml::verification_call(&sms.body, sms.locale.as_deref()),
            ),
        ];
        if let Some(callback) = &self.status_callback {
            form.push(("StatusCallback", callback.clone()));
        }
        form
    }

    fn form(&self, sms: &OutboundSms) -> Vec<(&'static str, String)> {
        let mut form = vec![
            ("To", sms.to.as_str().to_string()),
            ("Body", sms.body.clone()),
        ];
        // The route's sender, then the carrier's, then (without a Messaging Service) the
        // request's.
        let configured = sms.route_sender.clone().or_else(|| self.from.clone());
        let sender = configured.or_else(|| {
            // With a Messaging Service the pool picks the sender; otherwise the request's.
            self.messaging_service_sid
                .is_none()
                .then(|| sms.sender.clone())
                .flatten()
        });
        if let Some(from) = sender {
            form.push(("From", from));
        }
        // A route's sender is sent as `From` beside the Messaging Service, which then uses it.
        if let Some(service) = &self.messaging_service_sid {
            form.push(("MessagingServiceSid", service.clone()));
        }
        let validity = sms
            .validity
            .as_secs()
            .clamp(VALIDITY_RANGE.0, VALIDITY_RANGE.1);
        form.push(("ValidityPeriod", validity.to_string()));
        if let Some(callback) = &self.status_callback {
            form.push(("StatusCallback", callback.clone()));
        }
        form
    }
}

impl Carrier for TwilioCarrier {
    async fn send(&self, sms: &OutboundSms) -> Result<Accepted, SendError> {
        let (url, form) = match sms.channel {
            Channel::Sms => (&self.url, self.form(sms)),
            Channel::Voice => (&self.calls_url, self.call_form(sms)),
        };
        let request = self
            .http
            .post(url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .form(&form);
        let answer = http::send(request, self.timeout, sms.trace.as_ref()).await?;
        let (status, retry_after, body) = (answer.status, answer.retry_after, answer.body);
        if status.is_success() {
            let resource: Option<MessageResource> = serde_json::from_slice(&body).ok();
            return Ok(Accepted {
                carrier_message_id: resource.and_then(|r| r.sid),
                http_status: Some(status.as_u16()),
            });
        }
        let error: Option<TwilioError> = serde_json::from_slice(&body).ok();
        let code = error.as_ref().and_then(|e| e.code);
        Err(SendError {
            class: classify(status, code),
            http_status: Some(status.as_u16()),
            code: code.map(|c| c.to_string()),
            message: error
                .and_then(|e| e.message)
                .unwrap_or_else(|| format!("HTTP {status} without a Twilio error body")),
            retry_after,
            unanswered: false,
        })
    }
}

/// Maps an HTTP status and Twilio error code to a routing class.
fn classify(status: StatusCode, code: Option<i64>) -> FailureClass {
    match code {
        Some(code) if RECIPIENT_CODES.contains(&code) => FailureClass::Recipient,
        Some(code) if THROTTLE_CODES.contains(&code) => FailureClass::Throttled,
        // 5xx, 401/403 (20003) and route/permission codes (21408, 21612, 21606, …): this
        // carrier cannot take it now, another may.
        _ => class_of_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_codes_fail_the_message_and_others_fail_over() {
        let bad_request = StatusCode::BAD_REQUEST;
        assert_eq!(classify(bad_request, Some(21211)), FailureClass::Recipient);
        assert_eq!(classify(bad_request, Some(21610)), FailureClass::Recipient);
        assert_eq!(classify(bad_request, Some(21408)), FailureClass::Carrier);
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, Some(20003)),
            FailureClass::Carrier
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(20429)),
            FailureClass::Throttled
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, None),
            FailureClass::Throttled
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, None),
            FailureClass::Carrier
        );
    }
}
