//! A circuit breaker per carrier: after `breaker_failures` consecutive carrier failures the
//! carrier is skipped for `breaker_cooldown_seconds`, then one message probes it (half-open);
//! the probe's result closes or reopens it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The state as tests observe it (production reads the gauge).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out since `since`; a probe that never reports back is replaced after a
    /// cooldown, so a lost probe cannot keep the carrier shut forever.
    HalfOpen {
        since: Instant,
    },
}

pub struct Breaker {
    carrier: String,
    /// `smsgate_carrier_breaker_open{carrier}`: 1 while open or probing.
    gauge: prometheus::IntGauge,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub fn new(
        carrier: &str,
        threshold: u32,
        cooldown: Duration,
        gauge: prometheus::IntGauge,
    ) -> Self {
        gauge.set(0);
        Self {
            carrier: carrier.to_string(),
            gauge,
            threshold,
            cooldown,
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// May a message be sent through the carrier now? A `true` while half-open makes this
    /// caller the probe.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { since: until } if now < until => false,
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen {
                    since: now + self.cooldown,
                };
                tracing::info!(carrier = %self.carrier, "circuit breaker half-open: probing");
                true
            }
        }
    }

    /// How long the breaker stays open from now; `None` when it is closed or a probe is out
    /// (then nobody knows when it will close).
    pub fn open_for(&self) -> Option<Duration> {
        match *self.lock() {
            State::Open { until } => Some(until.saturating_duration_since(Instant::now())),
            State::Closed { .. } | State::HalfOpen { .. } => None,
        }
    }

    /// Records the result of a call that `allow` let through.
    pub fn record(&self, carrier_failure: bool) {
        let mut state = self.lock();
        match (&mut *state, carrier_failure) {
            (
                State::Closed {
                    consecutive_failures,
                },
                false,
            ) => *consecutive_failures = 0,
            (
                State::Closed {
                    consecutive_failures,
                },
                true,
            ) => {
                *consecutive_failures += 1;
                if *consecutive_failures >= self.threshold {
                    tracing::warn!(
                        carrier = %self.carrier, failures = *consecutive_failures,
                        cooldown = ?self.cooldown, "circuit breaker open: skipping the carrier"
                    );
                    *state = State::Open {
                        until: Instant::now() + self.cooldown,
                    };
                    self.gauge.set(1);
                }
            }
            (State::HalfOpen { .. } | State::Open { .. }, false) => {
                tracing::info!(carrier = %self.carrier, "circuit breaker closed: carrier recovered");
                *state = State::Closed {
                    consecutive_failures: 0,
                };
                self.gauge.set(0);
            }
            (State::HalfOpen { .. } | State::Open { .. }, true) => {
                tracing::warn!(carrier = %self.carrier, "circuit breaker reopened: probe failed");
                *state = State::Open {
                    until: Instant::now() + self.cooldown,
                };
            }
        }
    }

    #[cfg(test)]
    pub fn state(&self) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_skips_then_lets_one_probe_through() {
        let gauge = prometheus::IntGauge::new("g", "g").expect("gauge");
        let breaker = Breaker::new("t", 3, Duration::from_millis(50), gauge.clone());
        for _ in 0..2 {
            assert!(breaker.allow());
            breaker.record(true);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(gauge.get(), 1);
        assert!(!breaker.allow(), "skipped while open");

        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow(), "the probe");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn a_failed_probe_reopens_and_a_success_resets_the_count() {
        let gauge = prometheus::IntGauge::new("g", "g").expect("gauge");
        let breaker = Breaker::new("t", 2, Duration::from_millis(20), gauge);
        breaker.record(true);
        breaker.record(false);
        breaker.record(true);
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "failures must be consecutive"
        );
        breaker.record(true);
        std::thread::sleep(Duration::from_millis(30));
        assert!(breaker.allow());
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Open);
    }
}
