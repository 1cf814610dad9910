//! The standard run: baselines, ingress at saturation and at half of it, dispatch of a
//! pre-filled queue, end-to-end latency at a fixed rate, baselines again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::cpu::{CpuUse, Meter};
use crate::fixture::{Bench, backlog_sql};
use crate::load::{closed_loop, open_loop, quantile};
use crate::pg::{Probe, ProbeCommit};
use crate::profile::Profile;
use crate::report::{Baselines, Figures};
use crate::standin::Received;
use crate::tail::{Anchor, Tail};

pub async fn run(
    bench: &Bench,
    received: &Arc<Received>,
) -> anyhow::Result<(Baselines, Baselines, Vec<(Profile, Figures)>)> {
    eprintln!("bench: baselines (before)");
    let before = bench.baselines()?;
    let profiles = bench.args.profile.profiles();
    let mut figures: Vec<(Profile, Figures)> = profiles
        .iter()
        .map(|profile| (*profile, Figures::default()))
        .collect();
    // Phase by phase, each profile right after the other, so both meet the same minute of a
    // machine whose speed drifts.
    for (profile, figures) in &mut figures {
        ingress(bench, *profile, figures).await?;
    }
    for (profile, figures) in &mut figures {
        dispatch(bench, *profile, received, figures).await?;
    }
    for (profile, figures) in &mut figures {
        end_to_end(bench, *profile, received, figures).await?;
    }
    eprintln!("bench: baselines (after)");
    let after = bench.baselines()?;
    Ok((before, after, figures))
}

/// The ingress at saturation, then at half of it beside a commit probe.
async fn ingress(bench: &Bench, profile: Profile, figures: &mut Figures) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(bench.args.seconds);
    eprintln!(
        "bench: ingress ({} profile), {} connections",
        profile.name(),
        bench.args.connections
    );
    bench.empty_queue().await?;
    let ingress = bench.spawn("ingress", profile).await?;
    let target = bench.target(ingress.port)?;
    closed_loop(
        target.clone(),
        bench.args.connections,
        Duration::from_secs(1),
    )
    .await;
    let meter = bench.meter(&[&ingress]);
    let cpu_before = meter.sample();
    let mut saturated = closed_loop(target.clone(), bench.args.connections, seconds).await;
    figures.ingress_cpu = meter.sample().since(&cpu_before);
    figures.ingress_cpu_us_per_message = figures.ingress_cpu.process_micros_per(saturated.accepted);
    figures.ingress_machine_cpu_us_per_message =
        figures.ingress_cpu.machine_micros_per(saturated.accepted);
    figures.ingress_per_second = saturated.accepted as f64 / saturated.seconds;
    figures.ingress_failed = saturated.failed;
    figures.ingress_p50_ms = quantile(&mut saturated.latencies_us, 0.5) / 1000.0;
    figures.ingress_p99_ms = quantile(&mut saturated.latencies_us, 0.99) / 1000.0;
    figures.ingress_p999_ms = quantile(&mut saturated.latencies_us, 0.999) / 1000.0;
    let half_rate = (figures.ingress_per_second / 2.0).max(1.0) as u64;
    eprintln!("bench: ingress at half saturation, {half_rate}/s");
    let anchor = Anchor::now();
    let probe = bench.start_probe("probe-half", bench.args.seconds)?;
    let mut half = open_loop(target.clone(), half_rate, seconds, bench.args.connections).await;
    let probe = finish(probe).await?;
    figures.ingress_half_rate = half_rate;
    figures.ingress_half_failed = half.failed;
    figures.ingress_half_p99_ms = quantile(&mut half.latencies_us, 0.99) / 1000.0;
    figures.ingress_half_tail = Tail::measure(
        half.accepted_at
            .iter()
            .map(|(_, sent, answered)| (anchor.at(*sent), anchor.at(*answered))),
        Duration::from_millis(10),
        &probe,
    );
    figures.peak_rss_mib = figures.peak_rss_mib.max(ingress.peak_rss_mib());
    ingress.stop();
    Ok(())
}

/// How fast a worker drains a pre-filled queue.
async fn dispatch(
    bench: &Bench,
    profile: Profile,
    received: &Arc<Received>,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(bench.args.seconds);
    eprintln!(
        "bench: dispatch ({} profile) of a {}-message backlog",
        profile.name(),
        bench.args.backlog
    );
    bench.empty_queue().await?;
    bench.psql(&backlog_sql(bench.args.backlog))?;
    let start_count = received.count.load(Ordering::Relaxed);
    let worker = bench.spawn("worker", profile).await?;
    let drained = drain(
        &received.count,
        start_count,
        bench.args.backlog,
        seconds * 6,
        &bench.meter(&[&worker]),
    )
    .await;
    figures.dispatch_per_second = drained.per_second;
    figures.dispatch_messages = drained.messages;
    figures.dispatch_cpu = drained.cpu;
    figures.dispatch_cpu_us_per_message = drained.cpu.process_micros_per(drained.messages);
    figures.dispatch_machine_cpu_us_per_message = drained.cpu.machine_micros_per(drained.messages);
    figures.peak_rss_mib = figures.peak_rss_mib.max(worker.peak_rss_mib());
    worker.stop();
    Ok(())
}

