//! Delivery receipts end to end: a message sent through a carrier stand-in asks for a receipt
//! at smsgate's public URL; a receipt signed (Twilio) or keyed (MessageMedia) as the carrier
//! does it moves the message to `delivered` or `undelivered`; forged ones change nothing.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha1::Sha1;
use smsgate::Role;

use crate::dispatch::{FAST_DISPATCH, queue, status_of, wait_final};
use crate::helpers::TestApp;
use crate::observability::sample;
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::standins::twilio::{AUTH_TOKEN, TwilioStandIn};
use crate::test_config::TestConfig;

pub const PUBLIC_URL: &str = "https://sms.example.com";
const MM_KEY: &str = "mm-callback-secret-0123456789";

fn only_carrier(table: &str, name: &str) -> TestConfig {
    TestConfig::base()
        .only_carrier(table, name)
        .merge(FAST_DISPATCH)
}

/// Twilio's signature, computed here independently of smsgate's code.
pub fn twilio_signature(url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(AUTH_TOKEN.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub async fn post_twilio(
    app: &TestApp,
    params: &[(&str, &str)],
    signature: Option<&str>,
) -> reqwest::Response {
    post_twilio_at(app, "/v1/callbacks/twilio/twilio", params, signature).await
}

async fn post_twilio_at(
    app: &TestApp,
    path: &str,
    params: &[(&str, &str)],
    signature: Option<&str>,
) -> reqwest::Response {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("x-twilio-signature", signature);
    }
    request.send().await.expect("sent")
}

async fn sent_through_twilio() -> (TestApp, TwilioStandIn, String, String) {
    let standin = TwilioStandIn::start().await;
    let table = format!(
        "{}public_url = \"{PUBLIC_URL}\"\n",
        standin.carrier_toml("twilio")
    );
    let app = TestApp::spawn_role(&only_carrier(&table, "twilio"), Role::All).await;
    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "sent");
    let sid = view["attempts"][0]["carrier_message_id"]
        .as_str()
        .expect("a carrier id")
        .to_string();
    (app, standin, id, sid)
}

fn receipts_counted(metrics: &str, carrier: &str, status: &str) -> f64 {
    let series =
        format!("smsgate_delivery_receipts_total{{carrier=\"{carrier}\",status=\"{status}\"}}");
    sample(metrics, &series).unwrap_or(-1.0)
}

#[tokio::test]
async fn a_signed_twilio_callback_marks_the_message_delivered() {
    let (app, standin, id, sid) = sent_through_twilio().await;
    let asked = standin.seen()[0].fields.get("StatusCallback").cloned();
    assert_eq!(
        asked.as_deref(),
        Some("https://sms.example.com/v1/callbacks/twilio/twilio"),
        "every send asks for a receipt at the public URL"
    );
    let params = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("To", "+14155552671"),
        ("RawDlrDoneDate", "2611231415"),
    ];
    let signature = twilio_signature(&format!("{PUBLIC_URL}/v1/callbacks/twilio/twilio"), &params);

    let response = post_twilio(&app, &params, Some(&signature)).await;

    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(status_of(&app, &id).await["status"], "delivered");
    let metrics = app.metrics().await;
    assert_eq!(receipts_counted(&metrics, "twilio", "delivered"), 1.0);
    assert!(
        metrics.contains("smsgate_receipt_latency_seconds_count 1"),
        "latency observed"
    );
}

#[tokio::test]
async fn an_undelivered_callback_marks_the_message_undelivered() {
    let (app, _standin, id, sid) = sent_through_twilio().await;
    let params = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "30003"),
    ];
    let signature = twilio_signature(&format!("{PUBLIC_URL}/v1/callbacks/twilio/twilio"), &params);

    let response = post_twilio(&app, &params, Some(&signature)).await;

    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(status_of(&app, &id).await["status"], "undelivered");
    let code: Option<String> = sqlx::query_scalar("SELECT error_code FROM delivery_receipts")
        .fetch_one(&app.pool)
        .await
        .expect("recorded");
    assert_eq!(code.as_deref(), Some("30003"));
}

