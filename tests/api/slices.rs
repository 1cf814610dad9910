//! Budget slices (issue 24): a busy cap or ceiling is spent from shares each process counts in
//! the database ahead of use. Shown with the real app: exact across two processes (never one
//! request past a cap or one estimate past a ceiling), the rows count exactly what was stored
//! once the slices' unused parts are given back, a stopping process gives back what it holds,
//! and a refusal's Retry-After is the database's.

use std::time::Duration;

use serde_json::Value;
use smsgate::Role;

use crate::abuse::{burst, count, fill_in_bursts, from_ip, retry_after};
use crate::dispatch::wait_until;
use crate::helpers::{TestApp, events_counted, token};
use crate::test_config::TestConfig;

/// A country cap of 300 an hour: one hundredth is 3, so it is spent in slices.
const SLICED_CAP: &str =
    "[[limits.country]]\ncountries = [\"GB\"]\nmax = 300\nwindow_seconds = 3600\n";

/// `n` British numbers from `n` addresses, starting at `first`.
fn british(first: usize, n: usize) -> Vec<Value> {
    (first..first + n)
        .map(|i| {
            from_ip(
                &format!("+4474002{i:05}"),
                &format!("198.51.{}.{}", i / 250, i % 250),
            )
        })
        .collect()
}

async fn counted_in_caps(app: &TestApp) -> i64 {
    events_counted(&app.pool, "ingress_hits", "key LIKE 'cc:%'").await
}

#[tokio::test]
async fn a_sliced_country_cap_holds_exactly_across_two_processes() {
    let config = TestConfig::with(SLICED_CAP);
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;

    // In waves, so both processes take and refill slices many times.
    let mut statuses = Vec::new();
    for wave in 0..8 {
        statuses.extend(burst([&first, &second], british(wave * 50, 50)).await);
    }
    // Never past the cap; early by at most what the other process holds (a share of 3 each).
    let stored = count(&statuses, 200);
    assert!((294..=300).contains(&stored), "{stored}: {statuses:?}");
    assert_eq!(first.count_rows("messages").await, stored as i64);
    // Once the slices expire their rest is given back, and the cap fills to exactly 300.
    wait_until(
        "the rows to count exactly what was stored",
        Duration::from_secs(15),
        async || counted_in_caps(&first).await == stored as i64,
    )
    .await;
    let filled = fill_in_bursts(
        300 - stored,
        None,
        async |round| burst([&first, &second], british(500 + round * 20, 20)).await,
        async || counted_in_caps(&first).await == first.count_rows("messages").await,
    )
    .await;
    assert_eq!(filled, 300 - stored);
    assert_eq!(first.count_rows("messages").await, 300);
    // Refused with the database's wait: the first bucket leaves the window in about an hour.
    let refused = second.post_sms(Some(&token()), &british(900, 1)[0]).await;
    assert_eq!(refused.status().as_u16(), 429);
    let wait = retry_after(&refused);
    assert!((3_500..=3_660).contains(&wait), "Retry-After {wait}");
}

#[tokio::test]
async fn a_sliced_spend_ceiling_holds_exactly_across_two_processes() {
    // 100 USD a day at 0.25 a message: 400 messages; a slice is 1 USD (four messages).
    let config = TestConfig::with(
        "[spend]\ncurrency = \"USD\"\ndaily_limit = 100.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.25\n",
    );
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;

    let mut statuses = Vec::new();
    for wave in 0..10 {
        statuses.extend(burst([&first, &second], british(wave * 50, 50)).await);
    }
    let stored = count(&statuses, 200);
    assert!((392..=400).contains(&stored), "{stored}: {statuses:?}");
    let spent = async || -> i64 {
        sqlx::query_scalar("SELECT spent_micros FROM spend_days WHERE scope = '*'")
            .fetch_one(&first.pool)
            .await
            .expect("spend")
    };
    wait_until(
        "the day's total to count exactly what was stored",
        Duration::from_secs(15),
        async || spent().await == stored as i64 * 250_000,
    )
    .await;
    let filled = fill_in_bursts(
        400 - stored,
        None,
        async |round| burst([&first, &second], british(600 + round * 20, 20)).await,
        async || spent().await == first.count_rows("messages").await * 250_000,
    )
    .await;
    assert_eq!(filled, 400 - stored);
    assert_eq!(first.count_rows("messages").await, 400);
    assert_eq!(spent().await, 100_000_000, "the ceiling, to the micro");
}

