// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Where everything goes: computed once from the kernel, the initrd's and command line's
//! sizes and the guest's RAM, checked for overlap, and returned to the caller.
//!
//! Rules, in order:
//! 1. An ELF kernel's segments go where their program headers say; each must lie inside
//!    one RAM range.
//!    Firmware tables the VMM built go where it built them for, and must not share a
//!    page with a segment (their pages are not RAM to the guest).
//! 2. Boot data (GDT, page tables for a 64-bit entry, boot parameters, command line) takes
//!    the lowest free pages at or above 4 KiB (page 0 stays unused), below 4 GiB, one
//!    page-aligned block per object.
//! 3. A bzImage goes at its `pref_address` if that is aligned (to `kernel_alignment` if
//!    relocatable, else to a page) and `init_size` bytes fit there; a relocatable one
//!    otherwise at the lowest `kernel_alignment`-aligned address at or above 1 MiB where
//!    they fit; a non-relocatable one fails.
//! 4. The initrd takes the highest free pages below `initrd_addr_max` (bzImage) or 4 GiB
//!    (PVH, entered with paging off).
//!
//! Generated objects never share a page with another object, so each can be converted to
//! private on its own; ELF segments may share pages with each other.

use serde::{Deserialize, Serialize};

use crate::image::KernelImage;
use crate::ram::{ByteRange, GuestRam, PAGE_SIZE};
use veil_abi::x86_64::BOOT_GDT_LIMIT;

use crate::measure::ObjectKind;
use crate::x86::page_table_pages;

/// Size of the GDT in bytes.
const GDT_SIZE: u64 = BOOT_GDT_LIMIT as u64 + 1;

/// Lowest address boot data may use: page 0 stays unused.
pub const BOOT_DATA_START: u64 = 0x1000;
/// Lowest address a relocated bzImage may use.
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;
/// Boot data, the initrd and a bzImage stay below 4 GiB: PVH starts with paging off and
/// the boot protocol's 32-bit fields are the ones every kernel reads.
pub const LOW_LIMIT: u64 = 1 << 32;

/// One object's place in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// What it is.
    pub kind: ObjectKind,
    /// The exact bytes it occupies.
    pub range: ByteRange,
}

/// Why no layout could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// An object is larger than all of the guest's RAM.
    #[error("the {what} needs {size:#x} bytes, more than the guest's {ram:#x} bytes of RAM")]
    LargerThanRam {
        /// The object.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The guest's RAM.
        ram: u64,
    },
    /// An object fits in RAM in total but nowhere it is allowed to go.
    #[error("no room for the {what} ({size:#x} bytes) in RAM below {limit:#x}")]
    NoRoom {
        /// The object.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The highest address it may reach.
        limit: u64,
    },
    /// A placement fixed by the image lies (partly) outside RAM.
    #[error("{kind:?} at {range} is not inside one RAM range")]
    OutsideRam {
        /// The object.
        kind: ObjectKind,
        /// Where the image puts it.
        range: ByteRange,
    },
    /// A non-relocatable bzImage cannot go where it must (no room there, or misaligned).
    #[error("the kernel is not relocatable and its {size:#x} bytes do not fit at {addr:#x}")]
    FixedKernelDoesNotFit {
        /// The address it must be loaded at.
        addr: u64,
        /// The memory it needs there.
        size: u64,
    },
    /// Two placements share bytes.
    #[error("{first:?} at {first_range} overlaps {second:?} at {second_range}")]
    Overlap {
        /// One object.
        first: ObjectKind,
        /// Its bytes.
        first_range: ByteRange,
        /// The other.
        second: ObjectKind,
        /// Its bytes.
        second_range: ByteRange,
    },
}

/// The computed layout.
///
/// An IGVM image's boot data is the file's own pages, which `placements` lists: for one,
/// `gdt`, `boot_params`, `cmdline` and `kernel_reserved` are the span of those pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Every placed object in placement order: kernel segments (or the kernel), initrd,
    /// command line, boot parameters, page tables, GDT, firmware tables.
    pub placements: Vec<Placement>,
    /// The memory a bzImage needs from its load address (`init_size`): no other object
    /// may be placed there. For an ELF kernel, the span of its segments.
    pub kernel_reserved: ByteRange,
    /// Where the GDT is.
    pub gdt: ByteRange,
    /// Where the page tables are, for a 64-bit entry.
    pub page_tables: Option<ByteRange>,
    /// Where the boot parameters are.
    pub boot_params: ByteRange,
    /// Where the command line is (with its NUL).
    pub cmdline: ByteRange,
    /// Where the initrd is.
    pub initrd: Option<ByteRange>,
    /// The bzImage's load address, or the lowest ELF segment address.
    pub kernel_load: u64,
    /// Where the firmware tables are, if there are any.
    #[serde(default)]
    pub firmware: Option<ByteRange>,
}

