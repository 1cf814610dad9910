//! smsgate: an Auth0-compatible SMS gateway that durably queues every message in PostgreSQL.
//!
//! A request enters through [`http`], is parsed into [`domain`] types, and waits in [`db`]
//! until a worker hands it to a carrier.

/// Every binary linking smsgate (the gateway, the bench that serves it, the tests) allocates
/// with mimalloc (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
