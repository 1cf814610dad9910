//! `[[test_numbers]]`: a stand-in carrier for numbers used in synthetic monitoring and
//! end-to-end tests. Their messages are claimed, limited, recorded and reported like any other,
//! but answered here with the configured outcome: nothing reaches a carrier, nothing is spent.

use std::collections::HashMap;

use super::{Accepted, Carrier, FailureClass, OutboundSms, SendError};
use crate::config::{TestNumberConfig, TestOutcome};

/// The name it is recorded under (attempts, metrics, the status API).
pub const NAME: &str = "test_numbers";

pub struct TestNumbers {
    outcomes: HashMap<String, TestOutcome>,
}

impl TestNumbers {
    pub fn new(numbers: &[TestNumberConfig]) -> Self {
        Self {
            outcomes: numbers
                .iter()
                .map(|t| (t.number.clone(), t.outcome))
                .collect(),
        }
    }
}

impl Carrier for TestNumbers {
    async fn send(&self, sms: &OutboundSms) -> Result<Accepted, SendError> {
        match self.outcomes.get(sms.to.as_str()) {
            Some(TestOutcome::Sent) => {
                tracing::info!(id = %sms.id, to = %sms.to.masked(), "test number: recorded as sent");
                Ok(Accepted {
                    carrier_message_id: Some(format!("test-{}", sms.id)),
                    http_status: None,
                })
            }
            // A verdict on the number, as a carrier refusing it gives: no retry, no failover.
            _ => Err(SendError::new(
                FailureClass::Recipient,
                "test number configured to fail",
            )),
        }
    }
}
