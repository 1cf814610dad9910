//! The message and its parts, parsed once at the edge; no I/O here.

mod classifier;
pub mod json;
mod limit_kind;
mod message;
mod phone;
mod prefix;
pub mod segments;
mod trace;

pub use classifier::{Classification, classify, warm_up};
pub use limit_kind::LimitKind;
pub use message::{
    Assessment, Channel, DeliveryFailure, MessageBody, MessageId, NewMessage, RequestInfo, Status,
    is_bidi_control, redact_digits,
};
pub use phone::{PhoneError, PhoneNumber, parse_country};
pub use prefix::{PrefixTable, longest_match};
pub use segments::{Encoding, Segments, segments};
pub use trace::TraceContext;

/// How metrics and logs name a request no configured signer signed (refused, or unsigned).
pub const NO_SIGNER: &str = "-";
