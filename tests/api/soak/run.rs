//! Runs a plan: a private PostgreSQL (so it may be restarted), carrier stand-ins scripted by
//! the plan, one or two real `smsgate` processes, the requests at their times, and the
//! operator actions and faults at theirs. Records what every client and operator was told.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use smsgate::db::embedded::{Durability, EmbeddedPostgres};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::plan::{Event, Kind, Plan};
use crate::cli::{BINARY, free_port};
use crate::helpers::{ADMIN_TOKEN, token};
use crate::standins::StandIn;
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::standins::twilio::TwilioStandIn;

/// What a client was told.
#[derive(Debug, Clone)]
pub struct Answer {
    pub request: usize,
    /// `None`: no answer (the process was gone or the connection broke).
    pub status: Option<u16>,
    pub id: Option<String>,
}

/// An operator's `cancel` or `retry`, and whether the tool said it was done.
#[derive(Debug, Clone)]
pub struct Action {
    pub cancel: bool,
    pub id: String,
    pub done: bool,
    pub finished: SystemTime,
}

/// Everything the checks look at besides the database.
pub struct Record {
    pub answers: Vec<Answer>,
    pub actions: Vec<Action>,
    pub standins: Vec<StandIn>,
    pub kills: usize,
    pub database_restarts: usize,
    pub problems: Vec<String>,
    pub logs: Vec<PathBuf>,
    /// Workers per process: what one kill can have in flight.
    pub workers: usize,
}

struct Process {
    child: Child,
    port: u16,
    role: &'static str,
}

/// The database and the processes of one run.
pub struct Fleet {
    pub pool: PgPool,
    cluster: Option<EmbeddedPostgres>,
    home: PathBuf,
    url: String,
    config: PathBuf,
    dir: PathBuf,
    processes: Vec<Option<Process>>,
    /// Ingress ports clients may use right now.
    ports: Arc<Mutex<Vec<u16>>>,
    logs: Vec<PathBuf>,
    problems: Vec<String>,
}

pub async fn start(plan: &Plan, dir: &Path) -> (Fleet, Vec<StandIn>) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let home = dir.join("pg");
    let cluster_home = home.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        EmbeddedPostgres::start(&cluster_home, Durability::Durable).expect("cluster starts")
    })
    .await
    .expect("cluster");
    let url = cluster.url("postgres");
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect(&url)
        .await
        .expect("connect");
    smsgate::db::migrate(&pool.connect_options())
        .await
        .expect("migrate");
    super::check::install_audit(&pool).await;

    let mut standins = Vec::new();
    for carrier in &plan.carriers {
        let standin = match carrier.kind {
            Kind::Twilio => (*TwilioStandIn::start().await).clone(),
            Kind::MessageMedia => (*MessageMediaStandIn::start().await).clone(),
        };
        standin.script(carrier.replies.iter().cloned());
        standins.push(standin);
    }
    let base_urls: Vec<String> = standins.iter().map(StandIn::base_url).collect();
    let config = dir.join("smsgate.toml");
    std::fs::write(&config, plan.config_toml(&base_urls)).expect("config");
    let mut fleet = Fleet {
        pool,
        cluster: Some(cluster),
        home,
        url,
        config,
        dir: dir.to_path_buf(),
        processes: Vec::new(),
        ports: Arc::default(),
        logs: Vec::new(),
        problems: Vec::new(),
    };
    fleet.spawn("all").await;
    if let Some(role) = plan.second_process {
        fleet.spawn(role).await;
    }
    (fleet, standins)
}

impl Fleet {
    async fn spawn(&mut self, role: &'static str) {
        let index = self.processes.len();
        self.processes.push(None);
        self.start_process(index, role).await;
    }

