//! `smsgate-bench`: measures smsgate against PostgreSQL's own limits on the same cluster in one
//! run, and reports every figure as a ratio to a baseline measured before and after it (the
//! machine's commit latency drifts several-fold from minute to minute). See BENCHMARKS.md.

mod load;
mod pg;
mod report;
mod standin;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use smsgate::db::embedded::{Durability, EmbeddedPostgres, find_server_binaries};
use smsgate::{App, Config, Role};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use load::{Target, closed_loop, open_loop, quantile};
use pg::PgBench;
use report::{Figures, Report};

const SECRET: &str = "smsgate-bench-secret-0123456789abcdef";
const DATABASE: &str = "bench";

#[derive(Parser)]
#[command(about = "Benchmark smsgate against pgbench baselines on the same PostgreSQL cluster")]
struct Args {
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent HTTP clients for the ingress phase (and pgbench clients for its baseline).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offered rate (messages per second) for the end-to-end latency phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Messages queued before the dispatch phase.
    #[arg(long, default_value_t = 100_000)]
    backlog: u64,
    /// pgbench clients for the claim-and-complete baseline.
    #[arg(long, default_value_t = 8)]
    dispatch_clients: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench-results.json")]
    out: PathBuf,
    /// Internal: run smsgate itself with this configuration (the benchmark's child process).
    #[arg(long, hide = true)]
    serve: Option<PathBuf>,
    #[arg(long, hide = true, default_value = "all")]
    role: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match &args.serve {
        Some(config) => runtime.block_on(serve(config, &args.role)),
        None => runtime.block_on(run(args)),
    }
}

/// The child process: smsgate in the given role until SIGTERM.
async fn serve(config: &Path, role: &str) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    smsgate::telemetry::init(&config.log);
    let role = match role {
        "ingress" => Role::Ingress,
        "worker" => Role::Worker,
        _ => Role::All,
    };
    let app = App::build_with_role(&config, role).await?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
        }
        token.cancel();
    });
    app.run(shutdown).await
}

/// A child smsgate that is stopped when dropped.
struct Smsgate {
    child: Child,
}

