//! Budget slices: a process takes a share of a busy limit (a country's cap, a client address
//! with a high cap, a day's spend ceiling) from the database in one reservation, counted
//! there at once, and spends it locally, so the requests of that country do not all wait on
//! one row. What a slice counts is counted in the database before any of it is used, so a cap
//! is never exceeded across processes; what it holds unused is given back once it expires.
//!
//! A slice of window events may be spent only while the database's clock is still in the
//! bucket it was counted in (an event counted in an earlier bucket would leave the window
//! early), and a spend slice only on its day; the process measures both on its monotonic
//! clock from the moment it asked, which is never later than the database's reading. A slice
//! also expires `HOLD` after it was taken, so a process holds unused budget only briefly
//! (docs/guarantees.md, "Limits").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::NaiveDate;
use tokio::time::Instant;

use super::window::same_buckets;
use crate::config::{Micros, WindowLimit};

/// The longest a slice is held before what is left of it is given back.
pub const HOLD: Duration = Duration::from_secs(5);

/// A slice is this share of a limit: one hundredth of its cap or ceiling.
const SHARE: i64 = 100;

/// A window limit is sliced only when its share is at least this many events; a smaller cap
/// (a number's, a client address's of a few an hour) is decided on its row each time.
const MIN_EVENTS: i64 = 2;

/// Keys remembered as needed before the batches themselves forget the old ones.
const MAX_REMEMBERED: usize = 100_000;

/// A ceiling is sliced only when its share is at least this much (one unit of its currency).
const MIN_MICROS: Micros = 1_000_000;

/// How many events a slice of a key with `windows` holds beyond what a batch needs: `None`
/// when the key is decided on its row every time.
pub fn events_share(windows: &[WindowLimit]) -> Option<i64> {
    let tightest = windows.iter().map(|w| i64::from(w.max.get())).min()?;
    let share = tightest / SHARE;
    (share >= MIN_EVENTS).then_some(share)
}

/// How much a slice of a ceiling holds beyond what a batch needs: `None` when the ceiling is
/// decided on its row every time.
pub fn spend_share(ceiling: Micros) -> Option<Micros> {
    let share = ceiling / SHARE;
    (share >= MIN_MICROS).then_some(share)
}

/// Events of one key counted in the database at `at_ms` (its clock), spendable until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSlice {
    pub windows: Vec<WindowLimit>,
    pub at_ms: i64,
    pub until: Instant,
    pub left: i64,
}

/// Estimated spend counted in the database on `day`, spendable until `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendSlice {
    pub day: NaiveDate,
    pub until: Instant,
    pub left: Micros,
}

/// What a slice held unused when it expired: to be taken out of the database's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    Events {
        key: String,
        windows: Vec<WindowLimit>,
        at_ms: i64,
        count: i64,
    },
    Spend {
        day: NaiveDate,
        scope: String,
        micros: Micros,
    },
}

/// The slices one process holds, shared by its writers.
#[derive(Debug, Default)]
pub struct Slices {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    events: HashMap<String, EventSlice>,
    spend: HashMap<String, SpendSlice>,
    leftovers: Vec<Leftover>,
    /// When each key that may be sliced was last needed by a batch of this process.
    needed: HashMap<String, Instant>,
}

impl State {
    /// Moves every slice that expired by `now` to the leftovers.
    fn expire(&mut self, now: Instant) {
        let leftovers = &mut self.leftovers;
        self.events.retain(|key, slice| {
            let live = slice.until > now;
            if !live && slice.left > 0 {
                leftovers.push(events_leftover(key, slice));
            }
            live
        });
        self.spend.retain(|scope, slice| {
            let live = slice.until > now;
            if !live && slice.left > 0 {
                leftovers.push(spend_leftover(scope, slice));
            }
            live
        });
    }
}

