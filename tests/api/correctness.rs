//! Regression tests for the defects an adversarial review found with ordinary configurations:
//! a capped carrier slower than the lease, retention at 0 days under repeated keys, a route
//! whose carriers are all disabled, hostile carrier answers, encoded callback secrets, side
//! tables under load, and the smaller races around them.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use smsgate::Role;

use crate::dispatch::{FAST_DISPATCH, config_with, queue, wait_final, wait_until};
use crate::helpers::{ADMIN_TOKEN, TestApp, assert_error, sms, token};
use crate::process::spawn_binary;
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::standins::twilio::{Reply, TwilioStandIn};
use crate::test_config::TestConfig;

async fn queue_depth(app: &TestApp) -> i64 {
    smsgate::db::queue::depth(&smsgate::db::Db::direct(app.pool.clone()))
        .await
        .unwrap_or(-1)
}

async fn statuses(app: &TestApp) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT status, count(*) FROM messages GROUP BY status ORDER BY status")
        .fetch_all(&app.pool)
        .await
        .expect("statuses")
}

#[tokio::test]
async fn a_capped_carrier_slower_than_the_lease_sends_each_message_once() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::Slow(Duration::from_secs(1)));
    let config = config_with(
        &standin,
        "[dispatch]\nlease_seconds = 6\npoll_interval_ms = 200\n",
    )
    .set("carriers.twilio.max_in_flight", 1);
    let app = TestApp::spawn_role(&config, Role::All).await;

    for i in 0..12 {
        queue(&app, &format!("+1415555{:04}", 2000 + i)).await;
    }
    wait_until(
        "every message to end",
        Duration::from_secs(60),
        async || queue_depth(&app).await == 0,
    )
    .await;

    let accepted = standin.accepted_per_recipient();
    assert_eq!(accepted.len(), 12, "every number got its code");
    let repeated: Vec<_> = accepted.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "sent more than once: {repeated:?}");
    assert_eq!(statuses(&app).await, vec![("sent".to_string(), 12)]);
}

#[tokio::test]
async fn check_config_warns_when_a_capped_carrier_cannot_drain_the_workers_within_a_lease() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = crate::standins::twilio::twilio_toml("twilio", "http://127.0.0.1:9");
    let config = TestConfig::base()
        .only_carrier(&table, "twilio")
        .set("carriers.twilio.max_in_flight", 1)
        .set("dispatch.lease_seconds", 6);
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config.to_string()).expect("config");
    let output = std::process::Command::new(crate::cli::BINARY)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(output.status.success(), "a warning, not an error");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: carriers.twilio:") && stderr.contains("dispatch.lease_seconds"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_repeated_key_whose_message_retention_deleted_is_a_new_message_and_fails_nobody() {
    let config = TestConfig::base().set("retention.days", 0);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let post_keyed = |recipient: String, key: &'static str| {
        app.signed_post()
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(sms(&recipient).to_string())
            .send()
    };
    let first = post_keyed("+14155552671".into(), "key-gone")
        .await
        .expect("sent");
    assert_eq!(first.status().as_u16(), 200);
    let first: Value = first.json().await.expect("JSON");
    wait_final(
        &app,
        first["id"].as_str().expect("id"),
        Duration::from_secs(10),
    )
    .await;
    // Retention removes a message with its day (or by row outside the day partitions,
    // tests/api/partitions.rs); its own day is not over yet, so it goes the row way here.
    sqlx::query("DELETE FROM messages WHERE id = $1::uuid")
        .bind(first["id"].as_str().expect("id"))
        .execute(&app.pool)
        .await
        .expect("retention's delete");
    let keys: i64 = app.count_rows("idempotency_keys").await;
    assert_eq!(keys, 0, "the key went with its message");

    // The repeat and 40 other requests arrive together, so they share ingress batches.
    let mut requests = vec![post_keyed("+14155552671".into(), "key-gone")];
    for i in 0..40 {
        let body = sms(&format!("+1415555{:04}", 3000 + i));
        requests.push(
            app.signed_post()
                .header("content-type", "application/json")
                .body(body.to_string())
                .send(),
        );
    }
    let answers = join_all(requests).await;
    let mut ids = Vec::new();
    for answer in answers {
        let answer = answer.expect("sent");
        crate::helpers::assert_status(&answer, 200, "no request fails for another's key");
        let body: Value = answer.json().await.expect("JSON");
        ids.push(body["id"].as_str().expect("id").to_string());
    }
    assert_ne!(ids[0], first["id"].as_str().expect("id"), "a new message");
    for id in &ids {
        let view = app.get_message(id, Some(ADMIN_TOKEN)).await;
        crate::helpers::assert_status(&view, 200, "every 200 names a stored message");
    }
}

