//! The queue's hot path: claim a batch under a lease, and write outcomes back in batches (the
//! per-recipient pacing is decided later, right before each call: `dispatch::admissions`). Every write is guarded by the lease
//! token, so a worker whose lease ran out can record its attempt but no longer decide the
//! message's fate.

use super::{Db, Tx};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::{MessageId, Status};

/// A message this worker now holds the lease on.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    pub recipient: String,
    pub body: String,
    pub sender: Option<String>,
    /// Dispatch attempts already made.
    pub attempts: i32,
    /// Milliseconds of lifetime left, on the database clock.
    pub remaining_ms: i64,
    /// When the code expires: what a carrier that takes an expiry time is given.
    pub expires_at: DateTime<Utc>,
    /// When it became due (the claim cursor advances over these).
    pub due_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// "sms" or "voice" (`Channel::parse`).
    pub channel: String,
    pub locale: Option<String>,
    /// The ingress's traceparent (W3C), when it was stored with one.
    #[sqlx(default)]
    pub traceparent: Option<String>,
    /// The carriers that took it in earlier sends (set when a route failure sent it again):
    /// a resend never goes through them.
    #[sqlx(default)]
    pub carried_by: Option<Vec<String>>,
    /// A login already completed with its code (a resend was pending): it is not sent again.
    #[sqlx(default)]
    pub verified: bool,
    /// A queue row whose message is gone (no foreign key forbids it since migration 0015):
    /// the claim removes it instead of handing it out.
    #[sqlx(default)]
    pub orphan: bool,
    #[sqlx(skip)]
    pub lease_token: i64,
    /// When the claim was sent (monotonic clock): ages are measured from it, never from the
    /// gateway's wall clock.
    #[sqlx(skip)]
    pub claimed: Option<std::time::Instant>,
}

/// What one claim round trip produced.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    /// Leased (expired ones included: the worker finalises those).
    pub ready: Vec<Claimed>,
    /// Rows claimed: a full batch means more may be due.
    pub claimed: usize,
    /// The last `(run_at, message_id)` claimed: where the next claim may start.
    pub last_key: Option<ClaimCursor>,
}

/// A position in the due index, `(run_at, message_id)`: claims start strictly after it.
pub type ClaimCursor = (DateTime<Utc>, Uuid);

/// The cursor before every row: the start of a full scan.
pub fn cursor_start() -> ClaimCursor {
    (DateTime::<Utc>::UNIX_EPOCH, Uuid::nil())
}

/// Claims up to `limit` due messages after `cursor`, leased for `lease_seconds` (per-recipient
/// limits are applied later, right before each carrier call: `db::recipient_sends`). Starting the
/// index scan after the last row claimed keeps it off the dead tuples that claims and deletes
/// leave at the head of the index, which a held snapshot keeps from being cleaned (docs/design.md,
/// "Claim, lease and complete"). The bound is a plain row comparison, not an
/// `IS NULL OR …`, so a generic prepared plan still uses it as the index scan's start.
pub async fn claim(
    pool: &Db,
    limit: usize,
    lease_seconds: u32,
    cursor: ClaimCursor,
) -> Result<ClaimBatch, sqlx::Error> {
    let lease_token: i64 = rand::random();
    let claim_started = std::time::Instant::now();
    let mut rows: Vec<Claimed> = sqlx::query_as(
        "WITH c AS (
             SELECT message_id, run_at FROM message_queue
             WHERE run_at <= now() AND (run_at, message_id) > ($3::timestamptz, $5::uuid)
             ORDER BY run_at, message_id
             LIMIT $1
             FOR UPDATE SKIP LOCKED
         )
         UPDATE message_queue q
         SET run_at = now() + make_interval(secs => $2), lease_token = $4
         FROM c LEFT JOIN messages m ON m.id = c.message_id
         WHERE q.message_id = c.message_id
         RETURNING q.message_id AS id, coalesce(m.recipient, '') AS recipient,
                   coalesce(m.body, '') AS body, m.sender, q.attempts,
                   (extract(epoch FROM q.expires_at - now()) * 1000)::bigint AS remaining_ms,
                   q.expires_at, c.run_at AS due_at, coalesce(m.created_at, q.created_at)
                   AS created_at, coalesce(m.channel, 'sms') AS channel, m.locale,
                   m.traceparent, m.carried_by, m.verified_at IS NOT NULL AS verified,
                   m.id IS NULL AS orphan",
    )
    .bind(limit as i64)
    .bind(f64::from(lease_seconds))
    .bind(cursor.0)
    .bind(lease_token)
    .bind(cursor.1)
    .fetch_all(pool)
    .await?;
    // Orphans count as claimed: the claim took that many rows, and more may be due.
    let claimed = rows.len();
    rows.sort_by_key(|row| (row.due_at, row.id));
    let last_key = rows.last().map(|row| (row.due_at, row.id));
    let orphans: Vec<Uuid> = rows.iter().filter(|r| r.orphan).map(|r| r.id).collect();
    if !orphans.is_empty() {
        // Cleaning up is secondary: a failure must not keep this batch's real messages, now
        // leased, from being sent (the next claim that finds the orphans tries again).
        if let Err(err) = remove_orphans(pool, &orphans, lease_token).await {
            tracing::warn!(error = %err, "cannot remove queue rows without a message");
        }
        rows.retain(|row| !row.orphan);
    }
    for row in &mut rows {
        row.lease_token = lease_token;
        row.claimed = Some(claim_started);
    }

    Ok(ClaimBatch {
        ready: rows,
        claimed,
        last_key,
    })
}

