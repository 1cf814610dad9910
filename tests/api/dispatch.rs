//! Workers: claiming, sending, retries, expiry, limits and leases, against a real PostgreSQL and
//! a Twilio stand-in.

use std::time::{Duration, Instant};

use serde_json::Value;
use smsgate::Role;

use crate::helpers::{ADMIN_TOKEN, TestApp, sms, token};
use crate::standins::twilio::{FROM, Reply, TwilioStandIn};
use crate::test_config::TestConfig;

/// The base config with the console carrier replaced by the stand-in, plus `extra` TOML.
pub fn config_with(standin: &TwilioStandIn, extra: &str) -> TestConfig {
    TestConfig::base()
        .only_carrier(&standin.carrier_toml("twilio"), "twilio")
        .merge(extra)
}

/// Fast retries and polls for tests; `extra` may add more sections.
pub const FAST_DISPATCH: &str = "[dispatch]\nretry_base_ms = 200\nretry_max_ms = 1000\nlease_seconds = 5\npoll_interval_ms = 200\n";

pub async fn queue(app: &TestApp, recipient: &str) -> String {
    let response = app.post_sms(Some(&token()), &sms(recipient)).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    body["id"].as_str().expect("id").to_string()
}

/// Queues one message to `recipient` and waits (10 s at most) for its final view.
pub async fn send_one(app: &TestApp, recipient: &str) -> Value {
    let id = queue(app, recipient).await;
    wait_final(app, &id, Duration::from_secs(10)).await
}

pub async fn status_of(app: &TestApp, id: &str) -> Value {
    app.get_message(id, Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .expect("status JSON")
}

/// Polls the status API until the message is in a final state.
pub async fn wait_final(app: &TestApp, id: &str, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let view = status_of(app, id).await;
        let status = view["status"].as_str().unwrap_or_default();
        if !["queued", "sending"].contains(&status) {
            return view;
        }
        assert!(
            start.elapsed() < timeout,
            "message {id} still {status} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until no message is left in the queue (sent, failed or expired, every one).
pub async fn wait_until_drained(pool: &sqlx::PgPool, timeout: Duration) {
    let db = smsgate::db::Db::direct(pool.clone());
    wait_until("the queue to drain", timeout, async || {
        smsgate::db::queue::depth(&db).await.unwrap_or(1) == 0
    })
    .await;
}

#[tokio::test]
async fn a_queued_message_is_sent_recorded_and_its_code_erased() {
    let standin = TwilioStandIn::start().await;
    let app = TestApp::spawn_role(&config_with(&standin, FAST_DISPATCH), Role::All).await;

    let view = crate::dispatch::send_one(&app, "+14155552671").await;

    assert_eq!(view["status"], "sent");
    assert_eq!(view["carrier"], "twilio");
    let attempts = view["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "sent");
    assert_eq!(attempts[0]["http_status"], 201);
    assert!(
        attempts[0]["carrier_message_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("SM"))
    );
    let received = standin.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].to, "+14155552671");
    assert_eq!(received[0].body, "Your verification code is: 123456");
    assert_eq!(
        received[0].from.as_deref(),
        Some(FROM),
        "the carrier's from wins over sender"
    );
    let validity = received[0].validity_period.expect("ValidityPeriod sent");
    assert!(
        (290..=300).contains(&validity),
        "remaining lifetime passed: {validity}"
    );
    let body: String = sqlx::query_scalar("SELECT body FROM messages")
        .fetch_one(&app.pool)
        .await
        .expect("row");
    assert_eq!(body, "", "the code is erased once final");
    assert_eq!(
        smsgate::db::queue::depth(&smsgate::db::Db::direct(app.pool.clone()))
            .await
            .expect("depth"),
        0
    );
}

#[tokio::test]
async fn an_idle_worker_is_woken_at_once_in_process_and_across_processes() {
    let standin = TwilioStandIn::start().await;
    // Polling every 30 s: only a wake-up can deliver within the assertion's few seconds.
    let slow_poll = "[dispatch]\npoll_interval_ms = 30000\n";
    let config = config_with(&standin, slow_poll);
    let app = TestApp::spawn_role(&config, Role::All).await;
    crate::helpers::until_a_worker_listens(&app.pool).await;

    let id = queue(&app, "+14155552671").await;
    assert_eq!(
        wait_final(&app, &id, Duration::from_secs(5)).await["status"],
        "sent"
    );

    let ingress = TestApp::spawn_role(&config, Role::Ingress).await;
    let worker = ingress.spawn_sibling(&config, Role::Worker).await;
    crate::helpers::until_a_worker_listens(&ingress.pool).await;
    let id = queue(&ingress, "+14155552672").await;
    assert_eq!(
        wait_final(&worker, &id, Duration::from_secs(5)).await["status"],
        "sent"
    );
}

#[tokio::test]
async fn a_carrier_failing_twice_then_succeeding_ends_sent_after_three_attempts() {
    let standin = TwilioStandIn::start().await;
    standin.script([Reply::error(500, "20500"), Reply::error(503, "20503")]);
    let app = TestApp::spawn_role(&config_with(&standin, FAST_DISPATCH), Role::All).await;

    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(15)).await;

    assert_eq!(view["status"], "sent");
    let attempts = view["attempts"].as_array().expect("attempts");
    let summary: Vec<(i64, &str, i64)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap_or_default(),
                a["outcome"].as_str().unwrap_or_default(),
                a["http_status"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "carrier_failure", 500),
            (2, "carrier_failure", 503),
            (3, "sent", 201)
        ]
    );
    // Full jitter: each wait lies within its doubling ceiling (200 ms, then 400 ms), plus
    // scheduling slack a loaded machine can take (a wait of seconds would still fail).
    let times: Vec<Instant> = standin.received().iter().map(|r| r.at).collect();
    assert!(times[1] - times[0] < Duration::from_millis(200 + 2_500));
    assert!(times[2] - times[1] < Duration::from_millis(400 + 2_500));
}

