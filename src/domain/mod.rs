//! The message and its parts, parsed once at the edge; no I/O here.

mod classifier;
mod message;
mod phone;
pub mod segments;

pub use classifier::{Classification, classify};
pub use message::{
    Assessment, Channel, MessageBody, MessageId, NewMessage, RequestInfo, Status, is_bidi_control,
    redact_digits,
};
pub use phone::{PhoneError, PhoneNumber, parse_country};
pub use segments::{Encoding, Segments, segments};

/// How metrics and logs name a request no configured signer signed (refused, or unsigned).
pub const NO_SIGNER: &str = "-";
