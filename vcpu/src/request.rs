// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Conversion requests (`KVM_HC_MAP_GPA_RANGE`): the raw arguments a guest supplies,
//! their validation, and the result code written back to the guest.

use std::fmt;

use veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SHIFT};

use crate::hypercall::Hypercall;

use crate::abi::{
    KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED, KVM_MAP_GPA_RANGE_PAGE_SZ_1G,
    KVM_MAP_GPA_RANGE_PAGE_SZ_2M, KVM_MAP_GPA_RANGE_PAGE_SZ_4K, MAP_GPA_RANGE_PAGE_SIZE_MASK,
    MAP_GPA_RANGE_RESERVED_MASK,
};

/// Why a conversion request was refused. The guest gets
/// [`HypercallResult::InvalidArgument`]; nothing else changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The hypercall number is not `KVM_HC_MAP_GPA_RANGE`.
    #[error("unknown hypercall number {nr}")]
    UnknownHypercall {
        /// The number the guest passed.
        nr: u64,
    },
    /// The start address is not 4 KiB aligned.
    #[error("gpa {gpa:#x} is not 4 KiB aligned")]
    Misaligned {
        /// The address given.
        gpa: u64,
    },
    /// The page count is zero.
    #[error("zero pages at gpa {gpa:#x}")]
    ZeroPages {
        /// The address given.
        gpa: u64,
    },
    /// `gpa + pages * 4096` does not fit in 64 bits.
    #[error("gpa {gpa:#x} + {pages:#x} pages overflows the 64-bit address space")]
    Overflow {
        /// The address given.
        gpa: u64,
        /// The page count given.
        pages: u64,
    },
    /// The range is not entirely guest memory.
    #[error("{range} is not inside guest memory")]
    OutOfRange {
        /// The range asked for.
        range: FrameRange,
    },
    /// The attribute word has bits set in 63:5.
    #[error("reserved bits {reserved:#x} set in attribute word {attributes:#x}")]
    ReservedBits {
        /// The whole attribute word.
        attributes: u64,
        /// The reserved bits that were set.
        reserved: u64,
    },
    /// The page-size field (bits 3:0) is not 4 KiB, 2 MiB or 1 GiB. A field of 8 is
    /// usually `KVM_MEMORY_ATTRIBUTE_PRIVATE` (bit 3) passed where this ABI's
    /// to-private bit (bit 4, `KVM_MAP_GPA_RANGE_ENCRYPTED`) belongs; the message says so.
    #[error(
        "page-size field {field:#x} of attribute word {attributes:#x} is not 4K, 2M or 1G{}",
        if *field & 0x8 != 0 {
            " (bit 3 is KVM_SET_MEMORY_ATTRIBUTES' PRIVATE; to private here is bit 4, 0x10)"
        } else {
            ""
        }
    )]
    BadPageSize {
        /// The whole attribute word.
        attributes: u64,
        /// Bits 3:0 of it.
        field: u64,
    },
}

/// The page-size hint of a conversion request (attribute bits 3:0).
///
/// A hint only: conversions are tracked at 4 KiB whatever the hint says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 4 KiB (`KVM_MAP_GPA_RANGE_PAGE_SZ_4K` = 0).
    Size4K,
    /// 2 MiB (`KVM_MAP_GPA_RANGE_PAGE_SZ_2M` = 1).
    Size2M,
    /// 1 GiB (`KVM_MAP_GPA_RANGE_PAGE_SZ_1G` = 2).
    Size1G,
}

impl PageSize {
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PageSize::Size4K => 1 << 12,
            PageSize::Size2M => 1 << 21,
            PageSize::Size1G => 1 << 30,
        }
    }
}

/// The memory layout of a guest: the frames that are guest memory.
///
/// Conversion requests must lie entirely inside it. Overlapping and adjacent ranges are
/// merged, so a request may span two memory regions that touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestLayout {
    ranges: Vec<FrameRange>,
}

impl GuestLayout {
    /// A layout made of `ranges`, in any order.
    pub fn new(ranges: impl IntoIterator<Item = FrameRange>) -> Self {
        let mut sorted: Vec<FrameRange> = ranges.into_iter().collect();
        sorted.sort_unstable();
        let mut merged: Vec<FrameRange> = Vec::with_capacity(sorted.len());
        for r in sorted {
            match merged.last_mut() {
                Some(last) if r.start() <= last.end() => {
                    if r.end() > last.end() {
                        // Both ends are at most MAX_FRAMES and start < end: always Some.
                        if let Some(joined) = FrameRange::from_bounds(last.start(), r.end()) {
                            *last = joined;
                        }
                    }
                }
                _ => merged.push(r),
            }
        }
        GuestLayout { ranges: merged }
    }

