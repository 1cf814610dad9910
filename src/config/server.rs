//! `[server]`, `[metrics]` and `[admin]`: the listeners, their limits and the admin token's
//! place, with their defaults and checks.

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use super::units::count;
use super::{Config, Millis};
use crate::secret::Secret;

/// hyper refuses a read buffer smaller than this (`server.max_header_bytes`).
pub const MIN_HEADER_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Ingress, health and status API.
    pub listen: SocketAddr,
    /// Must be set explicitly to run without any `[auth0.*]` signer.
    pub allow_unauthenticated: bool,
    /// Refuse requests without `req.ip` (the connection's `forward_req_info` is off), so IP
    /// limits cannot be bypassed by a misconfigured connection.
    pub require_request_info: bool,
    /// Open connections at most; further clients wait in the kernel's accept queue.
    pub max_connections: NonZeroUsize,
    /// A request's headers must arrive within this; slower connections are closed.
    pub header_timeout_ms: Millis,
    /// Request line and headers together (at least 8192); larger ones get 431.
    pub max_header_bytes: usize,
    /// A whole request (body included) must be answered within this, or it gets 408; an
    /// ingress request must have arrived within it (its write then decides the answer).
    pub request_timeout_ms: Millis,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allow_unauthenticated: false,
            require_request_info: false,
            max_connections: count(1024),
            header_timeout_ms: Millis::new(5000),
            max_header_bytes: 16 * 1024,
            request_timeout_ms: Millis::new(15_000),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus endpoint, kept off the public listener.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of the status API; none disables that API.
    pub token: Option<Secret>,
    /// When set, the admin routes (`/v1/messages…`, `/v1/carriers/…`) are served here only,
    /// and the public listener answers 404 for them.
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// The admin token and which listener is where.
    pub(super) fn validate_listeners(&self, problem: &mut impl FnMut(String, String)) {
        if self.admin.token.as_ref().is_some_and(|t| t.is_empty()) {
            problem(
                "admin.token".into(),
                "must not be empty; remove it to disable the status API".into(),
            );
        }
        if let Some(admin) = self.admin.listen
            && admin.port() != 0
            && (admin == self.server.listen || admin == self.metrics.listen)
        {
            problem(
                "admin.listen".into(),
                "must differ from server.listen and metrics.listen".into(),
            );
        }
        if self.metrics.listen == self.server.listen && self.server.listen.port() != 0 {
            problem(
                "metrics.listen".into(),
                "must differ from server.listen".into(),
            );
        }
    }

    pub(super) fn validate_server(&self, problem: &mut impl FnMut(String, String)) {
        let s = &self.server;
        if s.max_header_bytes < MIN_HEADER_BYTES {
            problem(
                "server.max_header_bytes".into(),
                format!("must be at least {MIN_HEADER_BYTES}"),
            );
        }
    }
}
