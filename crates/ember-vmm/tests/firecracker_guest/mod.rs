//! The tiny guest the Firecracker tests boot, and helpers they share.
//!
//! A Linux guest needs more than a nested, paravirtualised KVM may give, so the tests
//! boot a tiny guest generated here: an ELF64 image whose code writes markers to the
//! serial port, spins, and resets the machine through the i8042 controller (which makes
//! Firecracker exit). Firecracker enters an ELF kernel's entry point in 64-bit long mode
//! with the low memory identity-mapped and interrupts off.
//!
//! Each test crate uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ember_vmm::firecracker::FirecrackerVm;
use ember_vmm::{Accel, Vm, VmConfig};

pub const MARKER_1: &str = "EMBER-FC-ONE";
pub const MARKER_2: &str = "EMBER-FC-TWO";

/// Physical (and, identity-mapped, virtual) address the guest code is loaded at: 1 MiB,
/// where Firecracker expects a kernel.
pub const LOAD_ADDR: u64 = 0x10_0000;
/// File offset of the code; page-aligned like the load address.
pub const CODE_OFFSET: u64 = 0x1000;

/// A hand assembler for the few x86-64 instructions the guest needs.
#[derive(Default)]
pub struct Asm {
    pub code: Vec<u8>,
}

impl Asm {
    pub fn pos(&self) -> usize {
        self.code.len()
    }

    /// `mov dx, 0x3f8`: operand-size prefix 66, B8+r (r = 2, dx) with an imm16.
    /// dx then stays the COM1 data port for every `out dx, al` below.
    pub fn dx_com1(&mut self) {
        self.code.extend_from_slice(&[0x66, 0xBA, 0xF8, 0x03]);
    }

    /// `mov al, imm8` (B0 ib) then `out dx, al` (EE): one byte to the serial port.
    pub fn serial_byte(&mut self, b: u8) {
        self.code.extend_from_slice(&[0xB0, b, 0xEE]);
    }

    pub fn serial_str(&mut self, s: &str) {
        for b in s.bytes() {
            self.serial_byte(b);
        }
    }

