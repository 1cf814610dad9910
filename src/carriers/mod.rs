//! Carriers behind one interface: each kind's folder (`twilio/`, `messagemedia/`, `sns/`,
//! `telnyx/`, `log/`) owns its wire format, credentials, the mapping of its errors into
//! [`FailureClass`]es and what its delivery receipts say; the dispatcher decides from the class
//! alone.

mod breaker;
mod http;
mod log;
pub mod messagemedia;
mod routes;
mod sns;
pub mod telnyx;
pub mod test_numbers;
pub mod twilio;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{CarrierSettings, Config, KindSettings, TestNumberConfig};
use crate::domain::{Channel, MessageId, PhoneNumber};
use crate::metrics::Metrics;

pub use routes::Routes;

/// What a carrier is asked to send.
#[derive(Debug, Clone)]
pub struct OutboundSms {
    pub id: MessageId,
    pub to: PhoneNumber,
    pub body: String,
    /// The request's `sender`; a carrier's configured `from` wins over it.
    pub sender: Option<String>,
    /// The route's `sender`: wins over the carrier's `from` (docs/carriers.md, "Senders").
    pub route_sender: Option<String>,
    /// A text, or a call that speaks the body.
    pub channel: Channel,
    /// The text's locale, for the language a call speaks in.
    pub locale: Option<String>,
    /// What is left of the code's lifetime, for carriers that accept a validity period
    /// (measured on a monotonic clock from the database's `expires_at - now()`).
    pub validity: Duration,
    /// When the code expires, as the database stored it: for carriers that take a time, so
    /// no gateway clock (which may be skewed) moves it.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl OutboundSms {
    /// The senders a carrier may use, in the order they win: the route's, the carrier's own
    /// `from`, the request's (docs/carriers.md, "Senders").
    pub fn senders<'a>(&'a self, carrier_from: Option<&'a str>) -> impl Iterator<Item = &'a str> {
        [
            self.route_sender.as_deref(),
            carrier_from,
            self.sender.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// The carrier took the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub carrier_message_id: Option<String>,
    pub http_status: Option<u16>,
}

/// Why a send failed, as far as routing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The number or the message itself: another carrier would fail too, so the message fails.
    Recipient,
    /// The carrier or our account with it: try the next carrier, retry later.
    Carrier,
    /// The carrier asked us to slow down (429 and the like).
    Throttled,
    /// No answer in time; the message may or may not have been taken.
    Timeout,
}

impl FailureClass {
    /// The outcome name stored with each attempt (and, later, used as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Recipient => "recipient_failure",
            FailureClass::Carrier => "carrier_failure",
            FailureClass::Throttled => "throttled",
            FailureClass::Timeout => "timeout",
        }
    }
}

/// A classified failure with what the carrier told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub class: FailureClass,
    pub http_status: Option<u16>,
    pub code: Option<String>,
    /// Safe to store and log: carrier text, never our credentials.
    pub message: String,
    pub retry_after: Option<Duration>,
    /// No answer came although the request may have reached the carrier (a timeout, or the
    /// connection lost after it was made): the message may have gone out.
    pub unanswered: bool,
}

impl Accepted {
    /// What the carrier said, made storable: see [`storable`].
    fn cleaned(self) -> Self {
        Self {
            carrier_message_id: self
                .carrier_message_id
                .map(|id| storable(&id, MAX_CARRIER_ID_CHARS))
                .filter(|id| !id.is_empty()),
            ..self
        }
    }
}