#[tokio::test]
async fn forged_twilio_callbacks_are_refused_and_change_nothing() {
    let (app, _standin, id, sid) = sent_through_twilio().await;
    let params = [("MessageSid", sid.as_str()), ("MessageStatus", "delivered")];
    let url = format!("{PUBLIC_URL}/v1/callbacks/twilio/twilio");
    let right = twilio_signature(&url, &params);
    let other_url = twilio_signature("https://evil.example/v1/callbacks/twilio/twilio", &params);
    let tampered = [
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "undelivered"),
    ];

    for (body, signature) in [
        (&params[..], None),
        (&params[..], Some("bm90IGEgc2lnbmF0dXJl")),
        (&params[..], Some(other_url.as_str())),
        (&tampered[..], Some(right.as_str())),
    ] {
        let response = post_twilio(&app, body, signature).await;
        crate::helpers::assert_status(&response, 403, &format!("{signature:?}"));
        let error: Value = response.json().await.expect("JSON");
        assert_eq!(error["error"], "invalid_signature");
    }
    // A correctly signed callback on an alias of the path (the kind percent-encoded) is not
    // the route the carrier was given: 404, whatever a proxy's allow-list made of it.
    let signed = twilio_signature(&url, &tampered);
    let alias = "/v1/callbacks/twil%69o/twilio";
    let alias = post_twilio_at(&app, alias, &tampered, Some(&signed)).await;
    crate::helpers::assert_status(&alias, 404, "an encoded kind");
    // Kinds that send no receipts have no route at all.
    for path in ["/v1/callbacks/sns/twilio", "/v1/callbacks/log/twilio"] {
        let other = post_twilio_at(&app, path, &tampered, Some(&signed)).await;
        crate::helpers::assert_status(&other, 404, path);
    }

    assert_eq!(status_of(&app, &id).await["status"], "sent");
    let recorded: i64 = app.count_rows("delivery_receipts").await;
    assert_eq!(recorded, 0, "nothing recorded");
}

