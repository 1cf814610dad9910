//! Delivery receipts: recorded as they arrive and applied to the message they name, which
//! moves from `sent` to `delivered` or `undelivered` (the first verdict wins), or back to the
//! queue when a route failure leaves another carrier and time to send the code again.

use std::time::Duration;

use super::{Db, Tx};

use super::route_stats::{ReceiptSeen, RouteStats};
use crate::domain::DeliveryFailure;
use crate::domain::Status;

/// What a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The message is now `delivered` or `undelivered`, or queued again (`resent`) when the
    /// report was a route failure with a carrier and time left; it was accepted `age_ms`
    /// before, by the database's clock. `first` is false when this report was recorded before
    /// (kept for later) and a repeat of it applied it now.
    Applied {
        /// The message the report was about, for the log.
        message_id: uuid::Uuid,
        age_ms: i64,
        first: bool,
        resent: bool,
    },
    /// No message in `sent` with that carrier id yet (or any more): kept for the sweep.
    Pending,
    /// The same report (carrier, id, status) was recorded before: nothing new.
    Repeated,
}

/// One final report, as the route read it.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    pub carrier: &'a str,
    pub carrier_message_id: &'a str,
    pub status: Status,
    pub error_code: Option<&'a str>,
    /// Why it was not delivered (`Undelivered` only).
    pub failure: Option<DeliveryFailure>,
}

/// When a route failure sends the code again: never with less than `min_remaining` of its
/// life left (`None`: never), nor past `max_attempts`.
#[derive(Debug, Clone, Copy)]
pub struct ResendPolicy {
    pub min_remaining: Option<Duration>,
    /// A resend is an attempt: none once a message made `dispatch.max_attempts`.
    pub max_attempts: i32,
}

impl Default for ResendPolicy {
    /// The default configuration's: on, with 30 s of life left at least.
    fn default() -> Self {
        Self::of(&crate::config::DispatchConfig::default())
    }
}

impl ResendPolicy {
    /// `[dispatch] resend_on_route_failure` and `resend_min_remaining_seconds`.
    pub fn of(config: &crate::config::DispatchConfig) -> Self {
        Self {
            min_remaining: config
                .resend_on_route_failure
                .then(|| Duration::from_secs(u64::from(config.resend_min_remaining_seconds))),
            max_attempts: i32::try_from(config.max_attempts.get()).unwrap_or(i32::MAX),
        }
    }

    /// Seconds of life a resend needs; past any code's life when resends are off (a
    /// billion seconds: PostgreSQL's intervals hold it).
    pub(super) fn min_remaining_seconds(&self) -> f64 {
        self.min_remaining.map_or(1e9, |d| d.as_secs_f64())
    }
}

/// Records a receipt and applies the earliest report of its carrier message not applied yet:
/// this one, or one that beat the send's own record (the first verdict wins, so a "delivered"
/// that came early is never overridden by a failure that came after it).
pub async fn record(
    pool: &Db,
    report: &Report<'_>,
    resend: ResendPolicy,
    stats: Option<&RouteStats>,
) -> Result<Applied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let first = store(&mut tx, report).await?;
    let earliest: Option<StoredReport> = sqlx::query_as(
        "SELECT carrier, carrier_message_id, status, failure, error_code
         FROM delivery_receipts
         WHERE carrier = $1 AND carrier_message_id = $2 AND NOT applied
         ORDER BY id LIMIT 1",
    )
    .bind(report.carrier)
    .bind(report.carrier_message_id)
    .fetch_optional(&mut tx)
    .await?;
    let applied = match earliest {
        Some(earliest) => apply(&mut tx, &Reports::from(vec![earliest]), resend).await?,
        None => Vec::new(),
    };
    if !applied.is_empty() {
        sqlx::query(
            "UPDATE delivery_receipts SET applied = true
             WHERE carrier = $1 AND carrier_message_id = $2 AND NOT applied",
        )
        .bind(report.carrier)
        .bind(report.carrier_message_id)
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await?;
    if let Some(stats) = stats {
        applied.iter().for_each(|row| stats.receipt(&row.seen()));
    }
    Ok(match applied.first() {
        Some(row) => Applied::Applied {
            message_id: row.id,
            age_ms: row.age_ms,
            first,
            resent: row.resent,
        },
        None if first => Applied::Pending,
        None => Applied::Repeated,
    })
}

/// Reports as columns, for one statement.
#[derive(Debug, Default)]
struct Reports {
    carriers: Vec<String>,
    ids: Vec<String>,
    statuses: Vec<String>,
    failures: Vec<Option<String>>,
    codes: Vec<Option<String>>,
}

impl From<Vec<StoredReport>> for Reports {
    fn from(stored: Vec<StoredReport>) -> Self {
        let mut reports = Reports::default();
        for report in stored {
            reports.carriers.push(report.carrier);
            reports.ids.push(report.carrier_message_id);
            reports.statuses.push(report.status);
            reports.failures.push(report.failure);
            reports.codes.push(report.error_code);
        }
        reports
    }
}

