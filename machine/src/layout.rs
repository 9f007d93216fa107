// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest-physical layout of the PC: RAM below the 32-bit MMIO hole and above 4 GiB,
//! the interrupt controllers and KVM's own pages in the hole, and the system area in low
//! RAM where the ACPI tables and the RSDP go.
//!
//! Every address comes from one table, [`FIXED`], and every region is allocated through
//! vm-allocator's `AddressAllocator`, which refuses overlaps: a region placed wrong is an
//! error when the layout is made, not a guest that finds two things at one address.

use serde::Serialize;
use veil_loader::{ByteRange, PAGE_SIZE};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

/// What a region of the guest-physical address space is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionKind {
    /// RAM from 0 up to the MMIO hole (or up to the memory size, if smaller).
    RamLow,
    /// The RAM that did not fit below the hole, from 4 GiB up.
    RamHigh,
    /// The 32-bit MMIO hole: no RAM, so devices and the interrupt controllers have room
    /// below 4 GiB.
    MmioHole,
    /// Low RAM reserved for firmware tables (ACPI), below the RSDP; not RAM in the
    /// guest's memory map.
    SystemArea,
    /// Where the RSDP sits: in the legacy BIOS scan range, so a kernel that is not told
    /// where it is still finds it.
    Rsdp,
    /// The IOAPIC's registers.
    IoApic,
    /// The local APICs' registers (each vCPU sees its own there).
    LocalApic,
    /// KVM's three-page TSS area (`KVM_SET_TSS_ADDR`), which Intel hosts need.
    KvmTss,
    /// KVM's identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`), for real mode on Intel.
    KvmIdentityMap,
}

/// One fixed region: what it is, where, how long, and the region it must lie inside
/// (`None`: the address space itself).
#[derive(Debug, Clone, Copy)]
pub struct FixedRegion {
    /// What it is.
    pub kind: RegionKind,
    /// Its first byte.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// The region it is carved out of.
    pub inside: Option<RegionKind>,
}

/// The 32-bit MMIO hole starts at 3 GiB, as on Firecracker and Cloud Hypervisor.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// The hole ends at 4 GiB; RAM that does not fit below it continues there.
pub const RAM_HIGH_START: u64 = 1 << 32;
/// The end of the guest-physical address space the layout uses (1 TiB: within the
/// physical address width of every x86-64 host KVM runs on).
pub const ADDRESS_SPACE_END: u64 = 1 << 40;

/// The regions at fixed addresses. RAM is added by [`MemoryLayout::new`] for the size it
/// is given.
pub const FIXED: [FixedRegion; 7] = [
    FixedRegion {
        kind: RegionKind::MmioHole,
        start: MMIO_HOLE_START,
        len: RAM_HIGH_START - MMIO_HOLE_START,
        inside: None,
    },
    // 639 KiB up to the BIOS area, as Firecracker's system memory.
    FixedRegion {
        kind: RegionKind::SystemArea,
        start: 0x9_fc00,
        len: 0xe_0000 - 0x9_fc00,
        inside: Some(RegionKind::RamLow),
    },
    FixedRegion {
        kind: RegionKind::Rsdp,
        start: 0xe_0000,
        len: 36,
        inside: Some(RegionKind::RamLow),
    },
    FixedRegion {
        kind: RegionKind::IoApic,
        start: 0xfec0_0000,
        len: PAGE_SIZE,
        inside: Some(RegionKind::MmioHole),
    },
    FixedRegion {
        kind: RegionKind::LocalApic,
        start: 0xfee0_0000,
        len: PAGE_SIZE,
        inside: Some(RegionKind::MmioHole),
    },
    FixedRegion {
        kind: RegionKind::KvmIdentityMap,
        start: 0xfffb_c000,
        len: PAGE_SIZE,
        inside: Some(RegionKind::MmioHole),
    },
    FixedRegion {
        kind: RegionKind::KvmTss,
        start: 0xfffb_d000,
        len: 3 * PAGE_SIZE,
        inside: Some(RegionKind::MmioHole),
    },
];

