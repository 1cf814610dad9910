//! The body contract of `POST /v1/auth0/sms` and what a 200 guarantees.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, sms, token};
use crate::test_config::TestConfig;

#[derive(sqlx::FromRow)]
struct StoredMessage {
    recipient: String,
    body: String,
    sender: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
    signer: Option<String>,
    status: String,
    ttl_seconds: f64,
    queue_rows: i64,
}

#[tokio::test]
async fn a_signed_request_is_committed_before_the_200() {
    let app = TestApp::spawn().await;

    let response = app.post_sms(Some(&token()), &sms("+44 7911 123456")).await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    let id = body["id"].as_str().expect("id in the answer");
    let row: StoredMessage = sqlx::query_as(
        "SELECT m.recipient, m.body, m.sender, host(m.client_ip) AS client_ip, m.user_agent,
                m.signer, m.status,
                extract(epoch FROM m.expires_at - m.created_at)::float8 AS ttl_seconds,
                (SELECT count(*) FROM message_queue q WHERE q.message_id = m.id) AS queue_rows
         FROM messages m WHERE m.id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("the acknowledged message is in the database");
    assert_eq!(row.recipient, "+447911123456", "recipient stored in E.164");
    assert_eq!(row.body, "Your verification code is: 123456");
    assert_eq!(row.sender.as_deref(), Some("+15555555555"));
    assert_eq!(row.client_ip.as_deref(), Some("167.56.227.117"));
    assert_eq!(row.user_agent.as_deref(), Some("Mozilla/5.0 (test)"));
    assert_eq!(row.signer.as_deref(), Some("primary"));
    assert_eq!(row.status, "queued");
    assert_eq!(
        row.ttl_seconds, 300.0,
        "expires = created + message_ttl_seconds"
    );
    assert_eq!(row.queue_rows, 1, "one queue entry");
}

#[tokio::test]
async fn sender_and_req_are_optional_and_unknown_fields_are_ignored() {
    let app = TestApp::spawn().await;
    let body = json!({"recipient": "+14155552671", "body": "Code: 4321", "extra": {"x": 1}, "sender": null});

    let response = app.post_sms(Some(&token()), &body).await;

    assert_eq!(response.status().as_u16(), 200);
    let (sender, ip): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT sender, host(client_ip) FROM messages")
            .fetch_one(&app.pool)
            .await
            .expect("stored");
    assert_eq!((sender, ip), (None, None));
}

#[tokio::test]
async fn the_message_ttl_comes_from_the_configuration() {
    let config = TestConfig::base().set("dispatch.message_ttl_seconds", 120);
    let app = TestApp::spawn_with(&config).await;

    let response = app.post_sms(Some(&token()), &sms("+14155552671")).await;

    assert_eq!(response.status().as_u16(), 200);
    let ttl: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - created_at)::float8 FROM messages",
    )
    .fetch_one(&app.pool)
    .await
    .expect("stored");
    assert_eq!(ttl, 120.0);
}

/// Sends `body` with a valid token and expects a 400 with `code`, and nothing stored.
async fn assert_invalid(body: Value, code: &str) {
    let app = TestApp::spawn().await;
    let response = app.post_sms(Some(&token()), &body).await;
    crate::helpers::assert_status(&response, 400, &format!("status for {body}"));
    assert_error(response, 400, code).await;
    assert_eq!(app.stored_rows().await, 0, "nothing stored for {body}");
}

#[tokio::test]
async fn a_recipient_that_is_not_a_possible_number_is_refused() {
    assert_invalid(sms("+1 399 999"), "invalid_recipient").await;
    assert_invalid(sms("07911 123456"), "invalid_recipient").await;
    assert_invalid(sms("not a number"), "invalid_recipient").await;
    assert_invalid(sms(""), "invalid_recipient").await;
}

#[tokio::test]
async fn an_empty_or_overlong_body_is_refused() {
    let mut body = sms("+14155552671");
    body["body"] = json!("   ");
    assert_invalid(body.clone(), "invalid_body").await;
    body["body"] = json!("x".repeat(1601));
    assert_invalid(body.clone(), "invalid_body").await;
    body["body"] = json!("code\u{0}123");
    assert_invalid(body, "invalid_body").await;
}

