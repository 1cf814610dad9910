//! One clock for every promise about time: the real binary runs on a skewed wall clock
//! (libfaketime on the gateway process alone; its monotonic clock is left alone) against a
//! database on the true one, and every decision still follows the database or the carrier.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use smsgate::Role;

use crate::cli::{terminate, wait_until_healthy};
use crate::dispatch::wait_until;
use crate::helpers::{SECRET, TestApp, auth0_claims, now, sign_with};
use crate::standins::messagemedia::MessageMediaStandIn;
use crate::standins::twilio::{Reply, TwilioStandIn};
use crate::test_config::TestConfig;

/// Debian's libfaketime (`apt-get install faketime`; .ci/run installs it).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// `smsgate serve` on `app`'s database with the wall clock moved by `faketime` (libfaketime's
/// syntax: "+90s", "-90s", or "@2026-12-06 23:59:30" to start there).
fn spawn_skewed(app: &TestApp, config: &TestConfig, dir: &Path, faketime: &str) -> (Child, u16) {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: apt-get install faketime"
    );
    let skew = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", faketime),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("FAKETIME_NO_CACHE", "1"),
    ];
    crate::process::spawn_binary_with_env(app, config, dir, &skew)
}

/// A token the skewed gateway accepts whichever way its clock is moved (a day either side).
fn lasting_token() -> String {
    let mut claims = auth0_claims();
    claims["iat"] = json!(now() - 86_400);
    claims["exp"] = json!(now() + 2 * 86_400);
    sign_with(&claims, SECRET.as_bytes(), Algorithm::HS256)
}

async fn post(client: &reqwest::Client, port: u16, body: &Value) -> reqwest::Response {
    client
        .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
        .bearer_auth(lasting_token())
        .json(body)
        .send()
        .await
        .expect("sent")
}

fn message(recipient: &str) -> Value {
    json!({"recipient": recipient, "body": "Your code is 123456", "req": {"ip": "192.0.2.1"}})
}

async fn expires_at(app: &TestApp, id: &str) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT expires_at FROM messages WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .expect("stored")
}

async fn id_of(response: reqwest::Response) -> String {
    assert_eq!(response.status().as_u16(), 200, "accepted");
    let body: Value = response.json().await.expect("JSON");
    body["id"].as_str().expect("id").to_string()
}

/// Found by an attack: `message_expiry_timestamp` was the gateway's now + validity, so a
/// gateway 90 s behind sent codes already expired and one 90 s ahead let a dead code out.
#[tokio::test]
async fn messagemedia_is_given_the_messages_own_expiry_whatever_the_gateways_clock() {
    let standin = MessageMediaStandIn::start().await;
    let config = TestConfig::base().only_carrier(&standin.carrier_toml("mm"), "mm");
    let app = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");

    for (n, skew) in ["-90s", "+90s"].into_iter().enumerate() {
        let (child, port) = spawn_skewed(&app, &config, dir.path(), skew);
        let client = wait_until_healthy(port).await;
        let id =
            id_of(post(&client, port, &message(&format!("+1415555{:04}", 7000 + n))).await).await;
        wait_until("the carrier call", Duration::from_secs(10), async || {
            standin.seen().len() > n
        })
        .await;
        let sent = &standin.seen()[n].fields["message_expiry_timestamp"];
        let sent = chrono::DateTime::parse_from_rfc3339(sent).expect("RFC 3339");
        let stored = expires_at(&app, &id).await;
        let gap = stored.signed_duration_since(sent).num_milliseconds();
        assert!(
            (0..1000).contains(&gap),
            "gateway {skew}: sent {sent}, the message expires {stored}"
        );
        assert!(terminate(child).await.success());
    }
}

/// Found by an attack: a carrier's `Retry-After` date was compared with the gateway's clock:
/// 90 s behind, a 5-s throttle outlived a code; 90 s ahead, the retry came at once.
#[tokio::test]
async fn an_http_date_retry_after_waits_what_the_carrier_asked_whatever_the_gateways_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    for skew in ["-90s", "+90s"] {
        let standin = TwilioStandIn::start().await;
        standin.script([Reply::ThrottledUntil(Duration::from_secs(3))]);
        let config = crate::dispatch::config_with(
            &standin,
            "[dispatch]\nretry_base_ms = 100\nretry_max_ms = 100\npoll_interval_ms = 100\n",
        );
        let app = TestApp::spawn_role(&config, Role::Ingress).await;
        let (child, port) = spawn_skewed(&app, &config, dir.path(), skew);
        let client = wait_until_healthy(port).await;
        post(&client, port, &message("+14155552671")).await;
        wait_until("the retry", Duration::from_secs(20), async || {
            standin.seen().len() >= 2
        })
        .await;
        let seen = standin.seen();
        let waited = seen[1].at - seen[0].at;
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(5),
            "gateway {skew}: waited {waited:?} for a 3-s Retry-After"
        );
        assert!(terminate(child).await.success());
    }
}