    async fn start_process(&mut self, index: usize, role: &'static str) {
        let port = free_port();
        let text = std::fs::read_to_string(&self.config)
            .expect("config")
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
                1,
            );
        let config = self.dir.join(format!("smsgate-{port}.toml"));
        std::fs::write(&config, text).expect("config");
        let log = self.dir.join(format!("smsgate-{index}-{port}.log"));
        let child = Command::new(BINARY)
            .args(["serve", "--role", role, "--config"])
            .arg(&config)
            .env("DATABASE_URL", &self.url)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start smsgate");
        self.logs.push(log.clone());
        let mut child = child;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("smsgate exited at start ({status}):\n{text}");
            }
            let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "smsgate not ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if role == "all" {
            lock(&self.ports).push(port);
        }
        self.processes[index] = Some(Process { child, port, role });
    }

    /// Notes any process that died without being killed.
    fn watch(&mut self) {
        for (index, slot) in self.processes.iter_mut().enumerate() {
            if let Some(process) = slot
                && let Ok(Some(status)) = process.child.try_wait()
            {
                self.problems
                    .push(format!("process {index} died on its own: {status}"));
                lock(&self.ports).retain(|p| *p != process.port);
                *slot = None;
            }
        }
    }

    async fn kill(&mut self, index: usize, pause: Duration) -> bool {
        let index = index % self.processes.len();
        let Some(mut process) = self.processes[index].take() else {
            return false;
        };
        lock(&self.ports).retain(|p| *p != process.port);
        process.child.kill().expect("SIGKILL");
        process.child.wait().expect("reaped");
        tokio::time::sleep(pause).await;
        self.start_process(index, process.role).await;
        true
    }

    async fn restart_database(&mut self, pause: Duration) {
        if let Some(cluster) = self.cluster.take() {
            tokio::task::spawn_blocking(move || cluster.stop())
                .await
                .expect("stopped");
        }
        tokio::time::sleep(pause).await;
        let home = self.home.clone();
        self.cluster = Some(
            tokio::task::spawn_blocking(move || {
                EmbeddedPostgres::start(&home, Durability::Durable).expect("cluster restarts")
            })
            .await
            .expect("restarted"),
        );
    }

    fn any_port(&self) -> Option<u16> {
        self.processes.iter().flatten().map(|p| p.port).next()
    }

    /// SIGTERM to every process; each must exit 0.
    pub async fn stop(&mut self) {
        for (index, slot) in self.processes.iter_mut().enumerate() {
            if let Some(process) = slot.take() {
                let status = crate::cli::terminate(process.child).await;
                if !status.success() {
                    self.problems
                        .push(format!("process {index} exited {status} on SIGTERM"));
                }
            }
        }
    }

    pub fn finish(mut self) -> (Vec<String>, Vec<PathBuf>) {
        if let Some(cluster) = self.cluster.take() {
            cluster.stop();
        }
        (self.problems, self.logs)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends every request at its time while the events happen at theirs.
pub async fn drive(plan: &Plan, fleet: &mut Fleet) -> (Vec<Answer>, Vec<Action>, usize, usize) {
    let start = Instant::now();
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let client = crate::helpers::http_client(15);
    let mut clients = tokio::task::JoinSet::new();
    for (index, request) in plan.requests.iter().cloned().enumerate() {
        let (client, answers, ports) = (client.clone(), answers.clone(), fleet.ports.clone());
        clients.spawn(async move {
            tokio::time::sleep_until((start + request.at).into()).await;
            let port = {
                let ports = lock(&ports);
                (!ports.is_empty()).then(|| ports[index % ports.len()])
            };
            let (status, id) = match port {
                Some(port) => post(&client, port, &request).await,
                None => (None, None),
            };
            lock(&answers).push(Answer {
                request: index,
                status,
                id,
            });
        });
    }

    let (mut actions, mut kills, mut restarts) = (Vec::new(), 0, 0);
    for (at, event) in &plan.events {
        while start.elapsed() < *at {
            fleet.watch();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match event {
            Event::Kill(index, pause) => kills += usize::from(fleet.kill(*index, *pause).await),
            Event::RestartDatabase(pause) => {
                fleet.restart_database(*pause).await;
                restarts += 1;
            }
            Event::Disable(name) | Event::Enable(name) => {
                let action = if matches!(event, Event::Disable(_)) {
                    "disable"
                } else {
                    "enable"
                };
                switch(&client, fleet, name, action).await;
            }
            Event::Cancel(n) | Event::Retry(n) => {
                let id = lock(&answers)
                    .iter()
                    .find(|a| a.request == *n)
                    .and_then(|a| a.id.clone());
                if let Some(id) = id {
                    actions.push(operate(fleet, matches!(event, Event::Cancel(_)), id).await);
                }
            }
        }
    }
    while !clients.is_empty() {
        fleet.watch();
        tokio::select! {
            _ = clients.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let answers = lock(&answers).clone();
    (answers, actions, kills, restarts)
}

async fn post(
    client: &reqwest::Client,
    port: u16,
    request: &super::plan::Request,
) -> (Option<u16>, Option<String>) {
    let body = json!({
        "recipient": request.recipient,
        "body": request.body,
        "req": {"ip": request.ip, "user-agent": "soak"},
    });
    let mut post = client
        .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
        .bearer_auth(token())
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = &request.key {
        post = post.header("idempotency-key", key);
    }
    let Ok(response) = post.send().await else {
        return (None, None);
    };
    let status = response.status().as_u16();
    let Ok(body) = response.json::<serde_json::Value>().await else {
        return (Some(status), None);
    };
    (Some(status), body["id"].as_str().map(str::to_string))
}

/// Turns a carrier off or on through the admin API, retrying while the database is away.
async fn switch(client: &reqwest::Client, fleet: &Fleet, carrier: &str, action: &str) {
    for _ in 0..50 {
        let Some(port) = fleet.any_port() else { return };
        let done = client
            .post(format!(
                "http://127.0.0.1:{port}/v1/carriers/{carrier}/{action}"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `smsgate messages cancel|retry ID`, the operator's tool, on the same database.
async fn operate(fleet: &Fleet, cancel: bool, id: String) -> Action {
    let (config, url) = (fleet.config.clone(), fleet.url.clone());
    let verb = if cancel { "cancel" } else { "retry" };
    let target = id.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BINARY)
            .args(["messages", verb, &target, "--config"])
            .arg(&config)
            .env("DATABASE_URL", &url)
            .output()
    })
    .await
    .expect("join")
    .expect("run smsgate messages");
    Action {
        cancel,
        id,
        done: output.status.success(),
        finished: SystemTime::now(),
    }
}

/// Waits until nothing is queued, at most `limit`.
pub async fn drain(fleet: &mut Fleet, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        fleet.watch();
        let depth = smsgate::db::queue::depth(&smsgate::db::Db::direct(fleet.pool.clone()))
            .await
            .unwrap_or(1);
        if depth == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
