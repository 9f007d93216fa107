// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]

mod attributes_vm;
mod backend;
mod builder;
mod caps;
mod engine;
mod flavors;
mod lease;
mod memory;
mod memslot;
mod model;
mod region;
mod span;
mod sys;
mod syscalls;

pub use attributes_vm::{MemoryAttributesVm, RecordingAttributesVm};
pub use backend::{
    BackendError, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_KNOWN_FLAGS,
    GuestMemfd, GuestMemfdSource, HUGE_PAGE_SIZE, KVM_CAP_GUEST_MEMFD_FLAGS, SharedMemfd,
};
pub use builder::{BuildError, GuestMemoryBuilder};
pub use caps::{
    CapsError, FlavorSupport, HostCaps, KVM_CAP_PRE_FAULT_MEMORY, KVM_HC_MAP_GPA_RANGE,
    KvmMappingNeed, PVM_MODULE_PATH, RawProbe, VmTypeCaps, vm_type_name,
};
pub use engine::{
    Conversion, ConversionListener, ConversionStats, ConvertError, ListenerId, StateChange,
    StateChanges, Subscription,
};
pub use lease::{HostAccessLease, HostAccessLeases};
pub use memory::HostSafeMemory;
pub use memslot::MemslotError;
pub use model::{
    Backing, BackingEnv, BackingFile, ContentPolicy, Flavor, KvmAccess, KvmSideMapping,
    MemoryModel, RegionPlan, StepKind, Store,
};
pub use region::{Region, RegionSpec};
pub use span::{GuestSpan, HostAccessError, host_access_error};
pub use syscalls::{FailingSyscalls, KernelSyscalls, Syscall, Syscalls};

// Re-exported so users name the same versions veil builds with.
pub use kvm_bindings;
pub use kvm_ioctls;
pub use veil_attrs;
pub use vm_memory;

#[cfg(test)]
mod listener_tests;
#[cfg(test)]
mod tests;
