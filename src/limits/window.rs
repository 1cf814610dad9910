//! Sliding windows: "at most `max` events in any `window_seconds`", decided on counts per
//! time bucket that the caller's transaction holds locked (sends in `db::recipient_sends`,
//! ingress hits in `db::ingress_hits`), so a limit holds exactly across every process sharing
//! the database.
//!
//! Each window keeps its own counts in `BUCKETS_PER_WINDOW` buckets of a fixed width, so a
//! decision costs the same whatever the window's `max` and whatever traffic it has seen. A
//! bucket counts for the whole window as long as any part of it is inside, so an event is
//! counted for at most one bucket width (1/60 of the window) longer than the window: the
//! limit is never exceeded, and is conservative by at most that much (docs/guarantees.md).

use crate::config::WindowLimit;

/// Buckets per window: the window is conservative by at most 1/60 of its length.
pub const BUCKETS_PER_WINDOW: i64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Send now; the event was counted.
    Allowed,
    /// Every window allows a send again after this many milliseconds.
    WaitMs(i64),
}

/// One bucket of one window: events at `start_ms ..start_ms + width` (epoch ms, database
/// clock) counted in the window of `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bucket {
    window_ms: i64,
    start_ms: i64,
    count: i64,
}

/// The counts of one key: every window of it, bucket by bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(Vec<Bucket>);

fn window_ms(window: &WindowLimit) -> i64 {
    i64::from(window.window_seconds.get()) * 1000
}

/// How wide a bucket of a window of `window_ms` is.
fn width(window_ms: i64) -> i64 {
    (window_ms / BUCKETS_PER_WINDOW).max(1)
}

/// SQL: a row's `counts` as `Counts::from_stored` reads them, whatever an edit left there:
/// no NULL element, one dimension (a hand-edited array must not make its key unusable).
pub const STORED_COUNTS: &str = "ARRAY(SELECT x FROM unnest(counts) AS x WHERE x IS NOT NULL)";

/// SQL: the stored counts of one event at `now.ms` in each window of `v.spans` (from
/// `Counts::spans`), bucketed exactly as `Counts::add` buckets it. For a row created by the
/// decision that counts its first event.
pub const FIRST_EVENT: &str = "ARRAY(
        SELECT x FROM unnest(string_to_array(v.spans, ',')::bigint[]) WITH ORDINALITY AS w(ms, i),
             LATERAL (SELECT greatest(w.ms / 60, 1) AS width) b,
             LATERAL unnest(ARRAY[w.ms, (now.ms / b.width) * b.width, 1])
                 WITH ORDINALITY AS e(x, j)
        ORDER BY w.i, e.j)";

/// How long after a key's row was last marked updated its counts can still matter, for a
/// window of `window_seconds` (what the retention sweep keeps): the window, one bucket, and
/// the minute a row's `updated_at` may lag its last update (it moves at most once a minute,
/// so busy rows are updated in place).
pub fn counted_for_seconds(window_seconds: u32) -> u32 {
    window_seconds.saturating_add(window_seconds / 60 + 1 + 60)
}

/// The start of the bucket of a window of `window_ms` that holds `at_ms`.
fn bucket_start(window_ms: i64, at_ms: i64) -> i64 {
    at_ms.div_euclid(width(window_ms)) * width(window_ms)
}

/// What a stored value may be, so no arithmetic on it can overflow: times within ±10^15 ms
/// of the epoch (tens of thousands of years), windows up to the longest the configuration
/// accepts (u32::MAX seconds), counts up to 10^12.
const MAX_TIME_MS: i64 = 1_000_000_000_000_000;
const MAX_WINDOW_MS: i64 = u32::MAX as i64 * 1000;
const MAX_COUNT: i64 = 1_000_000_000_000;

impl Bucket {
    /// Whether any part of the bucket is still inside its window at `now_ms`.
    fn inside(&self, now_ms: i64) -> bool {
        self.leaves_at() - self.window_ms > now_ms.saturating_sub(self.window_ms)
    }

    /// When the bucket leaves its window (epoch ms).
    fn leaves_at(&self) -> i64 {
        self.start_ms
            .saturating_add(width(self.window_ms))
            .saturating_add(self.window_ms)
    }

