//! The results table and its JSON form: each figure beside the baseline it is compared with.

use serde_json::{Value, json};

use super::Args;
use crate::tail::{PROBE_RATE, STALL, Tail};

/// What pgbench measured on the same cluster.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Baselines {
    /// Average latency of a one-row insert commit from one client.
    pub commit_ms: f64,
    /// Single-row INSERT transactions per second at the ingress's concurrency.
    pub insert_tps: f64,
    /// One-row `FOR UPDATE SKIP LOCKED` claim-and-complete cycles per second.
    pub cycle_tps: f64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    pub ingress_per_second: f64,
    pub ingress_failed: u64,
    pub ingress_p50_ms: f64,
    pub ingress_p99_ms: f64,
    pub ingress_p999_ms: f64,
    pub ingress_half_rate: u64,
    pub ingress_half_p99_ms: f64,
    pub ingress_half_tail: Tail,
    pub dispatch_per_second: f64,
    pub e2e_rate: u64,
    pub e2e_accepted: u64,
    pub e2e_missing: u64,
    pub e2e_p50_ms: f64,
    pub e2e_p99_ms: f64,
    /// The requests' own p99 in that phase (ingress and workers in one process).
    pub e2e_ingress_p99_ms: f64,
    pub e2e_after_200_p50_ms: f64,
    pub e2e_after_200_p99_ms: f64,
    pub e2e_tail: Tail,
    pub peak_rss_mib: f64,
}

pub struct Report {
    connections: usize,
    dispatch_clients: usize,
    seconds: u64,
    before: Baselines,
    after: Baselines,
    figures: Figures,
}

