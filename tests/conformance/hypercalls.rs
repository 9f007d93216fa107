// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `KVM_HC_MAP_GPA_RANGE` from a guest's `vmmcall` reaches the host as
//! `KVM_EXIT_HYPERCALL`, and the host's answer reaches the guest.

use kvm_bindings::{KVM_CAP_EXIT_HYPERCALL, kvm_enable_cap};
use veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE};

use crate::guests;
use crate::layout::{self, BACKED_GPA, GUEST_SIZE};
use crate::testbed::sw_protected_or_skip;
use crate::vm::{
    Converter, Discard, KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED, Outcome, Stop, SwVm, run,
};

/// `KVM_EINVAL` and `KVM_ENOSYS` (include/uapi/linux/kvm_para.h), as a 32-bit guest
/// sees their negation in `%eax`.
const GUEST_EINVAL: u32 = (-22i32) as u32;
const GUEST_ENOSYS: u32 = (-1000i32) as u32;

/// Bits of the MAP_GPA_RANGE attribute word a host understands: the page size hint
/// (bits 0-3) and ENCRYPTED.
const KNOWN_MAP_BITS: u64 = 0xf | KVM_MAP_GPA_RANGE_ENCRYPTED;

fn enable_exits(vm: &SwVm) {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_EXIT_HYPERCALL,
        ..Default::default()
    };
    cap.args[0] = 1 << KVM_HC_MAP_GPA_RANGE;
    vm.vm
        .enable_cap(&cap)
        .expect("KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)");
}

/// Runs `map_gpa_range.s` with the given hypercall registers on a new vCPU `id`.
fn hypercall(
    vm: &SwVm,
    id: u64,
    (gpa, pages, attrs): (u64, u64, u64),
    answer: impl FnMut(u64, [u64; 3]) -> u64,
) -> (Outcome, u32) {
    let mut vcpu = vm.real_mode_vcpu(id, guests::map_gpa_range(), 0, |r| {
        r.rax = KVM_HC_MAP_GPA_RANGE;
        r.rbx = gpa;
        r.rcx = pages;
        r.rdx = attrs;
    });
    let outcome = run(&mut vcpu, answer);
    assert_eq!(outcome.stop, Some(Stop::Halt), "{outcome:?}");
    let eax: [u8; 4] = outcome
        .port(0x12)
        .try_into()
        .unwrap_or_else(|_| panic!("no 4-byte result on port 0x12: {outcome:?}"));
    (outcome, u32::from_le_bytes(eax))
}

#[test]
fn map_gpa_range_reaches_the_host_and_its_answer_the_guest() {
    let Some(kvm) = sw_protected_or_skip("map_gpa_range_reaches_the_host_and_its_answer_the_guest")
    else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    layout::populate(&mut vm, true, false);
    enable_exits(&vm);
    let mut conv = Converter::new(GUEST_SIZE);

    // The host decodes the request with veil-attrs and converts; the guest reads 0.
    let mut serve = |nr: u64, [gpa, pages, attrs]: [u64; 3]| -> u64 {
        assert_eq!(nr, KVM_HC_MAP_GPA_RANGE);
        let Some(range) = Gfn::from_gpa(gpa).and_then(|g| FrameRange::new(g, pages).ok()) else {
            return u64::from(GUEST_EINVAL);
        };
        if attrs & !KNOWN_MAP_BITS != 0 {
            return u64::from(GUEST_EINVAL);
        }
        let to = if attrs & KVM_MAP_GPA_RANGE_ENCRYPTED != 0 {
            Attributes::PRIVATE
        } else {
            Attributes::empty()
        };
        conv.convert(&vm, range, to, Discard::Free);
        0
    };
    let request = (BACKED_GPA + PAGE_SIZE, 2, KVM_MAP_GPA_RANGE_ENCRYPTED);
    let (outcome, eax) = hypercall(&vm, 0, request, &mut serve);
    assert_eq!(
        outcome.hypercalls,
        [(KVM_HC_MAP_GPA_RANGE, [request.0, request.1, request.2])]
    );
    assert_eq!(eax, 0);

    // Unknown attribute bits: the host refuses, the guest reads -EINVAL.
    let bad = (
        BACKED_GPA + PAGE_SIZE,
        2,
        KVM_MAP_GPA_RANGE_ENCRYPTED | 1 << 5,
    );
    let (outcome, eax) = hypercall(&vm, 1, bad, &mut serve);
    assert_eq!(outcome.hypercalls.len(), 1);
    assert_eq!(eax, GUEST_EINVAL);

    let converted = FrameRange::from_gpa(request.0, 2 * PAGE_SIZE).unwrap();
    assert!(conv.map.range_is(converted, Attributes::PRIVATE).unwrap());
    assert_eq!(conv.map.runs(conv.map.whole()).unwrap().count(), 3);
    assert_eq!(conv.ioctls, 1);
}

#[test]
fn malformed_map_gpa_range_is_answered_by_kvm_itself() {
    let Some(kvm) = sw_protected_or_skip("malformed_map_gpa_range_is_answered_by_kvm_itself")
    else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    layout::populate(&mut vm, true, false);
    let never = |nr, args| panic!("unexpected hypercall exit {nr} {args:x?}");

    // Before the host enables the exit, KVM answers ENOSYS.
    let request = (BACKED_GPA, 1, KVM_MAP_GPA_RANGE_ENCRYPTED);
    let (_, eax) = hypercall(&vm, 0, request, never);
    assert_eq!(eax, GUEST_ENOSYS);

    // With it enabled, an unaligned address or no pages never leave KVM.
    enable_exits(&vm);
    for (bad, id) in [(BACKED_GPA + 0x800, 1), (BACKED_GPA, 0)]
        .into_iter()
        .zip(1..)
    {
        let (outcome, eax) = hypercall(&vm, id, (bad.0, bad.1, KVM_MAP_GPA_RANGE_ENCRYPTED), never);
        assert!(outcome.hypercalls.is_empty());
        assert_eq!(eax, GUEST_EINVAL, "{bad:x?}");
    }
}