/// A carrier's message id longer than this is not an id we can look up (real ones are 34-64).
pub const MAX_CARRIER_ID_CHARS: usize = 128;
/// Carrier error texts are kept for people; more than this is noise.
const MAX_CARRIER_TEXT_CHARS: usize = 500;
/// A carrier may ask for a pause; longer than a day is no answer a one-time code can use.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// Text from a carrier as PostgreSQL can store it and a log can show it: control characters
/// (NUL above all: a text column refuses it) dropped, at most `max` characters.
pub fn storable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl SendError {
    /// Bounded and storable, whatever the carrier sent.
    fn cleaned(self) -> Self {
        Self {
            code: self
                .code
                .map(|code| storable(&code, MAX_CARRIER_ID_CHARS))
                .filter(|code| !code.is_empty()),
            message: storable(&self.message, MAX_CARRIER_TEXT_CHARS),
            retry_after: self.retry_after.map(|delay| delay.min(MAX_RETRY_AFTER)),
            ..self
        }
    }

    pub fn new(class: FailureClass, message: impl Into<String>) -> Self {
        Self {
            class,
            http_status: None,
            code: None,
            message: message.into(),
            retry_after: None,
            unanswered: class == FailureClass::Timeout,
        }
    }
}

/// One carrier implementation.
pub trait Carrier: Send + Sync {
    fn send(&self, sms: &OutboundSms) -> impl Future<Output = Result<Accepted, SendError>> + Send;
}

/// The configured implementations, dispatched without boxing.
enum AnyCarrier {
    Log(log::LogCarrier),
    TestNumbers(test_numbers::TestNumbers),
    Twilio(twilio::TwilioCarrier),
    MessageMedia(messagemedia::MessageMediaCarrier),
    Sns(sns::SnsCarrier),
    Telnyx(telnyx::TelnyxCarrier),
}

/// A named carrier with what guards it: the breaker and the per-process rate and
/// concurrency limits.
pub struct CarrierHandle {
    pub name: String,
    client: AnyCarrier,
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
}

impl CarrierHandle {
    async fn build(
        name: &str,
        settings: &CarrierSettings,
        http: &mut http::HttpClients,
        metrics: &Metrics,
    ) -> anyhow::Result<Self> {
        let transport = &settings.transport;
        let callback_url = settings.callback_url.clone();
        let client = match &settings.kind {
            KindSettings::Log => AnyCarrier::Log(log::LogCarrier::new(name)),
            KindSettings::Twilio(twilio) => AnyCarrier::Twilio(twilio::TwilioCarrier::new(
                twilio,
                callback_url,
                transport.timeout,
                http.get(transport.connect_timeout)?,
            )),
            KindSettings::MessageMedia(messagemedia) => {
                AnyCarrier::MessageMedia(messagemedia::MessageMediaCarrier::new(
                    messagemedia,
                    callback_url,
                    transport.timeout,
                    http.get(transport.connect_timeout)?,
                ))
            }
            KindSettings::Sns(sns) => AnyCarrier::Sns(sns::SnsCarrier::new(sns, transport).await),
            KindSettings::Telnyx(telnyx) => AnyCarrier::Telnyx(telnyx::TelnyxCarrier::new(
                telnyx,
                callback_url,
                transport.timeout,
                http.get(transport.connect_timeout)?,
            )),
        };
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
            places_calls: settings.places_calls,
        })
    }

    /// The stand-in that answers for `[[test_numbers]]`: no limits, and a breaker that never
    /// opens (its only failure is a verdict on the number).
    fn test_numbers(numbers: &[TestNumberConfig], metrics: &Metrics) -> Self {
        let name = test_numbers::NAME;
        Self {
            name: name.to_string(),
            client: AnyCarrier::TestNumbers(test_numbers::TestNumbers::new(numbers)),
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
        }
    }

    /// Whether the carrier places calls (`CarrierConfig::places_calls`).
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
        let result = match &self.client {
            AnyCarrier::Log(carrier) => carrier.send(sms).await,
            AnyCarrier::TestNumbers(carrier) => carrier.send(sms).await,
            AnyCarrier::Twilio(carrier) => carrier.send(sms).await,
            AnyCarrier::MessageMedia(carrier) => carrier.send(sms).await,
            AnyCarrier::Sns(carrier) => carrier.send(sms).await,
            AnyCarrier::Telnyx(carrier) => carrier.send(sms).await,
        };
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
    let mut http = http::HttpClients::default();
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
