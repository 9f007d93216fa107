// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest sees the side its attributes select; discarding frees contents.

use veil_attrs::{Attributes, FrameRange, PAGE_SIZE};

use crate::guests;
use crate::layout::{self, BACKED_GPA, GUEST_SIZE};
use crate::testbed::sw_protected_or_skip;
use crate::vm::{Converter, Discard, Stop, SwVm, run};

/// Runs the probe guest on a new vCPU `id` against `gpa`, writing `write` when it is
/// not zero; returns (byte read first, byte read back).
fn probe(vm: &SwVm, id: u64, gpa: u64, write: u8) -> (u8, Option<u8>) {
    let mut vcpu = vm.real_mode_vcpu(id, guests::probe(), layout::segment(gpa), |r| {
        r.rsi = 0;
        r.rax = u64::from(write) << 8;
    });
    let outcome = run(&mut vcpu, |_, _| u64::MAX);
    assert_eq!(
        outcome.stop,
        Some(Stop::Halt),
        "probe of {gpa:#x}: {outcome:?}"
    );
    let first = outcome.port(0x10);
    assert_eq!(first.len(), 1, "{outcome:?}");
    (first[0], outcome.port(0x11).first().copied())
}

#[test]
fn guest_sees_the_side_its_attributes_select() {
    let Some(kvm) = sw_protected_or_skip("guest_sees_the_side_its_attributes_select") else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    layout::populate(&mut vm, true, false);
    let gpa = BACKED_GPA + 2 * PAGE_SIZE;
    let page = FrameRange::from_gpa(gpa, PAGE_SIZE).unwrap();
    let mut conv = Converter::new(GUEST_SIZE);
    vm.write_shared(gpa, &[0x5a]);
    let (private, shared) = (Attributes::PRIVATE, Attributes::empty());

    // Private: a fresh guest_memfd page reads zero; the guest's write stays private.
    conv.convert(&vm, page, private, Discard::Keep);
    assert_eq!(probe(&vm, 0, gpa, 0x42), (0x00, Some(0x42)));
    assert_eq!(
        vm.shared_byte(gpa),
        0x5a,
        "a private write reached the shared side"
    );

    // Shared again: the host's byte. Private again without discarding: the guest's.
    conv.convert(&vm, page, shared, Discard::Keep);
    assert_eq!(probe(&vm, 1, gpa, 0), (0x5a, None));
    conv.convert(&vm, page, private, Discard::Keep);
    assert_eq!(probe(&vm, 2, gpa, 0), (0x42, None));

    // To shared with discarding punches the private page: private again, it reads zero.
    conv.convert(&vm, page, shared, Discard::Free);
    assert_eq!(probe(&vm, 3, gpa, 0), (0x5a, None));
    conv.convert(&vm, page, private, Discard::Keep);
    assert_eq!(probe(&vm, 4, gpa, 0), (0x00, None));

    // To private with discarding drops the shared page: shared again, it reads zero.
    conv.convert(&vm, page, shared, Discard::Keep);
    conv.convert(&vm, page, private, Discard::Free);
    assert_eq!(vm.shared_byte(gpa), 0x00);
    conv.convert(&vm, page, shared, Discard::Keep);
    assert_eq!(probe(&vm, 5, gpa, 0), (0x00, None));
}
