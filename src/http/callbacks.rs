//! Delivery receipts from the carriers: `POST /v1/callbacks/twilio/{carrier}` (Twilio's status
//! callback, signed with `X-Twilio-Signature`) and `POST /v1/callbacks/messagemedia/{carrier}`
//! (MessageMedia's delivery report, signed with the account's RSA signature key, or proven by
//! the carrier's `callback_secret` in the URL).
//! Wire contracts and proofs: docs/design.md, "Delivery receipts". What each kind's receipt
//! means, and Twilio's signature, live with the kind (`carriers::<kind>::receipts`); this
//! module finds the carrier, checks the proof and applies the verdict. A forged or unproven
//! callback is refused with 403 and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::admin::params::PathParams;
use super::{ApiError, AppState};
use crate::carriers::messagemedia::receipts as messagemedia_receipts;
use crate::carriers::telnyx::receipts as telnyx_receipts;
use crate::carriers::twilio::receipts::{call_verdict, message_verdict, twilio_signature};
use crate::carriers::{MAX_CARRIER_ID_CHARS, storable};
use crate::config::{CarrierKind, CarrierSettings, ReceiptProof};
use crate::db::receipts::{self, Applied};
use crate::domain::Status;
use crate::messagemedia_signature::{SignatureKeys, SignedRequest};
use crate::secret::Secret;

/// How each carrier's callbacks are proven, from the configuration.
pub struct CallbackKeys {
    by_carrier: HashMap<String, CallbackKey>,
    /// RSA checks run on the blocking pool one at a time: a flood of forged reports then
    /// takes at most one core, and waits its turn instead of starving the ingress.
    rsa_turn: Arc<tokio::sync::Semaphore>,
}

/// A report that waits longer than this for its RSA check gets 503 (the carrier retries).
const RSA_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

enum CallbackKey {
    /// Twilio signs with the auth token over the URL it called, which starts with public_url.
    Twilio {
        auth_token: Secret,
        public_url: String,
    },
    MessageMedia {
        /// Proves unsigned reports when set.
        secret: Option<Secret>,
        /// Prove signed reports when not empty.
        keys: SignatureKeys,
        /// `POST <public_url's path>/v1/callbacks/messagemedia/<name>`: what MessageMedia signs
        /// before the query, whatever path a proxy in between forwards to us.
        request_target: String,
    },
    /// Telnyx signs with Ed25519 under the account's public key.
    Telnyx { key: ed25519_dalek::VerifyingKey },
}

impl CallbackKey {
    fn kind(&self) -> CarrierKind {
        match self {
            CallbackKey::Twilio { .. } => CarrierKind::Twilio,
            CallbackKey::MessageMedia { .. } => CarrierKind::Messagemedia,
            CallbackKey::Telnyx { .. } => CarrierKind::Telnyx,
        }
    }
}

impl CallbackKeys {
    /// Carriers with `public_url` set take callbacks; others get 404.
    pub fn new<'a>(carriers: impl Iterator<Item = (&'a String, &'a CarrierSettings)>) -> Arc<Self> {
        let mut by_carrier = HashMap::new();
        for (name, settings) in carriers {
            let Some(receipts) = &settings.receipts else {
                continue;
            };
            let key = match &receipts.proof {
                ReceiptProof::TwilioSignature(auth_token) => CallbackKey::Twilio {
                    auth_token: auth_token.clone(),
                    public_url: receipts.public_url.clone(),
                },
                ReceiptProof::MessageMedia { secret, keys } => {
                    let base_path = reqwest::Url::parse(&receipts.public_url)
                        .map(|url| url.path().trim_end_matches('/').to_string())
                        .unwrap_or_default();
                    CallbackKey::MessageMedia {
                        secret: secret.clone(),
                        keys: keys.clone(),
                        request_target: format!(
                            "POST {base_path}/v1/callbacks/messagemedia/{name}"
                        ),
                    }
                }
                ReceiptProof::TelnyxSignature(key) => CallbackKey::Telnyx { key: *key },
            };
            by_carrier.insert(name.clone(), key);
        }
        Arc::new(Self {
            by_carrier,
            rsa_turn: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }
}

/// The key of `carrier` when it takes callbacks of `kind` (404 otherwise), and the body, read
/// only then and no more than the ingress reads.
async fn key_and_body<'a>(
    state: &'a AppState,
    carrier: &str,
    kind: CarrierKind,
    headers: &HeaderMap,
    body: Body,
) -> Result<(&'a CallbackKey, axum::body::Bytes), Response> {
    let key = state
        .callbacks
        .by_carrier
        .get(carrier)
        .filter(|key| key.kind() == kind)
        .ok_or_else(|| ApiError::CarrierNotFound.into_response())?;
    let body = super::extract::read_body(headers, body)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((key, body))
}