impl Layout {
    /// Computes the layout for `image` with an initrd of `initrd_len` bytes, a command line
    /// of `cmdline_len` bytes (NUL included) and boot parameters of `boot_params_len`
    /// bytes in `ram`.
    pub fn compute(
        image: &KernelImage<'_>,
        initrd_len: Option<u64>,
        cmdline_len: u64,
        boot_params_len: u64,
        ram: &GuestRam,
    ) -> Result<Layout, LayoutError> {
        Self::compute_with(image, initrd_len, cmdline_len, boot_params_len, None, ram)
    }

    /// [`compute`](Self::compute) with firmware tables fixed at `firmware`: placed there
    /// (inside one RAM range) like an ELF segment, before everything the layout chooses,
    /// so nothing else shares their pages.
    pub fn compute_with(
        image: &KernelImage<'_>,
        initrd_len: Option<u64>,
        cmdline_len: u64,
        boot_params_len: u64,
        firmware: Option<ByteRange>,
        ram: &GuestRam,
    ) -> Result<Layout, LayoutError> {
        let total = ram.total();
        let larger = |what, size| LayoutError::LargerThanRam {
            what,
            size,
            ram: total,
        };
        let kernel_size = match image {
            KernelImage::PvhElf(elf) => elf
                .segments()
                .iter()
                .fold(0u64, |a, s| a.saturating_add(s.range.len())),
            KernelImage::BzImage(bz) => bz.memory_needed(),
            KernelImage::Flat(f) => f.range().len(),
        };
        if kernel_size > total {
            return Err(larger("kernel", kernel_size));
        }
        if let Some(len) = initrd_len
            && len > total
        {
            return Err(larger("initrd", len));
        }

        // Pages already taken, page-rounded.
        let mut taken: Vec<ByteRange> = Vec::new();
        let mut kernel_placements = Vec::new();
        let fixed: Vec<(ObjectKind, ByteRange)> = match image {
            KernelImage::PvhElf(elf) => elf
                .segments()
                .iter()
                .map(|s| (ObjectKind::KernelSegment, s.range))
                .collect(),
            KernelImage::Flat(f) => vec![(ObjectKind::Kernel, f.range())],
            KernelImage::BzImage(_) => Vec::new(),
        };
        for (kind, range) in fixed {
            if !ram.holds(&range) {
                return Err(LayoutError::OutsideRam { kind, range });
            }
            taken.extend(range.page_aligned());
            kernel_placements.push(Placement { kind, range });
        }
        if let Some(range) = firmware {
            let kind = ObjectKind::FirmwareTables;
            if !ram.holds(&range) {
                return Err(LayoutError::OutsideRam { kind, range });
            }
            // Their pages are not RAM to the guest: a kernel segment there is an overlap.
            if let Some(p) = kernel_placements.iter().find(|p| {
                p.range
                    .page_aligned()
                    .zip(range.page_aligned())
                    .is_some_and(|(a, b)| a.overlaps(&b))
            }) {
                return Err(LayoutError::Overlap {
                    first: p.kind,
                    first_range: p.range,
                    second: kind,
                    second_range: range,
                });
            }
            taken.extend(range.page_aligned());
        }

        // Boot data: one block, objects page-aligned inside it.
        let sixty_four = matches!(image, KernelImage::BzImage(_) | KernelImage::Flat(_));
        let pages = |len: u64| len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let pt_len = if sixty_four {
            let top = ram.ranges().iter().map(|r| r.end()).max().unwrap_or(0);
            page_table_pages(top) * PAGE_SIZE
        } else {
            0
        };
        let block = pages(GDT_SIZE)
            .checked_add(pt_len)
            .and_then(|n| n.checked_add(pages(boot_params_len)))
            .and_then(|n| n.checked_add(pages(cmdline_len)))
            .ok_or(larger("boot data", u64::MAX))?;
        let boot = find_lowest(ram, &taken, block, PAGE_SIZE, BOOT_DATA_START, LOW_LIMIT).ok_or(
            LayoutError::NoRoom {
                what: "boot data",
                size: block,
                limit: LOW_LIMIT,
            },
        )?;
        let mut at = boot.start().0;
        let mut next = |len: u64| {
            let r = ByteRange::new(at, len);
            at += pages(len);
            r
        };
        let none = LayoutError::NoRoom {
            what: "boot data",
            size: block,
            limit: LOW_LIMIT,
        };
        let gdt = next(GDT_SIZE).ok_or(none.clone())?;
        let page_tables = if sixty_four { next(pt_len) } else { None };
        let boot_params = next(boot_params_len).ok_or(none.clone())?;
        let cmdline = next(cmdline_len).ok_or(none)?;
        taken.push(boot);

        // The bzImage.
        let kernel_reserved = match image {
            KernelImage::PvhElf(elf) => elf.span(),
            KernelImage::Flat(f) => f.range(),
            KernelImage::BzImage(bz) => {
                let need = pages(bz.memory_needed());
                let fits = |addr: u64| {
                    ByteRange::new(addr, need).filter(|r| {
                        r.end() <= LOW_LIMIT && ram.holds(r) && !taken.iter().any(|t| t.overlaps(r))
                    })
                };
                let preferred = match bz.pref_address() {
                    0 => KERNEL_MIN_ADDR,
                    a => a,
                };
                // `pref_address` comes from the file: a misaligned one would share pages.
                let align = if bz.relocatable() {
                    bz.kernel_alignment().max(PAGE_SIZE)
                } else {
                    PAGE_SIZE
                };
                let at_preferred = Some(preferred)
                    .filter(|a| a.is_multiple_of(align))
                    .and_then(fits);
                let reserved = match at_preferred {
                    Some(r) => r,
                    None if bz.relocatable() => {
                        find_lowest(ram, &taken, need, align, KERNEL_MIN_ADDR, LOW_LIMIT).ok_or(
                            LayoutError::NoRoom {
                                what: "kernel",
                                size: need,
                                limit: LOW_LIMIT,
                            },
                        )?
                    }
                    None => {
                        return Err(LayoutError::FixedKernelDoesNotFit {
                            addr: preferred,
                            size: need,
                        });
                    }
                };
                let payload = ByteRange::new(reserved.start().0, bz.payload().len() as u64).ok_or(
                    LayoutError::NoRoom {
                        what: "kernel",
                        size: need,
                        limit: LOW_LIMIT,
                    },
                )?;
                kernel_placements.push(Placement {
                    kind: ObjectKind::Kernel,
                    range: payload,
                });
                taken.push(reserved);
                reserved
            }
        };

        // The initrd, as high as allowed.
        let initrd = match initrd_len {
            None | Some(0) => None,
            Some(len) => {
                let limit = match image {
                    KernelImage::BzImage(bz) => {
                        bz.initrd_addr_max().saturating_add(1).min(LOW_LIMIT)
                    }
                    KernelImage::PvhElf(_) | KernelImage::Flat(_) => LOW_LIMIT,
                };
                let addr = find_highest(ram, &taken, pages(len), PAGE_SIZE, limit).ok_or(
                    LayoutError::NoRoom {
                        what: "initrd",
                        size: len,
                        limit,
                    },
                )?;
                ByteRange::new(addr, len)
            }
        };

        let mut placements = kernel_placements;
        if let Some(r) = initrd {
            placements.push(Placement {
                kind: ObjectKind::Initrd,
                range: r,
            });
        }
        placements.push(Placement {
            kind: ObjectKind::CommandLine,
            range: cmdline,
        });
        placements.push(Placement {
            kind: ObjectKind::BootParams,
            range: boot_params,
        });
        if let Some(r) = page_tables {
            placements.push(Placement {
                kind: ObjectKind::PageTables,
                range: r,
            });
        }
        placements.push(Placement {
            kind: ObjectKind::Gdt,
            range: gdt,
        });
        if let Some(range) = firmware {
            placements.push(Placement {
                kind: ObjectKind::FirmwareTables,
                range,
            });
        }

        let layout = Layout {
            placements,
            kernel_reserved,
            gdt,
            page_tables,
            boot_params,
            cmdline,
            initrd,
            kernel_load: kernel_reserved.start().0,
            firmware,
        };
        layout.check()?;
        Ok(layout)
    }