/// Deletes queue rows the claim found without a message (removed by hand, or by a bug): left
/// at the head of the claim order they would fill every claim and hold their day's partition.
async fn remove_orphans(pool: &Db, ids: &[Uuid], lease_token: i64) -> Result<(), sqlx::Error> {
    let removed = sqlx::query(
        "DELETE FROM message_queue q WHERE q.message_id = ANY($1) AND q.lease_token = $2
             AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = q.message_id)",
    )
    .bind(ids)
    .bind(lease_token)
    .execute(pool)
    .await?
    .rows_affected();
    tracing::warn!(removed, "queue rows without a message removed");
    Ok(())
}

/// When the earliest queued row becomes due; `None` for an empty queue.
pub async fn next_due(pool: &Db) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (extract(epoch FROM run_at - now()) * 1000)::bigint
         FROM message_queue ORDER BY run_at, message_id LIMIT 1",
    )
    .fetch_optional(pool)
    .await
}

/// One carrier call, as recorded in `message_attempts`.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: i32,
    pub carrier: String,
    pub outcome: &'static str,
    pub http_status: Option<i32>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub latency_ms: i32,
    pub carrier_message_id: Option<String>,
}

/// What happens to a message after a dispatch attempt.
#[derive(Debug, Clone)]
pub enum Disposition {
    /// It ends here: sent, failed, expired or rate-limited.
    Final {
        status: Status,
        carrier: Option<String>,
        carrier_message_id: Option<String>,
        error: Option<String>,
    },
    /// Try again after `delay_ms`.
    Retry { delay_ms: i64 },
    /// Hand it back untried, due again after `delay_ms` (shutdown, no carrier turn within the
    /// lease, or every carrier skipped); the attempt does not count.
    Release { delay_ms: i64 },
}

/// The outcome of one leased message, written by the completer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub id: Uuid,
    pub lease_token: i64,
    /// Dispatch attempts made so far, this one included.
    pub attempts: i32,
    pub disposition: Disposition,
    pub calls: Vec<AttemptRecord>,
    /// A sent message keeps its body while a route failure may still send it again
    /// (`dispatch::send`); erased then by its receipt or once too little of its life is left.
    pub keep_body: bool,
}

/// A final outcome the database applied.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ended {
    pub status: String,
    /// For a sent message: the carrier that took it, its number, and the minute of the send
    /// (epoch seconds, the database's clock), for the route measurements.
    pub carrier: Option<String>,
    pub recipient: String,
    pub sent_minute: Option<i64>,
}

/// Writes a batch of completions in one transaction. Attempts are always recorded; a final
/// status or a reschedule only applies while the lease is still ours. Returns the final
/// outcomes that did apply.
pub async fn complete(pool: &Db, batch: &[Completion]) -> Result<Vec<Ended>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    insert_attempts(&mut tx, batch).await?;
    let ended = end_finals(&mut tx, batch).await?;
    reschedule(&mut tx, batch).await?;
    tx.commit().await?;
    Ok(ended)
}

