//! Resend on a failed route (issue 26, part 1): a receipt that reports a route failure sends
//! the code again through the next carrier of its route that has not carried it, while the
//! code has `resend_min_remaining_seconds` left; a recipient failure ends it; a carrier
//! silent past its `receipt_timeout_seconds` counts as a route failure. Two Twilio stand-ins
//! play two carriers of one route; their receipts are signed as Twilio signs them.

use std::time::Duration;

use serde_json::Value;
use smsgate::Role;

use crate::dispatch::{FAST_DISPATCH, queue, status_of, wait_final, wait_until};
use crate::helpers::TestApp;
use crate::observability::sample;
use crate::receipts::{PUBLIC_URL, twilio_signature};
use crate::standins::twilio::TwilioStandIn;
use crate::test_config::TestConfig;

const TO: &str = "+14155552671";

/// Two Twilio accounts, `first` then `second`, on the default route; `extra` merged last.
pub struct TwoCarriers {
    pub app: TestApp,
    pub first: TwilioStandIn,
    pub second: TwilioStandIn,
}

impl TwoCarriers {
    pub async fn start(extra: &str) -> Self {
        Self::start_with(extra, |config| config).await
    }

    /// The same, with `change` made to the configuration last.
    pub async fn start_with(extra: &str, change: impl FnOnce(TestConfig) -> TestConfig) -> Self {
        Self::start_as(extra, change, Role::All).await
    }

    /// The same in a process of `role` (an ingress only: sends happen when the test says,
    /// through `app.dispatch_until_idle()`).
    pub async fn start_as(
        extra: &str,
        change: impl FnOnce(TestConfig) -> TestConfig,
        role: Role,
    ) -> Self {
        let (first, second) = (TwilioStandIn::start().await, TwilioStandIn::start().await);
        let public = format!("public_url = \"{PUBLIC_URL}\"\n");
        let tables = format!(
            "{}{public}{}{public}",
            first.carrier_toml("first"),
            second.carrier_toml("second")
        );
        let config = TestConfig::base()
            .only_carriers(&tables, &["first", "second"])
            .merge(FAST_DISPATCH)
            .set("dispatch.lease_seconds", 15)
            .merge(extra);
        let app = TestApp::spawn_role(&change(config), role).await;
        Self { app, first, second }
    }

    /// Queues a message and waits until `first` took it; its id and `first`'s id for it.
    async fn sent_through_first(&self) -> (String, String) {
        self.sent_through_first_to(TO).await
    }

    /// The same for a message to `to`.
    pub async fn sent_through_first_to(&self, to: &str) -> (String, String) {
        let id = queue(&self.app, to).await;
        let view = wait_final(&self.app, &id, Duration::from_secs(10)).await;
        assert_eq!(view["status"], "sent", "{view}");
        assert_eq!(view["carrier"], "first", "{view}");
        (id, carrier_id(&view, 0))
    }

