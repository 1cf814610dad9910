//! The settings tree: one TOML file, overridden by `SMSGATE__SECTION__KEY` variables and
//! `DATABASE_URL`, validated once before anything binds or connects.

mod advice;
mod carriers;
mod collect;
mod database;
mod dispatch;
mod env;
mod guard;
pub mod libpq_tls;
mod limits;
mod log;
mod problems;
mod routing;
mod secrets;
mod server;
mod settings;
mod signers;
mod telemetry;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

pub use carriers::{
    CarrierConfig, CarrierKindConfig, Found, KindKeys, KindSettings, TransportConfig, checks,
    optional_string, problem,
};
pub use database::DatabaseConfig;
pub use dispatch::{DispatchConfig, RetentionConfig};
pub use guard::{
    CountryLimit, LimitMode, Micros, PriceConfig, SpendConfig, TestNumberConfig, TestOutcome,
    micros,
};
pub use limits::{DestinationsConfig, LimitsConfig, WindowLimit};
pub use log::{LogConfig, LogFormat};
pub use problems::ConfigError;
pub use routing::is_e164;
pub use routing::{RouteConfig, RouteOrder};
pub use server::{AdminConfig, MIN_HEADER_BYTES, MetricsConfig, ServerConfig};
pub use settings::{CarrierSettings, Transport};
pub use signers::SignerConfig;
pub use telemetry::{OtlpProtocol, TelemetryConfig};
pub use units::{Millis, Seconds};

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
    pub telemetry: TelemetryConfig,
    /// The carriers' typed settings, built from `carriers` once it passed validation.
    #[serde(skip)]
    carrier_settings: BTreeMap<String, CarrierSettings>,
}

impl Config {
    /// Loads `path`, applies the environment overrides and validates the result; each
    /// carrier table is read by its kind, one of `kinds` (`carriers::KINDS`: `Config::load`).
    pub fn load_with(path: &Path, kinds: &[&dyn CarrierKindConfig]) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::single(
                "--config",
                format!("no configuration file at {}", path.display()),
            ));
        }
        Self::from_figment(Figment::from(Toml::file(path)), kinds)
    }

    /// Reads TOML text (tests, examples) with the same overrides and validation.
    pub fn from_toml_with(
        text: &str,
        kinds: &[&dyn CarrierKindConfig],
    ) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(text)), kinds)
    }

    fn from_figment(base: Figment, kinds: &[&dyn CarrierKindConfig]) -> Result<Self, ConfigError> {
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
        // Carriers first: validation asks their kinds which of them place calls.
        let (settings, carrier_problems) = carriers::read_carriers(&mut config.carriers, kinds);
        config.carrier_settings = settings
            .into_iter()
            .map(|(name, settings)| {
                let table = &config.carriers[&name];
                let built = CarrierSettings {
                    kind: table.kind.clone(),
                    transport: Transport::from(&table.transport),
                    settings,
                };
                (name, built)
            })
            .collect();
        let carrier_problems = ConfigError {
            problems: carrier_problems,
        };
        problems.extend(carrier_problems.naming_variables(&figment).problems);
        // Ranges and the rest are checked on what was read around the problems, so one run
        // names them all; only checks a set-aside table would make wrong are left out.
        if let Err(error) = config.validate() {
            let found = error.naming_variables(&figment).problems;
            problems.extend(found.into_iter().filter(|p| read.can_judge(&p.key)));
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
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
            // What proves a signer whose secret is public: in the hosted integration's recipe
            // (docs/auth0.md), the audience and subject are the account's API secret and key.
            proofs.push(std::mem::replace(
                &mut signer.audience,
                crate::secret::REDACTED.into(),
            ));
            if let Some(subject) = signer.subject.replace(crate::secret::REDACTED.into()) {
                proofs.push(subject);
            }
        }
        // The same values under a carrier's key would give them away again.
        for (name, carrier) in shown.carriers.iter_mut() {
            let mut hidden: Vec<String> =
                proofs.iter().flat_map(|p| carrier.keys_set_to(p)).collect();
            if let Some(settings) = self.carrier_settings.get(name) {
                hidden.extend(
                    settings
                        .settings
                        .secrets()
                        .into_iter()
                        .map(|(key, _)| key.to_string()),
                );
            }
            let hidden: Vec<&str> = hidden.iter().map(String::as_str).collect();
            carrier.redact(&hidden, crate::secret::REDACTED);
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
            let Some(slots) = carrier.transport.max_in_flight.filter(|&n| n > 0) else {
                continue;
            };
            // Every worker's message queued behind the carrier's slots, each call taking its
            // whole timeout: the last one starts this long after the claim.
            let queued_ms = self.dispatch.workers.get() as u64 * carrier.transport.timeout_ms.get()
                / u64::from(slots);
            if queued_ms > lease_ms {
                warnings.push(format!(
                    "carriers.{name}: dispatch.workers ({}) x timeout_ms ({}) / max_in_flight \
                     ({slots}) = {queued_ms} ms exceeds dispatch.lease_seconds ({} s): messages \
                     queued behind this carrier are handed back untried and claimed again, \
                     which delays them; raise lease_seconds or max_in_flight, or lower workers",
                    self.dispatch.workers,
                    carrier.transport.timeout_ms,
                    self.dispatch.lease_seconds
                ));
            }
        }
        for (name, carrier) in &self.carrier_settings {
            for warning in carrier.settings.warnings() {
                warnings.push(format!("carriers.{name}.{warning}"));
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