#[tokio::test]
async fn a_receipt_that_arrives_before_the_outcome_is_applied_later() {
    let app = TestApp::spawn().await;
    // The carrier's receipt is faster than the batched outcome write: nothing to apply yet.
    let applied = smsgate::db::receipts::record(
        &smsgate::db::Db::direct(app.pool.clone()),
        &smsgate::db::receipts::Report {
            carrier: "console",
            carrier_message_id: "SMearly",
            status: smsgate::domain::Status::Delivered,
            error_code: None,
            failure: None,
        },
        Default::default(),
        None,
    )
    .await
    .expect("recorded");
    assert_eq!(applied, smsgate::db::receipts::Applied::Pending);
    let id = queue(&app, "+14155552671").await;
    sqlx::query(
        "UPDATE messages SET status = 'sent', carrier = 'console', carrier_message_id = 'SMearly',
                finished_at = now() WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .expect("the outcome lands");

    let late = smsgate::db::receipts::apply_pending(
        &smsgate::db::Db::direct(app.pool.clone()),
        Default::default(),
        std::time::Duration::from_secs(3600),
        None,
    )
    .await
    .expect("sweep");

    assert_eq!(late, (1, Vec::new()), "applied, and no resend");
    let status: String = sqlx::query_scalar("SELECT status FROM messages WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .expect("status");
    assert_eq!(status, "delivered");
}

async fn post_messagemedia(app: &TestApp, key: Option<&str>, report: &Value) -> reqwest::Response {
    let url = match key {
        Some(key) => app.url(&format!("/v1/callbacks/messagemedia/mm?key={key}")),
        None => app.url("/v1/callbacks/messagemedia/mm"),
    };
    app.client
        .post(url)
        .header("content-type", "application/json")
        .body(report.to_string())
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn a_messagemedia_report_with_the_carriers_key_marks_the_message() {
    let standin = MessageMediaStandIn::start().await;
    let table = format!(
        "{}public_url = \"{PUBLIC_URL}\"\ncallback_secret = \"{MM_KEY}\"\n",
        standin.carrier_toml("mm")
    );
    let app = TestApp::spawn_role(&only_carrier(&table, "mm"), Role::All).await;
    let id = queue(&app, "+61491570156").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "sent");
    let fields = standin.seen()[0].fields.clone();
    assert_eq!(
        fields.get("delivery_report").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        fields.get("callback_url").cloned(),
        Some(format!(
            "{PUBLIC_URL}/v1/callbacks/messagemedia/mm?key={MM_KEY}"
        ))
    );
    let message_id = view["attempts"][0]["carrier_message_id"]
        .as_str()
        .expect("a carrier id")
        .to_string();
    let report = json!({
        "callback_url": fields.get("callback_url"),
        "delivery_report_id": "01e1fa0a-6e27-4945-9cdb-18644b4de043",
        "message_id": message_id,
        "status": "delivered",
        "date_received": "2026-11-23T14:15:00.000Z",
    });

    for key in [None, Some("wrong-key"), Some("")] {
        let refused = post_messagemedia(&app, key, &report).await;
        crate::helpers::assert_status(&refused, 403, &format!("{key:?}"));
    }
    assert_eq!(status_of(&app, &id).await["status"], "sent");
    let accepted = post_messagemedia(&app, Some(MM_KEY), &report).await;

    assert_eq!(accepted.status().as_u16(), 204);
    assert_eq!(status_of(&app, &id).await["status"], "delivered");

    // The carrier resending it, or anyone replaying it: answered, neither stored nor counted
    // again.
    for _ in 0..3 {
        let repeated = post_messagemedia(&app, Some(MM_KEY), &report).await;
        assert_eq!(repeated.status().as_u16(), 204);
    }
    assert_eq!(
        receipts_counted(&app.metrics().await, "mm", "delivered"),
        1.0
    );
    // An id longer than any carrier's is no report of ours.
    let long = json!({"message_id": "x".repeat(256), "status": "delivered"});
    let refused = post_messagemedia(&app, Some(MM_KEY), &long).await;
    assert_eq!(refused.status().as_u16(), 400);
    let stored: i64 = app.count_rows("delivery_receipts").await;
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn carriers_without_a_public_url_take_no_callbacks() {
    let app = TestApp::spawn().await;
    let report = json!({"message_id": "x", "status": "delivered"});

    let response = post_messagemedia(&app, Some("anything"), &report).await;

    assert_eq!(response.status().as_u16(), 404);
    let twilio = post_twilio(
        &app,
        &[("MessageSid", "SM1"), ("MessageStatus", "delivered")],
        Some("x"),
    )
    .await;
    assert_eq!(twilio.status().as_u16(), 404);
}

/// The receipt row's error code, as stored.
async fn stored_error_code(app: &TestApp) -> Option<String> {
    sqlx::query_scalar("SELECT error_code FROM delivery_receipts")
        .fetch_one(&app.pool)
        .await
        .expect("one receipt recorded")
}

#[tokio::test]
async fn a_signed_twilio_callback_carrying_a_nul_is_cleaned_and_applied_never_a_5xx() {
    let (app, _standin, id, sid) = sent_through_twilio().await;
    // PostgreSQL's text refuses NUL: stored raw, this was a 503 the carrier retried forever.
    let sid_with_nul = format!("{sid}\u{0}");
    let params = [
        ("MessageSid", sid_with_nul.as_str()),
        ("MessageStatus", "undelivered"),
        ("ErrorCode", "300\u{0}03\u{7}"),
    ];
    let signature = twilio_signature(&format!("{PUBLIC_URL}/v1/callbacks/twilio/twilio"), &params);

    let response = post_twilio(&app, &params, Some(&signature)).await;

    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(status_of(&app, &id).await["status"], "undelivered");
    assert_eq!(stored_error_code(&app).await.as_deref(), Some("30003"));
}

#[tokio::test]
async fn a_keyed_messagemedia_report_carrying_a_nul_is_cleaned_and_applied_never_a_5xx() {
    let standin = MessageMediaStandIn::start().await;
    let table = format!(
        "{}public_url = \"{PUBLIC_URL}\"\ncallback_secret = \"{MM_KEY}\"\n",
        standin.carrier_toml("mm")
    );
    let app = TestApp::spawn_role(&only_carrier(&table, "mm"), Role::All).await;
    let id = queue(&app, "+61491570156").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    let message_id = view["attempts"][0]["carrier_message_id"]
        .as_str()
        .expect("a carrier id")
        .to_string();
    let report = json!({
        "message_id": format!("\u{0}{message_id}"),
        "status": "failed",
        "error_code": "\u{0}E\u{1b}[31m42",
    });

    let response = post_messagemedia(&app, Some(MM_KEY), &report).await;

    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(status_of(&app, &id).await["status"], "undelivered");
    assert_eq!(stored_error_code(&app).await.as_deref(), Some("E[31m42"));
    // An id of control characters alone names nothing: refused, not retried forever.
    let empty = json!({"message_id": "\u{0}\u{0}", "status": "delivered"});
    let refused = post_messagemedia(&app, Some(MM_KEY), &empty).await;
    crate::helpers::assert_error(refused, 400, "invalid_request").await;
    assert_eq!(app.count_rows("delivery_receipts").await, 1);
}

#[tokio::test]
async fn a_callback_for_an_unknown_or_unreadable_carrier_is_a_json_404_carrier_not_found() {
    let app = TestApp::spawn().await;
    for path in [
        "/v1/callbacks/messagemedia/%FF",
        "/v1/callbacks/twilio/%FF",
        "/v1/callbacks/messagemedia/nobody",
        "/v1/callbacks/twilio/nobody",
    ] {
        let response = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("sent");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        crate::helpers::assert_error(response, 404, "carrier_not_found").await;
    }
    assert_eq!(
        app.count_rows("delivery_receipts").await,
        0,
        "nothing recorded"
    );
}
