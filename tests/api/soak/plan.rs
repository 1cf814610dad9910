//! A soak run drawn from a seed: the configuration (lease, workers, carriers with their caps,
//! timeouts and misbehaviour, breakers, limits, retention, expiry) and the workload (requests,
//! repeats, operator actions, kills, a database restart). The same seed gives the same plan.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::standins::Reply;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Twilio,
    MessageMedia,
}

#[derive(Debug, Clone)]
pub struct CarrierPlan {
    pub name: String,
    pub kind: Kind,
    pub timeout_ms: u64,
    pub max_in_flight: Option<u32>,
    pub max_per_second: Option<u32>,
    pub breaker_failures: u32,
    pub breaker_cooldown_seconds: u32,
    /// The stand-in's answers in order; `Created` after them.
    pub replies: Vec<Reply>,
}

/// A window limit: at most `max` in any `window_seconds`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub max: u32,
    pub window_seconds: u32,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub at: Duration,
    pub recipient: String,
    pub body: String,
    pub key: Option<String>,
    /// Client IP in `req.ip` (a few, so IP limits bite).
    pub ip: String,
}

#[derive(Debug, Clone)]
pub enum Event {
    /// SIGKILL process `n`, start it again after the pause.
    Kill(usize, Duration),
    /// Stop PostgreSQL, start it again after the pause.
    RestartDatabase(Duration),
    Disable(String),
    Enable(String),
    /// `smsgate messages cancel|retry` on the message of request `n` (if it got an id).
    Cancel(usize),
    Retry(usize),
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub lease_seconds: u32,
    pub workers: usize,
    pub claim_batch: usize,
    pub claimers: usize,
    pub ttl_seconds: u32,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub max_attempts: u32,
    pub carriers: Vec<CarrierPlan>,
    /// Prefix → carrier indexes, in order.
    pub routes: Vec<(String, Vec<usize>)>,
    pub recipient_limit: Option<Window>,
    pub ip_limit: Option<Window>,
    pub ingress_recipient_limit: Option<Window>,
    /// A country cap high enough to be spent in budget slices (max >= 200), on every country:
    /// the soak's requests never reach it, so it refuses nothing, yet the slices are taken,
    /// refilled and given back through kills and database restarts.
    pub country_limit: Option<Window>,
    pub retention_days: u32,
    /// 1 or 2 processes on the database; the second may be a worker only.
    pub second_process: Option<&'static str>,
    pub requests: Vec<Request>,
    pub events: Vec<(Duration, Event)>,
}

/// Numbers are drawn from a small pool per prefix, so limits and repeats meet.
const PREFIXES: [&str; 2] = ["+14155550", "+447911100"];