/// Ends the final ones whose lease is still ours; what they ended as.
async fn end_finals(tx: &mut Tx<'_>, batch: &[Completion]) -> Result<Vec<Ended>, sqlx::Error> {
    let mut columns = FinalColumns::default();
    for completion in batch {
        if let Disposition::Final {
            status,
            carrier,
            carrier_message_id,
            error,
        } = &completion.disposition
        {
            columns.ids.push(completion.id);
            columns.tokens.push(completion.lease_token);
            columns.statuses.push(status.as_str().to_string());
            columns.carriers.push(carrier.clone());
            columns.carrier_ids.push(carrier_message_id.clone());
            columns.errors.push(error.clone());
            columns.attempts.push(completion.attempts);
            columns.keep_body.push(completion.keep_body);
        }
    }
    if columns.ids.is_empty() {
        return Ok(Vec::new());
    }
    // The body is erased as the message ends: it held a one-time code (in any script's
    // digits, so masking digits would not do). A sent one that a resend may still need keeps
    // it until its receipt, or until too little of its life is left (`db::resends`).
    // A message that was sent before (a resend that failed) keeps its carrier and the time
    // it was taken: the login its code completes is still attributed to it.
    sqlx::query_as(
        "WITH v AS (
             SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[],
                                  $5::text[], $6::text[], $7::int[], $8::bool[])
                 AS v(id, token, status, carrier, carrier_message_id, error, attempts, keep)
         ), ended AS (
             DELETE FROM message_queue q USING v
             WHERE q.message_id = v.id AND q.lease_token = v.token
             RETURNING q.message_id
         )
         UPDATE messages m
         SET status = v.status,
             carrier = CASE WHEN v.status = 'sent' OR m.sent_at IS NULL THEN v.carrier
                            ELSE m.carrier END,
             carrier_message_id = CASE WHEN v.status = 'sent' OR m.sent_at IS NULL
                                       THEN v.carrier_message_id
                                       ELSE m.carrier_message_id END,
             last_error = v.error, attempts = v.attempts, finished_at = now(),
             sent_at = CASE WHEN v.status = 'sent' THEN now() ELSE m.sent_at END,
             body = CASE WHEN v.keep AND v.status = 'sent' THEN m.body ELSE '' END
         FROM v JOIN ended ON ended.message_id = v.id
         WHERE m.id = v.id
         RETURNING m.status, m.carrier, m.recipient,
                   CASE WHEN m.status = 'sent'
                        THEN extract(epoch FROM date_trunc('minute', m.sent_at))::bigint
                   END AS sent_minute",
    )
    .bind(&columns.ids)
    .bind(&columns.tokens)
    .bind(&columns.statuses)
    .bind(&columns.carriers)
    .bind(&columns.carrier_ids)
    .bind(&columns.errors)
    .bind(&columns.attempts)
    .bind(&columns.keep_body)
    .fetch_all(&mut *tx)
    .await
}

