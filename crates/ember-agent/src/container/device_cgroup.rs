//! The device cgroup of cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program, made
//! from the spec's `linux.resources.devices`, attached to the container's cgroup.
//!
//! Rules are matched last first (a later rule overrides an earlier one, as the v1
//! device cgroup's lists behave), and what no rule allows is denied. An allow rule
//! applies when it grants every access asked for; a deny rule when it names any of
//! them. Without rules in the spec the container gets [`DEFAULT_ALLOWED`].
//!
//! Before any rule of the spec, the program denies the devices that lead out of
//! the guest: the agent's channel (virtio-serial ports, hvc consoles) and the
//! guest's consoles (`/dev/console`, tty/ttyS), whose output lands on the host.
//! A privileged spec does not lift that.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: i32 = 1; // BPF_DEVCG_ACC_MKNOD
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// One device rule: type (None: any), major/minor (None: any), access bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub typ: Option<i32>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: i32,
}

const fn c(major: u32, minor: Option<u32>) -> Rule {
    Rule {
        allow: true,
        typ: Some(DEV_CHAR),
        major: Some(major),
        minor,
        access: ACC_MKNOD | ACC_READ | ACC_WRITE,
    }
}

/// Devices a spec without device rules may use: null, zero, full, random,
/// urandom, tty, ptmx and the ptys, and /dev/net/tun (runc's list without its
/// blanket `mknod` of any device).
pub const DEFAULT_ALLOWED: &[Rule] = &[
    c(1, Some(3)),
    c(1, Some(5)),
    c(1, Some(7)),
    c(1, Some(8)),
    c(1, Some(9)),
    c(5, Some(0)),
    c(5, Some(2)),
    c(136, None),
    c(10, Some(200)),
];

fn deny_char(major: u32, minor: Option<u32>) -> Rule {
    Rule {
        allow: false,
        ..c(major, minor)
    }
}

/// Char device majors the kernel registered under `name` in /proc/devices.
fn char_majors(devices: &str, name: &str) -> Vec<u32> {
    devices
        .lines()
        .skip_while(|l| !l.starts_with("Character devices"))
        .take_while(|l| !l.starts_with("Block devices"))
        .filter_map(|l| l.trim().split_once(' '))
        .filter(|(_, n)| *n == name)
        .filter_map(|(m, _)| m.parse().ok())
        .collect()
}

/// Rules that no spec can lift: the agent's ports and the guest's consoles.
pub fn mandatory_denies() -> Vec<Rule> {
    let devices = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let mut v = vec![
        deny_char(4, None),       // tty0-63, ttyS*: the guest's consoles
        deny_char(5, Some(1)),    // /dev/console
        deny_char(229, None),     // hvc (virtio console)
        deny_char(10, Some(241)), // /dev/vhost-vsock
    ];
    for m in char_majors(&devices, "virtio-portsdev") {
        v.push(deny_char(m, None));
    }
    v
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("device rule: bad access {0:?} (letters r, w, m)")]
    Access(String),
    #[error("device rule: bad major/minor {0}")]
    Number(i64),
}

/// Converts the spec's rules. `None` when the spec gives none.
pub fn spec_rules(rules: Option<&Vec<LinuxDeviceCgroup>>) -> Result<Option<Vec<Rule>>, RuleError> {
    let Some(rules) = rules.filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let num = |v: Option<i64>| -> Result<Option<u32>, RuleError> {
        match v {
            None => Ok(None),
            Some(n) if n < 0 => Ok(None), // -1: any
            Some(n) => u32::try_from(n).map(Some).map_err(|_| RuleError::Number(n)),
        }
    };
    let mut out = Vec::new();
    for r in rules {
        let typ = match r.typ() {
            None | Some(LinuxDeviceType::A) => None,
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            // c and u (unbuffered char)
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(DEV_CHAR),
            // FIFOs are not device-cgroup controlled.
            Some(LinuxDeviceType::P) => continue,
        };
        let access_str = r.access().clone().unwrap_or_else(|| "rwm".into());
        let mut access = 0;
        for ch in access_str.chars() {
            access |= match ch {
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                'm' => ACC_MKNOD,
                _ => return Err(RuleError::Access(access_str)),
            };
        }
        if access_str.is_empty() {
            access = ACC_READ | ACC_WRITE | ACC_MKNOD;
        }
        out.push(Rule {
            allow: r.allow(),
            typ,
            major: num(r.major())?,
            minor: num(r.minor())?,
            access,
        });
    }
    Ok(Some(out))
}

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8, // dst (low nibble), src (high nibble)
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const RSH64_K: u8 = 0x77;
const AND64_K: u8 = 0x57;
const JNE_K: u8 = 0x55;
const JEQ_K: u8 = 0x15;
const EXIT: u8 = 0x95;