fn forged(carrier: &str, why: &str) -> Response {
    tracing::warn!(carrier, why, "refused a delivery receipt");
    ApiError::ForgedCallback.into_response()
}

/// `POST /v1/callbacks/twilio/{carrier}` and `/messagemedia/{carrier}` (`kind`): a carrier's
/// receipt, handled once its key is found.
pub async fn receive(
    kind: CarrierKind,
    State(state): State<AppState>,
    carrier: Result<PathParams<String>, ApiError>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A name that is not even UTF-8 names no carrier: the same JSON 404 as an unknown one.
    let Ok(PathParams(carrier)) = carrier else {
        return ApiError::CarrierNotFound.into_response();
    };
    let (key, body) = match key_and_body(&state, &carrier, kind, &headers, body).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    match key {
        CallbackKey::Twilio {
            auth_token,
            public_url,
        } => {
            let proof = TwilioProof {
                auth_token,
                public_url,
                query: query.as_deref(),
                signature: headers.get("x-twilio-signature"),
            };
            twilio(&state, &carrier, proof, &body).await
        }
        CallbackKey::MessageMedia { .. } => {
            messagemedia(&state, carrier, key, query, headers, body).await
        }
        CallbackKey::Telnyx { key } => telnyx(&state, &carrier, key, &headers, &body).await,
    }
}

/// What proves a Twilio status callback.
struct TwilioProof<'a> {
    auth_token: &'a Secret,
    public_url: &'a str,
    query: Option<&'a str>,
    signature: Option<&'a axum::http::HeaderValue>,
}

async fn twilio(state: &AppState, carrier: &str, proof: TwilioProof<'_>, body: &[u8]) -> Response {
    let TwilioProof {
        auth_token,
        public_url,
        query,
        signature,
    } = proof;
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let url = match query {
        Some(query) => format!("{public_url}/v1/callbacks/twilio/{carrier}?{query}"),
        None => format!("{public_url}/v1/callbacks/twilio/{carrier}"),
    };
    let expected = twilio_signature(auth_token.expose(), &url, &params);
    let given = signature.map(|v| v.as_bytes()).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(given)) {
        return forged(carrier, "X-Twilio-Signature does not match");
    }
    let field = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    // A message's status callback, or (for a call) the call's.
    let verdict = match (field("MessageSid"), field("MessageStatus")) {
        (Some(sid), Some(status)) => Some((sid, message_verdict(status))),
        _ => field("CallSid")
            .zip(field("CallStatus"))
            .map(|(sid, status)| (sid, call_verdict(status))),
    };
    let Some((sid, verdict)) = verdict else {
        return ApiError::MalformedJson(
            "MessageSid and MessageStatus (or CallSid and CallStatus) are required".into(),
        )
        .into_response();
    };
    apply(state, carrier, sid, verdict, field("ErrorCode")).await
}

const SIGNATURE: &str = "x-messagemedia-signature";

