//! The one error type of the HTTP boundary: Auth0-style JSON bodies, never internals.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::auth0::TokenError;
use crate::db::batcher::EnqueueError;
use crate::limits::destinations::Refusal;
use crate::limits::ingress::{Limited, OverSpend};

/// Every way a request can be refused; each maps to one status and error code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(TokenError),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("the request body could not be read")]
    UnreadableBody,
    /// Not the JSON the route takes; the description names the field, never its value.
    #[error("{0}")]
    MalformedJson(String),
    #[error("{description}")]
    InvalidField {
        code: &'static str,
        description: String,
    },
    #[error("{0}")]
    RateLimited(Limited),
    #[error("{0}; try again tomorrow (UTC)")]
    OverSpend(OverSpend),
    #[error("too many requests of this signer are in flight; try again")]
    TooManyInFlight,
    #[error("{0}")]
    Blocked(Refusal),
    #[error("req.ip is required: enable forward_req_info on the Auth0 connection")]
    MissingRequestInfo,
    #[error("the admin token is missing or wrong")]
    AdminUnauthorized,
    #[error("the status API is disabled: set admin.token to enable it")]
    AdminDisabled,
    #[error("no message with this id")]
    NotFound,
    #[error("no carrier with this name is configured")]
    CarrierNotFound,
    #[error("no such route")]
    RouteNotFound,
    #[error("this route does not answer this method")]
    MethodNotAllowed,
    #[error("the callback's signature or key does not match this carrier's")]
    ForgedCallback,
    #[error("this Idempotency-Key was already used for a different message")]
    IdempotencyKeyReused,
    #[error("the request was not completed in time")]
    Timeout,
    #[error("internal error; nothing was stored")]
    Internal,
    /// The cause is logged by whoever builds this; the caller only learns to try again.
    #[error("{0}")]
    Unavailable(&'static str),
}

/// What an error leaves on its response for the ingress's counters: its `outcome`, and the
/// limit that refused it.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub outcome: &'static str,
    pub limit_scope: Option<&'static str>,
}

/// A database failure: logged here, once; the caller only learns to try again.
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        tracing::error!(error = %err, "the database failed a request; answering 503");
        ApiError::Unavailable("the database is unavailable; try again")
    }
}