    /// Checks that every placement lies in RAM and that no two placements (with the
    /// bzImage's whole `init_size` reservation standing for the kernel) share a byte.
    pub fn check(&self) -> Result<(), LayoutError> {
        let mut footprints: Vec<Placement> = self
            .placements
            .iter()
            .map(|p| match p.kind {
                ObjectKind::Kernel => Placement {
                    kind: p.kind,
                    range: self.kernel_reserved,
                },
                _ => *p,
            })
            .collect();
        footprints.sort_by_key(|p| (p.range.start(), p.range.end()));
        for pair in footprints.windows(2) {
            if pair[0].range.overlaps(&pair[1].range) {
                return Err(LayoutError::Overlap {
                    first: pair[0].kind,
                    first_range: pair[0].range,
                    second: pair[1].kind,
                    second_range: pair[1].range,
                });
            }
        }
        Ok(())
    }

    /// The page-aligned runs covering every placement, sorted and merged: the ranges
    /// populated and, where the memory's flavor does so, converted to private.
    pub fn page_runs(&self) -> Vec<ByteRange> {
        merge_pages(self.placements.iter().map(|p| p.range))
    }
}

/// Page-rounds `ranges`, then sorts and merges the ones that touch.
pub fn merge_pages(ranges: impl Iterator<Item = ByteRange>) -> Vec<ByteRange> {
    let mut pages: Vec<ByteRange> = ranges.filter_map(|r| r.page_aligned()).collect();
    pages.sort();
    let mut out: Vec<ByteRange> = Vec::new();
    for r in pages {
        if let Some(last) = out.last_mut()
            && r.start().0 <= last.end()
        {
            let end = last.end().max(r.end());
            if let Some(m) = ByteRange::new(last.start().0, end - last.start().0) {
                *last = m;
            }
            continue;
        }
        out.push(r);
    }
    out
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|x| x & !(align - 1))
}

