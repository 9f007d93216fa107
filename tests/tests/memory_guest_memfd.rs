// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-memory on real KVM: guest_memfd backends, in-place conversions, memory slots and
//! the capability probe.

use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE};
use veil_memory::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use veil_memory::{
    BackendError, ContentPolicy, ConvertError, Flavor, GUEST_MEMFD_FLAG_INIT_SHARED,
    GUEST_MEMFD_FLAG_MMAP, GuestMemfd, HostAccessError, HostCaps, HostSafeMemory,
    RecordingAttributesVm, RegionSpec, host_access_error,
};
use veil_tests::kvm_or_skip;

const MIB: u64 = 1 << 20;
const PRIVATE: Attributes = Attributes::PRIVATE;
const SHARED: Attributes = Attributes::empty();

fn fr(start: u64, pages: u64) -> FrameRange {
    FrameRange::new(Gfn(start), pages).unwrap()
}

/// A VM of the type `pick` chooses from the host's capabilities, and those
/// capabilities, or `None` when there is no KVM (the test then skips, or fails under
/// VEIL_REQUIRE_KVM=1 via `kvm_or_skip`).
fn vm_by(test: &str, pick: fn(&HostCaps) -> u32) -> Option<(Kvm, VmFd, HostCaps)> {
    if !kvm_or_skip(test) {
        return None;
    }
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    let vm = kvm.create_vm_with_type(pick(&caps).into()).unwrap();
    Some((kvm, vm, caps))
}

/// [`vm_by`] with a VM type that offers guest_memfd.
fn vm(test: &str) -> Option<(Kvm, VmFd, HostCaps)> {
    vm_by(test, gmem_vm_type)
}

/// The first VM type that offers guest_memfd (the default type on this project's
/// machines, the software-protected type on Linux 6.12), or the default type.
fn gmem_vm_type(caps: &HostCaps) -> u32 {
    caps.probe
        .vm_types
        .iter()
        .find(|t| t.guest_memfd && t.create_error.is_none())
        .map_or(0, |t| t.vm_type)
}

/// As [`vm`], for tests of the in-place flavor: they skip, with the reason, on hosts
/// without mmap-able guest_memfd (such as the Linux 6.12 software-protected testbed).
/// `capability_probe_agrees_with_what_works` checks that the probe says so correctly.
fn in_place_vm(test: &str) -> Option<(Kvm, VmFd, HostCaps)> {
    // The VM type whose guest_memfd maps (on Linux 7.3 the default type, not the first
    // one with guest_memfd at all).
    let in_place_type = |caps: &HostCaps| {
        caps.require(Flavor::IN_PLACE)
            .ok()
            .and_then(|f| f.vm_type)
            .unwrap_or(0)
    };
    let (kvm, vm, caps) = vm_by(test, in_place_type)?;
    if let Err(e) = caps.require(Flavor::IN_PLACE) {
        veil_tests::skip_unless_required(test, &e.to_string(), veil_tests::REQUIRE_IN_PLACE);
        return None;
    }
    Some((kvm, vm, caps))
}

/// In-place memory on guest_memfd (flags MMAP | INIT_SHARED): [0, 2) MiB preserving,
/// [2, 4) MiB discarding.
fn in_place(vm: &VmFd, caps: &HostCaps) -> HostSafeMemory {
    caps.require(Flavor::IN_PLACE)
        .expect("in-place flavor on this host");
    HostSafeMemory::builder()
        .guest_memfd_source(vm)
        .kvm_side_mapping(caps.kvm_side_mapping.mapping)
        .region(RegionSpec::new(0, 2 * MIB, Flavor::IN_PLACE).policy(ContentPolicy::Preserve))
        .region(RegionSpec::new(2 * MIB, 2 * MIB, Flavor::IN_PLACE))
        .build()
        .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ seed).collect()
}

