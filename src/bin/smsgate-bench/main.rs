//! `smsgate-bench`: measures smsgate against PostgreSQL's own limits on the same cluster in one
//! run, and reports every figure as a ratio to a baseline measured before and after it (the
//! machine's commit latency drifts several-fold from minute to minute). See BENCHMARKS.md.

mod cpu;
mod day;
mod fixture;
mod growth;
mod load;
mod pg;
mod profile;
mod report;
mod standard;
mod standin;
mod tail;
mod windows;

use std::path::{Path, PathBuf};

use clap::Parser;
use smsgate::db::embedded::{Durability, EmbeddedPostgres, find_server_binaries};
use smsgate::{App, Config, Role};
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

use fixture::Bench;
use pg::PgBench;
use profile::ProfileChoice;
use report::Report;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Standard,
    Backlog,
    Snapshot,
    Scale,
    Windows,
    Day,
}

pub const SECRET: &str = "smsgate-bench-secret-0123456789abcdef";
pub const DATABASE: &str = "bench";

#[derive(Parser)]
#[command(about = "Benchmark smsgate against pgbench baselines on the same PostgreSQL cluster")]
pub struct Args {
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent HTTP clients for the ingress phase (and pgbench clients for its baseline).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Offered rate (messages per second) for the end-to-end latency phase.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Messages queued before the dispatch phase (`day`: messages in the day removed,
    /// 1,000,000 unless given).
    #[arg(long, default_value_t = 100_000)]
    pub backlog: u64,
    /// pgbench clients for the claim-and-complete baseline.
    #[arg(long, default_value_t = 8)]
    pub dispatch_clients: usize,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench-results.json")]
    pub out: PathBuf,
    /// `standard` (the table), or one of the growth measurements: `backlog` (drain over up to
    /// 5 minutes), `snapshot` (a 60-second REPEATABLE READ held elsewhere), `scale` (1 vs 4
    /// worker processes), `windows` (the production ingress with a per-number cap of 10 and
    /// empty keys, then a cap of 1,000,000 and busy keys holding a million events), `day` (a
    /// day of final messages removed by retention).
    #[arg(long, value_enum, default_value_t = Scenario::Standard)]
    pub scenario: Scenario,
    /// The gateway's configuration: `none` (no defence configured), `production` (every
    /// defence of config/production.example.toml, with caps no run reaches), or `both`, phase
    /// by phase in one run against the same baselines. Growth scenarios run `none` unless
    /// `production` is asked for.
    #[arg(long, value_enum, default_value_t = ProfileChoice::Both)]
    pub profile: ProfileChoice,
    /// Internal: run smsgate itself with this configuration (the benchmark's child process).
    #[arg(long, hide = true)]
    pub serve: Option<PathBuf>,
    #[arg(long, hide = true, default_value = "all")]
    pub role: String,
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
    let _tracing = smsgate::telemetry::init(&config.log, &config.telemetry);
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
    smsgate::db::ensure_database(&smsgate::db::Db::direct(admin.clone()), DATABASE).await?;
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(cluster.connect_options(DATABASE))
        .await?;
    smsgate::db::migrate(&cluster.connect_options(DATABASE)).await?;
    sqlx::raw_sql(pg::SCHEMA).execute(&pool).await?;

    let (carrier, received) = standin::start().await?;
    let (socket_dir, pg_port) = cluster.socket();
    let pgbench = PgBench::new(&bin, socket_dir, pg_port, DATABASE, &dir.join("scripts"))?;
    let bench = Bench {
        args,
        dir: dir.clone(),
        database_url: cluster.url(DATABASE),
        carrier,
        pgbench,
        pool,
    };
    let results = match bench.args.scenario {
        Scenario::Standard => {
            let (before, after, profiles) = standard::run(&bench, &received).await?;
            let report = Report::new(&bench.args, before, after, profiles);
            println!("{}", report.table());
            report.json()
        }
        Scenario::Backlog => growth::backlog(&bench, &received).await?,
        Scenario::Snapshot => growth::snapshot(&bench, &received).await?,
        Scenario::Scale => growth::scale(&bench, &received).await?,
        Scenario::Windows => windows::windows(&bench).await?,
        Scenario::Day => day::run(&bench).await?,
    };
    if bench.args.scenario != Scenario::Standard {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    if let Some(parent) = bench.args.out.parent() {
        std::fs::create_dir_all(parent).ok();
    }
    std::fs::write(&bench.args.out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("bench: results written to {}", bench.args.out.display());
    bench.pool.close().await;
    cluster.stop();
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
