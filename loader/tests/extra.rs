// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Changing a plan after `plan`: extra objects with their own page types, a Linux
//! setup_data entry, RAM reserved in the e820 map. The plan stays whole: no overlap,
//! the log recomputed, and placing writes what the log says.

mod common;

use std::borrow::Cow;

use common::*;
use veil_loader::{
    BootSource, ByteRange, E820_RESERVED, ExtraObject, GuestRam, MeasurementLog, ObjectKind,
    PageType, PlanEditError, SharedOnly,
};

const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

fn extra(kind: ObjectKind, bytes: &[u8], len: u64, page_type: PageType) -> ExtraObject<'_> {
    ExtraObject {
        kind,
        bytes: Cow::Borrowed(bytes),
        len,
        page_type,
    }
}

#[test]
fn extra_objects_get_free_pages_and_are_measured() {
    let ram = GuestRam::new(RAM).unwrap();
    let initrd = initrd();
    let source = BootSource::new(BZ_KERNEL)
        .initrd(&initrd)
        .cmdline(BZ_CMDLINE);
    let mut plan = veil_loader::plan(&source, &ram).unwrap();
    let before = plan.clone();
    let table = [7u8; 100];
    let ranges = plan
        .add_objects(vec![
            extra(ObjectKind::LaunchData, &[], 4096, PageType::Secrets),
            extra(ObjectKind::LaunchData, &table, 4096, PageType::Cpuid),
        ])
        .unwrap();
    assert_eq!(ranges.len(), 2);
    assert_eq!(
        ranges[1].start().0,
        ranges[0].start().0 + 0x1000,
        "one after the other"
    );
    for r in &ranges {
        assert_eq!(r.start().0 % 0x1000, 0);
        assert!(r.end() <= 1 << 32);
        for p in &before.layout.placements {
            assert!(
                !p.range.page_aligned().unwrap().overlaps(r),
                "{p:?} and {r}"
            );
        }
        assert!(!before.layout.kernel_reserved.overlaps(r));
    }
    plan.layout.check().unwrap();
    let runs = plan.page_runs().unwrap();
    assert!(
        runs.iter()
            .any(|r| r.range == ranges[0] && r.page_type == PageType::Secrets)
    );
    assert!(
        runs.iter()
            .any(|r| r.range == ranges[1] && r.page_type == PageType::Cpuid)
    );
    // The log gains two entries after the old ones, and replays.
    assert_eq!(plan.log.entries.len(), before.log.entries.len() + 2);
    assert_eq!(
        plan.log.entries[..before.log.entries.len()],
        before.log.entries[..]
    );
    assert_eq!(plan.log.replay(), plan.log.launch_digest);
    assert_ne!(plan.log.launch_digest, before.log.launch_digest);

    // An object smaller than its bytes is refused, and the plan is unchanged.
    let kept = plan.clone();
    assert!(matches!(
        plan.add_objects(vec![extra(
            ObjectKind::LaunchData,
            &table,
            10,
            PageType::Normal
        )]),
        Err(PlanEditError::BadObject { .. })
    ));
    assert_eq!(plan.log, kept.log);
}

#[test]
fn setup_data_is_linked_and_ram_reserved_in_the_zero_page() {
    let ram = GuestRam::new(RAM).unwrap();
    let source = BootSource::new(BZ_KERNEL).cmdline(BZ_CMDLINE);
    let mut plan = veil_loader::plan(&source, &ram).unwrap();
    let first = plan
        .add_setup_data(7, &0x1234_5678u32.to_le_bytes())
        .unwrap();
    let second = plan.add_setup_data(9, b"xy").unwrap();
    let reserved = ByteRange::new(0x20_0000, 0x3000).unwrap();
    plan.reserve_ram(reserved).unwrap();

    let mem = memory(RAM);
    let loaded = plan.place(&SharedOnly::new(&mem)).unwrap();
    let zp = loaded.layout.boot_params.start().0;
    let bp = read(&mem, zp, 4096);
    // hdr.setup_data (0x250) heads the list: the newest entry first.
    assert_eq!(u64_at(&bp, 0x250), second.start().0);
    let node = read(&mem, second.start().0, 18);
    assert_eq!(u64_at(&node, 0), first.start().0, "next");
    assert_eq!((u32_at(&node, 8), u32_at(&node, 12)), (9, 2));
    assert_eq!(&node[16..], b"xy");
    let node = read(&mem, first.start().0, 20);
    assert_eq!(
        (u64_at(&node, 0), u32_at(&node, 8), u32_at(&node, 12)),
        (0, 7, 4)
    );
    assert_eq!(u32_at(&node, 16), 0x1234_5678);
    // e820 (count at 0x1e8, table at 0x2d0, 20 bytes an entry): the second RAM range
    // split around the reserved pages.
    let e820: Vec<(u64, u64, u32)> = (0..bp[0x1e8] as usize)
        .map(|i| {
            let o = 0x2d0 + 20 * i;
            (u64_at(&bp, o), u64_at(&bp, o + 8), u32_at(&bp, o + 16))
        })
        .collect();
    assert_eq!(
        e820,
        [
            (0, 0xa_0000, 1),
            (0x10_0000, 0x10_0000, 1),
            (0x20_0000, 0x3000, E820_RESERVED),
            (0x20_3000, 0x400_0000 - 0x20_3000, 1),
        ]
    );
    // The log is that of what was placed.
    let want = MeasurementLog::from_json(&plan.log.to_json()).unwrap();
    assert_eq!(loaded.log, want);
    let boot_params = loaded
        .log
        .entries
        .iter()
        .find(|e| e.kind == ObjectKind::BootParams)
        .unwrap();
    assert_eq!(
        boot_params.sha256,
        veil_loader::Digest::of(&bp[..boot_params.size as usize])
    );

    // Reserving what is not RAM, and either change on a PVH plan, is refused.
    assert!(matches!(
        plan.reserve_ram(ByteRange::new(0xa_0000, 0x1000).unwrap()),
        Err(PlanEditError::NotRam { .. })
    ));
    let mut pvh = veil_loader::plan(&BootSource::new(PVH_KERNEL), &ram).unwrap();
    assert!(matches!(
        pvh.add_setup_data(7, &[0; 4]),
        Err(PlanEditError::NotLinuxBootProtocol { .. })
    ));
    assert!(matches!(
        pvh.reserve_ram(reserved),
        Err(PlanEditError::NotLinuxBootProtocol { .. })
    ));
}
