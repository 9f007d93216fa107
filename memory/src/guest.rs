// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`HostSafeMemory`]: guest memory made of regions, usable through `vm-memory`'s traits,
//! that refuses host access to private ranges and converts ranges in each flavor.

use std::io;
use std::mem::size_of;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use smallvec::SmallVec;
use veil_attrs::{
    AttrMap, AttrMapWriter, Attributes, ConcurrentAttrMap, FrameRange, Gfn, PAGE_SHIFT, PageState,
    RangeError, Run, Tag,
};
use vm_memory::{
    AtomicAccess, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion,
    GuestUsize, MemoryRegionAddress, ReadVolatile, VolatileSlice, WriteVolatile,
};

use crate::attributes_vm::MemoryAttributesVm;
use crate::backend::{
    BackendError, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, GuestMemfd,
    GuestMemfdSource, HUGE_PAGE_SIZE, SharedMemfd,
};
use crate::convert::{
    self, Conversion, ConversionListener, ConvertError, Op, Plan, RegionPlan, StateChange,
    StateChanges, StepKind,
};
use crate::lease::{AccessLock, ExclusiveGuard, HostAccessLease, HostAccessLeases};
use crate::region::{Backing, Flavor, KvmSideMapping, Region, RegionSpec};
use crate::sys::{self, Access, Mapping};

/// A host access that veil refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostAccessError {
    /// Some byte of the access is private; nothing was read or written.
    #[error("host access of {len:#x} bytes at {addr:#x} touches private memory {private}")]
    Private {
        /// The guest-physical address the access started at.
        addr: u64,
        /// Its length in bytes.
        len: usize,
        /// The first private run it touches (clipped to the access's pages).
        private: FrameRange,
    },
    /// Some byte of the access is not guest memory, or is beyond a contiguous span.
    #[error("{len:#x} bytes at {addr:#x} are not all in one contiguous span of guest memory")]
    NotGuestMemory {
        /// The guest-physical address the access started at.
        addr: u64,
        /// Its length in bytes.
        len: usize,
    },
}

impl From<HostAccessError> for GuestMemoryError {
    fn from(e: HostAccessError) -> Self {
        match e {
            HostAccessError::NotGuestMemory { addr, .. } => {
                GuestMemoryError::InvalidGuestAddress(GuestAddress(addr))
            }
            private => {
                GuestMemoryError::IOError(io::Error::new(io::ErrorKind::PermissionDenied, private))
            }
        }
    }
}

/// The [`HostAccessError`] inside a `vm-memory` error returned by a [`HostSafeMemory`],
/// if the access was refused because it touched private memory.
pub fn host_access_error(e: &GuestMemoryError) -> Option<&HostAccessError> {
    match e {
        GuestMemoryError::IOError(io) => io.get_ref()?.downcast_ref::<HostAccessError>(),
        _ => None,
    }
}

/// Fails with [`HostAccessError::Private`] if any byte of `[gpa, gpa + len)` is private.
#[inline]
fn check_shared(map: &AttrMap, gpa: u64, len: usize) -> Result<(), HostAccessError> {
    let not_memory = || HostAccessError::NotGuestMemory { addr: gpa, len };
    if len == 0 {
        return Ok(());
    }
    let last = gpa.checked_add(len as u64 - 1).ok_or_else(not_memory)?;
    let (first, last) = (Gfn(gpa >> PAGE_SHIFT), Gfn(last >> PAGE_SHIFT));
    // Most accesses (a descriptor, a header) stay inside one page: one lookup.
    if first == last && !map.get(first).map_err(|_| not_memory())?.is_private() {
        return Ok(());
    }
    let pages = FrameRange::from_bounds(first, Gfn(last.0 + 1)).ok_or_else(not_memory)?;
    let mut runs = map.runs(pages).map_err(|_| not_memory())?;
    match runs.find(|run| run.state.is_private()) {
        Some(run) => Err(HostAccessError::Private {
            addr: gpa,
            len,
            private: run.range,
        }),
        None => Ok(()),
    }
}

