//! Group commit for the ingress: concurrent requests are coalesced into one multi-row insert
//! per transaction, and each request is answered only after the commit that holds its message.
//! While one batch commits, the next one gathers, so the batch size follows the load: one row
//! when idle, hundreds under pressure (docs/design.md, "The path of a request").
//!
//! A request waits at most its deadline for a writer to take it. One that no writer took in
//! time is answered at once and is never written; one a writer took gets that write's true
//! outcome. So a stalled database costs callers a bounded wait and a 503 never hides a stored
//! message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use super::Db;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    first_hits,
    ingress_hits::{self, FirstHitsPlan, Verdict},
    messages::{self, Enqueued},
};
use crate::domain::NewMessage;
use crate::limits::ingress::{Check, IngressLimits, LimitRefusal, Limited, Monitored, OverSpend};
use crate::limits::slices::Slices;

/// Most messages in one insert.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Result<Stored, Refused>, Arc<sqlx::Error>>>;

/// A stored message, and the monitoring limits it went past.
#[derive(Debug, Clone)]
pub struct Stored {
    pub enqueued: Enqueued,
    pub monitored: Monitored,
}

/// Why a message was answered without being stored.
#[derive(Debug, Clone)]
enum Refused {
    Limited(LimitRefusal),
    NotStored(messages::NotStored),
}

/// Who has a request: still waiting, taken by a writer, or given up by its caller.
const WAITING: u8 = 0;
const TAKEN: u8 = 1;
const ABANDONED: u8 = 2;

struct Pending {
    message: NewMessage,
    reply: Reply,
    state: Arc<AtomicU8>,
}

/// Hands messages to the writer tasks; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    requests: mpsc::Sender<Pending>,
    writer: Arc<Writer>,
}

/// Why a message could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("database: {0}")]
    Database(Arc<sqlx::Error>),
    /// An ingress limit refused it; nothing was stored.
    #[error("{0}")]
    Limited(Limited),
    /// Its estimate would take today's spend past a ceiling; nothing was stored.
    #[error("{0}")]
    OverSpend(OverSpend),
    /// Its idempotency key was first used for a different message; nothing was stored.
    #[error("the idempotency key was used for a different message")]
    KeyReused,
    /// Its idempotency key's message vanished under it repeatedly; nothing was stored.
    #[error("the idempotency key's earlier message could not be found")]
    KeyUnresolved,
    /// No writer took it before its deadline; nothing was stored.
    #[error("no database connection was free in time")]
    TimedOut,
    /// A writer took it, but its write did not finish by the answer deadline: the message may
    /// yet be stored.
    #[error("the database did not confirm the write in time")]
    Unconfirmed,
    #[error("the writer stopped")]
    Stopped,
}

