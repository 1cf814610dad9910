//! What a property-based fuzzer found at the public edge (issue 23, section 9): a client that
//! half-closes its side after a whole request, error bodies that quoted what was sent, NULs in
//! signed delivery receipts, and recipients or senders carrying invisible characters.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, assert_error, sms, token};
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::test_config::TestConfig;

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_answered_and_stored_once() {
    let app = TestApp::spawn().await;
    let body = sms("+14155552671").to_string();
    let request = format!(
        "POST /v1/auth0/sms HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        token(),
        body.len()
    );
    let mut stream = TcpStream::connect(app.address).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    // Nothing more will come: curl's --no-keepalive scripts and some proxies do this.
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered before the connection closed")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "answer: {answer:?}");
    assert!(answer.contains("\"id\""), "answer: {answer:?}");
    assert_eq!(
        app.count_rows("messages").await,
        1,
        "exactly one message stored"
    );
}

/// The value every refused body below carries, as a number or a string where it does not fit.
const SENT: &str = "482913";

/// POSTs `body` to `path` (with a valid token) and checks the 400 `invalid_json`: its
/// description names `field`, and no part of the value sent comes back.
async fn assert_refused_naming(app: &TestApp, path: &str, body: &Value, field: &str) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(token())
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let error = assert_error(response, 400, "invalid_json").await;
    let description = error["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(&format!("`{field}`")),
        "{field} not named in {error} (sent {body})"
    );
    for part in SENT.as_bytes().windows(3) {
        let part = std::str::from_utf8(part).unwrap_or_default();
        assert!(!error.to_string().contains(part), "{error} repeats {part}");
    }
}

#[tokio::test]
async fn ingress_refusals_name_the_field_and_never_repeat_its_value() {
    let app = TestApp::spawn().await;
    let number: u64 = SENT.parse().expect("a number");
    let cases = [
        (
            "/v1/auth0/sms",
            json!({"recipient": "+14155552671", "body": number}),
            "body",
        ),
        (
            "/v1/auth0/sms",
            json!({"recipient": [SENT], "body": "code"}),
            "recipient",
        ),
        (
            "/v1/auth0/sms",
            json!({"recipient": "+14155552671", "body": "code", "req": {"ip": number}}),
            "req.ip",
        ),
        (
            "/v1/auth0/sms",
            json!({"recipient": "+14155552671", "body": "code", "sender": {"code": SENT}}),
            "sender",
        ),
        (
            "/v1/auth0/phone-provider",
            json!({"notification": {"recipient": "+14155552671", "as_text": "code", "code": number}}),
            "notification.code",
        ),
        (
            "/v1/auth0/phone-provider",
            json!({"notification": {"recipient": "+14155552671", "as_text": [SENT]}}),
            "notification.as_text",
        ),
        (
            "/v1/auth0/phone-provider",
            json!({"message_options": {"recipient": number, "text": "code"}}),
            "message_options.recipient",
        ),
        (
            "/v1/auth0/phone-provider",
            json!({"message_options": {"recipient": "+14155552671", "text": "code"}, "request": {"user_agent": number}}),
            "request.user_agent",
        ),
        (
            "/v1/auth0/phone-provider",
            json!({"notification": SENT}),
            "notification",
        ),
    ];
    for (path, body, field) in &cases {
        assert_refused_naming(&app, path, body, field).await;
    }
    assert_eq!(
        app.stored_rows().await,
        0,
        "a refused request stored something"
    );
}

