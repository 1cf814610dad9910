//! A configured carrier as the dispatcher uses it: the kind's client behind the breaker and
//! the per-process rate and concurrency limits, and the operator's switch.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::http::HttpClients;
use super::{Accepted, DynCarrier, FailureClass, OutboundSms, SendError, breaker, test_numbers};
use crate::config::{CarrierSettings, Config, TestNumberConfig};
use crate::metrics::Metrics;

/// A named carrier with what guards it: the breaker and the per-process rate and
/// concurrency limits.
pub struct CarrierHandle {
    pub name: String,
    client: Box<dyn DynCarrier>,
    breaker: breaker::Breaker,
    /// `max_per_second`, per process (governor keeps no shared state across processes).
    limiter: Option<DefaultDirectRateLimiter>,
    /// `max_in_flight`, per process.
    slots: Option<Arc<Semaphore>>,
    max_in_flight: u128,
    max_per_second: Option<u32>,
    /// Switched off by an operator (`carrier_states`, refreshed every second).
    disabled: std::sync::atomic::AtomicBool,
    /// The longest one call may take (`timeout_ms`): a call starts only while the lease
    /// still covers it.
    pub timeout: Duration,
    /// Whether it places calls: a call is never handed to one that does not.
    places_calls: bool,
    /// Whether a final word on delivery comes for what it took: a receipt, or the silence of
    /// `receipt_timeout`. Only then can a failed delivery be sent again.
    pub awaits_receipts: bool,
    /// `receipt_timeout_seconds`: no final receipt within this long is a route failure.
    pub receipt_timeout: Option<Duration>,
}

impl CarrierHandle {
    async fn build(
        name: &str,
        settings: &CarrierSettings,
        http: &mut HttpClients,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let transport = &settings.transport;
        let kind = super::KINDS
            .iter()
            .find(|kind| kind.name() == settings.kind)
            .ok_or_else(|| anyhow::anyhow!("carriers.{name}: no kind {:?}", settings.kind))?;
        let client = kind.build(name, settings, http).await?;
        let receipts = kind.receipts(name, settings).is_some();
        Ok(Self {
            name: name.to_string(),
            client,
            breaker: breaker::Breaker::new(
                name,
                transport.breaker_failures.get(),
                transport.breaker_cooldown,
                metrics.breaker_open.with_label_values(&[name]),
            ),
            limiter: transport
                .max_per_second
                .map(|rate| RateLimiter::direct(Quota::per_second(rate))),
            slots: transport
                .max_in_flight
                .map(|n| Arc::new(Semaphore::new(n.get() as usize))),
            max_in_flight: u128::from(transport.max_in_flight.map_or(0, NonZeroU32::get)),
            max_per_second: transport.max_per_second.map(NonZeroU32::get),
            disabled: std::sync::atomic::AtomicBool::new(false),
            timeout: transport.timeout,
            places_calls: settings.settings.places_calls(),
            awaits_receipts: receipts || transport.receipt_timeout.is_some(),
            receipt_timeout: transport.receipt_timeout,
        })
    }

    /// The stand-in that answers for `[[test_numbers]]`: no limits, and a breaker that never
    /// opens (its only failure is a verdict on the number).
    fn test_numbers(numbers: &[TestNumberConfig], metrics: &Metrics) -> Self {
        let name = test_numbers::NAME;
        Self {
            name: name.to_string(),
            client: Box::new(test_numbers::TestNumbers::new(numbers)),
            breaker: breaker::Breaker::new(
                name,
                u32::MAX,
                Duration::from_secs(1),
                metrics.breaker_open.with_label_values(&[name]),
            ),
            limiter: None,
            slots: None,
            max_in_flight: 0,
            max_per_second: None,
            disabled: std::sync::atomic::AtomicBool::new(false),
            timeout: Duration::from_secs(1),
            // It answers for calls to test numbers as for texts.
            places_calls: true,
            awaits_receipts: false,
            receipt_timeout: None,
        }
    }

    /// Whether the carrier places calls (its kind says: `KindSettings::places_calls`).
    pub fn calls(&self) -> bool {
        self.places_calls
    }

    /// False while an operator has disabled the carrier or its breaker is open: skip it. True
    /// while half-open means this caller is the probe.
    pub fn allow(&self) -> bool {
        !self.is_disabled() && self.breaker.allow()
    }

    /// When a skipped carrier may be usable again: its breaker's reopening, or `None` when
    /// only an operator can tell (disabled) or a probe is out.
    pub fn usable_in(&self) -> Option<Duration> {
        if self.is_disabled() {
            return None;
        }
        self.breaker.open_for()
    }

    /// How many calls this process can start through the carrier within `window`, at the
    /// worst (every call taking its whole timeout); `None` when the carrier is not capped.
    pub fn starts_within(&self, window: Duration) -> Option<usize> {
        let by_slots = self.slots.is_some().then(|| {
            let per_slot = window.as_millis() / self.timeout.as_millis().max(1);
            (self.max_in_flight * per_slot.max(1)) as usize
        });
        let by_rate = self
            .max_per_second
            .map(|rate| (u128::from(rate) * window.as_millis() / 1000).max(1) as usize);
        match (by_slots, by_rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_disabled(&self, disabled: bool) {
        self.disabled
            .store(disabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits until this process may send through the carrier again (`max_per_second`).
    pub async fn ready(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
    }

    /// Waits for one of the carrier's `max_in_flight` slots; `None` when it has no limit.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        match &self.slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// Sends and tells the breaker how it went.
    pub async fn send(&self, sms: &OutboundSms) -> Result<Accepted, SendError> {
        let result = self.client.send_boxed(sms).await;
        // A recipient failure is a working carrier giving a verdict.
        let carrier_failure = matches!(&result, Err(e) if e.class != FailureClass::Recipient);
        self.breaker.record(carrier_failure);
        result.map(Accepted::cleaned).map_err(SendError::cleaned)
    }
}

/// Every configured carrier, by name.
pub async fn build_all(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<HashMap<String, Arc<CarrierHandle>>> {
    let mut http = HttpClients::default();
    let mut carriers = HashMap::new();
    for (name, settings) in config.carrier_settings() {
        let handle = CarrierHandle::build(name, settings, &mut http, metrics).await?;
        carriers.insert(name.clone(), Arc::new(handle));
    }
    if !config.test_numbers.is_empty() {
        let handle = CarrierHandle::test_numbers(&config.test_numbers, metrics);
        carriers.insert(test_numbers::NAME.to_string(), Arc::new(handle));
    }
    Ok(carriers)
}