/// What taking and putting back needs of a slice, events or spend alike.
trait Slice: Clone {
    fn left(&mut self) -> &mut i64;
    fn until(&self) -> Instant;
    /// Counted where `other` was (the same buckets of every window, the same day): the two
    /// may be joined, and what is left given back as one.
    fn joins(&self, other: &Self) -> bool;
    /// Makes this slice spendable no longer than `other` is.
    fn expire_with(&mut self, other: &Self);
    fn leftover(&self, name: &str) -> Leftover;
}

impl Slice for EventSlice {
    fn left(&mut self) -> &mut i64 {
        &mut self.left
    }
    fn until(&self) -> Instant {
        self.until
    }
    fn joins(&self, other: &Self) -> bool {
        self.windows == other.windows && same_buckets(&self.windows, self.at_ms, other.at_ms)
    }
    fn expire_with(&mut self, other: &Self) {
        self.until = self.until.min(other.until);
    }
    fn leftover(&self, name: &str) -> Leftover {
        events_leftover(name, self)
    }
}

impl Slice for SpendSlice {
    fn left(&mut self) -> &mut i64 {
        &mut self.left
    }
    fn until(&self) -> Instant {
        self.until
    }
    fn joins(&self, other: &Self) -> bool {
        self.day == other.day
    }
    fn expire_with(&mut self, other: &Self) {
        self.until = self.until.min(other.until);
    }
    fn leftover(&self, name: &str) -> Leftover {
        spend_leftover(name, self)
    }
}

/// Takes up to `wanted` of `name`'s held slice (expired ones already moved out).
fn take<S: Slice>(held: &mut HashMap<String, S>, name: &str, wanted: i64) -> Option<S> {
    let slice = held.get_mut(name)?;
    let taken = (*slice.left()).min(wanted);
    *slice.left() -= taken;
    let mut part = slice.clone();
    *part.left() = taken;
    if *slice.left() == 0 {
        held.remove(name);
    }
    Some(part)
}

/// Keeps what a batch did not use: joined to the held slice when both were counted in the same
/// buckets (or on the same day), spendable until the earlier of their ends; held as `name`'s
/// slice if it has none; given back otherwise. Joining matters under concurrency: with two
/// writers refilling by turns, the held slice is often another reservation's, and a part put
/// back beside it would sit counted and unused until the next give-back, refusing requests
/// far beyond a slice's share (found by an attack: 166 of 900 refused under a cap of 1,000).
fn put_back<S: Slice>(
    held: &mut HashMap<String, S>,
    leftovers: &mut Vec<Leftover>,
    name: &str,
    mut slice: S,
    now: Instant,
) {
    if *slice.left() <= 0 {
        return;
    }
    if slice.until() <= now {
        leftovers.push(slice.leftover(name));
        return;
    }
    match held.get_mut(name) {
        Some(mine) if mine.joins(&slice) => {
            *mine.left() += *slice.left();
            mine.expire_with(&slice);
        }
        Some(_) => leftovers.push(slice.leftover(name)),
        None => {
            held.insert(name.to_string(), slice);
        }
    }
}

fn events_leftover(key: &str, slice: &EventSlice) -> Leftover {
    Leftover::Events {
        key: key.to_string(),
        windows: slice.windows.clone(),
        at_ms: slice.at_ms,
        count: slice.left,
    }
}

pub fn spend_leftover(scope: &str, slice: &SpendSlice) -> Leftover {
    Leftover::Spend {
        day: slice.day,
        scope: scope.to_string(),
        micros: slice.left,
    }
}