/// The lowest range `[a, a + size)` with `a >= min` `align`-aligned, inside one RAM
/// range, below `limit`, and clear of `taken`.
fn find_lowest(
    ram: &GuestRam,
    taken: &[ByteRange],
    size: u64,
    align: u64,
    min: u64,
    limit: u64,
) -> Option<ByteRange> {
    for r in ram.ranges() {
        let top = r.end().min(limit);
        let mut a = align_up(r.start().0.max(min), align)?;
        loop {
            let end = a.checked_add(size)?;
            if end > top {
                break;
            }
            let cand = ByteRange::new(a, size)?;
            match taken
                .iter()
                .filter(|t| t.overlaps(&cand))
                .map(|t| t.end())
                .max()
            {
                Some(past) => a = align_up(past, align)?,
                None => return Some(cand),
            }
        }
    }
    None
}

/// The highest `align`-aligned address `a` with `[a, a + size)` inside one RAM range,
/// ending at or below `limit`, and clear of `taken`.
fn find_highest(
    ram: &GuestRam,
    taken: &[ByteRange],
    size: u64,
    align: u64,
    limit: u64,
) -> Option<u64> {
    for r in ram.ranges().iter().rev() {
        let top = r.end().min(limit);
        let mut end = top;
        while let Some(a) = end.checked_sub(size).map(|a| a & !(align - 1)) {
            if a < r.start().0 {
                break;
            }
            let cand = ByteRange::new(a, size)?;
            match taken
                .iter()
                .filter(|t| t.overlaps(&cand))
                .map(|t| t.start().0)
                .min()
            {
                Some(below) => end = below,
                None => return Some(a),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> ByteRange {
        ByteRange::new(start, len).unwrap()
    }

    #[test]
    fn lowest_and_highest_fit_skip_taken() {
        let ram = GuestRam::new(&[(0, 0xa_0000), (0x10_0000, 0x10_0000)]).unwrap();
        let taken = [r(0x1000, 0x2000), r(0x1f_0000, 0x1_0000)];
        assert_eq!(
            find_lowest(&ram, &taken, 0x1000, 0x1000, 0x1000, LOW_LIMIT),
            Some(r(0x3000, 0x1000))
        );
        // Too big for the low range: goes to the second one.
        assert_eq!(
            find_lowest(&ram, &taken, 0xa_0000, 0x1000, 0, LOW_LIMIT),
            Some(r(0x10_0000, 0xa_0000))
        );
        assert_eq!(
            find_highest(&ram, &taken, 0x2000, 0x1000, LOW_LIMIT),
            Some(0x1e_e000)
        );
        assert_eq!(
            find_highest(&ram, &taken, 0x2000, 0x1000, 0x10_0000),
            Some(0x9_e000)
        );
        assert_eq!(
            find_highest(&ram, &taken, 0x20_0000, 0x1000, LOW_LIMIT),
            None
        );
        assert_eq!(
            find_lowest(&ram, &taken, 0x20_0000, 0x1000, 0, LOW_LIMIT),
            None
        );
    }

    #[test]
    fn merge_pages_rounds_and_joins() {
        let runs = merge_pages(
            [
                r(0x1010, 0x10),
                r(0x1ff0, 0x20),
                r(0x5000, 0x1000),
                r(0x3000, 1),
            ]
            .into_iter(),
        );
        // Runs that touch merge too: one conversion covers both.
        assert_eq!(runs, vec![r(0x1000, 0x3000), r(0x5000, 0x1000)]);
    }
}
