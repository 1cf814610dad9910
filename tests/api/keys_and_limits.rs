//! Idempotency keys against the ingress limits, as an attacker holding a signer's secret
//! would try them: one key for two different messages in one batch, copies of one request
//! from different client addresses in different batches, and a key past its hour.

use serde_json::{Value, json};
use smsgate::Role;

use crate::abuse::count;
use crate::helpers::TestApp;
use crate::test_config::TestConfig;

fn keyed_body(recipient: &str, ip: &str) -> Value {
    json!({
        "recipient": recipient,
        "body": "Your verification code is: 123456",
        "req": {"ip": ip}
    })
}

/// POSTs `body` under `key`; the status and the message id when stored.
async fn post_keyed(app: &TestApp, key: &str, body: &Value) -> (u16, Option<String>) {
    let response = app
        .signed_post()
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let id = if status == 200 {
        let body: Value = response.json().await.expect("JSON");
        body["id"].as_str().map(str::to_string)
    } else {
        None
    };
    (status, id)
}

async fn scalar(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.pool)
        .await
        .expect("query")
}

/// Found by an attack: pairs sharing a key, X inside every limit and Y to a capped country
/// and number, released together. Y was taken for a repeat of X (counted nowhere), and the
/// key insert often stored Y: Y went out past every cap while X's count stayed.
#[tokio::test]
async fn a_key_reused_within_a_batch_is_refused_and_the_counted_message_is_the_stored_one() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"NG\"]\nmax = 1\nwindow_seconds = 3600\n\
         [[limits.ingress_recipient]]\nmax = 1\nwindow_seconds = 3600\n\
         [spend]\ncurrency = \"USD\"\ndaily_limit = 1.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"+234\"\nper_segment = 0.9\n",
    );
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;

    let pairs = (0..20).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        let key = format!("pair-{i}");
        let cheap = keyed_body(&format!("+1415555{:04}", 5000 + i), "192.0.2.1");
        let capped = keyed_body("+2348031234567", "192.0.2.1");
        async move {
            let (x, y) = tokio::join!(
                post_keyed(app, &key, &cheap),
                post_keyed(app, &key, &capped)
            );
            (x, y)
        }
    });
    let outcomes = futures_util::future::join_all(pairs).await;

    for ((x_status, x_id), (y_status, y_id)) in &outcomes {
        assert!(
            !(x_status == &200 && y_status == &200 && x_id != y_id),
            "one key answered for two messages: {outcomes:?}"
        );
    }
    let statuses: Vec<u16> = outcomes.iter().flat_map(|(x, y)| [x.0, y.0]).collect();
    assert!(
        count(&statuses, 422) >= 1,
        "reused keys refused: {statuses:?}"
    );
    let nigerian = scalar(
        &first,
        "SELECT count(*) FROM messages WHERE recipient = '+2348031234567'",
    )
    .await;
    assert!(nigerian <= 1, "{nigerian} messages past caps of one");
    // What is counted is exactly what is stored: the country log and the spend total.
    let counted_nigerian =
        crate::helpers::events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%'").await;
    assert_eq!(
        counted_nigerian, nigerian,
        "the counted message is the stored one"
    );
    let stored_cost = scalar(
        &first,
        "SELECT coalesce(sum(estimated_cost_micros), 0)::bigint FROM messages",
    )
    .await;
    let counted_cost = scalar(
        &first,
        "SELECT coalesce(sum(spent_micros), 0)::bigint FROM spend_days WHERE scope = '*'",
    )
    .await;
    assert_eq!(
        counted_cost, stored_cost,
        "spend counts the stored estimates"
    );
    assert!(
        stored_cost <= 1_000_000,
        "never past the ceiling: {stored_cost}"
    );
    let keys = scalar(&first, "SELECT count(*) FROM idempotency_keys").await;
    let stored = scalar(&first, "SELECT count(*) FROM messages").await;
    assert_eq!(keys, stored, "one message per key, each the key's");
}

/// Copies of one keyed request from different client addresses lock different IP logs:
/// landing in different batches (two processes), each must still see the other's commit.
#[tokio::test]
async fn copies_of_a_keyed_request_from_different_addresses_are_counted_once() {
    let config = TestConfig::with("[[limits.ip]]\nmax = 100\nwindow_seconds = 3600\n");
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;

    let copies = (0..24).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        let body = keyed_body("+14155552671", &format!("198.51.100.{i}"));
        async move { post_keyed(app, "one-login", &body).await }
    });
    let outcomes = futures_util::future::join_all(copies).await;

    assert!(
        outcomes.iter().all(|(status, _)| *status == 200),
        "{outcomes:?}"
    );
    let ids: std::collections::HashSet<_> = outcomes.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids.len(), 1, "one message: {ids:?}");
    let counted =
        crate::helpers::events_counted(&first.pool, "ingress_hits", "key LIKE 'ip:%'").await;
    assert_eq!(counted, 1, "counted once, in one address's log");
}

async fn send_to_britain(app: &TestApp, n: u32) -> u16 {
    let body = keyed_body(&format!("+4474001{n:05}"), "192.0.2.1");
    app.post_sms(Some(&crate::helpers::token()), &body)
        .await
        .status()
        .as_u16()
}

async fn monitored_in_britain(app: &TestApp) -> f64 {
    let series = "smsgate_limit_monitored_total{limit=\"country\",country=\"GB\"}";
    crate::observability::sample(&app.metrics().await, series).unwrap_or(0.0)
}

