//! The `smsgate` command line: parse, load the configuration, hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use smsgate::{App, Config, Database, Role, audit, auth0, db, telemetry};

/// `println!` for the commands' output, except that a reader that went away (`| head -1`)
/// ends the command quietly (exit 0), and another write error ends it with exit 1, instead
/// of a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(err) = writeln!(std::io::stdout(), $($arg)*) {
            if err.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("{err}");
            std::process::exit(1);
        }
    }};
}

#[derive(Parser)]
#[command(
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SMSGATE_COMMIT"), ")"),
    about = "Auth0-compatible SMS gateway backed by PostgreSQL"
)]
struct Cli {
    /// Configuration file; `SMSGATE__SECTION__KEY` variables and DATABASE_URL override it.
    #[arg(
        long,
        global = true,
        env = "SMSGATE_CONFIG",
        default_value = "config/development.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve {
        /// Which parts to run: ingress, worker or all.
        #[arg(long, value_enum, default_value_t = RoleArg::All)]
        role: RoleArg,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Exit 0 when this host's smsgate answers /readyz (container health checks).
    Healthcheck,
    /// Inspect and act on messages, straight in the database.
    Messages {
        #[command(subcommand)]
        action: MessagesAction,
    },
    /// What each carrier delivered per destination country, straight from the database.
    Carriers {
        #[command(subcommand)]
        action: CarriersAction,
    },
    /// Print an HS256 token signed the way Auth0 signs its gateway calls.
    Token {
        /// The `[auth0.<name>]` signer to sign for; optional when only one is configured.
        #[arg(long)]
        signer: Option<String>,
        /// Lifetime of the token.
        #[arg(long, default_value_t = 600)]
        ttl_seconds: u64,
    },
    /// Print the HTTP API's OpenAPI 3.1 description (docs/openapi.json); needs no configuration.
    Openapi,
    /// Print a completion script for a shell (`smsgate completions bash > /etc/bash_completion.d/smsgate`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page, in roff, generated from this command line (`smsgate man | man -l -`).
    Man,
}

/// How a command prints what it read.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// Aligned columns, for people.
    Table,
    /// JSON, as the HTTP API answers, for scripts.
    Json,
}

