//! `[carriers.<name>]` of kind "sns": its keys, their checks, and the settings they give.

use std::any::Any;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::checks::{REQUIRED, has, url};
use crate::config::{CarrierKindConfig, Found, KindKeys, KindSettings};
use crate::config::{optional_string, problem};
use crate::secret::Secret;

/// The kind, as the registry lists it.
pub struct Sns;

/// The table's own keys, as written.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SnsTable {
    #[serde(default, deserialize_with = "optional_string")]
    region: Option<String>,
    /// A VPC endpoint or a local stand-in; the public SNS endpoint when absent.
    #[serde(default, deserialize_with = "optional_string")]
    endpoint_url: Option<String>,
    /// `AWS.SNS.SMS.SenderID`.
    #[serde(default, deserialize_with = "optional_string")]
    sender_id: Option<String>,
    /// Static credentials; without them the standard AWS credential chain is used.
    #[serde(default, deserialize_with = "optional_string")]
    access_key_id: Option<String>,
    #[serde(default)]
    secret_access_key: Option<Secret>,
    /// `AWS.MM.SMS.OriginationNumber`.
    #[serde(default, deserialize_with = "optional_string")]
    from: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SnsSettings {
    pub region: String,
    pub endpoint_url: Option<String>,
    pub sender_id: Option<String>,
    pub origination_number: Option<String>,
    /// `(access_key_id, secret_access_key)`; the AWS credential chain otherwise.
    pub static_credentials: Option<(String, Secret)>,
}

impl KindSettings for SnsSettings {
    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        self.static_credentials
            .iter()
            .map(|(_, secret)| ("secret_access_key", secret))
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CarrierKindConfig for Sns {
    fn name(&self) -> &'static str {
        "sns"
    }

    fn read(&self, _name: &str, keys: &KindKeys) -> (Arc<dyn KindSettings>, Found) {
        let (table, mut found): (SnsTable, Found) = keys.read();
        if !has(&table.region) {
            found.push(problem("region", REQUIRED));
        }
        if table.access_key_id.is_some() != table.secret_access_key.is_some() {
            found.push(problem(
                "secret_access_key",
                "access_key_id and secret_access_key go together",
            ));
        }
        found.extend(url("endpoint_url", &table.endpoint_url));
        let settings = Arc::new(SnsSettings {
            region: table.region.unwrap_or_default(),
            endpoint_url: table.endpoint_url,
            sender_id: table.sender_id,
            origination_number: table.from,
            // Both or neither once valid; a secret without its id is still a secret.
            static_credentials: table
                .secret_access_key
                .map(|secret| (table.access_key_id.unwrap_or_default(), secret)),
        });
        (settings, found)
    }
}
