//! Workers: claim due messages in batches, send each through its route, write outcomes back in
//! batches. Any number of processes can run this against one database.

mod admissions;
mod completer;
pub mod decide;
mod inline;
pub mod measured;
pub mod receipt_watch;
mod record;
pub mod retention;
pub mod retry;
pub mod route_measure;
mod send;
mod switches;
pub mod wake;

pub use inline::InlineDispatcher;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::Db;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::carriers;
use crate::config::{Config, DispatchConfig};
use crate::db::queue::{self, ClaimBatch, Completion};
use crate::db::route_stats::RouteStats;
use crate::domain::Status;
use crate::limits::ingress::IngressLimits;
use crate::limits::window::counted_for_seconds;
use crate::metrics::Metrics;
use send::{SendContext, SharedContext};
use wake::Wake;

/// The claim cursor goes back to the start at least this often, so rows that committed late
/// (due before the cursor) wait at most this long. It also goes back whenever a claim comes
/// back short, which is every claim unless a backlog is being drained.
const CURSOR_RESET: Duration = Duration::from_secs(2);

/// A periodic background task's clock: ticks every `interval` (late ticks are not bunched up)
/// until the shutdown token fires.
pub(crate) struct Ticks<'a> {
    interval: tokio::time::Interval,
    shutdown: &'a CancellationToken,
}

impl<'a> Ticks<'a> {
    pub(crate) fn new(period: Duration, shutdown: &'a CancellationToken) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Self { interval, shutdown }
    }