    fn plausible(&self) -> bool {
        (1..=MAX_WINDOW_MS).contains(&self.window_ms)
            && (-MAX_TIME_MS..=MAX_TIME_MS).contains(&self.start_ms)
            && (1..=MAX_COUNT).contains(&self.count)
    }
}

impl Counts {
    /// Reads the stored form: (window ms, bucket start ms, count) triples, in any order. A
    /// malformed triple (a count or window not above zero, a value out of any plausible range,
    /// a short tail) is dropped: the database holds only what `to_stored` wrote unless someone
    /// edited it, and nothing read back may panic.
    pub fn from_stored(stored: &[i64]) -> Self {
        Self(
            stored
                .chunks_exact(3)
                .map(|t| Bucket {
                    window_ms: t[0],
                    start_ms: t[1],
                    count: t[2],
                })
                .filter(Bucket::plausible)
                .collect(),
        )
    }

    /// The log of event times kept before buckets (one epoch ms per event), counted in each of
    /// `windows`: a deployment upgrading keeps every event its limits had seen.
    pub fn from_event_log(log: &[i64], windows: &[WindowLimit]) -> Self {
        let mut counts = Self::default();
        for &at_ms in log
            .iter()
            .filter(|t| (-MAX_TIME_MS..=MAX_TIME_MS).contains(*t))
        {
            counts.add(windows, at_ms, 1);
        }
        counts
    }

    /// Counts `other`'s events here too.
    pub fn absorb(&mut self, other: Counts) {
        for bucket in other.0 {
            match self
                .0
                .iter_mut()
                .find(|b| b.window_ms == bucket.window_ms && b.start_ms == bucket.start_ms)
            {
                Some(mine) => mine.count = mine.count.saturating_add(bucket.count),
                None => self.0.push(bucket),
            }
        }
    }

    /// A row's stored counts with the event log an earlier version kept beside them (before
    /// buckets) counted in.
    pub fn from_row(stored: &[i64], legacy: &[i64], windows: &[WindowLimit]) -> Self {
        let mut counts = Self::from_stored(stored);
        counts.absorb(Self::from_event_log(legacy, windows));
        counts
    }

    pub fn to_stored(&self) -> Vec<i64> {
        self.0
            .iter()
            .flat_map(|b| [b.window_ms, b.start_ms, b.count])
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same buckets, in any order.
    pub fn same_as(&self, other: &Counts) -> bool {
        let sorted = |c: &Counts| {
            let mut buckets = c.0.clone();
            buckets.sort_unstable_by_key(|b| (b.window_ms, b.start_ms));
            buckets
        };
        sorted(self) == sorted(other)
    }

    /// The windows' lengths in ms, each once, sorted: what `FIRST_EVENT` counts a new key's
    /// first event in, as `add` would.
    pub fn spans(windows: &[WindowLimit]) -> String {
        let mut spans: Vec<i64> = windows.iter().map(window_ms).collect();
        spans.sort_unstable();
        spans.dedup();
        let spans: Vec<String> = spans.iter().map(i64::to_string).collect();
        spans.join(",")
    }

    /// Adds `delta` events at `at_ms` to each distinct window of `windows` (a negative delta
    /// takes events out; a bucket never goes below zero and empty buckets are dropped).
    fn add(&mut self, windows: &[WindowLimit], at_ms: i64, delta: i64) {
        let mut spans: Vec<i64> = windows.iter().map(window_ms).collect();
        spans.sort_unstable();
        spans.dedup();
        for window_ms in spans {
            let start_ms = bucket_start(window_ms, at_ms);
            match self
                .0
                .iter_mut()
                .find(|b| b.window_ms == window_ms && b.start_ms == start_ms)
            {
                Some(bucket) => bucket.count = bucket.count.saturating_add(delta).max(0),
                None if delta > 0 => self.0.push(Bucket {
                    window_ms,
                    start_ms,
                    count: delta,
                }),
                None => {}
            }
        }
        self.0.retain(|b| b.count > 0);
    }

    /// Takes one event counted at `at_ms` out again (it was admitted, then not made).
    pub fn withdraw(&mut self, windows: &[WindowLimit], at_ms: i64) {
        self.add(windows, at_ms, -1);
    }

    /// Takes `events` counted at `at_ms` out again (a slice's unused part, given back).
    pub fn withdraw_many(&mut self, windows: &[WindowLimit], at_ms: i64, events: i64) {
        self.add(windows, at_ms, -events.clamp(0, MAX_COUNT));
    }

    /// Drops the buckets of windows no longer configured, and those that left their window.
    fn prune(&mut self, windows: &[WindowLimit], now_ms: i64) {
        self.0
            .retain(|b| b.inside(now_ms) && windows.iter().any(|w| window_ms(w) == b.window_ms));
    }

    /// The events a window counts at `now_ms`, oldest bucket first.
    fn inside(&self, window_ms: i64, now_ms: i64) -> Vec<Bucket> {
        let mut inside: Vec<Bucket> = self
            .0
            .iter()
            .filter(|b| b.window_ms == window_ms && b.inside(now_ms))
            .copied()
            .collect();
        inside.sort_unstable_by_key(|b| b.start_ms);
        inside
    }
}

/// Decides one event against `windows` and counts it in `counts` when allowed.
pub fn admit(counts: &mut Counts, now_ms: i64, windows: &[WindowLimit]) -> Admission {
    counts.prune(windows, now_ms);
    let mut wait_ms = 0;
    for window in windows {
        let span_ms = window_ms(window);
        let inside = counts.inside(span_ms, now_ms);
        let max = i64::from(window.max.get());
        let mut counted = inside
            .iter()
            .fold(0i64, |sum, b| sum.saturating_add(b.count));
        // The window frees a slot when enough of its oldest buckets have left it.
        for bucket in &inside {
            if counted < max {
                break;
            }
            counted -= bucket.count;
            wait_ms = wait_ms.max(bucket.leaves_at().saturating_sub(now_ms));
        }
    }
    if wait_ms > 0 {
        Admission::WaitMs(wait_ms)
    } else {
        counts.add(windows, now_ms, 1);
        Admission::Allowed
    }
}

/// What [`reserve`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reserved {
    /// Events counted at once (at most the number wanted).
    pub granted: i64,
    /// When fewer than wanted fit: how long until the windows allow one more.
    pub wait_ms: Option<i64>,
}

