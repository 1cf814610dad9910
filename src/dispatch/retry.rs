//! When to try again: exponential backoff with full jitter, never sooner than the carrier's
//! `Retry-After`.

use std::time::Duration;

use rand::RngExt;

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The delay after dispatch attempt `attempt` (1-based) failed: a uniform draw from
    /// `[0, min(max, base * 2^(attempt-1))]`, raised to `retry_after` when the carrier sent one.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered = Duration::from_millis(
            rand::rng().random_range(0..=u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX)),
        );
        jittered.max(retry_after.unwrap_or_default())
    }

    /// The upper bound of the jittered delay for `attempt`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_maximum_and_retry_after_is_a_floor() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
            max_attempts: 5,
        };
        let ceilings: Vec<u128> = (1..=6).map(|a| policy.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        for attempt in 1..=6 {
            assert!(policy.delay(attempt, None) <= policy.ceiling(attempt));
            let floor = Duration::from_secs(3);
            assert!(policy.delay(attempt, Some(floor)) >= floor);
        }
    }
}