/// Puts retried and released ones back in the queue, while their lease is still ours.
async fn reschedule(tx: &mut Tx<'_>, batch: &[Completion]) -> Result<(), sqlx::Error> {
    let (mut ids, mut tokens, mut delays, mut attempts) = (vec![], vec![], vec![], vec![]);
    for completion in batch {
        let delay = match completion.disposition {
            Disposition::Retry { delay_ms } | Disposition::Release { delay_ms } => delay_ms,
            Disposition::Final { .. } => continue,
        };
        ids.push(completion.id);
        tokens.push(completion.lease_token);
        delays.push(delay);
        attempts.push(completion.attempts);
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE message_queue q
         SET run_at = now() + v.delay_ms * interval '1 millisecond', lease_token = NULL,
             attempts = v.attempts
         FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::int[])
             AS v(id, token, delay_ms, attempts)
         WHERE q.message_id = v.id AND q.lease_token = v.token",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&delays)
    .bind(&attempts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct FinalColumns {
    ids: Vec<Uuid>,
    tokens: Vec<i64>,
    statuses: Vec<String>,
    carriers: Vec<Option<String>>,
    carrier_ids: Vec<Option<String>>,
    errors: Vec<Option<String>>,
    attempts: Vec<i32>,
    keep_body: Vec<bool>,
}

async fn insert_attempts(tx: &mut Tx<'_>, batch: &[Completion]) -> Result<(), sqlx::Error> {
    let calls = batch
        .iter()
        .flat_map(|c| c.calls.iter().map(move |a| (c.id, a)));
    let (mut ids, mut numbers, mut carriers, mut outcomes) = (vec![], vec![], vec![], vec![]);
    let (mut statuses, mut codes, mut messages, mut latencies, mut carrier_ids) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (id, call) in calls {
        ids.push(id);
        numbers.push(call.attempt);
        carriers.push(call.carrier.clone());
        outcomes.push(call.outcome.to_string());
        statuses.push(call.http_status);
        codes.push(call.error_code.clone());
        messages.push(call.error_message.clone());
        latencies.push(call.latency_ms);
        carrier_ids.push(call.carrier_message_id.clone());
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO message_attempts (message_id, attempt, carrier, outcome, http_status,
                                       error_code, error_message, latency_ms, carrier_message_id)
         SELECT * FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::int[],
                              $6::text[], $7::text[], $8::int[], $9::text[])",
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&carriers)
    .bind(&outcomes)
    .bind(&statuses)
    .bind(&codes)
    .bind(&messages)
    .bind(&latencies)
    .bind(&carrier_ids)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What the metrics endpoint reports about the queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub queued: i64,
    pub sending: i64,
    pub oldest_age_seconds: f64,
    /// Of `queued`: those whose time has come (`run_at` passed, a lease run out included).
    pub due: i64,
    /// How long the one due the longest has been due.
    pub due_age_seconds: f64,
}

/// One pass over the narrow queue table: counts by state, the oldest message's age, and how
/// late the latest due message is (a message waiting for a backoff or a number's window is not
/// late: it is not due).
pub async fn stats(pool: &Db) -> Result<QueueStats, sqlx::Error> {
    let (queued, sending, oldest, due, due_since): (i64, i64, Option<f64>, i64, Option<f64>) =
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE lease_token IS NULL OR run_at <= now()),
                    count(*) FILTER (WHERE lease_token IS NOT NULL AND run_at > now()),
                    extract(epoch FROM now() - min(created_at))::float8,
                    count(*) FILTER (WHERE run_at <= now()),
                    extract(epoch FROM now() - min(run_at) FILTER (WHERE run_at <= now()))::float8
             FROM message_queue",
        )
        .fetch_one(pool)
        .await?;
    Ok(QueueStats {
        queued,
        sending,
        oldest_age_seconds: oldest.unwrap_or(0.0).max(0.0),
        due,
        due_age_seconds: due_since.unwrap_or(0.0).max(0.0),
    })
}

/// Messages still queued (tests and the shutdown log).
pub async fn depth(pool: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM message_queue")
        .fetch_one(pool)
        .await
}

impl Completion {
    /// The same outcome without any carrier-supplied text (ids, codes, messages), for when the
    /// database refuses what a carrier sent.
    pub fn without_texts(&self) -> Self {
        let disposition = match &self.disposition {
            Disposition::Final {
                status, carrier, ..
            } => Disposition::Final {
                status: *status,
                carrier: carrier.clone(),
                carrier_message_id: None,
                error: None,
            },
            other => other.clone(),
        };
        let calls = self
            .calls
            .iter()
            .map(|call| AttemptRecord {
                error_code: None,
                error_message: None,
                carrier_message_id: None,
                ..call.clone()
            })
            .collect();
        Self {
            disposition,
            calls,
            ..self.clone()
        }
    }
}

impl Claimed {
    pub fn message_id(&self) -> MessageId {
        MessageId(self.id)
    }

    /// The ingress's place in the message's trace, when it stored a valid one.
    pub fn trace(&self) -> Option<crate::domain::TraceContext> {
        self.traceparent
            .as_deref()
            .and_then(crate::domain::TraceContext::parse)
    }

    /// How long ago it was accepted, by the database's clock: its age when claimed (its life
    /// less what was left of it) plus the time since, on the monotonic clock.
    pub fn age_ms(&self) -> i64 {
        let life_ms = (self.expires_at - self.created_at).num_milliseconds();
        let since_claim = self.claimed.map_or(0, |at| {
            i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX)
        });
        life_ms
            .saturating_sub(self.remaining_ms)
            .saturating_add(since_claim)
    }
}
