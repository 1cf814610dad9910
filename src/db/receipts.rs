//! Delivery receipts: recorded as they arrive and applied to the message they name, which
//! moves from `sent` to `delivered` or `undelivered` (the first verdict wins), or back to the
//! queue when a route failure leaves another carrier and time to send the code again.

use std::time::Duration;

use super::{Db, Tx};

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
/// life left (`None`: never).
#[derive(Debug, Clone, Copy)]
pub struct ResendPolicy {
    pub min_remaining: Option<Duration>,
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
        }
    }

    /// Seconds of life a resend needs; past any code's life when resends are off (a
    /// billion seconds: PostgreSQL's intervals hold it).
    pub(super) fn min_remaining_seconds(&self) -> f64 {
        self.min_remaining.map_or(1e9, |d| d.as_secs_f64())
    }
}

/// Records a receipt and applies it when its message is known.
pub async fn record(
    pool: &Db,
    report: &Report<'_>,
    resend: ResendPolicy,
) -> Result<Applied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let applied = apply(&mut tx, &Reports::one(report), resend).await?;
    let first = store(&mut tx, report, !applied.is_empty()).await?;
    tx.commit().await?;
    Ok(match applied.first() {
        Some(row) => Applied::Applied {
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

impl Reports {
    fn one(report: &Report<'_>) -> Self {
        Self {
            carriers: vec![report.carrier.to_string()],
            ids: vec![report.carrier_message_id.to_string()],
            statuses: vec![report.status.as_str().to_string()],
            failures: vec![report.failure.map(|f| f.as_str().to_string())],
            codes: vec![report.error_code.map(str::to_string)],
        }
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
    carrier: String,
    carrier_message_id: String,
    age_ms: i64,
    resent: bool,
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
        .fetch_all(&mut *conn)
        .await
}

/// `$1`–`$5` the reports' columns, `$6` the seconds of life a resend needs. Each `CASE`
/// repeats the resend condition: an UPDATE's expressions all see the row as it was.
const APPLY: &str = "WITH r AS (
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
             AS r(carrier, carrier_message_id, status, failure, error_code)
     ), m AS (
         UPDATE messages m
         SET status = CASE WHEN r.status = 'undelivered' AND r.failure = 'route' AND m.body <> ''
                            AND m.expires_at - now() >= make_interval(secs => $6)
                      THEN 'queued' ELSE r.status END,
             finished_at = CASE WHEN r.status = 'undelivered' AND r.failure = 'route'
                                 AND m.body <> ''
                                 AND m.expires_at - now() >= make_interval(secs => $6)
                           THEN NULL ELSE m.finished_at END,
             carried_by = CASE WHEN r.status = 'undelivered' AND r.failure = 'route'
                                AND m.body <> ''
                                AND m.expires_at - now() >= make_interval(secs => $6)
                          THEN ARRAY(SELECT DISTINCT a.carrier FROM message_attempts a
                                     WHERE a.message_id = m.id
                                       AND a.outcome IN ('sent', 'timeout'))
                          ELSE m.carried_by END,
             last_error = CASE WHEN r.status = 'undelivered' THEN
                              concat(m.carrier, ': not delivered, a ', coalesce(r.failure, 'route'),
                                     ' failure', ' (code ' || r.error_code || ')')
                          ELSE m.last_error END,
             body = CASE WHEN r.status = 'undelivered' AND r.failure = 'route' AND m.body <> ''
                          AND m.expires_at - now() >= make_interval(secs => $6)
                    THEN m.body ELSE '' END,
             receipt_at = now()
         FROM r
         WHERE m.carrier_message_id = r.carrier_message_id AND m.carrier = r.carrier
           AND m.status = 'sent'
         RETURNING m.id, m.status = 'queued' AS resent, m.expires_at, m.created_at, m.attempts,
                   r.carrier, r.carrier_message_id, r.status, r.failure, r.error_code,
                   (extract(epoch FROM now() - m.created_at) * 1000)::bigint AS age_ms
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
     SELECT carrier, carrier_message_id, age_ms, resent FROM m";

/// The advisory-lock namespace of reports (the two-number form, apart from the single-number
/// locks such as retention's): "sg" "dr". A hash collision only makes two reports take turns.
const REPORT_LOCKS: i32 = 0x7367_6472;

/// Stores a report unless the same (carrier, id, status) was stored before, on any day; true
/// when it is new. A repeat only marks the first copy applied, when this one applied it (the
/// first came before its message's outcome was written).
async fn store(tx: &mut Tx<'_>, report: &Report<'_>, applied: bool) -> Result<bool, sqlx::Error> {
    let (carrier, carrier_message_id, status) =
        (report.carrier, report.carrier_message_id, report.status);
    // Receipts are partitioned by day, and a unique index only holds within a partition: the
    // lock makes "look in every day, then insert" one step for this report, across processes.
    sqlx::query("SELECT pg_advisory_xact_lock($4, hashtext(concat_ws(' ', $1, $2, $3)))")
        .bind(carrier)
        .bind(carrier_message_id)
        .bind(status.as_str())
        .bind(REPORT_LOCKS)
        .execute(&mut *tx)
        .await?;
    let repeated = sqlx::query(
        "UPDATE delivery_receipts SET applied = true
         WHERE carrier = $1 AND carrier_message_id = $2 AND status = $3 AND $4 AND NOT applied",
    )
    .bind(carrier)
    .bind(carrier_message_id)
    .bind(status.as_str())
    .bind(applied)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    let stored_before: bool = repeated
        || sqlx::query_scalar(
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
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(carrier)
    .bind(carrier_message_id)
    .bind(status.as_str())
    .bind(report.error_code)
    .bind(applied)
    .bind(report.failure.map(DeliveryFailure::as_str))
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// Applies receipts that arrived before their message's outcome was written; forgets those
/// older than an hour that never matched. Returns how many were applied, and how many of
/// those sent their message again. Only reports received `within` the last while are tried
/// (the resend watch looks at a code's lifetime every second; the retention sweep at all).
pub async fn apply_pending(
    pool: &Db,
    resend: ResendPolicy,
    within: Duration,
) -> Result<(u64, u64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let applied = apply_pending_in(&mut tx, resend, within).await?;
    tx.commit().await?;
    Ok(applied)
}

/// The same inside the caller's transaction (the retention sweep, under its lock).
pub async fn apply_pending_in(
    conn: &mut Tx<'_>,
    resend: ResendPolicy,
    within: Duration,
) -> Result<(u64, u64), sqlx::Error> {
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
    let mut reports = Reports::default();
    for report in pending {
        reports.carriers.push(report.carrier);
        reports.ids.push(report.carrier_message_id);
        reports.statuses.push(report.status);
        reports.failures.push(report.failure);
        reports.codes.push(report.error_code);
    }
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
    let resent = applied.iter().filter(|row| row.resent).count() as u64;
    Ok((applied.len() as u64, resent))
}

/// The database's clock in unix seconds: what a signed webhook's timestamp is judged by.
pub async fn database_epoch_seconds(pool: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT extract(epoch FROM now())::bigint")
        .fetch_one(pool)
        .await
}
