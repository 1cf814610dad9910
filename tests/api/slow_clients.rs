//! Slow and abusive clients: headers that never finish, bodies that trickle, oversized
//! headers, more connections than allowed, and a database that cannot take writes. Each is
//! answered (or cut off) within its configured bound, stores nothing, and does not stop the
//! gateway from answering everyone else.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, assert_error, sms, token};
use crate::test_config::TestConfig;

fn with_server(settings: &str) -> TestConfig {
    TestConfig::with(&format!("[server]\n{settings}\n"))
}

/// Reads until the server closes the connection or `limit` passes; returns what arrived and
/// whether the server closed it.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

#[tokio::test]
async fn slowloris_connections_are_cut_off_while_other_clients_are_served() {
    let app = TestApp::spawn_with(&with_server("header_timeout_ms = 2000")).await;
    // Twenty clients that send a header line every 200 ms and never finish.
    let mut attackers = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(app.address).await.expect("connect");
        stream
            .write_all(b"POST /v1/auth0/sms HTTP/1.1\r\nhost: x\r\n")
            .await
            .expect("write");
        attackers.push(stream);
    }
    let trickle = tokio::spawn(async move {
        let started = Instant::now();
        let mut open = attackers;
        while started.elapsed() < Duration::from_secs(3) && !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut still_open = Vec::new();
            for mut stream in open {
                if stream.write_all(b"x-slow: 1\r\n").await.is_ok() {
                    still_open.push(stream);
                }
            }
            open = still_open;
        }
        open
    });

    // Meanwhile everyone else is served at once: well before the attackers' header timeout.
    for i in 0..5 {
        let started = Instant::now();
        let response = app
            .post_sms(Some(&token()), &sms(&format!("+1415555{:04}", 3000 + i)))
            .await;
        assert_eq!(response.status().as_u16(), 200);
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
    }

    let mut survivors = trickle.await.expect("trickle task");
    // A trickling client is closed once the header timeout passes, whatever it still sends.
    for stream in &mut survivors {
        let (_, closed) = read_until_closed(stream, Duration::from_secs(2)).await;
        assert!(closed, "the server closed a slowloris connection");
    }
    assert_eq!(
        app.stored_rows().await,
        10,
        "5 messages and their queue rows only"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(&with_server("header_timeout_ms = 500")).await;
    let mut silent = TcpStream::connect(app.address).await.expect("connect");
    let started = Instant::now();

    let (_, closed) = read_until_closed(&mut silent, Duration::from_secs(3)).await;

    assert!(closed, "a silent connection is not kept open");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
    let app =
        TestApp::spawn_with(&with_server("max_connections = 2\nheader_timeout_ms = 700")).await;
    // Two silent connections take both slots; their header timeout starts after `started`.
    let started = Instant::now();
    let _first = TcpStream::connect(app.address).await.expect("connect");
    let _second = TcpStream::connect(app.address).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let response = app.post_sms(Some(&token()), &sms("+14155552671")).await;

    assert_eq!(response.status().as_u16(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "the third client is served once the silent ones are cut off: {waited:?}"
    );
}

#[tokio::test]
async fn a_trickling_body_gets_408_and_stores_nothing() {
    let app = TestApp::spawn_with(&with_server("request_timeout_ms = 600")).await;
    let body = sms("+14155552671").to_string();
    let mut stream = TcpStream::connect(app.address).await.expect("connect");
    let head = format!(
        "POST /v1/auth0/sms HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        token(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let started = Instant::now();
    // One byte every 100 ms: each frame is on time, the whole body is not.
    for byte in body.as_bytes().iter().take(20) {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(3)).await;

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: Value = serde_json::from_str(json).expect("a JSON error body");
    assert_eq!(json["error"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn oversized_headers_get_431_and_store_nothing() {
    let app = TestApp::spawn().await;
    let huge = format!("Bearer {}", "a".repeat(40 * 1024));

    let response = app
        .client
        .post(app.url("/v1/auth0/sms"))
        .header("content-type", "application/json")
        .header("authorization", huge)
        .body(sms("+14155552671").to_string())
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status().as_u16(), 431);
    assert_eq!(app.stored_rows().await, 0);
    let after = app.post_sms(Some(&token()), &sms("+14155552671")).await;
    crate::helpers::assert_status(&after, 200, "the gateway still answers");
}

#[tokio::test]
async fn with_every_connection_stuck_further_requests_get_503_quickly() {
    let config = TestConfig::base()
        .set("database.max_connections", 1)
        .set("database.ingress_writers", 2);
    let app = TestApp::spawn_with(&config).await;
    // Another session holds the table: the gateway's only connection waits behind it.
    let blocker = crate::helpers::hold_tables(&app.pool, "messages").await;
    let stuck = post_in_background(&app, "+14155550001");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();

    let burst = (0..10).map(|i| {
        let app = &app;
        async move {
            app.post_sms(Some(&token()), &sms(&format!("+1415555{:04}", 1000 + i)))
                .await
        }
    });
    let answers = futures_util::future::join_all(burst).await;

    let waited = started.elapsed();
    for answer in answers {
        assert_error(answer, 503, "temporarily_unavailable").await;
    }
    assert!(
        waited < Duration::from_secs(3),
        "answered in {waited:?}, not 30 s"
    );
    blocker.commit().await.expect("release");
    let stuck = stuck.await.expect("task");
    crate::helpers::assert_status(&stuck, 200, "the write that waited is answered truthfully");
    assert_eq!(
        app.stored_rows().await,
        2,
        "only that message and its queue row"
    );
}

/// Found by an attack: a message a writer had taken was still written after the request timed
/// out, so a 408 hid a stored (and later sent) message and Auth0's retry made a second SMS.
#[tokio::test]
async fn a_message_being_written_is_answered_with_its_write_never_a_408() {
    let app = TestApp::spawn_with(&with_server("request_timeout_ms = 800")).await;
    let blocker = crate::helpers::hold_tables(&app.pool, "messages").await;
    let posting = post_in_background(&app, "+14155552671");
    crate::helpers::until_a_session_waits_for_a_lock(&app.pool).await;
    // The span under test: the write outlives the request timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    blocker.commit().await.expect("release");

    let response = posting.await.expect("joined");
    crate::helpers::assert_status(&response, 200, "the write's own outcome");
    assert_eq!(app.count_rows("messages").await, 1);
}

/// Posts a message to `recipient` from a task of its own; the handle gives the answer.
fn post_in_background(
    app: &TestApp,
    recipient: &str,
) -> tokio::task::JoinHandle<reqwest::Response> {
    let request = crate::helpers::sms_request(&app.client, app.address, token(), recipient);
    tokio::spawn(async move { request.send().await.expect("answered") })
}
