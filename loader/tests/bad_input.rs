// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Corrupted and oversized inputs: each is a typed error naming the problem, nothing is
//! written to memory that is or will become private, and nothing panics.
//!
//! The corrupted variants are made here from the good fixtures; the byte offsets each one
//! changes are listed in `tests/fixtures/README.md`.

mod common;

use common::*;
use veil_loader::{
    BootSource, GuestRam, ImageError, KernelFormat, KernelImage, LayoutError, LoadError,
    ObjectKind, PVH_CMDLINE_MAX, SharedOnly, WriteThenConvert, load, plan,
};

const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x1f0_0000)];

fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

/// ELF program header `i`'s field at `field` (offsets inside an Elf64_Phdr).
fn phdr(i: usize, field: usize) -> usize {
    64 + 56 * i + field
}
const P_OFFSET: usize = 8;
const P_PADDR: usize = 24;
const P_FILESZ: usize = 32;
const P_MEMSZ: usize = 40;
/// The PVH note in the fixture.
const NOTE: usize = 0x10e8;

/// Loads `kernel` into private-capable memory and returns the error; checks nothing was
/// written and nothing became private.
fn refuse(kernel: &[u8], cmdline: &str, initrd: Option<&[u8]>) -> LoadError {
    let mock = MockPrivateMemory::new(RAM);
    let mut source = BootSource::new(kernel).cmdline(cmdline);
    source.initrd = initrd;
    let err = match load(&source, &WriteThenConvert::new(&mock)) {
        Ok(_) => panic!("loaded a bad input"),
        Err(e) => e,
    };
    assert_eq!(mock.writes.get(), 0, "{err}: memory was written");
    assert!(
        mock.private_pages().is_empty(),
        "{err}: memory became private"
    );
    err
}

fn image_err(e: LoadError) -> ImageError {
    match e {
        LoadError::Image(i) => i,
        other => panic!("expected an image error, got {other}"),
    }
}

fn layout_err(e: LoadError) -> LayoutError {
    match e {
        LoadError::Layout(l) => l,
        other => panic!("expected a layout error, got {other}"),
    }
}

fn elf_with(edit: impl FnOnce(&mut Vec<u8>)) -> ImageError {
    let mut k = PVH_KERNEL.to_vec();
    edit(&mut k);
    image_err(refuse(&k, PVH_CMDLINE, None))
}

fn bz_with(edit: impl FnOnce(&mut Vec<u8>)) -> ImageError {
    let mut k = BZ_KERNEL.to_vec();
    edit(&mut k);
    image_err(refuse(&k, BZ_CMDLINE, None))
}

