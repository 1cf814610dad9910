//! `GET /metrics` on its own listener (`metrics.listen`), kept off the public one. Queue gauges
//! are read from the database at scrape time, at most once a second however often it is scraped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::Db;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::InFlight;
use super::health::Readiness;
use crate::db::queue::{self, QueueStats};
use crate::metrics::{Metrics, NO_SIGNER};

const QUEUE_STATS_MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct MetricsState {
    pub metrics: Metrics,
    pub pool: Db,
    /// The ingress's per-signer slots, read at scrape time.
    pub in_flight: InFlight,
    /// `/readyz`'s verdict (shared with it), as `smsgate_ready`.
    pub readiness: Arc<Readiness>,
    cached: Arc<Mutex<Option<(Instant, QueueStats)>>>,
    ready_read: SingleRead<bool>,
    stats_read: SingleRead<Result<QueueStats, sqlx::Error>>,
}

/// One database read of the scrape's at a time, in a task of its own. A scrape that gives up
/// after its budget leaves the read running (the statement timeout ends it) and the next
/// scrape waits on that same read instead of starting another: a stuck database costs one
/// connection, not one per scrape.
struct SingleRead<T> {
    running: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<T>>>>,
}

impl<T> Clone for SingleRead<T> {
    fn clone(&self) -> Self {
        Self {
            running: self.running.clone(),
        }
    }
}

impl<T: Send + 'static> SingleRead<T> {
    fn new() -> Self {
        Self {
            running: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The read's result within `budget`, starting it unless one is running; `None` when it
    /// is not done by then.
    async fn within<F>(&self, budget: Duration, start: impl FnOnce() -> F) -> Option<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let mut running = tokio::time::timeout_at(deadline, self.running.lock())
            .await
            .ok()?;
        let read = running.get_or_insert_with(|| tokio::spawn(start()));
        let done = tokio::time::timeout_at(deadline, read).await.ok()?;
        *running = None;
        done.ok()
    }
}

impl MetricsState {
    pub fn new(metrics: Metrics, pool: Db, in_flight: InFlight, readiness: Arc<Readiness>) -> Self {
        Self {
            metrics,
            pool,
            in_flight,
            readiness,
            cached: Arc::new(Mutex::new(None)),
            ready_read: SingleRead::new(),
            stats_read: SingleRead::new(),
        }
    }

    fn fresh_cache(&self) -> Option<QueueStats> {
        let cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        cached
            .filter(|(at, _)| at.elapsed() < QUEUE_STATS_MAX_AGE)
            .map(|(_, stats)| stats)
    }
}

pub fn metrics_router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(state)
}

/// The pool as it stands at the scrape.
fn pool_gauges(metrics: &crate::metrics::Metrics, db: &Db) {
    let pool = db.pool();
    let open = i64::from(pool.size());
    let idle = i64::try_from(pool.num_idle()).unwrap_or(i64::MAX).min(open);
    let connections = &metrics.pool_connections;
    connections.with_label_values(&["idle"]).set(idle);
    connections.with_label_values(&["in_use"]).set(open - idle);
    metrics
        .pool_max
        .set(i64::from(pool.options().get_max_connections()));
    metrics.pool_waiting.set(db.usage().waiting());
}

/// The database's share of a scrape: a frozen database must not make the scrape itself time
/// out (Prometheus would then report the process down, not the database).
const SCRAPE_DATABASE_BUDGET: Duration = Duration::from_secs(1);

async fn scrape(State(state): State<MetricsState>) -> impl IntoResponse {
    let (readiness, pool) = (state.readiness.clone(), state.pool.clone());
    let ready = state
        .ready_read
        .within(SCRAPE_DATABASE_BUDGET, || async move {
            readiness.is_ready(&pool).await
        })
        .await
        .unwrap_or(false);
    state.metrics.ready.set(i64::from(ready));
    let stats = match state.fresh_cache() {
        Some(stats) => Some(stats),
        None => match state
            .stats_read
            .within(SCRAPE_DATABASE_BUDGET, || {
                let pool = state.pool.clone();
                async move { queue::stats(&pool).await }
            })
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        {
            Ok(stats) => {
                *state.cached.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), stats));
                Some(stats)
            }
            Err(err) => {
                // The gauges keep their last values; the database's own health is on /readyz.
                tracing::warn!(error = %err, "cannot read queue depth for metrics");
                None
            }
        },
    };
    if let Some(stats) = stats {
        let metrics = &state.metrics;
        metrics
            .queue_depth
            .with_label_values(&["queued"])
            .set(stats.queued);
        metrics
            .queue_depth
            .with_label_values(&["sending"])
            .set(stats.sending);
        metrics.queue_oldest_age.set(stats.oldest_age_seconds);
        let phases = [
            ("due", stats.due),
            ("waiting", stats.queued - stats.due),
            ("sending", stats.sending),
        ];
        for (phase, count) in phases {
            metrics
                .queue_messages
                .with_label_values(&[phase])
                .set(count);
        }
        metrics.queue_due_age.set(stats.due_age_seconds);
    }
    pool_gauges(&state.metrics, &state.pool);
    for (signer, used) in state.in_flight.in_use() {
        // An empty label value is no label at all to Prometheus: unsigned requests are "-".
        let signer = if signer.is_empty() { NO_SIGNER } else { signer };
        state
            .metrics
            .ingress_in_flight
            .with_label_values(&[signer])
            .set(i64::try_from(used).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}
