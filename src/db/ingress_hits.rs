//! The ingress's limits, decided inside the transaction that stores a batch: the batch's keys
//! (and, with a spend ceiling, today's spend rows) are locked in order, each message is
//! admitted or refused against the logs and totals as they stand (earlier messages of the same
//! batch included), the logs and totals are written back, and only the admitted messages are
//! inserted. One commit makes all of it durable.

use std::collections::{HashMap, HashSet};

use super::Tx;
use super::{messages, spend};

use crate::config::LimitMode;
use crate::domain::NewMessage;
use crate::limits::ingress::{Check, IngressLimits, LimitRefusal, Limited, Monitored};
use crate::limits::window::{Admission, admit, to_pg_array};

type Logs = HashMap<String, Vec<i64>>;

/// Locks what `messages` are counted in and decides each message; returns one verdict per
/// message, in order, and has already written the updated logs and totals.
pub async fn admit_batch(
    conn: &mut Tx<'_>,
    limits: &IngressLimits,
    messages: &[&NewMessage],
) -> Result<Vec<Result<Monitored, LimitRefusal>>, sqlx::Error> {
    let checks: Vec<Vec<Check>> = messages.iter().map(|m| limits.checks(m)).collect();
    let (mut logs, now_ms) = lock_logs(conn, &checks).await?;
    // A repeat of a stored request (or a reused key) stores nothing, so it counts in nothing
    // and is refused by nothing. Looked up once the locks are held: a concurrent batch with
    // the same request holds the same keys, so its commit is seen here.
    let mut known = messages::known_keys(conn, messages).await?;
    let repeat = |known: &HashSet<String>, m: &NewMessage| {
        m.idempotency_key
            .as_ref()
            .is_some_and(|k| known.contains(k))
    };
    // Today's spend rows only for new messages the windows could admit: one they refuse
    // against the logs as they stand is refused in any order, and writes nothing.
    let admissible: Vec<&NewMessage> = messages
        .iter()
        .zip(&checks)
        .filter(|(m, checks)| !repeat(&known, m) && decide(&logs, now_ms, checks).is_ok())
        .map(|(message, _)| *message)
        .collect();
    let mut spend = spend::lock_today(conn, &limits.spend, &admissible).await?;
    if spend.is_locked() {
        known.extend(messages::known_keys(conn, messages).await?);
    }

    let mut verdicts = Vec::with_capacity(messages.len());
    for (message, checks) in messages.iter().zip(&checks) {
        if repeat(&known, message) {
            verdicts.push(Ok(Monitored::new()));
            continue;
        }
        let verdict = decide(&logs, now_ms, checks).and_then(|(updates, monitored)| {
            spend
                .admit(message)
                .map_err(LimitRefusal::Spend)
                .map(|()| (updates, monitored))
        });
        verdicts.push(verdict.map(|(updates, monitored)| {
            // Admitted: only now is the request counted anywhere. A later copy in this very
            // batch (a retry that raced it) is its repeat.
            logs.extend(updates);
            known.extend(message.idempotency_key.clone());
            monitored
        }));
    }
    write_logs(conn, &logs).await?;
    spend.write(conn).await?;
    Ok(verdicts)
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
