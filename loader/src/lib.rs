// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

// The boot protocols veil loads (PVH, the Linux x86 boot protocol, flat 64-bit code) are
// x86-64's; what follows them (populating, page types, RAM, measurement) is not.
#[cfg(target_arch = "x86_64")]
mod extra;
#[cfg(target_arch = "x86_64")]
pub mod igvm;
#[cfg(target_arch = "x86_64")]
mod image;
#[cfg(target_arch = "x86_64")]
mod layout;
#[cfg(target_arch = "x86_64")]
mod load;
mod measure;
mod populate;
mod ram;
#[cfg(feature = "veil-memory")]
mod veil_memory;
#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "x86_64")]
pub use extra::{E820_RESERVED, ExtraObject, PlanEditError, SETUP_DATA_HEADER};
#[cfg(target_arch = "x86_64")]
pub use igvm::{IgvmError, IgvmPlan, IgvmPlatform, SnpVmsa, plan_igvm};
#[cfg(target_arch = "x86_64")]
pub use image::{
    BzImage, ElfSegment, FlatImage, ImageError, KernelFormat, KernelImage, MIN_BOOT_PROTOCOL,
    PvhElf,
};
#[cfg(target_arch = "x86_64")]
pub use layout::{Layout, LayoutError, Placement, merge_pages};
#[cfg(target_arch = "x86_64")]
pub use load::{
    BootPlan, BootSource, FirmwareTables, LoadError, Loaded, PVH_CMDLINE_MAX, PlannedObject,
    Populated, RSDP_LEN, load, measure, plan,
};
pub use measure::{Digest, LOG_VERSION, MeasuredObject, MeasurementLog, ObjectKind, extend};
pub use populate::{
    BoxError, ConvertPrivate, PageRun, PageType, Populate, PopulateError, PopulateWay, SharedOnly,
    WriteThenConvert, check_plain, check_writable, ram_of, ranges_of, write_zeros,
};
pub use ram::{ByteRange, GuestRam, PAGE_SIZE, RamError};
#[cfg(feature = "veil-memory")]
pub use veil_memory::populate_way;

/// x86 boot data: page tables, boot parameters and the vCPU entry state.
#[cfg(target_arch = "x86_64")]
pub mod boot {
    pub use crate::x86::*;
}

// Re-exported so users name the entry state veil-vcpu takes and the guest memory types
// veil-loader places into.
pub use veil_abi;
pub use vm_memory;
