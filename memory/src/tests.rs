// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Tests of guest memory and conversions that need no KVM: the emulated flavor on memfds,
//! and the attributes flavor with a memfd standing in for guest_memfd and a recording
//! fake of the attributes ioctl.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE, PageState, RangeError, Tag};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::backend::tests::MemfdSource;
use crate::*;

const MIB: u64 = 1 << 20;
const PRIVATE: Attributes = Attributes::PRIVATE;
const SHARED: Attributes = Attributes::empty();

fn fr(start: u64, pages: u64) -> FrameRange {
    FrameRange::new(Gfn(start), pages).unwrap()
}

/// Two adjacent emulated regions at 1 MiB: [1, 2) MiB preserves, [2, 3) MiB discards.
fn emulated() -> HostSafeMemory {
    emulated_with(Arc::new(KernelSyscalls))
}

/// [`emulated`], its system calls going to `syscalls`.
fn emulated_with(syscalls: Arc<dyn Syscalls>) -> HostSafeMemory {
    HostSafeMemory::builder()
        .syscalls(syscalls)
        .region(RegionSpec::new(MIB, MIB, Flavor::EMULATED).policy(ContentPolicy::Preserve))
        .region(RegionSpec::new(2 * MIB, MIB, Flavor::EMULATED))
        .build()
        .unwrap()
}

fn attributes(vm: &Arc<RecordingAttributesVm>) -> HostSafeMemory {
    attributes_with(vm, Arc::new(KernelSyscalls))
}

/// [`attributes`], its system calls going to `syscalls`.
fn attributes_with(vm: &Arc<RecordingAttributesVm>, syscalls: Arc<dyn Syscalls>) -> HostSafeMemory {
    let src = MemfdSource {
        flags: 0,
        fail: None,
    };
    HostSafeMemory::builder()
        .guest_memfd_source(&src)
        .attributes_vm(vm.clone())
        .syscalls(syscalls)
        .region(RegionSpec::new(0, 4 * MIB, Flavor::ATTRIBUTES))
        .build()
        .unwrap()
}

fn fill(mem: &HostSafeMemory, gpa: u64, len: usize, byte: u8) {
    mem.host_write(gpa, &vec![byte; len]).unwrap();
}

fn read(mem: &HostSafeMemory, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.host_read(gpa, &mut buf).unwrap();
    buf
}

fn private_err(e: &vm_memory::GuestMemoryError) -> HostAccessError {
    host_access_error(e)
        .unwrap_or_else(|| panic!("not refused for privacy: {e}"))
        .clone()
}

