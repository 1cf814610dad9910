//! Attacks on budget slices and the one-statement path for new keys (commit 47ae318): several
//! processes on one database, mixed batches (keyed, repeated, unkeyed), sliced and row-decided
//! caps, monitor rules and spend ceilings, checked against docs/guarantees.md ("Exact limits
//! across processes", "Country caps and spend ceilings are exact", "A refusal stores nothing").

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;
use smsgate::Role;

use crate::abuse::{count, fill_in_bursts, from_ip};
use crate::dispatch::wait_until;
use crate::helpers::{TestApp, events_counted, token};
use crate::test_config::TestConfig;

/// One request: its body and, perhaps, an idempotency key.
type Request = (Value, Option<String>);

/// Sends every request at once, spread over `apps` in turn; returns the statuses in order.
async fn burst(apps: &[&TestApp], requests: &[Request]) -> Vec<u16> {
    let token = token();
    let sends = requests.iter().enumerate().map(|(i, (body, key))| {
        let app = apps[i % apps.len()];
        let token = token.clone();
        async move {
            let mut request = app
                .client
                .post(app.url("/v1/auth0/sms"))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {token}"))
                .body(body.to_string());
            if let Some(key) = key {
                request = request.header("idempotency-key", key.clone());
            }
            request.send().await.expect("sent").status().as_u16()
        }
    });
    futures_util::future::join_all(sends).await
}

fn plain(body: Value) -> Request {
    (body, None)
}

/// A British number from an address of its own.
fn british(i: usize) -> Value {
    from_ip(
        &format!("+4474009{i:05}"),
        &format!("198.{}.{}.{}", 18 + i / 62_500, (i / 250) % 250, i % 250),
    )
}

/// What slices held unused elsewhere may refuse early, in messages: one share (2 here) per
/// writer (2) of each of the three processes (docs/guarantees.md, "Slices make a busy limit
/// conservative").
const HELD_ELSEWHERE: usize = 3 * 2 * 2;

async fn three(config: &TestConfig) -> (TestApp, TestApp, TestApp) {
    let first = TestApp::spawn_with(config).await;
    let second = first.spawn_sibling(config, Role::Ingress).await;
    let third = first.spawn_sibling(config, Role::Ingress).await;
    (first, second, third)
}

async fn rows(app: &TestApp, filter: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM ingress_hits WHERE {filter}"
    )))
    .fetch_one(&app.pool)
    .await
    .expect("rows")
}

/// A mixed wave of `n` requests from `first`: every third keyed, every seventh a repeat of
/// the keyed request before it (same body, same key), the rest plain.
fn mixed_wave(first: usize, n: usize) -> Vec<Request> {
    let mut wave = Vec::new();
    for i in first..first + n {
        let body = british(i);
        if i % 7 == 0 && !wave.is_empty() {
            let previous: &Request = &wave[wave.len() - 1];
            if previous.1.is_some() {
                wave.push(previous.clone());
                continue;
            }
        }
        let key = (i % 3 == 0).then(|| format!("attack-slices-{i}"));
        wave.push((body, key));
    }
    wave
}

/// Sliced country cap of 200 (a share of 2), three processes, mixed keyed, repeated and
/// plain requests: never one past the cap, refusals store nothing, and once the slices are
/// given back the row counts exactly what was stored and the cap fills to exactly 200.
#[tokio::test]
async fn a_sliced_cap_of_200_holds_across_three_processes_with_mixed_batches() {
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 200\nwindow_seconds = 3600\n",
    );
    let (first, second, third) = three(&config).await;
    let apps = [&first, &second, &third];
    let mut requests = Vec::new();
    let mut statuses = Vec::new();
    for wave in 0..6 {
        let wave = mixed_wave(wave * 60, 60);
        statuses.extend(burst(&apps, &wave).await);
        requests.extend(wave);
    }
    // A repeat answered 200 is not a new message: count distinct stored messages.
    let stored = first.count_rows("messages").await;
    assert!(stored <= 200, "{stored} stored past a cap of 200");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    wait_until(
        "the slices given back",
        Duration::from_secs(15),
        async || events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%'").await == stored,
    )
    .await;
    fill_in_bursts(
        200 - stored as usize,
        Some(HELD_ELSEWHERE),
        async |r| {
            let from = 5_000 + r * 40;
            let last: Vec<Request> = (from..from + 40).map(|i| plain(british(i))).collect();
            burst(&apps, &last).await
        },
        async || {
            let stored = first.count_rows("messages").await;
            events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%'").await == stored
        },
    )
    .await;
    assert_eq!(first.count_rows("messages").await, 200);
    assert_eq!(first.count_rows("message_queue").await, 200);
    assert_eq!(
        events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%'").await,
        200
    );
}