    /// A receipt from carrier `name`, signed as Twilio signs it; the response status.
    pub async fn receipt(&self, name: &str, sid: &str, status: &str, code: Option<&str>) -> u16 {
        let mut params = vec![("MessageSid", sid), ("MessageStatus", status)];
        if let Some(code) = code {
            params.push(("ErrorCode", code));
        }
        let path = format!("/v1/callbacks/twilio/{name}");
        let signature = twilio_signature(&format!("{PUBLIC_URL}{path}"), &params);
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        self.app
            .client
            .post(self.app.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16()
    }

    /// Waits until the message has `attempts` attempt rows and a final status.
    pub async fn settled_after(&self, id: &str, attempts: usize) -> Value {
        let mut view = Value::Null;
        wait_until(
            "the resend to settle",
            Duration::from_secs(10),
            async || {
                view = status_of(&self.app, id).await;
                let status = view["status"].as_str().unwrap_or_default();
                view["attempts"].as_array().map_or(0, Vec::len) == attempts
                    && !["queued", "sending"].contains(&status)
            },
        )
        .await;
        view
    }

    async fn body_of(&self, id: &str) -> String {
        sqlx::query_scalar("SELECT body FROM messages WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&self.app.pool)
            .await
            .expect("the message")
    }

    async fn resends_counted(&self, carrier: &str, reason: &str) -> f64 {
        let series = format!("smsgate_resends_total{{carrier=\"{carrier}\",reason=\"{reason}\"}}");
        sample(&self.app.metrics().await, &series).unwrap_or(0.0)
    }
}

pub fn carrier_id(view: &Value, attempt: usize) -> String {
    view["attempts"][attempt]["carrier_message_id"]
        .as_str()
        .expect("a carrier id")
        .to_string()
}

/// Texts a stand-in took (calls excluded).
fn texts(standin: &TwilioStandIn) -> Vec<String> {
    standin
        .seen()
        .into_iter()
        .filter_map(|s| s.fields.get("Body").cloned())
        .collect()
}

#[tokio::test]
async fn a_route_failure_sends_the_same_code_through_the_next_carrier_once() {
    let carriers = TwoCarriers::start("").await;
    let (id, sid) = carriers.sent_through_first().await;
    assert_ne!(
        carriers.body_of(&id).await,
        "",
        "a sent message a resend may need keeps its code until its receipt"
    );

    let status = carriers
        .receipt("first", &sid, "undelivered", Some("30007"))
        .await;

    assert_eq!(status, 204);
    let view = carriers.settled_after(&id, 2).await;
    assert_eq!(view["status"], "sent", "{view}");
    assert_eq!(view["carrier"], "second", "{view}");
    assert_eq!(
        texts(&carriers.second),
        texts(&carriers.first),
        "the same code"
    );
    let first = &view["attempts"][0];
    assert_eq!(first["carrier"], "first");
    assert_eq!(first["receipt"], "undelivered", "{view}");
    assert_eq!(first["receipt_failure"], "route", "{view}");
    assert_eq!(first["receipt_error_code"], "30007", "{view}");
    assert_eq!(view["attempts"][1]["carrier"], "second");
    assert_eq!(view["attempts"][1]["attempt"], 2, "a resend is an attempt");
    assert_eq!(
        carriers.resends_counted("first", "route_failure").await,
        1.0
    );

    // The same report again, and a late "delivered" from the first carrier: nothing moves.
    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30007"))
            .await,
        204
    );
    assert_eq!(
        carriers.receipt("first", &sid, "delivered", None).await,
        204
    );
    let second_sid = carrier_id(&view, 1);
    assert_eq!(
        carriers
            .receipt("second", &second_sid, "delivered", None)
            .await,
        204
    );
    let view = status_of(&carriers.app, &id).await;
    assert_eq!(view["status"], "delivered", "{view}");
    assert_eq!(view["attempts"].as_array().map(Vec::len), Some(2), "{view}");
    assert_eq!(
        carriers.first.seen().len(),
        1,
        "never twice through one carrier"
    );
    assert_eq!(
        carriers.second.seen().len(),
        1,
        "never twice through one carrier"
    );
    assert_eq!(
        carriers.body_of(&id).await,
        "",
        "the code is erased as it ends"
    );
    assert_eq!(
        carriers.resends_counted("first", "route_failure").await,
        1.0
    );
}

#[tokio::test]
async fn a_recipient_failure_ends_the_message_and_erases_its_code() {
    let carriers = TwoCarriers::start("").await;
    let (id, sid) = carriers.sent_through_first().await;

    // 30005: unknown or unallocated handset; no carrier will do better.
    let status = carriers
        .receipt("first", &sid, "undelivered", Some("30005"))
        .await;

    assert_eq!(status, 204);
    let view = status_of(&carriers.app, &id).await;
    assert_eq!(view["status"], "undelivered", "{view}");
    assert_eq!(
        view["attempts"][0]["receipt_failure"], "recipient",
        "{view}"
    );
    assert!(carriers.second.seen().is_empty(), "no resend");
    assert_eq!(carriers.body_of(&id).await, "");
    assert_eq!(carriers.app.count_rows("message_queue").await, 0);
}

#[tokio::test]
async fn no_resend_once_too_little_of_the_code_is_left() {
    // Codes live 60 s; a resend needs 90: the body is not even kept.
    let carriers = TwoCarriers::start(
        "[dispatch]\nmessage_ttl_seconds = 60\nresend_min_remaining_seconds = 90\n",
    )
    .await;
    let (id, sid) = carriers.sent_through_first().await;
    assert_eq!(
        carriers.body_of(&id).await,
        "",
        "no resend possible: erased at once"
    );

    let status = carriers
        .receipt("first", &sid, "undelivered", Some("30007"))
        .await;

    assert_eq!(status, 204);
    let view = status_of(&carriers.app, &id).await;
    assert_eq!(view["status"], "undelivered", "{view}");
    assert!(carriers.second.seen().is_empty(), "no resend");
    assert_eq!(carriers.app.count_rows("message_queue").await, 0);
}

#[tokio::test]
async fn a_kept_code_is_erased_once_no_resend_could_use_it() {
    // Codes live 40 s, a resend needs 30: ten seconds after it was taken, the code is gone
    // even though no receipt came.
    let carriers = TwoCarriers::start(
        "[dispatch]\nmessage_ttl_seconds = 40\nresend_min_remaining_seconds = 30\n",
    )
    .await;
    let (id, sid) = carriers.sent_through_first().await;
    assert_ne!(carriers.body_of(&id).await, "");

    wait_until(
        "the kept code to be erased",
        Duration::from_secs(20),
        async || carriers.body_of(&id).await.is_empty(),
    )
    .await;

    // A route failure reported now has no code left to send again.
    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30007"))
            .await,
        204
    );
    assert_eq!(status_of(&carriers.app, &id).await["status"], "undelivered");
    assert!(carriers.second.seen().is_empty(), "no resend");
}