#[test]
fn layout_is_checked_before_anything_is_allocated() {
    let build = |specs: &[RegionSpec]| {
        let mut b = HostSafeMemory::builder();
        for s in specs {
            b = b.region(*s);
        }
        b.build()
    };
    assert!(matches!(build(&[]), Err(BuildError::NoRegion)));
    assert!(matches!(
        build(&[RegionSpec::new(0x1001, MIB, Flavor::EMULATED)]),
        Err(BuildError::Range {
            index: 0,
            source: RangeError::UnalignedAddress { .. }
        })
    ));
    assert!(matches!(
        build(&[RegionSpec::new(0, 0, Flavor::EMULATED)]),
        Err(BuildError::Range { .. })
    ));
    // Overlap is found whatever the order given.
    let err = build(&[
        RegionSpec::new(2 * MIB, MIB, Flavor::EMULATED),
        RegionSpec::new(MIB, MIB + PAGE_SIZE, Flavor::EMULATED),
    ])
    .unwrap_err();
    match err {
        BuildError::Overlap { first, second } => {
            assert_eq!(first.gpa(), MIB);
            assert_eq!(second.gpa(), 2 * MIB);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        build(&[RegionSpec::new(0, MIB, Flavor::ATTRIBUTES).policy(ContentPolicy::Preserve)]),
        Err(BuildError::PolicyUnsupported {
            policy: ContentPolicy::Preserve,
            ..
        })
    ));
    assert!(matches!(
        build(&[RegionSpec::new(0, MIB, Flavor::IN_PLACE)]),
        Err(BuildError::NeedsGuestMemfd { .. })
    ));
    let src = MemfdSource {
        flags: 3,
        fail: None,
    };
    let err = HostSafeMemory::builder()
        .guest_memfd_source(&src)
        .region(RegionSpec::new(0, MIB, Flavor::ATTRIBUTES))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::NeedsAttributesVm { .. }));
    let err = HostSafeMemory::builder()
        .guest_memfd_source(&src)
        .region(RegionSpec::new(0, MIB, Flavor::IN_PLACE).guest_memfd_flags(1))
        .build()
        .unwrap_err();
    assert!(matches!(
        err,
        BuildError::GuestMemfdFlags {
            flags: 1,
            needed: 3,
            ..
        }
    ));
    let err = HostSafeMemory::builder()
        .guest_memfd_source(&src)
        .region(RegionSpec::new(0, 2 * MIB, Flavor::IN_PLACE).hugetlb(true))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::HugetlbUnsupported { .. }));
    // A failing guest_memfd source keeps the errno.
    let failing = MemfdSource {
        flags: 3,
        fail: Some(libc::ENOSPC),
    };
    let err = HostSafeMemory::builder()
        .guest_memfd_source(&failing)
        .region(RegionSpec::new(0, MIB, Flavor::IN_PLACE))
        .build()
        .unwrap_err();
    match err {
        BuildError::Backend {
            source: BackendError::CreateGuestMemfd { source, .. },
            ..
        } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn adjacent_regions_form_one_span_and_gaps_split() {
    let mem = HostSafeMemory::builder()
        .region(RegionSpec::new(MIB, MIB, Flavor::EMULATED))
        .region(RegionSpec::new(2 * MIB, MIB, Flavor::EMULATED))
        .region(RegionSpec::new(8 * MIB, MIB, Flavor::EMULATED))
        .build()
        .unwrap();
    assert_eq!(mem.regions().len(), 3);
    assert_eq!(mem.num_regions(), 2);
    let first = mem.find_region(GuestAddress(2 * MIB + 5)).unwrap();
    assert_eq!(
        (first.start_addr(), first.len()),
        (GuestAddress(MIB), 2 * MIB)
    );
    assert!(mem.find_region(GuestAddress(3 * MIB)).is_none());
    assert!(mem.find_region(GuestAddress(0)).is_none());
    assert_eq!(mem.last_addr(), GuestAddress(9 * MIB - 1));
    // Memory slots: emulated regions give KVM their own mapping and no guest_memfd.
    let slots = mem.memslots(4);
    assert_eq!(slots.len(), 3);
    assert_eq!((slots[2].slot, slots[2].guest_phys_addr), (6, 8 * MIB));
    assert_eq!(slots[0].flags, 0);
    assert_ne!(slots[0].userspace_addr, 0);
    // An access into the gap fails.
    let mut b = [0u8; 2];
    assert!(mem.read_slice(&mut b, GuestAddress(3 * MIB - 1)).is_err());
    assert!(matches!(
        mem.host_read(3 * MIB - 1, &mut b),
        Err(HostAccessError::NotGuestMemory { .. })
    ));
}

#[test]
fn private_access_is_refused_naming_address_and_range() {
    let mem = emulated();
    fill(&mem, MIB, 4 * PAGE_SIZE as usize, 0xaa);
    mem.convert(fr(0x101, 2), PRIVATE).unwrap();

    // Reads return the error and no bytes.
    let mut buf = [0x55u8; 16];
    let err = mem
        .read_slice(&mut buf, GuestAddress(MIB + 0x1ff8))
        .unwrap_err();
    assert_eq!(buf, [0x55; 16]);
    let e = private_err(&err);
    assert_eq!(
        e,
        HostAccessError::Private {
            addr: MIB + 0x1ff8,
            len: 16,
            private: fr(0x101, 2)
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("0x101ff8") && msg.contains("[0x101000, 0x103000)"),
        "{msg}"
    );
    // read() (not read_slice) refuses too rather than returning a short count.
    assert!(mem.read(&mut buf, GuestAddress(MIB + 0x0ff8)).is_err());
    assert!(mem.read_obj::<u64>(GuestAddress(MIB + 0x2000)).is_err());
    assert!(
        mem.load::<u32>(GuestAddress(MIB + 0x1000), Ordering::Relaxed)
            .is_err()
    );
    assert!(
        mem.store(1u32, GuestAddress(MIB + 0x1000), Ordering::Relaxed)
            .is_err()
    );

    // Writes that straddle the shared/private boundary write nothing.
    let err = mem
        .write_slice(&[1; 32], GuestAddress(MIB + 0x0ff0))
        .unwrap_err();
    assert_eq!(
        private_err(&err).clone(),
        HostAccessError::Private {
            addr: MIB + 0x0ff0,
            len: 32,
            private: fr(0x101, 1),
        }
    );
    assert!(mem.write(&[1; 32], GuestAddress(MIB + 0x2ff0)).is_err());
    assert!(mem.host_write(MIB + 0x2ff0, &[1; 32]).is_err());
    assert_eq!(read(&mem, MIB + 0x0ff0, 16), vec![0xaa; 16]);
    assert_eq!(read(&mem, MIB + 0x3000, 16), vec![0xaa; 16]);

    // No slice or host address for private memory.
    assert!(mem.get_slice(GuestAddress(MIB + 0x1000), 1).is_err());
    assert!(mem.get_host_address(GuestAddress(MIB + 0x1800)).is_err());
    assert!(mem.get_host_address(GuestAddress(MIB + 0x800)).is_ok());
    let span = mem.find_region(GuestAddress(MIB)).unwrap();
    assert!(span.as_volatile_slice().is_err());
    assert!(span.get_slice(MemoryRegionAddress(0), 0x1000).is_ok());

    // Back to shared, the preserving region kept the bytes.
    mem.convert(fr(0x101, 2), SHARED).unwrap();
    assert_eq!(
        read(&mem, MIB, 4 * PAGE_SIZE as usize),
        vec![0xaa; 4 * PAGE_SIZE as usize]
    );
}

#[test]
fn access_straddling_two_regions_is_checked_as_a_whole() {
    let mem = emulated();
    fill(&mem, 2 * MIB - 0x10, 0x20, 0x11);
    // The second region's first page becomes private; a write across the boundary from
    // the shared first region must write nothing in it.
    mem.convert(fr(0x200, 1), PRIVATE).unwrap();
    let err = mem
        .write_slice(&[0x22; 0x20], GuestAddress(2 * MIB - 0x10))
        .unwrap_err();
    assert_eq!(
        private_err(&err).clone(),
        HostAccessError::Private {
            addr: 2 * MIB - 0x10,
            len: 0x20,
            private: fr(0x200, 1),
        }
    );
    assert_eq!(read(&mem, 2 * MIB - 0x10, 0x10), vec![0x11; 0x10]);
    // Shared on both sides: one access crosses the boundary.
    mem.convert(fr(0x200, 1), SHARED).unwrap();
    mem.write_slice(&[0x33; 0x20], GuestAddress(2 * MIB - 0x10))
        .unwrap();
    assert_eq!(read(&mem, 2 * MIB - 0x10, 0x20), vec![0x33; 0x20]);
    // Also private on the first side.
    mem.convert(fr(0x1ff, 1), PRIVATE).unwrap();
    assert!(
        mem.write_slice(&[0x44; 0x20], GuestAddress(2 * MIB - 0x10))
            .is_err()
    );
    mem.convert(fr(0x1ff, 1), SHARED).unwrap();
    assert_eq!(read(&mem, 2 * MIB - 0x10, 0x10), vec![0x33; 0x10]);
}

#[test]
fn discard_zeroes_converted_pages_only_and_preserve_keeps() {
    let mem = emulated();
    // Discarding region [2, 3) MiB: pattern every byte.
    let pattern: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
    mem.host_write(2 * MIB, &pattern).unwrap();
    let range = fr(0x205, 3);
    let done = mem.convert(range, PRIVATE).unwrap();
    assert_eq!(
        (done.pages_changed, done.bytes_discarded),
        (3, 3 * PAGE_SIZE)
    );
    mem.convert(range, SHARED).unwrap();
    let after = read(&mem, 2 * MIB, MIB as usize);
    let (lo, hi) = ((5 * PAGE_SIZE) as usize, (8 * PAGE_SIZE) as usize);
    assert!(after[lo..hi].iter().all(|&b| b == 0));
    assert_eq!(after[..lo], pattern[..lo]);
    assert_eq!(after[hi..], pattern[hi..]);
    // Preserving region [1, 2) MiB: a round trip keeps every byte.
    mem.host_write(MIB, &pattern).unwrap();
    let done = mem.convert(fr(0x100, 0x100), PRIVATE).unwrap();
    assert_eq!(done.bytes_discarded, 0);
    mem.convert(fr(0x100, 0x100), SHARED).unwrap();
    assert_eq!(read(&mem, MIB, MIB as usize), pattern);
}

#[test]
fn stats_count_pages_each_way_and_read_as_one_line() {
    let mem = emulated();
    // Four pages to private, two of them back, then all four (only two cross again).
    mem.convert(fr(0x100, 4), PRIVATE).unwrap();
    mem.convert(fr(0x101, 2), SHARED).unwrap();
    mem.convert(fr(0x100, 4), PRIVATE).unwrap();
    let s = mem.stats();
    assert_eq!(
        (s.conversions, s.pages_to_private, s.pages_to_shared),
        (3, 6, 2)
    );
    assert_eq!(s.total(), s.protections + s.discards);
    assert_eq!(
        s.to_string(),
        format!(
            "3 conversions, 6 pages to private, 2 to shared; {} system calls \
             (0 KVM_SET_MEMORY_ATTRIBUTES, {} mprotect, {} discard)",
            s.total(),
            s.protections,
            s.discards
        )
    );
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["pages_to_private"], 6);
}

#[test]
fn converting_to_the_current_state_costs_nothing() {
    let mem = emulated();
    let before = mem.stats();
    let done = mem.convert(fr(0x100, 0x200), SHARED).unwrap();
    assert_eq!(done, Conversion::default());
    assert_eq!(mem.stats(), before);
    mem.convert(fr(0x100, 4), PRIVATE).unwrap();
    let mid = mem.stats();
    assert_eq!(mid.since(&before).protections, 1);
    let published = mem.attributes();
    assert!(
        mem.convert(fr(0x101, 2), PRIVATE)
            .unwrap()
            .changes
            .is_empty()
    );
    assert_eq!(mem.stats(), mid);
    // Not even a new snapshot was published.
    assert!(Arc::ptr_eq(&published, &mem.attributes()));
}

#[test]
fn a_repeated_request_does_not_wait_for_a_running_conversion() {
    use std::sync::mpsc;
    use std::thread;
    use std::time::{Duration, Instant};
    let mem = &emulated();
    mem.convert(fr(0x100, 4), PRIVATE).unwrap();
    let (inside, writing) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    thread::scope(|s| {
        // Another writer holds the attribute map's lock, as a long conversion does.
        let other = s.spawn(move || {
            mem.attrs.update(|_| {
                inside.send(()).unwrap();
                released.recv().unwrap();
            })
        });
        writing.recv().unwrap();
        let repeat = s.spawn(|| mem.convert(fr(0x101, 2), PRIVATE));
        let change = s.spawn(|| mem.convert(fr(0x200, 1), PRIVATE));
        // The repeated request is answered while the lock is held (the deadline only
        // keeps a failing test from hanging); the other cannot finish before it is free.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !repeat.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let answered = repeat.is_finished();
        let waited = !change.is_finished();
        release.send(()).unwrap();
        other.join().unwrap();
        assert!(
            answered,
            "a request for the current state waited for the writer"
        );
        assert!(waited, "a conversion ran beside another writer");
        assert_eq!(repeat.join().unwrap().unwrap(), Conversion::default());
        assert_eq!(change.join().unwrap().unwrap().pages_changed, 1);
    });
    assert!(mem.attributes().range_is(fr(0x200, 1), PRIVATE).unwrap());
}

#[test]
fn bad_requests_fail_before_anything_changes() {
    let mem = HostSafeMemory::builder()
        .region(RegionSpec::new(MIB, MIB, Flavor::EMULATED))
        .region(RegionSpec::new(3 * MIB, MIB, Flavor::EMULATED))
        .build()
        .unwrap();
    let snapshot = mem.attributes();
    let stats = mem.stats();
    let gap = mem.convert(fr(0x1f0, 0x20), PRIVATE).unwrap_err();
    assert!(
        matches!(gap, ConvertError::Gap { gap: 0x20_0000, .. }),
        "{gap}"
    );
    assert!(matches!(
        mem.convert(fr(0x80, 1), PRIVATE),
        Err(ConvertError::Gap { .. })
    ));
    assert!(matches!(
        mem.convert(fr(0x3f0, 0x20), PRIVATE),
        Err(ConvertError::Range(RangeError::OutOfBounds { .. }))
    ));
    assert!(matches!(
        mem.convert_gpa(MIB + 1, PAGE_SIZE, PRIVATE),
        Err(ConvertError::Range(RangeError::UnalignedAddress { .. }))
    ));
    assert!(matches!(
        mem.convert_gpa(MIB, 0x800, PRIVATE),
        Err(ConvertError::Range(RangeError::UnalignedSize { .. }))
    ));
    assert!(matches!(
        mem.convert_gpa(u64::MAX - 0xfff, 0x2000, PRIVATE),
        Err(ConvertError::Range(RangeError::Overflow { .. }))
    ));
    assert_eq!(mem.stats(), stats);
    assert_eq!(mem.attributes().run_count(), snapshot.run_count());
    assert!(mem.attributes().range_is(fr(0x100, 0x300), SHARED).unwrap());
}

#[test]
fn failed_protection_is_undone_across_regions() {
    let calls = Arc::new(FailingSyscalls::new());
    let mem = emulated_with(calls.clone());
    fill(&mem, MIB, 2 * MIB as usize, 0x5a);
    // Region 1's mprotect succeeds, region 2's fails: region 1 must be accessible again.
    calls.fail_after(1, libc::ENOMEM);
    let err = mem.convert(fr(0x1f0, 0x20), PRIVATE).unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOMEM));
    assert!(matches!(
        err,
        ConvertError::Step {
            step: StepKind::Protect { inaccessible: true },
            ..
        }
    ));
    assert!(mem.attributes().range_is(fr(0x100, 0x200), SHARED).unwrap());
    // Touching every byte would fault if the first region's pages stayed PROT_NONE.
    assert_eq!(
        read(&mem, MIB, 2 * MIB as usize),
        vec![0x5a; 2 * MIB as usize]
    );
    // The Discard region's punch fails after both protections: both are undone and
    // nothing of the preserving region was discarded.
    calls.fail_after(2, libc::EIO);
    let err = mem.convert(fr(0x1f0, 0x20), PRIVATE).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EIO));
    assert!(mem.attributes().range_is(fr(0x100, 0x200), SHARED).unwrap());
    assert_eq!(
        read(&mem, MIB, 2 * MIB as usize),
        vec![0x5a; 2 * MIB as usize]
    );
}