#[test]
fn elf_header_corruptions() {
    // Bad magic: not recognised at all, or named when the format is forced.
    let mut k = PVH_KERNEL.to_vec();
    k[1] = b'X';
    assert!(matches!(
        image_err(refuse(&k, "", None)),
        ImageError::UnknownFormat
    ));
    assert!(matches!(
        KernelImage::parse_as(&k, KernelFormat::PvhElf),
        Err(ImageError::BadMagic {
            what: "the ELF header",
            found: 0x464c_587f
        })
    ));

    let e = elf_with(|k| k[4] = 1);
    assert!(
        matches!(
            e,
            ImageError::UnsupportedElf {
                field: "class",
                value: 1
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| k[5] = 2);
    assert!(
        matches!(
            e,
            ImageError::UnsupportedElf {
                field: "byte order",
                ..
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, 16, &3u16.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::UnsupportedElf {
                field: "type",
                value: 3
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, 18, &3u16.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::UnsupportedElf {
                field: "machine",
                value: 3
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, 54, &32u16.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "e_phentsize",
                ..
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, 32, &0x10u64.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "e_phoff",
                ..
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, 32, &(u64::MAX - 8).to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "e_phoff",
                ..
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, 56, &0xffffu16.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::Truncated {
                what: "the program header table",
                ..
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, 56, &0u16.to_le_bytes()));
    assert!(matches!(e, ImageError::NoLoadableSegment), "{e}");
}

#[test]
fn elf_segment_corruptions() {
    let len = PVH_KERNEL.len() as u64;
    let e = elf_with(|k| put(k, phdr(0, P_OFFSET), &(u64::MAX - 0x10).to_le_bytes()));
    assert!(
        matches!(e, ImageError::SegmentOutsideFile { index: 0, .. }),
        "{e}"
    );
    let e = elf_with(|k| put(k, phdr(0, P_FILESZ), &len.to_le_bytes()));
    assert!(
        matches!(e, ImageError::SegmentOutsideFile { index: 0, file_len, .. } if file_len == len),
        "{e}"
    );
    let e = elf_with(|k| put(k, phdr(1, P_MEMSZ), &0x10u64.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FileSizeExceedsMemSize {
                index: 1,
                filesz: 0x1f,
                memsz: 0x10
            }
        ),
        "{e}"
    );
    let e = elf_with(|k| put(k, phdr(1, P_PADDR), &(u64::MAX - 0x10).to_le_bytes()));
    assert!(
        matches!(e, ImageError::SegmentOverflow { index: 1, .. }),
        "{e}"
    );
    let e = elf_with(|k| put(k, phdr(2, P_FILESZ), &0x100_0000u64.to_le_bytes()));
    assert!(
        matches!(e, ImageError::SegmentOutsideFile { index: 2, .. }),
        "{e}"
    );
}

#[test]
fn elf_note_corruptions() {
    let e = elf_with(|k| put(k, NOTE + 8, &17u32.to_le_bytes()));
    assert!(matches!(e, ImageError::NoPvhNote), "{e}");
    let e = elf_with(|k| put(k, NOTE + 4, &0x1000u32.to_le_bytes()));
    assert!(matches!(e, ImageError::BadNote { .. }), "{e}");
    let e = elf_with(|k| put(k, NOTE, &u32::MAX.to_le_bytes()));
    assert!(matches!(e, ImageError::BadNote { .. }), "{e}");
    let e = elf_with(|k| put(k, NOTE + 4, &2u32.to_le_bytes()));
    assert!(matches!(e, ImageError::BadNote { .. }), "{e}");
    let e = elf_with(|k| put(k, NOTE + 16, &0x50_0000u32.to_le_bytes()));
    assert!(
        matches!(e, ImageError::EntryOutsideSegments { entry: 0x50_0000 }),
        "{e}"
    );
    // A truncated note segment.
    let e = elf_with(|k| put(k, phdr(2, P_FILESZ), &10u64.to_le_bytes()));
    assert!(matches!(e, ImageError::BadNote { .. }), "{e}");
}

#[test]
fn elf_placement_problems() {
    let mut k = PVH_KERNEL.to_vec();
    put(&mut k, phdr(1, P_PADDR), &0x10_0080u64.to_le_bytes());
    let e = layout_err(refuse(&k, PVH_CMDLINE, None));
    assert!(
        matches!(
            e,
            LayoutError::Overlap {
                first: ObjectKind::KernelSegment,
                second: ObjectKind::KernelSegment,
                ..
            }
        ),
        "{e}"
    );

    let mut k = PVH_KERNEL.to_vec();
    put(&mut k, phdr(1, P_PADDR), &0x9_ff80u64.to_le_bytes()); // straddles the hole
    let e = layout_err(refuse(&k, PVH_CMDLINE, None));
    assert!(
        matches!(
            e,
            LayoutError::OutsideRam {
                kind: ObjectKind::KernelSegment,
                ..
            }
        ),
        "{e}"
    );

    // Larger than all of RAM (bss of 1 TiB).
    let mut k = PVH_KERNEL.to_vec();
    put(&mut k, phdr(1, P_MEMSZ), &(1u64 << 40).to_le_bytes());
    let e = layout_err(refuse(&k, PVH_CMDLINE, None));
    assert!(
        matches!(e, LayoutError::LargerThanRam { what: "kernel", .. }),
        "{e}"
    );
}

#[test]
fn bzimage_corruptions() {
    let mut k = BZ_KERNEL.to_vec();
    put(&mut k, 0x202, b"HdrX");
    assert!(matches!(
        image_err(refuse(&k, "", None)),
        ImageError::UnknownFormat
    ));
    assert!(matches!(
        KernelImage::parse_as(&k, KernelFormat::BzImage),
        Err(ImageError::BadMagic {
            what: "the setup header signature",
            ..
        })
    ));

    let e = bz_with(|k| put(k, 0x1fe, &0x1234u16.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::BadMagic {
                what: "boot_flag",
                found: 0x1234
            }
        ),
        "{e}"
    );
    let e = bz_with(|k| put(k, 0x206, &0x020bu16.to_le_bytes()));
    assert!(
        matches!(e, ImageError::UnsupportedProtocol { version: 0x020b }),
        "{e}"
    );
    assert!(e.to_string().contains("2.11"), "{e}");
    let e = bz_with(|k| k[0x211] = 0);
    assert!(
        matches!(e, ImageError::NotLoadedHigh { loadflags: 0 }),
        "{e}"
    );
    let e = bz_with(|k| put(k, 0x236, &0u16.to_le_bytes()));
    assert!(
        matches!(e, ImageError::No64BitEntry { xloadflags: 0 }),
        "{e}"
    );
    let e = bz_with(|k| k[0x201] = 0x10);
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "setup header length",
                ..
            }
        ),
        "{e}"
    );
    let e = bz_with(|k| k[0x1f1] = 200);
    assert!(
        matches!(
            e,
            ImageError::Truncated {
                what: "the protected-mode kernel",
                ..
            }
        ),
        "{e}"
    );
    let e = bz_with(|k| put(k, 0x1f4, &u32::MAX.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::Truncated {
                what: "the protected-mode kernel (syssize)",
                ..
            }
        ),
        "{e}"
    );
    let e = bz_with(|k| put(k, 0x1f4, &0u32.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "syssize",
                ..
            }
        ),
        "{e}"
    );
    let e = bz_with(|k| put(k, 0x230, &0x3000u32.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "kernel_alignment",
                value: 0x3000,
                ..
            }
        ),
        "{e}"
    );
    let e = bz_with(|k| put(k, 0x238, &0u32.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "cmdline_size",
                ..
            }
        ),
        "{e}"
    );
    let e = bz_with(|k| put(k, 0x22c, &0u32.to_le_bytes()));
    assert!(
        matches!(
            e,
            ImageError::FieldOutOfRange {
                field: "initrd_addr_max",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bzimage_placement_problems() {
    let initrd = initrd();
    // init_size larger than RAM.
    let mut k = BZ_KERNEL.to_vec();
    put(&mut k, 0x260, &u32::MAX.to_le_bytes());
    let e = layout_err(refuse(&k, BZ_CMDLINE, None));
    assert!(
        matches!(
            e,
            LayoutError::LargerThanRam {
                what: "kernel",
                size: 0xffff_ffff,
                ..
            }
        ),
        "{e}"
    );

    // initrd_addr_max below every free page.
    let mut k = BZ_KERNEL.to_vec();
    put(&mut k, 0x22c, &0x2fffu32.to_le_bytes());
    let e = layout_err(refuse(&k, BZ_CMDLINE, Some(&initrd)));
    assert!(
        matches!(
            e,
            LayoutError::NoRoom {
                what: "initrd",
                limit: 0x3000,
                ..
            }
        ),
        "{e}"
    );

    // Not relocatable, and its fixed address leaves no room for init_size.
    let mut k = BZ_KERNEL.to_vec();
    k[0x234] = 0;
    put(&mut k, 0x258, &0x1ff_0000u64.to_le_bytes());
    let e = layout_err(refuse(&k, BZ_CMDLINE, None));
    assert!(
        matches!(
            e,
            LayoutError::FixedKernelDoesNotFit {
                addr: 0x1ff_0000,
                size: 0x2_0000
            }
        ),
        "{e}"
    );

    // Relocatable with the same preferred address: relocated to the lowest aligned fit.
    let mem = memory(RAM);
    let source = BootSource::new(&k).cmdline(BZ_CMDLINE);
    let mut k2 = k.clone();
    k2[0x234] = 1;
    let source2 = BootSource {
        kernel: &k2,
        ..source
    };
    let loaded = load(&source2, &SharedOnly::new(&mem)).unwrap();
    assert_eq!(loaded.layout.kernel_load, 0x20_0000);
    assert_eq!(read(&mem, 0x20_0000, 16), &k2[0x400..0x410]);
}

#[test]
fn misaligned_pref_address() {
    const ALIGN: u64 = 0x20_0000; // the fixture's kernel_alignment
    // Relocatable: a pref_address off its kernel_alignment (or off a page) is not used.
    for pref in [0x100_1000u64, 0x100_0800] {
        let mut k = BZ_KERNEL.to_vec();
        put(&mut k, 0x258, &pref.to_le_bytes());
        let mem = memory(RAM);
        let loaded = load(
            &BootSource::new(&k).cmdline(BZ_CMDLINE),
            &SharedOnly::new(&mem),
        )
        .unwrap();
        let at = loaded.layout.kernel_load;
        assert!(at.is_multiple_of(ALIGN), "{pref:#x}: loaded at {at:#x}");
        assert_eq!(read(&mem, at, 16), &k[0x400..0x410]);
    }

    // Not relocatable: a page-aligned pref_address is used as is, any other refused.
    let mut k = BZ_KERNEL.to_vec();
    k[0x234] = 0;
    put(&mut k, 0x258, &0x100_1000u64.to_le_bytes());
    let mem = memory(RAM);
    let loaded = load(
        &BootSource::new(&k).cmdline(BZ_CMDLINE),
        &SharedOnly::new(&mem),
    )
    .unwrap();
    assert_eq!(loaded.layout.kernel_load, 0x100_1000);
    put(&mut k, 0x258, &0x100_0800u64.to_le_bytes());
    let e = layout_err(refuse(&k, BZ_CMDLINE, None));
    assert!(
        matches!(
            e,
            LayoutError::FixedKernelDoesNotFit {
                addr: 0x100_0800,
                size: 0x2_0000
            }
        ),
        "{e}"
    );
}

#[test]
fn too_large_and_too_long() {
    // The initrd is larger than RAM.
    let big = vec![0u8; 0x200_0000];
    let e = layout_err(refuse(PVH_KERNEL, PVH_CMDLINE, Some(&big)));
    assert!(
        matches!(e, LayoutError::LargerThanRam { what: "initrd", .. }),
        "{e}"
    );
    // It fits in total but not below 4 GiB in one piece next to the kernel.
    let nearly = vec![0u8; 0x1f0_0000];
    let e = layout_err(refuse(PVH_KERNEL, PVH_CMDLINE, Some(&nearly)));
    assert!(
        matches!(e, LayoutError::NoRoom { what: "initrd", .. }),
        "{e}"
    );

    // The command line is longer than the image's cmdline_size (255 in the fixture).
    let long = "x".repeat(256);
    let e = refuse(BZ_KERNEL, &long, None);
    assert!(
        matches!(e, LoadError::CommandLineTooLong { len: 256, max: 255 }),
        "{e}"
    );
    // Exactly at the limit is fine.
    let at_limit = "x".repeat(255);
    let mem = memory(RAM);
    load(
        &BootSource::new(BZ_KERNEL).cmdline(&at_limit),
        &SharedOnly::new(&mem),
    )
    .unwrap();
    let mut k = BZ_KERNEL.to_vec();
    put(&mut k, 0x238, &10u32.to_le_bytes());
    let e = refuse(&k, BZ_CMDLINE, None);
    assert!(
        matches!(e, LoadError::CommandLineTooLong { len: 30, max: 10 }),
        "{e}"
    );
    let long = "x".repeat(PVH_CMDLINE_MAX as usize + 1);
    let e = refuse(PVH_KERNEL, &long, None);
    assert!(
        matches!(
            e,
            LoadError::CommandLineTooLong {
                len: 4096,
                max: 4095
            }
        ),
        "{e}"
    );
    let e = refuse(PVH_KERNEL, "a\0b", None);
    assert!(matches!(e, LoadError::CommandLineNul { offset: 1 }), "{e}");

    // A guest too small for the kernel.
    let tiny = GuestRam::new(&[(0, 0x1_0000)]).unwrap();
    let e = plan(&BootSource::new(BZ_KERNEL), &tiny).unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::Layout(LayoutError::LargerThanRam { what: "kernel", .. })
        ),
        "{e}"
    );

    // More RAM ranges than the zero page's e820 table holds.
    let many: Vec<(u64, u64)> = (0..129u64)
        .map(|i| (0x1000_0000 + i * 0x2000, 0x1000))
        .chain([(0, 0x400_0000)])
        .collect();
    let e = plan(&BootSource::new(BZ_KERNEL), &GuestRam::new(&many).unwrap()).unwrap_err();
    assert!(matches!(e, LoadError::BootData(_)), "{e}");
}

#[test]
fn unknown_and_empty_files() {
    for bytes in [&b""[..], b"\x7fEL", b"MZ\x90\x00", &[0u8; 4096][..]] {
        let e = refuse(bytes, "", None);
        assert!(matches!(e, LoadError::Image(_)), "{e}");
    }
}

#[test]
fn every_truncation_is_refused_or_loads_only_what_it_needs() {
    // Every prefix of both fixtures: a typed error, never a panic. The ELF's section
    // headers sit after its last segment and are not needed for loading, so prefixes
    // that keep every segment may load; nothing shorter may.
    let needed_elf = 0x2000 + 0x1f;
    for len in 0..PVH_KERNEL.len() {
        let source = BootSource::new(&PVH_KERNEL[..len]).cmdline(PVH_CMDLINE);
        let r = plan(&source, &GuestRam::new(RAM).unwrap());
        if len < needed_elf {
            assert!(r.is_err(), "ELF prefix of {len} bytes loaded");
        }
    }
    for len in 0..BZ_KERNEL.len() {
        let source = BootSource::new(&BZ_KERNEL[..len]).cmdline(BZ_CMDLINE);
        assert!(
            plan(&source, &GuestRam::new(RAM).unwrap()).is_err(),
            "bzImage prefix of {len}"
        );
    }
}

#[test]
fn plain_memory_is_untouched_by_a_refused_image() {
    let mem = memory(RAM);
    fill(&mem, RAM, 0x5a);
    let before = snapshot(&mem, RAM);
    let mut k = BZ_KERNEL.to_vec();
    put(&mut k, 0x1f4, &u32::MAX.to_le_bytes());
    let err = load(&BootSource::new(&k), &SharedOnly::new(&mem)).unwrap_err();
    assert!(
        matches!(err, LoadError::Image(ImageError::Truncated { .. })),
        "{err}"
    );
    assert!(snapshot(&mem, RAM) == before, "memory changed");
}

#[test]
fn plan_for_other_ram_is_refused() {
    let plan = plan(&BootSource::new(PVH_KERNEL), &GuestRam::new(RAM).unwrap()).unwrap();
    let mock = MockPrivateMemory::new(&[(0, 0x400_0000)]);
    let err = plan.place(&WriteThenConvert::new(&mock)).unwrap_err();
    assert!(matches!(err, LoadError::RamMismatch), "{err}");
    assert_eq!(mock.writes.get(), 0);
}

#[test]
fn disagreement_with_linux_loader_is_an_error() {
    // A fourth program header, in the zero padding after the table: a PT_NOTE holding
    // one empty note. veil finds the PVH note in the first PT_NOTE; linux-loader keeps
    // only the last PT_NOTE's answer ("no PVH entry"), so the two readings differ and the
    // image is refused rather than booted with a guess.
    let mut k = PVH_KERNEL.to_vec();
    put(&mut k, 56, &4u16.to_le_bytes()); // e_phnum
    let p = phdr(3, 0);
    put(&mut k, p, &4u32.to_le_bytes()); // p_type = PT_NOTE
    put(&mut k, p + P_OFFSET, &0x200u64.to_le_bytes());
    put(&mut k, p + P_FILESZ, &12u64.to_le_bytes());
    assert!(k[0x200..0x20c].iter().all(|&b| b == 0), "an empty note");
    let e = image_err(refuse(&k, PVH_CMDLINE, None));
    assert!(
        matches!(
            e,
            ImageError::Disagreement {
                what: "the PVH entry point",
                veil: 0x10_0000,
                linux_loader: 0
            }
        ),
        "{e}"
    );
}