#[tokio::test]
async fn what_a_process_holds_unused_is_given_back_when_it_expires_and_when_it_stops() {
    let config = TestConfig::with(SLICED_CAP);
    let first = TestApp::spawn_with(&config).await;
    let second = first.spawn_sibling(&config, Role::Ingress).await;
    let pool = first.pool.clone();

    let post = async |n: usize| {
        assert_eq!(
            burst([&first, &first], british(n, 1)).await,
            [200],
            "stored"
        );
    };
    // A country nobody asked for lately is decided on its row: one event, nothing held.
    post(0).await;
    assert_eq!(counted_in_caps(&first).await, 1);
    // Asked for again within 5 s, it is busy: a slice of 1 + 3, the rest held by the process.
    post(1).await;
    assert_eq!(counted_in_caps(&first).await, 5);
    wait_until(
        "the expired slice's rest given back",
        Duration::from_secs(15),
        async || counted_in_caps(&second).await == 2,
    )
    .await;

    post(2).await;
    post(3).await;
    let counted = counted_in_caps(&second).await;
    assert!(counted > 4, "a slice is held again: {counted}");
    drop(first);
    wait_until(
        "a stopping process's slice given back",
        Duration::from_secs(4),
        async || events_counted(&pool, "ingress_hits", "key LIKE 'cc:%'").await == 4,
    )
    .await;
}

#[tokio::test]
async fn the_tighter_of_two_rules_of_the_same_countries_and_window_holds() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 10000\nwindow_seconds = 3600\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 300\nwindow_seconds = 3600\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let mut statuses = Vec::new();
    for wave in 0..7 {
        statuses.extend(burst([&app, &app], british(wave * 50, 50)).await);
    }
    // The tighter rule holds (not 10,000); early only by what the process's two writers held.
    let stored = count(&statuses, 200);
    assert!((294..=300).contains(&stored), "{stored}");
    wait_until(
        "the slices given back",
        Duration::from_secs(15),
        async || counted_in_caps(&app).await == stored as i64,
    )
    .await;
    let filled = fill_in_bursts(
        300 - stored,
        None,
        async |round| burst([&app, &app], british(900 + round * 20, 20)).await,
        async || counted_in_caps(&app).await == app.count_rows("messages").await,
    )
    .await;
    assert_eq!(filled, 300 - stored);
}

/// Found by a review: a refill that counted nothing in the end (every message of its batch
/// refused by another limit) left a spend row at zero once its slice was given back.
#[tokio::test]
async fn a_sliced_ceiling_leaves_no_row_for_a_country_whose_requests_were_refused() {
    let config = TestConfig::with(
        "[[limits.ip]]\nmax = 1\nwindow_seconds = 3600\n\
         [spend]\ncurrency = \"USD\"\ncountry_daily_limit = 100.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.25\n",
    );
    let app = TestApp::spawn_with(&config).await;
    assert_eq!(
        burst([&app, &app], vec![from_ip("+447400500001", "192.0.2.1")]).await,
        [200]
    );
    assert_eq!(
        burst([&app, &app], vec![from_ip("+14155550100", "192.0.2.1")]).await,
        [429],
        "the address's one request is used"
    );
    let scopes = async || -> Vec<(String, i64)> {
        sqlx::query_as("SELECT scope, spent_micros FROM spend_days ORDER BY scope")
            .fetch_all(&app.pool)
            .await
            .expect("spend")
    };
    wait_until(
        "the slices given back",
        Duration::from_secs(15),
        async || scopes().await == [("*".to_string(), 250_000), ("GB".to_string(), 250_000)],
    )
    .await;
}