#[tokio::test]
async fn a_body_of_exactly_1600_characters_is_accepted() {
    let app = TestApp::spawn().await;
    let mut body = sms("+14155552671");
    body["body"] = json!("é".repeat(1600));

    let response = app.post_sms(Some(&token()), &body).await;

    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn a_bad_sender_or_request_info_is_refused() {
    let mut body = sms("+14155552671");
    body["sender"] = json!("x".repeat(129));
    assert_invalid(body, "invalid_sender").await;
    let mut body = sms("+14155552671");
    body["req"]["ip"] = json!("not-an-ip");
    assert_invalid(body, "invalid_request_info").await;
    let mut body = sms("+14155552671");
    body["req"]["user-agent"] = json!("a\u{0}b");
    assert_invalid(body, "invalid_request_info").await;
}

#[tokio::test]
async fn missing_fields_and_wrong_types_are_refused() {
    assert_invalid(json!({"body": "code 1"}), "invalid_json").await;
    assert_invalid(json!({"recipient": "+14155552671"}), "invalid_json").await;
    assert_invalid(
        json!({"recipient": 14155552671_u64, "body": "code 1"}),
        "invalid_json",
    )
    .await;
    assert_invalid(json!(["+14155552671", "code 1"]), "invalid_json").await;
}

#[tokio::test]
async fn malformed_json_is_refused() {
    let app = TestApp::spawn().await;

    let response = app
        .signed_post()
        .header("content-type", "application/json")
        .body(r#"{"recipient": "+14155552671", "body": "#)
        .send()
        .await
        .expect("sent");

    app.assert_refused(response, 400, "invalid_json").await;
}

#[tokio::test]
async fn a_non_json_content_type_is_refused_with_415() {
    let app = TestApp::spawn().await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = app.signed_post().body(sms("+14155552671").to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.expect("sent");
        assert_error(response, 415, "unsupported_media_type").await;
    }
    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn a_json_content_type_with_a_charset_is_accepted() {
    let app = TestApp::spawn().await;

    let response = app
        .signed_post()
        .header("content-type", "application/json; charset=utf-8")
        .body(sms("+14155552671").to_string())
        .send()
        .await
        .expect("sent");

    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn a_body_over_16_kib_is_refused_with_413() {
    let app = TestApp::spawn().await;
    let mut body = sms("+14155552671");
    body["padding"] = json!("x".repeat(17 * 1024));

    let declared = app.post_sms(Some(&token()), &body).await;
    assert_error(declared, 413, "payload_too_large").await;

    // Chunked, so no Content-Length announces the size: the limit holds while reading.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(body.to_string()[..9000].to_string()),
        Ok(body.to_string()[9000..].to_string()),
    ];
    let streamed = app
        .signed_post()
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("sent");
    app.assert_refused(streamed, 413, "payload_too_large").await;
}

#[tokio::test]
async fn a_database_that_cannot_commit_gets_503_and_the_gateway_recovers() {
    let app = TestApp::spawn().await;
    let admin = crate::helpers::server_admin().await;
    let block = format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", app.database);
    sqlx::query(sqlx::AssertSqlSafe(block))
        .execute(&admin)
        .await
        .expect("block");
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(&app.database)
        .execute(&admin)
        .await
        .expect("terminate");

    let response = app.post_sms(Some(&token()), &sms("+14155552671")).await;
    assert_error(response, 503, "temporarily_unavailable").await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status().as_u16(), 503);

    let unblock = format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", app.database);
    sqlx::query(sqlx::AssertSqlSafe(unblock))
        .execute(&admin)
        .await
        .expect("unblock");
    let pool = sqlx::PgPool::connect_with(app.pool.connect_options().as_ref().clone())
        .await
        .expect("reconnect");
    assert_eq!(
        smsgate::db::messages::count(&smsgate::db::Db::direct(pool.clone()))
            .await
            .expect("count"),
        0,
        "nothing half-stored"
    );

    let response = app.post_sms(Some(&token()), &sms("+14155552671")).await;
    crate::helpers::assert_status(&response, 200, "recovered without a restart");
}

#[tokio::test]
async fn concurrent_requests_share_commits_and_each_is_answered_after_its_own() {
    let app = TestApp::spawn().await;
    let requests = (0..100).map(|i| {
        let app = &app;
        async move {
            let response = app
                .post_sms(Some(&token()), &sms(&format!("+1415555{:04}", 4000 + i)))
                .await;
            assert_eq!(response.status().as_u16(), 200);
            let body: Value = response.json().await.expect("JSON");
            body["id"].as_str().expect("id").to_string()
        }
    });
    let ids = futures_util::future::join_all(requests).await;

    // Every acknowledged id is committed, and rows share transactions (same xmin).
    let (stored, transactions): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text) FROM messages WHERE id::text = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(stored, 100);
    assert!(
        transactions < 100,
        "group commit: {transactions} transactions for 100 requests"
    );
}

#[tokio::test]
async fn control_characters_in_any_field_are_refused() {
    for (field, value, code) in [
        ("recipient", "+1415\u{7}5552671", "invalid_recipient"),
        ("recipient", "+14155552671\u{0}", "invalid_recipient"),
        ("sender", "\u{1b}[31mBANK", "invalid_sender"),
        ("body", "code\u{0}", "invalid_body"),
    ] {
        let mut body = sms("+14155552671");
        body[field] = json!(value);
        assert_invalid(body, code).await;
    }
    let mut body = sms("+14155552671");
    body["req"]["ip"] = json!("10.0.0.1\u{0}");
    assert_invalid(body, "invalid_request_info").await;
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_refused() {
    let app = TestApp::spawn().await;
    let mut bytes = br#"{"recipient":"+14155552671","body":"code "#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe]);
    bytes.extend_from_slice(br#""}"#);

    let response = app
        .signed_post()
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .expect("sent");

    app.assert_refused(response, 400, "invalid_json").await;
}
