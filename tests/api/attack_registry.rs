//! Attacks on the carrier registry refactor (each kind one folder, its table read by its kind,
//! receipt routes mounted for every kind): secrets in `check-config`'s output and errors,
//! odd carrier tables, values set by variables, every problem named in one run, receipts
//! posted to the wrong kind's path or unproven, and which carriers place calls.

use base64::Engine;
use ed25519_dalek::Signer;
use serde_json::{Value, json};

use crate::cli::{smsgate, stderr, stdout, write_config};
use crate::helpers::{TestApp, assert_error, assert_error_saying, token};
use crate::telnyx_receipts::{database_now, finalized, public_key_base64, signing_key};
use crate::test_config::TestConfig;

/// A 2048-bit RSA public key (base64 DER, as MessageMedia's key API returns it); its private
/// half is not kept, so nothing can be signed with it.
const RSA_PUBLIC_KEY: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAsqN74R6LemP7vi6pMPL6AubO0OP7rBQE71p3CD/MBEY3A8ei/sSO/pDKg8m8P7WCEzrrj3t2+MLUUMVOg4SEYeI8/1PlqT80c2FIaVH+MEcZRr4iSDL8Go4bdn0nDNRNJR/nn43Z0rH7A6Cl/+SiMPgyuENUvPVPpHQiX8xWUmNcOsGNFVnz79BFIDTd0rnd8ZQb9ddHFKaBtIKAzP9PtEg5hR3eSN/SbVBeQOuQPHYu8vPqCwhmWSZFKZO2Ri1nWvpSpuiVOAm5S+bgwia9x2bkrcVSenRuOIjHuE2HH0Nzgv6U4e9+IUzc1mD8QzMiR2sat3+rAqXEHP4ksIU3lQIDAQAB";

const PUBLIC_URL: &str = "https://sms.example.com";
const MM_CALLBACK_SECRET: &str = "mm-callback-secret-Zr6Kd1Nc4Vb8";

/// `check-config` on `config` with `env`: (exit code, stdout, stderr).
fn check(config: &TestConfig, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &config.to_string());
    let output = smsgate(&["check-config"], &path, env);
    (output.status.code(), stdout(&output), stderr(&output))
}

fn assert_named(errors: &str, lines: &[&str]) {
    for line in lines {
        assert!(errors.contains(line), "{line:?} not named in:\n{errors}");
    }
}

fn assert_not_shown(shown: &str, values: &[&str]) {
    for value in values {
        assert!(!shown.contains(value), "{value:?} shown in:\n{shown}");
    }
}

/// A signer with a published secret (docs/auth0.md): its audience and subject are the
/// MessageMedia account's API secret and key, so both are as secret as the API secret.
const PUBLISHED_SIGNER: &str = r#"
[auth0.mm]
secret = "MessageMedia"
public_secret = true
audience = "mm-api-secret-Q7x9Lp2Vb8Nc4Kd1"
subject = "4815162342"
"#;

/// Regression against ec6a82a: an API key of digits set by a variable arrives as a number,
/// and the printed configuration compared only text with the signer's subject.
#[test]
fn an_api_key_that_is_a_published_signers_subject_is_hidden_even_when_it_is_digits() {
    let config = TestConfig::base().merge(PUBLISHED_SIGNER).merge(
        r#"
[carriers.byvar]
kind = "messagemedia"
api_secret = "mm-api-secret-Q7x9Lp2Vb8Nc4Kd1"
[carriers.byfile]
kind = "messagemedia"
api_key = 4815162342
api_secret = "mm-api-secret-Q7x9Lp2Vb8Nc4Kd1"
"#,
    );

    let (code, printed, errors) = check(
        &config,
        &[("SMSGATE__CARRIERS__BYVAR__API_KEY", "4815162342")],
    );

    assert_eq!(code, Some(0), "{errors}");
    assert_not_shown(&printed, &["4815162342", "mm-api-secret-Q7x9Lp2Vb8Nc4Kd1"]);
    assert_not_shown(&errors, &["4815162342"]);
}

