//! Voice requests and route senders with the real app and carrier stand-ins that check each
//! carrier's wire format: a call through Twilio's Calls resource (only parameters of its
//! OpenAPI description), a VOICE message through MessageMedia, carriers that cannot call
//! passed over, call status callbacks, and a route's own sender.

use std::time::Duration;

use serde_json::{Value, json};
use smsgate::Role;

use crate::dispatch::{FAST_DISPATCH, status_of, wait_final};
use crate::helpers::{TestApp, assert_error_saying, token};
use crate::receipts::{PUBLIC_URL, post_twilio, twilio_signature};
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::standins::twilio::{FROM, TwilioStandIn};
use crate::test_config::TestConfig;

/// A custom-phone-provider notification asking for a call.
fn voice_notification(recipient: &str, locale: &str) -> Value {
    json!({
        "notification": {
            "recipient": recipient, "delivery_method": "voice", "message_type": "otp_verify",
            "as_text": "Your code is 123456", "as_voice": "Your verification code is 123456",
            "code": "123456", "locale": locale
        },
        "request": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}
    })
}

async fn post_voice(app: &TestApp, body: &Value) -> reqwest::Response {
    app.client
        .post(app.url("/v1/auth0/phone-provider"))
        .bearer_auth(token())
        .json(body)
        .send()
        .await
        .expect("sent")
}

/// A worker sending through a Twilio stand-in that asks for status callbacks.
async fn twilio_with_callbacks() -> (TwilioStandIn, TestApp) {
    let standin = TwilioStandIn::start().await;
    let table = format!(
        "{}public_url = \"{PUBLIC_URL}\"\n",
        standin.carrier_toml("twilio")
    );
    let config = TestConfig::base()
        .only_carrier(&table, "twilio")
        .merge(FAST_DISPATCH);
    let app = TestApp::spawn_role(&config, Role::All).await;
    (standin, app)
}

async fn call(app: &TestApp, recipient: &str, locale: &str) -> Value {
    let response = post_voice(app, &voice_notification(recipient, locale)).await;
    assert_eq!(response.status().as_u16(), 200, "a call is accepted");
    let id = response.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();
    wait_final(app, &id, Duration::from_secs(10)).await
}

#[tokio::test]
async fn a_voice_request_is_a_twilio_call_saying_the_code_twice_in_the_users_language() {
    let (standin, app) = twilio_with_callbacks().await;

    let view = call(&app, "+14155552671", "fr_FR").await;

    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["channel"], "voice");
    let sid = view["attempts"][0]["carrier_message_id"]
        .as_str()
        .expect("sid");
    assert!(sid.starts_with("CA"), "a call's sid: {sid}");
    let seen = standin.seen();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].uri.path().ends_with("/Calls.json"),
        "{}",
        seen[0].uri
    );
    let fields = &seen[0].fields;
    assert_eq!(fields.get("From").map(String::as_str), Some(FROM));
    assert_eq!(fields.get("To").map(String::as_str), Some("+14155552671"));
    assert_eq!(
        fields.get("StatusCallback").map(String::as_str),
        Some("https://sms.example.com/v1/callbacks/twilio/twilio")
    );
    let said = "<Say language=\"fr-FR\">Your verification code is 1, 2, 3, 4, 5, 6</Say>";
    assert_eq!(
        fields.get("Twiml").map(String::as_str),
        Some(format!("<Response>{said}<Pause length=\"1\"/>{said}</Response>").as_str()),
        "the voice text, digit by digit, twice"
    );
    assert!(!fields.contains_key("Body"), "a call carries no SMS body");

    // Twilio's call status callback: answered and played is delivered.
    let params = [
        ("CallSid", sid),
        ("CallStatus", "completed"),
        ("To", "+14155552671"),
    ];
    let signature = twilio_signature(&format!("{PUBLIC_URL}/v1/callbacks/twilio/twilio"), &params);
    let response = post_twilio(&app, &params, Some(&signature)).await;
    assert_eq!(response.status().as_u16(), 204);
    let id = view["id"].as_str().expect("id");
    assert_eq!(status_of(&app, id).await["status"], "delivered");
}

#[tokio::test]
async fn an_unanswered_call_is_undelivered() {
    let (_standin, app) = twilio_with_callbacks().await;
    for (recipient, status) in [("+14155550101", "busy"), ("+14155550102", "no-answer")] {
        let view = call(&app, recipient, "en").await;
        let sid = view["attempts"][0]["carrier_message_id"]
            .as_str()
            .expect("sid");
        let params = [("CallSid", sid), ("CallStatus", status)];
        let signature =
            twilio_signature(&format!("{PUBLIC_URL}/v1/callbacks/twilio/twilio"), &params);
        let response = post_twilio(&app, &params, Some(&signature)).await;
        assert_eq!(response.status().as_u16(), 204);
        let id = view["id"].as_str().expect("id");
        assert_eq!(
            status_of(&app, id).await["status"],
            "undelivered",
            "{status}"
        );
    }
}

