// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Loading into veil-memory's guest memory, emulated flavor (memfd-backed, so no KVM is
//! needed): write then convert with `Preserve`, shared only with `Discard`, and nothing
//! half-written on any failure. The in-place flavor, and guests that run from the loaded
//! memory, are in the workspace's `tests/tests/loader_private.rs`.

mod common;

use common::*;
use veil_loader::{
    BootSource, ByteRange, ConvertPrivate, GuestRam, LoadError, PopulateError, PopulateWay, load,
    plan, populate_way,
};
use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn};
use veil_memory::vm_memory::{Bytes, GuestAddress};
use veil_memory::{
    ContentPolicy, Flavor, HostAccessError, HostSafeMemory, RegionSpec, host_access_error,
};

const MIB: u64 = 1 << 20;
/// Two adjacent regions: the boot data in the first, the kernel and initrd in the second.
const RAM: &[(u64, u64)] = &[(0, MIB), (MIB, 63 * MIB)];

fn emulated(policy: ContentPolicy) -> HostSafeMemory {
    HostSafeMemory::builder()
        .region(RegionSpec::new(0, MIB, Flavor::EMULATED).policy(policy))
        .region(RegionSpec::new(MIB, 63 * MIB, Flavor::EMULATED).policy(policy))
        .build()
        .unwrap()
}

fn is_private(mem: &HostSafeMemory, r: ByteRange) -> bool {
    let p = r.page_aligned().unwrap();
    let f = FrameRange::from_gpa(p.start().0, p.len()).unwrap();
    mem.attributes().range_is(f, Attributes::PRIVATE).unwrap()
}

fn everything_shared(mem: &HostSafeMemory) -> bool {
    let whole = FrameRange::new(Gfn(0), 64 * MIB / 4096).unwrap();
    mem.attributes()
        .range_is(whole, Attributes::empty())
        .unwrap()
}

#[test]
fn preserve_memory_is_written_then_converted() {
    // Retaining is preserving where one page serves both states.
    assert_eq!(
        populate_way(&emulated(ContentPolicy::Retain)),
        PopulateWay::WriteThenConvert
    );
    let mem = emulated(ContentPolicy::Preserve);
    assert_eq!(populate_way(&mem), PopulateWay::WriteThenConvert);
    let initrd = initrd();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline(PVH_CMDLINE);
    let loaded = load(&source, &mem).unwrap();
    assert_eq!(loaded.populated.way, PopulateWay::WriteThenConvert);
    assert_eq!(loaded.populated.private, loaded.populated.ranges());
    // Every placed object is private now, and the host can no longer read it.
    for p in &loaded.layout.placements {
        assert!(is_private(&mem, p.range), "{p:?}");
        let mut buf = [0u8; 1];
        let err = mem.read_slice(&mut buf, p.range.start()).unwrap_err();
        assert!(matches!(
            host_access_error(&err),
            Some(HostAccessError::Private { .. })
        ));
    }
    // Only those pages: the page after the kernel's data segment is still shared.
    mem.read_slice(&mut [0u8; 16], GuestAddress(0x10_2000))
        .unwrap();
    // The memory map is the regions, and the log is what measure computes.
    let ram = GuestRam::new(RAM).unwrap();
    assert_eq!(loaded.log, veil_loader::measure(&source, &ram).unwrap());
    // Back to shared, the bytes are there: the conversion kept them.
    mem.convert_ranges(
        &loaded
            .populated
            .runs
            .iter()
            .map(|r| FrameRange::from_gpa(r.range.start().0, r.range.len()).unwrap())
            .collect::<Vec<_>>(),
        Attributes::empty(),
    )
    .unwrap();
    let mut text = vec![0u8; 0xfc];
    mem.read_slice(&mut text, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(text, &PVH_KERNEL[0x1000..0x10fc]);
    let ird = loaded.layout.initrd.unwrap();
    let mut back = vec![0u8; initrd.len()];
    mem.read_slice(&mut back, ird.start()).unwrap();
    assert_eq!(back, initrd);
}

#[test]
fn discard_memory_stays_shared() {
    let mem = emulated(ContentPolicy::Discard);
    assert_eq!(populate_way(&mem), PopulateWay::SharedOnly);
    let source = BootSource::new(BZ_KERNEL).cmdline(BZ_CMDLINE);
    let loaded = load(&source, &mem).unwrap();
    assert_eq!(loaded.populated.way, PopulateWay::SharedOnly);
    assert!(loaded.populated.private.is_empty());
    assert!(everything_shared(&mem));
    let mut payload = vec![0u8; BZ_KERNEL.len() - 0x400];
    mem.read_slice(&mut payload, GuestAddress(0x100_0000))
        .unwrap();
    assert_eq!(payload, &BZ_KERNEL[0x400..]);
}

#[test]
fn a_private_page_in_the_way_stops_loading_before_any_write() {
    let mem = emulated(ContentPolicy::Preserve);
    mem.write_slice(&vec![0x5a; 0x10_0000], GuestAddress(0))
        .unwrap();
    let source = BootSource::new(PVH_KERNEL).cmdline(PVH_CMDLINE);
    let planned = plan(&source, &GuestRam::new(RAM).unwrap()).unwrap();
    // Make the GDT's page private beforehand.
    let gdt = planned.layout.gdt.page_aligned().unwrap();
    mem.convert_gpa(gdt.start().0, gdt.len(), Attributes::PRIVATE)
        .unwrap();
    let err = load(&source, &mem).unwrap_err();
    assert!(
        matches!(err, LoadError::Populate(PopulateError::NotShared { .. })),
        "{err}"
    );
    // Nothing written: the low megabyte still holds the pattern outside the GDT's page.
    let mut low = vec![0u8; gdt.start().0 as usize];
    mem.read_slice(&mut low, GuestAddress(0)).unwrap();
    assert!(low.iter().all(|&b| b == 0x5a));
    let mut above = vec![0u8; (0x10_0000 - gdt.end()) as usize];
    mem.read_slice(&mut above, GuestAddress(gdt.end())).unwrap();
    assert!(above.iter().all(|&b| b == 0x5a));
    // And nothing else became private.
    assert!(is_private(&mem, gdt));
    mem.convert_gpa(gdt.start().0, gdt.len(), Attributes::empty())
        .unwrap();
    assert!(everything_shared(&mem));
}

/// veil-memory's guest memory behind a fault injector: the n-th write fails, or the
/// conversion to private converts the first run only and then fails.
struct Faulty<'m> {
    mem: &'m HostSafeMemory,
    writes: std::cell::Cell<usize>,
    fail_write_at: Option<usize>,
    fail_conversion: bool,
}