impl Batcher {
    /// Starts `writers` tasks that take turns draining the queue of pending requests. They end
    /// when every `Batcher` clone is dropped.
    pub fn start(pool: Db, ttl_seconds: u32, writers: usize, limits: IngressLimits) -> Self {
        let (requests, receiver) = mpsc::channel(MAX_BATCH * writers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let writer = Arc::new(Writer {
            pool,
            ttl_seconds,
            limits,
            slices: Arc::new(Slices::default()),
        });
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(writer.clone(), receiver.clone()));
        }
        tokio::spawn(give_back_leftovers(Arc::downgrade(&writer)));
        Self { requests, writer }
    }

    /// Gives back every budget slice this process holds unused: it is stopping, and what it
    /// holds would otherwise count until its windows pass (or its day ends).
    pub async fn give_back_slices(&self) {
        let leftovers = self.writer.slices.take_all();
        if let Err(err) = ingress_hits::give_back_leftovers(&self.writer.pool, &leftovers).await {
            tracing::warn!(error = %err, "cannot give back unused budget slices; they count until their windows pass");
        }
    }

    /// Stores `message`; returns once its transaction has committed. Gives up with
    /// `TimedOut` (storing nothing) when no writer has taken it within `wait`, and with
    /// `Unconfirmed` when the write it is in has not finished by `answer_by` (a frozen database,
    /// a commit waiting for a synchronous standby that is gone): the caller then gets an answer
    /// before it gives up on its own, and learns the message may be stored.
    pub async fn enqueue(
        &self,
        message: NewMessage,
        wait: Duration,
        answer_by: tokio::time::Instant,
    ) -> Result<Stored, EnqueueError> {
        let deadline = (tokio::time::Instant::now() + wait).min(answer_by);
        let (reply, mut answer) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(WAITING));
        // A caller that goes away (its client hung up) before a writer took the message: the
        // writers skip it, so nobody's message is stored behind their back.
        let _abandon_on_drop = AbandonOnDrop(state.clone());
        let pending = Pending {
            message,
            reply,
            state: state.clone(),
        };
        match tokio::time::timeout_at(deadline, self.requests.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(EnqueueError::Stopped),
            Err(_) => return Err(EnqueueError::TimedOut),
        }
        let outcome = match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let abandoned = state
                    .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if abandoned {
                    return Err(EnqueueError::TimedOut);
                }
                // A writer has it: only its outcome is true, up to the answer deadline.
                match tokio::time::timeout_at(answer_by, answer).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(EnqueueError::Unconfirmed),
                }
            }
        };
        match outcome {
            Ok(Ok(Ok(stored))) => Ok(stored),
            Ok(Ok(Err(Refused::Limited(LimitRefusal::Window(limited))))) => {
                Err(EnqueueError::Limited(limited))
            }
            Ok(Ok(Err(Refused::Limited(LimitRefusal::Spend(over))))) => {
                Err(EnqueueError::OverSpend(over))
            }
            Ok(Ok(Err(Refused::NotStored(messages::NotStored::KeyReused)))) => {
                Err(EnqueueError::KeyReused)
            }
            Ok(Ok(Err(Refused::NotStored(messages::NotStored::KeyUnresolved)))) => {
                Err(EnqueueError::KeyUnresolved)
            }
            Ok(Err(err)) => Err(EnqueueError::Database(err)),
            Err(_) => Err(EnqueueError::Stopped),
        }
    }
}

