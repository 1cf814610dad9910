//! The operators' API, for holders of the admin token (the [`Admin`](super::extract::Admin)
//! extractor): messages and carrier switches.

pub mod carriers;
pub mod messages;