/// Counts up to `wanted` events at `now_ms` at once, as many as `admit` called that many
/// times would allow: what every window has room for.
pub fn reserve(counts: &mut Counts, now_ms: i64, windows: &[WindowLimit], wanted: i64) -> Reserved {
    counts.prune(windows, now_ms);
    let room = windows
        .iter()
        .map(|window| {
            let counted = counts
                .inside(window_ms(window), now_ms)
                .iter()
                .fold(0i64, |sum, b| sum.saturating_add(b.count));
            (i64::from(window.max.get()) - counted).max(0)
        })
        .min()
        .unwrap_or(0);
    let granted = room.min(wanted.clamp(0, MAX_COUNT));
    if granted > 0 {
        counts.add(windows, now_ms, granted);
    }
    let wait_ms = (granted < wanted).then(|| match admit(&mut counts.clone(), now_ms, windows) {
        Admission::WaitMs(wait_ms) => wait_ms,
        // Not reachable: the room is used up. Ask again in a second rather than never.
        Admission::Allowed => 1_000,
    });
    Reserved { granted, wait_ms }
}

/// How wide a bucket of `window` is (ms).
pub fn bucket_width_ms(window: &WindowLimit) -> i64 {
    width(window_ms(window))
}

/// Whether `a_ms` and `b_ms` fall in the same bucket of every window.
pub fn same_buckets(windows: &[WindowLimit], a_ms: i64, b_ms: i64) -> bool {
    windows.iter().all(|window| {
        let span = window_ms(window);
        bucket_start(span, a_ms) == bucket_start(span, b_ms)
    })
}

