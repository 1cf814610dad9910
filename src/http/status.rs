//! The operators' API, for holders of the admin token: where a message stands
//! (`GET /v1/messages/{id}`), and the list of messages (`GET /v1/messages`).

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use chrono::{DateTime, Utc};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::db::operator::{ListFilter, MessageSummary};
use crate::db::{self, messages::MessageView};
use crate::domain::{MessageId, PhoneNumber, Status};

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

pub(super) fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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

#[derive(serde::Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    since: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
    #[serde(default)]
    reveal: bool,
}

#[derive(serde::Serialize)]
pub struct MessageList {
    messages: Vec<MessageSummary>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// `GET /v1/messages?status=&since=&before=&limit=&reveal=`: newest first, numbers masked
/// unless `reveal=true`.
pub async fn list_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Result<Json<MessageList>, ApiError> {
    require_admin(&state, &headers)?;
    let bad = |what: &str| ApiError::InvalidField {
        code: "invalid_query",
        description: what.to_string(),
    };
    let filter = ListFilter {
        status: match query.status.as_deref() {
            None | Some("") => None,
            Some(text) => Some(Status::parse(text).ok_or_else(|| bad("unknown status"))?),
        },
        since: match query.since.as_deref() {
            None | Some("") => None,
            Some(text) => Some(
                DateTime::parse_from_rfc3339(text)
                    .map_err(|_| bad("since must be an RFC 3339 time"))?
                    .with_timezone(&Utc),
            ),
        },
        before: match query.before.as_deref() {
            None | Some("") => None,
            Some(text) => {
                Some(MessageId::parse(text).ok_or_else(|| bad("before must be a message id"))?)
            }
        },
        limit: query.limit.unwrap_or(100),
    };
    if !(1..=1000).contains(&filter.limit) {
        return Err(bad("limit must be between 1 and 1000"));
    }
    let mut messages = db::operator::list(&state.pool, &filter)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "message listing failed");
            ApiError::Unavailable("the database is unavailable; try again")
        })?;
    if !query.reveal {
        for message in &mut messages {
            message.recipient =
                PhoneNumber::from_e164_unchecked(std::mem::take(&mut message.recipient)).masked();
        }
    }
    let next = (messages.len() as i64 == filter.limit)
        .then(|| messages.last().map(|m| m.id.to_string()))
        .flatten();
    Ok(Json(MessageList { messages, next }))
}

#[derive(serde::Serialize)]
pub struct CarrierSwitch {
    carrier: String,
    disabled: bool,
}

/// `POST /v1/carriers/{name}/disable` and `/enable`: takes a carrier out of (or back into)
/// every route at once, on every worker within a second; its state shows as
/// `smsgate_carrier_disabled`.
pub async fn switch_carrier(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<CarrierSwitch>, ApiError> {
    require_admin(&state, &headers)?;
    let disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return Err(ApiError::NotFound),
    };
    if !state.carriers.contains(&name) {
        return Err(ApiError::NotFound);
    }
    db::carrier_states::set_disabled(&state.pool, &name, disabled)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "cannot switch a carrier");
            ApiError::Unavailable("the database is unavailable; try again")
        })?;
    tracing::warn!(carrier = %name, disabled, "carrier switched by an operator");
    Ok(Json(CarrierSwitch {
        carrier: name,
        disabled,
    }))
}
