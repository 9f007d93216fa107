// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod image;
mod layout;
mod load;
mod measure;
mod populate;
mod ram;
#[cfg(feature = "veil-memory")]
mod veil_memory;
mod x86;

pub use image::{
    BzImage, ElfSegment, ImageError, KernelFormat, KernelImage, MIN_BOOT_PROTOCOL, PvhElf,
};
pub use layout::{Layout, LayoutError, ObjectKind, Placement, merge_pages};
pub use load::{
    BootPlan, BootSource, LoadError, Loaded, PVH_CMDLINE_MAX, PlannedObject, Populated, load,
    measure, plan,
};
pub use measure::{Digest, LOG_VERSION, MeasuredObject, MeasurementLog, extend};
pub use populate::{
    BoxError, ConvertPrivate, PageRun, PageType, Populate, PopulateError, PopulateWay, SharedOnly,
    WriteThenConvert, check_plain, check_writable, ram_of, ranges_of, write_zeros,
};
pub use ram::{ByteRange, GuestRam, PAGE_SIZE, RamError};
#[cfg(feature = "veil-memory")]
pub use veil_memory::populate_way;

/// x86 boot data: GDT, page tables, boot parameters and the vCPU entry state.
pub mod boot {
    pub use crate::x86::*;
}

// Re-exported so users name the entry state veil-vcpu takes.
pub use veil_abi;
