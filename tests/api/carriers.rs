//! The carriers through their wire contracts: success, every failure class, failover within one
//! attempt, and the circuit breaker.

use std::time::Duration;

use serde_json::Value;
use smsgate::Role;

use crate::dispatch::{queue, wait_final, wait_until};
use crate::helpers::TestApp;
use crate::standins::messagemedia::{MessageMediaStandIn, messagemedia_toml};
use crate::standins::sns::{SnsStandIn, sns_toml};
use crate::standins::telnyx::{PROFILE_ID, TelnyxStandIn, telnyx_toml};
use crate::standins::twilio::{TwilioStandIn, twilio_toml};
use crate::standins::{Reply, StandIn, refused_url};
use crate::test_config::TestConfig;

/// One dispatch attempt, so each failure shows as the message's final state at once.
const ONE_ATTEMPT: &str = "[dispatch]\nmax_attempts = 1\npoll_interval_ms = 100\n";

/// The base config with `tables` as its carriers, all numbers routed to `route`.
fn routed(tables: &str, route: &[&str], extra: &str) -> TestConfig {
    TestConfig::base().only_carriers(tables, route).merge(extra)
}

/// Sends one message through a single carrier described by `table` and returns its view.
async fn send_through(table: &str, extra: &str) -> Value {
    send_with(routed(table, &["c"], extra)).await
}

/// Sends one message with `config` and returns its view.
async fn send_with(config: TestConfig) -> Value {
    let app = TestApp::spawn_role(&config, Role::All).await;
    let id = queue(&app, "+14155552671").await;
    wait_final(&app, &id, Duration::from_secs(15)).await
}

/// A stand-in's carrier table with a 500 ms timeout.
fn short_timeout(table: String) -> String {
    timeout_of(table, 500)
}

/// A stand-in's carrier table with a timeout of `timeout_ms` (and a 400 ms connect timeout).
fn timeout_of(table: String, timeout_ms: i64) -> String {
    let mut table: toml::Table = table.parse().expect("a carrier table");
    for carrier in table["carriers"]
        .as_table_mut()
        .into_iter()
        .flat_map(|t| t.iter_mut().map(|(_, carrier)| carrier))
    {
        if let Some(carrier) = carrier.as_table_mut() {
            carrier.insert("timeout_ms".into(), timeout_ms.into());
            carrier.insert("connect_timeout_ms".into(), 400.into());
        }
    }
    table.to_string()
}

/// Runs each scripted reply against a fresh stand-in and checks status and outcome class.
async fn assert_classes<S: std::ops::Deref<Target = StandIn>>(
    start: impl AsyncFn() -> S,
    table: impl Fn(&S) -> String,
    cases: Vec<(Reply, &str, &str)>,
) {
    for (reply, status, outcome) in cases {
        let standin = start().await;
        standin.set_default(reply.clone());
        let view = send_through(&short_timeout(table(&standin)), ONE_ATTEMPT).await;
        assert_eq!(view["status"], status, "{reply:?}: {view}");
        assert_eq!(view["attempts"][0]["outcome"], outcome, "{reply:?}: {view}");
    }
}

#[tokio::test]
async fn twilio_failures_are_classified() {
    assert_classes(
        TwilioStandIn::start,
        |s| s.carrier_toml("c"),
        vec![
            (Reply::error(400, "21211"), "failed", "recipient_failure"),
            (Reply::error(400, "21610"), "failed", "recipient_failure"),
            (Reply::error(400, "21408"), "failed", "carrier_failure"),
            (Reply::error(401, "20003"), "failed", "carrier_failure"),
            (Reply::error(500, "20500"), "failed", "carrier_failure"),
            (Reply::error(429, "20429"), "failed", "throttled"),
            (Reply::Slow(Duration::from_secs(2)), "failed", "timeout"),
        ],
    )
    .await;
    let refused = send_through(&twilio_toml("c", &refused_url()), ONE_ATTEMPT).await;
    assert_eq!(refused["attempts"][0]["outcome"], "carrier_failure");
}