    /// A layout of one range of `size` bytes starting at guest-physical address 0.
    ///
    /// `size` is rounded down to whole pages; a size under one page gives an empty layout.
    pub fn from_size(size: u64) -> Self {
        GuestLayout::new(FrameRange::new(Gfn(0), size >> PAGE_SHIFT).ok())
    }

    /// The merged ranges, sorted.
    pub fn ranges(&self) -> &[FrameRange] {
        &self.ranges
    }

    /// Whether every frame of `range` is guest memory.
    pub fn contains(&self, range: &FrameRange) -> bool {
        // The last merged range starting at or before `range` is the only candidate.
        let idx = self.ranges.partition_point(|r| r.start() <= range.start());
        idx > 0 && self.ranges[idx - 1].contains_range(range)
    }
}

/// The raw arguments of a conversion request, as the guest supplied them.
///
/// Built from a `KVM_EXIT_HYPERCALL` exit or from the registers at a port-I/O hypercall;
/// nothing in it has been checked. [`MapGpaRangeArgs::validate`] checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapGpaRangeArgs {
    /// The hypercall number (`rax`; 12 for MAP_GPA_RANGE).
    pub nr: u64,
    /// Guest-physical start address (`a0`, `rbx`).
    pub gpa: u64,
    /// Number of 4 KiB pages (`a1`, `rcx`).
    pub pages: u64,
    /// Attribute word (`a2`, `rdx`).
    pub attributes: u64,
    /// Whether the guest was in 64-bit mode. When clear, every argument is 32-bit.
    pub long_mode: bool,
}

impl MapGpaRangeArgs {
    /// Checks the request against the ABI and the guest's memory `layout`.
    ///
    /// Outside 64-bit mode the upper halves of the registers are ignored, as KVM does.
    /// Only bit 4 of the attribute word chooses the direction; bits 63:5 must be zero
    /// and bits 3:0 must name 4 KiB, 2 MiB or 1 GiB. The end address is computed with
    /// checked arithmetic: KVM itself lets page counts through whose byte size overflows.
    pub fn validate(&self, layout: &GuestLayout) -> Result<MapGpaRange, RequestError> {
        let width = |v: u64| {
            if self.long_mode {
                v
            } else {
                v & u64::from(u32::MAX)
            }
        };
        let (nr, gpa, pages, attributes) = (
            width(self.nr),
            width(self.gpa),
            width(self.pages),
            width(self.attributes),
        );
        if nr != KVM_HC_MAP_GPA_RANGE {
            return Err(RequestError::UnknownHypercall { nr });
        }
        let range = MapGpaRange::check_range(gpa, pages)?;
        let reserved = attributes & MAP_GPA_RANGE_RESERVED_MASK;
        if reserved != 0 {
            return Err(RequestError::ReservedBits {
                attributes,
                reserved,
            });
        }
        let page_size = match attributes & MAP_GPA_RANGE_PAGE_SIZE_MASK {
            KVM_MAP_GPA_RANGE_PAGE_SZ_4K => PageSize::Size4K,
            KVM_MAP_GPA_RANGE_PAGE_SZ_2M => PageSize::Size2M,
            KVM_MAP_GPA_RANGE_PAGE_SZ_1G => PageSize::Size1G,
            field => return Err(RequestError::BadPageSize { attributes, field }),
        };
        let to = if attributes & KVM_MAP_GPA_RANGE_ENCRYPTED != 0 {
            Attributes::PRIVATE
        } else {
            Attributes::empty()
        };
        MapGpaRange::within(range, to, page_size, layout)
    }
}

impl From<&Hypercall> for MapGpaRangeArgs {
    /// The MAP_GPA_RANGE reading of a hypercall: `a0` = gpa, `a1` = pages, `a2` =
    /// attribute word.
    fn from(call: &Hypercall) -> Self {
        MapGpaRangeArgs {
            nr: call.nr,
            gpa: call.args[0],
            pages: call.args[1],
            attributes: call.args[2],
            long_mode: call.long_mode,
        }
    }
}

/// A validated conversion request: convert `range` to `to`.
///
/// Only validation makes one ([`MapGpaRangeArgs::validate`] for MAP_GPA_RANGE,
/// [`MapGpaRange::new`] for other hypercall ABIs), so a handler never sees a request that
/// is misaligned, empty, wrapping, outside guest memory or carrying unknown bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapGpaRange {
    range: FrameRange,
    to: Attributes,
    page_size: PageSize,
}