/// A guest-physically contiguous run of regions, mapped contiguously in the host: what
/// [`HostSafeMemory`] shows `vm-memory` as one region.
///
/// Because adjacent regions form one span, an access that crosses from one region into
/// the next is one slice, checked as a whole before any byte moves. Every slice it hands
/// out holds a [`HostAccessLease`].
#[derive(Debug)]
pub struct GuestSpan {
    start: GuestAddress,
    len: u64,
    host: usize,
    attrs: Arc<ConcurrentAttrMap>,
    lock: Arc<AccessLock>,
}

impl GuestSpan {
    /// Checks `[offset, offset + count)` is inside the span and shared, under a lease.
    #[inline]
    fn lease(
        &self,
        offset: u64,
        count: usize,
    ) -> Result<(HostAccessLease<'_>, *mut u8), HostAccessError> {
        let gpa = self.start.0.wrapping_add(offset);
        let inside = offset
            .checked_add(count as u64)
            .is_some_and(|end| end <= self.len);
        if !inside {
            return Err(HostAccessError::NotGuestMemory {
                addr: gpa,
                len: count,
            });
        }
        let lease = self.lock.read();
        self.attrs.read(|map| check_shared(map, gpa, count))?;
        // The offset is inside the span, whose host view is mapped contiguously.
        Ok((lease, (self.host + offset as usize) as *mut u8))
    }

    /// [`lease`](Self::lease), failing as `vm-memory` expects of a region: an access
    /// outside it is an invalid region address.
    #[inline]
    fn region_lease(
        &self,
        offset: u64,
        count: usize,
    ) -> vm_memory::guest_memory::Result<(HostAccessLease<'_>, *mut u8)> {
        self.lease(offset, count).map_err(|e| match e {
            HostAccessError::NotGuestMemory { .. } => GuestMemoryError::InvalidBackendAddress,
            private => private.into(),
        })
    }

    #[inline]
    fn slice(
        &self,
        offset: u64,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, HostAccessLease<'_>>> {
        let (lease, ptr) = self.region_lease(offset, count)?;
        // SAFETY: `ptr..ptr + count` lies in the span's host view, which lives as long as
        // the guest memory `self` borrows from; it is shared (checked above) and stays
        // accessible while `lease` (moved into the slice) is alive. Guest memory is only
        // ever accessed volatilely.
        Ok(unsafe { VolatileSlice::with_bitmap(ptr, count, lease, None) })
    }

    /// How many of `want` bytes fit from `addr` to the end of the span.
    fn clamp(
        &self,
        addr: MemoryRegionAddress,
        want: usize,
    ) -> vm_memory::guest_memory::Result<usize> {
        match self.len.checked_sub(addr.0) {
            Some(left) if left > 0 || want == 0 => {
                Ok(want.min(usize::try_from(left).unwrap_or(usize::MAX)))
            }
            _ => Err(GuestMemoryError::InvalidBackendAddress),
        }
    }
}

impl GuestMemoryRegion for GuestSpan {
    type B = HostAccessLeases;

    fn len(&self) -> GuestUsize {
        self.len
    }

    fn start_addr(&self) -> GuestAddress {
        self.start
    }

    fn bitmap(&self) -> HostAccessLease<'_> {
        HostAccessLease::default()
    }

    /// The host address of `addr`, if its page is shared. It stays valid only while the
    /// page stays shared: after a conversion to private, a load or store through it
    /// faults (in-place and emulated) or reaches discarded memory (attributes).
    fn get_host_address(
        &self,
        addr: MemoryRegionAddress,
    ) -> vm_memory::guest_memory::Result<*mut u8> {
        let (_lease, ptr) = self.region_lease(addr.0, 1)?;
        Ok(ptr)
    }

    #[inline]
    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::guest_memory::Result<VolatileSlice<'_, HostAccessLease<'_>>> {
        self.slice(offset.0, count)
    }
}

impl Bytes<MemoryRegionAddress> for GuestSpan {
    type E = GuestMemoryError;

    fn write(&self, buf: &[u8], addr: MemoryRegionAddress) -> Result<usize, Self::E> {
        let count = self.clamp(addr, buf.len())?;
        Ok(self.slice(addr.0, count)?.write(&buf[..count], 0)?)
    }

