//! The QEMU command line of an Ember microVM.

use std::ffi::OsString;
use std::path::Path;

use crate::{Accel, TemplateMode, VmConfig};

/// Paths of the sockets and files QEMU uses, all inside the VM's state directory.
#[derive(Debug, Clone)]
pub struct QemuPaths {
    pub qmp: std::path::PathBuf,
    pub agent: std::path::PathBuf,
    pub console: std::path::PathBuf,
    pub log: std::path::PathBuf,
    pub pidfile: std::path::PathBuf,
    /// The socket of the shared directory's file server (a jailed QEMU's).
    pub proxy: std::path::PathBuf,
    /// The guest console goes to QEMU's stdout (drained into a capped log by the
    /// host) instead of straight into `console`.
    pub console_to_stdout: bool,
}

impl QemuPaths {
    pub fn new(state_dir: &Path) -> Self {
        QemuPaths {
            qmp: state_dir.join("qmp.sock"),
            agent: state_dir.join("agent.sock"),
            console: state_dir.join("console.log"),
            log: state_dir.join("vmm.log"),
            pidfile: state_dir.join("qemu.pid"),
            proxy: state_dir.join("9p.sock"),
            console_to_stdout: false,
        }
    }
}

/// Kernel arguments Ember always passes to the guest.
pub fn base_kernel_args(accel: Accel, tsc_khz: Option<u64>) -> String {
    // reboot=t: a guest reboot triple-faults, which -no-reboot turns into an exit.
    // panic=-1: reboot (so exit) at once on panic.
    let mut args = String::from(
        "console=ttyS0 reboot=t panic=-1 quiet loglevel=4 i8042.noaux i8042.nomux i8042.dumbkbd",
    );
    if accel == Accel::Tcg {
        // Under emulation TSC calibration can hang; tell the kernel the rate.
        if let Some(khz) = tsc_khz {
            args.push_str(&format!(" tsc_early_khz={khz}"));
        }
    }
    args
}

/// Builds QEMU's arguments for `config`, running under `accel` (never `Auto`).
pub fn build_args(
    config: &VmConfig,
    accel: Accel,
    paths: &QemuPaths,
    tsc_khz: Option<u64>,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(OsString::from(s));
    push("-name");
    push(&format!("ember-{},debug-threads=on", config.id));
    // Guest RAM of a template lives in a file: shared while the template is built
    // (the file then holds it), private in a clone (its writes stay its own).
    let ram_file = match &config.template {
        Some(TemplateMode::Build {
            memory: Some(path), ..
        }) => Some((path, true)),
        Some(TemplateMode::Restore {
            memory: Some(path), ..
        }) => Some((path, false)),
        _ => None,
    };
    push("-machine");
    let mut machine =
        String::from("microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=on,pcie=off");
    if ram_file.is_some() {
        machine.push_str(&format!(",memory-backend={RAM_BACKEND}"));
    }
    push(&machine);
    if let Some((path, shared)) = ram_file {
        push("-object");
        push(&format!(
            "memory-backend-file,id={RAM_BACKEND},size={}M,mem-path={},share={}",
            config.memory_mib,
            escape_opt(&path.display().to_string()),
            if shared { "on" } else { "off" }
        ));
    }
    if matches!(config.template, Some(TemplateMode::Restore { .. })) {
        // The state arrives over QMP (a descriptor, `migrate-incoming fd:`).
        push("-incoming");
        push("defer");
    }
    match accel {
        Accel::Kvm => {
            push("-accel");
            push("kvm");
            push("-cpu");
            push("host");
        }
        _ => {
            push("-accel");
            if config.jail.is_some() {
                // TCG's translation buffer (1 GiB by default) must fit the jail's
                // memory limit beside QEMU's heap: it is flushed when full.
                push(&format!("tcg,thread=multi,tb-size={JAILED_TB_SIZE_MIB}"));
            } else {
                push("tcg,thread=multi");
            }
            push("-cpu");
            push("max");
        }
    }
    push("-smp");
    push(&config.vcpus.max(1).to_string());
    push("-m");
    push(&format!("{}M", config.memory_mib));
    push("-nodefaults");
    push("-no-user-config");
    push("-nographic");
    push("-no-reboot");
    push("-chardev");
    if paths.console_to_stdout {
        push("stdio,id=console,signal=off");
    } else {
        push(&format!("file,id=console,path={}", paths.console.display()));
    }
    push("-serial");
    push("chardev:console");
    push("-chardev");
    push(&format!(
        "socket,id=qmp,path={},server=on,wait=off",
        paths.qmp.display()
    ));
    push("-mon");
    push("chardev=qmp,mode=control");
    push("-device");
    push("virtio-serial-device,max_ports=2");
    push("-chardev");
    push(&format!(
        "socket,id=agent,path={},server=on,wait=off",
        paths.agent.display()
    ));
    push("-device");
    push(&format!(
        "virtserialport,chardev=agent,name={}",
        AGENT_PORT_NAME
    ));
    push("-device");
    push("virtio-rng-device");
    for (i, d) in config.drives.iter().enumerate() {
        push("-drive");
        push(&format!(
            "id=drive{i},file={},format=raw,if=none,cache=unsafe,aio=threads,readonly={}",
            escape_opt(&d.path.display().to_string()),
            if d.read_only { "on" } else { "off" }
        ));
        push("-device");
        push(&format!("virtio-blk-device,drive=drive{i},serial={}", d.id));
    }
    if let Some(dir) = &config.shared_dir {
        push("-fsdev");
        if config.jail.is_some() {
            // A jailed QEMU has neither the host's files nor the privilege to serve
            // them: the file server (virtfs-proxy-helper, outside the jail) does,
            // over a socket in the jail. (The proxy driver has no inode remapping:
            // see docs/security.md.)
            push(&format!(
                "proxy,id={SHARED_FSDEV},socket={}",
                escape_opt(&paths.proxy.display().to_string())
            ));
        } else {
            push(&format!(
                // Host directories bind-mounted into the share may sit on other
                // filesystems: remap keeps their inode numbers apart in the guest.
                "local,id={SHARED_FSDEV},path={},security_model=passthrough,multidevs=remap",
                escape_opt(&dir.display().to_string())
            ));
        }
        push("-device");
        push(&format!(
            "virtio-9p-device,fsdev={SHARED_FSDEV},mount_tag={}",
            ember_agent_api::SHARED_TAG
        ));
    }
    if let Some(b) = &config.balloon {
        push("-device");
        push(&format!(
            "virtio-balloon-device,id={BALLOON_ID},deflate-on-oom={}",
            if b.deflate_on_oom { "on" } else { "off" }
        ));
    }
    a.extend(nics(config).into_iter().map(OsString::from));
    a.push(OsString::from("-kernel"));
    a.push(config.kernel.clone().into_os_string());
    if let Some(initrd) = &config.initrd {
        a.push(OsString::from("-initrd"));
        a.push(initrd.clone().into_os_string());
    }
    let mut cmdline = base_kernel_args(accel, tsc_khz);
    if !config.kernel_args.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&config.kernel_args);
    }
    a.push(OsString::from("-append"));
    a.push(OsString::from(cmdline));
    a.push(OsString::from("-pidfile"));
    a.push(paths.pidfile.clone().into_os_string());
    if config.jail.is_some() {
        // QEMU's own seccomp filter: no obsolete system calls, no set*id, no
        // fork/exec, no scheduler or affinity changes.
        a.push(OsString::from("-sandbox"));
        a.push(OsString::from(SANDBOX));
    }
    a
}

