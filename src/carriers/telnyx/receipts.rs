//! What Telnyx's delivery webhooks prove and say. Telnyx signs `{telnyx-timestamp}|{raw body}`
//! with Ed25519 (`telnyx-signature-ed25519`, base64) under the account's public key shown in
//! its portal; its official SDKs accept a timestamp within 300 seconds either way. A
//! `message.finalized` event carries the message (`data.payload.id`) and its recipient's
//! status (docs/carriers.md, "Telnyx"; sources in docs/research/telnyx-messaging.md).

use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;

use crate::carriers::receipts::{CallbackRequest, DeliveryFailure, Proof, Receipt, ReceiptCheck};
use crate::domain::Status;

/// One carrier's webhooks, signed under `key`.
pub struct Webhooks {
    pub key: VerifyingKey,
}

impl ReceiptCheck for Webhooks {
    /// Signed over its timestamp and body; the route then holds the timestamp to the
    /// database's clock (a replay is refused).
    fn prove(&self, request: &CallbackRequest) -> Result<Proof, &'static str> {
        let (Some(timestamp), Some(signature)) = (
            request.header_str(TIMESTAMP_HEADER),
            request.header_str(SIGNATURE_HEADER),
        ) else {
            return Err("unsigned");
        };
        let Some(signed_at) = timestamp_seconds(timestamp) else {
            return Err("unreadable timestamp");
        };
        if !signed(&self.key, timestamp, &request.body, signature) {
            return Err("bad signature");
        }
        Ok(Proof::SignedAt {
            signed_at,
            tolerance_seconds: TOLERANCE_SECONDS,
        })
    }

    fn read(&self, body: &[u8]) -> Result<Receipt, String> {
        let webhook: Webhook = crate::domain::json::object(body)?;
        let (verdict, error_code) = (webhook.verdict(), webhook.error_code());
        let failure = (verdict == Some(Status::Undelivered))
            .then(|| DeliveryFailure::of_code(error_code.as_deref(), &RECIPIENT_CODES));
        Ok(Receipt {
            verdict,
            error_code,
            carrier_message_id: webhook.data.payload.id,
            failure,
        })
    }
}

/// Telnyx's messaging error codes (developers.telnyx.com/docs/messaging/messages/error-codes)
/// that say the number itself cannot take the message: 10001 inactive number, 10002 invalid
/// number, 40001 a landline or non-routable number, 40012 invalid destination (unowned,
/// deactivated), 40300 opted out (STOP), 40301 and 40319 a message type the number cannot
/// take, 40310 invalid `to`. Every other code (40002 spam filter, 40004 rejected for an
/// unknown reason, 40005 and 40014 expired, 40006 recipient server unavailable, 40008
/// undeliverable, …) is a route failure.
pub const RECIPIENT_CODES: [&str; 8] = [
    "10001", "10002", "40001", "40012", "40300", "40301", "40310", "40319",
];

pub const SIGNATURE_HEADER: &str = "telnyx-signature-ed25519";
pub const TIMESTAMP_HEADER: &str = "telnyx-timestamp";
/// How far a webhook's timestamp may be from the database's clock, either way.
pub const TOLERANCE_SECONDS: i64 = 300;

/// Whether `signature` (base64) is Telnyx's over `timestamp` and `body`.
pub fn signed(key: &VerifyingKey, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&bytes) else {
        return false;
    };
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'|');
    message.extend_from_slice(body);
    // Strict: refuses small-order keys and non-canonical signatures that plain RFC 8032
    // verification lets through.
    key.verify_strict(&message, &signature).is_ok()
}

/// A timestamp of digits only (unix seconds), or none: anything else is refused, not let
/// through unchecked.
pub fn timestamp_seconds(timestamp: &str) -> Option<i64> {
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    timestamp.parse().ok()
}

/// The webhook's envelope, as far as smsgate reads it.
#[derive(Deserialize)]
pub struct Webhook {
    pub data: Event,
}

#[derive(Deserialize)]
pub struct Event {
    pub event_type: String,
    pub payload: Payload,
}

#[derive(Deserialize)]
pub struct Payload {
    /// The message id the send's answer gave (`data.id`).
    pub id: String,
    #[serde(default)]
    pub to: Vec<Recipient>,
    #[serde(default)]
    pub errors: Vec<PayloadError>,
}

#[derive(Deserialize)]
pub struct Recipient {
    pub status: String,
}

#[derive(Deserialize)]
pub struct PayloadError {
    #[serde(default)]
    pub code: Option<serde_json::Value>,
}

impl Webhook {
    /// What the event says about delivery: only a final status counts (`message.sent`, a
    /// queued or an unconfirmed delivery says nothing yet).
    pub fn verdict(&self) -> Option<Status> {
        if self.data.event_type != "message.finalized" {
            return None;
        }
        match self.data.payload.to.first()?.status.as_str() {
            "delivered" => Some(Status::Delivered),
            "delivery_failed" | "sending_failed" | "expired" => Some(Status::Undelivered),
            _ => None,
        }
    }

    /// The first error's code, as text.
    pub fn error_code(&self) -> Option<String> {
        match self.data.payload.errors.first()?.code.as_ref()? {
            serde_json::Value::String(code) => Some(code.clone()),
            serde_json::Value::Number(code) => Some(code.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let signing = SigningKey::from_bytes(&[7u8; 32]);
        let key = signing.verifying_key();
        let body = br#"{"data":{}}"#;
        let signature = base64::engine::general_purpose::STANDARD
            .encode(signing.sign(b"1700000000|{\"data\":{}}").to_bytes());
        assert!(signed(&key, "1700000000", body, &signature));
        assert!(!signed(&key, "1700000001", body, &signature));
        assert!(!signed(&key, "1700000000", br#"{"data":[]}"#, &signature));
        assert!(!signed(&key, "1700000000", body, "not base64!"));
        assert!(!signed(&key, "1700000000", body, "AAAA"));
    }

    #[test]
    fn a_small_order_key_verifies_no_forgery() {
        // The identity point as the key, and R = identity, s = 0 as the signature: plain
        // verification accepts it for any message; strict verification does not.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let key = VerifyingKey::from_bytes(&identity).expect("a point");
        let mut forged = [0u8; 64];
        forged[0] = 1;
        let forged = base64::engine::general_purpose::STANDARD.encode(forged);
        assert!(!signed(&key, "1700000000", b"{}", &forged));
    }

    #[test]
    fn only_digit_timestamps_are_read() {
        assert_eq!(timestamp_seconds("1700000000"), Some(1_700_000_000));
        for bad in ["", "-5", "1e9", " 17", "99999999999999999999"] {
            assert_eq!(timestamp_seconds(bad), None, "{bad:?}");
        }
    }
}
