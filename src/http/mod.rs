//! The HTTP boundary: the Auth0 ingress, delivery receipts, the operators' API and health
//! checks; the checks every handler of a kind shares are extractors (`extract`).

mod admin;
pub mod callbacks;
mod counting;
mod error;
mod extract;
mod health;
mod in_flight;
mod ingress;
mod metrics;
pub mod openapi;
mod phone_provider;
pub mod server;
mod verifications;

use std::sync::Arc;

use crate::db::Db;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::auth0::Verifier;
use crate::db::batcher::Batcher;
use crate::db::wake::Wake;
use crate::limits::destinations::DestinationPolicy;
use crate::limits::ingress::SpendCeiling;
use crate::limits::pricing::Pricing;
use crate::metrics::Metrics;
use crate::secret::Secret;

pub use error::ApiError;
pub use extract::MAX_REQUEST_BYTES;
pub use in_flight::InFlight;
pub use ingress::parse_request;
pub use metrics::{MetricsState, metrics_router};

/// What every request handler shares. The router clones it for each request, so it is one
/// reference count, not one per handle.
#[derive(Clone)]
pub struct AppState(Arc<AppHandles>);

impl AppState {
    pub fn new(handles: AppHandles) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppHandles;

    fn deref(&self) -> &AppHandles {
        &self.0
    }
}

/// The handles behind `AppState`.
pub struct AppHandles {
    pub pool: Db,
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
    /// Group-commit writer of accepted messages (and judge of the ingress's limits).
    pub batcher: Batcher,
    pub destinations: Arc<DestinationPolicy>,
    /// `[[prices]]` and `[[test_numbers]]`: each message's estimate at the ingress.
    pub pricing: Arc<Pricing>,
    /// The configuration, for what the routes can do (a call needs a carrier that calls).
    pub config: Arc<crate::config::Config>,
    /// `[spend]`'s daily ceilings, for `GET /v1/spend`.
    pub spend: SpendCeiling,
    /// A limit needs each message's country (found with the full number parser).
    pub need_country: bool,
    pub require_request_info: bool,
    pub in_flight: InFlight,
    /// How long a request waits for a writer to take its message before it gets 503
    /// (`database.acquire_timeout_ms`).
    pub store_wait: std::time::Duration,
    /// How each carrier's delivery receipts are proven.
    pub callbacks: Arc<callbacks::CallbackKeys>,
    /// The configured carriers' names (operators switch them on and off).
    pub carriers: Arc<std::collections::BTreeSet<String>>,
    /// `/readyz`'s last verdict, reused for a second.
    pub readiness: Arc<health::Readiness>,
    /// What each route delivered, counted by this process until it is added to the table.
    pub route_stats: crate::db::route_stats::RouteStats,
}

/// The public listener: its routes, hardened, and the ingress counted around all of it.
pub fn public_router(
    state: AppState,
    admin_apart: bool,
    request_timeout: std::time::Duration,
) -> Router {
    let counter = counting::IngressCounter {
        metrics: state.metrics.clone(),
        accept_messages: state.accept_messages,
    };
    let counting = axum::middleware::from_fn_with_state(counter, counting::count_ingress);
    let ingress = ingress_routes(state.clone(), request_timeout);
    answer_strays_in_json(ingress.merge(harden(router(state, admin_apart), request_timeout)))
        .layer(counting)
}

