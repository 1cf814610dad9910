//! The load generator: POSTs signed requests to the ingress, either as fast as `connections`
//! clients can (closed loop) or at a fixed rate (open loop).
//!
//! It shares the machine's two cores with smsgate and PostgreSQL, as pgbench's client shares
//! them in the baselines, so it is kept light: hyper's own HTTP/1 client over kept-alive
//! connections (reqwest's pool, proxy and redirect layers cost as much CPU per request as a
//! third of the gateway's), and one token per second. Auth0's token carries no per-request
//! claim (issuer, subject, audience, issued-at and expiry, to the second), so every request
//! Auth0 sends within one second carries the same bytes; the gateway verifies each one anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use smsgate::auth0;
use smsgate::config::SignerConfig;
use tokio::sync::{Mutex, Semaphore};

pub struct Target {
    address: SocketAddr,
    path: String,
    signer: SignerConfig,
    /// The token of the current second, as Auth0 would send it.
    token: std::sync::Mutex<(u64, Arc<str>)>,
    /// Numbers are unique per request, so arrivals at the carrier can be matched and no
    /// per-number limit ever refuses one.
    pub next_number: AtomicU64,
    /// Kept-alive connections the open loop is not using.
    idle: std::sync::Mutex<Vec<Connection>>,
}

type Connection = SendRequest<Full<Bytes>>;

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

/// What one request came to. A connection that failed is dropped, and the next request
/// opens another.
enum Sent {
    Accepted(String),
    Refused,
    Broken,
}

impl Target {
    pub fn new(address: SocketAddr, path: String, signer: SignerConfig) -> Self {
        Self {
            address,
            path,
            signer,
            token: std::sync::Mutex::new((0, Arc::from(""))),
            next_number: AtomicU64::new(0),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    async fn connect(&self) -> Option<Connection> {
        let stream = tokio::net::TcpStream::connect(self.address).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(connection);
        Some(sender)
    }

    /// This second's token, signed once.
    fn token(&self) -> Option<Arc<str>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        let mut current = self.token.lock().ok()?;
        if current.0 != now {
            let token = auth0::sign(&self.signer, now, 300).ok()?;
            *current = (now, Arc::from(token.expose()));
        }
        Some(current.1.clone())
    }

    /// One request on `connection`, opened first when there is none. A kept-alive
    /// connection the server closed meanwhile is replaced once, when hyper hands the
    /// request back unsent (as any HTTP client retries it).
    async fn send_one(&self, connection: &mut Option<Connection>) -> Sent {
        let Some(mut request) = self.request() else {
            return Sent::Refused;
        };
        let recipient = request.1.clone();
        for _ in 0..2 {
            let reused = connection.is_some();
            if !reused {
                *connection = self.connect().await;
            }
            let Some(sender) = connection.as_mut() else {
                return Sent::Broken;
            };
            if sender.ready().await.is_err() {
                *connection = None;
                if reused {
                    continue;
                }
                return Sent::Broken;
            }
            match sender.try_send_request(request.0).await {
                Ok(response) => {
                    let ok = response.status().as_u16() == 200;
                    return match response.into_body().collect().await {
                        Ok(_) if ok => Sent::Accepted(recipient),
                        Ok(_) => Sent::Refused,
                        Err(_) => {
                            *connection = None;
                            Sent::Broken
                        }
                    };
                }
                Err(mut failed) => {
                    *connection = None;
                    match failed.take_message() {
                        Some(unsent) if reused => request.0 = unsent,
                        _ => return Sent::Broken,
                    }
                }
            }
        }
        Sent::Broken
    }

    /// The next request and its recipient.
    fn request(&self) -> Option<(hyper::Request<Full<Bytes>>, String)> {
        let token = self.token()?;
        let n = self.next_number.fetch_add(1, Ordering::Relaxed);
        let recipient = crate::profile::recipient(n);
        let body = format!(
            r#"{{"recipient":"{recipient}","body":"Your verification code is: 123456","sender":"+15555555555","req":{{"ip":"203.0.113.7","user-agent":"smsgate-bench"}}}}"#
        );
        let request = hyper::Request::post(self.path.as_str())
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        Some((request, recipient))
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
            let mut connection = None;
            while Instant::now() < deadline {
                let started = Instant::now();
                match target.send_one(&mut connection).await {
                    Sent::Accepted(_) => {
                        result.accepted += 1;
                        result
                            .latencies_us
                            .push(started.elapsed().as_micros() as u64);
                    }
                    Sent::Refused | Sent::Broken => result.failed += 1,
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
                Ok(_permit) => target.send_pooled().await,
                Err(_) => Sent::Broken,
            };
            let answered = Instant::now();
            let mut result = shared.lock().await;
            match outcome {
                Sent::Accepted(recipient) => {
                    result.accepted += 1;
                    result
                        .latencies_us
                        .push(answered.duration_since(due).as_micros() as u64);
                    result.accepted_at.push((recipient, due, answered));
                }
                Sent::Refused | Sent::Broken => result.failed += 1,
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

impl Target {
    /// One request on an idle connection of the pool (or a new one), put back after.
    async fn send_pooled(&self) -> Sent {
        let mut connection = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let sent = self.send_one(&mut connection).await;
        if let (Some(connection), Ok(mut idle)) = (connection, self.idle.lock()) {
            idle.push(connection);
        }
        sent
    }
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
