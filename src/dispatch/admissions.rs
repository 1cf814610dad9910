//! Group commit for the per-recipient limits: the sends that are about to call a carrier ask
//! here, and one transaction admits every send waiting (`db::recipient_sends`), while the
//! next batch gathers. Each send is still decided right before its call, against the counts
//! as they stand across every process; only the round trips and commits are shared.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Mutex, mpsc, oneshot};

use crate::config::WindowLimit;
use crate::db::{Db, recipient_sends};
use crate::limits::window::Admission;

/// Most sends admitted in one transaction.
const MAX_BATCH: usize = 128;

/// How long a batch waits for its numbers' rows before its sends are tried one by one.
const BATCH_LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Transactions in progress at once: one commits while the next gathers.
const ADMITTERS: usize = 2;

/// The decision on one send, with the database's time it was counted at (epoch ms).
pub type Decided = (Admission, i64);

/// Why a send was not decided; nothing was counted for it.
#[derive(Debug, Clone)]
pub enum Undecided {
    /// Its turn ended before a transaction took it, or while the rows' locks were awaited.
    TurnOver,
    Database(Arc<sqlx::Error>),
}

struct Request {
    recipient: String,
    /// The last moment the send may start: the batch waits for locks no longer than this.
    latest: Instant,
    reply: oneshot::Sender<Result<Decided, Undecided>>,
}

/// Hands sends to the admitting tasks; cheap to clone.
#[derive(Clone)]
pub struct Admissions {
    requests: mpsc::Sender<Request>,
}

impl Admissions {
    /// Starts the admitting tasks; they end when every clone is dropped.
    pub fn start(pool: Db, windows: Vec<WindowLimit>) -> Self {
        let (requests, receiver) = mpsc::channel(MAX_BATCH * ADMITTERS * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let windows: Arc<[WindowLimit]> = windows.into();
        for _ in 0..ADMITTERS {
            tokio::spawn(admit_batches(
                pool.clone(),
                windows.clone(),
                receiver.clone(),
            ));
        }
        Self { requests }
    }

    /// Admits one send to `recipient`, or says how long its windows make it wait.
    pub async fn admit(&self, recipient: &str, latest: Instant) -> Result<Decided, Undecided> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            recipient: recipient.to_string(),
            latest,
            reply,
        };
        let stopped = || Undecided::Database(Arc::new(sqlx::Error::PoolClosed));
        self.requests.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn admit_batches(
    pool: Db,
    windows: Arc<[WindowLimit]>,
    receiver: Arc<Mutex<mpsc::Receiver<Request>>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = receiver.lock().await.recv_many(&mut batch, MAX_BATCH).await;
        if received == 0 {
            return;
        }
        // A send whose turn is over would be counted and then not made.
        let now = Instant::now();
        let (late, on_time): (Vec<Request>, Vec<Request>) =
            batch.drain(..).partition(|r| r.latest <= now);
        for request in late {
            request.reply.send(Err(Undecided::TurnOver)).ok();
        }
        // A batch waits briefly for rows another batch holds; past that, each of its sends
        // is tried alone with the rest of its own turn (one number held for long must not
        // use up the turns of the others).
        let Some(lock_wait) = on_time.iter().map(|r| r.latest - now).min() else {
            continue;
        };
        let lock_wait = lock_wait.min(BATCH_LOCK_WAIT);
        let recipients: Vec<&str> = on_time.iter().map(|r| r.recipient.as_str()).collect();
        match recipient_sends::admit(&pool, &recipients, &windows, lock_wait).await {
            Ok((admissions, at_ms)) => {
                for (request, admission) in on_time.into_iter().zip(admissions) {
                    request.reply.send(Ok((admission, at_ms))).ok();
                }
            }
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                // Found by an attack: one number's row held elsewhere failed the whole batch,
                // again and again. Each send is now tried on its own, with its own turn: only
                // the sends to that number wait for it.
                for request in on_time {
                    tokio::spawn(admit_alone(pool.clone(), windows.clone(), request));
                }
            }
            Err(err) => {
                let err = Arc::new(err);
                for request in on_time {
                    request
                        .reply
                        .send(Err(Undecided::Database(err.clone())))
                        .ok();
                }
            }
        }
    }
}

/// One send in a transaction of its own, waiting for its number's row as long as its turn
/// lasts.
async fn admit_alone(pool: Db, windows: Arc<[WindowLimit]>, request: Request) {
    let lock_wait = request.latest.saturating_duration_since(Instant::now());
    let decided = if lock_wait.is_zero() {
        Err(Undecided::TurnOver)
    } else {
        match recipient_sends::admit(&pool, &[&request.recipient], &windows, lock_wait).await {
            Ok((admissions, at_ms)) => admissions
                .first()
                .map(|admission| (*admission, at_ms))
                .ok_or(Undecided::TurnOver),
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                Err(Undecided::TurnOver)
            }
            Err(err) => Err(Undecided::Database(Arc::new(err))),
        }
    };
    request.reply.send(decided).ok();
}

/// PostgreSQL's lock_not_available: the lock timeout of the admission passed.
const LOCK_NOT_AVAILABLE: &str = "55P03";