#[tokio::test]
async fn resends_can_be_switched_off() {
    let carriers = TwoCarriers::start("[dispatch]\nresend_on_route_failure = false\n").await;
    let (id, sid) = carriers.sent_through_first().await;
    assert_eq!(
        carriers.body_of(&id).await,
        "",
        "nothing to keep the code for"
    );

    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30007"))
            .await,
        204
    );

    assert_eq!(status_of(&carriers.app, &id).await["status"], "undelivered");
    assert!(carriers.second.seen().is_empty(), "no resend");
}

#[tokio::test]
async fn the_last_carrier_of_the_route_failing_ends_the_message() {
    let carriers = TwoCarriers::start("").await;
    let (id, sid) = carriers.sent_through_first().await;
    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30007"))
            .await,
        204
    );
    let view = carriers.settled_after(&id, 2).await;
    assert_eq!(view["carrier"], "second", "{view}");
    assert_eq!(
        carriers.body_of(&id).await,
        "",
        "no carrier left: nothing kept"
    );

    let second_sid = carrier_id(&view, 1);
    assert_eq!(
        carriers
            .receipt("second", &second_sid, "undelivered", Some("30007"))
            .await,
        204
    );

    let view = status_of(&carriers.app, &id).await;
    assert_eq!(view["status"], "undelivered", "{view}");
    assert_eq!(carriers.first.seen().len(), 1, "never back to the first");
    assert_eq!(carriers.app.count_rows("message_queue").await, 0);
}

#[tokio::test]
async fn the_same_failure_reported_at_once_many_times_resends_once() {
    let carriers = TwoCarriers::start("").await;
    let (id, sid) = carriers.sent_through_first().await;

    let reports = (0..8).map(|_| carriers.receipt("first", &sid, "undelivered", Some("30003")));
    let statuses = futures_util::future::join_all(reports).await;

    assert!(statuses.iter().all(|s| *s == 204), "{statuses:?}");
    let view = carriers.settled_after(&id, 2).await;
    assert_eq!(view["carrier"], "second", "{view}");
    // Give any stray second resend the time it would need to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(carriers.second.seen().len(), 1, "exactly one resend");
    assert_eq!(
        carriers.resends_counted("first", "route_failure").await,
        1.0
    );
}

#[tokio::test]
async fn a_carrier_silent_past_its_receipt_timeout_counts_as_a_route_failure() {
    // Three seconds: long enough for the test to see the first send before it is resent.
    let carriers = TwoCarriers::start("[carriers.first]\nreceipt_timeout_seconds = 3\n").await;
    let (id, _sid) = carriers.sent_through_first().await;

    let view = carriers.settled_after(&id, 2).await;

    assert_eq!(view["carrier"], "second", "{view}");
    assert_eq!(view["attempts"][0]["receipt"], "none", "{view}");
    assert_eq!(view["attempts"][0]["receipt_failure"], "route", "{view}");
    assert_eq!(texts(&carriers.second), texts(&carriers.first));
    assert_eq!(carriers.resends_counted("first", "no_receipt").await, 1.0);
}

