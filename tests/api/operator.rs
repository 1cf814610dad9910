//! Operator tools: the message list API, `smsgate messages …` on the command line, and
//! switching a carrier off and on at runtime.

use std::time::Duration;

use serde_json::Value;
use smsgate::Role;

use crate::cli::BINARY;
use crate::dispatch::{FAST_DISPATCH, queue, wait_final};
use crate::helpers::{ADMIN_TOKEN, TestApp, base_config, url_of};
use crate::standins::twilio::TwilioStandIn;
use crate::test_config::TestConfig;

async fn admin_get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("sent")
}

async fn listed(app: &TestApp, path: &str) -> Value {
    let response = admin_get(app, path, Some(ADMIN_TOKEN)).await;
    crate::helpers::assert_status(&response, 200, path);
    response.json().await.expect("JSON")
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn the_message_list_is_newest_first_paginated_filtered_and_masked() {
    let app = TestApp::spawn().await;
    let first = queue(&app, "+14155550001").await;
    let second = queue(&app, "+14155550002").await;
    let third = queue(&app, "+14155550003").await;
    sqlx::query("UPDATE messages SET status = 'sent', finished_at = now() WHERE id = $1::uuid")
        .bind(&second)
        .execute(&app.pool)
        .await
        .expect("mark sent");

    let page1 = listed(&app, "/v1/messages?limit=2").await;
    let next = page1["next"].as_str().expect("a next page").to_string();
    let page2 = listed(&app, &format!("/v1/messages?limit=2&before={next}")).await;

    assert_eq!(ids(&page1), vec![third.clone(), second.clone()]);
    assert_eq!(ids(&page2), vec![first.clone()]);
    assert!(page2.get("next").is_none(), "the last page has no next");
    assert_eq!(
        page1["messages"][0]["recipient"], "+********003",
        "masked by default"
    );
    let revealed = listed(&app, "/v1/messages?limit=1&reveal=true").await;
    assert_eq!(revealed["messages"][0]["recipient"], "+14155550003");
    assert_eq!(
        ids(&listed(&app, "/v1/messages?status=sent").await),
        vec![second]
    );
    assert!(ids(&listed(&app, "/v1/messages?since=2099-01-01T00:00:00Z").await).is_empty());
    assert_eq!(
        ids(&listed(&app, "/v1/messages?since=2020-01-01T00:00:00Z").await).len(),
        3
    );
}

#[tokio::test]
async fn the_message_list_refuses_bad_queries_and_strangers() {
    let app = TestApp::spawn().await;
    for query in [
        "status=lost",
        "since=yesterday",
        "before=42",
        "limit=0",
        "limit=5000",
    ] {
        let response = admin_get(&app, &format!("/v1/messages?{query}"), Some(ADMIN_TOKEN)).await;
        crate::helpers::assert_error(response, 400, "invalid_query").await;
    }
    let stranger = admin_get(&app, "/v1/messages", Some("guess")).await;
    crate::helpers::assert_error(stranger, 401, "unauthorized").await;
    let anonymous = admin_get(&app, "/v1/messages", None).await;
    crate::helpers::assert_error(anonymous, 401, "unauthorized").await;
}

/// Runs `smsgate messages …` against the test app's database.
fn messages_cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("smsgate.toml");
    std::fs::write(&config, base_config()).expect("config");
    std::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .arg("messages")
        .args(args)
        .env("DATABASE_URL", url_of(&app.pool.connect_options()))
        .output()
        .expect("smsgate runs")
}