    fn read(&self, buf: &mut [u8], addr: MemoryRegionAddress) -> Result<usize, Self::E> {
        let count = self.clamp(addr, buf.len())?;
        Ok(self.slice(addr.0, count)?.read(&mut buf[..count], 0)?)
    }

    fn write_slice(&self, buf: &[u8], addr: MemoryRegionAddress) -> Result<(), Self::E> {
        Ok(self.slice(addr.0, buf.len())?.write_slice(buf, 0)?)
    }

    fn read_slice(&self, buf: &mut [u8], addr: MemoryRegionAddress) -> Result<(), Self::E> {
        Ok(self.slice(addr.0, buf.len())?.read_slice(buf, 0)?)
    }

    fn read_volatile_from<F: ReadVolatile>(
        &self,
        addr: MemoryRegionAddress,
        src: &mut F,
        count: usize,
    ) -> Result<usize, Self::E> {
        let count = self.clamp(addr, count)?;
        Ok(self
            .slice(addr.0, count)?
            .read_volatile_from(0, src, count)?)
    }

    fn read_exact_volatile_from<F: ReadVolatile>(
        &self,
        addr: MemoryRegionAddress,
        src: &mut F,
        count: usize,
    ) -> Result<(), Self::E> {
        Ok(self
            .slice(addr.0, count)?
            .read_exact_volatile_from(0, src, count)?)
    }

    fn write_volatile_to<F: WriteVolatile>(
        &self,
        addr: MemoryRegionAddress,
        dst: &mut F,
        count: usize,
    ) -> Result<usize, Self::E> {
        let count = self.clamp(addr, count)?;
        Ok(self
            .slice(addr.0, count)?
            .write_volatile_to(0, dst, count)?)
    }

    fn write_all_volatile_to<F: WriteVolatile>(
        &self,
        addr: MemoryRegionAddress,
        dst: &mut F,
        count: usize,
    ) -> Result<(), Self::E> {
        Ok(self
            .slice(addr.0, count)?
            .write_all_volatile_to(0, dst, count)?)
    }

    fn store<T: AtomicAccess>(
        &self,
        val: T,
        addr: MemoryRegionAddress,
        order: Ordering,
    ) -> Result<(), Self::E> {
        Ok(self.slice(addr.0, size_of::<T>())?.store(val, 0, order)?)
    }

    fn load<T: AtomicAccess>(
        &self,
        addr: MemoryRegionAddress,
        order: Ordering,
    ) -> Result<T, Self::E> {
        Ok(self.slice(addr.0, size_of::<T>())?.load(0, order)?)
    }
}

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
    /// The attributes flavor cannot keep contents across conversions.
    #[error("attributes region {range} cannot preserve contents: its conversions discard")]
    PreserveUnsupported {
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
    /// The attributes flavor was asked for without a [`MemoryAttributesVm`].
    #[error("attributes region {range} needs a MemoryAttributesVm")]
    NeedsAttributesVm {
        /// The region.
        range: FrameRange,
    },
    /// In-place regions need a guest_memfd the host can map and touch.
    #[error(
        "in-place region {range} needs guest_memfd flags GUEST_MEMFD_FLAG_MMAP | \
         GUEST_MEMFD_FLAG_INIT_SHARED, not {flags:#x}"
    )]
    InPlaceFlags {
        /// The region.
        range: FrameRange,
        /// The flags asked for.
        flags: u64,
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
}

impl<'a> GuestMemoryBuilder<'a> {
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

    /// Whether in-place regions get a separate mapping for KVM (default:
    /// [`KvmSideMapping::Separate`]; take it from [`HostCaps`](crate::HostCaps)).
    pub fn kvm_side_mapping(mut self, mapping: KvmSideMapping) -> Self {
        self.kvm_side_mapping = mapping;
        self
    }

