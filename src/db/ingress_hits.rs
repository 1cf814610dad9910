//! The ingress's limits, decided for a batch before it is stored: its idempotency keys are
//! locked in the transaction that will store it; its counts and (with a spend ceiling)
//! today's spend rows are locked in order in a short reservation of their own; each message
//! is a repeat, a reuse of a taken key, or admitted or refused against the counts and totals
//! as they stand (earlier messages of the same batch included); the counts and totals are
//! written back, and only the counted messages go on to the insert (repeats are answered with
//! their key's message).

use std::collections::HashMap;

use super::first_hits::{FirstHits, NewKeys};
use super::{Db, Tx, literal, pg_array};
use super::{messages, spend};

use crate::config::{LimitMode, WindowLimit};
use crate::domain::NewMessage;
use crate::limits::ingress::{Check, IngressLimits, LimitRefusal, Limited, Monitored};
use crate::limits::slices::{self, EventPool, EventSlice, Leftover, Slices};
use crate::limits::window::{
    Admission, Counts, FIRST_EVENT, STORED_COUNTS, admit, bucket_width_ms,
    current_buckets_end_in_ms, reserve,
};
use tokio::time::Instant;

type Logs = HashMap<String, Counts>;

/// The limits' verdict on one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// New, and counted in every log and total it belongs to; the monitoring limits it went
    /// past.
    Counted(Monitored),
    /// The same request as the one its idempotency key was first used with (stored earlier,
    /// or counted earlier in this batch): it stores nothing new and counts nowhere.
    Repeat,
    /// Its idempotency key was first used with a different message: refused, counted nowhere.
    KeyReused,
    Refused(LimitRefusal),
}

/// What a batch's counted messages added to the counts and totals, to be given back if their
/// insert does not commit.
#[derive(Debug, Default)]
pub struct Reservation {
    at_ms: i64,
    /// One entry per counted message and log it was counted in.
    hits: Vec<(String, Vec<WindowLimit>)>,
    spend: spend::Reserved,
    /// What counted messages spent of slices.
    sliced: Vec<Leftover>,
}

/// Decides each message of a batch and reserves what the counted ones take; returns one
/// verdict per message, in order.
///
/// Idempotency keys are locked and looked up in `tx`, the transaction that will insert the
/// batch (`None` for a batch without keys). A busy limit (a country's cap, a high cap on a
/// client address, a large spend ceiling) is spent from the slices this process holds
/// (`limits::slices`); the rest, and slices to refill, are locked, decided and written in a
/// short transaction of their own, committed before `tx` without waiting for its flush: a
/// country's or the day's row is held from the statement that locks it to one
/// write-and-commit message, not until the batch's commit, so writers commit side by side.
/// A batch that needs no row skips that transaction. A reservation whose insert then fails
/// is given back (`give_back`); one lost with its process counts until its window passes,
/// which refuses early, never late.
pub async fn admit_batch(
    tx: Option<&mut Tx<'_>>,
    pool: &Db,
    limits: &IngressLimits,
    slices: &Slices,
    messages: &[&NewMessage],
    checks: Vec<Vec<Check>>,
) -> Result<(Vec<Verdict>, Reservation), sqlx::Error> {
    // A batch with a copy of a keyed request waits here for any other batch holding the same
    // key: the look-up below then sees that batch's commit, so two copies are never both
    // counted.
    let mut known = HashMap::new();
    if let Some(tx) = tx {
        lock_idempotency_keys(tx, messages).await?;
        known = messages::known_keys(tx, messages).await?;
    }
    let batch = Batch {
        limits,
        slices,
        messages,
        checks,
        known,
    };
    match batch.attempt(pool, true).await? {
        Some(decided) => Ok(decided),
        // A slice the process held went stale while the batch waited for its locks: decide
        // it again, refilling every sliced limit under the locks.
        None => batch
            .attempt(pool, false)
            .await?
            .ok_or_else(|| sqlx::Error::Protocol("a batch taking no slice found one stale".into())),
    }
}

/// A batch to decide, with its checks and the idempotency keys known before it.
struct Batch<'a> {
    limits: &'a IngressLimits,
    slices: &'a Slices,
    messages: &'a [&'a NewMessage],
    checks: Vec<Vec<Check>>,
    known: HashMap<String, Option<String>>,
}

