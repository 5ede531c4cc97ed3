//! Request and reply messages of the agent service.
//!
//! A container is identified by `container_id`; its processes by `exec_id`, where the
//! empty `exec_id` is the container's init process.

/// Empty message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PingResponse {
    /// Agent version.
    #[prost(string, tag = "1")]
    pub version: String,
    /// Guest kernel release (`uname -r`).
    #[prost(string, tag = "2")]
    pub kernel_release: String,
    /// Guest uptime in milliseconds.
    #[prost(uint64, tag = "3")]
    pub uptime_ms: u64,
}

/// Where a container's root filesystem comes from.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockRootfs {
    /// Serial (drive id) of the virtio block device holding the filesystem, as the
    /// host named it. The agent finds the device through `/sys/block/*/serial`.
    #[prost(string, tag = "1")]
    pub serial: String,
    /// Filesystem type, e.g. `ext4` or `erofs`.
    #[prost(string, tag = "2")]
    pub fstype: String,
    /// Mount options (comma-separated data, as for mount(8) `-o`).
    #[prost(string, tag = "3")]
    pub options: String,
    #[prost(bool, tag = "4")]
    pub read_only: bool,
    /// Path inside the filesystem to use as the rootfs (empty: its root).
    #[prost(string, tag = "5")]
    pub subpath: String,
    /// Byte offset of the filesystem inside the device: a region of the VM's pool
    /// drive, which the agent maps with a loop device. With `length` 0 the filesystem
    /// is the whole device.
    #[prost(uint64, tag = "6")]
    pub offset: u64,
    /// Length in bytes of the region at `offset` (0: the whole device).
    #[prost(uint64, tag = "7")]
    pub length: u64,
    /// A guest path of an image file holding the filesystem (e.g. under the shared
    /// directory), mapped with a loop device; used instead of `serial` when set.
    #[prost(string, tag = "8")]
    pub file: String,
}

/// A file the agent writes into the guest before the container is set up, for a
/// host file the VM cannot share (e.g. `/etc/hosts` on a VMM without a shared
/// filesystem). The shim points the spec's mount at `path`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GuestFile {
    /// Absolute guest path; must lie under `/run/ember/files/`.
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
    /// Permission bits.
    #[prost(uint32, tag = "3")]
    pub mode: u32,
}

/// Mounts a filesystem on a block device (or a region of one) at a guest path,
/// outside any container: firecracker-containerd's drive mounts.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MountBlockRequest {
    #[prost(message, optional, tag = "1")]
    pub device: Option<BlockRootfs>,
    /// Absolute guest path, created when missing.
    #[prost(string, tag = "2")]
    pub target: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UnmountRequest {
    #[prost(string, tag = "1")]
    pub target: String,
}

