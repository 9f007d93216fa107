// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The backing stores: guest_memfd ([`GuestMemfd`]) and plain shared memory
//! ([`SharedMemfd`]).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};

use kvm_bindings::kvm_create_guest_memfd;
use kvm_ioctls::{Cap, VmFd};
use veil_attrs::PAGE_SIZE;

use crate::sys::{self, Mapping};

/// `KVM_CAP_GUEST_MEMFD_FLAGS`: the guest_memfd flags a VM accepts, as a bit mask.
/// Newer than kvm-bindings 0.14; from Linux 6.18 `include/uapi/linux/kvm.h`.
pub const KVM_CAP_GUEST_MEMFD_FLAGS: u32 = 244;
/// `GUEST_MEMFD_FLAG_MMAP`: the host may `mmap` the guest_memfd.
/// Linux 6.18 `include/uapi/linux/kvm.h`.
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED`: the guest_memfd starts shared, so the host may fault its
/// pages in through a mapping. Linux 6.18 `include/uapi/linux/kvm.h`.
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;
/// Every guest_memfd flag veil knows.
pub const GUEST_MEMFD_KNOWN_FLAGS: u64 = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;

/// The huge page size a hugetlb memfd uses.
pub const HUGE_PAGE_SIZE: u64 = 2 << 20;

/// Errors from creating and using a backing store.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Sizes must be non-zero multiples of the page size.
    #[error("size {size:#x} is not a non-zero multiple of {granule:#x}")]
    BadSize {
        /// The size asked for.
        size: u64,
        /// The granule it must be a multiple of.
        granule: u64,
    },
    /// The flags have bits veil does not know.
    #[error("guest_memfd flags {flags:#x} have bits veil does not know ({unknown:#x})")]
    UnknownFlags {
        /// The flags asked for.
        flags: u64,
        /// The unknown bits.
        unknown: u64,
    },
    /// The host lacks a capability the request needs.
    #[error("the host lacks {capability}")]
    MissingCapability {
        /// The capability, named as in the KVM API.
        capability: &'static str,
    },
    /// The host does not accept some of the requested guest_memfd flags.
    #[error(
        "the host lacks guest_memfd flags {missing:#x}: KVM_CAP_GUEST_MEMFD_FLAGS (244) \
         is {supported:#x}, {requested:#x} was asked"
    )]
    UnsupportedFlags {
        /// The flags asked for.
        requested: u64,
        /// The flags the VM accepts.
        supported: u64,
        /// The requested flags it does not accept.
        missing: u64,
    },
    /// `KVM_CREATE_GUEST_MEMFD` failed.
    #[error("KVM_CREATE_GUEST_MEMFD of {size:#x} bytes with flags {flags:#x} failed")]
    CreateGuestMemfd {
        /// The size asked for.
        size: u64,
        /// The flags asked for.
        flags: u64,
        /// The error KVM returned.
        #[source]
        source: io::Error,
    },
    /// The guest_memfd was created without `GUEST_MEMFD_FLAG_MMAP`.
    #[error(
        "the guest_memfd has flags {flags:#x}, without GUEST_MEMFD_FLAG_MMAP: it cannot be mapped"
    )]
    NotMappable {
        /// Its flags.
        flags: u64,
    },
    /// `memfd_create` failed.
    #[error("memfd_create failed")]
    CreateMemfd(#[source] io::Error),
    /// Setting the memfd's size failed.
    #[error("setting the memfd size to {size:#x} failed")]
    Truncate {
        /// The size asked for.
        size: u64,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// No (or too few) 2 MiB huge pages are reserved on the host.
    #[error(
        "{size:#x} bytes of 2 MiB huge pages are not available ({free} of {total} huge pages \
         free; reserve more with /proc/sys/vm/nr_hugepages)"
    )]
    HugePagesUnavailable {
        /// The size asked for.
        size: u64,
        /// `HugePages_Free` from /proc/meminfo (0 when unreadable).
        free: u64,
        /// `HugePages_Total` from /proc/meminfo (0 when unreadable).
        total: u64,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// Mapping the backing failed.
    #[error("mapping {len:#x} bytes failed")]
    Map {
        /// The length asked for.
        len: u64,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A range is outside the backing.
    #[error(
        "[{offset:#x}, +{len:#x}) is not a page-aligned range inside the {size:#x}-byte backing"
    )]
    OutOfRange {
        /// The offset asked for.
        offset: u64,
        /// The length asked for.
        len: u64,
        /// The backing's size.
        size: u64,
    },
    /// Discarding (punching a hole) failed.
    #[error("discarding [{offset:#x}, +{len:#x}) failed")]
    Discard {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// Preallocating failed.
    #[error("preallocating [{offset:#x}, +{len:#x}) failed")]
    Allocate {
        /// The offset.
        offset: u64,
        /// The length.
        len: u64,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
}

fn check_size(size: u64, granule: u64) -> Result<(), BackendError> {
    if size == 0 || !size.is_multiple_of(granule) || usize::try_from(size).is_err() {
        return Err(BackendError::BadSize { size, granule });
    }
    Ok(())
}

fn check_range(offset: u64, len: u64, size: u64) -> Result<(), BackendError> {
    let ok = len > 0
        && offset.is_multiple_of(PAGE_SIZE)
        && len.is_multiple_of(PAGE_SIZE)
        && offset.checked_add(len).is_some_and(|end| end <= size);
    if ok {
        Ok(())
    } else {
        Err(BackendError::OutOfRange { offset, len, size })
    }
}

/// Punches `[offset, offset + len)` out of `fd`, a backing of `size` bytes.
fn discard(fd: BorrowedFd<'_>, size: u64, offset: u64, len: u64) -> Result<(), BackendError> {
    check_range(offset, len, size)?;
    sys::punch_hole(fd, offset, len).map_err(|source| BackendError::Discard {
        offset,
        len,
        source,
    })
}

/// Whatever can create guest_memfds: a KVM VM, or a stand-in in tests.
pub trait GuestMemfdSource {
    /// The guest_memfd flags this source accepts (`KVM_CAP_GUEST_MEMFD_FLAGS`); fails
    /// with [`BackendError::MissingCapability`] where guest_memfd is missing altogether.
    fn guest_memfd_flags(&self) -> Result<u64, BackendError>;

    /// Creates a guest_memfd of `size` bytes with `flags` (`KVM_CREATE_GUEST_MEMFD`).
    fn create_guest_memfd(&self, size: u64, flags: u64) -> io::Result<OwnedFd>;
}

impl GuestMemfdSource for VmFd {
    fn guest_memfd_flags(&self) -> Result<u64, BackendError> {
        if self.check_extension_int(Cap::GuestMemfd) <= 0 {
            return Err(BackendError::MissingCapability {
                capability: "KVM_CAP_GUEST_MEMFD (234)",
            });
        }
        let flags = self.check_extension_raw(KVM_CAP_GUEST_MEMFD_FLAGS.into());
        Ok(u64::try_from(flags).unwrap_or(0))
    }

    fn create_guest_memfd(&self, size: u64, flags: u64) -> io::Result<OwnedFd> {
        let gmem = kvm_create_guest_memfd {
            size,
            flags,
            reserved: [0; 6],
        };
        let raw = VmFd::create_guest_memfd(self, gmem).map_err(io::Error::from)?;
        // SAFETY: KVM just returned `raw` as a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

/// A guest_memfd: memory KVM can give a guest as private, owned and closed once on drop.
#[derive(Debug)]
pub struct GuestMemfd {
    fd: OwnedFd,
    size: u64,
    flags: u64,
}

impl GuestMemfd {
    /// Creates a guest_memfd of `size` bytes (a non-zero multiple of 4 KiB) with `flags`
    /// ([`GUEST_MEMFD_FLAG_MMAP`], [`GUEST_MEMFD_FLAG_INIT_SHARED`]), after checking the
    /// source accepts them.
    pub fn create(
        source: &dyn GuestMemfdSource,
        size: u64,
        flags: u64,
    ) -> Result<Self, BackendError> {
        check_size(size, PAGE_SIZE)?;
        let unknown = flags & !GUEST_MEMFD_KNOWN_FLAGS;
        if unknown != 0 {
            return Err(BackendError::UnknownFlags { flags, unknown });
        }
        let supported = source.guest_memfd_flags()?;
        if flags & !supported != 0 {
            return Err(BackendError::UnsupportedFlags {
                requested: flags,
                supported,
                missing: flags & !supported,
            });
        }
        let fd = source.create_guest_memfd(size, flags).map_err(|source| {
            BackendError::CreateGuestMemfd {
                size,
                flags,
                source,
            }
        })?;
        Ok(GuestMemfd { fd, size, flags })
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The flags it was created with.
    pub fn flags(&self) -> u64 {
        self.flags
    }

    /// Whether the host can map it (created with [`GUEST_MEMFD_FLAG_MMAP`]).
    pub fn is_mappable(&self) -> bool {
        self.flags & GUEST_MEMFD_FLAG_MMAP != 0
    }

    /// Frees the memory of `[offset, offset + len)` (punches a hole): the guest and any
    /// mapping then see zeros there.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        discard(self.fd.as_fd(), self.size, offset, len)
    }

    /// Allocates the memory of `[offset, offset + len)` now rather than on first use.
    /// guest_memfd only supports this with `FALLOC_FL_KEEP_SIZE`, which veil passes.
    pub fn allocate(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        check_range(offset, len, self.size)?;
        sys::fallocate(self.fd.as_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, len).map_err(|source| {
            BackendError::Allocate {
                offset,
                len,
                source,
            }
        })
    }

    pub(crate) fn check_mappable(&self) -> Result<(), BackendError> {
        if self.is_mappable() {
            Ok(())
        } else {
            Err(BackendError::NotMappable { flags: self.flags })
        }
    }

    /// A read-write shared mapping of the whole guest_memfd.
    pub(crate) fn map(&self) -> Result<Mapping, BackendError> {
        self.check_mappable()?;
        map_whole(self.fd.as_fd(), self.size)
    }
}

impl AsFd for GuestMemfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn map_whole(fd: BorrowedFd<'_>, size: u64) -> Result<Mapping, BackendError> {
    let len = usize::try_from(size).map_err(|_| BackendError::BadSize {
        size,
        granule: PAGE_SIZE,
    })?;
    Mapping::shared(fd, len).map_err(|source| BackendError::Map { len: size, source })
}

/// Shared memory: a memfd (`MFD_CLOEXEC`), optionally of 2 MiB huge pages.
#[derive(Debug)]
pub struct SharedMemfd {
    fd: OwnedFd,
    size: u64,
    hugetlb: bool,
}

fn meminfo_huge_pages() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("HugePages_Free:"), field("HugePages_Total:"))
}

impl SharedMemfd {
    /// Creates a memfd of `size` bytes. With `hugetlb`, it is backed by 2 MiB huge pages,
    /// `size` must be a multiple of 2 MiB, and the pages are reserved now so that a host
    /// without enough of them fails here with [`BackendError::HugePagesUnavailable`]
    /// instead of with `SIGBUS` on first touch.
    pub fn new(size: u64, hugetlb: bool) -> Result<Self, BackendError> {
        let granule = if hugetlb { HUGE_PAGE_SIZE } else { PAGE_SIZE };
        check_size(size, granule)?;
        let mut flags = libc::MFD_CLOEXEC;
        if hugetlb {
            flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        }
        let huge_error = |source| {
            let (free, total) = meminfo_huge_pages();
            BackendError::HugePagesUnavailable {
                size,
                free,
                total,
                source,
            }
        };
        let fd = sys::memfd_create(c"veil-guest-memory", flags).map_err(|e| {
            if hugetlb {
                huge_error(e)
            } else {
                BackendError::CreateMemfd(e)
            }
        })?;
        sys::ftruncate(fd.as_fd(), size)
            .map_err(|source| BackendError::Truncate { size, source })?;
        if hugetlb {
            sys::fallocate(fd.as_fd(), 0, 0, size).map_err(huge_error)?;
        }
        Ok(SharedMemfd { fd, size, hugetlb })
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it is backed by 2 MiB huge pages.
    pub fn is_hugetlb(&self) -> bool {
        self.hugetlb
    }

    /// Frees the memory of `[offset, offset + len)`: every mapping then reads zeros there.
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        discard(self.fd.as_fd(), self.size, offset, len)
    }

    /// A read-write shared mapping of the whole memfd.
    pub(crate) fn map(&self) -> Result<Mapping, BackendError> {
        map_whole(self.fd.as_fd(), self.size)
    }
}

impl AsFd for SharedMemfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A guest_memfd stand-in for tests without KVM: a memfd, which punches holes the same
    /// way. It accepts the flags it is told to.
    pub(crate) struct MemfdSource {
        pub(crate) flags: u64,
        pub(crate) fail: Option<i32>,
    }

    impl GuestMemfdSource for MemfdSource {
        fn guest_memfd_flags(&self) -> Result<u64, BackendError> {
            Ok(self.flags)
        }

        fn create_guest_memfd(&self, size: u64, _flags: u64) -> io::Result<OwnedFd> {
            if let Some(errno) = self.fail {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let fd = sys::memfd_create(c"veil-test-gmem", libc::MFD_CLOEXEC)?;
            sys::ftruncate(fd.as_fd(), size)?;
            Ok(fd)
        }
    }

    #[test]
    fn guest_memfd_validates_before_creating() {
        let src = MemfdSource {
            flags: GUEST_MEMFD_FLAG_MMAP,
            fail: Some(libc::EIO),
        };
        assert!(matches!(
            GuestMemfd::create(&src, 0, 0),
            Err(BackendError::BadSize { size: 0, .. })
        ));
        assert!(matches!(
            GuestMemfd::create(&src, 0x1001, 0),
            Err(BackendError::BadSize { .. })
        ));
        assert!(matches!(
            GuestMemfd::create(&src, 0x1000, 4),
            Err(BackendError::UnknownFlags {
                flags: 4,
                unknown: 4
            })
        ));
        let err = GuestMemfd::create(&src, 0x1000, 3).unwrap_err();
        assert!(matches!(
            err,
            BackendError::UnsupportedFlags {
                requested: 3,
                supported: 1,
                missing: 2
            }
        ));
        assert!(err.to_string().contains("KVM_CAP_GUEST_MEMFD_FLAGS"));
        // The creation error keeps the errno.
        match GuestMemfd::create(&src, 0x1000, 1) {
            Err(BackendError::CreateGuestMemfd { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::EIO))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn guest_memfd_map_needs_mmap_flag() {
        let src = MemfdSource {
            flags: 3,
            fail: None,
        };
        let g = GuestMemfd::create(&src, 0x4000, 0).unwrap();
        assert!(!g.is_mappable());
        assert!(matches!(
            g.map(),
            Err(BackendError::NotMappable { flags: 0 })
        ));
        assert!(matches!(
            g.discard(0x3000, 0x2000),
            Err(BackendError::OutOfRange { .. })
        ));
        assert!(matches!(
            g.discard(0x800, 0x1000),
            Err(BackendError::OutOfRange { .. })
        ));
        g.discard(0x1000, 0x1000).unwrap();
        g.allocate(0, 0x4000).unwrap();
    }

    #[test]
    fn shared_memfd_discard_zeroes() {
        let m = SharedMemfd::new(0x3000, false).unwrap();
        let map = m.map().unwrap();
        // SAFETY: in bounds of a read-write mapping.
        unsafe {
            map.as_ptr().write_volatile(1);
            map.as_ptr().add(0x1000).write_volatile(2);
        }
        m.discard(0x1000, 0x1000).unwrap();
        // SAFETY: as above.
        unsafe {
            assert_eq!(map.as_ptr().read_volatile(), 1);
            assert_eq!(map.as_ptr().add(0x1000).read_volatile(), 0);
        }
        assert!(!m.is_hugetlb());
        assert!(matches!(
            SharedMemfd::new(0, false),
            Err(BackendError::BadSize { .. })
        ));
    }

    #[test]
    fn hugetlb_error_is_clear() {
        assert!(matches!(
            SharedMemfd::new(0x1000, true),
            Err(BackendError::BadSize {
                granule: HUGE_PAGE_SIZE,
                ..
            })
        ));
        let (free, _) = meminfo_huge_pages();
        match SharedMemfd::new(HUGE_PAGE_SIZE, true) {
            Ok(m) => {
                assert!(free >= 1, "succeeded with {free} free huge pages");
                assert!(m.is_hugetlb());
            }
            Err(e) => {
                assert!(free == 0, "failed with {free} free huge pages: {e}");
                assert!(matches!(e, BackendError::HugePagesUnavailable { .. }));
                let msg = e.to_string();
                assert!(msg.contains("2 MiB huge pages"), "{msg}");
                assert!(msg.contains("nr_hugepages"), "{msg}");
            }
        }
    }
}
