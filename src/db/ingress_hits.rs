//! The ingress's limits, decided inside the transaction that stores a batch: the batch's keys
//! are locked in order, each message is admitted or refused against the logs as they stand
//! (earlier messages of the same batch included), the logs are written back, and only the
//! admitted messages are inserted. One commit makes both durable.

use std::collections::HashMap;

use super::Tx;

use crate::domain::NewMessage;
use crate::limits::ingress::{IngressLimits, LimitKind, Limited};
use crate::limits::window::{Admission, admit, to_pg_array};

/// Locks the logs of `messages`' keys and decides each message; returns one decision per
/// message, in order, and has already written the updated logs.
pub async fn admit_batch(
    conn: &mut Tx<'_>,
    limits: &IngressLimits,
    messages: &[&NewMessage],
) -> Result<Vec<Result<(), Limited>>, sqlx::Error> {
    let keyed: Vec<(Option<String>, Option<String>)> = messages
        .iter()
        .map(|m| (limits.ip_key(m), limits.recipient_key(m)))
        .collect();
    let mut keys: Vec<&str> = keyed
        .iter()
        .flat_map(|(ip, to)| ip.iter().chain(to))
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(vec![Ok(()); messages.len()]);
    }
    // Sorted keys are locked in the same order by every writer: no deadlocks.
    let rows: Vec<(String, Vec<i64>, i64)> = sqlx::query_as(
        "INSERT INTO ingress_hits (key) SELECT k FROM unnest($1::text[]) AS k ORDER BY k
         ON CONFLICT (key) DO UPDATE SET updated_at = ingress_hits.updated_at
         RETURNING key, hits, (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
    )
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let now_ms = rows.first().map_or(0, |(_, _, now)| *now);
    let mut logs: HashMap<String, Vec<i64>> =
        rows.into_iter().map(|(key, hits, _)| (key, hits)).collect();

    let mut decisions = Vec::with_capacity(messages.len());
    for (ip_key, recipient_key) in &keyed {
        let ip = try_admit(&logs, ip_key.as_deref(), now_ms, limits, LimitKind::Ip);
        let to = try_admit(
            &logs,
            recipient_key.as_deref(),
            now_ms,
            limits,
            LimitKind::Recipient,
        );
        decisions.push(match (ip, to) {
            // Both windows allow it: only now is the request counted in either.
            (Ok(ip), Ok(to)) => {
                for (key, log) in [ip, to].into_iter().flatten() {
                    logs.insert(key, log);
                }
                Ok(())
            }
            (Err(limited), _) | (_, Err(limited)) => Err(limited),
        });
    }

    // A key with no hit in its windows is deleted rather than kept: refused requests count
    // nothing, so a caller spraying new numbers or addresses leaves no rows behind.
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
    Ok(decisions)
}

/// The log of `key` with this request added, if its windows allow it (nothing to do without a
/// key).
fn try_admit(
    logs: &HashMap<String, Vec<i64>>,
    key: Option<&str>,
    now_ms: i64,
    limits: &IngressLimits,
    kind: LimitKind,
) -> Result<Option<(String, Vec<i64>)>, Limited> {
    let Some(key) = key else { return Ok(None) };
    let windows = match kind {
        LimitKind::Ip => &limits.ip,
        LimitKind::Recipient => &limits.recipient,
    };
    let mut log = logs.get(key).cloned().unwrap_or_default();
    match admit(&mut log, now_ms, windows) {
        Admission::Allowed => Ok(Some((key.to_string(), log))),
        Admission::WaitMs(retry_after_ms) => Err(Limited {
            kind,
            retry_after_ms,
        }),
    }
}
