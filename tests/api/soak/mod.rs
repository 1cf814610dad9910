//! The randomized invariant soak: from a seed, a configuration and a workload (see `plan`),
//! run against the real binary and a real PostgreSQL (see `run`), then the invariants of
//! docs/guarantees.md checked over the clients' answers, the carriers' logs and the
//! database's own audit (see `check`).
//!
//! `cargo test` runs the seeds in `tests/soak-seeds.txt` (every seed that ever failed stays
//! there). A long soak: `SOAK_SEEDS=1000-1199 cargo test --release --test api soak::long --
//! --ignored --nocapture`, or `SOAK_MINUTES=60` for fresh seeds until the time is up.

mod check;
mod plan;
mod run;

use std::time::{Duration, Instant};

use plan::Plan;

/// Runs one seed; the broken invariants, if any.
async fn soak(seed: u64) -> Vec<String> {
    let plan = Plan::from_seed(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut fleet, standins) = run::start(&plan, dir.path()).await;
    let (answers, actions, kills, database_restarts) = run::drive(&plan, &mut fleet).await;
    let limit = Duration::from_secs(u64::from(plan.ttl_seconds + plan.lease_seconds) + 15);
    let drained = run::drain(&mut fleet, limit).await;
    fleet.stop().await;
    let pool = fleet.pool.clone();
    let mut record = run::Record {
        answers,
        actions,
        standins,
        kills,
        database_restarts,
        problems: Vec::new(),
        logs: Vec::new(),
        workers: plan.workers,
    };
    if !drained {
        record
            .problems
            .push(format!("the queue did not drain within {limit:?}"));
    }
    let mut problems = check::invariants(&plan, &record, &pool).await;
    pool.close().await;
    let (fleet_problems, logs) = fleet.finish();
    record.logs = logs;
    problems.extend(fleet_problems);
    let mut panics = Vec::new();
    check::no_panics_in(&record.logs, &mut panics);
    problems.extend(panics);
    if !problems.is_empty() {
        // Keep the evidence of a failing seed.
        let kept = std::env::temp_dir().join(format!("smsgate-soak-{seed}"));
        let _ = std::fs::remove_dir_all(&kept);
        if std::fs::rename(dir.path(), &kept).is_ok() {
            problems.push(format!("logs kept in {}", kept.display()));
        }
    }
    problems
}

/// Runs `seeds`, one after another, and fails naming every seed that broke an invariant.
async fn soak_all(seeds: impl IntoIterator<Item = u64>) {
    let mut failed = Vec::new();
    for seed in seeds {
        let started = Instant::now();
        let problems = soak(seed).await;
        eprintln!(
            "soak seed {seed}: {} in {:.1} s",
            if problems.is_empty() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !problems.is_empty() {
            eprintln!("soak seed {seed}:\n  {}", problems.join("\n  "));
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "soak seeds {failed:?} broke invariants; reproduce one with \
         SOAK_SEEDS=<seed> cargo test --test api soak::long -- --ignored --nocapture, \
         and add it to tests/soak-seeds.txt"
    );
}

/// The seeds kept in the repository: fixed ones, and every seed that once failed.
fn kept_seeds() -> Vec<u64> {
    include_str!("../../soak-seeds.txt")
        .lines()
        .filter_map(|line| line.split('#').next())
        .filter_map(|seed| seed.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn the_kept_seeds_keep_every_invariant() {
    soak_all(kept_seeds()).await;
}

/// `SOAK_SEEDS=a-b` (or one seed), or `SOAK_MINUTES=m` for fresh seeds until the time is up.
#[tokio::test]
#[ignore = "a long soak: run it by hand (see the module comment)"]
async fn long() {
    if let Ok(spec) = std::env::var("SOAK_SEEDS") {
        let (from, to) = spec.split_once('-').unwrap_or((&spec, &spec));
        let from: u64 = from.trim().parse().expect("SOAK_SEEDS=a-b");
        let to: u64 = to.trim().parse().expect("SOAK_SEEDS=a-b");
        soak_all(from..=to).await;
        return;
    }
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let first: u64 = rand::random::<u32>().into();
    let mut failed = Vec::new();
    let mut seed = first;
    while Instant::now() < until {
        let problems = soak(seed).await;
        eprintln!(
            "soak seed {seed}: {}",
            if problems.is_empty() { "ok" } else { "FAILED" }
        );
        if !problems.is_empty() {
            eprintln!("  {}", problems.join("\n  "));
            failed.push(seed);
        }
        seed += 1;
    }
    eprintln!("soak: seeds {first}..{seed} run, failed: {failed:?}");
    assert!(failed.is_empty(), "soak seeds {failed:?} broke invariants");
}
