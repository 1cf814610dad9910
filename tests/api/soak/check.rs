//! The invariants a soak run must keep, checked over what the clients were told, what the
//! carrier stand-ins received, and an audit the database keeps of its own writes (triggers
//! installed by the soak, so retention deleting messages hides nothing).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::plan::Plan;
use super::run::Record;

/// A send may reach the carrier this long after the moment its call started.
const ARRIVAL_SLACK: Duration = Duration::from_millis(500);
/// A message ends at most one lease after its expiry, plus this for a busy machine.
const FINISH_SLACK: Duration = Duration::from_secs(3);

/// Audit tables: every message inserted (with its body, which the message loses when it
/// ends), every move to a final status, every write to a queue row.
pub async fn install_audit(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE soak_inserted (id uuid, body text, recipient text,
                                     expires_at timestamptz, created_at timestamptz);
         CREATE TABLE soak_finished (id uuid, status text, at timestamptz);
         CREATE TABLE soak_queue_writes (id uuid);
         CREATE FUNCTION soak_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF TG_TABLE_NAME = 'message_queue' THEN
                 INSERT INTO soak_queue_writes VALUES (NEW.message_id);
             ELSIF TG_OP = 'INSERT' THEN
                 INSERT INTO soak_inserted
                     VALUES (NEW.id, NEW.body, NEW.recipient, NEW.expires_at, NEW.created_at);
             ELSIF OLD.status IN ('queued', 'sending')
                   AND NEW.status NOT IN ('queued', 'sending') THEN
                 INSERT INTO soak_finished VALUES (NEW.id, NEW.status, clock_timestamp());
             END IF;
             RETURN NULL;
         END $$;
         CREATE TRIGGER soak_messages AFTER INSERT OR UPDATE ON messages
             FOR EACH ROW EXECUTE FUNCTION soak_audit();
         CREATE TRIGGER soak_queue AFTER UPDATE ON message_queue
             FOR EACH ROW EXECUTE FUNCTION soak_audit();",
    )
    .execute(pool)
    .await
    .expect("audit triggers");
}

struct Stored {
    body: String,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

/// One send the carriers accepted.
struct Send {
    body: String,
    recipient: String,
    at: SystemTime,
    /// The answer left smsgate without a verdict: a second send is allowed.
    may_duplicate: bool,
}

/// Every broken invariant, in words; empty when the run kept them all.
pub async fn invariants(plan: &Plan, record: &Record, pool: &PgPool) -> Vec<String> {
    let mut problems = record.problems.clone();
    let stored = stored(pool).await;
    let finished = finished(pool).await;
    let sends = sends(plan, record);
    let timeouts = timeouts(pool).await;

    answers_match_storage(plan, record, &stored, &finished, &mut problems);
    sends_are_bounded(record, &stored, &sends, &timeouts, &mut problems);
    nothing_sent_after_expiry(&stored, &sends, &mut problems);
    recipient_windows_hold(plan, &sends, &mut problems);
    canceled_messages_stay_unsent(record, &stored, &sends, &mut problems);
    messages_end_in_time(plan, &stored, &finished, &mut problems);
    waiting_is_quiet(pool, &stored, &finished, record, &mut problems).await;
    problems
}

async fn stored(pool: &PgPool) -> HashMap<Uuid, Stored> {
    let rows: Vec<(Uuid, String, DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, body, expires_at, created_at FROM soak_inserted")
            .fetch_all(pool)
            .await
            .expect("audit");
    rows.into_iter()
        .map(|(id, body, expires_at, created_at)| {
            let stored = Stored {
                body,
                expires_at,
                created_at,
            };
            (id, stored)
        })
        .collect()
}

/// Carrier calls smsgate itself recorded as timed out, per message body. A planned reply
/// shorter than the timeout can still time out on a stalled machine; such a call may have
/// been taken, so a second send of that message is the documented at-least-once case.
async fn timeouts(pool: &PgPool) -> HashMap<String, usize> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.body, count(*) FROM message_attempts a
           JOIN soak_inserted s ON s.id = a.message_id
          WHERE a.outcome = 'timeout'
          GROUP BY s.body",
    )
    .fetch_all(pool)
    .await
    .expect("attempts");
    rows.into_iter()
        .map(|(body, count)| (body, usize::try_from(count).unwrap_or(usize::MAX)))
        .collect()
}