/// Found by a review: a slice taken before its batch waited for a lock was spent after the
/// database's clock had left the slice's bucket, so the event would leave its window early.
/// Now the batch sees the slice is stale once it holds its locks and is decided again with a
/// refill counted in the current bucket.
#[tokio::test]
async fn a_slice_gone_stale_while_its_batch_waited_for_a_lock_is_not_spent() {
    // 300 a minute: one-second buckets, a share of 3.
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 300\nwindow_seconds = 60\n\
         [[limits.ingress_recipient]]\nmax = 5\nwindow_seconds = 3600\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let number = "+447400600001";
    assert_eq!(status_of(&app, number).await, 200, "decided on the row");
    assert_eq!(
        status_of(&app, "+447400600002").await,
        200,
        "busy now: takes a slice of 1 + 3"
    );

    // The number's row is held: the next request to it waits in its reservation, holding
    // the process's slice, while the database's clock moves to the next bucket.
    let mut holder = app.pool.begin().await.expect("begin");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM ingress_hits WHERE key = 'to:{number}' FOR UPDATE"
    )))
    .execute(&mut *holder)
    .await
    .expect("hold the number's row");
    let bucket: i64 =
        sqlx::query_scalar("SELECT floor(extract(epoch FROM clock_timestamp()))::bigint")
            .fetch_one(&app.pool)
            .await
            .expect("clock");
    let waiting = {
        let app_url = app.url("/v1/auth0/sms");
        let client = app.client.clone();
        tokio::spawn(async move {
            client
                .post(app_url)
                .bearer_auth(token())
                .json(&from_ip(number, "192.0.2.9"))
                .send()
                .await
                .expect("sent")
                .status()
                .as_u16()
        })
    };
    crate::helpers::until_a_session_waits_for_a_lock(&app.pool).await;
    wait_until(
        "the database's clock in the next second",
        Duration::from_secs(5),
        async || {
            let now: i64 =
                sqlx::query_scalar("SELECT floor(extract(epoch FROM clock_timestamp()))::bigint")
                    .fetch_one(&app.pool)
                    .await
                    .expect("clock");
            now > bucket
        },
    )
    .await;
    holder.commit().await.expect("release");
    assert_eq!(waiting.await.expect("joined"), 200);

    // Once every slice is given back, the third request is counted in a bucket after the
    // one the test saw before it waited, not in the slice's earlier bucket.
    wait_until(
        "every slice given back",
        Duration::from_secs(15),
        async || counted_in_caps(&app).await == 3,
    )
    .await;
    let counts: Vec<i64> =
        sqlx::query_scalar("SELECT counts FROM ingress_hits WHERE key LIKE 'cc:%'")
            .fetch_one(&app.pool)
            .await
            .expect("counts");
    let latest = counts.chunks_exact(3).map(|t| t[1]).max().unwrap_or(0);
    assert!(latest > bucket * 1000, "{counts:?} (seen at {bucket} s)");
}

async fn status_of(app: &TestApp, number: &str) -> u16 {
    app.post_sms(Some(&token()), &from_ip(number, "192.0.2.8"))
        .await
        .status()
        .as_u16()
}

/// Found by an attack: a refill counts its batch's whole need, and what other limits then
/// refused of it stayed held for as long as the slice lasted, so a busy cap (or a monitoring
/// rule) ran dry early in other processes. Now the reservation keeps at most a share unused.
#[tokio::test]
async fn a_refill_keeps_no_more_than_a_share_of_what_other_limits_refused() {
    let config = TestConfig::with(
        "[[limits.ip]]\nmax = 1\nwindow_seconds = 3600\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 1000\nwindow_seconds = 3600\n",
    );
    let app = TestApp::spawn_with(&config).await;
    // Makes the country busy: the burst below refills its slice.
    assert_eq!(
        burst([&app, &app], vec![from_ip("+447400799999", "192.0.2.99")]).await,
        [200]
    );
    let one_address: Vec<Value> = (0..40)
        .map(|i| from_ip(&format!("+4474007{i:05}"), "192.0.2.1"))
        .collect();
    let statuses = burst([&app, &app], one_address).await;
    assert_eq!(count(&statuses, 200), 1, "{statuses:?}");
    // The two stored, and at most a share of 10 held by each of the process's two writers:
    // not the 39 the address's cap refused.
    let counted = counted_in_caps(&app).await;
    assert!((2..=22).contains(&counted), "{counted}");
}
