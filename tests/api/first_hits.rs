//! Batches whose limit keys are new are stored by one statement that creates those keys' rows
//! (`src/db/first_hits.rs`, issue 24); a message with a key that exists is decided on its row
//! afterwards. Shown with the real app: exact across two processes, a key the statement created
//! for a message it could not store is taken back (never counted twice, no row left by a
//! refusal), and a repeated number still meets its cap.

use serde_json::Value;
use smsgate::Role;

use crate::abuse::{burst, count, from_ip};
use crate::helpers::{TestApp, events_counted, token};
use crate::test_config::TestConfig;

/// The production example's small caps: decided on rows, never sliced.
const ROW_CAPS: &str = "[[limits.ip]]\nmax = 20\nwindow_seconds = 3600\n\
     [[limits.ingress_recipient]]\nmax = 2\nwindow_seconds = 3600\n";

async fn counted(app: &TestApp, key: &str) -> i64 {
    events_counted(&app.pool, "ingress_hits", &format!("key = '{key}'")).await
}

async fn status(app: &TestApp, body: &Value) -> u16 {
    app.post_sms(Some(&token()), body).await.status().as_u16()
}

#[tokio::test]
async fn copies_to_new_numbers_from_two_processes_are_counted_exactly() {
    let config = TestConfig::with(ROW_CAPS);
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;

    // Ten new numbers, six requests each from six new addresses, all at once over both
    // processes: the first batch to create a number's row stores one; every other copy finds
    // the row and is decided on it.
    let bodies: Vec<Value> = (0..60)
        .map(|i| {
            from_ip(
                &format!("+4474003{:05}", i % 10),
                &format!("198.51.100.{i}"),
            )
        })
        .collect();
    let statuses = burst([&first, &second], bodies).await;

    assert_eq!(count(&statuses, 200), 20, "two per number: {statuses:?}");
    assert_eq!(count(&statuses, 429), 40, "{statuses:?}");
    assert_eq!(first.count_rows("messages").await, 20);
    assert_eq!(
        events_counted(&first.pool, "ingress_hits", "key LIKE 'to:%'").await,
        20
    );
    assert_eq!(
        events_counted(&first.pool, "ingress_hits", "key LIKE 'ip:%'").await,
        20,
        "refused requests counted nowhere, stored ones once"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ingress_hits WHERE key LIKE 'ip:%'")
        .fetch_one(&first.pool)
        .await
        .expect("rows");
    assert_eq!(
        rows, 20,
        "no row left for an address whose request was refused"
    );
}

#[tokio::test]
async fn a_new_address_to_a_known_number_is_counted_once_and_a_refusal_leaves_no_row() {
    let app = TestApp::spawn_with(&TestConfig::with(ROW_CAPS)).await;
    let number = "+447400400001";

    assert_eq!(status(&app, &from_ip(number, "192.0.2.1")).await, 200);
    // A new address to a number seen before: the statement creates the address's row but
    // cannot store the message; the reservation then stores it, counted once.
    assert_eq!(status(&app, &from_ip(number, "192.0.2.2")).await, 200);
    assert_eq!(counted(&app, "ip:192.0.2.2").await, 1);
    assert_eq!(counted(&app, &format!("to:{number}")).await, 2);

    // A third address: the number is at its cap, so it is refused, and the row the statement
    // created for the address is gone again.
    let refused = app
        .post_sms(Some(&token()), &from_ip(number, "192.0.2.3"))
        .await;
    crate::helpers::assert_error_saying(refused, 429, "too_many_requests", "number").await;
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ingress_hits WHERE key = 'ip:192.0.2.3'")
            .fetch_one(&app.pool)
            .await
            .expect("rows");
    assert_eq!(rows, 0);
    assert_eq!(app.count_rows("messages").await, 2);
}
