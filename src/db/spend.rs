//! Today's estimated spend, all countries together (`*`) and per country, in `spend_days`:
//! locked and decided in the ingress's reservation (`db::ingress_hits`), so a ceiling holds
//! exactly across processes. A day is a UTC day of the database's clock.

use std::collections::HashMap;

use chrono::NaiveDate;

use tokio::time::Instant;

use super::{Db, Tx};

use crate::config::Micros;
use crate::domain::NewMessage;
use crate::limits::ingress::{OverSpend, SpendCeiling};
use crate::limits::slices::{self, Leftover, Slices, SpendSlice, spend_leftover};

/// The scope of the ceiling of all countries together.
const ALL: &str = "*";

/// What a message of no country is counted under (ISO's user-assigned "ZZ").
const NO_COUNTRY: &str = "ZZ";

/// Today's totals of the scopes a batch touches, locked until its reservation ends, and the
/// slices of the sliced ceilings it may spend (`limits::slices`).
#[derive(Debug, Default)]
pub struct Spend {
    ceiling: SpendCeiling,
    day: Option<NaiveDate>,
    /// How long `day` had left when it was read (database clock, ms): the Retry-After of a
    /// refusal, decided by the clock that decided the day.
    day_ends_in_ms: i64,
    totals: HashMap<String, Micros>,
    /// What this batch's messages added to each scope decided on its row.
    added: HashMap<String, Micros>,
    /// What this batch counted in sliced scopes' rows at once, as slices.
    granted: HashMap<String, Micros>,
    /// The slices this batch may spend, per sliced scope.
    pool: HashMap<String, Vec<SpendSlice>>,
    /// What admitted messages spent of slices: given back if they are not stored.
    used: Vec<Leftover>,
}

/// What a batch needs of the sliced scopes: what the process held, and what to reserve.
#[derive(Debug, Default)]
pub struct Needs {
    /// Per sliced scope: the amount to count in its row now (the shortfall and a share).
    pub refill: Vec<(String, Micros)>,
    /// The slices taken from the process.
    held: HashMap<String, Vec<SpendSlice>>,
}

/// New totals to write, and rows to drop, for one day.
#[derive(Debug, Default)]
pub struct Update {
    pub day: Option<NaiveDate>,
    pub scopes: Vec<String>,
    pub totals: Vec<Micros>,
    pub unused: Vec<String>,
}

impl Update {
    /// Nothing to write: no total changed and no row to delete.
    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.unused.is_empty()
    }
}

/// What a batch added to a day's totals, to be taken out again if it is not stored.
#[derive(Debug, Default)]
pub struct Reserved {
    day: Option<NaiveDate>,
    added: Vec<(String, Micros)>,
}

impl Reserved {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
    }

    /// What the batch added, as what to give back.
    pub fn leftovers(&self) -> Vec<Leftover> {
        let Some(day) = self.day else {
            return Vec::new();
        };
        self.added
            .iter()
            .map(|(scope, micros)| Leftover::Spend {
                day,
                scope: scope.clone(),
                micros: *micros,
            })
            .collect()
    }
}

/// The scopes whose rows today's totals of `messages` are kept in and must be locked (none
/// without a ceiling or a priced message; a sliced scope only when it is to be refilled),
/// sorted: the order every writer locks them in.
pub fn scopes<'a>(
    ceiling: &SpendCeiling,
    messages: &[&'a NewMessage],
    needs: &'a Needs,
) -> Vec<&'a str> {
    let priced = messages.iter().filter(|m| cost(m) > 0);
    let mut scopes: Vec<&str> = Vec::new();
    for message in priced {
        // The day's total is kept with any ceiling, for `GET /v1/spend`.
        if !ceiling.is_empty() {
            scopes.push(ALL);
        }
        if ceiling.country_daily.is_some() {
            scopes.push(country(message));
        }
    }
    scopes.retain(|scope| share(ceiling, scope).is_none());
    scopes.extend(needs.refill.iter().map(|(scope, _)| scope.as_str()));
    scopes.sort_unstable();
    scopes.dedup();
    scopes
}