#[tokio::test]
async fn messages_whose_carriers_are_all_disabled_wait_quietly_and_go_out_once_enabled() {
    let standin = TwilioStandIn::start().await;
    let app = TestApp::spawn_role(&config_with(&standin, FAST_DISPATCH), Role::All).await;
    sqlx::raw_sql(
        "CREATE TABLE queue_writes (at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE FUNCTION count_queue_write() RETURNS trigger LANGUAGE plpgsql AS
             'BEGIN INSERT INTO queue_writes DEFAULT VALUES; RETURN NULL; END';
         CREATE TRIGGER queue_writes AFTER UPDATE ON message_queue
             FOR EACH ROW EXECUTE FUNCTION count_queue_write();",
    )
    .execute(&app.pool)
    .await
    .expect("write counter");
    let off = app
        .client
        .post(app.url("/v1/carriers/twilio/disable"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(off.status().as_u16(), 200);
    crate::helpers::until_metric(&app, "smsgate_carrier_disabled{carrier=\"twilio\"}", 1.0).await;

    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(queue(&app, &format!("+1415555{:04}", 4000 + i)).await);
    }
    let watched = Duration::from_secs(8);
    tokio::time::sleep(watched).await;
    let writes: i64 = app.count_rows("queue_writes").await;
    // At most one write per message per 2 s, plus each message's first claim.
    let bound = 20 * (watched.as_secs() as i64 / 2) + 20;
    assert!(
        writes <= bound,
        "{writes} queue writes in {watched:?}, bound {bound}"
    );
    assert!(standin.seen().is_empty(), "nothing sent while disabled");
    let attempts: i32 = sqlx::query_scalar("SELECT coalesce(max(attempts), 0) FROM message_queue")
        .fetch_one(&app.pool)
        .await
        .expect("attempts");
    assert_eq!(attempts, 0, "waiting is not an attempt");
    // What pages the on-call: the messages are held for want of a usable carrier.
    let held = crate::observability::labelled(
        &app.metrics().await,
        "smsgate_dispatch_held_total",
        "reason",
        "no_usable_carrier",
    );
    assert!(held.is_some_and(|n| n >= 20.0), "held {held:?}");

    let enabled_at = Instant::now();
    let on = app
        .client
        .post(app.url("/v1/carriers/twilio/enable"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(on.status().as_u16(), 200);
    wait_until(
        "every message to go out",
        Duration::from_secs(10),
        async || queue_depth(&app).await == 0,
    )
    .await;
    assert!(
        enabled_at.elapsed() < Duration::from_secs(8),
        "within a few seconds"
    );
    assert_eq!(standin.accepted_per_recipient().len(), 20);
}

#[tokio::test]
async fn a_carrier_id_postgres_cannot_store_costs_no_other_outcome_of_its_batch() {
    let standin = TwilioStandIn::start().await;
    // A JSON string may carry U+0000; a PostgreSQL text column may not.
    standin.set_default(Reply::Raw(
        201,
        r#"{"sid": "SM\u0000abc", "status": "queued", "error_code": null}"#,
    ));
    let app = TestApp::spawn_role(&config_with(&standin, FAST_DISPATCH), Role::All).await;

    for i in 0..25 {
        queue(&app, &format!("+1415555{:04}", 5000 + i)).await;
    }
    wait_until(
        "every outcome to be written",
        Duration::from_secs(20),
        async || queue_depth(&app).await == 0,
    )
    .await;

    assert_eq!(statuses(&app).await, vec![("sent".to_string(), 25)]);
    let ids: Vec<Option<String>> =
        sqlx::query_scalar("SELECT DISTINCT carrier_message_id FROM messages")
            .fetch_all(&app.pool)
            .await
            .expect("ids");
    assert_eq!(ids, vec![Some("SMabc".to_string())], "cleaned, not dropped");
    assert_eq!(standin.seen().len(), 25, "each sent once");
}

#[tokio::test]
async fn an_absurd_retry_after_ends_the_message_instead_of_panicking_the_send() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::Error {
        status: 429,
        code: "20429",
        retry_after: Some(u64::MAX),
    });
    let app = TestApp::spawn_role(&config_with(&standin, FAST_DISPATCH), Role::All).await;

    let view = crate::dispatch::send_one(&app, "+14155552671").await;

    assert_eq!(view["status"], "expired", "{view}");
    assert_eq!(
        standin.seen().len(),
        1,
        "asked once, not again after a lost outcome"
    );
}

#[tokio::test]
async fn a_messagemedia_report_posted_to_the_exact_callback_url_is_accepted_whatever_the_secret() {
    let standin = MessageMediaStandIn::start().await;
    let secret = "a+b/c=d&e%f 0123456789+/==";
    let config = TestConfig::base()
        .only_carrier(&standin.carrier_toml("mm"), "mm")
        .set("carriers.mm.public_url", "https://sms.example.com")
        .set("carriers.mm.callback_secret", secret)
        .merge(FAST_DISPATCH);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let id = queue(&app, "+61491570156").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    let callback_url = standin.seen()[0]
        .fields
        .get("callback_url")
        .cloned()
        .expect("a callback URL");
    let path_and_query = callback_url
        .strip_prefix("https://sms.example.com")
        .expect("under public_url");
    let report = json!({
        "message_id": view["attempts"][0]["carrier_message_id"],
        "status": "delivered",
    });

    let answer = app
        .client
        .post(app.url(path_and_query))
        .header("content-type", "application/json")
        .body(report.to_string())
        .send()
        .await
        .expect("sent");

    crate::helpers::assert_status(&answer, 204, &callback_url.to_string());
    let view = crate::dispatch::status_of(&app, &id).await;
    assert_eq!(view["status"], "delivered");
}

#[tokio::test]
async fn every_side_table_is_swept_to_its_retention_whatever_the_message_count() {
    let app = TestApp::spawn().await;
    sqlx::raw_sql(
        "CREATE TEMP TABLE ids AS SELECT gen_random_uuid() AS id, g FROM generate_series(1, 2500) g;
         INSERT INTO messages (id, recipient, body, expires_at) SELECT id, '+14155550000', 'x', now() FROM ids;
         INSERT INTO idempotency_keys (key, message_id, created_at)
             SELECT 'k' || g, id, now() - interval '2 hours' FROM ids;
         INSERT INTO ingress_hits (key, updated_at)
             SELECT 'to:+1' || g, now() - interval '2 hours' FROM generate_series(1, 2500) g;",
    )
    .execute(&app.pool)
    .await
    .expect("old rows");
    let plan = smsgate::dispatch::retention::Plan {
        days: 7,
        send_log_seconds: 60,
        ingress_log_seconds: 60,
        resend: Default::default(),
    };

    smsgate::dispatch::retention::sweep(
        &smsgate::db::Db::direct(app.pool.clone()),
        plan,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect("sweep");

    let left: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM idempotency_keys), (SELECT count(*) FROM ingress_hits)",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(left, (0, 0), "one sweep empties every side table");
}

#[tokio::test]
async fn refused_ingress_requests_leave_no_rows_behind() {
    let config = TestConfig::with_limits(&[("ip", 1, 60), ("ingress_recipient", 5, 60)]);
    let app = TestApp::spawn_with(&config).await;

    assert_eq!(
        app.post_sms(Some(&token()), &sms("+14155552671"))
            .await
            .status()
            .as_u16(),
        200
    );
    for i in 0..20 {
        let refused = app
            .post_sms(Some(&token()), &sms(&format!("+1415555{:04}", 6000 + i)))
            .await;
        assert_error(refused, 429, "too_many_requests").await;
    }

    let rows: i64 = app.count_rows("ingress_hits").await;
    assert_eq!(rows, 2, "the IP's and the one accepted number's logs only");
}

#[tokio::test]
async fn cancel_waits_for_a_claim_in_progress_and_then_refuses_the_leased_message() {
    let app = TestApp::spawn().await;
    let id = queue(&app, "+14155552671").await;
    let uuid: uuid::Uuid = id.parse().expect("uuid");
    // A claim in progress: the queue row locked and leased, not committed yet.
    let mut claim = app.pool.begin().await.expect("begin");
    sqlx::query(
        "UPDATE message_queue SET lease_token = 7, run_at = now() + interval '30 seconds'
         WHERE message_id = $1",
    )
    .bind(uuid)
    .execute(&mut *claim)
    .await
    .expect("lease");

    let pool = app.pool.clone();
    let cancel = tokio::spawn(async move {
        smsgate::db::operator::cancel(
            &smsgate::db::Db::direct(pool.clone()),
            smsgate::domain::MessageId(uuid),
        )
        .await
    });
    crate::helpers::until_a_session_waits_for_a_lock(&app.pool).await;
    assert!(!cancel.is_finished(), "cancel waits for the claim");
    claim.commit().await.expect("commit");
    let verdict = cancel.await.expect("join").expect("query");

    assert_eq!(verdict, Err(smsgate::db::operator::ActionError::Leased));
    let status: String = sqlx::query_scalar("SELECT status FROM messages WHERE id = $1")
        .bind(uuid)
        .fetch_one(&app.pool)
        .await
        .expect("status");
    assert_eq!(
        status, "queued",
        "not recorded as canceled while a worker sends it"
    );
}

#[tokio::test]
async fn a_token_whose_issuer_is_not_a_string_is_refused() {
    let app = TestApp::spawn().await;
    for iss in [
        json!(123),
        json!({"name": "Auth0"}),
        json!(["Auth0"]),
        json!(true),
    ] {
        let mut claims = crate::helpers::auth0_claims();
        claims["iss"] = iss.clone();
        let forged = crate::helpers::sign_with(
            &claims,
            crate::helpers::SECRET.as_bytes(),
            jsonwebtoken::Algorithm::HS256,
        );
        let answer = app.post_sms(Some(&forged), &sms("+14155552671")).await;
        assert_error(answer, 401, "invalid_token").await;
    }
    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn callback_routes_look_up_the_carrier_before_reading_and_cap_the_body() {
    let standin = TwilioStandIn::start().await;
    let config =
        config_with(&standin, "").set("carriers.twilio.public_url", "https://sms.example.com");
    let app = TestApp::spawn_with(&config).await;
    let big = vec![b'a'; 3 * 1024 * 1024];

    let unknown = app
        .client
        .post(app.url("/v1/callbacks/twilio/nobody"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(big.clone())
        .send()
        .await
        .expect("sent");
    crate::helpers::assert_status(&unknown, 404, "refused before the body is read");

    let known = app
        .client
        .post(app.url("/v1/callbacks/twilio/twilio"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 64 * 1024])
        .send()
        .await
        .expect("sent");
    assert_error(known, 413, "payload_too_large").await;
}

#[tokio::test]
async fn readiness_is_cached_for_about_a_second() {
    let app = TestApp::spawn().await;
    let ready = || app.client.get(app.url("/readyz")).send();
    assert_eq!(ready().await.expect("sent").status().as_u16(), 200);
    sqlx::raw_sql("DROP TABLE _sqlx_migrations")
        .execute(&app.pool)
        .await
        .expect("unmigrate");

    assert_eq!(
        ready().await.expect("sent").status().as_u16(),
        200,
        "cached"
    );
    wait_until("the cache to expire", Duration::from_secs(3), async || {
        ready().await.is_ok_and(|r| r.status().as_u16() == 503)
    })
    .await;
}

#[tokio::test]
async fn sigterm_stops_sends_waiting_for_a_carrier_slot_and_hands_them_back() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::Slow(Duration::from_secs(2)));
    let config = config_with(
        &standin,
        "[dispatch]\nworkers = 4\nlease_seconds = 30\npoll_interval_ms = 200\n",
    )
    .set("carriers.twilio.max_in_flight", 1);
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    for i in 0..3 {
        queue(&db, &format!("+1415555{:04}", 7000 + i)).await;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, _) = spawn_binary(&db, &config, dir.path());
    wait_until("the first send", Duration::from_secs(20), async || {
        standin.in_flight() == 1
    })
    .await;

    let stopping = Instant::now();
    let status = crate::cli::terminate(child).await;

    assert!(status.success());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "no new send started after SIGTERM: {:?}",
        stopping.elapsed()
    );
    assert_eq!(standin.seen().len(), 1, "only the send in flight");
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_queue WHERE lease_token IS NULL")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(waiting, 2, "the others handed back, not leased");
}

#[tokio::test]
async fn the_expiry_clock_starts_before_the_claim_so_a_slow_claim_cannot_stretch_a_codes_life() {
    let standin = TwilioStandIn::start().await;
    let extra = "[dispatch]\nmessage_ttl_seconds = 2\nlease_seconds = 10\npoll_interval_ms = 100\n";
    let app = TestApp::spawn_role(&config_with(&standin, extra), Role::Ingress).await;
    // Every claim takes longer than the code lives: the remaining life it reads is stale by
    // the time it returns.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS
             'BEGIN PERFORM pg_sleep(2.5); RETURN NEW; END';
         CREATE TRIGGER slow_claim BEFORE UPDATE ON message_queue FOR EACH ROW
             WHEN (NEW.lease_token IS NOT NULL AND OLD.lease_token IS DISTINCT FROM NEW.lease_token)
             EXECUTE FUNCTION slow_claim();",
    )
    .execute(&app.pool)
    .await
    .expect("slow claims");
    let id = queue(&app, "+14155552671").await;
    let worker = app
        .spawn_sibling(&config_with(&standin, extra), Role::Worker)
        .await;

    let view = wait_final(&worker, &id, Duration::from_secs(15)).await;

    assert_eq!(view["status"], "expired", "{view}");
    assert!(standin.seen().is_empty(), "no carrier called after expiry");
}

