//! The agent protocol: service `ember.agent.v1.Agent`, served by `ember-agent` inside
//! the guest over one ttrpc connection (vsock, hybrid vsock or a virtio-serial port).
//!
//! Stdio crosses the same connection as calls, in the style of pull/push RPCs:
//! the host long-polls `ReadOutput` for each stream it wants, and pushes stdin with
//! `WriteStdin`. Each call moves at most `MAX_IO_CHUNK` bytes. Back-pressure is
//! natural: the agent reads a process's pipe only into a bounded buffer, so a host
//! that stops polling stops the writer; a `WriteStdin` answers only after the bytes
//! are in the pipe. Output is never dropped at exit: the pipes are drained to EOF and
//! `ReadOutput` reports `eof` only after the last byte was handed out.

mod client;
mod messages;
mod network;

pub use client::AgentClient;
pub use messages::*;
pub use network::*;

/// The ttrpc service name of the agent.
pub const SERVICE: &str = "ember.agent.v1.Agent";
/// vsock port the agent listens on.
pub const VSOCK_PORT: u32 = 1024;
/// Name of the virtio-serial port the agent serves on (`/sys/class/virtio-ports/*/name`).
pub const SERIAL_PORT_NAME: &str = "ember.agent";
/// Marker the host writes at the start of every connection on the virtio-serial
/// channel. A serial port has no connection boundaries of its own, so the agent skips
/// everything up to this marker before speaking ttrpc: stale bytes of an earlier
/// connection, or garbage after which a session was dropped.
pub const SERIAL_SYNC: &[u8] = b"\n\0EMBER-AGENT-SYNC-1\0\n";
/// Largest chunk one `ReadOutput` or `WriteStdin` moves.
pub const MAX_IO_CHUNK: u32 = 1 << 20;
/// Kernel command line key whose value the agent prints to the console before
/// powering off at once (used to time bare boots and to probe accelerators).
pub const CMDLINE_PROBE: &str = "ember.probe";
/// Kernel command line key (`ember.template=1`) of a guest booted to be saved as a
/// template: the agent leaves the shared directory unmounted (a mounted 9p export
/// blocks the save) until `SetIdentity` gives the clone its own.
pub const CMDLINE_TEMPLATE: &str = "ember.template";
/// Marker the agent prints on the console when it is ready to serve.
pub const READY_MARKER: &str = "ember-agent: ready";

/// 9p mount tag of the directory the host shares with the guest (QEMU's virtio-9p);
/// the agent mounts it at [`SHARED_GUEST_DIR`] at boot when the device exists.
pub const SHARED_TAG: &str = "ember.shared";
/// Guest mount point of the shared directory.
pub const SHARED_GUEST_DIR: &str = "/run/ember/shared";
/// Guest directory of files copied in at create ([`GuestFile`]).
pub const FILES_GUEST_DIR: &str = "/run/ember/files";
/// Guest path of the VM's metadata document; every container sees it read-only at
/// the same path.
pub const METADATA_GUEST_PATH: &str = "/run/ember/metadata/metadata.json";

/// `t` as nanoseconds since the Unix epoch, as the clock fields of the protocol
/// carry it (0 for times before it).
pub fn unix_ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Method names of the agent service.
pub mod method {
    pub const PING: &str = "Ping";
    pub const CREATE_CONTAINER: &str = "CreateContainer";
    pub const START_PROCESS: &str = "StartProcess";
    pub const CREATE_PROCESS: &str = "CreateProcess";
    pub const WAIT_PROCESS: &str = "WaitProcess";
    pub const SIGNAL_PROCESS: &str = "SignalProcess";
    pub const WRITE_STDIN: &str = "WriteStdin";
    pub const CLOSE_STDIN: &str = "CloseStdin";
    pub const READ_OUTPUT: &str = "ReadOutput";
    pub const RESIZE_PTY: &str = "ResizePty";
    pub const PAUSE_CONTAINER: &str = "PauseContainer";
    pub const RESUME_CONTAINER: &str = "ResumeContainer";
    pub const LIST_PIDS: &str = "ListPids";
    pub const STATS: &str = "Stats";
    pub const UPDATE_CONTAINER: &str = "UpdateContainer";
    pub const REMOVE_CONTAINER: &str = "RemoveContainer";
    pub const REMOVE_PROCESS: &str = "RemoveProcess";
    pub const SET_CLOCK: &str = "SetClock";
    pub const WAIT_OOM: &str = "WaitOom";
    pub const SHUTDOWN: &str = "Shutdown";
    pub const MOUNT_BLOCK: &str = "MountBlock";
    pub const UNMOUNT: &str = "Unmount";
    pub const SET_METADATA: &str = "SetMetadata";
    pub const CONFIGURE_NETWORK: &str = "ConfigureNetwork";
    pub const SET_IDENTITY: &str = "SetIdentity";
}