impl Batch<'_> {
    /// Decides the batch, spending what the process holds (`from_process`) or only what is
    /// counted under its locks. `None`: a slice it took went stale; nothing was decided and
    /// what it took is given back. On an error, too, what it took is given back.
    async fn attempt(
        &self,
        pool: &Db,
        from_process: bool,
    ) -> Result<Option<(Vec<Verdict>, Reservation)>, sqlx::Error> {
        let new: Vec<usize> = (0..self.messages.len())
            .filter(|&i| prior(&self.known, self.messages[i]).is_none())
            .collect();
        let new_messages: Vec<&NewMessage> = new.iter().map(|&i| self.messages[i]).collect();
        let asked = Instant::now();
        let checks = new.iter().map(|&i| &self.checks[i]);
        let (events, refill) = take_event_slices(checks, self.slices, asked, from_process);
        let ceiling = &self.limits.spend;
        let spend = spend::take_slices(ceiling, &new_messages, self.slices, asked, from_process);
        let mut taken = events.taken();
        taken.extend(spend.taken());
        let taking = Taking {
            events,
            refill,
            spend,
            asked,
        };
        match self.decide(pool, taking, &new_messages).await {
            Ok(Some(decided)) => Ok(Some(decided)),
            Ok(None) => {
                self.slices.give_back_later(taken);
                Ok(None)
            }
            Err(err) => {
                self.slices.give_back_later(taken);
                Err(err)
            }
        }
    }

    /// Locks what the batch needs of the rows (if anything), decides each message, writes
    /// back and commits; then keeps what the batch did not spend of its slices.
    async fn decide(
        &self,
        pool: &Db,
        taking: Taking,
        new_messages: &[&NewMessage],
    ) -> Result<Option<(Vec<Verdict>, Reservation)>, sqlx::Error> {
        let Taking {
            mut events,
            refill,
            spend: spend_needs,
            asked,
        } = taking;
        let scopes = spend::scopes(&self.limits.spend, new_messages, &spend_needs);
        let keys = keys_to_lock(&self.checks, &refill);
        // The hot rows (a country's count, the day's total) are held from here to the
        // reservation's commit: this statement, the decisions, and one write-and-commit.
        let mut reserving = None;
        let mut locked = Locked::default();
        if !(keys.is_empty() && scopes.is_empty()) {
            let mut tx = pool.begin_without_flush_wait().await?;
            locked = lock_all(&mut tx, &keys, &scopes).await?;
            if events.stale(locked.now_ms) || spend_needs.stale(utc_day(locked.now_ms)) {
                drop(tx); // rolled back: nothing was written
                return Ok(None);
            }
            reserving = Some(tx);
        }
        let (mut logs, now_ms, created) = (locked.logs, locked.now_ms, locked.created);
        refill_events(&mut events, &mut logs, &refill, now_ms, asked);
        let ceiling = &self.limits.spend;
        let mut spend = spend::Spend::from_locked(ceiling, locked.spend, spend_needs, asked);
        let mut known = self.known.clone();
        let mut reservation = Reservation {
            at_ms: now_ms,
            ..Reservation::default()
        };
        let mut batch = Decisions {
            logs: &mut logs,
            events: &mut events,
            spend: &mut spend,
            known: &mut known,
            reservation: &mut reservation,
            now_ms,
        };
        let verdicts: Vec<Verdict> = self
            .messages
            .iter()
            .zip(&self.checks)
            .map(|(message, checks)| match prior(batch.known, message) {
                Some(verdict) => verdict,
                None => batch.decide(message, checks),
            })
            .collect();
        reservation.sliced.extend(spend.used());
        trim_refills(&mut events, &mut logs, &refill, now_ms);
        spend.trim_grants();
        if let Some(reserving) = reserving {
            let unspent = spend.unspent();
            reservation.spend = commit_reservation(reserving, logs, &created, spend).await?;
            spend = unspent;
        }
        // Only now, with the refills committed, may the process keep what is left.
        let now = Instant::now();
        events.put_back(self.slices, now);
        spend.put_back(self.slices, now);
        Ok(Some((verdicts, reservation)))
    }
}

/// What a batch took of the process's slices and what it must reserve in the rows.
struct Taking {
    events: EventPool,
    refill: Vec<Refill>,
    spend: spend::Needs,
    asked: Instant,
}

/// The UTC day of an epoch time in ms (the database's day, from its clock).
fn utc_day(at_ms: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .map(|at| at.date_naive())
        .unwrap_or_default()
}