fn keyed(key: &str) -> smsgate::domain::NewMessage {
    smsgate::domain::NewMessage {
        id: smsgate::domain::MessageId::new(),
        recipient: smsgate::domain::PhoneNumber::parse("+14155552671").expect("number"),
        body: smsgate::domain::MessageBody::parse("Your code is 123456".into()).expect("body"),
        sender: None,
        request: smsgate::domain::RequestInfo::default(),
        signer: None,
        idempotency_key: Some(key.to_string()),
        fingerprint: None,
        guard: Default::default(),
        channel: Default::default(),
        locale: None,
        trace: None,
    }
}

#[tokio::test]
async fn two_batches_holding_the_same_keys_in_opposite_orders_do_not_deadlock() {
    let app = TestApp::spawn().await;
    // Each key insert takes a while, so both batches are mid-statement at once: without a
    // common lock order, each would wait for the key the other holds.
    sqlx::raw_sql(
        "CREATE FUNCTION slow_key() RETURNS trigger LANGUAGE plpgsql AS
             'BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END';
         CREATE TRIGGER slow_key BEFORE INSERT ON idempotency_keys FOR EACH ROW
             EXECUTE FUNCTION slow_key();",
    )
    .execute(&app.pool)
    .await
    .expect("slow keys");
    let (a1, a2, b1, b2) = (keyed("k1"), keyed("k2"), keyed("k1"), keyed("k2"));
    let enqueue = |batch: Vec<smsgate::domain::NewMessage>| {
        let pool = app.pool.clone();
        async move {
            let db = smsgate::db::Db::direct(pool);
            let mut conn = db.for_one_statement().await.expect("connection");
            let batch: Vec<&smsgate::domain::NewMessage> = batch.iter().collect();
            let stored = smsgate::db::messages::enqueue_batch(&mut conn, &batch, 300).await;
            conn.commit().await.expect("nothing to commit");
            stored
        }
    };

    let (first, second) = tokio::join!(enqueue(vec![a2, a1]), enqueue(vec![b1, b2]));

    let first = first.expect("no deadlock");
    let second = second.expect("no deadlock");
    assert!(first.iter().chain(&second).all(Result::is_ok));
    assert_eq!(
        app.stored_rows().await,
        4,
        "two messages and their queue rows"
    );
}