/// The program: `first` rules are checked first in their order, then `rules`
/// last first; the first that applies decides; none: deny.
pub fn program(first: &[Rule], rules: &[Rule]) -> Vec<Insn> {
    // r1: struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(MOV64_X, 3, 2, 0, 0),
        insn(RSH64_K, 3, 0, 0, 16),     // r3: access
        insn(AND64_K, 2, 0, 0, 0xffff), // r2: type
        insn(LDX_W, 4, 1, 4, 0),        // r4: major
        insn(LDX_W, 5, 1, 8, 0),        // r5: minor
    ];
    for r in first.iter().chain(rules.iter().rev()) {
        let mut block = Vec::new();
        // Jumps to the next rule are patched once the block's length is known.
        if let Some(t) = r.typ {
            block.push(insn(JNE_K, 2, 0, 0, t));
        }
        if let Some(m) = r.major {
            block.push(insn(JNE_K, 4, 0, 0, m as i32));
        }
        if let Some(m) = r.minor {
            block.push(insn(JNE_K, 5, 0, 0, m as i32));
        }
        block.push(insn(MOV64_X, 6, 3, 0, 0));
        if r.allow {
            // Every access asked for is granted: (asked & !granted) == 0.
            block.push(insn(AND64_K, 6, 0, 0, !r.access & 7));
            block.push(insn(JNE_K, 6, 0, 0, 0));
        } else {
            // Any access asked for is denied: (asked & denied) != 0.
            block.push(insn(AND64_K, 6, 0, 0, r.access));
            block.push(insn(JEQ_K, 6, 0, 0, 0));
        }
        block.push(insn(MOV64_K, 0, 0, 0, r.allow as i32));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let n = block.len();
        for (i, ins) in block.iter_mut().enumerate() {
            if ins.code == JNE_K || ins.code == JEQ_K {
                ins.off = (n - i - 1) as i16;
            }
        }
        p.extend(block);
    }
    p.push(insn(MOV64_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Attempts of a program load interrupted by signals.
const LOAD_TRIES: u32 = 10;

/// Size of the verifier log asked for when a load failed (to say why).
const LOG_SIZE: usize = 64 * 1024;

/// Programs already loaded, most recent last: containers of one VM mostly share
/// their device rules, and one loaded program can be attached to many cgroups.
const CACHED_PROGRAMS: usize = 4;

static LOADED: std::sync::Mutex<Vec<(Vec<Insn>, Arc<OwnedFd>)>> = std::sync::Mutex::new(Vec::new());

/// The loaded program for `p`: from the cache, or loaded now (and cached).
fn loaded(p: &[Insn]) -> io::Result<Arc<OwnedFd>> {
    let mut cache = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = cache.iter().position(|(insns, _)| insns.as_slice() == p) {
        let hit = cache.remove(i);
        let fd = hit.1.clone();
        cache.push(hit);
        return Ok(fd);
    }
    let fd = Arc::new(load(p)?);
    if cache.len() >= CACHED_PROGRAMS {
        cache.remove(0);
    }
    cache.push((p.to_vec(), fd.clone()));
    Ok(fd)
}

/// Loads `p`. The verifier writes no log (a log makes it several times slower);
/// a load that fails is tried once more with one, for the error message.
fn load(p: &[Insn]) -> io::Result<OwnedFd> {
    match load_once(p, None) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let mut log = vec![0u8; LOG_SIZE];
            let e = match load_once(p, Some(&mut log)) {
                // Loads the second time (a passing condition): use it.
                Ok(fd) => return Ok(fd),
                Err(again) if again.kind() == e.kind() => again,
                Err(_) => e,
            };
            let msg = String::from_utf8_lossy(&log);
            let msg = msg.trim_end_matches('\0').trim();
            Err(io::Error::new(
                e.kind(),
                format!("loading the device cgroup program: {e} {msg}"),
            ))
        }
    }
}

