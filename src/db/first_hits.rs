//! A batch whose limit keys are new, stored by one statement. Most requests in production go
//! to a number (from a client address) that no limit has seen within its window: their first
//! event needs no decision (every cap allows one), only a row that counts it. So one statement
//! creates those rows, each with its first event, and stores exactly the messages whose every
//! key it created; a message with a key that exists (a number seen within the hour) is left
//! for the reservation, which decides it on the row. Creating a row is what makes it exact
//! across processes: of two batches with the same new key, the second waits for the first's
//! insert to commit and then finds the key taken.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Tx;
use super::messages::{Columns, Enqueued};
use crate::domain::{MessageId, NewMessage};
use crate::limits::window::FIRST_EVENT;

/// What the statement did.
#[derive(Debug, Default)]
pub struct FirstHits {
    /// The messages it stored, by id.
    pub stored: HashMap<Uuid, Enqueued>,
    /// The keys whose rows it created, each holding one event at `now_ms`.
    pub created: HashSet<String>,
    /// The database's clock when it counted (epoch ms).
    pub now_ms: i64,
}

/// The new keys to count, in key order (concurrent batches create rows in one order), each
/// with its windows' spans (`Counts::spans`) and the message that needs it.
#[derive(Debug, Default)]
pub struct NewKeys {
    pub keys: Vec<String>,
    pub spans: Vec<String>,
    /// Per key: the place of the one message that needs it, counted from 1.
    pub owners: Vec<i64>,
    /// The widths of their windows' buckets (ms), each once.
    pub widths: Vec<i64>,
}

/// One row of the statement: a stored message, a created key, or the clock.
type Row = (
    Option<Uuid>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<i64>,
);

/// Creates the rows of `new_keys` that do not exist yet, each with one event, and stores each
/// message of `messages` whose keys (those `new_keys.owners` gives it; none for a message no
/// row limit counts) were all created, with its queue entry; one statement, which commits on
/// its own. The messages have no idempotency key.
pub async fn insert(
    conn: &mut Tx<'_>,
    messages: &[&NewMessage],
    new_keys: &NewKeys,
    ttl_seconds: u32,
) -> Result<FirstHits, sqlx::Error> {
    let c = Columns::of(messages);
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(STATEMENT.as_str()))
        .bind(&c.ids)
        .bind(&c.recipients)
        .bind(&c.bodies)
        .bind(&c.senders)
        .bind(&c.ips)
        .bind(&c.agents)
        .bind(&c.signers)
        .bind(f64::from(ttl_seconds))
        .bind(&c.segments)
        .bind(&c.encodings)
        .bind(&c.countries)
        .bind(&c.costs)
        .bind(&c.channels)
        .bind(&c.locales)
        .bind(&new_keys.keys)
        .bind(&new_keys.spans)
        .bind(&new_keys.owners)
        .bind(&new_keys.widths)
        .bind(&c.traces)
        .fetch_all(&mut *conn)
        .await?;
    let mut hits = FirstHits::default();
    for row in rows {
        hits.take(row)?;
    }
    Ok(hits)
}

/// The statement: `$1`–`$14` the messages' columns, `$15` and `$16` the new keys and their
/// spans, `$17` their owners, `$18` the keys' bucket widths, `$19` the messages' traceparents. Built once (it embeds
/// `FIRST_EVENT`). Which messages lost a key is one hashed anti-join over flat arrays, not a
/// list split per message (that cost a seventh of the database's time).
static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(statement);

fn statement() -> String {
    format!(
        "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
         h AS (
             INSERT INTO ingress_hits (key, counts, fresh)
             SELECT v.key, {FIRST_EVENT}, true
             FROM unnest($15::text[], $16::text[]) AS v(key, spans), now ORDER BY v.key
             ON CONFLICT (key) DO NOTHING
             RETURNING key
         ), late AS (
             -- The first events were counted at now.ms; a row insert that waited on another
             -- batch's may end in a later bucket: then store nothing (the reservation will).
             SELECT NOT EXISTS (
                 SELECT 1 FROM unnest($18::bigint[]) AS w(width)
                 WHERE c.ms / w.width <> now.ms / w.width) AS in_time
             FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms
                   FROM (SELECT count(*) FROM h) AS done) AS c, now
         ), lost AS (
             -- The messages a key of which another batch created first.
             SELECT v.owner FROM unnest($15::text[], $17::bigint[]) AS v(key, owner)
             WHERE v.key NOT IN (SELECT key FROM h)
         ), mv AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $9::smallint[], $10::text[],
                                  $11::text[], $12::bigint[], $13::text[], $14::text[],
                                  $19::text[])
                 WITH ORDINALITY
                 AS mv(id, recipient, body, sender, client_ip, user_agent, signer, segments,
                       encoding, country, cost, channel, locale, trace, place)
         ), m AS (
             INSERT INTO messages
                 (id, recipient, body, sender, client_ip, user_agent, signer, expires_at,
                  segments, encoding, country, estimated_cost_micros, channel, locale,
                  traceparent)
             SELECT id, recipient, body, sender, client_ip::inet, user_agent, signer,
                    now() + make_interval(secs => $8), segments, encoding, country, cost,
                    channel, locale, trace
             FROM mv, late
             WHERE mv.place NOT IN (SELECT owner FROM lost) AND late.in_time
             RETURNING id, created_at, expires_at
         ), q AS (
             INSERT INTO message_queue (message_id, run_at, expires_at, created_at)
             SELECT id, created_at, expires_at, created_at FROM m
         )
         SELECT id, created_at, expires_at, NULL::text, NULL::bigint FROM m
         UNION ALL SELECT NULL, NULL, NULL, key, NULL FROM h
         UNION ALL SELECT NULL, NULL, NULL, NULL, ms FROM now"
    )
}

impl FirstHits {
    fn take(&mut self, row: Row) -> Result<(), sqlx::Error> {
        match row {
            (Some(id), Some(created_at), Some(expires_at), None, None) => {
                let enqueued = Enqueued {
                    id: MessageId(id),
                    created_at,
                    expires_at,
                };
                self.stored.insert(id, enqueued);
            }
            (None, None, None, Some(key), None) => {
                self.created.insert(key);
            }
            (None, None, None, None, Some(ms)) => self.now_ms = ms,
            _ => {
                return Err(sqlx::Error::Protocol(
                    "unexpected row storing a batch".into(),
                ));
            }
        }
        Ok(())
    }
}
