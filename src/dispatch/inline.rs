//! Dispatch in the caller's task, without background workers: claim what is due, send it,
//! write the outcomes, and again until nothing is due. Tests drive the worker with it, so they
//! await the work itself instead of polling a running process or sleeping.

use std::sync::Arc;
use std::time::Instant;

use crate::db::Db;
use tokio_util::sync::CancellationToken;

use super::send::{self, SendContext};
use super::{completer, switches};
use crate::carriers::{self, CarrierHandle};
use crate::config::Config;
use crate::db::queue;
use crate::metrics::Metrics;

/// The carriers, routes and policies of a configuration, run on demand.
pub struct InlineDispatcher {
    context: Arc<SendContext>,
    carriers: Vec<Arc<CarrierHandle>>,
    pool: Db,
    batch: usize,
    lease_seconds: u32,
}

impl InlineDispatcher {
    pub async fn new(config: &Config, pool: Db, metrics: Metrics) -> anyhow::Result<Self> {
        let handles = carriers::build_all(config, &metrics).await?;
        let context = SendContext::build(
            config,
            &handles,
            &pool,
            &metrics,
            (&Default::default(), None),
            &CancellationToken::new(),
        )?;
        Ok(Self {
            context,
            carriers: handles.into_values().collect(),
            pool,
            batch: config.dispatch.claim_batch.get(),
            lease_seconds: config.dispatch.lease_seconds.get(),
        })
    }

    /// Claims and sends until no message is due (one in backoff is not due until its time),
    /// writing every outcome; how many outcomes were written.
    pub async fn run_until_idle(&self) -> anyhow::Result<usize> {
        switches::apply(&self.pool, &self.carriers, &self.context.metrics).await;
        let mut written = 0;
        loop {
            let started = Instant::now();
            let batch = queue::claim(
                &self.pool,
                self.batch,
                self.lease_seconds,
                queue::cursor_start(),
            )
            .await?;
            if batch.claimed == 0 {
                return Ok(written);
            }
            let mut sends = tokio::task::JoinSet::new();
            for message in batch.ready {
                let context = self.context.clone();
                sends.spawn(async move {
                    if let Some(ended) = send::ended_before_sending(&message) {
                        return ended;
                    }
                    let clocks = send::Clocks::new(started, message.remaining_ms, context.lease);
                    send::dispatch(context, message, clocks, None).await
                });
            }
            let mut outcomes = Vec::new();
            while let Some(joined) = sends.join_next().await {
                // A send that panicked leaves its lease to run out, as in a worker that died.
                outcomes.extend(joined.ok());
            }
            let ended = completer::write_with_retry(&self.pool, &outcomes).await;
            completer::count(&ended, &self.context.metrics, &self.context.route_stats);
            written += outcomes.len();
        }
    }
}
