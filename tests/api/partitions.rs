//! Time partitions: retention drops a day whole once every message in it is final and past
//! `retention.days`, keeps a day that still has a message queued, splits days at the
//! database's UTC midnight (a gateway clock far off lands in the default partition and is still
//! stored and removed), runs on one process at a time, keeps a status lookup to one
//! partition, and `smsgate migrate` upgrades a populated database.

use std::time::Duration;

use chrono::{Days, NaiveDate};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use smsgate::Role;
use smsgate::db::Db;
use smsgate::db::partitions::{self, day_partition};
use smsgate::dispatch::retention::{Plan, Swept};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use crate::cli::{terminate, wait_until_healthy};
use crate::dispatch::{queue, status_of, wait_final, wait_until};
use crate::helpers::{ADMIN_TOKEN, SECRET, TestApp, auth0_claims, now, sign_with};
use crate::test_config::TestConfig;

/// Today by the database's clock, the one partitions follow.
pub async fn database_today(pool: &PgPool) -> NaiveDate {
    sqlx::query_scalar("SELECT (now() AT TIME ZONE 'UTC')::date")
        .fetch_one(pool)
        .await
        .expect("today")
}

async fn exists(pool: &PgPool, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("to_regclass")
}

async fn partition_of(pool: &PgPool, id: &str) -> String {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM messages WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("stored")
}

async fn sweep(pool: &PgPool, days: u32) -> Swept {
    let plan = Plan {
        days,
        send_log_seconds: 600,
        ingress_log_seconds: 600,
        resend: Default::default(),
    };
    smsgate::dispatch::retention::sweep(&Db::direct(pool.clone()), plan, &Default::default())
        .await
        .expect("sweep")
}

/// `count` messages of `day`, sent and final nine days ago, each with an attempt, a delivery
/// receipt received that day and an idempotency key (a fresh one: keys live an hour), stored the way the benchmark stores a day; their ids.
pub async fn fill_day(pool: &PgPool, day: NaiveDate, count: i64) -> Vec<Uuid> {
    sqlx::query_scalar(
        "WITH ids AS (
             SELECT g, (lpad(to_hex($1::bigint + g * 1000), 12, '0') || '7'
                        || substr(md5(g::text), 1, 3) || '8' || substr(md5(g::text), 4, 15))::uuid
                       AS id
             FROM generate_series(1, $2::bigint) g
         ), m AS (
             INSERT INTO messages (id, recipient, body, status, carrier, carrier_message_id,
                                   attempts, created_at, expires_at, sent_at, finished_at)
             SELECT id, '+1415555' || lpad(g::text, 4, '0'), '', 'sent', 'console',
                    'old-' || $1::bigint || '-' || g,
                    1, $3, $3, $3, now() - interval '9 days'
             FROM ids RETURNING id, carrier_message_id
         ), a AS (
             INSERT INTO message_attempts (message_id, attempt, carrier, outcome,
                                           carrier_message_id)
             SELECT id, 1, 'console', 'sent', carrier_message_id FROM m
         ), r AS (
             INSERT INTO delivery_receipts (carrier, carrier_message_id, status, received_at,
                                            applied)
             SELECT 'console', carrier_message_id, 'delivered', $3, true FROM m
         ), k AS (
             INSERT INTO idempotency_keys (key, message_id)
             SELECT 'k-' || carrier_message_id, id FROM m
         )
         SELECT id FROM m ORDER BY id",
    )
    .bind(partitions::start_of(day).timestamp_millis())
    .bind(count)
    .bind(partitions::start_of(day) + chrono::Duration::hours(1))
    .fetch_all(pool)
    .await
    .expect("a day of messages")
}

async fn status_code(app: &TestApp, id: &str) -> u16 {
    app.get_message(id, Some(ADMIN_TOKEN))
        .await
        .status()
        .as_u16()
}

