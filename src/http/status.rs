//! `GET /v1/messages/{id}`: where a message stands, for operators holding the admin token.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::db::{self, messages::MessageView};
use crate::domain::MessageId;

pub async fn show_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    require_admin(&state, &headers)?;
    // Anything that is not a message id cannot name a message.
    let id = MessageId::parse(&id).ok_or(ApiError::NotFound)?;
    match db::messages::find(&state.pool, id).await {
        Ok(Some(view)) => Ok(Json(view)),
        Ok(None) => Err(ApiError::NotFound),
        Err(err) => {
            tracing::error!(%id, error = %err, "status lookup failed");
            Err(ApiError::Unavailable(
                "the database is unavailable; try again",
            ))
        }
    }
}

fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let expected = state.admin_token.as_ref().ok_or(ApiError::AdminDisabled)?;
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(ApiError::AdminUnauthorized)?;
    // Constant time, so response timing does not reveal how much of a guess was right.
    if bool::from(
        presented
            .trim()
            .as_bytes()
            .ct_eq(expected.expose().as_bytes()),
    ) {
        Ok(())
    } else {
        Err(ApiError::AdminUnauthorized)
    }
}
