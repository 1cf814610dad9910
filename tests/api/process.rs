//! The real binary under crashes and shutdowns: nothing acknowledged is lost, duplicates stay
//! bounded by what was in flight.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use smsgate::Role;

use crate::cli::{BINARY, free_port, terminate as stop, wait_until_healthy};
use crate::dispatch::{config_with, wait_until};
use crate::helpers::{TestApp, token, url_of};
use crate::standins::twilio::{Reply, TwilioStandIn};
use crate::test_config::TestConfig;

pub const WORKERS: usize = 8;

/// Runs `smsgate serve` on the test app's database with `config`.
pub fn spawn_binary(app: &TestApp, config: &TestConfig, dir: &std::path::Path) -> (Child, u16) {
    spawn_binary_with_env(app, config, dir, &[])
}

/// `spawn_binary`, with extra environment variables for the gateway process.
pub fn spawn_binary_with_env(
    app: &TestApp,
    config: &TestConfig,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (Child, u16) {
    spawn_binary_as(app, config, dir, env, "all")
}

/// `spawn_binary_with_env` in one `--role` (all, ingress, worker).
pub fn spawn_binary_as(
    app: &TestApp,
    config: &TestConfig,
    dir: &std::path::Path,
    env: &[(&str, &str)],
    role: &str,
) -> (Child, u16) {
    let port = free_port();
    let text = config
        .clone()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .to_string();
    let path = dir.join(format!("smsgate-{port}.toml"));
    std::fs::write(&path, text).expect("config");
    let log = std::fs::File::create(dir.join(format!("smsgate-{port}.log"))).expect("log");
    let child = Command::new(BINARY)
        .args(["serve", "--role", role, "--config"])
        .arg(&path)
        .env("DATABASE_URL", url_of(&app.pool.connect_options()))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start smsgate");
    (child, port)
}

async fn post_many(client: &reqwest::Client, port: u16, count: usize) -> Vec<String> {
    let mut recipients = Vec::new();
    for i in 0..count {
        let recipient = format!("+1415555{:04}", 1000 + i);
        let response = crate::helpers::sms_request(client, port, token(), &recipient)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 200);
        let _: Value = response.json().await.expect("JSON");
        recipients.push(recipient);
    }
    recipients
}

pub fn slow_config(standin: &TwilioStandIn) -> TestConfig {
    config_with(
        standin,
        &format!(
            "[dispatch]\nworkers = {WORKERS}\nlease_seconds = 4\npoll_interval_ms = 200\n\
             shutdown_grace_seconds = 10\nretry_base_ms = 100\n"
        ),
    )
}

