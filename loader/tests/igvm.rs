// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! IGVM files as a boot source: files built with the igvm crate planned for SEV-SNP and
//! TDX, loaded into plain memory, and every way veil refuses one.

#[path = "common/igvm_files.rs"]
mod igvm_files;

use igvm::IgvmDirectiveHeader;
use igvm::snp_defs::{SevSelector, SevVmsa};
use igvm_defs::{IgvmPageDataFlags, IgvmPageDataType};
use igvm_files::*;
use veil_loader::veil_abi::x86_64::{CpuMode, EntryRegisters};
use veil_loader::{
    BootPlan, BootSource, GuestRam, IgvmError, IgvmPlatform, ImageError, KernelFormat, LayoutError,
    LoadError, ObjectKind, PageType, SharedOnly, load, plan,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::{FromZeros, IntoBytes};

/// The entry the samples' VMSA holds: 64-bit at the first page, on a GDT at 0x1000.
pub fn sample_entry() -> EntryRegisters {
    let mut e = EntryRegisters::long_mode(BASE, 0x9000, 0x1000);
    e.regs.rsi = 0x7000;
    e.regs.rsp = 0x8000;
    e
}

fn selector(s: &EntryRegisters, which: u8) -> SevSelector {
    let k = match which {
        0 => &s.code,
        1 => &s.data,
        _ => &s.tss,
    };
    let attrib = u16::from(k.type_)
        | u16::from(k.s) << 4
        | u16::from(k.dpl) << 5
        | u16::from(k.present) << 7
        | u16::from(k.avl) << 8
        | u16::from(k.l) << 9
        | u16::from(k.db) << 10
        | u16::from(k.g) << 11;
    SevSelector {
        selector: k.selector,
        attrib,
        limit: k.limit,
        base: k.base,
    }
}

/// A VMSA holding `e` (segments packed as SVM packs them, EFER with SVME): enough for
/// the loader to decode, not the whole VMSA KVM would build.
pub fn vmsa_of(e: &EntryRegisters) -> Vec<u8> {
    let mut v = SevVmsa::new_zeroed();
    let data = selector(e, 1);
    v.es = data;
    v.ss = data;
    v.ds = data;
    v.fs = data;
    v.gs = data;
    v.cs = selector(e, 0);
    v.tr = selector(e, 2);
    v.gdtr = SevSelector {
        selector: 0,
        attrib: 0,
        limit: e.gdt.limit.into(),
        base: e.gdt.base,
    };
    v.efer = e.efer | 1 << 12;
    v.cr0 = e.cr0;
    v.cr3 = e.cr3;
    v.cr4 = e.cr4;
    v.rip = e.regs.rip;
    v.rflags = e.regs.rflags;
    v.rsp = e.regs.rsp;
    v.rsi = e.regs.rsi;
    v.as_bytes().to_vec()
}

const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];
const CMDLINE: &str = "console=hvc0 veil.igvm=1";

fn ram() -> GuestRam {
    GuestRam::new(RAM).unwrap()
}

fn snp<'a>(file: &'a [u8], cmdline: &'a str) -> Result<BootPlan<'a>, LoadError> {
    let source = BootSource::new(file)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::SevSnp,
        })
        .cmdline(cmdline);
    plan(&source, &ram())
}

fn tdx<'a>(file: &'a [u8], cmdline: &'a str) -> Result<BootPlan<'a>, LoadError> {
    let source = BootSource::new(file)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::Tdx,
        })
        .cmdline(cmdline);
    plan(&source, &ram())
}

fn sample_file() -> Vec<u8> {
    sample(&vmsa_of(&sample_entry()), pattern(13, 4096))
}

fn igvm_error(r: Result<BootPlan<'_>, LoadError>) -> IgvmError {
    match r {
        Err(LoadError::Igvm(e)) => e,
        other => panic!("expected an IGVM error, got {other:?}"),
    }
}

fn memory_map_entry(bytes: &[u8], i: usize) -> (u64, u64, u16) {
    let e = &bytes[i * 24..(i + 1) * 24];
    (
        u64::from_le_bytes(e[0..8].try_into().unwrap()),
        u64::from_le_bytes(e[8..16].try_into().unwrap()),
        u16::from_le_bytes(e[16..18].try_into().unwrap()),
    )
}

