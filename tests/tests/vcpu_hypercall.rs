// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-vcpu against real KVM: conversion requests through the port-I/O hypercall, valid
//! and invalid, with the guest checking each result code it reads back in `rax`.
//!
//! The real `KVM_EXIT_HYPERCALL` needs `vmcall`/`vmmcall`, which hang the development
//! hosts' KVM; its decoding is tested on hand-built `kvm_run` contents in veil-vcpu.

mod vcpu_support;

use std::time::Duration;

use kvm_ioctls::Cap;
use vcpu_support::{HYPERCALL, HYPERCALL16, Recorder, TestVm, run_to_halt_with};
use veil_attrs::{Attributes, FrameRange, PageState};
use veil_vcpu::{CapError, ExitKind, HYPERCALL_PORT, PageSize, VcpuEnd, enable_conversion_exits};

const LIMIT: Duration = Duration::from_secs(30);

fn frames(gpa: u64, pages: u64) -> FrameRange {
    FrameRange::from_gpa(gpa, pages * 4096).unwrap()
}

#[test]
fn port_hypercall_valid_and_invalid_requests() {
    if !veil_tests::kvm_or_skip("port_hypercall_valid_and_invalid_requests") {
        return;
    }
    assert_eq!(
        HYPERCALL_PORT, 0x5e,
        "tests/guests/hypercall.S uses `out 0x5e, al`"
    );
    let vm = TestVm::new();
    let vcpu = vm.long_mode_vcpu(0, &HYPERCALL, 0);
    let rec = Recorder {
        retry_gpa: Some(0x18_0000),
        ..Recorder::default()
    };
    let (report, rec) = run_to_halt_with(vcpu, rec, LIMIT);
    assert!(
        matches!(report.vcpus[0].end, VcpuEnd::Halted),
        "{:?}",
        report.vcpus[0].end
    );

    // Per case: the code the guest read in rax, then its own verdict.
    let expected_codes = [0, 0, 22, 22, 22, 22, 22, 22, 22, 11];
    let reports = rec.reports();
    assert_eq!(reports.len(), 2 * expected_codes.len(), "{reports:#x?}");
    for (i, pair) in reports.chunks(2).enumerate() {
        let case = i as u32 + 1;
        assert_eq!(pair[0], expected_codes[i], "case {case}: result code");
        assert_eq!(
            pair[1],
            0x600d_0000 + case,
            "case {case}: the guest's check"
        );
    }

    // Only the valid requests reached the handler, already validated.
    let requests = rec.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(requests[0].range(), frames(0x10_0000, 4));
    assert_eq!(requests[0].to(), Attributes::PRIVATE);
    assert_eq!(requests[0].page_size(), PageSize::Size4K);
    // The 2 MiB size bit alone means to-shared.
    assert_eq!(requests[1].range(), frames(0x10_0000, 1));
    assert_eq!(requests[1].to(), Attributes::empty());
    assert_eq!(requests[1].page_size(), PageSize::Size2M);
    assert_eq!(requests[2].range(), frames(0x18_0000, 1));

    // The memory state is exactly what the valid, done requests asked for.
    let attrs = rec.attrs.lock().unwrap();
    assert!(
        attrs
            .range_is(frames(0x10_0000, 1), Attributes::empty())
            .unwrap()
    );
    assert!(
        attrs
            .range_is(frames(0x10_1000, 3), Attributes::PRIVATE)
            .unwrap()
    );
    assert_eq!(
        attrs.get(veil_attrs::Gfn(0x180)).unwrap(),
        PageState::SHARED,
        "retried, not done"
    );
    assert_eq!(attrs.run_count(), 3);

    let stats = report.stats();
    assert_eq!(stats.count(ExitKind::PortHypercall), 10);
    assert!(
        rec.pio_writes.lock().unwrap().is_empty(),
        "no hypercall reached the device side"
    );
}

#[test]
fn port_hypercall_from_real_mode_uses_32_bit_arguments() {
    if !veil_tests::kvm_or_skip("port_hypercall_from_real_mode_uses_32_bit_arguments") {
        return;
    }
    let vm = TestVm::new();
    let garbage = 0xdead_beef_0000_0000_u64;
    let vcpu = vm.real_mode_vcpu(0, &HYPERCALL16, |regs| {
        regs.rax = garbage | 12;
        regs.rbx = garbage | 0x10_1000;
        regs.rcx = garbage | 1;
        regs.rdx = garbage | 0x10;
    });
    let (report, rec) = run_to_halt_with(vcpu, Recorder::default(), LIMIT);

    assert_eq!(rec.reports(), vec![0]);
    let requests = rec.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].range(), frames(0x10_1000, 1));
    assert_eq!(requests[0].to(), Attributes::PRIVATE);
    // As KVM does for a 32-bit hypercall: the result fills rax zero-extended.
    let regs = report.vcpus[0]
        .vcpu
        .as_ref()
        .unwrap()
        .fd()
        .get_regs()
        .unwrap();
    assert_eq!(regs.rax, 0);
    assert_eq!(regs.rbx, garbage | 0x10_1000, "arguments are left alone");
}

#[test]
fn conversion_exits_are_enabled_where_offered() {
    if !veil_tests::kvm_or_skip("conversion_exits_are_enabled_where_offered") {
        return;
    }
    let vm = TestVm::new();
    let mask = vm.vm.check_extension_int(Cap::ExitHypercall);
    match enable_conversion_exits(&vm.vm) {
        Ok(()) => assert_ne!(
            mask & (1 << 12),
            0,
            "enabled although not offered: {mask:#x}"
        ),
        Err(CapError::Unsupported { mask: m }) => {
            assert_eq!(m, mask);
            assert_eq!(mask.max(0) & (1 << 12), 0, "offered but refused: {mask:#x}");
        }
        Err(e) => panic!("{e}"),
    }
}
