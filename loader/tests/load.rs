// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Loading the committed fixtures into plain and private-capable memory, without KVM.

mod common;

use common::*;
use veil_loader::boot::{E820_RAM, PVH_START_MAGIC};
use veil_loader::veil_abi::x86_64::{
    BOOT_CODE32, BOOT_CODE64, BOOT_DATA, BOOT_GDT, BOOT_TSS, CpuMode,
};
use veil_loader::{
    BootSource, ByteRange, GuestRam, ImageError, KernelFormat, KernelImage, LoadError, ObjectKind,
    PageType, PopulateError, PopulateWay, SharedOnly, WriteThenConvert, load, measure, plan,
};

const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

#[test]
fn pvh_fixture_parses() {
    let KernelImage::PvhElf(elf) = KernelImage::parse(PVH_KERNEL).unwrap() else {
        panic!("not parsed as PVH ELF");
    };
    assert_eq!(elf.entry(), 0x10_0000);
    let segs = elf.segments();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].range, ByteRange::new(0x10_0000, 0xfc).unwrap());
    assert_eq!(segs[1].range, ByteRange::new(0x10_1000, 0x120).unwrap());
    assert_eq!(segs[1].file_size, 0x1f);
}

#[test]
fn bzimage_fixture_parses() {
    let KernelImage::BzImage(bz) = KernelImage::parse(BZ_KERNEL).unwrap() else {
        panic!("not parsed as bzImage");
    };
    assert_eq!(bz.version(), 0x020f);
    assert_eq!(bz.setup_size(), 0x400);
    assert_eq!(bz.payload(), &BZ_KERNEL[0x400..]);
    assert_eq!(bz.cmdline_max(), 255);
    assert_eq!(bz.pref_address(), 0x100_0000);
    assert_eq!(bz.memory_needed(), 0x2_0000);
    assert!(bz.relocatable());
}

#[test]
fn pvh_loads_into_plain_memory() {
    let mem = memory(RAM);
    fill(&mem, RAM, 0xcc);
    let initrd = initrd();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline(PVH_CMDLINE);
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    let layout = &loaded.layout;

    // Segments: file bytes at their addresses, bss zero-filled.
    assert_eq!(read(&mem, 0x10_0000, 0xfc), &PVH_KERNEL[0x1000..0x10fc]);
    assert_eq!(read(&mem, 0x10_1000, 0x1f), &PVH_KERNEL[0x2000..0x201f]);
    assert!(read(&mem, 0x10_101f, 0x120 - 0x1f).iter().all(|&b| b == 0));
    // The rest of the segments' pages is zeroed too; the next page is untouched.
    assert!(
        read(&mem, 0x10_1120, 0x1000 - 0x120)
            .iter()
            .all(|&b| b == 0)
    );
    assert_eq!(read(&mem, 0x10_2000, 1), [0xcc]);

    // Command line with its NUL.
    let cmd = layout.cmdline;
    assert_eq!(cmd.len() as usize, PVH_CMDLINE.len() + 1);
    let mut expected = PVH_CMDLINE.as_bytes().to_vec();
    expected.push(0);
    assert_eq!(read(&mem, cmd.start().0, expected.len()), expected);

    // Initrd, high in RAM.
    let ird = layout.initrd.unwrap();
    assert_eq!(read(&mem, ird.start().0, initrd.len()), initrd);
    assert!(
        ird.end() <= 0x400_0000 && ird.start().0 >= 0x3f0_0000,
        "{ird}"
    );

    // hvm_start_info.
    let si = read(
        &mem,
        layout.boot_params.start().0,
        layout.boot_params.len() as usize,
    );
    assert_eq!(u32_at(&si, 0), PVH_START_MAGIC);
    assert_eq!(u32_at(&si, 4), 1);
    assert_eq!(u32_at(&si, 12), 1);
    assert_eq!(u64_at(&si, 24), cmd.start().0);
    let modlist = u64_at(&si, 16);
    let m = read(&mem, modlist, 16);
    assert_eq!(
        (u64_at(&m, 0), u64_at(&m, 8)),
        (ird.start().0, initrd.len() as u64)
    );
    assert_eq!(u32_at(&si, 48), 2);
    let mm = read(&mem, u64_at(&si, 40), 48);
    for (i, &(base, size)) in RAM.iter().enumerate() {
        let e = &mm[i * 24..];
        assert_eq!(
            (u64_at(e, 0), u64_at(e, 8), u32_at(e, 16)),
            (base, size, E820_RAM)
        );
    }

    // GDT, and no page tables for a 32-bit entry.
    let gdt = read(&mem, layout.gdt.start().0, 40);
    for (i, word) in BOOT_GDT.iter().enumerate() {
        assert_eq!(u64_at(&gdt, i * 8), *word);
    }
    assert_eq!(layout.page_tables, None);

    // Entry state.
    let e = loaded.entry;
    assert_eq!(e.mode, CpuMode::Protected32);
    assert_eq!(e.regs.rip, 0x10_0000);
    assert_eq!(e.regs.rbx, layout.boot_params.start().0);
    assert_eq!(e.gdt.base, layout.gdt.start().0);
    assert_eq!(e.code.selector, BOOT_CODE32);
    assert_eq!(e.data.selector, BOOT_DATA);
    assert_eq!(e.tss.selector, BOOT_TSS);
    e.validate().unwrap();

    // Placement order, also the log's order after the kernel image.
    let kinds: Vec<ObjectKind> = layout.placements.iter().map(|p| p.kind).collect();
    use ObjectKind::*;
    assert_eq!(
        kinds,
        [
            KernelSegment,
            KernelSegment,
            Initrd,
            CommandLine,
            BootParams,
            Gdt
        ]
    );
    let logged: Vec<ObjectKind> = loaded.log.entries.iter().map(|e| e.kind).collect();
    assert_eq!(logged[0], KernelImage);
    assert_eq!(&logged[1..], &kinds[..]);
    assert_eq!(loaded.populated.way, PopulateWay::SharedOnly);
    assert!(loaded.populated.private.is_empty());
}

