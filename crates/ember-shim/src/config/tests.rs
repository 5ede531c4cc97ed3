use super::*;

const HOST: Host = Host {
    cpus: 4,
    memory_mib: 8192,
};

fn parse(text: &str) -> Result<RuntimeConfig, ConfigError> {
    RuntimeConfig::parse(Path::new("/etc/ember/runtime.toml"), text, &HOST)
}

fn message(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn file_and_annotations() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("runtime.toml");
    std::fs::write(
        &p,
        "vcpus = 2\nmemory_mib = 512\naccel = \"tcg\"\nkernel_args = \"quiet\"\n",
    )
    .unwrap();
    let c = RuntimeConfig::load_from(&p).unwrap();
    assert_eq!((c.vcpus, c.memory_mib, c.accel), (2, 512, Accel::Tcg));
    assert_eq!(c.path.as_deref(), Some(p.as_path()));
    let mut ann = HashMap::new();
    ann.insert(annotation::MEMORY_MIB.to_string(), "1024".to_string());
    ann.insert(annotation::KERNEL_ARGS.to_string(), "x=1".to_string());
    let c = c.with_annotations(&ann, &HOST).unwrap();
    assert_eq!(c.memory_mib, 1024);
    assert_eq!(c.kernel_args, "quiet x=1");
    ann.insert(annotation::VCPUS.to_string(), "zero".to_string());
    assert!(c.with_annotations(&ann, &HOST).is_err());
}

#[test]
fn every_key_is_read() {
    let text = KEYS
        .iter()
        .map(|k| {
            let v = match *k {
                "vmm" => "\"firecracker\"",
                "accel" => "\"kvm\"",
                "vcpus" => "3",
                "memory_mib" => "300",
                "guest_overhead_mib" => "32",
                "boot_timeout_secs" => "9",
                "log_level" => "\"warn\"",
                "log_max_bytes" => "8192",
                "templates" => "false",
                "template_max_mib" => "100",
                "jailer" => "{ enabled = false, expose = \"copy\" }",
                _ => "\"/x\"",
            };
            format!("{k} = {v}\n")
        })
        .collect::<String>();
    let c = parse(&text).unwrap();
    assert_eq!(
        (c.vmm, c.accel, c.vcpus, c.memory_mib, c.guest_overhead_mib),
        (VmmKind::Firecracker, Accel::Kvm, 3, 300, 32)
    );
    assert_eq!((c.boot_timeout_secs, c.log_level.as_str()), (9, "warn"));
    assert_eq!(c.state_dir, PathBuf::from("/x"));
    assert_eq!(c.log_max_bytes, 8192);
    assert!(!c.templates && c.template_store().is_none());
    assert_eq!(
        (c.template_dir.as_path(), c.template_max_mib),
        (Path::new("/x"), 100)
    );
    assert!(!c.jailer.enabled);
    assert_eq!(c.jailer.expose, ember_vmm::jail::DriveExposePolicy::Copy);
}

#[test]
fn jailer_table_is_read_strictly() {
    let c = parse("[jailer]\nuid_range = [300000, 300999]\ncgroup_parent = \"vmms\"\n").unwrap();
    let j = c.jailer.jail_config().unwrap();
    assert_eq!(
        (j.uid_first, j.uid_count, j.cgroup_parent.as_str()),
        (300_000, 1000, "vmms")
    );
    let e = parse("[jailer]\nuid_range = [10, 5]\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains(":2:") && e.contains("uid_range"), "{e}");
    let e = parse("[jailer]\nexpose = \"hardlink\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expose") || e.contains("hardlink"), "{e}");
    let e = parse("[jailer]\nenabeld = true\n").unwrap_err().to_string();
    assert!(e.contains("enabeld"), "{e}");
}

#[test]
fn missing_file_is_defaults() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(
        RuntimeConfig::load_from(&d.path().join("none")).unwrap(),
        RuntimeConfig::default()
    );
}

