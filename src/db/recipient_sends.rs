//! The send counts behind `[[limits.recipient]]`: one row per number with its sends counted per
//! time bucket (`limits::window`, database clock). Sends are admitted right before their
//! carrier calls, a batch of them in one transaction under their rows' locks, so the counts
//! hold the sends that really happen, in the order they happen, across every process.

use super::{Db, Tx, pg_array};

use crate::config::WindowLimit;
use std::collections::{HashMap, HashSet};

use crate::limits::window::{self, Admission, Counts, FIRST_EVENT, STORED_COUNTS};

/// Admits one send to each of `recipients` now (in order: a number named twice is counted
/// twice), or says how long until its windows allow one; with the database's time of the
/// decision (epoch ms), which each admitted send is counted at. Waits at most `lock_wait` for
/// the numbers' rows (then an error, nothing counted): a bound the database enforces, so a
/// caller never abandons an admission that may have committed.
pub async fn admit(
    pool: &Db,
    recipients: &[&str],
    windows: &[WindowLimit],
    lock_wait: std::time::Duration,
) -> Result<(Vec<Admission>, i64), sqlx::Error> {
    let mut tx = pool.begin_waiting_at_most(lock_wait).await?;
    let mut locked = lock(&mut tx, recipients, windows).await?;
    let now_ms = locked.now_ms;
    let admissions: Vec<Admission> = recipients
        .iter()
        .map(|recipient| {
            let counts = locked.counts.entry((*recipient).to_string()).or_default();
            window::admit(counts, now_ms, windows)
        })
        .collect();
    // Written back: the numbers a send was admitted to, unless their new row holds it already.
    let admitted: HashSet<&str> = recipients
        .iter()
        .zip(&admissions)
        .filter(|(_, a)| **a == Admission::Allowed)
        .map(|(r, _)| *r)
        .collect();
    let created = &locked.created;
    locked.counts.retain(|recipient, c| {
        admitted.contains(recipient.as_str())
            && !created.get(recipient).is_some_and(|s| s.same_as(c))
    });
    write(&mut tx, &locked.counts).await?;
    tx.commit().await?;
    Ok((admissions, now_ms))
}

/// The numbers' rows as locked: their counts before these sends, the rows this statement
/// created with their first send counted, and the database's clock once the locks were held.
struct Locked {
    counts: HashMap<String, Counts>,
    created: HashMap<String, Counts>,
    now_ms: i64,
}

/// Creates or locks the rows of `recipients` in one statement, in one order (no deadlocks
/// between batches); the clock is read once the locks are held, so two processes' sends to
/// one number are counted in the order they were admitted. A number without a row gets one
/// holding its first send already: most numbers get one code, and then cost one insert.
async fn lock(
    tx: &mut Tx<'_>,
    recipients: &[&str],
    windows: &[WindowLimit],
) -> Result<Locked, sqlx::Error> {
    let mut numbers: Vec<&str> = recipients.to_vec();
    numbers.sort_unstable();
    numbers.dedup();
    let statement = format!(
        "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
         INSERT INTO recipient_sends (recipient, counts, fresh)
         SELECT v.recipient, {FIRST_EVENT}, true
         FROM unnest($1::text[], array_fill($2::text, ARRAY[cardinality($1::text[])]))
                  AS v(recipient, spans), now
         ORDER BY v.recipient
         ON CONFLICT (recipient) DO UPDATE SET updated_at = recipient_sends.updated_at,
                                               fresh = false
         RETURNING recipient, {STORED_COUNTS}, {STORED_SENDS}, fresh,
                   (extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    );
    // The number, its counts, its event log of an earlier version, whether this statement
    // created it, and the database's clock.
    type Row = (String, Vec<i64>, Vec<i64>, bool, i64);
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(statement))
        .bind(&numbers)
        .bind(Counts::spans(windows))
        .fetch_all(&mut *tx)
        .await?;
    let mut locked = Locked {
        counts: HashMap::new(),
        created: HashMap::new(),
        now_ms: rows.iter().map(|(.., now)| *now).max().unwrap_or(0),
    };
    for (recipient, stored, legacy, fresh, _) in rows {
        let stored = Counts::from_row(&stored, &legacy, windows);
        if fresh {
            // Decided from nothing; kept as stored if the decisions count the same.
            locked.counts.insert(recipient.clone(), Counts::default());
            locked.created.insert(recipient, stored);
        } else {
            locked.counts.insert(recipient, stored);
        }
    }
    Ok(locked)
}

/// Writes the numbers' new counts. `updated_at` (what the retention sweep reads) moves at
/// most once a minute, so a busy row's update keeps its index entries and stays on its page
/// (HOT); the sweep allows for it (`window::counted_for_seconds`).
async fn write(tx: &mut Tx<'_>, counts: &HashMap<String, Counts>) -> Result<(), sqlx::Error> {
    if counts.is_empty() {
        return Ok(());
    }
    let (numbers, stored): (Vec<&str>, Vec<String>) = counts
        .iter()
        .map(|(recipient, counts)| (recipient.as_str(), pg_array(&counts.to_stored())))
        .unzip();
    sqlx::query(
        "UPDATE recipient_sends r SET counts = v.counts::bigint[], sends = '{}',
             updated_at = CASE WHEN r.updated_at < clock_timestamp() - interval '1 minute'
                               THEN clock_timestamp() ELSE r.updated_at END
         FROM unnest($1::text[], $2::text[]) AS v(recipient, counts)
         WHERE r.recipient = v.recipient",
    )
    .bind(&numbers)
    .bind(&stored)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Takes one send counted at `at_ms` out of `recipient`'s counts: it was admitted, then not
/// made.
pub async fn withdraw(
    pool: &Db,
    recipient: &str,
    windows: &[WindowLimit],
    at_ms: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let row: Option<(Vec<i64>, Vec<i64>)> =
        sqlx::query_as("SELECT counts, sends FROM recipient_sends WHERE recipient = $1 FOR UPDATE")
            .bind(recipient)
            .fetch_optional(&mut tx)
            .await?;
    if let Some((counts, legacy)) = row {
        let mut counts = Counts::from_row(&counts, &legacy, windows);
        counts.withdraw(windows, at_ms);
        sqlx::query(
            "UPDATE recipient_sends SET counts = $2, sends = '{}', updated_at = clock_timestamp()
             WHERE recipient = $1",
        )
        .bind(recipient)
        .bind(counts.to_stored())
        .execute(&mut tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The event log of an earlier version, as `STORED_COUNTS` reads the counts.
const STORED_SENDS: &str = "ARRAY(SELECT x FROM unnest(sends) AS x WHERE x IS NOT NULL)";
