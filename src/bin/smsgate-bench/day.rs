//! A day at volume, removed by retention: `--backlog` final messages (1,000,000 unless given)
//! of one day three days ago, each with an attempt and a delivery receipt, written straight
//! into the tables; then one retention pass, measured for time, WAL, dead rows left and disk
//! returned, and the ingress's p99 while it runs against without.

use std::time::{Duration, Instant};

use chrono::Days;
use serde_json::{Value, json};
use smsgate::db::Db;
use smsgate::db::partitions::{self, day_partition};
use smsgate::dispatch::retention::{Plan, sweep};

use crate::fixture::Bench;
use crate::load::{open_loop, quantile};

/// `--backlog`'s default, which this scenario reads as "a day of a million".
const BACKLOG_DEFAULT: u64 = 100_000;
const DAY_DEFAULT: u64 = 1_000_000;
/// The tables a day is made of.
const DAY_TABLES: [&str; 3] = ["messages", "message_attempts", "delivery_receipts"];
const MIB: f64 = 1_048_576.0;

/// A day's messages, spread evenly over it, as smsgate leaves them once final: the body
/// erased, sent and delivered, one attempt and one receipt each.
fn fill_sql(day_start_ms: i64, count: u64) -> String {
    // The last ten seconds stay empty, so every receipt (five seconds after its message) is
    // received within the day too.
    let step = 86_390_000.0 / count as f64;
    format!(
        "WITH ids AS (
             SELECT g, to_timestamp(({day_start_ms} + floor(g * {step})) / 1000.0) AS at,
                    (lpad(to_hex({day_start_ms} + floor(g * {step})::bigint), 12, '0') || '7'
                     || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid AS id
             FROM generate_series(0, {count} - 1) g
         ), m AS (
             INSERT INTO messages (id, recipient, body, sender, client_ip, user_agent, signer,
                 status, carrier, carrier_message_id, attempts, created_at, expires_at, sent_at,
                 finished_at, receipt_at, segments, encoding, country, estimated_cost_micros)
             SELECT id, '+1415' || lpad((g % 10000000)::text, 7, '0'), '', '+15555555555',
                    '203.0.113.7', 'smsgate-bench', 'bench', 'delivered', 'standin',
                    'SM' || md5(g::text), 1, at, at + interval '1 hour', at + interval '1 second',
                    at + interval '1 second', at + interval '5 seconds', 2, 'gsm7', 'US', 15000
             FROM ids RETURNING id, carrier_message_id, created_at
         ), a AS (
             INSERT INTO message_attempts (message_id, attempt, carrier, outcome, http_status,
                                           latency_ms, carrier_message_id, created_at)
             SELECT id, 1, 'standin', 'sent', 201, 120, carrier_message_id, created_at FROM m
         )
         INSERT INTO delivery_receipts (carrier, carrier_message_id, status, received_at, applied)
         SELECT 'standin', carrier_message_id, 'delivered', created_at + interval '5 seconds', true
         FROM m"
    )
}

async fn scalar_i64(bench: &Bench, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&bench.pool)
        .await?)
}

/// Bytes of the day's partitions (tables, indexes, TOAST), by name.
async fn day_bytes(bench: &Bench, names: &[String]) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(pg_total_relation_size(to_regclass(n))), 0)::bigint
         FROM unnest($1::text[]) n",
    )
    .bind(names)
    .fetch_one(&bench.pool)
    .await?)
}

/// Dead rows left in the partitions of the day's tables, by partition (none listed: none).
async fn dead_rows(bench: &Bench) -> anyhow::Result<Vec<(String, i64)>> {
    // Statistics reach the shared view within a second of a transaction's end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(sqlx::query_as(
        "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables
         WHERE pg_partition_root(relid)::text IN ('messages', 'message_attempts',
                                                  'delivery_receipts')
           AND n_dead_tup > 0",
    )
    .fetch_all(&bench.pool)
    .await?)
}

/// WAL position in bytes.
async fn wal_lsn(bench: &Bench) -> anyhow::Result<i64> {
    scalar_i64(
        bench,
        "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint",
    )
    .await
}

async fn fill(bench: &Bench, count: u64) -> anyhow::Result<(chrono::NaiveDate, Vec<String>)> {
    let today: chrono::NaiveDate = sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date")
        .fetch_one(&bench.pool)
        .await?;
    let day = today - Days::new(3);
    let db = Db::direct(bench.pool.clone());
    partitions::create_day(&db, day).await?;
    eprintln!("bench: writing a day of {count} final messages ({day})");
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(fill_sql(
        partitions::start_of(day).timestamp_millis(),
        count,
    )))
    .execute(&bench.pool)
    .await?;
    bench.psql(&[
        "VACUUM ANALYZE messages, message_attempts, delivery_receipts".into(),
        "CHECKPOINT".into(),
    ])?;
    eprintln!("bench: written in {:.0} s", started.elapsed().as_secs_f64());
    let names = DAY_TABLES.iter().map(|t| day_partition(t, day)).collect();
    Ok((day, names))
}

