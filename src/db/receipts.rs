//! Delivery receipts: recorded as they arrive and applied to the message they name, which
//! moves from `sent` to `delivered` or `undelivered` (the first verdict wins).

use super::{Db, Tx};

use crate::domain::Status;

/// What a receipt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The message is now `delivered` or `undelivered`; it was accepted `age_ms` before, by
    /// the database's clock. `first` is false when this report was recorded before (kept for
    /// later) and a repeat of it applied it now.
    Applied { age_ms: i64, first: bool },
    /// No message in `sent` with that carrier id yet (or any more): kept for the sweep.
    Pending,
    /// The same report (carrier, id, status) was recorded before: nothing new.
    Repeated,
}

/// Records a receipt and applies it when its message is known.
pub async fn record(
    pool: &Db,
    carrier: &str,
    carrier_message_id: &str,
    status: Status,
    error_code: Option<&str>,
) -> Result<Applied, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let age_ms: Option<i64> = sqlx::query_scalar(
        "UPDATE messages SET status = $3, receipt_at = now()
         WHERE carrier_message_id = $2 AND carrier = $1 AND status = 'sent'
         RETURNING (extract(epoch FROM now() - created_at) * 1000)::bigint",
    )
    .bind(carrier)
    .bind(carrier_message_id)
    .bind(status.as_str())
    .fetch_optional(&mut tx)
    .await?;
    let first = store(
        &mut tx,
        carrier,
        carrier_message_id,
        status,
        error_code,
        age_ms.is_some(),
    )
    .await?;
    tx.commit().await?;
    Ok(match age_ms {
        Some(age_ms) => Applied::Applied { age_ms, first },
        None if first => Applied::Pending,
        None => Applied::Repeated,
    })
}

/// The advisory-lock namespace of reports (the two-number form, apart from the single-number
/// locks such as retention's): "sg" "dr". A hash collision only makes two reports take turns.
const REPORT_LOCKS: i32 = 0x7367_6472;

/// Stores a report unless the same (carrier, id, status) was stored before, on any day; true
/// when it is new. A repeat only marks the first copy applied, when this one applied it (the
/// first came before its message's outcome was written).
async fn store(
    tx: &mut Tx<'_>,
    carrier: &str,
    carrier_message_id: &str,
    status: Status,
    error_code: Option<&str>,
    applied: bool,
) -> Result<bool, sqlx::Error> {
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
        "INSERT INTO delivery_receipts (carrier, carrier_message_id, status, error_code, applied)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(carrier)
    .bind(carrier_message_id)
    .bind(status.as_str())
    .bind(error_code)
    .bind(applied)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// Applies receipts that arrived before their message's outcome was written; forgets those
/// older than an hour that never matched. Returns how many were applied.
pub async fn apply_pending(pool: &Db) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let applied = apply_pending_in(&mut tx).await?;
    tx.commit().await?;
    Ok(applied)
}

/// The same inside the caller's transaction (the retention sweep, under its lock).
pub async fn apply_pending_in(conn: &mut Tx<'_>) -> Result<u64, sqlx::Error> {
    let applied = sqlx::query(
        "WITH r AS (
             SELECT DISTINCT ON (carrier, carrier_message_id) id, carrier, carrier_message_id, status
             FROM delivery_receipts WHERE NOT applied
             ORDER BY carrier, carrier_message_id, id
         ), m AS (
             UPDATE messages m SET status = r.status, receipt_at = now()
             FROM r
             WHERE m.carrier_message_id = r.carrier_message_id AND m.carrier = r.carrier
               AND m.status = 'sent'
             RETURNING r.carrier, r.carrier_message_id
         )
         UPDATE delivery_receipts d SET applied = true
         FROM m WHERE d.carrier = m.carrier AND d.carrier_message_id = m.carrier_message_id
           AND NOT d.applied",
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
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