/// The checks of each message, those on busy keys marked sliced (`Slices::busy`) for the
/// batch that started at `started`. Asked once per batch: its plan and its reservation decide
/// on the same marks.
pub fn checks_of(
    limits: &IngressLimits,
    slices: &Slices,
    messages: &[&NewMessage],
    started: Instant,
) -> Vec<Vec<Check>> {
    let mut checks: Vec<Vec<Check>> = messages.iter().map(|m| limits.checks(m)).collect();
    let mut sliceable: Vec<&str> = checks
        .iter()
        .flatten()
        .filter(|c| c.slice_share().is_some())
        .map(|c| c.key.as_str())
        .collect();
    sliceable.sort_unstable();
    sliceable.dedup();
    let busy: std::collections::HashSet<String> = slices
        .busy(sliceable.into_iter(), started)
        .into_iter()
        .map(str::to_string)
        .collect();
    for check in checks.iter_mut().flatten() {
        check.sliced = busy.contains(&check.key);
    }
    checks
}

/// A message whose idempotency key is known: a repeat of its request, or a reuse of the key.
fn prior(known: &HashMap<String, Option<String>>, message: &NewMessage) -> Option<Verdict> {
    let key = message.idempotency_key.as_ref()?;
    let first = known.get(key)?;
    Some(
        if messages::same_request(first.as_deref(), message.fingerprint.as_deref()) {
            Verdict::Repeat
        } else {
            Verdict::KeyReused
        },
    )
}

/// The keys a reservation locks, sorted: those decided on their rows, and the sliced ones to
/// refill.
fn keys_to_lock<'a>(
    checks: &'a [Vec<Check>],
    refill: &'a [Refill],
) -> Vec<(&'a str, &'a [WindowLimit])> {
    let mut keys: Vec<(&str, &[WindowLimit])> = checks
        .iter()
        .flatten()
        .filter(|c| !c.sliced)
        .map(|c| (c.key.as_str(), c.windows.as_slice()))
        .chain(
            refill
                .iter()
                .map(|(key, windows, _)| (key.as_str(), windows.as_slice())),
        )
        .collect();
    keys.sort_unstable_by_key(|(key, _)| *key);
    keys.dedup_by_key(|(key, _)| *key);
    keys
}

/// Counts each sliced key's refill in its locked row, as much as its windows have room for,
/// and gives the batch what was counted (with when the windows allow more, if short).
fn refill_events(
    events: &mut EventPool,
    logs: &mut Logs,
    refill: &[Refill],
    now_ms: i64,
    asked: Instant,
) {
    for (key, windows, wanted) in refill {
        let counts = logs.entry(key.clone()).or_default();
        let reserved = reserve(counts, now_ms, windows, *wanted);
        events.hold(
            key,
            EventSlice {
                windows: windows.clone(),
                at_ms: now_ms,
                until: slices::until(asked, current_buckets_end_in_ms(windows, now_ms)),
                left: reserved.granted,
            },
        );
        if let Some(wait_ms) = reserved.wait_ms {
            events.run_dry(key, wait_ms);
        }
    }
}

/// Leaves each refilled key's slice with at most a share unused: the rest of what the batch
/// reserved for messages other limits refused is taken out of the counts before they are
/// written, so it is never held.
fn trim_refills(events: &mut EventPool, logs: &mut Logs, refill: &[Refill], now_ms: i64) {
    for (key, windows, _) in refill {
        let share = slices::events_share(windows).unwrap_or(0);
        let dropped = events.trim(key, now_ms, share);
        if dropped > 0
            && let Some(counts) = logs.get_mut(key)
        {
            counts.withdraw_many(windows, now_ms, dropped);
        }
    }
}

/// Writes the decided counts and totals back and commits the reservation; returns what the
/// batch added to the totals decided on rows.
async fn commit_reservation(
    mut reserving: Tx<'static>,
    mut logs: Logs,
    created: &Logs,
    spend: spend::Spend,
) -> Result<spend::Reserved, sqlx::Error> {
    // A created row that already holds what the decisions counted needs no write.
    logs.retain(|key, counts| {
        !created
            .get(key)
            .is_some_and(|stored| stored.same_as(counts))
    });
    let (update, reserved) = spend.into_update();
    // Most batches of new numbers change nothing their lock statement did not already write:
    // then the reservation just commits, without planning a write that touches no row.
    if !(logs.is_empty() && update.is_empty()) {
        write_all_and_commit(&mut reserving, &logs, update).await?;
    }
    // Only the empty transaction that followed the reservation's commit is left (or, with
    // nothing written, the reservation itself).
    reserving.commit().await?;
    Ok(reserved)
}

