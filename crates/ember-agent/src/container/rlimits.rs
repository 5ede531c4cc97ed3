//! `process.rlimits`: names checked at Create, limits set before the execve.

use std::io;

use oci_spec::runtime::{PosixRlimit, Process};

use super::err;
use crate::sys::check;

fn resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn name(rl: &PosixRlimit) -> String {
    serde_json::to_value(rl.typ())
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Refuses unknown limits and a soft limit above the hard one (at Create).
pub fn check_spec(p: &Process) -> Result<(), String> {
    for rl in p.rlimits().clone().unwrap_or_default() {
        let n = name(&rl);
        if resource(&n).is_none() {
            return Err(format!("rlimit {n:?} is not known"));
        }
        if rl.soft() > rl.hard() {
            return Err(format!(
                "rlimit {n}: soft limit {} above hard limit {}",
                rl.soft(),
                rl.hard()
            ));
        }
    }
    Ok(())
}

/// Sets the process's limits.
pub(super) fn apply(p: &Process) -> io::Result<()> {
    for rl in p.rlimits().clone().unwrap_or_default() {
        let n = name(&rl);
        let Some(res) = resource(&n) else { continue };
        let lim = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        // SAFETY: setrlimit only reads `lim`, a live rlimit.
        check(unsafe { libc::setrlimit(res, &lim) })
            .map_err(|e| err(format!("setrlimit {n}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_at_create() {
        let p = |v: serde_json::Value| -> Process {
            serde_json::from_value(
                serde_json::json!({"cwd": "/", "user": {"uid": 0, "gid": 0}, "rlimits": v}),
            )
            .unwrap()
        };
        assert!(check_spec(&p(
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}])
        ))
        .is_ok());
        let e = check_spec(&p(
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 30, "hard": 20}]),
        ))
        .unwrap_err();
        assert!(e.contains("above"), "{e}");
    }
}