#[test]
fn snp_file_becomes_a_plan_with_every_page_type() {
    let file = sample_file();
    let p = snp(&file, CMDLINE).unwrap();
    assert_eq!(
        p.format,
        KernelFormat::Igvm {
            platform: IgvmPlatform::SevSnp
        }
    );
    let got: Vec<(ObjectKind, u64, PageType)> = p
        .objects
        .iter()
        .map(|o| (o.kind, o.range.start().0, o.page_type))
        .collect();
    use ObjectKind::{IgvmPage, IgvmParameters};
    assert_eq!(
        got,
        vec![
            (IgvmPage, BASE, PageType::Normal),
            (IgvmPage, BASE + 0x1000, PageType::Normal),
            (IgvmPage, BASE + 0x2000, PageType::Normal),
            (IgvmPage, BASE + 0x3000, PageType::Normal),
            (IgvmPage, BASE + 0x4000, PageType::Unmeasured),
            (IgvmParameters, BASE + 0x5000, PageType::Unmeasured),
            (IgvmParameters, BASE + 0x6000, PageType::Unmeasured),
            (IgvmPage, BASE + 0x7000, PageType::Secrets),
            (IgvmPage, BASE + 0x8000, PageType::Cpuid),
        ]
    );
    assert!(p.objects.iter().all(|o| o.range.len() == 4096));
    assert_eq!(&p.objects[0].bytes[..], &pattern(3, 4096)[..]);
    let short = &p.objects[2].bytes;
    assert_eq!(&short[..100], &pattern(7, 100)[..]);
    assert!(
        short[100..].iter().all(|&b| b == 0),
        "the rest of the page is zero"
    );
    assert!(p.objects[3].bytes.iter().all(|&b| b == 0));

    // The command line at its offset, NUL-terminated, in an otherwise zero area.
    let area = &p.objects[5].bytes;
    assert_eq!(area.len(), 4096);
    assert!(area[..16].iter().all(|&b| b == 0));
    assert_eq!(&area[16..16 + CMDLINE.len()], CMDLINE.as_bytes());
    assert_eq!(area[16 + CMDLINE.len()], 0);
    // One memory map entry per RAM range (in pages), then a zero entry.
    let map = &p.objects[6].bytes;
    assert_eq!(memory_map_entry(map, 0), (0, 0xa0, 0));
    assert_eq!(memory_map_entry(map, 1), (0x100, 0x3f00, 0));
    assert_eq!(memory_map_entry(map, 2), (0, 0, 0));

    // Runs: touching pages of one type merge.
    let runs: Vec<(u64, u64, PageType)> = p
        .page_runs()
        .unwrap()
        .iter()
        .map(|r| (r.range.start().0, r.range.len(), r.page_type))
        .collect();
    assert_eq!(
        runs,
        vec![
            (BASE, 0x4000, PageType::Normal),
            (BASE + 0x4000, 0x3000, PageType::Unmeasured),
            (BASE + 0x7000, 0x1000, PageType::Secrets),
            (BASE + 0x8000, 0x1000, PageType::Cpuid),
        ]
    );

    // vCPU 0's entry, decoded from the VMSA: what veil-vcpu would write.
    let want = sample_entry();
    let e = p.entry;
    assert_eq!(e.mode, CpuMode::Long64);
    assert_eq!(
        (e.regs.rip, e.regs.rsi, e.regs.rsp, e.regs.rflags),
        (BASE, 0x7000, 0x8000, 2)
    );
    assert_eq!(
        (e.cr0, e.cr3, e.cr4, e.efer),
        (want.cr0, want.cr3, want.cr4, want.efer)
    );
    assert_eq!(e.code, want.code);
    assert_eq!(e.data, want.data);
    assert_eq!(e.tss, want.tss);
    assert_eq!((e.gdt.base, e.gdt.limit), (want.gdt.base, want.gdt.limit));
    e.validate().unwrap();

    let igvm = p.igvm.as_ref().unwrap();
    assert_eq!(igvm.platform, IgvmPlatform::SevSnp);
    assert_eq!(igvm.compatibility_mask, SNP);
    assert_eq!(igvm.guest_policy, Some(POLICY));
    let vmsa = igvm.vmsa.as_ref().unwrap();
    assert_eq!(vmsa.gpa, VMSA_GPA);
    assert_eq!(vmsa.bytes, vmsa_of(&sample_entry()));

    // No boot data of veil's own; the log has the whole file, then every object.
    let span = veil_loader::ByteRange::new(BASE, 0x9000).unwrap();
    assert_eq!(
        (p.layout.gdt, p.layout.boot_params, p.layout.cmdline),
        (span, span, span),
        "the file's pages are its boot data"
    );
    assert_eq!(p.layout.kernel_reserved, span);
    assert_eq!(p.layout.page_tables, None);
    assert_eq!(p.layout.kernel_load, BASE);
    assert_eq!(p.log.entries.len(), 1 + p.objects.len());
    assert_eq!(p.log.entries[0].kind, ObjectKind::KernelImage);
    assert_eq!(p.log.entries[0].size, file.len() as u64);
    assert_eq!(p.log.entries[1].kind.name(), "igvm-page");
    assert_eq!(p.log.entries[6].kind.name(), "igvm-parameters");
    assert_eq!(p.log.replay(), p.log.launch_digest);
}

