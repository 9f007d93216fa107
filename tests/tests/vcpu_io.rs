// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-vcpu against real KVM: port I/O, MMIO, CPUID and halt in a 64-bit guest set up by
//! `x86_64::setup_long_mode`, and a guest shutdown.

mod vcpu_support;

use std::sync::Arc;
use std::time::Duration;

use vcpu_support::{
    INPUT_PORT, IO, MMIO_BASE, REPORT_PORT, Recorder, SHUTDOWN, TestVm, run_to_halt_with,
};
use veil_tests::wait_for_end;
use veil_vcpu::{ExitKind, FaultPolicy, StopReason, VcpuEnd, VcpuSet};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn port_io_mmio_cpuid_and_halt_in_long_mode() {
    if !veil_tests::kvm_or_skip("port_io_mmio_cpuid_and_halt_in_long_mode") {
        return;
    }
    let vm = TestVm::new();
    let vcpu = vm.long_mode_vcpu(0, &IO, 0);
    let (report, rec) = run_to_halt_with(vcpu, Recorder::default(), LIMIT);
    assert!(matches!(report.vcpus[0].end, VcpuEnd::Halted));

    let reports = rec.reports();
    assert_eq!(reports.len(), 6, "{reports:#x?}");
    assert_eq!(reports[0], 0x1122_3344, "port write");
    assert_eq!(
        reports[1],
        rec.input + 1,
        "port read from {INPUT_PORT:#x}, seen by the guest"
    );
    // CPUID 0x40000000: at least the feature leaf, and the "KVMKVMKVM" signature.
    assert!(
        reports[2] >= 0x4000_0001,
        "max hypervisor leaf {:#x}",
        reports[2]
    );
    let signature: Vec<u8> = reports[3..6].iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(&signature, b"KVMKVMKVM\0\0\0");

    let writes = rec.mmio_writes.lock().unwrap().clone();
    assert_eq!(
        writes,
        vec![
            (MMIO_BASE, 0x0123_4567_89ab_cdef_u64.to_le_bytes().to_vec()),
            (MMIO_BASE + 16, (!rec.mmio_answer).to_le_bytes().to_vec()),
        ],
        "MMIO writes, the second one computed from the MMIO read"
    );
    assert_eq!(*rec.mmio_reads.lock().unwrap(), vec![(MMIO_BASE + 8, 8)]);
    assert!(
        rec.pio_writes.lock().unwrap().is_empty(),
        "only port {REPORT_PORT:#x} was written"
    );
    assert!(rec.requests.lock().unwrap().is_empty());

    let stats = report.stats();
    assert_eq!(stats.count(ExitKind::PioOut), 6);
    assert_eq!(stats.count(ExitKind::PioIn), 1);
    assert_eq!(stats.count(ExitKind::MmioWrite), 2);
    assert_eq!(stats.count(ExitKind::MmioRead), 1);
    assert_eq!(stats.count(ExitKind::Halt), 1);
    assert!(stats.handler_time(ExitKind::PioOut) > Duration::ZERO);

    // The guest really ran in 64-bit mode.
    let vcpu = report.vcpus[0].vcpu.as_ref().unwrap();
    let sregs = vcpu.fd().get_sregs().unwrap();
    assert_ne!(sregs.efer & (1 << 10), 0, "EFER.LMA");
    assert_eq!(sregs.cs.l, 1);
}

#[test]
fn guest_shutdown_is_reported() {
    if !veil_tests::kvm_or_skip("guest_shutdown_is_reported") {
        return;
    }
    let vm = TestVm::new();
    let vcpu = vm.long_mode_vcpu(0, &SHUTDOWN, 0);
    let rec = Arc::new(Recorder::default());
    let set = VcpuSet::spawn(vec![vcpu], rec.clone(), rec.clone(), FaultPolicy::Refuse).unwrap();
    let report = wait_for_end(set, LIMIT);

    assert_eq!(rec.reports(), vec![0x5d], "the guest ran up to the fault");
    assert!(
        matches!(report.reason, StopReason::Shutdown { vcpu: 0 }),
        "{:?}",
        report.reason
    );
    assert!(
        matches!(report.vcpus[0].end, VcpuEnd::Shutdown),
        "{:?}",
        report.vcpus[0].end
    );
    assert_eq!(report.stats().count(ExitKind::Shutdown), 1);
}