#[test]
fn bzimage_loads_into_plain_memory() {
    let mem = memory(RAM);
    let initrd = initrd();
    let source = BootSource::new(BZ_KERNEL)
        .initrd(&initrd)
        .cmdline(BZ_CMDLINE);
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    let l = &loaded.layout;
    // At pref_address.
    assert_eq!(l.kernel_load, 0x100_0000);
    assert_eq!(
        read(&mem, 0x100_0000, BZ_KERNEL.len() - 0x400),
        &BZ_KERNEL[0x400..]
    );

    let bp = read(&mem, l.boot_params.start().0, 4096);
    // The setup header is the image's, up to its declared end (0x26c).
    assert_eq!(bp[0x1f1], BZ_KERNEL[0x1f1]);
    assert_eq!(&bp[0x202..0x206], b"HdrS");
    assert_eq!(&bp[0x230..0x238], &BZ_KERNEL[0x230..0x238]);
    assert_eq!(bp[0x210], 0xff, "type_of_loader");
    assert_eq!(bp[0x211], 0x01, "loadflags: LOADED_HIGH only");
    assert_eq!(u32_at(&bp, 0x214), 0x100_0000, "code32_start");
    assert_eq!(u32_at(&bp, 0x228) as u64, l.cmdline.start().0);
    let ird = l.initrd.unwrap();
    assert_eq!(u32_at(&bp, 0x218) as u64, ird.start().0);
    assert_eq!(u32_at(&bp, 0x21c) as usize, initrd.len());
    assert!(ird.end() <= 0x7fff_ffff + 1);
    assert_eq!(bp[0x1e8], 2, "e820_entries");
    for (i, &(base, size)) in RAM.iter().enumerate() {
        let e = &bp[0x2d0 + i * 20..];
        assert_eq!(
            (u64_at(e, 0), u64_at(e, 8), u32_at(e, 16)),
            (base, size, E820_RAM)
        );
    }

    // RAM ends below 1 GiB: a PML4, a PDPT and one page directory map all of it.
    let pt = l.page_tables.unwrap();
    assert_eq!(pt.len(), 3 * 4096);
    let pml4 = read(&mem, pt.start().0, 8);
    assert_eq!(u64_at(&pml4, 0), (pt.start().0 + 4096) | 3);
    let pdpt = read(&mem, pt.start().0 + 4096, 16);
    assert_eq!(u64_at(&pdpt, 0), (pt.start().0 + 2 * 4096) | 3);
    assert_eq!(u64_at(&pdpt, 8), 0, "nothing above the first GiB");

    let e = loaded.entry;
    assert_eq!(e.mode, CpuMode::Long64);
    assert_eq!(e.regs.rip, 0x100_0200);
    assert_eq!(e.regs.rsi, l.boot_params.start().0);
    assert_eq!(e.cr3, pt.start().0);
    assert_eq!(e.code.selector, BOOT_CODE64);
    assert_eq!(e.code.l, 1);
    e.validate().unwrap();
    let kinds: Vec<ObjectKind> = l.placements.iter().map(|p| p.kind).collect();
    use ObjectKind::*;
    assert_eq!(
        kinds,
        [Kernel, Initrd, CommandLine, BootParams, PageTables, Gdt]
    );
    // init_size is reserved from the load address.
    assert_eq!(
        l.kernel_reserved,
        ByteRange::new(0x100_0000, 0x2_0000).unwrap()
    );
}