/// A batch without idempotency keys that the process's slices cover, planned for one
/// statement (`first_hits`): which messages go to it, the keys each needs new, and what each
/// spent of slices (given back if it is not stored).
#[derive(Debug, Default)]
pub struct FirstHitsPlan {
    /// The messages for the statement, by their place in the batch.
    pub messages: Vec<usize>,
    /// Per message: its keys decided on rows, separated by spaces.
    pub keys_of: Vec<String>,
    /// Every key of those messages, sorted, with its windows' spans.
    pub new_keys: NewKeys,
    /// Per message: what it spent of slices.
    pub spent: Vec<Vec<Leftover>>,
    /// The windows of every key of `new_keys`.
    windows: HashMap<String, Vec<WindowLimit>>,
}

impl FirstHitsPlan {
    /// What message `slot` of the plan counted where the statement did not store it: what it
    /// spent of slices, and the first event of each key the statement created for it.
    pub fn unstored(&self, slot: usize, hits: &FirstHits) -> Vec<Leftover> {
        let created = self.keys_of[slot]
            .split(' ')
            .filter(|key| hits.created.contains(*key))
            .map(|key| Leftover::Events {
                key: key.to_string(),
                windows: self.windows.get(key).cloned().unwrap_or_default(),
                at_ms: hits.now_ms,
                count: 1,
            });
        self.spent[slot].iter().cloned().chain(created).collect()
    }
}

/// Plans a batch for one statement when it can be: no idempotency key, no spend decided on a
/// row, and every sliced limit it needs held by this process. A message sharing a row's key
/// with an earlier one of the batch is left out (the reservation decides it on the row, after
/// the statement). `None` when the batch needs the reservation; nothing is taken then.
pub fn plan_first_hits(
    limits: &IngressLimits,
    slices: &Slices,
    messages: &[&NewMessage],
    checks: &[Vec<Check>],
) -> Option<FirstHitsPlan> {
    if messages.iter().any(|m| m.idempotency_key.is_some()) {
        return None;
    }
    let now = Instant::now();
    let (mut events, refill) = take_event_slices(checks.iter(), slices, now, true);
    let needs = spend::take_slices(&limits.spend, messages, slices, now, true);
    let on_rows = !spend::scopes(&limits.spend, messages, &needs).is_empty();
    let mut spend = spend::Spend::from_locked(&limits.spend, Vec::new(), needs, now);
    if !refill.is_empty() || on_rows {
        events.put_back(slices, now);
        spend.put_back(slices, now);
        return None;
    }
    let mut plan = FirstHitsPlan::default();
    // Each key claimed, with its windows and the place (from 1) of the message claiming it.
    let mut claimed: HashMap<&str, (&[WindowLimit], i64)> = HashMap::new();
    for (i, (message, checks)) in messages.iter().zip(checks).enumerate() {
        let (sliced, rows): (Vec<&Check>, Vec<&Check>) = checks.iter().partition(|c| c.sliced);
        if rows.iter().any(|c| claimed.contains_key(c.key.as_str()))
            || sliced.iter().any(|c| events.left(&c.key) == 0)
            || spend.admit(message).is_err()
        {
            continue;
        }
        let mut spent = spend.used();
        spent.extend(sliced.iter().filter_map(|c| events.take(&c.key)));
        let place = plan.messages.len() as i64 + 1;
        claimed.extend(
            rows.iter()
                .map(|c| (c.key.as_str(), (c.windows.as_slice(), place))),
        );
        let mut keys: Vec<&str> = rows.iter().map(|c| c.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        plan.messages.push(i);
        plan.keys_of.push(keys.join(" "));
        plan.spent.push(spent);
    }
    let now = Instant::now();
    events.put_back(slices, now);
    spend.put_back(slices, now);
    let mut keys: Vec<(&str, (&[WindowLimit], i64))> = claimed.into_iter().collect();
    keys.sort_unstable_by_key(|(key, _)| *key);
    for (key, (windows, owner)) in keys {
        plan.new_keys.keys.push(key.to_string());
        plan.new_keys.spans.push(Counts::spans(windows));
        plan.new_keys.owners.push(owner);
        plan.new_keys
            .widths
            .extend(windows.iter().map(bucket_width_ms));
        plan.windows.insert(key.to_string(), windows.to_vec());
    }
    plan.new_keys.widths.sort_unstable();
    plan.new_keys.widths.dedup();
    Some(plan)
}

/// A key to count a slice of in its row: its windows and how many events to reserve.
type Refill = (String, Vec<WindowLimit>, i64);

/// Takes what the batch's new messages need of the sliced keys from the slices this process
/// holds; returns them, and the keys whose slices fall short with what to reserve (the
/// shortfall and a share more).
fn take_event_slices<'a>(
    checks: impl Iterator<Item = &'a Vec<Check>>,
    slices: &Slices,
    now: Instant,
    from_process: bool,
) -> (EventPool, Vec<Refill>) {
    let mut wanted: HashMap<&str, (&Check, i64)> = HashMap::new();
    for check in checks.flatten().filter(|c| c.sliced) {
        wanted.entry(&check.key).or_insert((check, 0)).1 += 1;
    }
    let mut pool = EventPool::default();
    let mut refill = Vec::new();
    for (key, (check, wanted)) in wanted {
        let held = if from_process {
            slices.take_events(key, wanted, now)
        } else {
            None
        };
        let covered = held.as_ref().map_or(0, |s| s.left);
        if let Some(held) = held {
            pool.hold(key, held);
        }
        if covered < wanted {
            let share = check.slice_share().unwrap_or(0);
            refill.push((
                key.to_string(),
                check.windows.clone(),
                wanted - covered + share,
            ));
        }
    }
    (pool, refill)
}

