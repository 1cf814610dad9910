//! CPU per message, two ways. The machine's busy CPU time during a phase (/proc/stat), less the
//! bench process's own (the load generator and the carrier stand-in), is what smsgate and
//! PostgreSQL spent together, plus whatever else ran on the machine meanwhile. The same sum
//! taken from the processes themselves (smsgate's and every PostgreSQL process's
//! /proc/<pid>/stat) leaves that other work out, which matters on a shared machine. Unlike a
//! rate, either barely moves when commits stall, so it shows what the defences cost.

/// /proc/stat and /proc/<pid>/stat count in USER_HZ, which Linux fixes at 100 for user space
/// whatever the kernel's own tick rate.
const USER_HZ: f64 = 100.0;

/// The processes that make up the gateway during a phase.
#[derive(Debug, Clone, Default)]
pub struct Meter {
    /// The smsgate processes of the phase.
    pub smsgate: Vec<u32>,
    /// PostgreSQL's postmaster: it, its live children (backends, WAL writer, checkpointer…)
    /// and the children it has reaped.
    pub postmaster: Option<u32>,
}

impl Meter {
    pub fn sample(&self) -> CpuSample {
        let read = |path: String| std::fs::read_to_string(path).unwrap_or_default();
        let own = |pid: u32| process_times(&read(format!("/proc/{pid}/stat")));
        let mut gateway: u64 = self
            .smsgate
            .iter()
            .filter_map(|pid| own(*pid))
            .map(|t| t.own)
            .sum();
        if let Some(postmaster) = self.postmaster {
            gateway += own(postmaster).map_or(0, |t| t.own + t.reaped_children);
            gateway += children_ticks(postmaster);
        }
        CpuSample {
            machine: machine_busy_ticks(&read("/proc/stat".into())).unwrap_or(0),
            bench: process_times(&read("/proc/self/stat".into())).map_or(0, |t| t.own),
            gateway,
        }
    }
}

/// User and system time of every live child of `parent`.
fn children_ticks(parent: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| process_times(&stat))
        .filter(|t| t.parent == parent)
        .map(|t| t.own + t.reaped_children)
        .sum()
}

/// Cumulative CPU time at one moment, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// Every CPU's user, nice, system, irq and softirq time (idle, iowait and steal left out).
    machine: u64,
    /// This process's user and system time, all threads.
    bench: u64,
    /// smsgate's and PostgreSQL's processes' user and system time.
    gateway: u64,
}

/// CPU seconds spent between two samples.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuUse {
    /// The whole machine.
    pub machine_seconds: f64,
    /// The bench process itself (load generator and stand-in).
    pub bench_seconds: f64,
    /// smsgate's and PostgreSQL's own processes.
    pub process_seconds: f64,
}

impl CpuUse {
    /// What smsgate and PostgreSQL spent by the machine's count (with anything else running
    /// on the machine).
    pub fn machine_less_bench_seconds(&self) -> f64 {
        (self.machine_seconds - self.bench_seconds).max(0.0)
    }

    /// Microseconds per message of the machine's busy time less the bench's; 0 when no
    /// message was handled.
    pub fn machine_micros_per(&self, messages: u64) -> f64 {
        per_message(self.machine_less_bench_seconds(), messages)
    }

    /// Microseconds per message of smsgate's and PostgreSQL's processes; 0 when no message
    /// was handled.
    pub fn process_micros_per(&self, messages: u64) -> f64 {
        per_message(self.process_seconds, messages)
    }
}

fn per_message(seconds: f64, messages: u64) -> f64 {
    if messages == 0 {
        return 0.0;
    }
    seconds * 1e6 / messages as f64
}

impl CpuSample {
    /// The CPU time spent from `earlier` to this sample.
    pub fn since(&self, earlier: &CpuSample) -> CpuUse {
        let seconds = |now: u64, then: u64| now.saturating_sub(then) as f64 / USER_HZ;
        CpuUse {
            machine_seconds: seconds(self.machine, earlier.machine),
            bench_seconds: seconds(self.bench, earlier.bench),
            process_seconds: seconds(self.gateway, earlier.gateway),
        }
    }
}

/// The busy ticks of /proc/stat's first (all-CPU) line:
/// `cpu user nice system idle iowait irq softirq steal guest guest_nice`. Guest time is
/// already inside user and nice, so it is not added again.
pub fn machine_busy_ticks(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let (user, nice, system) = (*fields.first()?, *fields.get(1)?, *fields.get(2)?);
    let irq = fields.get(5).copied().unwrap_or(0);
    let softirq = fields.get(6).copied().unwrap_or(0);
    Some(user + nice + system + irq + softirq)
}

