//! Storing accepted messages and reading them back for the status API.

use chrono::{DateTime, Utc};
use std::collections::HashMap;

use super::{Db, Tx};
use uuid::Uuid;

use super::retention::IDEMPOTENCY_WINDOW_SECONDS;
use crate::domain::segments;
use crate::domain::{MessageId, NewMessage, Status};
use crate::limits::pricing::amount;

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

/// Why a message of a batch was not stored, while the others of its batch were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Its idempotency key came back with a different message than the one it was first used
    /// for.
    KeyReused,
    /// Its key was taken, yet its message could not be found again (deleted under it, more
    /// than once): nothing was stored for it and the caller may try again.
    KeyUnresolved,
}

/// How often a batch's repeated keys are looked for again when their message vanished between
/// the insert and the look-up (retention deleted it, and the key with it).
const KEY_ROUNDS: usize = 3;

/// Stores messages and their queue entries, so one commit makes all of them durable (or
/// none). Expiry is computed from the database clock, the one clock every process shares. A
/// message whose idempotency key is already known is not stored again: its result is the
/// earlier message's, or `KeyReused` when the key was first used for a different message.
/// Results come back in the order of `messages`; an error means nothing was stored.
///
/// Without keys this is one statement (it commits on its own). With keys, the insert and the
/// look-up of earlier messages share a transaction, so a failed look-up rolls the batch back
/// instead of answering 503 for messages that were stored.
pub async fn enqueue_batch(
    conn: &mut Tx<'_>,
    messages: &[&NewMessage],
    ttl_seconds: u32,
) -> Result<Vec<Result<Enqueued, NotStored>>, sqlx::Error> {
    if messages.iter().all(|m| m.idempotency_key.is_none()) {
        let stored = insert(conn, messages, ttl_seconds).await?;
        return Ok(messages
            .iter()
            .map(|m| stored.get(&m.id.0).copied().ok_or(NotStored::KeyUnresolved))
            .collect());
    }
    let mut tx = conn.nested().await?;
    let mut results: Vec<Option<Result<Enqueued, NotStored>>> = vec![None; messages.len()];
    for _ in 0..KEY_ROUNDS {
        let open: Vec<usize> = (0..messages.len())
            .filter(|&i| results[i].is_none())
            .collect();
        if open.is_empty() {
            break;
        }
        let batch: Vec<&NewMessage> = open.iter().map(|&i| messages[i]).collect();
        let stored = insert(&mut tx, &batch, ttl_seconds).await?;
        let repeated: Vec<&str> = batch
            .iter()
            .filter(|m| !stored.contains_key(&m.id.0))
            .filter_map(|m| m.idempotency_key.as_deref())
            .collect();
        let earlier = earlier_messages(&mut tx, &repeated).await?;
        for i in open {
            let message = messages[i];
            results[i] = if let Some(enqueued) = stored.get(&message.id.0) {
                Some(Ok(*enqueued))
            } else {
                // Not stored, so it has a key: the key's first message answers for it.
                let key = message.idempotency_key.as_deref().unwrap_or_default();
                earlier
                    .get(key)
                    .map(|earlier| answer_from(earlier, message))
            };
        }
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Err(NotStored::KeyUnresolved)))
        .collect())
}

/// The answers to requests the limits judged repeats, in order, without inserting anything:
/// their key's message, or `KeyUnresolved` (nothing stored; the caller may try again, as a
/// new request) when that message is gone by now, or `KeyReused` when the key changed hands.
pub async fn answer_repeats(
    conn: &mut Tx<'_>,
    repeats: &[&NewMessage],
) -> Result<Vec<Result<Enqueued, NotStored>>, sqlx::Error> {
    let keys: Vec<&str> = repeats
        .iter()
        .filter_map(|m| m.idempotency_key.as_deref())
        .collect();
    let earlier = earlier_messages(conn, &keys).await?;
    Ok(repeats
        .iter()
        .map(|message| {
            let key = message.idempotency_key.as_deref().unwrap_or_default();
            earlier
                .get(key)
                .map_or(Err(NotStored::KeyUnresolved), |earlier| {
                    answer_from(earlier, message)
                })
        })
        .collect())
}

/// A request's answer from its key's first message: that message when it is the same
/// request, else a reuse of the key.
fn answer_from(
    (print, enqueued): &(Option<String>, Enqueued),
    message: &NewMessage,
) -> Result<Enqueued, NotStored> {
    if same_request(print.as_deref(), message.fingerprint.as_deref()) {
        Ok(*enqueued)
    } else {
        Err(NotStored::KeyReused)
    }
}

/// The idempotency keys of `messages` that still answer for a stored message (used within the
/// last [`IDEMPOTENCY_WINDOW_SECONDS`] by the database's clock), with the fingerprint each was
/// first used with: requests under them are repeats, or reuses of the key.
pub async fn known_keys(
    conn: &mut Tx<'_>,
    messages: &[&NewMessage],
) -> Result<HashMap<String, Option<String>>, sqlx::Error> {
    let keys: Vec<&str> = messages
        .iter()
        .filter_map(|m| m.idempotency_key.as_deref())
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let known: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT key, fingerprint FROM idempotency_keys
         WHERE key = ANY($1) AND created_at > now() - make_interval(secs => $2)",
    )
    .bind(&keys)
    .bind(f64::from(IDEMPOTENCY_WINDOW_SECONDS))
    .fetch_all(&mut *conn)
    .await?;
    Ok(known.into_iter().collect())
}