#[test]
fn attributes_flavor_sets_kvm_attributes_then_discards() {
    let vm = Arc::new(RecordingAttributesVm::new());
    let mem = attributes(&vm);
    fill(&mem, 0, 0x4000, 0x77);
    let done = mem.convert(fr(1, 2), PRIVATE).unwrap();
    assert_eq!(
        (done.pages_changed, done.bytes_discarded),
        (2, 2 * PAGE_SIZE)
    );
    assert_eq!(vm.calls(), vec![(fr(1, 2), PRIVATE)]);
    assert_eq!(
        mem.stats(),
        ConversionStats {
            conversions: 1,
            pages_to_private: 2,
            pages_to_shared: 0,
            set_memory_attributes: 1,
            protections: 0,
            discards: 1
        }
    );
    assert!(mem.host_read(0x1000, &mut [0; 1]).is_err());
    mem.convert(fr(0, 4), SHARED).unwrap();
    assert_eq!(vm.calls()[1], (fr(1, 2), SHARED));
    // Contents are not preserved: the shared side was discarded on to-private.
    assert_eq!(read(&mem, 0, 0x4000)[..0x1000], vec![0x77; 0x1000][..]);
    assert!(read(&mem, 0x1000, 0x2000).iter().all(|&b| b == 0));
    assert_eq!(read(&mem, 0x3000, 0x1000), vec![0x77; 0x1000]);
    // The slot carries the guest_memfd and the shared mapping.
    let slot = &mem.memslots(0)[0];
    assert_eq!(slot.flags, kvm_bindings::KVM_MEM_GUEST_MEMFD);
    assert_ne!(slot.userspace_addr, 0);
}

