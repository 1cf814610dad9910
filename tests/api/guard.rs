//! The fraud and cost guard with the real app: country caps and spend ceilings exact across
//! two processes (refusals store nothing), monitor mode, segments and estimated cost in the
//! status API and the metrics, test numbers that never reach a carrier.

use serde_json::{Value, json};
use smsgate::Role;

use crate::abuse::{burst, count, from_ip};
use crate::helpers::{ADMIN_TOKEN, TestApp, assert_error_saying, token, until_metric};
use crate::observability::sample;
use crate::test_config::TestConfig;

/// `n` British mobile numbers, each its own recipient.
fn british(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| from_ip(&format!("+4474001{:05}", i), &format!("198.51.100.{i}")))
        .collect()
}

async fn status_of(app: &TestApp, response: reqwest::Response) -> Value {
    assert_eq!(response.status().as_u16(), 200, "accepted");
    let id = response.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.get_message(&id, Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .expect("status JSON")
}

/// `GET /v1/spend` with the admin token.
async fn spend_today(app: &TestApp) -> Value {
    app.client
        .get(app.url("/v1/spend"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("spend")
        .json()
        .await
        .expect("JSON")
}

/// A series summed over the processes' own registries.
async fn summed(apps: [&TestApp; 2], series: &str) -> f64 {
    let mut total = 0.0;
    for app in apps {
        total += sample(&app.metrics().await, series).unwrap_or(0.0);
    }
    total
}

fn with_body(recipient: &str, body: &str) -> Value {
    json!({"recipient": recipient, "body": body, "req": {"ip": "192.0.2.1"}})
}

#[tokio::test]
async fn a_country_cap_holds_exactly_across_two_processes_and_other_countries_pass() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 5\nwindow_seconds = 3600\n",
    );
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;

    let statuses = burst([&first, &second], british(20)).await;

    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 15, "{statuses:?}");
    assert_eq!(
        first.count_rows("messages").await,
        5,
        "refusals stored nothing"
    );
    let refused = first
        .post_sms(Some(&token()), &from_ip("+447400199999", "192.0.2.77"))
        .await;
    assert_error_saying(refused, 429, "too_many_requests", "country").await;
    let american = first
        .post_sms(Some(&token()), &from_ip("+14155552671", "192.0.2.77"))
        .await;
    assert_eq!(american.status().as_u16(), 200, "the cap is Britain's only");
    let refusals = summed(
        [&first, &second],
        "smsgate_rate_limited_total{scope=\"ingress_country\"}",
    )
    .await;
    assert_eq!(refusals, 16.0, "every refusal counted");
}

#[tokio::test]
async fn a_star_cap_counts_every_country_on_its_own() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"*\"]\nmax = 2\nwindow_seconds = 600\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let mut statuses = Vec::new();
    for recipient in [
        "+447400100001",
        "+447400100002",
        "+447400100003",
        "+14155550001",
        "+14155550002",
        "+14155550003",
    ] {
        let response = app
            .post_sms(Some(&token()), &from_ip(recipient, "192.0.2.1"))
            .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
}

