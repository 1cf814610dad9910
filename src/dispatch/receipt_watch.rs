//! Every second, on every worker process: receipts that beat their message's send record are
//! applied (a route failure among them sends the code again), messages whose carrier stayed
//! silent past its `receipt_timeout_seconds` go out again, and the bodies no resend can use
//! any more are erased. Each step is one statement that locks the rows it changes, so
//! processes running it at once never resend a message twice.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Ticks;
use crate::carriers::CarrierHandle;
use crate::db::receipts::{self, ResendPolicy};
use crate::db::route_stats::RouteStats;
use crate::db::{Db, resends};
use crate::metrics::Metrics;

/// How often the watch runs: a resend is due a second at most after its time.
const EVERY: Duration = Duration::from_secs(1);

/// What the watch needs, from the configuration.
pub struct ReceiptWatch {
    pub pool: Db,
    pub resend: ResendPolicy,
    /// Carriers with a `receipt_timeout_seconds`, and that timeout.
    pub silent_after: Vec<(String, Duration)>,
    /// `dispatch.message_ttl_seconds`: how long ago a message still alive was accepted.
    pub ttl: Duration,
    pub metrics: Metrics,
    pub wake: crate::db::wake::Wake,
    /// Receipts applied late still count for the route measurements.
    pub route_stats: RouteStats,
}

impl ReceiptWatch {
    pub fn new(
        config: &crate::config::Config,
        pool: &Db,
        carriers: &[Arc<CarrierHandle>],
        metrics: &Metrics,
        wake: &crate::db::wake::Wake,
    ) -> Self {
        let d = &config.dispatch;
        Self {
            pool: pool.clone(),
            resend: ResendPolicy::of(d),
            silent_after: Self::silent_after(carriers),
            ttl: Duration::from_secs(u64::from(d.message_ttl_seconds)),
            metrics: metrics.clone(),
            wake: wake.clone(),
            route_stats: RouteStats::default(),
        }
    }

    /// The same, counting late receipts into `route_stats`.
    pub fn with_stats(self, route_stats: RouteStats) -> Self {
        Self {
            route_stats,
            ..self
        }
    }

    /// The carriers of `handles` that have a receipt timeout.
    pub fn silent_after(handles: &[Arc<CarrierHandle>]) -> Vec<(String, Duration)> {
        let mut silent: Vec<(String, Duration)> = handles
            .iter()
            .filter_map(|c| c.receipt_timeout.map(|t| (c.name.clone(), t)))
            .collect();
        silent.sort();
        silent
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = Ticks::new(EVERY, &shutdown);
        while ticks.next().await {
            if let Err(err) = self.once().await {
                tracing::warn!(error = %err, "the receipt watch failed; trying again in a second");
            }
        }
    }

    /// One pass; what it did is logged and counted.
    pub async fn once(&self) -> Result<(), sqlx::Error> {
        let (applied, resent) =
            receipts::apply_pending(&self.pool, self.resend, self.ttl, Some(&self.route_stats))
                .await?;
        if applied > 0 {
            tracing::info!(
                applied,
                resent = resent.len(),
                "delivery receipts applied late"
            );
        }
        for carrier in &resent {
            self.metrics
                .resends
                .with_label_values(&[carrier, "route_failure"])
                .inc();
        }
        let mut queued = resent.len() as u64;
        if self.resend.min_remaining.is_some() {
            for (carrier, timeout) in &self.silent_after {
                let silent =
                    resends::resend_silent(&self.pool, carrier, *timeout, self.resend, self.ttl)
                        .await?;
                for id in &silent {
                    tracing::info!(
                        %id,
                        carrier,
                        "no receipt in time: sending again through another carrier"
                    );
                }
                let silent = silent.len() as u64;
                if silent > 0 {
                    self.metrics
                        .resends
                        .with_label_values(&[carrier, "no_receipt"])
                        .inc_by(silent);
                }
                queued += silent;
            }
        }
        resends::erase_spent_bodies(&self.pool, self.resend).await?;
        if queued > 0 {
            self.wake.message_queued();
        }
        Ok(())
    }
}