/// A report as `delivery_receipts` holds it.
#[derive(Debug, sqlx::FromRow)]
struct StoredReport {
    carrier: String,
    carrier_message_id: String,
    status: String,
    failure: Option<String>,
    error_code: Option<String>,
}

/// A message a report applied to.
#[derive(Debug, sqlx::FromRow)]
struct AppliedRow {
    id: uuid::Uuid,
    carrier: String,
    carrier_message_id: String,
    age_ms: i64,
    resent: bool,
    recipient: String,
    sent_minute: i64,
    receipt_ms: i64,
    status: String,
    failure: Option<String>,
}

impl AppliedRow {
    /// The receipt, as the route measurements count it.
    fn seen(&self) -> ReceiptSeen {
        ReceiptSeen {
            carrier: self.carrier.clone(),
            recipient: self.recipient.clone(),
            sent_minute: self.sent_minute,
            receipt_ms: self.receipt_ms,
            status: Status::parse(&self.status).unwrap_or(Status::Undelivered),
            failure: match self.failure.as_deref() {
                Some("recipient") => Some(DeliveryFailure::Recipient),
                Some(_) => Some(DeliveryFailure::Route),
                None => None,
            },
        }
    }
}

/// Applies final reports to their messages still in `sent` (the first verdict wins). A route
/// failure whose message kept its body (a carrier of its route had not carried it) and has
/// the policy's time left goes back to the queue, due now, with the carriers that took it (or
/// may have: a call without an answer) recorded so no resend goes through them; every other
/// verdict ends the message and erases its body. Each send's attempt row gets its receipt.
async fn apply(
    conn: &mut Tx<'_>,
    reports: &Reports,
    resend: ResendPolicy,
) -> Result<Vec<AppliedRow>, sqlx::Error> {
    sqlx::query_as(APPLY)
        .bind(&reports.carriers)
        .bind(&reports.ids)
        .bind(&reports.statuses)
        .bind(&reports.failures)
        .bind(&reports.codes)
        .bind(resend.min_remaining_seconds())
        .bind(resend.max_attempts)
        .fetch_all(&mut *conn)
        .await
}

/// `$1`–`$5` the reports' columns, `$6` the seconds of life a resend needs, `$7` the attempts
/// a message may have made before (`dispatch.max_attempts`). `d` locks each message still
/// `sent` from the reporting carrier and decides once whether it goes out again.
const APPLY: &str = "WITH r AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
             AS r(carrier, carrier_message_id, status, failure, error_code)
     ), d AS (
         SELECT m.id, r.carrier, r.carrier_message_id, r.status, r.failure, r.error_code,
                r.status = 'undelivered' AND r.failure = 'route' AND m.body <> ''
                    AND m.attempts < $7 AND m.verified_at IS NULL
                    AND m.expires_at - now() >= make_interval(secs => $6) AS resend
         FROM r JOIN messages m
             ON m.carrier_message_id = r.carrier_message_id AND m.carrier = r.carrier
         WHERE m.status = 'sent'
         FOR UPDATE OF m
     ), m AS (
         UPDATE messages m
         SET status = CASE WHEN d.resend THEN 'queued' ELSE d.status END,
             finished_at = CASE WHEN d.resend THEN NULL ELSE m.finished_at END,
             carried_by = CASE WHEN d.resend
                          THEN ARRAY(SELECT DISTINCT a.carrier FROM message_attempts a
                                     WHERE a.message_id = m.id
                                       AND a.outcome IN ('sent', 'timeout'))
                          ELSE m.carried_by END,
             last_error = CASE WHEN d.status = 'undelivered' THEN
                              concat(m.carrier, ': not delivered, a ', coalesce(d.failure, 'route'),
                                     ' failure', ' (code ' || d.error_code || ')')
                          ELSE m.last_error END,
             body = CASE WHEN d.resend THEN m.body ELSE '' END,
             receipt_at = now()
         FROM d
         WHERE m.id = d.id
         RETURNING m.id, d.resend AS resent, m.expires_at, m.created_at, m.attempts,
                   d.carrier, d.carrier_message_id, d.status, d.failure, d.error_code,
                   (extract(epoch FROM now() - m.created_at) * 1000)::bigint AS age_ms,
                   m.recipient,
                   extract(epoch FROM date_trunc('minute', coalesce(m.sent_at, now())))::bigint
                       AS sent_minute,
                   (extract(epoch FROM now() - coalesce(m.sent_at, now())) * 1000)::bigint
                       AS receipt_ms
     ), q AS (
         INSERT INTO message_queue (message_id, run_at, expires_at, created_at, attempts)
         SELECT id, now(), expires_at, created_at, attempts FROM m WHERE resent
         ON CONFLICT (message_id) DO NOTHING
     ), a AS (
         UPDATE message_attempts a
         SET receipt_status = m.status, receipt_failure = m.failure,
             receipt_error_code = m.error_code, receipt_at = now()
         FROM m
         WHERE a.message_id = m.id AND a.carrier = m.carrier
           AND a.carrier_message_id = m.carrier_message_id AND a.receipt_status IS NULL
     )
     SELECT id, carrier, carrier_message_id, age_ms, resent, recipient, sent_minute, receipt_ms,
            status, failure
     FROM m";

