//! `POST /v1/auth0/phone-provider`: the custom-phone-provider and send-phone-message Action
//! shapes, the same token check as the legacy endpoint, voice refused, and idempotency for the
//! Action's retries.

use std::time::Duration;

use serde_json::{Value, json};

use crate::dispatch::{FAST_DISPATCH, wait_final};
use crate::helpers::{TestApp, assert_error, base_config, token};
use crate::standins::twilio::TwilioStandIn;
use crate::test_config::TestConfig;

pub fn notification(recipient: &str, code: &str) -> Value {
    json!({
        "notification": {
            "recipient": recipient,
            "as_text": format!("Your verification code is {code}"),
            "as_voice": format!("Your code is {code}"),
            "delivery_method": "text",
            "message_type": "otp_verify",
            "code": code,
            "locale": "en_US",
            "from": "+15005550006"
        },
        "request": {"ip": "203.0.113.9", "user_agent": "Mozilla/5.0 (action)",
                    "geoip": {"countryCode": "US"}}
    })
}

fn message_options(recipient: &str, code: &str) -> Value {
    json!({
        "message_options": {
            "recipient": recipient,
            "text": format!("Your MFA code is {code}"),
            "code": code,
            "message_type": "sms",
            "action": "second-factor-authentication"
        },
        "request": {"ip": "198.51.100.4", "user_agent": "Mozilla/5.0 (mfa)"}
    })
}

pub async fn post(
    app: &TestApp,
    body: &Value,
    key: Option<&str>,
    bearer: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/auth0/phone-provider"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("sent")
}

/// Posts `body` with a valid token and returns the accepted message's id.
async fn queued_id(app: &TestApp, body: &Value) -> String {
    accepted_id(post(app, body, None, Some(&token())).await).await
}

async fn accepted_id(response: reqwest::Response) -> String {
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    body["id"].as_str().expect("id").to_string()
}

#[derive(sqlx::FromRow, Debug)]
struct Stored {
    recipient: String,
    body: String,
    sender: Option<String>,
    client_ip: Option<String>,
    user_agent: Option<String>,
}