async fn finished(pool: &PgPool) -> HashMap<Uuid, Vec<(String, DateTime<Utc>)>> {
    let rows: Vec<(Uuid, String, DateTime<Utc>)> =
        sqlx::query_as("SELECT id, status, at FROM soak_finished ORDER BY at")
            .fetch_all(pool)
            .await
            .expect("audit");
    let mut by_id: HashMap<Uuid, Vec<(String, DateTime<Utc>)>> = HashMap::new();
    for (id, status, at) in rows {
        by_id.entry(id).or_default().push((status, at));
    }
    by_id
}

fn sends(plan: &Plan, record: &Record) -> Vec<Send> {
    let mut sends = Vec::new();
    for (carrier, standin) in plan.carriers.iter().zip(&record.standins) {
        for seen in standin.seen().into_iter().filter(|s| s.accepted) {
            let body = seen
                .fields
                .get("Body")
                .or_else(|| seen.fields.get("content"))
                .cloned()
                .unwrap_or_default();
            sends.push(Send {
                body,
                recipient: seen.fields.get("to").cloned().unwrap_or_default(),
                at: seen.wall,
                may_duplicate: seen
                    .reply
                    .as_ref()
                    .is_some_and(|r| carrier.may_duplicate(r)),
            });
        }
    }
    sends.sort_by_key(|s| s.at);
    sends
}

/// Every 200 names a stored message that ended exactly once; every stored message was
/// answered 200 (or its request got no answer at all): no 4xx or 5xx for a stored message.
fn answers_match_storage(
    plan: &Plan,
    record: &Record,
    stored: &HashMap<Uuid, Stored>,
    finished: &HashMap<Uuid, Vec<(String, DateTime<Utc>)>>,
    problems: &mut Vec<String>,
) {
    let mut answered: HashSet<Uuid> = HashSet::new();
    let mut unanswered_bodies: HashSet<&str> = HashSet::new();
    for answer in &record.answers {
        let request = &plan.requests[answer.request];
        match (answer.status, &answer.id) {
            (Some(200), Some(id)) => match id.parse::<Uuid>() {
                Ok(id) if stored.contains_key(&id) => {
                    answered.insert(id);
                }
                _ => problems.push(format!(
                    "request {} got 200 for {id}, never stored",
                    answer.request
                )),
            },
            (Some(200), None) => {
                problems.push(format!("request {} got 200 without an id", answer.request))
            }
            (None, _) => {
                unanswered_bodies.insert(&request.body);
            }
            (Some(status), _) if status >= 500 || status == 429 || status == 422 => {}
            (Some(status), _) => problems.push(format!(
                "request {} got {status}: no soak request is invalid",
                answer.request
            )),
        }
    }
    for id in &answered {
        match finished.get(id).map(Vec::len) {
            Some(1) => {}
            Some(n) => problems.push(format!("message {id} ended {n} times")),
            None => problems.push(format!("message {id} was answered 200 and never ended")),
        }
    }
    for (id, message) in stored {
        if !answered.contains(id) && !unanswered_bodies.contains(message.body.as_str()) {
            problems.push(format!(
                "message {id} was stored but its request was told otherwise"
            ));
        }
    }
}

