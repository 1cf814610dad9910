//! Attacks on time partitions and retention (migration 0014, src/db/partitions.rs).

use std::time::{Duration, Instant};

use chrono::Days;
use smsgate::db::Db;
use smsgate::db::partitions::{self, day_partition};
use smsgate::dispatch::retention::{Plan, Swept};
use sqlx::PgPool;
use uuid::Uuid;

use crate::dispatch::{queue, status_of};
use crate::helpers::{TestApp, token};
use crate::partitions::{database_today, fill_day};

fn plan(days: u32) -> Plan {
    Plan {
        days,
        send_log_seconds: 600,
        ingress_log_seconds: 600,
        resend: Default::default(),
    }
}

async fn try_sweep(pool: &PgPool, days: u32) -> Result<Swept, sqlx::Error> {
    smsgate::dispatch::retention::sweep(&Db::direct(pool.clone()), plan(days), &Default::default())
        .await
}

async fn second_pool(app: &TestApp) -> PgPool {
    PgPool::connect_with(app.pool.connect_options().as_ref().clone())
        .await
        .expect("another process's pool")
}

async fn exists(pool: &PgPool, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await
        .expect("to_regclass")
}

/// Two processes run retention at once over many days that are due: neither pass may fail
/// (a failed pass logs "retention sweep failed" and skips its row sweep of the side tables),
/// and every day is dropped once.
#[tokio::test]
async fn two_sweeps_at_once_over_many_due_days_both_succeed() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    let other = second_pool(&app).await;
    let today = database_today(&app.pool).await;
    let mut failures = vec![];
    for round in 0..4u64 {
        for days_ago in 10..30 {
            let day = today - Days::new(days_ago + 20 * round);
            assert!(partitions::create_day(&db, day).await.expect("create"));
            fill_day(&app.pool, day, 3).await;
        }
        let (a, b) = tokio::join!(try_sweep(&app.pool, 7), try_sweep(&other, 7));
        let mut dropped = vec![];
        for result in [a, b] {
            match result {
                Ok(swept) => dropped.extend(swept.dropped),
                Err(err) => failures.push(format!("round {round}: {err}")),
            }
        }
        let mut unique = dropped.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            dropped.len(),
            "a day dropped twice: {dropped:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "concurrent sweeps failed: {failures:#?}"
    );
}

/// A day is created in one transaction that locks `messages`, then `message_attempts`
/// (src/db/partitions.rs create_day_in); an outcome write (db::queue::complete) inserts
/// attempts, then updates messages. Run into each other they deadlock, and the outcome write
/// is the one PostgreSQL aborts.
#[tokio::test]
async fn creating_a_day_while_an_outcome_is_written_aborts_neither() {
    let app = TestApp::spawn().await;
    let id = queue(&app, "+14155552671").await;
    let last = database_today(&app.pool).await + Days::new(partitions::DAYS_AHEAD);
    for table in ["messages", "message_attempts", "delivery_receipts"] {
        let name = day_partition(table, last);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} DETACH PARTITION {name}; DROP TABLE {name};"
        )))
        .execute(&app.pool)
        .await
        .expect("the next day not created yet (as just after a UTC midnight)");
    }
    let other = second_pool(&app).await;
    // The outcome write, statement by statement as db::queue::complete runs them.
    let mut completion = app.pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO message_attempts (message_id, attempt, carrier, outcome)
         VALUES ($1::uuid, 1, 'console', 'sent')",
    )
    .bind(&id)
    .execute(&mut *completion)
    .await
    .expect("attempts first");
    let maintenance =
        tokio::spawn(async move { partitions::create_ahead(&Db::direct(other.clone())).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome =
        sqlx::query("UPDATE messages SET status = 'sent', finished_at = now() WHERE id = $1::uuid")
            .bind(&id)
            .execute(&mut *completion)
            .await;
    let committed = match outcome {
        Ok(_) => completion.commit().await.map(drop),
        Err(err) => Err(err),
    };
    let created = maintenance.await.expect("joined");
    assert!(
        committed.is_ok(),
        "the outcome write was aborted: {committed:?} (maintenance: {created:?})"
    );
    assert!(created.is_ok(), "maintenance failed: {created:?}");
}

/// Creating a day takes ACCESS EXCLUSIVE on `messages` with no lock timeout (unlike a drop):
/// behind any long reader of `messages` (a report, an idle-in-transaction session) it waits,
/// and every ingress insert queues behind it.
#[tokio::test]
async fn creating_a_day_behind_a_long_reader_does_not_stall_the_ingress() {
    let app = TestApp::spawn().await;
    let last = database_today(&app.pool).await + Days::new(partitions::DAYS_AHEAD);
    for table in ["messages", "message_attempts", "delivery_receipts"] {
        let name = day_partition(table, last);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} DETACH PARTITION {name}; DROP TABLE {name};"
        )))
        .execute(&app.pool)
        .await
        .expect("the next day not created yet");
    }
    let reader_pool = second_pool(&app).await;
    let mut report = reader_pool.begin().await.expect("begin");
    let _: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut *report)
        .await
        .expect("a report reading messages, left open");
    let maintenance_pool = second_pool(&app).await;
    let maintenance =
        tokio::spawn(async move { partitions::create_ahead(&Db::direct(maintenance_pool)).await });
    crate::helpers::until_a_session_waits_for_a_lock(&app.pool).await;

    let started = Instant::now();
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        app.post_sms(Some(&token()), &crate::helpers::sms("+14155552671")),
    )
    .await;
    let took = started.elapsed();
    report.rollback().await.expect("the report ends");
    let created = maintenance.await.expect("joined");
    let status = response.map(|r| r.status().as_u16());
    assert!(
        matches!(status, Ok(200)) && took < Duration::from_secs(2),
        "ingress answered {status:?} after {took:?} while a day was being created ({created:?})"
    );
}

