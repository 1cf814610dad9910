//! Delivery receipts from the carriers: `POST /v1/callbacks/<kind>/<carrier>`, one route per
//! kind of the registry (`carriers::KINDS`). What proves a kind's receipts and what they say
//! live with the kind (`carriers::<kind>::receipts`, a `ReceiptCheck`); this module finds the
//! carrier, runs its check (an expensive one on the blocking pool, one at a time; a signing
//! time against the database's clock) and applies the verdict. Wire contracts and proofs:
//! docs/carriers.md, "Delivery receipts". A forged or unproven callback is refused with 403
//! and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::admin::params::PathParams;
use super::{ApiError, AppState};
use crate::carriers::receipts::{CallbackRequest, Proof, Receipt};
use crate::carriers::{MAX_CARRIER_ID_CHARS, ReceiptCheck, storable};
use crate::config::Config;
use crate::db::receipts::{self, Applied, Report, ResendPolicy};
use crate::domain::Status;

/// How each carrier's callbacks are proven, from the configuration.
pub struct CallbackKeys {
    /// By carrier name: its kind's name and its check.
    by_carrier: HashMap<String, (&'static str, Arc<dyn ReceiptCheck>)>,
    /// Expensive checks (RSA) run on the blocking pool one at a time: a flood of forged
    /// reports then takes at most one core, and waits its turn instead of starving the
    /// ingress.
    costly_turn: Arc<tokio::sync::Semaphore>,
    /// When a route failure sends the code again.
    resend: ResendPolicy,
}

/// A report that waits longer than this for its expensive check gets 503 (the carrier
/// retries).
const COSTLY_TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl CallbackKeys {
    /// Carriers that ask for receipts take callbacks; others get 404.
    pub fn new(config: &Config) -> Arc<Self> {
        let by_carrier = crate::carriers::receipt_checks(config)
            .into_iter()
            .map(|(name, kind, check)| (name, (kind, check)))
            .collect();
        Arc::new(Self {
            by_carrier,
            costly_turn: Arc::new(tokio::sync::Semaphore::new(1)),
            resend: ResendPolicy::of(&config.dispatch),
        })
    }
}

fn forged(carrier: &str, why: &str) -> Response {
    tracing::warn!(carrier, why, "refused a delivery receipt");
    ApiError::ForgedCallback.into_response()
}

/// `POST /v1/callbacks/<kind>/{carrier}`: a carrier's receipt. 404 unless the carrier is of
/// `kind` and asks for receipts; the body is read only then, and no more than the ingress
/// reads.
pub async fn receive(
    kind: &'static str,
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
    let Some((_, check)) = state
        .callbacks
        .by_carrier
        .get(&carrier)
        .filter(|(of, _)| *of == kind)
    else {
        return ApiError::CarrierNotFound.into_response();
    };
    let check = check.clone();
    let body = match super::extract::read_body(&headers, body).await {
        Ok(body) => body,
        Err(refusal) => return refusal.into_response(),
    };
    let request = Arc::new(CallbackRequest {
        carrier,
        query,
        headers,
        body: body.to_vec(),
    });
    let proof = match prove(&state, &check, &request).await {
        Ok(proof) => proof,
        Err(response) => return response,
    };
    if let Proof::SignedAt {
        signed_at,
        tolerance_seconds,
    } = proof
    {
        let now = match receipts::database_epoch_seconds(&state.pool).await {
            Ok(now) => now,
            Err(_) => return ApiError::Unavailable("try again").into_response(),
        };
        if (now - signed_at).abs() > tolerance_seconds {
            return forged(&request.carrier, "timestamp outside the replay window");
        }
    }
    let receipt = match check.read(&request.body) {
        Ok(receipt) => receipt,
        Err(why) => return ApiError::MalformedJson(why).into_response(),
    };
    apply(&state, &request.carrier, &receipt).await
}

/// The request's proof; an expensive one waits its turn on the blocking pool.
async fn prove(
    state: &AppState,
    check: &Arc<dyn ReceiptCheck>,
    request: &Arc<CallbackRequest>,
) -> Result<Proof, Response> {
    let costly = check
        .costly(request)
        .map_err(|why| forged(&request.carrier, why))?;
    let proven = if costly {
        let turn = state.callbacks.costly_turn.clone().acquire_owned();
        let Ok(Ok(turn)) = tokio::time::timeout(COSTLY_TURN_WAIT, turn).await else {
            return Err(
                ApiError::Unavailable("too many reports being verified; try again").into_response(),
            );
        };
        let (check, request) = (check.clone(), request.clone());
        // The turn goes with the check: a client that hangs up does not end it early.
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            check.prove(&request)
        })
        .await
        .unwrap_or(Err("the signature check failed"))
    } else {
        check.prove(request)
    };
    proven.map_err(|why| forged(&request.carrier, why))
}

