//! The settings tree: one TOML file, overridden by `SMSGATE__SECTION__KEY` variables and
//! `DATABASE_URL`, validated once before anything binds or connects.

mod advice;
mod carriers;
mod collect;
mod env;
mod guard;
pub mod libpq_tls;
mod problems;
mod routing;
mod secrets;
mod settings;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::messagemedia_signature::{RECOMMENDED_BITS, SignatureKeys};
use crate::secret::{Secret, lenient_string};

pub use carriers::{CarrierConfig, CarrierKind, VoiceFormat};
pub use guard::{
    CountryLimit, LimitMode, Micros, PriceConfig, SpendConfig, TestNumberConfig, TestOutcome,
    micros,
};
pub use problems::ConfigError;
pub use routing::is_e164;
pub use settings::{
    CarrierSettings, KindSettings, MessageMediaSettings, ReceiptProof, Receipts, SnsSettings,
    Transport, TwilioCredentials, TwilioSettings,
};
pub use units::{Millis, Seconds};

use units::{count, count32};

/// The shared secret of `config/development.toml`; smsgate warns about it and keeps it on loopback.
pub const DEVELOPMENT_SECRET: &str = "smsgate-development-secret-not-for-production";

/// The whole configuration, as loaded and validated.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub metrics: MetricsConfig,
    pub database: DatabaseConfig,
    pub admin: AdminConfig,
    /// One accepted token signer per table: several allow secret rotation and several tenants.
    pub auth0: BTreeMap<String, SignerConfig>,
    pub dispatch: DispatchConfig,
    pub carriers: BTreeMap<String, CarrierConfig>,
    pub routes: Vec<RouteConfig>,
    pub limits: LimitsConfig,
    pub destinations: DestinationsConfig,
    /// What each carrier charges per segment, by prefix.
    pub prices: Vec<PriceConfig>,
    pub spend: SpendConfig,
    /// Numbers whose messages are stored and reported but never handed to a carrier.
    pub test_numbers: Vec<TestNumberConfig>,
    pub retention: RetentionConfig,
    pub log: LogConfig,
    /// The carriers' typed settings, built from `carriers` once it passed validation.
    #[serde(skip)]
    carrier_settings: BTreeMap<String, CarrierSettings>,
}

/// `[log]`: how smsgate writes its log lines (to stderr).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "info,smsgate=debug"; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info,sqlx=warn".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// hyper refuses a read buffer smaller than this (`server.max_header_bytes`).
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Ingress, health and status API.
    pub listen: SocketAddr,
    /// Must be set explicitly to run without any `[auth0.*]` signer.
    pub allow_unauthenticated: bool,
    /// Refuse requests without `req.ip` (the connection's `forward_req_info` is off), so IP
    /// limits cannot be bypassed by a misconfigured connection.
    pub require_request_info: bool,
    /// Open connections at most; further clients wait in the kernel's accept queue.
    pub max_connections: NonZeroUsize,
    /// A request's headers must arrive within this; slower connections are closed.
    pub header_timeout_ms: Millis,
    /// Request line and headers together (at least 8192); larger ones get 431.
    pub max_header_bytes: usize,
    /// A whole request (body included) must be answered within this, or it gets 408; an
    /// ingress request must have arrived within it (its write then decides the answer).
    pub request_timeout_ms: Millis,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_unauthenticated: false,
            require_request_info: false,
            max_connections: count(1024),
            header_timeout_ms: Millis::new(5000),
            max_header_bytes: 16 * 1024,
            request_timeout_ms: Millis::new(15_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus endpoint, kept off the public listener.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

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

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of the status API; none disables that API.
    pub token: Option<Secret>,
    /// When set, the admin routes (`/v1/messages…`, `/v1/carriers/…`) are served here only,
    /// and the public listener answers 404 for them.
    pub listen: Option<SocketAddr>,
}

/// How one Auth0 connection signs its gateway token (`options.gateway_authentication`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    pub secret: Secret,
    #[serde(default)]
    pub secret_base64_encoded: bool,
    #[serde(deserialize_with = "lenient_string")]
    pub audience: String,
    /// Auth0 does not require a subject; when set, `sub` must equal it.
    #[serde(default, deserialize_with = "lenient_optional_string")]
    pub subject: Option<String>,
    /// The secret is published (MessageMedia's Auth0 guide uses `MessageMedia`): allowed on a
    /// public listener only with this opt-in, and then the audience, which must be long, is
    /// what proves the caller (and is redacted like a secret).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public_secret: bool,
    /// Accepted values of the token's `iss` (checked only when the token has one). Auth0 is
    /// seen sending `Auth0` but does not document it, so a tenant that sends another value
    /// needs only this list.
    #[serde(default = "SignerConfig::default_issuers")]
    pub issuers: Vec<String>,
}