/// A drop whose attempts detach gave up (busy) leaves the day's attempts partition behind
/// with its messages' partition gone; a message of that day written afterwards (a gateway
/// clock behind) goes to messages_default while its attempts go to that orphan attempts
/// partition, which the next pass drops with no check at all: a live message loses its
/// attempts.
#[tokio::test]
async fn attempts_of_a_message_stored_after_its_day_was_dropped_are_kept() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    let old_day = database_today(&app.pool).await - Days::new(10);
    assert!(partitions::create_day(&db, old_day).await.expect("create"));
    fill_day(&app.pool, old_day, 5).await;

    // An outcome write in progress holds message_attempts (ROW EXCLUSIVE) during the pass.
    let busy_pool = second_pool(&app).await;
    let mut busy = busy_pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE message_attempts IN ROW EXCLUSIVE MODE")
        .execute(&mut *busy)
        .await
        .expect("lock");
    let swept = try_sweep(&app.pool, 7).await.expect("sweep");
    busy.commit().await.expect("commit");
    let messages_day = day_partition("messages", old_day);
    let attempts_day = day_partition("message_attempts", old_day);
    assert!(swept.dropped.contains(&messages_day), "{swept:?}");
    assert!(
        exists(&app.pool, &attempts_day).await,
        "precondition: the attempts day was left for the next pass: {swept:?}"
    );

    // A gateway with a clock 10 days behind accepts a message now.
    let behind = Uuid::from_u128(partitions::first_id_of(old_day).as_u128() + (7 << 80) + 1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO messages (id, recipient, body, expires_at)
             VALUES ('{behind}', '+14155550123', 'Your code is 123456', now() + interval '1 hour');
         INSERT INTO message_queue (message_id, run_at, expires_at)
             VALUES ('{behind}', now(), now() + interval '1 hour');"
    )))
    .execute(&app.pool)
    .await
    .expect("a message of that day, accepted now");
    app.dispatch_until_idle().await;
    let view = status_of(&app, &behind.to_string()).await;
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(1), "{view}");

    let swept = try_sweep(&app.pool, 7).await.expect("sweep");
    let view = status_of(&app, &behind.to_string()).await;
    assert_eq!(
        view["attempts"].as_array().map(Vec::len),
        Some(1),
        "a message that ended just now lost its attempts: {view} ({swept:?})"
    );
}

/// A large `retention.days` (keep "forever") must not make every pass fail: a failed pass
/// also skips the side tables (keys, limit windows), which then grow without bound.
#[tokio::test]
async fn a_very_large_retention_does_not_fail_the_sweep() {
    let app = TestApp::spawn().await;
    queue(&app, "+14155552671").await;
    app.dispatch_until_idle().await;
    for days in [36_500, 3_000_000, u32::MAX] {
        let swept = try_sweep(&app.pool, days).await;
        assert!(swept.is_ok(), "retention.days = {days}: {swept:?}");
    }
}

