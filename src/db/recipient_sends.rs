//! The send log behind `[[limits.recipient]]`: one row per number with the times (database
//! clock, epoch ms) of its sends within the longest window. A send is admitted right before
//! its carrier call, under the row's lock, so the log holds the sends that really happen, in
//! the order they happen, across every process.

use super::Db;

use crate::config::WindowLimit;
use crate::limits::window::{self, Admission};

/// Admits one send to `recipient` now, or says how long until its windows allow one; with
/// the database's time of the decision (epoch ms), which an admitted send is logged at.
/// Waits at most `lock_wait` for the number's row (then an error, nothing logged): a bound
/// the database enforces, so a caller never abandons an admission that may have committed.
pub async fn admit(
    pool: &Db,
    recipient: &str,
    windows: &[WindowLimit],
    lock_wait: std::time::Duration,
) -> Result<(Admission, i64), sqlx::Error> {
    let mut tx = pool.begin_waiting_at_most(lock_wait).await?;
    // Created or locked in one statement; the clock is read once the lock is held, so two
    // processes' sends to one number are logged in the order they were admitted.
    let (mut sends, now_ms): (Vec<i64>, i64) = sqlx::query_as(
        "INSERT INTO recipient_sends (recipient) VALUES ($1)
         ON CONFLICT (recipient) DO UPDATE SET updated_at = recipient_sends.updated_at
         RETURNING sends, (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .bind(recipient)
    .fetch_one(&mut tx)
    .await?;
    let admission = window::admit(&mut sends, now_ms, windows);
    if admission == Admission::Allowed {
        sqlx::query(
            "UPDATE recipient_sends SET sends = $2, updated_at = clock_timestamp() WHERE recipient = $1",
        )
        .bind(recipient)
        .bind(&sends)
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok((admission, now_ms))
}

/// Takes one send logged at `at_ms` out of `recipient`'s log: it was admitted, then not made.
pub async fn withdraw(pool: &Db, recipient: &str, at_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE recipient_sends
         SET sends = sends[:array_position(sends, $2) - 1] || sends[array_position(sends, $2) + 1:],
             updated_at = clock_timestamp()
         WHERE recipient = $1 AND array_position(sends, $2) IS NOT NULL",
    )
    .bind(recipient)
    .bind(at_ms)
    .execute(pool)
    .await?;
    Ok(())
}