/// The smallest memory the layout takes: low RAM must hold the system area and the RSDP
/// (1 MiB). A kernel needs more; the loader says how much when it does not fit.
pub const MIN_MEMORY: u64 = 1 << 20;
/// The largest memory the layout takes: the address space minus the MMIO hole.
pub const MAX_MEMORY: u64 = ADDRESS_SPACE_END - (RAM_HIGH_START - MMIO_HOLE_START);

/// Why no layout could be made for a memory size. Nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A guest needs memory.
    #[error("the memory size is 0: give the guest at least {MIN_MEMORY:#x} bytes")]
    Zero,
    /// RAM comes in whole pages.
    #[error("the memory size {size:#x} is not a multiple of 4 KiB: round it to whole pages")]
    Unaligned {
        /// The size asked for.
        size: u64,
    },
    /// Low RAM would not hold the ACPI tables.
    #[error(
        "the memory size {size:#x} is below the {MIN_MEMORY:#x} bytes the machine needs for its ACPI tables in low memory"
    )]
    TooSmall {
        /// The size asked for.
        size: u64,
    },
    /// RAM would reach past the address space.
    #[error(
        "the memory size {size:#x} does not fit the guest-physical address space: at most {MAX_MEMORY:#x} bytes"
    )]
    TooLarge {
        /// The size asked for.
        size: u64,
    },
    /// A region could not be allocated where the table puts it (the table is wrong).
    #[error("cannot allocate the {kind:?} region at {start:#x} + {len:#x}")]
    Allocate {
        /// The region.
        kind: RegionKind,
        /// Where.
        start: u64,
        /// How long.
        len: u64,
        /// vm-allocator's reason.
        #[source]
        source: vm_allocator::Error,
    },
}

/// One region of the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NamedRegion {
    /// What it is.
    pub kind: RegionKind,
    /// Its bytes.
    pub range: ByteRange,
}

/// The guest-physical layout for one memory size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemoryLayout {
    memory_size: u64,
    regions: Vec<NamedRegion>,
}

fn allocate(
    allocator: &mut AddressAllocator,
    kind: RegionKind,
    start: u64,
    len: u64,
) -> Result<ByteRange, LayoutError> {
    let failed = |source| LayoutError::Allocate {
        kind,
        start,
        len,
        source,
    };
    let r: RangeInclusive = allocator
        .allocate(len, 1, AllocPolicy::ExactMatch(start))
        .map_err(failed)?;
    ByteRange::new(r.start(), r.len()).ok_or(failed(vm_allocator::Error::InvalidSize(len)))
}

impl MemoryLayout {
    /// The layout of a guest with `memory_size` bytes of RAM: up to 3 GiB of it from 0,
    /// the rest from 4 GiB.
    pub fn new(memory_size: u64) -> Result<MemoryLayout, LayoutError> {
        let size = memory_size;
        if size == 0 {
            return Err(LayoutError::Zero);
        }
        if !size.is_multiple_of(PAGE_SIZE) {
            return Err(LayoutError::Unaligned { size });
        }
        if size < MIN_MEMORY {
            return Err(LayoutError::TooSmall { size });
        }
        if size > MAX_MEMORY {
            return Err(LayoutError::TooLarge { size });
        }
        let low = size.min(MMIO_HOLE_START);
        let mut ram: Vec<(RegionKind, u64, u64)> = vec![(RegionKind::RamLow, 0, low)];
        if size > low {
            ram.push((RegionKind::RamHigh, RAM_HIGH_START, size - low));
        }

        // The address space, then each region inside the one it belongs to.
        let whole = |kind| LayoutError::Allocate {
            kind,
            start: 0,
            len: ADDRESS_SPACE_END,
            source: vm_allocator::Error::InvalidRange(0, ADDRESS_SPACE_END),
        };
        let mut space =
            AddressAllocator::new(0, ADDRESS_SPACE_END).map_err(|_| whole(RegionKind::RamLow))?;
        let mut regions = Vec::new();
        for &(kind, start, len) in &ram {
            regions.push(NamedRegion {
                kind,
                range: allocate(&mut space, kind, start, len)?,
            });
        }
        let mut inner: Vec<(RegionKind, AddressAllocator)> = Vec::new();
        for &(kind, start, len) in &ram {
            let a = AddressAllocator::new(start, len).map_err(|source| LayoutError::Allocate {
                kind,
                start,
                len,
                source,
            })?;
            inner.push((kind, a));
        }
        for f in FIXED {
            let allocator = match f.inside {
                None => &mut space,
                Some(parent) => match inner.iter_mut().find(|(k, _)| *k == parent) {
                    Some((_, a)) => a,
                    None => {
                        return Err(LayoutError::Allocate {
                            kind: f.kind,
                            start: f.start,
                            len: f.len,
                            source: vm_allocator::Error::ResourceNotAvailable,
                        });
                    }
                },
            };
            let range = allocate(allocator, f.kind, f.start, f.len)?;
            if f.inside.is_none() {
                inner.push((
                    f.kind,
                    AddressAllocator::new(f.start, f.len).map_err(|source| {
                        LayoutError::Allocate {
                            kind: f.kind,
                            start: f.start,
                            len: f.len,
                            source,
                        }
                    })?,
                ));
            }
            regions.push(NamedRegion {
                kind: f.kind,
                range,
            });
        }
        regions.sort_by_key(|r| r.range.start());
        Ok(MemoryLayout {
            memory_size: size,
            regions,
        })
    }