#[derive(Subcommand)]
enum CarriersAction {
    /// Sends, receipts and delivery ratio per carrier and country over the measurement window
    /// (dispatch.route_stats_window_seconds), from every process.
    Stats {
        /// `json` prints what GET /v1/carriers/stats answers.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The same as `--output json` (the older spelling).
        #[arg(long, hide = true, conflicts_with = "output")]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MessagesAction {
    /// The newest messages, one per line (numbers masked unless --reveal).
    List {
        /// Only this status (queued, sent, delivered, failed, …).
        #[arg(long)]
        status: Option<String>,
        /// Only messages accepted at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// How many (1 to 1000, as the API allows).
        #[arg(
            long,
            default_value_t = 50,
            value_parser = clap::value_parser!(i64).range(db::operator::LIST_LIMITS)
        )]
        limit: i64,
        /// Show whole phone numbers (masked but for their last 3 digits otherwise).
        #[arg(long)]
        reveal: bool,
        /// `json` prints what GET /v1/messages answers.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One message with every carrier call (JSON unless `--output table`).
    Show {
        id: String,
        /// `json` prints what GET /v1/messages/{id} answers.
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Make a waiting message due now (skip its backoff or limit wait).
    Retry { id: String },
    /// End a waiting message without sending it (failed, "canceled by an operator").
    Cancel { id: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Ingress,
    Worker,
    All,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Ingress => Role::Ingress,
            RoleArg::Worker => Role::Worker,
            RoleArg::All => Role::All,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // What needs no configuration.
    match &cli.command {
        Some(Command::Openapi) => {
            return emit(smsgate::http::openapi::document().as_bytes());
        }
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "smsgate", &mut script);
            return emit(&script);
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            if let Err(err) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
                eprintln!("{err}");
                return ExitCode::FAILURE;
            }
            return emit(&page);
        }
        _ => {}
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve { role: RoleArg::All });
    let result = match command {
        Command::CheckConfig => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            say!("{}", config.to_redacted_toml().trim_end_matches('\n'));
            Ok(())
        }
        Command::Openapi | Command::Completions { .. } | Command::Man => Ok(()),
        Command::Token {
            signer,
            ttl_seconds,
        } => print_token(&config, signer.as_deref(), ttl_seconds),
        Command::Serve { role } => run_async(&config.clone(), serve(config, role.into())),
        Command::Migrate => run_async(&config.clone(), migrate(config)),
        Command::Messages { action } => run_async(&config.clone(), messages(config, action)),
        Command::Carriers { action } => run_async(&config.clone(), carriers(config, action)),
        Command::Healthcheck => run_async(&config.clone(), healthcheck(config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(
    config: &Config,
    task: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    // Kept until the runtime is done: dropping it exports the last spans.
    let _tracing = telemetry::init(&config.log, &config.telemetry);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(task)
}

async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app = App::build_with_role(&config, role).await?;
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    if config.database.url.is_empty() {
        let database = Database::open(&config.database).await?;
        let result = database.migrate().await;
        database.close().await;
        result?;
    } else {
        // Only a session on PostgreSQL itself will do: no pool, no pooler.
        let session =
            Database::session_options_for(&config.database)?.context(smsgate::app::NO_SESSION)?;
        db::migrate(&session).await?;
    }
    tracing::info!("migrations applied");
    Ok(())
}

async fn messages(config: Config, action: MessagesAction) -> anyhow::Result<()> {
    let database = Database::open(&config.database).await?;
    let result = run_messages(&database.pool, action).await;
    database.close().await;
    result
}

async fn carriers(config: Config, action: CarriersAction) -> anyhow::Result<()> {
    let database = Database::open(&config.database).await?;
    let CarriersAction::Stats { output, json } = action;
    let json = json || output == Output::Json;
    let d = &config.dispatch;
    let (window, settle) = (d.route_stats_window_seconds.get(), d.message_ttl_seconds);
    let result = db::route_stats::window(&database.pool, window, settle).await;
    database.close().await;
    let routes = result?;
    if json {
        let routes: Vec<serde_json::Value> = routes
            .iter()
            .map(|r| {
                let mut value = serde_json::to_value(r).unwrap_or_default();
                value["delivery_ratio"] = r.delivery_ratio().into();
                value["conversion_ratio"] = r.conversion_ratio().into();
                value
            })
            .collect();
        let body = serde_json::json!({
            "window_seconds": window, "settle_seconds": settle, "routes": routes,
        });
        say!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    say!("last {window} s; a send without a receipt after {settle} s counts as no_receipt");
    say!(
        "{:<16} {:<7} {:>8} {:>9} {:>12} {:>16} {:>10} {:>8} {:>10} {:>8} {:>10}",
        "carrier",
        "country",
        "sent",
        "delivered",
        "failed_route",
        "failed_recipient",
        "no_receipt",
        "ratio",
        "latency_s",
        "verified",
        "conversion"
    );
    for r in routes {
        let ratio = r.delivery_ratio().map_or("-".into(), |x| format!("{x:.3}"));
        let latency = r
            .receipt_latency_ms
            .map_or("-".into(), |ms| format!("{:.1}", ms / 1e3));
        let conversion = r
            .conversion_ratio()
            .map_or("-".into(), |x| format!("{x:.3}"));
        say!(
            "{:<16} {:<7} {:>8} {:>9} {:>12} {:>16} {:>10} {:>8} {:>10} {:>8} {:>10}",
            r.carrier,
            r.country,
            r.sent,
            r.delivered,
            r.failed_route,
            r.failed_recipient,
            r.no_receipt,
            ratio,
            latency,
            r.verified,
            conversion
        );
    }
    Ok(())
}

async fn run_messages(pool: &crate::db::Db, action: MessagesAction) -> anyhow::Result<()> {
    use smsgate::db::operator::{self, ListFilter};
    use smsgate::domain::{MessageId, PhoneNumber, Status};
    let parse_id = |text: &str| {
        MessageId::parse(text).with_context(|| format!("{text:?} is not a message id"))
    };
    match action {
        MessagesAction::List {
            status,
            since,
            limit,
            reveal,
            output,
        } => {
            let filter = ListFilter {
                status: status
                    .map(|s| Status::parse(&s).with_context(|| format!("unknown status {s:?}")))
                    .transpose()?,
                since: since
                    .map(|s| {
                        chrono::DateTime::parse_from_rfc3339(&s)
                            .map(|t| t.with_timezone(&chrono::Utc))
                            .with_context(|| format!("{s:?} is not an RFC 3339 time"))
                    })
                    .transpose()?,
                before: None,
                limit,
            };
            let mut messages = operator::list(pool, &filter).await?;
            for m in &mut messages {
                if !reveal {
                    let number = PhoneNumber::from_e164_unchecked(std::mem::take(&mut m.recipient));
                    m.recipient = number.masked();
                }
            }
            print_list(&messages, output, limit)?;
        }
        MessagesAction::Show { id, output } => {
            let view = db::messages::find(pool, parse_id(&id)?)
                .await?
                .context("no message with this id")?;
            match output {
                Output::Json => say!("{}", serde_json::to_string_pretty(&view)?),
                Output::Table => print_message(&view),
            }
        }
        MessagesAction::Retry { id } => {
            let id = parse_id(&id)?;
            operator::retry_now(pool, id).await??;
            audit::message_changed(id, "retry", "due now", audit::Actor::Cli);
            say!("{id}: due now");
        }
        MessagesAction::Cancel { id } => {
            let id = parse_id(&id)?;
            operator::cancel(pool, id).await??;
            let change = "queued -> failed, canceled by an operator";
            audit::message_changed(id, "cancel", change, audit::Actor::Cli);
            say!("{id}: canceled");
        }
    }
    Ok(())
}

async fn healthcheck(config: Config) -> anyhow::Result<()> {
    let mut address = config.server.listen;
    // A wildcard listener is reached through loopback.
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{address}/readyz");
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(3))
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} unreachable"))?;
    if !response.status().is_success() {
        bail!("{url} answered {}", response.status());
    }
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM both start a graceful shutdown.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
    }
    shutdown.cancel();
}