    /// `mov rcx, imm64`: REX.W (48), B8+r (r = 1, rcx), imm64.
    pub fn mov_rcx(&mut self, v: u64) {
        self.code.extend_from_slice(&[0x48, 0xB9]);
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    /// `mov ebx, imm32`: B8+r (r = 3, ebx), imm32.
    pub fn mov_ebx(&mut self, v: u32) {
        self.code.push(0xBB);
        self.code.extend_from_slice(&v.to_le_bytes());
    }

    /// `dec ebx`: FF /1 with ModRM 11 001 011 = CB.
    pub fn dec_ebx(&mut self) {
        self.code.extend_from_slice(&[0xFF, 0xCB]);
    }

    /// rax = the 64-bit time stamp counter (clobbers rdx):
    /// `rdtsc` (0F 31) leaves it in edx:eax;
    /// `shl rdx, 32` (REX.W C1 /4 ib, ModRM 11 100 010 = E2);
    /// `or rax, rdx` (REX.W 09 /r, ModRM 11 010(rdx) 000(rax) = D0).
    pub fn read_tsc(&mut self) {
        self.code
            .extend_from_slice(&[0x0F, 0x31, 0x48, 0xC1, 0xE2, 0x20, 0x48, 0x09, 0xD0]);
    }

    /// Busy-waits until `ticks` time-stamp-counter ticks have passed (clobbers rax, rcx,
    /// rdx, rsi). Waiting on the TSC rather than counting instructions keeps the delay
    /// in wall time whether the vCPU runs natively or is slowed down by nesting.
    pub fn wait_tsc(&mut self, ticks: u64) {
        self.mov_rcx(ticks);
        self.read_tsc();
        // `mov rsi, rax`: REX.W 89 /r, ModRM 11 000(rax) 110(rsi) = C6. rsi = start.
        self.code.extend_from_slice(&[0x48, 0x89, 0xC6]);
        let again = self.pos();
        self.read_tsc();
        // `sub rax, rsi`: REX.W 29 /r, ModRM 11 110(rsi) 000(rax) = F0. rax = elapsed.
        self.code.extend_from_slice(&[0x48, 0x29, 0xF0]);
        // `cmp rax, rcx`: REX.W 39 /r, ModRM 11 001(rcx) 000(rax) = C8.
        self.code.extend_from_slice(&[0x48, 0x39, 0xC8]);
        // `jb again` (72 cb): elapsed below the wanted ticks, read the TSC again.
        self.short_jump(0x72, again);
    }

    /// A two-byte short jump (`opcode rel8`) back to `target`; rel8 counts from the end
    /// of the jump.
    pub fn short_jump(&mut self, opcode: u8, target: usize) {
        let rel = target as i64 - (self.pos() as i64 + 2);
        let rel = i8::try_from(rel).expect("short jump in range");
        self.code.extend_from_slice(&[opcode, rel as u8]);
    }

    /// `jnz rel8` (75 cb).
    pub fn jnz(&mut self, target: usize) {
        self.short_jump(0x75, target);
    }

    /// `jmp rel8` (EB cb).
    pub fn jmp(&mut self, target: usize) {
        self.short_jump(0xEB, target);
    }

    /// `count` times: wait `ticks` TSC ticks, then print '.'. Counts in ebx, which
    /// the wait leaves alone; dx is reloaded because `rdtsc` overwrote it.
    pub fn dots(&mut self, count: u32, ticks: u64) {
        self.mov_ebx(count);
        let outer = self.pos();
        self.wait_tsc(ticks);
        self.dx_com1();
        self.serial_byte(b'.');
        self.dec_ebx();
        self.jnz(outer);
    }

    /// `mov al, 0xfe` (B0 FE) then `out 0x64, al` (E6 ib): pulse the reset line through
    /// the i8042 command port. Firecracker exits when the guest does this.
    pub fn i8042_reset(&mut self) {
        self.code.extend_from_slice(&[0xB0, 0xFE, 0xE6, 0x64]);
    }

    /// `hlt` (F4) then `jmp` back to it, in case anything wakes the vCPU.
    pub fn halt_forever(&mut self) {
        let hlt = self.pos();
        self.code.push(0xF4);
        self.jmp(hlt);
    }

    /// `jmp $` (EB FE): spin forever.
    pub fn spin_forever(&mut self) {
        let here = self.pos();
        self.jmp(here);
    }
}

/// Wraps `code` in an ELF64 executable with one PT_LOAD segment at [`LOAD_ADDR`].
pub fn elf64(code: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    // ELF header (64 bytes).
    f.extend_from_slice(&[0x7F, b'E', b'L', b'F']); // magic
    f.push(2); // EI_CLASS: ELFCLASS64
    f.push(1); // EI_DATA: little endian
    f.push(1); // EI_VERSION: current
    f.push(0); // EI_OSABI: System V
    f.extend_from_slice(&[0; 8]); // EI_ABIVERSION and padding up to 16 bytes
    f.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    f.extend_from_slice(&0x3Eu16.to_le_bytes()); // e_machine: EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes()); // e_version
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry: first instruction
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff: right after this header
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no section headers
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    assert_eq!(f.len(), 64);
    // Program header (56 bytes).
    f.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    f.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R + X
    f.extend_from_slice(&CODE_OFFSET.to_le_bytes()); // p_offset
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr: where Firecracker loads it
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_filesz
    f.extend_from_slice(&(code.len() as u64).to_le_bytes()); // p_memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    assert_eq!(f.len(), 120);
    f.resize(CODE_OFFSET as usize, 0);
    f.extend_from_slice(code);
    f
}

/// Guest that prints MARKER_1, then `dots` dots `ticks` TSC ticks apart, then
/// MARKER_2, then resets the machine.
pub fn marching_guest(dots: u32, ticks: u64) -> Vec<u8> {
    let mut a = Asm::default();
    a.dx_com1();
    a.serial_str(&format!("{MARKER_1}\n"));
    a.dots(dots, ticks);
    a.serial_str(&format!("\n{MARKER_2}\n"));
    a.i8042_reset();
    a.halt_forever();
    elf64(&a.code)
}

/// Guest that prints MARKER_1 and spins forever, ignoring Ctrl-Alt-Del.
pub fn spinning_guest() -> Vec<u8> {
    let mut a = Asm::default();
    a.dx_com1();
    a.serial_str(&format!("{MARKER_1}\n"));
    a.spin_forever();
    elf64(&a.code)
}

/// Marker the ticking guest prints over and over.
pub const TICK: &str = "EMBER-FC-TICK";

/// Guest that prints MARKER_1, then TICK on a line of its own every `ticks` TSC
/// ticks, forever: output that keeps coming shows it runs (after a restore, too).
pub fn ticking_guest(ticks: u64) -> Vec<u8> {
    let mut a = Asm::default();
    a.dx_com1();
    a.serial_str(&format!("{MARKER_1}\n"));
    let again = a.pos();
    a.wait_tsc(ticks);
    a.dx_com1();
    a.serial_str(&format!("{TICK}\n"));
    a.jmp(again);
    elf64(&a.code)
}

pub fn firecracker_bin() -> Option<PathBuf> {
    let Some(bin) = std::env::var_os("FIRECRACKER_BIN") else {
        eprintln!("FIRECRACKER_BIN is not set: skipping the test against a real Firecracker");
        return None;
    };
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("/dev/kvm cannot be opened: skipping the test against a real Firecracker");
        return None;
    }
    Some(PathBuf::from(bin))
}

pub fn vm_config(dir: &Path, bin: PathBuf, kernel: &[u8], id: &str) -> VmConfig {
    let kernel_path = dir.join("guest.elf");
    std::fs::write(&kernel_path, kernel).unwrap();
    VmConfig {
        id: id.into(),
        state_dir: dir.to_path_buf(),
        vmm_binary: bin,
        kernel: kernel_path,
        initrd: None,
        kernel_args: String::new(),
        vcpus: 1,
        memory_mib: 128,
        accel: Accel::Auto,
        drives: vec![],
        boot_timeout: Duration::from_secs(20),
        shared_dir: None,
        balloon: None,
        ..Default::default()
    }
}

/// Polls the console until `pred` holds; panics with the console after `timeout`.
pub async fn console_until(vm: &FirecrackerVm, timeout: Duration, pred: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let console = vm.console_tail(1 << 20);
        if pred(&console) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "console condition not met within {timeout:?}; console:\n{console}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn console_len(vm: &FirecrackerVm) -> u64 {
    std::fs::metadata(vm.console_path()).unwrap().len()
}

pub fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// A network namespace made for one test (`ip netns add`), deleted on drop.
pub struct TestNetns(pub String);

impl TestNetns {
    pub fn new(tag: &str) -> Self {
        let name = format!("ember-t-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        TestNetns(name)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

pub fn run(bin: &str, args: &[&str]) {
    let out = std::process::Command::new(bin).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