/// The advisory-lock namespace of reports (the two-number form, apart from the single-number
/// locks such as retention's): "sg" "dr". A hash collision only makes two reports take turns.
const REPORT_LOCKS: i32 = 0x7367_6472;

/// Stores a report, not yet applied, unless the same (carrier, id, status) was stored before,
/// on any day; true when it is new.
async fn store(tx: &mut Tx<'_>, report: &Report<'_>) -> Result<bool, sqlx::Error> {
    let (carrier, carrier_message_id, status) =
        (report.carrier, report.carrier_message_id, report.status);
    // Receipts are partitioned by day, and a unique index only holds within a partition: the
    // lock makes "look in every day, then insert" one step, and the reports of one carrier
    // message take turns (whatever their status), so the earliest is always applied first.
    sqlx::query("SELECT pg_advisory_xact_lock($3, hashtext(concat_ws(' ', $1, $2)))")
        .bind(carrier)
        .bind(carrier_message_id)
        .bind(REPORT_LOCKS)
        .execute(&mut *tx)
        .await?;
    let stored_before: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM delivery_receipts
                        WHERE carrier = $1 AND carrier_message_id = $2 AND status = $3)",
    )
    .bind(carrier)
    .bind(carrier_message_id)
    .bind(status.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if stored_before {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO delivery_receipts
             (carrier, carrier_message_id, status, error_code, applied, failure)
         VALUES ($1, $2, $3, $4, false, $5)",
    )
    .bind(carrier)
    .bind(carrier_message_id)
    .bind(status.as_str())
    .bind(report.error_code)
    .bind(report.failure.map(DeliveryFailure::as_str))
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// Applies receipts that arrived before their message's outcome was written; forgets those
/// older than an hour that never matched. Returns how many were applied, and the carriers
/// that failed each message sent again. Only reports received `within` the last while are tried
/// (the resend watch looks at a code's lifetime every second; the retention sweep at all).
pub async fn apply_pending(
    pool: &Db,
    resend: ResendPolicy,
    within: Duration,
    stats: Option<&RouteStats>,
) -> Result<(u64, Vec<String>), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let applied = apply_pending_rows(&mut tx, resend, within).await?;
    tx.commit().await?;
    for row in &applied {
        // One more line of the message's life, under its id.
        tracing::info!(id = %row.id, carrier = %row.carrier, status = %row.status,
            resent = row.resent, "delivery receipt applied late");
    }
    if let Some(stats) = stats {
        applied.iter().for_each(|row| stats.receipt(&row.seen()));
    }
    let resent = applied
        .iter()
        .filter(|row| row.resent)
        .map(|row| row.carrier.clone())
        .collect();
    Ok((applied.len() as u64, resent))
}

/// The same inside the caller's transaction (the retention sweep, under its lock).
pub async fn apply_pending_in(
    conn: &mut Tx<'_>,
    resend: ResendPolicy,
    within: Duration,
) -> Result<(u64, u64), sqlx::Error> {
    let applied = apply_pending_rows(conn, resend, within).await?;
    let resent = applied.iter().filter(|row| row.resent).count() as u64;
    Ok((applied.len() as u64, resent))
}

async fn apply_pending_rows(
    conn: &mut Tx<'_>,
    resend: ResendPolicy,
    within: Duration,
) -> Result<Vec<AppliedRow>, sqlx::Error> {
    // The oldest unapplied report of each message id: the first verdict wins.
    let pending: Vec<StoredReport> = sqlx::query_as(
        "SELECT DISTINCT ON (carrier, carrier_message_id)
                    carrier, carrier_message_id, status, failure, error_code
             FROM delivery_receipts
             WHERE NOT applied AND received_at > now() - make_interval(secs => $1)
             ORDER BY carrier, carrier_message_id, id
             LIMIT 10000",
    )
    .bind(within.as_secs_f64())
    .fetch_all(&mut *conn)
    .await?;
    let reports = Reports::from(pending);
    let applied = if reports.ids.is_empty() {
        Vec::new()
    } else {
        apply(conn, &reports, resend).await?
    };
    if !applied.is_empty() {
        let (carriers, ids): (Vec<String>, Vec<String>) = applied
            .iter()
            .map(|row| (row.carrier.clone(), row.carrier_message_id.clone()))
            .unzip();
        sqlx::query(
            "UPDATE delivery_receipts d SET applied = true
             FROM unnest($1::text[], $2::text[]) AS m(carrier, carrier_message_id)
             WHERE d.carrier = m.carrier AND d.carrier_message_id = m.carrier_message_id
               AND NOT d.applied",
        )
        .bind(&carriers)
        .bind(&ids)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "UPDATE delivery_receipts SET applied = true
         WHERE NOT applied AND received_at < now() - interval '1 hour'",
    )
    .execute(&mut *conn)
    .await?;
    Ok(applied)
}

/// The database's clock in unix seconds: what a signed webhook's timestamp is judged by.
pub async fn database_epoch_seconds(pool: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT extract(epoch FROM now())::bigint")
        .fetch_one(pool)
        .await
}
