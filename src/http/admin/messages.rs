//! Messages, for holders of the admin token: where one stands (`GET /v1/messages/{id}`) and
//! the list (`GET /v1/messages`).

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};

use super::params::{PathParams, QueryParams, invalid_query};
use crate::db::operator::{ListFilter, MessageSummary, check_limit};
use crate::db::{self, messages::MessageView};
use crate::domain::{MessageId, PhoneNumber, Status};
use crate::http::extract::Admin;
use crate::http::{ApiError, AppState};

#[utoipa::path(
    get, path = "/v1/messages/{id}", tag = "operator",
    summary = "A message, its attempts and its receipts",
    security(("admin" = [])),
    params(("id" = uuid::Uuid, Path, description = "The id the ingress answered with")),
    responses(
        (status = 200, description = "The message", body = MessageView),
        crate::http::error::AdminRefusals,
    )
)]
pub async fn show_message(
    State(state): State<AppState>,
    _: Admin,
    id: Result<PathParams<String>, ApiError>,
    query: QueryParams,
) -> Result<Json<MessageView>, ApiError> {
    query.known(&[])?;
    // Anything that is not a message id (not even UTF-8) cannot name a message.
    let id = id
        .ok()
        .and_then(|PathParams(id)| MessageId::parse(&id))
        .ok_or(ApiError::NotFound)?;
    let view = db::messages::find(&state.pool, id).await?;
    view.map(Json).ok_or(ApiError::NotFound)
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct MessageList {
    messages: Vec<MessageSummary>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

const LIST_PARAMETERS: [&str; 5] = ["status", "since", "before", "limit", "reveal"];

/// `GET /v1/messages?status=&since=&before=&limit=&reveal=`: newest first, numbers masked
/// unless `reveal=true`.
#[utoipa::path(
    get, path = "/v1/messages", tag = "operator",
    summary = "Messages, newest first, a page at a time",
    security(("admin" = [])),
    params(
        ("status" = Option<Status>, Query, description = "Only messages in this status"),
        ("since" = Option<chrono::DateTime<chrono::Utc>>, Query,
         description = "Only messages created at or after this RFC 3339 time"),
        ("before" = Option<uuid::Uuid>, Query,
         description = "The page after this id (the previous page's `next`)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000,
         description = "Messages per page (100 unless given)"),
        ("reveal" = Option<bool>, Query,
         description = "Show whole numbers instead of masked ones"),
    ),
    responses(
        (status = 200, description = "A page of messages", body = MessageList),
        crate::http::error::AdminRefusals,
    )
)]
pub async fn list_messages(
    State(state): State<AppState>,
    _: Admin,
    query: QueryParams,
) -> Result<Json<MessageList>, ApiError> {
    let query = query.known(&LIST_PARAMETERS)?;
    let given = |name: &str| {
        query
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let filter = ListFilter {
        status: given("status")
            .map(|text| Status::parse(text).ok_or_else(|| invalid_query("unknown status")))
            .transpose()?,
        since: given("since")
            .map(|text| {
                DateTime::parse_from_rfc3339(text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| invalid_query("since must be an RFC 3339 time"))
            })
            .transpose()?,
        before: given("before")
            .map(|text| {
                MessageId::parse(text).ok_or_else(|| invalid_query("before must be a message id"))
            })
            .transpose()?,
        limit: match given("limit") {
            None => 100,
            // What is not a whole number (`1e3`) is refused in the words a 0 is.
            Some(text) => {
                check_limit(text.parse().unwrap_or(0)).map_err(|why| invalid_query(&why))?
            }
        },
    };
    let reveal = match given("reveal") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid_query("reveal must be true or false")),
    };
    let mut messages = db::operator::list(&state.pool, &filter).await?;
    if !reveal {
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