#[test]
fn host_reads_of_private_memory_fail_and_return_no_bytes() {
    let Some((_kvm, vm, caps)) =
        in_place_vm("host_reads_of_private_memory_fail_and_return_no_bytes")
    else {
        return;
    };
    let mem = in_place(&vm, &caps);
    mem.write_slice(&pattern(0x4000, 1), GuestAddress(0x10_0000))
        .unwrap();
    mem.convert(fr(0x101, 2), PRIVATE).unwrap();
    for (addr, len) in [(0x10_1000, 0x1000), (0x10_0ff0, 0x20), (0x10_2ff8, 0x10)] {
        let mut buf = vec![0xeeu8; len];
        let err = mem.read_slice(&mut buf, GuestAddress(addr)).unwrap_err();
        assert!(
            buf.iter().all(|&b| b == 0xee),
            "bytes came back from {addr:#x}"
        );
        match host_access_error(&err) {
            Some(HostAccessError::Private {
                addr: a, private, ..
            }) => {
                assert_eq!(*a, addr);
                assert!(fr(0x101, 2).contains_range(private));
            }
            other => panic!("{addr:#x}: {other:?} from {err}"),
        }
        assert!(matches!(
            mem.host_read(addr, &mut buf),
            Err(HostAccessError::Private { .. })
        ));
    }
    // The shared neighbours still read.
    let mut buf = vec![0; 0x1000];
    mem.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(buf, pattern(0x4000, 1)[..0x1000]);
}

#[test]
fn raw_host_access_to_a_private_page_faults() {
    let Some((_kvm, vm, caps)) = in_place_vm("raw_host_access_to_a_private_page_faults") else {
        return;
    };
    let mem = in_place(&vm, &caps);
    let shared = mem.get_host_address(GuestAddress(0x30_0000)).unwrap();
    let private = mem.get_host_address(GuestAddress(0x30_1000)).unwrap();
    mem.convert(fr(0x301, 1), PRIVATE).unwrap();
    let probe = |ptr: *mut u8| {
        // SAFETY: fork in a test; the child only loads one byte and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: a deliberate raw load; on a PROT_NONE page the child dies.
            let v = unsafe { ptr.read_volatile() };
            // SAFETY: leave without running the parent's exit handlers.
            unsafe { libc::_exit(i32::from(v != 0)) };
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        status
    };
    let st = probe(private);
    assert!(
        libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGSEGV,
        "status {st:#x}"
    );
    let st = probe(shared);
    assert!(libc::WIFEXITED(st), "shared page: status {st:#x}");
}

#[test]
fn discard_zeroes_converted_pages_and_leaves_every_neighbouring_byte() {
    let Some((_kvm, vm, caps)) = in_place_vm("discard_zeroes_converted_pages") else {
        return;
    };
    let mem = in_place(&vm, &caps);
    let base = 2 * MIB;
    let before = pattern(2 * MIB as usize, 7);
    mem.write_slice(&before, GuestAddress(base)).unwrap();
    // Two separate runs, one of them at the region's first page.
    for (start, pages) in [(0x200, 1), (0x233, 5)] {
        let done = mem.convert(fr(start, pages), PRIVATE).unwrap();
        assert_eq!(done.bytes_discarded, pages * PAGE_SIZE);
        mem.convert(fr(start, pages), SHARED).unwrap();
    }
    let mut after = vec![0; before.len()];
    mem.read_slice(&mut after, GuestAddress(base)).unwrap();
    let zeroed = |off: usize| {
        let page = off as u64 / PAGE_SIZE + 0x200;
        page == 0x200 || (0x233..0x238).contains(&page)
    };
    for (i, (&a, &b)) in after.iter().zip(&before).enumerate() {
        if zeroed(i) {
            assert_eq!(a, 0, "byte {i:#x} of a converted page");
        } else {
            assert_eq!(a, b, "neighbouring byte {i:#x} changed");
        }
    }
    // The preserving region next door was not touched either.
    let mut last = [0u8; 16];
    mem.read_slice(&mut last, GuestAddress(base - 16)).unwrap();
    assert_eq!(last, [0; 16]);
}

