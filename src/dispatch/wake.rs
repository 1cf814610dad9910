//! The cross-process half of wake-ups (`db::wake`): one NOTIFY per interval at most.

use std::time::Duration;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use super::Ticks;
pub use crate::db::wake::{Wake, run_listener};

/// Sends at most one NOTIFY per `interval`, only when something was queued meanwhile.
pub async fn run_notifier(pool: Db, wake: Wake, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = Ticks::new(interval, &shutdown);
    while ticks.next().await {
        if let Err(err) = wake.notify_others(&pool).await {
            tracing::debug!(error = %err, "queue NOTIFY failed; other processes will poll");
        }
    }
}