/// Every kind's secrets, set by variables (digits-only ones arrive as numbers), are hidden in
/// the printed configuration, and never repeated by errors when the same tables have other
/// problems, a secret is set under another kind's key, or as the wrong type.
#[test]
fn every_kinds_secrets_set_by_variables_are_never_shown_valid_or_not() {
    let tables = format!(
        r#"
[carriers.t]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
from = "+15005550006"
[carriers.tk]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
api_key_sid = "SK1"
messaging_service_sid = "MG1"
[carriers.m]
kind = "messagemedia"
api_key = "mm-key"
public_url = "{PUBLIC_URL}"
[carriers.s]
kind = "sns"
region = "eu-west-1"
access_key_id = "AKIAEXAMPLE"
[carriers.x]
kind = "telnyx"
messaging_profile_id = "profile"
"#
    );
    let config = TestConfig::base().merge(&tables);
    let secrets = [
        ("SMSGATE__CARRIERS__T__AUTH_TOKEN", "twilio-token-Kd1Nc4"),
        ("SMSGATE__CARRIERS__TK__API_KEY_SECRET", "90817263544536"),
        ("SMSGATE__CARRIERS__M__API_SECRET", "mm-secret-Vb8Lp2"),
        ("SMSGATE__CARRIERS__M__CALLBACK_SECRET", "8172635445362718"),
        (
            "SMSGATE__CARRIERS__S__SECRET_ACCESS_KEY",
            "aws-secret-Zr6Q7x",
        ),
        ("SMSGATE__CARRIERS__X__API_TOKEN", "27182818284590"),
    ];
    let values: Vec<&str> = secrets.iter().map(|(_, value)| *value).collect();

    let (code, printed, errors) = check(&config, &secrets);
    assert_eq!(code, Some(0), "{errors}");
    assert!(printed.contains("[redacted]"), "{printed}");
    assert_not_shown(&printed, &values);
    assert_not_shown(&errors, &values);

    // The same tables, each with problems beside its secrets: secrets set under another
    // kind's key, or where a table or list goes.
    let mut broken: Vec<(&str, &str)> = secrets.to_vec();
    broken.extend([
        ("SMSGATE__CARRIERS__T__TIMEOUT_MS", "0"),
        ("SMSGATE__CARRIERS__T__API_SECRET", "wrong-kind-Lp2Vb8"),
        ("SMSGATE__CARRIERS__M__API_TOKEN", "31415926535897"),
        ("SMSGATE__CARRIERS__S__AUTH_TOKEN", "[\"listed-Nc4Kd1\"]"),
        (
            "SMSGATE__CARRIERS__X__SECRET_ACCESS_KEY__INNER",
            "nested-Q7xZr6",
        ),
        ("SMSGATE__CARRIERS__TK__MAX_IN_FLIGHT", "0"),
    ]);
    let mut values = values;
    values.extend([
        "wrong-kind-Lp2Vb8",
        "31415926535897",
        "listed-Nc4Kd1",
        "nested-Q7xZr6",
    ]);

    let (code, printed, errors) = check(&config, &broken);
    assert_eq!(code, Some(2), "{errors}");
    assert!(printed.is_empty(), "nothing printed as if valid");
    assert_named(
        &errors,
        &[
            "carriers.t.timeout_ms: must be at least 1 (set by SMSGATE__CARRIERS__T__TIMEOUT_MS)",
            "carriers.t.api_secret: is not a key of kind \"twilio\"",
            "carriers.m.api_token: is not a key of kind \"messagemedia\"",
            "carriers.s.auth_token: is not a key of kind \"sns\"",
            "carriers.x.secret_access_key: is not a key of kind \"telnyx\"",
            "carriers.tk.max_in_flight: must be at least 1 (remove it for no limit) (set by \
             SMSGATE__CARRIERS__TK__MAX_IN_FLIGHT)",
        ],
    );
    assert_not_shown(&errors, &values);
}

