//! Route measurements (issue 26, part 2): per carrier and destination country, over a sliding
//! window shared by every process, the sends, what their receipts said (delivered, failed by
//! route, failed by recipient), the receipts' latency, and the sends no receipt answered in
//! time; at `GET /v1/carriers/stats`, `smsgate carriers stats` and as gauges.

use std::time::Duration;

use serde_json::Value;

use crate::cli::BINARY;
use crate::dispatch::wait_until;
use crate::helpers::{ADMIN_TOKEN, base_config, url_of};
use crate::observability::sample;
use crate::resends::{TwoCarriers, carrier_id};

async fn stats(carriers: &TwoCarriers, token: Option<&str>) -> reqwest::Response {
    let mut request = carriers
        .app
        .client
        .get(carriers.app.url("/v1/carriers/stats"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("sent")
}

/// The window's row of `carrier` and `country` once it holds every count in `expected`: sends
/// and receipts are added every two seconds, so one addition may hold a send without its
/// receipt.
async fn route(
    carriers: &TwoCarriers,
    carrier: &str,
    country: &str,
    expected: &[(&str, i64)],
) -> Value {
    let mut found = Value::Null;
    wait_until(
        "the counts to be added",
        Duration::from_secs(10),
        async || {
            let body: Value = stats(carriers, Some(ADMIN_TOKEN))
                .await
                .json()
                .await
                .expect("JSON");
            found = body["routes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["carrier"] == carrier && r["country"] == country)
                .cloned()
                .unwrap_or(Value::Null);
            expected
                .iter()
                .all(|(count, value)| found[*count] == *value)
        },
    )
    .await;
    found
}

#[tokio::test]
async fn sends_and_their_receipts_are_counted_per_carrier_and_country() {
    let carriers = TwoCarriers::start("").await;
    // GB: one delivered; one failed by its route, resent and delivered by the second carrier.
    let (_, delivered) = carriers.sent_through_first_to("+447400123456").await;
    let (moved, failed) = carriers.sent_through_first_to("+447400123457").await;
    // US: one failed by its recipient, one with no receipt (yet).
    let (_, unknown) = carriers.sent_through_first_to("+14155552671").await;
    carriers.sent_through_first_to("+14155552672").await;
    assert_eq!(
        carriers
            .receipt("first", &delivered, "delivered", None)
            .await,
        204
    );
    assert_eq!(
        carriers
            .receipt("first", &failed, "undelivered", Some("30007"))
            .await,
        204
    );
    assert_eq!(
        carriers
            .receipt("first", &unknown, "undelivered", Some("30005"))
            .await,
        204
    );
    let view = carriers.settled_after(&moved, 2).await;
    let second = carrier_id(&view, 1);
    assert_eq!(
        carriers.receipt("second", &second, "delivered", None).await,
        204
    );

    let gb = route(
        &carriers,
        "first",
        "GB",
        &[("sent", 2), ("delivered", 1), ("failed_route", 1)],
    )
    .await;
    assert_eq!(
        (
            &gb["delivered"],
            &gb["failed_route"],
            &gb["failed_recipient"]
        ),
        (&1.into(), &1.into(), &0.into()),
        "{gb}"
    );
    assert_eq!(gb["delivery_ratio"], 0.5, "{gb}");
    assert!(gb["receipt_latency_ms"].as_f64().is_some(), "{gb}");
    let second_gb = route(&carriers, "second", "GB", &[("sent", 1), ("delivered", 1)]).await;
    assert_eq!(second_gb["delivered"], 1, "{second_gb}");
    let us = route(
        &carriers,
        "first",
        "US",
        &[("sent", 2), ("failed_recipient", 1)],
    )
    .await;
    assert_eq!(us["failed_recipient"], 1, "{us}");
    assert_eq!(
        us["no_receipt"], 0,
        "a send younger than the code's lifetime is not counted unanswered: {us}"
    );

    // The same figures as gauges, labelled by the window's carriers and countries only.
    // Refreshed every 10 s: wait for a refresh that saw the window as it now stands.
    let sent = r#"smsgate_route_messages{carrier="first",country="GB",outcome="sent"}"#;
    let delivered = r#"smsgate_route_messages{carrier="second",country="GB",outcome="delivered"}"#;
    wait_until("the gauges", Duration::from_secs(25), async || {
        let metrics = carriers.app.metrics().await;
        sample(&metrics, sent) == Some(2.0) && sample(&metrics, delivered) == Some(1.0)
    })
    .await;
    let metrics = carriers.app.metrics().await;
    assert!(
        !metrics.contains(r#"country="FR""#),
        "no label for a country without traffic"
    );
}

#[tokio::test]
async fn old_sends_without_a_receipt_count_as_unanswered_and_the_window_slides() {
    let carriers = TwoCarriers::start("").await;
    let pool = &carriers.app.pool;
    // Ten sends ten minutes ago (past the code's five-minute life): seven delivered, one failed,
    // two never answered; and a minute two hours old, outside the hour's window.
    sqlx::query(
        "INSERT INTO route_stats (carrier, country, minute, sent, delivered, failed_route,
                                  receipt_ms_sum)
         VALUES ('first', 'FR', date_trunc('minute', now()) - interval '10 minutes', 10, 7, 1,
                 8000),
                ('first', 'FR', date_trunc('minute', now()) - interval '2 hours', 50, 0, 50, 0)",
    )
    .execute(pool)
    .await
    .expect("old minutes");

    let fr = route(&carriers, "first", "FR", &[("sent", 10)]).await;

    assert_eq!(fr["no_receipt"], 2, "{fr}");
    assert_eq!(
        fr["failed_route"], 1,
        "the old minute is outside the window: {fr}"
    );
    assert_eq!(fr["delivery_ratio"], 0.7, "{fr}");
    assert_eq!(fr["receipt_latency_ms"], 1000.0, "{fr}");
    let forgotten =
        smsgate::db::route_stats::forget_older_than(&smsgate::db::Db::direct(pool.clone()), 3600)
            .await
            .expect("forget");
    assert_eq!(forgotten, 1, "only the minute past the window");
}

#[tokio::test]
async fn the_stats_need_the_admin_token() {
    let carriers = TwoCarriers::start("").await;
    crate::helpers::assert_error(stats(&carriers, None).await, 401, "unauthorized").await;
    crate::helpers::assert_error(stats(&carriers, Some("guess")).await, 401, "unauthorized").await;
    let unknown = carriers
        .app
        .client
        .get(carriers.app.url("/v1/carriers/stats?carrier=first"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("sent");
    crate::helpers::assert_error(unknown, 400, "invalid_query").await;
}

#[tokio::test]
async fn the_command_line_prints_the_same_window() {
    let carriers = TwoCarriers::start("").await;
    let (_, sid) = carriers.sent_through_first_to("+447400123456").await;
    assert_eq!(
        carriers.receipt("first", &sid, "delivered", None).await,
        204
    );
    route(&carriers, "first", "GB", &[("sent", 1), ("delivered", 1)]).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("smsgate.toml");
    std::fs::write(&config, base_config()).expect("config");
    let run = |args: &[&str]| {
        std::process::Command::new(BINARY)
            .arg("--config")
            .arg(&config)
            .args(["carriers", "stats"])
            .args(args)
            .env("DATABASE_URL", url_of(&carriers.app.pool.connect_options()))
            .output()
            .expect("smsgate runs")
    };
    let json = run(&["--json"]);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let body: Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(body["routes"][0]["carrier"], "first", "{body}");
    assert_eq!(body["routes"][0]["delivered"], 1, "{body}");
    assert_eq!(body["routes"][0]["delivery_ratio"], 1.0, "{body}");
    let output = run(&["--output", "json"]);
    let same: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(same, body, "--output json is --json");
    let table = run(&[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(
        text.contains("first") && text.contains("GB") && text.contains("1.000"),
        "{text}"
    );
}