impl ConvertPrivate for Faulty<'_> {
    fn ram(&self) -> Result<GuestRam, PopulateError> {
        ConvertPrivate::ram(self.mem)
    }
    fn is_shared(&self, range: ByteRange) -> bool {
        self.mem.is_shared(range)
    }
    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), veil_loader::BoxError> {
        let n = self.writes.get();
        self.writes.set(n + 1);
        if self.fail_write_at == Some(n) {
            return Err("injected write failure".into());
        }
        ConvertPrivate::write(self.mem, gpa, bytes)
    }
    fn to_private(&self, runs: &[ByteRange]) -> Result<(), veil_loader::BoxError> {
        if self.fail_conversion {
            self.mem.to_private(&runs[..1])?;
            return Err("injected conversion failure after the first run".into());
        }
        self.mem.to_private(runs)
    }
    fn to_shared(&self, runs: &[ByteRange]) -> Result<(), veil_loader::BoxError> {
        self.mem.to_shared(runs)
    }
}

fn check_scrubbed(mem: &HostSafeMemory, runs: &[ByteRange]) {
    assert!(everything_shared(mem), "a page stayed private");
    for &(base, size) in RAM {
        let mut bytes = vec![0u8; size as usize];
        mem.read_slice(&mut bytes, GuestAddress(base)).unwrap();
        for (i, page) in bytes.chunks(4096).enumerate() {
            let gpa = base + i as u64 * 4096;
            let in_run = runs.iter().any(|r| r.start().0 <= gpa && gpa < r.end());
            let want = if in_run { 0 } else { 0x5a };
            assert!(page.iter().all(|&b| b == want), "page {gpa:#x}");
        }
    }
}

#[test]
fn failures_while_loading_leave_nothing_half_written() {
    let initrd = initrd();
    let source = BootSource::new(BZ_KERNEL)
        .initrd(&initrd)
        .cmdline(BZ_CMDLINE);
    let runs = plan(&source, &GuestRam::new(RAM).unwrap())
        .unwrap()
        .layout
        .page_runs();
    for (fail_write_at, fail_conversion) in [
        (Some(0), false),
        (Some(3), false),
        (Some(7), false),
        (None, true),
    ] {
        let mem = emulated(ContentPolicy::Preserve);
        for &(base, size) in RAM {
            mem.write_slice(&vec![0x5a; size as usize], GuestAddress(base))
                .unwrap();
        }
        let faulty = Faulty {
            mem: &mem,
            writes: std::cell::Cell::new(0),
            fail_write_at,
            fail_conversion,
        };
        let err = load(&source, &veil_loader::WriteThenConvert::new(&faulty)).unwrap_err();
        assert!(matches!(err, LoadError::Populate(_)), "{err}");
        check_scrubbed(&mem, &runs);
    }
}