/// Each message is sent at most once, unless a kill, a restart or a carrier call that timed
/// out after the carrier took it allows one more; the run's extra sends stay within what
/// those faults allow. A timeout counts when the plan made the carrier hang or when smsgate
/// recorded the call as timed out (a stalled machine), whichever is more.
fn sends_are_bounded(
    record: &Record,
    stored: &HashMap<Uuid, Stored>,
    sends: &[Send],
    timeouts: &HashMap<String, usize>,
    problems: &mut Vec<String>,
) {
    let mut messages_per_body: HashMap<&str, usize> = HashMap::new();
    for message in stored.values() {
        *messages_per_body.entry(message.body.as_str()).or_default() += 1;
    }
    let mut per_body: HashMap<&str, (usize, usize)> = HashMap::new();
    for send in sends {
        let entry = per_body.entry(send.body.as_str()).or_default();
        entry.0 += 1;
        entry.1 += usize::from(send.may_duplicate);
    }
    let faults = record.kills + record.database_restarts;
    let mut unexplained = 0;
    for (body, (count, hung)) in per_body {
        let Some(&messages) = messages_per_body.get(body) else {
            problems.push(format!("a send of a message never stored: {body:?}"));
            continue;
        };
        let hung = hung.max(timeouts.get(body).copied().unwrap_or(0));
        let extra = count.saturating_sub(messages + hung);
        if extra > faults {
            problems.push(format!(
                "{body:?}: {count} sends for {messages} message(s), {hung} after hangs, {faults} faults"
            ));
        }
        unexplained += extra;
    }
    let budget = faults * record.workers;
    if unexplained > budget {
        problems.push(format!(
            "{unexplained} duplicate sends, more than {faults} faults x {} workers",
            record.workers
        ));
    }
}

/// No carrier was called for a message after its code expired.
fn nothing_sent_after_expiry(
    stored: &HashMap<Uuid, Stored>,
    sends: &[Send],
    problems: &mut Vec<String>,
) {
    let mut latest: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for message in stored.values() {
        let entry = latest.entry(&message.body).or_insert(message.expires_at);
        *entry = (*entry).max(message.expires_at);
    }
    for send in sends {
        let Some(expires) = latest.get(send.body.as_str()) else {
            continue;
        };
        let at: DateTime<Utc> = send.at.into();
        let late = at - *expires;
        if late > chrono::Duration::from_std(ARRIVAL_SLACK).unwrap_or_default() {
            problems.push(format!(
                "{:?} reached the carrier {} ms after it expired",
                send.body,
                late.num_milliseconds()
            ));
        }
    }
}