impl MapGpaRange {
    /// A request to convert `pages` 4 KiB pages at `gpa` to `to`, for a hypercall ABI
    /// other than MAP_GPA_RANGE: refused unless `gpa` is 4 KiB aligned, `pages` is not
    /// zero, `gpa + pages * 4096` fits in 64 bits, and the range lies inside `layout`.
    pub fn new(
        gpa: u64,
        pages: u64,
        to: Attributes,
        page_size: PageSize,
        layout: &GuestLayout,
    ) -> Result<Self, RequestError> {
        Self::within(Self::check_range(gpa, pages)?, to, page_size, layout)
    }

    /// The frames of `[gpa, gpa + pages * 4096)`, checked with checked arithmetic: KVM
    /// itself lets page counts through whose byte size overflows.
    fn check_range(gpa: u64, pages: u64) -> Result<FrameRange, RequestError> {
        let Some(start) = Gfn::from_gpa(gpa) else {
            return Err(RequestError::Misaligned { gpa });
        };
        if pages == 0 {
            return Err(RequestError::ZeroPages { gpa });
        }
        // Aligned and non-empty, so the only failure left is an end past 64 bits.
        FrameRange::new(start, pages).map_err(|_| RequestError::Overflow { gpa, pages })
    }

    fn within(
        range: FrameRange,
        to: Attributes,
        page_size: PageSize,
        layout: &GuestLayout,
    ) -> Result<Self, RequestError> {
        if !layout.contains(&range) {
            return Err(RequestError::OutOfRange { range });
        }
        Ok(MapGpaRange {
            range,
            to,
            page_size,
        })
    }

    /// The frames to convert.
    pub fn range(&self) -> FrameRange {
        self.range
    }

    /// Guest-physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.range.gpa()
    }

    /// Number of 4 KiB pages (never zero).
    pub fn pages(&self) -> u64 {
        self.range.pages()
    }

    /// The state the range is to be in: [`Attributes::PRIVATE`] or shared (empty).
    pub fn to(&self) -> Attributes {
        self.to
    }

    /// The guest's page-size hint.
    pub fn page_size(&self) -> PageSize {
        self.page_size
    }
}

impl fmt::Display for MapGpaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "convert {} to {}", self.range, self.to)
    }
}

/// The result of a conversion request, as written to `hypercall.ret` (or to `rax` for
/// the port-I/O hypercall).
///
/// Only the values KVM accepts from userspace exist: 0, `EINVAL` and `EAGAIN`, as
/// **positive** errno values. `Documentation/virt/kvm/api.rst` (section
/// `KVM_CAP_EXIT_HYPERCALL`, with the retry extension queued for Linux 7.2: "Userspace may
/// fail the hypercall by setting hypercall.ret to EINVAL or may request the hypercall to
/// be retried the next time the guest runs by setting hypercall.ret to EAGAIN") uses the
/// positive values, which is what userspace sees in errno; for TDX and SNP guests KVM
/// translates them into the technology's status codes and fails `KVM_RUN` with `EINVAL`
/// on any other value. For other VMs `complete_hypercall_exit()` in
/// `arch/x86/kvm/x86.c` copies `hypercall.ret` into the guest's `rax` unchanged
/// (truncated to 32 bits outside 64-bit mode), so such a guest reads 0, 22 or 11. (KVM's
/// own early rejection of a misaligned or zero-page request, before any exit, puts
/// `-KVM_EINVAL` in `rax` instead: guests should treat every non-zero value as failure.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HypercallResult {
    /// The conversion was done: 0.
    Success,
    /// The request was malformed or refused: `EINVAL` (22).
    InvalidArgument,
    /// Try again later: `EAGAIN` (11).
    Retry,
}