fn print_token(config: &Config, signer: Option<&str>, ttl_seconds: u64) -> anyhow::Result<()> {
    let (name, signer_config) = match signer {
        Some(name) => config
            .auth0
            .get_key_value(name)
            .with_context(|| format!("no signer [auth0.{name}] in the configuration"))?,
        None => {
            let mut signers = config.auth0.iter();
            match (signers.next(), signers.next()) {
                (Some(only), None) => only,
                (None, _) => bail!("no [auth0.<name>] signer is configured"),
                (Some(_), Some(_)) => bail!(
                    "several signers are configured; pass --signer with one of: {}",
                    config.auth0.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let token = auth0::sign(signer_config, now, ttl_seconds)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("signer {name}"))?;
    say!("{}", token.expose());
    Ok(())
}

/// Writes a generated document to standard output; a reader that stopped early (`| head`)
/// is not an error.
fn emit(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// `messages list`: one line per message, or JSON as GET /v1/messages answers (with `next`,
/// the id to page from, on a full page).
fn print_list(
    messages: &[db::operator::MessageSummary],
    output: Output,
    limit: i64,
) -> anyhow::Result<()> {
    if output == Output::Json {
        let next = (messages.len() as i64 == limit)
            .then(|| messages.last().map(|m| m.id.to_string()))
            .flatten();
        let body = match next {
            Some(next) => serde_json::json!({ "messages": messages, "next": next }),
            None => serde_json::json!({ "messages": messages }),
        };
        say!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(());
    }
    for m in messages {
        say!(
            "{}  {:<12} {:<16} {:<14} attempts={} {}",
            m.id,
            m.status,
            m.recipient,
            m.carrier.as_deref().unwrap_or("-"),
            m.attempts,
            m.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
}

/// `messages show --output table`: the message, then one line per carrier call.
fn print_message(view: &db::messages::MessageView) {
    let time =
        |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    say!("id          {}", view.id);
    say!("status      {}", view.status.as_str());
    say!("recipient   {}", view.recipient);
    say!("carrier     {}", view.carrier.as_deref().unwrap_or("-"));
    say!("created     {}", time(&view.created_at));
    say!("expires     {}", time(&view.expires_at));
    if let Some(reason) = &view.reason {
        say!("reason      {reason}");
    }
    for a in &view.attempts {
        say!(
            "attempt {:<3} {:<14} {:<18} http={:<4} {:>6} ms  {}  receipt={}",
            a.attempt,
            a.carrier,
            a.outcome,
            a.http_status.map_or("-".to_string(), |s| s.to_string()),
            a.latency_ms.map_or("-".to_string(), |ms| ms.to_string()),
            time(&a.at),
            a.receipt.as_deref().unwrap_or("-"),
        );
    }
}
