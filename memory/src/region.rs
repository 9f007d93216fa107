// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Regions: a guest-physical range, its flavor, content policy and backing, and the
//! memory slot KVM needs for it.

use std::os::fd::{AsFd, AsRawFd};

use kvm_bindings::{KVM_MEM_GUEST_MEMFD, kvm_userspace_memory_region2};
use veil_attrs::FrameRange;

use crate::backend::{GuestMemfd, SharedMemfd};
use crate::builder::BuildError;
use crate::model::{Backing, ContentPolicy, Flavor, KvmAccess};
use crate::sys::Mapping;

/// What a region is to be: the input to
/// [`GuestMemoryBuilder`](crate::GuestMemoryBuilder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionSpec {
    /// The guest-physical address of the first byte (4 KiB aligned).
    pub base: u64,
    /// The size in bytes (a non-zero multiple of 4 KiB).
    pub size: u64,
    /// How its conversions are carried out.
    pub flavor: Flavor,
    /// Whether conversions keep contents; the flavor must honour it.
    pub policy: ContentPolicy,
    /// Back its shared memory with 2 MiB huge pages, where the flavor can.
    pub hugetlb: bool,
    /// guest_memfd flags, instead of the flavor's default (in-place: MMAP | INIT_SHARED;
    /// attributes: none).
    pub guest_memfd_flags: Option<u64>,
}

impl RegionSpec {
    /// A region of `size` bytes at `base`, with `flavor`, discarding contents on
    /// conversion, on 4 KiB pages.
    pub const fn new(base: u64, size: u64, flavor: Flavor) -> Self {
        RegionSpec {
            base,
            size,
            flavor,
            policy: ContentPolicy::Discard,
            hugetlb: false,
            guest_memfd_flags: None,
        }
    }

    /// The same region with content policy `policy`.
    pub const fn policy(mut self, policy: ContentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The same region on 2 MiB huge pages.
    pub const fn hugetlb(mut self, hugetlb: bool) -> Self {
        self.hugetlb = hugetlb;
        self
    }

    /// The same region with explicit guest_memfd flags.
    pub const fn guest_memfd_flags(mut self, flags: u64) -> Self {
        self.guest_memfd_flags = Some(flags);
        self
    }

    /// The frames it covers, or why it is not a valid range (unaligned, empty, wrapping).
    pub fn range(&self) -> Result<FrameRange, BuildError> {
        FrameRange::from_gpa(self.base, self.size)
            .map_err(|source| BuildError::Range { index: 0, source })
    }
}

/// One region of guest memory: where it is, what backs it, how it converts.
#[derive(Debug)]
pub struct Region {
    pub(crate) range: FrameRange,
    pub(crate) flavor: Flavor,
    pub(crate) policy: ContentPolicy,
    pub(crate) backing: Backing,
    /// Offset of the region's host view inside the guest memory's reservation.
    pub(crate) view_offset: usize,
    /// Address of the host view (inside the reservation).
    pub(crate) view_addr: u64,
    /// The mapping given to KVM, where the backing asks for one of its own.
    pub(crate) kvm_mapping: Option<Mapping>,
}

impl Region {
    /// The guest-physical range it covers.
    pub fn range(&self) -> FrameRange {
        self.range
    }

    /// The guest-physical address of its first byte.
    pub fn base(&self) -> u64 {
        self.range.gpa()
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.range.size()
    }

    /// How its conversions are carried out.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Whether its conversions keep contents.
    pub fn policy(&self) -> ContentPolicy {
        self.policy
    }

    /// Its backing stores.
    pub fn backing(&self) -> &Backing {
        &self.backing
    }

    /// The guest_memfd KVM gets in its memory slot (attributes: the private side;
    /// in-place: all of it).
    pub fn guest_memfd(&self) -> Option<&GuestMemfd> {
        self.backing.guest_memfd()
    }

    /// The memfd behind its host view (attributes: the shared side; emulated: all of it).
    pub fn shared_memfd(&self) -> Option<&SharedMemfd> {
        self.backing.shared_memfd()
    }

    /// The address of the host view: where [`HostSafeMemory`](crate::HostSafeMemory)'s
    /// checked accessors read and write this region's shared pages.
    ///
    /// For code that must show what an unchecked access does (a demonstration or a test
    /// that a private page faults in flavors that protect the view); reading through it
    /// bypasses every check veil makes and is the caller's `unsafe` to justify.
    pub fn host_view_addr(&self) -> u64 {
        self.view_addr
    }

    /// The host address KVM is given as `userspace_addr`: the host view, the mapping of
    /// its own the backing asked for, or 0 when KVM maps the guest_memfd itself.
    pub fn kvm_userspace_addr(&self) -> u64 {
        match (self.backing.kvm, &self.kvm_mapping) {
            (KvmAccess::OwnMapping, Some(m)) => m.as_ptr() as u64,
            (KvmAccess::HostView, _) => self.view_addr,
            _ => 0,
        }
    }

    /// The memory slot that gives this region to a VM through
    /// `KVM_SET_USER_MEMORY_REGION2`, numbered `slot`. guest_memfd-backed regions carry
    /// `KVM_MEM_GUEST_MEMFD` and their guest_memfd at offset 0.
    ///
    /// The descriptor holds addresses and a descriptor number owned by this region: the
    /// region (its guest memory) must outlive the slot.
    pub fn memslot(&self, slot: u32) -> kvm_userspace_memory_region2 {
        let (flags, guest_memfd) = match self.guest_memfd() {
            // A descriptor number is never negative.
            Some(g) => (KVM_MEM_GUEST_MEMFD, g.as_fd().as_raw_fd() as u32),
            None => (0, 0),
        };
        kvm_userspace_memory_region2 {
            slot,
            flags,
            guest_phys_addr: self.base(),
            memory_size: self.size(),
            userspace_addr: self.kvm_userspace_addr(),
            guest_memfd_offset: 0,
            guest_memfd,
            ..Default::default()
        }
    }
}