/// The share a slice of `scope` holds beyond what a batch needs, when it is sliced.
fn share(ceiling: &SpendCeiling, scope: &str) -> Option<Micros> {
    let limit = if scope == ALL {
        ceiling.daily
    } else {
        ceiling.country_daily
    };
    limit.and_then(slices::spend_share)
}

/// Takes what `messages` would spend of the sliced scopes from the slices this process holds
/// (none when `from_process` is false); what they do not cover is to be reserved (with a share
/// more) in the rows.
pub fn take_slices(
    ceiling: &SpendCeiling,
    messages: &[&NewMessage],
    slices: &Slices,
    now: Instant,
    from_process: bool,
) -> Needs {
    let mut wanted: HashMap<&str, Micros> = HashMap::new();
    for message in messages.iter().filter(|m| cost(m) > 0) {
        for scope in [ALL, country(message)] {
            if share(ceiling, scope).is_some() {
                let total = wanted.entry(scope).or_default();
                *total = total.saturating_add(cost(message));
            }
        }
    }
    let mut needs = Needs::default();
    for (scope, wanted) in wanted {
        let held = if from_process {
            slices.take_spend(scope, wanted, now)
        } else {
            None
        };
        let covered = held.as_ref().map_or(0, |s| s.left);
        if let Some(held) = held {
            needs.held.entry(scope.to_string()).or_default().push(held);
        }
        if covered < wanted {
            let share = share(ceiling, scope).unwrap_or(0);
            needs
                .refill
                .push((scope.to_string(), (wanted - covered).saturating_add(share)));
        }
    }
    needs.refill.sort_unstable();
    needs
}

impl Needs {
    /// What was taken from the process, to give back if the batch is not decided.
    pub fn taken(&self) -> Vec<Leftover> {
        self.held
            .iter()
            .flat_map(|(scope, held)| held.iter().map(|slice| spend_leftover(scope, slice)))
            .collect()
    }

    /// Whether a slice taken from the process is of another day than `day` (the database's,
    /// read after the batch waited for its locks): its spend would count on the wrong day.
    pub fn stale(&self, day: NaiveDate) -> bool {
        self.held.values().flatten().any(|slice| slice.day != day)
    }
}

/// Locks today's rows of `scopes` (creating them), after whatever the statement this is
/// part of locked before: the day, each scope's total, and how long the day has left (ms).
pub const LOCK_TODAY: &str = "INSERT INTO spend_days (day, scope)
         SELECT (now() AT TIME ZONE 'UTC')::date, s FROM unnest($2::text[]) AS s ORDER BY s
         ON CONFLICT (day, scope) DO UPDATE SET spent_micros = spend_days.spent_micros
         RETURNING day, scope, spent_micros,
                   (extract(epoch FROM (day + 1)::timestamp - (now() AT TIME ZONE 'UTC'))
                    * 1000)::bigint AS day_left_ms";

/// One locked row of today's totals: the day, its scope, its total, the day's time left.
pub type LockedRow = (NaiveDate, String, Micros, i64);

impl Spend {
    /// Today's totals as locked, decided against `ceiling`; the sliced scopes to refill get
    /// their slices now, as much of what they want as their ceilings have room for.
    /// `asked`: when the rows were asked for (a slice lasts until the day ends from then).
    pub fn from_locked(
        ceiling: &SpendCeiling,
        rows: Vec<LockedRow>,
        needs: Needs,
        asked: Instant,
    ) -> Self {
        let mut spend = Self {
            ceiling: *ceiling,
            day: rows.first().map(|(day, _, _, _)| *day),
            day_ends_in_ms: rows.first().map_or(0, |(_, _, _, left)| *left),
            totals: rows
                .into_iter()
                .map(|(_, scope, spent, _)| (scope, spent))
                .collect(),
            pool: needs.held,
            ..Self::default()
        };
        for (scope, wanted) in needs.refill {
            let (Some(day), Some(limit)) = (spend.day, spend.limit(&scope)) else {
                continue;
            };
            let total = spend.totals.get(&scope).copied().unwrap_or(0);
            let granted = wanted.min(limit.saturating_sub(total)).max(0);
            if granted == 0 {
                continue;
            }
            spend.totals.insert(scope.clone(), total + granted);
            spend.granted.insert(scope.clone(), granted);
            spend.pool.entry(scope).or_default().push(SpendSlice {
                day,
                until: slices::until(asked, spend.day_ends_in_ms),
                left: granted,
            });
        }
        spend
    }