/// The `-netdev`/`-device` pairs of the VM's NICs: a tap QEMU opens by name in its
/// network namespace (no helper scripts, no vhost: there is no /dev/vhost-net on every
/// host) and a virtio-net MMIO device with the NIC's MAC (and MTU, when set).
pub fn nics(config: &VmConfig) -> Vec<String> {
    let mut a = Vec::new();
    // A template's NICs have no tap yet: each clone connects its own.
    let unplugged = matches!(config.template, Some(TemplateMode::Build { .. }));
    for n in &config.nics {
        if unplugged {
            let mut dev = format!("virtio-net-device,mac={}", n.mac);
            if n.mtu > 0 {
                dev.push_str(&format!(",host_mtu={}", n.mtu));
            }
            a.push("-device".to_string());
            a.push(dev);
            continue;
        }
        a.push("-netdev".to_string());
        a.push(format!(
            "tap,id=net_{},ifname={},script=no,downscript=no,vhost=off",
            n.id, n.tap
        ));
        let mut dev = format!("virtio-net-device,netdev=net_{},mac={}", n.id, n.mac);
        if n.mtu > 0 {
            dev.push_str(&format!(",host_mtu={}", n.mtu));
        }
        a.push("-device".to_string());
        a.push(dev);
    }
    a
}

/// TCG translation buffer of a jailed QEMU, MiB (part of the jail's memory
/// overhead, `ember_vmm::jail::DEFAULT_MEMORY_OVERHEAD_MIB`).
pub const JAILED_TB_SIZE_MIB: u32 = 256;

/// QEMU's `-sandbox` option of a jailed VMM.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// Written at the start of every connection to the agent's virtio-serial port, so the
/// agent can find where a connection's bytes begin (a serial port has no connection
/// boundaries of its own).
pub use ember_agent_api::SERIAL_SYNC;

/// Name of the virtio-serial port the agent serves on.
pub use ember_agent_api::SERIAL_PORT_NAME as AGENT_PORT_NAME;

/// The memory backend of guest RAM kept in a file (templates and clones).
const RAM_BACKEND: &str = "ram0";

/// The fsdev id of the shared directory.
const SHARED_FSDEV: &str = "shared";

/// The device id of the balloon (its QOM path is `/machine/peripheral/<id>`).
pub const BALLOON_ID: &str = "balloon0";

