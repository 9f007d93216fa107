// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]

#[cfg(target_arch = "x86_64")]
mod boot;
mod exits;
pub mod launch;
mod populate;
#[cfg(target_arch = "x86_64")]
mod reach;
#[cfg(target_os = "linux")]
pub mod seccomp;
mod vm;

#[cfg(target_arch = "x86_64")]
pub use boot::Launched;
pub use exits::{MemoryExitError, MemoryExitStats, MemoryExits, answer_request};
pub use launch::{Launch, LaunchError, LaunchRun, LaunchVm, PlainKvm};
pub use populate::LaunchPopulate;
#[cfg(target_arch = "x86_64")]
pub use reach::{GuestHypercallProbe, HypercallInstruction, HypercallReach, probe_guest_hypercall};
pub use vm::{Vm, VmBuilder, VmError, VmStats};

// The crates veil-vmm wires, re-exported so that one dependency is enough and users name
// the same versions veil builds with.
pub use kvm_bindings;
pub use kvm_ioctls;
pub use veil_abi;
pub use veil_attrs;
pub use veil_loader;
pub use veil_memory;
pub use veil_vcpu;
