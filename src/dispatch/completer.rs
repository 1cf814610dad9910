//! Writes outcomes in batches: whatever finished while the previous batch was being written
//! goes in the next transaction, so acknowledgements cost a fraction of a commit each.

use std::time::Duration;

use crate::db::Db;
use tokio::sync::mpsc;

use crate::db::queue::{self, Completion, Ended};
use crate::db::route_stats::RouteStats;
use crate::metrics::Metrics;

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 256;

/// Runs until every sender is dropped and the channel is drained.
pub async fn run(
    pool: Db,
    mut outcomes: mpsc::Receiver<Completion>,
    metrics: Metrics,
    route_stats: RouteStats,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while outcomes.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Counted from what the database applied, so the metric matches the table exactly.
        let ended = write_with_retry(&pool, &batch).await;
        count(&ended, &metrics, &route_stats);
        batch.clear();
    }
}

/// The outcomes applied: each final status, and each send in the minute it was taken (the
/// minute its receipt will count in).
pub(super) fn count(ended: &[Ended], metrics: &Metrics, route_stats: &RouteStats) {
    for outcome in ended {
        metrics
            .finished
            .with_label_values(&[outcome.status.as_str()])
            .inc();
        if let (Some(carrier), Some(minute)) = (&outcome.carrier, outcome.sent_minute) {
            route_stats.sent(carrier, &outcome.recipient, minute);
        }
    }
}

/// Retries a failed write: losing an outcome would mean sending the message again once its
/// lease runs out. Gives up after about a minute, and the lease takes over. A batch that the
/// database refuses for its data is written one outcome at a time, so one bad outcome cannot
/// cost the others theirs.
pub(super) async fn write_with_retry(pool: &Db, batch: &[Completion]) -> Vec<Ended> {
    let mut delay = Duration::from_millis(50);
    for _ in 0..12 {
        match queue::complete(pool, batch).await {
            Ok(ended) => return ended,
            Err(err) if is_data_error(&err) => {
                tracing::error!(error = %err, outcomes = batch.len(), "outcomes refused for their data; isolating");
                return write_isolated(pool, batch).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, outcomes = batch.len(), "cannot record outcomes; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::error!(
        outcomes = batch.len(),
        "outcomes not recorded; their messages are retried when the leases expire"
    );
    Vec::new()
}

/// Each outcome alone; one the database still refuses is written without the texts it came
/// with (its status and lease are what matter).
async fn write_isolated(pool: &Db, batch: &[Completion]) -> Vec<Ended> {
    let mut ended = Vec::new();
    for completion in batch {
        let one = std::slice::from_ref(completion);
        let written = match queue::complete(pool, one).await {
            Err(err) if is_data_error(&err) => {
                tracing::error!(id = %completion.id, error = %err, "outcome refused; writing it without its texts");
                queue::complete(pool, &[completion.without_texts()]).await
            }
            other => other,
        };
        match written {
            Ok(statuses) => ended.extend(statuses),
            Err(err) => {
                tracing::error!(id = %completion.id, error = %err, "outcome not recorded")
            }
        }
    }
    ended
}

/// SQLSTATE classes 22 (data exception) and 23 (integrity): retrying the same data fails again.
fn is_data_error(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}
