// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![cfg(target_arch = "x86_64")]

pub mod exits;
pub mod ioctl;
pub mod launch;
pub mod measure;
pub mod mrtd;
pub mod recording;

pub use exits::{KVM_EXIT_TDX, TdxExit, TdxExits};
pub use ioctl::{IoctlError, KvmTdx, TdxCapabilities, TdxCommand, TdxHost, TdxInitVm, TdxVm};
pub use launch::{KVM_X86_TDX_VM, TdxConfig, TdxError, TdxLaunch};
pub use measure::{MeasureError, TdxMeasurement, TdxPage, measure, measure_plan, placed_runs};
pub use mrtd::Mrtd;
pub use recording::{Call, RecordingTdx, Script};
