//! smsgate: an Auth0-compatible SMS gateway that durably queues every message in PostgreSQL.
//!
//! A request enters through [`http`], is parsed into [`domain`] types, and waits in [`db`]
//! until a worker hands it to a carrier.

pub mod app;
pub mod audit;
pub mod auth0;
pub mod carriers;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod domain;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod secret;
pub mod telemetry;

pub use app::{App, Database, Role};
pub use config::Config;
