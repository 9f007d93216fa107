// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Guest frame numbers and frame ranges at 4 KiB granularity.

use std::fmt;

/// log2 of the page size attributes are tracked at.
pub const PAGE_SHIFT: u32 = 12;

/// The page size attributes are tracked at: 4 KiB, as in KVM's attribute array.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// The largest frame number plus one whose byte address still fits in a `u64`.
///
/// Every [`FrameRange`] ends at or below this, so its byte size and end address never
/// overflow.
pub const MAX_FRAMES: u64 = u64::MAX >> PAGE_SHIFT;

/// A guest frame number: a guest-physical address divided by [`PAGE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Gfn(pub u64);

impl Gfn {
    /// The frame holding guest-physical address `gpa`.
    pub const fn containing(gpa: u64) -> Gfn {
        Gfn(gpa >> PAGE_SHIFT)
    }

    /// The frame starting at `gpa`, or `None` when `gpa` is not page aligned.
    pub const fn from_gpa(gpa: u64) -> Option<Gfn> {
        if gpa.is_multiple_of(PAGE_SIZE) {
            Some(Gfn(gpa >> PAGE_SHIFT))
        } else {
            None
        }
    }

    /// The frame's raw number.
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// The guest-physical address of the frame's first byte, or `None` when the frame
    /// lies beyond the 64-bit address space.
    pub const fn gpa(self) -> Option<u64> {
        self.0.checked_mul(PAGE_SIZE)
    }
}

impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gfn {:#x}", self.0)
    }
}

/// Why a range could not be built or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The start address is not a multiple of 4 KiB.
    #[error("guest-physical address {gpa:#x} is not 4 KiB aligned")]
    UnalignedAddress {
        /// The address given.
        gpa: u64,
    },
    /// The size is not a multiple of 4 KiB.
    #[error("size {size:#x} at {gpa:#x} is not a multiple of 4 KiB")]
    UnalignedSize {
        /// The start address given.
        gpa: u64,
        /// The size given.
        size: u64,
    },
    /// The range holds no page.
    #[error("empty range at {gpa:#x}")]
    Empty {
        /// The start address given.
        gpa: u64,
    },
    /// The end of the range is beyond the 64-bit address space.
    #[error("range {gpa:#x} + {size:#x} overflows the 64-bit address space")]
    Overflow {
        /// The start address given.
        gpa: u64,
        /// The size given (in bytes; for frame-based constructors, pages * 4 KiB
        /// saturated at `u64::MAX`).
        size: u64,
    },
    /// The range reaches past the end of the guest.
    #[error("{range} reaches past the guest's end at {limit:#x}")]
    OutOfBounds {
        /// The range asked for.
        range: FrameRange,
        /// The guest size in bytes.
        limit: u64,
    },
}

/// A non-empty, half-open range of guest frames `[start, end)`.
///
/// The end never exceeds [`MAX_FRAMES`], so the byte form of a range always fits in a
/// `u64`. Build one with [`FrameRange::from_gpa`] (byte addresses from a guest, a file or
/// a user) or [`FrameRange::new`] (frame numbers).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameRange {
    start: Gfn,
    end: Gfn,
}

impl FrameRange {
    /// The range of `pages` frames starting at `start`.
    #[inline]
    pub const fn new(start: Gfn, pages: u64) -> Result<Self, RangeError> {
        let gpa = start.0.saturating_mul(PAGE_SIZE);
        if pages == 0 {
            return Err(RangeError::Empty { gpa });
        }
        match start.0.checked_add(pages) {
            Some(end) if end <= MAX_FRAMES => Ok(FrameRange {
                start,
                end: Gfn(end),
            }),
            _ => Err(RangeError::Overflow {
                gpa,
                size: pages.saturating_mul(PAGE_SIZE),
            }),
        }
    }

    /// The frames covering the byte range `[gpa, gpa + size)`, which must be page aligned,
    /// non-empty and must not wrap around the 64-bit address space.
    #[inline]
    pub const fn from_gpa(gpa: u64, size: u64) -> Result<Self, RangeError> {
        if !gpa.is_multiple_of(PAGE_SIZE) {
            return Err(RangeError::UnalignedAddress { gpa });
        }
        if size == 0 {
            return Err(RangeError::Empty { gpa });
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(RangeError::UnalignedSize { gpa, size });
        }
        if gpa.checked_add(size).is_none() {
            return Err(RangeError::Overflow { gpa, size });
        }
        Ok(FrameRange {
            start: Gfn(gpa >> PAGE_SHIFT),
            end: Gfn((gpa >> PAGE_SHIFT) + (size >> PAGE_SHIFT)),
        })
    }

    /// The range `[start, end)`, or `None` when it is empty or ends past [`MAX_FRAMES`].
    #[inline]
    pub const fn from_bounds(start: Gfn, end: Gfn) -> Option<Self> {
        if start.0 < end.0 && end.0 <= MAX_FRAMES {
            Some(FrameRange { start, end })
        } else {
            None
        }
    }

    /// The first frame.
    pub const fn start(&self) -> Gfn {
        self.start
    }

    /// One past the last frame.
    pub const fn end(&self) -> Gfn {
        self.end
    }

    /// The last frame.
    pub const fn last(&self) -> Gfn {
        Gfn(self.end.0 - 1)
    }

    /// The number of frames (never zero).
    pub const fn pages(&self) -> u64 {
        self.end.0 - self.start.0
    }

