//! Attacks on the bucketed window limits of issue 24 (`src/limits/window.rs`,
//! `src/db/ingress_hits.rs`, `src/db/recipient_sends.rs`): the real app, several processes on
//! one database, trying to get a request counted zero times, a cap crossed, a limit that
//! stalls other numbers, or a panic from what the database holds.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use smsgate::Role;

use crate::dispatch::{FAST_DISPATCH, config_with, queue, status_of, wait_final};
use crate::helpers::{TestApp, events_counted};
use crate::standins::twilio::TwilioStandIn;
use crate::test_config::TestConfig;

fn body(recipient: &str, ip: &str, text: &str) -> Value {
    json!({"recipient": recipient, "body": text, "req": {"ip": ip}})
}

/// POSTs `body` (under `key` if given) to `app`; the status.
async fn post(app: &TestApp, key: Option<&str>, body: &Value) -> u16 {
    let mut request = app.signed_post().json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("sent").status().as_u16()
}

async fn scalar(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.pool)
        .await
        .expect("query")
}

/// A bucket triple an operator (or a bad restore) left in a row: a bucket start near the end
/// of time. `from_stored` keeps it (window and count above zero); the first decision on the
/// key adds to it.
const FAR_BUCKET: &str = "ARRAY[3600000, 9223372036854775000, 1]::bigint[]";

/// Malformed `counts` must never panic the gateway. One row with a bucket start near
/// `i64::MAX` makes `Bucket::inside` overflow (`start_ms + width`), which panics in a build
/// with overflow checks (this test binary, `cargo build`'s debug binary) and kills the ingress
/// writer task deciding it; after `ingress_writers` (2) such requests no writer is left and
/// every request, to any number, fails.
#[tokio::test]
async fn attack_malformed_counts_never_stop_the_ingress() {
    let config = TestConfig::with("[[limits.ingress_recipient]]\nmax = 5\nwindow_seconds = 3600\n");
    let app = TestApp::spawn_with(&config).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO ingress_hits (key, counts) VALUES ('to:+14155550001', {FAR_BUCKET})"
    )))
    .execute(&app.pool)
    .await
    .expect("operator edit");

    let mut poisoned = Vec::new();
    for _ in 0..2 {
        poisoned.push(post(&app, None, &body("+14155550001", "192.0.2.1", "code 1")).await);
    }
    let clean = post(&app, None, &body("+14155550999", "192.0.2.2", "code 2")).await;
    assert_eq!(
        clean, 200,
        "a request to a clean number failed after two requests to a number with a malformed \
         row (answered {poisoned:?}): the ingress writers are gone"
    );
}

/// The same at dispatch: a malformed `recipient_sends` row must not take the admitters down
/// (two tasks per process, `dispatch/admissions.rs`), or every send to every number stalls.
#[tokio::test]
async fn attack_malformed_counts_never_stop_dispatch() {
    let standin = TwilioStandIn::start().await;
    let config = config_with(
        &standin,
        &format!("{FAST_DISPATCH}[[limits.recipient]]\nmax = 3\nwindow_seconds = 3600\n"),
    );
    let app = TestApp::spawn_role(&config, Role::All).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO recipient_sends (recipient, counts) VALUES ('+14155550002', {FAR_BUCKET})"
    )))
    .execute(&app.pool)
    .await
    .expect("operator edit");

    let _poisoned = queue(&app, "+14155550002").await;
    // Its retries (BUSY_PAUSE, 2 s) meet the second admitter.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A new connection: the app's idle keep-alive may have closed the first one.
    let response = crate::helpers::sms_request(
        &crate::helpers::http_client(10),
        app.address,
        crate::helpers::token(),
        "+14155550998",
    )
    .send()
    .await
    .expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let clean: Value = response.json().await.expect("JSON");
    let clean = clean["id"].as_str().expect("id").to_string();
    let mut view = status_of(&app, &clean).await;
    let start = std::time::Instant::now();
    while view["status"] != "sent" && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        view = status_of(&app, &clean).await;
    }
    assert_eq!(
        view["status"], "sent",
        "a clean number's send, 15 s after a number with a malformed row was tried: {view}"
    );
}