/// Marks a request nobody waits for any more as abandoned, unless a writer took it already.
struct AbandonOnDrop(Arc<AtomicU8>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// What every writer task shares.
struct Writer {
    pool: Db,
    ttl_seconds: u32,
    limits: IngressLimits,
    /// The budget slices this process holds (`limits::slices`).
    slices: Arc<Slices>,
}

/// A request's answer from its writer: stored or refused, or the database's error.
type Outcome = Result<Result<Stored, Refused>, Arc<sqlx::Error>>;

/// The batch's answers when it was decided as a whole: each message's, or the one error.
fn each(decided: Result<Vec<Result<Stored, Refused>>, sqlx::Error>, len: usize) -> Vec<Outcome> {
    match decided {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(err) => vec![Err(Arc::new(err)); len],
    }
}

impl Writer {
    /// Stores a batch: by one statement when its limit keys are new and the process's slices
    /// cover the rest (`first_hits`), by a reservation and an insert otherwise.
    async fn store(&self, messages: &[&NewMessage]) -> Vec<Outcome> {
        if self.limits.is_empty() {
            return each(self.store_unlimited(messages).await, messages.len());
        }
        let started = tokio::time::Instant::now();
        let checks = ingress_hits::checks_of(&self.limits, &self.slices, messages, started);
        match ingress_hits::plan_first_hits(&self.limits, &self.slices, messages, &checks) {
            Some(plan) if !plan.messages.is_empty() => {
                self.store_first_hits(messages, plan, checks).await
            }
            _ => each(self.store_reserved(messages, checks).await, messages.len()),
        }
    }

    /// A single statement commits on its own: no BEGIN/COMMIT round trips (direct).
    async fn store_unlimited(
        &self,
        messages: &[&NewMessage],
    ) -> Result<Vec<Result<Stored, Refused>>, sqlx::Error> {
        let mut conn = self.pool.for_one_statement().await?;
        let stored = messages::enqueue_batch(&mut conn, messages, self.ttl_seconds).await?;
        conn.commit().await?;
        Ok(stored.into_iter().map(|s| reused(s, Vec::new())).collect())
    }

    /// The planned messages by one statement; those with a key that exists (and those the
    /// plan left out) by the reservation afterwards, once what the statement and the slices
    /// counted for them is taken back.
    async fn store_first_hits(
        &self,
        messages: &[&NewMessage],
        plan: FirstHitsPlan,
        checks: Vec<Vec<Check>>,
    ) -> Vec<Outcome> {
        let planned: Vec<&NewMessage> = plan.messages.iter().map(|&i| messages[i]).collect();
        let hits = match self.first_hits(&planned, &plan).await {
            Ok(hits) => hits,
            Err(unstored) => {
                let err = match unstored {
                    Unstored::Certainly(err) => {
                        self.slices
                            .give_back_later(plan.spent.iter().flatten().cloned().collect());
                        err
                    }
                    Unstored::Perhaps(err) => err,
                };
                return vec![Err(Arc::new(err)); messages.len()];
            }
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; messages.len()];
        let mut counted_for_nothing = Vec::new();
        for (slot, &i) in plan.messages.iter().enumerate() {
            match hits.stored.get(&messages[i].id.0) {
                Some(enqueued) => {
                    outcomes[i] = Some(Ok(Ok(Stored {
                        enqueued: *enqueued,
                        monitored: Vec::new(),
                    })));
                }
                None => counted_for_nothing.extend(plan.unstored(slot, &hits)),
            }
        }
        if let Err(err) = ingress_hits::give_back_leftovers(&self.pool, &counted_for_nothing).await
        {
            tracing::warn!(error = %err, "cannot give back the counts of messages not stored; trying again");
            self.slices.give_back_later(counted_for_nothing);
        }
        let rest: Vec<usize> = (0..messages.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if !rest.is_empty() {
            let left: Vec<&NewMessage> = rest.iter().map(|&i| messages[i]).collect();
            let left_checks = rest.iter().map(|&i| checks[i].clone()).collect();
            let decided = each(self.store_reserved(&left, left_checks).await, left.len());
            for (i, outcome) in rest.into_iter().zip(decided) {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Arc::new(sqlx::Error::RowNotFound))))
            .collect()
    }

    async fn first_hits(
        &self,
        planned: &[&NewMessage],
        plan: &FirstHitsPlan,
    ) -> Result<first_hits::FirstHits, Unstored> {
        let mut conn = self
            .pool
            .for_one_statement()
            .await
            .map_err(Unstored::Certainly)?;
        let hits = first_hits::insert(&mut conn, planned, &plan.new_keys, self.ttl_seconds)
            .await
            .map_err(|err| match err {
                sqlx::Error::Database(_) => Unstored::Certainly(err),
                err => Unstored::Perhaps(err),
            })?;
        conn.commit().await.map_err(Unstored::Perhaps)?;
        Ok(hits)
    }

    /// Limits decided in a reservation, admitted messages inserted.
    async fn store_reserved(
        &self,
        messages: &[&NewMessage],
        checks: Vec<Vec<Check>>,
    ) -> Result<Vec<Result<Stored, Refused>>, sqlx::Error> {
        // A batch with keys holds their locks in the transaction that stores it, and tells
        // repeats apart once they are held; one without is stored by a single statement that
        // commits on its own. Either way what the counted messages take from the limits is
        // reserved (committed) before they are inserted.
        let keyed = messages.iter().any(|m| m.idempotency_key.is_some());
        // A batch without keys takes its insert's connection only once its reservation is
        // done: it never holds two connections at once.
        let mut keyed_tx = if keyed {
            Some(self.pool.begin().await?)
        } else {
            None
        };
        let (verdicts, reservation) = ingress_hits::admit_batch(
            keyed_tx.as_mut(),
            &self.pool,
            &self.limits,
            &self.slices,
            messages,
            checks,
        )
        .await?;
        let tx = match keyed_tx {
            Some(tx) => tx,
            None => match self.pool.for_one_statement().await {
                Ok(conn) => conn,
                Err(err) => {
                    self.give_back(&reservation).await;
                    return Err(err);
                }
            },
        };
        match self.insert(tx, messages, &verdicts).await {
            Ok(outcomes) => Ok(outcomes),
            Err(Unstored::Certainly(err)) => {
                // Nothing of the batch was stored: what it reserved is free again.
                self.give_back(&reservation).await;
                Err(err)
            }
            Err(Unstored::Perhaps(err)) => Err(err),
        }
    }

    async fn give_back(&self, reservation: &ingress_hits::Reservation) {
        if let Err(err) = ingress_hits::give_back(&self.pool, reservation).await {
            tracing::warn!(error = %err, "cannot give back a batch's reservation; it counts until its windows pass");
        }
    }

    /// Inserts the counted messages, answers the repeats and commits.
    async fn insert(
        &self,
        mut tx: super::Tx<'static>,
        messages: &[&NewMessage],
        verdicts: &[Verdict],
    ) -> Result<Vec<Result<Stored, Refused>>, Unstored> {
        // Only counted messages are inserted. A repeat is answered with its key's message
        // (possibly a counted one of this very batch), never inserted: if that message
        // vanished meanwhile (retention), the repeat would be stored counted nowhere.
        let of_verdict = |wanted: fn(&Verdict) -> bool| -> Vec<&NewMessage> {
            messages
                .iter()
                .zip(verdicts)
                .filter(|(_, verdict)| wanted(verdict))
                .map(|(message, _)| *message)
                .collect()
        };
        let counted = of_verdict(|v| matches!(v, Verdict::Counted(_)));
        let repeats = of_verdict(|v| matches!(v, Verdict::Repeat));
        let mut stored = if counted.is_empty() {
            Vec::new()
        } else {
            // A statement the database refused did not commit, even one that commits on its
            // own; a connection lost meanwhile may have.
            messages::enqueue_batch(&mut tx, &counted, self.ttl_seconds)
                .await
                .map_err(|err| match err {
                    sqlx::Error::Database(_) => Unstored::Certainly(err),
                    err => Unstored::Perhaps(err),
                })?
        }
        .into_iter();
        let mut repeated = messages::answer_repeats(&mut tx, &repeats)
            .await
            .map_err(Unstored::Perhaps)?
            .into_iter();
        // A commit that fails may still have happened (the connection broke after it): the
        // reservation is then kept, which can only refuse early.
        tx.commit().await.map_err(Unstored::Perhaps)?;
        let outcomes = verdicts
            .iter()
            .map(|verdict| match verdict.clone() {
                Verdict::Counted(monitored) => stored
                    .next()
                    .ok_or(sqlx::Error::RowNotFound)
                    .map(|s| reused(s, monitored)),
                Verdict::Repeat => repeated
                    .next()
                    .ok_or(sqlx::Error::RowNotFound)
                    .map(|s| reused(s, Vec::new())),
                Verdict::KeyReused => Ok(Err(Refused::NotStored(messages::NotStored::KeyReused))),
                Verdict::Refused(refusal) => Ok(Err(Refused::Limited(refusal))),
            })
            .collect::<Result<Vec<_>, sqlx::Error>>();
        outcomes.map_err(Unstored::Perhaps)
    }
}

/// A message's insert (or its key's earlier message) as the answer to its request.
fn reused(
    stored: Result<Enqueued, messages::NotStored>,
    monitored: Monitored,
) -> Result<Stored, Refused> {
    stored
        .map(|enqueued| Stored {
            enqueued,
            monitored,
        })
        .map_err(Refused::NotStored)
}

/// Why a batch's insert did not report its messages stored.
enum Unstored {
    /// It failed before its commit: nothing was stored.
    Certainly(sqlx::Error),
    /// Its commit was sent: the messages may be stored.
    Perhaps(sqlx::Error),
}

/// Gives back what this process's slices held unused once they expire, every second while
/// its writers run. What cannot be given back (the database is away) is tried again; what is
/// lost with the process counts until its windows pass, which refuses early, never late.
async fn give_back_leftovers(writer: std::sync::Weak<Writer>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let leftovers = writer.slices.take_leftovers(tokio::time::Instant::now());
        if leftovers.is_empty() {
            continue;
        }
        if let Err(err) = ingress_hits::give_back_leftovers(&writer.pool, &leftovers).await {
            tracing::warn!(error = %err, "cannot give back unused budget slices; trying again");
            writer.slices.give_back_later(leftovers);
        }
    }
}

async fn write_batches(writer: Arc<Writer>, receiver: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // Take whatever is waiting (at least one); the other writer gathers meanwhile.
        let received = receiver.lock().await.recv_many(&mut batch, MAX_BATCH).await;
        if received == 0 {
            return;
        }
        // Requests whose callers gave up were answered already: they must not be written.
        batch.retain(|pending| {
            pending
                .state
                .compare_exchange(WAITING, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        });
        if batch.is_empty() {
            continue;
        }
        let messages: Vec<&NewMessage> = batch.iter().map(|pending| &pending.message).collect();
        let outcomes = writer.store(&messages).await;
        for (pending, outcome) in batch.drain(..).zip(outcomes) {
            pending.reply.send(outcome).ok();
        }
    }
}
