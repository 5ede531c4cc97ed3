//! seccomp: the spec's `linux.seccomp` compiled into a classic BPF filter (by the
//! agent, at Create, so a profile the agent cannot honour fails the create) and
//! loaded by the container process right before its `execve`.
//!
//! The program dispatches on the architecture first (x86_64, plus i386 when the
//! profile lists `SCMP_ARCH_X86`; anything else, x32 included unless listed, is
//! killed, as libseccomp's bad-architecture action does), then finds the call's
//! rules by a binary search on its number (`section`) and tests them: one block
//! per (syscall, rule) with the rule's argument comparisons (all must hold, 64-bit
//! unsigned) and its action. Blocks of stronger actions come first, so where rules
//! overlap the most restrictive applies, as stacked kernel filters would decide.
//! Names the architecture does not know are skipped (and reported), as libseccomp
//! does.

use std::io;
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction as Action, LinuxSeccompFilterFlag as Flag,
    LinuxSeccompOperator as Op, LinuxSyscall,
};
use serde::{Deserialize, Serialize};

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit on a filter's length (BPF_MAXINSNS).
const MAX_INSNS: usize = 4096;

// Classic BPF opcodes.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

// struct seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

// seccomp return values.
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_KILL_THREAD: u32 = 0;
const RET_TRAP: u32 = 0x0003_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_TRACE: u32 = 0x7ff0_0000;
const RET_LOG: u32 = 0x7ffc_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// seccomp(2) filter flags.
const FLAG_TSYNC: u32 = 1;
const FLAG_LOG: u32 = 2;
const FLAG_SPEC_ALLOW: u32 = 4;

/// One `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(C)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A compiled filter, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub insns: Vec<Insn>,
    pub flags: u32,
}

/// What compiling a profile gave: the filter and the warnings to log.
#[derive(Debug)]
pub struct Compiled {
    pub filter: Filter,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0} is not supported (no seccomp notify listener in the guest)")]
    Notify(String),
    #[error("seccomp flag {0} is not supported")]
    Flag(String),
    #[error("seccomp rule for {name}: argument index {index} is out of range (0-5)")]
    ArgIndex { name: String, index: usize },
    #[error("seccomp filter has {0} instructions, more than the kernel's {MAX_INSNS}")]
    TooLong(usize),
    #[error("seccomp profile names no architecture this guest runs (x86_64)")]
    NoArch,
}

/// Where a jump in a block goes: `Rel(n)` skips n instructions of the current
/// comparison, `Pass` ends the comparison (it holds), `Fail` leaves the block.
#[derive(Clone, Copy)]
enum T {
    Rel(u8),
    Pass,
    Fail,
}

struct J {
    code: u16,
    k: u32,
    jt: T,
    jf: T,
}

fn ld(k: u32) -> J {
    J {
        code: LD_W_ABS,
        k,
        jt: T::Rel(0),
        jf: T::Rel(0),
    }
}
fn and(k: u32) -> J {
    J {
        code: AND_K,
        k,
        jt: T::Rel(0),
        jf: T::Rel(0),
    }
}
fn jmp(code: u16, k: u32, jt: T, jf: T) -> J {
    J { code, k, jt, jf }
}

/// The instructions checking one argument comparison.
fn arg_check(index: u32, op: Op, value: u64, value_two: u64) -> Vec<J> {
    let lo = OFF_ARGS + 8 * index;
    let hi = lo + 4;
    let (vh, vl) = ((value >> 32) as u32, value as u32);
    use T::*;
    match op {
        Op::ScmpCmpEq => vec![
            ld(hi),
            jmp(JEQ_K, vh, Rel(0), Fail),
            ld(lo),
            jmp(JEQ_K, vl, Pass, Fail),
        ],
        Op::ScmpCmpNe => vec![
            ld(hi),
            jmp(JEQ_K, vh, Rel(0), Pass),
            ld(lo),
            jmp(JEQ_K, vl, Fail, Pass),
        ],
        Op::ScmpCmpMaskedEq => {
            let (dh, dl) = ((value_two >> 32) as u32, value_two as u32);
            vec![
                ld(hi),
                and(vh),
                jmp(JEQ_K, dh, Rel(0), Fail),
                ld(lo),
                and(vl),
                jmp(JEQ_K, dl, Pass, Fail),
            ]
        }
        Op::ScmpCmpGt | Op::ScmpCmpGe => vec![
            ld(hi),
            jmp(JGT_K, vh, Pass, Rel(0)),
            jmp(JEQ_K, vh, Rel(0), Fail),
            ld(lo),
            jmp(
                if op == Op::ScmpCmpGt { JGT_K } else { JGE_K },
                vl,
                Pass,
                Fail,
            ),
        ],
        Op::ScmpCmpLt | Op::ScmpCmpLe => vec![
            ld(hi),
            jmp(JGT_K, vh, Fail, Rel(0)),
            jmp(JEQ_K, vh, Rel(0), Pass),
            ld(lo),
            jmp(
                if op == Op::ScmpCmpLt { JGE_K } else { JGT_K },
                vl,
                Fail,
                Pass,
            ),
        ],
    }
}

