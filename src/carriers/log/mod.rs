//! The development carrier: nothing leaves the machine; the message is logged with its code
//! masked and recorded as sent.

use super::{Accepted, Carrier, OutboundSms, SendError};
use crate::domain::redact_digits;

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
