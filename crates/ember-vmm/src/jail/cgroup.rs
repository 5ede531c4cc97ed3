//! The VMM's own cgroup: a memory limit, a CPU quota and optionally a cpuset, in
//! cgroup v2 (`memory.max`, `cpu.max`, `cpuset.*`) or in v1's `memory`, `cpu` and
//! `cpuset` hierarchies (`memory.limit_in_bytes`, `cpu.cfs_quota_us`, ...).

use std::path::{Path, PathBuf};

use crate::Error;

/// Limits of one VMM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// CPU quota in millionths of a CPU per period (0: none).
    pub cpu_millis: u64,
    pub cpus: Option<String>,
    pub mems: Option<String>,
}

/// A created cgroup: one directory per hierarchy it lives in.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmCgroup {
    pub dirs: Vec<PathBuf>,
}

const PERIOD_US: u64 = 100_000;

/// The cgroup mounts of this host: (mount point, is v2, v1 controllers).
fn mounts() -> Vec<(PathBuf, bool, Vec<String>)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let _source = post.next();
            let opts = post.next().unwrap_or("");
            let point = PathBuf::from(pre.split_whitespace().nth(4)?);
            match fstype {
                "cgroup2" => Some((point, true, Vec::new())),
                "cgroup" => Some((point, false, opts.split(',').map(str::to_string).collect())),
                _ => None,
            }
        })
        .collect()
}

/// Where Ember mounts a memory cgroup hierarchy of its own when its mount namespace
/// shows none (a shim started by `ip netns exec`, which mounts a fresh /sys).
const OWN_ROOT: &str = "/run/ember/cgroup";

/// Whether `all` holds a hierarchy with the memory controller.
fn has_memory(all: &[(PathBuf, bool, Vec<String>)]) -> bool {
    all.iter().any(|(p, v2, c)| {
        if *v2 {
            std::fs::read_to_string(p.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        } else {
            c.iter().any(|x| x == "memory")
        }
    })
}

/// Mounts a hierarchy with the memory controller under [`OWN_ROOT`]: v1's `memory`
/// hierarchy where the kernel binds it there (the same hierarchy the host mounts
/// elsewhere), else cgroup2.
fn mount_own() {
    for (dir, fstype, data) in [("memory", "cgroup", "memory"), ("unified", "cgroup2", "")] {
        let target = Path::new(OWN_ROOT).join(dir);
        if std::fs::create_dir_all(&target).is_err() {
            return;
        }
        let (Ok(src), Ok(t), Ok(ty), Ok(d)) = (
            std::ffi::CString::new(fstype),
            std::ffi::CString::new(target.as_os_str().as_encoded_bytes()),
            std::ffi::CString::new(fstype),
            std::ffi::CString::new(data),
        ) else {
            return;
        };
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                t.as_ptr(),
                ty.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                d.as_ptr().cast(),
            )
        };
        if rc == 0 {
            tracing::info!(
                "mounted a {fstype} hierarchy at {} for VMM cgroups",
                target.display()
            );
            return;
        }
    }
}

/// The cgroup mounts, with one of Ember's own added when none has the memory
/// controller.
fn usable_mounts() -> Vec<(PathBuf, bool, Vec<String>)> {
    let all = mounts();
    if has_memory(&all) {
        return all;
    }
    mount_own();
    mounts()
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), Error> {
    let p = dir.join(file);
    std::fs::write(&p, value)
        .map_err(|e| Error::InvalidConfig(format!("writing {value:?} to {}: {e}", p.display())))
}

fn check_name(s: &str, what: &str) -> Result<(), Error> {
    if s.split('/').any(|c| c == "..") {
        return Err(Error::InvalidConfig(format!(
            "{what} {s:?} leaves its hierarchy"
        )));
    }
    Ok(())
}

