//! What a scrape reads at the time: tasks from their shims, VMs from the
//! registry, memory from `/proc`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::text::{Labels, Text};
use super::{label, procfs, Metrics};
use crate::runtime::TaskManager;
use crate::vms::Vms;

/// How long one shim may take to answer a scrape's question.
const SHIM_TIMEOUT: Duration = Duration::from_secs(2);
/// containerd's task status `RUNNING`.
const RUNNING: i32 = 2;

/// The sources a scrape reads.
#[derive(Clone, Default)]
pub struct Sources {
    pub tasks: Option<Arc<TaskManager>>,
    pub vms: Option<Arc<Vms>>,
}

/// The whole exposition.
pub async fn render(metrics: &Metrics, sources: &Sources) -> String {
    let mut t = Text::default();
    metrics.write_kept(&mut t);
    if let Some(tasks) = &sources.tasks {
        write_tasks(&mut t, tasks).await;
    }
    if let Some(vms) = &sources.vms {
        let mut namespaces = vms.namespaces();
        if let Some(tasks) = &sources.tasks {
            namespaces.extend(tasks.namespaces());
        }
        namespaces.sort();
        namespaces.dedup();
        write_vms(&mut t, vms, &namespaces).await;
    }
    write_self(&mut t);
    t.finish()
}

#[derive(Default)]
struct TaskCounts {
    tasks: u64,
    running: u64,
    processes: u64,
}

async fn write_tasks(t: &mut Text, tasks: &TaskManager) {
    let mut counts: BTreeMap<Labels, TaskCounts> = BTreeMap::new();
    for ns in tasks.namespaces() {
        for task in tasks.list(&ns) {
            let c = counts
                .entry(vec![
                    label("namespace", ns.clone()),
                    label("runtime", task.runtime.clone()),
                ])
                .or_default();
            c.tasks += 1;
            let state = tokio::time::timeout(SHIM_TIMEOUT, task.client.state(&task.id, "")).await;
            if matches!(state, Ok(Ok(s)) if s.status == RUNNING) {
                c.running += 1;
            }
            let pids = tokio::time::timeout(SHIM_TIMEOUT, task.client.pids(&task.id)).await;
            if let Ok(Ok(p)) = pids {
                c.processes += p.processes.len() as u64;
            }
        }
    }
    type Family = (&'static str, &'static str, fn(&TaskCounts) -> u64);
    let families: [Family; 3] = [
        (
            "emberd_tasks",
            "Tasks emberd tracks, per namespace and runtime.",
            |c| c.tasks,
        ),
        (
            "emberd_tasks_running",
            "Tasks whose init process runs, per namespace and runtime.",
            |c| c.running,
        ),
        (
            "emberd_task_processes",
            "Processes of the tasks (init and execs, as their shims list them), per namespace \
             and runtime.",
            |c| c.processes,
        ),
    ];
    for (name, help, get) in families {
        t.family(name, "gauge", help);
        for (labels, c) in &counts {
            t.sample(name, labels, get(c) as f64);
        }
    }
}

async fn write_vms(t: &mut Text, vms: &Vms, namespaces: &[String]) {
    let mut running: Vec<(String, u64)> = Vec::new();
    let mut per_vm = Vec::new();
    for ns in namespaces {
        let list = vms.list(ns).await;
        let n = list.iter().filter(|d| d.state == "running").count() as u64;
        running.push((ns.clone(), n));
        per_vm.extend(list);
    }
    t.family(
        "ember_vms_running",
        "gauge",
        "VMs running (not paused or stopping), per namespace.",
    );
    for (ns, n) in &running {
        t.sample(
            "ember_vms_running",
            &[label("namespace", ns.clone())],
            *n as f64,
        );
    }
    let vm_labels = |d: &ember_vm_api::ember::VmDescription| -> Labels {
        vec![
            label("namespace", d.namespace.clone()),
            label("vm", d.vm_id.clone()),
        ]
    };
    t.family(
        "ember_vm_memory_bytes",
        "gauge",
        "Memory of each VM's VMM process on the host (kind=rss: resident, kind=pss: \
         proportional share), from /proc/<vmm pid>/smaps_rollup.",
    );
    for d in &per_vm {
        let Some(m) = (d.vmm_pid != 0)
            .then(|| procfs::memory(d.vmm_pid))
            .flatten()
        else {
            continue;
        };
        for (kind, v) in [("rss", m.rss), ("pss", m.pss)] {
            let mut l = vm_labels(d);
            l.push(label("kind", kind));
            t.sample("ember_vm_memory_bytes", &l, v as f64);
        }
    }
    t.family(
        "ember_vm_configured_memory_bytes",
        "gauge",
        "Memory each VM was given.",
    );
    for d in &per_vm {
        let v = u64::from(d.memory_mib) << 20;
        t.sample("ember_vm_configured_memory_bytes", &vm_labels(d), v as f64);
    }
    t.family("ember_vm_vcpus", "gauge", "vCPUs each VM was given.");
    for d in &per_vm {
        t.sample("ember_vm_vcpus", &vm_labels(d), f64::from(d.vcpus));
    }
}

fn write_self(t: &mut Text) {
    let Some(s) = procfs::self_stats() else {
        return;
    };
    for (name, kind, help, v) in [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of emberd in bytes.",
            s.rss as f64,
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "CPU time emberd used, user and system, in seconds.",
            s.cpu_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "File descriptors emberd holds open.",
            s.open_fds as f64,
        ),
        (
            "process_threads",
            "gauge",
            "Threads of emberd.",
            s.threads as f64,
        ),
    ] {
        t.family(name, kind, help);
        t.sample(name, &[], v);
    }
}
