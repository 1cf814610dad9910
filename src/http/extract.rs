//! The checks every handler of a kind shares, as extractors that refuse with [`ApiError`]:
//! the Auth0 caller (a verified bearer token and an in-flight slot), the admin token, and a
//! bounded JSON body, parsed into a JSON object by [`json_object`]. A handler that takes one
//! cannot forget its check.

use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, AppState};

/// Auth0's requests are well under 1 KiB; the limit leaves room for a long template.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// The Auth0 signer whose token the request carries (`None` when unsigned requests are
/// allowed), holding one of that signer's in-flight slots until the request ends.
pub struct Caller {
    pub signer: Option<String>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let signer = if state.accept_unsigned {
            None
        } else {
            let header = parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            let name = state.verifier.verify_header(header).map_err(|reason| {
                // The reason only: the header itself may carry carrier credentials.
                tracing::warn!(%reason, "ingress refused a token");
                ApiError::Unauthorized(reason)
            })?;
            if let Some(slot) = parts.extensions.get::<super::counting::SignerSlot>() {
                slot.record(name);
            }
            Some(name.to_string())
        };
        let slot = state.in_flight.enter(signer.as_deref()).map_err(|_| {
            tracing::warn!(
                signer = signer.as_deref().unwrap_or("-"),
                "ingress refused a request: limits.max_in_flight reached"
            );
            ApiError::TooManyInFlight
        })?;
        Ok(Self {
            signer,
            _slot: slot,
        })
    }
}

/// The holder of `admin.token`, compared in constant time.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let expected = state.admin_token.as_ref().ok_or(ApiError::AdminDisabled)?;
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(ApiError::AdminUnauthorized)?;
        // Constant time, so response timing does not reveal how much of a guess was right.
        let right = presented
            .trim()
            .as_bytes()
            .ct_eq(expected.expose().as_bytes());
        if bool::from(right) {
            Ok(Admin)
        } else {
            Err(ApiError::AdminUnauthorized)
        }
    }
}

/// A body declared `application/json` (parameters such as `charset` allowed), read whole up
/// to [`MAX_REQUEST_BYTES`].
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let read = read_body(&parts.headers, body);
        match parts.extensions.get::<ReceiveBy>() {
            Some(ReceiveBy(deadline)) => tokio::time::timeout_at(*deadline, read)
                .await
                .map_err(|_| ApiError::Timeout)?,
            None => read.await,
        }
        .map(JsonBytes)
    }
}

/// When an ingress request must have arrived whole: `server.request_timeout_ms` after it began.
#[derive(Debug, Clone, Copy)]
pub struct ReceiveBy(pub tokio::time::Instant);

/// When an ingress request must be answered, whatever its write is doing: Auth0 gives up
/// after 30 s, and an answer it never reads helps nobody.
#[derive(Debug, Clone, Copy)]
pub struct AnswerBy(pub tokio::time::Instant);

/// Auth0 waits 30 s for the gateway; this leaves it time to read the answer.
pub const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(25);

impl<S: Send + Sync> FromRequestParts<S> for AnswerBy {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<AnswerBy>()
            .copied()
            .unwrap_or_else(|| AnswerBy(tokio::time::Instant::now() + ANSWER_WITHIN)))
    }
}

/// Stamps the request with its deadlines: `ReceiveBy` for its body, `AnswerBy` for its answer
/// (never before the body's deadline, with a few seconds for the write).
pub async fn stamp_receive_by(
    axum::extract::State(request_timeout): axum::extract::State<std::time::Duration>,
    mut request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let now = tokio::time::Instant::now();
    let answer_within = ANSWER_WITHIN.max(request_timeout + std::time::Duration::from_secs(5));
    request
        .extensions_mut()
        .insert(ReceiveBy(now + request_timeout));
    request
        .extensions_mut()
        .insert(AnswerBy(now + answer_within));
    next.run(request).await
}

/// The body, whatever its type, up to [`MAX_REQUEST_BYTES`]: a declared length over it is
/// refused before a byte is read.
pub async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_REQUEST_BYTES as u64) {
        return Err(ApiError::PayloadTooLarge(MAX_REQUEST_BYTES));
    }
    to_bytes(body, MAX_REQUEST_BYTES).await.map_err(|err| {
        let over_limit = std::error::Error::source(&err)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if over_limit {
            ApiError::PayloadTooLarge(MAX_REQUEST_BYTES)
        } else {
            ApiError::UnreadableBody
        }
    })
}

/// The body as the JSON object `T`, refused as malformed JSON in words that never repeat a
/// value ([`crate::domain::json::object`]).
pub fn json_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    crate::domain::json::object(bytes).map_err(ApiError::MalformedJson)
}
