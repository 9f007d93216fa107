// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Firmware tables as a boot object: placed where the VMM built them, measured, carved
//! out of RAM in the memory map, and the RSDP handed to the kernel. Without KVM.

mod common;

use common::*;
use veil_loader::boot::{E820_ACPI, E820_RAM, PVH_START_MAGIC};
use veil_loader::{
    BootSource, ByteRange, FirmwareTables, LayoutError, LoadError, ObjectKind, SharedOnly,
    WriteThenConvert, load, plan,
};

/// Low RAM up to 1 MiB (the tables sit in it, as on a PC) and 63 MiB above.
const RAM: &[(u64, u64)] = &[(0, 0x10_0000), (0x10_0000, 0x3f0_0000)];
/// Where the tables go: a PC's system area, and the RSDP in the BIOS scan range.
const BASE: u64 = 0x9_fc00;
const RSDP: u64 = 0xe_0000;

/// Bytes standing in for ACPI tables: a recognisable pattern, "RSD PTR " at the RSDP.
fn tables() -> Vec<u8> {
    let mut t: Vec<u8> = (0..(RSDP - BASE + 36)).map(|i| (i * 3 + 1) as u8).collect();
    let at = (RSDP - BASE) as usize;
    t[at..at + 8].copy_from_slice(b"RSD PTR ");
    t
}

fn firmware(bytes: &[u8]) -> FirmwareTables<'_> {
    FirmwareTables {
        base: BASE,
        bytes,
        rsdp: RSDP,
    }
}

/// The e820 entries of a zero page.
fn e820(zero_page: &[u8]) -> Vec<(u64, u64, u32)> {
    let n = zero_page[0x1e8] as usize;
    (0..n)
        .map(|i| {
            let o = 0x2d0 + 20 * i;
            (
                u64_at(zero_page, o),
                u64_at(zero_page, o + 8),
                u32_at(zero_page, o + 16),
            )
        })
        .collect()
}

/// RAM with the tables' pages, [0x9f000, 0xe1000), taken out and listed as ACPI data.
fn expected_map() -> Vec<(u64, u64, u32)> {
    vec![
        (0, 0x9_f000, E820_RAM),
        (0x9_f000, 0x4_2000, E820_ACPI),
        (0xe_1000, 0x10_0000 - 0xe_1000, E820_RAM),
        (0x10_0000, 0x3f0_0000, E820_RAM),
    ]
}

#[test]
fn bzimage_gets_the_rsdp_and_an_e820_without_the_tables() {
    let mem = memory(RAM);
    let t = tables();
    let initrd = initrd();
    let source = BootSource::new(BZ_KERNEL)
        .cmdline(BZ_CMDLINE)
        .initrd(&initrd)
        .firmware(firmware(&t));
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    let l = &loaded.layout;
    let range = ByteRange::new(BASE, t.len() as u64).unwrap();
    assert_eq!(l.firmware, Some(range));
    assert_eq!(read(&mem, BASE, t.len()), t);

    let zp = read(&mem, l.boot_params.start().0, 4096);
    assert_eq!(u64_at(&zp, 0x70), RSDP, "boot_params.acpi_rsdp_addr");
    assert_eq!(e820(&zp), expected_map());

    // Nothing else shares the tables' pages.
    let pages = range.page_aligned().unwrap();
    for p in l
        .placements
        .iter()
        .filter(|p| p.kind != ObjectKind::FirmwareTables)
    {
        assert!(!p.range.overlaps(&pages), "{p:?}");
    }
    assert!(!l.kernel_reserved.overlaps(&pages));

    // Measured like the rest, at its address.
    let entry = loaded
        .log
        .entries
        .iter()
        .find(|e| e.kind == ObjectKind::FirmwareTables)
        .expect("the tables are measured");
    assert_eq!((entry.gpa, entry.size), (Some(BASE), t.len() as u64));
    assert_eq!(ObjectKind::FirmwareTables.name(), "firmware-tables");

    // Other tables, another digest.
    let mut t2 = t.clone();
    t2[5] ^= 1;
    let other = plan(
        &source.firmware(firmware(&t2)),
        &veil_loader::GuestRam::new(RAM).unwrap(),
    )
    .unwrap();
    assert_ne!(other.log.launch_digest, loaded.log.launch_digest);
}

