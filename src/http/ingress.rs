//! `POST /v1/auth0/sms`: Auth0's custom SMS gateway contract (shared reference,
//! "auth0-sms-gateway.md"). A 200 is sent only after the message is committed.

use std::net::IpAddr;
use std::time::Instant;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::actions::DERIVED_PREFIX;
use super::{ApiError, AppState};
use crate::db::batcher::EnqueueError;
use crate::domain::{MessageBody, MessageId, NewMessage, PhoneNumber, RequestInfo, redact_digits};

/// Auth0's requests are well under 1 KiB; the limit leaves room for a long template.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Auth0 caps the connection's `options.from` at 128 characters.
const MAX_SENDER_CHARS: usize = 128;
/// Longer user agents are cut, not refused: refusing a login over one helps nobody.
const MAX_USER_AGENT_CHARS: usize = 512;

/// The legacy body: `sender` and `req` are optional, unknown fields are ignored.
#[derive(Deserialize)]
pub(super) struct LegacySmsRequest {
    pub recipient: String,
    pub body: String,
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(default)]
    pub req: Option<ForwardedRequest>,
}

/// Sent only when the connection has `forward_req_info` on.
#[derive(Deserialize)]
pub(super) struct ForwardedRequest {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default, rename = "user-agent")]
    pub user_agent: Option<String>,
}

#[derive(Serialize)]
pub struct Accepted {
    id: MessageId,
}

/// The body shapes the ingress understands: parsed and validated into one message.
pub type Parser = fn(&[u8], Option<String>) -> Result<NewMessage, ApiError>;

/// `POST /v1/auth0/sms`: the legacy custom SMS gateway body.
pub async fn accept_sms(State(state): State<AppState>, request: Request) -> Response {
    accept_counted(&state, request, parse_request).await
}

/// `POST /v1/auth0/phone-provider`: what an Auth0 Action forwards (see `http::actions`).
pub async fn accept_phone_provider(State(state): State<AppState>, request: Request) -> Response {
    accept_counted(&state, request, super::actions::parse_action_request).await
}

/// The request itself, counted and timed by outcome.
async fn accept_counted(state: &AppState, request: Request, parse: Parser) -> Response {
    let started = Instant::now();
    let result = accept(state, request, parse).await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(error) => error.metric_outcome(),
    };
    state
        .metrics
        .ingress_requests
        .with_label_values(&[outcome])
        .inc();
    state
        .metrics
        .ingress_duration
        .observe(started.elapsed().as_secs_f64());
    result.into_response()
}

async fn accept(
    state: &AppState,
    request: Request,
    parse: Parser,
) -> Result<Json<Accepted>, ApiError> {
    let (parts, body) = request.into_parts();
    let signer = authenticate(state, &parts.headers)?;
    let _slot = state.in_flight.enter(signer.as_deref()).map_err(|_| {
        tracing::warn!(
            signer = signer.as_deref().unwrap_or("-"),
            "ingress refused a request: limits.max_in_flight reached"
        );
        ApiError::TooManyInFlight
    })?;
    require_json(&parts.headers)?;
    let bytes = read_body(&parts.headers, body).await?;
    let mut message = parse(&bytes, signer)?;
    if let Some(key) = idempotency_key(&parts.headers)? {
        message.idempotency_key = Some(key);
    }
    scope_idempotency(state, &mut message);
    if state.require_request_info && message.request.ip.is_none() {
        return Err(ApiError::MissingRequestInfo);
    }
    if let Err(refusal) = state.destinations.check(&message.recipient) {
        tracing::warn!(
            recipient = %message.recipient.masked(),
            reason = %refusal,
            "ingress refused a request: destination blocked"
        );
        return Err(ApiError::Blocked(refusal));
    }

    store(state, message).await
}

/// Keys are per signer: two tenants cannot collide, or probe each other's keys. A keyed
/// message also gets its fingerprint, to tell a repeat from a reuse of the key.
fn scope_idempotency(state: &AppState, message: &mut NewMessage) {
    // The signer's length goes first, so no pair of names and keys can spell the same string.
    message.idempotency_key = message.idempotency_key.take().map(|key| {
        let signer = message.signer.as_deref().unwrap_or("-");
        // A key derived from the notification covers its code: stored only under the
        // signer's own HMAC key, which the database does not hold.
        let key = match key.strip_prefix(DERIVED_PREFIX) {
            Some(digest) => format!(
                "{DERIVED_PREFIX}{}",
                state.verifier.digest(message.signer.as_deref(), &[digest])
            ),
            None => key,
        };
        format!("{}:{signer}/{key}", signer.len())
    });
    if message.idempotency_key.is_some() {
        message.fingerprint = Some(state.verifier.digest(
            message.signer.as_deref(),
            &[
                message.recipient.as_str(),
                message.body.as_str(),
                message.sender.as_deref().unwrap_or(""),
            ],
        ));
    }
}