/// Legacy event logs with absurd values (an operator's edit of `hits`) must not panic either:
/// `bucket_start` multiplies `div_euclid`'s quotient back, which overflows near `i64::MIN`.
#[tokio::test]
async fn attack_malformed_legacy_hits_never_stop_the_ingress() {
    let config = TestConfig::with("[[limits.ingress_recipient]]\nmax = 5\nwindow_seconds = 3600\n");
    let app = TestApp::spawn_with(&config).await;
    sqlx::query(
        "INSERT INTO ingress_hits (key, hits) VALUES ('to:+14155550003', ARRAY[-9223372036854775808]::bigint[])",
    )
    .execute(&app.pool)
    .await
    .expect("operator edit");
    let mut poisoned = Vec::new();
    for _ in 0..2 {
        poisoned.push(post(&app, None, &body("+14155550003", "192.0.2.1", "code 1")).await);
    }
    let clean = post(&app, None, &body("+14155550997", "192.0.2.2", "code 2")).await;
    assert_eq!(clean, 200, "after {poisoned:?}");
}

/// Three ingress processes, keyed and unkeyed requests at once: repeats, keys reused for
/// other messages, a few numbers and client addresses, a country cap, a monitoring rule and
/// a spend ceiling that all refuse different requests. What was stored never passes a cap,
/// and every stored message is counted (no under-count) in its number's, address's and
/// country's rows and in the day's spend.
#[tokio::test]
async fn attack_caps_hold_across_three_processes_with_mixed_keyed_and_unkeyed_requests() {
    let config = TestConfig::with(
        "[[limits.ip]]\nmax = 9\nwindow_seconds = 3600\n\
         [[limits.ip]]\nmax = 2\nwindow_seconds = 3600\nmode = \"monitor\"\n\
         [[limits.ingress_recipient]]\nmax = 12\nwindow_seconds = 3600\n\
         [[limits.ingress_recipient]]\nmax = 8\nwindow_seconds = 60\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 15\nwindow_seconds = 3600\n\
         [spend]\ncurrency = \"USD\"\ndaily_limit = 0.30\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n",
    );
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;
    let third = first.spawn_sibling(&config, Role::Ingress).await;
    let apps = [&first, &second, &third];

    let numbers = [
        "+447400100001",
        "+447400100002",
        "+447400100003",
        "+14155550101",
        "+14155550102",
        "+14155550103",
    ];
    let ips = [
        "192.0.2.1",
        "192.0.2.2",
        "192.0.2.3",
        "192.0.2.4",
        "192.0.2.5",
    ];
    assert!(
        ips.len() * 9 > 30 && 6 * 8 > 30,
        "the spend ceiling (30 messages) binds too"
    );
    let mut requests = Vec::new();
    for i in 0..180usize {
        let app = apps[i % 3];
        let number = numbers[(i * 7 + i / 5) % numbers.len()];
        let ip = ips[(i * 3 + i / 7) % ips.len()];
        // A third unkeyed; the rest keyed, keys shared by groups of three: the same request
        // repeated (same text) or the key reused for another number's message.
        let (key, text) = match i % 3 {
            0 => (None, format!("code {i}")),
            1 => (Some(format!("k{}", i / 6)), format!("code {}", i / 6)),
            _ => (Some(format!("k{}", i / 6)), format!("code {}", i / 6)),
        };
        let number = if i % 9 == 8 {
            numbers[(i / 9) % numbers.len()]
        } else {
            number
        };
        requests.push(async move {
            let status = post(app, key.as_deref(), &body(number, ip, &text)).await;
            (i, status)
        });
    }
    let outcomes = futures_util::future::join_all(requests).await;
    let statuses: HashMap<u16, usize> = outcomes.iter().fold(HashMap::new(), |mut m, (_, s)| {
        *m.entry(*s).or_default() += 1;
        m
    });
    assert!(
        statuses.keys().all(|s| [200, 422, 429].contains(s)),
        "unexpected answers: {statuses:?}"
    );

    let per: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT recipient, host(client_ip), country, count(*) FROM messages
         GROUP BY 1, 2, 3",
    )
    .fetch_all(&first.pool)
    .await
    .expect("stored");
    let mut by_number: HashMap<String, i64> = HashMap::new();
    let mut by_ip: HashMap<String, i64> = HashMap::new();
    let mut gb = 0;
    for (number, ip, country, n) in &per {
        *by_number.entry(number.clone()).or_default() += n;
        *by_ip.entry(ip.clone()).or_default() += n;
        if country.as_deref() == Some("GB") {
            gb += n;
        }
    }
    let stored: i64 = by_number.values().sum();
    eprintln!("answers {statuses:?}; stored {stored}: {by_number:?} {by_ip:?} GB {gb}");
    assert!(stored > 0, "{statuses:?}");
    for (number, n) in &by_number {
        assert!(*n <= 8, "{n} stored to {number} (cap 8 a minute)");
        let counted =
            events_counted(&first.pool, "ingress_hits", &format!("key = 'to:{number}'")).await;
        assert_eq!(counted, *n, "{number}: {n} stored, {counted} counted");
    }
    for (ip, n) in &by_ip {
        assert!(*n <= 9, "{n} stored from {ip} (cap 9)");
        let counted =
            events_counted(&first.pool, "ingress_hits", &format!("key = 'ip:{ip}'")).await;
        assert_eq!(counted, *n, "{ip}: {n} stored, {counted} counted");
    }
    // Refused requests count nowhere: no fresh row of a refused request survives.
    let all_numbers = events_counted(&first.pool, "ingress_hits", "key LIKE 'to:%'").await;
    assert_eq!(
        all_numbers, stored,
        "numbers' rows count only stored messages"
    );
    let all_ips = events_counted(&first.pool, "ingress_hits", "key LIKE 'ip:%'").await;
    assert_eq!(
        all_ips, stored,
        "addresses' rows count only stored messages"
    );
    assert!(gb <= 15, "{gb} stored to GB (cap 15)");
    let gb_counted = events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%'").await;
    assert_eq!(gb_counted, gb, "GB counted");
    let spent = scalar(
        &first,
        "SELECT coalesce(sum(spent_micros), 0)::bigint FROM spend_days WHERE scope = '*'",
    )
    .await;
    assert!(spent <= 300_000, "spent {spent} past the 0.30 ceiling");
    let estimated = scalar(
        &first,
        "SELECT coalesce(sum(estimated_cost_micros), 0)::bigint FROM messages",
    )
    .await;
    assert_eq!(spent, estimated, "the day's total is what was stored");
}

