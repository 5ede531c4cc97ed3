//! The compiled filters run by a small classic BPF interpreter.

use super::*;
use serde_json::json;

/// Runs a classic BPF seccomp program over (arch, nr, args).
fn run(p: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let word = |off: u32| -> u32 {
        match off {
            OFF_NR => nr,
            OFF_ARCH => arch,
            o if o >= OFF_ARGS => {
                let i = ((o - OFF_ARGS) / 8) as usize;
                if (o - OFF_ARGS).is_multiple_of(8) {
                    args[i] as u32
                } else {
                    (args[i] >> 32) as u32
                }
            }
            _ => panic!("load at {off}"),
        }
    };
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let i = p[pc];
        pc += 1;
        let cond = |c: bool| if c { i.jt as usize } else { i.jf as usize };
        match i.code {
            LD_W_ABS => a = word(i.k),
            AND_K => a &= i.k,
            JA => pc += i.k as usize,
            JEQ_K => pc += cond(a == i.k),
            JGT_K => pc += cond(a > i.k),
            JGE_K => pc += cond(a >= i.k),
            RET_K => return i.k,
            c => panic!("opcode {c:#x}"),
        }
    }
}

fn profile(v: serde_json::Value) -> LinuxSeccomp {
    serde_json::from_value(v).unwrap()
}

fn nr(name: &str) -> u32 {
    resolve(AUDIT_ARCH_X86_64, name).unwrap()
}

const X: u32 = AUDIT_ARCH_X86_64;

#[test]
fn default_errno_and_named_rules() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}
        ]
    }));
    let c = compile(&p).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let f = &c.filter.insns;
    assert_eq!(run(f, X, nr("mkdir"), [0; 6]), RET_ERRNO | 13);
    assert_eq!(run(f, X, nr("mkdirat"), [0; 6]), RET_ERRNO | 13);
    assert_eq!(run(f, X, nr("reboot"), [0; 6]), RET_KILL_PROCESS);
    assert_eq!(run(f, X, nr("getpid"), [0; 6]), RET_ALLOW);
    assert_eq!(run(f, X, nr("read"), [0; 6]), RET_ALLOW);
    // Other architectures and x32 calls are killed when not listed.
    assert_eq!(run(f, AUDIT_ARCH_I386, 39, [0; 6]), RET_KILL_PROCESS);
    assert_eq!(run(f, X, X32_SYSCALL_BIT | 39, [0; 6]), RET_KILL_PROCESS);
}

#[test]
fn argument_comparisons() {
    let big = 0x1_0000_0005u64;
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 0x7E020000u64, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["read"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 2, "value": big, "op": "SCMP_CMP_LT"}]},
            {"names": ["write"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 2, "value": big, "op": "SCMP_CMP_GE"},
                      {"index": 0, "value": 1, "op": "SCMP_CMP_NE"}]},
            {"names": ["pread64"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 1, "value": big, "op": "SCMP_CMP_LE"}]},
            {"names": ["pwrite64"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 5, "value": big, "op": "SCMP_CMP_GT"}]}
        ]
    }));
    let f = compile(&p).unwrap().filter.insns;
    let deny = RET_ERRNO | 1;
    let a0 = |v: u64| [v, 0, 0, 0, 0, 0];
    assert_eq!(run(&f, X, nr("personality"), a0(8)), RET_ALLOW);
    assert_eq!(run(&f, X, nr("personality"), a0(8 | 1 << 32)), deny);
    assert_eq!(run(&f, X, nr("personality"), a0(9)), deny);
    assert_eq!(run(&f, X, nr("clone"), a0(libc::SIGCHLD as u64)), RET_ALLOW);
    assert_eq!(
        run(&f, X, nr("clone"), a0(libc::CLONE_NEWUSER as u64)),
        deny
    );
    let a2 = |v: u64| [1, 0, v, 0, 0, 0];
    for (v, lt) in [
        (0, true),
        (5, true),
        (big - 1, true),
        (big, false),
        (u64::MAX, false),
    ] {
        let want = if lt { RET_ALLOW } else { deny };
        assert_eq!(run(&f, X, nr("read"), a2(v)), want, "read {v:#x}");
        // write: >= and fd != 1 (fd is 1 here: always denied), fd 2 follows >=.
        assert_eq!(run(&f, X, nr("write"), a2(v)), deny, "write fd 1 {v:#x}");
        let want = if lt { deny } else { RET_ALLOW };
        assert_eq!(
            run(&f, X, nr("write"), [2, 0, v, 0, 0, 0]),
            want,
            "write {v:#x}"
        );
    }
    for (v, le) in [(0, true), (big, true), (big + 1, false), (1 << 33, false)] {
        let want = if le { RET_ALLOW } else { deny };
        assert_eq!(run(&f, X, nr("pread64"), [0, v, 0, 0, 0, 0]), want);
        let want = if le { deny } else { RET_ALLOW };
        assert_eq!(run(&f, X, nr("pwrite64"), [0, 0, 0, 0, 0, v]), want);
    }
    // x32 listed: the (denying) default.
    assert_eq!(run(&f, X, X32_SYSCALL_BIT | 39, [0; 6]), deny);
}

