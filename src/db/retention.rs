//! The retention sweep's SQL: drops the days of messages (with their attempts) and of
//! receipts that are wholly past `retention.days` (`partitions`), deletes by row only what
//! lies outside the day partitions (the default partition and an upgrade's legacy one), forgets
//! send and ingress logs older than their longest limit window, and applies delivery receipts
//! that arrived early; rows in small batches, on one process at a time (an advisory lock).

use super::{Db, Tx};
use tokio_util::sync::CancellationToken;

/// Days of `spend_days` kept after the day they count (the ceilings need only today's).
const SPEND_DAYS_KEPT: i32 = 31;

const BATCH: i64 = 1000;
/// How long an idempotency key answers for its message: Auth0 retries a custom phone
/// provider's Action within minutes; an hour leaves ample room.
pub const IDEMPOTENCY_WINDOW_SECONDS: u32 = 3600;

/// A receipt that matched no sent message is tried again for this long, then forgotten
/// (`receipts::apply_pending_in`).
const PENDING_KEPT: std::time::Duration = std::time::Duration::from_secs(3600);

/// What is kept how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Final messages, in days.
    pub days: u32,
    /// The longest `[[limits.recipient]]` window.
    pub send_log_seconds: u32,
    /// The longest `[[limits.ip]]` or `[[limits.ingress_recipient]]` window.
    pub ingress_log_seconds: u32,
    /// When a late receipt's route failure sends its message again.
    pub resend: super::receipts::ResendPolicy,
}

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Messages deleted row by row (outside the day partitions).
    pub deleted: u64,
    /// Partitions dropped whole, by name.
    pub dropped: Vec<String>,
}

/// One pass: makes sure the coming days have their partitions, drops the days past
/// retention, then deletes by row what is left outside them.
pub async fn sweep(
    pool: &Db,
    plan: Plan,
    shutdown: &CancellationToken,
) -> Result<Swept, sqlx::Error> {
    let skipped = super::partitions::create_ahead(pool).await?;
    if !skipped.is_empty() {
        tracing::warn!(
            days = ?skipped,
            "the default partition holds messages of coming days (a gateway clock ahead?): \
             those days stay in it and retention deletes them row by row"
        );
    }
    let dropped = super::partitions::drop_expired(pool, plan.days).await?;
    let deleted = sweep_rows(pool, plan, shutdown).await?;
    Ok(Swept { deleted, dropped })
}

/// Deletes by row, in batches: messages outside the day partitions and the side tables.
async fn sweep_rows(
    pool: &Db,
    plan: Plan,
    shutdown: &CancellationToken,
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    let mut first = true;
    loop {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(super::RETENTION_LOCK)
            .fetch_one(&mut tx)
            .await?;
        if !locked {
            return Ok(total);
        }
        if std::mem::take(&mut first) {
            // Once per sweep, by the one process holding the lock: receipts that beat their
            // message's outcome write.
            let (applied, resent) =
                super::receipts::apply_pending_in(&mut tx, plan.resend, PENDING_KEPT).await?;
            if applied > 0 {
                tracing::info!(applied, resent, "delivery receipts applied late");
            }
        }
        let mut deleted = 0;
        for table in row_swept(&mut tx, "messages").await? {
            deleted += delete_old_messages(&mut tx, &table, plan.days).await?;
        }
        let side_tables_full = sweep_side_tables(&mut tx, plan).await?;
        let more = deleted >= BATCH as u64 || side_tables_full;
        tx.commit().await?;
        total += deleted;
        if !more || shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}

/// The partitions of `table` that are swept by row: the default one, and the legacy one an
/// upgrade attached while it exists.
async fn row_swept(tx: &mut Tx<'_>, table: &str) -> Result<Vec<String>, sqlx::Error> {
    let legacy = format!("{table}_legacy");
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&legacy)
        .fetch_one(&mut *tx)
        .await?;
    let default = format!("{table}_default");
    Ok(if exists {
        vec![default, legacy]
    } else {
        vec![default]
    })
}

/// One batch of final messages past retention from a partition swept by row, with their
/// attempts (which no foreign key cascades to: they share the messages' partition bounds).
async fn delete_old_messages(tx: &mut Tx<'_>, table: &str, days: u32) -> Result<u64, sqlx::Error> {
    // The name comes from `row_swept`, never from input.
    let statement = format!(
        "WITH gone AS (
             DELETE FROM {table} WHERE id IN (
                 SELECT id FROM {table}
                 WHERE finished_at < now() - make_interval(days => least($1, 36500))
                 ORDER BY finished_at LIMIT $2)
             AND finished_at < now() - make_interval(days => least($1, 36500))
             RETURNING id
         ), attempts AS (
             DELETE FROM message_attempts WHERE message_id IN (SELECT id FROM gone)
         )
         SELECT count(*) FROM gone"
    );
    let deleted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(statement))
        .bind(i32::try_from(days).unwrap_or(i32::MAX))
        .bind(BATCH)
        .fetch_one(&mut *tx)
        .await?;
    Ok(deleted.unsigned_abs())
}

/// One batch from each side table, each older than what it is kept for; true when some
/// table had a full batch (more may be due).
async fn sweep_side_tables(tx: &mut Tx<'_>, plan: Plan) -> Result<bool, sqlx::Error> {
    let days_seconds = f64::from(plan.days.min(36_500)) * 86_400.0;
    // The side tables, each older than what it is kept for: (table, key, age column, seconds).
    let mut side_tables = vec![
        (
            "recipient_sends".to_string(),
            "recipient",
            "updated_at",
            f64::from(plan.send_log_seconds),
        ),
        (
            "idempotency_keys".to_string(),
            "key",
            "created_at",
            f64::from(IDEMPOTENCY_WINDOW_SECONDS),
        ),
        (
            "ingress_hits".to_string(),
            "key",
            "updated_at",
            f64::from(plan.ingress_log_seconds),
        ),
    ];
    // Receipts outside the day partitions (those go whole, with their day).
    for receipts in row_swept(tx, "delivery_receipts").await? {
        side_tables.push((receipts, "id", "received_at", days_seconds));
    }
    // Every table is swept until it is done, not only while messages are: a side table
    // can grow faster than the messages (keys, refused ingress hits). Rows another
    // transaction holds are skipped, never waited for: the limits lock their rows in an
    // order of their own, and a sweep waiting in scan order could close a cycle with them
    // (a deadlock, one request answered 503). The age is checked again on the row itself.
    let mut more = false;
    for (table, key, age, seconds) in side_tables {
        // Names from the list above, never from input.
        let statement = format!(
            "DELETE FROM {table} WHERE {key} IN (
                 SELECT {key} FROM {table}
                 WHERE {age} < now() - make_interval(secs => $1) LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             AND {age} < now() - make_interval(secs => $1)"
        );
        let swept = sqlx::query(sqlx::AssertSqlSafe(statement))
            .bind(seconds)
            .bind(BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        more |= swept == BATCH as u64;
    }
    // A few hundred rows a day at most (one per country): one statement, no batches.
    sqlx::query("DELETE FROM spend_days WHERE day < (now() AT TIME ZONE 'UTC')::date - $1::int")
        .bind(SPEND_DAYS_KEPT)
        .execute(&mut *tx)
        .await?;
    Ok(more)
}