    /// The guest-physical address of the first byte.
    pub const fn gpa(&self) -> u64 {
        self.start.0 << PAGE_SHIFT
    }

    /// The guest-physical address one past the last byte.
    pub const fn end_gpa(&self) -> u64 {
        self.end.0 << PAGE_SHIFT
    }

    /// The size in bytes.
    pub const fn size(&self) -> u64 {
        self.pages() << PAGE_SHIFT
    }

    /// Whether `gfn` lies in the range.
    pub const fn contains(&self, gfn: Gfn) -> bool {
        self.start.0 <= gfn.0 && gfn.0 < self.end.0
    }

    /// Whether every frame of `other` lies in the range.
    pub const fn contains_range(&self, other: &FrameRange) -> bool {
        self.start.0 <= other.start.0 && other.end.0 <= self.end.0
    }

    /// The frames both ranges hold, if any.
    #[inline]
    pub fn intersection(&self, other: &FrameRange) -> Option<FrameRange> {
        FrameRange::from_bounds(self.start.max(other.start), self.end.min(other.end))
    }

    /// Fails with [`RangeError::OutOfBounds`] unless the range ends at or before frame
    /// `frames`; `limit` is the guest size in bytes, named in the error.
    #[inline]
    pub const fn check_within(self, frames: u64, limit: u64) -> Result<Self, RangeError> {
        if self.end.0 <= frames {
            Ok(self)
        } else {
            Err(RangeError::OutOfBounds { range: self, limit })
        }
    }
}

impl fmt::Debug for FrameRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameRange({:#x}..{:#x})", self.start.0, self.end.0)
    }
}

impl fmt::Display for FrameRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.gpa(), self.end_gpa())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_gpa_accepts_aligned() {
        let r = FrameRange::from_gpa(0x20_0000, 0x3000).unwrap();
        assert_eq!(r.start(), Gfn(0x200));
        assert_eq!(r.end(), Gfn(0x203));
        assert_eq!(r.pages(), 3);
        assert_eq!(r.gpa(), 0x20_0000);
        assert_eq!(r.size(), 0x3000);
        assert_eq!(r.end_gpa(), 0x20_3000);
        assert_eq!(r.last(), Gfn(0x202));
        assert_eq!(r.to_string(), "[0x200000, 0x203000)");
    }

    #[test]
    fn from_gpa_rejects_bad_input() {
        assert_eq!(
            FrameRange::from_gpa(0x1001, 0x1000),
            Err(RangeError::UnalignedAddress { gpa: 0x1001 })
        );
        assert_eq!(
            FrameRange::from_gpa(0x1000, 0x1001),
            Err(RangeError::UnalignedSize {
                gpa: 0x1000,
                size: 0x1001
            })
        );
        assert_eq!(
            FrameRange::from_gpa(0x1000, 0),
            Err(RangeError::Empty { gpa: 0x1000 })
        );
        let top = u64::MAX - 0xfff;
        assert_eq!(
            FrameRange::from_gpa(top, 0x2000),
            Err(RangeError::Overflow {
                gpa: top,
                size: 0x2000
            })
        );
        // The last page whose end address fits in a u64 is the highest usable one.
        assert!(matches!(
            FrameRange::from_gpa(top, 0x1000),
            Err(RangeError::Overflow { .. })
        ));
        let last = FrameRange::from_gpa(top - 0x1000, 0x1000).unwrap();
        assert_eq!(last.end(), Gfn(MAX_FRAMES));
        assert_eq!(last.end_gpa(), top);
    }

    #[test]
    fn new_rejects_empty_and_overflow() {
        assert!(matches!(
            FrameRange::new(Gfn(5), 0),
            Err(RangeError::Empty { .. })
        ));
        assert!(matches!(
            FrameRange::new(Gfn(1), u64::MAX),
            Err(RangeError::Overflow { .. })
        ));
        assert!(matches!(
            FrameRange::new(Gfn(MAX_FRAMES), 1),
            Err(RangeError::Overflow { .. })
        ));
        assert_eq!(FrameRange::new(Gfn(MAX_FRAMES - 1), 1).unwrap().pages(), 1);
    }

    #[test]
    fn bounds_and_intersection() {
        let r = FrameRange::new(Gfn(10), 10).unwrap();
        assert!(r.check_within(20, 20 * PAGE_SIZE).is_ok());
        assert_eq!(
            r.check_within(19, 19 * PAGE_SIZE),
            Err(RangeError::OutOfBounds {
                range: r,
                limit: 19 * PAGE_SIZE
            })
        );
        let s = FrameRange::new(Gfn(15), 10).unwrap();
        assert_eq!(
            r.intersection(&s),
            Some(FrameRange::new(Gfn(15), 5).unwrap())
        );
        let t = FrameRange::new(Gfn(20), 1).unwrap();
        assert_eq!(r.intersection(&t), None);
        assert!(r.contains(Gfn(19)) && !r.contains(Gfn(20)) && !r.contains(Gfn(9)));
        assert!(r.contains_range(&FrameRange::new(Gfn(12), 3).unwrap()));
        assert!(!r.contains_range(&s));
    }

    #[test]
    fn gfn_helpers() {
        assert_eq!(Gfn::containing(0x1fff), Gfn(1));
        assert_eq!(Gfn::from_gpa(0x2000), Some(Gfn(2)));
        assert_eq!(Gfn::from_gpa(0x2001), None);
        assert_eq!(Gfn(3).gpa(), Some(0x3000));
        assert_eq!(Gfn(u64::MAX).gpa(), None);
    }
}