#[tokio::test]
async fn delivery_report_refusals_name_the_field_and_never_repeat_its_value() {
    let standin = MessageMediaStandIn::start().await;
    let table = format!(
        "{}public_url = \"https://sms.example.com\"\ncallback_secret = \"mm-key-0123456789\"\n",
        standin.carrier_toml("mm")
    );
    let app = TestApp::spawn_with(&TestConfig::base().only_carrier(&table, "mm")).await;
    let number: u64 = SENT.parse().expect("a number");
    let path = "/v1/callbacks/messagemedia/mm?key=mm-key-0123456789";
    for (body, field) in [
        (
            json!({"message_id": number, "status": "delivered"}),
            "message_id",
        ),
        (json!({"message_id": "m-1", "status": [SENT]}), "status"),
        (
            json!({"message_id": "m-1", "status": "failed", "error_code": number}),
            "error_code",
        ),
    ] {
        assert_refused_naming(&app, path, &body, field).await;
    }
    assert_eq!(
        app.count_rows("delivery_receipts").await,
        0,
        "nothing recorded"
    );
}

#[tokio::test]
async fn recipients_with_invisible_or_stray_characters_are_refused_and_store_nothing() {
    let app = TestApp::spawn().await;
    for recipient in [
        "+44 7911\u{200b}123456",
        "+44 7911\u{202e}123456",
        "+44 7911 123456\u{feff}",
        "+44 7911 123456 \u{1f4de}",
        "+44 7911*123456",
        "+44 7911 123456)",
        "+44 (7911 123456",
    ] {
        let response = app.post_sms(Some(&token()), &sms(recipient)).await;
        crate::helpers::assert_status(&response, 400, &format!("{recipient:?}"));
        assert_error(response, 400, "invalid_recipient").await;
    }
    assert_eq!(
        app.stored_rows().await,
        0,
        "a refused request stored something"
    );
}

#[tokio::test]
async fn recipients_with_spaces_dashes_dots_and_parentheses_are_accepted_as_e164() {
    let app = TestApp::spawn().await;
    for recipient in [
        "+44 7911 123456",
        "+44-7911-123456",
        "+44.7911.123456",
        "+44 (0)7911 123456",
        "+(44) 7911-123.456",
    ] {
        let response = app.post_sms(Some(&token()), &sms(recipient)).await;
        crate::helpers::assert_status(&response, 200, &format!("{recipient:?}"));
    }
    let stored: Vec<String> = sqlx::query_scalar("SELECT DISTINCT recipient FROM messages")
        .fetch_all(&app.pool)
        .await
        .expect("recipients");
    assert_eq!(stored, ["+447911123456"]);
}

#[tokio::test]
async fn a_trunk_prefix_written_after_the_calling_code_is_refused_saying_so() {
    let app = TestApp::spawn().await;

    let response = app.post_sms(Some(&token()), &sms("+440 7911123456")).await;

    crate::helpers::assert_error_saying(response, 400, "invalid_recipient", "(0)").await;
    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn senders_with_control_or_bidi_characters_are_refused_and_store_nothing() {
    let app = TestApp::spawn().await;
    let bidi = [
        '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{0}', '\u{1b}', '\u{85}',
    ];
    for c in bidi {
        let mut legacy = sms("+14155552671");
        legacy["sender"] = json!(format!("MyBank{c}knaBlive"));
        let response = app.post_sms(Some(&token()), &legacy).await;
        crate::helpers::assert_status(&response, 400, &format!("legacy {c:?}"));
        assert_error(response, 400, "invalid_sender").await;
        let mut action = crate::actions::notification("+14155552671", "482913");
        action["notification"]["from"] = json!(format!("+1500{c}5550006"));
        let response = crate::actions::post(&app, &action, None, Some(&token())).await;
        crate::helpers::assert_status(&response, 400, &format!("action {c:?}"));
        assert_error(response, 400, "invalid_sender").await;
    }
    assert_eq!(
        app.stored_rows().await,
        0,
        "a refused request stored something"
    );
    // Plain letters, digits and spaces are still a sender.
    let mut legacy = sms("+14155552671");
    legacy["sender"] = json!("My Bank 24");
    let response = app.post_sms(Some(&token()), &legacy).await;
    crate::helpers::assert_status(&response, 200, "a plain sender");
}
