//! PID 1 duties: the early mounts, the console, the boot probe and power-off.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::runtime::Agent;
use crate::sys;

/// Value of `key=value` on a kernel command line (the last one wins, as the kernel
/// does for its own parameters). A bare `key` yields an empty value.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    let mut found = None;
    for word in split_cmdline(cmdline) {
        match word.split_once('=') {
            Some((k, v)) if k == key => found = Some(v.to_string()),
            None if word == key => found = Some(String::new()),
            _ => {}
        }
    }
    found
}

/// Splits a command line at spaces, keeping double-quoted parts together.
fn split_cmdline(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Mounts `fstype` at `target` unless a filesystem of that type is already there.
fn mount_fs(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) {
    mount_fs_with(src, target, fstype, flags, &[data]);
}

/// [`mount_fs`] with the first of `datas` the kernel takes (newer options first,
/// what older kernels know last).
fn mount_fs_with(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, datas: &[&str]) {
    let t = Path::new(target);
    let magic = match fstype {
        "proc" => 0x9fa0,
        "sysfs" => 0x6265_6572,
        "devtmpfs" | "tmpfs" => 0x0102_1994,
        "devpts" => 0x1cd1,
        "cgroup2" => sys::CGROUP2_MAGIC,
        _ => -1,
    };
    // A tmpfs on /dev/shm sits on the devtmpfs (also tmpfs magic): only trust the
    // magic for a mount point, i.e. when the parent is another filesystem.
    let parent_magic = t.parent().and_then(|p| sys::fs_magic(p).ok());
    if let Ok(m) = sys::fs_magic(t) {
        // A proc of another pid namespace (PID 1 of a nested namespace) does not do.
        let ours = fstype != "proc"
            || std::fs::read_link("/proc/self")
                .is_ok_and(|p| p.to_str() == Some(&std::process::id().to_string()));
        if m == magic && parent_magic != Some(m) && ours {
            return;
        }
    }
    if let Err(e) = std::fs::create_dir_all(t) {
        eprintln!("ember-agent: mounting {fstype} on {target}: {e}");
        return;
    }
    let mut last = None;
    for data in datas {
        match sys::mount(Some(src), t, Some(fstype), flags, Some(data)) {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        eprintln!("ember-agent: mounting {fstype} on {target}: {e}");
    }
}

/// Makes sure fds 0, 1 and 2 are the console (an initramfs without /dev/console
/// leaves PID 1 without any).
fn attach_console() {
    if sys::is_open(2) && sys::is_open(1) {
        return;
    }
    // Not close-on-exec: it may itself become one of fds 0-2.
    let Ok(fd) = nix::fcntl::open(
        c"/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    ) else {
        return;
    };
    let raw = fd.as_raw_fd();
    for t in 0..3 {
        if raw != t {
            let _ = sys::dup_onto_stdio(raw, t);
        }
    }
    if raw <= 2 {
        // It is one of the console fds now: keep it open.
        let _ = fd.into_raw_fd();
    }
}

/// Set in the environment once PID 1 runs from its tmpfs root.
const SWITCHED_ENV: &str = "EMBER_AGENT_ROOT_SWITCHED";

/// The kernel starts init on the initramfs ("rootfs"), which pivot_root cannot leave,
/// and containers are entered with pivot_root. So PID 1 first moves onto a tmpfs root
/// (as switch_root does): copies itself there, frees the initramfs copy, makes the
/// tmpfs `/` and executes itself again from it.
fn leave_initramfs() -> io::Result<()> {
    if std::env::var_os(SWITCHED_ENV).is_some() || !Path::new("/init").is_file() {
        return Ok(());
    }
    std::fs::create_dir_all("/newroot")?;
    sys::mount(
        Some("tmpfs"),
        Path::new("/newroot"),
        Some("tmpfs"),
        0,
        Some("mode=0755"),
    )?;
    for d in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        std::fs::create_dir_all(Path::new("/newroot").join(d))?;
    }
    std::fs::copy("/init", "/newroot/init")?;
    let _ = std::fs::remove_file("/init");
    std::env::set_current_dir("/newroot")?;
    sys::mount(Some("."), Path::new("/"), None, libc::MS_MOVE, None)?;
    std::os::unix::fs::chroot(".")?;
    std::env::set_current_dir("/")?;
    let args: Vec<String> = std::env::args().collect();
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new("/init")
            .args(&args[1..])
            .env(SWITCHED_ENV, "1"),
    );
    Err(err)
}

