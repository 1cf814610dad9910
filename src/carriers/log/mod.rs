//! The development carrier: nothing leaves the machine; the message is logged with its code
//! masked and recorded as sent. Its table takes no keys of its own.

use std::any::Any;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::{Accepted, Carrier, DynCarrier, HttpClients, Kind, OutboundSms, SendError};
use crate::config::{CarrierKindConfig, CarrierSettings, Found, KindKeys, KindSettings};
use crate::domain::redact_digits;
use crate::secret::Secret;

/// The kind, as the registry lists it.
pub struct Log;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LogTable {}

#[derive(Debug)]
struct LogSettings;

impl KindSettings for LogSettings {
    fn secrets(&self) -> Vec<(&'static str, &Secret)> {
        Vec::new()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl CarrierKindConfig for Log {
    fn name(&self) -> &'static str {
        "log"
    }

    fn read(&self, _name: &str, keys: &KindKeys) -> (Arc<dyn KindSettings>, Found) {
        let (_, found): (LogTable, Found) = keys.read();
        (Arc::new(LogSettings), found)
    }
}

impl Kind for Log {
    fn build<'a>(
        &'a self,
        name: &'a str,
        _settings: &'a CarrierSettings,
        _http: &'a mut HttpClients,
    ) -> BoxFuture<'a, anyhow::Result<Box<dyn DynCarrier>>> {
        Box::pin(async move { Ok(Box::new(LogCarrier::new(name)) as Box<dyn DynCarrier>) })
    }
}

pub struct LogCarrier {
    name: String,
}

impl LogCarrier {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
        }
    }
}

impl Carrier for LogCarrier {
    async fn send(&self, sms: &OutboundSms) -> Result<Accepted, SendError> {
        tracing::info!(
            carrier = %self.name,
            id = %sms.id,
            to = %sms.to.masked(),
            body = %redact_digits(&sms.body),
            "log carrier: message recorded as sent"
        );
        Ok(Accepted {
            carrier_message_id: Some(format!("log-{}", sms.id)),
            http_status: None,
        })
    }
}