/// Found by an attack: the spend refusal's `Retry-After` counted to the gateway's midnight
/// while the database decided the day. A gateway that believes it is 23:59:30 (whatever the
/// true time) must still say how long the database's day has left. Keys expire on the
/// database's hour too, whatever the gateway's clock says.
#[tokio::test]
async fn the_spend_retry_after_and_key_lifetimes_follow_the_databases_clock() {
    let config = TestConfig::with(
        "[spend]\ncurrency = \"USD\"\ndaily_limit = 0.1\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.1\n",
    );
    let app = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let today = chrono::Utc::now().date_naive();
    let (child, port) = spawn_skewed(&app, &config, dir.path(), &format!("@{today} 23:59:30"));
    let client = wait_until_healthy(port).await;

    assert_eq!(
        post(&client, port, &message("+14155550001")).await.status(),
        200
    );
    let refused = post(&client, port, &message("+14155550002")).await;
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: i64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    let day_left: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day'
                                  - (now() AT TIME ZONE 'UTC'))::float8",
    )
    .fetch_one(&app.pool)
    .await
    .expect("the database's day");
    assert!(
        (retry_after as f64 - day_left).abs() <= 3.0,
        "Retry-After {retry_after} s, the database's day ends in {day_left} s"
    );

    // An hour-old key is forgotten by the database's clock (the gateway's is hours ahead).
    let keyed = |recipient: &str| {
        client
            .post(format!("http://127.0.0.1:{port}/v1/auth0/sms"))
            .bearer_auth(lasting_token())
            .header("idempotency-key", "skewed-login")
            .json(&message(recipient))
            .send()
    };
    sqlx::query("UPDATE spend_days SET spent_micros = 0")
        .execute(&app.pool)
        .await
        .expect("room in the day");
    let first = id_of(keyed("+14155550003").await.expect("sent")).await;
    let repeat = id_of(keyed("+14155550003").await.expect("sent")).await;
    assert_eq!(repeat, first, "within the database's hour: a repeat");
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '61 minutes'")
        .execute(&app.pool)
        .await
        .expect("age the key");
    sqlx::query("UPDATE spend_days SET spent_micros = 0")
        .execute(&app.pool)
        .await
        .expect("room in the day");
    let after_the_hour = id_of(keyed("+14155550004").await.expect("sent")).await;
    assert_ne!(
        after_the_hour, first,
        "past the database's hour: a new request"
    );
    assert!(terminate(child).await.success());
}

/// A code with less than a second left is not sent: Twilio's `ValidityPeriod` is whole
/// seconds (at least 1), so it would be given a validity the code does not have. The send
/// was logged in the number's window first; a send that does not happen is taken out again.
#[tokio::test]
async fn a_code_with_under_a_second_left_is_not_sent_and_not_counted() {
    let standin = TwilioStandIn::start().await;
    let config = crate::dispatch::config_with(
        &standin,
        "[dispatch]\npoll_interval_ms = 100\n\
         [[limits.recipient]]\nmax = 3\nwindow_seconds = 600\n",
    );
    let app = TestApp::spawn_role(&config, Role::Ingress).await;
    let response = app
        .post_sms(Some(&crate::helpers::token()), &message("+14155552671"))
        .await;
    let id = id_of(response).await;
    let due_in = |run_at: &'static str, expires_at: &'static str| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH q AS (UPDATE message_queue SET run_at = now() + interval '{run_at}',
                                                 expires_at = now() + interval '{expires_at}'
                        WHERE message_id = $1::uuid RETURNING expires_at)
             UPDATE messages SET expires_at = (SELECT expires_at FROM q) WHERE id = $1::uuid"
        )))
        .bind(id.clone())
        .execute(&app.pool)
    };
    due_in("1 hour", "2 hours")
        .await
        .expect("not due while the gateway starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = spawn_skewed(&app, &config, dir.path(), "+90s");
    wait_until_healthy(port).await;
    // Due in a second with half a second to live then: claimed with under a second left.
    due_in("1 s", "1.5 s").await.expect("due soon");

    let final_status = async || {
        sqlx::query_scalar::<_, String>("SELECT status FROM messages WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .expect("status")
    };
    wait_until("the message's end", Duration::from_secs(20), async || {
        final_status().await != "queued"
    })
    .await;
    assert_eq!(final_status().await, "expired");
    assert!(standin.received().is_empty(), "no carrier was called");
    let logged = crate::helpers::events_counted(&app.pool, "recipient_sends", "true").await;
    assert_eq!(logged, 0, "a send that did not happen is not in the window");
    assert!(terminate(child).await.success());
}

/// Telnyx's webhook timestamp is judged by the database's clock: with the gateway ten minutes
/// ahead, a webhook Telnyx signed just now is taken, and one stamped with the gateway's "now"
/// (ten minutes in the database's future) is refused as a replay window violation.
#[tokio::test]
async fn a_telnyx_webhook_s_timestamp_is_judged_by_the_database_s_clock() {
    use base64::Engine;
    use ed25519_dalek::Signer;

    use crate::telnyx_receipts::{database_now, finalized, public_key_base64, signing_key};

    let table = format!(
        "[carriers.tx]\nkind = \"telnyx\"\napi_token = \"t\"\nmessaging_profile_id = \"p\"\n\
         public_url = \"https://sms.example.com\"\nwebhook_public_key = \"{}\"\n",
        public_key_base64()
    );
    let config = TestConfig::base().only_carrier(&table, "tx");
    let app = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = spawn_skewed(&app, &config, dir.path(), "+600s");
    let client = wait_until_healthy(port).await;
    let body = serde_json::to_vec(&finalized("unknown-message", "delivered", None)).expect("json");
    let now = database_now(&app).await;
    for (timestamp, expected) in [(now, 204), (now + 600, 403)] {
        let mut signed = format!("{timestamp}|").into_bytes();
        signed.extend_from_slice(&body);
        let signature = base64::engine::general_purpose::STANDARD
            .encode(signing_key().sign(&signed).to_bytes());
        let response = client
            .post(format!("http://127.0.0.1:{port}/v1/callbacks/telnyx/tx"))
            .header("content-type", "application/json")
            .header("telnyx-timestamp", timestamp.to_string())
            .header("telnyx-signature-ed25519", signature)
            .body(body.clone())
            .send()
            .await
            .expect("sent");
        assert_eq!(
            response.status().as_u16(),
            expected,
            "timestamp {timestamp} against the database's {now}, gateway 10 minutes ahead"
        );
    }
    assert!(terminate(child).await.success());
}