/// A number's row held locked (a slow transaction, an operator's `SELECT … FOR UPDATE`) must
/// not keep other numbers' sends from being made: every waiting send is admitted in one
/// transaction that waits for all its rows, so sends claimed together with one to the locked
/// number fail with it (TurnOver, released for BUSY_PAUSE), come due together, are batched
/// together again, and fail again, until their codes expire.
#[tokio::test]
async fn attack_a_locked_number_does_not_stall_other_numbers() {
    other_numbers_while_one_is_locked(true).await;
}

/// The control of the attack above: without the lock, the same sends all go out at once.
#[tokio::test]
async fn attack_control_other_numbers_without_a_lock() {
    other_numbers_while_one_is_locked(false).await;
}

async fn other_numbers_while_one_is_locked(lock: bool) {
    let standin = TwilioStandIn::start().await;
    let config = config_with(
        &standin,
        &format!("{FAST_DISPATCH}[[limits.recipient]]\nmax = 5\nwindow_seconds = 600\n"),
    );
    let ingress = TestApp::spawn_role(&config, Role::Ingress).await;
    sqlx::query("INSERT INTO recipient_sends (recipient) VALUES ('+14155550200')")
        .execute(&ingress.pool)
        .await
        .expect("row");
    let mut holder = ingress.pool.begin().await.expect("tx");
    if lock {
        sqlx::query("SELECT * FROM recipient_sends WHERE recipient = '+14155550200' FOR UPDATE")
            .execute(&mut *holder)
            .await
            .expect("lock");
    }

    let locked = queue(&ingress, "+14155550200").await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(queue(&ingress, &format!("+1415555021{i}")).await);
    }
    let worker = ingress.spawn_sibling(&config, Role::Worker).await;
    let mut views = Vec::new();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        views.clear();
        for id in &others {
            views.push(status_of(&worker, id).await);
        }
        if views.iter().all(|v| v["status"] == "sent") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let statuses: Vec<&Value> = views.iter().map(|v| &v["status"]).collect();
    let locked_view = status_of(&worker, &locked).await;
    holder.rollback().await.expect("release");
    assert!(
        views.iter().all(|v| v["status"] == "sent"),
        "other numbers' sends after 30 s with one number's row locked: {statuses:?} \
         (the locked one: {})",
        locked_view["status"]
    );
}

