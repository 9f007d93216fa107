// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VMM's whole boot path in the attributes flavor: veil-vmm's `Vm` on a
//! software-protected VM, veil-loader placing a kernel into its memory, and the boot
//! vCPU from `Vm::create_boot_vcpu`. veil-loader's test kernels check their boot data in
//! the guest and report over port I/O (`loader/tests/fixtures`).
//!
//! In the attributes flavor on Linux 6.12 the host cannot put bytes into private memory,
//! so veil-loader writes the shared side and leaves it shared; the guest would convert
//! what it wants private itself.

use std::sync::Arc;

use veil_loader::{BootSource, Loaded, PopulateWay, load};
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{ContentPolicy, Flavor};
use veil_vcpu::{FaultPolicy, StopReason};
use veil_vmm::Vm;

use crate::loader_support::{
    BZ_CMDLINE, BZ_KERNEL, PVH_CMDLINE, PVH_KERNEL, Ports, check_entered, expected_bz_report,
    expected_pvh_report, test_initrd,
};
use crate::testbed::sw_protected_or_skip;

/// Low memory and 63 MiB from 1 MiB, as veil-loader's other tests use.
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

/// What a test kernel reports when every check passed, from where veil-loader put
/// things.
type Expected = fn(&Loaded, &[(u64, u64)], &[u8]) -> Vec<u32>;

/// Boots `kernel` through a `Vm` in the attributes flavor and checks what it reported.
fn boot(test: &str, kernel: &[u8], cmdline: &str, expected: Expected) {
    if sw_protected_or_skip(test).is_none() {
        return;
    }
    let mut builder = Vm::builder().flavor(Flavor::ATTRIBUTES);
    for &(base, size) in RAM {
        builder = builder.region(base, size, ContentPolicy::Discard);
    }
    let vm = builder.build().unwrap();
    let initrd = test_initrd();
    let source = BootSource::new(kernel).initrd(&initrd).cmdline(cmdline);
    let loaded = load(&source, vm.memory().as_ref()).unwrap();
    assert_eq!(loaded.populated.way, PopulateWay::SharedOnly);
    assert!(loaded.populated.private.is_empty());
    for &(base, size) in RAM {
        let range = FrameRange::from_gpa(base, size).unwrap();
        let memory = vm.memory().attributes();
        assert!(memory.range_is(range, Attributes::empty()).unwrap());
    }

    let vcpu = vm.create_boot_vcpu(0, &loaded.entry).unwrap();
    check_entered(&vcpu, &loaded.entry);
    let ports = Arc::new(Ports::default());
    let report = vm
        .run(vec![vcpu], ports.clone(), FaultPolicy::Refuse)
        .unwrap()
        .wait();
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "{}",
        report.reason
    );
    let reported = ports.take();
    assert_eq!(
        reported.result,
        Some(0),
        "the kernel's checks: {reported:?}"
    );
    assert_eq!(reported.values, expected(&loaded, RAM, &initrd));
}

#[test]
fn pvh_kernel_boots_in_the_attributes_flavor() {
    boot(
        "pvh_kernel_boots_in_the_attributes_flavor",
        PVH_KERNEL,
        PVH_CMDLINE,
        expected_pvh_report,
    );
}

#[test]
fn bzimage_kernel_boots_in_the_attributes_flavor() {
    boot(
        "bzimage_kernel_boots_in_the_attributes_flavor",
        BZ_KERNEL,
        BZ_CMDLINE,
        expected_bz_report,
    );
}
