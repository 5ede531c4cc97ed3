//! The VMM's jail: what confines a VMM process on the host, so that a guest that
//! escapes into its VMM finds an unprivileged process with nothing to reach.
//!
//! A jailed VMM runs as a uid and gid of its own ([`UidLease`], unique per running
//! VM), chrooted (pivot_root) into a per-VM directory that holds only what it needs
//! (its binary, the host's `/usr` read-only for its libraries and firmware, a few
//! device nodes, kernel, initrd, drives, the shared directory and a `run/` directory
//! for its sockets), in new mount, pid, ipc and uts namespaces (and the VM's network
//! namespace), in a cgroup of its own with a memory limit and a CPU quota, with no
//! capabilities, no_new_privs and no inherited descriptors. The VMM adds its own
//! seccomp filter (QEMU's `-sandbox`, Firecracker's built-in filters).
//!
//! Paths the VMM is given are the jail's ([`Jail::vmm_config`]); sockets it makes in
//! `run/` are reached from the host under [`Jail::run_dir`]. A record of the jail
//! (`jail.json` in the VM's state directory) lets [`cleanup`] remove what a VMM
//! killed with its owner left behind.

mod cgroup;
mod layout;
mod spawn;
mod uid;

use std::path::{Path, PathBuf};

pub use cgroup::{hierarchy as cgroup_hierarchy, memory_limit_of, Limits, VmCgroup};
pub use uid::{UidLease, DEFAULT_LOCK_DIR};

pub(crate) use spawn::{PidReceiver, SpawnPlan};

use crate::{Error, VmConfig};

/// Where per-VM jail directories are made by default.
pub const DEFAULT_BASE_DIR: &str = "/run/ember/jail";
/// The cgroup (below each hierarchy's root) holding the VMMs' cgroups by default.
pub const DEFAULT_CGROUP_PARENT: &str = "ember";
/// First uid (and gid) of the default range.
pub const DEFAULT_UID_FIRST: u32 = 200_000;
/// Size of the default range.
pub const DEFAULT_UID_COUNT: u32 = 65_536;
/// Memory the VMM may use beyond the guest's RAM by default (QEMU's own heap,
/// TCG's translation cache, device buffers; see docs/security.md for the numbers).
pub const DEFAULT_MEMORY_OVERHEAD_MIB: u32 = 384;
/// The file in the VM's state directory recording its jail.
pub const RECORD_FILE: &str = "jail.json";

/// How drive files reach the jail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriveExposePolicy {
    /// Bind-mount each drive file into the jail (only the VMM's mount namespace sees
    /// the mount); writable drives are chowned to the VMM's uid.
    #[default]
    Bind,
    /// Copy read-only drives into the jail (sparsely), owned by the VMM's uid, so the
    /// VMM never opens the original; writable drives are bound as with `Bind` (the
    /// host keeps writing into them while the VM runs, the pool drive for one).
    Copy,
}

/// How a VMM is jailed. `VmConfig::jail` = None runs it unconfined, as the caller.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The uid reserved for this VM ([`JailConfig::reserve`] takes one before the
    /// VM starts, so that taps can be made for it); None: taken at start.
    pub uid: Option<UidLease>,
    /// The VMM's gid (None: the same number as its uid).
    pub gid: Option<u32>,
    /// First uid and number of uids VMMs are given.
    pub uid_first: u32,
    pub uid_count: u32,
    /// Where the uid locks live.
    pub lock_dir: PathBuf,
    /// Where per-VM jail directories are made (`<base_dir>/<name>/root`).
    pub base_dir: PathBuf,
    /// Parent cgroup of the VMM's cgroup, below each hierarchy's root.
    pub cgroup_parent: String,
    /// The VMM's memory limit is the guest's memory plus this.
    pub memory_overhead_mib: u32,
    /// A CPU quota of (vCPUs + 1) CPUs in the VMM's cgroup. Off by default: a VMM in
    /// a CPU cgroup of its own competes with every other process as one scheduling
    /// entity, which on a loaded host slows its guest (docs/benchmarks.md, Jailer).
    pub cpu_quota: bool,
    /// cpuset of the VMM (`cpuset.cpus` syntax), if any.
    pub cpus: Option<String>,
    /// Memory nodes of the VMM (`cpuset.mems`), if any.
    pub mems: Option<String>,
    pub expose: DriveExposePolicy,
    /// Firecracker's `jailer` binary. Ember's own jail does what it does; a jailer
    /// binary is not run (refused when set).
    pub jailer_binary: Option<PathBuf>,
}

