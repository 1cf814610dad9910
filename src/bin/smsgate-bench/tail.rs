//! Where a latency tail comes from: smsgate's slow requests lined up against PostgreSQL's own
//! commit probe run at the same time. A request that is slow while a one-row pgbench commit
//! is also slow was held up by the machine (storage or CPU), not by smsgate.

use std::time::{Duration, Instant, SystemTime};

use crate::load::quantile;
use crate::pg::ProbeCommit;

/// The probe's rate: often enough to see every stall of a few milliseconds, light enough
/// (a few percent of the ingress's commits) not to make them.
pub const PROBE_RATE: u32 = 200;
/// A probe commit this slow is a stall: about 25 times its usual latency on this machine.
pub const STALL: Duration = Duration::from_millis(5);

/// Converts the load generator's monotonic instants to the wall clock pgbench logs in.
#[derive(Clone, Copy)]
pub struct Anchor {
    instant: Instant,
    system: SystemTime,
}

impl Anchor {
    pub fn now() -> Self {
        Self {
            instant: Instant::now(),
            system: SystemTime::now(),
        }
    }

    pub fn at(&self, instant: Instant) -> SystemTime {
        match instant.checked_duration_since(self.instant) {
            Some(after) => self.system + after,
            None => self.system - self.instant.duration_since(instant),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Tail {
    pub probe_commits: usize,
    pub probe_p99_ms: f64,
    pub probe_max_ms: f64,
    pub probe_stalls: usize,
    /// The threshold a span had to exceed to count as slow.
    pub slow_over_ms: f64,
    pub slow: usize,
    /// Slow spans that overlap a probe stall.
    pub slow_during_stall: usize,
}

impl Tail {
    /// Lines up `spans` (start and end of each request) slower than `threshold` with the
    /// probe's stalls.
    pub fn measure(
        spans: impl Iterator<Item = (SystemTime, SystemTime)>,
        threshold: Duration,
        probe: &[ProbeCommit],
    ) -> Self {
        let stalls: Vec<&ProbeCommit> = probe.iter().filter(|c| c.latency() > STALL).collect();
        let mut latencies: Vec<u64> = probe
            .iter()
            .map(|c| c.latency().as_micros() as u64)
            .collect();
        let mut tail = Tail {
            probe_commits: probe.len(),
            probe_p99_ms: quantile(&mut latencies, 0.99) / 1000.0,
            probe_max_ms: latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
            probe_stalls: stalls.len(),
            slow_over_ms: threshold.as_secs_f64() * 1000.0,
            ..Tail::default()
        };
        for (start, end) in spans {
            if end.duration_since(start).unwrap_or_default() <= threshold {
                continue;
            }
            tail.slow += 1;
            if stalls.iter().any(|s| start < s.ended && s.started < end) {
                tail.slow_during_stall += 1;
            }
        }
        tail
    }

    /// The share of slow spans that a probe stall explains, in percent.
    pub fn explained_percent(&self) -> f64 {
        100.0 * self.slow_during_stall as f64 / self.slow.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn only_slow_spans_that_overlap_a_stall_are_explained() {
        let probe = [
            ProbeCommit {
                started: at(0),
                ended: at(1),
            },
            ProbeCommit {
                started: at(100),
                ended: at(180),
            },
        ];
        let spans = [
            (at(90), at(120)),  // slow, overlaps the stall
            (at(300), at(330)), // slow, nothing stalled
            (at(110), at(112)), // fast: not counted
        ];
        let tail = Tail::measure(spans.into_iter(), Duration::from_millis(10), &probe);
        assert_eq!(
            (tail.slow, tail.slow_during_stall, tail.probe_stalls),
            (2, 1, 1)
        );
        assert_eq!(tail.probe_max_ms, 80.0);
        assert_eq!(tail.explained_percent(), 50.0);
    }
}