/// Early boot as PID 1 (best effort: failures are reported on the console).
/// Returns the kernel command line.
pub fn pid1_setup() -> io::Result<String> {
    leave_initramfs()?;
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    mount_fs("proc", "/proc", "proc", nosuid_nodev | libc::MS_NOEXEC, "");
    mount_fs("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    attach_console();
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(word) = cmdline_value(&cmdline, ember_agent_api::CMDLINE_PROBE) {
        let mut out = io::stdout();
        let _ = writeln!(out, "ember-probe: {word}");
        let _ = out.flush();
        power_off();
    }
    mount_fs("sysfs", "/sys", "sysfs", nosuid_nodev | libc::MS_NOEXEC, "");
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    );
    let ptmx = Path::new("/dev/ptmx");
    if std::fs::symlink_metadata(ptmx).is_ok_and(|m| !m.file_type().is_symlink()) {
        let _ = std::fs::remove_file(ptmx);
    }
    if std::fs::symlink_metadata(ptmx).is_err() {
        symlink("pts/ptmx", ptmx)?;
    }
    mount_fs("shm", "/dev/shm", "tmpfs", nosuid_nodev, "mode=1777");
    mount_fs("tmpfs", "/run", "tmpfs", nosuid_nodev, "mode=0755");
    mount_fs("tmpfs", "/tmp", "tmpfs", nosuid_nodev, "mode=1777");
    // favordynmods (Linux 6.0+): moving a process into a cgroup and enabling
    // controllers, done at every container start, no longer wait for an RCU grace
    // period (tens of milliseconds in an emulated guest); forks and exits pay a
    // little instead.
    mount_fs_with(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev | libc::MS_NOEXEC,
        &["nsdelegate,favordynmods", "nsdelegate"],
    );
    let hostname = cmdline_value(&cmdline, "ember.hostname")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ember".into());
    let _ = nix::unistd::sethostname(&hostname);
    // Containers share the guest's network: localhost must work in each.
    crate::network::loopback_up();
    Ok(cmdline)
}

/// Mounts the host's shared directory (virtio-9p, tag `SHARED_TAG`) at
/// `SHARED_GUEST_DIR` when the VM has one, with `SHARED_9P_OPTIONS` or those of
/// `ember.shared_opts=` on the kernel command line. Best effort: a failure is
/// logged. True when it is mounted or the VM has none.
pub fn mount_shared_dir() -> bool {
    let Some(dev) = find_9p_tag(ember_agent_api::SHARED_TAG) else {
        return true;
    };
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let opts = cmdline_value(&cmdline, "ember.shared_opts")
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| SHARED_9P_OPTIONS.to_string());
    let target = Path::new(ember_agent_api::SHARED_GUEST_DIR);
    let res = std::fs::create_dir_all(target).and_then(|_| {
        sys::mount(
            Some(ember_agent_api::SHARED_TAG),
            target,
            Some("9p"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some(&opts),
        )
    });
    match res {
        Ok(()) => {
            tracing::info!(
                "shared directory ({dev}) mounted at {} ({opts})",
                target.display()
            );
            true
        }
        Err(e) => {
            tracing::error!("mounting the shared directory ({dev}): {e}");
            false
        }
    }
}

/// 9p options of the shared directory: no caching, so each side sees the other's
/// writes at once; the largest message size virtio-9p takes (125 pages: the kernel
/// clamps bigger values to it).
pub const SHARED_9P_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=512000,cache=none";

/// The virtio device whose 9p mount tag is `tag`.
fn find_9p_tag(tag: &str) -> Option<String> {
    let rd = std::fs::read_dir("/sys/bus/virtio/drivers/9pnet_virtio").ok()?;
    rd.flatten().find_map(|e| {
        let t = std::fs::read_to_string(e.path().join("mount_tag")).ok()?;
        (t.trim_end_matches(['\0', '\n']) == tag)
            .then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// sync and power off at once. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // reboot() only fails without privilege; there is nothing left to do.
    loop {
        nix::unistd::pause();
    }
}

/// The Shutdown call: kill the containers, sync, unmount, power off (as PID 1) or
/// exit (on a host).
pub async fn shutdown(agent: &Agent) {
    tracing::info!("shutting down");
    agent.remove_all().await;
    nix::unistd::sync();
    if agent.is_pid1() {
        for m in ["/run", "/tmp"] {
            let _ = sys::umount(Path::new(m), libc::MNT_DETACH);
        }
        power_off();
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        let c = "console=ttyS0 quiet ember.probe=kvm panic=-1 x=\"a b\" ember.flag\n";
        assert_eq!(cmdline_value(c, "ember.probe").as_deref(), Some("kvm"));
        assert_eq!(cmdline_value(c, "x").as_deref(), Some("a b"));
        assert_eq!(cmdline_value(c, "ember.flag").as_deref(), Some(""));
        assert_eq!(cmdline_value(c, "ember"), None);
        assert_eq!(cmdline_value("a=1 a=2", "a").as_deref(), Some("2"));
        assert_eq!(cmdline_value("", "a"), None);
    }
}
