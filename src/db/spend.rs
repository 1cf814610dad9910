//! Today's estimated spend, all countries together (`*`) and per country, in `spend_days`:
//! locked and decided in the ingress's reservation (`db::ingress_hits`), so a ceiling holds
//! exactly across processes. A day is a UTC day of the database's clock.

use std::collections::HashMap;

use chrono::NaiveDate;

use super::{Db, Tx};

use crate::config::Micros;
use crate::domain::NewMessage;
use crate::limits::ingress::{OverSpend, SpendCeiling};

/// The scope of the ceiling of all countries together.
const ALL: &str = "*";

/// What a message of no country is counted under (ISO's user-assigned "ZZ").
const NO_COUNTRY: &str = "ZZ";

/// Today's totals of the scopes a batch touches, locked until its transaction ends.
#[derive(Debug, Default)]
pub struct Spend {
    ceiling: SpendCeiling,
    day: Option<NaiveDate>,
    /// How long `day` had left when it was read (database clock, ms): the Retry-After of a
    /// refusal, decided by the clock that decided the day.
    day_ends_in_ms: i64,
    totals: HashMap<String, Micros>,
    /// What this batch added to each scope.
    added: HashMap<String, Micros>,
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
}

/// The scopes whose rows today's totals of `messages` are kept in (none without a ceiling
/// or a priced message), sorted: the order every writer locks them in.
pub fn scopes<'a>(ceiling: &SpendCeiling, messages: &[&'a NewMessage]) -> Vec<&'a str> {
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
    scopes.sort_unstable();
    scopes.dedup();
    scopes
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
    /// Today's totals as locked, decided against `ceiling`.
    pub fn from_locked(ceiling: &SpendCeiling, rows: Vec<LockedRow>) -> Self {
        if rows.is_empty() {
            return Self::default();
        }
        Self {
            ceiling: *ceiling,
            day: rows.first().map(|(day, _, _, _)| *day),
            day_ends_in_ms: rows.first().map_or(0, |(_, _, _, left)| *left),
            totals: rows
                .into_iter()
                .map(|(_, scope, spent, _)| (scope, spent))
                .collect(),
            added: HashMap::new(),
        }
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

    /// Counts `message`'s estimate if no ceiling would be crossed by it.
    pub fn admit(&mut self, message: &NewMessage) -> Result<(), OverSpend> {
        let cost = cost(message);
        if cost == 0 || self.day.is_none() {
            return Ok(());
        }
        let country = country(message);
        let scopes = [
            (ALL, self.ceiling.daily, None),
            (country, self.ceiling.country_daily, Some(country)),
        ];
        for (scope, limit, named) in scopes {
            let Some(limit) = limit else { continue };
            let spent = self.totals.get(scope).copied().unwrap_or(0);
            if spent.saturating_add(cost) > limit {
                return Err(OverSpend {
                    country: named.map(str::to_string),
                    limit,
                    spent,
                    day_ends_in_ms: self.day_ends_in_ms,
                });
            }
        }
        let mut scopes = vec![ALL];
        if self.ceiling.country_daily.is_some() {
            scopes.push(country);
        }
        for scope in scopes {
            *self.totals.entry(scope.to_string()).or_default() += cost;
            *self.added.entry(scope.to_string()).or_default() += cost;
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
            if self.added.contains_key(&scope) {
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

/// Takes what a batch added out of its day's totals again.
pub async fn give_back(conn: &mut Tx<'_>, reserved: &Reserved) -> Result<(), sqlx::Error> {
    let Some(day) = reserved.day else {
        return Ok(());
    };
    let (scopes, added): (Vec<&str>, Vec<Micros>) =
        reserved.added.iter().map(|(s, v)| (s.as_str(), *v)).unzip();
    sqlx::query(
        "UPDATE spend_days d SET spent_micros = greatest(d.spent_micros - v.added, 0),
             updated_at = clock_timestamp()
         FROM unnest($2::text[], $3::bigint[]) AS v(scope, added)
         WHERE d.day = $1 AND d.scope = v.scope",
    )
    .bind(day)
    .bind(&scopes)
    .bind(&added)
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
