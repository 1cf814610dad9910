//! Logins that a phone code completed (`POST /v1/verifications`): the number's newest message
//! sent within its code's life is marked verified, once. What proves a code arrived is the
//! login that used it: receipts can say "delivered" for a message that never came, and SNS
//! sends none.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Db;

/// What a verification did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributed {
    /// Marked now: the message, the carrier that carried it, and the minute of its send
    /// (epoch seconds, for the route measurements).
    New {
        message_id: Uuid,
        carrier: Option<String>,
        sent_minute: i64,
    },
    /// That message was marked before (the Action ran again): nothing changes.
    Repeated { message_id: Uuid },
    /// No message to the number was sent and still alive at that time.
    NoMessage,
    /// The time given is more than a day before, or minutes after, the database's clock.
    OutOfRange,
}

/// How far apart Auth0's clock and the database's may be when matching a login to a send.
const SKEW_SECONDS: f64 = 30.0;

/// Marks the newest message of `signer` to `recipient` (E.164) sent by `at` (the database's
/// clock when `None`) whose code was still alive then, unless one was marked for that login
/// already. Another signer's messages are never seen: a tenant learns nothing of another's.
pub async fn attribute(
    pool: &Db,
    signer: Option<&str>,
    recipient: &str,
    at: Option<DateTime<Utc>>,
) -> Result<Attributed, sqlx::Error> {
    let row: (
        bool,
        Option<Uuid>,
        Option<bool>,
        Option<String>,
        Option<i64>,
    ) = sqlx::query_as(
        "WITH t AS (
             SELECT coalesce($2::timestamptz, now()) AS at,
                    coalesce($2::timestamptz, now()) BETWEEN now() - interval '1 day'
                                                         AND now() + interval '5 minutes'
                        AS in_range
         ), c AS (
             SELECT m.id, m.verified_at IS NOT NULL AS verified
             FROM messages m, t
             WHERE t.in_range AND m.recipient = $1 AND m.sent_at IS NOT NULL
               -- Messages are partitioned by their UUIDv7 id (time first): only the days a
               -- code alive at t.at can come from are read.
               AND m.id >= (lpad(to_hex((extract(epoch FROM t.at - interval '2 days') * 1000)
                                 ::bigint), 12, '0') || repeat('0', 20))::uuid
               AND m.signer IS NOT DISTINCT FROM $4
               AND m.sent_at <= t.at + make_interval(secs => $3)
               AND m.expires_at >= t.at - make_interval(secs => $3)
             ORDER BY m.sent_at DESC
             LIMIT 1
             FOR UPDATE OF m
         ), u AS (
             UPDATE messages m
             SET verified_at = t.at,
                 -- The code did its work: no resend will need it.
                 body = CASE WHEN m.status = 'sent' THEN '' ELSE m.body END
             FROM c, t
             WHERE m.id = c.id AND NOT c.verified
             RETURNING m.id, m.carrier,
                       extract(epoch FROM date_trunc('minute', m.sent_at))::bigint AS minute
         )
         SELECT t.in_range, c.id, c.verified, u.carrier, u.minute
         FROM t LEFT JOIN c ON true LEFT JOIN u ON u.id = c.id",
    )
    .bind(recipient)
    .bind(at)
    .bind(SKEW_SECONDS)
    .bind(signer)
    .fetch_one(pool)
    .await?;
    Ok(match row {
        (false, ..) => Attributed::OutOfRange,
        (true, None, ..) => Attributed::NoMessage,
        (true, Some(message_id), Some(true), ..) => Attributed::Repeated { message_id },
        (true, Some(message_id), _, carrier, minute) => Attributed::New {
            message_id,
            carrier,
            sent_minute: minute.unwrap_or_default(),
        },
    })
}
