// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `KVM_SET_MEMORY_ATTRIBUTES` driven by a `veil-attrs` map.

use veil_attrs::{Attributes, AttributesError, FrameRange, Gfn, PAGE_SIZE, RangeError};

use crate::guests;
use crate::layout::{self, BACKED_GPA, BACKED_SIZE, GUEST_SIZE};
use crate::testbed::sw_protected_or_skip;
use crate::vm::{Converter, Discard, Outcome, Stop, SwVm, run};

#[test]
fn only_changed_runs_reach_kvm() {
    let Some(kvm) = sw_protected_or_skip("only_changed_runs_reach_kvm") else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    layout::populate(&mut vm, true, false);
    let mut conv = Converter::new(GUEST_SIZE);
    let backed = FrameRange::from_gpa(BACKED_GPA, BACKED_SIZE).unwrap();

    let changes = conv.convert(&vm, backed, Attributes::PRIVATE, Discard::Free);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].range, backed);
    assert_eq!(conv.ioctls, 1);

    // Already private: nothing to do, and KVM is not asked.
    assert!(
        conv.convert(&vm, backed, Attributes::PRIVATE, Discard::Free)
            .is_empty()
    );
    assert_eq!(conv.ioctls, 1);

    // Holes: every odd page back to shared, one call each.
    for page in (1..backed.pages()).step_by(2) {
        let hole = FrameRange::new(Gfn(backed.start().raw() + page), 1).unwrap();
        let changes = conv.convert(&vm, hole, Attributes::empty(), Discard::Free);
        assert_eq!(changes.len(), 1);
    }
    assert_eq!(conv.ioctls, 1 + 8);
    assert_eq!(conv.map.runs(backed).unwrap().count(), 16);

    // The whole range to shared changes exactly the eight private pages left.
    let changes = conv.convert(&vm, backed, Attributes::empty(), Discard::Free);
    assert_eq!(changes.len(), 8);
    assert!(
        changes
            .iter()
            .all(|c| c.previous.is_private() && c.range.pages() == 1)
    );
    assert_eq!(conv.ioctls, 1 + 8 + 8);
    assert!(conv.map.range_is(backed, Attributes::empty()).unwrap());
}

/// Reads the first byte of the backed slot from inside the guest.
fn guest_reads_backed(vm: &SwVm, id: u64) -> Outcome {
    let mut vcpu = vm.real_mode_vcpu(id, guests::probe(), layout::segment(BACKED_GPA), |r| {
        r.rsi = 0;
        r.rax = 0;
    });
    run(&mut vcpu, |_, _| u64::MAX)
}

#[test]
fn kvm_and_veil_attrs_refuse_the_same_requests() {
    let Some(kvm) = sw_protected_or_skip("kvm_and_veil_attrs_refuse_the_same_requests") else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    layout::populate(&mut vm, true, false);
    vm.write_shared(BACKED_GPA, &[0x5a]);
    let einval = kvm_ioctls::Error::new(libc::EINVAL);

    // Attribute bits neither knows.
    for bits in [1 << 4, 1, 1 << 63] {
        assert!(matches!(
            Attributes::from_bits(bits),
            Err(AttributesError::UnknownBits { .. })
        ));
        assert_eq!(vm.set_attributes(BACKED_GPA, PAGE_SIZE, bits), Err(einval));
    }
    let private = Attributes::PRIVATE.bits();
    // Unaligned start, unaligned size, empty, wrapping.
    let bad: [(u64, u64, RangeError); 4] = [
        (
            BACKED_GPA + 0x800,
            PAGE_SIZE,
            RangeError::UnalignedAddress {
                gpa: BACKED_GPA + 0x800,
            },
        ),
        (
            BACKED_GPA,
            0x800,
            RangeError::UnalignedSize {
                gpa: BACKED_GPA,
                size: 0x800,
            },
        ),
        (BACKED_GPA, 0, RangeError::Empty { gpa: BACKED_GPA }),
        (
            u64::MAX - 0xfff,
            0x2000,
            RangeError::Overflow {
                gpa: u64::MAX - 0xfff,
                size: 0x2000,
            },
        ),
    ];
    for (gpa, size, error) in bad {
        assert_eq!(FrameRange::from_gpa(gpa, size), Err(error));
        assert_eq!(
            vm.set_attributes(gpa, size, private),
            Err(einval),
            "{gpa:#x}+{size:#x}"
        );
    }
    // None of them changed anything: the guest still reads the shared side.
    let outcome = guest_reads_backed(&vm, 0);
    assert_eq!(outcome.stop, Some(Stop::Halt));
    assert_eq!(outcome.port(0x10), [0x5a]);
}
