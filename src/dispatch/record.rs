//! What the carrier calls of one attempt leave behind: the metrics, a log line and an attempt
//! row per call, and the failover between two calls. Written in one place, so the dashboard,
//! the logs and `message_attempts` always tell the same story.

use std::time::Duration;

use crate::carriers::{Accepted, SendError, test_numbers};
use crate::db::queue::{AttemptRecord, Claimed};
use crate::domain::segments;
use crate::limits::pricing::{Pricing, amount};
use crate::metrics::Metrics;

pub struct Recorder<'a> {
    metrics: &'a Metrics,
    pricing: &'a Pricing,
    message: &'a Claimed,
    /// The attempt rows, written with the message's outcome.
    pub calls: Vec<AttemptRecord>,
    /// The carrier whose failure the next call fails over from.
    failed_carrier: Option<String>,
}

impl<'a> Recorder<'a> {
    pub fn new(metrics: &'a Metrics, pricing: &'a Pricing, message: &'a Claimed) -> Self {
        Self {
            metrics,
            pricing,
            message,
            calls: Vec::new(),
            failed_carrier: None,
        }
    }

    /// A call to `carrier` is about to start: a failover when an earlier carrier failed.
    pub fn calling(&mut self, carrier: &str) {
        if let Some(from) = self.failed_carrier.take() {
            self.metrics
                .failovers
                .with_label_values(&[from.as_str(), carrier])
                .inc();
        }
    }

    /// The send had to wait for the number's own window (not an attempt).
    pub fn recipient_limited(&self) {
        self.metrics
            .rate_limited
            .with_label_values(&["recipient"])
            .inc();
    }

    /// The message goes back untried, for `reason` (one of `HELD_REASONS`).
    pub fn held(&self, reason: &'static str) {
        self.metrics.held.with_label_values(&[reason]).inc();
    }

    /// What a carrier accepted is billed: its segments, at the carrier's price.
    fn billed(&self, carrier: &str) {
        if carrier == test_numbers::NAME {
            return;
        }
        let parts = segments(&self.message.body).count;
        self.metrics
            .segments
            .with_label_values(&[carrier])
            .inc_by(u64::from(parts));
        if let Some(cost) = self.pricing.cost(carrier, &self.message.recipient, parts) {
            self.metrics
                .spend
                .with_label_values(&[
                    carrier,
                    crate::metrics::currency_label(&self.pricing.currency),
                ])
                .inc_by(amount(cost));
        }
    }

    /// One finished call, whatever its result.
    pub fn call(&mut self, carrier: &str, elapsed: Duration, result: &Result<Accepted, SendError>) {
        let outcome = match result {
            Ok(_) => "sent",
            Err(error) => error.class.as_str(),
        };
        self.metrics
            .attempts
            .with_label_values(&[carrier, outcome, &self.message.channel])
            .inc();
        self.metrics
            .carrier_duration
            .with_label_values(&[carrier])
            .observe(elapsed.as_secs_f64());
        let latency_ms = i32::try_from(elapsed.as_millis()).unwrap_or(i32::MAX);
        let (id, number) = (self.message.id, self.message.attempts + 1);
        let mut row = AttemptRecord {
            attempt: number,
            carrier: carrier.to_string(),
            outcome,
            http_status: None,
            error_code: None,
            error_message: None,
            latency_ms,
            carrier_message_id: None,
        };
        match result {
            Ok(accepted) => {
                let since_commit = self.message.age_ms();
                let seconds = since_commit.max(0) as f64 / 1000.0;
                self.metrics.accept_latency.observe(seconds);
                self.metrics.delivery_latency_deprecated.observe(seconds);
                // The target operators' log filters have always named for sends.
                tracing::info!(
                    target: "smsgate::dispatch::send",
                    %id, carrier, outcome, latency_ms, delivery_ms = since_commit,
                    attempt = number, "message sent"
                );
                row.http_status = accepted.http_status.map(i32::from);
                row.carrier_message_id = accepted.carrier_message_id.clone();
                self.billed(carrier);
            }
            Err(error) => {
                tracing::warn!(
                    target: "smsgate::dispatch::send",
                    %id, carrier, outcome, http_status = ?error.http_status, code = ?error.code,
                    latency_ms, "carrier refused the message"
                );
                self.failed_carrier = Some(carrier.to_string());
                row.http_status = error.http_status.map(i32::from);
                row.error_code = error.code.clone();
                row.error_message = Some(error.message.clone());
            }
        }
        self.calls.push(row);
    }
}
