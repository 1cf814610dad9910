//! `[dispatch]` and `[retention]`: the workers, leases, retries and how long messages are
//! kept, with their defaults and checks.

use std::num::{NonZeroU32, NonZeroUsize};

use serde::{Deserialize, Serialize};

use super::units::{count, count32};
use super::{Config, Millis, Seconds};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchConfig {
    /// Concurrent carrier sends per process.
    pub workers: NonZeroUsize,
    /// A code is worthless after Auth0's `totp.time_step` (300 s in its examples).
    pub message_ttl_seconds: u32,
    /// How long a claimed message stays reserved for its worker; longer than the slowest
    /// route can take, so only a dead process's messages are claimed again.
    pub lease_seconds: Seconds,
    /// Messages claimed per round trip.
    pub claim_batch: NonZeroUsize,
    /// Claiming tasks per process; carrier concurrency is `workers`, independent of this.
    pub claimers: NonZeroUsize,
    /// Longest sleep between claims when nothing wakes the workers.
    pub poll_interval_ms: Millis,
    /// First retry delay; it doubles per attempt up to `retry_max_ms`, with full jitter.
    pub retry_base_ms: Millis,
    pub retry_max_ms: Millis,
    /// Dispatch attempts (each may try every carrier of the route) before a message fails.
    pub max_attempts: NonZeroU32,
    /// On SIGTERM, in-flight sends get this long to finish.
    pub shutdown_grace_seconds: u64,
    /// Cross-process wake-ups are sent at most this often (NOTIFY serialises commits).
    pub notify_interval_ms: Millis,
    /// A receipt reporting a route failure sends the code again through a carrier of its
    /// route that has not carried it, if it has at least `resend_min_remaining_seconds` of
    /// life left.
    pub resend_on_route_failure: bool,
    pub resend_min_remaining_seconds: u32,
    /// How far back the route measurements (per carrier and country) look.
    pub route_stats_window_seconds: Seconds,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            workers: count(16),
            message_ttl_seconds: 300,
            lease_seconds: Seconds::new(30),
            claim_batch: count(32),
            claimers: count(2),
            poll_interval_ms: Millis::new(1000),
            retry_base_ms: Millis::new(1000),
            retry_max_ms: Millis::new(30_000),
            max_attempts: count32(5),
            shutdown_grace_seconds: 10,
            notify_interval_ms: Millis::new(100),
            resend_on_route_failure: true,
            resend_min_remaining_seconds: 30,
            route_stats_window_seconds: Seconds::new(3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Final messages (their bodies already erased) are kept at least this many days after they
    /// ended, at most about a day more: a UTC day of them is dropped whole once all of it is
    /// this old (0: once the day is over and all of it is final).
    pub days: u32,
    /// How often the clean-up runs (on one process at a time).
    pub interval_seconds: Seconds,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            days: 7,
            interval_seconds: Seconds::new(60),
        }
    }
}

impl Config {
    pub(super) fn validate_dispatch(&self, problem: &mut impl FnMut(String, String)) {
        // Found by an attack: a retention of millions of days put "now minus retention" out
        // of PostgreSQL's timestamp range and failed every retention pass.
        if self.retention.days > 36_500 {
            problem(
                "retention.days".into(),
                "must be at most 36500 (a hundred years)".into(),
            );
        }
        if !(1..=86_400).contains(&self.dispatch.message_ttl_seconds) {
            problem(
                "dispatch.message_ttl_seconds".into(),
                "must be between 1 and 86400".into(),
            );
        }
        let d = &self.dispatch;
        if !(60..=86_400).contains(&d.route_stats_window_seconds.get()) {
            problem(
                "dispatch.route_stats_window_seconds".into(),
                "must be between 60 and 86400".into(),
            );
        }
        if d.resend_min_remaining_seconds > 86_400 {
            problem(
                "dispatch.resend_min_remaining_seconds".into(),
                "must be at most 86400 (a code's longest life)".into(),
            );
        }
        if d.retry_max_ms < d.retry_base_ms {
            problem(
                "dispatch.retry_max_ms".into(),
                "must be at least retry_base_ms".into(),
            );
        }
        // The lease must outlast the slowest route: every carrier timing out in turn.
        for (i, route) in self.routes.iter().enumerate() {
            let worst_ms: u64 = route
                .carriers
                .iter()
                .filter_map(|name| self.carriers.get(name))
                .map(|c| c.transport.timeout_ms.get())
                .sum();
            if worst_ms >= d.lease_seconds.as_millis() {
                problem(
                    "dispatch.lease_seconds".into(),
                    format!(
                        "must be longer than routes[{i}] can take ({worst_ms} ms if every \
                         carrier times out)"
                    ),
                );
            }
        }
    }
}
