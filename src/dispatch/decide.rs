//! What becomes of a message once its attempt has been through the route without a final
//! answer: a pure function of what the attempt saw, the retry policy and the code's remaining
//! life. Randomness (the backoff's jitter) comes in as a draw, so tests can pin it.

use std::time::Duration;

use super::retry::RetryPolicy;

/// A message that could not start within its lease goes back for this long, so the same
/// saturated carrier is not asked again at once.
pub const BUSY_PAUSE: Duration = Duration::from_secs(2);
/// A message whose every carrier is skipped (disabled, breaker open) waits at least this
/// long between looks. A look costs two queue writes (the claim and the hand-back), so
/// waiting costs at most one write per message per 2 s, and a message goes out within about
/// five seconds of its carrier being enabled again (plus the second the switch takes).
pub const SKIPPED_MIN_WAIT: Duration = Duration::from_secs(4);
pub const SKIPPED_MAX_WAIT: Duration = Duration::from_secs(5);

/// What the attempt saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteOutcome {
    /// At least one carrier was called (none accepted, none refused the recipient).
    pub called: bool,
    /// A carrier had no turn within the lease: the route was not tried whole.
    pub no_turn: bool,
    /// Every carrier before the end was skipped; `Some(soonest)` is when the first of them may
    /// be usable again (`None` inside: unknown, an operator disabled it).
    pub skipped_until: Option<Option<Duration>>,
    /// The longest `Retry-After` a carrier asked for.
    pub retry_after: Option<Duration>,
}

/// Where the message stands.
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    /// Attempts counted before this one.
    pub attempts_before: i32,
    /// What is left of the code's life.
    pub left: Duration,
    pub shutting_down: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing was sent: back to the queue for this long, the attempt not counted.
    Release(Duration),
    /// Try again after `delay`; `counted` is false when the route was not tried whole.
    Retry { delay: Duration, counted: bool },
    /// Every attempt is spent: the message fails.
    GiveUp { attempts: i32 },
    /// The wait would outlast the code; `counted` as in `Retry`.
    Expire { counted: bool },
}

/// The decision. `draw(low, high)` picks uniformly from `[low, high]`.
pub fn decide(
    route: RouteOutcome,
    policy: &RetryPolicy,
    standing: Standing,
    draw: &mut impl FnMut(Duration, Duration) -> Duration,
) -> Decision {
    if !route.called {
        let wait = if route.no_turn && standing.shutting_down {
            Duration::ZERO
        } else if route.no_turn {
            BUSY_PAUSE
        } else if let Some(usable_in) = route.skipped_until {
            usable_in
                .unwrap_or_else(|| draw(SKIPPED_MIN_WAIT, SKIPPED_MAX_WAIT))
                .max(SKIPPED_MIN_WAIT)
        } else {
            // No carrier is routed: a configuration fault that only a restart mends.
            backoff(policy, 1, None, draw).max(SKIPPED_MIN_WAIT)
        };
        return unless_expired(wait, standing, false, Decision::Release(wait));
    }
    if route.no_turn {
        // A carrier failed and the next had no turn within the lease (a capped carrier busy):
        // not counted, or a message could fail without its healthy carrier ever being asked.
        let attempt = standing.attempts_before.max(1);
        let delay = backoff(policy, attempt, route.retry_after, draw).max(BUSY_PAUSE);
        let counted = false;
        return unless_expired(delay, standing, counted, Decision::Retry { delay, counted });
    }
    let attempts = standing.attempts_before + 1;
    if attempts >= policy.max_attempts as i32 {
        return Decision::GiveUp { attempts };
    }
    let delay = backoff(policy, attempts.max(1), route.retry_after, draw);
    let counted = true;
    unless_expired(delay, standing, counted, Decision::Retry { delay, counted })
}

/// Full jitter below the policy's ceiling for `attempt`, never below `retry_after`.
fn backoff(
    policy: &RetryPolicy,
    attempt: i32,
    retry_after: Option<Duration>,
    draw: &mut impl FnMut(Duration, Duration) -> Duration,
) -> Duration {
    let ceiling = policy.ceiling(u32::try_from(attempt).unwrap_or(1));
    draw(Duration::ZERO, ceiling).max(retry_after.unwrap_or_default())
}