/// A message the carrier refuses is taken out of its number's window exactly once, across
/// two worker processes sending many messages to a few numbers; the sends made never pass
/// the cap, and the window holds exactly the sends the carrier took.
#[tokio::test]
async fn attack_recipient_windows_hold_across_two_workers_with_refusals() {
    let standin = TwilioStandIn::start().await;
    // The carrier refuses every other call (answered 500s: not made, taken out, retried).
    let config = config_with(
        &standin,
        &format!("{FAST_DISPATCH}[[limits.recipient]]\nmax = 3\nwindow_seconds = 600\n"),
    );
    standin.script((0..24).map(|i| {
        if i % 2 == 0 {
            crate::standins::twilio::Reply::error(500, "20500")
        } else {
            crate::standins::twilio::Reply::Created
        }
    }));
    let ingress = TestApp::spawn_role(&config, Role::Ingress).await;
    let numbers = [
        "+14155550301",
        "+14155550302",
        "+14155550303",
        "+14155550304",
    ];
    let mut ids = Vec::new();
    for i in 0..32 {
        ids.push(queue(&ingress, numbers[i % numbers.len()]).await);
    }
    let a = ingress.spawn_sibling(&config, Role::Worker).await;
    let _b = ingress.spawn_sibling(&config, Role::Worker).await;
    for id in &ids {
        wait_final(&a, id, Duration::from_secs(40)).await;
    }
    let accepted = standin.accepted_per_recipient();
    for number in numbers {
        let sent = accepted.get(number).copied().unwrap_or(0) as i64;
        assert!(sent <= 3, "{sent} sends to {number} (cap 3)");
        let counted = events_counted(
            &a.pool,
            "recipient_sends",
            &format!("recipient = '{number}'"),
        )
        .await;
        assert_eq!(counted, sent, "{number}: {sent} sent, {counted} counted");
    }
}

/// Stalls the insert of any message to `+447400100000` (60 s, cancelled by the test).
const STALL: &str = "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS
         'BEGIN IF NEW.recipient = ''+447400100000'' THEN PERFORM pg_sleep(60); END IF;
                RETURN NEW; END';
     CREATE TRIGGER stall BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION stall();";

/// kill -9 of the real binary while a batch's insert is stalled: whatever becomes of the
/// insert, the number's row counts at least what was stored (over-count only), and a
/// restarted gateway still holds the cap.
#[tokio::test]
async fn attack_kill_9_between_reservation_and_insert_never_under_counts() {
    let config = TestConfig::with("[[limits.ingress_recipient]]\nmax = 2\nwindow_seconds = 3600\n");
    let db = TestApp::spawn_with(&config).await;
    sqlx::raw_sql(STALL).execute(&db.pool).await.expect("stall");
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, port) = crate::process::spawn_binary(&db, &config, dir.path());
    let client = crate::cli::wait_until_healthy(port).await;
    let to = |number: &str| {
        client
            .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
            .bearer_auth(crate::helpers::token())
            .json(&body(number, "192.0.2.1", "Your code is 123456"))
            .send()
    };
    let stalled = tokio::spawn(to("+447400100000"));
    crate::helpers::until_a_session_sleeps(&db.pool).await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let _ = stalled.await;
    let counted_at_kill =
        events_counted(&db.pool, "ingress_hits", "key = 'to:+447400100000'").await;
    // Let the orphaned insert run to its end (its backend may still commit it).
    crate::helpers::wake_sleeping_sessions(&db.pool).await;
    sqlx::raw_sql("DROP TRIGGER stall ON messages")
        .execute(&db.pool)
        .await
        .expect("drop");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = scalar(
        &db,
        "SELECT count(*) FROM messages WHERE recipient = '+447400100000'",
    )
    .await;
    let counted = events_counted(&db.pool, "ingress_hits", "key = 'to:+447400100000'").await;
    // A new number's row is created by the statement that stores its message (one commit
    // for both), so nothing is counted until that commits; a number seen before is counted by
    // the reservation, committed before the insert.
    assert!(counted_at_kill <= 1, "{counted_at_kill}");
    assert!(counted >= stored, "{stored} stored, {counted} counted");

    let (restarted, port) = crate::process::spawn_binary(&db, &config, dir.path());
    let client = crate::cli::wait_until_healthy(port).await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = client
            .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
            .bearer_auth(crate::helpers::token())
            .json(&body("+447400100000", "192.0.2.1", "Your code is 123456"))
            .send()
            .await
            .expect("sent");
        answers.push(response.status().as_u16());
    }
    assert!(crate::cli::terminate(restarted).await.success());
    let stored = scalar(
        &db,
        "SELECT count(*) FROM messages WHERE recipient = '+447400100000'",
    )
    .await;
    assert!(
        stored <= 2,
        "{stored} stored past a cap of 2 (answers {answers:?})"
    );
}