/// A sliced spend ceiling of 100 USD at 0.5 a message (200 messages, a slice is 2), three
/// processes, mixed batches, a second country: never one micro past the ceiling, the day's
/// rows equal what was stored once the slices are given back, and the ceiling fills exactly.
#[tokio::test]
async fn a_sliced_spend_ceiling_holds_across_three_processes_with_mixed_batches() {
    let config = TestConfig::with(
        "[spend]\ncurrency = \"USD\"\ndaily_limit = 100.0\ncountry_daily_limit = 100.0\n\
         [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.5\n",
    );
    let (first, second, third) = three(&config).await;
    let apps = [&first, &second, &third];
    let mut statuses = Vec::new();
    for wave in 0..5 {
        let mut requests = mixed_wave(wave * 60, 60);
        // A few US numbers too, so two country scopes and the total are sliced together.
        for j in 0..10 {
            let i = 20_000 + wave * 10 + j;
            requests.push(plain(from_ip(
                &format!("+1415556{:04}", i % 10_000),
                &format!("203.0.{}.{}", i / 250 % 250, i % 250),
            )));
        }
        statuses.extend(burst(&apps, &requests).await);
    }
    let stored = first.count_rows("messages").await;
    assert!(stored <= 200, "{stored} stored past a 100 USD ceiling");
    let spend = async || -> Vec<(String, i64)> {
        sqlx::query_as("SELECT scope, spent_micros FROM spend_days ORDER BY scope")
            .fetch_all(&first.pool)
            .await
            .expect("spend")
    };
    let by_country = async || -> Vec<(String, i64)> {
        sqlx::query_as(
            "SELECT scope, sum(estimated_cost_micros)::bigint FROM (
                 SELECT '*' AS scope, estimated_cost_micros FROM messages
                 UNION ALL SELECT country, estimated_cost_micros FROM messages) s
             GROUP BY scope ORDER BY scope",
        )
        .fetch_all(&first.pool)
        .await
        .expect("stored spend")
    };
    let expected = by_country().await;
    wait_until(
        "the day's rows to count exactly what was stored",
        Duration::from_secs(15),
        async || spend().await == expected,
    )
    .await;
    fill_in_bursts(
        200 - stored as usize,
        Some(HELD_ELSEWHERE),
        async |r| {
            let from = 6_000 + r * 60;
            let last: Vec<Request> = (from..from + 60).map(|i| plain(british(i))).collect();
            burst(&apps, &last).await
        },
        async || spend().await == by_country().await,
    )
    .await;
    let total: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(estimated_cost_micros), 0)::bigint FROM messages")
            .fetch_one(&first.pool)
            .await
            .expect("total");
    assert_eq!(total, 100_000_000, "the ceiling, to the micro");
    wait_until(
        "the slices given back",
        Duration::from_secs(15),
        async || {
            let rows = spend().await;
            rows.iter().all(|(_, spent)| *spent > 0)
                && rows.iter().find(|(s, _)| s == "*").map(|(_, s)| *s) == Some(100_000_000)
        },
    )
    .await;
}