fn unless_expired(
    wait: Duration,
    standing: Standing,
    counted: bool,
    decision: Decision,
) -> Decision {
    if wait >= standing.left {
        Decision::Expire { counted }
    } else {
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(10),
        max_attempts: 3,
    };

    fn standing(attempts_before: i32, left_secs: u64) -> Standing {
        Standing {
            attempts_before,
            left: Duration::from_secs(left_secs),
            shutting_down: false,
        }
    }

    /// Always the top of the range, so the ceilings show.
    fn highest(_: Duration, high: Duration) -> Duration {
        high
    }

    fn lowest(low: Duration, _: Duration) -> Duration {
        low
    }

    #[test]
    fn nothing_sent_goes_back_uncounted_for_as_long_as_the_reason_says() {
        let no_turn = RouteOutcome {
            no_turn: true,
            ..Default::default()
        };
        let calm = standing(0, 300);
        let decide_with = |route, standing| decide(route, &POLICY, standing, &mut highest);
        assert_eq!(decide_with(no_turn, calm), Decision::Release(BUSY_PAUSE));
        let stopping = Standing {
            shutting_down: true,
            ..calm
        };
        assert_eq!(
            decide_with(no_turn, stopping),
            Decision::Release(Duration::ZERO)
        );
        let breaker = RouteOutcome {
            skipped_until: Some(Some(Duration::from_secs(20))),
            ..Default::default()
        };
        assert_eq!(
            decide_with(breaker, calm),
            Decision::Release(Duration::from_secs(20))
        );
        let soon = RouteOutcome {
            skipped_until: Some(Some(Duration::from_millis(10))),
            ..Default::default()
        };
        assert_eq!(decide_with(soon, calm), Decision::Release(SKIPPED_MIN_WAIT));
        let disabled = RouteOutcome {
            skipped_until: Some(None),
            ..Default::default()
        };
        assert_eq!(
            decide(disabled, &POLICY, calm, &mut lowest),
            Decision::Release(SKIPPED_MIN_WAIT)
        );
        assert_eq!(
            decide_with(disabled, calm),
            Decision::Release(SKIPPED_MAX_WAIT)
        );
        let unrouted = RouteOutcome::default();
        assert_eq!(
            decide_with(unrouted, calm),
            Decision::Release(SKIPPED_MIN_WAIT)
        );
    }

    #[test]
    fn a_failed_route_backs_off_counts_and_gives_up_at_the_maximum() {
        let failed = RouteOutcome {
            called: true,
            ..Default::default()
        };
        let retry = |attempts_before| {
            decide(
                failed,
                &POLICY,
                standing(attempts_before, 300),
                &mut highest,
            )
        };
        assert_eq!(
            retry(0),
            Decision::Retry {
                delay: Duration::from_millis(100),
                counted: true
            }
        );
        assert_eq!(
            retry(1),
            Decision::Retry {
                delay: Duration::from_millis(200),
                counted: true
            }
        );
        assert_eq!(retry(2), Decision::GiveUp { attempts: 3 });
    }

    #[test]
    fn retry_after_is_a_floor_and_a_wait_past_the_code_expires_it() {
        let throttled = RouteOutcome {
            called: true,
            retry_after: Some(Duration::from_secs(30)),
            ..Default::default()
        };
        assert_eq!(
            decide(throttled, &POLICY, standing(0, 300), &mut lowest),
            Decision::Retry {
                delay: Duration::from_secs(30),
                counted: true
            }
        );
        assert_eq!(
            decide(throttled, &POLICY, standing(0, 30), &mut lowest),
            Decision::Expire { counted: true }
        );
        let busy = RouteOutcome {
            no_turn: true,
            ..Default::default()
        };
        assert_eq!(
            decide(busy, &POLICY, standing(0, 1), &mut lowest),
            Decision::Expire { counted: false }
        );
    }

    #[test]
    fn a_route_cut_short_by_a_busy_carrier_retries_uncounted_after_the_busy_pause() {
        let cut_short = RouteOutcome {
            called: true,
            no_turn: true,
            ..Default::default()
        };
        assert_eq!(
            decide(cut_short, &POLICY, standing(2, 300), &mut lowest),
            Decision::Retry {
                delay: BUSY_PAUSE,
                counted: false
            },
            "not given up, though a counted attempt would have been the last"
        );
        assert_eq!(
            decide(cut_short, &POLICY, standing(2, 1), &mut lowest),
            Decision::Expire { counted: false },
            "an expiry after a route cut short does not count its attempt either"
        );
    }
}
