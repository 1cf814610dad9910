//! Time partitions (migration 0014): one partition per UTC day of `messages` and
//! `message_attempts` (by message id: ids are UUIDv7, time first) and of `delivery_receipts`
//! (by `received_at`). Partitions are created a few days ahead, and a day is dropped whole once
//! every message in it is final and past retention: no row deletes, no dead rows, the files go
//! back to the file system. Days are the database's, so every process agrees on them. One
//! process at a time (an advisory lock per transaction, so it also works behind a pooler).

use chrono::{DateTime, Days, NaiveDate, Utc};
use uuid::Uuid;

use super::{Db, Tx};

/// Retention's lock: a partition's transaction and a row-deleting batch never run at once (the
/// batch's cascade to the keys and the drop's lock on them could otherwise wait on each other).
const PARTITIONS_LOCK: i64 = super::RETENTION_LOCK;
/// Days created ahead of today: a gateway is not stuck writing into the default partition
/// even if every dispatcher (which runs this) is down for this long.
pub const DAYS_AHEAD: u64 = 3;
/// A detach waits this long at most for its table locks, then gives up until the next pass:
/// every insert queues behind a waiting lock, and staying below PostgreSQL's default
/// `deadlock_timeout` (1 s) makes this pass, never an insert, the one that gives way when a
/// lock cycle forms.
const LOCK_TIMEOUT: &str = "200ms";

/// The partitioned tables keyed by message id, in the order a day is dropped.
const BY_MESSAGE_ID: [&str; 2] = ["messages", "message_attempts"];

/// The first message id of a UTC day: its first 48 bits are the day's start in epoch
/// milliseconds, the rest zero (every UUIDv7 of that day compares greater or equal).
pub fn first_id_of(day: NaiveDate) -> Uuid {
    let millis = start_of(day).timestamp_millis().max(0).unsigned_abs();
    Uuid::from_u128(u128::from(millis) << 80)
}

