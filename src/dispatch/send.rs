//! One dispatch attempt for one leased message: the route's carriers in order, failing over on
//! carrier failures within the attempt, never calling a carrier after the code expired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::retry::RetryPolicy;
use crate::carriers::{FailureClass, OutboundSms, Routes};
use crate::db::queue::{AttemptRecord, Claimed, Completion, Disposition};
use crate::domain::{PhoneNumber, Status, redact_digits};
use crate::metrics::Metrics;

/// What every send needs, shared by all workers of a process.
pub struct SendContext {
    pub routes: Routes,
    pub retry: RetryPolicy,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
}

/// Runs the attempt and says what should happen to the message.
pub async fn dispatch(context: &SendContext, message: Claimed, claimed_at: Instant) -> Completion {
    // The lifetime left was read on the database clock; from here on a monotonic clock counts.
    let deadline = claimed_at + Duration::from_millis(message.remaining_ms.max(0) as u64);
    let attempt = message.attempts + 1;
    let mut calls = Vec::new();
    let completion = |disposition, calls| Completion {
        id: message.id,
        lease_token: message.lease_token,
        attempts: attempt,
        disposition,
        calls,
    };
    let expired = || Disposition::Final {
        status: Status::Expired,
        carrier: None,
        carrier_message_id: None,
        error: Some("the code expired before a carrier took it".into()),
    };

    let recipient = PhoneNumber::from_e164_unchecked(message.recipient.clone());
    let mut retry_after = None;
    let mut last_error = String::from("no carrier is routed for this number");
    let mut failed_carrier: Option<&str> = None;
    for carrier in context.routes.carriers_for(recipient.as_str()) {
        if !carrier.allow() {
            let why = if carrier.is_disabled() {
                "disabled by an operator"
            } else {
                "circuit breaker open"
            };
            tracing::debug!(id = %message.id, carrier = %carrier.name, why, "carrier skipped");
            last_error = format!("{}: {why}", carrier.name);
            continue;
        }
        let _slot = tokio::select! {
            slot = carrier.slot() => slot,
            _ = tokio::time::sleep_until(deadline.into()) => return completion(expired(), calls),
        };
        tokio::select! {
            _ = carrier.ready() => {}
            _ = context.shutdown.cancelled(), if calls.is_empty() => {
                // Nothing was sent yet: hand the message back for another process or restart.
                return completion(Disposition::Release, calls);
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return completion(expired(), calls);
        }
        let sms = OutboundSms {
            id: message.message_id(),
            to: recipient.clone(),
            body: message.body.clone(),
            sender: message.sender.clone(),
            validity: deadline - now,
        };
        if let Some(from) = failed_carrier {
            context
                .metrics
                .failovers
                .with_label_values(&[from, carrier.name.as_str()])
                .inc();
        }
        let result = carrier.send(&sms).await;
        let elapsed = now.elapsed();
        let latency_ms = i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX);
        let outcome = match &result {
            Ok(_) => "sent",
            Err(error) => error.class.as_str(),
        };
        context
            .metrics
            .attempts
            .with_label_values(&[carrier.name.as_str(), outcome])
            .inc();
        context
            .metrics
            .carrier_duration
            .with_label_values(&[carrier.name.as_str()])
            .observe(elapsed.as_secs_f64());
        match result {
            Ok(accepted) => {
                calls.push(AttemptRecord {
                    attempt,
                    carrier: carrier.name.clone(),
                    outcome: "sent",
                    http_status: accepted.http_status.map(i32::from),
                    error_code: None,
                    error_message: None,
                    latency_ms,
                    carrier_message_id: accepted.carrier_message_id.clone(),
                });
                let since_commit = (Utc::now() - message.created_at).num_milliseconds();
                context
                    .metrics
                    .delivery_latency
                    .observe(since_commit.max(0) as f64 / 1000.0);
                tracing::info!(
                    id = %message.id, carrier = %carrier.name, outcome = "sent", latency_ms,
                    delivery_ms = since_commit, attempt, "message sent"
                );
                let sent = Disposition::Final {
                    status: Status::Sent,
                    carrier: Some(carrier.name.clone()),
                    carrier_message_id: accepted.carrier_message_id,
                    error: None,
                };
                return completion(sent, calls);
            }
            Err(error) => {
                calls.push(AttemptRecord {
                    attempt,
                    carrier: carrier.name.clone(),
                    outcome: error.class.as_str(),
                    http_status: error.http_status.map(i32::from),
                    error_code: error.code.clone(),
                    error_message: Some(error.message.clone()),
                    latency_ms,
                    carrier_message_id: None,
                });
                tracing::warn!(
                    id = %message.id, carrier = %carrier.name, outcome = error.class.as_str(),
                    http_status = ?error.http_status, code = ?error.code, latency_ms,
                    "carrier refused the message"
                );
                last_error = format!("{}: {}", carrier.name, error.message);
                if error.class == FailureClass::Recipient {
                    let failed = Disposition::Final {
                        status: Status::Failed,
                        carrier: Some(carrier.name.clone()),
                        carrier_message_id: None,
                        error: Some(last_error),
                    };
                    return completion(failed, calls);
                }
                retry_after = retry_after.max(error.retry_after);
                failed_carrier = Some(carrier.name.as_str());
            }
        }
    }

    // Every carrier of the route failed this time. When all were skipped by their breakers,
    // no carrier was called and the attempt does not count.
    let attempts = if calls.is_empty() {
        message.attempts
    } else {
        attempt
    };
    let ended = |disposition, calls| Completion {
        id: message.id,
        lease_token: message.lease_token,
        attempts,
        disposition,
        calls,
    };
    if attempts >= context.retry.max_attempts as i32 {
        let failed = Disposition::Final {
            status: Status::Failed,
            carrier: None,
            carrier_message_id: None,
            error: Some(format!(
                "gave up after {attempts} attempts; last: {last_error}"
            )),
        };
        return ended(failed, calls);
    }
    let delay = context.retry.delay(attempts.max(1) as u32, retry_after);
    if Instant::now() + delay >= deadline {
        return ended(expired(), calls);
    }
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    ended(Disposition::Retry { delay_ms }, calls)
}

/// One log line per outcome that is not a send (sends are logged with their latency where they
/// happen). Carrier texts can quote the number, so their digits are masked.
pub fn log_outcome(completion: &Completion) {
    match &completion.disposition {
        Disposition::Final {
            status,
            carrier,
            error,
            ..
        } if *status != Status::Sent => {
            tracing::info!(
                id = %completion.id, outcome = status.as_str(), carrier = carrier.as_deref().unwrap_or("-"),
                attempts = completion.attempts, error = %redact_digits(error.as_deref().unwrap_or("")),
                "message finished"
            );
        }
        Disposition::Retry { delay_ms } => tracing::info!(
            id = %completion.id, outcome = "retry", attempts = completion.attempts, delay_ms,
            "message will be retried"
        ),
        Disposition::Release => tracing::info!(
            id = %completion.id, outcome = "released", "message handed back untried at shutdown"
        ),
        Disposition::Final { .. } => {}
    }
}

/// Used by the claimer for rows that are already past their expiry or their limits.
pub fn finalise(message: &Claimed, status: Status, error: &str) -> Completion {
    Completion {
        id: message.id,
        lease_token: message.lease_token,
        attempts: message.attempts,
        disposition: Disposition::Final {
            status,
            carrier: None,
            carrier_message_id: None,
            error: Some(error.to_string()),
        },
        calls: Vec::new(),
    }
}

/// Shared handle type for the context.
pub type SharedContext = Arc<SendContext>;