/// Why the batch writer did not store a message: logged here, once.
impl From<EnqueueError> for ApiError {
    fn from(err: EnqueueError) -> Self {
        match err {
            EnqueueError::Limited(limited) => {
                tracing::warn!(reason = %limited, "ingress refused a request: rate limited");
                ApiError::RateLimited(limited)
            }
            EnqueueError::OverSpend(over) => {
                tracing::warn!(
                    reason = %over,
                    limit = crate::limits::pricing::amount(over.limit),
                    spent = crate::limits::pricing::amount(over.spent),
                    "ingress refused a request: spend ceiling"
                );
                ApiError::OverSpend(over)
            }
            EnqueueError::KeyReused => ApiError::IdempotencyKeyReused,
            EnqueueError::KeyUnresolved => {
                // A repeat whose message retention removed meanwhile: a retry is a new request.
                tracing::warn!("a repeated request's message is gone; answering 503");
                ApiError::Unavailable(
                    "the request's earlier message is gone; nothing was queued, try again",
                )
            }
            EnqueueError::TimedOut => {
                tracing::warn!("no database connection was free in time; answering 503");
                ApiError::Unavailable("the database is busy; nothing was queued, try again")
            }
            EnqueueError::Unconfirmed => {
                tracing::error!("the database did not confirm a write in time; answering 503");
                ApiError::Unavailable(
                    "the database did not confirm the message in time; it may have been \
                     stored, try again",
                )
            }
            err => {
                // A connection lost after the commit reaches here too: no promise either way.
                tracing::error!(error = %err, "cannot store message; answering 503");
                ApiError::Unavailable("the message could not be stored; try again")
            }
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ErrorBody {
    /// A stable code (`invalid_token`, `too_many_requests`, …).
    error: &'static str,
    /// In words, for people; never quotes the request's values.
    error_description: String,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) | ApiError::AdminUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnreadableBody
            | ApiError::MalformedJson(_)
            | ApiError::InvalidField { .. }
            | ApiError::MissingRequestInfo => StatusCode::BAD_REQUEST,
            ApiError::RateLimited(_) | ApiError::TooManyInFlight | ApiError::OverSpend(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::AdminDisabled | ApiError::Blocked(_) | ApiError::ForgedCallback => {
                StatusCode::FORBIDDEN
            }
            ApiError::NotFound | ApiError::CarrierNotFound | ApiError::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `outcome` label of `smsgate_ingress_requests_total`.
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) | ApiError::AdminUnauthorized => "unauthorized",
            ApiError::PayloadTooLarge(_) => "too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::RateLimited(_) | ApiError::TooManyInFlight | ApiError::OverSpend(_) => {
                "rate_limited"
            }
            ApiError::Blocked(_) => "blocked",
            ApiError::Timeout => "timeout",
            ApiError::Internal => "error",
            _ => "invalid",
        }
    }

    /// The `scope` of `smsgate_rate_limited_total` a refusal counts under.
    pub fn limit_scope(&self) -> Option<&'static str> {
        match self {
            ApiError::RateLimited(Limited { kind, .. }) => Some(kind.refusal_scope()),
            ApiError::OverSpend(over) => Some(over.scope()),
            ApiError::TooManyInFlight => Some("in_flight"),
            _ => None,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(TokenError::Missing | TokenError::NotBearer) => "unauthorized",
            ApiError::Unauthorized(_) => "invalid_token",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnreadableBody => "invalid_request",
            ApiError::MalformedJson(_) => "invalid_json",
            ApiError::InvalidField { code, .. } => code,
            ApiError::RateLimited(_) | ApiError::TooManyInFlight => "too_many_requests",
            ApiError::OverSpend(_) => "spend_limit_reached",
            ApiError::Blocked(_) => "destination_blocked",
            ApiError::MissingRequestInfo => "missing_request_info",
            ApiError::AdminUnauthorized => "unauthorized",
            ApiError::AdminDisabled => "forbidden",
            ApiError::NotFound | ApiError::RouteNotFound => "not_found",
            ApiError::CarrierNotFound => "carrier_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unavailable(_) => "temporarily_unavailable",
            ApiError::ForgedCallback => "invalid_signature",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::Timeout => "request_timeout",
            ApiError::Internal => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::RateLimited(limited) => limited.retry_after_seconds(),
            ApiError::OverSpend(over) => over.retry_after_seconds(),
            _ => 1,
        };
        let body = ErrorBody {
            error: self.code(),
            error_description: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(Outcome {
            outcome: self.metric_outcome(),
            limit_scope: self.limit_scope(),
        });
        match status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

/// What the ingress routes refuse; nothing is stored for any of them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum IngressRefusals {
    /// Not the JSON this route takes, or a field is invalid
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// The bearer token is missing or does not verify
    #[response(status = 401, headers(("WWW-Authenticate" = String)))]
    Unauthorized(ErrorBody),
    /// The destination is blocked by policy
    #[response(status = 403)]
    Blocked(ErrorBody),
    /// The request was not received in time
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// The body is larger than 16 KiB
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Content-Type is not application/json
    #[response(status = 415)]
    NotJson(ErrorBody),
    /// The Idempotency-Key was used for another message
    #[response(status = 422)]
    KeyReused(ErrorBody),
    /// A limit refused it
    #[response(status = 429, headers(("Retry-After" = u64, description = "Seconds until it may pass")))]
    Limited(ErrorBody),
    /// Internal error
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The database is unavailable
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(ErrorBody),
}

/// What the status and operator API refuses.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum AdminRefusals {
    /// A query parameter is unknown, repeated or invalid
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// The admin token is missing or wrong
    #[response(status = 401, headers(("WWW-Authenticate" = String)))]
    Unauthorized(ErrorBody),
    /// The status API is off (no `admin.token`)
    #[response(status = 403)]
    Disabled(ErrorBody),
    /// No such message or carrier
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The request was not completed in time
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// Internal error
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The database is unavailable
    #[response(status = 503, headers(("Retry-After" = u64, description = "Seconds to wait")))]
    Unavailable(ErrorBody),
}
