//! Runs the retention sweep (`db::retention`) every `retention.interval_seconds`.

use std::time::Duration;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use super::Ticks;
pub use crate::db::retention::{IDEMPOTENCY_WINDOW_SECONDS, Plan, sweep};

pub async fn run(pool: Db, plan: Plan, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = Ticks::new(interval, &shutdown);
    // The first tick is immediate: skip it, so a starting process does not sweep at once
    // (and races nobody for the advisory lock while it starts).
    if !ticks.next().await {
        return;
    }
    while ticks.next().await {
        match sweep(&pool, plan, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "retention: old messages deleted"),
            Err(err) => tracing::warn!(error = %err, "retention sweep failed"),
        }
    }
}
