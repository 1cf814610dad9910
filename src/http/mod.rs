//! The public listener: Auth0 ingress, the status API and health checks.

mod error;
mod health;
mod ingress;
mod metrics;
mod status;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use sqlx::PgPool;

use crate::auth0::Verifier;
use crate::db::batcher::Batcher;
use crate::dispatch::wake::Wake;
use crate::metrics::Metrics;
use crate::secret::Secret;

pub use error::ApiError;
pub use ingress::MAX_REQUEST_BYTES;
pub use metrics::{MetricsState, metrics_router};

/// Cheap handles shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub verifier: Arc<Verifier>,
    /// True only with `server.allow_unauthenticated` and no signer configured.
    pub accept_unsigned: bool,
    /// Shared, not copied: the state is cloned for every request.
    pub admin_token: Option<Arc<Secret>>,
    pub message_ttl_seconds: u32,
    /// Told after each commit, so workers send without waiting for a poll.
    pub wake: Wake,
    /// False for `--role worker`: the ingress route is not served.
    pub accept_messages: bool,
    pub metrics: Metrics,
    /// Group-commit writer of accepted messages.
    pub batcher: Batcher,
}

pub fn router(state: AppState) -> Router {
    let router = if state.accept_messages {
        Router::new().route("/v1/auth0/sms", post(ingress::accept_sms))
    } else {
        Router::new()
    };
    router
        .route("/v1/messages/{id}", get(status::show_message))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}