#[tokio::test]
async fn concurrent_admissions_to_one_number_allow_exactly_its_limit() {
    let app = TestApp::spawn().await;
    let windows = vec![smsgate::config::WindowLimit::new(1, 4)];
    let admissions = (0..10).map(|_| {
        let (pool, windows) = (app.pool.clone(), windows.clone());
        async move {
            smsgate::db::recipient_sends::admit(
                &smsgate::db::Db::direct(pool.clone()),
                &["+14155552671"],
                &windows,
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("admit")
        }
    });
    let allowed = join_all(admissions)
        .await
        .into_iter()
        .filter(|(a, _)| a == &[smsgate::limits::window::Admission::Allowed])
        .count();
    assert_eq!(allowed, 1);
}

#[tokio::test]
async fn retention_never_deletes_a_send_log_a_limit_is_updating_meanwhile() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "INSERT INTO recipient_sends (recipient, sends, updated_at)
         VALUES ('+14155552671', '{1}', now() - interval '1 hour')",
    )
    .execute(&app.pool)
    .await
    .expect("an old log");
    // A send is being admitted: the row is locked and about to be fresh.
    let mut admitting = app.pool.begin().await.expect("begin");
    sqlx::query(
        "UPDATE recipient_sends
         SET sends = ARRAY[(extract(epoch FROM clock_timestamp()) * 1000)::bigint],
             updated_at = clock_timestamp()
         WHERE recipient = '+14155552671'",
    )
    .execute(&mut *admitting)
    .await
    .expect("admit");
    let pool = app.pool.clone();
    let sweep = tokio::spawn(async move {
        let plan = smsgate::dispatch::retention::Plan {
            days: 7,
            send_log_seconds: 60,
            ingress_log_seconds: 60,
            resend: Default::default(),
        };
        smsgate::dispatch::retention::sweep(
            &smsgate::db::Db::direct(pool.clone()),
            plan,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
    });
    // The sweep passes over a row a limit holds rather than wait for it: waiting in its own
    // order could close a lock cycle with the limits' (a deadlock).
    tokio::time::timeout(std::time::Duration::from_secs(10), sweep)
        .await
        .expect("the sweep finishes without waiting for the held row")
        .expect("join")
        .expect("sweep");
    admitting.commit().await.expect("commit");

    let kept: i64 = app.count_rows("recipient_sends").await;
    assert_eq!(kept, 1, "the fresh send log survives the sweep");
}

