//! `POST /v1/verifications` (issue 26, part 3): a login completed with a phone code, told by
//! the shipped post-login Action, is attributed once to the number's newest message sent
//! within its code's life, and counted for that message's route.

use std::time::Duration;

use serde_json::{Value, json};
use smsgate::Role;

use crate::actions::run_action;
use crate::dispatch::{FAST_DISPATCH, queue, wait_final, wait_until};
use crate::helpers::{ADMIN_TOKEN, TestApp, assert_error, token};
use crate::observability::sample;
use crate::test_config::TestConfig;

const TO: &str = "+14155552671";

async fn app() -> TestApp {
    let config = TestConfig::base()
        .merge(FAST_DISPATCH)
        .set("dispatch.lease_seconds", 15);
    TestApp::spawn_role(&config, Role::All).await
}

async fn sent(app: &TestApp, to: &str) -> String {
    let id = queue(app, to).await;
    let view = wait_final(app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "sent", "{view}");
    id
}

async fn verify(app: &TestApp, body: &str, bearer: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/v1/verifications"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    request.send().await.expect("sent")
}

async fn verified_at(app: &TestApp, id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT verified_at FROM messages WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("the message")
}

async fn verified_messages(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE verified_at IS NOT NULL")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// A post-login event as Auth0 gives it for a passwordless SMS login, with `methods`.
fn login(app: &TestApp, methods: Value) -> Value {
    json!({
        "secrets": {
            "SMSGATE_URL": app.url("/v1/verifications"),
            "SMSGATE_SECRET": crate::helpers::SECRET,
            "SMSGATE_AUDIENCE": crate::helpers::AUDIENCE,
            "SMSGATE_SUBJECT": crate::helpers::SUBJECT,
        },
        "user": {"user_id": "sms|5f7c8ec7c33c6c004bbafe82", "phone_number": TO,
                 "phone_verified": true},
        "connection": {"strategy": "sms", "name": "sms"},
        "authentication": {"methods": methods},
        "transaction": {"id": "tx-1"},
    })
}

async fn run(file: &'static str, event: Value) -> Option<Value> {
    tokio::task::spawn_blocking(move || run_action(file, &event))
        .await
        .expect("ran")
}

#[tokio::test]
async fn the_shipped_post_login_action_attributes_an_sms_login_once() {
    let app = app().await;
    let id = sent(&app, TO).await;
    let now = chrono::Utc::now().to_rfc3339();
    let event = login(&app, json!([{"name": "sms", "timestamp": now}]));

    let Some(first) = run("post-login-verification.js", event.clone()).await else {
        return;
    };

    assert_eq!(first["ok"], true, "{first}");
    let at = verified_at(&app, &id).await.expect("attributed");
    let again = run("post-login-verification.js", event)
        .await
        .expect("node");
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(verified_at(&app, &id).await, Some(at), "attributed once");
    let metrics = app.metrics().await;
    let series = |outcome| {
        format!("smsgate_verifications_total{{outcome=\"{outcome}\",signer=\"primary\"}}")
    };
    assert_eq!(
        sample(&metrics, &series("attributed")),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, &series("repeated")), Some(1.0));

    // The login counts for the route that carried the code.
    let mut stats = Value::Null;
    wait_until("the verified count", Duration::from_secs(10), async || {
        stats = app
            .client
            .get(app.url("/v1/carriers/stats"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        stats["routes"][0]["verified"] == 1
    })
    .await;
    assert_eq!(stats["routes"][0]["carrier"], "console", "{stats}");
    assert_eq!(stats["routes"][0]["conversion_ratio"], 1.0, "{stats}");
}

#[tokio::test]
async fn the_action_tells_nothing_of_a_login_without_an_sms_code_and_never_fails_it() {
    let app = app().await;
    let id = sent(&app, TO).await;
    // A password login with MFA: the post-login trigger runs before the MFA challenge, and
    // the event has no enrolled number; nothing is sent.
    let event = login(
        &app,
        json!([{"name": "pwd", "timestamp": chrono::Utc::now().to_rfc3339()},
               {"name": "mfa", "type": "phone", "timestamp": chrono::Utc::now().to_rfc3339()}]),
    );
    let Some(ran) = run("post-login-verification.js", event).await else {
        return;
    };
    assert_eq!(ran["ok"], true, "{ran}");
    assert_eq!(verified_at(&app, &id).await, None);

    // smsgate unreachable: the login still goes through.
    let mut down = login(&app, json!([{"name": "sms"}]));
    down["secrets"]["SMSGATE_URL"] = "http://127.0.0.1:9/v1/verifications".into();
    let ran = run("post-login-verification.js", down).await.expect("node");
    assert_eq!(ran["ok"], true, "the login is never failed: {ran}");
}

#[tokio::test]
async fn a_login_goes_to_the_newest_message_whose_code_was_alive() {
    let app = app().await;
    let older = sent(&app, TO).await;
    let newer = sent(&app, TO).await;
    let other = sent(&app, "+14155552672").await;

    let response = verify(
        &app,
        &json!({"phone_number": "+1 415 555 2671"}).to_string(),
        Some(&token()),
    )
    .await;

    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["attributed"], true, "{body}");
    assert_eq!(body["message_id"], newer.as_str(), "{body}");
    assert_eq!(body["repeated"], false);
    assert!(verified_at(&app, &newer).await.is_some());
    assert_eq!(verified_at(&app, &older).await, None);
    assert_eq!(verified_at(&app, &other).await, None);

    // A code that expired before the login is not what completed it.
    sqlx::query("UPDATE messages SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid")
        .bind(&other)
        .execute(&app.pool)
        .await
        .expect("expired");
    let response = verify(
        &app,
        &json!({"phone_number": "+14155552672"}).to_string(),
        Some(&token()),
    )
    .await;
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body, json!({"attributed": false, "repeated": false}));
    assert_eq!(verified_at(&app, &other).await, None);
}