fn mean(a: f64, b: f64) -> f64 {
    (a + b) / 2.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The row under a latency figure: PostgreSQL's own commit probe at the same time, and how
/// many of the slow requests overlapped one of its stalls.
fn tail_row(tail: &Tail) -> [String; 5] {
    [
        format!("  meanwhile pgbench 1-row commit, {PROBE_RATE}/s"),
        format!(
            "p99 {:.2} / max {:.1} ms; {} of {} requests over {:.0} ms overlap a commit over {} ms",
            tail.probe_p99_ms,
            tail.probe_max_ms,
            tail.slow_during_stall,
            tail.slow,
            tail.slow_over_ms,
            STALL.as_millis()
        ),
        format!("{:.0}% in stalls", tail.explained_percent()),
        "-".into(),
        "-".into(),
    ]
}

impl Report {
    pub fn new(args: &Args, before: Baselines, after: Baselines, figures: Figures) -> Self {
        Self {
            connections: args.connections,
            dispatch_clients: args.dispatch_clients,
            seconds: args.seconds,
            before,
            after,
            figures,
        }
    }

    fn insert_baseline(&self) -> f64 {
        mean(self.before.insert_tps, self.after.insert_tps)
    }

    fn cycle_baseline(&self) -> f64 {
        mean(self.before.cycle_tps, self.after.cycle_tps)
    }

    fn rows(&self) -> Vec<[String; 5]> {
        let f = &self.figures;
        let ingress_ratio = f.ingress_per_second / self.insert_baseline().max(1e-9);
        let dispatch_ratio = f.dispatch_per_second / self.cycle_baseline().max(1e-9);
        vec![
            before_and_after(
                "commit latency probe (1 client)".into(),
                format!(
                    "{:.2} / {:.2} ms",
                    self.before.commit_ms, self.after.commit_ms
                ),
                "-",
            ),
            before_and_after(
                format!("pgbench single-row INSERT, {} clients", self.connections),
                format!(
                    "{:.0} / {:.0} tps",
                    self.before.insert_tps, self.after.insert_tps
                ),
                "baseline",
            ),
            [
                format!("ingress accepted/s, {} connections", self.connections),
                format!("{:.0}/s", f.ingress_per_second),
                format!("{ingress_ratio:.2}x insert TPS"),
                ">= 1.0x".into(),
                verdict(ingress_ratio >= 1.0).into(),
            ],
            [
                "ingress latency at saturation".into(),
                format!(
                    "p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
                    f.ingress_p50_ms, f.ingress_p99_ms, f.ingress_p999_ms
                ),
                format!(
                    "{:.1}x commit",
                    f.ingress_p99_ms / mean(self.before.commit_ms, self.after.commit_ms).max(1e-9)
                ),
                "-".into(),
                "-".into(),
            ],
            [
                format!("ingress p99 at half saturation ({}/s)", f.ingress_half_rate),
                format!("{:.2} ms", f.ingress_half_p99_ms),
                "-".into(),
                "<= 10 ms".into(),
                verdict(f.ingress_half_p99_ms <= 10.0).into(),
            ],
            tail_row(&f.ingress_half_tail),
            before_and_after(
                format!(
                    "pgbench 1-row claim+complete, {} clients",
                    self.dispatch_clients
                ),
                format!(
                    "{:.0} / {:.0} cycles/s",
                    self.before.cycle_tps, self.after.cycle_tps
                ),
                "baseline",
            ),
            [
                "dispatch messages/s (pre-filled queue)".into(),
                format!("{:.0}/s", f.dispatch_per_second),
                format!("{dispatch_ratio:.2}x claim cycle"),
                ">= 1.5x".into(),
                verdict(dispatch_ratio >= 1.5).into(),
            ],
            [
                format!("end to end at {}/s: 200 -> carrier", f.e2e_rate),
                format!(
                    "p50 {:.2} / p99 {:.2} ms (request p99 {:.2} ms)",
                    f.e2e_after_200_p50_ms, f.e2e_after_200_p99_ms, f.e2e_ingress_p99_ms
                ),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            [
                format!("end to end at {}/s: request -> carrier", f.e2e_rate),
                format!(
                    "p50 {:.2} / p99 {:.2} ms ({} sent, {} missing)",
                    f.e2e_p50_ms, f.e2e_p99_ms, f.e2e_accepted, f.e2e_missing
                ),
                "-".into(),
                "p50 <= 5, p99 <= 25 ms".into(),
                verdict(
                    f.e2e_accepted > 0
                        && f.e2e_missing == 0
                        && f.e2e_p50_ms <= 5.0
                        && f.e2e_p99_ms <= 25.0,
                )
                .into(),
            ],
            tail_row(&f.e2e_tail),
            [
                "peak RSS of smsgate".into(),
                format!("{:.1} MiB", f.peak_rss_mib),
                "-".into(),
                "<= 150 MiB".into(),
                verdict(f.peak_rss_mib <= 150.0).into(),
            ],
        ]
    }

    pub fn table(&self) -> String {
        let header = ["figure", "measured", "ratio", "target", "verdict"];
        let rows = self.rows();
        let widths: Vec<usize> = (0..5)
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: [&str; 5]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let mut out = vec![line(header)];
        out.push(format!(
            "|{}|",
            widths
                .iter()
                .map(|w| "-".repeat(w + 2))
                .collect::<Vec<_>>()
                .join("|")
        ));
        for row in &rows {
            out.push(line([&row[0], &row[1], &row[2], &row[3], &row[4]]));
        }
        out.push(format!(
            "({} s per phase; ratios use the mean of the baselines before and after)",
            self.seconds
        ));
        out.join("\n")
    }

    pub fn json(&self) -> Value {
        json!({
            "seconds": self.seconds,
            "connections": self.connections,
            "dispatch_clients": self.dispatch_clients,
            "baseline_before": self.before,
            "baseline_after": self.after,
            "figures": self.figures,
            "ratios": {
                "ingress_to_insert_tps": self.figures.ingress_per_second / self.insert_baseline().max(1e-9),
                "dispatch_to_claim_cycle": self.figures.dispatch_per_second / self.cycle_baseline().max(1e-9),
            },
            "table": self.rows(),
        })
    }
}

/// A row measured before and after the smsgate runs (the baselines and the commit probe).
fn before_and_after(label: String, figures: String, target: &str) -> [String; 5] {
    [
        label,
        figures,
        "before / after".into(),
        target.into(),
        "-".into(),
    ]
}
