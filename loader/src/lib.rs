// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod flavor;
mod image;
mod layout;
mod load;
mod measure;
mod populate;
mod ram;
mod x86;

pub use flavor::populate_way;
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
    BoxError, ConvertPrivate, Populate, PopulateError, PopulateWay, SharedOnly, SnpLaunchUpdate,
    TdxInitMemRegion, WriteThenConvert, ram_of, write_zeros,
};
pub use ram::{ByteRange, GuestRam, PAGE_SIZE, RamError};

/// x86 boot data: GDT, page tables, boot parameters and the vCPU entry state.
pub mod boot {
    pub use crate::x86::*;
}

// Re-exported so users name the entry state veil-vcpu takes.
pub use veil_abi;