#[tokio::test]
async fn retry_after_from_the_carrier_is_honoured() {
    let standin = TwilioStandIn::start().await;
    standin.script([Reply::Error {
        status: 429,
        code: "20429",
        retry_after: Some(2),
    }]);
    let app = TestApp::spawn_role(&config_with(&standin, FAST_DISPATCH), Role::All).await;

    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(15)).await;

    assert_eq!(view["status"], "sent");
    assert_eq!(view["attempts"][0]["outcome"], "throttled");
    let times: Vec<Instant> = standin.received().iter().map(|r| r.at).collect();
    assert!(
        times[1] - times[0] >= Duration::from_secs(2),
        "waited {:?}",
        times[1] - times[0]
    );
}

#[tokio::test]
async fn a_message_is_never_sent_after_it_expires() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::error(500, "20500"));
    // Four seconds: a code with less than one left is not sent, and the dispatcher is built
    // after the message is queued, so a slow machine still leaves time for a retry.
    let extra = "[dispatch]\nmessage_ttl_seconds = 4\nretry_base_ms = 300\nretry_max_ms = 300\nmax_attempts = 100\nlease_seconds = 5\n";
    let app = TestApp::spawn_with(&config_with(&standin, extra)).await;

    let id = queue(&app, "+14155552671").await;
    let queued_at = Instant::now();
    app.dispatch_until_empty(100).await;

    assert_eq!(status_of(&app, &id).await["status"], "expired");
    let received = standin.received();
    assert!(
        received.len() > 1,
        "it was tried, and retried, while it was valid"
    );
    for request in &received {
        assert!(
            request.at - queued_at < Duration::from_secs(4),
            "a send after expiry"
        );
    }
}

#[tokio::test]
async fn a_message_that_expired_in_the_queue_reaches_no_carrier() {
    let standin = TwilioStandIn::start().await;
    let app = TestApp::spawn_with(&config_with(&standin, "")).await;
    let id = queue(&app, "+14155552671").await;
    for table in ["messages", "message_queue"] {
        let expire = format!("UPDATE {table} SET expires_at = now() - interval '1 second'");
        sqlx::query(sqlx::AssertSqlSafe(expire))
            .execute(&app.pool)
            .await
            .expect("expire it");
    }

    app.dispatch_until_idle().await;

    assert_eq!(status_of(&app, &id).await["status"], "expired");
    assert!(standin.received().is_empty());
}

