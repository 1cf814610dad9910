//! What proves MessageMedia's delivery reports (an RSA signature, `signature`, or the secret
//! in the callback URL) and what they say (docs/carriers.md, "Delivery receipts").

use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::signature::{SignatureKeys, SignedRequest};
use crate::carriers::receipts::{CallbackRequest, DeliveryFailure, Proof, Receipt, ReceiptCheck};
use crate::domain::Status;
use crate::secret::Secret;

const SIGNATURE: &str = "x-messagemedia-signature";

/// One carrier's delivery reports.
pub struct DeliveryReports {
    /// Proves unsigned reports when set.
    pub secret: Option<Secret>,
    /// Prove signed reports when not empty.
    pub keys: SignatureKeys,
    /// `POST <public_url's path>/v1/callbacks/messagemedia/<name>`: what MessageMedia signs
    /// before the query, whatever path a proxy in between forwards to us.
    pub request_target: String,
}

impl ReceiptCheck for DeliveryReports {
    /// A signed report, when the carrier has keys, costs an RSA check; a cheap look at the
    /// signature refuses most forgeries first.
    fn costly(&self, request: &CallbackRequest) -> Result<bool, &'static str> {
        match self.with_signed_request(request, SignatureKeys::precheck) {
            Some(Err(why)) => Err(why),
            Some(Ok(())) => Ok(true),
            None => Ok(false),
        }
    }

    /// By a signature when the carrier has keys and the report is signed, otherwise by the
    /// secret in its URL.
    fn prove(&self, request: &CallbackRequest) -> Result<Proof, &'static str> {
        if let Some(verdict) = self.with_signed_request(request, SignatureKeys::verify) {
            return verdict.map(|()| Proof::Proven);
        }
        let Some(secret) = &self.secret else {
            return Err("the report is not signed");
        };
        let given = request
            .query
            .as_deref()
            .and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(name, _)| name == "key")
                    .map(|(_, value)| value.into_owned())
            })
            .unwrap_or_default();
        if bool::from(secret.expose().as_bytes().ct_eq(given.as_bytes())) {
            Ok(Proof::Proven)
        } else {
            Err("the callback key does not match")
        }
    }

    fn read(&self, body: &[u8]) -> Result<Receipt, String> {
        let report: DeliveryReport = crate::domain::json::object(body)?;
        let verdict = verdict(&report.status);
        let failure = (verdict == Some(Status::Undelivered))
            .then(|| DeliveryFailure::of_code(report.error_code.as_deref(), &RECIPIENT_CODES));
        Ok(Receipt {
            verdict,
            carrier_message_id: report.message_id,
            error_code: report.error_code,
            failure,
        })
    }
}

impl DeliveryReports {
    /// Runs `check` on the report as MessageMedia signed it, when it is signed and the carrier
    /// has keys; `None` otherwise.
    fn with_signed_request<R>(
        &self,
        request: &CallbackRequest,
        check: impl FnOnce(&SignatureKeys, &SignedRequest<'_>) -> R,
    ) -> Option<R> {
        let signature = request
            .header(SIGNATURE)
            .filter(|_| !self.keys.is_empty())?;
        let method_and_target = match &request.query {
            Some(query) => format!("{}?{query}", self.request_target),
            None => self.request_target.clone(),
        };
        let signed = SignedRequest {
            method_and_target: &method_and_target,
            date: request.header("date").unwrap_or_default(),
            body: &request.body,
            signature,
            digest_type: request.header("x-messagemedia-digest-type"),
            cipher_type: request.header("x-messagemedia-cipher-type"),
        };
        Some(check(&self.keys, &signed))
    }
}

#[derive(Deserialize)]
/// A delivery report's body: which message, and what became of it.
pub struct DeliveryReport {
    pub message_id: String,
    pub status: String,
    #[serde(default)]
    pub error_code: Option<String>,
}

/// MessageMedia's delivery report codes (its API reference, "Delivery reports", the status
/// codes list) that say the number itself cannot take the message: 302 and 412 destination
/// blocked, 411 invalid destination, 413 no SMS service on the destination. Every other
/// failure (301 usage threshold, 304 dropped, 320 and 401 validity expired, 330 gateway
/// failure, 332 no route, 400 undeliverable, 402 rejected downstream, 414 unreachable, …) is
/// a route failure.
pub const RECIPIENT_CODES: [&str; 4] = ["302", "411", "412", "413"];

/// What a report's status says about delivery.
pub fn verdict(status: &str) -> Option<Status> {
    match status {
        "delivered" => Some(Status::Delivered),
        "failed" | "expired" | "rejected" => Some(Status::Undelivered),
        _ => None,
    }
}
