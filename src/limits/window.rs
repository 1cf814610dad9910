//! Sliding windows: "at most `max` events in any `window_seconds`", decided on a log of event
//! times that the caller's transaction holds locked (sends in `db::queue`, ingress hits in
//! `db::ingress_hits`), so a limit holds exactly across every process sharing the database.

use crate::config::WindowLimit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send now; the send time was appended to the log.
    Allowed,
    /// Every window allows a send again after this many milliseconds.
    WaitMs(i64),
}

/// Decides one message against `windows` and records it in `log` when allowed. `log` holds
/// send times in epoch milliseconds; entries older than the longest window are dropped.
pub fn admit(log: &mut Vec<i64>, now_ms: i64, windows: &[WindowLimit]) -> Admission {
    let longest_ms = windows
        .iter()
        .map(|w| i64::from(w.window_seconds.get()) * 1000)
        .max()
        .unwrap_or(0);
    log.retain(|&sent| sent > now_ms - longest_ms);
    log.sort_unstable();

    let mut wait_ms = 0;
    for window in windows {
        let span_ms = i64::from(window.window_seconds.get()) * 1000;
        let inside: Vec<i64> = log
            .iter()
            .copied()
            .filter(|&sent| sent > now_ms - span_ms)
            .collect();
        let max = window.max.get() as usize;
        if inside.len() >= max {
            // The window frees a slot when enough of its oldest sends have left it.
            let oldest_that_must_leave = inside[inside.len() - max];
            wait_ms = wait_ms.max(oldest_that_must_leave + span_ms - now_ms);
        }
    }
    if wait_ms > 0 {
        Admission::WaitMs(wait_ms)
    } else {
        log.push(now_ms);
        Admission::Allowed
    }
}

/// A PostgreSQL array literal, bound as text and cast to `bigint[]`.
pub fn to_pg_array(log: &[i64]) -> String {
    let items: Vec<String> = log.iter().map(i64::to_string).collect();
    format!("{{{}}}", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_PER_TEN_MIN: WindowLimit = WindowLimit::new(3, 600);
    const TEN_PER_DAY: WindowLimit = WindowLimit::new(10, 86_400);

    #[test]
    fn a_window_allows_max_sends_then_waits_for_the_oldest_to_leave() {
        let mut log = Vec::new();
        for t in [0, 1_000, 2_000] {
            assert_eq!(admit(&mut log, t, &[THREE_PER_TEN_MIN]), Admission::Allowed);
        }
        assert_eq!(
            admit(&mut log, 3_000, &[THREE_PER_TEN_MIN]),
            Admission::WaitMs(597_000)
        );
        assert_eq!(
            admit(&mut log, 600_001, &[THREE_PER_TEN_MIN]),
            Admission::Allowed
        );
    }

    #[test]
    fn the_strictest_window_decides() {
        let mut log: Vec<i64> = (0..10).map(|i| i * 700_000).collect();
        let now = 9 * 700_000 + 1;
        match admit(&mut log, now, &[THREE_PER_TEN_MIN, TEN_PER_DAY]) {
            Admission::WaitMs(wait) => assert_eq!(wait, 86_400_000 - now),
            Admission::Allowed => panic!("the daily window is full"),
        }
    }

    #[test]
    fn entries_older_than_the_longest_window_are_dropped() {
        let mut log = vec![1, 2, 3];
        assert_eq!(
            admit(&mut log, 700_000, &[THREE_PER_TEN_MIN]),
            Admission::Allowed
        );
        assert_eq!(log, vec![700_000]);
        assert_eq!(to_pg_array(&log), "{700000}");
        assert_eq!(to_pg_array(&[]), "{}");
    }
}
