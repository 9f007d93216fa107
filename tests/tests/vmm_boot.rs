// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VMM's whole boot path on real KVM, through veil-vmm: build a `Vm` in the flavor the
//! host runs first, load a kernel into its memory with veil-loader, create the boot vCPU
//! with `Vm::create_boot_vcpu`, and run it. veil-loader's two test kernels check their
//! boot data in the guest (the PVH one in 32-bit protected mode, the bzImage-shaped one
//! in long mode) and report over port I/O.

mod loader_support;

use std::sync::Arc;

use loader_support::*;
use veil_loader::{BootSource, Loaded, load};
use veil_memory::ContentPolicy;
use veil_tests::kvm_or_skip;
use veil_vcpu::x86_64::{EntryError, X86Error};
use veil_vcpu::{FaultPolicy, StopReason};
use veil_vmm::{Vm, VmError};

/// Low memory and 63 MiB from 1 MiB.
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

fn vm() -> Vm {
    let mut b = Vm::builder();
    for &(base, size) in RAM {
        // Preserving memory lets the loader make what it placed private where the
        // flavor converts in place.
        b = b.region(base, size, ContentPolicy::Preserve);
    }
    b.build().unwrap()
}

/// Loads `kernel` into a new VM, boots it on vCPU 0 and returns what it reported.
fn boot(kernel: &[u8], cmdline: &str, initrd: &[u8]) -> (Loaded, Report) {
    let vm = vm();
    let source = BootSource::new(kernel).initrd(initrd).cmdline(cmdline);
    let loaded = load(&source, vm.memory().as_ref()).unwrap();
    let vcpu = vm.create_boot_vcpu(0, &loaded.entry).unwrap();
    check_entered(&vcpu, &loaded.entry);
    let ports = Arc::new(Ports::default());
    let set = vm
        .run(vec![vcpu], ports.clone(), FaultPolicy::Refuse)
        .unwrap();
    let report = set.wait();
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "{} flavor: {}",
        vm.flavor(),
        report.reason
    );
    (loaded, ports.take())
}

#[test]
fn pvh_kernel_boots_through_a_vm() {
    if !kvm_or_skip("pvh_kernel_boots_through_a_vm") {
        return;
    }
    let initrd = test_initrd();
    let (loaded, report) = boot(PVH_KERNEL, PVH_CMDLINE, &initrd);
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_pvh_report(&loaded, RAM, &initrd));
}

#[test]
fn bzimage_kernel_boots_through_a_vm() {
    if !kvm_or_skip("bzimage_kernel_boots_through_a_vm") {
        return;
    }
    let initrd = test_initrd();
    let (loaded, report) = boot(BZ_KERNEL, BZ_CMDLINE, &initrd);
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_bz_report(&loaded, RAM, &initrd));
}

#[test]
fn a_refused_entry_creates_no_vcpu() {
    if !kvm_or_skip("a_refused_entry_creates_no_vcpu") {
        return;
    }
    let vm = vm();
    let source = BootSource::new(PVH_KERNEL).cmdline(PVH_CMDLINE);
    let loaded = load(&source, vm.memory().as_ref()).unwrap();
    // A PVH entry claiming long mode's EFER: refused before the vCPU is created.
    let mut bad = loaded.entry;
    bad.efer = 1 << 8;
    let err = vm.create_boot_vcpu(0, &bad).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Entry {
                id: 0,
                source: X86Error::Entry(EntryError::ControlBitsForbidden { .. })
            }
        ),
        "{err}"
    );
    // So id 0 is still free (KVM refuses a second vCPU with the same id).
    let vcpu = vm.create_boot_vcpu(0, &loaded.entry).unwrap();
    check_entered(&vcpu, &loaded.entry);
}
