//! Readings from `/proc`: a process's CPU time and memory, the machine's CPU time and load, and
//! this process's open-file limit. Everything is plain text parsing; a missing process reads as
//! zero so a server that died mid-run shows up as an error elsewhere, not as a panic here.

use std::sync::OnceLock;

/// Clock ticks per second for `/proc/*/stat` (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds used so far by process `pid` (all its threads).
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The command name (field 2) may hold spaces; fields after its closing parenthesis are plain.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / clk_tck()
}

/// Resident memory of `pid`: (current VmRSS, peak VmHWM) in KiB.
pub fn mem_kib(pid: u32) -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return (0, 0) };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The machine's CPU time since boot, summed over cores: (busy seconds, total seconds).
pub fn machine_cpu_secs() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0.0, 0.0) };
    let Some(line) = stat.lines().next() else { return (0.0, 0.0) };
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    (busy as f64 / clk_tck(), (busy + idle) as f64 / clk_tck())
}

/// `/proc/loadavg`: the 1, 5 and 15 minute load averages.
pub fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [it.next().unwrap_or(0.0), it.next().unwrap_or(0.0), it.next().unwrap_or(0.0)]
}

/// This process's soft limit on open files (children inherit it).
pub fn nofile_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What the machine is: for the report.
pub fn machine_info() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: Option<u64> = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok());
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": model,
        "mem_gib": mem_kib.map(|k| (k as f64 / 1048576.0 * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_string()),
        "nofile_limit": nofile_limit(),
    })
}

/// A snapshot of CPU counters, to take at both ends of a measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSnap {
    pub server: f64,
    pub generator: f64,
    pub machine_busy: f64,
    pub machine_total: f64,
}

impl CpuSnap {
    pub fn take(server_pids: &[u32]) -> CpuSnap {
        let (machine_busy, machine_total) = machine_cpu_secs();
        CpuSnap {
            server: server_pids.iter().map(|&p| cpu_secs(p)).sum(),
            generator: cpu_secs(std::process::id()),
            machine_busy,
            machine_total,
        }
    }
}

/// CPU use between two snapshots, and how busy the rest of the machine was.
#[derive(Debug, Clone, Copy)]
pub struct CpuDelta {
    pub server_s: f64,
    pub generator_s: f64,
    /// Cores used by everything else on the machine (other engineers' builds, the kernel…).
    pub others_cores: f64,
}

impl CpuDelta {
    pub fn between(a: CpuSnap, b: CpuSnap, wall_s: f64) -> CpuDelta {
        let server_s = (b.server - a.server).max(0.0);
        let generator_s = (b.generator - a.generator).max(0.0);
        let busy = (b.machine_busy - a.machine_busy).max(0.0);
        let others_cores = ((busy - server_s - generator_s) / wall_s.max(1e-9)).max(0.0);
        CpuDelta { server_s, generator_s, others_cores }
    }
}

/// Sum of (VmRSS, VmHWM) over processes, KiB.
pub fn mem_sum_kib(pids: &[u32]) -> (u64, u64) {
    pids.iter().map(|&p| mem_kib(p)).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let (rss, hwm) = super::mem_kib(std::process::id());
        assert!(rss > 0 && hwm >= rss);
        assert!(super::machine_cpu_secs().1 > 0.0);
        assert!(super::nofile_limit().is_some());
    }
}
