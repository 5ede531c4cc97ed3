//! The OCI confinement inside the guest, through Debian's containerd 1.6 and
//! `ctr`: containerd's default seccomp profile (`--seccomp`) and a custom one
//! (`--seccomp-profile`), the device cgroup from containerd's default device rules
//! (mknod and open of what they do not allow, device nodes shipped in an image),
//! the devices no spec may open (the agent's port, the guest's consoles; even
//! `--privileged`), masked paths and containerd's default rlimit.

use std::path::Path;
use std::process::Command;

mod common;

use common::*;

const DEVICE_IMAGE: &str = "docker.io/ember/devices:latest";

fn run_flags(c: &Containerd, id: &str, flags: &[&str], image: &str, script: &str) -> String {
    c.used_ids.lock().unwrap().push(id.to_string());
    let mut a = vec!["run", "--rm", "--runtime", RUNTIME];
    a.extend_from_slice(flags);
    a.extend_from_slice(&[image, id, "sh", "-c", script]);
    let out = c.ctr(&a);
    assert!(
        out.status.success(),
        "{id}: {}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        c.shim_logs()
    );
    text(&out.stdout)
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The busybox image plus device nodes in its root: `/kmsg` (c 1:11), `/disk`
/// (b 254:0) and `/nullcopy` (c 1:3), imported as DEVICE_IMAGE.
fn import_device_image(c: &Containerd) {
    let d = c.dir.path().join("devimg");
    let (x, root) = (d.join("x"), d.join("rootfs"));
    std::fs::create_dir_all(&x).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let base = d.join("base.tar");
    ember_guest::busybox_docker_archive(&base, "docker.io/ember/devbase:latest").unwrap();
    sh(Command::new("tar").arg("-xf").arg(&base).arg("-C").arg(&x));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let layer = manifest[0]["Layers"][0].as_str().unwrap();
    let config_name = manifest[0]["Config"].as_str().unwrap();
    sh(Command::new("tar")
        .arg("-xpf")
        .arg(x.join(layer))
        .arg("-C")
        .arg(&root));
    for (name, kind, major, minor) in [
        ("kmsg", libc::S_IFCHR, 1, 11),
        ("disk", libc::S_IFBLK, 254, 0),
        ("nullcopy", libc::S_IFCHR, 1, 3),
    ] {
        nix::sys::stat::mknod(
            &root.join(name),
            nix::sys::stat::SFlag::from_bits_retain(kind),
            nix::sys::stat::Mode::from_bits_retain(0o666),
            libc::makedev(major, minor),
        )
        .unwrap();
    }
    let new_layer = x.join("devices.tar");
    sh(Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&new_layer)
        .arg("."));
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(x.join(config_name)).unwrap()).unwrap();
    config["rootfs"]["diff_ids"] = serde_json::json!([format!("sha256:{}", sha256(&new_layer))]);
    std::fs::write(x.join("devices.json"), config.to_string()).unwrap();
    let manifest = serde_json::json!([{
        "Config": "devices.json",
        "RepoTags": [DEVICE_IMAGE],
        "Layers": ["devices.tar"]
    }]);
    std::fs::write(x.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = d.join("devices-image.tar");
    sh(Command::new("tar")
        .arg("-C")
        .arg(&x)
        .arg("-cf")
        .arg(&archive)
        .args(["manifest.json", "devices.json", "devices.tar"]));
    let out = c.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "import: {}", text(&out.stderr));
}

