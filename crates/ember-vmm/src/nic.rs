//! Network interfaces of a VM and the network namespace its VMM runs in: the checks
//! both backends share, and the `setns` the spawned VMM makes before it execs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use tokio::process::Command;

use crate::{Error, Nic};

/// Checks the NICs of a config: tap names the kernel accepts, distinct ids and taps,
/// MAC addresses of six hex octets.
pub(crate) fn check(nics: &[Nic]) -> Result<(), Error> {
    let bad = |m: String| Err(Error::InvalidConfig(m));
    for (i, n) in nics.iter().enumerate() {
        if n.id.is_empty() || !n.id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
            return bad(format!(
                "NIC id {:?}: ids are non-empty and made of letters, digits and '_'",
                n.id
            ));
        }
        // IFNAMSIZ is 16 with the terminating NUL; '/', ':' and whitespace are refused
        // by the kernel; ',' would break QEMU's option syntax.
        if n.tap.is_empty()
            || n.tap.len() > 15
            || n.tap
                .chars()
                .any(|c| c == '/' || c == ':' || c == ',' || c == '=' || c.is_whitespace())
        {
            return bad(format!(
                "NIC {}: tap name {:?} is not a valid interface name (1-15 characters, no '/', ':', ',', '=' or spaces)",
                n.id, n.tap
            ));
        }
        if !valid_mac(&n.mac) {
            return bad(format!(
                "NIC {}: MAC {:?} is not six hex octets (aa:bb:cc:dd:ee:ff)",
                n.id, n.mac
            ));
        }
        if nics[..i].iter().any(|o| o.id == n.id || o.tap == n.tap) {
            return bad(format!(
                "NIC {} (tap {}): two NICs share an id or a tap",
                n.id, n.tap
            ));
        }
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`, hex digits of either case.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Makes the process `cmd` spawns join the network namespace at `netns` before it
/// execs. The namespace is opened here, in the caller, so a missing path is an error
/// of the caller's and the child only makes one system call.
pub(crate) fn join_in_child(cmd: &mut Command, netns: &Path) -> Result<(), Error> {
    let file = std::fs::File::open(netns)
        .map_err(|e| Error::InvalidConfig(format!("network namespace {}: {e}", netns.display())))?;
    let fd: OwnedFd = file.into();
    // SAFETY: the closure runs between fork and exec and only calls setns(2), which
    // is async-signal-safe; it allocates nothing. The descriptor stays open (owned by
    // the closure, close-on-exec) until the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(id: &str, tap: &str, mac: &str) -> Nic {
        Nic {
            id: id.into(),
            tap: tap.into(),
            mac: mac.into(),
            mtu: 0,
        }
    }

    #[test]
    fn good_nics_pass() {
        check(&[
            nic("eth0", "tap0", "02:00:0a:58:00:02"),
            nic("eth1", "tap1", "AA:BB:CC:DD:EE:FF"),
        ])
        .unwrap();
        check(&[]).unwrap();
    }

    #[test]
    fn bad_nics_are_named() {
        for (n, needle) in [
            (nic("", "tap0", "02:00:00:00:00:01"), "NIC id"),
            (nic("a-b", "tap0", "02:00:00:00:00:01"), "NIC id"),
            (nic("n0", "", "02:00:00:00:00:01"), "tap name"),
            (nic("n0", "a,b", "02:00:00:00:00:01"), "tap name"),
            (
                nic("n0", "0123456789abcdef", "02:00:00:00:00:01"),
                "tap name",
            ),
            (nic("n0", "tap0", "02:00:00:00:00"), "MAC"),
            (nic("n0", "tap0", "02:00:00:00:00:zz"), "MAC"),
        ] {
            let e = check(&[n]).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = check(&[
            nic("n0", "tap0", "02:00:00:00:00:01"),
            nic("n1", "tap0", "02:00:00:00:00:02"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("share"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_namespace_is_refused_before_spawning() {
        let mut cmd = Command::new("true");
        let e = join_in_child(&mut cmd, Path::new("/nonexistent/netns"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/netns"), "{e}");
    }

    /// The child really runs in the namespace it was given (here: this process's own,
    /// compared by inode).
    #[tokio::test]
    async fn the_child_joins_the_namespace() {
        let mut cmd = Command::new("readlink");
        cmd.arg("/proc/self/ns/net");
        join_in_child(&mut cmd, Path::new("/proc/self/ns/net")).unwrap();
        let out = cmd.output().await.unwrap();
        assert!(out.status.success());
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            mine.display().to_string()
        );
    }
}