impl Plan {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let carriers: Vec<CarrierPlan> = (0..rng.random_range(1..=3usize))
            .map(|i| carrier(&mut rng, i))
            .collect();
        let routes = routes(&mut rng, carriers.len());
        // The lease must outlast the slowest route (validation refuses less).
        let slowest: u64 = routes
            .iter()
            .map(|(_, list)| list.iter().map(|&c| carriers[c].timeout_ms).sum::<u64>())
            .max()
            .unwrap_or(0);
        let lease_seconds = (slowest / 1000 + 1) as u32 + rng.random_range(0..6u32);
        let retry_base_ms = rng.random_range(50..400u64);
        let duration = Duration::from_millis(rng.random_range(4_000..8_000u64));
        let window = |rng: &mut StdRng, max: std::ops::Range<u32>, secs: std::ops::Range<u32>| {
            rng.random_bool(0.4).then(|| Window {
                max: rng.random_range(max),
                window_seconds: rng.random_range(secs),
            })
        };
        let recipient_limit = window(&mut rng, 1..3, 1..5);
        let ip_limit = window(&mut rng, 10..40, 2..8);
        let ingress_recipient_limit = window(&mut rng, 2..6, 2..8);
        // Drawn from a generator of its own, so the seeds on file keep their scenarios.
        let country_limit = window(
            &mut StdRng::seed_from_u64(seed ^ 0x736c_6963_6573),
            200..261,
            30..3600,
        );
        let requests = requests(&mut rng, seed, duration);
        let events = events(&mut rng, &carriers, requests.len(), duration);
        Self {
            lease_seconds,
            workers: rng.random_range(1..=12),
            claim_batch: rng.random_range(1..=16),
            claimers: rng.random_range(1..=3),
            ttl_seconds: rng.random_range(4..=12),
            retry_base_ms,
            retry_max_ms: retry_base_ms + rng.random_range(0..1500u64),
            max_attempts: rng.random_range(1..=6),
            carriers,
            routes,
            recipient_limit,
            ip_limit,
            ingress_recipient_limit,
            country_limit,
            retention_days: if rng.random_bool(0.5) { 0 } else { 7 },
            second_process: match rng.random_range(0..3) {
                0 => None,
                1 => Some("all"),
                _ => Some("worker"),
            },
            requests,
            events,
        }
    }

    /// The processes' configuration (listen addresses are set per process).
    pub fn config_toml(&self, base_urls: &[String]) -> String {
        let mut toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [database]\nmax_connections = 8\nacquire_timeout_ms = 2000\n\
             [admin]\ntoken = \"{admin}\"\n\
             [auth0.primary]\nsecret = \"{secret}\"\naudience = \"{audience}\"\nsubject = \"{subject}\"\n\
             [dispatch]\nlease_seconds = {lease}\nworkers = {workers}\nclaim_batch = {batch}\n\
             claimers = {claimers}\nmessage_ttl_seconds = {ttl}\nretry_base_ms = {base}\n\
             retry_max_ms = {max}\nmax_attempts = {attempts}\npoll_interval_ms = 200\n\
             shutdown_grace_seconds = 5\n\
             [retention]\ndays = {days}\ninterval_seconds = 1\n\
             [log]\nformat = \"json\"\nlevel = \"info,sqlx=warn\"\n",
            admin = crate::helpers::ADMIN_TOKEN,
            secret = crate::helpers::SECRET,
            audience = crate::helpers::AUDIENCE,
            subject = crate::helpers::SUBJECT,
            lease = self.lease_seconds,
            workers = self.workers,
            batch = self.claim_batch,
            claimers = self.claimers,
            ttl = self.ttl_seconds,
            base = self.retry_base_ms,
            max = self.retry_max_ms,
            attempts = self.max_attempts,
            days = self.retention_days,
        );
        for (carrier, base_url) in self.carriers.iter().zip(base_urls) {
            toml += &carrier.toml(base_url);
        }
        for (prefix, list) in &self.routes {
            let names: Vec<String> = list
                .iter()
                .map(|&c| format!("\"{}\"", self.carriers[c].name))
                .collect();
            toml += &format!(
                "[[routes]]\nprefix = \"{prefix}\"\ncarriers = [{}]\n",
                names.join(", ")
            );
        }
        if let Some(w) = self.country_limit {
            toml += &format!(
                "[[limits.country]]\ncountries = [\"*\"]\nmax = {}\nwindow_seconds = {}\n",
                w.max, w.window_seconds
            );
        }
        for (name, limit) in [
            ("recipient", self.recipient_limit),
            ("ip", self.ip_limit),
            ("ingress_recipient", self.ingress_recipient_limit),
        ] {
            if let Some(w) = limit {
                toml += &format!(
                    "[[limits.{name}]]\nmax = {}\nwindow_seconds = {}\n",
                    w.max, w.window_seconds
                );
            }
        }
        toml
    }
}

impl CarrierPlan {
    fn toml(&self, base_url: &str) -> String {
        let mut table = match self.kind {
            Kind::Twilio => crate::standins::twilio::twilio_toml(&self.name, base_url),
            Kind::MessageMedia => {
                crate::standins::messagemedia::messagemedia_toml(&self.name, base_url)
            }
        };
        // The stand-in tables carry their own timeouts: replace them.
        table = table
            .lines()
            .filter(|line| !line.contains("timeout_ms"))
            .map(|line| format!("{line}\n"))
            .collect();
        table += &format!(
            "timeout_ms = {}\nconnect_timeout_ms = 200\nbreaker_failures = {}\nbreaker_cooldown_seconds = {}\n",
            self.timeout_ms, self.breaker_failures, self.breaker_cooldown_seconds
        );
        if let Some(n) = self.max_in_flight {
            table += &format!("max_in_flight = {n}\n");
        }
        if let Some(n) = self.max_per_second {
            table += &format!("max_per_second = {n}\n");
        }
        table
    }

    /// Did this answer reach the carrier and still leave smsgate without a verdict (so a
    /// second send of the same message is allowed)?
    pub fn may_duplicate(&self, reply: &Reply) -> bool {
        matches!(reply, Reply::Slow(delay) if delay.as_millis() as u64 >= self.timeout_ms)
    }
}

fn carrier(rng: &mut StdRng, index: usize) -> CarrierPlan {
    let kind = if rng.random_bool(0.5) {
        Kind::Twilio
    } else {
        Kind::MessageMedia
    };
    let timeout_ms = rng.random_range(300..1500u64);
    let healthy = rng.random_range(40..95u32);
    let replies = (0..400).map(|_| reply(rng, healthy, timeout_ms)).collect();
    CarrierPlan {
        name: format!("c{index}"),
        kind,
        timeout_ms,
        max_in_flight: rng.random_bool(0.4).then(|| rng.random_range(1..=4)),
        max_per_second: rng.random_bool(0.3).then(|| rng.random_range(2..=30)),
        breaker_failures: rng.random_range(1..=5),
        breaker_cooldown_seconds: rng.random_range(1..=3),
        replies,
    }
}