/// When the bucket `now_ms` falls in ends first among the windows: an event counted now is
/// counted in that bucket of each window, so a slice of them may be spent until then.
pub fn current_buckets_end_in_ms(windows: &[WindowLimit], now_ms: i64) -> i64 {
    windows
        .iter()
        .map(|window| {
            let span = window_ms(window);
            bucket_start(span, now_ms) + width(span) - now_ms
        })
        .min()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_PER_TEN_MIN: WindowLimit = WindowLimit::new(3, 600);
    const TEN_PER_DAY: WindowLimit = WindowLimit::new(10, 86_400);

    #[test]
    fn a_window_allows_max_events_then_waits_for_the_oldest_bucket_to_leave() {
        let mut counts = Counts::default();
        for t in [0, 1_000, 12_000] {
            assert_eq!(
                admit(&mut counts, t, &[THREE_PER_TEN_MIN]),
                Admission::Allowed
            );
        }
        // The bucket of 0 and 1 000 (10 s wide) leaves at 610 000: two slots free then.
        assert_eq!(
            admit(&mut counts, 13_000, &[THREE_PER_TEN_MIN]),
            Admission::WaitMs(597_000)
        );
        assert_eq!(
            admit(&mut counts, 609_999, &[THREE_PER_TEN_MIN]),
            Admission::WaitMs(1)
        );
        assert_eq!(
            admit(&mut counts, 610_000, &[THREE_PER_TEN_MIN]),
            Admission::Allowed
        );
    }

    #[test]
    fn the_strictest_window_decides() {
        let mut counts = Counts::default();
        for i in 0..10 {
            assert_eq!(
                admit(&mut counts, i * 700_000, &[THREE_PER_TEN_MIN, TEN_PER_DAY]),
                Admission::Allowed
            );
        }
        let now = 9 * 700_000 + 1;
        // The day's first bucket (1 440 s wide, from 0) leaves at 86 400 000 + 1 440 000.
        assert_eq!(
            admit(&mut counts, now, &[THREE_PER_TEN_MIN, TEN_PER_DAY]),
            Admission::WaitMs(86_400_000 + 1_440_000 - now)
        );
    }

    #[test]
    fn the_cost_does_not_grow_with_max_or_traffic() {
        let huge = WindowLimit::new(1_000_000, 3_600);
        let mut counts = Counts::default();
        for t in 0..100_000 {
            assert_eq!(admit(&mut counts, t * 50, &[huge]), Admission::Allowed);
        }
        assert!(counts.0.len() as i64 <= BUCKETS_PER_WINDOW + 1);
    }

    #[test]
    fn buckets_that_left_every_window_and_unconfigured_windows_are_dropped() {
        let mut counts = Counts::from_event_log(&[1, 2, 3], &[THREE_PER_TEN_MIN, TEN_PER_DAY]);
        assert_eq!(counts.0.len(), 2);
        assert_eq!(
            admit(&mut counts, 700_000, &[THREE_PER_TEN_MIN]),
            Admission::Allowed
        );
        assert_eq!(counts.to_stored(), vec![600_000, 700_000, 1]);
    }

    #[test]
    fn a_withdrawn_event_frees_its_slot_in_every_window() {
        let windows = [THREE_PER_TEN_MIN, TEN_PER_DAY];
        let mut counts = Counts::default();
        for t in [0, 1, 2] {
            assert_eq!(admit(&mut counts, t, &windows), Admission::Allowed);
        }
        counts.withdraw(&windows, 1);
        assert_eq!(admit(&mut counts, 3, &windows), Admission::Allowed);
        // Withdrawing what was never counted changes nothing.
        counts.withdraw(&windows, 5_000_000);
        assert!(matches!(
            admit(&mut counts, 4, &windows),
            Admission::WaitMs(_)
        ));
    }

    /// Found by an attack: windows over ten years, which the configuration accepts (up to
    /// u32::MAX seconds), were dropped as implausible when read back, so nothing counted.
    #[test]
    fn the_longest_window_the_configuration_accepts_counts() {
        let longest = WindowLimit::new(1, u32::MAX);
        let mut counts = Counts::default();
        assert_eq!(admit(&mut counts, 1_000, &[longest]), Admission::Allowed);
        let mut read_back = Counts::from_stored(&counts.to_stored());
        assert!(matches!(
            admit(&mut read_back, 2_000, &[longest]),
            Admission::WaitMs(_)
        ));
    }

    #[test]
    fn malformed_stored_counts_are_dropped_not_trusted() {
        let counts = Counts::from_stored(&[600_000, 0, 2, 0, 5, 5, 600_000, 10, -3, 1, 2]);
        assert_eq!(counts.to_stored(), vec![600_000, 0, 2]);
        // Found by an attack: values at the ends of i64 overflowed the arithmetic.
        let mut edited = Counts::from_stored(&[
            600_000,
            i64::MAX - 5,
            1,
            600_000,
            0,
            i64::MAX,
            600_000,
            1,
            i64::MAX,
            i64::MAX,
            0,
            1,
        ]);
        assert!(edited.is_empty());
        let mut legacy = Counts::from_event_log(&[i64::MIN, i64::MAX, 5], &[THREE_PER_TEN_MIN]);
        assert_eq!(legacy.to_stored(), vec![600_000, 0, 1]);
        assert_eq!(
            admit(&mut edited, 0, &[THREE_PER_TEN_MIN]),
            Admission::Allowed
        );
        assert_eq!(
            admit(&mut legacy, i64::MAX, &[THREE_PER_TEN_MIN]),
            Admission::Allowed
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Events admitted so far, against windows of 1–20 events in 1–120 s, tried at random
        /// steps of up to 10 s.
        fn scenario() -> impl Strategy<Value = (Vec<WindowLimit>, Vec<i64>)> {
            (
                proptest::collection::vec((1u32..20, 1u32..120), 1..3),
                proptest::collection::vec(0i64..10_000, 1..300),
            )
                .prop_map(|(windows, steps)| {
                    let windows = windows
                        .into_iter()
                        .map(|(max, seconds)| WindowLimit::new(max, seconds))
                        .collect();
                    (windows, steps)
                })
        }

        /// Events in (at - span, at].
        fn within(events: &[i64], at: i64, span: i64) -> i64 {
            events.iter().filter(|&&e| e > at - span && e <= at).count() as i64
        }

        proptest! {
            /// Never one event past a cap; a refusal only when a window stretched by one
            /// bucket is full; and the wait it gives is exactly when the event gets in.
            #[test]
            fn buckets_never_exceed_a_cap_and_are_conservative_by_at_most_one_bucket(
                (windows, steps) in scenario()
            ) {
                let mut counts = Counts::default();
                let mut admitted: Vec<i64> = Vec::new();
                let mut now = 1_700_000_000_000i64;
                for step in steps {
                    now += step;
                    let before = counts.clone();
                    match admit(&mut counts, now, &windows) {
                        Admission::Allowed => {
                            admitted.push(now);
                            for w in &windows {
                                let span = window_ms(w);
                                prop_assert!(within(&admitted, now, span) <= i64::from(w.max.get()));
                            }
                        }
                        Admission::WaitMs(wait) => {
                            prop_assert!(wait > 0);
                            prop_assert!(windows.iter().any(|w| {
                                let span = window_ms(w) + width(window_ms(w));
                                within(&admitted, now, span) >= i64::from(w.max.get())
                            }), "refused with room in every stretched window");
                            let mut later = before.clone();
                            prop_assert_eq!(admit(&mut later, now + wait, &windows), Admission::Allowed);
                            let mut sooner = before;
                            prop_assert!(matches!(admit(&mut sooner, now + wait - 1, &windows), Admission::WaitMs(_)));
                        }
                    }
                }
                prop_assert!(counts.0.len() as i64 <= (BUCKETS_PER_WINDOW + 1) * windows.len() as i64);
            }

            /// A slice reserved at once counts what as many single admissions would, and
            /// says the same wait when it falls short.
            #[test]
            fn a_reservation_counts_what_as_many_admissions_would(
                (windows, steps) in scenario(), wanted in 0i64..40
            ) {
                let mut counts = Counts::default();
                let mut now = 1_700_000_000_000i64;
                for step in steps {
                    now += step;
                    let mut one_by_one = counts.clone();
                    one_by_one.prune(&windows, now);
                    let mut admitted = 0;
                    let mut wait = None;
                    while admitted < wanted {
                        match admit(&mut one_by_one, now, &windows) {
                            Admission::Allowed => admitted += 1,
                            Admission::WaitMs(ms) => {
                                wait = Some(ms);
                                break;
                            }
                        }
                    }
                    let reserved = reserve(&mut counts, now, &windows, wanted);
                    prop_assert_eq!(reserved, Reserved { granted: admitted, wait_ms: wait });
                    prop_assert!(counts.same_as(&one_by_one));
                    // Give some back now and then, as an expired slice does.
                    if step % 3 == 0 {
                        counts.withdraw_many(&windows, now, reserved.granted / 2);
                    }
                }
            }
        }
    }
}
