//! Runs the retention sweep (`db::retention`) every `retention.interval_seconds`, and makes
//! sure the coming days' partitions exist as the process starts (`db::partitions`).

use std::time::Duration;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use super::Ticks;
pub use crate::db::retention::{IDEMPOTENCY_WINDOW_SECONDS, Plan, Swept, sweep};

pub async fn run(pool: Db, plan: Plan, interval: Duration, shutdown: CancellationToken) {
    // Today's partitions exist already (the migration made them); a process starting after an
    // outage longer than `partitions::DAYS_AHEAD` days makes the missing ones now, not a
    // retention interval later. Another process holding the lock is doing the same.
    if let Err(err) = crate::db::partitions::create_ahead(&pool).await {
        tracing::warn!(error = %err, "creating the coming days' partitions failed");
    }
    let mut ticks = Ticks::new(interval, &shutdown);
    // The first tick is immediate: skip it, so a starting process does not sweep at once
    // (and races nobody for the advisory lock while it starts).
    if !ticks.next().await {
        return;
    }
    while ticks.next().await {
        match sweep(&pool, plan, &shutdown).await {
            Ok(Swept { deleted, dropped }) => {
                if deleted > 0 {
                    tracing::info!(deleted, "retention: old messages deleted row by row");
                }
                if !dropped.is_empty() {
                    tracing::info!(partitions = ?dropped, "retention: partitions past retention dropped");
                }
            }
            Err(err) => tracing::warn!(error = %err, "retention sweep failed"),
        }
    }
}