    /// Waits for the next tick; false once shutdown has begun.
    pub(crate) async fn next(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// The running workers of one process.
pub struct Dispatcher {
    claimers: JoinSet<()>,
    background: JoinSet<()>,
    sends: TaskTracker,
    completer: tokio::task::JoinHandle<()>,
    outcomes: mpsc::Sender<Completion>,
    grace: Duration,
}

/// What every claimer shares.
struct Claimer {
    pool: Db,
    wake: Wake,
    config: DispatchConfig,
    workers: Arc<Semaphore>,
    /// Messages claimed but whose first call has not started, at most what the tightest
    /// capped carrier can start within a lease (none without capped carriers).
    in_hand: Option<Arc<Semaphore>>,
    sends: TaskTracker,
    outcomes: mpsc::Sender<Completion>,
    context: SharedContext,
    shutdown: CancellationToken,
}

/// What the retention sweep keeps how long, from the configuration.
fn retention_plan(config: &Config) -> retention::Plan {
    retention::Plan {
        days: config.retention.days,
        send_log_seconds: config
            .limits
            .recipient_pacing
            .iter()
            .map(|w| counted_for_seconds(w.window_seconds.get()))
            .max()
            .unwrap_or(0),
        ingress_log_seconds: counted_for_seconds(
            IngressLimits::new(&config.limits, &config.spend).longest_window_seconds(),
        ),
        resend: crate::db::receipts::ResendPolicy::of(&config.dispatch),
    }
}

/// The LISTEN wake-up, given a session on PostgreSQL itself; without one, claimers poll.
fn listen_for_wakes(
    background: &mut JoinSet<()>,
    listen: Option<PgConnectOptions>,
    wake: Wake,
    shutdown: &CancellationToken,
) {
    match listen {
        Some(session) => {
            background.spawn(wake::run_listener(session, wake, shutdown.clone()));
        }
        None => tracing::info!(
            "no database.direct_url behind the transaction pooler: workers learn of other \
             processes' messages by polling (dispatch.poll_interval_ms)"
        ),
    }
}

impl Dispatcher {
    /// Starts claimers, the outcome writer, retention and, given a session on PostgreSQL
    /// itself, the LISTEN wake-up (without one, claimers poll).
    pub async fn start(
        config: &Config,
        pool: Db,
        listen: Option<PgConnectOptions>,
        wake: Wake,
        metrics: Metrics,
        measures: (RouteStats, Arc<measured::MeasuredOrders>),
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let (route_stats, measured) = measures;
        let handles = carriers::build_all(config, &metrics).await?;
        let switches: Vec<Arc<carriers::CarrierHandle>> = handles.values().cloned().collect();
        let d = &config.dispatch;
        let context = SendContext::build(
            config,
            &handles,
            &pool,
            &metrics,
            (&route_stats, Some(measured)),
            &shutdown,
        )?;
        let in_hand = claim_capacity(&handles, context.lease).map(|n| Arc::new(Semaphore::new(n)));
        let (outcomes, receiver) = mpsc::channel(4 * d.workers.get().max(64));
        let completer = tokio::spawn(completer::run(
            pool.clone(),
            receiver,
            metrics.clone(),
            route_stats.clone(),
        ));
        let sends = TaskTracker::new();
        let claimer = Arc::new(Claimer {
            pool: pool.clone(),
            wake: wake.clone(),
            config: d.clone(),
            workers: Arc::new(Semaphore::new(d.workers.get())),
            in_hand,
            sends: sends.clone(),
            outcomes: outcomes.clone(),
            context,
            shutdown: shutdown.clone(),
        });
        let mut claimers = JoinSet::new();
        for _ in 0..d.claimers.get() {
            claimers.spawn(claimer.clone().run());
        }
        let mut background = JoinSet::new();
        let watch = receipt_watch::ReceiptWatch::new(config, &pool, &switches, &metrics, &wake);
        background.spawn(watch.with_stats(route_stats).run(shutdown.clone()));
        listen_for_wakes(&mut background, listen, wake, &shutdown);
        background.spawn(follow_carrier_switches(
            pool.clone(),
            switches,
            metrics.clone(),
            shutdown.clone(),
        ));
        background.spawn(retention::run(
            pool,
            retention_plan(config),
            config.retention.interval_seconds.duration(),
            shutdown,
        ));
        tracing::info!(
            workers = d.workers,
            claimers = d.claimers,
            "dispatch workers started"
        );
        Ok(Self {
            claimers,
            background,
            sends,
            completer,
            outcomes,
            grace: Duration::from_secs(d.shutdown_grace_seconds),
        })
    }

    /// After the shutdown token fired: stop claiming, give in-flight sends the grace period,
    /// then write every outcome that is in.
    pub async fn stop(mut self) {
        self.claimers.join_all().await;
        self.sends.close();
        if tokio::time::timeout(self.grace, self.sends.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "sends still in flight after the grace period; their leases will expire and \
                 another process (or the next start) retries them"
            );
        }
        drop(self.outcomes);
        if tokio::time::timeout(Duration::from_secs(10), &mut self.completer)
            .await
            .is_err()
        {
            tracing::warn!("outcome writer did not finish in time");
            self.completer.abort();
        }
        self.background.abort_all();
        tracing::info!("dispatch workers stopped");
    }
}

impl Claimer {
    async fn run(self: Arc<Self>) {
        let mut cursor = queue::cursor_start();
        let mut cursor_since = Instant::now();
        let mut failures = 0u32;
        while !self.shutdown.is_cancelled() {
            // Claim only what can start now: a leased message never waits for a worker.
            let first = tokio::select! {
                permit = self.workers.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = self.shutdown.cancelled() => return,
            };
            let mut permits = vec![first];
            while permits.len() < self.config.claim_batch.get() {
                match self.workers.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let Some(hands) = self.take_hands(permits.len()).await else {
                return;
            };
            if self.in_hand.is_some() {
                permits.truncate(hands.len());
            }
            if cursor_since.elapsed() >= CURSOR_RESET {
                cursor = queue::cursor_start();
                cursor_since = Instant::now();
            }
            let wanted = permits.len();
            let claim_started = Instant::now();
            let batch =
                queue::claim(&self.pool, wanted, self.config.lease_seconds.get(), cursor).await;
            let batch = match batch {
                Ok(batch) => {
                    failures = 0;
                    batch
                }
                Err(err) => {
                    drop(permits);
                    failures += 1;
                    let pause = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tracing::warn!(error = %err, "claim failed; pausing {pause:?}");
                    self.pause(pause).await;
                    continue;
                }
            };
            let full = batch.claimed == wanted;
            if let Some(last) = batch.last_key {
                cursor = cursor.max(last);
            }
            self.start_sends(batch, permits, hands, claim_started).await;
            if full {
                // More may be due: let a sibling claim too.
                self.wake.wake_local();
                continue;
            }
            cursor = queue::cursor_start();
            cursor_since = Instant::now();
            let poll = self.config.poll_interval_ms.duration();
            let wait = match queue::next_due(&self.pool).await {
                Ok(Some(ms)) => Duration::from_millis(ms.max(1) as u64).min(poll),
                _ => poll,
            };
            tokio::select! {
                _ = self.wake.wait(wait) => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Up to `wanted` in-hand permits (at least one, waited for), or an empty list when no
    /// carrier is capped; `None` once shutdown begins.
    async fn take_hands(&self, wanted: usize) -> Option<Vec<OwnedSemaphorePermit>> {
        let Some(in_hand) = &self.in_hand else {
            return Some(Vec::new());
        };
        let first = tokio::select! {
            permit = in_hand.clone().acquire_owned() => permit.ok()?,
            _ = self.shutdown.cancelled() => return None,
        };
        let mut hands = vec![first];
        while hands.len() < wanted {
            match in_hand.clone().try_acquire_owned() {
                Ok(permit) => hands.push(permit),
                Err(_) => break,
            }
        }
        Some(hands)
    }

    async fn start_sends(
        &self,
        batch: ClaimBatch,
        mut permits: Vec<OwnedSemaphorePermit>,
        mut hands: Vec<OwnedSemaphorePermit>,
        claim_started: Instant,
    ) {
        for message in batch.ready {
            // Its place in the trace, read once: the claim's line, the send's span.
            let trace = message.trace();
            let trace_id = trace.map(|t| t.trace_id_hex());
            let trace_id = trace_id.unwrap_or_else(|| "-".to_string());
            tracing::debug!(
                id = %message.id,
                trace_id,
                attempts = message.attempts,
                "message claimed"
            );
            if let Some(ended) = send::ended_before_sending(&message) {
                self.finish(ended).await;
                continue;
            }
            let permit = permits.pop();
            let hand = hands.pop();
            let context = self.context.clone();
            let outcomes = self.outcomes.clone();
            let clocks = send::Clocks::new(claim_started, message.remaining_ms, context.lease);
            self.sends.spawn(async move {
                let ticket = message.clone();
                // Every line logged while it is sent (the carrier's own warnings included)
                // carries the message's id and trace id.
                let span = tracing::info_span!("message", id = %message.id, trace_id);
                if let Some(trace) = trace {
                    trace.adopt(&span);
                }
                let send = send::dispatch(context, message, clocks, hand).instrument(span.clone());
                // A panic is caught here, so it becomes a recorded failure, not a lost outcome
                // (which would send the message again once its lease ran out).
                let completion = match tokio::spawn(send).await {
                    Ok(completion) => completion,
                    Err(err) => {
                        tracing::error!(id = %ticket.id, error = %err, "a send panicked");
                        send::finalise(&ticket, Status::Failed, "internal error while sending")
                    }
                };
                // The outcome's line in the message's span too (its trace id).
                span.in_scope(|| send::log_outcome(&completion));
                outcomes.send(completion).await.ok();
                drop(permit);
            });
        }
    }

    /// Ends a message the claimer decided on without sending it.
    async fn finish(&self, ended: Completion) {
        send::log_outcome(&ended);
        self.outcomes.send(ended).await.ok();
    }

    async fn pause(&self, duration: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(duration) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}

/// How many messages one process may hold claimed before their first call starts: what the
/// tightest capped carrier can start within a lease, so a message claimed behind a slow,
/// capped carrier still gets its turn before its lease runs out (and is handed back untried,
/// never sent twice, when it does not). `None` when no carrier is capped.
fn claim_capacity(
    carriers: &std::collections::HashMap<String, Arc<carriers::CarrierHandle>>,
    lease: Duration,
) -> Option<usize> {
    carriers
        .values()
        .filter_map(|carrier| {
            let window = lease.saturating_sub(carrier.timeout + send::lease_margin(lease));
            carrier.starts_within(window)
        })
        .min()
        .map(|n| n.max(1))
}

/// Applies operators' carrier switches (`carrier_states`) every second, so a carrier disabled
/// through any process is skipped by every worker within a second.
async fn follow_carrier_switches(
    pool: Db,
    carriers: Vec<Arc<carriers::CarrierHandle>>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut ticks = Ticks::new(Duration::from_secs(1), &shutdown);
    loop {
        switches::apply(&pool, &carriers, &metrics).await;
        if !ticks.next().await {
            return;
        }
    }
}
