//! Messages, for holders of the admin token: where one stands (`GET /v1/messages/{id}`) and
//! the list (`GET /v1/messages`).

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};

use crate::db::operator::{ListFilter, MessageSummary};
use crate::db::{self, messages::MessageView};
use crate::domain::{MessageId, PhoneNumber, Status};
use crate::http::extract::Admin;
use crate::http::{ApiError, AppState};

pub async fn show_message(
    State(state): State<AppState>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    // Anything that is not a message id cannot name a message.
    let id = MessageId::parse(&id).ok_or(ApiError::NotFound)?;
    let view = db::messages::find(&state.pool, id).await?;
    view.map(Json).ok_or(ApiError::NotFound)
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
    _: Admin,
    Query(query): Query<ListQuery>,
) -> Result<Json<MessageList>, ApiError> {
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
    let mut messages = db::operator::list(&state.pool, &filter).await?;
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