impl Slices {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A writer that panicked while holding the lock left the map whole (every change is
        // one insert or removal): keep using it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Of `keys` (whose caps allow a share), those a batch that started at `batch` decides on
    /// slices: the ones this process holds a slice of, or another batch needed within `HOLD`
    /// of this one. A key seen for the first time (a new client address under a high cap) is
    /// decided on its row, as a small cap's is: a slice of a key nobody asks for again would
    /// only be counted and given back. Ask once per batch.
    pub fn busy<'k>(&self, keys: impl Iterator<Item = &'k str>, batch: Instant) -> Vec<&'k str> {
        let mut state = self.state();
        let recently = batch.checked_sub(HOLD);
        if state.needed.len() > MAX_REMEMBERED {
            // The sweep forgets old keys each second; should it be held up (a database that
            // does not answer its give-back), the batches forget them here.
            if let Some(recently) = recently {
                state.needed.retain(|_, at| *at > recently);
            }
        }
        let mut busy = Vec::new();
        for key in keys {
            let held = state.events.contains_key(key);
            let last = state.needed.get(key).copied();
            if held || last.is_some_and(|at| recently.is_none_or(|r| at > r)) {
                busy.push(key);
            }
            let needed = state.needed.entry(key.to_string()).or_insert(batch);
            *needed = (*needed).max(batch);
        }
        busy
    }

    /// Takes up to `wanted` events of `key`'s live slice (`None`: none held).
    pub fn take_events(&self, key: &str, wanted: i64, now: Instant) -> Option<EventSlice> {
        let mut state = self.state();
        state.expire(now);
        take(&mut state.events, key, wanted)
    }

    /// Takes up to `wanted` of the day's spend held for `scope`.
    pub fn take_spend(&self, scope: &str, wanted: Micros, now: Instant) -> Option<SpendSlice> {
        let mut state = self.state();
        state.expire(now);
        take(&mut state.spend, scope, wanted)
    }

    /// Keeps what a batch did not use: joined to the slice it came from, held as the key's
    /// slice if it has none, or given back.
    pub fn put_back_events(&self, key: &str, slice: EventSlice, now: Instant) {
        let mut state = self.state();
        state.expire(now);
        let State {
            events, leftovers, ..
        } = &mut *state;
        put_back(events, leftovers, key, slice, now);
    }

    /// As `put_back_events`, for spend.
    pub fn put_back_spend(&self, scope: &str, slice: SpendSlice, now: Instant) {
        let mut state = self.state();
        state.expire(now);
        let State {
            spend, leftovers, ..
        } = &mut *state;
        put_back(spend, leftovers, scope, slice, now);
    }

    /// What was counted and not used, to be given back (a batch that was not stored).
    pub fn give_back_later(&self, leftovers: Vec<Leftover>) {
        self.state().leftovers.extend(leftovers);
    }

    /// The unused parts of the slices that expired by `now`, taken out of this process; and
    /// keys not needed within `HOLD` are forgotten.
    pub fn take_leftovers(&self, now: Instant) -> Vec<Leftover> {
        let mut state = self.state();
        state.expire(now);
        if let Some(recently) = now.checked_sub(HOLD) {
            state.needed.retain(|_, at| *at > recently);
        }
        std::mem::take(&mut state.leftovers)
    }

    /// Everything this process holds unused (it is stopping).
    pub fn take_all(&self) -> Vec<Leftover> {
        let mut state = self.state();
        let mut leftovers = std::mem::take(&mut state.leftovers);
        leftovers.extend(
            state
                .events
                .drain()
                .filter(|(_, s)| s.left > 0)
                .map(|(key, s)| events_leftover(&key, &s)),
        );
        leftovers.extend(
            state
                .spend
                .drain()
                .filter(|(_, s)| s.left > 0)
                .map(|(scope, s)| spend_leftover(&scope, &s)),
        );
        leftovers
    }
}

/// The event slices one batch may spend, per key, and the keys the database could not give
/// enough of (with when they allow an event again).
#[derive(Debug, Default)]
pub struct EventPool {
    held: HashMap<String, Vec<EventSlice>>,
    dry: HashMap<String, i64>,
}

impl EventPool {
    pub fn hold(&mut self, key: &str, slice: EventSlice) {
        if slice.left > 0 {
            self.held.entry(key.to_string()).or_default().push(slice);
        }
    }

    /// The database had fewer events of `key` than the batch wanted: the next is in `wait_ms`.
    pub fn run_dry(&mut self, key: &str, wait_ms: i64) {
        self.dry.insert(key.to_string(), wait_ms);
    }