#[tokio::test]
async fn a_send_whose_limit_check_outlasts_the_lease_is_handed_back_not_sent_twice() {
    // Found by an attack: sends to one number queue on its send log's lock; one that got the
    // lock after its lease ran out was sent while a second worker, holding the new lease,
    // sent it too.
    let standin = TwilioStandIn::start().await;
    let extra = "[dispatch]\nclaimers = 2\nlease_seconds = 2\npoll_interval_ms = 100\n\
                 [[limits.recipient]]\nmax = 100\nwindow_seconds = 60\n";
    let config = config_with(&standin, extra)
        .set("carriers.twilio.timeout_ms", 700)
        .set("carriers.twilio.connect_timeout_ms", 500);
    let app = TestApp::spawn_role(&config, Role::Ingress).await;
    // The first check of the number's limits takes longer than the lease (a sequence, so a
    // check that is given up still counts as the slow one).
    sqlx::raw_sql(
        "CREATE SEQUENCE slow_once;
         CREATE FUNCTION slow_log() RETURNS trigger LANGUAGE plpgsql AS
             'BEGIN IF nextval(''slow_once'') = 1 THEN PERFORM pg_sleep(2.5); END IF;
                    RETURN NEW; END';
         CREATE TRIGGER slow_log BEFORE UPDATE ON recipient_sends FOR EACH ROW
             EXECUTE FUNCTION slow_log();",
    )
    .execute(&app.pool)
    .await
    .expect("slow log");
    sqlx::query("INSERT INTO recipient_sends (recipient) VALUES ('+14155552671')")
        .execute(&app.pool)
        .await
        .expect("log row");
    let id = queue(&app, "+14155552671").await;
    let worker = app.spawn_sibling(&config, Role::Worker).await;

    let view = wait_final(&worker, &id, Duration::from_secs(20)).await;

    assert_eq!(view["status"], "sent", "{view}");
    // Whatever was still in flight has had time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(standin.received().len(), 1, "sent once");
}

