//! Firecracker backend (REST API over its unix socket, hybrid vsock).