    /// Events of `key` this batch may still spend.
    pub fn left(&self, key: &str) -> i64 {
        self.held
            .get(key)
            .map_or(0, |slices| slices.iter().map(|s| s.left).sum())
    }

    /// When `key` has no event left for this batch: how long until it may have one.
    pub fn wait_ms(&self, key: &str) -> Option<i64> {
        // A key the batch asked the database for and got none of is dry; one it never asked
        // for cannot be empty (its needs were counted), but would wait a second, never pass.
        (self.left(key) == 0).then(|| self.dry.get(key).copied().unwrap_or(1_000))
    }

    /// Spends one event of `key`: what to give back if its message is not stored.
    pub fn take(&mut self, key: &str) -> Option<Leftover> {
        let slice = self.held.get_mut(key)?.iter_mut().find(|s| s.left > 0)?;
        slice.left -= 1;
        Some(Leftover::Events {
            key: key.to_string(),
            windows: slice.windows.clone(),
            at_ms: slice.at_ms,
            count: 1,
        })
    }

    /// Keeps at most `keep` of what is left of `key`'s slices counted at `at_ms` (the batch's
    /// own refill); returns how many it dropped, to take out of the counts before they are
    /// written. A refill counts the batch's whole need, and what other limits refused of it
    /// would otherwise stay held, beyond a share, for as long as the slice lasts.
    pub fn trim(&mut self, key: &str, at_ms: i64, keep: i64) -> i64 {
        let mut kept = 0;
        let mut dropped = 0;
        let refills = self.held.get_mut(key).into_iter().flatten();
        for slice in refills.filter(|s| s.at_ms == at_ms) {
            let excess = (slice.left - (keep - kept).max(0)).max(0);
            slice.left -= excess;
            dropped += excess;
            kept += slice.left;
        }
        dropped
    }

    /// Everything the batch holds, as what to give back if it is not decided.
    pub fn taken(&self) -> Vec<Leftover> {
        self.held
            .iter()
            .flat_map(|(key, held)| held.iter().map(|slice| events_leftover(key, slice)))
            .collect()
    }

    /// Whether a slice the batch holds was counted in another bucket than the one the
    /// database's clock reads now (`now_ms`, after the batch waited for its locks): an event
    /// spent from it would leave its window early.
    pub fn stale(&self, now_ms: i64) -> bool {
        self.held
            .values()
            .flatten()
            .any(|slice| !crate::limits::window::same_buckets(&slice.windows, slice.at_ms, now_ms))
    }

    /// Keeps what the batch did not spend in the process.
    pub fn put_back(&mut self, slices: &Slices, now: Instant) {
        for (key, held) in self.held.drain() {
            for slice in held {
                slices.put_back_events(&key, slice, now);
            }
        }
    }
}

