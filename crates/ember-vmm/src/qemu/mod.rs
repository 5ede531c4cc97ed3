//! QEMU `microvm` backend, driven over QMP.