async fn stored(app: &TestApp, id: &str) -> Stored {
    sqlx::query_as(
        "SELECT recipient, body, sender, host(client_ip) AS client_ip, user_agent
         FROM messages WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .expect("stored")
}

#[tokio::test]
async fn a_custom_phone_provider_notification_is_queued_like_a_legacy_message() {
    let app = TestApp::spawn().await;

    let id = queued_id(&app, &notification("+1 415 555 2671", "482913")).await;

    let row = stored(&app, &id).await;
    assert_eq!(row.recipient, "+14155552671");
    assert_eq!(row.body, "Your verification code is 482913");
    assert_eq!(row.sender.as_deref(), Some("+15005550006"));
    assert_eq!(row.client_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(row.user_agent.as_deref(), Some("Mozilla/5.0 (action)"));
}

#[tokio::test]
async fn a_send_phone_message_request_is_queued() {
    let app = TestApp::spawn().await;

    let id = queued_id(&app, &message_options("+447911123456", "550122")).await;

    let row = stored(&app, &id).await;
    assert_eq!(row.recipient, "+447911123456");
    assert_eq!(row.body, "Your MFA code is 550122");
    assert_eq!(row.client_ip.as_deref(), Some("198.51.100.4"));
}

#[tokio::test]
async fn the_same_token_rules_apply_and_refusals_store_nothing() {
    let app = TestApp::spawn().await;

    assert_error(
        post(&app, &notification("+14155552671", "1"), None, None).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        post(
            &app,
            &notification("+14155552671", "1"),
            None,
            Some("not.a.jwt"),
        )
        .await,
        401,
        "invalid_token",
    )
    .await;

    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn voice_is_refused_with_a_clear_error() {
    let app = TestApp::spawn().await;
    let mut by_notification = notification("+14155552671", "123456");
    by_notification["notification"]["delivery_method"] = json!("voice");
    let mut by_options = message_options("+14155552671", "123456");
    by_options["message_options"]["message_type"] = json!("voice");

    for body in [by_notification, by_options] {
        let response = post(&app, &body, None, Some(&token())).await;
        crate::helpers::assert_error_saying(response, 400, "voice_not_supported", "voice").await;
    }

    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn unknown_or_ambiguous_shapes_and_bad_fields_are_refused() {
    let app = TestApp::spawn().await;
    let mut both = notification("+14155552671", "1");
    both["message_options"] = message_options("+14155552671", "1")["message_options"].clone();
    let mut no_text = notification("+14155552671", "1");
    no_text["notification"]
        .as_object_mut()
        .map(|n| n.remove("as_text"));
    let cases = [
        (
            json!({"recipient": "+14155552671", "body": "legacy shape"}),
            "invalid_json",
        ),
        (both, "invalid_json"),
        (no_text, "invalid_body"),
        (notification("not a number", "1"), "invalid_recipient"),
        (
            json!({"notification": {"recipient": 14155552671u64}}),
            "invalid_json",
        ),
    ];

    for (body, code) in cases {
        assert_error(post(&app, &body, None, Some(&token())).await, 400, code).await;
    }

    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn a_retried_notification_is_the_same_message() {
    let app = TestApp::spawn().await;
    let first = queued_id(&app, &notification("+14155552671", "777001")).await;

    // The Action runs again with the same event (api.notification.retry): same derived key.
    let retried = queued_id(&app, &notification("+14155552671", "777001")).await;
    let new_code = queued_id(&app, &notification("+14155552671", "777002")).await;

    assert_eq!(retried, first);
    assert_ne!(new_code, first);
    assert_eq!(app.count_rows("messages").await, 2);
    let queued: i64 = app.count_rows("message_queue").await;
    assert_eq!(queued, 2, "one queue entry per message, none for the retry");
}

#[tokio::test]
async fn an_idempotency_key_header_holds_even_under_concurrent_retries() {
    let app = TestApp::spawn().await;
    let body = message_options("+14155552671", "900100");
    let token = token();
    let requests = (0..12).map(|_| post(&app, &body, Some("txn-4f1c9a"), Some(&token)));

    let answers = futures_util::future::join_all(requests).await;

    let mut ids = Vec::new();
    for answer in answers {
        ids.push(accepted_id(answer).await);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every retry got the first message's id");
    assert_eq!(app.count_rows("messages").await, 1);
}

async fn post_legacy(app: &TestApp, recipient: &str, key: &str) -> reqwest::Response {
    app.signed_post()
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(crate::helpers::sms(recipient).to_string())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn a_key_reused_for_a_different_message_is_refused_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let first = accepted_id(post_legacy(&app, "+14155552671", "login-77").await).await;
    // The legacy endpoint honours the header too: the same request again is the same message.
    let again = accepted_id(post_legacy(&app, "+14155552671", "login-77").await).await;
    assert_eq!(again, first);

    // The same key for another number would silently drop that message: refused instead.
    let other = post_legacy(&app, "+14155552672", "login-77").await;
    crate::helpers::assert_error(other, 422, "idempotency_key_reused").await;
    let across = post(
        &app,
        &message_options("+14155552671", "123456"),
        Some("login-77"),
        Some(&token()),
    )
    .await;
    crate::helpers::assert_error(across, 422, "idempotency_key_reused").await;

    assert_eq!(app.count_rows("messages").await, 1);
}

#[tokio::test]
async fn an_unusable_idempotency_key_is_refused() {
    let app = TestApp::spawn().await;
    let long = "k".repeat(256);

    for key in [long.as_str(), "has space", ""] {
        let response = post(
            &app,
            &notification("+14155552671", "1"),
            Some(key),
            Some(&token()),
        )
        .await;
        assert_error(response, 400, "invalid_idempotency_key").await;
    }

    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn the_route_is_served_only_by_ingress_processes() {
    let config = base_config();
    let worker = TestApp::spawn_role(&config, smsgate::Role::Worker).await;
    let response = post(
        &worker,
        &notification("+14155552671", "1"),
        None,
        Some(&token()),
    )
    .await;
    assert_eq!(response.status().as_u16(), 404);
}

/// Runs one of the shipped Actions (`examples/auth0-actions/`) with Node against the gateway,
/// as Auth0 would: returns what the handler did (`ok`, `error`, and its `retry`/`drop` calls).
/// `None` when Node is not installed here (CI installs it and sets CI, which makes it required).
pub fn run_action(file: &str, event: &Value) -> Option<Value> {
    const HARNESS: &str = r#"
        const action = require(process.argv[1]);
        const event = JSON.parse(process.argv[2]);
        const calls = [];
        const api = { notification: {
            retry: (reason) => calls.push(['retry', reason]),
            drop: (reason) => calls.push(['drop', reason]) } };
        const handler = action.onExecuteCustomPhoneProvider || action.onExecuteSendPhoneMessage
            || action.onExecutePostLogin;
        handler(event, api).then(
            () => console.log(JSON.stringify({ ok: true, calls })),
            (err) => console.log(JSON.stringify({ ok: false, error: err.message, calls })));
    "#;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/auth0-actions")
        .join(file);
    let output = match std::process::Command::new("node")
        .arg("-e")
        .arg(HARNESS)
        .arg(&path)
        .arg(event.to_string())
        .output()
    {
        Ok(output) => output,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("node is not installed: the Actions were not run");
            return None;
        }
        Err(err) => panic!("node is required in CI: {err}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    // The handler's own console lines come first; the harness's verdict is the last line.
    let verdict = stdout.trim().lines().last().unwrap_or_default();
    Some(serde_json::from_str(verdict).unwrap_or_else(|_| {
        panic!(
            "the harness printed {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    }))
}

fn secrets(app: &TestApp, secret: &str) -> Value {
    json!({
        "SMSGATE_URL": app.url("/v1/auth0/phone-provider"),
        "SMSGATE_SECRET": secret,
        "SMSGATE_AUDIENCE": crate::helpers::AUDIENCE,
        "SMSGATE_SUBJECT": crate::helpers::SUBJECT,
    })
}

#[tokio::test]
async fn the_shipped_custom_phone_provider_action_queues_once_however_often_it_runs() {
    let app = TestApp::spawn().await;
    let mut event = notification("+14155552671", "640112");
    event["secrets"] = secrets(&app, crate::helpers::SECRET);
    event["transaction"] = json!({"correlation_id": "corr-1"});

    let Some(first) = tokio::task::spawn_blocking({
        let event = event.clone();
        move || run_action("custom-phone-provider.js", &event)
    })
    .await
    .expect("ran") else {
        return;
    };
    let again = tokio::task::spawn_blocking(move || run_action("custom-phone-provider.js", &event))
        .await
        .expect("ran")
        .expect("node");

    assert_eq!(first, json!({"ok": true, "calls": []}));
    assert_eq!(again, json!({"ok": true, "calls": []}));
    assert_eq!(
        app.count_rows("messages").await,
        1,
        "the retried run is the same message"
    );
    let body: String = sqlx::query_scalar("SELECT body FROM messages")
        .fetch_one(&app.pool)
        .await
        .expect("stored");
    assert_eq!(body, "Your verification code is 640112");
}

#[tokio::test]
async fn the_shipped_custom_phone_provider_action_places_a_call_that_speaks_the_voice_text() {
    let twilio = TwilioStandIn::start().await;
    let config = TestConfig::base()
        .only_carrier(&twilio.carrier_toml("twilio"), "twilio")
        .merge(FAST_DISPATCH);
    let app = TestApp::spawn_role(&config, smsgate::Role::All).await;
    let mut text = notification("+14155552671", "640113");
    text["secrets"] = secrets(&app, crate::helpers::SECRET);
    text["transaction"] = json!({"correlation_id": "corr-voice"});
    // Auth0 falls back to a call for the same code: the same event but the delivery method.
    let mut voice = text.clone();
    voice["notification"]["delivery_method"] = json!("voice");

    let Some(texted) =
        tokio::task::spawn_blocking(move || run_action("custom-phone-provider.js", &text))
            .await
            .expect("ran")
    else {
        return;
    };
    let called =
        tokio::task::spawn_blocking(move || run_action("custom-phone-provider.js", &voice))
            .await
            .expect("ran")
            .expect("node");

    assert_eq!(texted, json!({"ok": true, "calls": []}));
    assert_eq!(called, json!({"ok": true, "calls": []}), "not a reused key");
    let id: String = sqlx::query_scalar("SELECT id::text FROM messages WHERE channel = 'voice'")
        .fetch_one(&app.pool)
        .await
        .expect("stored");
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["channel"], "voice");
    let calls: Vec<_> = twilio
        .seen()
        .into_iter()
        .filter(|seen| seen.uri.path().ends_with("/Calls.json"))
        .collect();
    assert_eq!(calls.len(), 1);
    let twiml = calls[0].fields.get("Twiml").cloned().unwrap_or_default();
    // `as_voice` ("Your code is …"), spoken digit by digit; never the SMS template.
    assert!(
        twiml.contains(">Your code is 6, 4, 0, 1, 1, 3</Say>"),
        "the call says the as_voice text: {twiml}"
    );
    assert!(!twiml.contains("verification"), "not the as_text: {twiml}");
}

#[tokio::test]
async fn the_shipped_custom_phone_provider_action_drops_what_smsgate_refuses_for_good() {
    let app = TestApp::spawn().await;
    let mut event = notification("+14155552671", "1");
    event["secrets"] = secrets(&app, "not-the-secret");

    let Some(outcome) =
        tokio::task::spawn_blocking(move || run_action("custom-phone-provider.js", &event))
            .await
            .expect("ran")
    else {
        return;
    };

    assert_eq!(outcome["ok"], true);
    assert_eq!(outcome["calls"][0][0], "drop", "{outcome}");
    assert!(
        outcome["calls"][0][1]
            .as_str()
            .is_some_and(|r| r.contains("401")),
        "{outcome}"
    );
    assert_eq!(app.stored_rows().await, 0);
}

#[tokio::test]
async fn the_shipped_send_phone_message_action_queues_and_throws_on_refusal() {
    let app = TestApp::spawn().await;
    let mut event = message_options("+447911123456", "310455");
    event["secrets"] = secrets(&app, crate::helpers::SECRET);
    let mut voice = event.clone();
    voice["message_options"]["message_type"] = json!("voice");

    let Some(sent) =
        tokio::task::spawn_blocking(move || run_action("send-phone-message.js", &event))
            .await
            .expect("ran")
    else {
        return;
    };
    let refused = tokio::task::spawn_blocking(move || run_action("send-phone-message.js", &voice))
        .await
        .expect("ran")
        .expect("node");

    assert_eq!(sent, json!({"ok": true, "calls": []}));
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("voice_not_supported")),
        "{refused}"
    );
    assert_eq!(app.count_rows("messages").await, 1);
}