fn action_value(action: Action, errno: Option<u32>) -> Result<u32, SeccompError> {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match action {
        Action::ScmpActAllow => RET_ALLOW,
        Action::ScmpActErrno => RET_ERRNO | errno,
        Action::ScmpActKill | Action::ScmpActKillThread => RET_KILL_THREAD,
        Action::ScmpActKillProcess => RET_KILL_PROCESS,
        Action::ScmpActTrap => RET_TRAP,
        Action::ScmpActLog => RET_LOG,
        Action::ScmpActTrace => RET_TRACE | errno,
        Action::ScmpActNotify => return Err(SeccompError::Notify("SCMP_ACT_NOTIFY".into())),
    })
}

/// Kernel precedence of a return value (higher wins).
fn precedence(ret: u32) -> u8 {
    match ret & 0xffff_0000 {
        RET_KILL_PROCESS => 7,
        RET_KILL_THREAD => 6,
        RET_TRAP => 5,
        RET_ERRNO => 4,
        RET_TRACE => 2,
        RET_LOG => 1,
        _ => 0,
    }
}

/// One rule block before assembly.
struct Block {
    nr: u32,
    checks: Vec<Vec<J>>,
    ret: u32,
}

/// Assembles a block: reload the number, test it, run each comparison, return.
fn assemble(b: &Block, out: &mut Vec<Insn>) {
    let len: usize = 2 + b.checks.iter().map(Vec::len).sum::<usize>() + 1;
    let start = out.len();
    let end = start + len; // the first instruction after the block
    out.push(stmt(LD_W_ABS, OFF_NR));
    let jf = (end - (out.len() + 1)) as u8;
    out.push(Insn {
        code: JEQ_K,
        jt: 0,
        jf,
        k: b.nr,
    });
    for check in &b.checks {
        let check_start = out.len();
        let pass = check_start + check.len();
        for (i, j) in check.iter().enumerate() {
            let pc = check_start + i;
            let off = |t: T| -> u8 {
                let target = match t {
                    T::Rel(n) => pc + 1 + n as usize,
                    T::Pass => pass,
                    T::Fail => end,
                };
                (target - (pc + 1)) as u8
            };
            out.push(Insn {
                code: j.code,
                jt: off(j.jt),
                jf: off(j.jf),
                k: j.k,
            });
        }
    }
    out.push(stmt(RET_K, b.ret));
    debug_assert_eq!(out.len(), end);
}

fn resolve(arch: u32, name: &str) -> Option<u32> {
    match arch {
        AUDIT_ARCH_I386 => syscalls::x86::Sysno::from_str(name)
            .ok()
            .map(|s| s.id() as u32),
        _ => syscalls::x86_64::Sysno::from_str(name)
            .ok()
            .map(|s| s.id() as u32),
    }
}

fn blocks_for(
    arch: u32,
    rules: &[LinuxSyscall],
    default: u32,
    warnings: &mut Vec<String>,
) -> Result<Vec<Block>, SeccompError> {
    let mut blocks = Vec::new();
    let mut unknown = Vec::new();
    for rule in rules {
        let ret = action_value(rule.action(), rule.errno_ret())?;
        let args = rule.args().clone().unwrap_or_default();
        for name in rule.names() {
            for a in &args {
                if a.index() > 5 {
                    return Err(SeccompError::ArgIndex {
                        name: name.clone(),
                        index: a.index(),
                    });
                }
            }
            let Some(nr) = resolve(arch, name) else {
                unknown.push(name.as_str());
                continue;
            };
            if ret == default {
                // Whatever the arguments, the outcome is the default one.
                continue;
            }
            let checks = args
                .iter()
                .map(|a| {
                    arg_check(
                        a.index() as u32,
                        a.op(),
                        a.value(),
                        // Absent (Go's omitempty): 0, as runc reads it.
                        a.value_two().unwrap_or(0),
                    )
                })
                .collect();
            blocks.push(Block { nr, checks, ret });
        }
    }
    if arch == AUDIT_ARCH_X86_64 && !unknown.is_empty() {
        warnings.push(format!(
            "seccomp: syscalls x86_64 does not have, skipped: {}",
            unknown.join(", ")
        ));
    }
    // Stable: within one precedence the profile's order stays.
    blocks.sort_by_key(|b| std::cmp::Reverse(precedence(b.ret)));
    Ok(blocks)
}