#[tokio::test]
async fn a_failover_carrier_with_no_turn_costs_no_attempt() {
    // Found by an attack: the first carrier fails, the capped second one has no slot within
    // the lease; that attempt counted, so messages failed without the healthy carrier being
    // asked.
    let failing = TwilioStandIn::start().await;
    failing.set_default(Reply::error(500, "20500"));
    let capped = TwilioStandIn::start().await;
    capped.set_default(Reply::Slow(Duration::from_millis(1500)));
    let tables = failing.carrier_toml("first") + &capped.carrier_toml("second");
    let config = TestConfig::base()
        .only_carriers(&tables, &["first", "second"])
        .set("carriers.first.timeout_ms", 500)
        .set("carriers.first.connect_timeout_ms", 200)
        .set("carriers.second.timeout_ms", 2500)
        .set("carriers.second.max_in_flight", 1)
        .merge(
            "[dispatch]\nlease_seconds = 5\nmax_attempts = 1\nretry_base_ms = 100\n\
             retry_max_ms = 200\npoll_interval_ms = 100\n",
        );
    let app = TestApp::spawn_role(&config, Role::All).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(queue(&app, &format!("+1415555{:04}", 9000 + i)).await);
    }
    for id in &ids {
        let view = wait_final(&app, id, Duration::from_secs(30)).await;
        assert_eq!(view["status"], "sent", "{view}");
    }
    assert_eq!(capped.accepted_per_recipient().len(), 3);
}

