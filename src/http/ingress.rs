//! The ingress: `POST /v1/auth0/sms`, Auth0's custom SMS gateway contract, and the shared
//! path of both ingress routes (the Actions body is read by `http::phone_provider`). A 200 is
//! sent only after the message is committed.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::extract::{AnswerBy, Caller, JsonBytes};
use super::{ApiError, AppState};
use crate::domain::{
    Channel, Classification, MessageBody, MessageId, NewMessage, PhoneNumber, RequestInfo,
    TraceContext, classify, is_bidi_control, redact_digits,
};

/// Marks an idempotency key derived from a phone-provider notification (`phone_provider`):
/// its digest covers the code, so it is keyed with the signer's secret before it is stored.
pub const DERIVED_PREFIX: &str = "derived:";
/// Auth0 caps the connection's `options.from` at 128 characters.
const MAX_SENDER_CHARS: usize = 128;
/// Longer user agents are cut, not refused: refusing a login over one helps nobody.
const MAX_USER_AGENT_CHARS: usize = 512;

/// The legacy body: `sender` and `req` are optional, unknown fields are ignored.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct LegacySmsRequest {
    /// The number, in E.164 (`+` and digits) or a form libphonenumber reads as one.
    pub recipient: String,
    /// The text, with the code in it; at most 1,600 characters.
    pub body: String,
    #[serde(default)]
    pub sender: Option<String>,
    #[serde(default)]
    pub req: Option<ForwardedRequest>,
}

/// Sent only when the connection has `forward_req_info` on.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ForwardedRequest {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default, rename = "user-agent")]
    pub user_agent: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The stored message (`GET /v1/messages/{id}`).
    #[schema(value_type = uuid::Uuid)]
    id: MessageId,
}

/// The body shapes the ingress understands: parsed and validated into one message.
pub type Parser = fn(&[u8], Option<String>) -> Result<NewMessage, ApiError>;

/// The handler of an ingress route whose body `parse` reads: `parse_request` for
/// `POST /v1/auth0/sms` (the legacy custom SMS gateway body), `parse_action_request` for
/// `POST /v1/auth0/phone-provider` (what an Auth0 Action forwards).
pub async fn accept_with(
    parse: Parser,
    State(state): State<AppState>,
    caller: Caller,
    AnswerBy(answer_by): AnswerBy,
    headers: HeaderMap,
    JsonBytes(body): JsonBytes,
) -> Result<Json<Accepted>, ApiError> {
    // The request's span: with traces exported, a child of the caller's (W3C traceparent).
    let span = tracing::info_span!(
        "ingress",
        otel.kind = "server",
        trace_id = tracing::field::Empty,
        id = tracing::field::Empty
    );
    let callers = caller_trace(&headers);
    if let Some(callers) = &callers {
        callers.adopt(&span);
    }
    // The exported span's ids when traces are exported, else smsgate's own.
    let trace = TraceContext::of_span(&span)
        .unwrap_or_else(|| callers.map_or_else(TraceContext::start, |c| c.child()));
    // Every line of the request, in its span, carries the trace id.
    span.record("trace_id", trace.trace_id_hex());
    accept(&state, caller, &headers, &body, parse, answer_by, trace)
        .instrument(span)
        .await
}

async fn accept(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    body: &[u8],
    parse: Parser,
    answer_by: tokio::time::Instant,
    trace: TraceContext,
) -> Result<Json<Accepted>, ApiError> {
    let mut message = parse(body, caller.signer.clone())?;
    message.trace = Some(trace);
    if let Some(key) = idempotency_key(headers)? {
        message.idempotency_key = Some(key);
    }
    scope_idempotency(state, &mut message);
    if state.require_request_info && message.request.ip.is_none() {
        return Err(ApiError::MissingRequestInfo);
    }
    if message.channel == Channel::Voice && !state.config.can_call(message.recipient.as_str()) {
        return Err(invalid(
            "voice_not_supported",
            "voice delivery is not available for this number: no carrier of its route places \
             calls",
        ));
    }
    let classification = assess(state, &mut message);
    // A test number is never sent: the destination rules, which guard what is sent, pass it.
    let test_number = state
        .pricing
        .test_outcome(message.recipient.as_str())
        .is_some();
    let verdict = match test_number {
        true => Ok(()),
        false => state
            .destinations
            .check_classified(&message.recipient, classification.as_ref()),
    };
    if let Err(refusal) = &verdict
        && !state.destinations.monitors()
    {
        tracing::warn!(
            recipient = %message.recipient.masked(),
            reason = %refusal,
            "ingress refused a request: destination blocked"
        );
        return Err(ApiError::Blocked(refusal.clone()));
    }
    // Monitored: reported once the message is stored (another limit may still refuse it).
    let monitored_destination = verdict.err().map(|refusal| refusal.to_string());
    let answer = store(state, message, monitored_destination, answer_by).await;
    // The in-flight slot is held until the message is stored or refused.
    drop(caller);
    answer
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
        let recipient = message.recipient.as_str();
        let (body, sender) = (
            message.body.as_str(),
            message.sender.as_deref().unwrap_or(""),
        );
        let signer = message.signer.as_deref();
        // A call under a text's key is another message (texts keep their old fingerprints).
        let print = match message.channel {
            Channel::Sms => state.verifier.digest(signer, &[recipient, body, sender]),
            Channel::Voice => state
                .verifier
                .digest(signer, &[recipient, body, sender, "voice"]),
        };
        message.fingerprint = Some(print);
    }
}

