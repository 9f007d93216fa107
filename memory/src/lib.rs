// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]

mod attributes_vm;
mod backend;
mod caps;
mod convert;
mod guest;
mod lease;
mod memslot;
mod region;
mod sys;

pub use attributes_vm::{MemoryAttributesVm, RecordingAttributesVm};
pub use backend::{
    BackendError, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_KNOWN_FLAGS,
    GuestMemfd, GuestMemfdSource, HUGE_PAGE_SIZE, KVM_CAP_GUEST_MEMFD_FLAGS, SharedMemfd,
};
pub use caps::{
    CapsError, FlavorSupport, HostCaps, KVM_CAP_PRE_FAULT_MEMORY, KVM_HC_MAP_GPA_RANGE,
    KvmMappingNeed, PVM_MODULE_PATH, RawProbe, VmTypeCaps, vm_type_name,
};
pub use convert::{
    Conversion, ConversionListener, ConvertError, StateChange, StateChanges, StepKind,
};
pub use guest::{
    BuildError, ConversionStats, GuestMemoryBuilder, GuestSpan, HostAccessError, HostSafeMemory,
    ListenerId, host_access_error,
};
pub use lease::{HostAccessLease, HostAccessLeases};
pub use memslot::MemslotError;
pub use region::{ContentPolicy, Flavor, KvmSideMapping, Region, RegionSpec};

// Re-exported so users name the same versions veil builds with.
pub use veil_attrs;
pub use vm_memory;

#[cfg(test)]
mod tests;