/// One process's line of /proc/<pid>/stat, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessTimes {
    pub parent: u32,
    /// utime + stime (fields 14 and 15), all threads.
    pub own: u64,
    /// cutime + cstime (fields 16 and 17): children that ended and were waited for.
    pub reaped_children: u64,
}

/// Parses a /proc/<pid>/stat line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted after its last `)`.
pub fn process_times(pid_stat: &str) -> Option<ProcessTimes> {
    let after_name = &pid_stat[pid_stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().take(15).collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(ProcessTimes {
        parent: fields.get(1)?.parse().ok()?,
        own: number(11)? + number(12)?,
        reaped_children: number(13)? + number(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_busy_time_is_user_nice_system_irq_and_softirq() {
        let stat = "cpu  1000 20 300 99999 55 7 11 3 40 0\ncpu0 500 10 150 50000 20 3 5 1 20 0\nintr 1 2 3\n";
        assert_eq!(machine_busy_ticks(stat), Some(1000 + 20 + 300 + 7 + 11));
    }

    #[test]
    fn a_stat_without_the_all_cpu_line_gives_nothing() {
        assert_eq!(machine_busy_ticks("cpu0 1 2 3 4\n"), None);
        assert_eq!(machine_busy_ticks(""), None);
        assert_eq!(machine_busy_ticks("cpu  1 x 3\n"), None);
    }

    #[test]
    fn process_time_is_counted_after_a_command_name_with_spaces() {
        let stat = "4242 (smsgate (bench) x) S 17 4242 4242 0 -1 4194560 500 0 0 0 1234 567 89 10 20 0 8 0 100 0 0";
        assert_eq!(
            process_times(stat),
            Some(ProcessTimes {
                parent: 17,
                own: 1234 + 567,
                reaped_children: 89 + 10,
            })
        );
        assert_eq!(process_times("4242 (short) S 1"), None);
    }

    #[test]
    fn cpu_per_message_subtracts_the_bench_and_survives_no_messages() {
        let earlier = CpuSample {
            machine: 1_000,
            bench: 400,
            gateway: 100,
        };
        let later = CpuSample {
            machine: 1_300,
            bench: 450,
            gateway: 300,
        };
        let used = later.since(&earlier);
        assert!((used.machine_seconds - 3.0).abs() < 1e-9);
        assert!((used.bench_seconds - 0.5).abs() < 1e-9);
        // 2.5 CPU seconds over 50,000 messages: 50 µs each; the processes' 2 s: 40 µs.
        assert!((used.machine_micros_per(50_000) - 50.0).abs() < 1e-9);
        assert!((used.process_micros_per(50_000) - 40.0).abs() < 1e-9);
        assert_eq!(used.machine_micros_per(0), 0.0);
        assert_eq!(used.process_micros_per(0), 0.0);
        // Counters that went backwards (unreadable, then read) do not give negative time.
        assert_eq!(earlier.since(&later).machine_less_bench_seconds(), 0.0);
        assert_eq!(earlier.since(&later).process_seconds, 0.0);
    }

    #[test]
    fn this_machine_has_readable_counters() {
        let stat = std::fs::read_to_string("/proc/stat").expect("Linux /proc/stat");
        assert!(machine_busy_ticks(&stat).is_some());
        let own = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc/self/stat");
        assert!(process_times(&own).is_some());
    }

    #[test]
    fn a_meter_counts_its_processes_and_the_children_of_the_postmaster() {
        // This test process stands in for both: itself as "smsgate", its parent as the
        // postmaster (this process is one of the parent's live children).
        let own = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc/self/stat");
        let me = process_times(&own).expect("parsable");
        let meter = Meter {
            smsgate: vec![std::process::id()],
            postmaster: Some(me.parent),
        };
        let own_ticks = || {
            let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc/self/stat");
            process_times(&stat).expect("parsable").own
        };
        // Spin until this process has used 0.3 s of CPU (30 ticks at Linux's 100 a second),
        // however long a busy machine takes to give it that.
        let (start, deadline) = (own_ticks(), std::time::Instant::now());
        let before = meter.sample();
        while own_ticks() < start + 31 && deadline.elapsed() < std::time::Duration::from_secs(60) {
            std::hint::black_box(deadline.elapsed());
        }
        let used = meter.sample().since(&before);
        // Counted twice (as "smsgate" and as a child of the "postmaster"): at least 0.3 s.
        assert!(used.process_seconds >= 0.3, "{used:?}");
        assert!(Meter::default().sample().since(&before).process_seconds == 0.0);
    }
}