#[tokio::test]
async fn bad_verifications_are_refused_and_change_nothing() {
    let app = app().await;
    sent(&app, TO).await;
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    let number_at = |at: &str| format!(r#"{{"phone_number":"+14155552671","at":"{at}"}}"#);
    let cases: Vec<(String, Option<String>, u16, &str)> = vec![
        (
            r#"{"phone_number":"+14155552671"}"#.into(),
            None,
            401,
            "unauthorized",
        ),
        (
            r#"{"phone_number":"+14155552671"}"#.into(),
            Some("not.a.token".into()),
            401,
            "invalid_token",
        ),
        ("[1]".into(), Some(token()), 400, "invalid_json"),
        (
            r#"{"at":"2026-12-07T00:00:00Z"}"#.into(),
            Some(token()),
            400,
            "invalid_json",
        ),
        (
            r#"{"phone_number":"12"}"#.into(),
            Some(token()),
            400,
            "invalid_phone_number",
        ),
        (number_at("yesterday"), Some(token()), 400, "invalid_time"),
        (number_at(&two_days_ago), Some(token()), 400, "invalid_time"),
        (
            number_at(&"9".repeat(100)),
            Some(token()),
            400,
            "invalid_time",
        ),
    ];
    for (body, bearer, status, code) in cases {
        let response = verify(&app, &body, bearer.as_deref()).await;
        assert_error(response, status, code).await;
    }
    assert_eq!(verified_messages(&app).await, 0, "nothing was attributed");
}

#[tokio::test]
async fn a_signer_cannot_see_or_claim_another_signers_messages() {
    const OTHER_SECRET: &str = "another-tenant-secret-with-enough-entropy-42";
    let config = TestConfig::base()
        .merge(FAST_DISPATCH)
        .set("dispatch.lease_seconds", 15)
        .merge(&format!(
            "[auth0.other]\nsecret = \"{OTHER_SECRET}\"\naudience = \"{}\"\nsubject = \"{}\"\n",
            crate::helpers::AUDIENCE,
            crate::helpers::SUBJECT
        ));
    let app = TestApp::spawn_role(&config, Role::All).await;
    let id = sent(&app, TO).await;
    let other = crate::helpers::sign_with(
        &crate::helpers::auth0_claims(),
        OTHER_SECRET.as_bytes(),
        jsonwebtoken::Algorithm::HS256,
    );
    let body = json!({"phone_number": TO}).to_string();

    let foreign = verify(&app, &body, Some(&other)).await;

    assert_eq!(foreign.status().as_u16(), 200);
    let answer: Value = foreign.json().await.expect("JSON");
    assert_eq!(
        answer,
        json!({"attributed": false, "repeated": false}),
        "nothing seen"
    );
    assert_eq!(verified_at(&app, &id).await, None);
    let own: Value = verify(&app, &body, Some(&token()))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(own["message_id"], id.as_str(), "{own}");
    assert_eq!(own["repeated"], false, "{own}");
}

#[tokio::test]
async fn a_code_whose_login_completed_is_not_sent_again() {
    let carriers = crate::resends::TwoCarriers::start("").await;
    let (id, sid) = carriers.sent_through_first_to(TO).await;
    let body = json!({"phone_number": TO}).to_string();
    let answer: Value = verify(&carriers.app, &body, Some(&token()))
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer["attributed"], true, "{answer}");
    let kept: String = sqlx::query_scalar("SELECT body FROM messages WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&carriers.app.pool)
        .await
        .expect("body");
    assert_eq!(kept, "", "the code did its work: erased");

    // A route failure reported afterwards (a false one, or one for a copy) sends nothing.
    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30003"))
            .await,
        204
    );

    let view = crate::dispatch::status_of(&carriers.app, &id).await;
    assert_eq!(view["status"], "undelivered", "{view}");
    assert!(
        carriers.second.seen().is_empty(),
        "no resend of a used code"
    );
}