#[tokio::test]
async fn messagemedia_sends_one_message_per_request_with_the_codes_expiry() {
    let standin = MessageMediaStandIn::start().await;

    let view = send_through(&standin.carrier_toml("c"), "").await;

    assert_eq!(view["status"], "sent");
    assert_eq!(view["attempts"][0]["http_status"], 202);
    assert!(
        view["attempts"][0]["carrier_message_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36)
    );
    let seen = standin.seen();
    assert_eq!(seen.len(), 1);
    let fields = &seen[0].fields;
    assert_eq!(fields["to"], "+14155552671");
    assert_eq!(fields["content"], "Your verification code is: 123456");
    assert_eq!(fields["messages"], "1");
    assert_eq!(fields["format"], "SMS");
    assert_eq!(
        fields["source_number"], "+15555555555",
        "the request's sender without a from"
    );
    assert_eq!(fields["source_number_type"], "INTERNATIONAL");
    let expiry = chrono::DateTime::parse_from_rfc3339(&fields["message_expiry_timestamp"])
        .expect("RFC 3339");
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(view["expires_at"].as_str().expect("expires_at"))
            .expect("RFC 3339");
    assert!(
        (expiry - expires_at).num_seconds().abs() <= 2,
        "expiry {expiry} vs {expires_at}"
    );
}

#[tokio::test]
async fn messagemedia_failures_are_classified() {
    assert_classes(
        MessageMediaStandIn::start,
        |s| s.carrier_toml("c"),
        vec![
            (
                Reply::error(400, "destination"),
                "failed",
                "recipient_failure",
            ),
            (Reply::error(400, "other"), "failed", "carrier_failure"),
            (Reply::error(401, ""), "failed", "carrier_failure"),
            (Reply::error(503, ""), "failed", "carrier_failure"),
            (Reply::error(429, ""), "failed", "throttled"),
            (Reply::Slow(Duration::from_secs(2)), "failed", "timeout"),
        ],
    )
    .await;
    let refused = send_through(&messagemedia_toml("c", &refused_url()), ONE_ATTEMPT).await;
    assert_eq!(refused["attempts"][0]["outcome"], "carrier_failure");
}

#[tokio::test]
async fn telnyx_sends_json_with_a_bearer_key_and_its_messaging_profile() {
    let standin = TelnyxStandIn::start().await;

    let view = send_through(&standin.carrier_toml("c"), "").await;

    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["carrier"], "c");
    assert_eq!(view["attempts"][0]["http_status"], 200);
    assert!(
        view["attempts"][0]["carrier_message_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "data.id is the carrier's message id: {view}"
    );
    let seen = standin.seen();
    assert_eq!(seen.len(), 1);
    let fields = &seen[0].fields;
    assert_eq!(fields["to"], "+14155552671");
    assert_eq!(fields["text"], "Your verification code is: 123456");
    assert_eq!(fields["type"], "SMS");
    assert_eq!(fields["messaging_profile_id"], PROFILE_ID);
    assert_eq!(
        fields["from"], "+15555555555",
        "the request's sender without a from"
    );
}

#[tokio::test]
async fn telnyx_failures_are_classified_by_their_codes() {
    assert_classes(
        TelnyxStandIn::start,
        |s| s.carrier_toml("c"),
        vec![
            // About the number: invalid, opted out, a landline.
            (Reply::error(400, "40310"), "failed", "recipient_failure"),
            (Reply::error(400, "40300"), "failed", "recipient_failure"),
            (Reply::error(400, "40001"), "failed", "recipient_failure"),
            // Our sender, our account, Telnyx itself: another carrier may send it.
            (Reply::error(400, "40305"), "failed", "carrier_failure"),
            (Reply::error(402, "20100"), "failed", "carrier_failure"),
            (Reply::error(401, "10009"), "failed", "carrier_failure"),
            (Reply::error(503, "10007"), "failed", "carrier_failure"),
            (Reply::error(429, "10011"), "failed", "throttled"),
            (Reply::Slow(Duration::from_secs(2)), "failed", "timeout"),
        ],
    )
    .await;
    let refused = send_through(&telnyx_toml("c", &refused_url()), ONE_ATTEMPT).await;
    assert_eq!(refused["attempts"][0]["outcome"], "carrier_failure");
}

#[tokio::test]
async fn a_telnyx_table_missing_what_telnyx_requires_is_refused_by_key() {
    let table = |body: &str| format!("[carriers.c]\nkind = \"telnyx\"\n{body}");
    for (body, key, says) in [
        (
            "messaging_profile_id = \"p\"\n",
            "carriers.c.api_token",
            "is required",
        ),
        (
            "api_token = \"t\"\nfrom = \"ACME\"\n",
            "carriers.c.messaging_profile_id",
            "alphanumeric from needs the profile",
        ),
        (
            "api_token = \"t\"\nfrom = \"+15555555555\"\naccount_sid = \"AC1\"\n",
            "carriers.c.account_sid",
            "is not a key of kind \"telnyx\"",
        ),
        (
            "api_token = \"t\"\nmessaging_profile_id = \"p\"\npublic_url = \"https://x.example\"\n",
            "carriers.c.webhook_public_key",
            "public_url needs the account's public key",
        ),
        (
            "api_token = \"t\"\nmessaging_profile_id = \"p\"\nwebhook_public_key = \"AAAA\"\n",
            "carriers.c.webhook_public_key",
            "must be a 32-byte Ed25519 public key",
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("smsgate.toml");
        std::fs::write(&path, routed(&table(body), &["c"], "").to_string()).expect("write");
        let problems = smsgate::config::Config::load(&path)
            .expect_err("refused")
            .problems;
        assert!(
            problems
                .iter()
                .any(|p| p.key == key && p.reason.contains(says)),
            "{key}: {problems:?}"
        );
    }
}

#[tokio::test]
async fn sns_publishes_a_signed_transactional_sms_through_the_sdk() {
    let standin = SnsStandIn::start().await;

    let view = send_through(&standin.carrier_toml("c"), "").await;

    assert_eq!(view["status"], "sent", "{view}");
    assert!(view["attempts"][0]["carrier_message_id"].as_str().is_some());
    let seen = standin.seen();
    assert_eq!(seen.len(), 1);
    let fields = &seen[0].fields;
    assert_eq!(fields["to"], "+14155552671");
    assert_eq!(fields["message"], "Your verification code is: 123456");
    assert_eq!(fields["attr:AWS.SNS.SMS.SMSType"], "Transactional");
    assert_eq!(fields["attr:AWS.SNS.SMS.SenderID"], "ACME");
    assert_eq!(fields["attr:AWS.MM.SMS.OriginationNumber"], "+15555555555");
}

#[tokio::test]
async fn sns_with_a_wrong_secret_is_refused_by_the_signature_check() {
    let standin = SnsStandIn::start().await;
    let wrong_secret = routed(&standin.carrier_toml("c"), &["c"], ONE_ATTEMPT)
        .set("carriers.c.secret_access_key", "wrong-secret");

    let view = send_with(wrong_secret).await;

    assert_eq!(view["attempts"][0]["outcome"], "carrier_failure");
    assert_eq!(view["attempts"][0]["http_status"], 403);
    assert_eq!(view["attempts"][0]["error_code"], "SignatureDoesNotMatch");
}

#[tokio::test]
async fn sns_failures_are_classified() {
    assert_classes(
        SnsStandIn::start,
        |s| s.carrier_toml("c"),
        vec![
            (
                Reply::error(400, "InvalidParameter"),
                "failed",
                "recipient_failure",
            ),
            (
                Reply::error(403, "AuthorizationError"),
                "failed",
                "carrier_failure",
            ),
            (
                Reply::error(500, "InternalError"),
                "failed",
                "carrier_failure",
            ),
            (Reply::error(400, "Throttling"), "failed", "throttled"),
            (Reply::Slow(Duration::from_secs(2)), "failed", "timeout"),
        ],
    )
    .await;
    let refused = send_through(&sns_toml("c", &refused_url()), ONE_ATTEMPT).await;
    assert_eq!(refused["attempts"][0]["outcome"], "carrier_failure");
}

/// Each carrier throttled once with its own 429 (`throttle` gives the reply for its error
/// code); the retry must wait the two seconds its `Retry-After` asked for.
async fn assert_each_carrier_waits_two_seconds(throttle: impl Fn(&'static str) -> Reply) {
    let twilio = TwilioStandIn::start().await;
    let mm = MessageMediaStandIn::start().await;
    let sns = SnsStandIn::start().await;
    twilio.script([throttle("20429")]);
    mm.script([throttle("")]);
    sns.script([throttle("Throttling")]);
    let retry = "[dispatch]\nmax_attempts = 2\nretry_base_ms = 10\nretry_max_ms = 10\npoll_interval_ms = 100\n";

    for (table, standin) in [
        (twilio.carrier_toml("c"), &*twilio),
        (mm.carrier_toml("c"), &*mm),
        (sns.carrier_toml("c"), &*sns),
    ] {
        let view = send_through(&table, retry).await;
        assert_eq!(view["status"], "sent", "{view}");
        assert_eq!(view["attempts"][0]["outcome"], "throttled");
        let seen = standin.seen();
        let waited = seen[1].at - seen[0].at;
        assert!(
            waited >= Duration::from_secs(2),
            "Retry-After waited for: {waited:?}"
        );
    }
}

#[tokio::test]
async fn a_429_with_retry_after_is_honoured_by_every_carrier() {
    assert_each_carrier_waits_two_seconds(|code| Reply::Error {
        status: 429,
        code,
        retry_after: Some(2),
    })
    .await;
}

/// Found by an attack: SNS read `Retry-After` only as seconds, so a date was ignored and a
/// throttled message retried at once. Every carrier now reads both forms with one parser.
#[tokio::test]
async fn a_429_with_an_http_date_retry_after_is_honoured_by_every_carrier() {
    assert_each_carrier_waits_two_seconds(|_| Reply::ThrottledUntil(Duration::from_secs(2))).await;
}

#[tokio::test]
async fn failover_passes_dead_failing_and_throttling_carriers_within_one_attempt() {
    let failing = MessageMediaStandIn::start().await;
    failing.set_default(Reply::error(500, ""));
    let throttling = SnsStandIn::start().await;
    throttling.set_default(Reply::error(400, "Throttling"));
    let good = TwilioStandIn::start().await;
    let tables = format!(
        "{}{}{}{}",
        twilio_toml("dead", &refused_url()),
        failing.carrier_toml("failing"),
        throttling.carrier_toml("throttling"),
        good.carrier_toml("good")
    );
    let config = routed(
        &tables,
        &["dead", "failing", "throttling", "good"],
        "[dispatch]\nlease_seconds = 20\n",
    );
    let app = TestApp::spawn_role(&config, Role::All).await;

    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(15)).await;

    assert_eq!(view["status"], "sent");
    assert_eq!(view["carrier"], "good");
    let calls: Vec<(i64, &str, &str)> = view["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap_or_default(),
                a["carrier"].as_str().unwrap_or_default(),
                a["outcome"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            (1, "dead", "carrier_failure"),
            (1, "failing", "carrier_failure"),
            (1, "throttling", "throttled"),
            (1, "good", "sent"),
        ]
    );
}

#[tokio::test]
async fn a_recipient_failure_on_the_first_carrier_does_not_reach_the_second() {
    let first = TwilioStandIn::start().await;
    first.set_default(Reply::error(400, "21211"));
    let second = MessageMediaStandIn::start().await;
    let tables = format!(
        "{}{}",
        first.carrier_toml("first"),
        second.carrier_toml("second")
    );
    let app = TestApp::spawn_role(&routed(&tables, &["first", "second"], ""), Role::All).await;

    let view = crate::dispatch::send_one(&app, "+14155552671").await;

    assert_eq!(view["status"], "failed");
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(1));
    assert!(
        second.seen().is_empty(),
        "the second carrier was charged for a bad number"
    );
}

#[tokio::test]
async fn the_longest_matching_prefix_picks_the_route() {
    let us = TwilioStandIn::start().await;
    let uk = MessageMediaStandIn::start().await;
    let tables = format!("{}{}", us.carrier_toml("us"), uk.carrier_toml("uk"));
    let config = routed(&tables, &["us"], "")
        .route("+44", &["uk"])
        .route("+447", &["us"]);
    let app = TestApp::spawn_role(&config, Role::All).await;

    for recipient in ["+14155552671", "+442071838750", "+447911123456"] {
        let id = queue(&app, recipient).await;
        wait_final(&app, &id, Duration::from_secs(10)).await;
    }

    let to_us: Vec<String> = us.seen().iter().map(|s| s.fields["to"].clone()).collect();
    let to_uk: Vec<String> = uk.seen().iter().map(|s| s.fields["to"].clone()).collect();
    assert_eq!(to_us, vec!["+14155552671", "+447911123456"]);
    assert_eq!(to_uk, vec!["+442071838750"]);
}

#[tokio::test]
async fn the_breaker_opens_skips_and_closes_after_a_successful_probe() {
    let flaky = TwilioStandIn::start().await;
    flaky.set_default(Reply::error(500, "20500"));
    let backup = MessageMediaStandIn::start().await;
    let tables = format!(
        "{}breaker_failures = 2\nbreaker_cooldown_seconds = 5\n{}",
        flaky.carrier_toml("flaky"),
        backup.carrier_toml("backup")
    );
    let app = TestApp::spawn_role(&routed(&tables, &["flaky", "backup"], ""), Role::All).await;
    let send = async || {
        let id = queue(&app, "+14155552671").await;
        wait_final(&app, &id, Duration::from_secs(10)).await
    };

    for _ in 0..2 {
        assert_eq!(send().await["carrier"], "backup");
    }
    assert_eq!(flaky.seen().len(), 2);
    let skipped = send().await;
    assert_eq!(skipped["carrier"], "backup");
    assert_eq!(
        skipped["attempts"].as_array().map(Vec::len),
        Some(1),
        "flaky skipped while open"
    );
    assert_eq!(flaky.seen().len(), 2);

    // The breaker's cooldown is a span of time: nothing but the clock ends it. Five seconds,
    // so that a slow machine's third send still falls inside it.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    flaky.set_default(Reply::Created);
    assert_eq!(
        send().await["carrier"],
        "flaky",
        "the probe went through and succeeded"
    );
    assert_eq!(send().await["carrier"], "flaky", "closed again");
    assert_eq!(flaky.seen().len(), 4);
}

#[tokio::test]
async fn a_200_that_is_not_a_message_resource_counts_as_sent_without_an_id() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::Garbage);

    let view = send_through(&standin.carrier_toml("c"), ONE_ATTEMPT).await;

    // The carrier said yes: failing over could send the code twice.
    assert_eq!(view["status"], "sent");
    assert!(view["attempts"][0]["carrier_message_id"].is_null());
}