#[tokio::test]
async fn a_recipient_failure_ends_the_message_without_retrying() {
    let standin = TwilioStandIn::start().await;
    standin.script([Reply::error(400, "21211")]);
    let app = TestApp::spawn_with(&config_with(&standin, FAST_DISPATCH)).await;

    let id = queue(&app, "+14155552671").await;
    app.dispatch_until_idle().await;

    let view = status_of(&app, &id).await;
    assert_eq!(view["status"], "failed");
    assert_eq!(view["attempts"][0]["outcome"], "recipient_failure");
    assert_eq!(view["attempts"][0]["error_code"], "21211");
    assert_eq!(standin.received().len(), 1);
    let queued = smsgate::db::queue::depth(&smsgate::db::Db::direct(app.pool.clone()))
        .await
        .expect("depth");
    assert_eq!(queued, 0, "nothing left to retry");
}

#[tokio::test]
async fn after_max_attempts_the_message_fails() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::error(500, "20500"));
    let extra = "[dispatch]\nretry_base_ms = 50\nretry_max_ms = 100\nmax_attempts = 3\npoll_interval_ms = 100\n";
    let app = TestApp::spawn_role(&config_with(&standin, extra), Role::All).await;

    let view = crate::dispatch::send_one(&app, "+14155552671").await;

    assert_eq!(view["status"], "failed");
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(3));
    assert_eq!(standin.received().len(), 3);
}

#[tokio::test]
async fn recipient_limits_hold_exactly_across_two_processes() {
    let standin = TwilioStandIn::start().await;
    let limits = "[[limits.recipient]]\nmax = 2\nwindow_seconds = 600\n";
    let config = config_with(&standin, &format!("{FAST_DISPATCH}{limits}"));
    let first = TestApp::spawn_role(&config, Role::Ingress).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(queue(&first, "+14155552671").await);
    }
    let other = queue(&first, "+14155552672").await;

    // Two worker processes race for the same number.
    let worker_a = first.spawn_sibling(&config, Role::Worker).await;
    let worker_b = first.spawn_sibling(&config, Role::Worker).await;
    let mut statuses = Vec::new();
    for id in &ids {
        let app = if statuses.len() % 2 == 0 {
            &worker_a
        } else {
            &worker_b
        };
        statuses.push(wait_final(app, id, Duration::from_secs(10)).await["status"].clone());
    }

    let accepted = standin.accepted_per_recipient();
    assert_eq!(
        accepted.get("+14155552671"),
        Some(&2),
        "exactly the limit reached the carrier"
    );
    assert_eq!(statuses.iter().filter(|s| *s == "sent").count(), 2);
    assert_eq!(statuses.iter().filter(|s| *s == "rate_limited").count(), 4);
    assert_eq!(
        wait_final(&worker_a, &other, Duration::from_secs(10)).await["status"],
        "sent"
    );
    assert_eq!(
        accepted.get("+14155552672").copied().unwrap_or(1),
        1,
        "other numbers unaffected"
    );
}

#[tokio::test]
async fn a_limited_message_waits_for_its_window_when_it_can_still_be_sent() {
    let standin = TwilioStandIn::start().await;
    let limits = "[[limits.recipient]]\nmax = 1\nwindow_seconds = 2\n";
    let app = TestApp::spawn_role(
        &config_with(&standin, &format!("{FAST_DISPATCH}{limits}")),
        Role::All,
    )
    .await;

    let first = queue(&app, "+14155552671").await;
    let second = queue(&app, "+14155552671").await;

    assert_eq!(
        wait_final(&app, &first, Duration::from_secs(10)).await["status"],
        "sent"
    );
    assert_eq!(
        wait_final(&app, &second, Duration::from_secs(10)).await["status"],
        "sent"
    );
    let times: Vec<Instant> = standin.received().iter().map(|r| r.at).collect();
    assert!(
        times[1] - times[0] >= Duration::from_millis(1900),
        "second waited for the window"
    );
}