#[tokio::test]
async fn a_login_after_a_failed_resend_goes_to_the_carrier_that_took_the_code() {
    let carriers = crate::resends::TwoCarriers::start("").await;
    let (id, sid) = carriers.sent_through_first_to(TO).await;
    // The second carrier refuses the number when the resend comes.
    carriers
        .second
        .script([crate::standins::Reply::error(400, "21211")]);
    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30003"))
            .await,
        204
    );
    let view = carriers.settled_after(&id, 2).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["carrier"], "first", "the carrier that took it: {view}");

    let answer: Value = verify(
        &carriers.app,
        &json!({"phone_number": TO}).to_string(),
        Some(&token()),
    )
    .await
    .json()
    .await
    .expect("JSON");

    assert_eq!(answer["attributed"], true, "{answer}");
    assert_eq!(answer["message_id"], id.as_str());
}

#[tokio::test]
async fn a_login_completed_while_the_resend_waits_ends_the_message_unsent() {
    // An ingress process: the test sends when it says (no worker claims behind its back).
    let carriers = crate::resends::TwoCarriers::start_as("", |config| config, Role::Ingress).await;
    let id = queue(&carriers.app, TO).await;
    carriers.app.dispatch_until_idle().await;
    let view = crate::dispatch::status_of(&carriers.app, &id).await;
    assert_eq!(view["carrier"], "first", "{view}");
    let sid = crate::resends::carrier_id(&view, 0);
    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30003"))
            .await,
        204
    );
    assert_eq!(
        carriers.app.count_rows("message_queue").await,
        1,
        "a resend waits"
    );

    // The user logs in with the first code before the resend goes out.
    let answer: Value = verify(
        &carriers.app,
        &json!({"phone_number": TO}).to_string(),
        Some(&token()),
    )
    .await
    .json()
    .await
    .expect("JSON");
    assert_eq!(answer["attributed"], true, "{answer}");
    carriers.app.dispatch_until_idle().await;

    let view = crate::dispatch::status_of(&carriers.app, &id).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(view["carrier"], "first", "{view}");
    assert!(
        carriers.second.seen().is_empty(),
        "the resend never went out"
    );
    assert_eq!(carriers.app.count_rows("message_queue").await, 0);
}