impl Default for JailConfig {
    fn default() -> Self {
        JailConfig {
            uid: None,
            gid: None,
            uid_first: DEFAULT_UID_FIRST,
            uid_count: DEFAULT_UID_COUNT,
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
            base_dir: PathBuf::from(DEFAULT_BASE_DIR),
            cgroup_parent: DEFAULT_CGROUP_PARENT.into(),
            memory_overhead_mib: DEFAULT_MEMORY_OVERHEAD_MIB,
            cpu_quota: false,
            cpus: None,
            mems: None,
            expose: DriveExposePolicy::Bind,
            jailer_binary: None,
        }
    }
}

impl JailConfig {
    /// Reserves the VMM's uid now (if none is yet) and returns it: the uid a tap must
    /// be owned by for the VMM to open it.
    pub fn reserve(&mut self, vm_id: &str) -> Result<u32, Error> {
        if let Some(l) = &self.uid {
            return Ok(l.uid());
        }
        let l = UidLease::allocate(&self.lock_dir, self.uid_first, self.uid_count, vm_id)?;
        let uid = l.uid();
        self.uid = Some(l);
        Ok(uid)
    }

    /// Takes a given uid (firecracker-containerd's JailerConfig.UID): refused while
    /// another running VM holds it.
    pub fn use_uid(&mut self, uid: u32) -> Result<(), Error> {
        if uid == 0 {
            return Err(Error::InvalidConfig(
                "a jailed VMM cannot run as uid 0".into(),
            ));
        }
        match UidLease::take(&self.lock_dir, uid)? {
            Some(l) => {
                self.uid = Some(l);
                Ok(())
            }
            None => Err(Error::InvalidConfig(format!(
                "uid {uid} is in use by another running VM"
            ))),
        }
    }
}

/// `argv[0]` of a jailed VMM: its binary and, in brackets, the VM's host state
/// directory. Every path on a jailed VMM's command line is the jail's; this one says
/// (to `ps`, and to whoever looks for a VM's VMM by its directory) which VM it runs.
pub fn jailed_arg0(config: &VmConfig) -> std::ffi::OsString {
    let mut a = config.vmm_binary.clone().into_os_string();
    a.push(" [");
    a.push(&config.state_dir);
    a.push("]");
    a
}

/// What was made for one jailed VMM, as recorded in `jail.json`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct JailRecord {
    pub uid: u32,
    pub gid: u32,
    /// `<base_dir>/<name>`: holds `root/`.
    pub dir: PathBuf,
    pub cgroup: VmCgroup,
    pub lock_dir: PathBuf,
}

/// A prepared jail: directory, cgroup and uid held until [`Jail::remove`] (or drop).
#[derive(Debug)]
pub struct Jail {
    lease: UidLease,
    record: JailRecord,
    record_path: PathBuf,
    vmm_config: VmConfig,
    removed: bool,
}

impl Jail {
    /// Builds the jail of `config` (whose `jail` must be set): uid, cgroup, directory
    /// and the mount plan. Nothing runs yet.
    pub(crate) fn prepare(config: &VmConfig) -> Result<(Jail, SpawnPlan, PidReceiver), Error> {
        let mut jc = config
            .jail
            .clone()
            .ok_or_else(|| Error::InvalidConfig("no jail configured".into()))?;
        if let Some(j) = &jc.jailer_binary {
            return Err(Error::InvalidConfig(format!(
                "jailer binary {}: Ember jails VMMs itself and does not run a jailer binary",
                j.display()
            )));
        }
        let uid = jc.reserve(&config.id)?;
        let lease = jc.uid.clone().expect("reserved");
        let gid = jc.gid.unwrap_or(uid);
        let name = layout::dir_name(config, uid);
        let dir = jc.base_dir.join(&name);
        let record_path = config.state_dir.join(RECORD_FILE);
        // What an earlier VM of this state directory left (its owner killed), and
        // jails of dead VMs whose state directories went without a cleanup.
        cleanup_except(&config.state_dir, Some(uid));
        sweep(&jc);
        let mut record = JailRecord {
            uid,
            gid,
            dir: dir.clone(),
            cgroup: VmCgroup::default(),
            lock_dir: jc.lock_dir.clone(),
        };
        // Written first: whatever follows fails or not, cleanup finds it.
        std::fs::write(
            &record_path,
            serde_json::to_vec(&record).unwrap_or_default(),
        )?;
        let mut jail = Jail {
            lease,
            record,
            record_path,
            vmm_config: config.clone(),
            removed: false,
        };
        let limits = Limits {
            memory_bytes: (config.memory_mib as u64 + jc.memory_overhead_mib as u64) << 20,
            // A vCPU thread each, plus the VMM's main loop and I/O.
            cpu_millis: if jc.cpu_quota {
                (config.vcpus.max(1) as u64 + 1) * 1000
            } else {
                0
            },
            cpus: jc.cpus.clone(),
            mems: jc.mems.clone(),
        };
        jail.record.cgroup = VmCgroup::create(&jc.cgroup_parent, &name, &limits)?;
        record = jail.record.clone();
        std::fs::write(
            &jail.record_path,
            serde_json::to_vec(&record).unwrap_or_default(),
        )?;
        let built = layout::build(config, &jc, &dir, uid, gid)?;
        jail.vmm_config = built.seen;
        let (pid_rx, pid_tx) = spawn::pid_pipe()?;
        let mut procs = Vec::new();
        for p in record.cgroup.procs_files() {
            procs.push(std::fs::OpenOptions::new().write(true).open(&p)?.into());
        }
        let netns = match &config.netns {
            Some(p) => Some(
                std::fs::File::open(p)
                    .map_err(|e| {
                        Error::InvalidConfig(format!("network namespace {}: {e}", p.display()))
                    })?
                    .into(),
            ),
            None => None,
        };
        let plan = SpawnPlan {
            root: layout::cstring(&dir.join("root"))?,
            mounts: built.mounts,
            dev: built.dev,
            dev_dirs: built.dev_dirs,
            dev_nodes: built.dev_nodes,
            uid,
            gid,
            cgroup_procs: procs,
            netns,
            hostname: c"ember-vmm".to_owned(),
            pid_tx,
            argv_area: spawn::argv_area(),
        };
        Ok((jail, plan, pid_rx))
    }

