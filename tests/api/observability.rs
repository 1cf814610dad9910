//! Metrics and logs: every family from the start, counts that match what happened, and no
//! number, code or secret in either.

use std::time::Duration;

use serde_json::json;
use smsgate::Role;

use crate::dispatch::{queue, wait_final};
use crate::helpers::{TestApp, sms, token};
use crate::standins::Reply;
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::standins::twilio::TwilioStandIn;
use crate::test_config::TestConfig;

/// What PromQL's `sum(series)` would say: the samples of `series`'s metric whose labels
/// include every label `series` names (`name{a="x"}`), added up; `None` when none matches.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let (name, wanted) = split_series(series);
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (line_name, labels) = split_series(key);
        if line_name == name && wanted.iter().all(|label| labels.contains(label)) {
            let value: f64 = value.trim().parse().ok()?;
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}

/// `sample` of the series of `name` whose `label` is `value`.
pub fn labelled(text: &str, name: &str, label: &str, value: &str) -> Option<f64> {
    sample(text, &format!("{name}{{{label}=\"{value}\"}}"))
}

/// `name{a="x",b="y"}` into its name and its `a="x"` labels.
fn split_series(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, labels)) => {
            let labels = labels.trim_end_matches('}');
            (name, labels.split(',').filter(|l| !l.is_empty()).collect())
        }
        None => (series, Vec::new()),
    }
}

pub const FAMILIES: [&str; 24] = [
    "smsgate_ingress_requests_total",
    "smsgate_ingress_request_duration_seconds",
    "smsgate_dispatch_attempts_total",
    "smsgate_carrier_request_duration_seconds",
    "smsgate_carrier_accept_latency_seconds",
    "smsgate_delivery_latency_seconds",
    "smsgate_failovers_total",
    "smsgate_messages_finished_total",
    "smsgate_rate_limited_total",
    "smsgate_queue_depth",
    "smsgate_queue_oldest_age_seconds",
    "smsgate_queue_messages",
    "smsgate_queue_due_age_seconds",
    "smsgate_ready",
    "smsgate_dispatch_held_total",
    "smsgate_carrier_breaker_open",
    "smsgate_build_info",
    "smsgate_db_pool_connections",
    "smsgate_db_pool_max_connections",
    "smsgate_db_pool_waiting",
    "smsgate_db_pool_acquire_seconds",
    "smsgate_trace_export_failures_total",
    "process_resident_memory_bytes",
    "process_open_fds",
];