/// When a slice counted now must be spent by: the first of `bucket_left_ms` (until the
/// database's clock leaves the bucket it was counted in, or its day) and `HOLD`, measured
/// from `asked` (before the database read its clock, so never later than the database).
pub fn until(asked: Instant, bucket_left_ms: i64) -> Instant {
    let left = Duration::from_millis(bucket_left_ms.max(0).unsigned_abs());
    asked + left.min(HOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(left: i64, until: Instant) -> EventSlice {
        EventSlice {
            windows: vec![WindowLimit::new(1000, 3600)],
            at_ms: 7,
            until,
            left,
        }
    }

    #[test]
    fn only_caps_and_ceilings_with_a_large_enough_share_are_sliced() {
        assert_eq!(events_share(&[WindowLimit::new(10, 3600)]), None);
        assert_eq!(events_share(&[WindowLimit::new(199, 3600)]), None);
        assert_eq!(events_share(&[WindowLimit::new(200, 3600)]), Some(2));
        assert_eq!(
            events_share(&[WindowLimit::new(50_000, 3600), WindowLimit::new(300, 60)]),
            Some(3)
        );
        assert_eq!(spend_share(10_000_000), None);
        assert_eq!(spend_share(100_000_000), Some(1_000_000));
    }

    #[test]
    fn a_slice_is_taken_in_parts_and_what_is_put_back_joins_it() {
        let slices = Slices::default();
        let now = Instant::now();
        slices.put_back_events("cc:x", events(10, now + HOLD), now);
        let first = slices.take_events("cc:x", 4, now).expect("held");
        assert_eq!(first.left, 4);
        let rest = slices.take_events("cc:x", 100, now).expect("held");
        assert_eq!(rest.left, 6);
        assert_eq!(slices.take_events("cc:x", 1, now), None);
        slices.put_back_events("cc:x", first, now);
        assert_eq!(
            slices.take_events("cc:x", 100, now).map(|s| s.left),
            Some(4)
        );
        assert!(slices.take_leftovers(now).is_empty());
    }

    #[test]
    fn an_expired_slice_is_never_spent_and_its_rest_is_given_back() {
        let slices = Slices::default();
        let now = Instant::now();
        slices.put_back_events("cc:x", events(10, now + Duration::from_millis(5)), now);
        let later = now + Duration::from_millis(5);
        assert_eq!(slices.take_events("cc:x", 1, later), None);
        assert_eq!(
            slices.take_leftovers(later),
            vec![Leftover::Events {
                key: "cc:x".into(),
                windows: vec![WindowLimit::new(1000, 3600)],
                at_ms: 7,
                count: 10
            }]
        );
        // Put back after it expired: given back, not held.
        slices.put_back_events("cc:x", events(3, later), later);
        assert_eq!(slices.take_events("cc:x", 1, later), None);
        assert_eq!(slices.take_leftovers(later).len(), 1);
    }

    #[test]
    fn a_slice_from_another_bucket_is_given_back_not_mixed() {
        let slices = Slices::default();
        let now = Instant::now();
        slices.put_back_events("cc:x", events(10, now + HOLD), now);
        // A minute later: another bucket of the hour's window (60 s buckets).
        let mut other = events(2, now + HOLD);
        other.at_ms = 7 + 60_000;
        slices.put_back_events("cc:x", other, now);
        assert_eq!(
            slices.take_events("cc:x", 100, now).map(|s| s.left),
            Some(10)
        );
        assert_eq!(slices.take_leftovers(now).len(), 1);
    }

    #[test]
    fn a_part_of_another_reservation_in_the_same_buckets_joins_the_held_slice() {
        let slices = Slices::default();
        let now = Instant::now();
        slices.put_back_events("cc:x", events(10, now + HOLD), now);
        // Another writer's reservation, 1 ms later, ending sooner.
        let mut other = events(2, now + Duration::from_secs(2));
        other.at_ms = 8;
        slices.put_back_events("cc:x", other, now);
        assert!(
            slices.take_leftovers(now).is_empty(),
            "nothing left counted unused"
        );
        let joined = slices.take_events("cc:x", 100, now).expect("held");
        assert_eq!(joined.left, 12);
        assert_eq!(
            joined.until,
            now + Duration::from_secs(2),
            "the earlier end"
        );
    }

    #[test]
    fn a_key_is_busy_once_an_earlier_batch_needed_it_lately() {
        let slices = Slices::default();
        let first = Instant::now();
        let keys = || ["cc:x"].into_iter();
        assert!(slices.busy(keys(), first).is_empty(), "first sight");
        let second = first + Duration::from_millis(10);
        assert_eq!(slices.busy(keys(), second), ["cc:x"]);
        // A batch that started earlier, asking after a later one: busy too.
        assert_eq!(slices.busy(keys(), first), ["cc:x"]);
        let much_later = second + HOLD + Duration::from_millis(1);
        assert!(slices.busy(keys(), much_later).is_empty(), "not lately");
    }

    #[test]
    fn a_slice_lasts_until_its_bucket_ends_or_hold_whichever_is_first() {
        let asked = Instant::now();
        assert_eq!(until(asked, 1_000), asked + Duration::from_secs(1));
        assert_eq!(until(asked, 60_000), asked + HOLD);
        assert_eq!(until(asked, -5), asked);
    }
}
