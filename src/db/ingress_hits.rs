//! The ingress's limits, decided inside the transaction that stores a batch: the batch's log
//! keys, then its idempotency keys, then (with a spend ceiling) today's spend rows are locked
//! in order; each message is a repeat, a reuse of a taken key, or admitted or refused against
//! the logs and totals as they stand (earlier messages of the same batch included); the logs
//! and totals are written back, and only the counted messages go on to the insert (repeats
//! are answered with their key's message). One commit makes all of it durable.

use std::collections::HashMap;

use super::Tx;
use super::{messages, spend};

use crate::config::LimitMode;
use crate::domain::NewMessage;
use crate::limits::ingress::{Check, IngressLimits, LimitRefusal, Limited, Monitored};
use crate::limits::window::{Admission, admit, to_pg_array};

type Logs = HashMap<String, Vec<i64>>;

/// The limits' verdict on one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New, and counted in every log and total it belongs to; the monitoring limits it went
    /// past.
    Counted(Monitored),
    /// The same request as the one its idempotency key was first used with (stored earlier,
    /// or counted earlier in this batch): it stores nothing new and counts nowhere.
    Repeat,
    /// Its idempotency key was first used with a different message: refused, counted nowhere.
    KeyReused,
    Refused(LimitRefusal),
}

/// Locks what `messages` are counted in and decides each message; returns one verdict per
/// message, in order, and has already written the updated logs and totals.
pub async fn admit_batch(
    conn: &mut Tx<'_>,
    limits: &IngressLimits,
    messages: &[&NewMessage],
) -> Result<Vec<Verdict>, sqlx::Error> {
    let checks: Vec<Vec<Check>> = messages.iter().map(|m| limits.checks(m)).collect();
    let (mut logs, now_ms) = lock_logs(conn, &checks).await?;
    // A batch with a copy of a keyed request waits here for any other batch holding the same
    // key, whatever logs each locks: the look-up below then sees that batch's commit, so two
    // copies are never both counted.
    lock_idempotency_keys(conn, messages).await?;
    let mut known = messages::known_keys(conn, messages).await?;
    let prior = |known: &HashMap<String, Option<String>>, m: &NewMessage| {
        let key = m.idempotency_key.as_ref()?;
        let first = known.get(key)?;
        Some(
            if messages::same_request(first.as_deref(), m.fingerprint.as_deref()) {
                Verdict::Repeat
            } else {
                Verdict::KeyReused
            },
        )
    };
    // Today's spend rows only for new messages the windows could admit: one they refuse
    // against the logs as they stand is refused in any order, and writes nothing.
    let admissible: Vec<&NewMessage> = messages
        .iter()
        .zip(&checks)
        .filter(|(m, checks)| prior(&known, m).is_none() && decide(&logs, now_ms, checks).is_ok())
        .map(|(message, _)| *message)
        .collect();
    let mut spend = spend::lock_today(conn, &limits.spend, &admissible).await?;

    let mut verdicts = Vec::with_capacity(messages.len());
    for (message, checks) in messages.iter().zip(&checks) {
        if let Some(verdict) = prior(&known, message) {
            verdicts.push(verdict);
            continue;
        }
        let verdict = decide(&logs, now_ms, checks).and_then(|(updates, monitored)| {
            spend
                .admit(message)
                .map_err(LimitRefusal::Spend)
                .map(|()| (updates, monitored))
        });
        verdicts.push(match verdict {
            Ok((updates, monitored)) => {
                // Admitted: only now is the request counted anywhere. A later copy in this
                // very batch is its repeat, or a reuse of its key.
                logs.extend(updates);
                if let Some(key) = &message.idempotency_key {
                    known.insert(key.clone(), message.fingerprint.clone());
                }
                Verdict::Counted(monitored)
            }
            Err(refusal) => Verdict::Refused(refusal),
        });
    }
    write_logs(conn, &logs).await?;
    spend.write(conn).await?;
    Ok(verdicts)
}

/// The advisory-lock namespace of idempotency keys (the two-number form, apart from the
/// single-number locks such as retention's): "sg" "ik".
const KEY_LOCKS: i32 = 0x7367_696b;

