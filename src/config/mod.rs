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
mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::messagemedia_signature::{RECOMMENDED_BITS, SignatureKeys};

pub use carriers::{CarrierConfig, CarrierKind, VoiceFormat};
pub use database::DatabaseConfig;
pub use dispatch::{DispatchConfig, RetentionConfig};
pub use guard::{
    CountryLimit, LimitMode, Micros, PriceConfig, SpendConfig, TestNumberConfig, TestOutcome,
    micros,
};
pub use limits::{DestinationsConfig, LimitsConfig, WindowLimit};
pub use log::{LogConfig, LogFormat};
pub use problems::ConfigError;
pub use routing::RouteConfig;
pub use routing::is_e164;
pub use server::{AdminConfig, MIN_HEADER_BYTES, MetricsConfig, ServerConfig};
pub use settings::{
    CarrierSettings, KindSettings, MessageMediaSettings, ReceiptProof, Receipts, SnsSettings,
    TelnyxSettings, Transport, TwilioCredentials, TwilioSettings,
};
pub use signers::SignerConfig;
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
    /// The carriers' typed settings, built from `carriers` once it passed validation.
    #[serde(skip)]
    carrier_settings: BTreeMap<String, CarrierSettings>,
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