    fn limit(&self, scope: &str) -> Option<Micros> {
        if scope == ALL {
            self.ceiling.daily
        } else {
            self.ceiling.country_daily
        }
    }

    /// What this batch may still spend of a sliced scope.
    fn left(&self, scope: &str) -> Micros {
        self.pool
            .get(scope)
            .map_or(0, |slices| slices.iter().map(|s| s.left).sum())
    }

    /// Spends `cost` of a sliced scope's slices (the caller checked that they hold it).
    fn spend_slices(&mut self, scope: &str, mut cost: Micros) {
        for slice in self.pool.get_mut(scope).into_iter().flatten() {
            let taken = slice.left.min(cost);
            if taken == 0 {
                continue;
            }
            slice.left -= taken;
            cost -= taken;
            self.used.push(Leftover::Spend {
                day: slice.day,
                scope: scope.to_string(),
                micros: taken,
            });
        }
    }

    /// Keeps what this batch did not spend of its slices in the process.
    pub fn put_back(&mut self, slices: &Slices, now: Instant) {
        for (scope, held) in self.pool.drain() {
            for slice in held {
                slices.put_back_spend(&scope, slice, now);
            }
        }
    }

    /// Leaves each scope's refill with at most a share unused: the rest of what the batch
    /// counted for messages other limits refused comes out of the total it writes back.
    pub fn trim_grants(&mut self) {
        for (scope, granted) in &mut self.granted {
            let share = share(&self.ceiling, scope).unwrap_or(0);
            // The refill is the last slice of its scope (`from_locked`).
            let Some(refill) = self.pool.get_mut(scope).and_then(|s| s.last_mut()) else {
                continue;
            };
            let excess = (refill.left - share).max(0).min(*granted);
            refill.left -= excess;
            *granted -= excess;
            if let Some(total) = self.totals.get_mut(scope) {
                *total -= excess;
            }
        }
    }

    /// The slices this batch did not spend, apart from the totals it writes back.
    pub fn unspent(&mut self) -> Self {
        Self {
            pool: std::mem::take(&mut self.pool),
            ..Self::default()
        }
    }

    /// What admitted messages spent of slices, to give back if they are not stored.
    pub fn used(&mut self) -> Vec<Leftover> {
        std::mem::take(&mut self.used)
    }
}

fn cost(message: &NewMessage) -> Micros {
    message.guard.estimated_cost.unwrap_or(0).max(0)
}

fn country(message: &NewMessage) -> &str {
    message.guard.country.as_deref().unwrap_or(NO_COUNTRY)
}

impl Spend {
    /// Whether today's rows are locked (a ceiling applies to this batch).
    pub fn is_locked(&self) -> bool {
        self.day.is_some()
    }

    /// Counts `message`'s estimate if no ceiling would be crossed by it: in its slices where
    /// its scope is sliced, in the locked total otherwise.
    pub fn admit(&mut self, message: &NewMessage) -> Result<(), OverSpend> {
        let cost = cost(message);
        if cost == 0 || self.ceiling.is_empty() {
            return Ok(());
        }
        let country = country(message);
        let mut scopes = vec![(ALL, None)];
        if self.ceiling.country_daily.is_some() {
            scopes.push((country, Some(country)));
        }
        for &(scope, named) in &scopes {
            let spent = self.totals.get(scope).copied().unwrap_or(0);
            let over = |limit| OverSpend {
                country: named.map(str::to_string),
                limit,
                spent,
                day_ends_in_ms: self.day_ends_in_ms,
            };
            match (share(&self.ceiling, scope), self.limit(scope)) {
                (Some(_), Some(limit)) if self.left(scope) < cost => return Err(over(limit)),
                (None, Some(limit)) if spent.saturating_add(cost) > limit => {
                    return Err(over(limit));
                }
                _ => {}
            }
        }
        for (scope, _) in scopes {
            if share(&self.ceiling, scope).is_some() {
                self.spend_slices(scope, cost);
            } else {
                *self.totals.entry(scope.to_string()).or_default() += cost;
                *self.added.entry(scope.to_string()).or_default() += cost;
            }
        }
        Ok(())
    }

