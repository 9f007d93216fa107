// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The scenarios of the kernel selftest `private_mem_kvm_exits_test`, through veil: a
//! private access KVM cannot back (no guest_memfd in the memslot, or no memslot) is a
//! memory fault exit that veil-vcpu decodes with the exact range and the private flag.
//! Converting cannot help (the range is already private), so veil stops the VM with an
//! error naming the range instead of re-entering the guest forever; once the host makes
//! the access possible, the same access completes.

use veil_memory::HostAccessError;
use veil_memory::veil_attrs::{Attributes, FrameRange, PAGE_SIZE};
use veil_vcpu::{Access, ExitKind, FaultPolicy, RunError, StopReason, Vcpu, VmReport};

use crate::guests;
use crate::testbed::sw_protected_or_skip;
use crate::veil_vm::{Handlers, VeilVm};

/// Region 0 holds the real-mode guest; region 1 has a private side; region 2's memslot
/// is registered without one.
const REGIONS: [(u64, u64); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x2_0000, 0x1_0000)];
const BACKED: usize = 1;
const UNBACKED: usize = 2;

/// A VM with [`REGIONS`]; region 2's memslot has no guest_memfd when `unbacked`.
fn vm(kvm: kvm_ioctls::Kvm, unbacked: bool) -> VeilVm {
    let vm = VeilVm::new(kvm, &REGIONS);
    if !unbacked {
        vm.register_all();
        return vm;
    }
    for index in 0..REGIONS.len() {
        let mut slot = vm.memslot(index);
        if index == UNBACKED {
            slot.flags = 0;
            slot.guest_memfd = 0;
            slot.guest_memfd_offset = 0;
        }
        vm.set_memslot(slot);
    }
    vm
}

/// vCPU `id` running `probe.s` against `gpa`, writing `write` when it is not zero.
fn probe(vm: &VeilVm, id: u64, gpa: u64, write: u8) -> Vcpu {
    vm.real_mode_vcpu(
        id,
        guests::probe(),
        guests::LOAD_GPA,
        (gpa >> 4) as u16,
        |r| {
            r.rsi = 0;
            r.rax = u64::from(write) << 8;
        },
    )
}

/// Checks that `report` is veil stopping the VM on an unfixable private fault on
/// exactly `page`, after entering the guest twice, and hands back the vCPU.
fn expect_unfixable(report: VmReport, page: FrameRange) -> Vcpu {
    match &report.reason {
        StopReason::Error { vcpu: 0, error } => match error.as_ref() {
            RunError::FaultNotFixable { range, access } => {
                assert_eq!((*range, *access), (page, Access::Private));
            }
            other => panic!("expected an unfixable fault on {page}, got {other}"),
        },
        other => panic!("expected an unfixable fault on {page}, got {other}"),
    }
    assert!(
        report.reason.to_string().contains(&page.to_string()),
        "the error names the range: {}",
        report.reason
    );
    // One re-entry in case another vCPU converted meanwhile, then the error.
    assert_eq!(report.stats().count(ExitKind::MemoryFault), 2);
    let mut vcpus = report.vcpus;
    vcpus
        .pop()
        .and_then(|r| r.vcpu)
        .expect("the vCPU comes back")
}

fn expect_halted(report: &VmReport) {
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "expected the guest to halt, got {}",
        report.reason
    );
}

#[test]
fn veil_stops_on_private_access_without_guest_memfd() {
    let Some(kvm) = sw_protected_or_skip("veil_stops_on_private_access_without_guest_memfd") else {
        return;
    };
    let vm = vm(kvm, true);
    let target = REGIONS[UNBACKED].0 + 3 * PAGE_SIZE;
    let page = FrameRange::from_gpa(target, PAGE_SIZE).unwrap();
    vm.mem.convert(page, Attributes::PRIVATE).unwrap();

    let handlers = Handlers::new(&vm, None);
    let report = handlers.run(
        vec![probe(&vm, 0, target, 0)],
        FaultPolicy::ConvertImplicitly,
    );
    let vcpu = expect_unfixable(report, page);
    assert!(handlers.reports().is_empty(), "the read never completed");
    assert!(vm.mem.state(page.start()).unwrap().is_private());

    // As the selftest does: the host converts the range to shared, and the same read,
    // re-executed, completes.
    vm.mem.convert(page, Attributes::empty()).unwrap();
    vm.mem.host_write(target, &[0x6b]).unwrap();
    let report = handlers.run(vec![vcpu], FaultPolicy::ConvertImplicitly);
    expect_halted(&report);
    assert_eq!(handlers.reports(), [0x6b]);
}

#[test]
fn veil_stops_on_private_access_to_deleted_memslot() {
    let Some(kvm) = sw_protected_or_skip("veil_stops_on_private_access_to_deleted_memslot") else {
        return;
    };
    let vm = vm(kvm, false);
    let target = REGIONS[BACKED].0 + PAGE_SIZE;
    let page = FrameRange::from_gpa(target, PAGE_SIZE).unwrap();
    vm.mem.convert(page, Attributes::PRIVATE).unwrap();
    let handlers = Handlers::new(&vm, None);

    // With its memslot the private page works, and the host cannot read it.
    let report = handlers.run(vec![probe(&vm, 0, target, 0x42)], FaultPolicy::Refuse);
    expect_halted(&report);
    assert_eq!(handlers.reports(), [0x00, 0x42]);
    assert!(matches!(
        vm.mem.host_read(target, &mut [0]),
        Err(HostAccessError::Private { private, .. }) if private == page
    ));

    let slot = vm.memslot(BACKED);
    vm.set_memslot(kvm_bindings::kvm_userspace_memory_region2 {
        memory_size: 0,
        ..slot
    });
    let report = handlers.run(
        vec![probe(&vm, 1, target, 0)],
        FaultPolicy::ConvertImplicitly,
    );
    let vcpu = expect_unfixable(report, page);

    // With the memslot back, the same read completes and finds the guest's private byte,
    // which the guest_memfd kept.
    vm.set_memslot(slot);
    let report = handlers.run(vec![vcpu], FaultPolicy::ConvertImplicitly);
    expect_halted(&report);
    assert_eq!(handlers.reports(), [0x00, 0x42, 0x42]);
}