#[tokio::test]
async fn the_command_line_lists_shows_retries_and_cancels() {
    let app = TestApp::spawn().await;
    let waiting = queue(&app, "+14155550011").await;
    let other = queue(&app, "+14155550012").await;
    sqlx::query("UPDATE message_queue SET run_at = now() + interval '10 minutes' WHERE message_id = $1::uuid")
        .bind(&waiting)
        .execute(&app.pool)
        .await
        .expect("backing off");

    let list = messages_cli(&app, &["list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        text.contains(&waiting) && text.contains("+********011"),
        "{text}"
    );
    assert!(!text.contains("+14155550011"), "numbers masked: {text}");

    let show = messages_cli(&app, &["show", &waiting]);
    let view: Value = serde_json::from_slice(&show.stdout).expect("JSON");
    assert_eq!(view["status"], "queued");
    let as_json = messages_cli(&app, &["list", "--output", "json"]);
    let listed: Value = serde_json::from_slice(&as_json.stdout).expect("JSON");
    let rows = listed["messages"].as_array().expect("messages");
    assert!(rows.iter().any(|m| m["id"] == waiting.as_str()), "{listed}");
    assert!(
        rows.iter()
            .all(|m| m["recipient"].as_str().is_some_and(|r| r.contains('*'))),
        "numbers masked in JSON too: {listed}"
    );
    let as_table = messages_cli(&app, &["show", &waiting, "--output", "table"]);
    let table = String::from_utf8_lossy(&as_table.stdout);
    assert!(as_table.status.success());
    assert!(
        table.contains(&format!("id          {waiting}")) && table.contains("status      queued"),
        "{table}"
    );

    let retry = messages_cli(&app, &["retry", &waiting]);
    assert!(
        retry.status.success(),
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    let due: bool =
        sqlx::query_scalar("SELECT run_at <= now() FROM message_queue WHERE message_id = $1::uuid")
            .bind(&waiting)
            .fetch_one(&app.pool)
            .await
            .expect("queued");
    assert!(due, "due now");

    let cancel = messages_cli(&app, &["cancel", &other]);
    assert!(
        cancel.status.success(),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let (status, body, queued): (String, String, i64) = sqlx::query_as(
        "SELECT status, body, (SELECT count(*) FROM message_queue WHERE message_id = m.id)
         FROM messages m WHERE id = $1::uuid",
    )
    .bind(&other)
    .fetch_one(&app.pool)
    .await
    .expect("row");
    assert_eq!((status.as_str(), queued), ("failed", 0));
    assert!(!body.contains("123456"), "the code is erased: {body}");

    let again = messages_cli(&app, &["cancel", &other]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("only a message still waiting"));
    let unknown = messages_cli(&app, &["show", "0190b8a4-0000-7000-8000-000000000000"]);
    assert_eq!(unknown.status.code(), Some(1));
}

#[tokio::test]
async fn a_disabled_carrier_is_skipped_by_every_route_until_enabled() {
    let first = TwilioStandIn::start().await;
    let second = TwilioStandIn::start().await;
    let tables = first.carrier_toml("first") + &second.carrier_toml("second");
    let config = TestConfig::base()
        .only_carriers(&tables, &["first", "second"])
        .merge(FAST_DISPATCH)
        .set("dispatch.lease_seconds", 10);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let switch = |action: &'static str, name: &'static str, token: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url(&format!("/v1/carriers/{name}/{action}")));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let off = switch("disable", "first", Some(ADMIN_TOKEN))
        .await
        .expect("sent");
    assert_eq!(off.status().as_u16(), 200);
    let body: Value = off.json().await.expect("JSON");
    assert_eq!(
        body,
        serde_json::json!({"carrier": "first", "disabled": true})
    );
    crate::helpers::until_metric(&app, "smsgate_carrier_disabled{carrier=\"first\"}", 1.0).await;
    let id = queue(&app, "+14155552671").await;
    let view = wait_final(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(view["carrier"], "second", "{view}");
    assert!(
        first.seen().is_empty(),
        "the disabled carrier was not called"
    );

    let on = switch("enable", "first", Some(ADMIN_TOKEN))
        .await
        .expect("sent");
    assert_eq!(on.status().as_u16(), 200);
    crate::helpers::until_metric(&app, "smsgate_carrier_disabled{carrier=\"first\"}", 0.0).await;
    let id = queue(&app, "+14155552672").await;
    assert_eq!(
        wait_final(&app, &id, Duration::from_secs(10)).await["carrier"],
        "first"
    );

    for (action, name, token, status) in [
        ("disable", "nope", Some(ADMIN_TOKEN), 404),
        ("explode", "first", Some(ADMIN_TOKEN), 404),
        ("disable", "first", None, 401),
    ] {
        let response = switch(action, name, token).await.expect("sent");
        assert_eq!(response.status().as_u16(), status, "{action} {name}");
    }
}

/// The JSON log lines of `smsgate::audit` in `stderr`.
fn audit_lines(stderr: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "smsgate::audit")
        .collect()
}

/// `smsgate messages …` on the app's database, logging JSON.
fn messages_cli_logging_json(app: &TestApp, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("smsgate.toml");
    std::fs::write(&config, base_config()).expect("config");
    std::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .arg("messages")
        .args(args)
        .env("DATABASE_URL", url_of(&app.pool.connect_options()))
        .env("SMSGATE__LOG__FORMAT", "json")
        .env_remove("RUST_LOG")
        .output()
        .expect("smsgate runs")
}

#[tokio::test]
async fn a_canceled_message_says_why_in_messages_show() {
    let app = TestApp::spawn().await;
    let id = queue(&app, "+14155550013").await;
    let waiting: Value =
        serde_json::from_slice(&messages_cli(&app, &["show", &id]).stdout).expect("JSON");
    assert!(
        waiting.get("reason").is_none(),
        "no reason while it waits: {waiting}"
    );

    assert!(messages_cli(&app, &["cancel", &id]).status.success());

    let shown: Value =
        serde_json::from_slice(&messages_cli(&app, &["show", &id]).stdout).expect("JSON");
    assert_eq!(shown["status"], "failed");
    assert_eq!(shown["reason"], "canceled by an operator", "{shown}");
}

#[tokio::test]
async fn every_operator_action_writes_one_audit_line_saying_what_it_changed_and_through_which_door()
{
    let app = TestApp::spawn().await;
    let waiting = queue(&app, "+14155550021").await;
    let other = queue(&app, "+14155550022").await;

    let retry = messages_cli_logging_json(&app, &["retry", &waiting]);
    let cancel = messages_cli_logging_json(&app, &["cancel", &other]);
    let list = messages_cli_logging_json(&app, &["list"]);

    let retried = audit_lines(&retry.stderr);
    assert_eq!(
        retried.len(),
        1,
        "{}",
        String::from_utf8_lossy(&retry.stderr)
    );
    assert_eq!(retried[0]["level"], "INFO");
    assert_eq!(retried[0]["action"], "retry");
    assert_eq!(retried[0]["message_id"], waiting.as_str());
    assert_eq!(retried[0]["actor"], "cli");
    let canceled = audit_lines(&cancel.stderr);
    assert_eq!(
        canceled.len(),
        1,
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    assert_eq!(canceled[0]["action"], "cancel");
    assert_eq!(canceled[0]["message_id"], other.as_str());
    assert_eq!(canceled[0]["actor"], "cli");
    assert!(
        canceled[0]["change"]
            .as_str()
            .is_some_and(|c| c.contains("failed")),
        "{}",
        canceled[0]
    );
    assert!(
        audit_lines(&list.stderr).is_empty(),
        "reading changes nothing"
    );

    // The carrier switches, through the admin API of the real binary.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::cli::free_port();
    let config = TestConfig::base()
        .set("server.listen", format!("127.0.0.1:{port}"))
        .set("log.format", "json");
    let config = crate::cli::write_config(dir.path(), &config.to_string());
    let serve = std::process::Command::new(BINARY)
        .args(["serve", "--role", "ingress", "--config"])
        .arg(&config)
        .env("DATABASE_URL", url_of(&app.pool.connect_options()))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let client = crate::cli::wait_until_healthy(port).await;
    // Each switch twice: the second finds nothing to change, and its line must say so.
    for action in ["disable", "disable", "enable", "enable"] {
        let response = client
            .post(format!(
                "http://127.0.0.1:{port}/v1/carriers/console/{action}"
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status().as_u16(), 200, "{action}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let served = tokio::task::spawn_blocking(move || serve.wait_with_output())
        .await
        .expect("join")
        .expect("exit");
    let switched = audit_lines(&served.stderr);
    let actions: Vec<_> = switched
        .iter()
        .map(|line| {
            assert_eq!(line["carrier"], "console", "{line}");
            assert_eq!(line["actor"], "admin api", "{line}");
            (
                line["action"].as_str().unwrap_or_default(),
                line["change"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("disable", "carrier out of every route"),
            ("disable", "already disabled, nothing changed"),
            ("enable", "carrier back in its routes"),
            ("enable", "already enabled, nothing changed"),
        ],
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
}

#[tokio::test]
async fn unknown_query_parameters_are_refused_on_every_operator_route_and_change_nothing() {
    let app = TestApp::spawn().await;
    let id = queue(&app, "+14155550051").await;
    let requests = [
        (reqwest::Method::GET, format!("/v1/messages/{id}?foo=1")),
        (reqwest::Method::GET, "/v1/spend?foo=1".to_string()),
        (reqwest::Method::GET, "/v1/spend?%".to_string()),
        (
            reqwest::Method::POST,
            "/v1/carriers/console/disable?foo=1".to_string(),
        ),
        (
            reqwest::Method::POST,
            "/v1/carriers/console/enable?foo=1".to_string(),
        ),
    ];
    for (method, path) in requests {
        let response = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent");
        let body = crate::helpers::assert_error(response, 400, "invalid_query").await;
        assert!(!body.to_string().contains("foo"), "input echoed: {body}");
    }
    assert_eq!(
        app.count_rows("carrier_states").await,
        0,
        "no carrier switched"
    );
}

#[tokio::test]
async fn switching_an_unknown_carrier_is_404_carrier_not_found_and_changes_nothing() {
    let app = TestApp::spawn().await;
    for action in ["disable", "enable"] {
        let response = app
            .client
            .post(app.url(&format!("/v1/carriers/nope/{action}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent");
        let body = crate::helpers::assert_error(response, 404, "carrier_not_found").await;
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(!description.contains("message"), "{description}");
    }
    assert_eq!(app.count_rows("carrier_states").await, 0);
}

#[tokio::test]
async fn messages_list_refuses_the_limits_the_api_refuses() {
    let app = TestApp::spawn().await;
    queue(&app, "+14155550031").await;
    queue(&app, "+14155550032").await;

    for limit in ["0", "1001", "-1", "1e3"] {
        let cli = messages_cli(&app, &["list", "--limit", limit]);
        assert_ne!(cli.status.code(), Some(0), "--limit {limit}");
        assert!(cli.stdout.is_empty(), "nothing listed for --limit {limit}");
        let api = admin_get(
            &app,
            &format!("/v1/messages?limit={limit}"),
            Some(ADMIN_TOKEN),
        )
        .await;
        crate::helpers::assert_error(api, 400, "invalid_query").await;
    }
    let one = messages_cli(&app, &["list", "--limit", "1"]);
    assert!(one.status.success());
    assert_eq!(String::from_utf8_lossy(&one.stdout).lines().count(), 1);
    assert!(
        messages_cli(&app, &["list", "--limit", "1000"])
            .status
            .success()
    );
}

#[tokio::test]
async fn every_answer_of_the_operator_api_is_json_with_error_and_description() {
    let app = TestApp::spawn().await;
    let id = queue(&app, "+14155550041").await;
    let bad_queries = [
        "/v1/messages?limit=1e3",
        "/v1/messages?nonsense=1",
        "/v1/messages?limit=5&limit=6",
        "/v1/messages?reveal=maybe",
    ];
    for path in bad_queries {
        let response = admin_get(&app, path, Some(ADMIN_TOKEN)).await;
        let body = crate::helpers::assert_error(response, 400, "invalid_query").await;
        assert!(
            !body.to_string().contains("nonsense"),
            "input echoed: {body}"
        );
    }
    let strays: [(reqwest::Method, &str, u16, &str); 7] = [
        (
            reqwest::Method::POST,
            "/v1/carriers/%FF/disable",
            404,
            "carrier_not_found",
        ),
        (
            reqwest::Method::GET,
            "/v1/messages/%FF%FE",
            404,
            "not_found",
        ),
        (reqwest::Method::GET, "/v1/nothing-here", 404, "not_found"),
        (
            reqwest::Method::GET,
            "/v1/carriers/console/explode",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::POST,
            "/v1/carriers/console/explode",
            404,
            "not_found",
        ),
        (
            reqwest::Method::DELETE,
            "/v1/messages",
            405,
            "method_not_allowed",
        ),
        (
            reqwest::Method::POST,
            &format!("/v1/messages/{id}"),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in strays {
        let response = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("sent");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(content_type, "application/json", "{method} {path}");
        let body = crate::helpers::assert_error(response, status, code).await;
        assert!(
            body["error_description"].is_string(),
            "{method} {path}: {body}"
        );
    }
    assert_eq!(
        app.stored_rows().await,
        2,
        "nothing more stored than the one message"
    );
}

/// A reader that stops early (`| head`) ends a listing quietly; a full page in JSON says
/// where the next one starts, as the API does; `--json` and `--output` are one choice.
#[tokio::test]
async fn the_command_line_pages_in_json_and_stops_quietly_for_a_reader_that_left() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        queue(&app, &format!("+1415555{:04}", 7100 + i)).await;
    }

    let page = messages_cli(&app, &["list", "--output", "json", "--limit", "2"]);
    let body: Value = serde_json::from_slice(&page.stdout).expect("JSON");
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(body["next"], body["messages"][1]["id"], "{body}");
    let rest = messages_cli(&app, &["list", "--output", "json", "--limit", "5"]);
    let rest: Value = serde_json::from_slice(&rest.stdout).expect("JSON");
    assert!(rest.get("next").is_none(), "not a full page: {rest}");

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("smsgate.toml");
    std::fs::write(&config, base_config()).expect("config");
    // The reader is gone before smsgate writes a byte: its first line meets a closed pipe.
    let mut listing = std::process::Command::new(BINARY)
        .arg("--config")
        .arg(&config)
        .args(["messages", "list"])
        .env("DATABASE_URL", url_of(&app.pool.connect_options()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("smsgate runs");
    drop(listing.stdout.take());
    let ended = listing.wait_with_output().expect("ends");
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(ended.status.code(), Some(0), "{stderr}");

    let both = std::process::Command::new(BINARY)
        .args(["carriers", "stats", "--json", "--output", "table"])
        .output()
        .expect("runs");
    assert_eq!(
        both.status.code(),
        Some(2),
        "contradictory flags are a usage error"
    );
}