/// The admission waits for the number's row at most as long as it is told, by the database's
/// own lock timeout (set in the BEGIN message): then it fails and logs nothing.
#[tokio::test]
async fn an_admission_gives_up_on_a_locked_number_after_its_lock_wait() {
    let app = TestApp::spawn().await;
    let db = smsgate::db::Db::direct(app.pool.clone());
    let windows = vec![smsgate::config::WindowLimit::new(5, 600)];
    let first = smsgate::db::recipient_sends::admit(
        &db,
        &["+14155552671"],
        &windows,
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("first admission");
    assert_eq!(first.0, [smsgate::limits::window::Admission::Allowed]);
    let mut holder = app.pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM recipient_sends WHERE recipient = '+14155552671' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .expect("hold the row");

    let blocked = smsgate::db::recipient_sends::admit(
        &db,
        &["+14155552671"],
        &windows,
        std::time::Duration::from_millis(200),
    )
    .await;

    match blocked {
        Err(sqlx::Error::Database(err)) => assert_eq!(err.code().as_deref(), Some("55P03")),
        other => panic!("expected lock_not_available, got {other:?}"),
    }
    holder.rollback().await.expect("rollback");
    // One bucket per window, holding one send.
    let logged: Vec<i64> = sqlx::query_scalar("SELECT counts FROM recipient_sends")
        .fetch_one(&app.pool)
        .await
        .expect("counts");
    assert_eq!(logged.len(), 3);
    assert_eq!(logged[2], 1, "the refused admission counted nothing");
}
