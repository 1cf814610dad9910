//! `[database]`: where PostgreSQL is (or the embedded cluster's home), the pool and the
//! ingress's writers, with their defaults and checks.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::{count, count32};
use super::{Config, Millis};
use crate::secret::Secret;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Empty means: run the embedded PostgreSQL cluster in `data_dir`.
    pub url: Secret,
    /// `url` reaches PostgreSQL through a transaction pooler (PgBouncer's
    /// `pool_mode = transaction`): no session state, every statement in a transaction.
    pub transaction_pooling: bool,
    /// PostgreSQL itself, for what needs a session of its own: migrations and the LISTEN of
    /// wake-ups. Empty: `url` when it is direct; behind a pooler, no LISTEN (workers poll).
    pub direct_url: Secret,
    pub data_dir: PathBuf,
    pub max_connections: NonZeroU32,
    /// How long a request waits for a free connection before it is answered 503.
    pub acquire_timeout_ms: Millis,
    /// Apply pending migrations when `serve` starts.
    pub migrate_on_start: bool,
    /// Concurrent group-commit inserts of the ingress; each takes every request waiting.
    pub ingress_writers: NonZeroUsize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            transaction_pooling: false,
            direct_url: Secret::default(),
            data_dir: PathBuf::from("data/postgres"),
            max_connections: count32(20),
            acquire_timeout_ms: Millis::new(3000),
            migrate_on_start: true,
            ingress_writers: count(2),
        }
    }
}

impl Config {
    pub(super) fn validate_database(&self, problem: &mut impl FnMut(String, String)) {
        let url = self.database.url.expose();
        if !url.is_empty() && !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            problem(
                "database.url".into(),
                "must start with postgres:// or postgresql://".into(),
            );
        }
        for (key, value) in [
            ("database.url", url),
            ("database.direct_url", self.database.direct_url.expose()),
        ] {
            let scheme_ok = value.starts_with("postgres://") || value.starts_with("postgresql://");
            // The parser's message may quote the URL, password and all: not repeated here.
            if scheme_ok && value.parse::<sqlx::postgres::PgConnectOptions>().is_err() {
                problem(
                    key.into(),
                    "is not a valid postgres:// URL (check its port, characters to \
                     percent-encode and parameters such as sslmode)"
                        .into(),
                );
            }
        }
        // A batch with idempotency keys holds its insert transaction's connection while its
        // limits are reserved on a second one: with no connection to spare, every such
        // batch would wait out the acquire timeout.
        let limited = !self.limits.ip.is_empty()
            || !self.limits.number_cap.is_empty()
            || !self.limits.country.is_empty()
            || self.spend.daily_limit.is_some()
            || self.spend.country_daily_limit.is_some();
        let writers = self.database.ingress_writers.get();
        if limited && self.database.max_connections.get() as usize <= writers {
            problem(
                "database.max_connections".into(),
                format!(
                    "must be more than database.ingress_writers ({writers}) when an ingress \
                     limit or spend ceiling is configured: a batch with idempotency keys holds \
                     one connection while its limits are reserved on another"
                ),
            );
        }
        self.validate_pooling(problem);
        if self.database.url.is_empty() && self.database.data_dir.as_os_str().is_empty() {
            problem(
                "database.data_dir".into(),
                "must be set when database.url is empty (embedded PostgreSQL)".into(),
            );
        }
    }

    /// `transaction_pooling` and `direct_url` describe an external PostgreSQL behind a pooler.
    pub(super) fn validate_pooling(&self, problem: &mut impl FnMut(String, String)) {
        let d = &self.database;
        let direct = d.direct_url.expose();
        if !direct.is_empty()
            && !direct.starts_with("postgres://")
            && !direct.starts_with("postgresql://")
        {
            problem(
                "database.direct_url".into(),
                "must start with postgres:// or postgresql://".into(),
            );
        }
        if d.url.is_empty() {
            if d.transaction_pooling {
                problem(
                    "database.transaction_pooling".into(),
                    "needs database.url (the pooler); the embedded database is never behind one"
                        .into(),
                );
            }
            if !direct.is_empty() {
                problem(
                    "database.direct_url".into(),
                    "is set without database.url; set both, or neither for the embedded database"
                        .into(),
                );
            }
        } else if d.transaction_pooling && !direct.is_empty() && same_server(direct, d.url.expose())
        {
            problem(
                "database.direct_url".into(),
                "is the pooler's address (database.url): it must reach PostgreSQL itself, or \
                 LISTEN and the migrator's lock land on sessions the pooler shares"
                    .into(),
            );
        } else if d.transaction_pooling && d.migrate_on_start && direct.is_empty() {
            problem(
                "database.direct_url".into(),
                "must be set when database.transaction_pooling and database.migrate_on_start \
                 are on: migrations need a session on PostgreSQL itself (or set \
                 migrate_on_start = false and run `smsgate migrate` with a direct url)"
                    .into(),
            );
        }
    }
}

/// Whether two `postgres://` URLs name the same server (host and port; credentials and
/// parameters aside). Unparsable URLs are reported where they are parsed.
fn same_server(a: &str, b: &str) -> bool {
    let address = |url: &str| {
        url.parse::<sqlx::postgres::PgConnectOptions>()
            .ok()
            .map(|o| (o.get_host().to_ascii_lowercase(), o.get_port()))
    };
    address(a).is_some_and(|a| Some(a) == address(b))
}
