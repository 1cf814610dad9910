//! Storing accepted messages and reading them back for the status API.

use chrono::{DateTime, Utc};
use std::collections::HashMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{MessageId, NewMessage, Status};

/// What the ingress learns back from the commit.
#[derive(Debug, Clone, Copy)]
pub struct Enqueued {
    /// The message's id: the request's own, or an earlier message's when its idempotency key
    /// was seen before.
    pub id: MessageId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An idempotency key's first message: key, fingerprint, id, created and expiry times.
type EarlierRow = (String, Option<String>, Uuid, DateTime<Utc>, DateTime<Utc>);

/// A key that came back with a different message than the one it was first used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyReused;

/// What an idempotency key's request asked for: recipient, body and sender, length-prefixed.
fn fingerprint(message: &NewMessage) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in [
        message.recipient.as_str(),
        message.body.as_str(),
        message.sender.as_deref().unwrap_or(""),
    ] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stores messages and their queue entries in one statement, so one commit makes all of them
/// durable (or none). Expiry is computed from the database clock, the one clock every process
/// shares. A message whose idempotency key is already known is not stored again: its result
/// is the earlier message's, or `KeyReused` when the key was first used for a different
/// message. Results come back in the order of `messages`.
pub async fn enqueue_batch(
    conn: &mut PgConnection,
    messages: &[&NewMessage],
    ttl_seconds: u32,
) -> Result<Vec<Result<Enqueued, KeyReused>>, sqlx::Error> {
    let mut ids = Vec::with_capacity(messages.len());
    let mut fingerprints = Vec::with_capacity(messages.len());
    let (mut recipients, mut bodies, mut senders) = (vec![], vec![], vec![]);
    let (mut ips, mut agents, mut signers, mut keys) = (vec![], vec![], vec![], vec![]);
    for message in messages {
        ids.push(message.id.0);
        recipients.push(message.recipient.as_str());
        bodies.push(message.body.as_str());
        senders.push(message.sender.as_deref());
        ips.push(message.request.ip.map(|ip| ip.to_string()));
        agents.push(message.request.user_agent.as_deref());
        signers.push(message.signer.as_deref());
        keys.push(message.idempotency_key.as_deref());
        fingerprints.push(
            message
                .idempotency_key
                .as_ref()
                .map(|_| fingerprint(message)),
        );
    }
    let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "WITH v AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $9::text[], $10::text[])
                 AS v(id, recipient, body, sender, client_ip, user_agent, signer, idem, print)
         ), k AS (
             INSERT INTO idempotency_keys (key, message_id, fingerprint)
             SELECT idem, id, print FROM v WHERE idem IS NOT NULL
             ON CONFLICT (key) DO NOTHING
             RETURNING message_id
         ), m AS (
             INSERT INTO messages
                 (id, recipient, body, sender, client_ip, user_agent, signer, expires_at)
             SELECT id, recipient, body, sender, client_ip::inet, user_agent, signer,
                    now() + make_interval(secs => $8)
             FROM v
             WHERE idem IS NULL OR id IN (SELECT message_id FROM k)
             RETURNING id, created_at, expires_at
         ), q AS (
             INSERT INTO message_queue (message_id, run_at, expires_at, created_at)
             SELECT id, created_at, expires_at, created_at FROM m
         )
         SELECT id, created_at, expires_at FROM m",
    )
    .bind(&ids)
    .bind(&recipients)
    .bind(&bodies)
    .bind(&senders)
    .bind(&ips)
    .bind(&agents)
    .bind(&signers)
    .bind(f64::from(ttl_seconds))
    .bind(&keys)
    .bind(&fingerprints)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_id: HashMap<Uuid, Enqueued> = rows
        .into_iter()
        .map(|(id, created_at, expires_at)| {
            let enqueued = Enqueued {
                id: MessageId(id),
                created_at,
                expires_at,
            };
            (id, enqueued)
        })
        .collect();
    // Messages not stored were repeats: answer with the message their key points to.
    let repeated: Vec<&str> = messages
        .iter()
        .filter(|m| !by_id.contains_key(&m.id.0))
        .filter_map(|m| m.idempotency_key.as_deref())
        .collect();
    let mut by_key = HashMap::new();
    if !repeated.is_empty() {
        let earlier: Vec<EarlierRow> = sqlx::query_as(
            "SELECT k.key, k.fingerprint, m.id, m.created_at, m.expires_at
                 FROM idempotency_keys k JOIN messages m ON m.id = k.message_id
                 WHERE k.key = ANY($1)",
        )
        .bind(&repeated)
        .fetch_all(&mut *conn)
        .await?;
        for (key, print, id, created_at, expires_at) in earlier {
            let enqueued = Enqueued {
                id: MessageId(id),
                created_at,
                expires_at,
            };
            by_key.insert(key, (print, enqueued));
        }
    }
    messages
        .iter()
        .zip(&fingerprints)
        .map(|(m, own_print)| {
            if let Some(stored) = by_id.remove(&m.id.0) {
                return Ok(Ok(stored));
            }
            let key = m
                .idempotency_key
                .as_deref()
                .ok_or(sqlx::Error::RowNotFound)?;
            let (print, earlier) = by_key.get(key).ok_or(sqlx::Error::RowNotFound)?;
            // Keys stored before fingerprints existed match anything.
            if print.is_some() && print != own_print {
                Ok(Err(KeyReused))
            } else {
                Ok(Ok(*earlier))
            }
        })
        .collect()
}

/// A message as the status API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageView {
    pub id: Uuid,
    pub status: Status,
    pub recipient: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub carrier: Option<String>,
    pub attempts: Vec<AttemptView>,
}

/// One carrier call.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct AttemptView {
    pub attempt: i32,
    pub carrier: String,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub error_code: Option<String>,
    pub latency_ms: Option<i32>,
    pub carrier_message_id: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    status: String,
    recipient: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    carrier: Option<String>,
    leased: bool,
}

/// Reads one message with its attempts; `None` when the id is unknown.
pub async fn find(pool: &PgPool, id: MessageId) -> Result<Option<MessageView>, sqlx::Error> {
    // A message under a live lease is being sent; the queue row tells, so claiming never has
    // to touch the wide messages row.
    let row = sqlx::query_as::<_, MessageRow>(
        "SELECT m.id, m.status, m.recipient, m.created_at, m.expires_at, m.carrier,
                coalesce(q.lease_token IS NOT NULL AND q.run_at > now(), false) AS leased
         FROM messages m
         LEFT JOIN message_queue q ON q.message_id = m.id
         WHERE m.id = $1",
    )
    .bind(id.0)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let attempts = sqlx::query_as::<_, AttemptView>(
        "SELECT attempt, carrier, outcome, http_status, error_code, latency_ms,
                carrier_message_id, created_at AS at
         FROM message_attempts WHERE message_id = $1 ORDER BY id",
    )
    .bind(id.0)
    .fetch_all(pool)
    .await?;
    let stored = Status::parse(&row.status).unwrap_or(Status::Queued);
    let status = if stored == Status::Queued && row.leased {
        Status::Sending
    } else {
        stored
    };
    Ok(Some(MessageView {
        id: row.id,
        status,
        recipient: row.recipient,
        created_at: row.created_at,
        expires_at: row.expires_at,
        carrier: row.carrier,
        attempts,
    }))
}

/// How many messages are stored; tests use it to prove a refused request stored nothing.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM message_queue)",
    )
    .fetch_one(pool)
    .await
}