#[test]
fn tags_change_without_conversions() {
    let mem = emulated();
    mem.convert(fr(0x101, 2), PRIVATE).unwrap();
    let calls = mem.stats();
    let tag = Tag::new(5).unwrap();
    // Across a shared/private boundary: each frame keeps its attributes.
    assert_eq!(mem.set_tag(fr(0x100, 4), Some(tag)).unwrap(), 4);
    assert_eq!(mem.set_tag(fr(0x100, 4), Some(tag)).unwrap(), 0);
    assert_eq!(mem.stats(), calls, "no system call");
    for (gfn, attributes) in [(0x100, SHARED), (0x101, PRIVATE), (0x103, SHARED)] {
        assert_eq!(
            mem.state(Gfn(gfn)).unwrap(),
            PageState {
                attributes,
                tag: Some(tag)
            }
        );
    }
    assert!(mem.host_read(0x10_1000, &mut [0; 1]).is_err());
    // Out of bounds: refused, nothing changes.
    assert!(mem.set_tag(fr(0x2ff, 2), None).is_err());
    assert_eq!(mem.state(Gfn(0x100)).unwrap().tag, Some(tag));
    assert_eq!(mem.set_tag(fr(0x100, 4), None).unwrap(), 4);
    assert_eq!(mem.attributes().run_count(), 3);
}

#[test]
fn which_flavor_keeps_contents_under_which_policy() {
    use ContentPolicy::{Discard, Preserve, Retain};
    for flavor in Flavor::BUILT_IN {
        let one_page = flavor != Flavor::ATTRIBUTES;
        assert!(
            flavor.honours(Discard) && flavor.honours(Retain),
            "{flavor}"
        );
        assert_eq!(flavor.honours(Preserve), one_page, "{flavor}");
        assert!(!flavor.keeps_contents(Discard), "{flavor}");
        assert_eq!(flavor.keeps_contents(Retain), one_page, "{flavor}");
        assert_eq!(flavor.keeps_contents(Preserve), one_page, "{flavor}");
    }
}

