//! Infrastructure faults with real processes and a real PostgreSQL: the database stopped under
//! load, and the gateway killed with SIGKILL again and again. Nothing acknowledged is lost.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smsgate::db::embedded::{Durability, EmbeddedPostgres};
use smsgate::{App, Config, Role};
use tokio_util::sync::CancellationToken;

use crate::cli::wait_until_healthy;
use crate::dispatch::{FAST_DISPATCH, config_with, wait_until};
use crate::helpers::{TestApp, token};
use crate::process::{WORKERS, slow_config, spawn_binary};
use crate::standins::twilio::{Reply, TwilioStandIn};
use crate::test_config::TestConfig;

/// One request of a load run: when it was sent and answered, to whom, and the status.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub sent: Instant,
    pub answered: Instant,
    pub recipient: String,
    pub status: Option<u16>,
}

/// `clients` posting one after another until `stop`, each to a unique number.
pub async fn load(
    address: SocketAddr,
    clients: usize,
    first_number: u64,
    stop: CancellationToken,
) -> Vec<Outcome> {
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let http = crate::helpers::http_client(20);
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients as u64 {
        let (http, outcomes, stop) = (http.clone(), outcomes.clone(), stop.clone());
        tasks.spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let recipient = format!("+1415{:07}", first_number + client * 100_000 + n);
                n += 1;
                let sent = Instant::now();
                let status = crate::helpers::sms_request(&http, address, token(), &recipient)
                    .send()
                    .await
                    .ok()
                    .map(|r| r.status().as_u16());
                let outcome = Outcome {
                    sent,
                    answered: Instant::now(),
                    recipient,
                    status,
                };
                if let Ok(mut all) = outcomes.lock() {
                    all.push(outcome);
                }
                if status.is_none() {
                    // The process is gone (kill tests): wait for the next one.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    outcomes.lock().map(|all| all.clone()).unwrap_or_default()
}

/// The real app for `config`, on the database at `url`, serving until the token is cancelled.
pub async fn serve_on(
    config: &TestConfig,
    url: &str,
    role: Role,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut config = Config::from_toml_str(&config.to_string()).expect("config");
    config.database.url = smsgate::secret::Secret::new(url.to_string());
    let app = App::build_with_role(&config, role)
        .await
        .expect("app builds");
    let address = app.local_addr().expect("bound");
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(app.run(shutdown.clone()));
    (address, shutdown, served)
}

/// Every answer of a load run was a 200 or a 503: an outage never shows as anything else.
pub fn assert_only_200_or_503(outcomes: &[Outcome]) {
    let others = outcomes
        .iter()
        .filter(|o| !matches!(o.status, Some(200) | Some(503)))
        .count();
    assert_eq!(others, 0, "every answer was a 200 or a 503");
}

fn acknowledged(outcomes: &[Outcome]) -> HashSet<String> {
    outcomes
        .iter()
        .filter(|o| o.status == Some(200))
        .map(|o| o.recipient.clone())
        .collect()
}

/// A private cluster this test may stop, in a directory the `postgres` account can reach.
pub fn private_cluster(dir: &std::path::Path) -> EmbeddedPostgres {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    EmbeddedPostgres::start(&dir.join("pg"), Durability::Durable).expect("cluster starts")
}

#[tokio::test]
async fn postgres_stopped_under_load_gives_503s_then_recovers_without_a_restart() {
    let standin = TwilioStandIn::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = private_cluster(dir.path());
    let url = cluster.url("postgres");
    let (address, shutdown, served) =
        serve_on(&config_with(&standin, FAST_DISPATCH), &url, Role::All).await;

    let stop_load = CancellationToken::new();
    let running = tokio::spawn(load(address, 4, 0, stop_load.clone()));
    wait_until(
        "the load to reach the carrier",
        Duration::from_secs(20),
        async || standin.received().len() >= 10,
    )
    .await;
    let down_from = Instant::now();
    tokio::task::spawn_blocking(move || cluster.stop())
        .await
        .expect("stopped");
    // The outage itself: long enough for the load to meet it many times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let home = dir.path().join("pg");
    let restarting = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        EmbeddedPostgres::start(&home, Durability::Durable).expect("cluster restarts")
    })
    .await
    .expect("restarted");
    let down_to = Instant::now();
    // Accepting again: requests made a second past the restart (the window checked below)
    // reach the carrier.
    let at_restart = standin.received().len();
    wait_until(
        "sends after the restart",
        Duration::from_secs(20),
        async || {
            down_to.elapsed() > Duration::from_secs(2)
                && standin.received().len() >= at_restart + 20
        },
    )
    .await;
    stop_load.cancel();
    let outcomes = running.await.expect("load");

    let while_down: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent > down_from + Duration::from_millis(200) && o.answered < restarting)
        .collect();
    assert!(
        while_down.len() >= 10,
        "requests were made while it was down"
    );
    let not_503 = while_down.iter().filter(|o| o.status != Some(503)).count();
    assert_eq!(
        not_503,
        0,
        "only 503s while the database was down ({} requests)",
        while_down.len()
    );
    let after: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.sent > down_to + Duration::from_secs(1))
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|o| o.status == Some(200)),
        "the same process accepts again once the database is back"
    );
    assert_only_200_or_503(&outcomes);
    let acked = acknowledged(&outcomes);
    wait_until(
        "every acknowledged message to be sent",
        Duration::from_secs(30),
        async || {
            let sent = standin.accepted_per_recipient();
            acked.iter().all(|r| sent.contains_key(r))
        },
    )
    .await;

    shutdown.cancel();
    served.await.expect("served").expect("clean stop");
    cluster.stop();
}

