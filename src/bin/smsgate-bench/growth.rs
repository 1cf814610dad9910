//! How the cost grows: a large backlog drained over minutes, a long-held snapshot elsewhere,
//! and one versus four worker processes. Each figure sits beside its own baseline from the
//! same run.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use sqlx::Connection;

use crate::fixture::{Bench, Smsgate, backlog_sql};
use crate::pg::{PgBench, ProbeCommit};
use crate::standard::drain_rate;
use crate::standin::Received;

/// Messages per second in each `interval` while workers drain, for at most `duration` or until
/// the backlog is gone.
async fn sample(
    received: &Received,
    interval: Duration,
    duration: Duration,
    until: u64,
) -> Vec<f64> {
    let started = Instant::now();
    let mut rates = Vec::new();
    let mut last = received.count.load(Ordering::Relaxed);
    while started.elapsed() < duration && last < until {
        tokio::time::sleep(interval).await;
        let now = received.count.load(Ordering::Relaxed);
        if now >= until {
            // The backlog ran out inside this interval: a partial window is no rate.
            break;
        }
        rates.push((now - last) as f64 / interval.as_secs_f64());
        last = now;
    }
    rates
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// Least-squares slope of the rates, as a fraction of their mean per sample: a decaying claim
/// shows a clearly negative figure.
fn trend(rates: &[f64]) -> f64 {
    let n = rates.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = mean(rates);
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in rates.iter().enumerate() {
        num += (i as f64 - mean_x) * (y - mean_y);
        den += (i as f64 - mean_x).powi(2);
    }
    num / den / mean_y.max(1e-9)
}

/// The mean latency of the probe's commits that ended in each `interval` after `anchor`.
fn probe_means(
    commits: &[ProbeCommit],
    anchor: SystemTime,
    interval: Duration,
    windows: usize,
) -> Vec<f64> {
    let mut sums = vec![(0.0, 0u32); windows];
    for commit in commits {
        let Ok(after) = commit.ended.duration_since(anchor) else {
            continue;
        };
        let index = (after.as_secs_f64() / interval.as_secs_f64()) as usize;
        if let Some((sum, n)) = sums.get_mut(index) {
            *sum += commit.latency().as_secs_f64() * 1000.0;
            *n += 1;
        }
    }
    sums.into_iter()
        .map(|(sum, n)| sum / f64::from(n.max(1)))
        .collect()
}

/// Size, live and dead rows and autovacuum runs of smsgate's tables (all partitions of each).
async fn table_stats(bench: &Bench) -> anyhow::Result<Value> {
    let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT t::text, sum(n_live_tup)::bigint, sum(n_dead_tup)::bigint,
                sum(autovacuum_count)::bigint, sum(pg_total_relation_size(relid))::bigint
         FROM pg_stat_user_tables, coalesce(pg_partition_root(relid), relid::regclass) AS t
         WHERE t::text IN ('messages', 'message_queue', 'message_attempts')
         GROUP BY t ORDER BY t::text",
    )
    .fetch_all(&bench.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(table, live, dead, autovacuums, bytes)| {
            (
                table,
                json!({"live": live, "dead": dead, "autovacuums": autovacuums,
                       "mib": bytes as f64 / 1048576.0}),
            )
        })
        .collect::<serde_json::Map<String, Value>>()
        .into())
}

async fn refill(bench: &Bench) -> anyhow::Result<()> {
    bench.empty_queue().await?;
    bench.psql(&backlog_sql(bench.args.backlog))
}

