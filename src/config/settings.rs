//! A carrier as the rest of smsgate sees it: how it is reached (counts that cannot be zero)
//! and its kind's own settings, checked by the kind. Built only from a `[carriers.<name>]`
//! table that passed validation, so no carrier checks its configuration again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use super::carriers::{KindSettings, TransportConfig};

/// A carrier's settings: its kind, how it is reached, and its kind's own.
#[derive(Debug, Clone)]
pub struct CarrierSettings {
    /// The kind's name (`kind = "…"`).
    pub kind: String,
    pub transport: Transport,
    pub settings: Arc<dyn KindSettings>,
}

/// Timeouts, limits and the circuit breaker, shared by every kind.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_per_second: Option<NonZeroU32>,
    pub max_in_flight: Option<NonZeroU32>,
    pub breaker_failures: NonZeroU32,
    pub breaker_cooldown: Duration,
    /// No final receipt within this long is a silent route failure; none = wait.
    pub receipt_timeout: Option<Duration>,
}

impl From<&TransportConfig> for Transport {
    /// Validation refused zero counts; one that slipped through means "no limit".
    fn from(config: &TransportConfig) -> Self {
        Self {
            connect_timeout: config.connect_timeout_ms.duration(),
            timeout: config.timeout_ms.duration(),
            max_per_second: config.max_per_second.and_then(NonZeroU32::new),
            max_in_flight: config.max_in_flight.and_then(NonZeroU32::new),
            breaker_failures: config.breaker_failures,
            breaker_cooldown: config.breaker_cooldown_seconds.duration(),
            receipt_timeout: config.receipt_timeout_seconds.map(|s| s.duration()),
        }
    }
}
