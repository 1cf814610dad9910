//! Attacks on the Telnyx carrier: its webhook's proof (Ed25519 over `{timestamp}|{body}`,
//! 300 s around the database's clock), its input handling, and its secret (`api_token`).

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::json;
use smsgate::Role;

use crate::dispatch::{FAST_DISPATCH, queue, status_of, wait_final};
use crate::helpers::TestApp;
use crate::receipts::PUBLIC_URL;
use crate::standins::Reply;
use crate::standins::telnyx::{API_TOKEN, TelnyxStandIn};
use crate::standins::twilio::TwilioStandIn;
use crate::telnyx_receipts::{database_now, finalized, public_key_base64, signing_key};
use crate::test_config::TestConfig;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn sign_with(key: &SigningKey, timestamp: &str, body: &[u8]) -> String {
    let mut signed = format!("{timestamp}|").into_bytes();
    signed.extend_from_slice(body);
    B64.encode(key.sign(&signed).to_bytes())
}

fn sign(timestamp: &str, body: &[u8]) -> String {
    sign_with(&signing_key(), timestamp, body)
}

/// Posts `body` to `carrier`'s Telnyx webhook with these headers, in this order.
async fn post_raw(
    app: &TestApp,
    carrier: &str,
    headers: &[(&str, reqwest::header::HeaderValue)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut request = app
        .client
        .post(app.url(&format!("/v1/callbacks/telnyx/{carrier}")))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    let response = request.body(body).send().await.expect("sent");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn value(text: &str) -> reqwest::header::HeaderValue {
    reqwest::header::HeaderValue::from_str(text).expect("a header value")
}

/// Signed now, as Telnyx would.
async fn post_signed(app: &TestApp, body: &[u8]) -> (u16, String) {
    let now = database_now(app).await.to_string();
    let signature = sign(&now, body);
    post_raw(
        app,
        "tx",
        &[
            ("telnyx-timestamp", value(&now)),
            ("telnyx-signature-ed25519", value(&signature)),
        ],
        body.to_vec(),
    )
    .await
}

/// A Telnyx carrier `tx` with receipts under `key`, one message sent through it.
async fn sent_with_key(key_base64: &str, extra_tables: &str) -> (TestApp, String, String) {
    let standin = TelnyxStandIn::start().await;
    let table = format!(
        "{}public_url = \"{PUBLIC_URL}\"\nwebhook_public_key = \"{key_base64}\"\n{extra_tables}",
        standin.carrier_toml("tx"),
    );
    let config = TestConfig::base()
        .only_carriers(&table, &["tx"])
        .merge(FAST_DISPATCH);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "sent", "{view}");
    let telnyx_id = view["attempts"][0]["carrier_message_id"]
        .as_str()
        .expect("Telnyx's id")
        .to_string();
    (app, id, telnyx_id)
}

async fn receipts_stored(app: &TestApp) -> i64 {
    app.count_rows("delivery_receipts").await
}

/// Headers that do not prove a correctly signed body: duplicates, padding, zeros, odd
/// timestamps, bytes that are not UTF-8. Each is a 403 and nothing changes.
#[tokio::test]
async fn odd_signature_and_timestamp_headers_are_refused_and_change_nothing() {
    let (app, id, telnyx_id) = sent_with_key(&public_key_base64(), "").await;
    let body = serde_json::to_vec(&finalized(&telnyx_id, "delivered", None)).expect("json");
    let now = database_now(&app).await;
    let good = sign(&now.to_string(), &body);
    let zero_signature = B64.encode([0u8; 64]);
    let unpadded = good.trim_end_matches('=').to_string();
    // The same 64 bytes, s pushed past the group order (a malleated copy).
    let mut bytes = B64.decode(&good).expect("base64");
    bytes[63] |= 0xf0;
    let high_s = B64.encode(&bytes);
    let far = "999999999999";
    let cases: Vec<(&str, Vec<(&str, reqwest::header::HeaderValue)>)> = vec![
        (
            "all-zero signature",
            vec![
                ("telnyx-timestamp", value(&now.to_string())),
                ("telnyx-signature-ed25519", value(&zero_signature)),
            ],
        ),
        (
            "unpadded base64",
            vec![
                ("telnyx-timestamp", value(&now.to_string())),
                ("telnyx-signature-ed25519", value(&unpadded)),
            ],
        ),
        (
            "s not reduced",
            vec![
                ("telnyx-timestamp", value(&now.to_string())),
                ("telnyx-signature-ed25519", value(&high_s)),
            ],
        ),
        (
            "signature twice: forged first",
            vec![
                ("telnyx-timestamp", value(&now.to_string())),
                ("telnyx-signature-ed25519", value(&zero_signature)),
                ("telnyx-signature-ed25519", value(&good)),
            ],
        ),
        (
            "timestamp twice: the signed one second",
            vec![
                ("telnyx-timestamp", value(&(now - 1).to_string())),
                ("telnyx-timestamp", value(&now.to_string())),
                ("telnyx-signature-ed25519", value(&good)),
            ],
        ),
        (
            "leading zero (signed over the string without it)",
            vec![
                ("telnyx-timestamp", value(&format!("0{now}"))),
                ("telnyx-signature-ed25519", value(&good)),
            ],
        ),
        (
            "plus sign, correctly signed",
            vec![
                ("telnyx-timestamp", value(&format!("+{now}"))),
                (
                    "telnyx-signature-ed25519",
                    value(&sign(&format!("+{now}"), &body)),
                ),
            ],
        ),
        (
            "13 digits with leading zeros, correctly signed",
            vec![
                ("telnyx-timestamp", value(&format!("000{now}"))),
                (
                    "telnyx-signature-ed25519",
                    value(&sign(&format!("000{now}"), &body)),
                ),
            ],
        ),
        (
            "12 digits, far future, correctly signed",
            vec![
                ("telnyx-timestamp", value(far)),
                ("telnyx-signature-ed25519", value(&sign(far, &body))),
            ],
        ),
        (
            "zero, correctly signed",
            vec![
                ("telnyx-timestamp", value("0")),
                ("telnyx-signature-ed25519", value(&sign("0", &body))),
            ],
        ),
        (
            "just outside the window, correctly signed",
            vec![
                ("telnyx-timestamp", value(&(now - 302).to_string())),
                (
                    "telnyx-signature-ed25519",
                    value(&sign(&(now - 302).to_string(), &body)),
                ),
            ],
        ),
        (
            "non-UTF-8 signature bytes",
            vec![
                ("telnyx-timestamp", value(&now.to_string())),
                (
                    "telnyx-signature-ed25519",
                    reqwest::header::HeaderValue::from_bytes(b"\xff\xfe\x80AAAA")
                        .expect("obs-text"),
                ),
            ],
        ),
        (
            "non-UTF-8 timestamp bytes",
            vec![
                (
                    "telnyx-timestamp",
                    reqwest::header::HeaderValue::from_bytes(b"17\xff").expect("obs-text"),
                ),
                ("telnyx-signature-ed25519", value(&good)),
            ],
        ),
        (
            "signature only",
            vec![("telnyx-signature-ed25519", value(&good))],
        ),
        (
            "timestamp only",
            vec![("telnyx-timestamp", value(&now.to_string()))],
        ),
        (
            "empty headers",
            vec![
                ("telnyx-timestamp", value("")),
                ("telnyx-signature-ed25519", value("")),
            ],
        ),
    ];
    for (what, headers) in cases {
        let (status, text) = post_raw(&app, "tx", &headers, body.clone()).await;
        assert_eq!(status, 403, "{what}: {text}");
    }
    assert_eq!(status_of(&app, &id).await["status"], "sent");
    assert_eq!(receipts_stored(&app).await, 0, "nothing recorded");

    // Whitespace around a good signature is only HTTP's optional whitespace: still proven.
    let (status, text) = post_raw(
        &app,
        "tx",
        &[
            ("telnyx-timestamp", value(&now.to_string())),
            ("telnyx-signature-ed25519", value(&format!("  {good}\t"))),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(status_of(&app, &id).await["status"], "delivered");
}

/// Signed webhooks whose bodies smsgate cannot use: a clear 4xx (never a 5xx), nothing
/// changes; final events that say nothing final: 204, nothing changes. Then a valid one
/// applies once, even when sent many times at once, and a later contrary one does not move it.
#[tokio::test]
async fn signed_webhooks_of_the_wrong_shape_get_a_4xx_and_a_valid_one_applies_once() {
    let (app, id, telnyx_id) = sent_with_key(&public_key_base64(), "").await;
    let long_id = "a".repeat(256);
    let refused: Vec<(&str, Vec<u8>, u16)> = vec![
        ("not JSON", b"not json".to_vec(), 400),
        ("empty", Vec::new(), 400),
        ("an array", b"[1,2]".to_vec(), 400),
        ("no data", br#"{"meta":{}}"#.to_vec(), 400),
        ("data not an object", br#"{"data":"x"}"#.to_vec(), 400),
        (
            "payload id a number",
            serde_json::to_vec(&json!({"data": {"event_type": "message.finalized",
                "payload": {"id": 5, "to": [{"status": "delivered"}]}}}))
            .expect("json"),
            400,
        ),
        (
            "payload id empty",
            serde_json::to_vec(&finalized("", "delivered", None)).expect("json"),
            400,
        ),
        (
            "payload id only NUL",
            serde_json::to_vec(&finalized("\u{0}\u{1}", "delivered", None)).expect("json"),
            400,
        ),
        (
            "payload id over 255 bytes",
            serde_json::to_vec(&finalized(&long_id, "delivered", None)).expect("json"),
            400,
        ),
        (
            "trailing garbage",
            {
                let mut body =
                    serde_json::to_vec(&finalized(&telnyx_id, "delivered", None)).expect("json");
                body.extend_from_slice(b" {}");
                body
            },
            400,
        ),
    ];
    for (what, body, expected) in refused {
        let (status, text) = post_signed(&app, &body).await;
        assert_eq!(status, expected, "{what}: {text}");
        assert!(
            !text.contains(API_TOKEN),
            "{what}: the refusal names no secret"
        );
    }
    // Huge: refused before anything is read or checked.
    let mut huge = serde_json::to_vec(&finalized(&telnyx_id, "delivered", None)).expect("json");
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(b",\"pad\":\"");
    huge.extend(std::iter::repeat_n(b'x', 64 * 1024));
    huge.extend_from_slice(b"\"}");
    let (status, text) = post_signed(&app, &huge).await;
    assert_eq!(status, 413, "huge: {text}");

    // Nothing final: answered so Telnyx stops, nothing recorded.
    let mut sent_event = finalized(&telnyx_id, "delivered", None);
    sent_event["data"]["event_type"] = "message.sent".into();
    let mut no_recipient = finalized(&telnyx_id, "delivered", None);
    no_recipient["data"]["payload"]["to"] = json!([]);
    let mut no_to = finalized(&telnyx_id, "delivered", None);
    no_to["data"]["payload"]
        .as_object_mut()
        .expect("payload")
        .remove("to");
    let mut other_case = finalized(&telnyx_id, "delivered", None);
    other_case["data"]["event_type"] = "MESSAGE.FINALIZED".into();
    for (what, event) in [
        ("message.sent", sent_event),
        ("to empty", no_recipient),
        ("to missing", no_to),
        ("event type in capitals", other_case),
        (
            "unconfirmed",
            finalized(&telnyx_id, "delivery_unconfirmed", None),
        ),
        ("queued", finalized(&telnyx_id, "queued", None)),
    ] {
        let body = serde_json::to_vec(&event).expect("json");
        let (status, text) = post_signed(&app, &body).await;
        assert_eq!(status, 204, "{what}: {text}");
    }
    assert_eq!(status_of(&app, &id).await["status"], "sent");
    assert_eq!(receipts_stored(&app).await, 0, "nothing recorded");

    // A receipt for an id of another carrier's: kept for later, never applied here.
    let body = serde_json::to_vec(&finalized("someone-else", "delivered", None)).expect("json");
    assert_eq!(post_signed(&app, &body).await.0, 204);

    // Valid, sent ten times at once (Telnyx duplicates): delivered, one receipt.
    let body = serde_json::to_vec(&finalized(&telnyx_id, "delivered", None)).expect("json");
    let posts = (0..10).map(|_| post_signed(&app, &body));
    for (status, text) in futures_util::future::join_all(posts).await {
        assert_eq!(status, 204, "{text}");
    }
    assert_eq!(status_of(&app, &id).await["status"], "delivered");
    let mine: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_receipts WHERE carrier_message_id = $1")
            .bind(&telnyx_id)
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(mine, 1, "recorded once");
    // A contrary final event afterwards (out of order): the message stays delivered.
    let body =
        serde_json::to_vec(&finalized(&telnyx_id, "delivery_failed", Some("40001"))).expect("json");
    assert_eq!(post_signed(&app, &body).await.0, 204);
    assert_eq!(status_of(&app, &id).await["status"], "delivered");
}

/// Only a Telnyx carrier that takes receipts has a Telnyx webhook: another kind's name, a
/// Telnyx carrier without public_url and an unknown name are 404, even correctly signed.
#[tokio::test]
async fn a_telnyx_webhook_for_another_kind_or_a_carrier_without_receipts_is_404() {
    let twilio = TwilioStandIn::start().await;
    let extra = format!(
        "{}public_url = \"{PUBLIC_URL}\"\n\
         [carriers.tn]\nkind = \"telnyx\"\napi_token = \"t2\"\nmessaging_profile_id = \"p\"\n",
        twilio.carrier_toml("tw")
    );
    let (app, id, telnyx_id) = sent_with_key(&public_key_base64(), &extra).await;
    let body = serde_json::to_vec(&finalized(&telnyx_id, "delivered", None)).expect("json");
    let now = database_now(&app).await.to_string();
    let headers = [
        ("telnyx-timestamp", value(&now)),
        ("telnyx-signature-ed25519", value(&sign(&now, &body))),
    ];
    for carrier in ["tw", "tn", "nobody", "TX", "tx%00"] {
        let (status, text) = post_raw(&app, carrier, &headers, body.clone()).await;
        assert_eq!(status, 404, "{carrier}: {text}");
    }
    // And a Telnyx carrier's name under another kind's path.
    let response = app
        .client
        .post(app.url("/v1/callbacks/twilio/tx"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("MessageSid=x&MessageStatus=delivered")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(status_of(&app, &id).await["status"], "sent");
    assert_eq!(receipts_stored(&app).await, 0);
}

/// The identity point is a valid encoding of an "Ed25519 public key": under it, the
/// signature (R = identity, s = 0) verifies for every message, so anyone forges any webhook.
/// Such a key (and the other small-order points, e.g. 32 zero bytes) must be refused.
#[tokio::test]
async fn small_order_webhook_keys_are_refused_by_the_configuration() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    for (what, key) in [
        ("the identity", B64.encode(identity)),
        ("32 zero bytes (order 4)", B64.encode([0u8; 32])),
    ] {
        let table = format!(
            "[carriers.c]\nkind = \"telnyx\"\napi_token = \"t\"\nmessaging_profile_id = \"p\"\n\
             public_url = \"https://x.example\"\nwebhook_public_key = \"{key}\"\n"
        );
        let config = TestConfig::base().only_carrier(&table, "c");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("smsgate.toml");
        std::fs::write(&path, config.to_string()).expect("write");
        let refused = smsgate::config::Config::load(&path);
        assert!(
            refused.as_ref().is_err_and(|err| err
                .problems
                .iter()
                .any(|p| p.key == "carriers.c.webhook_public_key")),
            "{what}: a weak webhook_public_key is accepted: {:?}",
            refused.err().map(|e| e.problems)
        );
    }
}

// A forged webhook under a small-order key: such keys are refused by the configuration
// (above), and `verify_strict` refuses the forgery anyway (carriers::telnyx::receipts unit
// tests).

/// What Telnyx (or a proxy before it) answers is stored with the attempt and logged; when it
/// echoes our Authorization header, the API key must not end up there.
#[tokio::test]
async fn an_echoed_authorization_header_does_not_store_the_api_token() {
    let standin = TelnyxStandIn::start().await;
    let body: &'static str = Box::leak(
        json!({"errors": [{"code": "10009", "title": "Authentication failed",
            "detail": format!("The API key in 'Authorization: Bearer {API_TOKEN}' is invalid.")}]})
        .to_string()
        .into_boxed_str(),
    );
    standin.set_default(Reply::Raw(401, body));
    let config = TestConfig::base()
        .only_carrier(&standin.carrier_toml("tx"), "tx")
        .merge("[dispatch]\nmax_attempts = 1\npoll_interval_ms = 100\n");
    let app = TestApp::spawn_role(&config, Role::All).await;
    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"][0]["outcome"], "carrier_failure", "{view}");
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(a)::text FROM message_attempts a")
            .fetch_all(&app.pool)
            .await
            .expect("attempts");
    assert!(!stored.is_empty());
    assert!(
        !view.to_string().contains(API_TOKEN),
        "the message view shows the api_token: {view}"
    );
    for row in &stored {
        assert!(
            !row.contains(API_TOKEN),
            "the stored attempt holds the api_token: {row}"
        );
    }
}

/// Answers that are not quite Telnyx's: a 200 without `data.id` (or with one of control
/// characters only) is sent without an id, never a panic; an error `code` as a number is
/// read like the string, a missing or odd code falls back to the HTTP status.
#[tokio::test]
async fn odd_telnyx_answers_are_classified_without_panicking() {
    for (reply, status, outcome, id) in [
        (Reply::Raw(200, r#"{"data":{}}"#), "sent", "accepted", None),
        (
            Reply::Raw(200, r#"{"data":null}"#),
            "sent",
            "accepted",
            None,
        ),
        (
            Reply::Raw(200, r#"{"data":{"id":"\u0000\u0007"}}"#),
            "sent",
            "accepted",
            None,
        ),
        (
            Reply::Raw(200, r#"{"data":{"id":"ab\u0000c"}}"#),
            "sent",
            "accepted",
            Some("abc"),
        ),
        (Reply::Raw(200, r#"[]"#), "sent", "accepted", None),
        (
            Reply::Raw(400, r#"{"errors":[{"code":40300,"title":"Blocked"}]}"#),
            "failed",
            "recipient_failure",
            None,
        ),
        (
            Reply::Raw(400, r#"{"errors":[{"title":"no code"}]}"#),
            "failed",
            "carrier_failure",
            None,
        ),
        (
            Reply::Raw(400, r#"{"errors":[{"code":{"x":1}}]}"#),
            "failed",
            "carrier_failure",
            None,
        ),
        (
            Reply::Raw(429, r#"{"errors":[{"code":10011}]}"#),
            "failed",
            "throttled",
            None,
        ),
        (
            Reply::Raw(500, r#"{"errors":"x"}"#),
            "failed",
            "carrier_failure",
            None,
        ),
    ] {
        let standin = TelnyxStandIn::start().await;
        standin.set_default(reply.clone());
        let config = TestConfig::base()
            .only_carrier(&standin.carrier_toml("tx"), "tx")
            .merge("[dispatch]\nmax_attempts = 1\npoll_interval_ms = 100\n");
        let app = TestApp::spawn_role(&config, Role::All).await;
        let message = queue(&app, "+14155552671").await;
        let view = wait_final(&app, &message, Duration::from_secs(10)).await;
        assert_eq!(view["status"], status, "{reply:?}: {view}");
        if status == "failed" {
            assert_eq!(view["attempts"][0]["outcome"], outcome, "{reply:?}: {view}");
        }
        let _ = outcome;
        assert_eq!(
            view["attempts"][0]["carrier_message_id"].as_str(),
            id,
            "{reply:?}: {view}"
        );
    }
}