/// What the guard needs: the country (when a limit asks for it) and the estimated cost. The
/// recipient is classified once, for the country and the destination rules both (the lookup
/// was the costliest step of a request); the classification is returned for the latter.
fn assess(state: &AppState, message: &mut NewMessage) -> Option<Classification> {
    let classification = (state.need_country || state.destinations.classifies())
        .then(|| classify(message.recipient.as_str()))
        .flatten();
    if state.need_country {
        message.guard.country = classification.as_ref().and_then(Classification::country);
    }
    message.guard.estimated_cost = state.pricing.estimate(message);
    classification
}

/// A limit in monitor mode would have refused `message`: counted and logged, not refused.
fn report_monitored(
    state: &AppState,
    limit: &str,
    country: Option<&str>,
    recipient: &str,
    reason: &str,
) {
    // Looked up whenever a limit monitors; none found is ISO's "ZZ", as caps and spend say.
    let country = country.unwrap_or("ZZ");
    state
        .metrics
        .monitored
        .with_label_values(&[limit, country])
        .inc();
    tracing::warn!(
        limit,
        country,
        recipient,
        reason,
        "a limit in monitor mode would have refused this request (it does not refuse it)"
    );
}

/// Hands the message to the batch writer and answers with what became of it.
async fn store(
    state: &AppState,
    message: NewMessage,
    monitored_destination: Option<String>,
    answer_by: tokio::time::Instant,
) -> Result<Json<Accepted>, ApiError> {
    let (id, recipient, ip) = (message.id, message.recipient.masked(), message.request.ip);
    let trace_id = message.trace.map(|trace| trace.trace_id_hex());
    let country = message.guard.country.clone();
    tracing::debug!(
        %id,
        trace_id = trace_id.as_deref().unwrap_or("-"),
        %recipient,
        body = %message.body.redacted(),
        signer = message.signer.as_deref().unwrap_or("-"),
        "storing message"
    );
    let result = state
        .batcher
        .enqueue(message, state.store_wait, answer_by)
        .await;
    let stored = result.map_err(|err| {
        // The request's context for the line the conversion logs; built only on failure.
        let _request = tracing::warn_span!(
            "ingress",
            %id,
            trace_id = trace_id.as_deref().unwrap_or("-"),
            %recipient,
            ?ip
        )
        .entered();
        ApiError::from(err)
    })?;
    let limits = stored
        .monitored
        .iter()
        .map(|k| (k.label(), "over its window"));
    let destination = monitored_destination
        .as_deref()
        .map(|reason| ("destinations", reason));
    for (limit, reason) in destination.into_iter().chain(limits) {
        report_monitored(state, limit, country.as_deref(), &recipient, reason);
    }
    let enqueued = stored.enqueued;
    // The message this request is about (an earlier one, for a repeat): in the trace too.
    tracing::Span::current().record("id", tracing::field::display(enqueued.id));
    state.wake.message_queued();
    tracing::debug!(%id, expires_at = %enqueued.expires_at, "message queued");
    if enqueued.id != id {
        tracing::info!(%id, earlier = %enqueued.id, "a repeated request: answered with the earlier message");
    }
    Ok(Json(Accepted { id: enqueued.id }))
}

/// The body of a legacy request, parsed and validated into the message it asks for. Pure, so
/// the property tests can feed it anything. (Described here for the OpenAPI document: the
/// route runs `accept_with` with it.)
#[utoipa::path(
    post, path = "/v1/auth0/sms", tag = "ingress",
    summary = "Auth0's custom SMS gateway call: stores the message, then answers",
    security(("auth0" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header,
         description = "Up to 255 visible ASCII characters; a repeat answers with the first message"),
        ("traceparent" = Option<String>, Header,
         description = "W3C Trace Context: the message joins the caller's trace (an invalid one is ignored)"),
    ),
    request_body(content = LegacySmsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Committed to the database; it will be sent", body = Accepted),
        super::error::IngressRefusals,
    )
)]
pub fn parse_request(bytes: &[u8], signer: Option<String>) -> Result<NewMessage, ApiError> {
    let parsed: LegacySmsRequest = super::extract::json_object(bytes)?;
    validate(parsed, signer)
}

/// The caller's place in its trace (W3C `traceparent`): the ingress's span is its child.
/// Without one, or with one that is not valid (ignored, as the specification asks, never
/// refused), the ingress starts a trace.
fn caller_trace(headers: &HeaderMap) -> Option<TraceContext> {
    let mut values = headers.get_all("traceparent").iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // Two traceparent headers: the specification treats the context as invalid.
        return None;
    };
    value.to_str().ok().and_then(TraceContext::parse)
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
        // Debug-quoted: a control character in it cannot forge a log line.
        tracing::info!(recipient = ?redact_digits(&request.recipient), reason = %err, "invalid recipient");
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
        Some(sender) if sender.chars().any(|c| c.is_control() || is_bidi_control(c)) => {
            return Err(invalid(
                "invalid_sender",
                "sender contains control or bidirectional formatting characters",
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
        guard: Default::default(),
        channel: Default::default(),
        locale: None,
        trace: None,
    })
}