impl HypercallResult {
    /// The value written to `hypercall.ret` or `rax`.
    pub const fn code(self) -> u64 {
        match self {
            HypercallResult::Success => 0,
            HypercallResult::InvalidArgument => libc::EINVAL as u64,
            HypercallResult::Retry => libc::EAGAIN as u64,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use veil_attrs::PAGE_SIZE;

    const MIB: u64 = 1 << 20;

    fn layout() -> GuestLayout {
        // [0, 2 MiB) and [4 MiB, 8 MiB).
        GuestLayout::new([
            FrameRange::from_gpa(4 * MIB, 4 * MIB).unwrap(),
            FrameRange::from_gpa(0, 2 * MIB).unwrap(),
        ])
    }

    pub(crate) fn args(gpa: u64, pages: u64, attributes: u64) -> MapGpaRangeArgs {
        MapGpaRangeArgs {
            nr: KVM_HC_MAP_GPA_RANGE,
            gpa,
            pages,
            attributes,
            long_mode: true,
        }
    }

    #[test]
    fn valid_to_private_and_to_shared() {
        let req = args(0x1000, 2, KVM_MAP_GPA_RANGE_ENCRYPTED)
            .validate(&layout())
            .unwrap();
        assert_eq!(req.gpa(), 0x1000);
        assert_eq!(req.pages(), 2);
        assert_eq!(req.to(), Attributes::PRIVATE);
        assert_eq!(req.page_size(), PageSize::Size4K);
        assert_eq!(req.range(), FrameRange::from_gpa(0x1000, 0x2000).unwrap());

        let req = args(4 * MIB, 512, 0).validate(&layout()).unwrap();
        assert_eq!(req.to(), Attributes::empty());
        assert_eq!(req.to_string(), "convert [0x400000, 0x600000) to shared");
    }

    #[test]
    fn size_bit_does_not_decide_direction() {
        // The 2 MiB size bit alone is a to-shared request: a VMM that treats any non-zero
        // word as private would get this wrong.
        let req = args(4 * MIB, 512, KVM_MAP_GPA_RANGE_PAGE_SZ_2M)
            .validate(&layout())
            .unwrap();
        assert_eq!(req.to(), Attributes::empty());
        assert_eq!(req.page_size(), PageSize::Size2M);
        let req = args(
            0,
            1,
            KVM_MAP_GPA_RANGE_PAGE_SZ_1G | KVM_MAP_GPA_RANGE_ENCRYPTED,
        )
        .validate(&layout())
        .unwrap();
        assert_eq!(req.to(), Attributes::PRIVATE);
        assert_eq!(req.page_size(), PageSize::Size1G);
        assert_eq!(PageSize::Size2M.bytes(), 2 * MIB);
    }

    #[test]
    fn bad_requests() {
        let l = layout();
        let cases: &[(MapGpaRangeArgs, RequestError)] = &[
            (args(0x1001, 1, 0), RequestError::Misaligned { gpa: 0x1001 }),
            (args(0x1000, 0, 0), RequestError::ZeroPages { gpa: 0x1000 }),
            // gfn + pages does not wrap (KVM's own check passes), but the byte size does.
            (
                args(0x1000, 1 << 52, 0),
                RequestError::Overflow {
                    gpa: 0x1000,
                    pages: 1 << 52,
                },
            ),
            (
                args(0x1000, u64::MAX, 0),
                RequestError::Overflow {
                    gpa: 0x1000,
                    pages: u64::MAX,
                },
            ),
            (
                args(!0xfff_u64, 1, 0),
                RequestError::Overflow {
                    gpa: !0xfff_u64,
                    pages: 1,
                },
            ),
            (
                args(2 * MIB - 0x1000, 2, 0),
                RequestError::OutOfRange {
                    range: FrameRange::from_gpa(2 * MIB - 0x1000, 0x2000).unwrap(),
                },
            ),
            (
                args(0x1000_0000, 1, 0),
                RequestError::OutOfRange {
                    range: FrameRange::from_gpa(0x1000_0000, 0x1000).unwrap(),
                },
            ),
            (
                args(0, 1, 1 << 5),
                RequestError::ReservedBits {
                    attributes: 1 << 5,
                    reserved: 1 << 5,
                },
            ),
            (
                args(0, 1, (1 << 63) | KVM_MAP_GPA_RANGE_ENCRYPTED),
                RequestError::ReservedBits {
                    attributes: (1 << 63) | KVM_MAP_GPA_RANGE_ENCRYPTED,
                    reserved: 1 << 63,
                },
            ),
            (
                args(0, 1, 3),
                RequestError::BadPageSize {
                    attributes: 3,
                    field: 3,
                },
            ),
            (
                args(0, 1, 8 | KVM_MAP_GPA_RANGE_ENCRYPTED),
                RequestError::BadPageSize {
                    attributes: 0x18,
                    field: 8,
                },
            ),
            (
                MapGpaRangeArgs {
                    nr: 11,
                    ..args(0, 1, 0)
                },
                RequestError::UnknownHypercall { nr: 11 },
            ),
        ];
        for (a, want) in cases {
            assert_eq!(a.validate(&l), Err(*want), "{a:?}");
        }
        // Bit 3 is the other ABI's PRIVATE: the refusal says where the bit belongs.
        let private_bit = args(0, 1, 8).validate(&l).unwrap_err().to_string();
        assert!(
            private_bit.contains("to private here is bit 4, 0x10"),
            "{private_bit}"
        );
        let three = args(0, 1, 3).validate(&l).unwrap_err().to_string();
        assert!(!three.contains("bit 4"), "{three}");
    }

    #[test]
    fn spanning_two_touching_regions() {
        let l = GuestLayout::new([
            FrameRange::from_gpa(0, MIB).unwrap(),
            FrameRange::from_gpa(MIB, MIB).unwrap(),
        ]);
        assert_eq!(l.ranges().len(), 1);
        assert!(args(MIB - 0x1000, 2, 0).validate(&l).is_ok());
        // A gap between regions is not guest memory.
        assert!(matches!(
            args(2 * MIB - 0x1000, 2, 0).validate(&layout()),
            Err(RequestError::OutOfRange { .. })
        ));
    }

    #[test]
    fn short_mode_uses_low_halves() {
        // Upper halves are garbage outside 64-bit mode and must be ignored.
        let a = MapGpaRangeArgs {
            nr: (0xdead << 32) | KVM_HC_MAP_GPA_RANGE,
            gpa: (0xffff_ffff << 32) | 0x2000,
            pages: (1 << 40) | 1,
            attributes: (1 << 63) | KVM_MAP_GPA_RANGE_ENCRYPTED,
            long_mode: false,
        };
        let req = a.validate(&layout()).unwrap();
        assert_eq!((req.gpa(), req.pages()), (0x2000, 1));
        assert_eq!(req.to(), Attributes::PRIVATE);
        // The same registers in 64-bit mode are refused.
        assert!(
            MapGpaRangeArgs {
                long_mode: true,
                ..a
            }
            .validate(&layout())
            .is_err()
        );
    }

    #[test]
    fn empty_layout_refuses_everything() {
        let l = GuestLayout::from_size(0xfff);
        assert!(l.ranges().is_empty());
        assert!(matches!(
            args(0, 1, 0).validate(&l),
            Err(RequestError::OutOfRange { .. })
        ));
        assert!(
            GuestLayout::from_size(2 * MIB).contains(&FrameRange::from_gpa(0, 2 * MIB).unwrap())
        );
    }

    #[test]
    fn result_codes_are_positive_errnos() {
        assert_eq!(HypercallResult::Success.code(), 0);
        assert_eq!(HypercallResult::InvalidArgument.code(), 22);
        assert_eq!(HypercallResult::Retry.code(), 11);
    }

    proptest::proptest! {
        /// Any register contents: validation never panics, accepts exactly what the ABI
        /// and the layout allow, and whatever it accepts carries the guest's range with
        /// bit 4 alone giving the direction.
        #[test]
        fn validation_holds_for_any_registers(
            // Weighted towards valid values, so requests are accepted often enough for
            // the checks on accepted requests to run.
            nr in proptest::prop_oneof![
                3 => proptest::strategy::Just(12u64),
                1 => proptest::num::u64::ANY,
            ],
            gpa in proptest::prop_oneof![
                3 => (0u64..2048).prop_map(|p| p * PAGE_SIZE),
                1 => proptest::num::u64::ANY,
            ],
            pages in proptest::prop_oneof![3 => 0u64..512, 1 => proptest::num::u64::ANY],
            attributes in proptest::prop_oneof![
                2 => proptest::sample::select(vec![0u64, 1, 2, 0x10, 0x11, 0x12]),
                1 => 0u64..0x40,
                1 => proptest::num::u64::ANY,
            ],
            long_mode in proptest::bool::ANY,
        ) {
            let l = layout();
            let a = MapGpaRangeArgs { nr, gpa, pages, attributes, long_mode };
            let w = |v: u64| if long_mode { v } else { v & u64::from(u32::MAX) };
            // The layout is [0, 2 MiB) and [4 MiB, 8 MiB); u128 so nothing wraps.
            let start = u128::from(w(gpa));
            let end = start + u128::from(w(pages)) * 4096;
            let mib = u128::from(MIB);
            let inside = end <= 2 * mib || (start >= 4 * mib && end <= 8 * mib);
            let want_ok = w(nr) == 12
                && w(gpa) % 4096 == 0
                && w(pages) != 0
                && inside
                && w(attributes) >> 5 == 0
                && w(attributes) & 0xf <= 2;
            let got = a.validate(&l);
            proptest::prop_assert_eq!(got.is_ok(), want_ok, "{:?}", got);
            if let Ok(req) = got {
                proptest::prop_assert_eq!(req.gpa(), w(gpa));
                proptest::prop_assert_eq!(req.pages(), w(pages));
                proptest::prop_assert!(l.contains(&req.range()));
                proptest::prop_assert_eq!(req.to().is_private(), w(attributes) & 0x10 != 0);
            }
        }
    }
}
