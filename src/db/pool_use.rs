//! How the pool is used, for the metrics a platform team looks for first: connections open,
//! idle and in use against the maximum, tasks waiting for one, and how long taking one takes
//! (`smsgate_db_pool_*`, docs/metrics.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts};

/// Shared by every clone of a [`super::Db`].
#[derive(Debug, Clone)]
pub struct PoolUse(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    waiting: AtomicI64,
    acquire: Histogram,
}

/// From 100 µs (a free connection) to the acquire timeout's range.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
];

impl Default for PoolUse {
    fn default() -> Self {
        let opts = HistogramOpts::new(
            "smsgate_db_pool_acquire_seconds",
            "Time to take a pooled connection and start its transaction (BEGIN included), for \
             the transactions and single statements smsgate runs.",
        )
        .buckets(BUCKETS.to_vec());
        let acquire = Histogram::with_opts(opts).expect("fixed, increasing buckets");
        Self(Arc::new(Inner {
            waiting: AtomicI64::new(0),
            acquire,
        }))
    }
}

impl PoolUse {
    /// Counts a wait for a connection while `taking` runs, and times it.
    pub async fn timed<T>(&self, taking: impl Future<Output = T>) -> T {
        let waiting = Waiting::new(&self.0.waiting);
        let started = Instant::now();
        let taken = taking.await;
        self.0.acquire.observe(started.elapsed().as_secs_f64());
        drop(waiting);
        taken
    }

    /// Tasks waiting for a connection now.
    pub fn waiting(&self) -> i64 {
        self.0.waiting.load(Ordering::Relaxed).max(0)
    }

    /// The histogram, to register with the process's metrics (one registry per process).
    pub fn acquire_histogram(&self) -> Histogram {
        self.0.acquire.clone()
    }
}

/// One task waiting; the count is given back however the wait ends (a caller that gave up
/// drops it mid-wait).
struct Waiting<'a>(&'a AtomicI64);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicI64) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Until the spawned task is counted, for at most a few seconds.
    async fn counted(usage: &PoolUse) {
        let seen = async {
            while usage.waiting() == 0 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), seen)
            .await
            .expect("a task taking a connection is counted as waiting");
    }

    #[tokio::test]
    async fn a_task_counts_as_waiting_until_its_connection_is_taken_or_it_gives_up() {
        let usage = PoolUse::default();
        let (give, taken) = tokio::sync::oneshot::channel::<()>();
        let waiter = tokio::spawn({
            let usage = usage.clone();
            async move { usage.timed(taken).await }
        });
        counted(&usage).await;
        assert_eq!(usage.waiting(), 1);
        give.send(()).expect("the waiter is still waiting");
        waiter
            .await
            .expect("no panic")
            .expect("the connection came");
        assert_eq!(usage.waiting(), 0);
        assert_eq!(usage.acquire_histogram().get_sample_count(), 1);

        let gave_up = tokio::spawn({
            let usage = usage.clone();
            async move { usage.timed(std::future::pending::<()>()).await }
        });
        counted(&usage).await;
        gave_up.abort();
        let _ = gave_up.await;
        assert_eq!(usage.waiting(), 0, "a caller that gave up is not waiting");
    }
}