/// The state a batch's messages are decided against, one after the other.
struct Decisions<'a> {
    logs: &'a mut Logs,
    events: &'a mut EventPool,
    spend: &'a mut spend::Spend,
    known: &'a mut HashMap<String, Option<String>>,
    reservation: &'a mut Reservation,
    now_ms: i64,
}

impl Decisions<'_> {
    /// A new message against its checks and the spend ceilings; counted where admitted.
    fn decide(&mut self, message: &NewMessage, checks: &[Check]) -> Verdict {
        let (sliced, rows): (Vec<&Check>, Vec<&Check>) = checks.iter().partition(|c| c.sliced);
        let rows: Vec<Check> = rows.into_iter().cloned().collect();
        // A sliced limit with nothing left: a blocking one refuses, a monitoring one reports
        // (and, as on a row, counts nothing).
        let (dry, open): (Vec<&Check>, Vec<&Check>) = sliced
            .into_iter()
            .partition(|c| self.events.wait_ms(&c.key).is_some());
        let refusal = dry
            .iter()
            .filter(|c| c.mode == LimitMode::Block)
            .filter_map(|c| {
                self.events.wait_ms(&c.key).map(|retry_after_ms| Limited {
                    kind: c.kind,
                    retry_after_ms,
                })
            })
            .max_by_key(|limited| limited.retry_after_ms);
        let verdict = match (decide(self.logs, self.now_ms, &rows), refusal) {
            (Err(LimitRefusal::Window(row)), Some(dry)) => Err(LimitRefusal::Window(
                if dry.retry_after_ms > row.retry_after_ms {
                    dry
                } else {
                    row
                },
            )),
            (Ok(_), Some(dry)) => Err(LimitRefusal::Window(dry)),
            (Err(refusal), Some(_)) => Err(refusal),
            (decided, None) => decided,
        };
        let verdict = verdict.and_then(|(updates, monitored)| {
            self.spend
                .admit(message)
                .map_err(LimitRefusal::Spend)
                .map(|()| (updates, monitored))
        });
        match verdict {
            Ok((updates, mut monitored)) => {
                // Admitted: only now is the request counted anywhere. A later copy in this
                // very batch is its repeat, or a reuse of its key.
                for check in rows.iter().filter(|c| updates.contains_key(&c.key)) {
                    self.reservation
                        .hits
                        .push((check.key.clone(), check.windows.clone()));
                }
                for check in open {
                    self.reservation.sliced.extend(self.events.take(&check.key));
                }
                for check in dry {
                    if !monitored.contains(&check.kind) {
                        monitored.push(check.kind);
                    }
                }
                self.logs.extend(updates);
                if let Some(key) = &message.idempotency_key {
                    self.known.insert(key.clone(), message.fingerprint.clone());
                }
                Verdict::Counted(monitored)
            }
            Err(refusal) => Verdict::Refused(refusal),
        }
    }
}

/// Takes a reservation back out of the counts and totals: its messages were not stored.
pub async fn give_back(pool: &Db, reservation: &Reservation) -> Result<(), sqlx::Error> {
    // Rows decided on and slices spent alike: one event each, counted when decided.
    let hits: Vec<Leftover> = reservation
        .hits
        .iter()
        .map(|(key, windows)| Leftover::Events {
            key: key.clone(),
            windows: windows.clone(),
            at_ms: reservation.at_ms,
            count: 1,
        })
        .chain(reservation.sliced.iter().cloned())
        .collect();
    if hits.is_empty() && reservation.spend.is_empty() {
        return Ok(());
    }
    let mut hits = hits;
    hits.extend(reservation.spend.leftovers());
    give_back_leftovers(pool, &hits).await
}