#[tokio::test]
async fn a_kill_9_mid_flight_loses_nothing_and_duplicates_at_most_the_in_flight_sends() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::Slow(Duration::from_millis(150)));
    let config = slow_config(&standin);
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let (mut child, port) = spawn_binary(&db, &config, dir.path());
    let client = wait_until_healthy(port).await;
    let acknowledged = post_many(&client, port, 300).await;
    wait_until("some sends", Duration::from_secs(30), async || {
        standin.received().len() >= 20
    })
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let sent_before_kill = standin.received().len();
    assert!(sent_before_kill < acknowledged.len(), "killed mid-flight");

    let (restarted, _) = spawn_binary(&db, &config, dir.path());
    crate::dispatch::wait_until_drained(&db.pool, Duration::from_secs(90)).await;
    assert!(stop(restarted).await.success());

    let accepted = standin.accepted_per_recipient();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|r| !accepted.contains_key(*r))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged but never sent: {missing:?}"
    );
    // The sends in flight at the kill, and those done whose outcomes were not yet written.
    let duplicates: usize = accepted.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= 2 * WORKERS,
        "{duplicates} duplicates, more than 2 × the {WORKERS} workers"
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'sent'")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(sent, acknowledged.len() as i64);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_sends_and_a_restart_sends_the_rest_exactly_once() {
    let standin = TwilioStandIn::start().await;
    standin.set_default(Reply::Slow(Duration::from_millis(300)));
    let config = slow_config(&standin);
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");

    let (child, port) = spawn_binary(&db, &config, dir.path());
    let client = wait_until_healthy(port).await;
    let acknowledged = post_many(&client, port, 100).await;
    wait_until("sends in flight", Duration::from_secs(30), async || {
        standin.in_flight() > 0
    })
    .await;
    let status = stop(child).await;

    assert!(status.success(), "exit code 0 after SIGTERM: {status}");
    assert_eq!(
        standin.in_flight(),
        0,
        "in-flight sends finished before exit"
    );
    let accepted_so_far = standin.received().len() as i64;
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'sent'")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(
        recorded, accepted_so_far,
        "every send was recorded before exit"
    );
    assert!(recorded < acknowledged.len() as i64, "stopped mid-way");
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM message_queue WHERE lease_token IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(leased, 0, "no message left leased");

    let (restarted, _) = spawn_binary(&db, &config, dir.path());
    crate::dispatch::wait_until_drained(&db.pool, Duration::from_secs(60)).await;
    assert!(stop(restarted).await.success());

    let accepted = standin.accepted_per_recipient();
    let expected: HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(accepted.len(), expected.len(), "every message sent");
    assert!(
        accepted.values().all(|&n| n == 1),
        "no duplicates after a graceful stop"
    );
}

#[tokio::test]
async fn json_logs_carry_one_outcome_line_per_message_and_never_a_code_number_or_secret() {
    let standin = TwilioStandIn::start().await;
    let config = config_with(
        &standin,
        "[log]\nformat = \"json\"\nlevel = \"debug,sqlx=warn\"\n",
    );
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = spawn_binary(&db, &config, dir.path());
    let client = wait_until_healthy(port).await;

    post_many(&client, port, 1).await;
    let unauthorized = crate::helpers::sms_request(
        &client,
        port,
        "not-a-token-but-a-secret-looking-string",
        "+14155559999",
    )
    .send()
    .await
    .expect("sent");
    assert_eq!(unauthorized.status().as_u16(), 401);
    wait_until("the send", Duration::from_secs(10), async || {
        smsgate::db::queue::depth(&smsgate::db::Db::direct(db.pool.clone()))
            .await
            .unwrap_or(1)
            == 0
    })
    .await;
    assert!(stop(child).await.success());

    let log = std::fs::read_to_string(dir.path().join(format!("smsgate-{port}.log"))).expect("log");
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let outcome = lines
        .iter()
        .find(|l| l["message"] == "message sent")
        .expect("an outcome line");
    for field in ["id", "carrier", "outcome", "latency_ms"] {
        assert!(outcome.get(field).is_some(), "{field} in {outcome}");
    }
    for secret in [
        "123456",
        "14155551000",
        "14155559999",
        crate::helpers::SECRET,
        crate::helpers::ADMIN_TOKEN,
        crate::standins::twilio::AUTH_TOKEN,
        "not-a-token-but-a-secret-looking-string",
        "Bearer",
    ] {
        assert!(!log.contains(secret), "{secret:?} appears in the log");
    }
    assert!(
        log.contains("+********000"),
        "numbers are masked but for their last 3 digits"
    );
}

