//! The baselines: what PostgreSQL itself does on the same cluster, measured with pgbench.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// A message-sized row (240 bytes with a 160-character body), the row the queue design was
/// measured with (docs/design.md, "Measured figures").
const BODY: &str = "Your verification code is 123456. It expires in 5 minutes. Do not share this code with anyone. Msg&data rates may apply. Reply STOP to opt out. Ref-ABCDEFGHIJxx";

pub const SCHEMA: &str = "
DROP TABLE IF EXISTS bench_msg, bench_probe;
CREATE TABLE bench_msg (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, recipient text NOT NULL,
  body text NOT NULL, status smallint NOT NULL DEFAULT 0, attempts smallint NOT NULL DEFAULT 0,
  run_at timestamptz NOT NULL DEFAULT now(), expires_at timestamptz, locked_until timestamptz,
  created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX bench_msg_pending ON bench_msg (run_at, id) WHERE status = 0;
CREATE TABLE bench_probe (n int);";

pub struct PgBench {
    pub binary: PathBuf,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub database: String,
    pub scripts: PathBuf,
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PgBenchResult {
    pub tps: f64,
    pub latency_ms: f64,
}

impl PgBench {
    pub fn new(
        bin_dir: &Path,
        socket_dir: &Path,
        port: u16,
        database: &str,
        scripts: &Path,
    ) -> anyhow::Result<Self> {
        let binary = bin_dir.join("pgbench");
        if !binary.is_file() {
            bail!("pgbench not found in {}", bin_dir.display());
        }
        std::fs::create_dir_all(scripts)?;
        let write = |name: &str, text: String| std::fs::write(scripts.join(name), text);
        write("probe.sql", "INSERT INTO bench_probe VALUES (1);\n".into())?;
        write(
            "insert.sql",
            format!(
                "\\set r random(1, 9999999)\nINSERT INTO bench_msg (recipient, body, expires_at) VALUES ('+1555' || lpad(:r::text, 7, '0'), '{BODY}', now() + interval '5 minutes');\n"
            ),
        )?;
        // One-row claim under a lease, then completion: the cycle a naive dispatcher makes.
        write(
            "cycle.sql",
            "WITH c AS (SELECT id FROM bench_msg WHERE status = 0 AND run_at <= now() ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED), \
             u AS (UPDATE bench_msg m SET status = 1, attempts = m.attempts + 1, locked_until = now() + interval '30 seconds' FROM c WHERE m.id = c.id RETURNING m.id) \
             SELECT coalesce(max(id), 0) AS id FROM u \\gset\nDELETE FROM bench_msg WHERE id = :id;\n"
                .into(),
        )?;
        Ok(Self {
            binary,
            socket_dir: socket_dir.to_path_buf(),
            port,
            database: database.to_string(),
            scripts: scripts.to_path_buf(),
        })
    }

    /// pgbench with the connection and protocol options every run shares.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("-h").arg(&self.socket_dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-n",
            "-M",
            "prepared",
        ]);
        command
    }

    /// Starts the commit probe in the background: one client committing one-row inserts at
    /// `rate` per second for `seconds`, logging every transaction, so that PostgreSQL's own
    /// latency spikes can be lined up with smsgate's slow requests measured at the same time.
    pub fn start_probe(&self, rate: u32, seconds: u64, log_dir: &Path) -> anyhow::Result<Probe> {
        std::fs::create_dir_all(log_dir)?;
        let child = self
            .command()
            .current_dir(log_dir)
            .args([
                "-c",
                "1",
                "-R",
                &rate.to_string(),
                "-T",
                &seconds.to_string(),
            ])
            .args(["-l", "--log-prefix", "probe", "-f"])
            .arg(self.scripts.join("probe.sql"))
            .arg(&self.database)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run pgbench")?;
        Ok(Probe {
            child,
            log_dir: log_dir.to_path_buf(),
        })
    }

    /// Runs `script` with `clients` for `seconds`.
    pub fn run(&self, script: &str, clients: usize, seconds: u64) -> anyhow::Result<PgBenchResult> {
        let output = self
            .command()
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                "-f",
            ])
            .arg(self.scripts.join(script))
            .arg(&self.database)
            .output()
            .context("cannot run pgbench")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "pgbench {script} failed: {}{}",
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let number_after = |label: &str| {
            stdout.lines().find_map(|line| {
                let rest = line.trim().strip_prefix(label)?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
        };
        let tps = number_after("tps =").context("pgbench printed no tps")?;
        let latency_ms = number_after("latency average =").unwrap_or(0.0);
        Ok(PgBenchResult { tps, latency_ms })
    }

    /// Rows for the claim cycle to consume: enough for `seconds` at a generous rate.
    pub fn fill_sql(rows: u64) -> Vec<String> {
        vec![
            "TRUNCATE bench_msg".into(),
            format!(
                "INSERT INTO bench_msg (recipient, body, expires_at, run_at) \
                 SELECT '+1555' || lpad((g % 9999999)::text, 7, '0'), '{BODY}', now() + interval '1 hour', \
                 now() - interval '1 hour' + g * interval '1 microsecond' FROM generate_series(1, {rows}) g"
            ),
            "VACUUM ANALYZE bench_msg".into(),
            "CHECKPOINT".into(),
        ]
    }
}

/// A running commit probe (see [`PgBench::start_probe`]).
pub struct Probe {
    child: Child,
    log_dir: PathBuf,
}

/// One probe transaction: when it started and ended (wall clock) and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct ProbeCommit {
    pub started: SystemTime,
    pub ended: SystemTime,
}

impl ProbeCommit {
    pub fn latency(&self) -> Duration {
        self.ended.duration_since(self.started).unwrap_or_default()
    }
}

impl Probe {
    /// Waits for the probe to end and reads its transaction log.
    pub fn finish(mut self) -> anyhow::Result<Vec<ProbeCommit>> {
        self.child.wait()?;
        let mut commits = Vec::new();
        for entry in std::fs::read_dir(&self.log_dir)? {
            let path = entry?.path();
            let is_log = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("probe."));
            if is_log {
                commits.extend(parse_probe_log(&std::fs::read_to_string(&path)?));
            }
        }
        Ok(commits)
    }
}

/// pgbench's per-transaction log: `client transaction latency_us script epoch_s epoch_us
/// [lag_us]`, where the epoch is when the transaction ended.
fn parse_probe_log(text: &str) -> impl Iterator<Item = ProbeCommit> + '_ {
    text.lines().filter_map(|line| {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let (latency_us, seconds, micros) = (*fields.get(2)?, *fields.get(4)?, *fields.get(5)?);
        let ended = UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_micros(micros);
        let started = ended.checked_sub(Duration::from_micros(latency_us))?;
        Some(ProbeCommit { started, ended })
    })
}
