// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The traits through which a VMM handles exits: one for memory (conversions), one for
//! I/O (devices), and the policy for memory faults.
//!
//! veil-vcpu never names the crates that implement these: `veil-vmm` wires
//! `veil-memory` in as the [`MemoryHandler`] and its devices as the [`IoHandler`].

use veil_attrs::FrameRange;

use crate::exit::MemoryFault;
use crate::request::{GuestLayout, MapGpaRange};

pub use veil_abi::BoxError;

/// What a [`MemoryHandler`] did with a conversion request; the request's hypercall ABI
/// turns it into the result the guest reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOutcome {
    /// The range now has the requested state. The guest reads 0.
    Done,
    /// Not now: the guest should ask again. The guest reads `EAGAIN`.
    Retry,
    /// The handler refuses this request (for example, it spans a range the handler cannot
    /// convert). The guest reads `EINVAL`; nothing changed.
    Refused,
}

/// Memory exits: guest conversion requests and memory faults.
///
/// Methods take `&self` because every vCPU thread calls them; an implementation
/// serialises conversions itself.
pub trait MemoryHandler: Send + Sync {
    /// Where guest memory is. Conversion requests reaching outside it are refused with
    /// `EINVAL` before any other method is called, and so are memory faults.
    fn layout(&self) -> &GuestLayout;

    /// Converts `request.range()` to `request.to()` because the guest asked (through
    /// `KVM_HC_MAP_GPA_RANGE` or another registered hypercall ABI, on either transport).
    ///
    /// The request is already validated. An `Err` is a host failure: the guest reads the
    /// ABI's answer for [`RequestOutcome::Refused`] and the VM stops with the error.
    fn map_gpa_range(&self, request: &MapGpaRange) -> Result<RequestOutcome, BoxError>;

    /// Converts `range` to `fault.access().attributes()` because the guest accessed it in
    /// the other state and the policy is [`FaultPolicy::ConvertImplicitly`].
    ///
    /// Returns how many frames changed state. Zero means the range already had the
    /// access's state, so converting cannot fix the fault (for example a private frame
    /// with no private backing); see [`FaultPolicy`].
    fn memory_fault(&self, fault: &MemoryFault, range: FrameRange) -> Result<u64, BoxError>;
}

/// Port and MMIO accesses the kernel did not handle.
///
/// An `Err` from any method stops the VM with that error. Every method refuses by
/// default (a VM with no device there), so a handler implements only what it serves.
pub trait IoHandler: Send + Sync {
    /// `in` from `port`: fill `data` (`size * count` bytes).
    fn pio_read(&self, port: u16, data: &mut [u8]) -> Result<(), BoxError> {
        Err(NoDevice::new(format!("port read of {} bytes at {port:#x}", data.len())).into())
    }
    /// `out` to `port` of `data`.
    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        Err(NoDevice::new(format!("port write of {} bytes at {port:#x}", data.len())).into())
    }
    /// A read of `data.len()` (1 to 8) bytes at guest-physical `addr`: fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> Result<(), BoxError> {
        Err(NoDevice::new(format!("MMIO read of {} bytes at {addr:#x}", data.len())).into())
    }
    /// A write of `data` at guest-physical `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), BoxError> {
        Err(NoDevice::new(format!("MMIO write of {} bytes at {addr:#x}", data.len())).into())
    }
}

/// An access no device answers: what [`IoHandler`]'s default methods return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no device serves the {access}")]
pub struct NoDevice {
    /// The access, in words.
    pub access: String,
}

impl NoDevice {
    fn new(access: String) -> Self {
        NoDevice { access }
    }
}

/// What to do when the guest accesses memory in the state it is not in
/// (`KVM_EXIT_MEMORY_FAULT`).
///
/// Either way, a fault never makes the vCPU re-enter forever: if converting changes
/// nothing (the range is already in the access's state), the vCPU re-enters once (another
/// vCPU may have converted the range meanwhile), and if the same fault comes straight
/// back with nothing to convert, the VM stops with
/// [`RunError::FaultNotFixable`](crate::RunError::FaultNotFixable) naming the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FaultPolicy {
    /// Convert the faulting range to the access's state, then re-enter: what SNP and TDX
    /// guests expect of their VMM.
    #[default]
    ConvertImplicitly,
    /// Convert nothing: stop the VM with
    /// [`RunError::FaultRefused`](crate::RunError::FaultRefused).
    Refuse,
}
