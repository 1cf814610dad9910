//! The message and its parts, parsed once at the edge; no I/O here.

mod message;
mod phone;

pub use message::{MessageBody, MessageId, NewMessage, RequestInfo, Status, redact_digits};
pub use phone::{PhoneError, PhoneNumber, parse_country};
