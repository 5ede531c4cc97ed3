//! emberd's Prometheus metrics, served over HTTP at `/v1/metrics` on
//! `[metrics] address` as containerd serves its own.
//!
//! Kept as they happen: gRPC calls per method (`grpc_server_*`, with handling
//! times when `grpc_histogram` is on), shim starts, start failures and
//! unexpected exits, VM boot times. Read at each scrape: tasks and their
//! processes per namespace and runtime (from the shims), VMs running per
//! namespace, each VM's VMM memory (from `/proc/<vmm pid>`), and emberd's own
//! process figures.

mod collect;
mod family;
pub mod grpc;
pub mod http;
pub use collect::Sources;
mod procfs;
pub mod text;

use std::time::Duration;

pub use family::{Counter, Histogram};
use family::{BOOT_BUCKETS, GRPC_BUCKETS};
pub use text::Labels;

/// The metrics emberd keeps between scrapes.
pub struct Metrics {
    /// Whether gRPC handling times are kept (`[metrics] grpc_histogram`).
    pub grpc_histogram: bool,
    pub grpc_started: Counter,
    pub grpc_handled: Counter,
    pub grpc_seconds: Histogram,
    pub shim_starts: Counter,
    pub shim_start_failures: Counter,
    pub shim_unexpected_exits: Counter,
    pub vm_boot: Histogram,
    pub vm_restore: Histogram,
}

/// How a VM came to boot, for `ember_vm_boot_seconds{kind}`.
#[derive(Clone, Copy)]
pub enum BootKind {
    /// For a container's task (`Tasks.Create`).
    Container,
    /// By `CreateVM`.
    CreateVm,
}

impl Metrics {
    pub fn new(grpc_histogram: bool) -> Metrics {
        Metrics {
            grpc_histogram,
            grpc_started: Counter::new(
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
            ),
            grpc_handled: Counter::new(
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure \
                 (the code of an answer without a body; a stream that fails after its first \
                 message counts as OK).",
            ),
            grpc_seconds: Histogram::new(
                "grpc_server_handling_seconds",
                "Time from a request's arrival until its answer starts (the whole call for a \
                 unary RPC).",
                GRPC_BUCKETS,
            ),
            shim_starts: Counter::new(
                "ember_shim_starts_total",
                "Shim processes started by emberd, per shim binary.",
            ),
            shim_start_failures: Counter::new(
                "ember_shim_start_failures_total",
                "Shim starts whose start action failed, per \
                 shim binary.",
            ),
            shim_unexpected_exits: Counter::new(
                "ember_shim_unexpected_exits_total",
                "Shims that exited while their task or VM was still alive, per shim binary.",
            ),
            vm_boot: Histogram::new(
                "ember_vm_boot_seconds",
                "Time emberd waited from starting a VM's shim until the Create (kind=container) \
                 or CreateVM (kind=createvm) that booted the VM answered: rootfs image, VMM \
                 start, guest boot, agent ready.",
                BOOT_BUCKETS,
            ),
            vm_restore: Histogram::new(
                "ember_vm_restore_seconds",
                "Time to restore a VM from a snapshot template. Ember has no templates yet, \
                 so this holds no samples.",
                BOOT_BUCKETS,
            ),
        }
    }

    /// Records a VM boot that took `took`.
    pub fn vm_booted(&self, kind: BootKind, took: Duration) {
        let kind = match kind {
            BootKind::Container => "container",
            BootKind::CreateVm => "createvm",
        };
        self.vm_boot
            .observe(vec![("kind", kind.into())], took.as_secs_f64());
    }

    /// The families kept between scrapes.
    fn write_kept(&self, t: &mut text::Text) {
        self.grpc_started.write(t);
        self.grpc_handled.write(t);
        if self.grpc_histogram {
            self.grpc_seconds.write(t);
        }
        self.shim_starts.write(t);
        self.shim_start_failures.write(t);
        self.shim_unexpected_exits.write(t);
        self.vm_boot.write(t);
        self.vm_restore.write(t);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(false)
    }
}

/// One label of a series.
pub fn label(name: &'static str, value: impl Into<String>) -> (&'static str, String) {
    (name, value.into())
}

/// Records the boot of a task's own VM: when the shim a task's Create started
/// describes a VM that is not a CreateVM one and booted after `started_at`, the
/// Create (`took`) booted it. A runc shim describes no VM and counts nothing.
pub fn observe_task_boot(
    metrics: std::sync::Arc<Metrics>,
    address: &str,
    vm: String,
    started_at: std::time::SystemTime,
    took: Duration,
) {
    let address = address.to_string();
    let since = started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    tokio::spawn(async move {
        let Ok(client) = ember_vm_api::VmClient::connect(&address).await else {
            return;
        };
        if let Ok(d) = client.describe(&vm).await {
            if !d.explicit && d.started_at >= since {
                metrics.vm_booted(BootKind::Container, took);
            }
        }
    });
}
