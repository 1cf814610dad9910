//! `GET /v1/messages/{id}` behind the admin token.

use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, TestApp, assert_error, sms, token};
use crate::test_config::TestConfig;

async fn queue_one(app: &TestApp) -> String {
    let response = app.post_sms(Some(&token()), &sms("+14155552671")).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    body["id"].as_str().expect("id").to_string()
}

#[tokio::test]
async fn a_queued_message_is_shown_to_the_admin() {
    let app = TestApp::spawn().await;
    let id = queue_one(&app).await;

    let response = app.get_message(&id, Some(ADMIN_TOKEN)).await;

    assert_eq!(response.status().as_u16(), 200);
    let view: Value = response.json().await.expect("JSON");
    assert_eq!(view["id"], id.as_str());
    assert_eq!(view["status"], "queued");
    assert_eq!(view["recipient"], "+14155552671");
    assert!(view["carrier"].is_null());
    assert_eq!(view["attempts"], serde_json::json!([]));
    let created = view["created_at"].as_str().expect("created_at");
    let expires = view["expires_at"].as_str().expect("expires_at");
    let created = chrono::DateTime::parse_from_rfc3339(created).expect("RFC 3339");
    let expires = chrono::DateTime::parse_from_rfc3339(expires).expect("RFC 3339");
    assert_eq!((expires - created).num_seconds(), 300);
    assert!(view.get("body").is_none(), "the code is not shown");
}

#[tokio::test]
async fn the_status_api_needs_the_admin_token() {
    let app = TestApp::spawn().await;
    let id = queue_one(&app).await;

    assert_error(app.get_message(&id, None).await, 401, "unauthorized").await;
    assert_error(
        app.get_message(&id, Some("wrong-token")).await,
        401,
        "unauthorized",
    )
    .await;
    // A gateway token is not an admin token.
    assert_error(
        app.get_message(&id, Some(&token())).await,
        401,
        "unauthorized",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_or_malformed_id_is_404() {
    let app = TestApp::spawn().await;
    let unknown = uuid::Uuid::now_v7().to_string();

    assert_error(
        app.get_message(&unknown, Some(ADMIN_TOKEN)).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get_message("not-an-id", Some(ADMIN_TOKEN)).await,
        404,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn without_an_admin_token_the_status_api_is_disabled() {
    let config = TestConfig::base().without("admin.token");
    let app = TestApp::spawn_with(&config).await;
    let id = queue_one(&app).await;

    assert_error(
        app.get_message(&id, Some(ADMIN_TOKEN)).await,
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_canceled_message_shows_why_and_a_waiting_one_shows_no_reason() {
    let app = TestApp::spawn().await;
    let id = queue_one(&app).await;
    let waiting: Value = app
        .get_message(&id, Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .expect("JSON");
    assert!(waiting.get("reason").is_none(), "{waiting}");

    let pool = smsgate::db::Db::direct(app.pool.clone());
    let message = smsgate::domain::MessageId::parse(&id).expect("an id");
    smsgate::db::operator::cancel(&pool, message)
        .await
        .expect("database")
        .expect("waiting, so it can be canceled");

    let view: Value = app
        .get_message(&id, Some(ADMIN_TOKEN))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(view["status"], "failed");
    assert_eq!(view["reason"], "canceled by an operator", "{view}");
}

#[tokio::test]
async fn a_message_a_carrier_refused_shows_the_carrier_error_as_its_reason() {
    use crate::standins::twilio::{Reply, TwilioStandIn};
    let standin = TwilioStandIn::start().await;
    standin.script([Reply::error(400, "21211")]);
    let config = crate::dispatch::config_with(&standin, crate::dispatch::FAST_DISPATCH);
    let app = TestApp::spawn_with(&config).await;
    let id = queue_one(&app).await;

    app.dispatch_until_idle().await;

    let view = crate::dispatch::status_of(&app, &id).await;
    assert_eq!(view["status"], "failed");
    let reason = view["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("twilio: "), "names the carrier: {view}");
    assert!(!reason.contains("123456"), "never the code: {reason}");
}
