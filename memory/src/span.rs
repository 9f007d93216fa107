// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `vm-memory` side of guest memory: [`GuestSpan`], what `vm-memory` sees as a
//! region, and [`HostAccessError`], why a host access was refused. Every access is
//! checked against the attributes as a whole, under a host-access lease, before its first
//! byte moves.

use std::io;
use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use veil_attrs::{AttrMap, ConcurrentAttrMap, FrameRange, Gfn, PAGE_SHIFT};
use vm_memory::{
    AtomicAccess, Bytes, GuestAddress, GuestMemoryError, GuestMemoryRegion, GuestUsize,
    MemoryRegionAddress, ReadVolatile, VolatileSlice, WriteVolatile,
};

use crate::lease::{AccessLock, HostAccessLease, HostAccessLeases};

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

/// The [`HostAccessError`] inside a `vm-memory` error returned by a [`HostSafeMemory`](crate::HostSafeMemory),
/// if the access was refused because it touched private memory.
pub fn host_access_error(e: &GuestMemoryError) -> Option<&HostAccessError> {
    match e {
        GuestMemoryError::IOError(io) => io.get_ref()?.downcast_ref::<HostAccessError>(),
        _ => None,
    }
}

/// Fails with [`HostAccessError::Private`] if any byte of `[gpa, gpa + len)` is private.
///
/// Out of line: only accesses to blocks that hold private pages need it, and inlined
/// into every access it changed how the all-shared path compiled (a 16-byte
/// `host_read` took 10.4 ns instead of 8.8).
#[inline(never)]
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
/// [`HostSafeMemory`](crate::HostSafeMemory) shows `vm-memory` as one region.
///
/// Because adjacent regions form one span, an access that crosses from one region into
/// the next is one slice, checked as a whole before any byte moves. Every slice it hands
/// out holds a [`HostAccessLease`].
#[derive(Debug)]
pub struct GuestSpan {
    pub(crate) start: GuestAddress,
    pub(crate) len: u64,
    pub(crate) host: usize,
    pub(crate) attrs: Arc<ConcurrentAttrMap>,
    pub(crate) lock: Arc<AccessLock>,
}

impl GuestSpan {
    /// Checks `[offset, offset + count)` is inside the span and shared, under a lease.
    /// Always inlined: returned through memory, the lease and pointer are reloaded
    /// wider than they were stored, which stalls the small accesses it is for.
    #[inline(always)]
    pub(crate) fn lease(
        &self,
        offset: u64,
        count: usize,
    ) -> Result<(HostAccessLease<'_>, *mut u8), HostAccessError> {
        self.lease_in(&self.lock, offset, count)
    }

    /// [`lease`](Self::lease) through `lock`, which must be the span's own (every span
    /// of a memory shares the memory's): `host_read` passes the memory's, loaded beside
    /// the span lookup rather than after it, which took a 16-byte read from about 11.5
    /// to 8.8 ns.
    #[inline(always)]
    pub(crate) fn lease_in<'a>(
        &'a self,
        lock: &'a AccessLock,
        offset: u64,
        count: usize,
    ) -> Result<(HostAccessLease<'a>, *mut u8), HostAccessError> {
        debug_assert!(std::ptr::eq(lock, &*self.lock), "a lease in another lock");
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
        let (lease, mixed) = lock.lease(gpa, count);
        // Blocks whose pages are all shared need no look at the map.
        if mixed {
            self.attrs.read(|map| check_shared(map, gpa, count))?;
        }
        // The offset is inside the span, whose host view is mapped contiguously.
        Ok((lease, (self.host + offset as usize) as *mut u8))
    }

    /// [`lease`](Self::lease), failing as `vm-memory` expects of a region: an access
    /// outside it is an invalid region address.
    ///
    /// Out of line: it keeps `vm-memory`'s slice iterator, which calls it on every access
    /// through `Bytes`, smaller (16-byte reads through slices took about 52 ns instead of
    /// 55).
    #[inline(never)]
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
