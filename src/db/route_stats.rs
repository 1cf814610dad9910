//! What each route delivers, per carrier and destination country (issue 26): sends, delivered
//! and failed receipts (by route or by recipient), the receipts' latency, and by difference the
//! sends no receipt answered. Each process counts what it sees in memory and adds it to
//! `route_stats` every few seconds, one upsert per (carrier, country, minute), so no row is
//! written per message and no busy country's row is one that sends wait on. A receipt counts
//! in the minute its message was sent (both by the database's clock), so a minute's counts
//! say what became of its sends; `window` sums the minutes of the sliding window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Db;
use crate::domain::{DeliveryFailure, Status, classify};

/// Counts not yet added to the table, shared by a process's workers and receipt routes.
#[derive(Clone, Default)]
pub struct RouteStats {
    pending: Arc<Mutex<HashMap<Key, Counts>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    carrier: String,
    country: String,
    /// The minute of the send (epoch seconds); `None` for a send just made, counted in the
    /// database's minute when it is added.
    minute: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    sent: i64,
    delivered: i64,
    failed_route: i64,
    failed_recipient: i64,
    receipt_ms_sum: i64,
    verified: i64,
}

/// The destination country of `recipient` (ISO 3166-1 alpha-2), or "ZZ" for none.
pub fn country_of(recipient: &str) -> String {
    classify(recipient)
        .and_then(|c| c.country())
        .unwrap_or_else(|| "ZZ".to_string())
}

/// A final receipt applied to a message, as the route measurements count it.
#[derive(Debug, Clone)]
pub struct ReceiptSeen {
    pub carrier: String,
    pub recipient: String,
    /// The minute its message was sent (epoch seconds, the database's clock).
    pub sent_minute: i64,
    /// From the send to the receipt, by the database's clock.
    pub receipt_ms: i64,
    pub status: Status,
    pub failure: Option<DeliveryFailure>,
}

impl RouteStats {
    /// `carrier` took a message to `recipient` in `minute` (epoch seconds, the database's
    /// clock: the minute its receipt and its login will count in too).
    pub fn sent(&self, carrier: &str, recipient: &str, minute: i64) {
        let key = Key {
            carrier: carrier.to_string(),
            country: country_of(recipient),
            minute: Some(minute),
        };
        self.add(key, |c| c.sent += 1);
    }

    /// A final receipt applied to a message.
    pub fn receipt(&self, seen: &ReceiptSeen) {
        let key = Key {
            carrier: seen.carrier.clone(),
            country: country_of(&seen.recipient),
            minute: Some(seen.sent_minute),
        };
        let (status, failure) = (seen.status, seen.failure);
        let receipt_ms = seen.receipt_ms.clamp(0, 86_400_000);
        self.add(key, |c| {
            match (status, failure) {
                (Status::Delivered, _) => c.delivered += 1,
                (_, Some(DeliveryFailure::Recipient)) => c.failed_recipient += 1,
                _ => c.failed_route += 1,
            }
            c.receipt_ms_sum += receipt_ms;
        });
    }

    /// A login was completed with the code of a message `carrier` sent in `sent_minute`.
    pub fn verified(&self, carrier: &str, recipient: &str, sent_minute: i64) {
        let key = Key {
            carrier: carrier.to_string(),
            country: country_of(recipient),
            minute: Some(sent_minute),
        };
        self.add(key, |c| c.verified += 1);
    }

    fn add(&self, key: Key, change: impl FnOnce(&mut Counts)) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        change(pending.entry(key).or_default());
    }

    /// Adds what was counted to `route_stats`; kept for the next time if the database refuses.
    pub async fn flush(&self, pool: &Db) -> Result<(), sqlx::Error> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if taken.is_empty() {
            return Ok(());
        }
        let result = upsert(pool, &taken).await;
        if result.is_err() {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (key, counts) in taken {
                let into = pending.entry(key).or_default();
                into.sent += counts.sent;
                into.delivered += counts.delivered;
                into.failed_route += counts.failed_route;
                into.failed_recipient += counts.failed_recipient;
                into.receipt_ms_sum += counts.receipt_ms_sum;
                into.verified += counts.verified;
            }
        }
        result
    }
}

