//! Group commit for the ingress: concurrent requests are coalesced into one multi-row insert
//! per transaction, and each request is answered only after the commit that holds its message.
//! While one batch commits, the next one gathers, so the batch size follows the load: one row
//! when idle, hundreds under pressure (shared research, pgqueue.md §4 "Ingress").

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{Mutex, mpsc, oneshot};

use super::messages::{self, Enqueued};
use crate::domain::NewMessage;

/// Most messages in one insert.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Enqueued, Arc<sqlx::Error>>>;

/// Hands messages to the writer tasks; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    requests: mpsc::Sender<(NewMessage, Reply)>,
}

/// Why a message could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("database: {0}")]
    Database(Arc<sqlx::Error>),
    #[error("the writer stopped")]
    Stopped,
}

impl Batcher {
    /// Starts `writers` tasks that take turns draining the queue of pending requests. They end
    /// when every `Batcher` clone is dropped.
    pub fn start(pool: PgPool, ttl_seconds: u32, writers: usize) -> Self {
        let (requests, receiver) = mpsc::channel(MAX_BATCH * writers.max(1) * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(pool.clone(), ttl_seconds, receiver.clone()));
        }
        Self { requests }
    }

    /// Stores `message`; returns once its transaction has committed.
    pub async fn enqueue(&self, message: NewMessage) -> Result<Enqueued, EnqueueError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((message, reply))
            .await
            .map_err(|_| EnqueueError::Stopped)?;
        match answer.await {
            Ok(Ok(enqueued)) => Ok(enqueued),
            Ok(Err(err)) => Err(EnqueueError::Database(err)),
            Err(_) => Err(EnqueueError::Stopped),
        }
    }
}

async fn write_batches(
    pool: PgPool,
    ttl_seconds: u32,
    receiver: Arc<Mutex<mpsc::Receiver<(NewMessage, Reply)>>>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        // Take whatever is waiting (at least one); the other writer gathers meanwhile.
        let received = receiver.lock().await.recv_many(&mut batch, MAX_BATCH).await;
        if received == 0 {
            return;
        }
        let messages: Vec<&NewMessage> = batch.iter().map(|(message, _)| message).collect();
        let result = messages::enqueue_batch(&pool, &messages, ttl_seconds).await;
        match result {
            Ok(stored) => {
                for ((_, reply), enqueued) in batch.drain(..).zip(stored) {
                    reply.send(Ok(enqueued)).ok();
                }
            }
            Err(err) => {
                let err = Arc::new(err);
                for (_, reply) in batch.drain(..) {
                    reply.send(Err(err.clone())).ok();
                }
            }
        }
    }
}
