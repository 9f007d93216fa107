// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-memory's memory slots on real KVM: registered all or none, removed, registered
//! again, and refusals that name the slot and its guest-physical range.

use std::mem::ManuallyDrop;

use kvm_ioctls::{Kvm, VmFd};
use veil_memory::veil_attrs::FrameRange;
use veil_memory::{
    ContentPolicy, Flavor, HostCaps, HostSafeMemory, KvmSideMapping, MemslotError, RegionSpec,
};
use veil_tests::kvm_or_skip;

const MIB: u64 = 1 << 20;

/// Guest memory of 1 MiB regions at `bases`, each in `flavor`. Held in `ManuallyDrop`:
/// a failing assertion then leaks it rather than unmapping it under the VM.
fn memory(
    vm: &VmFd,
    mapping: KvmSideMapping,
    flavor: Flavor,
    bases: &[u64],
) -> ManuallyDrop<HostSafeMemory> {
    let mut b = HostSafeMemory::builder()
        .guest_memfd_source(vm)
        .kvm_side_mapping(mapping);
    for &base in bases {
        b = b.region(RegionSpec::new(base, MIB, flavor).policy(ContentPolicy::Preserve));
    }
    ManuallyDrop::new(b.build().unwrap())
}

fn range(gpa: u64) -> FrameRange {
    FrameRange::from_gpa(gpa, MIB).unwrap()
}

#[test]
fn memslots_register_remove_and_register_again() {
    if !kvm_or_skip("memslots_register_remove_and_register_again") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    // guest_memfd slots where the host has mmap-able guest_memfd: KVM binds a guest_memfd
    // range to one slot at a time, so registering again also shows the removal unbound it.
    let (flavor, vm_type) = match caps.require(Flavor::IN_PLACE) {
        Ok(f) => (Flavor::IN_PLACE, f.vm_type.unwrap_or(0)),
        Err(e) => {
            assert!(
                !veil_tests::required(veil_tests::REQUIRE_IN_PLACE),
                "{e}, and {}=1 forbids going without it",
                veil_tests::REQUIRE_IN_PLACE
            );
            eprintln!("memslots_register_remove_and_register_again: emulated regions only");
            (Flavor::EMULATED, 0)
        }
    };
    let vm = kvm.create_vm_with_type(vm_type.into()).unwrap();
    let mapping = caps.kvm_side_mapping.mapping;
    let mem = memory(&vm, mapping, flavor, &[0, 16 * MIB]);
    assert_eq!(mem.memslots(0).len(), 2);

    // SAFETY: every memory here outlives `vm`: they are dropped after it at the end, and
    // leaked if the test fails first.
    unsafe { mem.register_memslots(&vm, 0) }.unwrap();

    // The same guest-physical ranges under other numbers: KVM refuses the first.
    let same = memory(&vm, mapping, Flavor::EMULATED, &[0, 16 * MIB]);
    // SAFETY: as above.
    let err = unsafe { same.register_memslots(&vm, 10) }.unwrap_err();
    assert!(
        matches!(err, MemslotError::Register { slot: 10, range: r, .. } if r == range(0)),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(libc::EEXIST));
    assert_eq!(
        err.to_string(),
        "cannot register memory slot 10 for guest-physical [0x0, 0x100000)"
    );

    // A free range, then a taken one: the second slot is named, the first taken back.
    let partly = memory(&vm, mapping, Flavor::EMULATED, &[8 * MIB, 16 * MIB]);
    // SAFETY: as above.
    let err = unsafe { partly.register_memslots(&vm, 20) }.unwrap_err();
    assert!(
        matches!(err, MemslotError::Register { slot: 21, range: r, .. } if r == range(16 * MIB)),
        "{err:?}"
    );
    let probe = memory(&vm, mapping, Flavor::EMULATED, &[8 * MIB]);
    // SAFETY: as above. Slot 20 would still cover 8 MiB if it had been left behind.
    unsafe { probe.register_memslots(&vm, 30) }.unwrap();
    probe.remove_memslots(&vm, 30).unwrap();

    // Removed, the ranges (and guest_memfd bindings) are free for other slots and back.
    mem.remove_memslots(&vm, 0).unwrap();
    // SAFETY: as above.
    unsafe { same.register_memslots(&vm, 10) }.unwrap();
    same.remove_memslots(&vm, 10).unwrap();
    // SAFETY: as above.
    unsafe { mem.register_memslots(&vm, 0) }.unwrap();
    mem.remove_memslots(&vm, 0).unwrap();

    // Removing slots that are not there: KVM's EINVAL, for the first slot named.
    let err = mem.remove_memslots(&vm, 0).unwrap_err();
    assert!(
        matches!(err, MemslotError::Remove { slot: 0, range: r, .. } if r == range(0)),
        "{err:?}"
    );
    assert_eq!(err.errno(), Some(libc::EINVAL));

    // Numbers that would wrap are refused before KVM is asked.
    // SAFETY: as above; nothing is registered.
    let err = unsafe { mem.register_memslots(&vm, u32::MAX) }.unwrap_err();
    assert!(matches!(err, MemslotError::SlotNumbers { regions: 2, .. }));

    drop(vm);
    for m in [mem, same, partly, probe] {
        drop(ManuallyDrop::into_inner(m));
    }
}
