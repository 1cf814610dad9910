//! A carrier's delivery receipts as the callback route sees them. A kind that asks for
//! receipts gives, per carrier, a [`ReceiptCheck`]: how a request to
//! `/v1/callbacks/<kind>/<name>` is proven and what its report says. The route
//! (`http::callbacks`) finds the carrier, runs the check and applies the verdict, the same way
//! for every kind.

use reqwest::header::HeaderMap;

pub use crate::domain::DeliveryFailure;
use crate::domain::Status;

/// A callback as it arrived.
pub struct CallbackRequest {
    /// The carrier's name, from the path.
    pub carrier: String,
    /// The query as sent (undecoded), if any.
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl CallbackRequest {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|value| value.as_bytes())
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// What a proven report says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub carrier_message_id: String,
    /// The final state it reports, or `None` for an intermediate one (queued, sent, …).
    pub verdict: Option<Status>,
    pub error_code: Option<String>,
    /// Why it was not delivered, when the verdict is `Undelivered`.
    pub failure: Option<DeliveryFailure>,
}

/// A request whose proof holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Proven,
    /// Proven if it was signed (at `signed_at`, Unix seconds) within `tolerance_seconds` of the
    /// database's clock, which the route reads: an old request is a replay.
    SignedAt {
        signed_at: i64,
        tolerance_seconds: i64,
    },
}

/// How one carrier's receipts are proven and read.
pub trait ReceiptCheck: Send + Sync {
    /// Whether proving `request` takes real work (an RSA signature): the route then runs
    /// [`ReceiptCheck::prove`] on the blocking pool, one at a time. An error refuses the
    /// request before that work.
    fn costly(&self, _request: &CallbackRequest) -> Result<bool, &'static str> {
        Ok(false)
    }
    /// The request's proof, or why it is refused (logged, never shown to the caller).
    fn prove(&self, request: &CallbackRequest) -> Result<Proof, &'static str>;
    /// The report of a proven request, or why it cannot be read (shown to the caller).
    fn read(&self, body: &[u8]) -> Result<Receipt, String>;
}

/// Where carrier `name` of `kind` sends its receipts: `public_url` (without a trailing slash)
/// and `/v1/callbacks/<kind>/<name>`, the route the HTTP server mounts for every kind.
pub fn callback_url(public_url: &str, kind: &str, name: &str) -> String {
    format!(
        "{}/v1/callbacks/{kind}/{name}",
        public_url.trim_end_matches('/')
    )
}