#[tokio::test]
async fn a_message_leased_by_a_dead_worker_is_claimed_again_after_the_lease() {
    let standin = TwilioStandIn::start().await;
    let config = config_with(&standin, FAST_DISPATCH);
    let ingress = TestApp::spawn_role(&config, Role::Ingress).await;
    let id = queue(&ingress, "+14155552671").await;
    // A worker that claimed it and died: leased for 4 more seconds, never sent (long enough
    // for the worker process below to start within it on a slow machine).
    sqlx::query("UPDATE message_queue SET run_at = now() + interval '4 seconds', lease_token = 42")
        .execute(&ingress.pool)
        .await
        .expect("lease");
    let started = Instant::now();

    let worker = ingress.spawn_sibling(&config, Role::Worker).await;
    assert_eq!(status_of(&worker, &id).await["status"], "sending");
    let view = wait_final(&worker, &id, Duration::from_secs(10)).await;

    assert_eq!(view["status"], "sent");
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "not before the lease ran out"
    );
    assert_eq!(standin.received().len(), 1);
}

#[tokio::test]
async fn many_workers_in_several_processes_send_each_message_exactly_once() {
    let standin = TwilioStandIn::start().await;
    let extra = "[dispatch]\nclaim_batch = 8\nclaimers = 3\nworkers = 8\nlease_seconds = 10\n";
    let config = config_with(&standin, extra);
    let ingress = TestApp::spawn_role(&config, Role::Ingress).await;
    let total = 300;
    let mut recipients = Vec::new();
    for i in 0..total {
        let recipient = format!("+1415555{:04}", 1000 + i);
        queue(&ingress, &recipient).await;
        recipients.push(recipient);
    }

    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(ingress.spawn_sibling(&config, Role::Worker).await);
    }
    wait_until(
        "every message to be final",
        Duration::from_secs(60),
        async || {
            smsgate::db::queue::depth(&smsgate::db::Db::direct(ingress.pool.clone()))
                .await
                .unwrap_or(1)
                == 0
        },
    )
    .await;

    let accepted = standin.accepted_per_recipient();
    assert_eq!(accepted.len(), total);
    assert!(
        accepted.values().all(|&n| n == 1),
        "a message was sent twice"
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'sent'")
        .fetch_one(&ingress.pool)
        .await
        .expect("count");
    assert_eq!(sent, total as i64);
}

#[tokio::test]
async fn retention_deletes_old_final_messages_only() {
    let standin = TwilioStandIn::start().await;
    let app = TestApp::spawn_role(&config_with(&standin, FAST_DISPATCH), Role::All).await;
    // Retention removes whole days (tests/api/partitions.rs): the old message is of a day
    // nine days ago, final for eight.
    let old_day = crate::partitions::database_today(&app.pool).await - chrono::Days::new(9);
    let db = smsgate::db::Db::direct(app.pool.clone());
    smsgate::db::partitions::create_day(&db, old_day)
        .await
        .expect("that day's partitions");
    let old = crate::partitions::fill_day(&app.pool, old_day, 1).await[0].to_string();
    let recent = queue(&app, "+14155552672").await;
    wait_final(&app, &recent, Duration::from_secs(10)).await;

    let plan = smsgate::dispatch::retention::Plan {
        days: 7,
        send_log_seconds: 600,
        ingress_log_seconds: 600,
        resend: Default::default(),
    };
    let swept = smsgate::dispatch::retention::sweep(&db, plan, &Default::default())
        .await
        .expect("sweep");

    assert!(
        swept
            .dropped
            .contains(&format!("messages_p{}", old_day.format("%Y%m%d")))
    );
    assert_eq!(
        app.get_message(&old, Some(ADMIN_TOKEN))
            .await
            .status()
            .as_u16(),
        404
    );
    assert_eq!(status_of(&app, &recent).await["status"], "sent");
}