impl SignerConfig {
    /// The issuer seen in the tokens Auth0 signs.
    pub const AUTH0_ISSUER: &str = "Auth0";
    /// An issuer is a name or a URL; anything longer is a mistake, not a tenant.
    pub const MAX_ISSUER_CHARS: usize = 256;

    pub fn default_issuers() -> Vec<String> {
        vec![Self::AUTH0_ISSUER.to_string()]
    }
}

impl std::fmt::Debug for SignerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // With a public secret, audience and subject are MessageMedia's API secret and key.
        let (audience, subject) = if self.public_secret {
            let redacted = self
                .subject
                .as_ref()
                .map(|_| crate::secret::REDACTED.to_string());
            (crate::secret::REDACTED, redacted)
        } else {
            (self.audience.as_str(), self.subject.clone())
        };
        f.debug_struct("SignerConfig")
            .field("secret", &self.secret)
            .field("secret_base64_encoded", &self.secret_base64_encoded)
            .field("audience", &audience)
            .field("subject", &subject)
            .field("public_secret", &self.public_secret)
            .field("issuers", &self.issuers)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Concurrent carrier sends per process.
    pub workers: NonZeroUsize,
    /// A code is worthless after Auth0's `totp.time_step` (300 s in its examples).
    pub message_ttl_seconds: u32,
    /// How long a claimed message stays reserved for its worker; longer than the slowest
    /// route can take, so only a dead process's messages are claimed again.
    pub lease_seconds: Seconds,
    /// Messages claimed per round trip.
    pub claim_batch: NonZeroUsize,
    /// Claiming tasks per process; carrier concurrency is `workers`, independent of this.
    pub claimers: NonZeroUsize,
    /// Longest sleep between claims when nothing wakes the workers.
    pub poll_interval_ms: Millis,
    /// First retry delay; it doubles per attempt up to `retry_max_ms`, with full jitter.
    pub retry_base_ms: Millis,
    pub retry_max_ms: Millis,
    /// Dispatch attempts (each may try every carrier of the route) before a message fails.
    pub max_attempts: NonZeroU32,
    /// On SIGTERM, in-flight sends get this long to finish.
    pub shutdown_grace_seconds: u64,
    /// Cross-process wake-ups are sent at most this often (NOTIFY serialises commits).
    pub notify_interval_ms: Millis,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            workers: count(16),
            message_ttl_seconds: 300,
            lease_seconds: Seconds::new(30),
            claim_batch: count(32),
            claimers: count(2),
            poll_interval_ms: Millis::new(1000),
            retry_base_ms: Millis::new(1000),
            retry_max_ms: Millis::new(30_000),
            max_attempts: count32(5),
            shutdown_grace_seconds: 10,
            notify_interval_ms: Millis::new(100),
        }
    }
}

/// Anti-abuse limits. The windows are exact across every process sharing the database.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `[[limits.recipient]]`, the dispatch's pacing per recipient: sliding windows on
    /// messages sent to one number; all must allow a send. A limited message waits for its
    /// window (or ends `rate_limited` at expiry).
    #[serde(rename = "recipient")]
    pub recipient_pacing: Vec<WindowLimit>,
    /// Requests accepted per client IP (Auth0's `req.ip`; IPv6 per /64), refused with 429.
    pub ip: Vec<WindowLimit>,
    /// `[[limits.ingress_recipient]]`, the ingress's cap per number: messages accepted per
    /// number, refused with 429 past it.
    #[serde(rename = "ingress_recipient")]
    pub number_cap: Vec<WindowLimit>,
    /// Messages accepted per destination country, refused with 429 (or monitored).
    pub country: Vec<CountryLimit>,
    /// Requests of one signer handled at once by one process (0: no cap); more get 429.
    pub max_in_flight: usize,
}