#[test]
fn stronger_actions_first_and_bad_profiles() {
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["unshare"], "action": "SCMP_ACT_LOG"},
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": libc::CLONE_NEWUSER as u64,
                       "valueTwo": libc::CLONE_NEWUSER as u64, "op": "SCMP_CMP_MASKED_EQ"}]}
        ],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"]
    }));
    let c = compile(&p).unwrap();
    assert_eq!(c.filter.flags, FLAG_LOG);
    let f = &c.filter.insns;
    let u = nr("unshare");
    assert_eq!(
        run(f, X, u, [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
        RET_ERRNO | libc::EPERM as u32
    );
    assert_eq!(
        run(f, X, u, [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0]),
        RET_LOG
    );

    let notify = profile(json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
    assert!(matches!(compile(&notify), Err(SeccompError::Notify(_))));
    let idx = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}));
    assert!(matches!(compile(&idx), Err(SeccompError::ArgIndex { .. })));
    let arch =
        profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"]}));
    assert!(matches!(compile(&arch), Err(SeccompError::NoArch)));
}

#[test]
fn every_syscall_through_the_search() {
    // Each x86_64 call by its number: allowed, an errno of its own, killed, allowed
    // only with arg0 == its number, or left to the default.
    let mut rules = Vec::new();
    let mut want = std::collections::HashMap::new();
    let mut named = 0;
    for n in 0..470u32 {
        let Some(s) = syscalls::x86_64::Sysno::new(n as usize) else {
            continue;
        };
        named += 1;
        let (rule, ret) = match n % 5 {
            0 => (
                json!({"names": [s.name()], "action": "SCMP_ACT_ALLOW"}),
                RET_ALLOW,
            ),
            1 => (
                json!({"names": [s.name()], "action": "SCMP_ACT_ERRNO", "errnoRet": n % 97 + 1}),
                RET_ERRNO | (n % 97 + 1),
            ),
            2 => (
                json!({"names": [s.name()], "action": "SCMP_ACT_KILL_PROCESS"}),
                RET_KILL_PROCESS,
            ),
            3 => (
                json!({"names": [s.name()], "action": "SCMP_ACT_ALLOW",
                       "args": [{"index": 0, "value": n, "op": "SCMP_CMP_EQ"}]}),
                RET_ALLOW,
            ),
            _ => continue,
        };
        rules.push(rule);
        want.insert(n, ret);
    }
    assert!(named > 300, "{named}");
    let p = profile(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 99,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules
    }));
    let f = compile(&p).unwrap().filter.insns;
    assert!(f.len() < MAX_INSNS, "{}", f.len());
    let deny = RET_ERRNO | 99;
    for n in 0..500u32 {
        let w = want.get(&n).copied().unwrap_or(deny);
        let args = [n as u64, 0, 0, 0, 0, 0];
        assert_eq!(run(&f, X, n, args), w, "nr {n}");
        if n % 5 == 3 && want.contains_key(&n) {
            assert_eq!(
                run(&f, X, n, [n as u64 + 1, 0, 0, 0, 0, 0]),
                deny,
                "nr {n} arg"
            );
        }
    }
}