/// Why a MessageMedia report is not proven, or `None` when it is: by a signature when the
/// carrier has keys and the report is signed, otherwise by the secret in its URL.
fn messagemedia_unproven(
    key: &CallbackKey,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<&'static str> {
    let CallbackKey::MessageMedia { secret, .. } = key else {
        return Some("not a MessageMedia carrier");
    };
    if let Some(verdict) = with_signed_request(key, query, headers, body, SignatureKeys::verify) {
        return verdict.err();
    }
    let Some(secret) = secret else {
        return Some("the report is not signed");
    };
    let given = query
        .and_then(|query| {
            form_urlencoded::parse(query.as_bytes())
                .find(|(name, _)| name == "key")
                .map(|(_, value)| value.into_owned())
        })
        .unwrap_or_default();
    if bool::from(secret.expose().as_bytes().ct_eq(given.as_bytes())) {
        None
    } else {
        Some("the callback key does not match")
    }
}

/// Runs `check` on the report as MessageMedia signed it, when it is signed and the carrier has
/// keys; `None` otherwise.
fn with_signed_request<R>(
    key: &CallbackKey,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    check: impl FnOnce(&SignatureKeys, &SignedRequest<'_>) -> R,
) -> Option<R> {
    let CallbackKey::MessageMedia {
        keys,
        request_target,
        ..
    } = key
    else {
        return None;
    };
    let header = |name: &str| headers.get(name).map(|value| value.as_bytes());
    let signature = header(SIGNATURE).filter(|_| !keys.is_empty())?;
    let method_and_target = match query {
        Some(query) => format!("{request_target}?{query}"),
        None => request_target.clone(),
    };
    let signed = SignedRequest {
        method_and_target: &method_and_target,
        date: header("date").unwrap_or_default(),
        body,
        signature,
        digest_type: header("x-messagemedia-digest-type"),
        cipher_type: header("x-messagemedia-cipher-type"),
    };
    Some(check(keys, &signed))
}

async fn messagemedia(
    state: &AppState,
    carrier: String,
    key: &CallbackKey,
    query: Option<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let precheck = with_signed_request(key, query.as_deref(), &headers, &body, |keys, signed| {
        keys.precheck(signed)
    });
    let unproven = match precheck {
        Some(Err(why)) => Some(why),
        Some(Ok(())) => {
            let turn = state.callbacks.rsa_turn.clone().acquire_owned();
            let Ok(Ok(turn)) = tokio::time::timeout(RSA_TURN_WAIT, turn).await else {
                return ApiError::Unavailable("too many reports being verified; try again")
                    .into_response();
            };
            let (callbacks, name, body) = (state.callbacks.clone(), carrier.clone(), body.clone());
            // The turn goes with the check: a client that hangs up does not end it early.
            tokio::task::spawn_blocking(move || {
                let _turn = turn;
                match callbacks.by_carrier.get(&name) {
                    Some(key) => messagemedia_unproven(key, query.as_deref(), &headers, &body),
                    None => Some("no such carrier"),
                }
            })
            .await
            .unwrap_or(Some("the signature check failed"))
        }
        None => messagemedia_unproven(key, query.as_deref(), &headers, &body),
    };
    if let Some(why) = unproven {
        return forged(&carrier, why);
    }
    let report: messagemedia_receipts::DeliveryReport = match super::extract::json_object(&body) {
        Ok(report) => report,
        Err(refusal) => return refusal.into_response(),
    };
    let verdict = messagemedia_receipts::verdict(&report.status);
    apply(
        state,
        &carrier,
        &report.message_id,
        verdict,
        report.error_code.as_deref(),
    )
    .await
}

/// A Telnyx webhook: signed over its timestamp and body, the timestamp within
/// `TOLERANCE_SECONDS` of the database's clock (a replay is refused), then its verdict.
async fn telnyx(
    state: &AppState,
    carrier: &str,
    key: &ed25519_dalek::VerifyingKey,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(timestamp), Some(signature)) = (
        header(telnyx_receipts::TIMESTAMP_HEADER),
        header(telnyx_receipts::SIGNATURE_HEADER),
    ) else {
        return forged(carrier, "unsigned");
    };
    let Some(sent_at) = telnyx_receipts::timestamp_seconds(timestamp) else {
        return forged(carrier, "unreadable timestamp");
    };
    if !telnyx_receipts::signed(key, timestamp, body, signature) {
        return forged(carrier, "bad signature");
    }
    let now = match receipts::database_epoch_seconds(&state.pool).await {
        Ok(now) => now,
        Err(_) => return ApiError::Unavailable("try again").into_response(),
    };
    if (now - sent_at).abs() > telnyx_receipts::TOLERANCE_SECONDS {
        return forged(carrier, "timestamp outside the replay window");
    }
    let webhook: telnyx_receipts::Webhook = match super::extract::json_object(body) {
        Ok(webhook) => webhook,
        Err(refusal) => return refusal.into_response(),
    };
    let code = webhook.error_code();
    let id = webhook.data.payload.id.clone();
    apply(state, carrier, &id, webhook.verdict(), code.as_deref()).await
}