/// The day's start, 00:00 UTC.
pub fn start_of(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// A day partition's name: `messages_p20261206`.
pub fn day_partition(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

/// Today by the database's clock.
async fn today(tx: &mut Tx<'_>) -> Result<NaiveDate, sqlx::Error> {
    sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date")
        .fetch_one(&mut *tx)
        .await
}

async fn locked(tx: &mut Tx<'_>) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(PARTITIONS_LOCK)
        .fetch_one(&mut *tx)
        .await
}

/// Creates the partitions of today and the next `DAYS_AHEAD` days that are missing. Returns
/// the days left to the default partition because it already holds rows of them (a gateway
/// clock ahead); nothing when another process holds the lock.
pub async fn create_ahead(pool: &Db) -> Result<Vec<NaiveDate>, sqlx::Error> {
    let mut skipped = vec![];
    for ahead in 0..=DAYS_AHEAD {
        // A day per transaction: one that must wait does not undo the others.
        let Some(mut tx) = begin_locked(pool).await? else {
            return Ok(skipped);
        };
        let day = today(&mut tx).await? + Days::new(ahead);
        // Found by an attack: creating a partition takes ACCESS EXCLUSIVE on its table. Behind a
        // long reader it queued every insert for as long as it waited, and against an outcome
        // write (attempts, then messages) it made a lock cycle. With the lock timeout it gives
        // way first; a default partition that received a row of the day meanwhile is the same:
        // the next pass tries again, and the rows go to the default partition until then.
        let created = not_now(create_day_in(&mut tx, day).await)?;
        // Committing a transaction an error aborted rolls it back (and ends it now, not
        // when its connection is next used, so the advisory lock goes with it).
        tx.commit().await?;
        if !created {
            skipped.push(day);
        }
    }
    Ok(skipped)
}

/// Creates one day's partitions (any day: tests and the benchmark make past ones); false when
/// the default partition holds rows of that day, so it cannot be split off.
pub async fn create_day(pool: &Db, day: NaiveDate) -> Result<bool, sqlx::Error> {
    let mut attempts = 0;
    loop {
        let mut tx = pool.begin().await?;
        // Waits for the lock (rather than skipping): the caller needs the day to exist.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PARTITIONS_LOCK)
            .execute(&mut tx)
            .await?;
        match create_day_in(&mut tx, day).await {
            Ok(created) => {
                tx.commit().await?;
                return Ok(created);
            }
            // Chosen to give way in a lock cycle with a writer: again, a few times.
            Err(sqlx::Error::Database(err))
                if err.code().as_deref() == Some("40P01") && attempts < 5 =>
            {
                attempts += 1;
                tx.commit().await?;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Creates whichever of the day's three partitions is missing and not covered by another
/// (the legacy partition of an upgrade covers the first days).
async fn create_day_in(tx: &mut Tx<'_>, day: NaiveDate) -> Result<bool, sqlx::Error> {
    let (from_id, to_id) = (first_id_of(day), first_id_of(day + Days::new(1)));
    let (from_at, to_at) = (start_of(day), start_of(day + Days::new(1)));
    let mut created = true;
    if !ids_covered(tx, from_id, to_id).await? {
        let in_default: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM messages_default WHERE id >= $1 AND id < $2)
                 OR EXISTS (SELECT 1 FROM message_attempts_default
                            WHERE message_id >= $1 AND message_id < $2)",
        )
        .bind(from_id)
        .bind(to_id)
        .fetch_one(&mut *tx)
        .await?;
        if in_default {
            created = false;
        } else {
            for table in BY_MESSAGE_ID {
                // Names and bounds are ours (a date and two uuids), never input.
                execute(
                    tx,
                    format!(
                        "CREATE TABLE {} PARTITION OF {table} FOR VALUES FROM ('{from_id}') TO \
                         ('{to_id}')",
                        day_partition(table, day)
                    ),
                )
                .await?;
            }
        }
    }
    if !receipts_covered(tx, from_at, to_at).await? {
        let in_default: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM delivery_receipts_default
                            WHERE received_at >= $1 AND received_at < $2)",
        )
        .bind(from_at)
        .bind(to_at)
        .fetch_one(&mut *tx)
        .await?;
        if in_default {
            created = false;
        } else {
            create_receipts_day(tx, day, from_at, to_at).await?;
        }
    }
    Ok(created)
}

async fn create_receipts_day(
    tx: &mut Tx<'_>,
    day: NaiveDate,
    from_at: DateTime<Utc>,
    to_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let name = day_partition("delivery_receipts", day);
    let (from_at, to_at) = (from_at.to_rfc3339(), to_at.to_rfc3339());
    execute(
        tx,
        format!(
            "CREATE TABLE {name} PARTITION OF delivery_receipts \
             FOR VALUES FROM ('{from_at}') TO ('{to_at}')"
        ),
    )
    .await?;
    // A report is recorded once: unique within the day, and looked up across days under a
    // lock by `receipts::record`.
    execute(
        tx,
        format!("CREATE UNIQUE INDEX {name}_once ON {name} (carrier, carrier_message_id, status)"),
    )
    .await
}

async fn execute(tx: &mut Tx<'_>, statement: String) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut *tx)
        .await
        .map(drop)
}

/// A partition of a table keyed by message id: its name and bounds (`None`: MINVALUE).
#[derive(Debug, Clone)]
pub struct IdPartition {
    pub name: String,
    pub from: Option<Uuid>,
    pub to: Uuid,
}

/// The range partitions of `table` (not the default), read from the catalog.
pub async fn id_partitions(
    conn: impl sqlx::PgExecutor<'_>,
    table: &str,
) -> Result<Vec<IdPartition>, sqlx::Error> {
    // A partition detached by another process meanwhile reads with no bounds: skipped.
    let rows: Vec<(String, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "SELECT c.relname::text,
                substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \\(''([^'']*)''\\)')::uuid,
                substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']*)''\\)')::uuid
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
         ORDER BY 3",
    )
    .bind(table)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, from, to)| {
            Some(IdPartition {
                name,
                from,
                to: to?,
            })
        })
        .collect())
}

