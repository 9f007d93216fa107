// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]

// The machine is a PC: everything in it is x86-64's. Elsewhere the crate builds empty.
#[cfg(target_arch = "x86_64")]
pub mod acpi;
#[cfg(target_arch = "x86_64")]
pub mod console;
#[cfg(target_arch = "x86_64")]
pub mod cpu;
#[cfg(target_arch = "x86_64")]
pub mod devices;
pub mod initramfs;
#[cfg(target_arch = "x86_64")]
pub mod layout;
#[cfg(target_arch = "x86_64")]
mod machine;
#[cfg(target_arch = "x86_64")]
pub mod report;

#[cfg(target_arch = "x86_64")]
pub use machine::{BootImage, Machine, MachineConfig, MachineError, PrivateRam};
#[cfg(target_arch = "x86_64")]
pub use report::{GuestEnd, HostMemory, MachineReport, PrivateRead, SharedRange};