/// Row-decided caps (a number's 2, an address's 20) through the one-statement path, with a
/// sliced country cap and a sliced monitor rule beside them, three processes at once: new
/// numbers from many addresses, the same new numbers from every process, numbers seen before
/// from new addresses, and new numbers from addresses seen before.
#[tokio::test]
async fn row_caps_through_one_statement_hold_across_three_processes() {
    let config = TestConfig::with(
        "[[limits.ip]]\nmax = 20\nwindow_seconds = 3600\n\
         [[limits.ingress_recipient]]\nmax = 2\nwindow_seconds = 3600\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 100000\nwindow_seconds = 3600\n\
         [[limits.country]]\ncountries = [\"GB\"]\nmax = 300\nwindow_seconds = 3600\nmode = \"monitor\"\n",
    );
    let (first, second, third) = three(&config).await;
    let apps = [&first, &second, &third];
    let mut all = Vec::new();
    for wave in 0..5usize {
        let mut requests = Vec::new();
        // 20 new numbers, each from 6 addresses at once (over all three processes).
        for i in 0..120 {
            let n = wave * 20 + i % 20;
            requests.push(plain(from_ip(
                &format!("+4474008{n:05}"),
                &format!("10.{wave}.{}.{}", i / 20, i % 20),
            )));
        }
        // Numbers of the previous wave (seen before) from new addresses.
        for i in 0..20 {
            let n = wave.saturating_sub(1) * 20 + i;
            requests.push(plain(from_ip(
                &format!("+4474008{n:05}"),
                &format!("10.{}.9.{i}", 100 + wave),
            )));
        }
        // One busy address: 40 new numbers (its cap is 20 across all waves).
        for i in 0..40 {
            let n = 50_000 + wave * 40 + i;
            requests.push(plain(from_ip(&format!("+4474008{n:05}"), "192.0.2.77")));
        }
        all.extend(burst(&apps, &requests).await);
    }
    assert!(all.iter().all(|s| *s == 200 || *s == 429), "{all:?}");
    let per_number: Vec<(String, i64)> = sqlx::query_as(
        "SELECT recipient, count(*) FROM messages GROUP BY recipient HAVING count(*) > 2",
    )
    .fetch_all(&first.pool)
    .await
    .expect("per number");
    assert!(
        per_number.is_empty(),
        "past a number's cap of 2: {per_number:?}"
    );
    let per_address: Vec<(String, i64)> = sqlx::query_as(
        "SELECT host(client_ip), count(*) FROM messages GROUP BY 1 HAVING count(*) > 20",
    )
    .fetch_all(&first.pool)
    .await
    .expect("per address");
    assert!(
        per_address.is_empty(),
        "past an address's cap of 20: {per_address:?}"
    );
    let stored = first.count_rows("messages").await;
    assert_eq!(stored, count(&all, 200) as i64, "a 200 per stored message");
    // The rows count exactly what was stored; no row for a key that stored nothing.
    assert_eq!(
        events_counted(&first.pool, "ingress_hits", "key LIKE 'to:%'").await,
        stored
    );
    assert_eq!(
        events_counted(&first.pool, "ingress_hits", "key LIKE 'ip:%'").await,
        stored
    );
    let numbers: i64 = sqlx::query_scalar("SELECT count(DISTINCT recipient) FROM messages")
        .fetch_one(&first.pool)
        .await
        .expect("numbers");
    let addresses: i64 = sqlx::query_scalar("SELECT count(DISTINCT client_ip) FROM messages")
        .fetch_one(&first.pool)
        .await
        .expect("addresses");
    assert_eq!(rows(&first, "key LIKE 'to:%'").await, numbers);
    assert_eq!(rows(&first, "key LIKE 'ip:%'").await, addresses);
    // The blocking rule, once its slices are given back, counts exactly what was stored. The
    // monitor rule (a log of its own) counts at most that: while batches hold the unused part
    // of their needs (most of them refused by the row caps) it runs dry and reports requests
    // it would have let through (seen: 166 of 220 counted under a max of 300), the documented
    // conservatism of slices.
    assert!(stored < 300, "{stored}");
    wait_until(
        "the slices given back",
        Duration::from_secs(15),
        async || events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%'").await == stored,
    )
    .await;
    assert!(
        events_counted(&first.pool, "ingress_hits", "key LIKE 'm300/3600:cc:%'").await <= stored
    );
}

/// The database's bucket (ms) of each stored message's `created_at`, and each bucket's count
/// in the country row, for a window of `window_ms`.
async fn buckets(app: &TestApp, window_ms: i64) -> (BTreeMap<i64, i64>, BTreeMap<i64, i64>) {
    let width = window_ms / 60;
    let created: Vec<i64> =
        sqlx::query_scalar("SELECT (extract(epoch FROM created_at) * 1000)::bigint FROM messages")
            .fetch_all(&app.pool)
            .await
            .expect("created");
    let mut stored = BTreeMap::new();
    for ms in created {
        *stored.entry(ms.div_euclid(width) * width).or_default() += 1;
    }
    let counts: Vec<Vec<i64>> =
        sqlx::query_scalar("SELECT counts FROM ingress_hits WHERE key LIKE 'cc:%'")
            .fetch_all(&app.pool)
            .await
            .expect("counts");
    let mut counted = BTreeMap::new();
    for triple in counts.iter().flat_map(|c| c.chunks_exact(3)) {
        if triple[0] == window_ms {
            *counted.entry(triple[1]).or_default() += triple[2];
        }
    }
    (stored, counted)
}