/// Takes a transaction-scoped advisory lock per idempotency key of the batch, in one order
/// (sorted, after the logs) so writers never deadlock. Keys are hashed to 32 bits in their
/// own namespace: a collision only makes two unrelated batches take turns. Each lock takes
/// a slot of PostgreSQL's shared lock table while its batch commits (docs/operations.md).
async fn lock_idempotency_keys(
    conn: &mut Tx<'_>,
    messages: &[&NewMessage],
) -> Result<(), sqlx::Error> {
    use sha2::{Digest, Sha256};
    let mut locks: Vec<i32> = messages
        .iter()
        .filter_map(|m| m.idempotency_key.as_deref())
        .map(|key| {
            let digest = Sha256::digest(key.as_bytes());
            let mut first = [0u8; 4];
            first.copy_from_slice(&digest[..4]);
            i32::from_be_bytes(first)
        })
        .collect();
    if locks.is_empty() {
        return Ok(());
    }
    locks.sort_unstable();
    locks.dedup();
    // unnest yields the array in order, so the locks are taken in that order.
    sqlx::query("SELECT pg_advisory_xact_lock($2, k) FROM unnest($1::int4[]) AS k")
        .bind(&locks)
        .bind(KEY_LOCKS)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Locks the logs of every key in `checks` (sorted: every writer locks in the same order, no
/// deadlocks) and returns them with the database's clock in epoch milliseconds.
async fn lock_logs(conn: &mut Tx<'_>, checks: &[Vec<Check>]) -> Result<(Logs, i64), sqlx::Error> {
    let mut keys: Vec<&str> = checks.iter().flatten().map(|c| c.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok((Logs::new(), 0));
    }
    let rows: Vec<(String, Vec<i64>, i64)> = sqlx::query_as(
        "INSERT INTO ingress_hits (key) SELECT k FROM unnest($1::text[]) AS k ORDER BY k
         ON CONFLICT (key) DO UPDATE SET updated_at = ingress_hits.updated_at
         RETURNING key, hits, (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let now_ms = rows.first().map_or(0, |(_, _, now)| *now);
    Ok((
        rows.into_iter().map(|(key, hits, _)| (key, hits)).collect(),
        now_ms,
    ))
}

/// One message against its checks: the logs with it added, and the monitoring limits it went
/// past; or the blocking limit that refuses it (the one that frees last).
fn decide(logs: &Logs, now_ms: i64, checks: &[Check]) -> Result<(Logs, Monitored), LimitRefusal> {
    let mut updates = Logs::new();
    let mut monitored = Monitored::new();
    let mut refused: Option<Limited> = None;
    for check in checks {
        let mut log = logs.get(&check.key).cloned().unwrap_or_default();
        match (admit(&mut log, now_ms, &check.windows), check.mode) {
            (Admission::Allowed, _) => {
                updates.insert(check.key.clone(), log);
            }
            (Admission::WaitMs(retry_after_ms), LimitMode::Block) => {
                if refused.is_none_or(|r| r.retry_after_ms < retry_after_ms) {
                    refused = Some(Limited {
                        kind: check.kind,
                        retry_after_ms,
                    });
                }
            }
            // One report per kind of limit, however many of its windows are over.
            (Admission::WaitMs(_), LimitMode::Monitor) => {
                if !monitored.contains(&check.kind) {
                    monitored.push(check.kind);
                }
            }
        }
    }
    match refused {
        Some(limited) => Err(LimitRefusal::Window(limited)),
        None => Ok((updates, monitored)),
    }
}

/// Writes the logs back. A key with no hit in its windows is deleted rather than kept:
/// refused requests count nothing, so a caller spraying new numbers or addresses leaves no
/// rows behind.
async fn write_logs(conn: &mut Tx<'_>, logs: &Logs) -> Result<(), sqlx::Error> {
    if logs.is_empty() {
        return Ok(());
    }
    let (empty, counted): (Vec<_>, Vec<_>) = logs.iter().partition(|(_, log)| log.is_empty());
    let (keys, hits): (Vec<&str>, Vec<String>) = counted
        .into_iter()
        .map(|(key, log)| (key.as_str(), to_pg_array(log)))
        .unzip();
    sqlx::query(
        "UPDATE ingress_hits h SET hits = v.hits::bigint[], updated_at = clock_timestamp()
         FROM unnest($1::text[], $2::text[]) AS v(key, hits) WHERE h.key = v.key",
    )
    .bind(&keys)
    .bind(&hits)
    .execute(&mut *conn)
    .await?;
    if !empty.is_empty() {
        let empty: Vec<&str> = empty.into_iter().map(|(key, _)| key.as_str()).collect();
        sqlx::query("DELETE FROM ingress_hits WHERE key = ANY($1)")
            .bind(&empty)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
