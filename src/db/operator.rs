//! What operators do to messages: list them (newest first, keyset-paginated on the id, which
//! is a UUIDv7 and so ordered by creation time), send a waiting one now, or cancel one.

use super::{Db, Tx};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{MessageId, Status, redact_digits};

/// One line of a listing.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct MessageSummary {
    pub id: Uuid,
    pub status: String,
    pub recipient: String,
    pub carrier: Option<String>,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How many messages one listing may ask for, the API and the command line alike.
pub const LIST_LIMITS: std::ops::RangeInclusive<i64> = 1..=1000;

/// Why a listing's limit is refused, in the words both the API and the command line use.
pub fn check_limit(limit: i64) -> Result<i64, String> {
    if LIST_LIMITS.contains(&limit) {
        Ok(limit)
    } else {
        Err(format!(
            "limit must be a whole number from {} to {}",
            LIST_LIMITS.start(),
            LIST_LIMITS.end()
        ))
    }
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<Status>,
    pub since: Option<DateTime<Utc>>,
    /// The last id of the previous page.
    pub before: Option<MessageId>,
    pub limit: i64,
}

/// The smallest UUIDv7 of a millisecond: ids at or after `at` compare greater or equal.
fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    // The builder sets the version and variant bits over zeroed random bits.
    uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid()
}

pub async fn list(pool: &Db, filter: &ListFilter) -> Result<Vec<MessageSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, recipient, carrier, attempts, created_at, finished_at
         FROM messages
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::uuid IS NULL OR id >= $2)
           AND ($3::uuid IS NULL OR id < $3)
         ORDER BY id DESC
         LIMIT $4",
    )
    .bind(filter.status.map(Status::as_str))
    .bind(filter.since.map(first_id_at))
    .bind(filter.before.map(|id| id.0))
    .bind(filter.limit.clamp(*LIST_LIMITS.start(), *LIST_LIMITS.end()))
    .fetch_all(pool)
    .await
}

/// The reason shown for a message that ended unsent, at most this many characters.
const MAX_REASON_CHARS: usize = 200;

/// Why a message ended unsent ("canceled by an operator", the last carrier error, …), as the
/// status API and `messages show` give it; `None` while it waits or once a carrier took it.
/// A carrier's error text could quote what it was sent, and a code can be spaced ("4 8 2 9 1
/// 3"), dashed or written in CJK numerals, so every numeral is masked as in the logs (the HTTP
/// status and the carrier's error code are in `attempts`), and the text is bounded.
pub fn final_reason(status: Status, last_error: Option<&str>) -> Option<String> {
    let ended_unsent = matches!(
        status,
        Status::Failed | Status::Expired | Status::RateLimited | Status::Undelivered
    );
    let text = last_error.filter(|_| ended_unsent)?.trim();
    let bounded: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    let shown = redact_digits(&bounded);
    (!shown.is_empty()).then_some(shown)
}

/// Why an operator action did nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionError {
    #[error("no message with this id")]
    NotFound,
    #[error("the message is {0}: only a message still waiting can be changed")]
    Final(String),
    #[error("the message is being sent right now; try again in a moment")]
    Leased,
    #[error("the message has expired")]
    Expired,
}

/// Locks a message and says whether an operator may still act on it: it must be waiting
/// (`queued`, not under a live lease), and, when `must_be_alive`, not expired.
async fn lock_waiting(
    tx: &mut Tx<'_>,
    id: MessageId,
    must_be_alive: bool,
) -> Result<Result<(), ActionError>, sqlx::Error> {
    // The queue row first, in the order the workers lock (queue, then message): while it is
    // locked a claim skips it, so no worker can take the message between this check and
    // the change; a claim already under way makes this wait, and its lease is then seen.
    let leased: Option<bool> = sqlx::query_scalar(
        "SELECT lease_token IS NOT NULL AND run_at > now() FROM message_queue
         WHERE message_id = $1 FOR UPDATE",
    )
    .bind(id.0)
    .fetch_optional(&mut *tx)
    .await?;
    let row: Option<(String, bool)> =
        sqlx::query_as("SELECT status, expires_at <= now() FROM messages WHERE id = $1 FOR UPDATE")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
    let row = row.map(|(status, expired)| (status, leased.unwrap_or(false), expired));
    Ok(match row {
        None => Err(ActionError::NotFound),
        Some((status, _, _)) if status != "queued" => Err(ActionError::Final(status)),
        Some((_, true, _)) => Err(ActionError::Leased),
        Some((_, _, true)) if must_be_alive => Err(ActionError::Expired),
        Some(_) => Ok(()),
    })
}

/// Makes a waiting message due now (skipping its backoff or limit wait).
pub async fn retry_now(pool: &Db, id: MessageId) -> Result<Result<(), ActionError>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let verdict = lock_waiting(&mut tx, id, true).await?;
    if verdict.is_ok() {
        sqlx::query(
            "UPDATE message_queue SET run_at = now() WHERE message_id = $1 AND lease_token IS NULL",
        )
        .bind(id.0)
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok(verdict)
}

/// Ends a waiting message without sending it: `failed`, "canceled by an operator", body erased.
pub async fn cancel(pool: &Db, id: MessageId) -> Result<Result<(), ActionError>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let verdict = lock_waiting(&mut tx, id, false).await?;
    if verdict.is_ok() {
        sqlx::query("DELETE FROM message_queue WHERE message_id = $1")
            .bind(id.0)
            .execute(&mut tx)
            .await?;
        sqlx::query(
            "UPDATE messages SET status = 'failed', last_error = 'canceled by an operator',
                    body = '', finished_at = now()
             WHERE id = $1",
        )
        .bind(id.0)
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_shown_only_for_a_message_that_ended_unsent_and_hides_every_numeral() {
        let canceled = Some("canceled by an operator");
        assert_eq!(
            final_reason(Status::Failed, canceled).as_deref(),
            Some("canceled by an operator")
        );
        assert_eq!(final_reason(Status::Sent, canceled), None);
        assert_eq!(final_reason(Status::Queued, canceled), None);
        assert_eq!(
            final_reason(
                Status::Failed,
                Some("t: HTTP 400: body was Your code is 123456\n")
            )
            .as_deref(),
            Some("t: HTTP ***: body was Your code is ******")
        );
        for (spread, masked) in [
            ("code 4 8 2 9 1 3 refused", "code * * * * * * refused"),
            ("code 12-34-56 refused", "code **-**-** refused"),
            ("验证码四八二九一三", "验证码******"),
            ("HTTP 500", "HTTP ***"),
        ] {
            assert_eq!(
                final_reason(Status::Failed, Some(spread)).as_deref(),
                Some(masked)
            );
        }
        let long = "x".repeat(500);
        assert_eq!(
            final_reason(Status::Expired, Some(&long)).map(|r| r.len()),
            Some(MAX_REASON_CHARS)
        );
    }

    #[test]
    fn the_first_id_of_a_millisecond_sorts_before_every_id_made_then() {
        let at = DateTime::<Utc>::from_timestamp_millis(1_795_440_000_123).expect("valid");
        let bound = first_id_at(at);
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, 1_795_440_000, 123_000_000);
        let made = Uuid::new_v7(ts);
        assert!(bound <= made, "{bound} vs {made}");
        let earlier = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_795_440_000,
            122_000_000,
        ));
        assert!(earlier < bound);
    }
}
