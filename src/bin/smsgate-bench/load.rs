//! The load generator: signs every request the way Auth0 does and POSTs it to the ingress,
//! either as fast as `connections` clients can (closed loop) or at a fixed rate (open loop).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use smsgate::auth0;
use smsgate::config::SignerConfig;
use tokio::sync::{Mutex, Semaphore};

pub struct Target {
    pub url: String,
    pub signer: SignerConfig,
    pub client: reqwest::Client,
    /// Numbers are unique per request, so arrivals at the carrier can be matched and no
    /// per-number limit ever refuses one.
    pub next_number: AtomicU64,
}

#[derive(Debug, Default)]
pub struct LoadResult {
    pub accepted: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Request latencies of accepted requests, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Each accepted request: its recipient, when it was due and when its 200 arrived.
    pub accepted_at: Vec<(String, Instant, Instant)>,
}

impl Target {
    pub fn new(url: String, signer: SignerConfig, connections: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            url,
            signer,
            client,
            next_number: AtomicU64::new(0),
        })
    }

    /// One request; returns its recipient when it was accepted.
    async fn send_one(&self) -> Option<String> {
        let n = self.next_number.fetch_add(1, Ordering::Relaxed);
        let recipient = crate::profile::recipient(n);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let token = auth0::sign(&self.signer, now, 300).ok()?;
        let body = format!(
            r#"{{"recipient":"{recipient}","body":"Your verification code is: 123456","sender":"+15555555555","req":{{"ip":"203.0.113.7","user-agent":"smsgate-bench"}}}}"#
        );
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(token.expose())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .ok()?;
        let ok = response.status().as_u16() == 200;
        response.bytes().await.ok()?;
        ok.then_some(recipient)
    }
}

/// `connections` clients, each sending its next request when the previous one is answered.
pub async fn closed_loop(
    target: Arc<Target>,
    connections: usize,
    duration: Duration,
) -> LoadResult {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let target = target.clone();
        tasks.spawn(async move {
            let mut result = LoadResult::default();
            while Instant::now() < deadline {
                let started = Instant::now();
                match target.send_one().await {
                    Some(_) => {
                        result.accepted += 1;
                        result
                            .latencies_us
                            .push(started.elapsed().as_micros() as u64);
                    }
                    None => result.failed += 1,
                }
            }
            result
        });
    }
    let mut total = LoadResult::default();
    while let Some(Ok(part)) = tasks.join_next().await {
        total.accepted += part.accepted;
        total.failed += part.failed;
        total.latencies_us.extend(part.latencies_us);
    }
    total.seconds = started.elapsed().as_secs_f64();
    total
}

/// Requests due at a fixed `rate` per second, whatever the answers do (open loop), over at
/// most `connections` connections, as a client with a bounded pool sends them. Latency counts
/// from when a request was due, so time spent waiting for a free connection is included (no
/// coordinated omission).
pub async fn open_loop(
    target: Arc<Target>,
    rate: u64,
    duration: Duration,
    connections: usize,
) -> LoadResult {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pool = Arc::new(Semaphore::new(connections.max(1)));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let shared = Arc::new(Mutex::new(LoadResult::default()));
    let mut tasks = tokio::task::JoinSet::new();
    while Instant::now() < deadline {
        let due = ticker.tick().await.into_std();
        let (target, shared, pool) = (target.clone(), shared.clone(), pool.clone());
        tasks.spawn(async move {
            let outcome = match pool.acquire().await {
                Ok(_connection) => target.send_one().await,
                Err(_) => None,
            };
            let answered = Instant::now();
            let mut result = shared.lock().await;
            match outcome {
                Some(recipient) => {
                    result.accepted += 1;
                    result
                        .latencies_us
                        .push(answered.duration_since(due).as_micros() as u64);
                    result.accepted_at.push((recipient, due, answered));
                }
                None => result.failed += 1,
            }
        });
        // Finished tasks are collected as we go, so memory follows the requests in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let mut total = std::mem::take(&mut *shared.lock().await);
    total.seconds = started.elapsed().as_secs_f64();
    total
}

/// The `q`-quantile (0..=1) of `values`, which it sorts.
pub fn quantile(values: &mut [u64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable();
    let index = ((values.len() as f64 - 1.0) * q).round() as usize;
    values[index.min(values.len() - 1)] as f64
}