/// Retry-After on a gateway whose wall clock is skewed (libfaketime, the gateway alone):
/// a retry after the advertised seconds, with nothing else in between, is admitted; one a
/// second before it is not (the decision follows the database's clock).
#[tokio::test]
async fn attack_retry_after_is_truthful_on_a_skewed_gateway() {
    for skew in ["+3600s", "-3600s"] {
        let config =
            TestConfig::with("[[limits.ingress_recipient]]\nmax = 2\nwindow_seconds = 6\n");
        let db = TestApp::spawn_with(&config).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let skewed = [
            (
                "LD_PRELOAD",
                "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            ),
            ("FAKETIME", skew),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
            ("FAKETIME_NO_CACHE", "1"),
        ];
        let (child, port) =
            crate::process::spawn_binary_with_env(&db, &config, dir.path(), &skewed);
        let client = crate::cli::wait_until_healthy(port).await;
        let mut lasting = crate::helpers::auth0_claims();
        lasting["iat"] = json!(crate::helpers::now() - 86_400);
        lasting["exp"] = json!(crate::helpers::now() + 2 * 86_400);
        let bearer = crate::helpers::sign_with(
            &lasting,
            crate::helpers::SECRET.as_bytes(),
            jsonwebtoken::Algorithm::HS256,
        );
        let send = async || {
            client
                .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
                .bearer_auth(&bearer)
                .json(&body("+447400100009", "192.0.2.1", "Your code is 123456"))
                .send()
                .await
                .expect("sent")
        };
        assert_eq!(send().await.status().as_u16(), 200);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(send().await.status().as_u16(), 200);
        let refused = send().await;
        assert_eq!(refused.status().as_u16(), 429, "{skew}");
        let wait: u64 = refused.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=7).contains(&wait), "{skew}: Retry-After {wait}");
        // Retry-After is rounded up to whole seconds, so 2.5 s before it leaves at least
        // 1.5 s of the window for the sleep's overshoot and the request.
        if wait >= 3 {
            tokio::time::sleep(Duration::from_millis(wait * 1000 - 2500)).await;
            assert_eq!(
                send().await.status().as_u16(),
                429,
                "{skew}: 2.5 s before Retry-After"
            );
            tokio::time::sleep(Duration::from_millis(2500)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        let retried = send().await;
        assert_eq!(
            retried.status().as_u16(),
            200,
            "{skew}: a retry at Retry-After ({wait} s) was refused: {:?}",
            retried.headers().get("retry-after")
        );
        assert!(crate::cli::terminate(child).await.success());
    }
}

/// Found by an attack: a keyed batch holds one pooled connection (its insert transaction,
/// with its keys' locks) while its reservation asks the pool for a second; with
/// `database.max_connections = 1` no keyed request could be stored. Such a pool is now refused
/// by the configuration (it must be more than `ingress_writers` with any ingress limit), and
/// one connection more than the writers serves keyed and unkeyed requests.
#[tokio::test]
async fn attack_keyed_requests_with_a_small_pool() {
    let limits = "[[limits.ingress_recipient]]\nmax = 5\nwindow_seconds = 3600\n";
    let refused = smsgate::Config::from_toml_str(
        &TestConfig::with(limits)
            .set("database.max_connections", 2)
            .to_string(),
    )
    .expect_err("a pool no larger than the writers is refused");
    assert!(
        refused.to_string().contains("database.max_connections"),
        "{refused}"
    );
    let config = TestConfig::with(limits)
        .set("database.max_connections", 2)
        .set("database.ingress_writers", 1);
    let app = TestApp::spawn_with(&config).await;
    let unkeyed = post(&app, None, &body("+14155550401", "192.0.2.1", "code 1")).await;
    let keyed = post(
        &app,
        Some("key-1"),
        &body("+14155550402", "192.0.2.1", "code 2"),
    )
    .await;
    assert_eq!((unkeyed, keyed), (200, 200));
}

/// The smallest pool allowed with the two default writers, keyed requests arriving at once.
#[tokio::test]
async fn attack_concurrent_keyed_requests_with_a_pool_of_three() {
    let config = TestConfig::with("[[limits.ingress_recipient]]\nmax = 5\nwindow_seconds = 3600\n")
        .set("database.max_connections", 3);
    let app = TestApp::spawn_with(&config).await;
    let requests = (0..40).map(|i| {
        let app = &app;
        async move {
            let key = format!("key-{i}");
            post(
                app,
                Some(&key),
                &body(&format!("+141555505{i:02}"), "192.0.2.1", "code"),
            )
            .await
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(failed, 0, "answers: {statuses:?}");
}

/// Counts arrays of other malformed shapes (a NULL element, two dimensions, a count that
/// overflows a sum): no panic, other numbers served, and the edited number itself answered
/// (not a 503 for as long as the row lives).
#[tokio::test]
async fn attack_odd_counts_arrays_are_survived() {
    let config = TestConfig::with("[[limits.ingress_recipient]]\nmax = 5\nwindow_seconds = 3600\n");
    let app = TestApp::spawn_with(&config).await;
    let now = "(extract(epoch FROM now()) * 1000)::bigint";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO ingress_hits (key, counts) VALUES
             ('to:+14155550601', ARRAY[3600000, NULL, 1]::bigint[]),
             ('to:+14155550602', '{{{{3600000, 0, 1}}}}'::bigint[]),
             ('to:+14155550603', ARRAY[3600000, {now}, 9223372036854775807,
                                       3600000, {now} - 120000, 9223372036854775807])"
    )))
    .execute(&app.pool)
    .await
    .expect("operator edits");
    let mut answers = Vec::new();
    for number in ["+14155550601", "+14155550602", "+14155550603"] {
        answers.push(post(&app, None, &body(number, "192.0.2.1", "code")).await);
    }
    let clean = post(&app, None, &body("+14155550699", "192.0.2.2", "code")).await;
    assert_eq!(clean, 200, "a clean number after {answers:?}");
    assert!(
        answers.iter().all(|a| [200, 429].contains(a)),
        "the edited numbers were answered {answers:?}"
    );
}

/// An upgrade's event logs are honoured on every path that converts them: a country cap's
/// log at ingress, and at dispatch a number's log converted by an admission whose send the
/// carrier then refuses (taken out again: the earlier version's sends stay counted).
#[tokio::test]
async fn attack_legacy_logs_survive_a_withdrawn_send_and_a_country_cap() {
    let standin = TwilioStandIn::start().await;
    standin.script([crate::standins::twilio::Reply::error(500, "20500")]);
    let config = config_with(
        &standin,
        &format!(
            "{FAST_DISPATCH}[[limits.recipient]]\nmax = 3\nwindow_seconds = 600\n\
             [[limits.country]]\ncountries = [\"GB\"]\nmax = 2\nwindow_seconds = 3600\n"
        ),
    );
    let app = TestApp::spawn_role(&config, Role::All).await;
    let now = "(extract(epoch FROM now()) * 1000)::bigint";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO recipient_sends (recipient, sends) VALUES ('+447400100010', ARRAY[{now} - 2000, {now} - 1000]);
         INSERT INTO ingress_hits (key, hits) VALUES ('cc:3600:GB:GB', ARRAY[{now} - 3000])"
    )))
    .execute(&app.pool)
    .await
    .expect("logs of an earlier version");

    // The country's second message of the hour: stored; its third: refused.
    let first = queue(&app, "+447400100010").await;
    let refused = post(&app, None, &body("+447400100011", "192.0.2.1", "code")).await;
    assert_eq!(refused, 429, "the country's legacy hit counts");
    let view = wait_final(&app, &first, Duration::from_secs(20)).await;
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(
        standin.received().len(),
        2,
        "one refused call, one accepted"
    );
    let counted = events_counted(&app.pool, "recipient_sends", "recipient = '+447400100010'").await;
    assert_eq!(
        counted, 3,
        "two legacy sends and the one made; the refused call taken out"
    );
}
