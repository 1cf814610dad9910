//! SMS-pumping defences at the ingress: limits per client IP and per number (exact across
//! processes), a cap on a signer's requests in flight, the destination policy and
//! `require_request_info`. Every refusal answers 429 or 403 with an Auth0-style body, stores
//! nothing and is counted.

use serde_json::{Value, json};
use smsgate::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, assert_error, token};
use crate::observability::sample;
use crate::test_config::TestConfig;

pub fn from_ip(recipient: &str, ip: &str) -> Value {
    json!({
        "recipient": recipient,
        "body": "Your verification code is: 123456",
        "req": {"ip": ip, "user-agent": "Mozilla/5.0 (test)"}
    })
}

async fn messages_to(app: &TestApp, recipient: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE recipient = $1")
        .bind(recipient)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

async fn outcome_count(app: &TestApp, outcome: &str) -> f64 {
    let series = format!("smsgate_ingress_requests_total{{outcome=\"{outcome}\"}}");
    sample(&app.metrics().await, &series).unwrap_or(-1.0)
}

/// Sends every body at once, alternating between the two processes; returns the statuses.
pub async fn burst(apps: [&TestApp; 2], bodies: Vec<Value>) -> Vec<u16> {
    let token = token();
    let requests = bodies.iter().enumerate().map(|(i, body)| {
        let app = apps[i % 2];
        let token = token.clone();
        async move { app.post_sms(Some(&token), body).await.status().as_u16() }
    });
    futures_util::future::join_all(requests).await
}

/// The `Retry-After` of a 429, in seconds.
pub fn retry_after(response: &reqwest::Response) -> i64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After on a 429")
}

pub fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Fills the `left` requests a sliced limit has left: a burst (`send(round)`, fresh numbers
/// each round), then a wait until the slices it left are given back (`given_back`), again
/// until `left` are stored. A burst may be refused early by what another writer or process
/// holds unused (docs/guarantees.md), never past the limit; by at most `early_at_most` in the
/// first burst, when given. Returns how many were stored.
pub async fn fill_in_bursts(
    left: usize,
    early_at_most: Option<usize>,
    send: impl AsyncFn(usize) -> Vec<u16>,
    given_back: impl AsyncFn() -> bool,
) -> usize {
    let mut stored = 0;
    for round in 0..5 {
        let statuses = send(round).await;
        assert!(
            statuses.iter().all(|s| *s == 200 || *s == 429),
            "{statuses:?}"
        );
        stored += count(&statuses, 200);
        assert!(stored <= left, "{stored} stored where {left} were left");
        if round == 0
            && let Some(early) = early_at_most
        {
            assert!(
                stored + early >= left,
                "the first burst stored {stored} of the {left} left: {statuses:?}"
            );
        }
        crate::dispatch::wait_until(
            "the slices given back",
            std::time::Duration::from_secs(15),
            &given_back,
        )
        .await;
        if stored == left {
            break;
        }
    }
    stored
}

#[tokio::test]
async fn an_ip_limit_holds_exactly_across_two_processes_and_refusals_store_nothing() {
    let config = TestConfig::with("[[limits.ip]]\nmax = 3\nwindow_seconds = 3600\n");
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;
    let bodies = (0..12)
        .map(|i| from_ip(&format!("+1415555{:04}", 2000 + i), "198.51.100.7"))
        .collect();

    let statuses = burst([&first, &second], bodies).await;

    assert_eq!(count(&statuses, 200), 3, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 9, "{statuses:?}");
    assert_eq!(
        first.count_rows("messages").await,
        3,
        "refused requests stored nothing"
    );
    let refused = first
        .post_sms(Some(&token()), &from_ip("+14155559999", "198.51.100.7"))
        .await;
    let retry_after = retry_after(&refused);
    // The window's first bucket (a minute wide) leaves it an hour after it began.
    assert!((3500..=3660).contains(&retry_after), "{retry_after}");
    crate::helpers::assert_error_saying(refused, 429, "too_many_requests", "client IP").await;
    let other_ip = first
        .post_sms(Some(&token()), &from_ip("+14155559999", "198.51.100.8"))
        .await;
    crate::helpers::assert_status(&other_ip, 200, "another client is not affected");
    let refused_here = outcome_count(&first, "rate_limited").await;
    let refused_there = outcome_count(&second, "rate_limited").await;
    assert_eq!(refused_here + refused_there, 10.0, "every refusal counted");
}

#[tokio::test]
async fn ipv6_clients_share_a_limit_per_64_prefix() {
    let config = TestConfig::with("[[limits.ip]]\nmax = 1\nwindow_seconds = 60\n");
    let app = TestApp::spawn_with(&config).await;

    let first = app
        .post_sms(Some(&token()), &from_ip("+14155552001", "2001:db8:7:1::1"))
        .await;
    let same_64 = app
        .post_sms(
            Some(&token()),
            &from_ip("+14155552002", "2001:db8:7:1:ffff::2"),
        )
        .await;
    let other_64 = app
        .post_sms(Some(&token()), &from_ip("+14155552003", "2001:db8:7:2::1"))
        .await;

    assert_eq!(first.status().as_u16(), 200);
    assert_error(same_64, 429, "too_many_requests").await;
    assert_eq!(other_64.status().as_u16(), 200);
    assert_eq!(app.count_rows("messages").await, 2);
}

#[tokio::test]
async fn an_ingress_recipient_cap_holds_exactly_across_two_processes() {
    let config = TestConfig::with("[[limits.ingress_recipient]]\nmax = 2\nwindow_seconds = 600\n");
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;
    let bodies = (0..8)
        .map(|i| from_ip("+14155552671", &format!("203.0.113.{i}")))
        .collect();

    let statuses = burst([&first, &second], bodies).await;

    assert_eq!(count(&statuses, 200), 2, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 6, "{statuses:?}");
    assert_eq!(messages_to(&first, "+14155552671").await, 2);
    let refused = first
        .post_sms(Some(&token()), &from_ip("+1 415 555 2671", "203.0.113.99"))
        .await;
    crate::helpers::assert_error_saying(refused, 429, "too_many_requests", "this number").await;
    let other = first
        .post_sms(Some(&token()), &from_ip("+14155552672", "203.0.113.99"))
        .await;
    crate::helpers::assert_status(&other, 200, "another number is not affected");
}

#[tokio::test]
async fn a_request_refused_by_one_limit_does_not_count_against_the_other() {
    let config = TestConfig::with_limits(&[("ip", 2, 600), ("ingress_recipient", 1, 600)]);
    let app = TestApp::spawn_with(&config).await;
    let ip = "192.0.2.10";
    let post = |recipient: &'static str| {
        let app = &app;
        async move {
            app.post_sms(Some(&token()), &from_ip(recipient, ip))
                .await
                .status()
                .as_u16()
        }
    };

    assert_eq!(post("+14155550001").await, 200);
    assert_eq!(post("+14155550001").await, 429, "the number's cap");
    assert_eq!(
        post("+14155550002").await,
        200,
        "the refused request did not use the IP's second slot"
    );
    assert_eq!(
        post("+14155550003").await,
        429,
        "now the IP's window is full"
    );
    assert_eq!(app.count_rows("messages").await, 2);
}