/// One statement for every key; rows are taken in one order by every process, and keys that
/// land on one row (a send's minute is the database's) are summed first.
async fn upsert(pool: &Db, counts: &HashMap<Key, Counts>) -> Result<(), sqlx::Error> {
    let (mut carriers, mut countries, mut minutes) = (vec![], vec![], vec![]);
    let (mut sent, mut delivered, mut route, mut recipient, mut ms, mut verified) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for (key, c) in counts {
        carriers.push(key.carrier.clone());
        countries.push(key.country.clone());
        minutes.push(key.minute);
        sent.push(c.sent);
        delivered.push(c.delivered);
        route.push(c.failed_route);
        recipient.push(c.failed_recipient);
        ms.push(c.receipt_ms_sum);
        verified.push(c.verified);
    }
    sqlx::query(
        "INSERT INTO route_stats AS s (carrier, country, minute, sent, delivered, failed_route,
                                       failed_recipient, receipt_ms_sum, verified)
         SELECT carrier, country,
                coalesce(to_timestamp(minute), date_trunc('minute', now())) AS at,
                sum(sent), sum(delivered), sum(route), sum(recipient), sum(ms), sum(verified)
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                     $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[])
             AS v(carrier, country, minute, sent, delivered, route, recipient, ms, verified)
         GROUP BY 1, 2, 3
         ORDER BY 1, 2, 3
         ON CONFLICT (carrier, country, minute) DO UPDATE
         SET sent = s.sent + excluded.sent, delivered = s.delivered + excluded.delivered,
             failed_route = s.failed_route + excluded.failed_route,
             failed_recipient = s.failed_recipient + excluded.failed_recipient,
             receipt_ms_sum = s.receipt_ms_sum + excluded.receipt_ms_sum,
             verified = s.verified + excluded.verified",
    )
    .bind(&carriers)
    .bind(&countries)
    .bind(&minutes)
    .bind(&sent)
    .bind(&delivered)
    .bind(&route)
    .bind(&recipient)
    .bind(&ms)
    .bind(&verified)
    .execute(pool)
    .await?;
    Ok(())
}

/// One carrier and country over the window.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RouteWindow {
    pub carrier: String,
    pub country: String,
    pub sent: i64,
    pub delivered: i64,
    pub failed_route: i64,
    pub failed_recipient: i64,
    /// Sends old enough to have had their receipt (older than `settle`) that have none.
    pub no_receipt: i64,
    /// The mean time from a send to its final receipt, when one came.
    pub receipt_latency_ms: Option<f64>,
    /// Sends whose code completed a login (`POST /v1/verifications`).
    pub verified: i64,
}

impl RouteWindow {
    /// Delivered out of the sends the route could have delivered that have a verdict (a
    /// receipt, or none past its time). Recipient failures are left out: they end the message,
    /// so only the carrier tried first ever sees them.
    pub fn delivery_ratio(&self) -> Option<f64> {
        let judged = self.delivered + self.failed_route + self.no_receipt;
        (judged > 0).then(|| self.delivered as f64 / judged as f64)
    }

    /// Logins completed out of the sends: what proves codes arrived (a receipt can lie).
    pub fn conversion_ratio(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.verified as f64 / self.sent as f64)
    }
}

/// The last `window_seconds` (whole minutes, the current one included), per carrier and
/// country; a send counts as unanswered once it is `settle_seconds` old.
pub async fn window(
    pool: &Db,
    window_seconds: u32,
    settle_seconds: u32,
) -> Result<Vec<RouteWindow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT carrier, country, sum(sent)::bigint AS sent, sum(delivered)::bigint AS delivered,
                sum(failed_route)::bigint AS failed_route,
                sum(failed_recipient)::bigint AS failed_recipient,
                coalesce(sum(greatest(0, sent - delivered - failed_route - failed_recipient))
                    FILTER (WHERE minute + interval '1 minute'
                                  <= now() - make_interval(secs => $2)), 0)::bigint
                    AS no_receipt,
                (sum(receipt_ms_sum)::float8
                    / nullif(sum(delivered + failed_route + failed_recipient), 0))
                    AS receipt_latency_ms,
                sum(verified)::bigint AS verified
         FROM route_stats
         WHERE minute >= date_trunc('minute', now()) - make_interval(secs => $1)
         GROUP BY carrier, country
         ORDER BY carrier, country",
    )
    .bind(f64::from(window_seconds))
    .bind(f64::from(settle_seconds))
    .fetch_all(pool)
    .await
}

/// Deletes the minutes older than the window (and a margin); how many rows.
pub async fn forget_older_than(pool: &Db, window_seconds: u32) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM route_stats
         WHERE minute < date_trunc('minute', now()) - make_interval(secs => $1) - interval '5 minutes'",
    )
    .bind(f64::from(window_seconds))
    .execute(pool)
    .await?
    .rows_affected())
}
