//! Telnyx's delivery webhooks end to end: a message sent through the Telnyx stand-in names
//! smsgate's webhook URL; a `message.finalized` event signed with Ed25519 over
//! `{timestamp}|{body}`, its timestamp within 300 s of the database's clock, moves the message
//! to `delivered` or `undelivered`; forged, tampered or replayed events change nothing.

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use smsgate::Role;

use crate::dispatch::{FAST_DISPATCH, queue, status_of, wait_final};
use crate::helpers::TestApp;
use crate::receipts::PUBLIC_URL;
use crate::standins::telnyx::TelnyxStandIn;
use crate::test_config::TestConfig;

/// The test account's webhook signing key (Telnyx holds the private half).
pub fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32])
}

pub fn public_key_base64() -> String {
    base64::engine::general_purpose::STANDARD.encode(signing_key().verifying_key().to_bytes())
}

pub async fn database_now(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT extract(epoch FROM now())::bigint")
        .fetch_one(&app.pool)
        .await
        .expect("the database's clock")
}

/// A `message.finalized` event for `id` with the recipient's `status`.
pub fn finalized(id: &str, status: &str, error_code: Option<&str>) -> Value {
    let errors: Vec<Value> = error_code
        .map(|code| json!({"code": code, "title": "Not routable"}))
        .into_iter()
        .collect();
    json!({
        "data": {
            "event_type": "message.finalized",
            "id": "b301ed3f-1490-491f-995f-6e64e69674d4",
            "occurred_at": "2026-12-06T10:00:01.000+00:00",
            "payload": {"id": id, "to": [{"phone_number": "+14155552671", "status": status}],
                        "errors": errors},
            "record_type": "event"
        },
        "meta": {"attempt": 1, "delivered_to": "https://sms.example.com/v1/callbacks/telnyx/tx"}
    })
}

/// Posts `body` as Telnyx would, signed over `timestamp` (or with `signature` as given).
async fn post(app: &TestApp, body: &[u8], timestamp: &str, signature: Option<String>) -> u16 {
    let signature = signature.unwrap_or_else(|| {
        let mut signed = format!("{timestamp}|").into_bytes();
        signed.extend_from_slice(body);
        base64::engine::general_purpose::STANDARD.encode(signing_key().sign(&signed).to_bytes())
    });
    app.client
        .post(app.url("/v1/callbacks/telnyx/tx"))
        .header("content-type", "application/json")
        .header("telnyx-timestamp", timestamp)
        .header("telnyx-signature-ed25519", signature)
        .body(body.to_vec())
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// A message sent through Telnyx with receipts asked for: the app, its id and Telnyx's id.
async fn sent_through_telnyx() -> (TestApp, String, String) {
    let standin = TelnyxStandIn::start().await;
    let table = format!(
        "{}public_url = \"{PUBLIC_URL}\"\nwebhook_public_key = \"{}\"\n",
        standin.carrier_toml("tx"),
        public_key_base64()
    );
    let config = TestConfig::base()
        .only_carrier(&table, "tx")
        .merge(FAST_DISPATCH);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(
        standin.seen()[0]
            .fields
            .get("webhook_url")
            .map(String::as_str),
        Some("https://sms.example.com/v1/callbacks/telnyx/tx"),
        "every send names smsgate's webhook"
    );
    let telnyx_id = view["attempts"][0]["carrier_message_id"]
        .as_str()
        .expect("Telnyx's id")
        .to_string();
    (app, id, telnyx_id)
}

#[tokio::test]
async fn a_signed_finalized_webhook_marks_the_message_delivered_once() {
    let (app, id, telnyx_id) = sent_through_telnyx().await;
    let body = serde_json::to_vec(&finalized(&telnyx_id, "delivered", None)).expect("json");
    let now = database_now(&app).await.to_string();

    assert_eq!(post(&app, &body, &now, None).await, 204);
    assert_eq!(status_of(&app, &id).await["status"], "delivered");
    // Telnyx retries, or anyone replays it within the window: answered, recorded once.
    assert_eq!(post(&app, &body, &now, None).await, 204);
    let stored: i64 = app.count_rows("delivery_receipts").await;
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_failed_delivery_marks_the_message_undelivered_with_telnyx_s_code() {
    let (app, id, telnyx_id) = sent_through_telnyx().await;
    let body =
        serde_json::to_vec(&finalized(&telnyx_id, "delivery_failed", Some("40001"))).expect("json");
    let now = database_now(&app).await.to_string();

    assert_eq!(post(&app, &body, &now, None).await, 204);
    assert_eq!(status_of(&app, &id).await["status"], "undelivered");
    let code: Option<String> = sqlx::query_scalar("SELECT error_code FROM delivery_receipts")
        .fetch_one(&app.pool)
        .await
        .expect("the receipt");
    assert_eq!(code.as_deref(), Some("40001"));
}

#[tokio::test]
async fn forged_tampered_and_replayed_webhooks_are_refused_and_change_nothing() {
    let (app, id, telnyx_id) = sent_through_telnyx().await;
    let body = serde_json::to_vec(&finalized(&telnyx_id, "delivered", None)).expect("json");
    let now = database_now(&app).await;
    let other_key = SigningKey::from_bytes(&[9u8; 32]);
    let mut signed_by_other = format!("{now}|").into_bytes();
    signed_by_other.extend_from_slice(&body);
    let forged = base64::engine::general_purpose::STANDARD
        .encode(other_key.sign(&signed_by_other).to_bytes());
    let tampered =
        serde_json::to_vec(&finalized(&telnyx_id, "delivery_failed", None)).expect("json");
    let good_for_body = |timestamp: i64| {
        let mut signed = format!("{timestamp}|").into_bytes();
        signed.extend_from_slice(&body);
        base64::engine::general_purpose::STANDARD.encode(signing_key().sign(&signed).to_bytes())
    };

    let cases: Vec<(&str, &[u8], String, Option<String>)> = vec![
        (
            "signed by another key",
            &body,
            now.to_string(),
            Some(forged),
        ),
        ("not base64", &body, now.to_string(), Some("!!".into())),
        // The body's signature on another body.
        (
            "tampered",
            &tampered,
            now.to_string(),
            Some(good_for_body(now)),
        ),
        // Correctly signed, but ten minutes old or ahead of the database's clock.
        ("replayed", &body, (now - 600).to_string(), None),
        ("from the future", &body, (now + 600).to_string(), None),
        ("unreadable timestamp", &body, "17e8".into(), None),
    ];
    for (what, payload, timestamp, signature) in cases {
        assert_eq!(
            post(&app, payload, &timestamp, signature).await,
            403,
            "{what}"
        );
    }
    let unsigned = app
        .client
        .post(app.url("/v1/callbacks/telnyx/tx"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .expect("sent");
    crate::helpers::assert_status(&unsigned, 403, "unsigned");
    assert_eq!(status_of(&app, &id).await["status"], "sent");
    let stored: i64 = app.count_rows("delivery_receipts").await;
    assert_eq!(stored, 0, "nothing recorded");
}
