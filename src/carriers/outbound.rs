//! What a carrier is asked and what it answers: the message, its acceptance, and a failure
//! classified for routing (the dispatcher decides from the class alone).

use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::domain::{Channel, MessageId, PhoneNumber};

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
    /// This call's place in the message's trace (a child of the ingress's span): HTTP
    /// carriers send it as `traceparent`.
    pub trace: Option<crate::domain::TraceContext>,
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
    pub(super) fn cleaned(self) -> Self {
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
    pub(super) fn cleaned(self) -> Self {
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

/// A [`Carrier`] behind a pointer: what a kind builds, so nothing outside the kind's folder
/// names its type.
pub trait DynCarrier: Send + Sync {
    fn send_boxed<'a>(&'a self, sms: &'a OutboundSms)
    -> BoxFuture<'a, Result<Accepted, SendError>>;
}

impl<C: Carrier> DynCarrier for C {
    fn send_boxed<'a>(
        &'a self,
        sms: &'a OutboundSms,
    ) -> BoxFuture<'a, Result<Accepted, SendError>> {
        Box::pin(self.send(sms))
    }
}