/// Carriers' message ids are a few dozen characters (Twilio's SM + 32 hex, MessageMedia's
/// UUID); a longer one is not a report of ours, and would not fit the receipts' index.
const MAX_CARRIER_ID: usize = 255;

/// Applies a final verdict to its message and counts the receipt, once per distinct report;
/// intermediate states (queued, sent, enroute, …) are only counted.
async fn apply(
    state: &AppState,
    carrier: &str,
    carrier_message_id: &str,
    verdict: Option<Status>,
    error_code: Option<&str>,
) -> Response {
    // Cleaned as a send's answer is (control characters dropped, bounded): the id then matches
    // the one stored with the send, and a NUL, which PostgreSQL's text refuses, is never a 503
    // the carrier would retry forever. An id too long to be one of ours is refused as sent.
    let cleaned = storable(carrier_message_id, MAX_CARRIER_ID_CHARS);
    let error_code = error_code
        .map(|code| storable(code, MAX_CARRIER_ID_CHARS))
        .filter(|code| !code.is_empty());
    if cleaned.is_empty() || carrier_message_id.len() > MAX_CARRIER_ID {
        return ApiError::InvalidField {
            code: "invalid_request",
            description: format!("the message id must be 1 to {MAX_CARRIER_ID} bytes"),
        }
        .into_response();
    }
    let (carrier_message_id, error_code) = (cleaned.as_str(), error_code.as_deref());
    let label = verdict.map_or("other", Status::as_str);
    let count = || {
        state
            .metrics
            .receipts
            .with_label_values(&[carrier, label])
            .inc()
    };
    let Some(status) = verdict else {
        count();
        return StatusCode::NO_CONTENT.into_response();
    };
    let applied = match receipts::record(
        &state.pool,
        carrier,
        carrier_message_id,
        status,
        error_code,
    )
    .await
    {
        Ok(applied) => applied,
        Err(err) => {
            tracing::error!(carrier, error = %err, "cannot record a delivery receipt");
            // The carrier retries (MessageMedia does; Twilio with its callback retry setting).
            return ApiError::Unavailable("the receipt could not be stored; try again")
                .into_response();
        }
    };
    let what = match applied {
        Applied::Applied { age_ms, .. } => {
            if status == Status::Delivered {
                let seconds = age_ms as f64 / 1e3;
                state.metrics.receipt_latency.observe(seconds.max(0.0));
            }
            "delivery receipt applied"
        }
        Applied::Pending => "delivery receipt kept for later",
        Applied::Repeated => "delivery receipt already recorded; ignored",
    };
    // Counted when first recorded: a repeat that applies a report kept for later was counted
    // when it arrived.
    if matches!(
        applied,
        Applied::Applied { first: true, .. } | Applied::Pending
    ) {
        count();
    }
    tracing::info!(carrier, carrier_message_id, status = label, "{what}");
    StatusCode::NO_CONTENT.into_response()
}
