// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![cfg(target_arch = "x86_64")]

pub mod boot;
pub mod digest;
pub mod firmware;
pub mod ioctl;
pub mod launch;
pub mod measure;
pub mod policy;
pub mod recording;
pub mod vmsa;

pub use boot::{BootPages, BootPagesError, add_boot_pages, cpuid_page};
pub use digest::LaunchDigest;
pub use firmware::SevStatus;
pub use ioctl::{IoctlError, KvmSev, SevCommand, SevHost, SevVm};
pub use launch::{KVM_X86_SNP_VM, SnpConfig, SnpError, SnpLaunch, check_igvm};
pub use measure::{MeasureError, SnpMeasurement, SnpPage, measure, measure_plan, placed_runs};
pub use policy::{PolicyError, SnpPolicy};
pub use recording::{Call, RecordingFirmware, Script};
pub use vmsa::{VMSA_GPA, VcpuState};
