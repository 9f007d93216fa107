// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MemoryAttributesVm`]: the one VM ioctl the attributes flavor needs, behind a trait so
//! it can be faked where KVM lacks it.

use std::io;
use std::sync::Mutex;

use kvm_bindings::kvm_memory_attributes;
use kvm_ioctls::VmFd;
use veil_attrs::{Attributes, FrameRange};

/// Sets KVM's memory attributes of a guest-physical range (`KVM_SET_MEMORY_ATTRIBUTES`).
///
/// Implemented for [`VmFd`]; tests and benchmarks use [`RecordingAttributesVm`].
pub trait MemoryAttributesVm: Send + Sync {
    /// Gives every page of `range` the attributes `attributes`. KVM reserves everything
    /// before changing anything, so a failure leaves the VM's attributes as they were.
    fn set_memory_attributes(&self, range: FrameRange, attributes: Attributes) -> io::Result<()>;
}

impl MemoryAttributesVm for VmFd {
    fn set_memory_attributes(&self, range: FrameRange, attributes: Attributes) -> io::Result<()> {
        let attr = kvm_memory_attributes {
            address: range.gpa(),
            size: range.size(),
            attributes: attributes.bits(),
            flags: 0,
        };
        VmFd::set_memory_attributes(self, attr).map_err(io::Error::from)
    }
}

/// A [`MemoryAttributesVm`] that records each call and can be told to fail: a stand-in
/// for hosts without `KVM_SET_MEMORY_ATTRIBUTES`, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct RecordingAttributesVm {
    inner: Mutex<Recording>,
}

#[derive(Debug, Default)]
struct Recording {
    calls: Vec<(FrameRange, Attributes)>,
    fail_after: Option<(usize, i32)>,
}

impl RecordingAttributesVm {
    /// A recorder that accepts every call.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the call after the next `successes` ones fail with `errno` (once).
    pub fn fail_after(&self, successes: usize, errno: i32) {
        self.lock().fail_after = Some((successes, errno));
    }

    /// The calls that succeeded so far, in order.
    pub fn calls(&self) -> Vec<(FrameRange, Attributes)> {
        self.lock().calls.clone()
    }

    /// The number of calls that succeeded so far.
    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// Forgets the recorded calls.
    pub fn clear(&self) {
        self.lock().calls.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl MemoryAttributesVm for RecordingAttributesVm {
    fn set_memory_attributes(&self, range: FrameRange, attributes: Attributes) -> io::Result<()> {
        let mut rec = self.lock();
        match rec.fail_after {
            Some((0, errno)) => {
                rec.fail_after = None;
                return Err(io::Error::from_raw_os_error(errno));
            }
            Some((n, errno)) => rec.fail_after = Some((n - 1, errno)),
            None => {}
        }
        rec.calls.push((range, attributes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_attrs::Gfn;

    #[test]
    fn records_and_fails_on_request() {
        let vm = RecordingAttributesVm::new();
        let r = FrameRange::new(Gfn(1), 2).unwrap();
        vm.set_memory_attributes(r, Attributes::PRIVATE).unwrap();
        vm.fail_after(1, libc::ENOMEM);
        vm.set_memory_attributes(r, Attributes::empty()).unwrap();
        let err = vm
            .set_memory_attributes(r, Attributes::PRIVATE)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOMEM));
        vm.set_memory_attributes(r, Attributes::PRIVATE).unwrap();
        assert_eq!(vm.call_count(), 3);
        assert_eq!(vm.calls()[1], (r, Attributes::empty()));
        vm.clear();
        assert_eq!(vm.call_count(), 0);
    }
}