#[tokio::test]
async fn every_family_and_known_label_is_exported_at_zero_from_start_up() {
    let config = TestConfig::base().set("carriers.spare.kind", "log");
    let app = TestApp::spawn_role(&config, Role::All).await;

    let text = app.metrics().await;

    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    for outcome in [
        "accepted",
        "unauthorized",
        "invalid",
        "too_large",
        "rate_limited",
        "unavailable",
    ] {
        let series = format!("smsgate_ingress_requests_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    for outcome in [
        "sent",
        "recipient_failure",
        "carrier_failure",
        "timeout",
        "throttled",
    ] {
        let series =
            format!("smsgate_dispatch_attempts_total{{carrier=\"console\",outcome=\"{outcome}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    for status in ["sent", "failed", "expired", "rate_limited"] {
        let series = format!("smsgate_messages_finished_total{{status=\"{status}\"}}");
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    assert_eq!(
        sample(&text, "smsgate_carrier_breaker_open{carrier=\"console\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "smsgate_failovers_total{from=\"console\",to=\"spare\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "smsgate_queue_depth{status=\"queued\"}"),
        Some(0.0)
    );
    let version = format!(
        "smsgate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &version), Some(1.0));
    let commit = format!(
        "smsgate_build_info{{commit=\"{}\"}}",
        env!("SMSGATE_COMMIT")
    );
    assert_eq!(sample(&text, &commit), Some(1.0), "the commit is a label");
    assert!(!env!("SMSGATE_COMMIT").is_empty());
    let max = sample(&text, "smsgate_db_pool_max_connections").unwrap_or(0.0);
    assert!(max >= 1.0, "the pool's maximum: {max}");
    let open = sample(&text, "smsgate_db_pool_connections").unwrap_or(-1.0);
    assert!(
        (0.0..=max).contains(&open),
        "open connections: {open} of {max}"
    );
    // Background tasks (workers polling, the sweeps) may be taking a connection at the
    // scrape: the gauge is a whole count no larger than the tasks that could be taking one.
    let waiting = sample(&text, "smsgate_db_pool_waiting").unwrap_or(-1.0);
    assert!(
        waiting >= 0.0 && waiting.fract() == 0.0 && waiting <= 16.0,
        "tasks waiting for a connection: {waiting}"
    );
    assert!(
        sample(&text, "smsgate_db_pool_acquire_seconds_count").unwrap_or(0.0) >= 1.0,
        "start-up took connections"
    );
    assert_eq!(
        sample(&text, "smsgate_estimated_spend_total{currency=\"XXX\"}"),
        Some(0.0),
        "spend carries its currency (ISO 4217's none when [spend] names none)"
    );
}

#[tokio::test]
async fn counters_agree_exactly_with_what_happened() {
    let failing = TwilioStandIn::start().await;
    failing.set_default(Reply::error(500, "20500"));
    let good = MessageMediaStandIn::start().await;
    let tables = failing.carrier_toml("failing") + &good.carrier_toml("good");
    let config = TestConfig::base()
        .only_carriers(&tables, &["failing", "good"])
        .set("dispatch.lease_seconds", 10);
    let app = TestApp::spawn_role(&config, Role::All).await;

    let id = queue(&app, "+14155552671").await;
    wait_final(&app, &id, Duration::from_secs(10)).await;
    app.post_sms(None, &sms("+14155552671")).await;
    app.post_sms(Some(&token()), &json!({"recipient": "bogus", "body": "x"}))
        .await;
    let mut big = sms("+14155552671");
    big["padding"] = json!("x".repeat(20_000));
    app.post_sms(Some(&token()), &big).await;
    // The router's 405 for a wrong method never reached the ingress: not counted.
    let wrong_method = app.client.get(app.url("/v1/auth0/sms")).send().await;
    assert_eq!(wrong_method.expect("sent").status().as_u16(), 405);
    let text = app.metrics().await;

    let value = |series: &str| sample(&text, series).unwrap_or(-1.0);
    assert_eq!(
        value("smsgate_ingress_requests_total{outcome=\"accepted\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_ingress_requests_total{outcome=\"unauthorized\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_ingress_requests_total{outcome=\"invalid\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_ingress_requests_total{outcome=\"too_large\"}"),
        1.0
    );
    assert_eq!(value("smsgate_ingress_request_duration_seconds_count"), 4.0);
    assert_eq!(
        value(
            "smsgate_ingress_request_duration_seconds_count{endpoint=\"sms\",outcome=\"accepted\"}"
        ),
        1.0
    );
    assert_eq!(
        value("smsgate_ingress_request_duration_seconds_count{outcome=\"too_large\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_dispatch_attempts_total{carrier=\"failing\",outcome=\"carrier_failure\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_dispatch_attempts_total{carrier=\"good\",outcome=\"sent\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_carrier_request_duration_seconds_count{carrier=\"failing\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_failovers_total{from=\"failing\",to=\"good\"}"),
        1.0
    );
    assert_eq!(
        value("smsgate_messages_finished_total{status=\"sent\"}"),
        1.0
    );
    assert_eq!(value("smsgate_carrier_accept_latency_seconds_count"), 1.0);
    // Its old name, kept for one release, sees the same observations.
    assert_eq!(value("smsgate_delivery_latency_seconds_count"), 1.0);
    assert_eq!(value("smsgate_queue_depth{status=\"queued\"}"), 0.0);
    assert!(
        !text.contains("4155552671"),
        "a phone number in the metrics"
    );
    assert!(!text.contains("123456"), "a code in the metrics");
    assert!(!text.contains(&id), "a message id in the metrics");
}

#[tokio::test]
async fn rate_limited_messages_and_queue_depth_are_reported() {
    let standin = TwilioStandIn::start().await;
    let config = crate::dispatch::config_with(
        &standin,
        "[[limits.recipient]]\nmax = 1\nwindow_seconds = 600\n",
    );
    let ingress = TestApp::spawn_role(&config, Role::Ingress).await;
    let first = queue(&ingress, "+14155552671").await;
    let second = queue(&ingress, "+14155552671").await;
    let text = ingress.metrics().await;
    assert_eq!(
        sample(&text, "smsgate_queue_depth{status=\"queued\"}"),
        Some(2.0)
    );
    assert!(sample(&text, "smsgate_queue_oldest_age_seconds").is_some_and(|age| age >= 0.0));

    let worker = ingress.spawn_sibling(&config, Role::Worker).await;
    // Sends are admitted right before their call, so either of the two may be the one sent.
    let mut statuses = vec![
        wait_final(&worker, &first, Duration::from_secs(10)).await["status"].clone(),
        wait_final(&worker, &second, Duration::from_secs(10)).await["status"].clone(),
    ];
    statuses.sort_by_key(|s| s.to_string());
    assert_eq!(statuses, vec!["rate_limited", "sent"]);
    let text = worker.metrics().await;
    assert_eq!(
        sample(&text, "smsgate_rate_limited_total{scope=\"recipient\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "smsgate_messages_finished_total{status=\"rate_limited\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "smsgate_messages_finished_total{status=\"sent\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn ingress_counts_name_the_endpoint_the_signer_and_the_limit_that_refused() {
    let config = TestConfig::with_limits(&[("ip", 1, 60), ("ingress_recipient", 1, 60)]);
    let app = TestApp::spawn_with(&config).await;
    for (recipient, ip, status, why) in [
        ("+14155550001", "192.0.2.1", 200, "first from this IP"),
        ("+14155550002", "192.0.2.1", 429, "second from this IP"),
        ("+14155550001", "192.0.2.2", 429, "second to this number"),
    ] {
        let body = crate::abuse::from_ip(recipient, ip);
        let response = app.post_sms(Some(&token()), &body).await;
        crate::helpers::assert_status(&response, status, why);
    }
    let action = crate::actions::notification("+14155550003", "123456");
    let by_action = crate::actions::post(&app, &action, None, Some(&token())).await;
    crate::helpers::assert_status(&by_action, 200, "the Action's request");
    let unsigned = crate::actions::post(&app, &action, None, None).await;
    crate::helpers::assert_status(&unsigned, 401, "no token");

    let text = app.metrics().await;
    let count = |endpoint: &str, signer: &str, outcome: &str| {
        let series = format!(
            "smsgate_ingress_requests_total{{endpoint=\"{endpoint}\",signer=\"{signer}\",outcome=\"{outcome}\"}}"
        );
        sample(&text, &series)
    };
    assert_eq!(count("sms", "primary", "accepted"), Some(1.0));
    assert_eq!(count("sms", "primary", "rate_limited"), Some(2.0));
    assert_eq!(count("phone_provider", "primary", "accepted"), Some(1.0));
    assert_eq!(count("phone_provider", "-", "unauthorized"), Some(1.0));
    assert_eq!(count("sms", "-", "unauthorized"), Some(0.0));
    let scope = |scope| labelled(&text, "smsgate_rate_limited_total", "scope", scope);
    assert_eq!(scope("ingress_ip"), Some(1.0));
    assert_eq!(scope("ingress_recipient"), Some(1.0));
    assert_eq!(scope("in_flight"), Some(0.0));
}

#[tokio::test]
async fn messages_waiting_for_their_time_are_not_due() {
    let app = TestApp::spawn().await;
    let waiting = queue(&app, "+14155552671").await;
    queue(&app, "+14155552672").await;
    // The first waits for a retry's backoff, a minute away; the second is due now.
    sqlx::query(
        "UPDATE message_queue SET run_at = CASE WHEN message_id = $1::uuid
             THEN now() + interval '1 minute' ELSE now() - interval '90 seconds' END",
    )
    .bind(&waiting)
    .execute(&app.pool)
    .await
    .expect("one waiting, one late");

    let text = app.metrics().await;
    let phase = |phase| labelled(&text, "smsgate_queue_messages", "phase", phase);
    assert_eq!(phase("due"), Some(1.0));
    assert_eq!(phase("waiting"), Some(1.0));
    assert_eq!(phase("sending"), Some(0.0));
    let late = sample(&text, "smsgate_queue_due_age_seconds").expect("due age");
    assert!((89.0..200.0).contains(&late), "due for {late} s");
}

/// Found by an attack: with the database frozen, a scrape waited out two pool timeouts (6 s),
/// longer than Prometheus waits, so the process looked down instead of the database unready.
#[tokio::test]
async fn a_stuck_database_makes_a_scrape_say_not_ready_instead_of_timing_out() {
    // Opening a connection may be slow on a loaded machine: only exhaustion may fail the list.
    let app =
        TestApp::spawn_with(&TestConfig::base().set("database.acquire_timeout_ms", 2000)).await;
    let blocker = crate::helpers::hold_tables(&app.pool, "_sqlx_migrations, message_queue").await;

    let started = std::time::Instant::now();
    let text = app.metrics().await;
    let took = started.elapsed();

    // Prometheus's scrape timeout in the shipped configuration is 5 s.
    assert!(took < Duration::from_secs(4), "the scrape took {took:?}");
    assert_eq!(sample(&text, "smsgate_ready"), Some(0.0));
    // Scrapes that keep coming do not each leave a stuck read holding a connection: the pool
    // (5 here) still serves the status API.
    for _ in 0..8 {
        app.metrics().await;
    }
    let listed = app
        .client
        .get(app.url("/v1/messages"))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    crate::helpers::assert_status(&listed, 200, "the pool is not exhausted by scrapes");
    blocker.rollback().await.expect("release");
}