#[tokio::test]
async fn retention_drops_a_day_whose_messages_are_all_final_and_old_with_its_attempts() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    let today = database_today(&app.pool).await;
    let old_day = today - Days::new(10);
    assert!(partitions::create_day(&db, old_day).await.expect("create"));
    let old = fill_day(&app.pool, old_day, 200).await;
    let recent = queue(&app, "+14155552671").await;
    app.dispatch_until_idle().await;

    let swept = sweep(&app.pool, 7).await;

    for table in ["messages", "message_attempts", "delivery_receipts"] {
        let name = day_partition(table, old_day);
        assert!(swept.dropped.contains(&name), "{name} dropped: {swept:?}");
        assert!(
            !exists(&app.pool, &name).await,
            "{name} is gone, its files with it"
        );
        let today = day_partition(table, today);
        assert!(exists(&app.pool, &today).await, "{today} stays");
    }
    assert_eq!(swept.deleted, 0, "nothing deleted row by row");
    assert_eq!(status_code(&app, &old[0].to_string()).await, 404);
    assert_eq!(status_of(&app, &recent).await["status"], "sent");
    assert_eq!(app.count_rows("messages").await, 1);
    assert_eq!(app.count_rows("message_attempts").await, 1);
    assert_eq!(
        app.count_rows("idempotency_keys").await,
        0,
        "keys went with their messages"
    );
}

#[tokio::test]
async fn a_day_with_a_message_still_queued_is_kept_and_that_message_is_still_sent() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    let old_day = database_today(&app.pool).await - Days::new(10);
    assert!(partitions::create_day(&db, old_day).await.expect("create"));
    fill_day(&app.pool, old_day, 20).await;
    // Accepted that day by a gateway, still waiting (a long outage, a clock behind).
    let queued = Uuid::from_u128(partitions::first_id_of(old_day).as_u128() + (5 << 80) + 1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (id, recipient, body, expires_at)
             VALUES ('{queued}', '+14155550123', 'Your code is 123456', now() + interval '1 hour');
         INSERT INTO message_queue (message_id, run_at, expires_at)
             VALUES ('{queued}', now(), now() + interval '1 hour');"
    )))
    .execute(&app.pool)
    .await
    .expect("a queued message of that day");

    let swept = sweep(&app.pool, 7).await;

    for table in ["messages", "message_attempts"] {
        let name = day_partition(table, old_day);
        assert!(!swept.dropped.contains(&name), "{name} kept: {swept:?}");
        assert!(exists(&app.pool, &name).await, "{name} kept");
    }
    assert_eq!(app.count_rows("messages").await, 21, "no message lost");
    app.dispatch_until_idle().await;
    let view = status_of(&app, &queued.to_string()).await;
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(1));
    // It ended just now: its day waits `retention.days` more.
    let swept = sweep(&app.pool, 7).await;
    assert!(
        exists(&app.pool, &day_partition("messages", old_day)).await,
        "{swept:?}"
    );
}

/// A token the skewed gateways accept (their clocks are days ahead).
fn lasting_token() -> String {
    let mut claims = auth0_claims();
    claims["iat"] = json!(now() - 86_400);
    claims["exp"] = json!(now() + 40 * 86_400);
    sign_with(&claims, SECRET.as_bytes(), Algorithm::HS256)
}

