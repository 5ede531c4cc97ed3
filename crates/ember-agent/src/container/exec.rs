//! The process's attributes (rlimits, user, capabilities, cwd) and its execve.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use nix::unistd::{AccessFlags, Gid, Uid};
use oci_spec::runtime::Process;

use super::caps::{apply_caps, drop_bounding};
use super::err;
use super::seccomp::Filter;
use crate::sys::{cpath, cstr};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Looks `name` up in `PATH` (as `execvp` would, with the container's PATH).
pub fn resolve_executable(
    name: &str,
    path_var: &str,
    is_exec: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    path_var
        .split(':')
        .map(|d| if d.is_empty() { "." } else { d })
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exec(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file()).unwrap_or(false)
        && nix::unistd::access(p, AccessFlags::X_OK).is_ok()
}

/// Applies the OCI process attributes and execs. Returns only on failure.
/// The executable of a process: its first argument looked up in its own `PATH`.
pub(super) fn find_executable(p: &Process) -> io::Result<PathBuf> {
    let args = p.args().clone().unwrap_or_default();
    let Some(name) = args.first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "process.args is empty",
        ));
    };
    let env = p.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    if name.starts_with('/') && !Path::new(name).exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("exec {name:?}: no such file or directory"),
        ));
    }
    resolve_executable(name, path_var, is_executable).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("exec {name:?}: executable file not found in $PATH"),
        )
    })
}

pub(super) fn exec_process(p: &Process, seccomp: Option<&Filter>) -> io::Error {
    match exec_process_inner(p, seccomp) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn exec_process_inner(
    p: &Process,
    seccomp: Option<&Filter>,
) -> io::Result<std::convert::Infallible> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "process.args is empty",
        ));
    }
    super::rlimits::apply(p)?;
    if let Some(adj) = p.oom_score_adj() {
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }
    let nnp = p.no_new_privileges().unwrap_or(false);
    if let (Some(f), false) = (seccomp, nnp) {
        // Without no_new_privs loading needs CAP_SYS_ADMIN, held only until the
        // capabilities are set: load now, as runc does; what follows (setuid,
        // capset, execve) must be allowed by the profile.
        super::seccomp::load(f)?;
    }
    let user = p.user();
    let cwd = p.cwd().clone();
    // chdir as root first (the user may not be able to reach it), again after setuid.
    let _ = std::env::set_current_dir(&cwd);
    if let Some(caps) = p.capabilities() {
        // Keep the permitted set across setuid; capset below trims it.
        let _ = nix::sys::prctl::set_keepcaps(true);
        drop_bounding(caps);
    }
    let gids: Vec<Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    nix::unistd::setgroups(&gids).map_err(|e| err("setgroups", e.into()))?;
    let (gid, uid) = (Gid::from_raw(user.gid()), Uid::from_raw(user.uid()));
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| err("setgid", e.into()))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| err("setuid", e.into()))?;
    if let Some(caps) = p.capabilities() {
        apply_caps(caps)?;
    }
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask as libc::mode_t));
    }
    if !cwd.as_os_str().is_empty() {
        std::env::set_current_dir(&cwd).map_err(|e| err(format!("chdir {}", cwd.display()), e))?;
    }
    if nnp {
        nix::sys::prctl::set_no_new_privs().map_err(|e| err("no_new_privs", e.into()))?;
    }
    let env = p.env().clone().unwrap_or_default();
    let exe = find_executable(p)?;
    let c_exe = cpath(&exe)?;
    let c_args: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?;
    let c_env: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<io::Result<_>>()?;
    if let (Some(f), true) = (seccomp, nnp) {
        // Last, so that only the execve runs under the filter.
        super::seccomp::load(f)?;
    }
    let Err(e) = nix::unistd::execve(&c_exe, &c_args, &c_env);
    Err(err(format!("exec {}", exe.display()), e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_lookup() {
        let found = resolve_executable("sh", "/nope:/bin", |p| p == Path::new("/bin/sh"));
        assert_eq!(found, Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve_executable("sh", "/nope", |_| false), None);
        assert_eq!(
            resolve_executable("./x", "/bin", |_| false),
            Some(PathBuf::from("./x"))
        );
    }
}
