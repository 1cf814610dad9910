//! AWS SNS `Publish` to a phone number through the official SDK, so the standard credential
//! chain works (environment, profile, web identity / IRSA, container and instance metadata).
//! Always `Transactional`: these are one-time codes. SNS reports opted-out numbers and an
//! exhausted spend limit only asynchronously (delivery-status logs), never in the Publish
//! answer, so those failures cannot fail over (docs/design.md, "Carriers and failure classes").

use aws_sdk_sns::Client;
use aws_sdk_sns::config::timeout::TimeoutConfig;
use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
use aws_sdk_sns::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sns::types::MessageAttributeValue;

use futures_util::future::BoxFuture;

use super::SendError;
use super::{Accepted, Carrier, DynCarrier, FailureClass, HttpClients, Kind, OutboundSms};
use crate::config::{CarrierSettings, Transport};

mod config;

pub use config::Sns;
use config::SnsSettings;

impl Kind for Sns {
    /// Through the AWS SDK's own HTTP client, not `http`.
    fn build<'a>(
        &'a self,
        _name: &'a str,
        settings: &'a CarrierSettings,
        _http: &'a mut HttpClients,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn DynCarrier>>> {
        Box::pin(async move {
            let own = super::own::<SnsSettings>(settings)?;
            let carrier = SnsCarrier::new(own, &settings.transport).await;
            Ok(Box::new(carrier) as Box<dyn DynCarrier>)
        })
    }
}

pub struct SnsCarrier {
    client: Client,
    sender_id: Option<String>,
    origination_number: Option<String>,
}

impl SnsCarrier {
    pub async fn new(settings: &SnsSettings, transport: &Transport) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(transport.connect_timeout)
            .operation_timeout(transport.timeout)
            .build();
        // The dispatcher fails over and retries itself; SDK retries would only hide failures
        // and spend the code's lifetime.
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        if let Some((id, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret.expose(),
                None,
                None,
                "smsgate-config",
            ));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let client = Client::new(&loader.load().await);
        Self {
            client,
            sender_id: settings.sender_id.clone(),
            origination_number: settings.origination_number.clone(),
        }
    }

    /// The route's sender wins, as a number or a sender ID; then a configured origination
    /// number or sender ID; otherwise the request's sender, as a number if it looks like one,
    /// else as a sender ID.
    fn senders(&self, sms: &OutboundSms) -> (Option<String>, Option<String>) {
        if let Some(route) = &sms.route_sender {
            return match route.starts_with('+') {
                true => (Some(route.clone()), None),
                false => (None, Some(route.clone())),
            };
        }
        let request_sender = sms.sender.clone();
        let is_number = |s: &String| s.starts_with('+');
        let origination = self
            .origination_number
            .clone()
            .or_else(|| request_sender.clone().filter(is_number));
        let sender_id = self.sender_id.clone().or_else(|| {
            (self.origination_number.is_none())
                .then(|| request_sender.filter(|s| !is_number(s)))
                .flatten()
        });
        (origination, sender_id)
    }
}

fn string_attribute(value: &str) -> Result<MessageAttributeValue, SendError> {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .map_err(|err| SendError::new(FailureClass::Carrier, err.to_string()))
}

impl Carrier for SnsCarrier {
    async fn send(&self, sms: &OutboundSms) -> Result<Accepted, SendError> {
        let (origination, sender_id) = self.senders(sms);
        let mut publish = self
            .client
            .publish()
            .phone_number(sms.to.as_str())
            .message(&sms.body)
            .message_attributes("AWS.SNS.SMS.SMSType", string_attribute("Transactional")?);
        if let Some(sender_id) = sender_id {
            publish =
                publish.message_attributes("AWS.SNS.SMS.SenderID", string_attribute(&sender_id)?);
        }
        if let Some(number) = origination {
            publish = publish
                .message_attributes("AWS.MM.SMS.OriginationNumber", string_attribute(&number)?);
        }
        match publish.send().await {
            Ok(output) => Ok(Accepted {
                carrier_message_id: output.message_id,
                http_status: Some(200),
            }),
            Err(err) => Err(classify(err)),
        }
    }
}

fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: SdkError<E, aws_sdk_sns::config::http::HttpResponse>,
) -> SendError {
    match err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let headers = service.raw().headers();
            let retry_after =
                super::http::retry_after_of(headers.get("retry-after"), headers.get("date"));
            let code = service.err().code().map(str::to_string);
            let message = service
                .err()
                .message()
                .unwrap_or("SNS refused the message")
                .to_string();
            SendError {
                class: class_of(status, code.as_deref(), &message),
                http_status: Some(status),
                code,
                message,
                retry_after,
                unanswered: false,
            }
        }
        SdkError::TimeoutError(_) => {
            SendError::new(FailureClass::Timeout, "SNS did not answer in time")
        }
        SdkError::DispatchFailure(failure) => {
            let class = if failure.is_timeout() {
                FailureClass::Timeout
            } else {
                FailureClass::Carrier
            };
            let detail = failure
                .as_connector_error()
                .map(|e| format!("{e}: {:?}", std::error::Error::source(e)))
                .unwrap_or_else(|| "request could not be sent".into());
            // The SDK does not say whether the request went out before the failure.
            SendError {
                unanswered: true,
                ..SendError::new(class, format!("SNS unreachable: {detail}"))
            }
        }
        other => SendError::new(FailureClass::Carrier, format!("SNS call failed: {other}")),
    }
}

/// `InvalidParameter` about the number or the message fails the message; about a sender
/// attribute it is our configuration. Throttling retries; auth, 5xx and the rest fail over.
fn class_of(status: u16, code: Option<&str>, message: &str) -> FailureClass {
    let code = code.unwrap_or_default();
    if status == 429 || code.starts_with("Throttl") {
        return FailureClass::Throttled;
    }
    let invalid = matches!(
        code,
        "InvalidParameter" | "ParameterValueInvalid" | "ValidationException"
    );
    let about_a_sender = message.contains("SenderID")
        || message.contains("OriginationNumber")
        || message.contains("attribute");
    if invalid && !about_a_sender {
        FailureClass::Recipient
    } else {
        FailureClass::Carrier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sns_errors_are_classified_by_code_and_subject() {
        let bad_number = "Invalid parameter: PhoneNumber Reason: +1555 is not valid to publish to";
        assert_eq!(
            class_of(400, Some("InvalidParameter"), bad_number),
            FailureClass::Recipient
        );
        let bad_sender =
            "Invalid parameter: The message attribute 'AWS.SNS.SMS.SenderID' is invalid";
        assert_eq!(
            class_of(400, Some("InvalidParameter"), bad_sender),
            FailureClass::Carrier
        );
        assert_eq!(
            class_of(403, Some("AuthorizationError"), ""),
            FailureClass::Carrier
        );
        assert_eq!(
            class_of(400, Some("Throttling"), ""),
            FailureClass::Throttled
        );
        assert_eq!(class_of(429, None, ""), FailureClass::Throttled);
        assert_eq!(
            class_of(500, Some("InternalError"), ""),
            FailureClass::Carrier
        );
    }
}