async fn post(client: &reqwest::Client, port: u16, recipient: &str) -> String {
    let response = client
        .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
        .bearer_auth(lasting_token())
        .json(&json!({"recipient": recipient, "body": "Your code is 123456"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 200, "accepted");
    let body: Value = response.json().await.expect("JSON");
    body["id"].as_str().expect("id").to_string()
}

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

fn spawn_skewed(
    app: &TestApp,
    config: &TestConfig,
    dir: &std::path::Path,
    faketime: &str,
) -> (std::process::Child, u16) {
    let skew = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", faketime),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    crate::process::spawn_binary_with_env(app, config, dir, &skew)
}

/// Ids come from the gateway's clock, days from the database's: a gateway whose clock crosses
/// the midnight between two created days writes on either side, and each message is read back
/// by id from its own day.
#[tokio::test]
async fn messages_either_side_of_midnight_land_in_two_days_and_are_read_by_id() {
    let config = TestConfig::base();
    let app = TestApp::spawn_role(&config, Role::Ingress).await;
    let today = database_today(&app.pool).await;
    let (before, after) = (today + Days::new(2), today + Days::new(3));
    let to_midnight: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM $1::timestamptz - now())::float8")
            .bind(partitions::start_of(after))
            .fetch_one(&app.pool)
            .await
            .expect("seconds to that midnight");
    let dir = tempfile::tempdir().expect("tempdir");
    // Its clock reaches that midnight a few seconds after it starts.
    let skew = format!("+{}s", to_midnight as i64 - 4);
    let (child, port) = spawn_skewed(&app, &config, dir.path(), &skew);
    let client = wait_until_healthy(port).await;
    let mut seen: Vec<(String, String)> = vec![];
    wait_until(
        "a message after midnight",
        Duration::from_secs(30),
        async || {
            let id = post(&client, port, "+14155552671").await;
            let partition = partition_of(&app.pool, &id).await;
            seen.push((id, partition.clone()));
            partition == day_partition("messages", after)
        },
    )
    .await;
    assert!(terminate(child).await.success());

    assert_eq!(seen[0].1, day_partition("messages", before), "{seen:?}");
    for (id, _) in &seen {
        let view = status_of(&app, id).await;
        assert_eq!(view["id"], id.as_str(), "read back by id: {view}");
    }
}

#[tokio::test]
async fn a_gateway_clock_far_ahead_is_stored_in_the_default_partition_and_removed_by_row() {
    let config = TestConfig::base();
    let app = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = spawn_skewed(&app, &config, dir.path(), "+30d");
    let client = wait_until_healthy(port).await;
    let id = post(&client, port, "+14155552671").await;
    assert_eq!(partition_of(&app.pool, &id).await, "messages_default");
    let view = wait_final(&app, &id, Duration::from_secs(20)).await;
    assert!(terminate(child).await.success());
    assert_eq!(view["status"], "sent", "{view}");

    sqlx::query("UPDATE messages SET finished_at = now() - interval '8 days' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .expect("age it");
    let swept = sweep(&app.pool, 7).await;

    assert_eq!(swept.deleted, 1, "{swept:?}");
    assert_eq!(status_code(&app, &id).await, 404);
    assert_eq!(
        app.count_rows("message_attempts").await,
        0,
        "its attempts too"
    );
}

#[tokio::test]
async fn two_processes_keeping_partitions_at_once_both_succeed_and_create_each_day_once() {
    let app = TestApp::spawn().await;
    let last = database_today(&app.pool).await + Days::new(partitions::DAYS_AHEAD);
    for table in ["messages", "message_attempts", "delivery_receipts"] {
        let name = day_partition(table, last);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} DETACH PARTITION {name}; DROP TABLE {name};"
        )))
        .execute(&app.pool)
        .await
        .expect("forget the last day");
    }
    let other = PgPool::connect_with(app.pool.connect_options().as_ref().clone())
        .await
        .expect("a second process's pool");
    let (one, two) = (Db::direct(app.pool.clone()), Db::direct(other.clone()));

    let (a, b, c, d) = tokio::join!(
        partitions::create_ahead(&one),
        partitions::create_ahead(&two),
        sweep(&app.pool, 0),
        sweep(&other, 0),
    );

    a.expect("one process");
    b.expect("the other");
    assert!(c.dropped.is_empty() && d.dropped.is_empty(), "{c:?} {d:?}");
    // Whoever held the lock made it; a later pass finds nothing to do.
    partitions::create_ahead(&one).await.expect("again");
    for table in ["messages", "message_attempts", "delivery_receipts"] {
        let days: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = $1::regclass
                 AND inhrelid = to_regclass($2)",
        )
        .bind(table)
        .bind(day_partition(table, last))
        .fetch_one(&app.pool)
        .await
        .expect("count");
        assert_eq!(days, 1, "{table} has its last day once");
    }
}