/// The ingress routes. No timeout layer cuts them: once a writer has taken a message, the
/// answer is that write's true outcome, so a 408 never hides a stored message. The request
/// must be received within `request_timeout` (`ReceiveBy`, read by the body extractor); the
/// wait for a writer is bounded by `database.acquire_timeout_ms`, the write by the statement
/// timeout.
fn ingress_routes(state: AppState, request_timeout: std::time::Duration) -> Router {
    if !state.accept_messages {
        return Router::new();
    }
    Router::new()
        .route(
            "/v1/auth0/sms",
            post(|state, caller, answer_by, headers, body| {
                ingress::accept_with(parse_request, state, caller, answer_by, headers, body)
            }),
        )
        .route(
            "/v1/auth0/phone-provider",
            post(|state, caller, answer_by, headers, body| {
                let parse: ingress::Parser = phone_provider::parse_action_request;
                ingress::accept_with(parse, state, caller, answer_by, headers, body)
            }),
        )
        .route("/v1/verifications", post(verifications::verified))
        .route_layer(axum::middleware::from_fn_with_state(
            request_timeout,
            extract::stamp_receive_by,
        ))
        .layer(catch_panics())
        .with_state(state)
}

/// The public listener's other routes; with `admin_apart`, without the admin routes (404
/// there).
fn router(state: AppState, admin_apart: bool) -> Router {
    // One receipt route per kind of the registry, with its name as a literal segment (a
    // percent-encoded one is not the same path, and stays a 404).
    let mut router = Router::new();
    for kind in crate::carriers::KINDS.iter().map(|kind| kind.name()) {
        router = router.route(
            &format!("/v1/callbacks/{kind}/{{carrier}}"),
            post(move |state, carrier, query, headers, body| {
                callbacks::receive(kind, state, carrier, query, headers, body)
            }),
        );
    }
    let router = router
        .route("/livez", get(health::livez))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    let router = if admin_apart {
        router
    } else {
        with_admin_routes(router).route("/openapi.json", get(openapi::served))
    };
    router.with_state(state)
}

/// The admin listener's routes (`admin.listen`), with its own health checks.
pub fn admin_router(state: AppState) -> Router {
    answer_strays_in_json(
        with_admin_routes(Router::new())
            .route("/openapi.json", get(openapi::served_apart))
            .route("/livez", get(health::livez))
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .with_state(state),
    )
}

/// An unknown route (404) or a method a route does not answer (405, its `Allow` header kept)
/// gets the API's JSON error like any other refusal, not axum's empty body. Set on the whole
/// router, after every route is in: the method fallback reaches only routes added before it.
fn answer_strays_in_json(router: Router) -> Router {
    router
        .fallback(|| async { stray(ApiError::RouteNotFound) })
        .method_not_allowed_fallback(|| async { stray(ApiError::MethodNotAllowed) })
}

/// The router's own answer: it never reached the ingress, so the ingress counts nothing.
fn stray(error: ApiError) -> axum::response::Response {
    let mut response = axum::response::IntoResponse::into_response(error);
    response.extensions_mut().remove::<error::Outcome>();
    response
}

/// Operators' routes: the status API and the carrier switches (admin token).
fn with_admin_routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/v1/messages", get(admin::messages::list_messages))
        .route(
            "/v1/carriers/{name}/{action}",
            post(admin::carriers::switch_carrier),
        )
        .route("/v1/messages/{id}", get(admin::messages::show_message))
        .route("/v1/spend", get(admin::spend::spend_today))
        .route("/v1/carriers/stats", get(admin::carriers::carrier_stats))
}

/// What every public route gets: a whole-request timeout (408), a panic turned into a 500
/// instead of a dropped connection, and Auth0-style bodies on both.
pub fn harden(router: Router, request_timeout: std::time::Duration) -> Router {
    router
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(axum::middleware::map_response(explain_timeout))
        .layer(catch_panics())
}

/// A panicking handler answers 500 with an Auth0-style body instead of dropping the connection.
fn catch_panics() -> CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    CatchPanicLayer::custom(|_| {
        tracing::error!("a request handler panicked; answering 500");
        ApiError::Internal.into_response()
    })
}

/// The timeout layer answers with an empty body; callers get the same JSON as for any error.
async fn explain_timeout(response: Response) -> Response {
    if response.status() == StatusCode::REQUEST_TIMEOUT {
        ApiError::Timeout.into_response()
    } else {
        response
    }
}