#[tokio::test]
async fn five_kill_9s_under_load_lose_nothing_acknowledged() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::Slow(Duration::from_millis(100)));
    let config = slow_config(&standin);
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut outcomes = Vec::new();

    for round in 0..5u64 {
        let (mut child, port) = spawn_binary(&db, &config, dir.path());
        wait_until_healthy(port).await;
        let stop_load = CancellationToken::new();
        let address: SocketAddr = ([127, 0, 0, 1], port).into();
        let running = tokio::spawn(load(address, 4, round * 1_000_000, stop_load.clone()));
        let before = standin.received().len();
        wait_until("sends in flight", Duration::from_secs(20), async || {
            standin.received().len() >= before + 5
        })
        .await;
        // Killed while requests and sends are in flight.
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        stop_load.cancel();
        outcomes.extend(running.await.expect("load"));
    }

    let (last, _) = spawn_binary(&db, &config, dir.path());
    crate::dispatch::wait_until_drained(&db.pool, Duration::from_secs(90)).await;
    assert!(crate::cli::terminate(last).await.success());

    let acked = acknowledged(&outcomes);
    assert!(acked.len() >= 20, "{} acknowledged", acked.len());
    let sent = standin.accepted_per_recipient();
    let missing: Vec<&String> = acked.iter().filter(|r| !sent.contains_key(*r)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never sent: {missing:?}"
    );
    // Per kill: the sends in flight (the carrier has them: the stand-ins count a request on
    // arrival) and the sends done whose outcomes were not yet written (one batch at most).
    let duplicates: usize = sent.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= 5 * 2 * WORKERS,
        "{duplicates} duplicates, more than 5 kills × 2 × {WORKERS}"
    );
}

/// The pool lends a connection idle for 100 ms or more only after a ping (`db::connect`), so
/// backends cut while the gateway was idle cost no request a 503: each dead connection is
/// found by its ping and replaced. (With pings after a second idle, an attack counted 4–6
/// 503s in a row here.)
#[tokio::test]
async fn backends_cut_while_the_gateway_was_idle_cost_no_request() {
    let standin = TwilioStandIn::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = private_cluster(dir.path());
    let url = cluster.url("postgres");
    let (address, shutdown, served) =
        serve_on(&config_with(&standin, FAST_DISPATCH), &url, Role::Ingress).await;
    let http = crate::helpers::http_client(10);
    let post = async |n: u64| {
        crate::helpers::sms_request(&http, address, token(), &format!("+1415{n:07}"))
            .send()
            .await
            .map(|response| response.status().as_u16())
            .ok()
    };
    for n in 0..5 {
        assert_eq!(post(n).await, Some(200), "before the cut");
    }

    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'smsgate'",
    )
    .fetch_one(&admin)
    .await
    .expect("terminate the gateway's backends");
    assert!(cut > 0, "the gateway had connections to cut");
    // What is under test is the connections' idle time: past 100 ms each is pinged first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut after = Vec::new();
    for n in 5..15 {
        after.push(post(n).await);
    }
    assert!(
        after.iter().all(|status| *status == Some(200)),
        "every request after the cut is stored: {after:?}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&admin)
        .await
        .expect("count");
    assert_eq!(stored, 15);

    admin.close().await;
    shutdown.cancel();
    served.await.expect("served").expect("clean stop");
    cluster.stop();
}