#[test]
fn preserve_keeps_contents_across_a_round_trip() {
    let Some((_kvm, vm, caps)) = in_place_vm("preserve_keeps_contents_across_a_round_trip") else {
        return;
    };
    let mem = in_place(&vm, &caps);
    let data = pattern(2 * MIB as usize, 3);
    mem.write_slice(&data, GuestAddress(0)).unwrap();
    for (start, pages) in [(0, 0x200), (0x10, 1), (0x1ff, 1), (0x80, 0x40)] {
        let done = mem.convert(fr(start, pages), PRIVATE).unwrap();
        assert_eq!(done.bytes_discarded, 0);
        mem.convert(fr(start, pages), SHARED).unwrap();
    }
    let mut back = vec![0; data.len()];
    mem.read_slice(&mut back, GuestAddress(0)).unwrap();
    assert!(
        back == data,
        "contents changed across a Preserve round trip"
    );
}

#[test]
fn guest_memfd_backend_checks_and_discards() {
    let Some((_kvm, vm, caps)) = vm("guest_memfd_backend_checks_and_discards") else {
        return;
    };
    let vm_type = gmem_vm_type(&caps);
    let flags = caps
        .probe
        .vm_types
        .iter()
        .find(|t| t.vm_type == vm_type)
        .map_or(0, |t| t.guest_memfd_flags);
    assert!(matches!(
        GuestMemfd::create(&vm, 0x1000, 4),
        Err(BackendError::UnknownFlags { .. })
    ));
    assert!(matches!(
        GuestMemfd::create(&vm, 0x1800, 0),
        Err(BackendError::BadSize { .. })
    ));
    let plain = GuestMemfd::create(&vm, 4 * PAGE_SIZE, 0).unwrap();
    assert!(!plain.is_mappable());
    plain.allocate(0, 4 * PAGE_SIZE).unwrap();
    plain.discard(PAGE_SIZE, PAGE_SIZE).unwrap();
    assert!(matches!(
        plain.discard(3 * PAGE_SIZE, 2 * PAGE_SIZE),
        Err(BackendError::OutOfRange { .. })
    ));
    let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
    if flags & want == want {
        let g = GuestMemfd::create(&vm, 4 * PAGE_SIZE, want).unwrap();
        assert!(g.is_mappable());
        assert_eq!((g.size(), g.flags()), (4 * PAGE_SIZE, want));
    } else {
        assert!(matches!(
            GuestMemfd::create(&vm, 4 * PAGE_SIZE, want),
            Err(BackendError::UnsupportedFlags { .. })
        ));
    }
}

#[test]
fn memory_slots_register_with_kvm() {
    let Some((_kvm, vm, caps)) = in_place_vm("memory_slots_register_with_kvm") else {
        return;
    };
    let mem = in_place(&vm, &caps);
    let slots = mem.memslots(0);
    assert_eq!(slots[0].flags, kvm_bindings::KVM_MEM_GUEST_MEMFD);
    // SAFETY: `mem` outlives `vm` (declared before it is dropped at the end).
    unsafe { mem.register_memslots(&vm, 0) }.unwrap();
    // Emulated and attributes regions (a guest_memfd without MMAP for the private side)
    // register too.
    let fake = Arc::new(RecordingAttributesVm::new());
    let other = HostSafeMemory::builder()
        .guest_memfd_source(&vm)
        .attributes_vm(fake)
        .region(RegionSpec::new(16 * MIB, MIB, Flavor::EMULATED))
        .region(RegionSpec::new(32 * MIB, MIB, Flavor::ATTRIBUTES))
        .build()
        .unwrap();
    // SAFETY: as above.
    unsafe { other.register_memslots(&vm, 2) }.unwrap();
    // Registering the same guest range again under another slot number overlaps.
    // SAFETY: as above; KVM rejects it.
    assert!(unsafe { other.register_memslots(&vm, 10) }.is_err());
    drop(vm);
}