impl Smsgate {
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Smsgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Bench {
    args: Args,
    dir: PathBuf,
    config_path: PathBuf,
    port: u16,
    pgbench: PgBench,
    pool: sqlx::PgPool,
}

impl Bench {
    async fn spawn(&self, role: &str) -> anyhow::Result<Smsgate> {
        let log = std::fs::File::create(self.dir.join(format!("smsgate-{role}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--serve")
            .arg(&self.config_path)
            .args(["--role", role])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start smsgate")?;
        let smsgate = Smsgate { child };
        let client = reqwest::Client::builder().no_proxy().build()?;
        let started = Instant::now();
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{}/readyz", self.port))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(smsgate);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("smsgate did not become ready; see {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pgbench baselines and the commit-latency probe.
    fn baselines(&self) -> anyhow::Result<report::Baselines> {
        let seconds = self.args.seconds;
        let probe = self.pgbench.run("probe.sql", 1, 3)?;
        let insert = self
            .pgbench
            .run("insert.sql", self.args.connections, seconds)?;
        self.psql(&PgBench::fill_sql(20_000 * seconds.max(3)))?;
        let cycle = self
            .pgbench
            .run("cycle.sql", self.args.dispatch_clients, seconds)?;
        Ok(report::Baselines {
            commit_ms: probe.latency_ms,
            insert_tps: insert.tps,
            cycle_tps: cycle.tps,
        })
    }

    /// Runs each statement in its own transaction (VACUUM cannot run inside one).
    fn psql(&self, statements: &[String]) -> anyhow::Result<()> {
        let psql = self.pgbench.binary.with_file_name("psql");
        let mut command = Command::new(psql);
        command.arg("-h").arg(&self.pgbench.socket_dir).args([
            "-p",
            &self.pgbench.port.to_string(),
            "-U",
            "postgres",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            DATABASE,
        ]);
        for statement in statements {
            command.args(["-c", statement]);
        }
        let output = command.output().context("cannot run psql")?;
        if !output.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    fn target(&self) -> anyhow::Result<Arc<Target>> {
        let signer = smsgate::config::SignerConfig {
            secret: smsgate::secret::Secret::new(SECRET),
            secret_base64_encoded: false,
            audience: "urn:MySmsGateway".into(),
            subject: Some("urn:Auth0".into()),
        };
        let url = format!("http://127.0.0.1:{}/v1/auth0/sms", self.port);
        Ok(Arc::new(Target::new(url, signer, self.args.connections)?))
    }

    async fn empty_queue(&self) -> anyhow::Result<()> {
        sqlx::raw_sql("TRUNCATE messages, message_queue, message_attempts, recipient_sends")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin = find_server_binaries()?;
    let dir = std::env::temp_dir().join(format!("smsgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    eprintln!("bench: starting PostgreSQL (fsync on) in {}", dir.display());
    let cluster = EmbeddedPostgres::start(&dir.join("pg"), Durability::Durable)?;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(cluster.connect_options("postgres"))
        .await?;
    smsgate::db::ensure_database(&admin, DATABASE).await?;
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(cluster.connect_options(DATABASE))
        .await?;
    smsgate::db::migrate(&pool).await?;
    sqlx::raw_sql(pg::SCHEMA).execute(&pool).await?;

    let (carrier, received) = standin::start().await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config_path = dir.join("smsgate.toml");
    std::fs::write(
        &config_path,
        smsgate_config(port, &cluster.url(DATABASE), carrier),
    )?;
    let (socket_dir, pg_port) = cluster.socket();
    let pgbench = PgBench::new(&bin, socket_dir, pg_port, DATABASE, &dir.join("scripts"))?;
    let bench = Bench {
        args,
        dir: dir.clone(),
        config_path,
        port,
        pgbench,
        pool,
    };
    let seconds = Duration::from_secs(bench.args.seconds);

    eprintln!("bench: baselines (before)");
    let before = bench.baselines()?;
    let mut figures = Figures::default();

    eprintln!("bench: ingress, {} connections", bench.args.connections);
    bench.empty_queue().await?;
    let ingress = bench.spawn("ingress").await?;
    let target = bench.target()?;
    closed_loop(
        target.clone(),
        bench.args.connections,
        Duration::from_secs(1),
    )
    .await;
    let mut saturated = closed_loop(target.clone(), bench.args.connections, seconds).await;
    figures.ingress_per_second = saturated.accepted as f64 / saturated.seconds;
    figures.ingress_failed = saturated.failed;
    figures.ingress_p50_ms = quantile(&mut saturated.latencies_us, 0.5) / 1000.0;
    figures.ingress_p99_ms = quantile(&mut saturated.latencies_us, 0.99) / 1000.0;
    figures.ingress_p999_ms = quantile(&mut saturated.latencies_us, 0.999) / 1000.0;
    let half_rate = (figures.ingress_per_second / 2.0).max(1.0) as u64;
    eprintln!("bench: ingress at half saturation, {half_rate}/s");
    let mut half = open_loop(target.clone(), half_rate, seconds).await;
    figures.ingress_half_rate = half_rate;
    figures.ingress_half_p99_ms = quantile(&mut half.latencies_us, 0.99) / 1000.0;
    figures.peak_rss_mib = figures.peak_rss_mib.max(ingress.peak_rss_mib());
    ingress.stop();

    eprintln!(
        "bench: dispatch of a {}-message backlog",
        bench.args.backlog
    );
    bench.empty_queue().await?;
    bench.psql(&backlog_sql(bench.args.backlog))?;
    let start_count = received.count.load(Ordering::Relaxed);
    let worker = bench.spawn("worker").await?;
    let drained = drain_rate(
        &received.count,
        start_count,
        bench.args.backlog,
        seconds * 6,
    )
    .await;
    figures.dispatch_per_second = drained;
    figures.peak_rss_mib = figures.peak_rss_mib.max(worker.peak_rss_mib());
    worker.stop();

    eprintln!("bench: end to end at {}/s", bench.args.rate);
    bench.empty_queue().await?;
    let all = bench.spawn("all").await?;
    received.track.store(true, Ordering::Relaxed);
    let offered = open_loop(target.clone(), bench.args.rate, seconds).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    received.track.store(false, Ordering::Relaxed);
    let (mut commit_to_carrier, missing) = {
        let arrivals = received
            .arrivals
            .lock()
            .map_err(|_| anyhow::anyhow!("arrivals lock"))?;
        let mut latencies = Vec::new();
        let mut missing = 0;
        for (recipient, answered) in &offered.accepted_at {
            match arrivals.get(recipient) {
                Some(arrived) => {
                    latencies.push(arrived.saturating_duration_since(*answered).as_micros() as u64)
                }
                None => missing += 1,
            }
        }
        (latencies, missing)
    };
    figures.e2e_rate = bench.args.rate;
    figures.e2e_accepted = offered.accepted;
    figures.e2e_missing = missing;
    figures.e2e_p50_ms = quantile(&mut commit_to_carrier, 0.5) / 1000.0;
    figures.e2e_p99_ms = quantile(&mut commit_to_carrier, 0.99) / 1000.0;
    figures.peak_rss_mib = figures.peak_rss_mib.max(all.peak_rss_mib());
    all.stop();

    eprintln!("bench: baselines (after)");
    let after = bench.baselines()?;

    let report = Report::new(&bench.args, before, after, figures);
    println!("{}", report.table());
    if let Some(parent) = bench.args.out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(
        &bench.args.out,
        serde_json::to_string_pretty(&report.json())?,
    )?;
    eprintln!("bench: results written to {}", bench.args.out.display());
    bench.pool.close().await;
    cluster.stop();
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// Messages per second between 10 % and 90 % of the backlog reaching the carrier (start-up
/// and the tail are left out).
async fn drain_rate(
    count: &std::sync::atomic::AtomicU64,
    start: u64,
    backlog: u64,
    limit: Duration,
) -> f64 {
    let started = Instant::now();
    let (low, high) = (start + backlog / 10, start + backlog * 9 / 10);
    let mut at_low = None;
    loop {
        let now = count.load(Ordering::Relaxed);
        if at_low.is_none() && now >= low {
            at_low = Some((Instant::now(), now));
        }
        if now >= high
            && let Some((t, n)) = at_low
        {
            return (now - n) as f64 / t.elapsed().as_secs_f64().max(1e-3);
        }
        if started.elapsed() > limit {
            return (now - start) as f64 / started.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `rows` due messages with distinct numbers, straight into the queue.
fn backlog_sql(rows: u64) -> Vec<String> {
    vec![
        format!(
            "WITH m AS (INSERT INTO messages (id, recipient, body, expires_at) \
             SELECT gen_random_uuid(), '+1' || (3000000000 + g)::text, 'Your verification code is: 123456', now() + interval '1 hour' \
             FROM generate_series(1, {rows}) g RETURNING id, created_at, expires_at) \
             INSERT INTO message_queue (message_id, run_at, expires_at, created_at) SELECT id, created_at, expires_at, created_at FROM m"
        ),
        "VACUUM ANALYZE message_queue".into(),
        "VACUUM ANALYZE messages".into(),
        "CHECKPOINT".into(),
    ]
}

fn smsgate_config(port: u16, database_url: &str, carrier: std::net::SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
[metrics]
listen = "127.0.0.1:0"
[database]
url = "{database_url}"
max_connections = 16
[auth0.bench]
secret = "{SECRET}"
audience = "urn:MySmsGateway"
subject = "urn:Auth0"
[dispatch]
workers = 128
claim_batch = 64
claimers = 2
message_ttl_seconds = 3600
[log]
level = "warn"
[carriers.twilio]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
auth_token = "bench"
from = "+15005550006"
base_url = "http://{carrier}"
[[routes]]
prefix = ""
carriers = ["twilio"]
"#
    )
}