/// Moves every counted hit `seconds` into the past: the windows' time passes without waiting.
/// The counts are (window ms, bucket start ms, count) triples: each start moves.
async fn age_logs(app: &TestApp, seconds: i64) {
    sqlx::query(
        "UPDATE ingress_hits
         SET counts = (SELECT coalesce(array_agg(CASE WHEN i % 3 = 2 THEN c - $1 * 1000 ELSE c END
                                                 ORDER BY i), '{}')
                       FROM unnest(counts) WITH ORDINALITY AS u(c, i))",
    )
    .bind(seconds)
    .execute(&app.pool)
    .await
    .expect("age the logs");
}

/// A block and a monitor rule with the same countries and window: the monitor's log holds
/// only what the monitor rule itself would have let through, so once its window has moved
/// past its own last admitted request it reports nothing, whatever the blocking rule counted.
#[tokio::test]
async fn a_monitor_country_rule_keeps_its_own_log_beside_a_blocking_one() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 100\nwindow_seconds = 60\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 1\nwindow_seconds = 60\nmode = \"monitor\"\n",
    );
    let app = TestApp::spawn_with(&config).await;

    assert_eq!(send_to_britain(&app, 1).await, 200);
    age_logs(&app, 40).await;
    assert_eq!(
        send_to_britain(&app, 2).await,
        200,
        "the monitor rule only reports"
    );
    assert_eq!(
        monitored_in_britain(&app).await,
        1.0,
        "over the monitor's 1 in 60 s"
    );
    // The first is 70 s old, the second 30 s: the monitor's own log is empty again (it never
    // let the second through); a shared log would still hold the second.
    age_logs(&app, 30).await;
    assert_eq!(send_to_britain(&app, 3).await, 200);
    assert_eq!(
        monitored_in_britain(&app).await,
        1.0,
        "nothing more reported"
    );
}

/// A key answers for its message for an hour of the database's clock, whether or not a
/// sweep has removed it since.
#[tokio::test]
async fn a_key_past_its_hour_is_a_new_request_before_any_sweep() {
    let app = TestApp::spawn_with(&TestConfig::with(
        "[[limits.ip]]\nmax = 100\nwindow_seconds = 3600\n",
    ))
    .await;
    let body = keyed_body("+14155552671", "192.0.2.1");
    let (status, first_id) = post_keyed(&app, "old-login", &body).await;
    assert_eq!(status, 200);
    let (_, repeat_id) = post_keyed(&app, "old-login", &body).await;
    assert_eq!(repeat_id, first_id, "within the hour: a repeat");
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '61 minutes'")
        .execute(&app.pool)
        .await
        .expect("age the key");

    let other = keyed_body("+14155552672", "192.0.2.1");
    let (status, other_id) = post_keyed(&app, "old-login", &other).await;
    assert_eq!(status, 200, "not a reuse of a forgotten key");
    assert_ne!(other_id, first_id);
    let (_, again) = post_keyed(&app, "old-login", &other).await;
    assert_eq!(again, other_id, "the key now answers for the new message");
    assert_eq!(app.count_rows("messages").await, 2);

    // Without any limit (the insert alone decides) the same holds.
    let plain = TestApp::spawn().await;
    let (_, first_id) = post_keyed(&plain, "old-login", &body).await;
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '61 minutes'")
        .execute(&plain.pool)
        .await
        .expect("age the key");
    let (status, other_id) = post_keyed(&plain, "old-login", &other).await;
    assert_eq!(status, 200);
    assert_ne!(other_id, first_id);
}

/// Found by an attack: a repeat was judged while its key's message was being deleted by
/// retention; the insert then found the key free and stored the repeat, counted nowhere.
/// A repeat is never inserted now: it gets its key's message, or a retry is a new request.
#[tokio::test]
async fn a_repeat_whose_message_retention_is_deleting_is_never_stored_uncounted() {
    let app = TestApp::spawn_with(&TestConfig::with(
        "[[limits.ingress_recipient]]\nmax = 1\nwindow_seconds = 3600\n",
    ))
    .await;
    let body = keyed_body("+14155552671", "192.0.2.1");
    let (status, first) = post_keyed(&app, "swept-login", &body).await;
    assert_eq!(status, 200);
    let mut retention = app.pool.begin().await.expect("begin");
    sqlx::query("DELETE FROM messages")
        .execute(&mut *retention)
        .await
        .expect("delete, not yet committed");

    // Answered while the delete is still open: a repeat waits on nothing retention holds
    // (before, its insert waited for the delete and then stored the repeat anew).
    let (status, id) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        post_keyed(&app, "swept-login", &body),
    )
    .await
    .expect("a repeat does not wait for retention");
    retention.commit().await.expect("commit");

    assert!(
        status != 200 || id == first,
        "a repeat answered {status} with a new message {id:?}"
    );
    assert_eq!(
        app.count_rows("messages").await,
        0,
        "nothing stored uncounted"
    );
    let (status, _) = post_keyed(&app, "swept-login", &body).await;
    assert_eq!(
        status, 429,
        "once the message is gone a retry is new, and capped"
    );
}

/// Found by an attack: two monitoring rules with the same countries and window shared a log,
/// so the stricter one counted what the looser one let through. Each keeps its own now: the
/// stricter rule reports exactly what it alone would have refused.
#[tokio::test]
async fn two_monitor_rules_of_one_country_and_window_keep_their_own_logs() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 1\nwindow_seconds = 60\nmode = \"monitor\"\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 3\nwindow_seconds = 60\nmode = \"monitor\"\n",
    );
    let app = TestApp::spawn_with(&config).await;
    for (n, then_age) in [(1, 20), (2, 20), (3, 25), (4, 0)] {
        assert_eq!(
            send_to_britain(&app, n).await,
            200,
            "monitoring refuses nothing"
        );
        age_logs(&app, then_age).await;
    }
    // The strict rule's log holds only the first (it would have refused the next two); by
    // the fourth the first has left its window. A shared log would still hold two more.
    assert_eq!(monitored_in_britain(&app).await, 2.0);
}