#[test]
fn attributes_flavor_on_real_guest_memfd() {
    // The VM type with memory attributes where there is one (on Linux 7.3 the default
    // type has guest_memfd but no attributes), any with guest_memfd otherwise.
    let attributes_type = |caps: &HostCaps| {
        caps.require(Flavor::ATTRIBUTES)
            .ok()
            .and_then(|f| f.vm_type)
            .unwrap_or_else(|| gmem_vm_type(caps))
    };
    let Some((_kvm, vm, caps)) = vm_by("attributes_flavor_on_real_guest_memfd", attributes_type)
    else {
        return;
    };
    let vm = Arc::new(vm);
    // With the recording fake: the conversion discards in the real guest_memfd.
    let fake = Arc::new(RecordingAttributesVm::new());
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(vm.as_ref())
        .attributes_vm(fake.clone())
        .region(RegionSpec::new(0, MIB, Flavor::ATTRIBUTES))
        .build()
        .unwrap();
    let gmem = mem.regions()[0].guest_memfd().unwrap();
    gmem.allocate(0, MIB).unwrap();
    mem.convert(fr(0, 4), PRIVATE).unwrap();
    mem.convert(fr(0, 4), SHARED).unwrap();
    assert_eq!(fake.call_count(), 2);
    assert_eq!(mem.stats().discards, 2);

    // With the real VM ioctl: where the host lacks KVM_SET_MEMORY_ATTRIBUTES (ENOTTY or
    // EINVAL on a default VM), the conversion fails and changes nothing; where it has
    // it, it converts.
    let real = HostSafeMemory::builder()
        .guest_memfd_source(vm.as_ref())
        .attributes_vm(vm.clone())
        .region(RegionSpec::new(0, MIB, Flavor::ATTRIBUTES))
        .build()
        .unwrap();
    real.host_write(0, &[9; 16]).unwrap();
    let result = real.convert(fr(0, 1), PRIVATE);
    if caps.require(Flavor::ATTRIBUTES).is_ok() {
        result.unwrap();
        assert!(real.host_read(0, &mut [0; 16]).is_err());
    } else {
        let err = result.unwrap_err();
        assert!(matches!(err, ConvertError::Step { .. }), "{err}");
        assert!(err.errno().is_some(), "{err:?}");
        assert!(real.attributes().range_is(fr(0, 256), SHARED).unwrap());
        let mut back = [0; 16];
        real.host_read(0, &mut back).unwrap();
        assert_eq!(back, [9; 16], "a failed conversion discarded contents");
    }
}

#[test]
fn capability_probe_agrees_with_what_works() {
    let Some((kvm, vm, caps)) = vm("capability_probe_agrees_with_what_works") else {
        return;
    };
    assert_eq!(caps.probe.api_version, 12);
    assert!(caps.require(Flavor::EMULATED).is_ok());
    assert_eq!(caps.probe.vm_types[0].vm_type, 0);
    // Each VM type's flags are what its guest_memfds take, and in-place is claimed, with
    // a type that has them, exactly when one can create mmap-able, initially shared ones.
    let want = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
    let mut can = Vec::new();
    for t in caps
        .probe
        .vm_types
        .iter()
        .filter(|t| t.create_error.is_none())
    {
        let vm_t = kvm.create_vm_with_type(t.vm_type.into()).unwrap();
        let created = GuestMemfd::create(&vm_t, MIB, want).is_ok();
        assert_eq!(
            created,
            t.guest_memfd && t.guest_memfd_flags & want == want,
            "{t:?}"
        );
        if created {
            can.push(t.vm_type);
        }
    }
    let in_place = caps.require(Flavor::IN_PLACE).ok().and_then(|f| f.vm_type);
    assert_eq!(
        in_place.is_some(),
        !can.is_empty() && caps.probe.user_memory2
    );
    assert!(
        in_place.is_none_or(|t| can.contains(&t)),
        "{in_place:?} {can:?}"
    );
    if let Err(e) = caps.require(Flavor::ATTRIBUTES) {
        assert!(e.to_string().contains("KVM_CAP"), "{e}");
    }
    // KVM's instruction emulator needs userspace_addr on every host so far
    // (see KvmSideMapping).
    assert_eq!(
        caps.kvm_side_mapping.mapping,
        veil_memory::KvmSideMapping::Separate
    );
    assert_eq!(vm.check_extension_raw(9999), 0);
}