#[test]
fn tdx_takes_only_its_own_directives() {
    let file = sample_file();
    let p = tdx(&file, CMDLINE).unwrap();
    assert_eq!(p.objects.len(), 7, "no secrets or CPUID page");
    assert!(p.objects.iter().all(|o| o.page_type.plain()));
    let igvm = p.igvm.as_ref().unwrap();
    assert_eq!((igvm.compatibility_mask, igvm.vmsa.as_ref()), (TDX, None));
    // The TDX module's reset vector, which no TDX launch writes.
    assert_eq!(p.entry, EntryRegisters::protected32(0xffff_fff0, 0));
}

#[test]
fn tdx_plan_loads_into_plain_memory() {
    let file = sample_file();
    let source = BootSource::new(&file)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::Tdx,
        })
        .cmdline(CMDLINE);
    let ranges: Vec<(GuestAddress, usize)> = RAM
        .iter()
        .map(|&(b, s)| (GuestAddress(b), s as usize))
        .collect();
    let memory = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
    // Dirty the pages first: a page with less data must come out zero-filled.
    memory
        .write_slice(&[0xaa; 0x7000], GuestAddress(BASE))
        .unwrap();
    let loaded = load(&source, &SharedOnly::new(&memory)).unwrap();
    let read = |gpa: u64, len: usize| {
        let mut b = vec![0; len];
        memory.read_slice(&mut b, GuestAddress(gpa)).unwrap();
        b
    };
    assert_eq!(read(BASE, 4096), pattern(3, 4096));
    let short = read(BASE + 0x2000, 4096);
    assert_eq!(&short[..100], &pattern(7, 100)[..]);
    assert!(short[100..].iter().all(|&b| b == 0));
    assert!(read(BASE + 0x3000, 4096).iter().all(|&b| b == 0));
    assert_eq!(read(BASE + 0x4000, 4096), pattern(11, 4096));
    assert_eq!(&read(BASE + 0x5010, CMDLINE.len()), CMDLINE.as_bytes());
    assert_eq!(loaded.populated.runs.len(), 2);
}

#[test]
fn measurement_is_stable_and_follows_every_byte_of_page_data() {
    let file = sample_file();
    let a = snp(&file, CMDLINE).unwrap().log;
    let b = snp(&file, CMDLINE).unwrap().log;
    assert_eq!(a, b);
    let other = sample(&vmsa_of(&sample_entry()), pattern(17, 4096));
    assert_ne!(
        snp(&other, CMDLINE).unwrap().log.launch_digest,
        a.launch_digest
    );
    assert_ne!(
        snp(&file, "console=ttyS0").unwrap().log.launch_digest,
        a.launch_digest,
        "the command line is in the log"
    );
}

#[test]
fn an_igvm_file_is_not_a_kernel() {
    let file = sample_file();
    assert!(matches!(
        plan(&BootSource::new(&file), &ram()),
        Err(LoadError::Image(ImageError::Igvm))
    ));
}

