//! Where the CPU went during a run: CPU time of named groups of processes (nodes, Redis,
//! the HBase JVMs, this process) and of the whole machine, from `/proc`. The storm
//! reports it so that a missed bound says what was saturated.

use std::path::Path;

/// Clock ticks per second of `/proc/*/stat` (USER_HZ; 100 on every Linux this runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) `pid` has used so far; 0 if it is gone.
pub fn process_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / TICKS_PER_SEC
}

/// CPU seconds the whole machine has been busy (all cores, everything but idle and
/// iowait) and the number of cores.
pub fn machine_busy_secs() -> (f64, usize) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return (0.0, 1);
    };
    let mut busy = 0.0;
    let mut cores = 0;
    for line in stat.lines() {
        if let Some(rest) = line.strip_prefix("cpu ") {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            busy = (total - idle) as f64 / TICKS_PER_SEC;
        } else if line.starts_with("cpu") {
            cores += 1;
        }
    }
    (busy, cores.max(1))
}

/// The pids recorded in `dir/*.pid` (how `scripts/hbase.sh` records its JVMs).
pub fn pids_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// The pids whose command line (arguments joined by spaces) satisfies `pred`.
pub fn pids_with(pred: impl Fn(&str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| pred(&String::from_utf8_lossy(&c).replace('\0', " ")))
                .unwrap_or(false)
        })
        .collect()
}

/// CPU use of named process groups between [`CpuProbe::start`] and [`CpuProbe::stop`].
#[derive(Debug, Clone)]
pub struct CpuProbe {
    groups: Vec<(String, Vec<u32>, f64)>,
    machine: f64,
    at: std::time::Instant,
}

/// What a probe measured: per group, CPU seconds and the share of one core; the
/// machine's busy share of all its cores.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    /// Wall seconds measured.
    pub wall: f64,
    /// (group, CPU seconds).
    pub groups: Vec<(String, f64)>,
    /// CPU seconds of the whole machine (all processes, ours and others').
    pub machine: f64,
    /// Cores.
    pub cores: usize,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let wall = self.wall.max(1e-9);
        write!(
            f,
            "CPU over {:.1} s: machine {:.1} s ({:.0} % of {} cores)",
            self.wall,
            self.machine,
            100.0 * self.machine / (wall * self.cores as f64),
            self.cores
        )?;
        let ours: f64 = self.groups.iter().map(|(_, s)| s).sum();
        for (name, secs) in &self.groups {
            write!(
                f,
                "; {name} {secs:.1} s ({:.0} % of a core)",
                100.0 * secs / wall
            )?;
        }
        write!(
            f,
            "; everything else {:.1} s",
            (self.machine - ours).max(0.0)
        )
    }
}

impl CpuProbe {
    /// Starts measuring `groups` (name, pids) now.
    pub fn start(groups: Vec<(String, Vec<u32>)>) -> CpuProbe {
        CpuProbe {
            groups: groups
                .into_iter()
                .map(|(n, pids)| {
                    let s = pids.iter().map(|p| process_cpu_secs(*p)).sum();
                    (n, pids, s)
                })
                .collect(),
            machine: machine_busy_secs().0,
            at: std::time::Instant::now(),
        }
    }

    /// The names of the groups, in order.
    pub fn names(&self) -> Vec<String> {
        self.groups.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// CPU seconds used so far per group (in order) and by the machine, since
    /// [`CpuProbe::start`].
    pub fn sample(&self) -> (Vec<f64>, f64) {
        let per = self
            .groups
            .iter()
            .map(|(_, pids, s0)| {
                let s: f64 = pids.iter().map(|p| process_cpu_secs(*p)).sum();
                (s - s0).max(0.0)
            })
            .collect();
        (per, machine_busy_secs().0 - self.machine)
    }

    /// CPU used since [`CpuProbe::start`] (a process that died meanwhile counts 0).
    pub fn stop(&self) -> CpuUse {
        let (machine, cores) = machine_busy_secs();
        CpuUse {
            wall: self.at.elapsed().as_secs_f64(),
            groups: self
                .groups
                .iter()
                .map(|(n, pids, s0)| {
                    let s: f64 = pids.iter().map(|p| process_cpu_secs(*p)).sum();
                    (n.clone(), (s - s0).max(0.0))
                })
                .collect(),
            machine: machine - self.machine,
            cores,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_the_machine_counts_it() {
        let probe = CpuProbe::start(vec![("me".into(), vec![std::process::id()])]);
        // Burn some CPU until the tick counter moves.
        let mut x = 0u64;
        while process_cpu_secs(std::process::id()) - probe.groups[0].2 < 0.05 {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let u = probe.stop();
        assert!(u.groups[0].1 >= 0.05, "{u}");
        assert!(u.machine >= u.groups[0].1 * 0.5, "{u}");
        assert!(u.cores >= 1);
    }
}