/// Odd carrier tables, all in one run: each named with its key (and the variable that set
/// it), none with its value.
#[test]
fn odd_carrier_tables_are_all_named_in_one_run_without_their_values() {
    let config = TestConfig::base().merge(
        r#"
[carriers.envkind]
account_sid = "AC00000000000000000000000000000000"
auth_token = "kind-by-variable-Zr6Kd1"
from = "+15005550006"
[carriers.cased]
kind = "Twilio"
[carriers.numbered]
region = "eu-west-1"
[carriers.nested]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
from = "+15005550006"
[carriers.nested.auth_token]
value = "nested-token-Q7x9Lp"
[carriers.shared]
kind = "telnyx"
timeout_ms = 0
max_in_flight = 0
webhook_public_key = "AAAA"
"#,
    );
    let env = [
        ("SMSGATE__CARRIERS__ENVKIND__KIND", "twilio"),
        ("SMSGATE__CARRIERS__NUMBERED__KIND", "5"),
        ("SMSGATE__CARRIERS__STRINGY", "stringy-value-Vb8Nc4"),
        ("SMSGATE__CARRIERS__SHARED__BREAKER_FAILURES", "0"),
    ];

    let (code, printed, errors) = check(&config, &env);

    assert_eq!(code, Some(2));
    assert!(printed.is_empty());
    let kinds = "unknown value; expected one of `log`, `twilio`, `messagemedia`, `sns`, `telnyx`";
    assert_named(
        &errors,
        &[
            &format!("carriers.cased.kind: {kinds}"),
            &format!("carriers.numbered.kind: {kinds} (set by SMSGATE__CARRIERS__NUMBERED__KIND)"),
            "carriers.stringy: invalid type: found a string, expected a map (set by \
             SMSGATE__CARRIERS__STRINGY)",
            "carriers.nested.auth_token: invalid type: found a table",
            "carriers.shared.timeout_ms: must be at least 1",
            "carriers.shared.max_in_flight: must be at least 1 (remove it for no limit)",
            "carriers.shared.breaker_failures: must be at least 1 (set by \
             SMSGATE__CARRIERS__SHARED__BREAKER_FAILURES)",
            "carriers.shared.api_token: is required",
            "carriers.shared.webhook_public_key: must be a 32-byte Ed25519 public key",
        ],
    );
    assert!(
        !errors.contains("carriers.envkind"),
        "a kind set by a variable reads the table:\n{errors}"
    );
    assert_not_shown(
        &errors,
        &[
            "kind-by-variable-Zr6Kd1",
            "nested-token-Q7x9Lp",
            "stringy-value-Vb8Nc4",
            "\"Twilio\"",
        ],
    );
}