/// Counted from the carriers' logs: no number got more distinct messages in any window than
/// `[[limits.recipient]]` allows. A send is admitted right before the first call of its
/// attempt and a failover within the attempt is the same send, so the window is shortened by
/// the longest failover chain (every carrier of a route timing out) and the arrival slack.
fn recipient_windows_hold(plan: &Plan, sends: &[Send], problems: &mut Vec<String>) {
    let Some(limit) = plan.recipient_limit else {
        return;
    };
    let chain_ms = plan
        .routes
        .iter()
        .map(|(_, list)| {
            list.iter()
                .map(|&c| plan.carriers[c].timeout_ms)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let span = Duration::from_secs(u64::from(limit.window_seconds))
        .saturating_sub(ARRIVAL_SLACK + Duration::from_millis(chain_ms));
    let mut by_recipient: HashMap<&str, Vec<(&SystemTime, &str)>> = HashMap::new();
    let mut first_sends: HashSet<&str> = HashSet::new();
    for send in sends {
        // A message's first send is the one its admission counted.
        if first_sends.insert(&send.body) {
            by_recipient
                .entry(&send.recipient)
                .or_default()
                .push((&send.at, &send.body));
        }
    }
    for (recipient, times) in by_recipient {
        for (i, (start, _)) in times.iter().enumerate() {
            let inside = times[i..]
                .iter()
                .take_while(|(at, _)| at.duration_since(**start).unwrap_or_default() < span)
                .count();
            if inside > limit.max as usize {
                let which: Vec<String> = times[i..i + inside]
                    .iter()
                    .map(|(at, body)| {
                        let at: DateTime<Utc> = (**at).into();
                        format!("{body:?} at {}", at.format("%H:%M:%S%.3f"))
                    })
                    .collect();
                problems.push(format!(
                    "{recipient} got {inside} messages within {span:?} (limit {} per {} s): {}",
                    limit.max,
                    limit.window_seconds,
                    which.join(", ")
                ));
                break;
            }
        }
    }
}

/// A message an operator canceled is never sent afterwards.
fn canceled_messages_stay_unsent(
    record: &Record,
    stored: &HashMap<Uuid, Stored>,
    sends: &[Send],
    problems: &mut Vec<String>,
) {
    for action in record.actions.iter().filter(|a| a.cancel && a.done) {
        let Some(message) = action.id.parse().ok().and_then(|id: Uuid| stored.get(&id)) else {
            continue;
        };
        let bodies = stored.values().filter(|m| m.body == message.body).count();
        let after = sends
            .iter()
            .filter(|s| s.body == message.body && s.at > action.finished)
            .count();
        if bodies == 1 && after > 0 {
            problems.push(format!("{} was sent after it was canceled", action.id));
        }
    }
}

/// Nothing stays leased or waiting past its expiry plus one lease.
fn messages_end_in_time(
    plan: &Plan,
    stored: &HashMap<Uuid, Stored>,
    finished: &HashMap<Uuid, Vec<(String, DateTime<Utc>)>>,
    problems: &mut Vec<String>,
) {
    let grace = Duration::from_secs(u64::from(plan.lease_seconds)) + FINISH_SLACK;
    let grace = chrono::Duration::from_std(grace).unwrap_or_default();
    for (id, message) in stored {
        let Some(ends) = finished.get(id) else {
            problems.push(format!("message {id} never ended"));
            continue;
        };
        let (status, at) = &ends[0];
        if *at > message.expires_at + grace {
            problems.push(format!(
                "message {id} ended {status} {} ms after its expiry",
                (*at - message.expires_at).num_milliseconds()
            ));
        }
    }
}

/// While messages wait, the queue is written at most about twice a second per message, on
/// top of two writes per attempt and each operator action.
async fn waiting_is_quiet(
    pool: &PgPool,
    stored: &HashMap<Uuid, Stored>,
    finished: &HashMap<Uuid, Vec<(String, DateTime<Utc>)>>,
    record: &Record,
    problems: &mut Vec<String>,
) {
    let writes: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT id, count(*) FROM soak_queue_writes GROUP BY id")
            .fetch_all(pool)
            .await
            .expect("audit");
    let attempts: HashMap<Uuid, i32> =
        sqlx::query_as::<_, (Uuid, i32)>("SELECT id, attempts FROM messages")
            .fetch_all(pool)
            .await
            .expect("attempts")
            .into_iter()
            .collect();
    for (id, count) in writes {
        let (Some(message), Some(ends)) = (stored.get(&id), finished.get(&id)) else {
            continue;
        };
        let life_seconds = (ends[0].1 - message.created_at).num_milliseconds().max(0) / 1000;
        // Retention may have deleted the row: count the most attempts the plan allows.
        let attempts = i64::from(attempts.get(&id).copied().unwrap_or(6));
        let operator = record
            .actions
            .iter()
            .filter(|a| a.id == id.to_string())
            .count() as i64;
        let bound = 6 + 2 * attempts + 2 * (life_seconds + 1) + operator;
        if count > bound {
            problems.push(format!(
                "message {id}: {count} queue writes in {life_seconds} s ({attempts} attempts), bound {bound}"
            ));
        }
    }
}

/// No process logged a panic (a caught one included: it is still a bug).
pub fn no_panics_in(logs: &[std::path::PathBuf], problems: &mut Vec<String>) {
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("panicked") {
            problems.push(format!("a panic in {}", log.display()));
        }
    }
}
