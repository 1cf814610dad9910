//! The benchmark's fixture: the cluster, the smsgate child processes and the pgbench baselines.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cpu::Meter;
use crate::load::Target;
use crate::pg::PgBench;
use crate::profile::{Profile, recipient_sql};
use crate::tail::PROBE_RATE;
use crate::{Args, DATABASE, SECRET, report};

/// A child smsgate that is stopped when dropped.
pub struct Smsgate {
    child: Child,
    /// Where its ingress listens.
    pub port: u16,
}

impl Smsgate {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }

    pub fn stop(mut self) {
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

pub struct Bench {
    pub args: Args,
    pub dir: PathBuf,
    pub database_url: String,
    /// The carrier stand-in every smsgate sends to.
    pub carrier: std::net::SocketAddr,
    pub pgbench: PgBench,
    pub pool: sqlx::PgPool,
}

impl Bench {
    /// Starts one smsgate process in `role`, configured as `profile`, on a port of its own and
    /// waits until it is ready.
    pub async fn spawn(&self, role: &str, profile: Profile) -> anyhow::Result<Smsgate> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config_path = self.dir.join(format!("smsgate-{port}.toml"));
        std::fs::write(
            &config_path,
            smsgate_config(port, &self.database_url, self.carrier, profile),
        )?;
        let log = std::fs::File::create(self.dir.join(format!("smsgate-{role}-{port}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("--serve")
            .arg(&config_path)
            .args(["--role", role])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start smsgate")?;
        let smsgate = Smsgate { child, port };
        let client = reqwest::Client::builder().no_proxy().build()?;
        let started = Instant::now();
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
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

    /// Counts the CPU of `smsgate` and of the cluster's processes.
    pub fn meter(&self, smsgate: &[&Smsgate]) -> Meter {
        // The first line of postmaster.pid is the postmaster's process id.
        let postmaster = std::fs::read_to_string(self.dir.join("pg/pgdata/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse().ok());
        Meter {
            smsgate: smsgate.iter().map(|s| s.pid()).collect(),
            postmaster,
        }
    }

    /// The one profile a growth scenario runs: `none` unless `--profile production`.
    pub fn single_profile(&self) -> Profile {
        self.args.profile.profiles()[0]
    }

    /// A commit probe for the next `seconds`, logging into `name` under the bench directory.
    pub fn start_probe(&self, name: &str, seconds: u64) -> anyhow::Result<crate::pg::Probe> {
        self.pgbench
            .start_probe(PROBE_RATE, seconds, &self.dir.join(name))
    }

    /// The pgbench baselines and the commit-latency probe.
    pub fn baselines(&self) -> anyhow::Result<report::Baselines> {
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
    pub fn psql(&self, statements: &[String]) -> anyhow::Result<()> {
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

    /// The load generator aimed at the ingress listening on `port`.
    pub fn target(&self, port: u16) -> anyhow::Result<Arc<Target>> {
        let signer = smsgate::config::SignerConfig {
            secret: smsgate::secret::Secret::new(SECRET),
            secret_base64_encoded: false,
            audience: "urn:MySmsGateway".into(),
            subject: Some("urn:Auth0".into()),
            public_secret: false,
            issuers: smsgate::config::SignerConfig::default_issuers(),
        };
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Ok(Arc::new(Target::new(
            address,
            "/v1/auth0/sms".into(),
            signer,
        )))
    }

    /// Empties the queue and every limit's and ceiling's state, so each phase starts from
    /// nothing whatever the one before it sent.
    pub async fn empty_queue(&self) -> anyhow::Result<()> {
        sqlx::raw_sql(
            "TRUNCATE messages, message_queue, message_attempts, delivery_receipts, recipient_sends, \
             idempotency_keys, ingress_hits, spend_days",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// `rows` due messages with distinct mobile numbers, straight into the queue.
pub fn backlog_sql(rows: u64) -> Vec<String> {
    let recipient = recipient_sql("g");
    // UUIDv7 ids of now, as smsgate makes them: a random (v4) id would land in the default
    // partition instead of today's.
    let id = "(lpad(to_hex((extract(epoch FROM now()) * 1000)::bigint), 12, '0') || '7' \
              || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid";
    vec![
        format!(
            "WITH m AS (INSERT INTO messages (id, recipient, body, expires_at) \
             SELECT {id}, {recipient}, 'Your verification code is: 123456', now() + interval '1 hour' \
             FROM generate_series(1, {rows}) g RETURNING id, created_at, expires_at) \
             INSERT INTO message_queue (message_id, run_at, expires_at, created_at) SELECT id, created_at, expires_at, created_at FROM m"
        ),
        "VACUUM ANALYZE message_queue".into(),
        "VACUUM ANALYZE messages".into(),
        "CHECKPOINT".into(),
    ]
}

pub fn smsgate_config(
    port: u16,
    database_url: &str,
    carrier: std::net::SocketAddr,
    profile: Profile,
) -> String {
    let server_keys = profile.server_keys();
    let sections = profile.sections();
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
{server_keys}[metrics]
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
[carriers.standin]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
auth_token = "bench"
from = "+15005550006"
base_url = "http://{carrier}"
[[routes]]
prefix = ""
carriers = ["standin"]
{sections}"#
    )
}