fn load_once(p: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"ember_device");
    let (log_level, log_size, log_buf) = match log {
        Some(l) => (1, l.len() as u32, l.as_mut_ptr() as u64),
        // The kernel wants no buffer at all with level 0.
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: p.len() as u32,
        insns: p.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name: name,
        ..Default::default()
    };
    // The verifier gives up with EAGAIN when a signal is pending for the thread
    // while it runs (a child's SIGCHLD, say): signals wait on this thread during
    // the load (others take the process's), and a load cut short is tried again.
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
    let mut old = SigSet::empty();
    let blocked = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old));
    let mut tries = 0;
    let fd = loop {
        // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` (a #[repr(C)] prefix of `union
        // bpf_attr`'s load member, its size passed) and through it `insn_cnt` 8-byte
        // `struct bpf_insn`s (`p`) and the NUL-terminated license, and writes at
        // most `log_size` bytes into the log buffer (none without one); all of them
        // outlive the call. It returns a new fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>() as u32,
            )
        };
        tries += 1;
        let again = fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN);
        if !again || tries >= LOAD_TRIES {
            break fd;
        }
    };
    let load_err = io::Error::last_os_error();
    if blocked.is_ok() {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    }
    if fd < 0 {
        return Err(load_err);
    }
    // SAFETY: the kernel just returned `fd`, a new descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Loads the program and attaches it to `cgroup` (replacing one attached before).
pub fn attach(cgroup: &Path, p: &[Insn]) -> io::Result<()> {
    let prog = loaded(p)?;
    let dir = std::fs::File::open(cgroup)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cgroup.display())))?;
    let attr = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: bpf(BPF_PROG_ATTACH) only reads `attr` (a #[repr(C)] prefix of the
    // union's attach member, its size passed); both fds in it are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>() as u32,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "attaching the device cgroup program to {}: {e}",
                cgroup.display()
            ),
        ));
    }
    // The attachment holds the program; our fd may go.
    Ok(())
}

