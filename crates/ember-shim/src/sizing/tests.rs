use super::*;
use serde_json::json;

const HOST: Host = Host {
    cpus: 2,
    memory_mib: 4096,
};

fn resources(r: serde_json::Value) -> serde_json::Value {
    json!({"linux": {"resources": r}})
}

#[test]
fn cpu_quota_and_memory_limit_size_the_vm() {
    let s = from_spec(
        &resources(
            json!({"cpu": {"quota": 200000, "period": 100000}, "memory": {"limit": 300000000}}),
        ),
        64,
    );
    assert_eq!(s.vcpus.unwrap().0, 2);
    // 300000000 bytes is 286.1 MiB: 287 + 64.
    assert_eq!(s.memory_mib.unwrap().0, 287 + 64);
    // A fraction of a CPU rounds up, the default period is 100 ms.
    let s = from_spec(&resources(json!({"cpu": {"quota": 150000}})), 64);
    assert_eq!(s.vcpus.unwrap().0, 2);
    let s = from_spec(
        &resources(json!({"cpu": {"quota": 1000, "period": 100000}})),
        64,
    );
    assert_eq!(s.vcpus.unwrap().0, 1);
    // No quota: the cpuset counts.
    let s = from_spec(
        &resources(json!({"cpu": {"quota": -1, "cpus": "0-2,5"}})),
        64,
    );
    assert_eq!(s.vcpus.unwrap().0, 4);
    // A tiny limit still gets a VM that boots.
    let s = from_spec(&resources(json!({"memory": {"limit": 1}})), 0);
    assert_eq!(s.memory_mib.unwrap().0, u64::from(MIN_MEMORY_MIB));
    // Nothing (or unlimited) asked: nothing derived.
    assert_eq!(from_spec(&json!({}), 64), SpecSize::default());
    assert_eq!(
        from_spec(
            &resources(json!({"memory": {"limit": -1}, "cpu": {"shares": 1024}})),
            64
        ),
        SpecSize::default()
    );
}

#[test]
fn cpusets() {
    assert_eq!(cpuset_count("0"), Some(1));
    assert_eq!(cpuset_count("0-3"), Some(4));
    assert_eq!(cpuset_count("1,3, 5-6"), Some(4));
    assert_eq!(cpuset_count(""), None);
    assert_eq!(cpuset_count("3-1"), None);
    assert_eq!(cpuset_count("x"), None);
}

#[test]
fn annotations_win_over_resources_which_win_over_the_config() {
    let base = RuntimeConfig::default();
    let spec = resources(json!({"cpu": {"quota": 200000}, "memory": {"limit": 300000000}}));
    let c = for_boot(&base, &spec, &HashMap::new(), &HOST).unwrap();
    assert_eq!(
        (c.vcpus, c.memory_mib),
        (2, 287 + DEFAULT_GUEST_OVERHEAD_MIB)
    );
    let ann = HashMap::from([
        (annotation::VCPUS.to_string(), "1".to_string()),
        (annotation::MEMORY_MIB.to_string(), "128".to_string()),
    ]);
    let c = for_boot(&base, &spec, &ann, &HOST).unwrap();
    assert_eq!((c.vcpus, c.memory_mib), (1, 128));
    let c = for_boot(&base, &json!({}), &HashMap::new(), &HOST).unwrap();
    assert_eq!((c.vcpus, c.memory_mib), (base.vcpus, base.memory_mib));
}

#[test]
fn resources_the_host_cannot_give_are_refused_naming_them() {
    let base = RuntimeConfig::default();
    let spec = resources(json!({"cpu": {"quota": 400000, "period": 100000}}));
    let e = for_boot(&base, &spec, &HashMap::new(), &HOST)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("the container's CPU limit (cpu.quota 400000 / cpu.period 100000): 4 vCPUs is more than the host's 2 CPUs"),
        "{e}"
    );
    assert!(e.contains(annotation::VCPUS), "{e}");
    // An annotation that sizes the VM instead makes the limit the guest's business.
    let ann = HashMap::from([(annotation::VCPUS.to_string(), "2".to_string())]);
    assert_eq!(for_boot(&base, &spec, &ann, &HOST).unwrap().vcpus, 2);
    let spec = resources(json!({"memory": {"limit": 8i64 << 30}}));
    let e = for_boot(&base, &spec, &HashMap::new(), &HOST)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the host's 4096 MiB"), "{e}");
}

#[test]
fn checks_name_the_limit() {
    assert_eq!(check_vcpus(0, &HOST), Err(SizeError::NoVcpus));
    assert_eq!(check_vcpus(2, &HOST), Ok(2));
    assert_eq!(
        check_vcpus(3, &HOST).unwrap_err().to_string(),
        "3 vCPUs is more than the host's 2 CPUs"
    );
    let big = Host {
        cpus: 1000,
        memory_mib: u64::MAX,
    };
    assert!(check_vcpus(256, &big).is_err());
    assert_eq!(
        check_memory(u64::from(MIN_MEMORY_MIB), &HOST),
        Ok(MIN_MEMORY_MIB)
    );
    assert_eq!(
        check_memory(10, &HOST).unwrap_err().to_string(),
        format!("10 MiB is below the {MIN_MEMORY_MIB} MiB the guest needs to boot")
    );
    assert!(check_memory(4097, &HOST).is_err());
    assert!(check_memory(u64::from(u32::MAX) + 1, &big).is_err());
    let h = Host::probe();
    assert!(h.cpus >= 1 && h.memory_mib > 0 && h.memory_mib < u64::MAX);
}

#[test]
fn unknown_ember_annotations_are_found() {
    let ann: HashMap<String, String> = [
        "io.ember.vm.vcpus",
        "io.ember.vm.id",
        "io.ember.vm.cpus",
        "io.ember.foo",
        "io.kubernetes.cri.sandbox-id",
        "aws.firecracker.vm.id",
    ]
    .iter()
    .map(|k| (k.to_string(), "1".to_string()))
    .collect();
    assert_eq!(
        unknown_annotations(&ann),
        vec!["io.ember.foo", "io.ember.vm.cpus"]
    );
}