/// `[destinations]`: which numbers are accepted at all; a refusal is a 403.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationsConfig {
    /// ISO 3166-1 alpha-2 codes; when not empty, only numbers of these countries.
    pub allowed_countries: Vec<String>,
    pub blocked_countries: Vec<String>,
    /// E.164 prefixes such as "+882" or "+4470".
    pub blocked_prefixes: Vec<String>,
    /// Only mobile numbers (or, where a number's type cannot be told apart, fixed line or
    /// mobile): premium-rate, shared-cost, toll-free, VoIP and other types are refused.
    pub mobile_only: bool,
    /// `monitor`: a refusal is counted and logged, and the request accepted.
    pub mode: LimitMode,
}

/// At most `max` messages in any `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WindowLimit {
    pub max: NonZeroU32,
    pub window_seconds: Seconds,
    /// Ingress limits only: `monitor` counts and logs instead of refusing.
    #[serde(default)]
    pub mode: LimitMode,
}

impl WindowLimit {
    /// A limit written in the code (tests, benchmarks); a zero there is a programming error.
    pub const fn new(max: u32, window_seconds: u32) -> Self {
        Self {
            max: count32(max),
            window_seconds: Seconds::new(window_seconds),
            mode: LimitMode::Block,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Final messages (their bodies already erased) are kept at least this many days after they
    /// ended, at most about a day more: a UTC day of them is dropped whole once all of it is
    /// this old (0: once the day is over and all of it is final).
    pub days: u32,
    /// How often the clean-up runs (on one process at a time).
    pub interval_seconds: Seconds,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 7,
            interval_seconds: Seconds::new(60),
        }
    }
}

/// Messages to numbers starting with `prefix` go to `carriers`, first one first.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    pub carriers: Vec<String>,
    /// Sends to this prefix from this sender instead of the carrier's `from`: an
    /// alphanumeric sender ID or an E.164 number.
    #[serde(default)]
    pub sender: Option<String>,
}

fn lenient_optional_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    lenient_string(deserializer).map(Some)
}