#[test]
fn confinement_in_the_guest() {
    let c = Containerd::start();
    import_device_image(&c);

    // containerd's default profile and device rules, on an image shipping nodes.
    let out = run_flags(
        &c,
        "cf-default",
        &["--seccomp"],
        DEVICE_IMAGE,
        "grep Seccomp: /proc/self/status; \
         unshare -U true 2>/dev/null || echo unshare-refused; \
         echo x > /nullcopy && echo nullcopy-ok; \
         dd if=/kmsg of=/dev/null count=1 2>/dev/null || echo kmsg-refused; \
         dd if=/disk of=/dev/null count=1 2>/dev/null || echo disk-refused; \
         [ -e /dev/kmsg ] || [ -e /dev/vda ] || echo no-host-devices; \
         ls /dev | grep -E 'vport|hvc|ttyS|console' || echo no-agent-port; \
         mknod /tmp/kmsg c 1 11 2>/dev/null || echo mknod-kmsg-refused; \
         mknod /tmp/ttyS0 c 4 64 2>/dev/null || echo mknod-ttyS0-refused; \
         v=$(cut -d: -f1 /sys/class/block/vda/dev); \
         mknod /tmp/vda b ${v:-254} 0 2>/dev/null || echo mknod-vda-refused; \
         m=$(awk '$2 == \"virtio-portsdev\" {print $1}' /proc/devices | head -n 1); \
         mknod /tmp/port c ${m:-1} 1 2>/dev/null || echo mknod-port-refused; \
         for f in /proc/kcore /proc/keys /proc/timer_list; do \
           [ -e $f ] && echo \"masked $f $(wc -c < $f)\"; done; \
         for d in /proc/acpi /proc/scsi /sys/firmware; do \
           [ -e $d ] && echo \"masked $d $(ls $d | wc -l)\"; done; \
         echo nofile $(ulimit -Sn) $(ulimit -Hn)",
    );
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        "Seccomp:\t2",
        "unshare-refused",
        "nullcopy-ok",
        "kmsg-refused",
        "disk-refused",
        "no-host-devices",
        "no-agent-port",
        "mknod-kmsg-refused",
        "mknod-ttyS0-refused",
        "mknod-vda-refused",
        "mknod-port-refused",
        "nofile 1024 1024",
    ] {
        assert!(lines.contains(&want), "no {want:?} in:\n{out}");
    }
    let masked: Vec<&&str> = lines.iter().filter(|l| l.starts_with("masked ")).collect();
    assert!(!masked.is_empty(), "{out}");
    for l in masked {
        assert!(l.ends_with(" 0"), "not masked: {l}");
    }

    // A profile of our own: mkdir refused with its errno, the rest allowed.
    let profile = c.dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        })
        .to_string(),
    )
    .unwrap();
    let out = run_flags(
        &c,
        "cf-profile",
        &["--seccomp", "--seccomp-profile", profile.to_str().unwrap()],
        IMAGE,
        "mkdir /tmp/d 2>&1; echo rc=$?; touch /tmp/f && echo touch-ok",
    );
    assert!(out.contains("Operation not permitted"), "{out}");
    assert!(out.contains("rc=1\ntouch-ok"), "{out}");

    // Privileged: every device rule lifted, but never the agent's port or the
    // guest's consoles.
    let out = run_flags(
        &c,
        "cf-privileged",
        &["--privileged"],
        IMAGE,
        "m=$(awk '$2 == \"virtio-portsdev\" {print $1}' /proc/devices | head -n 1); \
         echo port-major=$m; \
         mknod /tmp/port c $m 1 2>/dev/null || echo mknod-port-refused; \
         mknod /tmp/ttyS0 c 4 64 2>/dev/null || echo mknod-ttyS0-refused; \
         mknod /tmp/hvc c 229 0 2>/dev/null || echo mknod-hvc-refused; \
         mknod /tmp/console c 5 1 2>/dev/null || echo mknod-console-refused; \
         mknod /tmp/kmsg c 1 11 && dd if=/tmp/kmsg of=/dev/null count=1 2>/dev/null && echo kmsg-ok",
    );
    assert!(!out.contains("port-major=\n"), "no virtio-portsdev: {out}");
    for want in [
        "mknod-port-refused",
        "mknod-ttyS0-refused",
        "mknod-hvc-refused",
        "mknod-console-refused",
        "kmsg-ok",
    ] {
        assert!(out.lines().any(|l| l == want), "no {want:?} in:\n{out}");
    }
    c.assert_clean();
}