/// Three processes' passes, staggered by a few milliseconds, over days due, while a third
/// pool keeps ingesting: no pass fails, no request gets anything but 200.
#[tokio::test]
#[ignore = "known, not fixed yet: drops on three processes at once still stall some ingress batches into 503 (closing note, issue 24)"]
async fn staggered_sweeps_on_three_processes_while_ingesting_never_fail() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    let pools = [
        second_pool(&app).await,
        second_pool(&app).await,
        second_pool(&app).await,
    ];
    let today = database_today(&app.pool).await;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let mut answers = vec![];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let token = token();
            let bodies: Vec<serde_json::Value> = (0..16)
                .map(|i| crate::helpers::sms(&format!("+1415555{:04}", 3000 + i)))
                .collect();
            let batch = bodies.iter().map(|body| app.post_sms(Some(&token), body));
            for response in futures_util::future::join_all(batch).await {
                answers.push(response.status().as_u16());
            }
        }
        answers
    };
    let sweeps = async {
        let mut failures = vec![];
        let mut dropped = vec![];
        for round in 0..12u64 {
            for days_ago in 0..8 {
                let day = today - Days::new(10 + days_ago + 8 * round);
                assert!(partitions::create_day(&db, day).await.expect("create"));
                fill_day(&app.pool, day, 2).await;
            }
            let pools = &pools;
            let stagger = |i: u64| async move {
                tokio::time::sleep(Duration::from_millis(i * (round % 4))).await;
                try_sweep(&pools[i as usize], 7).await
            };
            let (a, b, c) = tokio::join!(stagger(0), stagger(1), stagger(2));
            for result in [a, b, c] {
                match result {
                    Ok(swept) => dropped.extend(swept.dropped),
                    Err(err) => failures.push(format!("round {round}: {err}")),
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (failures, dropped)
    };
    let (answers, (failures, dropped)) = tokio::join!(load, sweeps);
    let mut unique = dropped.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), dropped.len(), "a day dropped twice");
    assert!(failures.is_empty(), "passes failed: {failures:#?}");
    assert!(answers.iter().all(|&s| s == 200), "{answers:?}");
}

/// retention.days = 0: a day of messages with fresh idempotency keys is dropped with its keys;
/// a repeat of such a key, the status of a dropped id and a late receipt for a dropped
/// message must all be answered (200, 404, pending), never 500.
#[tokio::test]
async fn after_a_day_is_dropped_its_keys_ids_and_receipts_are_answered_without_errors() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    let old_day = database_today(&app.pool).await - Days::new(3);
    assert!(partitions::create_day(&db, old_day).await.expect("create"));
    let ids = fill_day(&app.pool, old_day, 3).await;
    let carrier_id: String =
        sqlx::query_scalar("SELECT carrier_message_id FROM messages WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&app.pool)
            .await
            .expect("carrier id");
    let swept = try_sweep(&app.pool, 0).await.expect("sweep");
    assert!(
        swept.dropped.contains(&day_partition("messages", old_day)),
        "{swept:?}"
    );
    let status = app
        .get_message(&ids[0].to_string(), Some(crate::helpers::ADMIN_TOKEN))
        .await
        .status()
        .as_u16();
    assert_eq!(status, 404);
    let repeat = app
        .client
        .post(app.url("/v1/auth0/sms"))
        .bearer_auth(token())
        .header("Idempotency-Key", format!("k-{carrier_id}"))
        .json(&crate::helpers::sms("+14155550001"))
        .send()
        .await
        .expect("sent");
    assert_eq!(repeat.status().as_u16(), 200);
    let late = smsgate::db::receipts::record(
        &db,
        &smsgate::db::receipts::Report {
            carrier: "console",
            carrier_message_id: &carrier_id,
            status: smsgate::domain::Status::Delivered,
            error_code: None,
            failure: None,
        },
        Default::default(),
        None,
    )
    .await
    .expect("a late receipt is recorded");
    assert!(
        matches!(
            late,
            smsgate::db::receipts::Applied::Pending | smsgate::db::receipts::Applied::Repeated
        ),
        "{late:?}"
    );
}

