//! The results table and its JSON form: each figure beside the baseline it is compared with.

use serde_json::{Value, json};

use super::Args;
use crate::cpu::CpuUse;
use crate::profile::Profile;
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
    /// Requests of the saturated phase that were not answered 200 (refused or failed).
    pub ingress_failed: u64,
    /// Gateway CPU (smsgate and PostgreSQL) during the saturated phase.
    pub ingress_cpu: CpuUse,
    /// smsgate's and PostgreSQL's processes, per accepted request.
    pub ingress_cpu_us_per_message: f64,
    /// The machine's busy time less the bench's, per accepted request.
    pub ingress_machine_cpu_us_per_message: f64,
    pub ingress_p50_ms: f64,
    pub ingress_p99_ms: f64,
    pub ingress_p999_ms: f64,
    pub ingress_half_rate: u64,
    pub ingress_half_failed: u64,
    pub ingress_half_p99_ms: f64,
    pub ingress_half_tail: Tail,
    pub dispatch_per_second: f64,
    /// Messages that reached the carrier while the dispatch rate was measured.
    pub dispatch_messages: u64,
    pub dispatch_cpu: CpuUse,
    pub dispatch_cpu_us_per_message: f64,
    pub dispatch_machine_cpu_us_per_message: f64,
    pub e2e_rate: u64,
    pub e2e_accepted: u64,
    pub e2e_failed: u64,
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

impl Figures {
    /// Requests not answered 200 in any ingress phase: a profile whose caps are set out of
    /// reach refuses none, so anything here means the figures measured refusals, not cost.
    fn refused(&self) -> u64 {
        self.ingress_failed + self.ingress_half_failed + self.e2e_failed
    }
}

/// The targets of one profile (issue 24): the bare gateway keeps its own, the production
/// profile may cost a little, and its CPU per message at most 1.3 times the bare one's.
/// One phase's CPU per message, as a report row shows it.
struct CpuFigures<'a> {
    cpu: &'a CpuUse,
    /// Per process (smsgate and PostgreSQL), µs per message.
    per: f64,
    /// The whole machine less the bench itself, µs per message.
    machine: f64,
    /// Per-process figure over the `none` profile's.
    to_none: Option<f64>,
}

struct Targets {
    ingress_ratio: f64,
    dispatch_ratio: f64,
    cpu_to_none: Option<f64>,
}

fn targets(profile: Profile) -> Targets {
    match profile {
        Profile::None => Targets {
            ingress_ratio: 1.0,
            dispatch_ratio: 1.5,
            cpu_to_none: None,
        },
        Profile::Production | Profile::Seen => Targets {
            ingress_ratio: 0.9,
            dispatch_ratio: 1.3,
            cpu_to_none: Some(1.3),
        },
    }
}

pub struct Report {
    connections: usize,
    dispatch_clients: usize,
    seconds: u64,
    before: Baselines,
    after: Baselines,
    profiles: Vec<(Profile, Figures)>,
}

