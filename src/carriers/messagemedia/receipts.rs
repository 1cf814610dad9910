//! What MessageMedia's delivery reports say: the report's body and the delivery its status
//! means (the proof, a signature or the secret in the URL, is checked by the callback route
//! with `messagemedia_signature`; docs/carriers.md, "Delivery receipts").

use serde::Deserialize;

use crate::domain::Status;

#[derive(Deserialize)]
/// A delivery report's body: which message, and what became of it.
pub struct DeliveryReport {
    pub message_id: String,
    pub status: String,
    #[serde(default)]
    pub error_code: Option<String>,
}

/// What a report's status says about delivery.
pub fn verdict(status: &str) -> Option<Status> {
    match status {
        "delivered" => Some(Status::Delivered),
        "failed" | "expired" | "rejected" => Some(Status::Undelivered),
        _ => None,
    }
}
