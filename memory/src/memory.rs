// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`HostSafeMemory`]: guest memory made of regions, usable through `vm-memory`'s traits,
//! that refuses host access to private ranges. Its conversions are in `engine.rs`, its
//! building in `builder.rs`, the `vm-memory` glue in `span.rs`.

use std::sync::{Arc, Mutex};

use veil_attrs::{AttrMap, ConcurrentAttrMap, FrameRange, Gfn, PageState, RangeError, Run, Tag};
use vm_memory::{GuestAddress, GuestMemoryBackend, VolatileSlice};

use crate::attributes_vm::MemoryAttributesVm;
use crate::builder::GuestMemoryBuilder;
use crate::engine::{Counters, Listeners};
use crate::lease::AccessLock;
use crate::region::Region;
use crate::span::{GuestSpan, HostAccessError};
use crate::sys::Mapping;
use crate::syscalls::Syscalls;

/// Guest memory that the host can only touch where it is shared.
///
/// Made of [`Region`]s that never overlap. It implements `vm-memory`'s
/// [`GuestMemoryBackend`] (and so `GuestMemory` and `Bytes<GuestAddress>`), so
/// `linux-loader` and device models use it unchanged; every access is checked against the
/// current attributes, as a whole, before its first byte is copied. Conversions
/// ([`convert`](Self::convert)) change the state of ranges as each region's flavor
/// carries them out.
pub struct HostSafeMemory {
    pub(crate) regions: Vec<Region>,
    pub(crate) spans: Vec<GuestSpan>,
    pub(crate) attrs: Arc<ConcurrentAttrMap>,
    pub(crate) lock: Arc<AccessLock>,
    pub(crate) attributes_vm: Option<Arc<dyn MemoryAttributesVm>>,
    pub(crate) syscalls: Arc<dyn Syscalls>,
    pub(crate) listeners: Listeners,
    /// Held from inside a conversion until its listeners have run, so listeners see
    /// conversions one at a time and in order.
    pub(crate) notify: Mutex<()>,
    pub(crate) stats: Counters,
    /// Frames in `[0, end of the last region)`.
    pub(crate) frames: u64,
    /// The host address space every region's host view lives in; unmapped last.
    pub(crate) reservation: Mapping,
}

impl std::fmt::Debug for HostSafeMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSafeMemory")
            .field("regions", &self.regions)
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

impl HostSafeMemory {
    /// Starts describing guest memory.
    pub fn builder<'a>() -> GuestMemoryBuilder<'a> {
        GuestMemoryBuilder::new()
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
        let (_lease, ptr) = span.lease_in(&self.lock, offset, buf.len())?;
        // SAFETY: `ptr..ptr + len` is shared host view memory, kept accessible by the
        // lease; `buf` is a distinct Rust buffer.
        unsafe { VolatileSlice::new(ptr, buf.len()) }.copy_to(buf);
        Ok(())
    }

    /// Writes `buf` at `gpa`, all or nothing, refusing private memory.
    pub fn host_write(&self, gpa: u64, buf: &[u8]) -> Result<(), HostAccessError> {
        let (span, offset) = self.span_for(gpa, buf.len())?;
        let (_lease, ptr) = span.lease_in(&self.lock, offset, buf.len())?;
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