#[test]
fn measure_without_a_vm_equals_load() {
    let initrd = initrd();
    for (kernel, cmdline) in [(PVH_KERNEL, PVH_CMDLINE), (BZ_KERNEL, BZ_CMDLINE)] {
        let source = BootSource::new(kernel).initrd(&initrd).cmdline(cmdline);
        let ram = GuestRam::new(RAM).unwrap();
        let log = measure(&source, &ram).unwrap();
        let mem = memory(RAM);
        let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
        assert_eq!(loaded.log, log);
        // Each entry's digest is the digest of what memory holds there.
        for e in &log.entries[1..] {
            let bytes = read(&mem, e.gpa.unwrap(), e.size as usize);
            assert_eq!(veil_loader::Digest::of(&bytes), e.sha256, "{:?}", e.kind);
        }
        assert_eq!(log.entries[0].sha256, veil_loader::Digest::of(kernel));
    }
}

#[test]
fn write_then_convert_seals_every_run() {
    let mock = MockPrivateMemory::new(RAM);
    let initrd = initrd();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline(PVH_CMDLINE);
    let loaded = load(&source, &WriteThenConvert::new(&mock)).unwrap();
    assert_eq!(loaded.populated.way, PopulateWay::WriteThenConvert);
    assert_eq!(loaded.populated.private, loaded.populated.ranges());
    // Exactly the pages of the placed objects are private.
    let mut expected: Vec<u64> = loaded
        .layout
        .placements
        .iter()
        .flat_map(|p| {
            let r = p.range.page_aligned().unwrap();
            (r.start().0 / 4096)..(r.end() / 4096)
        })
        .collect();
    expected.sort();
    expected.dedup();
    assert_eq!(mock.private_pages(), expected);
    // Contents were kept across the conversion.
    assert_eq!(
        read(&mock.mem, 0x10_0000, 0xfc),
        &PVH_KERNEL[0x1000..0x10fc]
    );

    // Loading again fails before writing anything: the pages are private now.
    let writes = mock.writes.get();
    let err = load(&source, &WriteThenConvert::new(&mock)).unwrap_err();
    assert!(
        matches!(err, LoadError::Populate(PopulateError::NotShared { .. })),
        "{err}"
    );
    assert_eq!(mock.writes.get(), writes);
}

#[test]
fn failure_while_writing_leaves_nothing_half_written() {
    // Just enough RAM for the bzImage at 16 MiB, so the loop stays fast.
    const SMALL: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x110_0000)];
    let initrd = initrd();
    let source = BootSource::new(BZ_KERNEL)
        .initrd(&initrd)
        .cmdline(BZ_CMDLINE);
    let total_writes = {
        let mock = MockPrivateMemory::new(SMALL);
        load(&source, &WriteThenConvert::new(&mock)).unwrap();
        mock.writes.get()
    };
    assert!(total_writes > 3);
    for fail_at in 0..total_writes {
        let mock = MockPrivateMemory::new(SMALL);
        fill(&mock.mem, SMALL, 0xcc);
        mock.fail_write_at.set(Some(fail_at));
        let err = load(&source, &WriteThenConvert::new(&mock)).unwrap_err();
        assert!(
            matches!(err, LoadError::Populate(PopulateError::Write { .. })),
            "{fail_at}: {err}"
        );
        assert!(
            mock.private_pages().is_empty(),
            "nothing private after {fail_at}"
        );
        // Every page that was to become private is zero; everything else untouched.
        let plan = plan(&source, &GuestRam::new(SMALL).unwrap()).unwrap();
        let runs = plan.layout.page_runs();
        for &(b, s) in SMALL {
            let bytes = read(&mock.mem, b, s as usize);
            for (i, chunk) in bytes.chunks(4096).enumerate() {
                let page = b + i as u64 * 4096;
                let in_run = runs.iter().any(|r| r.start().0 <= page && page < r.end());
                let want = if in_run { 0 } else { 0xcc };
                assert!(
                    chunk.iter().all(|&x| x == want),
                    "page {page:#x} after {fail_at}"
                );
            }
        }
    }
}