/// Confines `cgroup` to the spec's device rules (or the defaults).
pub fn apply(cgroup: &Path, rules: Option<&Vec<LinuxDeviceCgroup>>) -> io::Result<()> {
    let rules = spec_rules(rules)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let rules = rules.unwrap_or_else(|| DEFAULT_ALLOWED.to_vec());
    attach(cgroup, &program(&mandatory_denies(), &rules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs the program over one device access.
    fn run(p: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> bool {
        let ctx = [((access as u32) << 16) | typ as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            pc += 1;
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            let imm = i.imm as i64 as u64;
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1);
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                MOV64_X => r[dst] = r[src],
                MOV64_K => r[dst] = imm,
                RSH64_K => r[dst] >>= imm,
                AND64_K => r[dst] &= imm,
                JNE_K if r[dst] != imm => pc += i.off as usize,
                JEQ_K if r[dst] == imm => pc += i.off as usize,
                JNE_K | JEQ_K => {}
                EXIT => return r[0] == 1,
                c => panic!("opcode {c:#x}"),
            }
        }
    }

    const RW: i32 = ACC_READ | ACC_WRITE;

    #[test]
    fn containerd_default_rules() {
        // containerd's default spec: deny all, then allow the usual devices.
        let rules: Vec<LinuxDeviceCgroup> = serde_json::from_value(json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
            {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "w"}
        ]))
        .unwrap();
        let rules = spec_rules(Some(&rules)).unwrap().unwrap();
        let p = program(&[deny_char(5, Some(1))], &rules);
        assert!(run(&p, DEV_CHAR, ACC_READ, 1, 3));
        assert!(!run(&p, DEV_CHAR, ACC_WRITE, 1, 3), "later deny wins");
        assert!(!run(&p, DEV_CHAR, RW, 1, 3), "deny of any access asked");
        assert!(run(&p, DEV_CHAR, RW, 136, 7));
        assert!(!run(&p, DEV_CHAR, ACC_MKNOD, 1, 11));
        assert!(!run(&p, DEV_BLOCK, ACC_READ, 254, 0));
        assert!(!run(&p, DEV_CHAR, RW, 5, 1), "mandatory deny first");
    }

    #[test]
    fn defaults_and_allow_all() {
        let p = program(&[deny_char(4, None)], DEFAULT_ALLOWED);
        for (ma, mi) in [(1, 3), (1, 9), (5, 0), (5, 2), (136, 0), (10, 200)] {
            assert!(run(&p, DEV_CHAR, RW | ACC_MKNOD, ma, mi), "{ma}:{mi}");
        }
        assert!(!run(&p, DEV_CHAR, ACC_READ, 1, 11), "kmsg");
        assert!(!run(&p, DEV_CHAR, ACC_MKNOD, 4, 64), "ttyS0");
        assert!(!run(&p, DEV_BLOCK, ACC_MKNOD, 254, 0), "vda");
        let all: Vec<LinuxDeviceCgroup> =
            serde_json::from_value(json!([{"allow": true, "access": "rwm"}])).unwrap();
        let p = program(
            &[deny_char(4, None)],
            &spec_rules(Some(&all)).unwrap().unwrap(),
        );
        assert!(run(&p, DEV_BLOCK, RW, 254, 0));
        assert!(!run(&p, DEV_CHAR, ACC_WRITE, 4, 64), "never the consoles");
        assert_eq!(spec_rules(Some(&vec![])).unwrap(), None);
        let bad: Vec<LinuxDeviceCgroup> =
            serde_json::from_value(json!([{"allow": true, "access": "rwx"}])).unwrap();
        assert!(spec_rules(Some(&bad)).is_err());
    }

    #[test]
    fn proc_devices_majors() {
        let d = "Character devices:\n  1 mem\n  4 tty\n251 virtio-portsdev\n\nBlock devices:\n251 virtio-portsdev\n";
        assert_eq!(char_majors(d, "virtio-portsdev"), vec![251]);
        assert_eq!(char_majors(d, "mem"), vec![1]);
    }

    /// Loads go through while signals keep arriving (each can make the verifier
    /// give up with EAGAIN). Needs root (CAP_BPF); skipped otherwise.
    #[test]
    fn loads_survive_signals() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        extern "C" fn noop(_: libc::c_int) {}
        // SAFETY: installs a handler that does nothing, for a signal nothing else
        // in this test process uses.
        unsafe {
            libc::signal(libc::SIGUSR2, noop as *const () as libc::sighandler_t);
        }
        let me = nix::unistd::gettid().as_raw();
        let pid = std::process::id() as i32;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let blaster = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: tgkill sends a signal to one thread; no memory is touched.
                unsafe {
                    libc::syscall(libc::SYS_tgkill, pid, me, libc::SIGUSR2);
                }
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
        });
        let p = program(&[deny_char(4, None)], DEFAULT_ALLOWED);
        let results: Vec<_> = (0..200).map(|_| load(&p).map(|_| ())).collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        blaster.join().unwrap();
        let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failed.is_empty(),
            "{} of 200 loads failed: {}",
            failed.len(),
            failed[0]
        );
    }

    /// One program serves every cgroup with the same rules: loaded once, the most
    /// recent few kept. Needs root (CAP_BPF); skipped otherwise.
    #[test]
    fn programs_are_loaded_once_per_rule_set() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // Majors no other test uses, so the shared cache holds them only here.
        let p = |major: u32| program(&[deny_char(major, Some(7))], DEFAULT_ALLOWED);
        let first = loaded(&p(240)).unwrap();
        assert!(Arc::ptr_eq(&first, &loaded(&p(240)).unwrap()));
        assert!(!Arc::ptr_eq(&first, &loaded(&p(241)).unwrap()));
        for major in 242..242 + CACHED_PROGRAMS as u32 {
            loaded(&p(major)).unwrap();
        }
        assert!(!Arc::ptr_eq(&first, &loaded(&p(240)).unwrap()));
    }

    /// The verifier, which runs without a log, still says why it refused a program.
    #[test]
    fn a_refused_program_says_why() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        // Returns without setting r0.
        let e = load(&[insn(EXIT, 0, 0, 0, 0)]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("loading the device cgroup program"), "{msg}");
        assert!(msg.contains("R0"), "no verifier log in: {msg}");
    }
}
