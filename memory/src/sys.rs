// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The few system calls veil-memory issues outside KVM, each wrapped once with its
//! safety argument, and [`Mapping`], an owned range of host virtual memory.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// What the host may do with a range of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Nothing: any host load or store faults (`PROT_NONE`).
    None,
    /// Loads and stores (`PROT_READ | PROT_WRITE`).
    ReadWrite,
}

impl Access {
    fn prot(self) -> libc::c_int {
        match self {
            Access::None => libc::PROT_NONE,
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
        }
    }
}

fn off_t(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// `memfd_create(2)`; the descriptor is owned on the line it arrives.
pub(crate) fn memfd_create(name: &CStr, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string the kernel only reads during the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ftruncate(2)`.
pub(crate) fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size = off_t(size)?;
    // SAFETY: plain system call on a descriptor we borrow; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `fallocate(2)` with `mode`.
pub(crate) fn fallocate(
    fd: BorrowedFd<'_>,
    mode: libc::c_int,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let (offset, len) = (off_t(offset)?, off_t(len)?);
    // SAFETY: plain system call on a descriptor we borrow; no memory is passed.
    if unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Frees the backing of `[offset, offset + len)` without changing the file size: later
/// reads of the range see zeros.
pub(crate) fn punch_hole(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    fallocate(
        fd,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        len,
    )
}

/// `membarrier(2)` commands (`linux/membarrier.h`).
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

fn membarrier(cmd: libc::c_int) -> io::Result<()> {
    if cfg!(miri) {
        return Err(io::ErrorKind::Unsupported.into());
    }
    // SAFETY: plain system call with integer arguments; no memory is passed.
    if unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Registers this process for [`fence_all_threads`] (Linux 4.14 on).
pub(crate) fn register_thread_fences() -> io::Result<()> {
    membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)
}

/// A full memory barrier on every thread of this process that is running when it is
/// called, before it returns: the heavy side of an asymmetric fence, whose light side
/// is a compiler fence on the threads that would otherwise each need a full barrier.
pub(crate) fn fence_all_threads() -> io::Result<()> {
    membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)
}

/// An owned range of host virtual memory, unmapped on drop.
///
/// veil never creates Rust references into a mapping: every access goes through
/// `vm-memory`'s volatile slices or raw copies, so changing the protection of part of a
/// mapping cannot invalidate a reference.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Mapping` is an address range, not data; the memory is shared with the
// kernel and the guest anyway and is only reached through volatile accesses.
unsafe impl Send for Mapping {}
// SAFETY: as above; through `&Mapping` callers change protections, replace parts of the
// range with `MAP_FIXED` (`place_shared`) and compute addresses, none of which hands out
// a reference to the bytes.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn mmap(
        addr: *mut libc::c_void,
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
        fd: libc::c_int,
    ) -> io::Result<NonNull<u8>> {
        // SAFETY: without MAP_FIXED the kernel picks a free address and cannot clobber
        // anything; with MAP_FIXED the callers pass a range inside a mapping they own.
        let ptr = unsafe { libc::mmap(addr, len, prot, flags, fd, 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))
    }

    /// A read-write `MAP_SHARED` mapping of the first `len` bytes of `fd`.
    pub(crate) fn shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        let ptr = Self::mmap(
            std::ptr::null_mut(),
            len,
            Access::ReadWrite.prot(),
            libc::MAP_SHARED,
            fd.as_raw_fd(),
        )?;
        Ok(Mapping { ptr, len })
    }

    /// `len` bytes of address space that nothing can touch, to place other mappings in.
    pub(crate) fn reserve(len: usize) -> io::Result<Mapping> {
        let ptr = Self::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )?;
        Ok(Mapping { ptr, len })
    }

    /// Maps the first `len` bytes of `fd` read-write and shared at `offset` inside this
    /// mapping, replacing what was there.
    pub(crate) fn place_shared(
        &self,
        offset: usize,
        fd: BorrowedFd<'_>,
        len: usize,
    ) -> io::Result<()> {
        self.check(offset, len)?;
        Self::mmap(
            self.ptr.as_ptr().wrapping_add(offset).cast(),
            len,
            Access::ReadWrite.prot(),
            libc::MAP_SHARED | libc::MAP_FIXED,
            fd.as_raw_fd(),
        )?;
        Ok(())
    }

    fn check(&self, offset: usize, len: usize) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Changes what the host may do with `[offset, offset + len)` of this mapping.
    pub(crate) fn protect(&self, offset: usize, len: usize, access: Access) -> io::Result<()> {
        self.check(offset, len)?;
        // SAFETY: the range lies inside this mapping (checked above). veil holds no Rust
        // reference into it; a stale raw pointer faults instead of reading memory.
        let ret = unsafe {
            libc::mprotect(
                self.ptr.as_ptr().wrapping_add(offset).cast(),
                len,
                access.prot(),
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the range was mapped by `Mapping::mmap` and is unmapped exactly once.
        // Nothing handed out outlives the owner (slices borrow the guest memory).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn memfd_map_punch() {
        let fd = memfd_create(c"veil-test", libc::MFD_CLOEXEC).unwrap();
        ftruncate(fd.as_fd(), 0x4000).unwrap();
        let map = Mapping::shared(fd.as_fd(), 0x4000).unwrap();
        // SAFETY: in bounds of a fresh read-write mapping.
        unsafe { map.as_ptr().add(0x1000).write_volatile(7) };
        punch_hole(fd.as_fd(), 0x1000, 0x1000).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { map.as_ptr().add(0x1000).read_volatile() }, 0);
        assert!(map.protect(0x3000, 0x2000, Access::None).is_err());
        map.protect(0x1000, 0x1000, Access::None).unwrap();
        map.protect(0x1000, 0x1000, Access::ReadWrite).unwrap();
    }

    #[test]
    fn reserve_and_place() {
        let fd = memfd_create(c"veil-test", libc::MFD_CLOEXEC).unwrap();
        ftruncate(fd.as_fd(), 0x2000).unwrap();
        let res = Mapping::reserve(0x10000).unwrap();
        res.place_shared(0x4000, fd.as_fd(), 0x2000).unwrap();
        // SAFETY: the placed range is read-write.
        unsafe { res.as_ptr().add(0x5000).write_volatile(9) };
        assert!(res.place_shared(0xf000, fd.as_fd(), 0x2000).is_err());
    }
}