/// A partition of `delivery_receipts`: its name and bounds (`None`: MINVALUE).
#[derive(Debug, Clone)]
pub struct TimePartition {
    pub name: String,
    pub from: Option<DateTime<Utc>>,
    pub to: DateTime<Utc>,
}

pub async fn receipt_partitions(
    conn: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<TimePartition>, sqlx::Error> {
    type Bounds = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let rows: Vec<Bounds> = sqlx::query_as(
        "SELECT c.relname::text,
                substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \\(''([^'']*)''\\)')
                    ::timestamptz,
                substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \\(''([^'']*)''\\)')
                    ::timestamptz
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'delivery_receipts'::regclass
           AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
         ORDER BY 3",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(name, from, to)| {
            Some(TimePartition {
                name,
                from,
                to: to?,
            })
        })
        .collect())
}

async fn ids_covered(tx: &mut Tx<'_>, from: Uuid, to: Uuid) -> Result<bool, sqlx::Error> {
    let parts = id_partitions(&mut *tx, "messages").await?;
    Ok(parts
        .iter()
        .any(|p| p.from.is_none_or(|f| f < to) && p.to > from))
}

async fn receipts_covered(
    tx: &mut Tx<'_>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let parts = receipt_partitions(&mut *tx).await?;
    Ok(parts
        .iter()
        .any(|p| p.from.is_none_or(|f| f < to) && p.to > from))
}

/// Drops every partition that is wholly past retention: a messages partition whose range is
/// over, none of whose messages is still queued, and whose last message ended more than
/// `days` ago (with its attempts); a receipts partition that ended more than `days` ago
/// and holds no receipt still waiting for its message. Returns the partitions dropped.
pub async fn drop_expired(pool: &Db, days: u32) -> Result<Vec<String>, sqlx::Error> {
    let mut dropped = vec![];
    // Days a pass detached but did not get to drop (it stopped in between).
    let leftovers: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace
           AND c.relname ~ '^(messages|message_attempts|delivery_receipts)_p[0-9]{8}$'
           AND NOT c.relispartition",
    )
    .fetch_all(pool)
    .await?;
    for name in leftovers {
        not_now(drop_detached(pool, &name).await.map(|()| true))?;
    }
    for part in id_partitions(pool, "messages").await? {
        if not_now(drop_messages(pool, &part, days).await)? {
            dropped.push(part.name);
        }
    }
    // Then the attempts whose messages' partition is gone (dropped just now, or by a pass that
    // stopped between the two), and whose range is over: in transactions of their own, since
    // holding both tables' locks at once could deadlock with a completion that writes
    // attempts, then messages.
    let messages: Vec<(Option<Uuid>, Uuid)> = id_partitions(pool, "messages")
        .await?
        .into_iter()
        .map(|p| (p.from, p.to))
        .collect();
    for part in id_partitions(pool, "message_attempts").await? {
        if !messages.contains(&(part.from, part.to)) && not_now(drop_attempts(pool, &part).await)? {
            dropped.push(part.name);
        }
    }
    for part in receipt_partitions(pool).await? {
        if not_now(drop_receipts(pool, &part, days).await)? {
            dropped.push(part.name);
        }
    }
    Ok(dropped)
}

/// Ends a transaction that drops nothing. Committed, not dropped: a dropped transaction rolls
/// back only when its connection is next used, holding the advisory lock until then.
async fn give_up(tx: Tx<'_>) -> Result<bool, sqlx::Error> {
    tx.commit().await?;
    Ok(false)
}

