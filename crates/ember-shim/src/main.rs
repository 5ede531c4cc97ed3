//! `containerd-shim-ember-v2`: containerd's shim v2 for the `io.containerd.ember.v2`
//! runtime. Each container runs in a microVM: its own, or the VM its annotations name,
//! shared with the other containers that name it.

mod args;
mod cgroup;
mod cni;
mod config;
mod events;
mod hooks;

mod info;
mod lifecycle;
mod net;
mod rootfs;
mod service;
mod sizing;
mod socket;
mod stdio;
mod task;
mod vm;
mod vm_network;
mod vm_service;
mod volumes;

fn main() {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-ember-v2: {e}");
            std::process::exit(2);
        }
    };
    if args.version {
        println!("containerd-shim-ember-v2 {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if args.info {
        if let Err(e) = info::print() {
            eprintln!("containerd-shim-ember-v2: writing the runtime info: {e}");
            std::process::exit(1);
        }
        return;
    }
    let result = match args.action.as_str() {
        "start" => lifecycle::start(&args),
        "delete" => lifecycle::delete(&args),
        "serve" => lifecycle::serve(&args),
        other => {
            eprintln!("containerd-shim-ember-v2: unknown action {other:?} (start or delete)");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        // containerd quotes a failed start's output in its error, followed by
        // ": exit status 1": one line without a newline reads best there.
        if args.action == "start" {
            eprint!("containerd-shim-ember-v2: {e:#}");
        } else {
            eprintln!("containerd-shim-ember-v2: {e:#}");
        }
        std::process::exit(1);
    }
}