/// The ingress's p99 (ms) over an open loop at `--rate` for `--seconds`.
async fn ingress_p99(bench: &Bench, port: u16) -> anyhow::Result<(f64, u64)> {
    let target = bench.target(port)?;
    let seconds = Duration::from_secs(bench.args.seconds);
    let mut result = open_loop(target, bench.args.rate, seconds, bench.args.connections).await;
    let p99 = quantile(&mut result.latencies_us, 0.99) / 1000.0;
    Ok((p99, result.failed))
}

/// The retention pass's figures, measured around one `sweep` started `delay` into a load.
async fn remove(bench: &Bench, delay: Duration) -> anyhow::Result<(f64, i64, Vec<String>)> {
    tokio::time::sleep(delay).await;
    let plan = Plan {
        days: 2,
        send_log_seconds: 3600,
        ingress_log_seconds: 3600,
        resend: Default::default(),
    };
    let wal_before = wal_lsn(bench).await?;
    let started = Instant::now();
    let swept = sweep(&Db::direct(bench.pool.clone()), plan, &Default::default()).await?;
    let seconds = started.elapsed().as_secs_f64();
    let wal = wal_lsn(bench).await? - wal_before;
    Ok((seconds, wal, swept.dropped))
}

pub async fn run(bench: &Bench) -> anyhow::Result<Value> {
    let count = match bench.args.backlog {
        BACKLOG_DEFAULT => DAY_DEFAULT,
        given => given,
    };
    bench.empty_queue().await?;
    let (day, names) = fill(bench, count).await?;
    let day_bytes_before = day_bytes(bench, &names).await?;
    let database_before = scalar_i64(bench, "SELECT pg_database_size(current_database())").await?;

    // The ingress alone (its own retention never runs: no worker role), then again with the
    // pass started a second into the load.
    let ingress = bench.spawn("ingress", bench.single_profile()).await?;
    // Not part of either figure: a fresh process's first requests open its connections, and
    // the cluster is still writing out the day just filled (the first phase was often several
    // times slower than the last with a 2-s warm-up).
    let target = bench.target(ingress.port)?;
    let warm_up = Duration::from_secs(bench.args.seconds);
    open_loop(target, bench.args.rate, warm_up, bench.args.connections).await;
    let (p99_before, failed_before) = ingress_p99(bench, ingress.port).await?;
    let wal_idle_start = wal_lsn(bench).await?;
    let load_started = Instant::now();
    let (loaded, removal) = tokio::join!(
        ingress_p99(bench, ingress.port),
        remove(bench, Duration::from_secs(1)),
    );
    let ingress_wal_per_second =
        (wal_lsn(bench).await? - wal_idle_start) as f64 / load_started.elapsed().as_secs_f64();
    let ((p99_with, failed_with), (seconds, wal, dropped)) = (loaded?, removal?);
    // Without again: the machine's latency drifts from minute to minute, so the figure without
    // is the mean of one run before and one after.
    let (p99_after, failed_after) = ingress_p99(bench, ingress.port).await?;
    ingress.stop();
    let p99_without = (p99_before + p99_after) / 2.0;

    let dead_by_table = dead_rows(bench).await?;
    let dead: i64 = dead_by_table.iter().map(|(_, n)| n).sum();
    let day_bytes_after = day_bytes(bench, &names).await?;
    let database_after = scalar_i64(bench, "SELECT pg_database_size(current_database())").await?;
    // The ingress wrote WAL meanwhile; its rate over the whole loaded phase estimates its share.
    let wal_net = (wal as f64 - ingress_wal_per_second * seconds).max(0.0);
    let ratio = p99_with / p99_without.max(1e-9);
    Ok(json!({
        "scenario": "day",
        "day": day.to_string(),
        "messages": count,
        "bytes_per_message": day_bytes_before as f64 / count as f64,
        "day_mib_before": day_bytes_before as f64 / MIB,
        "day_mib_after": day_bytes_after as f64 / MIB,
        "database_mib_before": database_before as f64 / MIB,
        "database_mib_after": database_after as f64 / MIB,
        "partitions_dropped": dropped,
        "removal_seconds": seconds,
        "wal_mib_during_removal": wal as f64 / MIB,
        "wal_mib_removal_alone_estimate": wal_net / MIB,
        "dead_rows_after": dead,
        "dead_rows_by_table": dead_by_table,
        "ingress_rate": bench.args.rate,
        "ingress_p99_ms_without": p99_without,
        "ingress_p99_ms_without_before_and_after": [p99_before, p99_after],
        "ingress_p99_ms_with_retention": p99_with,
        "ingress_failed": failed_before + failed_with + failed_after,
        "p99_ratio": ratio,
        "targets": {
            "removal_seconds": "<= 10", "wal_mib": "<= 64", "dead_rows_after": "0",
            "space": "returned", "p99_ratio": "<= 1.2",
        },
        "met": {
            "removal": seconds <= 10.0,
            "wal": wal as f64 / MIB <= 64.0,
            "dead_rows": dead == 0,
            "space": day_bytes_after == 0,
            "p99": ratio <= 1.2,
        },
    }))
}