/// A drop that gave up waiting for its locks is not an error: the next pass tries again.
fn not_now(dropped: Result<bool, sqlx::Error>) -> Result<bool, sqlx::Error> {
    match dropped {
        // Gave up waiting (lock_timeout), or chosen to give way in a lock cycle.
        // Also: another process dropped or detached the partition since it was listed
        // (undefined table, or not a partition any more), or a default partition that got a
        // row of a day being created (check violation). Found by an attack: three processes
        // sweeping at once failed their passes on these.
        Err(sqlx::Error::Database(err))
            if matches!(
                err.code().as_deref(),
                Some("55P03" | "40P01" | "42P01" | "42P11" | "42809" | "23514")
            ) =>
        {
            tracing::info!(code = ?err.code(), "retention: a partition was busy or changed under this pass; next pass");
            Ok(false)
        }
        other => other,
    }
}

/// Opens a transaction holding the partition lock, or `None` when another process holds it.
async fn begin_locked(pool: &Db) -> Result<Option<Tx<'static>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if !locked(&mut tx).await? {
        return Ok(None);
    }
    execute(
        &mut tx,
        format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"),
    )
    .await?;
    Ok(Some(tx))
}

async fn drop_messages(pool: &Db, part: &IdPartition, days: u32) -> Result<bool, sqlx::Error> {
    let Some(mut tx) = begin_locked(pool).await? else {
        return Ok(false);
    };
    if part.to > now_id(&mut tx).await? || !messages_done(&mut tx, part, days).await? {
        return give_up(tx).await;
    }
    let name = &part.name;
    // The detach takes most of these locks anyway: SHARE on the keys, whose foreign key it
    // checks, and ACCESS EXCLUSIVE on the table, the partition and the default one; SHARE on
    // the queue (no foreign key of its own since 0015) stops new queue rows. Taking them first,
    // in the order an ingress statement takes them (keys, messages, queue: it then holds none
    // of ours while waiting for another), means no insert can slip into the day between the
    // check below and the detach (an id from a clock far behind). Inserts wait for the few
    // milliseconds this transaction lasts.
    execute(
        &mut tx,
        "LOCK TABLE idempotency_keys, message_queue IN SHARE MODE".into(),
    )
    .await?;
    execute(
        &mut tx,
        format!("LOCK TABLE ONLY messages, {name}, messages_default IN ACCESS EXCLUSIVE MODE"),
    )
    .await?;
    if !messages_done(&mut tx, part, days).await? {
        return give_up(tx).await;
    }
    // Queue rows of the day without their message (no foreign key forbids them since 0015)
    // go too: the check above passed over them, and they would outlive their day.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM message_queue q
         WHERE ($1::uuid IS NULL OR q.message_id >= $1) AND q.message_id < $2
           AND NOT EXISTS (SELECT 1 FROM {name} m WHERE m.id = q.message_id)"
    )))
    .bind(part.from)
    .bind(part.to)
    .execute(&mut tx)
    .await?;
    // Keys go with their message (as the foreign key cascades a row delete); one left would
    // make the detach fail until it expired.
    sqlx::query(
        "DELETE FROM idempotency_keys
         WHERE ($1::uuid IS NULL OR message_id >= $1) AND message_id < $2",
    )
    .bind(part.from)
    .bind(part.to)
    .execute(&mut tx)
    .await?;
    execute(
        &mut tx,
        format!("ALTER TABLE messages DETACH PARTITION {name}"),
    )
    .await?;
    tx.commit().await?;
    drop_detached(pool, name).await?;
    Ok(true)
}

/// Whether every message of the partition is final and ended more than `days` ago. Final
/// means out of the queue: a message leaves the queue in the statement that makes it final
/// (db::queue::complete, db::operator::cancel), so the queue's primary key finds the day's
/// messages still in flight (joined to the partition: a queue row whose message is gone keeps
/// nothing); the last end comes from the partition's index on finished_at. Checked first without the table lock (most passes find a day not
/// ready and take no lock), then again under it.
async fn messages_done(
    tx: &mut Tx<'_>,
    part: &IdPartition,
    days: u32,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT NOT EXISTS (SELECT 1 FROM message_queue q JOIN {0} m ON m.id = q.message_id
                            WHERE ($1::uuid IS NULL OR q.message_id >= $1)
                              AND q.message_id < $2)
            AND coalesce((SELECT max(finished_at) FROM {0})
                         < now() - make_interval(days => least($3, 36500)), true)",
        part.name
    )))
    .bind(part.from)
    .bind(part.to)
    .bind(i32::try_from(days).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await
}

