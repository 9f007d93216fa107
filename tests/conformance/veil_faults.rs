// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The scenarios of the kernel selftest `private_mem_kvm_exits_test`, through veil-vmm's
//! `Vm` in the attributes flavor: a private access KVM cannot back (no guest_memfd in
//! the memslot, or no memslot) is a memory fault exit that veil-vcpu decodes with the
//! exact range and the private flag. Converting cannot help (the range is already
//! private), so veil stops the VM with an error naming the range instead of re-entering
//! the guest forever; once the host makes the access possible, the same access
//! completes.
//!
//! veil-vmm registers every region with its guest_memfd and offers no way to take a
//! memory slot away from a running VM; provoking these faults is the test's own doing,
//! with `KVM_SET_USER_MEMORY_REGION2` on the VM veil built.

use kvm_bindings::kvm_userspace_memory_region2;
use veil_memory::veil_attrs::{Attributes, FrameRange, PAGE_SIZE};
use veil_memory::{ContentPolicy, HostAccessError};
use veil_vcpu::{Access, ExitKind, FaultPolicy, RunError, StopReason, Vcpu, VmReport};
use veil_vmm::Vm;

use crate::guests;
use crate::veil_host::{Devices, attributes_vm, real_mode_vcpu};

/// Region 0 holds the real-mode guest, regions 1 and 2 are where the faults happen.
/// Each region is memory slot `index`.
const REGIONS: [(u64, u64); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x2_0000, 0x1_0000)];
const BACKED: usize = 1;
const UNBACKED: usize = 2;

/// The memory slot veil-vmm registered for region `index`.
fn memslot(vm: &Vm, index: usize) -> kvm_userspace_memory_region2 {
    vm.memory().memslots(0)[index]
}

/// Issues `KVM_SET_USER_MEMORY_REGION2` for `region`: one of [`memslot`]'s, possibly
/// edited (no private side, or size 0 to delete it).
fn set_memslot(vm: &Vm, region: kvm_userspace_memory_region2) {
    // SAFETY: the mapping and guest_memfd the slot names belong to `vm`'s memory, which
    // outlives the slot: `Vm` deletes its slots (these numbers) before its memory goes.
    unsafe { vm.fd().set_user_memory_region2(region) }
        .unwrap_or_else(|e| panic!("KVM_SET_USER_MEMORY_REGION2 slot {}: {e}", region.slot));
}

/// veil-vmm's VM with [`REGIONS`]; with `unbacked`, region 2's memory slot is replaced
/// by one without guest_memfd (KVM cannot change a slot's private side in place).
fn vm(test: &str, unbacked: bool) -> Option<Vm> {
    let vm = attributes_vm(test, &REGIONS, ContentPolicy::Discard)?;
    if unbacked {
        let slot = memslot(&vm, UNBACKED);
        set_memslot(
            &vm,
            kvm_userspace_memory_region2 {
                memory_size: 0,
                ..slot
            },
        );
        set_memslot(
            &vm,
            kvm_userspace_memory_region2 {
                flags: 0,
                guest_memfd: 0,
                guest_memfd_offset: 0,
                ..slot
            },
        );
    }
    Some(vm)
}

/// vCPU `id` running `probe.s` against `gpa`, writing `write` when it is not zero.
fn probe(vm: &Vm, id: u64, gpa: u64, write: u8) -> Vcpu {
    real_mode_vcpu(
        vm,
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
    let Some(vm) = vm("veil_stops_on_private_access_without_guest_memfd", true) else {
        return;
    };
    let target = REGIONS[UNBACKED].0 + 3 * PAGE_SIZE;
    let page = FrameRange::from_gpa(target, PAGE_SIZE).unwrap();
    vm.memory().convert(page, Attributes::PRIVATE).unwrap();

    let devices = Devices::new(&vm, None);
    let report = devices.run(
        &vm,
        vec![probe(&vm, 0, target, 0)],
        FaultPolicy::ConvertImplicitly,
    );
    let vcpu = expect_unfixable(report, page);
    assert!(devices.reports().is_empty(), "the read never completed");
    assert!(vm.memory().state(page.start()).unwrap().is_private());

    // As the selftest does: the host converts the range to shared, and the same read,
    // re-executed, completes.
    vm.memory().convert(page, Attributes::empty()).unwrap();
    vm.memory().host_write(target, &[0x6b]).unwrap();
    let report = devices.run(&vm, vec![vcpu], FaultPolicy::ConvertImplicitly);
    expect_halted(&report);
    assert_eq!(devices.reports(), [0x6b]);
}

#[test]
fn veil_stops_on_private_access_to_deleted_memslot() {
    let Some(vm) = vm("veil_stops_on_private_access_to_deleted_memslot", false) else {
        return;
    };
    let target = REGIONS[BACKED].0 + PAGE_SIZE;
    let page = FrameRange::from_gpa(target, PAGE_SIZE).unwrap();
    vm.memory().convert(page, Attributes::PRIVATE).unwrap();
    let devices = Devices::new(&vm, None);

    // With its memslot the private page works, and the host cannot read it.
    let report = devices.run(&vm, vec![probe(&vm, 0, target, 0x42)], FaultPolicy::Refuse);
    expect_halted(&report);
    assert_eq!(devices.reports(), [0x00, 0x42]);
    assert!(matches!(
        vm.memory().host_read(target, &mut [0]),
        Err(HostAccessError::Private { private, .. }) if private == page
    ));

    let slot = memslot(&vm, BACKED);
    set_memslot(
        &vm,
        kvm_userspace_memory_region2 {
            memory_size: 0,
            ..slot
        },
    );
    let report = devices.run(
        &vm,
        vec![probe(&vm, 1, target, 0)],
        FaultPolicy::ConvertImplicitly,
    );
    let vcpu = expect_unfixable(report, page);

    // With the memslot back, the same read completes and finds the guest's private byte,
    // which the guest_memfd kept.
    set_memslot(&vm, slot);
    let report = devices.run(&vm, vec![vcpu], FaultPolicy::ConvertImplicitly);
    expect_halted(&report);
    assert_eq!(devices.reports(), [0x00, 0x42, 0x42]);
}
