//! `POST /v1/verifications`: a login completed with a phone code, told by Auth0's post-login
//! Action (`examples/auth0-actions/post-login-verification.js`), signed with the signer's
//! token like the ingress. smsgate attributes it to the number's newest message sent within
//! its code's life (`db::verifications`), once, and counts it for that message's route: the
//! conversion signal that receipts cannot give (some routes report "delivered" for messages
//! that never arrive).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::extract::{Caller, JsonBytes};
use super::ingress::invalid;
use super::{ApiError, AppState};
use crate::db::verifications::{self, Attributed};
use crate::domain::{PhoneNumber, redact_digits};

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct VerificationRequest {
    /// The number the login's code went to (`event.user.phone_number`).
    phone_number: String,
    /// When the login completed (`event.authentication.methods[].timestamp`); now if absent.
    #[serde(default)]
    at: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Verification {
    /// Whether a message of ours was found for it (a code sent by another gateway is not).
    attributed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<uuid::Uuid>,
    /// True when that message was attributed a login before (the Action ran again).
    repeated: bool,
}

/// RFC 3339 times are a few dozen characters; a longer one is not a time.
const MAX_AT_CHARS: usize = 64;

#[utoipa::path(
    post, path = "/v1/verifications", tag = "ingress",
    summary = "A login completed with a code smsgate sent (the route measurements' conversions)",
    security(("auth0" = [])),
    request_body(content = VerificationRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Attributed to a message of this signer, or not", body = Verification),
        super::error::IngressRefusals,
    )
)]
pub async fn verified(
    State(state): State<AppState>,
    caller: Caller,
    JsonBytes(body): JsonBytes,
) -> Result<Json<Verification>, ApiError> {
    let request: VerificationRequest =
        crate::domain::json::object(&body).map_err(ApiError::MalformedJson)?;
    let number = PhoneNumber::parse(&request.phone_number).map_err(|err| {
        // Debug-quoted: a control character in it cannot forge a log line.
        tracing::info!(phone_number = ?redact_digits(&request.phone_number), reason = %err, "invalid verification");
        invalid("invalid_phone_number", err.to_string())
    })?;
    let at = match request.at.as_deref() {
        None => None,
        Some(text) if text.len() <= MAX_AT_CHARS => Some(
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| invalid("invalid_time", "at must be an RFC 3339 time"))?,
        ),
        Some(_) => return Err(invalid("invalid_time", "at must be an RFC 3339 time")),
    };
    let signer = caller.signer.as_deref();
    let attributed = verifications::attribute(&state.pool, signer, number.as_str(), at).await?;
    let outcome = match &attributed {
        Attributed::New { .. } => "attributed",
        Attributed::Repeated { .. } => "repeated",
        Attributed::NoMessage => "no_message",
        Attributed::OutOfRange => {
            return Err(invalid(
                "invalid_time",
                "at must be within the last day and not in the future",
            ));
        }
    };
    state
        .metrics
        .verifications
        .with_label_values(&[caller.signer.as_deref().unwrap_or("-"), outcome])
        .inc();
    Ok(Json(match attributed {
        Attributed::New {
            message_id,
            carrier,
            sent_minute,
        } => {
            if let Some(carrier) = carrier {
                state
                    .route_stats
                    .verified(&carrier, number.as_str(), sent_minute);
            }
            Verification {
                attributed: true,
                message_id: Some(message_id),
                repeated: false,
            }
        }
        Attributed::Repeated { message_id } => Verification {
            attributed: true,
            message_id: Some(message_id),
            repeated: true,
        },
        _ => Verification {
            attributed: false,
            message_id: None,
            repeated: false,
        },
    }))
}
