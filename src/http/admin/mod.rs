//! The operators' API, for holders of the admin token (the [`Admin`](super::extract::Admin)
//! extractor): messages, carrier switches and today's spend.

pub mod carriers;
pub mod messages;
pub(crate) mod params;
pub mod spend;