#[test]
fn attributes_flavor_retaining_discards_nothing() {
    let vm = Arc::new(RecordingAttributesVm::new());
    let src = MemfdSource {
        flags: 0,
        fail: None,
    };
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(&src)
        .attributes_vm(vm.clone())
        .region(RegionSpec::new(0, MIB, Flavor::ATTRIBUTES).policy(ContentPolicy::Retain))
        .build()
        .unwrap();
    fill(&mem, 0, 0x4000, 0x77);
    let done = mem.convert(fr(1, 2), PRIVATE).unwrap();
    assert_eq!((done.pages_changed, done.bytes_discarded), (2, 0));
    assert!(mem.host_read(0x1000, &mut [0; 1]).is_err());
    mem.convert(fr(0, 4), SHARED).unwrap();
    assert_eq!(vm.calls(), vec![(fr(1, 2), PRIVATE), (fr(1, 2), SHARED)]);
    assert_eq!(
        mem.stats(),
        ConversionStats {
            conversions: 2,
            pages_to_private: 2,
            pages_to_shared: 2,
            set_memory_attributes: 2,
            protections: 0,
            discards: 0
        }
    );
    // The shared side kept its pages while the range was private.
    assert_eq!(read(&mem, 0, 0x4000), vec![0x77; 0x4000]);

    // Where one page serves both states, retaining is preserving.
    let mem = HostSafeMemory::builder()
        .region(RegionSpec::new(0, MIB, Flavor::EMULATED).policy(ContentPolicy::Retain))
        .build()
        .unwrap();
    fill(&mem, 0, 0x4000, 0x55);
    mem.convert(fr(1, 2), PRIVATE).unwrap();
    let done = mem.convert(fr(1, 2), SHARED).unwrap();
    assert_eq!(done.bytes_discarded, 0);
    assert_eq!(read(&mem, 0, 0x4000), vec![0x55; 0x4000]);
}

#[test]
fn attributes_ioctl_failure_rolls_back_userspace() {
    let vm = Arc::new(RecordingAttributesVm::new());
    let calls = Arc::new(FailingSyscalls::new());
    let mem = attributes_with(&vm, calls.clone());
    fill(&mem, 0, 0x4000, 0x66);
    vm.fail_after(0, libc::EFAULT);
    let err = mem.convert(fr(0, 4), PRIVATE).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EFAULT));
    assert!(matches!(
        err,
        ConvertError::Step {
            step: StepKind::SetAttributes(_),
            ..
        }
    ));
    // Nothing changed: veil's record, KVM (no call recorded), contents (no discard).
    assert!(mem.attributes().range_is(fr(0, 0x400), SHARED).unwrap());
    assert!(vm.calls().is_empty());
    assert_eq!(mem.stats().discards, 0);
    assert_eq!(read(&mem, 0, 0x4000), vec![0x66; 0x4000]);

    // A discard failing after the ioctl undoes the ioctl, per changed run.
    mem.convert(fr(1, 1), PRIVATE).unwrap();
    vm.clear();
    calls.fail_after(1, libc::EIO);
    let err = mem.convert(fr(0, 4), PRIVATE).unwrap_err();
    assert!(matches!(
        err,
        ConvertError::Step {
            step: StepKind::Discard(Store::View),
            ..
        }
    ));
    assert_eq!(
        vm.calls(),
        vec![(fr(0, 4), PRIVATE), (fr(0, 1), SHARED), (fr(2, 2), SHARED)]
    );
    assert_eq!(mem.state(Gfn(1)).unwrap(), PageState::PRIVATE);
    assert_eq!(mem.state(Gfn(0)).unwrap(), PageState::SHARED);
    assert_eq!(mem.state(Gfn(3)).unwrap(), PageState::SHARED);
}

#[test]
fn attributes_checkerboard_is_two_calls() {
    let vm = Arc::new(RecordingAttributesVm::new());
    let mem = attributes(&vm);
    let pages = 4 * MIB / PAGE_SIZE;
    for p in (0..pages).step_by(2) {
        mem.convert(fr(p, 1), PRIVATE).unwrap();
    }
    vm.clear();
    let before = mem.stats();
    let done = mem.convert(fr(0, pages), SHARED).unwrap();
    assert_eq!(done.pages_changed, pages / 2);
    let calls = mem.stats().since(&before);
    assert_eq!(calls.total(), 2, "{calls:?}");
    assert_eq!(vm.calls(), vec![(fr(0, pages - 1), SHARED)]);
}

/// Every change a listener hears, after the state it started from.
#[derive(Default)]
struct Log {
    start: Mutex<Option<veil_attrs::AttrMap>>,
    changes: Mutex<Vec<StateChange>>,
}

impl ConversionListener for Log {
    fn subscribed(&self, start: &veil_attrs::AttrMap) {
        *self.start.lock().unwrap() = Some(start.clone());
    }

    fn converted(&self, change: &StateChange) {
        self.changes.lock().unwrap().push(*change);
    }
}

#[test]
fn listeners_start_from_the_state_then_hear_each_change_in_order() {
    let mem = emulated();
    mem.convert(fr(0x104, 1), PRIVATE).unwrap();
    let log = Arc::new(Log::default());
    let sub = mem.subscribe(log.clone());
    // The start holds the conversion before subscribing, and is what the listener got.
    assert_eq!(sub.start.get(Gfn(0x104)).unwrap(), PageState::PRIVATE);
    assert_eq!(log.start.lock().unwrap().as_ref(), Some(&*sub.start));
    let id = sub.id;
    drop(sub);
    mem.convert(fr(0x102, 2), PRIVATE).unwrap();
    mem.convert(fr(0x106, 1), PRIVATE).unwrap();
    mem.convert(fr(0x100, 8), SHARED).unwrap();
    let got = log.changes.lock().unwrap().clone();
    let ch = |s, n, old, new| StateChange {
        range: fr(s, n),
        old,
        new,
    };
    let (p, s) = (PageState::PRIVATE, PageState::SHARED);
    assert_eq!(
        got,
        vec![
            ch(0x102, 2, s, p),
            ch(0x106, 1, s, p),
            ch(0x102, 3, p, s),
            ch(0x106, 1, p, s),
        ]
    );
    assert!(mem.unsubscribe(id));
    assert!(!mem.unsubscribe(id));
    mem.convert(fr(0x100, 1), PRIVATE).unwrap();
    assert_eq!(log.changes.lock().unwrap().len(), 4);
}