/// Every truncation is refused by veil's own header check, before the igvm crate reads
/// the file.
#[test]
fn truncated_files_are_refused() {
    let file = sample_file();
    for len in 0..file.len() {
        let e = igvm_error(snp(&file[..len], ""));
        assert!(
            matches!(e, IgvmError::Truncated { .. } | IgvmError::Header { .. }),
            "{len}: {e:?}"
        );
    }
    let mut longer = file.clone();
    longer.push(0);
    assert!(matches!(
        igvm_error(snp(&longer, "")),
        IgvmError::Header { .. }
    ));
}

fn set_u32(file: &mut [u8], at: usize, v: u32) {
    file[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Rewrites the fixed header's checksum, so a corrupted header reaches the parser.
fn fix_checksum(file: &mut [u8]) {
    let offset = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
    let size = u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    let header = if u32::from_le_bytes(file[4..8].try_into().unwrap()) == 2 {
        32
    } else {
        24
    };
    let mut fixed = file[..header].to_vec();
    fixed[20..24].fill(0);
    let mut h = crc32fast::Hasher::new();
    h.update(&fixed);
    if let Some(v) = file.get(offset..offset.saturating_add(size)) {
        h.update(v);
    }
    let sum = h.finalize();
    set_u32(file, 20, sum);
}

#[test]
fn inconsistent_fixed_headers_are_refused() {
    let file = sample_file();
    let cases: [(usize, u32); 6] = [
        (0, 0x1234_5678), // magic
        (4, 9),           // format version
        (8, 3),           // variable headers inside the fixed header
        (8, u32::MAX),    // variable headers past the end (offset + size overflows u32)
        (12, u32::MAX),   // their size past the end
        (12, 0),          // no variable headers
    ];
    for (at, v) in cases {
        let mut bad = file.clone();
        set_u32(&mut bad, at, v);
        fix_checksum(&mut bad);
        let e = igvm_error(snp(&bad, ""));
        assert!(matches!(e, IgvmError::Header { .. }), "{at}: {e:?}");
    }
    let mut bad = file.clone();
    set_u32(&mut bad, 20, 0);
    assert!(matches!(igvm_error(snp(&bad, "")), IgvmError::Parse(_)));
}

/// Every byte of the variable headers changed, with the checksum made right so the
/// igvm crate parses what was changed: each variant is planned or refused with a typed
/// error, never a panic.
#[test]
fn corrupted_variable_headers_never_panic() {
    let file = sample_file();
    let offset = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
    let size = u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    let mut refused = 0;
    for at in offset..offset + size {
        for xor in [0x01u8, 0x80, 0xff] {
            let mut bad = file.clone();
            bad[at] ^= xor;
            fix_checksum(&mut bad);
            for r in [snp(&bad, CMDLINE), tdx(&bad, CMDLINE)] {
                match r {
                    Ok(p) => assert!(!p.objects.is_empty()),
                    Err(LoadError::Igvm(_)) => refused += 1,
                    Err(e) => panic!("{at}: not an IGVM error: {e:?}"),
                }
            }
        }
    }
    assert!(refused > 0);
}

/// Every page data and VP context header of the sample with its file data offset set to
/// 0: no data for a page (a page of zeros), but not allowed for a VP context, which the
/// igvm crate reads unchecked from that offset.
#[test]
fn zero_file_data_offsets_never_panic() {
    let file = sample_file();
    let start = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
    let end = start + u32::from_le_bytes(file[12..16].try_into().unwrap()) as usize;
    let u32_at = |f: &[u8], at: usize| u32::from_le_bytes(f[at..at + 4].try_into().unwrap());
    let (mut at, mut vp_contexts) = (start, 0);
    while at < end {
        let (typ, length) = (u32_at(&file, at), u32_at(&file, at + 4) as usize);
        // IGVM_VHT_PAGE_DATA and IGVM_VHT_VP_CONTEXT: gpa (8), mask (4), file offset.
        if typ == 0x302 || typ == 0x304 {
            let mut bad = file.clone();
            bad[at + 8 + 12..at + 8 + 16].fill(0);
            fix_checksum(&mut bad);
            for r in [snp(&bad, CMDLINE), tdx(&bad, CMDLINE)] {
                match r {
                    Ok(_) if typ == 0x302 => {}
                    Err(LoadError::Igvm(_)) => {}
                    other => panic!("header type {typ:#x} at {at}: {other:?}"),
                }
            }
            vp_contexts += usize::from(typ == 0x304);
        }
        at = (at + 8 + length).div_ceil(8) * 8;
    }
    assert_eq!(vp_contexts, 1, "the sample has one VP context");
}

/// A platform header turned into VBS (VSM isolation): the igvm crate's parser asserts
/// on such a file's VP context, so veil refuses the platform before parsing.
#[test]
fn a_vbs_platform_is_refused_before_parsing() {
    let file = sample_file();
    let start = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
    // The first variable header is the sample's platform: type 1, then its body.
    assert_eq!(
        u32::from_le_bytes(file[start..start + 4].try_into().unwrap()),
        1
    );
    let mut bad = file.clone();
    bad[start + 8 + 5] = 1;
    fix_checksum(&mut bad);
    for r in [snp(&bad, CMDLINE), tdx(&bad, CMDLINE)] {
        match r {
            Err(LoadError::Igvm(IgvmError::Unsupported { what, .. })) => {
                assert!(what.contains("VBS"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }
}

fn with(directives: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    file(directives)
}

fn vmsa() -> Vec<u8> {
    vmsa_of(&sample_entry())
}

#[test]
fn pages_veil_cannot_populate_are_refused() {
    let shared = with(vec![
        typed(
            BASE,
            SNP,
            IgvmPageDataType::NORMAL,
            IgvmPageDataFlags::new().with_shared(true),
            vec![1],
        ),
        vp_context(VMSA_GPA, 0, &vmsa()),
    ]);
    assert!(matches!(
        igvm_error(snp(&shared, "")),
        IgvmError::Page { gpa: BASE, .. }
    ));

    let cpuid_on_tdx = with(vec![typed(
        BASE,
        TDX,
        IgvmPageDataType::CPUID_DATA,
        IgvmPageDataFlags::new(),
        vec![1],
    )]);
    assert!(matches!(
        igvm_error(tdx(&cpuid_on_tdx, "")),
        IgvmError::PageDataType {
            gpa: BASE,
            platform: IgvmPlatform::Tdx,
            ..
        }
    ));

    let outside = with(vec![
        page(0xa_0000, SNP, vec![1]),
        vp_context(VMSA_GPA, 0, &vmsa()),
    ]);
    assert!(matches!(
        igvm_error(snp(&outside, "")),
        IgvmError::Layout(LayoutError::OutsideRam { .. })
    ));
}

#[test]
fn pages_out_of_address_order_are_refused() {
    let f = with(vec![
        page(BASE + 0x1000, SNP, vec![1]),
        page(BASE, SNP, vec![2]),
        vp_context(VMSA_GPA, 0, &vmsa()),
    ]);
    assert!(matches!(
        igvm_error(snp(&f, "")),
        IgvmError::OutOfOrder {
            index: 1,
            gpa: BASE,
            previous: 0x10_2000
        }
    ));
    let twice = with(vec![
        page(BASE, SNP, vec![1]),
        page(BASE, SNP, vec![2]),
        vp_context(VMSA_GPA, 0, &vmsa()),
    ]);
    assert!(matches!(
        igvm_error(snp(&twice, "")),
        IgvmError::OutOfOrder { .. }
    ));
}

#[test]
fn vp_contexts_veil_cannot_launch_are_refused() {
    let before = with(vec![
        vp_context(VMSA_GPA, 0, &vmsa()),
        page(BASE, SNP, vec![1]),
    ]);
    assert!(matches!(
        igvm_error(snp(&before, "")),
        IgvmError::PageAfterVpContext { index: 1 }
    ));
    let second = with(vec![
        page(BASE, SNP, vec![1]),
        vp_context(VMSA_GPA, 0, &vmsa()),
        vp_context(VMSA_GPA, 1, &vmsa()),
    ]);
    assert!(matches!(
        igvm_error(snp(&second, "")),
        IgvmError::VpContext {
            vp_index: 1,
            index: 2
        }
    ));
    let none = with(vec![page(BASE, SNP | TDX, vec![1])]);
    assert!(matches!(igvm_error(snp(&none, "")), IgvmError::NoVpContext));
    assert!(tdx(&none, "").is_ok(), "a TD needs none");

    // Real mode, and data segments veil cannot give one descriptor.
    let mut real = sample_entry();
    real.cr0 = 0x10;
    real.efer = 0;
    let f = with(vec![
        page(BASE, SNP, vec![1]),
        vp_context(VMSA_GPA, 0, &vmsa_of(&real)),
    ]);
    assert!(matches!(
        igvm_error(snp(&f, "")),
        IgvmError::Vmsa { field: "cr0", .. }
    ));
    let mut v = vmsa_struct(&vmsa());
    v.es.selector = 0x28;
    let f = with(vec![
        page(BASE, SNP, vec![1]),
        vp_context(VMSA_GPA, 0, zerocopy::IntoBytes::as_bytes(&v)),
    ]);
    assert!(matches!(
        igvm_error(snp(&f, "")),
        IgvmError::Vmsa { field: "es", .. }
    ));
    // A state that decodes but is no valid entry: long mode without paging.
    let mut v = vmsa_struct(&vmsa());
    v.cr0 &= !(1 << 31);
    let f = with(vec![
        page(BASE, SNP, vec![1]),
        vp_context(VMSA_GPA, 0, zerocopy::IntoBytes::as_bytes(&v)),
    ]);
    assert!(matches!(igvm_error(snp(&f, "")), IgvmError::Entry(_)));
}

#[test]
fn unsupported_directives_are_refused() {
    let mut d = vec![IgvmDirectiveHeader::ParameterArea {
        number_of_bytes: 4096,
        parameter_area_index: 0,
        initial_data: Vec::new(),
    }];
    d.push(IgvmDirectiveHeader::VpCount(parameter(0, 0)));
    d.push(page(BASE, SNP, vec![1]));
    let f = with(d);
    assert!(matches!(
        igvm_error(tdx(&f, "")),
        IgvmError::Unsupported {
            index: 1,
            what: "the VP count parameter"
        }
    ));
    let f = with(vec![
        page(BASE, TDX, vec![1]),
        IgvmDirectiveHeader::ErrorRange {
            gpa: BASE + 0x1000,
            compatibility_mask: TDX,
            size_bytes: 4096,
        },
    ]);
    assert!(matches!(
        igvm_error(tdx(&f, "")),
        IgvmError::Unsupported {
            what: "an error range",
            ..
        }
    ));
    // Directives of another platform are not looked at.
    assert!(snp(&f, "").is_err_and(|e| matches!(e, LoadError::Igvm(IgvmError::Empty { .. }))));
}

#[test]
fn command_lines_and_other_inputs_the_file_cannot_take_are_refused() {
    let file = sample_file();
    let long = "x".repeat(4096);
    assert!(matches!(
        igvm_error(snp(&file, &long)),
        IgvmError::CommandLineTooLong {
            len: 4096,
            room: 4080
        }
    ));
    let no_cmdline = with(vec![page(BASE, TDX, vec![1])]);
    assert!(matches!(
        igvm_error(tdx(&no_cmdline, "quiet")),
        IgvmError::CommandLineUnused
    ));
    let source = BootSource::new(&file)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::Tdx,
        })
        .initrd(b"initrd");
    assert!(matches!(
        plan(&source, &ram()),
        Err(LoadError::Igvm(IgvmError::NotTaken("initrd")))
    ));
    // Required memory outside RAM.
    let f = with(vec![
        page(BASE, TDX, vec![1]),
        IgvmDirectiveHeader::RequiredMemory {
            gpa: 0x8000_0000,
            compatibility_mask: TDX,
            number_of_bytes: 0x10_0000,
            vtl2_protectable: false,
        },
    ]);
    assert!(matches!(
        igvm_error(tdx(&f, "")),
        IgvmError::RequiredMemory { .. }
    ));
}

#[test]
fn relocation_headers_are_refused_before_parsing() {
    // The guest policy header (the third variable header) made a relocatable region.
    let mut f = sample_file();
    assert_eq!(u32::from_le_bytes(f[0x48..0x4c].try_into().unwrap()), 0x101);
    f[0x48..0x4c].copy_from_slice(&0x102u32.to_le_bytes());
    fix_checksum(&mut f);
    assert!(matches!(
        igvm_error(snp(&f, "")),
        IgvmError::Unsupported {
            index: 2,
            what: "relocation"
        }
    ));
}

#[test]
fn a_command_line_with_a_nul_is_refused() {
    let file = sample_file();
    assert!(matches!(
        snp(&file, "quiet\0x"),
        Err(LoadError::CommandLineNul { offset: 5 })
    ));
}