/// Hands the message to the batch writer and answers with what became of it.
async fn store(state: &AppState, message: NewMessage) -> Result<Json<Accepted>, ApiError> {
    let id = message.id;
    tracing::debug!(
        %id,
        recipient = %message.recipient.masked(),
        body = %message.body.redacted(),
        signer = message.signer.as_deref().unwrap_or("-"),
        "storing message"
    );
    let (message_recipient, client_ip) = (message.recipient.masked(), message.request.ip);
    match state.batcher.enqueue(message, state.store_wait).await {
        Ok(enqueued) => {
            state.wake.message_queued();
            tracing::debug!(%id, expires_at = %enqueued.expires_at, "message queued");
            if enqueued.id != id {
                tracing::info!(%id, earlier = %enqueued.id, "a repeated request: answered with the earlier message");
            }
            Ok(Json(Accepted { id: enqueued.id }))
        }
        Err(EnqueueError::Limited(limited)) => {
            tracing::warn!(
                recipient = %message_recipient,
                ip = ?client_ip,
                reason = %limited,
                "ingress refused a request: rate limited"
            );
            Err(ApiError::RateLimited(limited))
        }
        Err(EnqueueError::KeyReused) => Err(ApiError::IdempotencyKeyReused),
        Err(EnqueueError::TimedOut) => {
            tracing::warn!(%id, "no database connection was free in time; answering 503");
            Err(ApiError::Unavailable(
                "the database is busy; nothing was queued, try again",
            ))
        }
        Err(err) => {
            tracing::error!(%id, error = %err, "cannot store message; answering 503");
            Err(ApiError::Unavailable(
                "the message could not be stored; nothing was queued, try again",
            ))
        }
    }
}

/// The body of a legacy request, parsed and validated into the message it asks for. Pure, so
/// the property tests can feed it anything.
pub fn parse_request(bytes: &[u8], signer: Option<String>) -> Result<NewMessage, ApiError> {
    // serde also reads a struct from an array; Auth0 sends an object, so demand one.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::MalformedJson("expected a JSON object".into()));
    }
    let parsed: LegacySmsRequest =
        serde_json::from_slice(bytes).map_err(|err| ApiError::MalformedJson(err.to_string()))?;
    validate(parsed, signer)
}

fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if state.accept_unsigned {
        return Ok(None);
    }
    let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    state
        .verifier
        .verify_header(header)
        .map(|name| Some(name.to_string()))
        .map_err(|reason| {
            // The reason only: the header itself may carry carrier credentials (MessageMedia).
            tracing::warn!(%reason, "ingress refused a token");
            ApiError::Unauthorized(reason)
        })
}

/// Longest `Idempotency-Key` accepted; Auth0's own ids are far shorter.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The `Idempotency-Key` header, when the caller sent one.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|key| {
            !key.is_empty()
                && key.len() <= MAX_IDEMPOTENCY_KEY
                && key.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            invalid(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1–{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_string()))
}

/// `application/json`, with or without parameters such as `charset`.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

pub(super) async fn read_body(
    headers: &HeaderMap,
    body: Body,
) -> Result<axum::body::Bytes, ApiError> {
    // A declared length over the limit is refused before reading a byte of it.
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

pub(super) fn invalid(code: &'static str, description: impl Into<String>) -> ApiError {
    ApiError::InvalidField {
        code,
        description: description.into(),
    }
}

pub(super) fn validate(
    request: LegacySmsRequest,
    signer: Option<String>,
) -> Result<NewMessage, ApiError> {
    let recipient = PhoneNumber::parse(&request.recipient).map_err(|err| {
        tracing::info!(recipient = %redact_digits(&request.recipient), reason = %err, "invalid recipient");
        invalid("invalid_recipient", err.to_string())
    })?;
    let body =
        MessageBody::parse(request.body).map_err(|err| invalid("invalid_body", err.to_string()))?;
    let sender = match request.sender.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(sender) if sender.chars().count() > MAX_SENDER_CHARS => {
            return Err(invalid(
                "invalid_sender",
                format!("sender is longer than {MAX_SENDER_CHARS} characters"),
            ));
        }
        Some(sender) if sender.chars().any(char::is_control) => {
            return Err(invalid(
                "invalid_sender",
                "sender contains control characters",
            ));
        }
        Some(sender) => Some(sender.to_string()),
    };
    let request_info =
        match request.req {
            None => RequestInfo::default(),
            Some(req) => RequestInfo {
                ip: match req.ip.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(ip) => Some(ip.parse::<IpAddr>().map_err(|_| {
                        invalid("invalid_request_info", "req.ip is not an IP address")
                    })?),
                },
                user_agent: match req.user_agent {
                    None => None,
                    Some(ua) if ua.contains('\0') => {
                        return Err(invalid(
                            "invalid_request_info",
                            "req.user-agent contains a NUL character",
                        ));
                    }
                    Some(ua) => Some(ua.chars().take(MAX_USER_AGENT_CHARS).collect()),
                },
            },
        };
    Ok(NewMessage {
        id: MessageId::new(),
        recipient,
        body,
        sender,
        request: request_info,
        signer,
        idempotency_key: None,
        fingerprint: None,
    })
}