/// Values that look like numbers keep their text when set by variables: an account SID with
/// leading zeros, a `from` with its plus (which makes the Twilio carrier one that calls, so a
/// spend ceiling needs its price), a single signature key as one string.
#[test]
fn values_set_by_variables_keep_their_exact_text_and_a_plus_makes_a_caller() {
    let tables = format!(
        r#"
[carriers.t]
kind = "twilio"
auth_token = "twilio-token-Kd1Nc4"
[carriers.m]
kind = "messagemedia"
api_key = "mm-key"
api_secret = "mm-secret-Vb8Lp2"
public_url = "{PUBLIC_URL}"
"#
    );
    let config = TestConfig::base().merge(&tables);
    let env = [
        ("SMSGATE__CARRIERS__T__ACCOUNT_SID", "007"),
        ("SMSGATE__CARRIERS__T__FROM", "+61491570157"),
        ("SMSGATE__CARRIERS__M__CALLBACK_PUBLIC_KEYS", RSA_PUBLIC_KEY),
    ];

    let (code, printed, errors) = check(&config, &env);

    assert_eq!(code, Some(0), "{errors}");
    assert!(printed.contains("account_sid = \"007\""), "{printed}");
    assert!(printed.contains("from = \"+61491570157\""), "{printed}");
    assert!(printed.contains(RSA_PUBLIC_KEY), "{printed}");

    // A spend ceiling with a default price for the first carrier only: the Twilio carrier
    // places calls with its E.164 `from`, so it must be priced; with "ACME" it does not.
    let ceiling = config
        .clone()
        .route("", &["console", "t"])
        .merge("[spend]\ncurrency = \"USD\"\ndaily_limit = 10.0\n")
        .merge("[[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n");
    let (code, _, errors) = check(&ceiling, &env);
    assert_eq!(code, Some(2));
    assert_named(&errors, &["(or first to place calls); missing for t"]);

    let mut alphanumeric = env;
    alphanumeric[1] = ("SMSGATE__CARRIERS__T__FROM", "ACME");
    let (code, _, errors) = check(&ceiling, &alphanumeric);
    assert_eq!(
        code,
        Some(0),
        "a carrier that cannot call needs no price:\n{errors}"
    );
}

/// Regression against ec6a82a: a calling carrier whose table has a problem is no longer seen
/// as one that calls, so the spend ceiling's missing price is named only in the next run.
#[test]
fn a_broken_calling_carriers_missing_price_is_named_in_the_same_run() {
    let config = TestConfig::base()
        .merge("[carriers.m]\nkind = \"messagemedia\"\napi_key = \"mm-key\"\n")
        .route("", &["console", "m"])
        .merge("[spend]\ncurrency = \"USD\"\ndaily_limit = 10.0\n")
        .merge("[[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.01\n");

    let (code, _, errors) = check(&config, &[]);

    assert_eq!(code, Some(2));
    assert_named(
        &errors,
        &[
            "carriers.m.api_secret: is required for this kind",
            "(or first to place calls); missing for m",
        ],
    );
}

/// Regression against ec6a82a: on a public listener a placeholder credential is named only
/// once the rest of its table is right.
#[test]
fn a_placeholder_credential_is_named_beside_its_tables_other_problems() {
    let config = TestConfig::base()
        .set("server.listen", "0.0.0.0:0")
        .set("admin.token", "adm-k3J9v0Qm7Lr2Xz8Wq4Nt6Bp1Yc5Hd0Gs")
        .merge("[carriers.t]\nkind = \"twilio\"\nauth_token = \"change-me\"\nfrom = \"+15005550006\"\n")
        .route("", &["t"]);

    let (code, _, errors) = check(&config, &[]);

    assert_eq!(code, Some(2));
    assert_named(
        &errors,
        &[
            "carriers.t.account_sid: is required for this kind",
            "carriers.t.auth_token: is a placeholder from an example",
        ],
    );
}

/// One carrier of every kind that asks for receipts, one of each that cannot, and carriers
/// that could but have no `public_url`.
fn every_kind() -> TestConfig {
    TestConfig::base().merge(&format!(
        r#"
[carriers.tw]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
auth_token = "twilio-token-Kd1Nc4"
from = "+15005550006"
public_url = "{PUBLIC_URL}"
[carriers.twquiet]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
auth_token = "twilio-token-Kd1Nc4"
from = "+15005550006"
[carriers.mm]
kind = "messagemedia"
api_key = "mm-key"
api_secret = "mm-secret-Vb8Lp2"
public_url = "{PUBLIC_URL}"
callback_secret = "{MM_CALLBACK_SECRET}"
[carriers.mmsigned]
kind = "messagemedia"
api_key = "mm-key"
api_secret = "mm-secret-Vb8Lp2"
public_url = "{PUBLIC_URL}"
callback_secret = "{MM_CALLBACK_SECRET}"
callback_public_keys = ["{RSA_PUBLIC_KEY}"]
[carriers.mmkeysonly]
kind = "messagemedia"
api_key = "mm-key"
api_secret = "mm-secret-Vb8Lp2"
public_url = "{PUBLIC_URL}"
callback_public_keys = ["{RSA_PUBLIC_KEY}"]
[carriers.mmquiet]
kind = "messagemedia"
api_key = "mm-key"
api_secret = "mm-secret-Vb8Lp2"
callback_public_keys = ["{RSA_PUBLIC_KEY}"]
[carriers.tx]
kind = "telnyx"
api_token = "telnyx-token-Q7x9Lp"
messaging_profile_id = "profile"
public_url = "{PUBLIC_URL}"
webhook_public_key = "{key}"
[carriers.sn]
kind = "sns"
region = "eu-west-1"
"#,
        key = public_key_base64()
    ))
}