#[test]
fn a_misspelt_key_names_file_line_key_and_the_right_key() {
    let e = parse("vcpus = 1\nmemroy_mib = 512\n").unwrap_err();
    let ConfigError::File { line, key, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!((*line, key.as_deref()), (Some(2), Some("memroy_mib")));
    let m = e.to_string();
    assert!(
        m.starts_with(
            "/etc/ember/runtime.toml:2: unknown key `memroy_mib` (did you mean `memory_mib`?)"
        ),
        "{m}"
    );
    assert!(m.contains("state_dir") && !m.contains('\n'), "{m}");
    // A table is a key too.
    let m = message("[qemu]\nbinary = \"/x\"\n");
    assert!(
        m.starts_with("/etc/ember/runtime.toml:1: unknown key `qemu`"),
        "{m}"
    );
}

#[test]
fn a_wrong_type_names_line_and_key() {
    let m = message("memory_mib = 512\nvcpus = \"two\"\n");
    assert!(
        m.starts_with("/etc/ember/runtime.toml:2: key `vcpus`: "),
        "{m}"
    );
    assert!(m.contains("invalid type") && m.contains("string"), "{m}");
    let m = message("vmm = \"kvm\"\n");
    assert!(
        m.starts_with("/etc/ember/runtime.toml:1: key `vmm`: "),
        "{m}"
    );
    assert!(m.contains("qemu") && m.contains("firecracker"), "{m}");
    let m = message("vcpus = 300\n");
    assert!(
        m.starts_with("/etc/ember/runtime.toml:1: key `vcpus`: "),
        "{m}"
    );
    assert!(!m.contains('\n'), "{m}");
}

#[test]
fn text_that_is_not_toml_names_the_line() {
    let m = message("vcpus = 1\nthis is not toml\n");
    assert!(
        m.starts_with("/etc/ember/runtime.toml:2: not valid TOML: "),
        "{m}"
    );
    assert!(!m.contains('\n'), "{m}");
    let m = message("{\"vcpus\": 1}");
    assert!(
        m.starts_with("/etc/ember/runtime.toml:1: not valid TOML"),
        "{m}"
    );
}

#[test]
fn sizes_the_host_cannot_give_are_refused_with_the_limit() {
    let m = message("vcpus = 0\n");
    assert_eq!(
        m,
        "/etc/ember/runtime.toml:1: vcpus = 0: a VM needs at least 1 vCPU"
    );
    let m = message("\nvcpus = 5\n");
    assert_eq!(
        m,
        "/etc/ember/runtime.toml:2: vcpus = 5: 5 vCPUs is more than the host's 4 CPUs"
    );
    let m = message("memory_mib = 16\n");
    assert!(m.contains("memory_mib = 16: 16 MiB is below the"), "{m}");
    assert!(
        m.contains(&format!("{} MiB", sizing::MIN_MEMORY_MIB)),
        "{m}"
    );
    let m = message("memory_mib = 9000\n");
    assert!(m.contains("more than the host's 8192 MiB"), "{m}");
    assert!(message("boot_timeout_secs = 0\n").contains("boot_timeout_secs = 0"));
    let m = message("log_level = \"info,x=[\"\n");
    assert!(
        m.contains(":1: log_level = \"info,x=[\": not a log filter"),
        "{m}"
    );
}

#[test]
fn annotations_are_checked_against_the_host() {
    let c = RuntimeConfig::default();
    let ann = |k: &str, v: &str| HashMap::from([(k.to_string(), v.to_string())]);
    let e = c
        .clone()
        .with_annotations(&ann(annotation::VCPUS, "0"), &HOST)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "annotation io.ember.vm.vcpus=\"0\": a VM needs at least 1 vCPU"
    );
    let e = c
        .clone()
        .with_annotations(&ann(annotation::VCPUS, "5"), &HOST)
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 vCPUs is more than the host's 4 CPUs"), "{e}");
    let e = c
        .clone()
        .with_annotations(&ann(annotation::MEMORY_MIB, "8"), &HOST)
        .unwrap_err()
        .to_string();
    assert!(e.contains("8 MiB is below the"), "{e}");
    let c = c
        .with_annotations(&ann(annotation::VCPUS, " 4"), &HOST)
        .unwrap();
    assert_eq!(c.vcpus, 4);
}

#[test]
fn a_broken_file_still_names_its_state_dir() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("runtime.toml");
    std::fs::write(&p, "state_dir = \"/srv/ember\"\nvcpu = 2\n").unwrap();
    assert!(RuntimeConfig::load_from(&p).is_err());
    assert_eq!(
        RuntimeConfig::state_dir_of_broken(&p),
        PathBuf::from("/srv/ember")
    );
    std::fs::write(&p, "not toml").unwrap();
    assert_eq!(
        RuntimeConfig::state_dir_of_broken(&p),
        RuntimeConfig::default().state_dir
    );
}