    /// The configuration as the VMM sees it: every path inside the jail.
    pub fn vmm_config(&self) -> &VmConfig {
        &self.vmm_config
    }

    /// Host path of the jail's `run/` directory (the VMM's sockets).
    pub fn run_dir(&self) -> PathBuf {
        self.record.dir.join("root").join(layout::RUN)
    }

    pub fn uid(&self) -> u32 {
        self.lease.uid()
    }

    pub fn record(&self) -> &JailRecord {
        &self.record
    }

    /// Removes directory and cgroup and frees the uid (the VMM must have exited).
    pub fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        remove_record(&self.record);
        let _ = std::fs::remove_file(&self.record_path);
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        self.remove();
    }
}

fn remove_record(r: &JailRecord) {
    r.cgroup.remove();
    if r.dir.exists() {
        if let Err(e) = layout::remove_dir(&r.dir) {
            tracing::warn!("removing the jail {}: {e}", r.dir.display());
        }
    }
}

/// Removes what the jail recorded in `state_dir` left: its directory and cgroup (the
/// uid is free already: its lock died with its holder). For a VM whose owner was
/// killed; nothing recorded is fine.
pub fn cleanup(state_dir: &Path) {
    cleanup_except(state_dir, None)
}

/// Removes the jails under `jc.base_dir` (and their cgroups under
/// `jc.cgroup_parent`) whose uid no running VM holds: what VMs killed with their owner
/// left when nothing ran their cleanup. A jail whose uid is locked is in use (or
/// being made: the uid is locked before its directory exists) and stays.
pub fn sweep(jc: &JailConfig) {
    let Ok(rd) = std::fs::read_dir(&jc.base_dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(uid) = name
            .rsplit_once('-')
            .and_then(|(_, u)| u.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(Some(_free)) = UidLease::take(&jc.lock_dir, uid) {
            VmCgroup::named(&jc.cgroup_parent, &name).remove();
            if let Err(err) = layout::remove_dir(&e.path()) {
                tracing::warn!("removing the stale jail {}: {err}", e.path().display());
            }
        }
    }
}

/// [`cleanup`], where uid `ours` is held by the caller (so free of any other VM).
fn cleanup_except(state_dir: &Path, ours: Option<u32>) {
    let path = state_dir.join(RECORD_FILE);
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    if let Ok(r) = serde_json::from_slice::<JailRecord>(&bytes) {
        // A uid still locked belongs to a VM that runs: leave its jail alone.
        match UidLease::take(&r.lock_dir, r.uid) {
            _ if ours == Some(r.uid) => remove_record(&r),
            Ok(Some(_free)) => remove_record(&r),
            Ok(None) => {
                tracing::warn!(
                    "the jail of {} is still in use (uid {})",
                    state_dir.display(),
                    r.uid
                );
                return;
            }
            Err(e) => tracing::warn!("checking uid {}: {e}", r.uid),
        }
    }
    let _ = std::fs::remove_file(&path);
}