async fn post(
    app: &TestApp,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("sent")
}

/// Every kind's route takes only its own carriers that ask for receipts: another kind's
/// carrier, an unknown one and one without `public_url` get the JSON 404; an unproven report
/// to the right path gets 403; nothing is recorded.
#[tokio::test]
async fn each_kinds_callback_route_takes_only_its_own_carriers_and_only_proven_reports() {
    let app = TestApp::spawn_with(&every_kind()).await;
    let kinds = ["twilio", "messagemedia", "telnyx", "sns", "log"];
    let carriers = [
        ("tw", Some("twilio")),
        ("mm", Some("messagemedia")),
        ("tx", Some("telnyx")),
        ("twquiet", None),
        ("mmquiet", None),
        ("sn", None),
        ("console", None),
        ("nobody", None),
    ];
    for kind in kinds {
        for (carrier, takes) in carriers {
            let path = format!("/v1/callbacks/{kind}/{carrier}");
            let response = post(
                &app,
                &path,
                &[],
                "{\"message_id\":\"x\",\"status\":\"delivered\"}",
            )
            .await;
            if takes == Some(kind) {
                assert_error(response, 403, "invalid_signature").await;
            } else {
                assert_error(response, 404, "carrier_not_found").await;
            }
        }
    }
    assert_eq!(
        app.count_rows("delivery_receipts").await,
        0,
        "nothing recorded"
    );
}

/// MessageMedia: the secret in the URL proves an unsigned report, never a signed one whose
/// signature fails, and not at all for a carrier that takes signed reports only.
#[tokio::test]
async fn a_messagemedia_signature_that_fails_is_not_rescued_by_the_secret_in_the_url() {
    let app = TestApp::spawn_with(&every_kind()).await;
    let report = json!({"message_id": "mm-0001", "status": "delivered"}).to_string();
    let keyed =
        |carrier: &str| format!("/v1/callbacks/messagemedia/{carrier}?key={MM_CALLBACK_SECRET}");
    let forged_signature = [
        ("x-messagemedia-signature", "A".repeat(344)),
        ("date", "Sun, 06 Dec 2026 10:00:00 GMT".to_string()),
    ];

    let wrong_key = post(
        &app,
        "/v1/callbacks/messagemedia/mm?key=wrong",
        &[],
        &report,
    )
    .await;
    assert_error(wrong_key, 403, "invalid_signature").await;
    let signed_badly = post(&app, &keyed("mmsigned"), &forged_signature, &report).await;
    assert_error(signed_badly, 403, "invalid_signature").await;
    let keys_only = post(&app, &keyed("mmkeysonly"), &[], &report).await;
    assert_error(keys_only, 403, "invalid_signature").await;
    assert_eq!(
        app.count_rows("delivery_receipts").await,
        0,
        "nothing recorded"
    );

    let proven = post(&app, &keyed("mm"), &[], &report).await;
    assert_eq!(proven.status().as_u16(), 204);
    let unsigned_beside_keys = post(&app, &keyed("mmsigned"), &[], &report).await;
    assert_eq!(unsigned_beside_keys.status().as_u16(), 204);
    assert_eq!(app.count_rows("delivery_receipts").await, 2);
}