/// Gives back what slices held unused (or what was spent of them by a batch not stored).
pub async fn give_back_leftovers(pool: &Db, leftovers: &[Leftover]) -> Result<(), sqlx::Error> {
    if leftovers.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    withdraw(&mut tx, leftovers).await?;
    spend::give_back_leftovers(&mut tx, leftovers).await?;
    tx.commit().await
}

/// Takes the events of `leftovers` out of their keys' counts, each at the time it was counted.
async fn withdraw(tx: &mut Tx<'_>, leftovers: &[Leftover]) -> Result<(), sqlx::Error> {
    let events: Vec<(&str, &[WindowLimit], i64, i64)> = leftovers
        .iter()
        .filter_map(|leftover| match leftover {
            Leftover::Events {
                key,
                windows,
                at_ms,
                count,
            } => Some((key.as_str(), windows.as_slice(), *at_ms, *count)),
            Leftover::Spend { .. } => None,
        })
        .collect();
    if events.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<&str> = events.iter().map(|(key, ..)| *key).collect();
    keys.sort_unstable();
    keys.dedup();
    let rows: Vec<(String, Vec<i64>, Vec<i64>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT key, {STORED_COUNTS}, {STORED_HITS} FROM ingress_hits
             WHERE key = ANY($1) ORDER BY key FOR UPDATE"
    )))
    .bind(&keys)
    .fetch_all(&mut *tx)
    .await?;
    let mut logs: Logs = HashMap::new();
    for (key, counts, legacy) in rows {
        let windows = events
            .iter()
            .find(|(k, ..)| *k == key)
            .map(|(_, w, ..)| *w)
            .unwrap_or_default();
        logs.insert(key, Counts::from_row(&counts, &legacy, windows));
    }
    for (key, windows, at_ms, count) in events {
        if let Some(counts) = logs.get_mut(key) {
            counts.withdraw_many(windows, at_ms, count);
        }
    }
    write_logs(tx, &logs).await
}

/// The event log of an earlier version, as `STORED_COUNTS` reads the counts.
const STORED_HITS: &str = "ARRAY(SELECT x FROM unnest(hits) AS x WHERE x IS NOT NULL)";

/// The advisory-lock namespace of idempotency keys (the two-number form, apart from the
/// single-number locks such as retention's): "sg" "ik".
const KEY_LOCKS: i32 = 0x7367_696b;