#[tokio::test]
async fn no_carrier_is_called_once_the_code_expired_even_mid_failover() {
    let hanging = TwilioStandIn::start().await;
    hanging.set_default(Reply::Slow(Duration::from_secs(5)));
    let good = TwilioStandIn::start().await;
    let tables = hanging.carrier_toml("hanging") + &good.carrier_toml("good");
    let config = TestConfig::base()
        .only_carriers(&tables, &["hanging", "good"])
        .merge("[dispatch]\nmessage_ttl_seconds = 2\nlease_seconds = 10\n");
    let app = TestApp::spawn_role(&config, Role::All).await;

    let view = crate::dispatch::send_one(&app, "+14155552671").await;

    assert_eq!(view["status"], "expired");
    assert_eq!(view["attempts"][0]["outcome"], "timeout");
    assert!(
        good.received().is_empty(),
        "the second carrier was called after expiry"
    );
}

#[tokio::test]
async fn a_carrier_send_rate_is_capped_per_process() {
    let standin = TwilioStandIn::start().await;
    let config = config_with(&standin, FAST_DISPATCH).set("carriers.twilio.max_per_second", 2);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(queue(&app, &format!("+1415555{:04}", 2000 + i)).await);
    }

    for id in &ids {
        assert_eq!(
            wait_final(&app, id, Duration::from_secs(15)).await["status"],
            "sent"
        );
    }

    let times: Vec<Instant> = standin.received().iter().map(|r| r.at).collect();
    let span = times
        .iter()
        .max()
        .copied()
        .zip(times.iter().min().copied())
        .map(|(a, b)| a - b);
    // 2 per second with a burst of 2: the sixth send comes at least 2 s after the first.
    assert!(
        span.is_some_and(|s| s >= Duration::from_millis(1900)),
        "span {span:?}"
    );
}

/// Found by an attack: the wake-up LISTEN took a connection of the pool for good, so with
/// database.max_connections = 1 the ingress, the claims and readiness never got one.
#[tokio::test]
async fn a_pool_of_one_connection_still_accepts_and_sends() {
    let standin = TwilioStandIn::start().await;
    let config = config_with(&standin, FAST_DISPATCH).set("database.max_connections", 1);
    let app = TestApp::spawn_role(&config, Role::All).await;
    crate::helpers::until_a_worker_listens(&app.pool).await;

    let view = send_one(&app, "+14155552671").await;

    assert_eq!(view["status"], "sent", "{view}");
    crate::helpers::assert_status(&app.get("/readyz").await, 200, "ready with a pool of one");
}

/// Found by an attack: a carrier's refusal still used up the number's window, so with one
/// send allowed the retry ended `rate_limited` and no code went out. A send no carrier took
/// is taken out of the window; a call that timed out (it may have gone out) stays in it.
#[tokio::test]
async fn a_refused_send_does_not_use_up_the_numbers_window() {
    let standin = TwilioStandIn::start().await;
    standin.script([
        Reply::error(503, "20503"),
        Reply::Error {
            status: 429,
            code: "20429",
            retry_after: Some(1),
        },
    ]);
    let config = config_with(
        &standin,
        &format!("{FAST_DISPATCH}[[limits.recipient]]\nmax = 1\nwindow_seconds = 600\n"),
    );
    let app = TestApp::spawn_role(&config, Role::All).await;

    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(15)).await;

    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(standin.received().len(), 3, "refused twice, then sent");
    let logged = crate::helpers::events_counted(&app.pool, "recipient_sends", "true").await;
    assert_eq!(logged, 1, "only the send that happened is in the window");
}

/// A carrier that reads the whole request and hangs up without answering may have taken
/// the message: that send stays in the number's window (found by an attack: it was taken
/// out, and a second code went to the number inside a one-per-window limit).
#[tokio::test]
async fn a_send_that_got_no_answer_stays_in_the_numbers_window() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // Headers and the form body arrive together; read until the client waits.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), socket.read(&mut buffer)).await
            {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
            }
            socket.shutdown().await.ok();
        }
    });
    let table = crate::standins::twilio::twilio_toml("hangs_up", &format!("http://{address}"));
    let config = TestConfig::base()
        .only_carrier(&table, "hangs_up")
        .merge(FAST_DISPATCH)
        .merge("[[limits.recipient]]\nmax = 1\nwindow_seconds = 600\n");
    let app = TestApp::spawn_role(&config, Role::All).await;

    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(15)).await;

    assert_eq!(view["status"], "rate_limited", "{view}");
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no second call inside the window"
    );
}