/// Whether a request with fingerprint `own` repeats the one a key was first used with (keys
/// stored before fingerprints existed match anything).
pub fn same_request(first: Option<&str>, own: Option<&str>) -> bool {
    match (first, own) {
        (Some(first), Some(own)) => first == own,
        _ => true,
    }
}

/// A batch as one array per column, for `unnest`.
#[derive(Default)]
pub(super) struct Columns<'a> {
    pub(super) ids: Vec<Uuid>,
    pub(super) recipients: Vec<&'a str>,
    pub(super) bodies: Vec<&'a str>,
    pub(super) senders: Vec<Option<&'a str>>,
    pub(super) ips: Vec<Option<String>>,
    pub(super) agents: Vec<Option<&'a str>>,
    pub(super) signers: Vec<Option<&'a str>>,
    pub(super) keys: Vec<Option<&'a str>>,
    pub(super) fingerprints: Vec<Option<&'a str>>,
    pub(super) segments: Vec<i16>,
    pub(super) encodings: Vec<&'static str>,
    pub(super) countries: Vec<Option<&'a str>>,
    pub(super) costs: Vec<Option<i64>>,
    pub(super) channels: Vec<&'static str>,
    pub(super) locales: Vec<Option<&'a str>>,
    pub(super) traces: Vec<Option<String>>,
}

impl<'a> Columns<'a> {
    pub(super) fn of(messages: &[&'a NewMessage]) -> Self {
        let mut c = Self::default();
        for message in messages {
            let counted = segments(message.body.as_str());
            c.segments
                .push(i16::try_from(counted.count).unwrap_or(i16::MAX));
            c.encodings.push(counted.encoding.as_str());
            c.countries.push(message.guard.country.as_deref());
            c.costs.push(message.guard.estimated_cost);
            c.channels.push(message.channel.as_str());
            c.locales.push(message.locale.as_deref());
            c.ids.push(message.id.0);
            c.recipients.push(message.recipient.as_str());
            c.bodies.push(message.body.as_str());
            c.senders.push(message.sender.as_deref());
            c.ips.push(message.request.ip.map(|ip| ip.to_string()));
            c.agents.push(message.request.user_agent.as_deref());
            c.signers.push(message.signer.as_deref());
            c.keys.push(message.idempotency_key.as_deref());
            c.fingerprints.push(message.fingerprint.as_deref());
            c.traces.push(message.trace.map(|t| t.to_string()));
        }
        c
    }
}

/// The insert itself: messages whose key is new (or who have none), with their queue rows.
/// Of the batch's copies of one key only the first takes it (in the batch's order: the
/// one the limits counted), and a key past its window is taken over as if it were new. Keys
/// are inserted in key order, so concurrent batches lock them in one order (no deadlocks).
/// Returns what was stored, by message id.
async fn insert(
    conn: &mut Tx<'_>,
    messages: &[&NewMessage],
    ttl_seconds: u32,
) -> Result<HashMap<Uuid, Enqueued>, sqlx::Error> {
    let c = Columns::of(messages);
    let rows: Vec<(Uuid, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "WITH v AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $9::text[], $10::text[],
                                  $11::smallint[], $12::text[], $13::text[], $14::bigint[],
                                  $15::text[], $16::text[], $18::text[]) WITH ORDINALITY
                 AS v(id, recipient, body, sender, client_ip, user_agent, signer, idem, print,
                      segments, encoding, country, cost, channel, locale, trace, ord)
         ), k AS (
             INSERT INTO idempotency_keys (key, message_id, fingerprint)
             SELECT DISTINCT ON (idem) idem, id, print FROM v WHERE idem IS NOT NULL
             ORDER BY idem, ord
             ON CONFLICT (key) DO UPDATE
                 SET message_id = excluded.message_id, fingerprint = excluded.fingerprint,
                     created_at = excluded.created_at
                 WHERE idempotency_keys.created_at <= now() - make_interval(secs => $17)
             RETURNING message_id
         ), m AS (
             INSERT INTO messages
                 (id, recipient, body, sender, client_ip, user_agent, signer, expires_at,
                  segments, encoding, country, estimated_cost_micros, channel, locale,
                  traceparent)
             SELECT id, recipient, body, sender, client_ip::inet, user_agent, signer,
                    now() + make_interval(secs => $8), segments, encoding, country, cost,
                    channel, locale, trace
             FROM v
             WHERE idem IS NULL OR id IN (SELECT message_id FROM k)
             RETURNING id, created_at, expires_at
         ), q AS (
             INSERT INTO message_queue (message_id, run_at, expires_at, created_at)
             SELECT id, created_at, expires_at, created_at FROM m
         )
         SELECT id, created_at, expires_at FROM m",
    )
    .bind(&c.ids)
    .bind(&c.recipients)
    .bind(&c.bodies)
    .bind(&c.senders)
    .bind(&c.ips)
    .bind(&c.agents)
    .bind(&c.signers)
    .bind(f64::from(ttl_seconds))
    .bind(&c.keys)
    .bind(&c.fingerprints)
    .bind(&c.segments)
    .bind(&c.encodings)
    .bind(&c.countries)
    .bind(&c.costs)
    .bind(&c.channels)
    .bind(&c.locales)
    .bind(f64::from(IDEMPOTENCY_WINDOW_SECONDS))
    .bind(&c.traces)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, created_at, expires_at)| {
            let enqueued = Enqueued {
                id: MessageId(id),
                created_at,
                expires_at,
            };
            (id, enqueued)
        })
        .collect())
}