/// The VM's metadata document (JSON), published in the guest at
/// [`crate::METADATA_GUEST_PATH`] and in every container at the same path.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetMetadataRequest {
    #[prost(string, tag = "1")]
    pub json: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StdioConfig {
    /// Allocate a pty: stdout carries the terminal output, stderr is unused.
    #[prost(bool, tag = "1")]
    pub terminal: bool,
    /// Keep stdin open for `WriteStdin` (otherwise stdin is /dev/null).
    #[prost(bool, tag = "2")]
    pub stdin: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// The OCI runtime spec (`config.json`) as JSON. `root.path` is ignored: the
    /// rootfs is `rootfs`.
    #[prost(bytes = "vec", tag = "2")]
    pub spec_json: Vec<u8>,
    #[prost(message, optional, tag = "3")]
    pub rootfs: Option<BlockRootfs>,
    #[prost(message, optional, tag = "4")]
    pub stdio: Option<StdioConfig>,
    /// Files written into the guest before the spec's mounts are made.
    #[prost(message, repeated, tag = "5")]
    pub files: Vec<GuestFile>,
    /// A layered root filesystem assembled in the guest: read-only lower layers
    /// (EROFS images, topmost first). When set, `rootfs` is unused and `upper`
    /// holds the writable layer.
    #[prost(message, repeated, tag = "6")]
    pub layers: Vec<BlockRootfs>,
    /// The writable layer of a layered rootfs: a filesystem (ext4) whose `upper/`
    /// and `work/` directories become the overlay's upperdir and workdir (created
    /// when missing). Absent with `layers` set: the rootfs is read-only.
    #[prost(message, optional, tag = "7")]
    pub upper: Option<BlockRootfs>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateContainerResponse {
    /// Pid of the init process (in the guest's pid namespace), created but not started.
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcessRef {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateProcessRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    /// The OCI `process` object as JSON.
    #[prost(bytes = "vec", tag = "3")]
    pub process_json: Vec<u8>,
    #[prost(message, optional, tag = "4")]
    pub stdio: Option<StdioConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StartProcessResponse {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WaitProcessResponse {
    /// Exit status as a shell reports it: the exit code, or 128 + signal number.
    #[prost(uint32, tag = "1")]
    pub exit_status: u32,
    /// Exit time, nanoseconds since the Unix epoch (guest clock).
    #[prost(int64, tag = "2")]
    pub exited_at_ns: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SignalProcessRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub signal: u32,
    /// Signal every process of the container (only with the init process).
    #[prost(bool, tag = "4")]
    pub all: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteStdinRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteStdinResponse {
    #[prost(uint32, tag = "1")]
    pub written: u32,
}

/// Which output stream to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum OutputStream {
    Stdout = 0,
    Stderr = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadOutputRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(enumeration = "OutputStream", tag = "3")]
    pub stream: i32,
    /// Most bytes to return (capped at `MAX_IO_CHUNK`).
    #[prost(uint32, tag = "4")]
    pub max_len: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadOutputResponse {
    /// Bytes read; empty only together with `eof`.
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    /// The stream ended and every byte was returned.
    #[prost(bool, tag = "2")]
    pub eof: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResizePtyRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    #[prost(string, tag = "2")]
    pub exec_id: String,
    #[prost(uint32, tag = "3")]
    pub width: u32,
    #[prost(uint32, tag = "4")]
    pub height: u32,
}

/// The host's wall clock, for the guest's (exit times are taken in the guest).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetClockRequest {
    /// Nanoseconds since the Unix epoch.
    #[prost(int64, tag = "1")]
    pub unix_ns: i64,
}

/// What makes a VM restored from a template its own: fresh entropy for the guest's
/// random number generator (two clones of one template must never share its
/// state), its hostname and clock. The first call a clone gets.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SetIdentityRequest {
    /// Random bytes from the host, mixed into the guest's pool (credited) before
    /// the kernel's generator is reseeded; 32 to 4096 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub seed: Vec<u8>,
    /// The guest's hostname (empty: leave it).
    #[prost(string, tag = "2")]
    pub hostname: String,
    /// The host's wall clock, nanoseconds since the Unix epoch (0: leave it).
    #[prost(int64, tag = "3")]
    pub unix_ns: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SetIdentityResponse {
    /// The guest kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    #[prost(string, tag = "1")]
    pub boot_id: String,
    /// Whether the shared directory is mounted already (a clone's is mounted when
    /// a request first names a path under it).
    #[prost(bool, tag = "2")]
    pub shared_mounted: bool,
}

/// The size limits of `SetIdentityRequest::seed`.
pub const IDENTITY_SEED_MIN: usize = 32;
pub const IDENTITY_SEED_MAX: usize = 4096;

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerRef {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPidsResponse {
    #[prost(uint32, repeated, tag = "1")]
    pub pids: Vec<u32>,
}

/// Resource usage of a container, read from its cgroup.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsResponse {
    #[prost(uint64, tag = "1")]
    pub cpu_usage_usec: u64,
    #[prost(uint64, tag = "2")]
    pub cpu_user_usec: u64,
    #[prost(uint64, tag = "3")]
    pub cpu_system_usec: u64,
    #[prost(uint64, tag = "4")]
    pub memory_usage_bytes: u64,
    /// 0 when unlimited.
    #[prost(uint64, tag = "5")]
    pub memory_limit_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub pids_current: u64,
    /// 0 when unlimited.
    #[prost(uint64, tag = "7")]
    pub pids_limit: u64,
    #[prost(uint64, tag = "8")]
    pub oom_kills: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpdateContainerRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
    /// The OCI `linux.resources` object as JSON.
    #[prost(bytes = "vec", tag = "2")]
    pub resources_json: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct OomEvent {
    #[prost(string, tag = "1")]
    pub container_id: String,
}