#[test]
fn a_rolled_back_conversion_is_never_delivered() {
    let syscalls = Arc::new(FailingSyscalls::new());
    let vm = Arc::new(RecordingAttributesVm::new());
    let mem = attributes_with(&vm, syscalls.clone());
    let log = Arc::new(Log::default());
    let _ = mem.subscribe(log.clone());
    // The attributes call succeeds, the discard after it fails: undone, untold.
    syscalls.fail_after(1, libc::EIO);
    let err = mem.convert(fr(4, 2), PRIVATE).unwrap_err();
    assert!(matches!(err, ConvertError::Step { .. }), "{err}");
    assert_eq!(vm.calls(), [(fr(4, 2), PRIVATE), (fr(4, 2), SHARED)]);
    assert!(log.changes.lock().unwrap().is_empty());
    // The next conversion is told, from the state the failed one left untouched.
    mem.convert(fr(4, 2), PRIVATE).unwrap();
    let got = log.changes.lock().unwrap().clone();
    assert_eq!(
        got,
        [StateChange {
            range: fr(4, 2),
            old: PageState::SHARED,
            new: PageState::PRIVATE
        }]
    );
}

#[test]
fn linux_loader_writes_through_unchanged() {
    let mem = emulated();
    let mut cmdline = linux_loader::cmdline::Cmdline::new(64).unwrap();
    cmdline.insert_str("console=ttyS0").unwrap();
    linux_loader::loader::load_cmdline(&mem, GuestAddress(MIB + 0x2000), &cmdline).unwrap();
    assert_eq!(&read(&mem, MIB + 0x2000, 14), b"console=ttyS0\0");
    // Into a private page, it fails and writes nothing.
    mem.convert(fr(0x103, 1), PRIVATE).unwrap();
    assert!(
        linux_loader::loader::load_cmdline(&mem, GuestAddress(MIB + 0x2ff8), &cmdline).is_err()
    );
    assert_eq!(read(&mem, MIB + 0x2ff8, 8), vec![0; 8]);
}

#[test]
fn concurrent_host_access_never_faults_during_conversions() {
    // Readers hammer memory through vm-memory while converters flip pages to private
    // and back. A reader whose check passed must finish its copy before the page is
    // protected; a fault would kill the test process.
    let mem = Arc::new(emulated());
    let stop = Arc::new(AtomicBool::new(false));
    let reads_ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let (mem, stop, ok, no) = (mem.clone(), stop.clone(), reads_ok.clone(), refused.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 3 * PAGE_SIZE as usize];
            let mut x = t + 1;
            while !stop.load(Ordering::Relaxed) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let gpa = MIB + (x >> 33) % (2 * MIB - buf.len() as u64);
                match mem.read_slice(&mut buf, GuestAddress(gpa)) {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        assert!(host_access_error(&e).is_some(), "{e}");
                        no.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let mut x = 99u64;
    for _ in 0..2000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let start = 0x100 + (x >> 33) % 0x1f0;
        let to = if x & 1 == 0 { PRIVATE } else { SHARED };
        mem.convert(fr(start, 1 + (x >> 20) % 8), to).unwrap();
    }
    mem.convert(fr(0x100, 0x200), SHARED).unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(reads_ok.load(Ordering::Relaxed) > 0);
    assert!(mem.host_read(MIB, &mut vec![0; 2 * MIB as usize]).is_ok());
}