#[tokio::test]
async fn a_resend_is_admitted_by_the_per_recipient_limit() {
    // One send per number per ten minutes: the first carrier's send used it, so the resend
    // waits for a window that opens only after the code expires.
    let carriers =
        TwoCarriers::start("[[limits.recipient]]\nmax = 1\nwindow_seconds = 600\n").await;
    let (id, sid) = carriers.sent_through_first().await;

    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30007"))
            .await,
        204
    );

    let view = wait_final(&carriers.app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["status"], "rate_limited", "{view}");
    assert!(carriers.second.seen().is_empty(), "the limit held");
    assert_eq!(carriers.body_of(&id).await, "");
}

/// Gives the message the carrier id `sid`, as if its send's record had landed only now.
async fn sent_with_id(carriers: &TwoCarriers, id: &str, sid: &str) {
    for table in ["messages", "message_attempts"] {
        let column = if table == "messages" {
            "id"
        } else {
            "message_id"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET carrier_message_id = $2 WHERE {column} = $1::uuid"
        )))
        .bind(id)
        .bind(sid)
        .execute(&carriers.app.pool)
        .await
        .expect("the send's record");
    }
}

#[tokio::test]
async fn an_early_delivered_receipt_is_not_overridden_by_a_later_failure() {
    let carriers = TwoCarriers::start("").await;
    // "Delivered" beats the send's own record: kept for later.
    assert_eq!(
        carriers
            .receipt("first", "SMearly", "delivered", None)
            .await,
        204
    );
    let (id, _) = carriers.sent_through_first().await;
    sent_with_id(&carriers, &id, "SMearly").await;

    // Then the same carrier reports a route failure for it.
    let status = carriers
        .receipt("first", "SMearly", "undelivered", Some("30003"))
        .await;

    assert_eq!(status, 204);
    let view = status_of(&carriers.app, &id).await;
    assert_eq!(
        view["status"], "delivered",
        "the first verdict wins: {view}"
    );
    assert!(carriers.second.seen().is_empty(), "no resend");
    assert_eq!(carriers.body_of(&id).await, "");
}

#[tokio::test]
async fn a_route_failure_that_came_early_resends_once_its_send_is_recorded() {
    let carriers = TwoCarriers::start("").await;
    assert_eq!(
        carriers
            .receipt("first", "SMlate", "undelivered", Some("30007"))
            .await,
        204
    );
    let (id, _) = carriers.sent_through_first().await;
    sent_with_id(&carriers, &id, "SMlate").await;

    // The receipt watch applies it within a second or so.
    let view = carriers.settled_after(&id, 2).await;

    assert_eq!(view["carrier"], "second", "{view}");
    assert_eq!(
        carriers.resends_counted("first", "route_failure").await,
        1.0
    );
}

#[tokio::test]
async fn no_resend_once_max_attempts_are_made() {
    let carriers = TwoCarriers::start("[dispatch]\nmax_attempts = 1\n").await;
    let (id, sid) = carriers.sent_through_first().await;
    assert_eq!(
        carriers.body_of(&id).await,
        "",
        "no attempt left for a resend"
    );

    assert_eq!(
        carriers
            .receipt("first", &sid, "undelivered", Some("30007"))
            .await,
        204
    );

    assert_eq!(status_of(&carriers.app, &id).await["status"], "undelivered");
    assert!(carriers.second.seen().is_empty(), "no resend");
}

#[tokio::test]
async fn a_recipient_code_with_control_characters_is_still_a_recipient_failure() {
    let carriers = TwoCarriers::start("").await;
    let (id, sid) = carriers.sent_through_first().await;

    let status = carriers
        .receipt("first", &sid, "undelivered", Some("30005\u{1}"))
        .await;

    assert_eq!(status, 204);
    let view = status_of(&carriers.app, &id).await;
    assert_eq!(view["status"], "undelivered", "{view}");
    assert_eq!(
        view["attempts"][0]["receipt_failure"], "recipient",
        "{view}"
    );
    assert_eq!(view["attempts"][0]["receipt_error_code"], "30005", "{view}");
    assert!(carriers.second.seen().is_empty(), "no resend");
}
