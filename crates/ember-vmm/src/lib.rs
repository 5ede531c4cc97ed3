//! Ember's VMM backends. Each backend turns a [`VmConfig`] into a running microVM
//! behind the [`Vm`] trait: QEMU `microvm` driven over QMP, and Firecracker driven over
//! its REST API.

mod error;
mod nic;
mod process;
mod template_files;
mod vm;

pub mod firecracker;
pub mod jail;
pub mod logs;
pub mod qemu;

pub use error::Error;
pub use nic::valid_mac;
pub use vm::*;