/// A fast carrier that fails in the given way, then a good one, for one message.
async fn fault_then_good(reply: Reply) -> (Value, TwilioStandIn, TwilioStandIn) {
    let faulty = TwilioStandIn::start().await;
    faulty.set_default(reply);
    let good = TwilioStandIn::start().await;
    let tables = format!(
        "{}{}",
        short_timeout(faulty.carrier_toml("faulty")),
        good.carrier_toml("good")
    );
    let app = TestApp::spawn_role(
        &routed(&tables, &["faulty", "good"], ONE_ATTEMPT),
        Role::All,
    )
    .await;
    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(15)).await;
    (view, faulty, good)
}

#[tokio::test]
async fn a_body_that_breaks_off_after_a_success_status_counts_as_sent_and_is_not_resent() {
    let (view, faulty, good) = fault_then_good(Reply::ResetMidBody).await;

    // The status line said the carrier took it: failing over would send the code twice.
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["carrier"], "faulty");
    assert!(view["attempts"][0]["carrier_message_id"].is_null());
    assert_eq!(faulty.seen().len(), 1);
    assert!(good.seen().is_empty(), "the second carrier was not called");
}

#[tokio::test]
async fn an_error_status_with_a_garbage_body_fails_over() {
    let (view, faulty, good) = fault_then_good(Reply::GarbageError(502)).await;

    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["carrier"], "good");
    assert_eq!(view["attempts"][0]["outcome"], "carrier_failure");
    assert_eq!((faulty.seen().len(), good.seen().len()), (1, 1));
}