    /// What the statement that writes the totals back needs: the new totals of the scopes
    /// this batch added to, and the scopes locked at zero that it added nothing to (rows
    /// that its locking may have created for messages another limit refused: a refused
    /// request leaves no row). And what it added, to give back if it is not stored.
    pub fn into_update(self) -> (Update, Reserved) {
        let mut update = Update {
            day: self.day,
            ..Update::default()
        };
        for (scope, total) in self.totals {
            if self.added.contains_key(&scope) || self.granted.contains_key(&scope) {
                update.scopes.push(scope);
                update.totals.push(total);
            } else if total == 0 {
                update.unused.push(scope);
            }
        }
        let reserved = Reserved {
            day: self.day,
            added: self.added.into_iter().collect(),
        };
        (update, reserved)
    }
}

/// Takes the spend of `leftovers` out of the totals of their days.
pub async fn give_back_leftovers(
    conn: &mut Tx<'_>,
    leftovers: &[Leftover],
) -> Result<(), sqlx::Error> {
    let mut days: Vec<NaiveDate> = Vec::new();
    let mut scopes: Vec<&str> = Vec::new();
    let mut added: Vec<Micros> = Vec::new();
    for leftover in leftovers {
        if let Leftover::Spend { day, scope, micros } = leftover {
            days.push(*day);
            scopes.push(scope);
            added.push(*micros);
        }
    }
    if days.is_empty() {
        return Ok(());
    }
    // The rows are locked in (day, scope) order first, as every reservation locks them, so a
    // give-back never deadlocks with one. A row back at zero is deleted: a slice or a
    // reservation that counted nothing in the end leaves no row, as a refusal leaves none.
    sqlx::query(
        "WITH v AS (SELECT day, scope, sum(added)::bigint AS added
                    FROM unnest($1::date[], $2::text[], $3::bigint[]) AS v(day, scope, added)
                    GROUP BY day, scope),
         locked AS (SELECT d.day, d.scope FROM spend_days d JOIN v USING (day, scope)
                    ORDER BY d.day, d.scope FOR UPDATE OF d)
         UPDATE spend_days d SET spent_micros = greatest(d.spent_micros - v.added, 0),
             updated_at = clock_timestamp()
         FROM v JOIN locked USING (day, scope) WHERE d.day = v.day AND d.scope = v.scope",
    )
    .bind(&days)
    .bind(&scopes)
    .bind(&added)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "DELETE FROM spend_days d USING unnest($1::date[], $2::text[]) AS v(day, scope)
         WHERE d.day = v.day AND d.scope = v.scope AND d.spent_micros = 0",
    )
    .bind(&days)
    .bind(&scopes)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Today's spend so far: the UTC day, all countries together, and each country's.
pub async fn today(db: &Db) -> Result<(NaiveDate, Micros, Vec<(String, Micros)>), sqlx::Error> {
    let rows: Vec<(NaiveDate, Option<String>, Micros)> = sqlx::query_as(
        "WITH today AS (SELECT (now() AT TIME ZONE 'UTC')::date AS day)
         SELECT today.day, s.scope, coalesce(s.spent_micros, 0)
         FROM today LEFT JOIN spend_days s ON s.day = today.day
         ORDER BY s.scope",
    )
    .fetch_all(db)
    .await?;
    let day = rows.first().map(|(day, _, _)| *day).unwrap_or_default();
    let mut all = 0;
    let mut countries = Vec::new();
    for (_, scope, spent) in rows {
        match scope.as_deref() {
            Some(ALL) => all = spent,
            // Rows of scopes whose requests were all refused stay at zero: not shown.
            Some(country) if spent > 0 => countries.push((country.to_string(), spent)),
            Some(_) => {}
            None => {}
        }
    }
    Ok((day, all, countries))
}