/// Compiles the spec's seccomp profile.
pub fn compile(s: &LinuxSeccomp) -> Result<Compiled, SeccompError> {
    let mut warnings = Vec::new();
    let default = action_value(s.default_action(), s.default_errno_ret())?;
    let mut flags = 0;
    for f in s.flags().clone().unwrap_or_default() {
        flags |= match f {
            Flag::SeccompFilterFlagLog => FLAG_LOG,
            Flag::SeccompFilterFlagTsync => FLAG_TSYNC,
            Flag::SeccompFilterFlagSpecAllow => FLAG_SPEC_ALLOW,
            Flag::SeccompFilterFlagWaitKillableRecv => {
                return Err(SeccompError::Flag(f.to_string()))
            }
        };
    }
    if s.listener_path().is_some() {
        warnings.push("seccomp: listenerPath ignored (no notify listener in the guest)".into());
    }
    let archs = s.architectures().clone().unwrap_or_default();
    let native = archs.is_empty()
        || archs
            .iter()
            .any(|a| matches!(a, Arch::ScmpArchNative | Arch::ScmpArchX86_64));
    let x32 = archs.contains(&Arch::ScmpArchX32);
    let i386 = archs.contains(&Arch::ScmpArchX86);
    if !native && !x32 && !i386 {
        return Err(SeccompError::NoArch);
    }
    for a in &archs {
        if !matches!(
            a,
            Arch::ScmpArchNative | Arch::ScmpArchX86_64 | Arch::ScmpArchX86 | Arch::ScmpArchX32
        ) {
            warnings.push(format!(
                "seccomp: architecture {a:?} does not run here; ignored"
            ));
        }
    }
    let rules = s.syscalls().clone().unwrap_or_default();
    let x86_64_blocks = blocks_for(AUDIT_ARCH_X86_64, &rules, default, &mut warnings)?;
    let i386_blocks = if i386 {
        blocks_for(AUDIT_ARCH_I386, &rules, default, &mut warnings)?
    } else {
        Vec::new()
    };

    // Dispatch on the architecture; sections are reached through 32-bit `ja`.
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        Insn {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: AUDIT_ARCH_X86_64,
        },
        stmt(JA, 0), // patched: to the x86_64 section
        Insn {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k: AUDIT_ARCH_I386,
        },
        stmt(JA, 0), // patched: to the i386 section
        stmt(RET_K, RET_KILL_PROCESS),
    ];
    let x86_64_at = p.len();
    p[2].k = (x86_64_at - 3) as u32;
    p.push(stmt(LD_W_ABS, OFF_NR));
    // x32 calls share the x86_64 audit arch, marked by a bit in the number. Rules
    // name x86_64 numbers; an x32 call checked against them would match different
    // calls, so x32 gets the profile's default when listed, else is killed.
    // A permissive default never reaches them: they fail with ENOSYS instead.
    let x32_ret = match (x32, precedence(default) >= precedence(RET_ERRNO)) {
        (false, _) => RET_KILL_PROCESS,
        (true, true) => default,
        (true, false) => RET_ERRNO | libc::ENOSYS as u32,
    };
    p.push(Insn {
        code: JGE_K,
        jt: 0,
        jf: 1,
        k: X32_SYSCALL_BIT,
    });
    p.push(stmt(RET_K, x32_ret));
    if native {
        section::emit(&x86_64_blocks, default, &mut p);
    } else {
        p.push(stmt(RET_K, RET_KILL_PROCESS));
    }
    let i386_at = p.len();
    if i386 {
        p[4].k = (i386_at - 5) as u32;
        p.push(stmt(LD_W_ABS, OFF_NR));
        section::emit(&i386_blocks, default, &mut p);
    } else {
        // The jump lands on the kill right after it.
        p[4].k = 0;
    }
    if p.len() > MAX_INSNS {
        return Err(SeccompError::TooLong(p.len()));
    }
    Ok(Compiled {
        filter: Filter { insns: p, flags },
        warnings,
    })
}

#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const Insn,
}

/// Installs the filter on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`).
/// Needs no_new_privs or CAP_SYS_ADMIN.
pub fn load(f: &Filter) -> io::Result<()> {
    let prog = SockFprog {
        len: f.insns.len() as libc::c_ushort,
        filter: f.insns.as_ptr(),
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads a `struct sock_fprog` (length,
    // pointer) and `len` `struct sock_filter`s (u16, u8, u8, u32: the #[repr(C)]
    // `Insn`); `prog` and `f.insns` are alive across the call and only read.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            f.flags as libc::c_ulong,
            &prog as *const SockFprog,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("loading seccomp filter: {e}"),
        ));
    }
    Ok(())
}

mod section;
#[cfg(test)]
mod tests;