#[tokio::test]
async fn a_trickling_answer_is_cut_at_the_timeout_without_stalling_other_messages() {
    let trickling = TwilioStandIn::start().await;
    // The success body, one byte every 50 ms: many seconds in all, past the 3 s timeout.
    trickling.set_default(Reply::Trickle(Duration::from_millis(50)));
    let good = TwilioStandIn::start().await;
    let tables = format!(
        "{}{}",
        timeout_of(trickling.carrier_toml("trickling"), 3_000),
        good.carrier_toml("good")
    );
    // Numbers starting +1415 go to the trickling carrier; everything else to the good one.
    let config = routed(&tables, &["good"], ONE_ATTEMPT).route("+1415", &["trickling"]);
    let app = TestApp::spawn_role(&config, Role::All).await;

    let slow = queue(&app, "+14155552671").await;
    wait_until("the trickling call", Duration::from_secs(10), async || {
        !trickling.seen().is_empty()
    })
    .await;
    let others = [
        queue(&app, "+12125552671").await,
        queue(&app, "+12125552672").await,
        queue(&app, "+12125552673").await,
    ];
    for id in &others {
        let view = wait_final(&app, id, Duration::from_secs(10)).await;
        assert_eq!(view["status"], "sent");
    }
    let view = wait_final(&app, &slow, Duration::from_secs(10)).await;

    // Queued, sent and finished while the trickling call still ran (it takes its whole 3 s
    // timeout), by the database's clock.
    let before_the_trickle: bool = sqlx::query_scalar(
        "SELECT bool_and(o.finished_at < s.finished_at)
         FROM messages o, messages s WHERE o.id = ANY($1::uuid[]) AND s.id = $2::uuid",
    )
    .bind(&others[..])
    .bind(&slow)
    .fetch_one(&app.pool)
    .await
    .expect("finish times");
    assert!(
        before_the_trickle,
        "the other messages did not wait for the trickle"
    );
    // Its success status arrived before the timeout cut the body: sent, not sent twice.
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["carrier"], "trickling");
    assert_eq!(trickling.seen().len(), 1);
}