/// A backlog of `--backlog` messages drained for up to 5 minutes, sampled every 10 s.
pub async fn backlog(bench: &Bench, received: &Arc<Received>) -> anyhow::Result<Value> {
    bench.psql(&PgBench::fill_sql(20_000 * bench.args.seconds.max(3)))?;
    let cycle = bench
        .pgbench
        .run("cycle.sql", bench.args.dispatch_clients, bench.args.seconds)?;
    refill(bench).await?;
    let tables_before = table_stats(bench).await?;
    let start = received.count.load(Ordering::Relaxed);
    let worker = bench.spawn("worker", bench.single_profile()).await?;
    // PostgreSQL's own commit latency over the same minutes: a machine that slows down shows
    // here as well, a queue that decays does not.
    let anchor = SystemTime::now();
    let probe = bench.start_probe("probe-backlog", 300)?;
    let interval = Duration::from_secs(10);
    let rates = sample(
        received,
        interval,
        Duration::from_secs(300),
        start + bench.args.backlog,
    )
    .await;
    worker.stop();
    let commits = tokio::task::spawn_blocking(move || probe.finish()).await??;
    let probe_ms = probe_means(&commits, anchor, interval, rates.len());
    let tables_after = table_stats(bench).await?;
    bench.psql(&PgBench::fill_sql(20_000 * bench.args.seconds.max(3)))?;
    let cycle_after =
        bench
            .pgbench
            .run("cycle.sql", bench.args.dispatch_clients, bench.args.seconds)?;
    Ok(json!({
        "probe_commit_mean_ms_per_10s": probe_ms,
        "baseline_cycle_tps_after": cycle_after.tps,
        "last_rate_to_cycle_tps_after": rates.last().map(|l| l / cycle_after.tps.max(1e-9)),
        "first_rate_to_cycle_tps_before": rates.first().map(|f| f / cycle.tps.max(1e-9)),
        "tables_before": tables_before,
        "tables_after": tables_after,
        "scenario": "backlog",
        "backlog": bench.args.backlog,
        "rates_per_10s": rates,
        "mean_rate": mean(&rates),
        "trend_per_sample": trend(&rates),
        "last_over_first": rates.last().zip(rates.first()).map(|(l, f)| l / f.max(1e-9)),
        "baseline_cycle_tps": cycle.tps,
        "mean_rate_to_cycle_tps": mean(&rates) / cycle.tps.max(1e-9),
    }))
}

/// Drain speed for 60 s, then for 60 s with a REPEATABLE READ transaction held open elsewhere.
pub async fn snapshot(bench: &Bench, received: &Arc<Received>) -> anyhow::Result<Value> {
    refill(bench).await?;
    let worker = bench.spawn("worker", bench.single_profile()).await?;
    let minute = Duration::from_secs(60);
    let interval = Duration::from_secs(5);
    let without = sample(received, interval, minute, u64::MAX).await;

    // A report or a backup: it pins the xmin horizon, so dead queue tuples cannot be removed.
    let mut report = sqlx::PgConnection::connect(&bench.database_url).await?;
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM messages;")
        .execute(&mut report)
        .await?;
    let with = sample(received, interval, minute, u64::MAX).await;
    sqlx::raw_sql("COMMIT").execute(&mut report).await?;
    worker.stop();
    let ratio = mean(&with) / mean(&without).max(1e-9);
    Ok(json!({
        "scenario": "snapshot",
        "rates_without_per_5s": without,
        "rates_with_snapshot_per_5s": with,
        "ratio_with_to_without": ratio,
        "last_with_to_mean_without": with.last().map(|l| l / mean(&without).max(1e-9)),
        "target": ">= 0.8",
    }))
}

/// The same backlog drained by one worker process, then by four.
pub async fn scale(bench: &Bench, received: &Arc<Received>) -> anyhow::Result<Value> {
    let mut rates = Vec::new();
    for processes in [1, 4] {
        refill(bench).await?;
        let start = received.count.load(Ordering::Relaxed);
        let mut workers: Vec<Smsgate> = Vec::new();
        for _ in 0..processes {
            workers.push(bench.spawn("worker", bench.single_profile()).await?);
        }
        let limit = Duration::from_secs(bench.args.seconds * 6);
        rates.push(drain_rate(&received.count, start, bench.args.backlog, limit).await);
        for worker in workers {
            worker.stop();
        }
    }
    Ok(json!({
        "scenario": "scale",
        "one_process_per_second": rates[0],
        "four_processes_per_second": rates[1],
        "ratio_four_to_one": rates[1] / rates[0].max(1e-9),
    }))
}
