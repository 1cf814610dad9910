//! What Twilio's status callbacks prove and say: the `X-Twilio-Signature` over the URL and the
//! form parameters, and the delivery a message or call status means (docs/carriers.md,
//! "Delivery receipts").

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

use crate::carriers::receipts::{CallbackRequest, DeliveryFailure, Proof, Receipt, ReceiptCheck};
use crate::domain::Status;
use crate::secret::Secret;

/// One carrier's status callbacks: signed with its auth token over `url` and the query.
pub struct StatusCallbacks {
    /// The callback URL handed to Twilio, without a query.
    pub url: String,
    pub auth_token: Secret,
}

impl ReceiptCheck for StatusCallbacks {
    fn prove(&self, request: &CallbackRequest) -> Result<Proof, &'static str> {
        let params: Vec<(String, String)> =
            form_urlencoded::parse(&request.body).into_owned().collect();
        let url = match &request.query {
            Some(query) => format!("{}?{query}", self.url),
            None => self.url.clone(),
        };
        let expected = twilio_signature(self.auth_token.expose(), &url, &params);
        let given = request.header("x-twilio-signature").unwrap_or_default();
        if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(given)) {
            return Err("X-Twilio-Signature does not match");
        }
        Ok(Proof::Proven)
    }

    /// A message's status callback, or (for a call) the call's.
    fn read(&self, body: &[u8]) -> Result<Receipt, String> {
        let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let field = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        };
        let verdict = match (field("MessageSid"), field("MessageStatus")) {
            (Some(sid), Some(status)) => Some((sid, message_verdict(status))),
            _ => field("CallSid")
                .zip(field("CallStatus"))
                .map(|(sid, status)| (sid, call_verdict(status))),
        };
        let Some((sid, verdict)) = verdict else {
            return Err(
                "MessageSid and MessageStatus (or CallSid and CallStatus) are required".into(),
            );
        };
        let error_code = field("ErrorCode").map(str::to_string);
        let failure = (verdict == Some(Status::Undelivered)).then(|| match field("CallStatus") {
            Some(status) if field("MessageSid").is_none() => call_failure(status),
            _ => DeliveryFailure::of_code(error_code.as_deref(), &RECIPIENT_CODES),
        });
        Ok(Receipt {
            carrier_message_id: sid.to_string(),
            verdict,
            error_code,
            failure,
        })
    }
}

/// `X-Twilio-Signature`: Base64(HMAC-SHA1(auth token, URL + every parameter as name + value,
/// sorted by name)).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = match Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// What a Twilio message status says about delivery.
pub fn message_verdict(status: &str) -> Option<Status> {
    match status {
        "delivered" => Some(Status::Delivered),
        "undelivered" | "failed" => Some(Status::Undelivered),
        _ => None,
    }
}

/// Twilio's error codes (twilio.com/docs/api/errors/<code>) that say the number itself cannot
/// take the message: 21211 invalid `To`, 21610 unsubscribed (replied STOP), 21614 not a
/// mobile number, 30004 blocked by the recipient, 30005 unknown or unallocated handset, 30006
/// a landline or a carrier that cannot reach it. Every other code (30003 unreachable handset,
/// 30007 carrier filtering, 30008 unknown, 30034 unregistered sender, …) is a route failure.
pub const RECIPIENT_CODES: [&str; 6] = ["21211", "21610", "21614", "30004", "30005", "30006"];

/// Why a call was never heard: a call that failed is the route's doing; busy, unanswered or
/// canceled is the person's, and another carrier's call would ring the same phone.
fn call_failure(status: &str) -> DeliveryFailure {
    match status {
        "failed" => DeliveryFailure::Route,
        _ => DeliveryFailure::Recipient,
    }
}

/// What a Twilio call status says: answered and played, or never heard.
pub fn call_verdict(status: &str) -> Option<Status> {
    match status {
        "completed" => Some(Status::Delivered),
        "busy" | "no-answer" | "failed" | "canceled" => Some(Status::Undelivered),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_url_and_every_parameter_sorted_by_name() {
        let params = vec![
            ("MessageStatus".to_string(), "delivered".to_string()),
            ("MessageSid".to_string(), "SM123".to_string()),
        ];
        let url = "https://sms.example.com/v1/callbacks/twilio/t";
        let signature = twilio_signature("token", url, &params);
        // Independently: the same bytes through a fresh HMAC, in sorted order.
        let mut mac = Hmac::<Sha1>::new_from_slice(b"token").expect("any key length");
        mac.update(
            b"https://sms.example.com/v1/callbacks/twilio/tMessageSidSM123MessageStatusdelivered",
        );
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(signature, expected);
        assert_ne!(signature, twilio_signature("other", url, &params));
        assert_ne!(
            signature,
            twilio_signature("token", "https://evil.example/x", &params)
        );
    }
}