/// QEMU option values escape a comma by doubling it.
fn escape_opt(s: &str) -> String {
    s.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Drive;
    use std::time::Duration;

    fn config() -> VmConfig {
        VmConfig {
            id: "t1".into(),
            state_dir: "/run/x".into(),
            vmm_binary: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinux".into(),
            initrd: Some("/k/initrd".into()),
            kernel_args: "ember.debug=1".into(),
            vcpus: 2,
            memory_mib: 128,
            accel: Accel::Auto,
            drives: vec![Drive {
                id: "rootfs".into(),
                path: "/img/a,b.ext4".into(),
                read_only: true,
            }],
            boot_timeout: Duration::from_secs(10),
            shared_dir: None,
            balloon: None,
            ..Default::default()
        }
    }

    #[test]
    fn tcg_command_line() {
        let c = config();
        let args: Vec<String> =
            build_args(&c, Accel::Tcg, &QemuPaths::new(&c.state_dir), Some(1996249))
                .into_iter()
                .map(|s| s.into_string().unwrap())
                .collect();
        let joined = args.join(" ");
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("file=/img/a,,b.ext4"), "{joined}");
        assert!(joined.contains("readonly=on"));
        assert!(joined.contains("serial=rootfs"));
        assert!(joined.contains("name=ember.agent"));
        let append = &args[args.iter().position(|a| a == "-append").unwrap() + 1];
        assert!(append.contains("tsc_early_khz=1996249"));
        assert!(append.ends_with("ember.debug=1"));
        assert!(!joined.contains("virtio-9p"));
        assert!(!joined.contains("balloon"));
    }

    #[test]
    fn shared_dir_and_balloon() {
        let mut c = config();
        c.shared_dir = Some("/var/x,y/shared".into());
        c.balloon = Some(crate::BalloonConfig {
            amount_mib: 16,
            deflate_on_oom: true,
            stats_interval_s: 1,
        });
        let args: Vec<String> = build_args(&c, Accel::Tcg, &QemuPaths::new(&c.state_dir), None)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let at = |flag: &str, needle: &str| {
            args.windows(2)
                .any(|w| w[0] == flag && w[1].contains(needle))
        };
        assert!(at(
            "-fsdev",
            "local,id=shared,path=/var/x,,y/shared,security_model=passthrough,multidevs=remap"
        ));
        assert!(at(
            "-device",
            "virtio-9p-device,fsdev=shared,mount_tag=ember.shared"
        ));
        assert!(at(
            "-device",
            "virtio-balloon-device,id=balloon0,deflate-on-oom=on"
        ));
    }

    #[test]
    fn nics_become_tap_netdevs_and_virtio_net_devices() {
        let mut c = config();
        assert!(nics(&c).is_empty());
        c.nics = vec![
            crate::Nic {
                id: "eth0".into(),
                tap: "tap0".into(),
                mac: "02:00:0a:58:00:02".into(),
                mtu: 1400,
            },
            crate::Nic {
                id: "eth1".into(),
                tap: "tap1".into(),
                mac: "02:00:0a:58:00:03".into(),
                mtu: 0,
            },
        ];
        assert_eq!(
            nics(&c),
            [
                "-netdev",
                "tap,id=net_eth0,ifname=tap0,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-device,netdev=net_eth0,mac=02:00:0a:58:00:02,host_mtu=1400",
                "-netdev",
                "tap,id=net_eth1,ifname=tap1,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-device,netdev=net_eth1,mac=02:00:0a:58:00:03",
            ]
        );
        let args: Vec<String> = build_args(&c, Accel::Tcg, &QemuPaths::new(&c.state_dir), None)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("ifname=tap1"), "{joined}");
        assert!(joined.find("-netdev").unwrap() < joined.find("-kernel").unwrap());
    }

    #[test]
    fn a_jailed_qemu_gets_its_seccomp_filter_and_console_pipe() {
        let mut c = config();
        c.shared_dir = Some("/shared".into());
        c.jail = Some(Default::default());
        let mut paths = QemuPaths::new(&c.state_dir);
        paths.console_to_stdout = true;
        let args: Vec<String> = build_args(&c, Accel::Tcg, &paths, None)
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains(&format!("-sandbox {SANDBOX}")), "{joined}");
        assert!(joined.contains("-chardev stdio,id=console,signal=off"));
        assert!(
            joined.contains("-accel tcg,thread=multi,tb-size=256"),
            "{joined}"
        );
        assert!(joined.contains("-fsdev proxy,id=shared,socket=/run/x/9p.sock"));
        assert!(
            !build_args(&config(), Accel::Tcg, &QemuPaths::new(&c.state_dir), None)
                .iter()
                .any(|a| a == "-sandbox")
        );
    }

    #[test]
    fn kvm_command_line_has_no_tsc_hint() {
        let c = config();
        let args: Vec<String> = build_args(&c, Accel::Kvm, &QemuPaths::new(&c.state_dir), Some(1))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert!(args.join(" ").contains("-accel kvm -cpu host"));
        assert!(!args.join(" ").contains("tsc_early_khz"));
    }
}