impl Config {
    /// Loads `path`, applies the environment overrides and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::single(
                "--config",
                format!("no configuration file at {}", path.display()),
            ));
        }
        Self::from_figment(Figment::from(Toml::file(path)))
    }

    /// Loads from TOML text (tests, examples) with the same overrides and validation.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)))
    }

    fn from_figment(base: Figment) -> Result<Self, ConfigError> {
        let figment = base.merge(env::ExactEnv::from_process()).merge(
            Env::raw()
                .only(&["DATABASE_URL"])
                .map(|_| "database.url".into()),
        );
        let mut read = collect::read_naming_every_problem(&figment);
        let mut problems = std::mem::take(&mut read.problems.problems);
        let Some(mut config) = read.config.take() else {
            return Err(ConfigError { problems });
        };
        // Ranges and the rest are checked on what was read around the problems, so one run
        // names them all; only checks a set-aside table would make wrong are left out.
        if let Err(error) = config.validate() {
            let found = error.naming_variables(&figment).problems;
            problems.extend(found.into_iter().filter(|p| read.can_judge(&p.key)));
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        config.carrier_settings = config
            .carriers
            .iter()
            .map(|(name, table)| Ok((name.clone(), table.settings(name)?)))
            .collect::<Result<_, ConfigError>>()?;
        Ok(config)
    }

    /// Every carrier's typed settings: what the tables say, checked, one type per kind.
    pub fn carrier_settings(&self) -> &BTreeMap<String, CarrierSettings> {
        &self.carrier_settings
    }

    /// The effective configuration as TOML, every secret replaced by `[redacted]`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        let mut proofs = Vec::new();
        for signer in shown.auth0.values_mut().filter(|s| s.public_secret) {
            // What proves a signer whose secret is public: in MessageMedia's recipe, the
            // audience and subject are the account's API secret and key.
            proofs.push(std::mem::replace(
                &mut signer.audience,
                crate::secret::REDACTED.into(),
            ));
            if let Some(subject) = signer.subject.replace(crate::secret::REDACTED.into()) {
                proofs.push(subject);
            }
        }
        // The same values as a carrier's API key would give them away again.
        for carrier in shown.carriers.values_mut() {
            if carrier
                .api_key
                .as_ref()
                .is_some_and(|key| proofs.contains(key))
            {
                carrier.api_key = Some(crate::secret::REDACTED.into());
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|err| format!("# cannot render: {err}\n"))
    }

    /// Valid but risky settings, each naming its keys: printed by `check-config` and logged
    /// at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self.development_secret_warning().into_iter().collect();
        warnings.extend(self.database_tls_warnings());
        for (i, route) in self.routes.iter().enumerate() {
            if route.sender.as_deref().is_some_and(is_e164) && route.carriers.len() > 1 {
                warnings.push(format!(
                    "routes[{i}].sender is a number, and every carrier of the route sends from \
                     it: a carrier that does not own it will refuse the message (a failover \
                     then fails too)"
                ));
            }
        }
        if self.database.transaction_pooling && self.database.direct_url.is_empty() {
            warnings.push(format!(
                "database.transaction_pooling without database.direct_url: no LISTEN, so a \
                 worker learns of messages other processes queued only by polling (every \
                 dispatch.poll_interval_ms = {} ms)",
                self.dispatch.poll_interval_ms
            ));
        }
        let lease_ms = self.dispatch.lease_seconds.as_millis();
        for (name, carrier) in &self.carriers {
            let Some(slots) = carrier.max_in_flight.filter(|&n| n > 0) else {
                continue;
            };
            // Every worker's message queued behind the carrier's slots, each call taking its
            // whole timeout: the last one starts this long after the claim.
            let queued_ms =
                self.dispatch.workers.get() as u64 * carrier.timeout_ms.get() / u64::from(slots);
            if queued_ms > lease_ms {
                warnings.push(format!(
                    "carriers.{name}: dispatch.workers ({}) x timeout_ms ({}) / max_in_flight \
                     ({slots}) = {queued_ms} ms exceeds dispatch.lease_seconds ({} s): messages \
                     queued behind this carrier are handed back untried and claimed again, \
                     which delays them; raise lease_seconds or max_in_flight, or lower workers",
                    self.dispatch.workers, carrier.timeout_ms, self.dispatch.lease_seconds
                ));
            }
        }
        for (name, carrier) in &self.carriers {
            let smallest = SignatureKeys::parse(&carrier.callback_public_keys)
                .ok()
                .and_then(|keys| keys.smallest_bits());
            if smallest.is_some() && carrier.public_url.is_none() {
                warnings.push(format!(
                    "carriers.{name}.callback_public_keys: unused without public_url (no \
                     delivery reports are asked for)"
                ));
            }
            if let Some(bits) = smallest.filter(|&bits| bits < RECOMMENDED_BITS) {
                warnings.push(format!(
                    "carriers.{name}.callback_public_keys: a {bits}-bit key is weaker than \
                     {RECOMMENDED_BITS} bits; create a larger signature key with MessageMedia"
                ));
            }
        }
        warnings
    }

    /// True when some signer still uses the secret shipped in `config/development.toml`,
    /// written as is or base64-encoded (`secret_base64_encoded`): the key is what matters.
    pub fn uses_development_secret(&self) -> bool {
        self.auth0.values().any(|signer| {
            let key = if signer.secret_base64_encoded {
                crate::secret::decode_base64url_secret(signer.secret.expose())
            } else {
                Some(signer.secret.expose().as_bytes().to_vec())
            };
            key.as_deref() == Some(DEVELOPMENT_SECRET.as_bytes())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_debug_nor_the_printed_config_shows_a_secret() {
        let config = Config::from_toml_str(
            r#"
[database]
url = "postgres://smsgate:db-password-1@db/smsgate"
[admin]
token = "admin-token-2"
[auth0.a]
secret = "signer-secret-3"
audience = "urn:x"
[auth0.mm]
secret = "MessageMedia"
public_secret = true
audience = "mm-api-secret-7-0123456789abcdef"
subject = "mm-api-key-8"
[carriers.t]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
auth_token = "twilio-token-4"
from = "+15005550006"
[carriers.m]
kind = "messagemedia"
api_key = "key"
api_secret = "mm-secret-5"
[carriers.s]
kind = "sns"
region = "eu-west-1"
access_key_id = "AKIAEXAMPLE"
secret_access_key = "aws-secret-6"
[[routes]]
prefix = ""
carriers = ["t", "m", "s"]
"#,
        )
        .expect("valid");
        let debug = format!("{config:?}");
        let printed = config.to_redacted_toml();
        for secret in [
            "db-password-1",
            "admin-token-2",
            "signer-secret-3",
            "twilio-token-4",
            "mm-secret-5",
            "aws-secret-6",
            "mm-api-secret-7",
            "mm-api-key-8",
        ] {
            assert!(!debug.contains(secret), "Debug shows {secret}");
            assert!(!printed.contains(secret), "check-config shows {secret}");
        }
    }
}
