// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz harness over IGVM files, shared by the cargo-fuzz target `igvm` and by
//! veil-loader's `fuzz_corpus` test.
//!
//! Input: one flags byte, then the file. Flags bit 0: the platform (SEV-SNP, TDX);
//! bit 1: give a command line; bit 2: rewrite the fixed header's checksum first, so a
//! mutated header reaches the igvm crate's parser instead of failing the checksum.
//! Whatever the input, planning must return a typed error or a plan whose invariants
//! hold (pages aligned, in RAM, in ascending order, the log replaying to its digest),
//! and placing a TDX plan into plain memory must write exactly the planned bytes.

use veil_loader::{
    BootSource, GuestRam, IgvmPlatform, KernelFormat, PAGE_SIZE, SharedOnly, igvm, plan,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// RAM of the fuzzed guest: low memory and 63 MiB from 1 MiB.
pub const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

/// CRC-32 (IEEE, reflected), the IGVM header checksum.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = u32::MAX;
    for byte in parts.iter().flat_map(|p| p.iter()) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Rewrites the checksum of `file`'s fixed header over the variable headers, where the
/// header's own offsets allow it; leaves the file alone otherwise.
pub fn fix_checksum(file: &mut [u8]) {
    let word = |f: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(f.get(at..at + 4)?.try_into().ok()?))
    };
    let (Some(version), Some(offset), Some(size)) = (word(file, 4), word(file, 8), word(file, 12))
    else {
        return;
    };
    let header = if version == 2 { 32 } else { 24 };
    let (offset, size) = (offset as usize, size as usize);
    let Some(fixed) = file.get(..header) else {
        return;
    };
    let Some(variable) = offset
        .checked_add(size)
        .and_then(|end| file.get(offset..end))
    else {
        return;
    };
    let mut fixed = fixed.to_vec();
    fixed[20..24].fill(0);
    let sum = crc32(&[&fixed, variable]);
    file[20..24].copy_from_slice(&sum.to_le_bytes());
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flags & 4 != 0 {
        fix_checksum(&mut file);
    }
    let platform = if flags & 1 == 0 {
        IgvmPlatform::SevSnp
    } else {
        IgvmPlatform::Tdx
    };
    let cmdline = if flags & 2 != 0 { "console=ttyS0" } else { "" };
    // Reading alone never panics, for either platform.
    let _ = igvm::parse(&file, IgvmPlatform::SevSnp);
    let _ = igvm::parse(&file, IgvmPlatform::Tdx);

    let Ok(ram) = GuestRam::new(RAM) else {
        return;
    };
    let source = BootSource::new(&file)
        .format(KernelFormat::Igvm { platform })
        .cmdline(cmdline);
    let Ok(p) = plan(&source, &ram) else {
        return;
    };
    let mut end = 0;
    for o in &p.objects {
        assert!(o.range.start().0.is_multiple_of(PAGE_SIZE), "{:?}", o.range);
        assert!(o.range.start().0 >= end, "pages in ascending order");
        assert!(ram.holds(&o.range), "{:?} outside RAM", o.range);
        assert!(o.bytes.len() as u64 <= o.range.len());
        end = o.range.end();
    }
    assert_eq!(p.log.replay(), p.log.launch_digest);
    assert_eq!(p.log.entries.len(), p.objects.len() + 1);
    p.entry.validate().expect("a plan's entry is valid");
    let runs = p.page_runs().expect("IGVM pages never share a page");
    if platform != IgvmPlatform::Tdx {
        return;
    }
    let ranges: Vec<(GuestAddress, usize)> = RAM
        .iter()
        .map(|&(b, s)| (GuestAddress(b), s as usize))
        .collect();
    let memory = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
    let loaded = p
        .place(&SharedOnly::new(&memory))
        .expect("a TDX plan places into plain memory");
    assert_eq!(loaded.populated.runs, runs);
    for o in &p.objects {
        let mut got = vec![0u8; o.range.len() as usize];
        memory
            .read_slice(&mut got, o.range.start())
            .expect("placed bytes read back");
        assert_eq!(&got[..o.bytes.len()], &o.bytes[..]);
        assert!(got[o.bytes.len()..].iter().all(|&b| b == 0));
    }
}