/// Takes a transaction-scoped advisory lock per idempotency key of the batch, in one order
/// (sorted, after the logs) so writers never deadlock. Keys are hashed to 32 bits in their
/// own namespace: a collision only makes two unrelated batches take turns. Each lock takes
/// a slot of PostgreSQL's shared lock table while its batch commits (docs/operations.md).
async fn lock_idempotency_keys(
    conn: &mut Tx<'_>,
    messages: &[&NewMessage],
) -> Result<(), sqlx::Error> {
    use sha2::{Digest, Sha256};
    let mut locks: Vec<i32> = messages
        .iter()
        .filter_map(|m| m.idempotency_key.as_deref())
        .map(|key| {
            let digest = Sha256::digest(key.as_bytes());
            let mut first = [0u8; 4];
            first.copy_from_slice(&digest[..4]);
            i32::from_be_bytes(first)
        })
        .collect();
    if locks.is_empty() {
        return Ok(());
    }
    locks.sort_unstable();
    locks.dedup();
    // unnest yields the array in order, so the locks are taken in that order.
    sqlx::query("SELECT pg_advisory_xact_lock($2, k) FROM unnest($1::int4[]) AS k")
        .bind(&locks)
        .bind(KEY_LOCKS)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Locks the counts of every key in `keys` (sorted: every writer locks in the same order, no
/// deadlocks), then today's spend rows of `scopes`, in one statement; returns them with the
/// database's clock in epoch milliseconds, read once every lock is held. A key without a row
/// gets one holding its first event already (`Locked::created`).
async fn lock_all(
    conn: &mut Tx<'_>,
    keys: &[(&str, &[WindowLimit])],
    scopes: &[&str],
) -> Result<Locked, sqlx::Error> {
    let mut locked = Locked::default();
    if keys.is_empty() && scopes.is_empty() {
        return Ok(locked);
    }
    let spans: Vec<String> = keys.iter().map(|(_, w)| Counts::spans(w)).collect();
    let names: Vec<&str> = keys.iter().map(|(key, _)| *key).collect();
    // An Append runs its branches in order and a data-modifying WITH runs to completion when
    // first read: the keys' rows are locked before the day's, and the clock read after both.
    let statement = format!(
        "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
         counted AS (
             INSERT INTO ingress_hits (key, counts, fresh)
             SELECT v.key, {FIRST_EVENT}, true
             FROM unnest($1::text[], $3::text[]) AS v(key, spans), now ORDER BY v.key
             ON CONFLICT (key) DO UPDATE SET updated_at = ingress_hits.updated_at, fresh = false
             RETURNING key, {STORED_COUNTS} AS counts, {STORED_HITS} AS hits, fresh),
         spent AS ({})
         SELECT key, counts, hits, fresh, NULL::date, NULL::bigint, NULL::bigint FROM counted
         UNION ALL
         SELECT scope, NULL, NULL, NULL, day, spent_micros, day_left_ms FROM spent
         UNION ALL
         SELECT NULL, NULL, NULL, NULL, NULL, NULL,
                (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
        spend::LOCK_TODAY
    );
    let rows: Vec<LockedRow> = sqlx::query_as(sqlx::AssertSqlSafe(statement))
        .bind(&names)
        .bind(scopes)
        .bind(&spans)
        .fetch_all(&mut *conn)
        .await?;
    let windows_of = |key: &str| {
        keys.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, w)| *w)
            .unwrap_or_default()
    };
    for row in rows {
        locked.take(row, windows_of)?;
    }
    Ok(locked)
}

/// One row of `lock_all`'s statement: a key's counts (with its event log of an earlier
/// version, and whether the statement created it), a scope's total, or the clock.
type LockedRow = (
    Option<String>,
    Option<Vec<i64>>,
    Option<Vec<i64>>,
    Option<bool>,
    Option<chrono::NaiveDate>,
    Option<i64>,
    Option<i64>,
);

impl Locked {
    fn take<'w>(
        &mut self,
        row: LockedRow,
        windows_of: impl Fn(&str) -> &'w [WindowLimit],
    ) -> Result<(), sqlx::Error> {
        match row {
            (Some(key), Some(counts), Some(legacy), Some(fresh), None, None, None) => {
                let counts = Counts::from_row(&counts, &legacy, windows_of(&key));
                if fresh {
                    // Decided from nothing; stored as it is if the decision counts the same.
                    self.logs.insert(key.clone(), Counts::default());
                    self.created.insert(key, counts);
                } else {
                    self.logs.insert(key, counts);
                }
            }
            (Some(scope), None, None, None, Some(day), Some(spent), Some(left_ms)) => {
                self.spend.push((day, scope, spent, left_ms));
            }
            (None, None, None, None, None, None, Some(now)) => self.now_ms = now,
            _ => {
                return Err(sqlx::Error::Protocol(
                    "unexpected row locking limits".into(),
                ));
            }
        }
        Ok(())
    }
}

/// What `lock_all` locked.
#[derive(Debug, Default)]
struct Locked {
    /// Each key's counts before this batch.
    logs: Logs,
    /// The keys whose rows the lock created, with the first event it counted in them.
    created: Logs,
    now_ms: i64,
    spend: Vec<spend::LockedRow>,
}

