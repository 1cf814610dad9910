//! The retry policy's numbers: the backoff ceiling for each attempt and the attempt limit.
//! What becomes of a failed attempt (the jittered delay, `Retry-After` as its floor, expiry)
//! is decided in `decide.rs`, the one place that draws it.

use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The upper bound of the jittered delay after attempt `attempt` (1-based) failed:
    /// `min(max, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_maximum() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
            max_attempts: 5,
        };
        let ceilings: Vec<u128> = (1..=6).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
    }
}