/// One answer: mostly good, sometimes every kind of trouble a carrier gives.
fn reply(rng: &mut StdRng, healthy: u32, timeout_ms: u64) -> Reply {
    if rng.random_range(0..100) < healthy {
        return if rng.random_bool(0.7) {
            Reply::Created
        } else {
            Reply::Slow(Duration::from_millis(rng.random_range(20..timeout_ms / 2)))
        };
    }
    match rng.random_range(0..10) {
        0 => Reply::error(500, "20500"),
        1 => Reply::Error {
            status: 429,
            code: "20429",
            retry_after: Some(rng.random_range(0..3)),
        },
        // Twilio's "invalid To"; the MessageMedia stand-in answers its own 400 for it.
        2 => Reply::Error {
            status: 400,
            code: if rng.random_bool(0.5) {
                "21211"
            } else {
                "destination"
            },
            retry_after: None,
        },
        // Hangs past the timeout, then says yes: the one answer that may send twice.
        3 => Reply::Slow(Duration::from_millis(timeout_ms + 200)),
        4 => Reply::Garbage,
        5 => Reply::GarbageError(502),
        6 => Reply::ResetMidBody,
        7 => Reply::Trickle(Duration::from_millis(timeout_ms / 4 + 1)),
        8 => Reply::Raw(
            201,
            r#"{"sid": "SM\u0000x", "messages": [{"message_id": "\u0000"}]}"#,
        ),
        _ => Reply::Error {
            status: 503,
            code: "20503",
            retry_after: Some(u64::MAX),
        },
    }
}

fn routes(rng: &mut StdRng, carriers: usize) -> Vec<(String, Vec<usize>)> {
    let pick = |rng: &mut StdRng| {
        let mut list: Vec<usize> = (0..carriers).collect();
        // Fisher–Yates, then a non-empty prefix of the shuffle.
        for i in (1..list.len()).rev() {
            list.swap(i, rng.random_range(0..=i));
        }
        list.truncate(rng.random_range(1..=carriers));
        list
    };
    let mut routes = vec![(String::new(), pick(rng))];
    if rng.random_bool(0.5) {
        routes.push(("+44".to_string(), pick(rng)));
    }
    routes
}

fn requests(rng: &mut StdRng, seed: u64, duration: Duration) -> Vec<Request> {
    let count = rng.random_range(40..160usize);
    let numbers = rng.random_range(3..30u32);
    let keyed = rng.random_range(0.0..0.6);
    let repeats = rng.random_range(0.0..0.3);
    let mut requests: Vec<Request> = Vec::with_capacity(count);
    for i in 0..count {
        let at = Duration::from_millis(rng.random_range(0..duration.as_millis() as u64));
        let earlier_keyed: Vec<&Request> = requests.iter().filter(|r| r.key.is_some()).collect();
        if !earlier_keyed.is_empty() && rng.random_bool(repeats) {
            // The same request again (Auth0 retrying), later.
            let first = earlier_keyed[rng.random_range(0..earlier_keyed.len())];
            let mut again = first.clone();
            again.at = at.max(first.at + Duration::from_millis(1));
            if rng.random_bool(0.15) {
                // The key reused for another message: refused while the key lives.
                again.body = format!(
                    "Your code is {:06} (reuse {i})",
                    rng.random_range(0..1_000_000)
                );
            }
            requests.push(again);
            continue;
        }
        let local = PREFIXES[rng.random_range(0..PREFIXES.len())];
        requests.push(Request {
            at,
            recipient: format!("{local}{:03}", rng.random_range(0..numbers)),
            body: format!(
                "Your code is {:06} (request {i})",
                rng.random_range(0..1_000_000)
            ),
            key: rng.random_bool(keyed).then(|| format!("soak-{seed}-{i}")),
            ip: format!("203.0.113.{}", rng.random_range(1..4)),
        });
    }
    requests.sort_by_key(|r| r.at);
    requests
}

fn events(
    rng: &mut StdRng,
    carriers: &[CarrierPlan],
    requests: usize,
    duration: Duration,
) -> Vec<(Duration, Event)> {
    let mut events = Vec::new();
    let at = |rng: &mut StdRng| {
        Duration::from_millis(rng.random_range(500..duration.as_millis() as u64))
    };
    if rng.random_bool(0.4) {
        let pause = Duration::from_millis(rng.random_range(100..1000));
        events.push((at(rng), Event::Kill(rng.random_range(0..2), pause)));
    }
    if rng.random_bool(0.25) {
        let pause = Duration::from_millis(rng.random_range(200..1500));
        events.push((at(rng), Event::RestartDatabase(pause)));
    }
    if rng.random_bool(0.4) {
        let carrier = carriers[rng.random_range(0..carriers.len())].name.clone();
        let off = at(rng);
        events.push((off, Event::Disable(carrier.clone())));
        let on = off + Duration::from_millis(rng.random_range(500..4000));
        events.push((on, Event::Enable(carrier)));
    }
    for _ in 0..rng.random_range(0..4) {
        let target = rng.random_range(0..requests.max(1));
        let event = if rng.random_bool(0.5) {
            Event::Cancel(target)
        } else {
            Event::Retry(target)
        };
        events.push((at(rng), event));
    }
    events.sort_by_key(|(at, _)| *at);
    events
}
