//! Everything that talks to PostgreSQL: the pool, migrations, readiness and the queries.

pub mod batcher;
pub mod carrier_states;
pub mod embedded;
pub mod ingress_hits;
pub mod messages;
pub mod operator;
pub mod queue;
pub mod receipts;
pub mod recipient_sends;
pub mod retention;
pub mod wake;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseConfig;

/// The schema, embedded in the binary so `smsgate migrate` needs no source tree.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Guards against a stuck statement or an abandoned transaction pinning the queue's xmin
/// horizon, which is what makes SKIP LOCKED claims decay (docs/design.md, "Measured figures").
const SESSION_SETTINGS: [(&str, &str); 3] = [
    ("statement_timeout", "10s"),
    ("idle_in_transaction_session_timeout", "10s"),
    ("application_name", "smsgate"),
];

/// Connection options from a `postgres://` URL.
pub fn options_from_url(url: &str) -> anyhow::Result<PgConnectOptions> {
    url.parse::<PgConnectOptions>()
        .context("database.url (or DATABASE_URL) is not a valid postgres:// URL")
}

/// Opens the pool smsgate uses for everything.
pub async fn connect(options: PgConnectOptions, config: &DatabaseConfig) -> anyhow::Result<PgPool> {
    let options = options.options(SESSION_SETTINGS);
    PgPoolOptions::new()
        .max_connections(config.max_connections.get())
        .acquire_timeout(config.acquire_timeout_ms.duration())
        .connect_with(options)
        .await
        .context("cannot connect to PostgreSQL")
}

/// Applies every migration not applied yet.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    // A binary restarted during a rolling upgrade may find migrations newer than it knows:
    // they belong to the next release, which keeps them compatible with this one
    // (docs/operations.md, "Upgrading"), so they are no reason to refuse to start.
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.set_ignore_missing(true);
    migrator
        .run(pool)
        .await
        .context("cannot apply database migrations")
}

/// Ready means: the database answers and the newest migration this binary knows is applied.
pub async fn is_ready(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let Some(latest) = MIGRATOR.iter().map(|m| m.version).max() else {
        return Ok(true);
    };
    let applied: Option<bool> =
        sqlx::query_scalar("SELECT success FROM _sqlx_migrations WHERE version = $1")
            .bind(latest)
            .fetch_optional(pool)
            .await
            .or_else(|err| match &err {
                // No migrations table yet: reachable, not ready.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
                _ => Err(err),
            })?;
    Ok(applied == Some(true))
}

/// Creates `name` on the server behind `pool` unless it exists (embedded start-up).
pub async fn ensure_database(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(pool)
            .await?;
    if !exists {
        // Identifiers cannot be bound; `name` is a constant of ours, quoted anyway.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        )))
        .execute(pool)
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    }
    Ok(())
}
