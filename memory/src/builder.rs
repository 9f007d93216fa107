// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`GuestMemoryBuilder`]: from region descriptions to a [`HostSafeMemory`], each region
//! backed by its flavor's model and mapped into one reservation of host address space.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use veil_attrs::{AttrMap, ConcurrentAttrMap, FrameRange, PAGE_SHIFT, RangeError};
use vm_memory::GuestAddress;

use crate::attributes_vm::MemoryAttributesVm;
use crate::backend::{BackendError, GuestMemfdSource};
use crate::engine::{Counters, Listeners};
use crate::lease::AccessLock;
use crate::memory::HostSafeMemory;
use crate::model::{BackingEnv, BackingFile, ContentPolicy, Flavor, KvmAccess, KvmSideMapping};
use crate::region::{Region, RegionSpec};
use crate::span::GuestSpan;
use crate::sys::Mapping;
use crate::syscalls::{KernelSyscalls, Syscalls};

/// Why guest memory could not be built. Nothing is left allocated on failure.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No region was given.
    #[error("guest memory needs at least one region")]
    NoRegion,
    /// A region's base or size is unaligned, empty or overflows.
    #[error("region {index} is not a valid range")]
    Range {
        /// Its position in the order given.
        index: usize,
        /// What is wrong.
        #[source]
        source: RangeError,
    },
    /// Two regions overlap.
    #[error("regions {first} and {second} overlap")]
    Overlap {
        /// The lower one.
        first: FrameRange,
        /// The one that starts inside it.
        second: FrameRange,
    },
    /// The region's flavor cannot carry out conversions under its content policy (the
    /// attributes flavor cannot preserve: its conversions switch between two stores).
    #[error("{flavor} region {range} cannot honour content policy {policy:?}")]
    PolicyUnsupported {
        /// Its flavor.
        flavor: Flavor,
        /// The policy asked for.
        policy: ContentPolicy,
        /// The region.
        range: FrameRange,
    },
    /// guest_memfd has no huge page option here.
    #[error("{flavor} region {range} cannot use hugetlb: guest_memfd backs it")]
    HugetlbUnsupported {
        /// Its flavor.
        flavor: Flavor,
        /// The region.
        range: FrameRange,
    },
    /// A guest_memfd-backed flavor was asked for without a VM to create guest_memfds.
    #[error("{flavor} region {range} needs a guest_memfd source (a KVM VM)")]
    NeedsGuestMemfd {
        /// Its flavor.
        flavor: Flavor,
        /// The region.
        range: FrameRange,
    },
    /// A flavor that sets KVM's memory attributes was asked for without a
    /// [`MemoryAttributesVm`].
    #[error("{flavor} region {range} needs a MemoryAttributesVm")]
    NeedsAttributesVm {
        /// Its flavor.
        flavor: Flavor,
        /// The region.
        range: FrameRange,
    },
    /// The flavor needs guest_memfd flags the region does not ask for (in-place: a
    /// guest_memfd the host can map and touch).
    #[error("{flavor} region {range} needs guest_memfd flags {needed:#x}, not {flags:#x}")]
    GuestMemfdFlags {
        /// Its flavor.
        flavor: Flavor,
        /// The region.
        range: FrameRange,
        /// The flags asked for.
        flags: u64,
        /// The flags the flavor needs.
        needed: u64,
    },
    /// Creating or mapping a region's backing failed.
    #[error("backing region {range}")]
    Backend {
        /// The region.
        range: FrameRange,
        /// What failed.
        #[source]
        source: BackendError,
    },
    /// A model returned a backing that does not fit its region: a file of the wrong
    /// size, or a conversion granule that is not a power of two of at least 4 KiB or
    /// that the region is not aligned to.
    #[error("{flavor} region {range}: the backing its model made does not fit ({what})")]
    BadBacking {
        /// Its flavor.
        flavor: Flavor,
        /// The region.
        range: FrameRange,
        /// What does not fit.
        what: &'static str,
    },
    /// Reserving host address space for the layout failed.
    #[error("reserving {size:#x} bytes of host address space failed")]
    Reserve {
        /// The size asked for.
        size: u64,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
}

/// Builds a [`HostSafeMemory`]; see [`HostSafeMemory::builder`].
#[must_use]
pub struct GuestMemoryBuilder<'a> {
    specs: Vec<RegionSpec>,
    guest_memfd_source: Option<&'a dyn GuestMemfdSource>,
    attributes_vm: Option<Arc<dyn MemoryAttributesVm>>,
    kvm_side_mapping: KvmSideMapping,
    syscalls: Arc<dyn Syscalls>,
}

impl<'a> GuestMemoryBuilder<'a> {
    pub(crate) fn new() -> Self {
        GuestMemoryBuilder {
            specs: Vec::new(),
            guest_memfd_source: None,
            attributes_vm: None,
            kvm_side_mapping: KvmSideMapping::Separate,
            syscalls: Arc::new(KernelSyscalls),
        }
    }

    /// Adds a region.
    pub fn region(mut self, spec: RegionSpec) -> Self {
        self.specs.push(spec);
        self
    }

    /// Where guest_memfds come from (a [`VmFd`](kvm_ioctls::VmFd)); needed by attributes
    /// and in-place regions.
    pub fn guest_memfd_source(mut self, source: &'a dyn GuestMemfdSource) -> Self {
        self.guest_memfd_source = Some(source);
        self
    }

