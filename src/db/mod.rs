//! Everything that talks to PostgreSQL: the pool, migrations, readiness and the queries.

pub mod batcher;
pub mod carrier_states;
pub mod embedded;
pub mod first_hits;
pub mod handle;
pub mod ingress_hits;
mod literal;
pub mod messages;
pub mod operator;
pub mod partitions;
pub mod pool_use;
pub mod queue;
pub mod receipts;
pub mod recipient_sends;
pub mod resends;
pub mod retention;
pub mod route_stats;
pub mod spend;
pub mod tls;
pub mod verifications;
pub mod wake;

pub use handle::{Db, Tx};

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use crate::config::DatabaseConfig;

/// The schema, embedded in the binary so `smsgate migrate` needs no source tree.
/// Arbitrary but fixed: identifies smsgate's retention lock among advisory locks. Row
/// retention (`retention`) and partition maintenance (`partitions`) both take it.
const RETENTION_LOCK: i64 = 0x736d_7367_6174_6501;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Guards against a stuck statement or an abandoned transaction pinning the queue's xmin
/// horizon, which is what makes SKIP LOCKED claims decay (docs/design.md, "Measured figures").
/// Session settings when direct; `SET LOCAL` in every transaction behind a pooler.
const TIMEOUTS: [(&str, &str); 2] = [
    ("statement_timeout", "10s"),
    ("idle_in_transaction_session_timeout", "10s"),
];

/// A pooled connection idle for this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_millis(100);

/// Connection options from a `postgres://` URL, with TLS verified as libpq verifies it
/// (`tls`): a verifying mode starts its tunnel on the current tokio runtime.
pub fn options_from_url(key: &str, url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = url
        .parse::<PgConnectOptions>()
        .with_context(|| format!("{key} is not a valid postgres:// URL"))?;
    tls::with_libpq_tls(options, url).with_context(|| format!("{key}: TLS to PostgreSQL"))
}

/// Opens the pool smsgate uses for everything but migrations and LISTEN.
pub async fn connect(options: PgConnectOptions, config: &DatabaseConfig) -> anyhow::Result<Db> {
    let options = options.application_name("smsgate");
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections.get())
        .acquire_timeout(config.acquire_timeout_ms.duration())
        // sqlx pings a connection on every acquire by default: one more round trip before
        // each batch's statement. Under load a connection comes back within milliseconds and
        // is taken as it is; one idle for longer (perhaps cut by a restart or a failover
        // meanwhile, which takes longer than that) is still checked. A connection that broke
        // within that moment of its last use fails its statement, as one that breaks during
        // it always could. (At a second, a restart under light traffic met five or six such
        // connections in a row: one 503 each.)
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        });
    if config.transaction_pooling {
        // A pooler refuses the `options` startup parameter and shares server sessions, so
        // no session settings and no named statements (db::handle).
        let pool = pool
            .connect_with(options.statement_cache_capacity(0))
            .await
            .context("cannot connect to PostgreSQL through the transaction pooler")?;
        return Ok(Db::behind_pooler(pool, &TIMEOUTS));
    }
    let pool = pool
        .connect_with(options.options(TIMEOUTS))
        .await
        .context("cannot connect to PostgreSQL")?;
    Ok(Db::direct(pool))
}

/// Applies every migration not applied yet, on a session of its own (`options` must reach
/// PostgreSQL itself: the migrator holds a session advisory lock).
pub async fn migrate(options: &PgConnectOptions) -> anyhow::Result<()> {
    // A migration waiting for a table lock (behind a long reader) would queue every insert and
    // claim behind it: it gives up instead, and the next start tries again.
    let options = options
        .clone()
        .application_name("smsgate")
        .options([("lock_timeout", "10s")]);
    let mut session = PgConnection::connect_with(&options)
        .await
        .context("cannot connect to PostgreSQL to apply migrations")?;
    // A binary restarted during a rolling upgrade may find migrations newer than it knows:
    // they belong to the next release, which keeps them compatible with this one
    // (docs/operations.md, "Upgrading"), so they are no reason to refuse to start.
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    let applied = migrator
        .run(&mut session)
        .await
        .context("cannot apply database migrations");
    session.close().await.ok();
    applied
}

/// Ready means: the database answers and the newest migration this binary knows is applied.
pub async fn is_ready(db: &Db) -> Result<bool, sqlx::Error> {
    let Some(latest) = MIGRATOR.iter().map(|m| m.version).max() else {
        return Ok(true);
    };
    let applied: Option<bool> =
        sqlx::query_scalar("SELECT success FROM _sqlx_migrations WHERE version = $1")
            .bind(latest)
            .fetch_optional(db)
            .await
            .or_else(|err| match &err {
                // No migrations table yet: reachable, not ready.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
                _ => Err(err),
            })?;
    Ok(applied == Some(true))
}

/// Creates `name` on the server behind `pool` unless it exists (embedded start-up).
pub async fn ensure_database(db: &Db, name: &str) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(db)
            .await?;
    if !exists {
        // Identifiers cannot be bound; `name` is a constant of ours, quoted anyway.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        )))
        .execute(db)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    }
    Ok(())
}

/// A PostgreSQL array literal, bound as text and cast to `bigint[]`: one bind carries an array
/// per row of a multi-row update.
fn pg_array(values: &[i64]) -> String {
    let items: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("{{{}}}", items.join(","))
}