    /// The memory size the layout was made for.
    pub fn memory_size(&self) -> u64 {
        self.memory_size
    }

    /// Every region, in address order.
    pub fn regions(&self) -> &[NamedRegion] {
        &self.regions
    }

    /// The region of `kind`, if the layout has one (only [`RegionKind::RamHigh`] may be
    /// missing).
    pub fn region(&self, kind: RegionKind) -> Option<ByteRange> {
        self.regions
            .iter()
            .find(|r| r.kind == kind)
            .map(|r| r.range)
    }

    fn fixed(&self, kind: RegionKind) -> ByteRange {
        // `new` allocated every fixed region or failed.
        match self.region(kind) {
            Some(r) => r,
            None => unreachable!("MemoryLayout::new allocates every fixed region"),
        }
    }

    /// The RAM ranges as `(base, size)`, in address order: what guest memory is made of.
    pub fn ram(&self) -> Vec<(u64, u64)> {
        self.regions
            .iter()
            .filter(|r| matches!(r.kind, RegionKind::RamLow | RegionKind::RamHigh))
            .map(|r| (r.range.start().0, r.range.len()))
            .collect()
    }

    /// Where the ACPI tables other than the RSDP go.
    pub fn system_area(&self) -> ByteRange {
        self.fixed(RegionKind::SystemArea)
    }

    /// Where the RSDP goes.
    pub fn rsdp(&self) -> ByteRange {
        self.fixed(RegionKind::Rsdp)
    }

    /// The IOAPIC's base address.
    pub fn ioapic(&self) -> u64 {
        self.fixed(RegionKind::IoApic).start().0
    }

    /// The local APICs' base address.
    pub fn local_apic(&self) -> u64 {
        self.fixed(RegionKind::LocalApic).start().0
    }

    /// KVM's TSS area.
    pub fn kvm_tss(&self) -> u64 {
        self.fixed(RegionKind::KvmTss).start().0
    }

    /// KVM's identity-map page.
    pub fn kvm_identity_map(&self) -> u64 {
        self.fixed(RegionKind::KvmIdentityMap).start().0
    }

