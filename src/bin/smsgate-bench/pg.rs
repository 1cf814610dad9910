//! The baselines: what PostgreSQL itself does on the same cluster, measured with pgbench.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// A message-sized row (240 bytes with a 160-character body), as in the shared research's
/// measurements (pgqueue.md §3).
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

    /// Runs `script` with `clients` for `seconds`.
    pub fn run(&self, script: &str, clients: usize, seconds: u64) -> anyhow::Result<PgBenchResult> {
        let output = Command::new(&self.binary)
            .arg("-h")
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-n",
                "-M",
                "prepared",
            ])
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