/// What a recorded receipt did, counted (a resend wakes the workers); the log line's words.
fn observe(state: &AppState, carrier: &str, status: Status, applied: Applied) -> &'static str {
    match applied {
        Applied::Applied { resent: true, .. } => {
            state
                .metrics
                .resends
                .with_label_values(&[carrier, "route_failure"])
                .inc();
            state.wake.message_queued();
            "route failure: the message goes out again through another carrier"
        }
        Applied::Applied { age_ms, .. } => {
            if status == Status::Delivered {
                let seconds = age_ms as f64 / 1e3;
                state.metrics.receipt_latency.observe(seconds.max(0.0));
            }
            "delivery receipt applied"
        }
        Applied::Pending => "delivery receipt kept for later",
        Applied::Repeated => "delivery receipt already recorded; ignored",
    }
}

/// Carriers' message ids are a few dozen characters (34 to 64 among the carriers we know); a
/// longer one is not a report of ours, and would not fit the receipts' index.
const MAX_CARRIER_ID: usize = 255;

/// Applies a final verdict to its message and counts the receipt, once per distinct report;
/// intermediate states (queued, sent, enroute, …) are only counted.
async fn apply(state: &AppState, carrier: &str, receipt: &Receipt) -> Response {
    let (carrier_message_id, verdict) = (receipt.carrier_message_id.as_str(), receipt.verdict);
    // Cleaned as a send's answer is (control characters dropped, bounded): the id then matches
    // the one stored with the send, and a NUL, which PostgreSQL's text refuses, is never a 503
    // the carrier would retry forever. An id too long to be one of ours is refused as sent.
    let cleaned = storable(carrier_message_id, MAX_CARRIER_ID_CHARS);
    let error_code = receipt
        .error_code
        .as_deref()
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
    let report = Report {
        carrier,
        carrier_message_id,
        status,
        error_code,
        failure: receipt.failure.filter(|_| status == Status::Undelivered),
    };
    let applied = match receipts::record(
        &state.pool,
        &report,
        state.callbacks.resend,
        Some(&state.route_stats),
    )
    .await
    {
        Ok(applied) => applied,
        Err(err) => {
            tracing::error!(carrier, error = %err, "cannot record a delivery receipt");
            // The carrier retries (every kind we know does, some only when so configured).
            return ApiError::Unavailable("the receipt could not be stored; try again")
                .into_response();
        }
    };
    let what = observe(state, carrier, status, applied);
    // Counted when first recorded: a repeat that applies a report kept for later was counted
    // when it arrived.
    if matches!(
        applied,
        Applied::Applied { first: true, .. } | Applied::Pending
    ) {
        count();
    }
    match applied {
        // The message's id, so its receipt is one more line of its life in the log.
        Applied::Applied { message_id, .. } => {
            tracing::info!(id = %message_id, carrier, carrier_message_id, status = label, "{what}")
        }
        _ => tracing::info!(carrier, carrier_message_id, status = label, "{what}"),
    }
    StatusCode::NO_CONTENT.into_response()
}
