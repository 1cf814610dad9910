//! Waking workers when a message is queued: in-process at once, across processes through a
//! NOTIFY sent outside any insert transaction (a NOTIFY inside one serialises commits
//! cluster-wide: docs/design.md, "Wake-ups").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::Db;
use sqlx::postgres::{PgConnectOptions, PgListener};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const CHANNEL: &str = "smsgate_queue";

/// Shared by the ingress (which signals) and the claimers (which wait).
#[derive(Clone)]
pub struct Wake {
    local: Arc<Notify>,
    remote_pending: Arc<AtomicBool>,
    /// Tells our own NOTIFYs apart from other processes'.
    instance: Uuid,
}

impl Default for Wake {
    fn default() -> Self {
        Self {
            local: Arc::new(Notify::new()),
            remote_pending: Arc::new(AtomicBool::new(false)),
            instance: Uuid::now_v7(),
        }
    }
}

impl Wake {
    /// Called after a commit: local claimers wake now, other processes within the interval.
    pub fn message_queued(&self) {
        self.local.notify_one();
        self.remote_pending.store(true, Ordering::Release);
    }

    /// Wakes one local claimer (a sibling, when a full batch suggests more work is due).
    pub fn wake_local(&self) {
        self.local.notify_one();
    }

    /// Waits for a wake-up or `timeout`, whichever comes first.
    pub async fn wait(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.local.notified()).await;
    }
}

impl Wake {
    /// Tells other processes, once for everything queued since the last call; nothing when
    /// nothing was.
    pub async fn notify_others(&self, pool: &Db) -> Result<(), sqlx::Error> {
        if !self.remote_pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(self.instance.to_string())
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// LISTENs for other processes' wake-ups; reconnects after errors (polling covers the gap).
/// `session` must reach PostgreSQL itself: a transaction pooler drops a LISTEN with the
/// transaction that ran it.
pub async fn run_listener(session: PgConnectOptions, wake: Wake, shutdown: CancellationToken) {
    // A connection of its own, never one of the pool's: LISTEN holds it for good, and with a
    // small pool (database.max_connections = 1) it would starve the ingress, the claims and
    // readiness for ever.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .connect_lazy_with(session.application_name("smsgate"));
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            loop {
                let notification = listener.recv().await?;
                if notification.payload() != wake.instance.to_string() {
                    wake.local.notify_one();
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = listener => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "queue LISTEN lost; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
