//! `[limits] max_in_flight`: how many requests of one signer a process handles at once. A
//! tenant (or a leaked secret) flooding the ingress gets 429s instead of the whole
//! database's attention; other signers are unaffected. Per process, not across processes.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Default)]
pub struct InFlight {
    /// Empty when there is no cap. Unsigned requests (no signer configured) share "".
    by_signer: Arc<HashMap<String, Arc<Semaphore>>>,
    max_in_flight: usize,
}

impl InFlight {
    pub fn new<'a>(signers: impl Iterator<Item = &'a str>, max_in_flight: usize) -> Self {
        if max_in_flight == 0 {
            return Self::default();
        }
        let by_signer = signers
            .chain(std::iter::once(""))
            .map(|name| (name.to_string(), Arc::new(Semaphore::new(max_in_flight))))
            .collect();
        Self {
            by_signer: Arc::new(by_signer),
            max_in_flight,
        }
    }

    /// Requests of each signer being handled now ("" for unsigned ones); none without a cap.
    pub fn in_use(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_signer.iter().map(|(signer, slots)| {
            let used = self.max_in_flight.saturating_sub(slots.available_permits());
            (signer.as_str(), used)
        })
    }

    /// A slot for one request of `signer`, held until it is dropped; `Err` when all are taken.
    pub fn enter(&self, signer: Option<&str>) -> Result<Option<OwnedSemaphorePermit>, Full> {
        match self.by_signer.get(signer.unwrap_or("")) {
            None => Ok(None),
            Some(slots) => slots
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| Full),
        }
    }
}

/// Every slot of the signer is taken.
#[derive(Debug)]
pub struct Full;