/// Writes the counts and today's totals back and commits, in one round trip: the rows every
/// request of a country (or every request) needs are held from the lock to this commit, so
/// nothing else may wait in between. The statement goes as text with its values written in
/// (the simple protocol carries no parameters, and only it runs a statement and COMMIT in one
/// message); a new, empty transaction follows, for the caller to commit. A key with nothing
/// counted in its windows is deleted rather than kept: refused requests count nothing, so a
/// caller spraying new numbers or addresses leaves no rows behind. Returns what was added to
/// the totals.
async fn write_all_and_commit(
    conn: &mut Tx<'_>,
    logs: &Logs,
    update: spend::Update,
) -> Result<(), sqlx::Error> {
    let (empty, counted): (Vec<_>, Vec<_>) = logs.iter().partition(|(_, c)| c.is_empty());
    let (keys, counts): (Vec<&str>, Vec<String>) = counted
        .into_iter()
        .map(|(key, counts)| (key.as_str(), pg_array(&counts.to_stored())))
        .unzip();
    let empty: Vec<&str> = empty.into_iter().map(|(key, _)| key.as_str()).collect();
    let day = update
        .day
        .map_or("NULL::date".to_string(), |day| format!("'{day}'::date"));
    let texts = |values: &[&str]| literal::text_array(values);
    let scopes: Vec<&str> = update.scopes.iter().map(String::as_str).collect();
    let unused: Vec<&str> = update.unused.iter().map(String::as_str).collect();
    let counts: Vec<&str> = counts.iter().map(String::as_str).collect();
    let statement = literal::fill(
        WRITE_ALL,
        &[
            &texts(&keys),
            &texts(&counts),
            &texts(&empty),
            &day,
            &texts(&scopes),
            &format!("'{}'::bigint[]", pg_array(&update.totals)),
            &texts(&unused),
        ],
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("{statement}; COMMIT; BEGIN")))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The write of `write_all_and_commit`; `literal::fill` puts the values in for `$n`.
const WRITE_ALL: &str = "WITH counted AS (
             UPDATE ingress_hits h SET counts = v.counts::bigint[], hits = '{}',
                 updated_at = CASE WHEN h.updated_at < clock_timestamp() - interval '1 minute'
                                   THEN clock_timestamp() ELSE h.updated_at END
             FROM unnest($1, $2) AS v(key, counts) WHERE h.key = v.key),
         emptied AS (DELETE FROM ingress_hits WHERE key = ANY($3)),
         spent AS (
             UPDATE spend_days d SET spent_micros = v.spent, updated_at = clock_timestamp()
             FROM unnest($5, $6) AS v(scope, spent)
             WHERE d.day = $4 AND d.scope = v.scope),
         unused AS (
             DELETE FROM spend_days WHERE day = $4 AND scope = ANY($7) AND spent_micros = 0)
         SELECT 1";

/// Sets the counts of keys `$1` to `$2`. `updated_at` (what the retention sweep reads) moves
/// at most once a minute, so a row updated by every batch keeps its index entries and its
/// update stays on its page (HOT); the sweep allows for the minute.
const UPDATE_COUNTS: &str = "UPDATE ingress_hits h SET counts = v.counts::bigint[], hits = '{}',
             updated_at = CASE WHEN h.updated_at < clock_timestamp() - interval '1 minute'
                               THEN clock_timestamp() ELSE h.updated_at END
         FROM unnest($1::text[], $2::text[]) AS v(key, counts) WHERE h.key = v.key";

/// One message against its checks: the logs with it added, and the monitoring limits it went
/// past; or the blocking limit that refuses it (the one that frees last).
fn decide(logs: &Logs, now_ms: i64, checks: &[Check]) -> Result<(Logs, Monitored), LimitRefusal> {
    let mut updates = Logs::new();
    let mut monitored = Monitored::new();
    let mut refused: Option<Limited> = None;
    for check in checks {
        let mut counts = logs.get(&check.key).cloned().unwrap_or_default();
        match (admit(&mut counts, now_ms, &check.windows), check.mode) {
            (Admission::Allowed, _) => {
                updates.insert(check.key.clone(), counts);
            }
            (Admission::WaitMs(retry_after_ms), LimitMode::Block) => {
                if refused.is_none_or(|r| r.retry_after_ms < retry_after_ms) {
                    refused = Some(Limited {
                        kind: check.kind,
                        retry_after_ms,
                    });
                }
            }
            // One report per kind of limit, however many of its windows are over.
            (Admission::WaitMs(_), LimitMode::Monitor) => {
                if !monitored.contains(&check.kind) {
                    monitored.push(check.kind);
                }
            }
        }
    }
    match refused {
        Some(limited) => Err(LimitRefusal::Window(limited)),
        None => Ok((updates, monitored)),
    }
}

/// Writes the counts back (giving a reservation back), deleting keys with nothing counted.
async fn write_logs(conn: &mut Tx<'_>, logs: &Logs) -> Result<(), sqlx::Error> {
    if logs.is_empty() {
        return Ok(());
    }
    let (empty, counted): (Vec<_>, Vec<_>) = logs.iter().partition(|(_, c)| c.is_empty());
    let (keys, counts): (Vec<&str>, Vec<String>) = counted
        .into_iter()
        .map(|(key, counts)| (key.as_str(), pg_array(&counts.to_stored())))
        .unzip();
    sqlx::query(UPDATE_COUNTS)
        .bind(&keys)
        .bind(&counts)
        .execute(&mut *conn)
        .await?;
    if !empty.is_empty() {
        let empty: Vec<&str> = empty.into_iter().map(|(key, _)| key.as_str()).collect();
        sqlx::query("DELETE FROM ingress_hits WHERE key = ANY($1)")
            .bind(&empty)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
