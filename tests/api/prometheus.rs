//! A real Prometheus (Debian's package) scrapes a running smsgate; the series are read back
//! through Prometheus's HTTP API.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use smsgate::Role;

use crate::cli::free_port;
use crate::dispatch::{queue, wait_final};
use crate::helpers::{TestApp, base_config};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn prometheus_binary() -> Option<String> {
    let found = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&found.stdout).trim().to_string())
}

/// A Prometheus scraping `app` every second, and the port of its HTTP API; `None` without
/// the binary (allowed only outside CI).
fn scraping(app: &TestApp, dir: &std::path::Path) -> Option<(KillOnDrop, u16)> {
    let Some(binary) = prometheus_binary() else {
        // CI installs it (.ci/run); on a developer machine it is optional.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Debian's prometheus installed"
        );
        eprintln!("skipped: no prometheus binary (apt-get install prometheus)");
        return None;
    };
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: smsgate\n    static_configs:\n      - targets: [\"{}\"]\n",
            app.metrics_address
        ),
    )
    .expect("config");
    let port = free_port();
    let prometheus = KillOnDrop(
        Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    Some((prometheus, port))
}

/// Prometheus's answer to an instant query: its status and its result list.
async fn instant(app: &TestApp, port: u16, query: &str) -> Option<Value> {
    let answer = app
        .client
        .get(format!("http://127.0.0.1:{port}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .ok()?;
    answer.json::<Value>().await.ok()
}

#[tokio::test]
async fn prometheus_scrapes_the_metrics_smsgate_exports() {
    let app = TestApp::spawn_role(&base_config(), Role::All).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_prometheus, port)) = scraping(&app, dir.path()) else {
        return;
    };

    for i in 0..3 {
        let id = queue(&app, &format!("+1415555{:04}", 3000 + i)).await;
        wait_final(&app, &id, Duration::from_secs(10)).await;
    }

    let query = "smsgate_messages_finished_total{status=\"sent\"}";
    let start = Instant::now();
    loop {
        if let Some(body) = instant(&app, port, query).await
            && body["data"]["result"][0]["value"][1] == "3"
        {
            assert_eq!(body["data"]["result"][0]["metric"]["job"], "smsgate");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "Prometheus never saw the 3 sends"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Every query of the shipped dashboard, with its variables as Grafana fills them (`$job`
/// from `label_values(smsgate_build_info, job)`, `$__rate_interval` at least four scrape
/// intervals), runs against a real Prometheus scraping smsgate under traffic, and none errs
/// or comes back empty.
#[tokio::test]
async fn every_dashboard_query_answers_with_data_from_a_real_prometheus() {
    let config = crate::test_config::TestConfig::base()
        .set("carriers.spare.kind", "log")
        .set("dispatch.route_stats_window_seconds", 3600);
    let app = TestApp::spawn_role(&config, Role::All).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((_prometheus, port)) = scraping(&app, dir.path()) else {
        return;
    };
    for i in 0..5 {
        let id = queue(&app, &format!("+4479111{:05}", 20000 + i)).await;
        wait_final(&app, &id, Duration::from_secs(10)).await;
    }
    app.post_sms(None, &crate::helpers::sms("+447911100000"))
        .await;

    let queries = dashboard_queries();
    assert!(queries.len() >= 18, "{} queries", queries.len());
    let start = Instant::now();
    let mut empty: Vec<String> = queries.clone();
    while !empty.is_empty() {
        let mut still = Vec::new();
        for query in empty {
            let filled = query
                .replace("$__rate_interval", "1m")
                .replace("$job", "smsgate");
            let answer = instant(&app, port, &filled).await;
            let status = answer.as_ref().map(|a| a["status"].clone());
            if let Some(status) = status
                && status == "error"
            {
                panic!("{filled}: {answer:?}");
            }
            let found = answer
                .as_ref()
                .and_then(|a| a["data"]["result"].as_array().map(|r| !r.is_empty()))
                .unwrap_or(false);
            if !found {
                still.push(query);
            }
        }
        empty = still;
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "dashboard queries with no data after a minute of traffic: {empty:#?}"
        );
        if !empty.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // The job variable, as Grafana's label_values() asks for it.
    let jobs = app
        .client
        .get(format!("http://127.0.0.1:{port}/api/v1/label/job/values"))
        .query(&[("match[]", "smsgate_build_info")])
        .send()
        .await
        .expect("labels")
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(jobs["data"], serde_json::json!(["smsgate"]), "{jobs}");
}

/// Every target's query of config/grafana/dashboards/smsgate.json.
fn dashboard_queries() -> Vec<String> {
    let text =
        std::fs::read_to_string("config/grafana/dashboards/smsgate.json").expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .collect()
}
