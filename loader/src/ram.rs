// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest's RAM as the loader sees it, and byte ranges of guest-physical addresses.

use std::fmt;

use serde::{Deserialize, Serialize};
use vm_memory::GuestAddress;

/// The page size placements are aligned to: 4 KiB, the unit of private/shared conversion.
pub use veil_attrs::PAGE_SIZE;

/// Why a description of guest RAM was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RamError {
    /// No RAM range was given.
    #[error("the guest has no RAM")]
    Empty,
    /// A range holds no byte.
    #[error("RAM range at {base:#x} is empty")]
    EmptyRange {
        /// The range's base address.
        base: u64,
    },
    /// A range's base or size is not a multiple of 4 KiB.
    #[error("RAM range {base:#x} + {size:#x} is not 4 KiB aligned")]
    Unaligned {
        /// The range's base address.
        base: u64,
        /// The range's size.
        size: u64,
    },
    /// A range ends beyond the 64-bit address space.
    #[error("RAM range {base:#x} + {size:#x} overflows the address space")]
    Overflow {
        /// The range's base address.
        base: u64,
        /// The range's size.
        size: u64,
    },
    /// Two ranges share addresses.
    #[error("RAM ranges {first} and {second} overlap")]
    Overlap {
        /// The lower range.
        first: ByteRange,
        /// The range that starts inside it.
        second: ByteRange,
    },
}

/// A non-empty, half-open range of guest-physical bytes `[start, end)`.
///
/// Unlike a frame range it need not be page aligned: kernel segments and the command line
/// are measured at their exact bytes. The end never wraps around the address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ByteRange {
    start: u64,
    end: u64,
}

impl ByteRange {
    /// The range of `len` bytes at `start`, or `None` when it is empty or wraps.
    pub const fn new(start: u64, len: u64) -> Option<ByteRange> {
        match start.checked_add(len) {
            Some(end) if len > 0 => Some(ByteRange { start, end }),
            _ => None,
        }
    }

    /// The first byte's address.
    pub const fn start(&self) -> GuestAddress {
        GuestAddress(self.start)
    }

    /// One past the last byte's address.
    pub const fn end(&self) -> u64 {
        self.end
    }