/// A process that only dispatches parses its first phone number when it counts its first
/// outcome (the route measurements' country). That work must be done before the process
/// claims anything: done on the outcome writer, it held the first outcomes past a one-second
/// lease, and those messages were claimed and sent again (soak seed 2).
#[tokio::test]
async fn a_new_worker_process_records_its_first_outcomes_within_a_short_lease() {
    let standin = TwilioStandIn::start().await;
    // Calls that end well inside the lease, leaving less of it than the first parse takes
    // in a debug build (0.8 s here).
    standin.set_default(Reply::Slow(Duration::from_millis(350)));
    let config = config_with(
        &standin,
        "[dispatch]\nworkers = 4\nlease_seconds = 1\npoll_interval_ms = 100\n",
    )
    .set("carriers.twilio.timeout_ms", 500)
    .set("carriers.twilio.connect_timeout_ms", 200);
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let mut recipients = Vec::new();
    for i in 0..6 {
        let recipient = format!("+44791110{:04}", 2000 + i);
        let response = db
            .post_sms(Some(&token()), &crate::helpers::sms(&recipient))
            .await;
        assert_eq!(response.status().as_u16(), 200);
        recipients.push(recipient);
    }
    let dir = tempfile::tempdir().expect("tempdir");

    let (worker, _) = spawn_binary_as(&db, &config, dir.path(), &[], "worker");
    crate::dispatch::wait_until_drained(&db.pool, Duration::from_secs(30)).await;
    // A second claim would follow the lease's end: give it the time to show.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(stop(worker).await.success());

    let accepted = standin.accepted_per_recipient();
    for recipient in &recipients {
        assert_eq!(
            accepted.get(recipient),
            Some(&1),
            "{recipient}: {accepted:?}"
        );
    }
}

/// Every line of a message's life names it: stored, queued, claimed, each carrier call (the
/// carrier module's own warnings included), the outcome; in the line's fields or in the span
/// it was logged in.
#[tokio::test]
async fn every_log_line_of_a_messages_life_carries_its_id() {
    let standin = TwilioStandIn::start().await;
    // The first answer breaks off mid-body: the carrier module warns, inside the send.
    standin.script([Reply::ResetMidBody]);
    let config = config_with(
        &standin,
        "[log]\nformat = \"json\"\nlevel = \"debug,sqlx=warn,hyper=info,reqwest=info\"\n",
    );
    let db = TestApp::spawn_role(&config, Role::Ingress).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = spawn_binary(&db, &config, dir.path());
    let client = wait_until_healthy(port).await;

    let response = crate::helpers::sms_request(&client, port, token(), "+14155552000")
        .send()
        .await
        .expect("sent");
    let id = response.json::<Value>().await.expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_string();
    crate::dispatch::wait_until_drained(&db.pool, Duration::from_secs(10)).await;
    assert!(stop(child).await.success());

    let log = std::fs::read_to_string(dir.path().join(format!("smsgate-{port}.log"))).expect("log");
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let names_it = |line: &Value| {
        line["id"] == id.as_str()
            || line["span"]["id"] == id.as_str()
            || line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["id"] == id.as_str()))
    };
    let life = [
        "storing message",
        "message queued",
        "message claimed",
        "the carrier accepted but its answer broke off; taken as sent without an id",
        "message sent",
    ];
    for step in life {
        let line = lines
            .iter()
            .find(|l| l["message"] == step)
            .unwrap_or_else(|| panic!("no {step:?} line in {log}"));
        assert!(names_it(line), "{step:?} does not name {id}: {line}");
    }
    // One trace id from the ingress to the send, across the two processes.
    let storing = lines
        .iter()
        .find(|l| l["message"] == "storing message")
        .expect("stored");
    let trace_id = storing["trace_id"].as_str().expect("a trace id");
    assert_eq!(trace_id.len(), 32, "{storing}");
    let sent = lines
        .iter()
        .find(|l| l["message"] == "message sent")
        .expect("sent");
    assert_eq!(sent["span"]["trace_id"], trace_id, "{sent}");
    let claimed = lines
        .iter()
        .find(|l| l["message"] == "message claimed")
        .expect("claimed");
    assert_eq!(claimed["trace_id"], trace_id, "{claimed}");
    let queued = lines
        .iter()
        .find(|l| l["message"] == "message queued")
        .expect("queued");
    assert_eq!(queued["span"]["trace_id"], trace_id, "{queued}");
    let about_sends = lines.iter().filter(|l| {
        l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("smsgate::carriers") || t == "smsgate::dispatch::send")
    });
    for line in about_sends {
        assert!(names_it(line), "a send's line without its id: {line}");
    }
}
