//! Supervision of VMM processes: spawning so the VMM dies with its owner, reading its
//! resource usage from /proc, and the console tail.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::{Error, VmExit, VmStats};

/// Checks that a file a VM needs exists, with an error that names the fix.
pub(crate) fn require_file(
    what: &'static str,
    path: &Path,
    hint: &'static str,
) -> Result<(), Error> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::MissingFile {
            what,
            path: path.to_path_buf(),
            hint,
        })
    }
}

/// Spawns a VMM process that receives SIGKILL when its owner dies.
///
/// The parent-death signal fires when the *thread* that forked the child exits, so
/// this must be called from a long-lived thread (an async task on a runtime worker, not
/// `spawn_blocking`). The child also checks that its parent did not already die
/// between fork and the prctl.
pub(crate) fn spawn_supervised(
    cmd: Command,
    stdout: Stdio,
    stderr: Stdio,
) -> Result<Child, std::io::Error> {
    spawn_confined(cmd, stdout, stderr, None)
}

/// [`spawn_supervised`], inside a jail when `jail` is given (see
/// [`crate::jail`]): the `Child` is then the jail's keeper, which exits as the VMM
/// does; the VMM's own pid comes through the jail's pid pipe.
pub(crate) fn spawn_confined(
    mut cmd: Command,
    stdout: Stdio,
    stderr: Stdio,
    jail: Option<crate::jail::SpawnPlan>,
) -> Result<Child, std::io::Error> {
    let parent = std::process::id() as libc::pid_t;
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
    // system calls (prctl, getppid, and the jail's, prepared beforehand: see
    // `SpawnPlan::enter`); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("owner died before the VMM started"));
            }
            // Own process group, so terminal signals aimed at the owner spare the VM.
            libc::setpgid(0, 0);
            match &jail {
                Some(plan) => plan.enter(),
                None => Ok(()),
            }
        });
    }
    cmd.spawn()
}

/// Converts a process exit status.
pub(crate) fn vm_exit(status: std::process::ExitStatus) -> VmExit {
    use std::os::unix::process::ExitStatusExt;
    VmExit {
        code: status.code(),
        signal: status.signal(),
    }
}

/// Reads RSS and CPU time of `pid` from /proc.
pub(crate) fn proc_stats(pid: u32) -> Result<VmStats, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start past the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = [11usize, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(VmStats {
        pid,
        rss_bytes: rss_kib * 1024,
        cpu_time_ms: ticks * 1000 / hz,
    })
}

/// The last `max` bytes of a file, lossily decoded; empty if it cannot be read.
pub(crate) fn file_tail(path: &Path, max: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max as u64);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_self() {
        let s = proc_stats(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
    }

    #[test]
    fn tail_of_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, "hello world").unwrap();
        assert_eq!(file_tail(&p, 5), "world");
        assert_eq!(file_tail(&p, 100), "hello world");
        assert_eq!(file_tail(&d.path().join("none"), 5), "");
    }

    #[tokio::test]
    async fn child_dies_with_owner_thread_group() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut child = spawn_supervised(cmd, Stdio::null(), Stdio::null()).unwrap();
        let pid = child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        // The death signal is set: SigCgt is unaffected, but the process is ours.
        assert!(status.contains("sleep"));
        child.kill().await.unwrap();
    }
}
