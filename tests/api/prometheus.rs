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

#[tokio::test]
async fn prometheus_scrapes_the_metrics_smsgate_exports() {
    let Some(binary) = prometheus_binary() else {
        // CI installs it (.ci/run); on a developer machine it is optional.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Debian's prometheus installed"
        );
        eprintln!("skipped: no prometheus binary (apt-get install prometheus)");
        return;
    };
    let app = TestApp::spawn_role(&base_config(), Role::All).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: smsgate\n    static_configs:\n      - targets: [\"{}\"]\n",
            app.metrics_address
        ),
    )
    .expect("config");
    let port = free_port();
    let _prometheus = KillOnDrop(
        Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    for i in 0..3 {
        let id = queue(&app, &format!("+1415555{:04}", 3000 + i)).await;
        wait_final(&app, &id, Duration::from_secs(10)).await;
    }

    let query = "smsgate_messages_finished_total{status=\"sent\"}";
    let start = Instant::now();
    loop {
        let answer = app
            .client
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .await;
        if let Ok(answer) = answer
            && let Ok(body) = answer.json::<Value>().await
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