    /// Checks the layout, then creates and maps every backing.
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
        for &(range, spec) in &specs {
            let needs_gmem = spec.flavor != Flavor::Emulated;
            if !spec.flavor.honours(spec.policy) {
                return Err(BuildError::PreserveUnsupported { range });
            }
            if spec.flavor == Flavor::InPlace && spec.hugetlb {
                return Err(BuildError::HugetlbUnsupported {
                    flavor: spec.flavor,
                    range,
                });
            }
            if needs_gmem && self.guest_memfd_source.is_none() {
                return Err(BuildError::NeedsGuestMemfd {
                    flavor: spec.flavor,
                    range,
                });
            }
            if spec.flavor == Flavor::Attributes && self.attributes_vm.is_none() {
                return Err(BuildError::NeedsAttributesVm { range });
            }
            let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
            if spec.flavor == Flavor::InPlace
                && let Some(flags) = spec.guest_memfd_flags
                && flags & want != want
            {
                return Err(BuildError::InPlaceFlags { range, flags });
            }
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
            let backend = |source| BuildError::Backend { range, source };
            let size = range.size();
            // Offsets fit: the reservation of `span_bytes` succeeded.
            let view_offset = (range.gpa() - layout_base) as usize;
            let place = |fd: std::os::fd::BorrowedFd<'_>| {
                reservation
                    .place_shared(view_offset, fd, size as usize)
                    .map_err(|source| BuildError::Backend {
                        range,
                        source: BackendError::Map { len: size, source },
                    })
            };
            let gmem_source = self.guest_memfd_source;
            let create_gmem = |flags| match gmem_source {
                Some(src) => GuestMemfd::create(src, size, flags).map_err(backend),
                None => Err(BuildError::NeedsGuestMemfd {
                    flavor: spec.flavor,
                    range,
                }),
            };
            let (backing, kvm_mapping) = match spec.flavor {
                Flavor::Attributes => {
                    let shared = SharedMemfd::new(size, spec.hugetlb).map_err(backend)?;
                    let private = create_gmem(spec.guest_memfd_flags.unwrap_or(0))?;
                    place(shared.as_fd())?;
                    (Backing::Attributes { shared, private }, None)
                }
                Flavor::InPlace => {
                    let flags = spec
                        .guest_memfd_flags
                        .unwrap_or(GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
                    let memory = create_gmem(flags)?;
                    memory.check_mappable().map_err(backend)?;
                    place(memory.as_fd())?;
                    let kvm = match self.kvm_side_mapping {
                        KvmSideMapping::Separate => Some(memory.map().map_err(backend)?),
                        KvmSideMapping::Omitted => None,
                    };
                    (Backing::InPlace { memory }, kvm)
                }
                Flavor::Emulated => {
                    let memory = SharedMemfd::new(size, spec.hugetlb).map_err(backend)?;
                    place(memory.as_fd())?;
                    let kvm = memory.map().map_err(backend)?;
                    (Backing::Emulated { memory }, Some(kvm))
                }
            };
            regions.push(Region {
                range,
                flavor: spec.flavor,
                policy: spec.policy,
                backing,
                view_offset,
                view_addr: reservation.as_ptr() as u64 + view_offset as u64,
                kvm_mapping,
            });
        }

        let map = AttrMap::new(end).map_err(|source| BuildError::Range { index: 0, source })?;
        let attrs = Arc::new(ConcurrentAttrMap::new(map));
        let lock = Arc::new(AccessLock::default());
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
            listeners: Mutex::new(Vec::new()),
            next_listener: AtomicU64::new(0),
            listener_count: AtomicUsize::new(0),
            notify: Mutex::new(()),
            stats: Counters::default(),
            frames: end >> PAGE_SHIFT,
            #[cfg(test)]
            fail_at: Mutex::new(None),
            reservation,
        })
    }
}

/// System calls issued by conversions so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConversionStats {
    /// `KVM_SET_MEMORY_ATTRIBUTES` calls.
    pub set_memory_attributes: u64,
    /// `mprotect` calls on the host view.
    pub protections: u64,
    /// Hole punches (guest_memfd or memfd).
    pub discards: u64,
}

impl ConversionStats {
    /// All calls.
    pub fn total(&self) -> u64 {
        self.set_memory_attributes + self.protections + self.discards
    }