#[test]
fn failure_while_converting_returns_everything_to_shared_and_zero() {
    let initrd = initrd();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline(PVH_CMDLINE);
    let runs = plan(&source, &GuestRam::new(RAM).unwrap())
        .unwrap()
        .layout
        .page_runs();
    assert!(runs.len() >= 3);
    for fail_at in 0..runs.len() {
        let mock = MockPrivateMemory::new(RAM);
        mock.fail_convert_at.set(Some(fail_at));
        let err = load(&source, &WriteThenConvert::new(&mock)).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Populate(PopulateError::Convert { to: "private", .. })
            ),
            "{err}"
        );
        assert!(mock.private_pages().is_empty());
        for r in &runs {
            assert!(
                read(&mock.mem, r.start().0, r.len() as usize)
                    .iter()
                    .all(|&b| b == 0)
            );
        }
    }
}

#[test]
fn page_types_plain_memory_cannot_populate_are_refused_before_writing() {
    let ram = GuestRam::new(RAM).unwrap();
    let initrd = initrd();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline(PVH_CMDLINE);
    for page_type in [PageType::Secrets, PageType::Cpuid, PageType::VcpuState] {
        let mut plan = plan(&source, &ram).unwrap();
        let initrd_object = plan
            .objects
            .iter_mut()
            .find(|o| o.kind == ObjectKind::Initrd)
            .unwrap();
        initrd_object.page_type = page_type;
        let initrd_pages = initrd_object.range.page_aligned().unwrap();
        let runs = plan.page_runs().unwrap();
        assert!(
            runs.iter()
                .any(|r| r.range == initrd_pages && r.page_type == page_type)
        );

        let mem = memory(RAM);
        fill(&mem, RAM, 0xee);
        let before = snapshot(&mem, RAM);
        let err = plan.place(&SharedOnly::new(&mem)).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Populate(PopulateError::PageType {
                    range,
                    page_type: t,
                    way: PopulateWay::SharedOnly,
                }) if range == initrd_pages && t == page_type
            ),
            "{err}"
        );
        assert!(err.source_chain().contains("cannot provide"), "{err}");
        assert_eq!(snapshot(&mem, RAM), before, "memory changed");

        let mock = MockPrivateMemory::new(RAM);
        let err = plan.place(&WriteThenConvert::new(&mock)).unwrap_err();
        assert!(matches!(
            err,
            LoadError::Populate(PopulateError::PageType {
                way: PopulateWay::WriteThenConvert,
                ..
            })
        ));
        assert!(mock.private_pages().is_empty());
    }
    // Unmeasured and zero pages are written like normal ones.
    let mut plan = plan(&source, &ram).unwrap();
    for o in plan
        .objects
        .iter_mut()
        .filter(|o| o.kind == ObjectKind::Initrd)
    {
        o.page_type = PageType::Unmeasured;
    }
    let mem = memory(RAM);
    let loaded = plan.place(&SharedOnly::new(&mem)).unwrap();
    assert!(
        loaded
            .populated
            .runs
            .iter()
            .any(|r| r.page_type == PageType::Unmeasured)
    );
    let at = loaded.layout.initrd.unwrap();
    assert_eq!(read(&mem, at.start().0, initrd.len()), initrd);
}

#[test]
fn objects_of_two_page_types_cannot_share_a_page() {
    let ram = GuestRam::new(RAM).unwrap();
    let source = BootSource::new(PVH_KERNEL).cmdline(PVH_CMDLINE);
    let mut plan = plan(&source, &ram).unwrap();
    // The layout gives every object pages of its own; move the command line onto the
    // GDT's page, as a caller editing the plan might.
    let a = plan
        .objects
        .iter()
        .position(|o| o.kind == ObjectKind::Gdt)
        .unwrap();
    let b = plan
        .objects
        .iter()
        .position(|o| o.kind == ObjectKind::CommandLine)
        .unwrap();
    let on_gdt_page = plan.objects[a].range.start().0 + 0x100;
    plan.objects[b].range =
        veil_loader::ByteRange::new(on_gdt_page, plan.objects[b].range.len()).unwrap();
    // Of one type they merge into one run.
    assert!(plan.page_runs().is_ok());
    plan.objects[b].page_type = PageType::Unmeasured;
    let err = plan.page_runs().unwrap_err();
    assert!(
        matches!(err, LoadError::PageTypeConflict { first, second, .. }
            if first == PageType::Normal && second == PageType::Unmeasured
                || first == PageType::Unmeasured && second == PageType::Normal),
        "{err}"
    );
    let mem = memory(RAM);
    assert!(matches!(
        plan.place(&SharedOnly::new(&mem)),
        Err(LoadError::PageTypeConflict { .. })
    ));
    // Both of one type again: one run.
    plan.objects[a].page_type = PageType::Unmeasured;
    assert!(plan.page_runs().is_ok());
}