    /// The number of bytes (never zero).
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Always `false`: a `ByteRange` is never empty. Present for API symmetry.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// Whether the two ranges share a byte.
    pub const fn overlaps(&self, other: &ByteRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether every byte of `other` lies in `self`.
    pub const fn contains(&self, other: &ByteRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// The smallest range holding both.
    pub(crate) fn hull(&self, other: &ByteRange) -> ByteRange {
        ByteRange {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// The smallest page-aligned range holding this one, or `None` if rounding the end up
    /// passes the top of the address space.
    pub const fn page_aligned(&self) -> Option<ByteRange> {
        let start = self.start & !(PAGE_SIZE - 1);
        match self.end.checked_add(PAGE_SIZE - 1) {
            Some(e) => Some(ByteRange {
                start,
                end: e & !(PAGE_SIZE - 1),
            }),
            None => None,
        }
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

/// The guest's RAM: sorted, non-overlapping, page-aligned ranges.
///
/// This is the input the e820 table and the PVH memory map are made from, one entry per
/// range, and every placement must lie inside one range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRam {
    ranges: Vec<ByteRange>,
}

impl GuestRam {
    /// Checks `(base, size)` pairs and sorts them by base.
    pub fn new(ranges: &[(u64, u64)]) -> Result<GuestRam, RamError> {
        if ranges.is_empty() {
            return Err(RamError::Empty);
        }
        let mut out = Vec::with_capacity(ranges.len());
        for &(base, size) in ranges {
            if size == 0 {
                return Err(RamError::EmptyRange { base });
            }
            if !base.is_multiple_of(PAGE_SIZE) || !size.is_multiple_of(PAGE_SIZE) {
                return Err(RamError::Unaligned { base, size });
            }
            let range = ByteRange::new(base, size).ok_or(RamError::Overflow { base, size })?;
            out.push(range);
        }
        out.sort();
        for pair in out.windows(2) {
            if pair[0].overlaps(&pair[1]) {
                return Err(RamError::Overlap {
                    first: pair[0],
                    second: pair[1],
                });
            }
        }
        Ok(GuestRam { ranges: out })
    }

    /// The ranges, sorted by address.
    pub fn ranges(&self) -> &[ByteRange] {
        &self.ranges
    }

    /// The number of RAM bytes (saturating; real guests are far below `u64::MAX`).
    pub fn total(&self) -> u64 {
        self.ranges
            .iter()
            .fold(0u64, |acc, r| acc.saturating_add(r.len()))
    }

    /// Whether `range` lies entirely inside one RAM range (placements never straddle a
    /// hole or the boundary between two ranges).
    pub fn holds(&self, range: &ByteRange) -> bool {
        self.ranges.iter().any(|r| r.contains(range))
    }

    /// Whether every byte of `range` is RAM, possibly in adjacent ranges (page runs of
    /// neighbouring placements may join across the boundary of two ranges that touch).
    pub fn covers(&self, range: &ByteRange) -> bool {
        let mut at = range.start().0;
        for r in &self.ranges {
            if r.start().0 <= at && at < r.end() {
                at = r.end();
                if at >= range.end() {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_range_basics() {
        let r = ByteRange::new(0x1234, 0x10).unwrap();
        assert_eq!(r.start(), GuestAddress(0x1234));
        assert_eq!(r.end(), 0x1244);
        assert_eq!(r.len(), 0x10);
        assert_eq!(r.page_aligned(), ByteRange::new(0x1000, 0x1000));
        assert_eq!(ByteRange::new(0, 0), None);
        assert_eq!(ByteRange::new(u64::MAX, 1), None);
        assert_eq!(
            ByteRange::new(u64::MAX - 1, 1).unwrap().page_aligned(),
            None
        );
        let s = ByteRange::new(0x1243, 1).unwrap();
        assert!(r.overlaps(&s) && s.overlaps(&r) && r.contains(&s));
        let t = ByteRange::new(0x1244, 1).unwrap();
        assert!(!r.overlaps(&t) && !r.contains(&t));
        assert_eq!(r.to_string(), "[0x1234, 0x1244)");
        assert_eq!(t.hull(&r), ByteRange::new(0x1234, 0x11).unwrap());
        assert_eq!(r.hull(&s), r);
    }

    #[test]
    fn guest_ram_sorts_and_checks() {
        let ram = GuestRam::new(&[(0x10_0000, 0x10_0000), (0, 0xa_0000)]).unwrap();
        assert_eq!(ram.ranges()[0], ByteRange::new(0, 0xa_0000).unwrap());
        assert_eq!(ram.total(), 0x1a_0000);
        assert!(ram.holds(&ByteRange::new(0x9_f000, 0x1000).unwrap()));
        // Straddling the hole between the two ranges is refused.
        assert!(!ram.holds(&ByteRange::new(0x9_f000, 0x2000).unwrap()));
        assert!(!ram.covers(&ByteRange::new(0x9_f000, 0x2000).unwrap()));
        // Adjacent ranges cover a run across their boundary; holds wants one range.
        let touching = GuestRam::new(&[(0, 0x1000), (0x1000, 0x1000), (0x3000, 0x1000)]).unwrap();
        let across = ByteRange::new(0x800, 0x1000).unwrap();
        assert!(touching.covers(&across) && !touching.holds(&across));
        assert!(touching.covers(&ByteRange::new(0, 0x2000).unwrap()));
        assert!(!touching.covers(&ByteRange::new(0, 0x3000).unwrap()));
        assert!(!touching.covers(&ByteRange::new(0x2000, 0x10).unwrap()));

        assert_eq!(GuestRam::new(&[]), Err(RamError::Empty));
        assert_eq!(
            GuestRam::new(&[(0x1000, 0)]),
            Err(RamError::EmptyRange { base: 0x1000 })
        );
        assert_eq!(
            GuestRam::new(&[(0x1001, 0x1000)]),
            Err(RamError::Unaligned {
                base: 0x1001,
                size: 0x1000
            })
        );
        assert!(matches!(
            GuestRam::new(&[(u64::MAX - 0xfff, 0x2000)]),
            Err(RamError::Overflow { .. })
        ));
        assert!(matches!(
            GuestRam::new(&[(0, 0x3000), (0x2000, 0x1000)]),
            Err(RamError::Overlap { .. })
        ));
    }
}