    /// The calls made since `earlier`.
    pub fn since(&self, earlier: &ConversionStats) -> ConversionStats {
        ConversionStats {
            set_memory_attributes: self.set_memory_attributes - earlier.set_memory_attributes,
            protections: self.protections - earlier.protections,
            discards: self.discards - earlier.discards,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    set_memory_attributes: AtomicU64,
    protections: AtomicU64,
    discards: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    ///
    /// Conversions count their system calls inside the attribute map's update, as the
    /// only writer (`_writer` shows it), so no other thread changes a counter meanwhile:
    /// a load and a store do what an atomic add would, without a locked instruction.
    fn bump(counter: &AtomicU64, _writer: &AttrMapWriter<'_>) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// Identifies a subscribed [`ConversionListener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// Guest memory that the host can only touch where it is shared.
///
/// Made of [`Region`]s that never overlap. It implements `vm-memory`'s
/// [`GuestMemoryBackend`] (and so `GuestMemory` and `Bytes<GuestAddress>`), so
/// `linux-loader` and device models use it unchanged; every access is checked against the
/// current attributes, as a whole, before its first byte is copied. Conversions
/// ([`convert`](Self::convert)) change the state of ranges in each region's flavor.
pub struct HostSafeMemory {
    regions: Vec<Region>,
    spans: Vec<GuestSpan>,
    pub(crate) attrs: Arc<ConcurrentAttrMap>,
    lock: Arc<AccessLock>,
    attributes_vm: Option<Arc<dyn MemoryAttributesVm>>,
    listeners: Mutex<Vec<(ListenerId, Arc<dyn ConversionListener>)>>,
    next_listener: AtomicU64,
    listener_count: AtomicUsize,
    /// Held from inside a conversion until its listeners have run, so listeners see
    /// conversions one at a time and in order.
    notify: Mutex<()>,
    stats: Counters,
    /// Frames in `[0, end of the last region)`.
    frames: u64,
    #[cfg(test)]
    fail_at: Mutex<Option<(usize, i32)>>,
    /// The host address space every region's host view lives in; unmapped last.
    reservation: Mapping,
}

impl std::fmt::Debug for HostSafeMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSafeMemory")
            .field("regions", &self.regions)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

/// Puts back the state each change had, newest first.
fn restore(map: &mut AttrMapWriter<'_>, changes: &[StateChange]) {
    for c in changes.iter().rev() {
        // Restoring ranges that were just set cannot fail: they are in bounds.
        let _ = map.set_state(c.range, c.old);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value guarded here stays consistent across a panic (a list, a unit).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The regions one range covers.
type Covering = SmallVec<[RegionPlan; 2]>;

type Held<'a> = (
    Conversion,
    Option<MutexGuard<'a, ()>>,
    Option<ExclusiveGuard<'a>>,
);

impl HostSafeMemory {
    /// Starts describing guest memory.
    pub fn builder<'a>() -> GuestMemoryBuilder<'a> {
        GuestMemoryBuilder {
            specs: Vec::new(),
            guest_memfd_source: None,
            attributes_vm: None,
            kvm_side_mapping: KvmSideMapping::Separate,
        }
    }

    /// The regions, in address order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The state of every frame as of this call (lock-free; later conversions do not
    /// change it). Read-only: a host access is safe only while the map agrees with the
    /// host mappings, so the map changes only through conversions and [`set_tag`].
    ///
    /// [`set_tag`]: HostSafeMemory::set_tag
    pub fn attributes(&self) -> Arc<AttrMap> {
        self.attrs.snapshot()
    }

    /// Tags every frame of `range` with `tag` (`None` clears it), keeping each frame's
    /// attributes: sub-state metadata issues no system call and is not a conversion, so
    /// listeners are not told. Returns how many frames' tags changed; on error nothing
    /// changes.
    pub fn set_tag(&self, range: FrameRange, tag: Option<Tag>) -> Result<u64, RangeError> {
        self.attrs.update(|w| {
            let runs: Vec<Run> = w.runs(range)?.collect();
            let mut changed = 0;
            for run in runs {
                let state = PageState {
                    attributes: run.state.attributes,
                    tag,
                };
                changed += w.set_state(run.range, state)?.pages();
            }
            Ok(changed)
        })
    }

    /// The state of one frame.
    pub fn state(&self, gfn: Gfn) -> Result<PageState, RangeError> {
        self.attrs.get(gfn)
    }

    /// Reads `buf.len()` bytes at `gpa`, all or nothing, refusing private memory.
    pub fn host_read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HostAccessError> {
        let (span, offset) = self.span_for(gpa, buf.len())?;
        let (_lease, ptr) = span.lease(offset, buf.len())?;
        // SAFETY: `ptr..ptr + len` is shared host view memory, kept accessible by the
        // lease; `buf` is a distinct Rust buffer.
        unsafe { VolatileSlice::new(ptr, buf.len()) }.copy_to(buf);
        Ok(())
    }

    /// Writes `buf` at `gpa`, all or nothing, refusing private memory.
    pub fn host_write(&self, gpa: u64, buf: &[u8]) -> Result<(), HostAccessError> {
        let (span, offset) = self.span_for(gpa, buf.len())?;
        let (_lease, ptr) = span.lease(offset, buf.len())?;
        // SAFETY: as in `host_read`.
        unsafe { VolatileSlice::new(ptr, buf.len()) }.copy_from(buf);
        Ok(())
    }

    fn span_for(&self, gpa: u64, len: usize) -> Result<(&GuestSpan, u64), HostAccessError> {
        let found = self
            .find_region(GuestAddress(gpa))
            .map(|s| (s, gpa - s.start.0));
        found.ok_or(HostAccessError::NotGuestMemory { addr: gpa, len })
    }

    /// Subscribes `listener` to every conversion that starts after this returns.
    pub fn subscribe(&self, listener: Arc<dyn ConversionListener>) -> ListenerId {
        let id = ListenerId(self.next_listener.fetch_add(1, Ordering::Relaxed));
        let mut l = lock(&self.listeners);
        l.push((id, listener));
        self.listener_count.store(l.len(), Ordering::Release);
        id
    }

    /// Unsubscribes a listener; `false` if it was not subscribed.
    pub fn unsubscribe(&self, id: ListenerId) -> bool {
        let mut l = lock(&self.listeners);
        let before = l.len();
        l.retain(|(i, _)| *i != id);
        self.listener_count.store(l.len(), Ordering::Release);
        l.len() != before
    }

    /// The system calls conversions have issued so far.
    pub fn stats(&self) -> ConversionStats {
        ConversionStats {
            set_memory_attributes: self.stats.set_memory_attributes.load(Ordering::Relaxed),
            protections: self.stats.protections.load(Ordering::Relaxed),
            discards: self.stats.discards.load(Ordering::Relaxed),
        }
    }

    /// Converts the byte range `[gpa, gpa + size)` to `to`; see [`convert`](Self::convert).
    pub fn convert_gpa(
        &self,
        gpa: u64,
        size: u64,
        to: Attributes,
    ) -> Result<Conversion, ConvertError> {
        self.convert(FrameRange::from_gpa(gpa, size)?, to)
    }

    /// Makes every page of `range` have attributes `to` (and no tag), in each region's
    /// flavor, and returns what changed.
    ///
    /// Only pages whose state changes are touched; a range already in state `to` costs
    /// no system call. A range that reaches past the end or crosses a gap between regions
    /// fails before anything changes; a failed system call is undone (see
    /// [`ConvertError`]). Readers see the state before or after the whole conversion,
    /// never a mix, and a host access never faults on a page that becomes private under
    /// it: conversions to private wait for outstanding [`HostAccessLease`]s.
    ///
    /// Listeners are told after the new state is visible. Do not call this while holding
    /// a slice of this memory on the same thread (a conversion to private would wait for
    /// it forever) or from a listener.
    pub fn convert(&self, range: FrameRange, to: Attributes) -> Result<Conversion, ConvertError> {
        self.convert_ranges(&[range], to)
    }

    /// Converts several ranges to `to` as one conversion: all or nothing, published
    /// once, listeners told once. Each range is planned on its own, exactly as
    /// [`convert`](Self::convert) plans it; this only saves publishing the state once per
    /// range (a loader setting up a memory map, or a checkerboard).
    pub fn convert_ranges(
        &self,
        ranges: &[FrameRange],
        to: Attributes,
    ) -> Result<Conversion, ConvertError> {
        let mut covered: SmallVec<[(FrameRange, Covering); 1]> = SmallVec::new();
        for &range in ranges {
            covered.push((range, self.covering(range)?));
        }
        let target = PageState::new(to);
        let convert = |map: &mut AttrMapWriter<'_>| -> Result<Held<'_>, ConvertError> {
            // What changed, as listeners and the caller are told; also what a rollback
            // restores.
            let mut changes = StateChanges::new();
            let mut plan = Plan::default();
            for (range, regions) in &covered {
                let some = match map.set_state(*range, target) {
                    Ok(c) => c,
                    Err(e) => {
                        restore(map, &changes);
                        return Err(e.into());
                    }
                };
                convert::plan_into(&mut plan, regions, &some, to);
                changes.extend(some.iter().map(|c| StateChange {
                    range: c.range,
                    old: c.previous,
                    new: target,
                }));
            }
            if changes.is_empty() {
                return Ok((Conversion::default(), None, None));
            }
            // Only conversions that start with listeners subscribed are told; without
            // any, there is no order to keep.
            let notify =
                (self.listener_count.load(Ordering::Acquire) > 0).then(|| lock(&self.notify));
            // Taking host access away: wait until no host access is in flight, and keep
            // new ones out until the new state is published.
            let exclusive =
                (to.is_private() && !plan.reversible.is_empty()).then(|| self.lock.write());
            if let Err(e) = self.execute(&plan, &changes, to, map) {
                restore(map, &changes);
                return Err(e);
            }
            let conversion = Conversion {
                pages_changed: changes.iter().map(|c| c.range.pages()).sum(),
                bytes_discarded: plan.bytes_discarded,
                changes,
            };
            Ok((conversion, notify, exclusive))
        };
        // A range already in state `to` changes nothing and publishes nothing.
        let outcome = match self.attrs.try_update(convert) {
            Ok(outcome) => outcome,
            Err(convert) => {
                // Another conversion holds the writer's lock. Already there (a vCPU
                // repeating a request): answer from the published state without waiting
                // for it; the conversion running is then ordered after this one.
                let unchanged = self.attrs.read(|map| {
                    covered.iter().all(|(range, _)| {
                        map.runs(*range)
                            .is_ok_and(|mut runs| runs.all(|run| run.state == target))
                    })
                });
                if unchanged {
                    return Ok(Conversion::default());
                }
                self.attrs.update(convert)
            }
        };
        let (conversion, notify, exclusive) = outcome?;
        drop(exclusive);
        if let Some(notify) = notify {
            let listeners: SmallVec<[Arc<dyn ConversionListener>; 2]> = lock(&self.listeners)
                .iter()
                .map(|(_, l)| Arc::clone(l))
                .collect();
            for change in &conversion.changes {
                for l in &listeners {
                    l.converted(change);
                }
            }
            drop(notify);
        }
        Ok(conversion)
    }

    /// The regions `range` covers; fails unless they tile it without a gap.
    fn covering(&self, range: FrameRange) -> Result<Covering, ConvertError> {
        let range = range.check_within(self.frames, self.frames << PAGE_SHIFT)?;
        let mut out = Covering::new();
        let mut cursor = range.start();
        for (index, r) in self.regions.iter().enumerate() {
            if r.range.end() <= cursor {
                continue;
            }
            if r.range.start() > cursor {
                break;
            }
            if r.flavor == Flavor::Emulated
                && r.shared_memfd().is_some_and(SharedMemfd::is_hugetlb)
                && let Some(part) = range.intersection(&r.range)
                && (!(part.gpa() - r.base()).is_multiple_of(HUGE_PAGE_SIZE)
                    || !part.size().is_multiple_of(HUGE_PAGE_SIZE))
            {
                // The host view's protection changes in whole huge pages only.
                return Err(ConvertError::HugePageUnaligned {
                    range,
                    region: r.range,
                });
            }
            out.push(RegionPlan {
                index,
                range: r.range,
                flavor: r.flavor,
                policy: r.policy,
            });
            cursor = r.range.end();
            if cursor >= range.end() {
                return Ok(out);
            }
        }
        Err(ConvertError::Gap {
            range,
            gap: cursor.0 << PAGE_SHIFT,
        })
    }

    /// Issues the system calls of `plan`, undoing the reversible ones done so far if one
    /// fails. Only inside the attribute map's update (`writer`).
    fn execute(
        &self,
        plan: &Plan,
        changes: &[StateChange],
        to: Attributes,
        writer: &AttrMapWriter<'_>,
    ) -> Result<(), ConvertError> {
        let ops = || plan.reversible.iter().chain(&plan.discards);
        for (count, op) in ops().enumerate() {
            if let Err(source) = self.run(op, writer) {
                let failed = |source| ConvertError::Step {
                    step: op.kind,
                    range: op.range,
                    source,
                };
                let done: SmallVec<[&Op; 8]> = ops().take(count).collect();
                for earlier in done.iter().rev() {
                    for u in convert::undo(earlier, changes, to) {
                        if let Err(undo_error) = self.run(&u, writer) {
                            return Err(ConvertError::RollbackFailed {
                                step: op.kind,
                                range: op.range,
                                source,
                                undo_step: u.kind,
                                undo_range: u.range,
                                undo_error,
                            });
                        }
                    }
                }
                return Err(failed(source));
            }
        }
        Ok(())
    }

    /// Issues one system call and counts it. Only inside the attribute map's update
    /// (`writer`), which makes this thread the only one changing the counters.
    fn run(&self, op: &Op, writer: &AttrMapWriter<'_>) -> io::Result<()> {
        #[cfg(test)]
        {
            let mut f = lock(&self.fail_at);
            match *f {
                Some((0, errno)) => {
                    *f = None;
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Some((n, errno)) => *f = Some((n - 1, errno)),
                None => {}
            }
        }
        let region = &self.regions[op.region];
        let offset = op.range.gpa() - region.base();
        let len = op.range.size();
        let missing = || io::Error::from_raw_os_error(libc::EBADF);
        match op.kind {
            StepKind::SetAttributes(a) => {
                Counters::bump(&self.stats.set_memory_attributes, writer);
                let vm = self.attributes_vm.as_ref().ok_or_else(missing)?;
                vm.set_memory_attributes(op.range, a)
            }
            StepKind::Protect { inaccessible } => {
                Counters::bump(&self.stats.protections, writer);
                let access = if inaccessible {
                    Access::None
                } else {
                    Access::ReadWrite
                };
                // Inside the reservation: the region's view is, and the op inside it.
                self.reservation
                    .protect(region.view_offset + offset as usize, len as usize, access)
            }
            StepKind::DiscardGuestMemfd => {
                Counters::bump(&self.stats.discards, writer);
                let g = region.guest_memfd().ok_or_else(missing)?;
                sys::punch_hole(g.as_fd(), offset, len)
            }
            StepKind::DiscardMemfd => {
                Counters::bump(&self.stats.discards, writer);
                let m = region.shared_memfd().ok_or_else(missing)?;
                sys::punch_hole(m.as_fd(), offset, len)
            }
        }
    }

    /// The host-access lock (tests only).
    #[cfg(test)]
    pub(crate) fn access_lock(&self) -> &AccessLock {
        &self.lock
    }

    /// Makes the `n`th system call from now fail with `errno` (tests only).
    #[cfg(test)]
    pub(crate) fn fail_call_after(&self, n: usize, errno: i32) {
        *lock(&self.fail_at) = Some((n, errno));
    }
}

impl GuestMemoryBackend for HostSafeMemory {
    type R = GuestSpan;

    fn num_regions(&self) -> usize {
        self.spans.len()
    }

    #[inline]
    fn find_region(&self, addr: GuestAddress) -> Option<&GuestSpan> {
        let i = self.spans.partition_point(|s| s.start <= addr);
        let s = self.spans.get(i.checked_sub(1)?)?;
        (addr.0 - s.start.0 < s.len).then_some(s)
    }

    fn iter(&self) -> impl Iterator<Item = &GuestSpan> {
        self.spans.iter()
    }
}
