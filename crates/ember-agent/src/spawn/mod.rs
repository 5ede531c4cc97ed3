//! Creating container processes without forking the multi-threaded agent.
//!
//! The agent runs itself again (`/proc/self/exe __spawn <plan-fd> <report-fd>
//! <start-fd> <console-fd>`) through `std::process::Command`, i.e. a plain fork+exec. That helper
//! is single-threaded, so it may `setns`, join cgroups and `clone` freely. It clones
//! the container process with `CLONE_PARENT`, so the process becomes a child of the
//! agent (whose reaper collects its exit status), reports the pid and exits.
//!
//! The helper's stdin/stdout/stderr are the process's stdio. It reads the JSON
//! [`Plan`] from `plan-fd`. Over `report-fd` (close-on-exec) the helper and the
//! cloned process send lines to the agent:
//!
//! * `pid <n>`   — the process's pid in the agent's pid namespace;
//! * `ready`     — (init only) setup done, waiting on the start pipe;
//! * `log <msg>` — a warning the agent logs;
//! * `error <msg>` — setup or exec failed; the process exits.
//!
//! Terminal processes also get `console-fd`, a unix socket over which the process
//! sends the master of the pty it opened in the container's devpts.
//!
//! One helper is started ahead of time and waits to be handed the descriptors
//! instead ([`ready`]); a helper is forked for a process only when none waits.
//!
//! After a successful `execve` the report pipe reaches EOF. The container init waits
//! for one byte on `start-fd` before its `execve`.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use oci_spec::runtime::{Process, Spec};
use serde::{Deserialize, Serialize};

use crate::container::seccomp::Filter;
use crate::sys;

pub mod ready;

/// The hidden subcommand that runs the spawn helper.
pub const HELPER_ARG: &str = "__spawn";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Plan {
    /// A container's init process: new namespaces, rootfs, mounts, pivot_root.
    Init {
        spec: Box<Spec>,
        rootfs: PathBuf,
        cgroup: Option<PathBuf>,
        terminal: bool,
        /// The guest's metadata directory, bind-mounted read-only into the container.
        #[serde(default)]
        metadata_dir: Option<PathBuf>,
        /// resolv.conf and hosts the agent keeps, bound read-only into the container.
        #[serde(default)]
        name_files: Vec<crate::network::files::NameFile>,

        /// The compiled `linux.seccomp`, loaded right before the execve.
        #[serde(default)]
        seccomp: Option<Filter>,
    },
    /// A process in the namespaces of a running container init.
    Exec {
        process: Box<Process>,
        init_pid: i32,
        cgroup: Option<PathBuf>,
        terminal: bool,
        /// Window size asked for before the start: set on the new pty before exec, so
        /// the program never sees a 0x0 terminal.
        #[serde(default)]
        winsize: Option<(u32, u32)>,
        /// The container's seccomp filter (exec processes get it too).
        #[serde(default)]
        seccomp: Option<Filter>,
    },
}

/// One line a helper or container process reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportLine {
    Pid(i32),
    Ready,
    Log(String),
    Error(String),
    Unknown(String),
}

pub fn parse_report_line(line: &str) -> ReportLine {
    let line = line.trim_end_matches('\n');
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "pid" => rest
            .trim()
            .parse()
            .map(ReportLine::Pid)
            .unwrap_or_else(|_| ReportLine::Unknown(line.into())),
        "ready" => ReportLine::Ready,
        "log" => ReportLine::Log(rest.into()),
        "error" => ReportLine::Error(rest.into()),
        _ => ReportLine::Unknown(line.into()),
    }
}

/// Writes one report line (newlines in `msg` are flattened).
pub fn report(fd: RawFd, word: &str, msg: &str) {
    let msg = msg.replace('\n', " ");
    let line = if msg.is_empty() {
        format!("{word}\n")
    } else {
        format!("{word} {msg}\n")
    };
    let _ = sys::write_all(fd, line.as_bytes());
}

/// The agent's side of a spawned process.
pub struct Spawned {
    /// The helper's pid (reaped by the reaper like any child).
    pub helper_pid: i32,
    pub report: BufReader<File>,
    /// Write end of the start pipe (init only).
    pub start: Option<OwnedFd>,
}

/// What reading the report pipe came to.
#[derive(Debug, Default)]
pub struct ReportOutcome {
    pub pid: Option<i32>,
    pub ready: bool,
    pub error: Option<String>,
    pub eof: bool,
}

/// Reads report lines until `ready` (if `stop_at_ready`), an error or EOF. Blocking.
/// The helper reports the pid after its clone returns while the child reports
/// `ready` on its own: `ready` may come first, and then the pid line is waited for.
pub fn read_report(r: &mut BufReader<File>, stop_at_ready: bool) -> ReportOutcome {
    let mut out = ReportOutcome::default();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => {
                out.eof = true;
                return out;
            }
            Ok(_) => {}
        }
        match parse_report_line(&line) {
            ReportLine::Pid(p) => {
                out.pid = Some(p);
                if stop_at_ready && out.ready {
                    return out;
                }
            }
            ReportLine::Ready => {
                out.ready = true;
                if stop_at_ready && out.pid.is_some() {
                    return out;
                }
            }
            ReportLine::Log(m) => tracing::warn!("spawn: {m}"),
            ReportLine::Error(m) => {
                out.error = Some(m);
                return out;
            }
            ReportLine::Unknown(l) => tracing::warn!("spawn: unexpected report line {l:?}"),
        }
    }
}

