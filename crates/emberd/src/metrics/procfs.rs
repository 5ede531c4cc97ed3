//! Figures of processes from `/proc`: a VMM's memory, emberd's own usage.

use std::path::Path;

/// Resident and proportional set sizes of a process, in bytes.
pub struct Memory {
    pub rss: u64,
    pub pss: u64,
}

/// Reads `/proc/<pid>/smaps_rollup`; None when the process is gone.
pub fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some(Memory {
        rss: kb_field(&text, "Rss:")? * 1024,
        pss: kb_field(&text, "Pss:")? * 1024,
    })
}

/// The value of a `Name:   123 kB` line.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// emberd's own process: resident bytes, CPU seconds, threads, open fds.
pub struct SelfStats {
    pub rss: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
    pub open_fds: u64,
}

pub fn self_stats() -> Option<SelfStats> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which ends at the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); here 11 and 12 (from state).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let open_fds = std::fs::read_dir(Path::new("/proc/self/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    Some(SelfStats {
        rss: kb_field(&status, "VmRSS:").unwrap_or(0) * 1024,
        cpu_seconds: ticks as f64 / hz,
        threads,
        open_fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let m = memory(std::process::id()).expect("own smaps_rollup");
        assert!(m.rss > 0 && m.pss > 0 && m.pss <= m.rss);
        let s = self_stats().unwrap();
        assert!(s.rss > 0 && s.threads >= 1 && s.open_fds >= 3);
        assert!(memory(u32::MAX).is_none());
        assert_eq!(kb_field("Rss:    12 kB\nPss: 3 kB", "Pss:"), Some(3));
    }
}
