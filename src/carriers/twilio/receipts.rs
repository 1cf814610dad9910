//! What Twilio's status callbacks prove and say: the `X-Twilio-Signature` over the URL and the
//! form parameters, and the delivery a message or call status means (docs/carriers.md,
//! "Delivery receipts").

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

use crate::domain::Status;

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