#[test]
fn pvh_gets_the_rsdp_and_a_memory_map_without_the_tables() {
    let mem = memory(RAM);
    let t = tables();
    let source = BootSource::new(PVH_KERNEL)
        .cmdline(PVH_CMDLINE)
        .firmware(firmware(&t));
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    let info = read(&mem, loaded.layout.boot_params.start().0, 512);
    assert_eq!(u32_at(&info, 0), PVH_START_MAGIC);
    assert_eq!(u64_at(&info, 32), RSDP, "hvm_start_info.rsdp_paddr");
    let memmap = u64_at(&info, 40);
    let entries = u32_at(&info, 48) as usize;
    let at = (memmap - loaded.layout.boot_params.start().0) as usize;
    let map: Vec<(u64, u64, u32)> = (0..entries)
        .map(|i| {
            let o = at + 24 * i;
            (
                u64_at(&info, o),
                u64_at(&info, o + 8),
                u32_at(&info, o + 16),
            )
        })
        .collect();
    assert_eq!(map, expected_map());
    assert_eq!(
        loaded.layout.boot_params.len(),
        56 + 24 * expected_map().len() as u64
    );
}

#[test]
fn without_tables_nothing_changes() {
    let mem = memory(RAM);
    let source = BootSource::new(BZ_KERNEL).cmdline(BZ_CMDLINE);
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    let zp = read(&mem, loaded.layout.boot_params.start().0, 4096);
    assert_eq!(u64_at(&zp, 0x70), 0);
    assert_eq!(
        e820(&zp),
        vec![(0, 0x10_0000, E820_RAM), (0x10_0000, 0x3f0_0000, E820_RAM)]
    );
    assert_eq!(loaded.layout.firmware, None);
}

#[test]
fn tables_become_private_with_the_rest() {
    let mock = MockPrivateMemory::new(RAM);
    let t = tables();
    let source = BootSource::new(PVH_KERNEL)
        .cmdline(PVH_CMDLINE)
        .firmware(firmware(&t));
    let loaded = load(&source, &WriteThenConvert::new(&mock)).unwrap();
    let pages = ByteRange::new(BASE, t.len() as u64)
        .unwrap()
        .page_aligned()
        .unwrap();
    assert!(
        loaded.populated.private.iter().any(|r| r.contains(&pages)),
        "{:?}",
        loaded.populated.private
    );
}

#[test]
fn bad_tables_are_refused_before_anything_is_written() {
    let ram = veil_loader::GuestRam::new(RAM).unwrap();
    let t = tables();
    let refused = |f: FirmwareTables<'_>| {
        let source = BootSource::new(BZ_KERNEL).cmdline(BZ_CMDLINE).firmware(f);
        plan(&source, &ram).unwrap_err()
    };
    for (f, reason) in [
        (
            FirmwareTables {
                base: BASE,
                bytes: &[],
                rsdp: BASE,
            },
            "empty",
        ),
        (
            FirmwareTables {
                rsdp: RSDP + 16,
                ..firmware(&t)
            },
            "not inside",
        ),
        (
            FirmwareTables {
                rsdp: BASE - 16,
                ..firmware(&t)
            },
            "not inside",
        ),
        (
            FirmwareTables {
                rsdp: RSDP - 8,
                ..firmware(&t)
            },
            "16-byte",
        ),
        (
            FirmwareTables {
                base: u64::MAX - 4,
                ..firmware(&t)
            },
            "wrap",
        ),
    ] {
        let e = refused(f);
        assert!(
            matches!(e, LoadError::FirmwareTables { .. }) && e.to_string().contains(reason),
            "{e}"
        );
    }
    // Outside RAM, and over an ELF segment (the PVH kernel's text at 1 MiB).
    let e = refused(FirmwareTables {
        base: 0x4000_0000,
        bytes: &t[..64],
        rsdp: 0x4000_0000,
    });
    assert!(
        matches!(
            e,
            LoadError::Layout(LayoutError::OutsideRam {
                kind: ObjectKind::FirmwareTables,
                ..
            })
        ),
        "{e}"
    );
    let source = BootSource::new(PVH_KERNEL)
        .cmdline(PVH_CMDLINE)
        .firmware(FirmwareTables {
            base: 0x10_0800,
            bytes: &t[..64],
            rsdp: 0x10_0800,
        });
    let e = plan(&source, &ram).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Layout(LayoutError::Overlap {
                second: ObjectKind::FirmwareTables,
                ..
            })
        ),
        "{e}"
    );
}