trait Chain {
    fn source_chain(&self) -> String;
}

impl<E: std::error::Error> Chain for E {
    fn source_chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur = self.source();
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

#[test]
fn explicit_format_is_honoured() {
    let err = plan(
        &BootSource::new(PVH_KERNEL).format(KernelFormat::BzImage),
        &GuestRam::new(RAM).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Image(_)), "{err}");
}

#[test]
fn empty_initrd_is_no_initrd() {
    let ram = GuestRam::new(RAM).unwrap();
    let none = plan(&BootSource::new(PVH_KERNEL).cmdline(PVH_CMDLINE), &ram).unwrap();
    let empty = plan(
        &BootSource::new(PVH_KERNEL).initrd(&[]).cmdline(PVH_CMDLINE),
        &ram,
    )
    .unwrap();
    assert_eq!(empty.layout, none.layout);
    assert_eq!(empty.log, none.log);
    assert_eq!(
        none.layout.boot_params.len(),
        56 + 2 * 24,
        "start info and memory map only"
    );
}

#[test]
fn loader_values_replace_the_images_ramdisk_fields() {
    // An image whose header carries ramdisk values of its own.
    let mut k = BZ_KERNEL.to_vec();
    k[0x218..0x21c].copy_from_slice(&0x1234_5000u32.to_le_bytes());
    k[0x21c..0x220].copy_from_slice(&0x1000u32.to_le_bytes());
    let mem = memory(RAM);
    let loaded = load(
        &BootSource::new(&k).cmdline(BZ_CMDLINE),
        &SharedOnly::new(&mem),
    )
    .unwrap();
    let bp = read(&mem, loaded.layout.boot_params.start().0, 4096);
    assert_eq!((u32_at(&bp, 0x218), u32_at(&bp, 0x21c)), (0, 0));
}

#[test]
fn flat_image_loads_at_its_address_with_a_start_info() {
    let code: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
    let source = BootSource::flat(&code, 0x20_0000).cmdline("flat=1");
    let mem = memory(RAM);
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    let l = &loaded.layout;
    assert_eq!(l.kernel_load, 0x20_0000);
    assert_eq!(read(&mem, 0x20_0000, code.len()), code);
    // Long mode at the first byte, on identity page tables, the start info in rbx.
    let e = loaded.entry;
    e.validate().unwrap();
    assert_eq!(e.mode, CpuMode::Long64);
    assert_eq!(e.regs.rip, 0x20_0000);
    assert_eq!(e.regs.rbx, l.boot_params.start().0);
    assert_eq!(e.cr3, l.page_tables.unwrap().start().0);
    assert_eq!(e.code.selector, BOOT_CODE64);
    let info = read(&mem, l.boot_params.start().0, 48);
    assert_eq!(
        u32::from_le_bytes(info[0..4].try_into().unwrap()),
        PVH_START_MAGIC
    );
    let cmdline_at = u64::from_le_bytes(info[24..32].try_into().unwrap());
    assert_eq!(read(&mem, cmdline_at, 7), b"flat=1\0");
    use ObjectKind::*;
    let kinds: Vec<ObjectKind> = l.placements.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [Kernel, CommandLine, BootParams, PageTables, Gdt]);
    // Measured like any kernel: the same log without a VM.
    let ram = GuestRam::new(RAM).unwrap();
    assert_eq!(measure(&source, &ram).unwrap(), loaded.log);
}

#[test]
fn flat_images_that_cannot_be_placed_are_refused() {
    let code = [0xf4u8]; // hlt
    let ram = GuestRam::new(RAM).unwrap();
    for (load, why) in [
        (0x20_0800, "not 4 KiB aligned"),
        (0xffff_f000, "beyond RAM"),
        (0x1_0000_0000, "above 4 GiB"),
    ] {
        let err = plan(&BootSource::flat(&code, load), &ram).unwrap_err();
        assert!(
            matches!(err, LoadError::Image(_) | LoadError::Layout(_)),
            "{why}: {err}"
        );
    }
    assert!(matches!(
        plan(&BootSource::flat(&[], 0x20_0000), &ram),
        Err(LoadError::Image(ImageError::Truncated { .. }))
    ));
    // The boot data moves out of its way.
    let low = plan(&BootSource::flat(&code, 0x1000), &ram).unwrap();
    assert!(low.layout.gdt.start().0 >= 0x2000);
}
