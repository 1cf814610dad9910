//! Keeps the route measurements (`db::route_stats`) moving, on every process: what the process
//! counted is added to the table every two seconds, the window is read back every ten into the
//! `smsgate_route_*` gauges (labels only for the carriers and countries of the window, so they
//! stay bounded), and minutes past the window are deleted once a minute.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Ticks;
use std::sync::Arc;

use super::measured::MeasuredOrders;
use crate::db::Db;
use crate::db::route_stats::{self, RouteStats, RouteWindow};
use crate::metrics::Metrics;

const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// In flushes: the window is read every fifth, old minutes forgotten every thirtieth.
const READ_EVERY: u32 = 5;
const FORGET_EVERY: u32 = 30;

pub struct RouteMeasure {
    pub pool: Db,
    pub stats: RouteStats,
    pub metrics: Metrics,
    /// `dispatch.route_stats_window_seconds`.
    pub window_seconds: u32,
    /// A send this old without a receipt counts as unanswered (the code's lifetime).
    pub settle_seconds: u32,
    /// Measured routes reorder on every read (which is then every flush).
    pub measured: Arc<MeasuredOrders>,
}

impl RouteMeasure {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = Ticks::new(FLUSH_EVERY, &shutdown);
        let mut round: u32 = 0;
        while ticks.next().await {
            if let Err(err) = self.stats.flush(&self.pool).await {
                tracing::warn!(error = %err, "cannot add the route measurements; keeping them for the next try");
            }
            round = round.wrapping_add(1);
            let read_every = if self.measured.is_empty() {
                READ_EVERY
            } else {
                1
            };
            if round.is_multiple_of(read_every) {
                match route_stats::window(&self.pool, self.window_seconds, self.settle_seconds)
                    .await
                {
                    Ok(window) => {
                        export(&self.metrics, &window);
                        self.measured.refresh(&window);
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot read the route measurements"),
                }
            }
            if round.is_multiple_of(FORGET_EVERY)
                && let Err(err) =
                    route_stats::forget_older_than(&self.pool, self.window_seconds).await
            {
                tracing::warn!(error = %err, "cannot delete old route measurements");
            }
        }
        // What this process counted last is not lost to a clean stop.
        let _ = self.stats.flush(&self.pool).await;
    }
}

/// The window as gauges, replacing the last read (a carrier or country gone from the window
/// loses its series).
fn export(metrics: &Metrics, window: &[RouteWindow]) {
    metrics.route_messages.reset();
    metrics.route_receipt_latency.reset();
    for route in window {
        let labels = |outcome| [route.carrier.as_str(), route.country.as_str(), outcome];
        let counts = [
            ("sent", route.sent),
            ("delivered", route.delivered),
            ("failed_route", route.failed_route),
            ("failed_recipient", route.failed_recipient),
            ("no_receipt", route.no_receipt),
            ("verified", route.verified),
        ];
        for (outcome, n) in counts {
            metrics
                .route_messages
                .with_label_values(&labels(outcome))
                .set(n);
        }
        if let Some(ms) = route.receipt_latency_ms {
            metrics
                .route_receipt_latency
                .with_label_values(&[route.carrier.as_str(), route.country.as_str()])
                .set(ms / 1e3);
        }
    }
}
