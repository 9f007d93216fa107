// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Regions: a guest-physical range, its backing stores, its flavor and content policy,
//! and the memory slot KVM needs for it.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd};

use kvm_bindings::{KVM_MEM_GUEST_MEMFD, kvm_userspace_memory_region2};
use serde::Serialize;
use veil_attrs::FrameRange;

use crate::backend::{GuestMemfd, SharedMemfd};
use crate::sys::Mapping;

/// How conversions between shared and private are carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// KVM tracks the state (`KVM_SET_MEMORY_ATTRIBUTES`); private memory lives in a
    /// guest_memfd, shared memory in a memfd, and the side a conversion stops using is
    /// discarded. The style of SNP, TDX and software-protected VMs. Contents are not
    /// preserved.
    Attributes,
    /// One mmap-able guest_memfd holds the memory in both states; veil tracks the state
    /// and makes private ranges inaccessible in its own view (the pKVM style).
    InPlace,
    /// As in-place, on a plain memfd: works on any KVM, and hardens a VMM against touching
    /// guest memory it should not.
    Emulated,
}

impl Flavor {
    /// Every flavor.
    pub const ALL: [Flavor; 3] = [Flavor::Attributes, Flavor::InPlace, Flavor::Emulated];

    /// The flavor's name, as written in the docs and the `veil` report.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Attributes => "attributes",
            Flavor::InPlace => "in-place",
            Flavor::Emulated => "emulated",
        }
    }

    /// Whether the flavor can carry out conversions under `policy`. The attributes flavor
    /// cannot preserve: KVM's attributes select which of two backing stores the guest
    /// sees, so the bytes of one side never show on the other.
    pub fn honours(self, policy: ContentPolicy) -> bool {
        !(self == Flavor::Attributes && policy == ContentPolicy::Preserve)
    }

    /// Whether bytes the host writes while a page is shared are what the guest reads once
    /// it is private: true where one page serves both states and `policy` keeps it.
    pub fn keeps_contents(self, policy: ContentPolicy) -> bool {
        self != Flavor::Attributes && policy != ContentPolicy::Discard
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a conversion keeps the bytes of the pages it converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentPolicy {
    /// Converted pages keep their contents (pKVM-like share/unshare). In-place and
    /// emulated flavors only.
    Preserve,
    /// Converted pages are freed and read as zeros afterwards (SNP/TDX-like).
    Discard,
    /// Conversions free nothing. In the in-place and emulated flavors, where one page
    /// serves both states, this is [`Preserve`](ContentPolicy::Preserve). In the
    /// attributes flavor each side keeps its pages: a converted page reads what its new
    /// side last held, and the side no longer used is not given back to the host. For
    /// shared backings that cannot be punched page by page (hugetlb) or that a device
    /// has pinned.
    Retain,
}

/// Whether regions get a mapping of their own for KVM (`userspace_addr`), separate from
/// the host view veil protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmSideMapping {
    /// A separate read-write mapping is given to KVM as `userspace_addr`. Needed where KVM
    /// reaches guest memory through `userspace_addr` even for guest_memfd slots (PVM).
    Separate,
    /// guest_memfd-backed in-place regions give KVM no mapping (`userspace_addr = 0`):
    /// KVM maps the guest_memfd itself. Emulated regions still need one (KVM has nothing
    /// else to reach a memfd through).
    Omitted,
}

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
    /// Whether conversions keep contents. The attributes flavor only discards.
    pub policy: ContentPolicy,
    /// Back its shared memory with 2 MiB huge pages (attributes and emulated flavors).
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
}

/// The backing stores of a region, by flavor.
#[derive(Debug)]
pub(crate) enum Backing {
    Attributes {
        shared: SharedMemfd,
        private: GuestMemfd,
    },
    InPlace {
        memory: GuestMemfd,
    },
    Emulated {
        memory: SharedMemfd,
    },
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
    /// The separate mapping given to KVM, if any.
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

    /// Its guest_memfd (attributes: the private side; in-place: all of it).
    pub fn guest_memfd(&self) -> Option<&GuestMemfd> {
        match &self.backing {
            Backing::Attributes { private, .. } => Some(private),
            Backing::InPlace { memory } => Some(memory),
            Backing::Emulated { .. } => None,
        }
    }

    /// Its memfd (attributes: the shared side; emulated: all of it).
    pub fn shared_memfd(&self) -> Option<&SharedMemfd> {
        match &self.backing {
            Backing::Attributes { shared, .. } => Some(shared),
            Backing::Emulated { memory } => Some(memory),
            Backing::InPlace { .. } => None,
        }
    }

    /// The host address KVM is given as `userspace_addr`: the separate KVM-side mapping
    /// (in-place and emulated), the shared memfd's mapping (attributes), or 0 when the
    /// region is guest_memfd-only.
    pub fn kvm_userspace_addr(&self) -> u64 {
        match (&self.backing, &self.kvm_mapping) {
            (_, Some(m)) => m.as_ptr() as u64,
            (Backing::Attributes { .. }, None) => self.view_addr,
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
