//! Carriers behind one interface, and the registry of their kinds. Each kind's folder
//! (`twilio/`, `messagemedia/`, `sns/`, `telnyx/`, `log/`) owns its configuration table, its
//! wire format, the mapping of its errors into [`FailureClass`]es and how its delivery
//! receipts are proven and read; the dispatcher decides from the class alone. This file is the
//! one list of kinds ([`KINDS`]): adding one is a folder and two lines here (docs/design.md,
//! "Adding a carrier").

mod breaker;
mod handle;
mod http;
mod outbound;
pub mod receipts;
mod routes;
pub mod test_numbers;

mod log;
pub mod messagemedia;
mod sns;
pub mod telnyx;
pub mod twilio;

use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::config::{CarrierKindConfig, CarrierSettings, Config, ConfigError};

pub use handle::{CarrierHandle, build_all};
pub use http::HttpClients;
pub use outbound::{
    Accepted, Carrier, DynCarrier, FailureClass, MAX_CARRIER_ID_CHARS, MAX_RETRY_AFTER,
    OutboundSms, SendError, storable,
};
pub use receipts::ReceiptCheck;
pub use routes::Routes;

/// Every kind of carrier smsgate knows: what reads the configuration, builds the carriers and
/// mounts the receipt routes.
pub static KINDS: &[&dyn Kind] = &[
    &log::Log,
    &twilio::Twilio,
    &messagemedia::MessageMedia,
    &sns::Sns,
    &telnyx::Telnyx,
];

/// A kind of carrier: its configuration table ([`CarrierKindConfig`]), and what it builds.
pub trait Kind: CarrierKindConfig {
    /// The carrier of a table this kind read.
    fn build<'a>(
        &'a self,
        name: &'a str,
        settings: &'a CarrierSettings,
        http: &'a mut HttpClients,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn DynCarrier>>>;

    /// What proves the delivery receipts of carrier `name`, when it asks for them.
    fn receipts(&self, _name: &str, _settings: &CarrierSettings) -> Option<Arc<dyn ReceiptCheck>> {
        None
    }

    /// The media type of the kind's delivery receipts, for the API's description; `None` for
    /// a kind that sends none.
    fn receipt_media_type(&self) -> Option<&'static str> {
        None
    }
}

/// The kind's own settings type, as its `read` built them.
fn own<T: 'static>(settings: &CarrierSettings) -> anyhow::Result<&T> {
    settings
        .settings
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| anyhow::anyhow!("settings of kind {:?} are not its own", settings.kind))
}

/// The kinds as the configuration reads them.
pub fn kind_configs() -> Vec<&'static dyn CarrierKindConfig> {
    KINDS
        .iter()
        .map(|kind| *kind as &'static dyn CarrierKindConfig)
        .collect()
}

/// Reading a configuration needs every kind, and only this layer knows them: so the two ways
/// to read one are defined here, beside the list.
impl Config {
    /// Loads `path`, applies the environment overrides and validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &kind_configs())
    }

    /// Reads TOML text (tests, examples) with the same overrides and validation.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_with(text, &kind_configs())
    }
}

/// The receipt checks of every carrier that asks for receipts, by name, with its kind.
pub fn receipt_checks(config: &Config) -> Vec<(String, &'static str, Arc<dyn ReceiptCheck>)> {
    let mut checks = Vec::new();
    for (name, settings) in config.carrier_settings() {
        let Some(kind) = KINDS.iter().find(|kind| kind.name() == settings.kind) else {
            continue;
        };
        if let Some(check) = kind.receipts(name, settings) {
            checks.push((name.clone(), kind.name(), check));
        }
    }
    checks
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
api_key = "mm-api-key-8"
api_secret = "mm-secret-5"
[carriers.s]
kind = "sns"
region = "eu-west-1"
access_key_id = "AKIAEXAMPLE"
secret_access_key = "aws-secret-6"
[carriers.x]
kind = "telnyx"
api_token = "telnyx-token-9"
messaging_profile_id = "p"
[[routes]]
prefix = ""
carriers = ["t", "m", "s", "x"]
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
            "telnyx-token-9",
        ] {
            assert!(!debug.contains(secret), "Debug shows {secret}");
            assert!(!printed.contains(secret), "check-config shows {secret}");
        }
        assert!(printed.contains("kind = \"telnyx\""), "{printed}");
        assert!(printed.contains("timeout_ms = 5000"), "{printed}");
    }

    #[test]
    fn every_kind_has_its_own_name() {
        let mut names: Vec<&str> = KINDS.iter().map(|kind| kind.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
    }
}