/// The first message of each key, with the fingerprint stored with the key. A key whose
/// message is gone is gone too (the foreign key cascades), so every key found has one.
async fn earlier_messages(
    conn: &mut Tx<'_>,
    keys: &[&str],
) -> Result<HashMap<String, (Option<String>, Enqueued)>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let earlier: Vec<EarlierRow> = sqlx::query_as(
        "SELECT k.key, k.fingerprint, m.id, m.created_at, m.expires_at
             FROM idempotency_keys k JOIN messages m ON m.id = k.message_id
             WHERE k.key = ANY($1)",
    )
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(earlier
        .into_iter()
        .map(|(key, print, id, created_at, expires_at)| {
            let enqueued = Enqueued {
                id: MessageId(id),
                created_at,
                expires_at,
            };
            (key, (print, enqueued))
        })
        .collect())
}

/// A message as the status API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    pub status: Status,
    pub recipient: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub carrier: Option<String>,
    /// SMS parts the body is sent in, and their encoding ("GSM-7" or "UCS-2").
    pub segments: Option<i16>,
    pub encoding: Option<String>,
    /// ISO 3166-1 code of the destination, when a limit needed it.
    pub country: Option<String>,
    /// In `[spend] currency`, through the first carrier of the route (`[[prices]]`).
    pub estimated_cost: Option<f64>,
    /// "sms", or "voice" for a call.
    pub channel: String,
    /// Why it ended unsent ("canceled by an operator", the last carrier error, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub attempts: Vec<AttemptView>,
}

/// One carrier call.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    pub carrier: String,
    pub outcome: String,
    pub http_status: Option<i32>,
    pub error_code: Option<String>,
    pub latency_ms: Option<i32>,
    pub carrier_message_id: Option<String>,
    pub at: DateTime<Utc>,
    /// What the carrier's receipt said of this send (`delivered`, `undelivered`, or `none`
    /// when it stayed silent past its receipt timeout), and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    /// Why it was not delivered: `route` (the message moved on to another carrier, if one
    /// was left) or `recipient`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_failure: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt_at: Option<DateTime<Utc>>,
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
    segments: Option<i16>,
    encoding: Option<String>,
    country: Option<String>,
    estimated_cost_micros: Option<i64>,
    channel: String,
    last_error: Option<String>,
}

/// What `find` runs, each with the id as `$1`: a test checks that each reads one partition.
pub const FIND_STATEMENTS: [&str; 2] = [
    "SELECT m.id, m.status, m.recipient, m.created_at, m.expires_at, m.carrier,
                coalesce(q.lease_token IS NOT NULL AND q.run_at > now(), false) AS leased,
                m.segments, m.encoding, m.country, m.estimated_cost_micros, m.channel,
                m.last_error
         FROM messages m
         LEFT JOIN message_queue q ON q.message_id = m.id
         WHERE m.id = $1",
    "SELECT attempt, carrier, outcome, http_status, error_code, latency_ms,
                carrier_message_id, created_at AS at, receipt_status AS receipt,
                receipt_failure, receipt_error_code, receipt_at
         FROM message_attempts WHERE message_id = $1 ORDER BY id",
];

/// Reads one message with its attempts; `None` when the id is unknown.
pub async fn find(pool: &Db, id: MessageId) -> Result<Option<MessageView>, sqlx::Error> {
    // A message under a live lease is being sent; the queue row tells, so claiming never has
    // to touch the wide messages row.
    let row = sqlx::query_as::<_, MessageRow>(FIND_STATEMENTS[0])
        .bind(id.0)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let attempts = sqlx::query_as::<_, AttemptView>(FIND_STATEMENTS[1])
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
        segments: row.segments,
        encoding: row.encoding,
        country: row.country,
        estimated_cost: row.estimated_cost_micros.map(amount),
        channel: row.channel,
        reason: super::operator::final_reason(status, row.last_error.as_deref()),
        attempts,
    }))
}

/// How many messages are stored; tests use it to prove a refused request stored nothing.
pub async fn count(pool: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM message_queue)",
    )
    .fetch_one(pool)
    .await
}
