//! The shipped dashboard and alert rules use only metric names smsgate exports, and
//! docs/metrics.md lists every one.

use std::collections::BTreeSet;

use serde_json::Value;
use smsgate::Config;
use smsgate::metrics::Metrics;

use crate::test_config::TestConfig;

/// Metric names in PromQL text: `smsgate_…` and `process_…` identifiers.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = promql;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        if word.starts_with("smsgate_") || word.starts_with("process_") {
            names.insert(word.to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The families a histogram's `_bucket`, `_count` and `_sum` series belong to.
fn family_of(name: &str, families: &BTreeSet<String>) -> Option<String> {
    if families.contains(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_count", "_sum"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| families.contains(*base))
        .map(str::to_string)
}

fn exported_families() -> BTreeSet<String> {
    let config = Config::from_toml_str(
        &TestConfig::base()
            .set("carriers.spare.kind", "log")
            .to_string(),
    )
    .expect("config");
    let metrics = Metrics::new(&config).expect("metrics");
    metrics.family_names().into_iter().collect()
}

fn dashboard() -> Value {
    let text =
        std::fs::read_to_string("config/grafana/dashboards/smsgate.json").expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

#[test]
fn dashboard_queries_refer_only_to_exported_metrics() {
    let families = exported_families();
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            used.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    assert!(!used.is_empty());
    assert_all_exported(&used, &families, "dashboard");
}

/// Every metric `what` uses is one smsgate exports.
fn assert_all_exported(used: &BTreeSet<String>, families: &BTreeSet<String>, what: &str) {
    let unknown: Vec<&String> = used
        .iter()
        .filter(|name| family_of(name, families).is_none())
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} uses unknown metrics {unknown:?}"
    );
}

#[test]
fn the_dashboard_has_a_panel_for_each_question_an_operator_asks() {
    let dashboard = dashboard();
    let titles: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| p["title"].as_str().unwrap_or_default().to_lowercase())
        .collect();
    for topic in [
        "ingress",
        "queue",
        "latency",
        "carrier",
        "failover",
        "breaker",
        "finished",
        "delivery ratio",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(topic)),
            "no panel about {topic}: {titles:?}"
        );
    }
}

#[test]
fn alert_rules_refer_only_to_exported_metrics() {
    let families = exported_families();
    let rules = std::fs::read_to_string("config/prometheus/alerts.yml").expect("alerts");
    let used = metric_names(&rules);
    for expected in [
        "smsgate_queue_due_age_seconds",
        "smsgate_ready",
        "smsgate_dispatch_attempts_total",
        "smsgate_carrier_breaker_open",
        "smsgate_messages_finished_total",
        "smsgate_ingress_requests_total",
    ] {
        assert!(used.contains(expected), "no alert uses {expected}");
    }
    assert_all_exported(&used, &families, "an alert");
}

/// docs/metrics.md is the reference operators read; a metric missing there is one nobody finds.
#[test]
fn the_metrics_doc_lists_every_metric_family_smsgate_exports() {
    let doc = std::fs::read_to_string("docs/metrics.md").expect("docs/metrics.md");
    let missing: Vec<String> = exported_families()
        .into_iter()
        .filter(|family| family.starts_with("smsgate_"))
        .filter(|family| !doc.contains(&format!("| `{family}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/metrics.md's metric table: {missing:?}"
    );
}

/// The shipped deployment configurations are valid once their secrets are given (they come
/// from the environment there), so a key renamed in the code cannot leave one behind.
#[test]
fn the_shipped_deployment_configurations_are_valid_with_their_secrets() {
    let secret = "k3J9v0Qm7Lr2Xz8Wq4Nt6Bp1Yc5Hd0Gs-and-some-more";
    for (path, signer) in [
        ("config/docker.toml", "default"),
        ("deploy/kubernetes/base/smsgate.toml", "default"),
    ] {
        let mut table: toml::Table = std::fs::read_to_string(path)
            .expect("readable")
            .parse()
            .expect("TOML");
        let mut set = |section: &str, key: &str, value: &str| {
            let mut at = &mut table;
            for part in section.split('.') {
                at = at[part].as_table_mut().expect("a table");
            }
            at.insert(key.into(), value.into());
        };
        set(&format!("auth0.{signer}"), "secret", secret);
        set("admin", "token", "Adm1n-t0ken-Of-32-characters-xyz");
        set("database", "url", "postgres://smsgate:pw@db:5432/smsgate");
        if let Err(error) = Config::from_toml_str(&table.to_string()) {
            panic!("{path}: {error}");
        }
    }
}

/// Every alert links its runbook: a heading of its own in docs/operations.md, whose anchor
/// (GitHub's: the heading, lower-cased) its `runbook_url` names.
#[test]
fn every_alert_has_a_runbook_url_to_its_heading_in_operations() {
    let rules = std::fs::read_to_string("config/prometheus/alerts.yml").expect("alerts");
    let operations = std::fs::read_to_string("docs/operations.md").expect("operations");
    let mut alerts = 0;
    for block in rules.split("- alert: ").skip(1) {
        let name = block.split_whitespace().next().expect("a name");
        let url = block
            .lines()
            .find_map(|line| line.trim().strip_prefix("runbook_url: "))
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let anchor = name.to_lowercase();
        assert!(
            url.ends_with(&format!("/docs/operations.md#{anchor}")),
            "{name}: {url}"
        );
        assert!(
            operations.lines().any(|line| line == format!("### {name}")),
            "docs/operations.md has no heading for {name}"
        );
        alerts += 1;
    }
    assert!(alerts >= 12, "{alerts} alerts read");
}