/// `GET /v1/messages/{id}` reads one partition: the plan of its exact statements names one.
#[tokio::test]
async fn a_status_lookup_by_id_reads_one_partition() {
    let app = TestApp::spawn().await;
    let id = queue(&app, "+14155552671").await;
    for statement in smsgate::db::messages::FIND_STATEMENTS {
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) {statement}"
        )))
        .bind(Uuid::parse_str(&id).expect("uuid"))
        .fetch_one(&app.pool)
        .await
        .expect("plan");
        let text = plan.to_string();
        let partitions: Vec<&str> = text
            .split("\"Relation Name\":\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| name.starts_with("message"))
            .filter(|name| *name != "message_queue")
            .collect();
        assert_eq!(partitions.len(), 1, "{statement}: {partitions:?}");
    }
}

/// `smsgate migrate` on a database of the previous schema, with data in it: every row is still
/// there and readable, the message still queued is still sent, and ids stay unique.
#[tokio::test]
async fn an_upgrade_keeps_every_row_readable_and_the_queued_message_sent() {
    let admin = crate::helpers::server_admin().await;
    let name = format!("t_{}", Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create");
    let options = admin.connect_options().as_ref().clone().database(&name);
    let mut conn = PgConnection::connect_with(&options).await.expect("connect");
    smsgate::db::MIGRATOR
        .run_to(13, &mut conn)
        .await
        .expect("the previous schema");
    let old = fill_previous_schema(&mut conn).await;
    conn.close().await.expect("close");

    smsgate::db::migrate(&options).await.expect("migrate");

    let app = TestApp::spawn_on(&crate::helpers::base_config(), Role::Ingress, name, options).await;
    assert!(exists(&app.pool, "messages_legacy").await, "attached whole");
    for id in &old {
        let view = status_of(&app, &id.to_string()).await;
        assert_eq!(view["status"], "delivered", "{view}");
        assert_eq!(view["attempts"].as_array().map(Vec::len), Some(1), "{view}");
    }
    app.dispatch_until_idle().await;
    let queued = status_of(&app, QUEUED).await;
    assert_eq!(queued["status"], "sent", "{queued}");
    let repeat = smsgate::db::receipts::record(
        &Db::direct(app.pool.clone()),
        &smsgate::db::receipts::Report {
            carrier: "console",
            carrier_message_id: "old-1",
            status: smsgate::domain::Status::Delivered,
            error_code: None,
            failure: None,
        },
        Default::default(),
        None,
    )
    .await
    .expect("record");
    assert_eq!(
        repeat,
        smsgate::db::receipts::Applied::Repeated,
        "recorded before the upgrade"
    );
    for _ in 0..5 {
        queue(&app, "+14155552672").await;
    }
    let (all, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM messages")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(
        (all, distinct),
        (old.len() as i64 + 6, old.len() as i64 + 6)
    );
    // Old final rows of the legacy partition are deleted by row, as before the upgrade.
    let swept = sweep(&app.pool, 7).await;
    assert_eq!(swept.deleted, old.len() as u64, "{swept:?}");
    assert_eq!(app.count_rows("messages").await, 6);
}

const QUEUED: &str = "01900000-0000-7000-8000-000000000001";

/// Messages ten days old (delivered, with an attempt, a receipt and a key) and one still queued,
/// written with the previous schema's SQL; the old ids.
async fn fill_previous_schema(conn: &mut PgConnection) -> Vec<Uuid> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (id, recipient, body, status, carrier, carrier_message_id,
                               attempts, created_at, expires_at, sent_at, finished_at)
         SELECT (lpad(to_hex((extract(epoch FROM now() - interval '10 days') * 1000)::bigint
                             + g), 12, '0') || '7000' || '8' || lpad(g::text, 15, '0'))::uuid,
                '+1415555' || lpad(g::text, 4, '0'), '', 'delivered', 'console', 'old-' || g, 1,
                now() - interval '10 days', now() - interval '10 days',
                now() - interval '10 days', now() - interval '10 days'
         FROM generate_series(1, 30) g;
         INSERT INTO message_attempts (message_id, attempt, carrier, outcome, carrier_message_id)
             SELECT id, 1, 'console', 'sent', carrier_message_id FROM messages;
         INSERT INTO delivery_receipts (carrier, carrier_message_id, status, received_at, applied)
             SELECT 'console', carrier_message_id, 'delivered', now() - interval '10 days', true
             FROM messages;
         INSERT INTO idempotency_keys (key, message_id, fingerprint)
             SELECT 'k-' || carrier_message_id, id, 'f' FROM messages;
         INSERT INTO messages (id, recipient, body, expires_at)
             VALUES ('{QUEUED}', '+14155550123', 'Your code is 123456', now() + interval '1 hour');
         INSERT INTO message_queue (message_id, run_at, expires_at)
             VALUES ('{QUEUED}', now(), now() + interval '1 hour');"
    )))
    .execute(&mut *conn)
    .await
    .expect("fill the previous schema");
    sqlx::query_scalar("SELECT id FROM messages WHERE status = 'delivered' ORDER BY id")
        .fetch_all(&mut *conn)
        .await
        .expect("ids")
}