/// Starts the helper for `plan` with the given stdio; returns once it reported the
/// pid (or failed). `stdio` are the process's fds 0, 1, 2.
/// `console` is the process's end of the console socket for terminal processes.
pub async fn spawn(
    plan: &Plan,
    stdio: [OwnedFd; 3],
    console: Option<OwnedFd>,
) -> io::Result<(Spawned, ReportOutcome)> {
    let plan_json = serde_json::to_vec(plan)?;
    let (plan_r, plan_w) = sys::pipe()?;
    let (report_r, report_w) = sys::pipe()?;
    let start = match plan {
        Plan::Init { .. } => Some(sys::pipe()?),
        Plan::Exec { .. } => None,
    };
    let start_r_fd = start.as_ref().map_or(-1, |(r, _)| r.as_raw_fd());
    let console_fd = console.as_ref().map_or(-1, |c| c.as_raw_fd());
    let inherit = [
        plan_r.as_raw_fd(),
        report_w.as_raw_fd(),
        start_r_fd,
        console_fd,
    ];
    let handover = ready::Handover {
        stdio: [&stdio[0], &stdio[1], &stdio[2]],
        plan: &plan_r,
        report: &report_w,
        start: start.as_ref().map(|(r, _)| r),
        console: console.as_ref(),
    };
    let helper_pid = match ready::hand_over(&handover) {
        Some(pid) => {
            drop(stdio);
            pid
        }
        None => start_helper(stdio, inherit)?,
    };
    drop(plan_r);
    drop(report_w);
    let (start_r, start_w) = match start {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    drop(start_r);
    drop(console);

    let mut report = BufReader::new(File::from(report_r));
    let stop_at_ready = matches!(plan, Plan::Init { .. });
    let (report, outcome) = tokio::task::spawn_blocking(move || {
        // Feed the plan, then read until the pid (and `ready` for init) arrive.
        let w = File::from(plan_w);
        let write_err = sys::write_all(w.as_raw_fd(), &plan_json).err();
        drop(w);
        let mut outcome = read_report(&mut report, stop_at_ready);
        if let (Some(e), None) = (write_err, &outcome.error) {
            if outcome.pid.is_none() {
                outcome.error = Some(format!("passing the plan to the spawn helper: {e}"));
            }
        }
        (report, outcome)
    })
    .await
    .map_err(io::Error::other)?;
    Ok((
        Spawned {
            helper_pid,
            report,
            start: start_w,
        },
        outcome,
    ))
}

/// Starts a helper for one process (when none waits): fork and exec of the agent,
/// with `stdio` as its fds 0-2 and the `inherit` descriptors left open.
fn start_helper(stdio: [OwnedFd; 3], inherit: [RawFd; 4]) -> io::Result<i32> {
    let args = inherit.map(|fd| fd.to_string());
    exec_helper(&args, stdio.map(Stdio::from), &inherit)
}

/// Runs `ember-agent __spawn <args>` (fork and exec of this binary, environment
/// cleared) with `stdio` as its fds 0-2 and the descriptors `keep` left open in it.
/// Returns its pid; the reaper collects it.
pub(super) fn exec_helper(args: &[String], stdio: [Stdio; 3], keep: &[RawFd]) -> io::Result<i32> {
    let [fd0, fd1, fd2] = stdio;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_ARG)
        .args(args)
        .env_clear()
        .stdin(fd0)
        .stdout(fd1)
        .stderr(fd2);
    let keep = keep.to_vec();
    // SAFETY: the closure runs in the forked child of the multi-threaded agent,
    // before exec. It only calls `sys::set_cloexec` (fcntl F_GETFD/F_SETFD:
    // async-signal-safe, no allocation, no locks) on integers of a vector allocated
    // before the fork, and its error is an OS error code (no allocation either).
    // The fds are open in the child: the caller keeps them open until this returns.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &keep {
                if fd >= 0 {
                    sys::set_cloexec(fd, false)?;
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // Never wait on `child`: the reaper collects the helper.
    Ok(child.id() as i32)
}

/// Entry point of the helper process (`ember-agent __spawn ...`). Never returns.
pub fn helper_main(args: &[String]) -> ! {
    let fd = |i: usize| -> RawFd { args.get(i).and_then(|s| s.parse().ok()).unwrap_or(-1) };
    if args.first().map(String::as_str) == Some(ready::READY_ARG) {
        // Started ahead of time: the descriptors come over the socket (close-on-
        // exec already), with the process's stdio.
        match ready::wait_for_process(fd(1)) {
            Ok(Some((plan_fd, report_fd, start_fd, console_fd))) => {
                run_and_exit(plan_fd, report_fd, start_fd, console_fd)
            }
            Ok(None) => sys::exit_now(0),
            Err(e) => {
                eprintln!("ember-agent {HELPER_ARG}: {e}");
                sys::exit_now(2)
            }
        }
    }
    let (plan_fd, report_fd, start_fd, console_fd) = (fd(0), fd(1), fd(2), fd(3));
    if plan_fd < 0 || report_fd < 0 {
        eprintln!("ember-agent {HELPER_ARG}: internal helper, not for direct use");
        sys::exit_now(2);
    }
    let _ = sys::set_cloexec(report_fd, true);
    for extra in [start_fd, console_fd] {
        if extra >= 0 {
            let _ = sys::set_cloexec(extra, true);
        }
    }
    run_and_exit(plan_fd, report_fd, start_fd, console_fd)
}

fn run_and_exit(plan_fd: RawFd, report_fd: RawFd, start_fd: RawFd, console_fd: RawFd) -> ! {
    let code = match run_helper(plan_fd, report_fd, start_fd, console_fd) {
        Ok(()) => 0,
        Err(e) => {
            report(report_fd, "error", &e.to_string());
            1
        }
    };
    sys::exit_now(code)
}

fn run_helper(
    plan_fd: RawFd,
    report_fd: RawFd,
    start_fd: RawFd,
    console_fd: RawFd,
) -> io::Result<()> {
    let mut buf = Vec::new();
    if let Some(fd) = sys::take_inherited_fd(plan_fd) {
        File::from(fd).read_to_end(&mut buf)?;
    }
    let plan: Plan = serde_json::from_slice(&buf)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad plan: {e}")))?;
    let cgroup = match &plan {
        Plan::Init { cgroup, .. } | Plan::Exec { cgroup, .. } => cgroup.clone(),
    };
    // The helper joins the cgroup and its clone is born there. (Cloning straight
    // into it with clone3's CLONE_INTO_CGROUP measured slower in the guest.)
    if let Some(cg) = &cgroup {
        let pid = std::process::id().to_string();
        std::fs::write(cg.join("cgroup.procs"), &pid).map_err(|e| {
            io::Error::new(e.kind(), format!("joining cgroup {}: {e}", cg.display()))
        })?;
    }
    match &plan {
        Plan::Init { spec, .. } => {
            let flags = crate::container::prepare_init_namespaces(spec, report_fd)?;
            let pid = clone_parent(flags)?;
            if pid == 0 {
                crate::container::init_child(&plan, report_fd, start_fd, console_fd);
            }
            report(report_fd, "pid", &pid.to_string());
        }
        Plan::Exec { init_pid, .. } => {
            crate::container::join_namespaces(*init_pid)?;
            let pid = clone_parent(0)?;
            if pid == 0 {
                crate::container::exec_child(&plan, report_fd, console_fd);
            }
            report(report_fd, "pid", &pid.to_string());
        }
    }
    Ok(())
}

/// `clone()` like fork (no new stack: the child gets a copy of ours), with the
/// agent as the parent of the new process. Returns 0 in the child.
fn clone_parent(ns_flags: libc::c_int) -> io::Result<i32> {
    let flags = (ns_flags | libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: the raw clone syscall with a null stack behaves like fork: the child
    // runs on a copy of this stack and address space, and the null ptid/ctid/tls
    // arguments are unused without CLONE_PARENT_SETTID/CHILD_SETTID/SETTLS. The
    // helper is single-threaded (it runs before any runtime or thread is started),
    // so the child inherits no lock held by another thread and may allocate; it
    // never returns into the caller's frames past `run_helper`, ending in execve or
    // `sys::exit_now`. (libc's clone() wrapper is not used: it needs a new stack.)
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0usize,
        )
    };
    if pid < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("clone: {e}")));
    }
    Ok(pid as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines() {
        assert_eq!(parse_report_line("pid 42\n"), ReportLine::Pid(42));
        assert_eq!(parse_report_line("ready\n"), ReportLine::Ready);
        assert_eq!(
            parse_report_line("error exec foo: not found\n"),
            ReportLine::Error("exec foo: not found".into())
        );
        assert!(matches!(parse_report_line("pid x"), ReportLine::Unknown(_)));
        assert!(matches!(parse_report_line("zzz"), ReportLine::Unknown(_)));
    }

    fn outcome_of(lines: &str, stop_at_ready: bool) -> ReportOutcome {
        let (r, w) = sys::pipe().unwrap();
        let mut w = File::from(w);
        std::io::Write::write_all(&mut w, lines.as_bytes()).unwrap();
        drop(w);
        read_report(&mut BufReader::new(File::from(r)), stop_at_ready)
    }

    /// The child's `ready` may overtake the helper's pid line: a create must still
    /// learn the pid (without it the init's exit is never watched).
    #[test]
    fn ready_before_the_pid_still_yields_the_pid() {
        let o = outcome_of("ready\npid 7\nlater\n", true);
        assert_eq!((o.pid, o.ready, o.eof), (Some(7), true, false));
        let o = outcome_of("pid 7\nready\nlater\n", true);
        assert_eq!((o.pid, o.ready, o.eof), (Some(7), true, false));
        let o = outcome_of("ready\n", true);
        assert_eq!((o.pid, o.ready, o.eof), (None, true, true));
    }
}