fn telnyx_headers(timestamp: &str, body: &str) -> Vec<(&'static str, String)> {
    let signed = format!("{timestamp}|{body}");
    let signature = base64::engine::general_purpose::STANDARD
        .encode(signing_key().sign(signed.as_bytes()).to_bytes());
    vec![
        ("telnyx-timestamp", timestamp.to_string()),
        ("telnyx-signature-ed25519", signature),
    ]
}

/// Telnyx through the generic route: correctly signed webhooks whose timestamp is outside
/// 300 s of the database's clock (old, or from the future) are refused and change nothing.
#[tokio::test]
async fn telnyx_webhooks_signed_outside_the_window_are_refused_through_the_registry_route() {
    let app = TestApp::spawn_with(&every_kind()).await;
    let body: Value = finalized("tx-0001", "delivered", None);
    let body = body.to_string();
    let now = database_now(&app).await;

    // A minute past the window each way: the database's clock moves on while the test runs.
    for timestamp in [now - 360, now + 360, 1_000] {
        let headers = telnyx_headers(&timestamp.to_string(), &body);
        let response = post(&app, "/v1/callbacks/telnyx/tx", &headers, &body).await;
        assert_error(response, 403, "invalid_signature").await;
    }
    assert_eq!(
        app.count_rows("delivery_receipts").await,
        0,
        "nothing recorded"
    );

    let headers = telnyx_headers(&now.to_string(), &body);
    let fresh = post(&app, "/v1/callbacks/telnyx/tx", &headers, &body).await;
    assert_eq!(fresh.status().as_u16(), 204);
    assert_eq!(app.count_rows("delivery_receipts").await, 1);
}

async fn post_voice(app: &TestApp, recipient: &str) -> reqwest::Response {
    let body = json!({
        "notification": {
            "recipient": recipient, "delivery_method": "voice", "message_type": "otp_verify",
            "as_text": "Your code is 123456", "as_voice": "Your verification code is 123456",
            "code": "123456", "locale": "en"
        },
        "request": {"ip": "203.0.113.7", "user_agent": "Mozilla/5.0"}
    });
    app.client
        .post(app.url("/v1/auth0/phone-provider"))
        .bearer_auth(token())
        .json(&body)
        .send()
        .await
        .expect("sent")
}

/// Which carriers call is unchanged: SNS, Telnyx (even with a number), the log carrier and
/// Twilio without an E.164 `from` do not, so a voice request on their route is refused and
/// nothing is stored; MessageMedia always calls.
#[tokio::test]
async fn a_voice_route_of_carriers_that_cannot_call_refuses_and_messagemedia_calls() {
    let tables = r#"
[carriers.sn]
kind = "sns"
region = "eu-west-1"
[carriers.tx]
kind = "telnyx"
api_token = "telnyx-token-Q7x9Lp"
from = "+15005550006"
[carriers.twalpha]
kind = "twilio"
account_sid = "AC00000000000000000000000000000000"
auth_token = "twilio-token-Kd1Nc4"
from = "ACME"
[carriers.mm]
kind = "messagemedia"
api_key = "mm-key"
api_secret = "mm-secret-Vb8Lp2"
"#;
    let config = TestConfig::base()
        .merge(tables)
        .route("+44", &["console", "sn", "tx", "twalpha"])
        .route("+61", &["console", "sn", "tx", "twalpha", "mm"]);
    let app = TestApp::spawn_with(&config).await;

    let refused = post_voice(&app, "+447400123456").await;
    assert_error_saying(refused, 400, "voice_not_supported", "places calls").await;
    assert_eq!(app.stored_rows().await, 0, "nothing stored");

    let accepted = post_voice(&app, "+61491570157").await;
    assert_eq!(accepted.status().as_u16(), 200);
}