/// Receipts are kept per day and a unique index holds within one day only: a report recorded
/// yesterday, resent today, is still recognised and neither stored nor counted again.
#[tokio::test]
async fn a_report_recorded_on_an_earlier_day_is_not_stored_again() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "INSERT INTO delivery_receipts (carrier, carrier_message_id, status, received_at, applied)
         VALUES ('console', 'SM-yesterday', 'delivered', now() - interval '1 day', true)",
    )
    .execute(&app.pool)
    .await
    .expect("yesterday's report");

    let again = smsgate::db::receipts::record(
        &Db::direct(app.pool.clone()),
        &smsgate::db::receipts::Report {
            carrier: "console",
            carrier_message_id: "SM-yesterday",
            status: smsgate::domain::Status::Delivered,
            error_code: None,
            failure: None,
        },
        Default::default(),
        None,
    )
    .await
    .expect("record");

    assert_eq!(again, smsgate::db::receipts::Applied::Repeated);
    assert_eq!(app.count_rows("delivery_receipts").await, 1);
}

/// Found by the day benchmark: a drop that locked the day before the messages table deadlocked
/// with an ingress batch (which locks the keys table, then messages), so the ingress stalled
/// for the deadlock timeout and one batch failed. Requests arriving while a day is dropped are
/// all accepted.
#[tokio::test]
async fn requests_arriving_while_a_day_is_dropped_are_all_accepted() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    for days_ago in 10..40 {
        let day = database_today(&app.pool).await - Days::new(days_ago);
        partitions::create_day(&db, day).await.expect("create");
        fill_day(&app.pool, day, 20).await;
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let mut answers = vec![];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let token = crate::helpers::token();
            let bodies: Vec<Value> = (0..48)
                .map(|i| crate::helpers::sms(&format!("+1415555{:04}", 2000 + i)))
                .collect();
            let batch = bodies.iter().map(|body| app.post_sms(Some(&token), body));
            for response in futures_util::future::join_all(batch).await {
                answers.push(response.status().as_u16());
            }
        }
        answers
    };
    let drops = async {
        let mut dropped = 0;
        let started = std::time::Instant::now();
        while dropped < 30 && started.elapsed() < Duration::from_secs(30) {
            dropped += sweep(&app.pool, 7).await.dropped.len() / 3;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        dropped
    };
    let (answers, dropped) = tokio::join!(load, drops);

    assert_eq!(dropped, 30, "every old day dropped while requests arrived");
    assert!(!answers.is_empty());
    assert!(answers.iter().all(|&s| s == 200), "{answers:?}");
}