/// Upgrade: a pre-0014 database holding one message whose id came from a gateway clock 40 days
/// ahead (exactly what the default partition is there for). The migration stretches the legacy
/// partition over that id instead, so no day partition exists for 41 days: every new message
/// lands in `messages_legacy` (deleted row by row), and the legacy partition cannot be
/// dropped until then.
#[tokio::test]
#[ignore = "known, not fixed yet: the migration stretches the legacy bound past a far-future id (closing note, issue 24)"]
async fn an_upgrade_with_one_id_from_a_clock_ahead_still_gets_day_partitions() {
    use sqlx::{Connection, PgConnection};
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
    sqlx::raw_sql(
        "INSERT INTO messages (id, recipient, body, status, attempts, expires_at, finished_at)
         VALUES ((lpad(to_hex((extract(epoch FROM now() + interval '40 days') * 1000)::bigint),
                       12, '0') || '70008000000000000001')::uuid,
                 '+14155550123', '', 'sent', 1, now(), now())",
    )
    .execute(&mut conn)
    .await
    .expect("a message from a clock 40 days ahead");
    conn.close().await.expect("close");

    smsgate::db::migrate(&options).await.expect("migrate");

    let app = TestApp::spawn_on(
        &crate::helpers::base_config(),
        smsgate::Role::Ingress,
        name,
        options,
    )
    .await;
    partitions::create_ahead(&Db::direct(app.pool.clone()))
        .await
        .expect("maintenance");
    let id = queue(&app, "+14155552671").await;
    let partition: String =
        sqlx::query_scalar("SELECT tableoid::regclass::text FROM messages WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .expect("stored");
    let today = database_today(&app.pool).await;
    assert_eq!(partition, day_partition("messages", today));
}

/// A gateway clock about four days ahead writes ids of the day maintenance is about to create
/// into the default partition. The "does the default hold rows of that day" check runs while
/// such an insert is in flight (uncommitted, so unseen); the CREATE then waits for it and
/// finds the row: the pass fails (23514), and with it the whole sweep (drops, row sweeps).
#[tokio::test]
async fn creating_a_day_while_the_default_receives_a_row_of_it_does_not_fail() {
    let app = TestApp::spawn().await;
    let last = database_today(&app.pool).await + Days::new(partitions::DAYS_AHEAD);
    for table in ["messages", "message_attempts", "delivery_receipts"] {
        let name = day_partition(table, last);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER TABLE {table} DETACH PARTITION {name}; DROP TABLE {name};"
        )))
        .execute(&app.pool)
        .await
        .expect("the next day not created yet");
    }
    let ahead = Uuid::from_u128(partitions::first_id_of(last).as_u128() + (3_600_000 << 80) + 1);
    let gateway_pool = second_pool(&app).await;
    let mut insert = gateway_pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO messages (id, recipient, body, expires_at)
         VALUES ($1, '+14155550123', 'Your code is 123456', now() + interval '1 hour')",
    )
    .bind(ahead)
    .execute(&mut *insert)
    .await
    .expect("an insert from a clock ahead, in flight");
    let maintenance_pool = second_pool(&app).await;
    let maintenance = tokio::spawn(async move { try_sweep(&maintenance_pool, 7).await });
    crate::helpers::until_a_session_waits_for_a_lock(&app.pool).await;
    insert.commit().await.expect("the insert commits");
    let swept = maintenance.await.expect("joined");
    assert!(swept.is_ok(), "the pass failed: {swept:?}");
}

/// The same report posted many times at once from three processes (the unique index holds
/// within a day only): stored once, applied once.
#[tokio::test]
async fn one_report_recorded_concurrently_by_three_processes_is_stored_once() {
    let app = TestApp::spawn().await;
    let pools = [
        app.pool.clone(),
        second_pool(&app).await,
        second_pool(&app).await,
    ];
    let records = (0..24).map(|i| {
        let db = Db::direct(pools[i % 3].clone());
        async move {
            smsgate::db::receipts::record(
                &db,
                &smsgate::db::receipts::Report {
                    carrier: "console",
                    carrier_message_id: "SM-concurrent",
                    status: smsgate::domain::Status::Delivered,
                    error_code: None,
                    failure: None,
                },
                Default::default(),
                None,
            )
            .await
        }
    });
    let results = futures_util::future::join_all(records).await;
    let new = results
        .iter()
        .filter(|r| matches!(r, Ok(smsgate::db::receipts::Applied::Pending)))
        .count();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(new, 1, "{results:?}");
    assert_eq!(app.count_rows("delivery_receipts").await, 1);
}
