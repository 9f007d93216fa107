// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz harness over the kernel formats, shared by the cargo-fuzz target and by
//! veil-loader's `fuzz_corpus` test (which runs it over the fixtures and mutations of
//! them in every `cargo test`).
//!
//! Input: one flags byte, then the kernel image. Flags bit 0-1: format (0 detects, 1 ELF,
//! 2 bzImage, 3 a flat 64-bit image loaded at the page its first two bytes number, little
//! endian: anywhere in the first 256 MiB, in RAM, in the hole below 1 MiB or past RAM);
//! bit 2: add an initrd; bit 3: add a long command line. Whatever the input, the loader
//! must return a typed error or a plan whose invariants hold, and placing the plan must
//! write exactly the planned bytes.

use std::cell::RefCell;

use veil_loader::{
    BootSource, ByteRange, Digest, GuestRam, KernelFormat, KernelImage, PAGE_SIZE, Placement,
    SharedOnly, plan,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// RAM of the fuzzed guest: low memory and 63 MiB from 1 MiB.
pub const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

thread_local! {
    static MEMORY: RefCell<Option<GuestMemoryMmap>> = const { RefCell::new(None) };
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&flags, kernel)) = data.split_first() else {
        return;
    };
    let flat = KernelFormat::Flat64 {
        load: flat_load(kernel),
    };
    let format = match flags & 3 {
        1 => Some(KernelFormat::PvhElf),
        2 => Some(KernelFormat::BzImage),
        3 => Some(flat),
        _ => None,
    };
    let initrd: Vec<u8> = if flags & 4 != 0 {
        (0..4096u32).map(|i| i as u8).collect()
    } else {
        Vec::new()
    };
    let long = "x".repeat(300);
    let cmdline = if flags & 8 != 0 {
        long.as_str()
    } else {
        "console=ttyS0"
    };

    // Parsing alone never panics, whichever format is forced.
    let _ = KernelImage::parse_as(kernel, KernelFormat::PvhElf);
    let _ = KernelImage::parse_as(kernel, KernelFormat::BzImage);
    let _ = KernelImage::parse_as(kernel, flat);

    let ram = match GuestRam::new(RAM) {
        Ok(r) => r,
        Err(_) => return,
    };
    let mut source = BootSource::new(kernel).cmdline(cmdline);
    source.format = format;
    if !initrd.is_empty() {
        source.initrd = Some(&initrd);
    }
    let Ok(plan) = plan(&source, &ram) else {
        return;
    };

    // Invariants of an accepted plan.
    plan.layout.check().expect("accepted layout overlaps");
    for p in &plan.layout.placements {
        assert!(ram.holds(&p.range), "{p:?} outside RAM");
    }
    assert_eq!(plan.log.replay(), plan.log.launch_digest);
    assert_eq!(plan.log.entries.len(), plan.objects.len() + 1);
    assert_eq!(plan.log.entries[0].sha256, Digest::of(kernel));

    // Placing writes exactly the planned bytes.
    MEMORY.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let regions: Vec<(GuestAddress, usize)> = RAM
                .iter()
                .map(|&(b, s)| (GuestAddress(b), s as usize))
                .collect();
            *slot = GuestMemoryMmap::from_ranges(&regions).ok();
        }
        let Some(mem) = slot.as_ref() else {
            return;
        };
        let loaded = plan
            .place(&SharedOnly::new(mem))
            .expect("placing an accepted plan");
        check_runs(&loaded.populated.ranges(), &plan.layout.placements, &ram);
        for (o, e) in plan.objects.iter().zip(&plan.log.entries[1..]) {
            let mut buf = vec![0u8; o.range.len() as usize];
            mem.read_slice(&mut buf, o.range.start())
                .expect("reading back");
            assert_eq!(Digest::of(&buf), e.sha256, "{:?} at {}", o.kind, o.range);
        }
    });
}

/// Where a flat image goes: the page its first two bytes number.
fn flat_load(kernel: &[u8]) -> u64 {
    let page = match kernel {
        [lo, hi, ..] => u16::from_le_bytes([*lo, *hi]),
        _ => 0,
    };
    u64::from(page) * PAGE_SIZE
}

/// The populated runs, checked without the loader's own merge: sorted, apart, page-aligned
/// and in RAM; each placement inside one run, and each page of a run under a placement.
fn check_runs(runs: &[ByteRange], placements: &[Placement], ram: &GuestRam) {
    for w in runs.windows(2) {
        assert!(
            w[0].end() < w[1].start().0,
            "runs unsorted or touching: {runs:?}"
        );
    }
    for r in runs {
        assert!(
            r.start().0.is_multiple_of(PAGE_SIZE) && r.end().is_multiple_of(PAGE_SIZE),
            "run {r} not page-aligned"
        );
        assert!(ram.covers(r), "run {r} outside RAM");
        for page in (r.start().0..r.end()).step_by(PAGE_SIZE as usize) {
            let page = ByteRange::new(page, PAGE_SIZE).expect("a page inside a run");
            assert!(
                placements.iter().any(|p| p.range.overlaps(&page)),
                "run {r} holds page {page} no placement touches"
            );
        }
    }
    for p in placements {
        assert!(
            runs.iter().any(|r| r.contains(&p.range)),
            "{p:?} not inside one run: {runs:?}"
        );
    }
}