#[test]
fn host_accesses_through_slots_never_fault_while_their_block_converts() {
    // Readers read 16 bytes at a time from one 2 MiB block, through `host_read` and
    // through vm-memory's slices, while a converter makes one of its pages private and
    // the block all shared again, over and over: between conversions the readers lease
    // the block through their slots, so each conversion to private must fence them and
    // wait for them. A read of a page made private would kill the test process.
    let mem = HostSafeMemory::builder()
        .region(RegionSpec::new(0, 4 * MIB, Flavor::EMULATED).policy(ContentPolicy::Preserve))
        .build()
        .unwrap();
    fill(&mem, 2 * MIB, 2 * MIB as usize, 0xa5);
    let stop = AtomicBool::new(false);
    let (ok, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (mem, stop, ok, refused) = (&mem, &stop, &ok, &refused);
            s.spawn(move || {
                let mut x = t + 1;
                while !stop.load(Ordering::Relaxed) {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let gpa = 2 * MIB + (x >> 33) % (2 * MIB / 16) * 16;
                    let mut buf = [0u8; 16];
                    let read = if x & 1 == 0 {
                        mem.host_read(gpa, &mut buf).map_err(|e| e.to_string())
                    } else {
                        mem.read_slice(&mut buf, GuestAddress(gpa)).map_err(|e| {
                            private_err(&e);
                            e.to_string()
                        })
                    };
                    match read {
                        Ok(()) => {
                            assert_eq!(buf, [0xa5; 16], "at {gpa:#x}");
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        let mut x = 7u64;
        for _ in 0..1000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let page = fr(0x200 + (x >> 33) % 0x200, 1);
            mem.convert(page, PRIVATE).unwrap();
            if x & 2 != 0 {
                std::thread::yield_now();
            }
            mem.convert(page, SHARED).unwrap();
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(ok.load(Ordering::Relaxed) > 0);
    let (fences, slots) = mem.access_lock().fences();
    if slots {
        assert!(
            fences > 0,
            "no conversion found a block leased through slots"
        );
    } else {
        eprintln!("note: membarrier(2) unavailable here, so every lease was in the words");
    }
    eprintln!(
        "{} reads, {} refused, {fences} fences",
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
}

#[test]
fn a_subslice_outliving_its_slice_holds_off_conversions_to_private() {
    let mem = emulated();
    fill(&mem, MIB + 0x3000, 16, 0x5a);
    let slice = mem.get_slice(GuestAddress(MIB + 0x3000), 16).unwrap();
    assert!(slice.bitmap().is_held());
    let region = mem.find_region(GuestAddress(MIB)).unwrap();
    assert!(!region.bitmap().is_held());
    let sub = slice.subslice(8, 8).unwrap();
    drop(slice);
    let converted = AtomicBool::new(false);
    std::thread::scope(|s| {
        let converter = s.spawn(|| {
            mem.convert(fr(0x103, 1), PRIVATE).unwrap();
            converted.store(true, Ordering::SeqCst);
        });
        // The conversion waits for `sub`, which stays readable meanwhile.
        crate::lease::tests::until_parked(mem.access_lock());
        assert!(!converted.load(Ordering::SeqCst));
        let mut bytes = [0u8; 8];
        sub.copy_to(&mut bytes);
        assert_eq!(bytes, [0x5a; 8]);
        drop(sub);
        converter.join().unwrap();
    });
    assert!(converted.load(Ordering::SeqCst));
    let err = mem.read_slice(&mut [0; 8], GuestAddress(MIB + 0x3008));
    assert!(matches!(
        private_err(&err.unwrap_err()),
        HostAccessError::Private { .. }
    ));
}

#[test]
fn raw_pointer_to_a_page_made_private_faults() {
    let mem = emulated();
    let ptr = mem.get_host_address(GuestAddress(MIB + 0x3000)).unwrap();
    mem.convert(fr(0x103, 1), PRIVATE).unwrap();
    // SAFETY: fork in a test; the child only does a volatile load and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: deliberately touching a PROT_NONE page: the child dies of SIGSEGV.
        let v = unsafe { ptr.read_volatile() };
        // SAFETY: leave the child without running the parent's atexit handlers.
        unsafe { libc::_exit(i32::from(v) + 100) };
    }
    assert!(pid > 0);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFSIGNALED(status), "child exited with {status:#x}");
    assert_eq!(libc::WTERMSIG(status), libc::SIGSEGV);
}

#[test]
fn several_ranges_convert_as_one() {
    let vm = Arc::new(RecordingAttributesVm::new());
    let mem = attributes(&vm);
    let ranges: Vec<_> = (0..8).map(|i| fr(i * 2, 1)).collect();
    let done = mem.convert_ranges(&ranges, PRIVATE).unwrap();
    assert_eq!(done.pages_changed, 8);
    // Planned per range: pages between them stay shared.
    assert_eq!(vm.call_count(), 8);
    assert!(mem.host_read(0x1000, &mut [0; 8]).is_ok());
    assert!(mem.host_read(0x2000, &mut [0; 8]).is_err());
    // All or nothing: the third range's ioctl fails, the first two are undone.
    vm.clear();
    vm.fail_after(2, libc::EINTR);
    let odd: Vec<_> = (0..8).map(|i| fr(i * 2 + 1, 1)).collect();
    let err = mem.convert_ranges(&odd, PRIVATE).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINTR));
    assert!(mem.attributes().range_is(fr(1, 1), SHARED).unwrap());
    assert!(mem.attributes().range_is(fr(3, 1), SHARED).unwrap());
    assert_eq!(
        vm.calls(),
        vec![
            (fr(1, 1), PRIVATE),
            (fr(3, 1), PRIVATE),
            (fr(3, 1), SHARED),
            (fr(1, 1), SHARED)
        ]
    );
    // A bad range anywhere fails before anything changes.
    let bad = [fr(1, 1), fr(0x10_0000, 1)];
    assert!(matches!(
        mem.convert_ranges(&bad, PRIVATE),
        Err(ConvertError::Range(_))
    ));
    assert!(mem.attributes().range_is(fr(1, 1), SHARED).unwrap());
}

#[test]
fn hugetlb_emulated_region_converts_whole_huge_pages() {
    // Needs two free 2 MiB huge pages; without them building fails with the clear error
    // (checked in backend::tests::hugetlb_error_is_clear) and this test has nothing to do.
    let built = HostSafeMemory::builder()
        .region(
            RegionSpec::new(0, 2 * HUGE_PAGE_SIZE, Flavor::EMULATED)
                .policy(ContentPolicy::Preserve)
                .hugetlb(true),
        )
        .build();
    let mem = match built {
        Ok(mem) => mem,
        Err(BuildError::Backend {
            source: e @ BackendError::HugePagesUnavailable { .. },
            ..
        }) => {
            // Straight to stderr: libtest hides `eprintln!` output of passing tests.
            let _ = std::io::Write::write_fmt(
                &mut std::io::stderr().lock(),
                format_args!("skipping hugetlb_emulated_region_converts_whole_huge_pages: {e}\n"),
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert!(mem.regions()[0].shared_memfd().unwrap().is_hugetlb());
    fill(&mem, 0, 0x1000, 0x3c);
    let err = mem.convert(fr(1, 1), PRIVATE).unwrap_err();
    assert!(
        matches!(
            err,
            ConvertError::GranuleUnaligned {
                granule: HUGE_PAGE_SIZE,
                ..
            }
        ),
        "{err}"
    );
    let huge = fr(0, HUGE_PAGE_SIZE / PAGE_SIZE);
    mem.convert(huge, PRIVATE).unwrap();
    assert!(mem.host_read(0, &mut [0; 4]).is_err());
    assert!(mem.host_read(HUGE_PAGE_SIZE, &mut [0; 4]).is_ok());
    mem.convert(huge, SHARED).unwrap();
    assert_eq!(read(&mem, 0, 0x1000), vec![0x3c; 0x1000]);
}

/// Runs `f` on a thread of its own and returns its result, or `None` if it has not
/// finished within ten seconds (it is then left blocked).
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
}

/// 8 MiB of emulated memory from 0: four lease blocks of 2 MiB.
fn four_blocks() -> Arc<HostSafeMemory> {
    let mem = HostSafeMemory::builder()
        .region(RegionSpec::new(0, 8 * MIB, Flavor::EMULATED).policy(ContentPolicy::Preserve))
        .build()
        .unwrap();
    fill(&mem, 0, 8 * MIB as usize, 0x5a);
    Arc::new(mem)
}

#[test]
fn a_held_slice_holds_back_only_conversions_near_it() {
    let mem = four_blocks();
    // A slice in the last block, as a device holds a buffer it works on.
    let slice = mem.get_slice(GuestAddress(6 * MIB + 0x1000), 16).unwrap();
    // Pages in other blocks become private while it is held, and back.
    for page in [0x000, 0x1ff, 0x200, 0x5ff] {
        let m = Arc::clone(&mem);
        let done = within_seconds(move || m.convert(fr(page, 1), PRIVATE).map(|c| c.pages_changed));
        assert_eq!(done.map(Result::unwrap), Some(1), "page {page:#x} waited");
        mem.convert(fr(page, 1), SHARED).unwrap();
    }
    // Converting a page of the slice's block waits for the slice, which stays readable,
    // its page shared, while the conversion waits.
    let (m, converted) = (Arc::clone(&mem), Arc::new(AtomicBool::new(false)));
    let flag = Arc::clone(&converted);
    let converter = std::thread::spawn(move || {
        m.convert(fr(0x700, 1), PRIVATE).unwrap();
        flag.store(true, Ordering::SeqCst);
    });
    crate::lease::tests::until_parked(mem.access_lock());
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(
        !converted.load(Ordering::SeqCst),
        "converted under a held slice"
    );
    assert!(!mem.state(Gfn(0x601)).unwrap().is_private());
    let mut bytes = [0u8; 16];
    slice.copy_to(&mut bytes);
    assert_eq!(bytes, [0x5a; 16]);
    drop(slice);
    converter.join().unwrap();
    assert!(converted.load(Ordering::SeqCst));
    assert!(mem.state(Gfn(0x700)).unwrap().is_private());
}

#[test]
fn a_conversion_waiting_for_one_block_holds_no_other() {
    let mem = four_blocks();
    // A slice across the boundary of the first two blocks holds both.
    let slice = mem.get_slice(GuestAddress(2 * MIB - 8), 16).unwrap();
    let (m, converted) = (Arc::clone(&mem), Arc::new(AtomicBool::new(false)));
    let flag = Arc::clone(&converted);
    // A page in the third block, and the slice's page in the second: it waits for the
    // slice.
    let converter = std::thread::spawn(move || {
        m.convert_ranges(&[fr(0x400, 1), fr(0x200, 1)], PRIVATE)
            .unwrap();
        flag.store(true, Ordering::SeqCst);
    });
    crate::lease::tests::until_parked(mem.access_lock());
    // While it waits, host accesses to the third block carry on: it holds none of its
    // blocks while waiting for another.
    let m = Arc::clone(&mem);
    let read = within_seconds(move || m.host_read(4 * MIB + 0x10, &mut [0; 16]).is_ok());
    assert_eq!(
        read,
        Some(true),
        "an access waited for a waiting conversion"
    );
    assert!(!converted.load(Ordering::SeqCst));
    // The slice is still shared and readable, both sides of the boundary.
    assert!(!mem.state(Gfn(0x200)).unwrap().is_private());
    let mut bytes = [0u8; 16];
    slice.copy_to(&mut bytes);
    assert_eq!(bytes, [0x5a; 16]);
    drop(slice);
    converter.join().unwrap();
    assert!(mem.state(Gfn(0x200)).unwrap().is_private());
    assert!(mem.state(Gfn(0x400)).unwrap().is_private());
    assert!(mem.host_read(2 * MIB - 8, &mut [0; 16]).is_err());
}

/// A block goes back to unchecked accesses only once none of its pages is private; a
/// failed conversion to shared leaves it checked.
#[test]
fn a_block_is_unchecked_only_while_all_its_pages_are_shared() {
    // 3 MiB and a page: a second block that is only partly guest memory.
    let calls = Arc::new(FailingSyscalls::new());
    let mem = HostSafeMemory::builder()
        .syscalls(calls.clone())
        .region(
            RegionSpec::new(0, 3 * MIB + PAGE_SIZE, Flavor::EMULATED)
                .policy(ContentPolicy::Preserve),
        )
        .build()
        .unwrap();
    let page = |n: u64| n * PAGE_SIZE;
    let refused = |gpa: u64| {
        matches!(
            mem.host_read(gpa, &mut [0; 16]),
            Err(HostAccessError::Private { .. })
        )
    };
    fill(&mem, 0, 16, 0xaa);
    mem.convert_gpa(page(3), 2 * PAGE_SIZE, PRIVATE).unwrap();
    assert!(refused(page(3)) && refused(page(4)) && !refused(page(5)));
    // One of the two private pages shared: the other is still refused.
    mem.convert_gpa(page(3), PAGE_SIZE, SHARED).unwrap();
    assert!(!refused(page(3)) && refused(page(4)));
    // A failed conversion to shared of the last one leaves it refused.
    calls.fail_after(0, libc::ENOMEM);
    assert!(mem.convert_gpa(page(4), PAGE_SIZE, SHARED).is_err());
    assert!(refused(page(4)));
    mem.convert_gpa(page(4), PAGE_SIZE, SHARED).unwrap();
    assert!(!refused(page(4)));
    assert_eq!(read(&mem, 0, 16), vec![0xaa; 16]);
    // Private again after the block was all shared: refused again, slices too.
    mem.convert_gpa(page(4), PAGE_SIZE, PRIVATE).unwrap();
    assert!(refused(page(4)));
    assert!(mem.read_slice(&mut [0; 16], GuestAddress(page(4))).is_err());
    // The partial last block, and an access crossing into it.
    let last = 3 * MIB;
    mem.convert_gpa(last, PAGE_SIZE, PRIVATE).unwrap();
    assert!(refused(last));
    assert!(refused(last - 8));
    mem.convert_gpa(last, PAGE_SIZE, SHARED).unwrap();
    assert!(!refused(last) && !refused(last - 8));
}
