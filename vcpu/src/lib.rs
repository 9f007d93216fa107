// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]

mod abi;
mod caps;
mod clock;
mod dispatch;
mod exit;
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub mod fuzzing;
mod handler;
mod hypercall;
mod port;
mod ratelimit;
mod request;
mod runner;
mod stats;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

pub use abi::{
    HYPERCALL_PORT, KVM_EXIT_HYPERCALL_LONG_MODE, KVM_HC_MAP_GPA_RANGE,
    KVM_MAP_GPA_RANGE_ENCRYPTED, KVM_MAP_GPA_RANGE_PAGE_SZ_1G, KVM_MAP_GPA_RANGE_PAGE_SZ_2M,
    KVM_MAP_GPA_RANGE_PAGE_SZ_4K, MAP_GPA_RANGE_PAGE_SIZE_MASK, MAP_GPA_RANGE_RESERVED_MASK,
};
pub use caps::{CapError, enable_conversion_exits};
pub use dispatch::{IoAccess, RunError};
pub use exit::{
    Access, Exit, ExitData, ExitError, KvmExit, MemoryFault, MmioData, PioData, RunOutcome,
    SystemEventKind, decode, decode_kvm,
};
pub use handler::{BoxError, FaultPolicy, IoHandler, MemoryHandler, NoDevice, RequestOutcome};
pub use hypercall::{
    AbiRequest, Hypercall, HypercallAbi, Hypercalls, MapGpaRangeAbi, Refusal, Transport, Unclaimed,
};
#[cfg(target_arch = "x86_64")]
pub use port::port_hypercall;
pub use request::{
    GuestLayout, HypercallResult, MapGpaRange, MapGpaRangeArgs, PageSize, RequestError,
};
pub use runner::{
    ExitRouting, KICK_SIGNAL_OFFSET, RunnerError, StopReason, ThreadStartHook, UnknownExitHandler,
    Vcpu, VcpuEnd, VcpuReport, VcpuSet, VmReport,
};
pub use stats::{ExitKind, ExitStats};
#[cfg(target_arch = "x86_64")]
pub use x86_64::msr;

// The crates in veil-vcpu's API, re-exported so users name the versions veil builds
// with and need no dependency of their own on them.
pub use kvm_bindings;
pub use kvm_ioctls;
pub use veil_attrs;
