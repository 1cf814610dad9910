//! Sent messages still waiting for their receipt. A sent message keeps its body while a route
//! failure could still send it again (`dispatch::send` decides, `receipts` resends on a
//! receipt); this module ends that wait for the rest: it erases the bodies no resend can use
//! any more, and treats a carrier's silence past its `receipt_timeout_seconds` as a route
//! failure. Both read only the `messages_awaiting_receipt` index (a few minutes of sends).

use std::time::Duration;

use super::Db;
use super::receipts::ResendPolicy;

/// Erases the bodies of sent messages with too little life left for a resend (all of them,
/// with resends off); how many.
pub async fn erase_spent_bodies(pool: &Db, resend: ResendPolicy) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE messages SET body = ''
         WHERE status = 'sent' AND body <> ''
           AND expires_at < now() + make_interval(secs => $1)",
    )
    .bind(resend.min_remaining_seconds())
    .execute(pool)
    .await?
    .rows_affected())
}

/// Sends again the messages `carrier` took at least `timeout` ago with no final receipt, while
/// they have the policy's time left; how many. A message accepted at `created_at` was sent
/// after it, so only those whose expiry is at most `ttl - timeout` from now can be that old:
/// the scan covers the candidates, not every message waiting.
pub async fn resend_silent(
    pool: &Db,
    carrier: &str,
    timeout: Duration,
    resend: ResendPolicy,
    ttl: Duration,
) -> Result<Vec<uuid::Uuid>, sqlx::Error> {
    let Some(newest) = ttl.checked_sub(timeout) else {
        // Every code expires before its carrier's silence could count.
        return Ok(Vec::new());
    };
    sqlx::query_scalar(
        "WITH s AS (
             SELECT id FROM messages
             WHERE status = 'sent' AND body <> '' AND carrier = $1
               AND expires_at >= now() + make_interval(secs => $3)
               AND expires_at <= now() + make_interval(secs => $4)
               AND sent_at <= now() - make_interval(secs => $2)
               AND attempts < $6 AND verified_at IS NULL
             ORDER BY expires_at
             LIMIT 1000
             FOR UPDATE SKIP LOCKED
         ), m AS (
             UPDATE messages m
             SET status = 'queued', finished_at = NULL,
                 carried_by = ARRAY(SELECT DISTINCT a.carrier FROM message_attempts a
                                    WHERE a.message_id = m.id
                                      AND a.outcome IN ('sent', 'timeout')),
                 last_error = concat(m.carrier, ': no receipt within ', $5::bigint,
                                     ' s, a silent route failure')
             FROM s
             WHERE m.id = s.id AND m.status = 'sent'
             RETURNING m.id, m.expires_at, m.created_at, m.attempts, m.carrier,
                       m.carrier_message_id
         ), q AS (
             INSERT INTO message_queue (message_id, run_at, expires_at, created_at, attempts)
             SELECT id, now(), expires_at, created_at, attempts FROM m
             ON CONFLICT (message_id) DO NOTHING
         ), a AS (
             UPDATE message_attempts a
             SET receipt_status = 'none', receipt_failure = 'route', receipt_at = now()
             FROM m
             WHERE a.message_id = m.id AND a.carrier = m.carrier AND a.outcome = 'sent'
               AND a.carrier_message_id IS NOT DISTINCT FROM m.carrier_message_id
               AND a.receipt_status IS NULL
         )
         SELECT id FROM m",
    )
    .bind(carrier)
    .bind(timeout.as_secs_f64())
    .bind(resend.min_remaining_seconds())
    .bind(newest.as_secs_f64())
    .bind(timeout.as_secs() as i64)
    .bind(resend.max_attempts)
    .fetch_all(pool)
    .await
}