#[tokio::test]
async fn monitor_mode_accepts_and_counts_what_it_would_refuse() {
    let config = TestConfig::with(
        "[destinations]\nblocked_countries = [\"NG\"]\nmode = \"monitor\"\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 2\nwindow_seconds = 600\nmode = \"monitor\"\n\
         [[limits.ip]]\nmax = 4\nwindow_seconds = 600\nmode = \"monitor\"\n",
    );
    let app = TestApp::spawn_with(&config).await;

    let statuses = burst([&app, &app], british(5)).await;
    let nigerian = app
        .post_sms(Some(&token()), &from_ip("+2348031234567", "192.0.2.9"))
        .await;
    let same_ip: Vec<u16> = {
        let mut statuses = Vec::new();
        for i in 0..6 {
            let body = from_ip(&format!("+1415555{:04}", 3000 + i), "203.0.113.50");
            statuses.push(app.post_sms(Some(&token()), &body).await.status().as_u16());
        }
        statuses
    };

    assert_eq!(count(&statuses, 200), 5, "nothing refused: {statuses:?}");
    assert_eq!(nigerian.status().as_u16(), 200);
    assert!(same_ip.iter().all(|s| *s == 200), "{same_ip:?}");
    assert_eq!(app.count_rows("messages").await, 12, "all stored");
    let metrics = app.metrics().await;
    let monitored = |labels: &str| {
        sample(
            &metrics,
            &format!("smsgate_limit_monitored_total{{{labels}}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(monitored("limit=\"country\",country=\"GB\""), 3.0);
    assert_eq!(monitored("limit=\"destinations\",country=\"NG\""), 1.0);
    assert_eq!(monitored("limit=\"ip\",country=\"US\""), 2.0);
    assert_eq!(
        sample(
            &metrics,
            "smsgate_rate_limited_total{scope=\"ingress_country\"}"
        ),
        Some(0.0),
        "monitoring refuses nothing"
    );
}

#[tokio::test]
async fn segments_encoding_and_the_estimate_are_in_the_status_api() {
    let config = TestConfig::with(
        "[spend]\ncurrency = \"EUR\"\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"+44\"\nper_segment = 0.04\n",
    );
    let app = TestApp::spawn_with(&config).await;

    let long_gsm = format!("Code 123456 {}", "x".repeat(150));
    let gsm = app
        .post_sms(Some(&token()), &with_body("+447400123456", &long_gsm))
        .await;
    let gsm = status_of(&app, gsm).await;
    assert_eq!(gsm["segments"], 2, "{gsm}");
    assert_eq!(gsm["encoding"], "GSM-7");
    assert_eq!(gsm["estimated_cost"], 0.08, "two segments at the +44 price");

    let emoji = app
        .post_sms(Some(&token()), &with_body("+14155552671", "Код 123456 🔐"))
        .await;
    let emoji = status_of(&app, emoji).await;
    assert_eq!(emoji["segments"], 1, "{emoji}");
    assert_eq!(emoji["encoding"], "UCS-2");
    assert_eq!(emoji["estimated_cost"], 0.01, "the carrier's default price");
}

#[tokio::test]
async fn what_was_sent_is_counted_in_segments_and_spend_by_carrier() {
    let config = TestConfig::with(
        "[spend]\ncurrency = \"USD\"\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.25\n",
    );
    let app = TestApp::spawn_role(&config, Role::All).await;
    for body in [
        "Your code is 123456".to_string(),
        format!("Your code is 123456 {}", "€".repeat(80)),
    ] {
        let response = app
            .post_sms(Some(&token()), &with_body("+14155552671", &body))
            .await;
        assert_eq!(response.status().as_u16(), 200);
    }
    // 1 + 2 segments (80 euro signs are 160 septets on their own).
    until_metric(&app, "smsgate_segments_total{carrier=\"console\"}", 3.0).await;
    until_metric(
        &app,
        "smsgate_estimated_spend_total{carrier=\"console\"}",
        0.75,
    )
    .await;
}

#[tokio::test]
async fn the_daily_spend_ceiling_holds_exactly_across_two_processes() {
    let config = TestConfig::with(
        "[spend]\ncurrency = \"USD\"\ndaily_limit = 0.10\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n",
    );
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;
    let bodies = (0..30)
        .map(|i| from_ip(&format!("+1415556{:04}", i), "192.0.2.1"))
        .collect();

    let statuses = burst([&first, &second], bodies).await;

    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
    assert_eq!(
        first.count_rows("messages").await,
        10,
        "refusals stored nothing"
    );
    let refused = first
        .post_sms(Some(&token()), &from_ip("+14155559999", "192.0.2.1"))
        .await;
    let retry_after = crate::abuse::retry_after(&refused);
    assert!(
        (1..=86_400).contains(&retry_after),
        "until UTC midnight: {retry_after}"
    );
    assert_error_saying(refused, 429, "spend_limit_reached", "spend ceiling").await;
    let spend = spend_today(&first).await;
    assert_eq!(spend["spent"], 0.1, "{spend}");
    assert_eq!(spend["daily_limit"], 0.1);
    assert_eq!(spend["currency"], "USD");
    let unauthorized = first.get("/v1/spend").await;
    assert_eq!(unauthorized.status().as_u16(), 401);
    let counted = summed(
        [&first, &second],
        "smsgate_rate_limited_total{scope=\"spend_daily\"}",
    )
    .await;
    assert_eq!(counted, 21.0, "every refusal counted");
}

#[tokio::test]
async fn a_country_spend_ceiling_stops_one_country_only() {
    let config = TestConfig::with(
        "[spend]\ncurrency = \"USD\"\ncountry_daily_limit = 0.05\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n",
    );
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;

    let statuses = burst([&first, &second], british(12)).await;
    let american = first
        .post_sms(Some(&token()), &from_ip("+14155552671", "192.0.2.1"))
        .await;

    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    assert_eq!(
        american.status().as_u16(),
        200,
        "another country has its own ceiling"
    );
    let refused = first
        .post_sms(Some(&token()), &from_ip("+447400199999", "192.0.2.1"))
        .await;
    assert_error_saying(refused, 429, "spend_limit_reached", "GB").await;
    // The day's total is kept with a country ceiling alone, and only countries that spent.
    let spend = spend_today(&first).await;
    assert_eq!(spend["spent"], 0.06, "{spend}");
    assert_eq!(
        spend["countries"],
        json!([{"country": "GB", "spent": 0.05}, {"country": "US", "spent": 0.01}])
    );
}

/// Found by an attack: a repeated request or a reused key stores nothing, yet it used up the
/// caps and the day's spend. Only new requests count now.
#[tokio::test]
async fn repeats_and_reused_keys_count_in_no_cap_and_no_spend() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"gb\"]\nmax = 3\nwindow_seconds = 3600\n\
         [spend]\ncurrency = \"USD\"\ndaily_limit = 1.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.1\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let keyed = |recipient: &str, body: &str| {
        app.signed_post()
            .header("idempotency-key", "login-1")
            .json(&with_body(recipient, body))
            .send()
    };

    let first = keyed("+447400100001", "Your code is 111111")
        .await
        .expect("sent");
    assert_eq!(first.status().as_u16(), 200);
    for _ in 0..3 {
        let repeat = keyed("+447400100001", "Your code is 111111")
            .await
            .expect("sent");
        assert_eq!(
            repeat.status().as_u16(),
            200,
            "a repeat is the same message"
        );
        let reused = keyed("+447400100002", "Your code is 222222")
            .await
            .expect("sent");
        assert_eq!(reused.status().as_u16(), 422, "a reused key");
    }
    // The lower-case code still caps Britain: two more fit, the third does not.
    let mut statuses = Vec::new();
    for n in 3..6 {
        let fresh = from_ip(&format!("+44740010000{n}"), "192.0.2.1");
        statuses.push(app.post_sms(Some(&token()), &fresh).await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    let spent: i64 = sqlx::query_scalar("SELECT spent_micros FROM spend_days WHERE scope = '*'")
        .fetch_one(&app.pool)
        .await
        .expect("spend row");
    assert_eq!(
        spent, 300_000,
        "three messages stored, three estimates counted"
    );
}

#[tokio::test]
async fn test_numbers_are_stored_and_reported_but_never_reach_a_carrier_or_cost() {
    let standin = crate::standins::twilio::TwilioStandIn::start().await;
    let config = crate::dispatch::config_with(&standin, crate::dispatch::FAST_DISPATCH).merge(
        "[spend]\ncurrency = \"USD\"\ndaily_limit = 1.0\n\
         [[prices]]\ncarrier = \"twilio\"\nprefix = \"\"\nper_segment = 0.5\n\
         [destinations]\nmobile_only = true\n\
         [[test_numbers]]\nnumber = \"+15005550006\"\noutcome = \"sent\"\n\
         [[test_numbers]]\nnumber = \"+15005550001\"\noutcome = \"failed\"\n",
    );
    let app = TestApp::spawn_role(&config, Role::All).await;

    let mut ids = Vec::new();
    for recipient in [
        "+15005550006",
        "+15005550006",
        "+15005550006",
        "+15005550001",
    ] {
        let response = app
            .post_sms(Some(&token()), &from_ip(recipient, "192.0.2.1"))
            .await;
        assert_eq!(response.status().as_u16(), 200, "test numbers cost nothing");
        ids.push(response.json::<Value>().await.expect("JSON")["id"].clone());
    }
    let sent = crate::dispatch::wait_final(
        &app,
        ids[0].as_str().expect("id"),
        std::time::Duration::from_secs(10),
    )
    .await;
    let failed = crate::dispatch::wait_final(
        &app,
        ids[3].as_str().expect("id"),
        std::time::Duration::from_secs(10),
    )
    .await;

    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(sent["carrier"], "test_numbers");
    assert_eq!(sent["estimated_cost"], 0.0);
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(standin.received().is_empty(), "no carrier was called");
    // Two real messages at 0.5 fit the ceiling of 1.0: the test numbers took none of it.
    for n in 0..2 {
        let response = app
            .post_sms(
                Some(&token()),
                &from_ip(&format!("+1415555{:04}", 4000 + n), "192.0.2.1"),
            )
            .await;
        assert_eq!(response.status().as_u16(), 200);
    }
}

/// Found by an attack: a destination rule in monitor mode counted a request that another
/// limit then refused. Monitored refusals are reported once the message is stored.
#[tokio::test]
async fn a_monitored_request_that_another_limit_refuses_is_not_counted_as_monitored() {
    let config = TestConfig::with(
        "[destinations]\nblocked_countries = [\"NG\"]\nmode = \"monitor\"\n\
         [[limits.ip]]\nmax = 1\nwindow_seconds = 600\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let statuses = [
        app.post_sms(Some(&token()), &from_ip("+2348031234567", "192.0.2.9"))
            .await
            .status()
            .as_u16(),
        app.post_sms(Some(&token()), &from_ip("+2348031234568", "192.0.2.9"))
            .await
            .status()
            .as_u16(),
    ];
    assert_eq!(statuses, [200, 429]);
    until_metric(
        &app,
        "smsgate_limit_monitored_total{limit=\"destinations\",country=\"NG\"}",
        1.0,
    )
    .await;
}

/// Found by a review: a request another limit refused still left a spend row for its country.
#[tokio::test]
async fn a_request_refused_by_a_window_leaves_no_spend_row() {
    let config = TestConfig::with(
        "[[limits.ip]]\nmax = 1\nwindow_seconds = 600\n\
         [spend]\ncurrency = \"USD\"\ncountry_daily_limit = 1.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let first = app
        .post_sms(Some(&token()), &from_ip("+14155552671", "192.0.2.5"))
        .await;
    let second = app
        .post_sms(Some(&token()), &from_ip("+2348031234567", "192.0.2.5"))
        .await;
    assert_eq!(
        [first.status().as_u16(), second.status().as_u16()],
        [200, 429]
    );
    let rows: Vec<String> = sqlx::query_scalar("SELECT scope FROM spend_days ORDER BY scope")
        .fetch_all(&app.pool)
        .await
        .expect("rows");
    assert_eq!(rows, ["*", "US"], "nothing for the refused Nigerian number");
}

/// Found by an attack: identical retries racing in several writers were each judged as new
/// (counted up to once per writer) and some refused with 429 although their message was
/// stored. Repeats are now told apart after the limits' locks are taken.
#[tokio::test]
async fn concurrent_retries_of_one_request_are_one_message_counted_once() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 2\nwindow_seconds = 3600\n\
         [spend]\ncurrency = \"USD\"\ndaily_limit = 1.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.1\n",
    );
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;
    let warm = first
        .post_sms(Some(&token()), &from_ip("+447400100001", "192.0.2.1"))
        .await;
    assert_eq!(warm.status().as_u16(), 200, "the cap stands at 1 of 2");

    let retries = (0..24).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        async move {
            let response = app
                .signed_post()
                .header("idempotency-key", "login-race")
                .json(&from_ip("+447400100002", "192.0.2.2"))
                .send()
                .await
                .expect("sent");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (status, body["id"].as_str().unwrap_or_default().to_string())
        }
    });
    let answers = futures_util::future::join_all(retries).await;

    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert!(
        answers.iter().all(|(_, id)| *id == answers[0].1),
        "one message"
    );
    let counted =
        crate::helpers::events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%GB'").await;
    assert_eq!(counted, 2, "the retried message counted once");
    let spent: i64 = sqlx::query_scalar("SELECT spent_micros FROM spend_days WHERE scope = '*'")
        .fetch_one(&first.pool)
        .await
        .expect("spend");
    assert_eq!(spent, 200_000, "and its estimate once");
}