    /// An allocator over the system area, for laying out the ACPI tables.
    pub fn system_allocator(&self) -> Result<AddressAllocator, LayoutError> {
        let r = self.system_area();
        AddressAllocator::new(r.start().0, r.len()).map_err(|source| LayoutError::Allocate {
            kind: RegionKind::SystemArea,
            start: r.start().0,
            len: r.len(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn no_overlaps(l: &MemoryLayout) {
        let ram = l.ram();
        for (i, a) in l.regions().iter().enumerate() {
            for b in &l.regions()[i + 1..] {
                let nested = FIXED
                    .iter()
                    .any(|f| f.kind == b.kind && f.inside == Some(a.kind))
                    || FIXED
                        .iter()
                        .any(|f| f.kind == a.kind && f.inside == Some(b.kind));
                if !nested {
                    assert!(!a.range.overlaps(&b.range), "{a:?} overlaps {b:?}");
                }
            }
        }
        // No RAM in the hole.
        let hole = l.region(RegionKind::MmioHole).unwrap();
        for &(base, size) in &ram {
            assert!(!ByteRange::new(base, size).unwrap().overlaps(&hole));
        }
        assert_eq!(ram.iter().map(|r| r.1).sum::<u64>(), l.memory_size());
    }

    #[test]
    fn small_memory_is_all_low() {
        let l = MemoryLayout::new(MIB).unwrap();
        assert_eq!(l.ram(), vec![(0, MIB)]);
        assert_eq!(l.region(RegionKind::RamHigh), None);
        assert_eq!(l.system_area().start().0, 0x9_fc00);
        assert_eq!(l.system_area().end(), 0xe_0000);
        assert_eq!((l.rsdp().start().0, l.rsdp().len()), (0xe_0000, 36));
        assert_eq!(l.ioapic(), 0xfec0_0000);
        assert_eq!(l.local_apic(), 0xfee0_0000);
        assert_eq!(l.kvm_tss(), 0xfffb_d000);
        assert_eq!(l.kvm_identity_map(), 0xfffb_c000);
        no_overlaps(&l);
        let l = MemoryLayout::new(MIB + PAGE_SIZE).unwrap();
        assert_eq!(l.ram(), vec![(0, MIB + PAGE_SIZE)]);
    }

    #[test]
    fn three_gib_fills_low_ram_exactly() {
        let l = MemoryLayout::new(3 * GIB).unwrap();
        assert_eq!(l.ram(), vec![(0, 3 * GIB)]);
        no_overlaps(&l);
        let l = MemoryLayout::new(3 * GIB + PAGE_SIZE).unwrap();
        assert_eq!(l.ram(), vec![(0, 3 * GIB), (4 * GIB, PAGE_SIZE)]);
        no_overlaps(&l);
    }

    #[test]
    fn large_memory_goes_above_4g() {
        let l = MemoryLayout::new(64 * GIB).unwrap();
        assert_eq!(l.ram(), vec![(0, 3 * GIB), (4 * GIB, 61 * GIB)]);
        no_overlaps(&l);
        let l = MemoryLayout::new(MAX_MEMORY).unwrap();
        assert_eq!(l.ram().last().map(|&(b, s)| b + s), Some(ADDRESS_SPACE_END));
        let kinds: Vec<RegionKind> = l.regions().iter().map(|r| r.kind).collect();
        assert_eq!(kinds.first(), Some(&RegionKind::RamLow));
        assert_eq!(kinds.last(), Some(&RegionKind::RamHigh));
    }

    #[test]
    fn bad_sizes_are_refused_with_the_fix() {
        assert_eq!(MemoryLayout::new(0), Err(LayoutError::Zero));
        assert_eq!(
            MemoryLayout::new(MIB + 1),
            Err(LayoutError::Unaligned { size: MIB + 1 })
        );
        assert_eq!(
            MemoryLayout::new(MIB - PAGE_SIZE),
            Err(LayoutError::TooSmall {
                size: MIB - PAGE_SIZE
            })
        );
        assert_eq!(
            MemoryLayout::new(MAX_MEMORY + PAGE_SIZE),
            Err(LayoutError::TooLarge {
                size: MAX_MEMORY + PAGE_SIZE
            })
        );
        assert!(matches!(
            MemoryLayout::new(!(PAGE_SIZE - 1)),
            Err(LayoutError::TooLarge { .. })
        ));
        let msg = LayoutError::Unaligned { size: 5 }.to_string();
        assert!(msg.contains("4 KiB"), "{msg}");
        assert!(LayoutError::Zero.to_string().contains("at least"));
    }

    #[test]
    fn the_system_allocator_hands_out_the_system_area() {
        let l = MemoryLayout::new(MIB).unwrap();
        let mut a = l.system_allocator().unwrap();
        let first = a.allocate(36, 8, AllocPolicy::FirstMatch).unwrap();
        assert_eq!(first.start(), 0x9_fc00);
        assert!(
            a.allocate(l.system_area().len(), 8, AllocPolicy::FirstMatch)
                .is_err()
        );
    }
}