#[tokio::test]
async fn the_destination_policy_refuses_with_403_and_stores_nothing() {
    let config = TestConfig::with(
        "[destinations]\nmobile_only = true\nblocked_countries = [\"DE\"]\n\
         blocked_prefixes = [\"+4475\"]\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let cases = [
        ("+449012345678", "premium-rate"),
        ("+34901123456", "shared-cost"),
        ("+441212345678", "fixed line"),
        ("+4915123456789", "country DE"),
        ("+447512345678", "+4475"),
    ];

    for (recipient, reason) in cases {
        let response = app
            .post_sms(Some(&token()), &from_ip(recipient, "192.0.2.1"))
            .await;
        crate::helpers::assert_error_saying(response, 403, "destination_blocked", reason).await;
    }

    assert_eq!(app.stored_rows().await, 0, "nothing stored");
    assert_eq!(outcome_count(&app, "blocked").await, 5.0);
    let mobile = app
        .post_sms(Some(&token()), &from_ip("+447400123456", "192.0.2.1"))
        .await;
    crate::helpers::assert_status(&mobile, 200, "a GB mobile number passes");
}

#[tokio::test]
async fn allowed_countries_refuse_every_other_country() {
    let config = TestConfig::with("[destinations]\nallowed_countries = [\"US\", \"CA\"]\n");
    let app = TestApp::spawn_with(&config).await;

    let us = app
        .post_sms(Some(&token()), &from_ip("+12015550123", "192.0.2.1"))
        .await;
    let gb = app
        .post_sms(Some(&token()), &from_ip("+447400123456", "192.0.2.1"))
        .await;

    assert_eq!(us.status().as_u16(), 200);
    crate::helpers::assert_error_saying(gb, 403, "destination_blocked", "GB").await;
    assert_eq!(app.count_rows("messages").await, 1);
}

#[tokio::test]
async fn require_request_info_refuses_requests_without_a_client_ip() {
    let config = TestConfig::base().set("server.require_request_info", true);
    let app = TestApp::spawn_with(&config).await;
    let without_req = json!({"recipient": "+14155552671", "body": "Code: 1"});
    let without_ip = json!({"recipient": "+14155552671", "body": "Code: 1",
                            "req": {"user-agent": "Mozilla/5.0"}});

    for body in [without_req, without_ip] {
        let response = app.post_sms(Some(&token()), &body).await;
        assert_error(response, 400, "missing_request_info").await;
    }

    assert_eq!(app.stored_rows().await, 0);
    let with_ip = app
        .post_sms(Some(&token()), &from_ip("+14155552671", "192.0.2.1"))
        .await;
    assert_eq!(with_ip.status().as_u16(), 200);
}

/// Opens a request whose body never finishes, so it holds its signer's slot.
async fn hold_a_request_open(app: &TestApp) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(app.address)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/auth0/sms HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"recipient\":",
        token()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn a_signer_over_max_in_flight_gets_429_until_a_slot_frees() {
    let config = TestConfig::base().set("limits.max_in_flight", 1);
    let app = TestApp::spawn_with(&config).await;
    let mut held = hold_a_request_open(&app).await;
    crate::helpers::until_metric(&app, "smsgate_ingress_in_flight{signer=\"primary\"}", 1.0).await;

    let second = app
        .post_sms(Some(&token()), &from_ip("+14155552671", "192.0.2.1"))
        .await;
    app.assert_refused(second, 429, "too_many_requests").await;

    // Finishing the held request frees the slot.
    let rest = r#""+14155552672","body":"Code: 1"}"#;
    let padding = 200 - r#"{"recipient":"#.len() - rest.len();
    held.write_all(format!("{rest}{}", " ".repeat(padding)).as_bytes())
        .await
        .expect("write");
    let mut answer = vec![0; 1024];
    let read = held.read(&mut answer).await.expect("read");
    assert!(
        String::from_utf8_lossy(&answer[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..read])
    );
    let third = app
        .post_sms(Some(&token()), &from_ip("+14155552673", "192.0.2.1"))
        .await;
    assert_eq!(third.status().as_u16(), 200);
    assert_eq!(outcome_count(&app, "rate_limited").await, 1.0);
}