/// Request to carrier at a fixed rate, beside a commit probe.
async fn end_to_end(
    bench: &Bench,
    profile: Profile,
    received: &Arc<Received>,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let seconds = Duration::from_secs(bench.args.seconds);
    eprintln!(
        "bench: end to end ({} profile) at {}/s",
        profile.name(),
        bench.args.rate
    );
    bench.empty_queue().await?;
    let all = bench.spawn("all", profile).await?;
    let target = bench.target(all.port)?;
    // Every phase numbers its recipients from the start again: an earlier phase's arrivals
    // would pass for this one's.
    received
        .arrivals
        .lock()
        .map_err(|_| anyhow::anyhow!("arrivals lock"))?
        .clear();
    received.track.store(true, Ordering::Relaxed);
    let anchor = Anchor::now();
    let probe = bench.start_probe("probe-e2e", bench.args.seconds)?;
    let mut offered = open_loop(target, bench.args.rate, seconds, bench.args.connections).await;
    let probe = finish(probe).await?;
    figures.e2e_ingress_p99_ms = quantile(&mut offered.latencies_us, 0.99) / 1000.0;
    tokio::time::sleep(Duration::from_secs(2)).await;
    received.track.store(false, Ordering::Relaxed);
    // Two views of the same deliveries: from the request being sent (which includes the
    // ingress commit), and from its 200 arriving (the carrier often has it before the client
    // has read the answer, which counts as 0).
    let (mut sent_to_carrier, mut answered_to_carrier, missing, tail) = {
        let arrivals = received
            .arrivals
            .lock()
            .map_err(|_| anyhow::anyhow!("arrivals lock"))?;
        let (mut from_sent, mut from_answer, mut missing) = (Vec::new(), Vec::new(), 0);
        let mut spans = Vec::new();
        for (recipient, sent, answered) in &offered.accepted_at {
            match arrivals.get(recipient) {
                Some(arrived) => {
                    from_sent.push(arrived.saturating_duration_since(*sent).as_micros() as u64);
                    from_answer
                        .push(arrived.saturating_duration_since(*answered).as_micros() as u64);
                    spans.push((anchor.at(*sent), anchor.at(*arrived)));
                }
                None => missing += 1,
            }
        }
        let tail = Tail::measure(spans.into_iter(), Duration::from_millis(25), &probe);
        (from_sent, from_answer, missing, tail)
    };
    figures.e2e_tail = tail;
    figures.e2e_rate = bench.args.rate;
    figures.e2e_accepted = offered.accepted;
    figures.e2e_failed = offered.failed;
    figures.e2e_missing = missing;
    figures.e2e_p50_ms = quantile(&mut sent_to_carrier, 0.5) / 1000.0;
    figures.e2e_p99_ms = quantile(&mut sent_to_carrier, 0.99) / 1000.0;
    figures.e2e_after_200_p50_ms = quantile(&mut answered_to_carrier, 0.5) / 1000.0;
    figures.e2e_after_200_p99_ms = quantile(&mut answered_to_carrier, 0.99) / 1000.0;
    figures.peak_rss_mib = figures.peak_rss_mib.max(all.peak_rss_mib());
    all.stop();
    Ok(())
}

/// Waits for a commit probe without blocking the runtime.
async fn finish(probe: Probe) -> anyhow::Result<Vec<ProbeCommit>> {
    tokio::task::spawn_blocking(move || probe.finish()).await?
}

/// What a worker did while the backlog drained from 10 % to 90 % (start-up and the tail are
/// left out), or over the whole wait when it never got there.
pub struct Drained {
    pub per_second: f64,
    pub messages: u64,
    pub cpu: CpuUse,
}

/// Messages per second between 10 % and 90 % of the backlog reaching the carrier.
pub async fn drain_rate(count: &AtomicU64, start: u64, backlog: u64, limit: Duration) -> f64 {
    drain(count, start, backlog, limit, &Meter::default())
        .await
        .per_second
}

/// The drain between 10 % and 90 % of the backlog reaching the carrier, with the CPU it took.
pub async fn drain(
    count: &AtomicU64,
    start: u64,
    backlog: u64,
    limit: Duration,
    meter: &Meter,
) -> Drained {
    let started = Instant::now();
    let cpu_at_start = meter.sample();
    let (low, high) = (start + backlog / 10, start + backlog * 9 / 10);
    let mut at_low = None;
    loop {
        let now = count.load(Ordering::Relaxed);
        if at_low.is_none() && now >= low {
            at_low = Some((Instant::now(), now, meter.sample()));
        }
        if now >= high
            && let Some((t, n, cpu)) = &at_low
        {
            return Drained {
                per_second: (now - n) as f64 / t.elapsed().as_secs_f64().max(1e-3),
                messages: now - n,
                cpu: meter.sample().since(cpu),
            };
        }
        if started.elapsed() > limit {
            return Drained {
                per_second: (now - start) as f64 / started.elapsed().as_secs_f64(),
                messages: now - start,
                cpu: meter.sample().since(&cpu_at_start),
            };
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
