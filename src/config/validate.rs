//! Checks that need more than types: every problem is reported with the key it concerns.

use std::collections::HashSet;

use super::problems::{ConfigError, Problem};
use super::{Config, MIN_HEADER_BYTES, SignerConfig};
use crate::domain::parse_country;
use crate::secret::decode_base64url_secret;

/// `limits.max_in_flight` above this is refused rather than panicking at start.
const MAX_IN_FLIGHT: usize = 1_000_000;

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: String, reason: String| problems.push(Problem { key, reason });
        self.validate_signers(&mut problem);
        self.validate_listeners(&mut problem);
        self.validate_database_and_log(&mut problem);
        for (name, carrier) in &self.carriers {
            for p in carrier.problems(name) {
                problem(p.key, p.reason);
            }
        }
        self.validate_dispatch(&mut problem);
        self.validate_routes(&mut problem);
        self.validate_destinations(&mut problem);
        self.validate_guard(&mut problem);
        self.validate_senders(&mut problem);
        self.validate_server(&mut problem);
        for p in super::secrets::problems(self) {
            problem(p.key, p.reason);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    fn validate_signers(&self, problem: &mut impl FnMut(String, String)) {
        if self.auth0.is_empty() && !self.server.allow_unauthenticated {
            problem(
                "auth0".into(),
                "no signer is configured; add an [auth0.<name>] table, or set \
                 server.allow_unauthenticated = true to accept unsigned requests"
                    .into(),
            );
        }
        for (name, signer) in &self.auth0 {
            let key = |field: &str| format!("auth0.{name}.{field}");
            if name == crate::domain::NO_SIGNER || name.trim().is_empty() {
                problem(
                    format!("auth0.{name}"),
                    "\"-\" (and an empty name) stand for no signer in metrics and logs; \
                     choose another name"
                        .into(),
                );
            }
            if signer.secret.is_empty() {
                problem(key("secret"), "must not be empty".into());
            } else if signer.secret_base64_encoded
                && decode_base64url_secret(signer.secret.expose()).is_none()
            {
                problem(
                    key("secret"),
                    "secret_base64_encoded is true but the secret is not base64url".into(),
                );
            }
            if signer.audience.trim().is_empty() {
                problem(key("audience"), "must not be empty".into());
            }
            if signer
                .subject
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
            {
                problem(key("subject"), "must not be empty when present".into());
            }
            if let Some(reason) = issuers_problem(&signer.issuers) {
                problem(key("issuers"), reason);
            }
        }
        if self.uses_development_secret() && !self.server.listen.ip().is_loopback() {
            problem(
                "server.listen".into(),
                format!(
                    "{} is not a loopback address, and a signer uses the development secret \
                     from config/development.toml; set your own secret first",
                    self.server.listen
                ),
            );
        }
    }

    /// The admin token and which listener is where.
    fn validate_listeners(&self, problem: &mut impl FnMut(String, String)) {
        if self.admin.token.as_ref().is_some_and(|t| t.is_empty()) {
            problem(
                "admin.token".into(),
                "must not be empty; remove it to disable the status API".into(),
            );
        }
        if let Some(admin) = self.admin.listen
            && admin.port() != 0
            && (admin == self.server.listen || admin == self.metrics.listen)
        {
            problem(
                "admin.listen".into(),
                "must differ from server.listen and metrics.listen".into(),
            );
        }
        if self.metrics.listen == self.server.listen && self.server.listen.port() != 0 {
            problem(
                "metrics.listen".into(),
                "must differ from server.listen".into(),
            );
        }
    }

    fn validate_database_and_log(&self, problem: &mut impl FnMut(String, String)) {
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
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problem(
                "log.level".into(),
                format!("is not a tracing filter: {err}"),
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
    fn validate_pooling(&self, problem: &mut impl FnMut(String, String)) {
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

    fn validate_dispatch(&self, problem: &mut impl FnMut(String, String)) {
        // Found by an attack: a retention of millions of days put "now minus retention" out
        // of PostgreSQL's timestamp range and failed every retention pass.
        if self.retention.days > 36_500 {
            problem(
                "retention.days".into(),
                "must be at most 36500 (a hundred years)".into(),
            );
        }
        if !(1..=86_400).contains(&self.dispatch.message_ttl_seconds) {
            problem(
                "dispatch.message_ttl_seconds".into(),
                "must be between 1 and 86400".into(),
            );
        }
        let d = &self.dispatch;
        if d.retry_max_ms < d.retry_base_ms {
            problem(
                "dispatch.retry_max_ms".into(),
                "must be at least retry_base_ms".into(),
            );
        }
        // The lease must outlast the slowest route: every carrier timing out in turn.
        for (i, route) in self.routes.iter().enumerate() {
            let worst_ms: u64 = route
                .carriers
                .iter()
                .filter_map(|name| self.carriers.get(name))
                .map(|c| c.timeout_ms.get())
                .sum();
            if worst_ms >= d.lease_seconds.as_millis() {
                problem(
                    "dispatch.lease_seconds".into(),
                    format!(
                        "must be longer than routes[{i}] can take ({worst_ms} ms if every \
                         carrier times out)"
                    ),
                );
            }
        }
    }

    fn validate_server(&self, problem: &mut impl FnMut(String, String)) {
        // A semaphore holds at most usize::MAX >> 3 permits; far more than any process serves.
        if self.limits.max_in_flight > MAX_IN_FLIGHT {
            problem(
                "limits.max_in_flight".into(),
                format!("must be at most {MAX_IN_FLIGHT} (0: no cap)"),
            );
        }
        let s = &self.server;
        if s.max_header_bytes < MIN_HEADER_BYTES {
            problem(
                "server.max_header_bytes".into(),
                format!("must be at least {MIN_HEADER_BYTES}"),
            );
        }
    }

    fn validate_destinations(&self, problem: &mut impl FnMut(String, String)) {
        let d = &self.destinations;
        for (name, codes) in [
            ("allowed_countries", &d.allowed_countries),
            ("blocked_countries", &d.blocked_countries),
        ] {
            for code in codes {
                if parse_country(code).is_none() {
                    problem(
                        format!("destinations.{name}"),
                        format!("{code:?} is not an ISO 3166-1 alpha-2 country code like \"GB\""),
                    );
                }
            }
        }
        for code in &d.blocked_countries {
            if d.allowed_countries
                .iter()
                .any(|a| a.eq_ignore_ascii_case(code))
            {
                problem(
                    "destinations.blocked_countries".into(),
                    format!("{code:?} is also in allowed_countries"),
                );
            }
        }
        for prefix in &d.blocked_prefixes {
            let digits = prefix.strip_prefix('+').unwrap_or("");
            if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                problem(
                    "destinations.blocked_prefixes".into(),
                    format!("{prefix:?} is not an E.164 prefix like \"+882\""),
                );
            }
        }
    }

    fn validate_routes(&self, problem: &mut impl FnMut(String, String)) {
        let mut prefixes = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let key = |field: &str| format!("routes[{i}].{field}");
            let digits = route.prefix.strip_prefix('+').unwrap_or("-");
            if !route.prefix.is_empty()
                && (digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()))
            {
                problem(
                    key("prefix"),
                    format!(
                        "{:?} is not an E.164 prefix like \"+44\" (or \"\" for the default route)",
                        route.prefix
                    ),
                );
            }
            if !prefixes.insert(route.prefix.as_str()) {
                problem(key("prefix"), format!("{:?} appears twice", route.prefix));
            }
            if route.carriers.is_empty() {
                problem(key("carriers"), "must name at least one carrier".into());
            }
            for carrier in &route.carriers {
                if !self.carriers.contains_key(carrier) {
                    problem(
                        key("carriers"),
                        format!(
                            "names carrier {carrier:?}, which has no [carriers.{carrier}] table"
                        ),
                    );
                }
            }
        }
        if !prefixes.contains("") {
            problem(
                "routes".into(),
                "a default route (prefix = \"\") is required".into(),
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

/// Why a signer's `issuers` cannot work: an empty list would refuse every token with an `iss`.
fn issuers_problem(issuers: &[String]) -> Option<String> {
    let max = SignerConfig::MAX_ISSUER_CHARS;
    if issuers.is_empty() {
        Some("must list at least one issuer; leave it out for the default [\"Auth0\"]".into())
    } else if issuers.iter().any(|issuer| issuer.trim().is_empty()) {
        Some("an issuer must not be empty".into())
    } else if issuers.iter().any(|issuer| issuer.chars().count() > max) {
        Some(format!("each issuer must be {max} characters or fewer"))
    } else {
        None
    }
}