#[tokio::test]
async fn carriers_that_cannot_call_are_passed_over_and_messagemedia_speaks_voice() {
    let twilio = TwilioStandIn::start().await;
    let messagemedia = MessageMediaStandIn::start().await;
    // The route's first carrier (the log carrier) cannot call; MessageMedia can.
    let tables = twilio.carrier_toml("twilio") + &messagemedia.carrier_toml("mm");
    let config = TestConfig::base()
        .merge(&tables)
        .merge(FAST_DISPATCH)
        .route("", &["console", "mm", "twilio"])
        .set("dispatch.lease_seconds", 15);
    let app = TestApp::spawn_role(&config, Role::All).await;

    let view = call(&app, "+14155552671", "en_US").await;

    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["carrier"], "mm");
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(1), "{view}");
    let seen = messagemedia.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].fields.get("format").map(String::as_str),
        Some("VOICE")
    );
    assert_eq!(
        seen[0].fields.get("content").map(String::as_str),
        Some("Your verification code is 123456")
    );
    assert!(
        twilio.seen().is_empty(),
        "the first carrier that calls took it"
    );
}

#[tokio::test]
async fn a_route_with_no_carrier_that_calls_refuses_voice_and_stores_nothing() {
    let twilio = TwilioStandIn::start().await;
    // Twilio without a number to call from sends text only.
    let table = twilio.carrier_toml("twilio").replace(
        &format!("from = \"{FROM}\"\n"),
        "messaging_service_sid = \"MG0123456789abcdef0123456789abcdef\"\n",
    );
    let config = TestConfig::base().merge(&table).route("+44", &["twilio"]);
    let app = TestApp::spawn_with(&config).await;

    let refused = post_voice(&app, &voice_notification("+447400123456", "en")).await;

    assert_error_saying(refused, 400, "voice_not_supported", "places calls").await;
    assert_eq!(app.stored_rows().await, 0);
    let text = app
        .client
        .post(app.url("/v1/auth0/phone-provider"))
        .bearer_auth(token())
        .json(
            &json!({"notification": {"recipient": "+447400123456", "as_text": "Code 123456",
                                       "delivery_method": "text"}}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(text.status().as_u16(), 200, "text still goes");
}

#[tokio::test]
async fn a_routes_sender_replaces_the_carriers_from_for_its_prefix() {
    let standin = TwilioStandIn::start().await;
    let config = TestConfig::base()
        .only_carrier(&standin.carrier_toml("twilio"), "twilio")
        .merge(FAST_DISPATCH)
        .merge("[[routes]]\nprefix = \"+44\"\ncarriers = [\"twilio\"]\nsender = \"ACME\"\n");
    let app = TestApp::spawn_role(&config, Role::All).await;

    for recipient in ["+447400123456", "+14155552671"] {
        let id = crate::dispatch::queue(&app, recipient).await;
        wait_final(&app, &id, Duration::from_secs(10)).await;
    }

    let from_of = |to: &str| {
        standin
            .received()
            .into_iter()
            .find(|r| r.to == to)
            .and_then(|r| r.from)
    };
    assert_eq!(
        from_of("+447400123456").as_deref(),
        Some("ACME"),
        "the route's sender"
    );
    assert_eq!(
        from_of("+14155552671").as_deref(),
        Some(FROM),
        "the carrier's from"
    );
}

/// Found by an attack: a MessageMedia call went out from an alphanumeric sender, and a call
/// under a text's idempotency key was answered as that text (no call placed).
#[tokio::test]
async fn a_call_comes_from_a_number_and_is_never_a_repeat_of_a_text() {
    let messagemedia = MessageMediaStandIn::start().await;
    let table = messagemedia.carrier_toml("mm") + "voice_format = \"TTS\"\n";
    let config = TestConfig::base()
        .only_carrier(&table, "mm")
        .merge(FAST_DISPATCH)
        .merge("[[routes]]\nprefix = \"+61\"\ncarriers = [\"mm\"]\nsender = \"ACME\"\n");
    let app = TestApp::spawn_role(&config, Role::All).await;

    let view = call(&app, "+61491570157", "en_AU").await;
    assert_eq!(view["status"], "sent", "{view}");
    let seen = messagemedia.seen();
    assert_eq!(
        seen[0].fields.get("format").map(String::as_str),
        Some("TTS"),
        "the OpenAPI's name, as configured"
    );
    assert_eq!(
        seen[0].fields.get("source_number"),
        None,
        "no alphanumeric caller: MessageMedia's own number"
    );

    // The text of a notification, then its call: two messages.
    let mut text = voice_notification("+61491570158", "en_AU");
    text["notification"]["delivery_method"] = json!("text");
    let texted = post_voice(&app, &text).await;
    let called = post_voice(&app, &voice_notification("+61491570158", "en_AU")).await;
    let id = |v: Value| v["id"].as_str().expect("id").to_string();
    let texted = id(texted.json().await.expect("JSON"));
    let called = id(called.json().await.expect("JSON"));
    assert_ne!(texted, called, "a call is not a repeat of the text");
    // One explicit key for a text and then a call: the call is another message, refused.
    let keyed = |body: &Value| {
        app.client
            .post(app.url("/v1/auth0/phone-provider"))
            .bearer_auth(token())
            .header("idempotency-key", "login-7")
            .json(body)
            .send()
    };
    let mut text = voice_notification("+61491570159", "en_AU");
    text["notification"]["delivery_method"] = json!("text");
    assert_eq!(keyed(&text).await.expect("sent").status().as_u16(), 200);
    let voice = voice_notification("+61491570159", "en_AU");
    let reused = keyed(&voice).await.expect("sent");
    assert_error_saying(reused, 422, "idempotency_key_reused", "different message").await;
}
