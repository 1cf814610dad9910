//! Attacks on migration 0015 (the queue without its foreign key to `messages`) and on the
//! retention sweep beside the ingress limits' row locks (src/db/retention.rs).

use std::time::Duration;

use chrono::Days;
use smsgate::db::Db;
use smsgate::db::partitions;
use smsgate::dispatch::retention::{Plan, Swept};
use sqlx::PgPool;
use uuid::Uuid;

use crate::dispatch::queue;
use crate::helpers::{TestApp, base_config, until_a_session_waits_for_a_lock};
use crate::partitions::{database_today, fill_day};

fn plan(days: u32, ingress_log_seconds: u32) -> Plan {
    Plan {
        days,
        send_log_seconds: 600,
        ingress_log_seconds,
        resend: Default::default(),
    }
}

async fn try_sweep(pool: &PgPool, plan: Plan) -> Result<Swept, sqlx::Error> {
    smsgate::dispatch::retention::sweep(&Db::direct(pool.clone()), plan, &Default::default()).await
}

async fn second_pool(app: &TestApp) -> PgPool {
    PgPool::connect_with(app.pool.connect_options().as_ref().clone())
        .await
        .expect("another process's pool")
}

/// Queue rows whose message is gone (orphans: the foreign key no longer prevents them; here made
/// by hand). They must not stop real messages from being sent: the claim removes them.
#[tokio::test]
async fn orphan_queue_rows_do_not_stop_real_messages_from_being_sent() {
    let config = format!("{}\n[dispatch]\nclaim_batch = 2\n", base_config());
    let app = TestApp::spawn_with(&config).await;
    let mut orphans = vec![];
    for n in 0..2 {
        orphans.push(queue(&app, &format!("+1415555010{n}")).await);
    }
    let orphans: Vec<Uuid> = orphans.iter().map(|id| id.parse().expect("uuid")).collect();
    let gone = sqlx::query("DELETE FROM messages WHERE id = ANY($1)")
        .bind(&orphans)
        .execute(&app.pool)
        .await
        .expect("orphan by hand")
        .rows_affected();
    assert_eq!(gone, 2);
    let real = queue(&app, "+14155550199").await;
    let real: Uuid = real.parse().expect("uuid");
    let written = app.dispatch_until_idle().await;
    let status: String = sqlx::query_scalar("SELECT status FROM messages WHERE id = $1")
        .bind(real)
        .fetch_one(&app.pool)
        .await
        .expect("status");
    let left: i64 = app.count_rows("message_queue").await;
    eprintln!("outcomes written {written}, real message {status}, queue rows left {left}");
    assert_eq!(
        status,
        "sent",
        "a real message behind {} orphan queue rows (claim_batch 2) was not sent",
        orphans.len()
    );
    assert_eq!(
        left, 0,
        "the orphans were removed by the claim that found them"
    );
}

/// An orphan queue row in a past day's range (its message removed by hand) keeps the whole day
/// (messages, attempts) from ever being dropped: retention checks the queue, not the message.
#[tokio::test]
async fn an_orphan_queue_row_does_not_pin_its_day_forever() {
    let app = TestApp::spawn().await;
    let db = Db::direct(app.pool.clone());
    let day = database_today(&app.pool).await - Days::new(12);
    assert!(partitions::create_day(&db, day).await.expect("create"));
    let ids = fill_day(&app.pool, day, 3).await;
    // The orphan: a queue row for an id of that day whose message is gone.
    sqlx::query(
        "INSERT INTO message_queue (message_id, run_at, expires_at, created_at)
         VALUES ($1, now() + interval '1 hour', now() - interval '1 hour', now() - interval '12 days')",
    )
    .bind(ids[0])
    .execute(&app.pool)
    .await
    .expect("queue row");
    sqlx::query("DELETE FROM messages WHERE id = $1")
        .bind(ids[0])
        .execute(&app.pool)
        .await
        .expect("orphan");
    let swept = try_sweep(&app.pool, plan(7, 600)).await.expect("sweep");
    let name = partitions::day_partition("messages", day);
    assert!(
        swept.dropped.contains(&name),
        "{name} not dropped because of one orphan queue row: dropped {:?}",
        swept.dropped
    );
}

/// Retention's sweep of `ingress_hits` deletes old rows in the order its plan reads them, not in
/// `lock_all`'s key order. A request that comes back to keys whose rows are past the window (but
/// not yet swept) locks them while the sweep runs; the sweep passes over rows others hold, so
/// the two never wait on each other in a cycle. The request must not fail.
#[tokio::test]
async fn a_request_reusing_old_limit_rows_does_not_deadlock_with_the_retention_sweep() {
    let config = format!(
        "{}\n[[limits.ingress_recipient]]\nmax = 100\nwindow_seconds = 600\n\
         [[limits.ingress_recipient]]\nmax = 50\nwindow_seconds = 600\nmode = \"monitor\"\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 100\nwindow_seconds = 600\n",
        base_config()
    );
    let app = TestApp::spawn_with(&config).await;
    let recipient = "+447700900123";
    queue(&app, recipient).await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT key FROM ingress_hits ORDER BY key")
        .fetch_all(&app.pool)
        .await
        .expect("keys");
    eprintln!("limit keys: {keys:?}");
    assert_eq!(keys.len(), 3, "{keys:?}");
    // The rows past their window (not yet swept), laid out country first, then the number's:
    // a sequential read meets them in the reverse of the lock order.
    sqlx::raw_sql(
        "CREATE TABLE hits_copy AS SELECT * FROM ingress_hits;
         DELETE FROM ingress_hits;
         INSERT INTO ingress_hits SELECT * FROM hits_copy
             ORDER BY (key LIKE '%to:%'), key;
         UPDATE ingress_hits SET updated_at = now() - interval '1 day';
         DROP TABLE hits_copy;",
    )
    .execute(&app.pool)
    .await
    .expect("age the rows");
    let blocked: String = keys
        .iter()
        .find(|k| k.starts_with("to:"))
        .expect("the number's key")
        .clone();
    let other = second_pool(&app).await;
    let third = second_pool(&app).await;
    // Holds the number's plain key: the request locks the monitor key, then waits here.
    let mut blocker = other.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM ingress_hits WHERE key = $1 FOR UPDATE")
        .bind(&blocked)
        .execute(&mut *blocker)
        .await
        .expect("lock");
    let request = {
        let client = app.client.clone();
        let url = app.url("/v1/auth0/sms");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(crate::helpers::token())
                .json(&crate::helpers::sms(recipient))
                .send()
                .await
                .expect("response");
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        })
    };
    until_a_session_waits_for_a_lock(&third).await;
    let sweep = {
        let pool = third.clone();
        tokio::spawn(async move { try_sweep(&pool, plan(7, 600)).await })
    };
    // Both wait now; their first deadlock checks (after 1 s) find no cycle.
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&app.pool)
        .await
        .expect("activity");
        if waiting >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    blocker.commit().await.expect("release");
    let (status, body) = request.await.expect("request task");
    let swept = sweep.await.expect("sweep task");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let deadlocks: i64 = sqlx::query_scalar(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&app.pool)
    .await
    .expect("deadlocks");
    eprintln!("request: {status} {body}; sweep: {swept:?}; deadlocks: {deadlocks}");
    assert!(swept.is_ok(), "the retention sweep failed: {swept:?}");
    assert_eq!(
        status, 200,
        "a request failed against the sweep ({deadlocks} deadlocks detected): {body}"
    );
}
