//! Cgroup v2 handling: one cgroup per container under `<root>/ember/<id>`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

/// Controllers the agent enables for containers (those the kernel offers).
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids", "io", "cpuset"];

/// Enables the wanted controllers in `dir`'s `cgroup.subtree_control`, as far as
/// `dir` offers them. Failures are logged, not fatal.
pub fn enable_controllers(dir: &Path) {
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for c in CONTROLLERS {
        if offered.split_whitespace().any(|o| o == *c) {
            if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                tracing::warn!("enabling cgroup controller {c} in {}: {e}", dir.display());
            }
        }
    }
}

/// Prepares `<root>/ember` as the parent of the container cgroups.
pub fn init_parent(root: &Path) -> io::Result<PathBuf> {
    if crate::sys::fs_magic(root)? != crate::sys::CGROUP2_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not on a cgroup v2 filesystem",
        ));
    }
    enable_controllers(root);
    let parent = root.join("ember");
    std::fs::create_dir_all(&parent)?;
    enable_controllers(&parent);
    Ok(parent)
}

#[derive(Debug, Clone)]
pub struct Cgroup {
    pub path: PathBuf,
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

/// cgroup v1 `cpu.shares` to cgroup v2 `cpu.weight`, the mapping runc and crun use.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// Converts the OCI resources into (file, value) writes for cgroup v2.
pub fn resource_writes(r: &LinuxResources) -> Vec<(String, String)> {
    let mut w = Vec::new();
    let limit = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(m) = r.memory() {
        if let Some(l) = m.limit() {
            w.push(("memory.max".into(), limit(l)));
            if let Some(s) = m.swap() {
                // OCI swap is memory+swap; cgroup v2 wants swap alone.
                let v = if s < 0 || l < 0 {
                    "max".to_string()
                } else {
                    s.saturating_sub(l).max(0).to_string()
                };
                w.push(("memory.swap.max".into(), v));
            }
        }
        if let Some(res) = m.reservation() {
            w.push(("memory.low".into(), limit(res)));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares() {
            w.push(("cpu.weight".into(), shares_to_weight(s).to_string()));
        }
        if c.quota().is_some() || c.period().is_some() {
            let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
            let quota = match c.quota() {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            w.push(("cpu.max".into(), format!("{quota} {period}")));
        }
        if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
            w.push(("cpuset.cpus".into(), cpus.clone()));
        }
        if let Some(mems) = c.mems().as_ref().filter(|s| !s.is_empty()) {
            w.push(("cpuset.mems".into(), mems.clone()));
        }
    }
    if let Some(p) = r.pids() {
        let l = p.limit();
        w.push((
            "pids.max".into(),
            if l <= 0 { "max".into() } else { l.to_string() },
        ));
    }
    if let Some(b) = r.block_io() {
        if let Some(weight) = b.weight() {
            // blkio weight 10..1000 to io.weight 1..10000.
            let v = 1 + (weight.clamp(10, 1000) as u64 - 10) * 9999 / 990;
            w.push(("io.weight".into(), format!("default {v}")));
        }
    }
    if let Some(u) = r.unified() {
        let mut keys: Vec<_> = u.iter().collect();
        keys.sort();
        for (k, v) in keys {
            if !k.contains('/') && !k.contains("..") {
                w.push((k.clone(), v.clone()));
            }
        }
    }
    w
}

impl Cgroup {
    pub fn create(parent: &Path, id: &str) -> io::Result<Cgroup> {
        let path = parent.join(id);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(Cgroup { path })
    }

    /// Applies resource limits. A limit whose controller file is missing (controller
    /// not available, as on some test hosts) is skipped with a warning.
    pub fn apply(&self, r: &LinuxResources) -> io::Result<()> {
        for (file, value) in resource_writes(r) {
            let p = self.path.join(&file);
            if !p.exists() {
                tracing::warn!(
                    "cgroup file {} missing; limit {file}={value} not applied",
                    p.display()
                );
                continue;
            }
            write_file(&p, &value)?;
        }
        Ok(())
    }

    pub fn procs(&self) -> io::Result<Vec<u32>> {
        let s = std::fs::read_to_string(self.path.join("cgroup.procs"))?;
        let mut v: Vec<u32> = s.lines().filter_map(|l| l.trim().parse().ok()).collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Sends `sig` to every process of the cgroup (`cgroup.kill` for SIGKILL).
    pub fn signal_all(&self, sig: i32) -> io::Result<()> {
        if sig == libc::SIGKILL {
            let k = self.path.join("cgroup.kill");
            if k.exists() && write_file(&k, "1").is_ok() {
                return Ok(());
            }
        }
        for pid in self.procs()? {
            let _ = crate::sys::kill(pid as i32, sig);
        }
        Ok(())
    }

    fn event(&self, key: &str) -> Option<u64> {
        let s = std::fs::read_to_string(self.path.join("cgroup.events")).ok()?;
        kv_lookup(&s, key)
    }

    /// Freezes (or thaws) the cgroup and waits until the kernel reports it done.
    pub async fn freeze(&self, frozen: bool) -> io::Result<()> {
        write_file(
            &self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let want = frozen as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.event("frozen") {
                Some(v) if v == want => return Ok(()),
                None => return Ok(()),
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "cgroup did not reach the requested freezer state",
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn is_frozen(&self) -> bool {
        self.event("frozen") == Some(1)
    }

    fn read_u64(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.path.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The OOM kill counter of `memory.events`.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.path.join("memory.events"))
            .ok()
            .and_then(|s| kv_lookup(&s, "oom_kill"))
            .unwrap_or(0)
    }

    pub fn stats(&self) -> ember_agent_api::StatsResponse {
        let cpu = std::fs::read_to_string(self.path.join("cpu.stat")).unwrap_or_default();
        ember_agent_api::StatsResponse {
            cpu_usage_usec: kv_lookup(&cpu, "usage_usec").unwrap_or(0),
            cpu_user_usec: kv_lookup(&cpu, "user_usec").unwrap_or(0),
            cpu_system_usec: kv_lookup(&cpu, "system_usec").unwrap_or(0),
            memory_usage_bytes: self.read_u64("memory.current"),
            memory_limit_bytes: self.read_u64("memory.max"),
            pids_current: self.read_u64("pids.current"),
            pids_limit: self.read_u64("pids.max"),
            oom_kills: self.oom_kills(),
        }
    }

    /// Removes the cgroup, waiting for it to empty (up to `timeout`).
    pub async fn remove(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {
                    let _ = self.signal_all(libc::SIGKILL);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Looks up `key value` lines (cgroup flat-keyed files).
pub fn kv_lookup(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        if it.next() == Some(key) {
            it.next().and_then(|v| v.parse().ok())
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed() {
        let s = "usage_usec 123\nuser_usec 100\nsystem_usec 23\n";
        assert_eq!(kv_lookup(s, "user_usec"), Some(100));
        assert_eq!(kv_lookup(s, "nope"), None);
    }

    #[test]
    fn weights() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    #[test]
    fn resources() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":67108864},"cpu":{"quota":50000,"period":100000,"shares":1024},"pids":{"limit":64}}"#,
        )
        .unwrap();
        let w = resource_writes(&r);
        assert!(w.contains(&("memory.max".into(), "67108864".into())));
        assert!(w.contains(&("cpu.max".into(), "50000 100000".into())));
        assert!(w.contains(&("cpu.weight".into(), "39".into())));
        assert!(w.contains(&("pids.max".into(), "64".into())));
        let r: LinuxResources =
            serde_json::from_str(r#"{"memory":{"limit":-1},"cpu":{"quota":-1}}"#).unwrap();
        let w = resource_writes(&r);
        assert!(w.contains(&("memory.max".into(), "max".into())));
        assert!(w.contains(&("cpu.max".into(), "max 100000".into())));
    }
}