fn mean(a: f64, b: f64) -> f64 {
    (a + b) / 2.0
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The row under a latency figure: PostgreSQL's own commit probe at the same time, and how
/// many of the slow requests overlapped one of its stalls.
fn tail_row(tail: &Tail) -> Vec<String> {
    vec![
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

/// A profile's figures compared: ratios to the baselines, CPU to the bare gateway's.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct Ratios {
    ingress_to_insert_tps: f64,
    dispatch_to_claim_cycle: f64,
    /// CPU per message over the `none` profile's in the same run, when it ran.
    ingress_cpu_to_none: Option<f64>,
    dispatch_cpu_to_none: Option<f64>,
}

impl Report {
    pub fn new(
        args: &Args,
        before: Baselines,
        after: Baselines,
        profiles: Vec<(Profile, Figures)>,
    ) -> Self {
        Self {
            connections: args.connections,
            dispatch_clients: args.dispatch_clients,
            seconds: args.seconds,
            before,
            after,
            profiles,
        }
    }

    fn insert_baseline(&self) -> f64 {
        mean(self.before.insert_tps, self.after.insert_tps)
    }

    fn cycle_baseline(&self) -> f64 {
        mean(self.before.cycle_tps, self.after.cycle_tps)
    }

    fn commit_ms(&self) -> f64 {
        mean(self.before.commit_ms, self.after.commit_ms)
    }

    fn none(&self) -> Option<&Figures> {
        self.profiles
            .iter()
            .find(|(profile, _)| *profile == Profile::None)
            .map(|(_, figures)| figures)
    }

    fn ratios(&self, f: &Figures) -> Ratios {
        let to_none = |mine: f64, of_none: fn(&Figures) -> f64| {
            self.none()
                .map(of_none)
                .filter(|none| *none > 0.0)
                .map(|none| mine / none)
        };
        Ratios {
            ingress_to_insert_tps: f.ingress_per_second / self.insert_baseline().max(1e-9),
            dispatch_to_claim_cycle: f.dispatch_per_second / self.cycle_baseline().max(1e-9),
            ingress_cpu_to_none: to_none(f.ingress_cpu_us_per_message, |n| {
                n.ingress_cpu_us_per_message
            }),
            dispatch_cpu_to_none: to_none(f.dispatch_cpu_us_per_message, |n| {
                n.dispatch_cpu_us_per_message
            }),
        }
    }

    fn baseline_rows(&self) -> Vec<Vec<String>> {
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
        ]
    }

    fn profile_rows(&self, profile: Profile, f: &Figures) -> Vec<Vec<String>> {
        let mut rows = self.ingress_rows(profile, f);
        rows.extend(self.dispatch_rows(profile, f));
        rows.extend(self.end_to_end_rows(profile, f));
        rows
    }

    /// A CPU-per-message row: per process, the machine less the bench, and the ratio to the
    /// `none` profile against the target.
    fn cpu_row(
        &self,
        name: &str,
        target: &Targets,
        label: &str,
        figures: CpuFigures,
    ) -> Vec<String> {
        let CpuFigures {
            cpu,
            per,
            machine,
            to_none,
        } = figures;
        let (ratio, goal, ok) = match (to_none, target.cpu_to_none) {
            (Some(r), Some(limit)) => (
                format!("{r:.2}x none"),
                format!("<= {limit}x none"),
                verdict(r <= limit),
            ),
            (Some(r), None) => (format!("{r:.2}x none"), "-".into(), "-"),
            (None, _) => ("-".into(), "-".into(), "-"),
        };
        vec![
            format!("[{name}] {label}"),
            format!(
                "{per:.1} us ({:.1} s); machine less bench {machine:.1} us ({:.1} - {:.1} s)",
                cpu.process_seconds, cpu.machine_seconds, cpu.bench_seconds
            ),
            ratio,
            goal,
            ok.into(),
        ]
    }

    fn ingress_rows(&self, profile: Profile, f: &Figures) -> Vec<Vec<String>> {
        let name = profile.name();
        let target = targets(profile);
        let ratios = self.ratios(f);
        vec![
            vec![
                format!(
                    "[{name}] ingress accepted/s, {} connections",
                    self.connections
                ),
                format!("{:.0}/s", f.ingress_per_second),
                format!("{:.2}x insert TPS", ratios.ingress_to_insert_tps),
                format!(">= {}x", target.ingress_ratio),
                verdict(ratios.ingress_to_insert_tps >= target.ingress_ratio).into(),
            ],
            self.cpu_row(
                name,
                &target,
                "ingress CPU per accepted request",
                CpuFigures {
                    cpu: &f.ingress_cpu,
                    per: f.ingress_cpu_us_per_message,
                    machine: f.ingress_machine_cpu_us_per_message,
                    to_none: ratios.ingress_cpu_to_none,
                },
            ),
            vec![
                format!("[{name}] ingress latency at saturation"),
                format!(
                    "p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms",
                    f.ingress_p50_ms, f.ingress_p99_ms, f.ingress_p999_ms
                ),
                format!(
                    "{:.1}x commit",
                    f.ingress_p99_ms / self.commit_ms().max(1e-9)
                ),
                "-".into(),
                "-".into(),
            ],
            vec![
                format!(
                    "[{name}] ingress p99 at half saturation ({}/s)",
                    f.ingress_half_rate
                ),
                format!("{:.2} ms", f.ingress_half_p99_ms),
                "-".into(),
                "<= 10 ms".into(),
                verdict(f.ingress_half_p99_ms <= 10.0).into(),
            ],
            tail_row(&f.ingress_half_tail),
            vec![
                format!("[{name}] requests not answered 200 (refused or failed)"),
                f.refused().to_string(),
                "-".into(),
                "0".into(),
                verdict(f.refused() == 0).into(),
            ],
        ]
    }

    fn dispatch_rows(&self, profile: Profile, f: &Figures) -> Vec<Vec<String>> {
        let name = profile.name();
        let target = targets(profile);
        let ratios = self.ratios(f);
        vec![
            vec![
                format!("[{name}] dispatch messages/s (pre-filled queue)"),
                format!("{:.0}/s", f.dispatch_per_second),
                format!("{:.2}x claim cycle", ratios.dispatch_to_claim_cycle),
                format!(">= {}x", target.dispatch_ratio),
                verdict(ratios.dispatch_to_claim_cycle >= target.dispatch_ratio).into(),
            ],
            self.cpu_row(
                name,
                &target,
                "dispatch CPU per message",
                CpuFigures {
                    cpu: &f.dispatch_cpu,
                    per: f.dispatch_cpu_us_per_message,
                    machine: f.dispatch_machine_cpu_us_per_message,
                    to_none: ratios.dispatch_cpu_to_none,
                },
            ),
        ]
    }

    fn end_to_end_rows(&self, profile: Profile, f: &Figures) -> Vec<Vec<String>> {
        let name = profile.name();
        vec![
            vec![
                format!("[{name}] end to end at {}/s: 200 -> carrier", f.e2e_rate),
                format!(
                    "p50 {:.2} / p99 {:.2} ms (request p99 {:.2} ms)",
                    f.e2e_after_200_p50_ms, f.e2e_after_200_p99_ms, f.e2e_ingress_p99_ms
                ),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            vec![
                format!(
                    "[{name}] end to end at {}/s: request -> carrier",
                    f.e2e_rate
                ),
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
            vec![
                format!("[{name}] peak RSS of smsgate"),
                format!("{:.1} MiB", f.peak_rss_mib),
                "-".into(),
                "<= 150 MiB".into(),
                verdict(f.peak_rss_mib <= 150.0).into(),
            ],
        ]
    }

    fn rows(&self) -> Vec<Vec<String>> {
        let mut rows = self.baseline_rows();
        for (profile, figures) in &self.profiles {
            rows.extend(self.profile_rows(*profile, figures));
        }
        rows
    }

    /// One line per profile: the two rates as ratios and their CPU per message, the figures
    /// BENCHMARKS.md puts side by side.
    fn summary_rows(&self) -> Vec<Vec<String>> {
        let to_none = |r: Option<f64>| r.map_or(String::new(), |r| format!(" ({r:.2}x none)"));
        self.profiles
            .iter()
            .map(|(profile, f)| {
                let target = targets(*profile);
                let ratios = self.ratios(f);
                vec![
                    profile.name().into(),
                    format!(
                        "{:.0}/s: {:.2}x (>= {}x)",
                        f.ingress_per_second, ratios.ingress_to_insert_tps, target.ingress_ratio
                    ),
                    format!(
                        "{:.1} us{}; machine {:.1} us",
                        f.ingress_cpu_us_per_message,
                        to_none(ratios.ingress_cpu_to_none),
                        f.ingress_machine_cpu_us_per_message
                    ),
                    format!(
                        "{:.0}/s: {:.2}x (>= {}x)",
                        f.dispatch_per_second,
                        ratios.dispatch_to_claim_cycle,
                        target.dispatch_ratio
                    ),
                    format!(
                        "{:.1} us{}; machine {:.1} us",
                        f.dispatch_cpu_us_per_message,
                        to_none(ratios.dispatch_cpu_to_none),
                        f.dispatch_machine_cpu_us_per_message
                    ),
                    f.refused().to_string(),
                ]
            })
            .collect()
    }

    pub fn table(&self) -> String {
        let mut out = markdown(
            &["figure", "measured", "ratio", "target", "verdict"],
            &self.rows(),
        );
        out.push_str(&format!(
            "\n({} s per phase; ratios use the mean of the baselines before and after; CPU per \
             message is smsgate's and PostgreSQL's processes', and beside it the machine's \
             busy time less the bench's own, which also counts other work on the machine)\n\n",
            self.seconds
        ));
        out.push_str(&markdown(
            &[
                "profile",
                "ingress ÷ insert",
                "CPU per request",
                "dispatch ÷ claim cycle",
                "CPU per message",
                "refused",
            ],
            &self.summary_rows(),
        ));
        out
    }

    pub fn json(&self) -> Value {
        let profiles: Vec<Value> = self
            .profiles
            .iter()
            .map(|(profile, figures)| {
                json!({
                    "profile": profile,
                    "figures": figures,
                    "ratios": self.ratios(figures),
                })
            })
            .collect();
        json!({
            "seconds": self.seconds,
            "connections": self.connections,
            "dispatch_clients": self.dispatch_clients,
            "baseline_before": self.before,
            "baseline_after": self.after,
            "profiles": profiles,
            "table": self.rows(),
            "summary": self.summary_rows(),
        })
    }
}

/// A Markdown table with its columns padded to the widest cell.
fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([header[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let mut out = vec![line(header.to_vec())];
    out.push(format!(
        "|{}|",
        widths
            .iter()
            .map(|w| "-".repeat(w + 2))
            .collect::<Vec<_>>()
            .join("|")
    ));
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// A row measured before and after the smsgate runs (the baselines and the commit probe).
fn before_and_after(label: String, figures: String, target: &str) -> Vec<String> {
    vec![
        label,
        figures,
        "before / after".into(),
        target.into(),
        "-".into(),
    ]
}