/// Attack: is every message counted by the time it is stored? Three processes keep a 30-s
/// window (500-ms buckets) of a huge sliced country cap busy for six seconds; once the slices
/// are given back, the row's buckets are compared with the messages' `created_at`. Found:
/// under load, some messages admitted just before a bucket's end are stored just after it
/// (9 to 40 per boundary). A request counts at its admission, which its write follows by
/// milliseconds (docs/guarantees.md says so now); what must never happen is a message
/// stored before it was counted.
#[tokio::test]
async fn every_sliced_message_is_counted_by_the_time_it_is_stored() {
    let window_ms = 30_000;
    let config = TestConfig::with(
        "[[limits.country]]\ncountries = [\"GB\"]\nmax = 100000\nwindow_seconds = 30\n",
    );
    let (first, second, third) = three(&config).await;
    let apps = [&first, &second, &third];
    let started = std::time::Instant::now();
    let mut next = 0;
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(6) {
        let wave: Vec<Request> = (next..next + 90).map(|i| plain(british(i))).collect();
        next += 90;
        statuses.extend(burst(&apps, &wave).await);
    }
    let stored = first.count_rows("messages").await;
    assert_eq!(stored, count(&statuses, 200) as i64);
    wait_until(
        "the slices given back",
        Duration::from_secs(15),
        async || events_counted(&first.pool, "ingress_hits", "key LIKE 'cc:%'").await == stored,
    )
    .await;
    let (stored_in, counted_in) = buckets(&first, window_ms).await;
    // A request counts when its limits admit it, and its message is stored by the write that
    // follows (docs/guarantees.md): so walking forward, what was stored by the end of each
    // bucket was counted by then. The attack found messages stored in the bucket after the
    // one they were counted in (admitted just before a boundary, written just after); that is
    // the admission's time, by design, not a message counted early.
    let starts: std::collections::BTreeSet<i64> =
        stored_in.keys().chain(counted_in.keys()).copied().collect();
    let (mut stored_by, mut counted_by) = (0, 0);
    let mut lagging: HashMap<i64, (i64, i64)> = HashMap::new();
    for start in starts {
        stored_by += stored_in.get(&start).copied().unwrap_or(0);
        counted_by += counted_in.get(&start).copied().unwrap_or(0);
        if counted_by < stored_by {
            lagging.insert(start, (stored_by, counted_by));
        }
    }
    assert!(
        lagging.is_empty(),
        "messages stored before they were counted (bucket: stored by its end, counted by its \
         end): {lagging:?}\nstored per bucket {stored_in:?}\ncounted per bucket {counted_in:?}"
    );
}

/// One client address, 16 requests at a time, 900 in all against a `[[limits.ip]]` cap of
/// 1,000 an hour beside a sliced spend ceiling. Every one is under the cap, and what slices
/// hold unused may refuse early at most a hundredth of the cap per writer
/// (docs/guarantees.md): 20 here, so at least 880 must pass. (Session 14's attack saw 710–780
/// pass against a release binary that had been through database freezes; not reproduced here.)
#[tokio::test]
async fn a_busy_window_under_concurrency_refuses_early_no_more_than_its_bound() {
    // As the attack ran it: a sliced spend ceiling beside the window, a small pool.
    let config = TestConfig::base().set("database.max_connections", 4).merge(
        "[[limits.ip]]\nmax = 1000\nwindow_seconds = 3600\n\
             [spend]\ncurrency = \"EUR\"\ndaily_limit = 1000.0\n\
             [[prices]]\ncarrier = \"console\"\nprefix = \"\"\nper_segment = 0.05\n",
    );
    let app = TestApp::spawn_with(&config).await;
    let requests: Vec<Request> = (0..900)
        .map(|i| plain(from_ip(&format!("+4474009{i:05}"), "198.51.100.77")))
        .collect();
    // 16 at a time, each next one sent as soon as one is answered.
    use futures_util::StreamExt;
    let statuses: Vec<Vec<u16>> = futures_util::stream::iter(requests.chunks(1))
        .map(|one| {
            let app = &app;
            async move { burst(&[app], one).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let accepted = statuses.iter().flatten().filter(|&&s| s == 200).count();
    assert!(
        accepted >= 880,
        "{accepted} of 900 accepted under a cap of 1000"
    );
}