    /// The VM whose attributes attributes-flavor conversions set (an `Arc<VmFd>`, or a
    /// [`RecordingAttributesVm`](crate::RecordingAttributesVm)).
    pub fn attributes_vm(mut self, vm: Arc<dyn MemoryAttributesVm>) -> Self {
        self.attributes_vm = Some(vm);
        self
    }

    /// Whether guest_memfd regions give KVM a separate mapping (default:
    /// [`KvmSideMapping::Separate`]; take it from [`HostCaps`](crate::HostCaps)).
    pub fn kvm_side_mapping(mut self, mapping: KvmSideMapping) -> Self {
        self.kvm_side_mapping = mapping;
        self
    }

    /// Where conversions send their system calls (default: [`KernelSyscalls`], which
    /// issues them). A test passes a wrapper that fails chosen calls.
    pub fn syscalls(mut self, syscalls: Arc<dyn Syscalls>) -> Self {
        self.syscalls = syscalls;
        self
    }

    /// Checks the layout and every region against its flavor, then creates and maps
    /// every backing.
    pub fn build(self) -> Result<HostSafeMemory, BuildError> {
        // Validate everything before allocating anything.
        let mut specs = Vec::with_capacity(self.specs.len());
        for (index, spec) in self.specs.iter().enumerate() {
            let range = FrameRange::from_gpa(spec.base, spec.size)
                .map_err(|source| BuildError::Range { index, source })?;
            specs.push((range, *spec));
        }
        specs.sort_by_key(|(r, _)| r.start());
        for pair in specs.windows(2) {
            if pair[1].0.start() < pair[0].0.end() {
                return Err(BuildError::Overlap {
                    first: pair[0].0,
                    second: pair[1].0,
                });
            }
        }
        let env = BackingEnv {
            guest_memfd_source: self.guest_memfd_source,
            attributes_vm: self.attributes_vm.is_some(),
            kvm_side_mapping: self.kvm_side_mapping,
        };
        for &(range, spec) in &specs {
            if !spec.flavor.honours(spec.policy) {
                return Err(BuildError::PolicyUnsupported {
                    flavor: spec.flavor,
                    policy: spec.policy,
                    range,
                });
            }
            spec.flavor.model().check(&spec, &env)?;
        }
        let (Some(first), Some(last)) = (specs.first(), specs.last()) else {
            return Err(BuildError::NoRegion);
        };
        let layout_base = first.0.gpa();
        let end = last.0.end_gpa();
        let span_bytes = end - layout_base;
        let reservation = usize::try_from(span_bytes)
            .map_err(|_| io::Error::from_raw_os_error(libc::ENOMEM))
            .and_then(Mapping::reserve)
            .map_err(|source| BuildError::Reserve {
                size: span_bytes,
                source,
            })?;

        let mut regions = Vec::with_capacity(specs.len());
        for &(range, spec) in &specs {
            let flavor = spec.flavor;
            let backing = flavor.model().back(&spec, &env)?;
            let bad = |what| BuildError::BadBacking {
                flavor,
                range,
                what,
            };
            if backing.view.size() != range.size()
                || backing
                    .private
                    .as_ref()
                    .is_some_and(|p| p.size() != range.size())
            {
                return Err(bad("a backing file's size differs from the region's"));
            }
            let granule = backing.granule;
            if !granule.is_power_of_two()
                || granule < veil_attrs::PAGE_SIZE
                || !range.gpa().is_multiple_of(granule)
                || !range.size().is_multiple_of(granule)
            {
                return Err(bad("the conversion granule does not tile the region"));
            }
            let map_error = |source| BuildError::Backend {
                range,
                source: BackendError::Map {
                    len: range.size(),
                    source,
                },
            };
            // Offsets fit: the reservation of `span_bytes` succeeded.
            let view_offset = (range.gpa() - layout_base) as usize;
            reservation
                .place_shared(view_offset, backing.view.as_fd(), range.size() as usize)
                .map_err(map_error)?;
            let kvm_mapping = match backing.kvm {
                KvmAccess::OwnMapping => Some(
                    match &backing.view {
                        BackingFile::GuestMemfd(g) => g.map(),
                        BackingFile::Memfd(m) => m.map(),
                    }
                    .map_err(|source| BuildError::Backend { range, source })?,
                ),
                KvmAccess::HostView | KvmAccess::None => None,
            };
            regions.push(Region {
                range,
                flavor,
                policy: spec.policy,
                backing,
                view_offset,
                view_addr: reservation.as_ptr() as u64 + view_offset as u64,
                kvm_mapping,
            });
        }

        let map = AttrMap::new(end).map_err(|source| BuildError::Range { index: 0, source })?;
        let attrs = Arc::new(ConcurrentAttrMap::new(map));
        let lock = Arc::new(AccessLock::new(end));
        let mut spans: Vec<GuestSpan> = Vec::new();
        for r in &regions {
            match spans.last_mut() {
                Some(s) if s.start.0 + s.len == r.base() => s.len += r.size(),
                _ => spans.push(GuestSpan {
                    start: GuestAddress(r.base()),
                    len: r.size(),
                    host: r.view_addr as usize,
                    attrs: Arc::clone(&attrs),
                    lock: Arc::clone(&lock),
                }),
            }
        }
        Ok(HostSafeMemory {
            regions,
            spans,
            attrs,
            lock,
            attributes_vm: self.attributes_vm,
            syscalls: self.syscalls,
            listeners: Listeners::default(),
            notify: Mutex::new(()),
            stats: Counters::default(),
            frames: end >> PAGE_SHIFT,
            reservation,
        })
    }
}
