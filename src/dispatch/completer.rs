//! Writes outcomes in batches: whatever finished while the previous batch was being written
//! goes in the next transaction, so acknowledgements cost a fraction of a commit each.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::db::queue::{self, Completion};
use crate::metrics::Metrics;

/// Most outcomes written in one transaction.
const MAX_BATCH: usize = 256;

/// Runs until every sender is dropped and the channel is drained.
pub async fn run(pool: PgPool, mut outcomes: mpsc::Receiver<Completion>, metrics: Metrics) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while outcomes.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Counted from what the database applied, so the metric matches the table exactly.
        for status in write_with_retry(&pool, &batch).await {
            metrics.finished.with_label_values(&[status.as_str()]).inc();
        }
        batch.clear();
    }
}

/// Retries a failed write: losing an outcome would mean sending the message again once its
/// lease runs out. Gives up after about a minute, and the lease takes over.
async fn write_with_retry(pool: &PgPool, batch: &[Completion]) -> Vec<String> {
    let mut delay = Duration::from_millis(50);
    for _ in 0..12 {
        match queue::complete(pool, batch).await {
            Ok(ended) => return ended,
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
