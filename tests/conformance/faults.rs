// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory fault exits: a private access KVM cannot back stops the vCPU with the exact
//! range, and converting the range to shared lets the same access complete.

use kvm_bindings::KVM_MEMORY_EXIT_FLAG_PRIVATE;
use veil_attrs::{Attributes, FrameRange, PAGE_SIZE};

use crate::guests;
use crate::layout::{self, BACKED_GPA, BACKED_SLOT, GUEST_SIZE, PLAIN_GPA};
use crate::testbed::sw_protected_or_skip;
use crate::vm::{Converter, Discard, Stop, SwVm, run};

/// The exit a private access to the page at `gpa` must produce.
fn private_fault(gpa: u64) -> Option<Stop> {
    Some(Stop::MemoryFault {
        flags: u64::from(KVM_MEMORY_EXIT_FLAG_PRIVATE),
        gpa,
        size: PAGE_SIZE,
    })
}

#[test]
fn private_access_without_guest_memfd_exits_with_exact_range() {
    let Some(kvm) =
        sw_protected_or_skip("private_access_without_guest_memfd_exits_with_exact_range")
    else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    layout::populate(&mut vm, false, true);
    let target = PLAIN_GPA + 3 * PAGE_SIZE;
    vm.write_shared(target, &[0x6b]);
    let mut conv = Converter::new(GUEST_SIZE);
    let page = FrameRange::from_gpa(target, PAGE_SIZE).unwrap();
    conv.convert(&vm, page, Attributes::PRIVATE, Discard::Keep);

    let mut vcpu = vm.real_mode_vcpu(0, guests::probe(), layout::segment(target), |r| {
        r.rsi = 0;
        r.rax = 0;
    });
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(outcome.stop, private_fault(target));
    assert!(outcome.out.is_empty(), "the read must not complete");

    // The range is already private: converting it again changes nothing, so re-entering
    // the guest only repeats the fault.
    assert!(
        conv.convert(&vm, page, Attributes::PRIVATE, Discard::Keep)
            .is_empty()
    );
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(outcome.stop, private_fault(target));

    // Converted to shared, the same read completes and sees the shared side.
    conv.convert(&vm, page, Attributes::empty(), Discard::Keep);
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(outcome.stop, Some(Stop::Halt));
    assert_eq!(outcome.port(0x10), [0x6b]);
}

#[test]
fn private_access_to_deleted_memslot_exits_with_exact_range() {
    let Some(kvm) =
        sw_protected_or_skip("private_access_to_deleted_memslot_exits_with_exact_range")
    else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    layout::populate(&mut vm, true, false);
    let target = BACKED_GPA + PAGE_SIZE;
    let page = FrameRange::from_gpa(target, PAGE_SIZE).unwrap();
    let mut conv = Converter::new(GUEST_SIZE);
    conv.convert(&vm, page, Attributes::PRIVATE, Discard::Keep);

    // The page works while its slot exists.
    let mut vcpu = vm.real_mode_vcpu(0, guests::probe(), layout::segment(target), |r| {
        r.rsi = 0;
        r.rax = 0x42 << 8;
    });
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(outcome.stop, Some(Stop::Halt));
    assert_eq!(
        (outcome.port(0x10), outcome.port(0x11)),
        (vec![0], vec![0x42])
    );

    vm.delete_slot(BACKED_SLOT);
    let mut vcpu = vm.real_mode_vcpu(1, guests::probe(), layout::segment(target), |r| {
        r.rsi = 0;
        r.rax = 0;
    });
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(outcome.stop, private_fault(target));
    assert!(outcome.out.is_empty());

    // Back as a slot without a private side, the page is still private and unbacked.
    vm.add_slot(BACKED_SLOT, BACKED_GPA, layout::BACKED_SIZE, false);
    vm.write_shared(target, &[0x33]);
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(outcome.stop, private_fault(target));

    // Shared, the access completes and reads the new slot's shared side.
    conv.convert(&vm, page, Attributes::empty(), Discard::Keep);
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(outcome.stop, Some(Stop::Halt));
    assert_eq!(outcome.port(0x10), [0x33]);
}
