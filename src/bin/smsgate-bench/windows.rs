//! `--scenario windows`: a window limit's cost per request depends neither on its `max` nor
//! on the traffic it has seen. Two saturated ingress runs of the production profile against
//! the same baselines: as the standard run has it (a per-number cap of 10, every key empty at
//! the start), then with the per-number cap at 1,000,000 and the two keys every request
//! shares (the client address and the country) already holding 1,000,000 events of the last
//! hour.

use std::time::Duration;

use serde_json::{Value, json};

use crate::fixture::Bench;
use crate::load::closed_loop;
use crate::profile::{Profile, SEEN_CAP};

/// Events the busy keys hold before the second run: 1,000,000 over the last hour.
const SEEN_EVENTS: i64 = 1_000_000;

pub async fn windows(bench: &Bench) -> anyhow::Result<Value> {
    eprintln!("bench: baselines (before)");
    let before = bench.baselines()?;
    let fresh = saturated(bench, Profile::Production).await?;
    let seen = saturated(bench, Profile::Seen).await?;
    eprintln!("bench: baselines (after)");
    let after = bench.baselines()?;
    let insert = (before.insert_tps + after.insert_tps) / 2.0;
    let row = |(rate, cpu): (f64, f64)| json!({"per_second": rate, "ratio_to_insert": rate / insert, "cpu_us_per_request": cpu});
    let table = format!(
        "| run | ingress ÷ insert | CPU per request |\n|---|---|---|\n\
         | per-number cap 10, keys empty | {:.0}/s: {:.2}x | {:.1} us |\n\
         | per-number cap {SEEN_CAP}, busy keys holding {SEEN_EVENTS} events | {:.0}/s: {:.2}x | {:.1} us ({:.2}x) |",
        fresh.0,
        fresh.0 / insert,
        fresh.1,
        seen.0,
        seen.0 / insert,
        seen.1,
        seen.1 / fresh.1
    );
    println!("{table}");
    Ok(json!({
        "insert_tps_before": before.insert_tps,
        "insert_tps_after": after.insert_tps,
        "cap_10_keys_empty": row(fresh),
        "cap_1000000_keys_seen": row(seen),
        "cpu_seen_over_fresh": seen.1 / fresh.1,
    }))
}

/// Accepted requests per second and CPU per request of a saturated ingress in `profile`.
async fn saturated(bench: &Bench, profile: Profile) -> anyhow::Result<(f64, f64)> {
    eprintln!("bench: ingress ({} profile)", profile.name());
    bench.empty_queue().await?;
    if profile == Profile::Seen {
        fill_busy_keys(bench).await?;
    }
    let ingress = bench.spawn("ingress", profile).await?;
    let target = bench.target(ingress.port)?;
    let connections = bench.args.connections;
    closed_loop(target.clone(), connections, Duration::from_secs(1)).await;
    let meter = bench.meter(&[&ingress]);
    let cpu_before = meter.sample();
    let seconds = Duration::from_secs(bench.args.seconds);
    let load = closed_loop(target, connections, seconds).await;
    let cpu = meter.sample().since(&cpu_before);
    if load.failed > 0 {
        anyhow::bail!("{} requests were refused or failed", load.failed);
    }
    Ok((
        load.accepted as f64 / load.seconds,
        cpu.process_micros_per(load.accepted),
    ))
}

/// The client address's and the country's counts hold `SEEN_EVENTS` spread over the last
/// hour's 60 buckets (the load generator's one address; its numbers are all in the US).
async fn fill_busy_keys(bench: &Bench) -> anyhow::Result<()> {
    let per_bucket = SEEN_EVENTS / 60;
    sqlx::query(
        "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms)
         INSERT INTO ingress_hits (key, counts)
         SELECT key, ARRAY(SELECT x FROM generate_series(0, 59) AS b,
                           LATERAL unnest(ARRAY[3600000, (now.ms / 60000 - b) * 60000, $1])
                               WITH ORDINALITY AS e(x, j)
                           ORDER BY b, e.j)
         FROM unnest(ARRAY['ip:203.0.113.7', 'cc:3600:*:US']) AS key, now",
    )
    .bind(per_bucket)
    .execute(&bench.pool)
    .await?;
    Ok(())
}