impl VmCgroup {
    /// Creates `<parent>/<name>` with `limits`. cgroup v2 is used where its hierarchy
    /// has the memory controller; else v1's hierarchies.
    pub fn create(parent: &str, name: &str, limits: &Limits) -> Result<VmCgroup, Error> {
        check_name(parent, "cgroup parent")?;
        check_name(name, "cgroup name")?;
        let rel = Path::new(parent.trim_start_matches('/')).join(name);
        let all = usable_mounts();
        let v2 = all.iter().find(|(p, v2, _)| {
            *v2 && std::fs::read_to_string(p.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        });
        let mut cg = VmCgroup::default();
        let made = if let Some((root, _, _)) = v2 {
            cg.create_v2(root, &rel, limits)
        } else {
            cg.create_v1(&all, &rel, limits)
        };
        if let Err(e) = made {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_v2(&mut self, root: &Path, rel: &Path, limits: &Limits) -> Result<(), Error> {
        // The cpu controller only with a quota: it makes the cgroup one scheduling
        // entity.
        let mut want = vec!["+memory"];
        if limits.cpu_millis > 0 {
            want.push("+cpu");
        }
        if limits.cpus.is_some() || limits.mems.is_some() {
            want.push("+cpuset");
        }
        // Each level above the VM's cgroup hands the controllers down.
        let mut dir = root.to_path_buf();
        for c in rel.components() {
            let _ = std::fs::create_dir(&dir);
            for w in &want {
                write(&dir, "cgroup.subtree_control", w)?;
            }
            dir = dir.join(c);
        }
        std::fs::create_dir_all(&dir)?;
        self.dirs.push(dir.clone());
        write(&dir, "memory.max", &limits.memory_bytes.to_string())?;
        let _ = write(&dir, "memory.swap.max", "0");
        if limits.cpu_millis > 0 {
            let quota = limits.cpu_millis * PERIOD_US / 1000;
            write(&dir, "cpu.max", &format!("{quota} {PERIOD_US}"))?;
        }
        if let Some(c) = &limits.cpus {
            write(&dir, "cpuset.cpus", c)?;
        }
        if let Some(m) = &limits.mems {
            write(&dir, "cpuset.mems", m)?;
        }
        Ok(())
    }

    fn create_v1(
        &mut self,
        all: &[(PathBuf, bool, Vec<String>)],
        rel: &Path,
        limits: &Limits,
    ) -> Result<(), Error> {
        let find = |ctl: &str| {
            all.iter()
                .find(|(_, v2, c)| !v2 && c.iter().any(|x| x == ctl))
                .map(|(p, _, _)| p.clone())
        };
        let mem = find("memory").ok_or_else(|| {
            Error::InvalidConfig("no memory cgroup controller is mounted (v1 or v2)".into())
        })?;
        let dir = mem.join(rel);
        std::fs::create_dir_all(&dir)?;
        self.dirs.push(dir.clone());
        write(
            &dir,
            "memory.limit_in_bytes",
            &limits.memory_bytes.to_string(),
        )?;
        if limits.cpu_millis > 0 {
            if let Some(cpu) = find("cpu") {
                let dir = cpu.join(rel);
                if !self.dirs.contains(&dir) {
                    std::fs::create_dir_all(&dir)?;
                    self.dirs.push(dir.clone());
                }
                write(&dir, "cpu.cfs_period_us", &PERIOD_US.to_string())?;
                let quota = limits.cpu_millis * PERIOD_US / 1000;
                write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        if limits.cpus.is_some() || limits.mems.is_some() {
            let root = find("cpuset").ok_or_else(|| {
                Error::InvalidConfig(
                    "a cpuset was asked for but no cpuset cgroup is mounted".into(),
                )
            })?;
            // v1 cpusets start empty: each new level takes its parent's sets.
            let mut at = root.clone();
            for c in rel.components() {
                let parent = at.clone();
                at = at.join(c);
                if std::fs::create_dir(&at).is_ok() || at == root.join(rel) {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let cur = std::fs::read_to_string(at.join(f)).unwrap_or_default();
                        if cur.trim().is_empty() {
                            let v = std::fs::read_to_string(parent.join(f)).unwrap_or_default();
                            write(&at, f, v.trim())?;
                        }
                    }
                }
            }
            self.dirs.push(at.clone());
            if let Some(c) = &limits.cpus {
                write(&at, "cpuset.cpus", c)?;
            }
            if let Some(m) = &limits.mems {
                write(&at, "cpuset.mems", m)?;
            }
        }
        Ok(())
    }

    /// Where `<parent>/<name>` would be in every hierarchy it can be made in (to
    /// remove one nothing recorded).
    pub fn named(parent: &str, name: &str) -> VmCgroup {
        let rel = Path::new(parent.trim_start_matches('/')).join(name);
        VmCgroup {
            dirs: usable_mounts()
                .into_iter()
                .map(|(p, _, _)| p.join(&rel))
                .filter(|d| d.is_dir())
                .collect(),
        }
    }

    /// The `cgroup.procs` files a process writes itself into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Removes the directories. Processes still dying in them (a VMM killed a moment
    /// ago) are waited for, up to 2 s.
    pub fn remove(&self) {
        if self
            .dirs
            .iter()
            .any(|d| d.starts_with(OWN_ROOT) && !d.exists())
        {
            usable_mounts();
        }
        for d in &self.dirs {
            let mut tries = 0;
            while d.exists() {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 200 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        let procs = std::fs::read_to_string(d.join("cgroup.procs"))
                            .unwrap_or_default()
                            .replace('\n', " ");
                        tracing::warn!(
                            "removing the VMM's cgroup {} (processes: {procs}): {e}",
                            d.display()
                        );
                        break;
                    }
                }
            }
        }
    }
}

/// Which cgroup hierarchy VMM cgroups are made in, in words: `v2`, `v1` (with the
/// controllers found) or `none`.
pub fn hierarchy() -> String {
    let all = mounts();
    if all.iter().any(|(p, v2, _)| {
        *v2 && std::fs::read_to_string(p.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
    }) {
        return "v2".into();
    }
    let ctls: Vec<&str> = ["memory", "cpu", "cpuset"]
        .into_iter()
        .filter(|c| {
            all.iter()
                .any(|(_, v2, cs)| !v2 && cs.iter().any(|x| x == c))
        })
        .collect();
    if ctls.is_empty() {
        "none".into()
    } else {
        format!("v1 ({})", ctls.join(", "))
    }
}

/// The memory limit applied to `pid`'s cgroup, as the kernel reports it (v2's
/// `memory.max` or v1's `memory.limit_in_bytes`; None when unlimited or unknown).
pub fn memory_limit_of(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let all = mounts();
    for l in text.lines() {
        let mut parts = l.splitn(3, ':');
        let (id, ctls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        let (dir, file) = if id == "0" {
            let (root, _, _) = all.iter().find(|(_, v2, _)| *v2)?;
            (root.join(rel), "memory.max")
        } else if ctls.split(',').any(|c| c == "memory") {
            let (root, _, _) = all
                .iter()
                .find(|(_, v2, c)| !v2 && c.iter().any(|x| x == "memory"))?;
            (root.join(rel), "memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Ok(v) = std::fs::read_to_string(dir.join(file)) {
            if let Ok(n) = v.trim().parse::<u64>() {
                // v1 writes "unlimited" as a huge page-aligned number.
                if n < (1 << 60) {
                    return Some(n);
                }
            }
        }
    }
    None
}
