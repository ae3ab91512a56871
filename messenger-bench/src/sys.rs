//! Linux process facts: RSS from `/proc/PID/status`, open-file limits, the ephemeral
//! port range, the machine description for the report.

use std::io;

/// Resident set size in bytes of `pid`, or of this process for `None`
/// (`VmRSS` in `/proc/PID/status`).
pub fn rss_bytes(pid: Option<u32>) -> io::Result<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    parse_vm_rss(&std::fs::read_to_string(path)?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) in seconds that `pid` (or this process for `None`) has used,
/// from `/proc/PID/stat`. Assumes USER_HZ = 100, as on every mainstream Linux.
pub fn cpu_secs(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_stat_cpu(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name may hold spaces; fields after the closing paren are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The soft "Max open files" limit of another process, from `/proc/PID/limits`.
pub fn nofile_limit_of(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Raises this process's open-file limit to at least `want` if it can (the hard limit
/// too when running as root, up to `/proc/sys/fs/nr_open`). Returns the soft limit now
/// in force. Child processes (the spawned floor relay) inherit it.
pub fn raise_nofile(want: u64) -> u64 {
    use rlimit::Resource;
    let Ok((soft, hard)) = Resource::NOFILE.get() else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let new_hard = hard.max(want.min(nr_open));
    if new_hard > hard && Resource::NOFILE.set(new_hard, new_hard).is_ok() {
        return new_hard;
    }
    let new_soft = want.min(hard);
    if Resource::NOFILE.set(new_soft, hard).is_ok() {
        return new_soft;
    }
    soft
}

/// `/proc/sys/net/ipv4/ip_local_port_range` as (low, high).
pub fn local_port_range() -> Option<(u32, u32)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// The machine, for the report: cores, CPU model and memory.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u64>().ok());
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "memory_bytes": mem_kb.map(|k| k * 1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_vm_rss() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   2048 kB\nVmSwap:\t0 kB\n"),
            Some(2048 * 1024)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_bytes(None).expect("own rss") > 0);
        assert!(rss_bytes(Some(std::process::id())).expect("rss by pid") > 0);
    }

    #[test]
    fn reads_cpu_time() {
        let line = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 1 1";
        assert_eq!(parse_stat_cpu(line), Some(3.0));
        assert!(cpu_secs(None).is_some());
    }

    #[test]
    fn reads_own_limits() {
        assert!(nofile_limit_of(std::process::id()).is_some());
        if let Some((lo, hi)) = local_port_range() {
            assert!(lo <= hi);
        }
    }
}