/// Drops a partition detached before, in a transaction of its own: the unlinking of its files
/// and the sweep of its pages from shared buffers then hold no lock any insert needs.
async fn drop_detached(pool: &Db, name: &str) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    execute(&mut tx, format!("DROP TABLE IF EXISTS {name}")).await?;
    tx.commit().await
}

/// The first id of the current millisecond by the database's clock: a partition whose upper
/// bound is at or below it holds no future ids.
async fn now_id(tx: &mut Tx<'_>) -> Result<Uuid, sqlx::Error> {
    let millis: i64 = sqlx::query_scalar("SELECT (extract(epoch FROM now()) * 1000)::bigint")
        .fetch_one(&mut *tx)
        .await?;
    Ok(Uuid::from_u128(
        u128::from(millis.max(0).unsigned_abs()) << 80,
    ))
}

async fn drop_attempts(pool: &Db, part: &IdPartition) -> Result<bool, sqlx::Error> {
    let Some(mut tx) = begin_locked(pool).await? else {
        return Ok(false);
    };
    if part.to > now_id(&mut tx).await? {
        return give_up(tx).await;
    }
    let name = &part.name;
    execute(
        &mut tx,
        format!(
            "LOCK TABLE ONLY message_attempts, {name}, message_attempts_default \
             IN ACCESS EXCLUSIVE MODE"
        ),
    )
    .await?;
    // Found by an attack: a message of the day stored after its messages' partition was
    // dropped (a gateway clock behind) lives in the default partition, and its attempts here.
    // Checked with the attempts locked, so none can be written meanwhile.
    let live: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE id < $2 AND ($1::uuid IS NULL OR id >= $1))",
    )
    .bind(part.from)
    .bind(part.to)
    .fetch_one(&mut tx)
    .await?;
    if live {
        return give_up(tx).await;
    }
    execute(
        &mut tx,
        format!("ALTER TABLE message_attempts DETACH PARTITION {name}"),
    )
    .await?;
    tx.commit().await?;
    drop_detached(pool, name).await?;
    Ok(true)
}

async fn drop_receipts(pool: &Db, part: &TimePartition, days: u32) -> Result<bool, sqlx::Error> {
    let Some(mut tx) = begin_locked(pool).await? else {
        return Ok(false);
    };
    if !receipts_done(&mut tx, part, days).await? {
        return give_up(tx).await;
    }
    let name = &part.name;
    // Parent first, as every insert locks them (see `drop_messages`).
    execute(
        &mut tx,
        format!(
            "LOCK TABLE ONLY delivery_receipts, {name}, delivery_receipts_default \
             IN ACCESS EXCLUSIVE MODE"
        ),
    )
    .await?;
    if !receipts_done(&mut tx, part, days).await? {
        return give_up(tx).await;
    }
    execute(
        &mut tx,
        format!("ALTER TABLE delivery_receipts DETACH PARTITION {name}"),
    )
    .await?;
    tx.commit().await?;
    drop_detached(pool, name).await?;
    Ok(true)
}

/// Whether the day of receipts ended more than `days` ago; a receipt still waiting for its
/// message's outcome (an hour at most) keeps it.
async fn receipts_done(
    tx: &mut Tx<'_>,
    part: &TimePartition,
    days: u32,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT $1 <= now() - make_interval(days => least($2, 36500))
                AND NOT EXISTS (SELECT 1 FROM {} WHERE NOT applied)",
        part.name
    )))
    .bind(part.to)
    .bind(i32::try_from(days).unwrap_or(i32::MAX))
    .fetch_one(&mut *tx)
    .await
}
