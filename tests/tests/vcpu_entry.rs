// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-vcpu's `setup_entry` against real KVM: guests entered in 32-bit protected mode
//! and in long mode on a GDT of the test's own report the mode, control registers and
//! segments they run with; an entry refused by validation leaves the vCPU as it was.

mod vcpu_support;

use std::time::Duration;

use vcpu_support::*;
use veil_abi::x86_64::{CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
use veil_vcpu::Vcpu;
use veil_vcpu::x86_64::{
    ControlRegister, CpuMode, EntryError, EntryRegisters, SegmentProblem, SegmentRole, X86Error,
    entry_sregs, setup_entry,
};

const LIMIT: Duration = Duration::from_secs(30);
/// What the host puts in `rbx` for the guests to report.
const RBX: u64 = 0x5a5a_1234;

/// Enters `guest` in `mode` on `ENTRY_GDT`, runs it until it halts, and returns what it
/// reported and where its `here` label is (just past its only `call`).
fn enter_and_run(mode: CpuMode, guest: &Guest) -> (Vec<u32>, u32) {
    let vm = TestVm::new();
    let entry = entry_registers(mode, guest, RBX);
    let vcpu = vm.entry_vcpu(0, guest, &entry).unwrap();
    let call = guest.code.iter().position(|&b| b == 0xe8).unwrap();
    (
        run_to_halt(vcpu, LIMIT),
        (guest.load + call as u64 + 5) as u32,
    )
}

#[test]
fn protected_mode_entry_runs_32_bit_code() {
    if !veil_tests::kvm_or_skip("protected_mode_entry_runs_32_bit_code") {
        return;
    }
    let (reports, here) = enter_and_run(CpuMode::Protected32, &ENTRY32);
    assert_eq!(
        reports,
        vec![
            (CR0_PE | CR0_ET) as u32,
            0,
            0,
            u32::from(ENTRY_CODE32),
            u32::from(ENTRY_DATA),
            u32::from(ENTRY_DATA),
            u32::from(ENTRY_TSS),
            RBX as u32,
            here,
        ],
        "{reports:#x?}"
    );
}

#[test]
fn long_mode_entry_runs_on_a_gdt_of_its_own() {
    if !veil_tests::kvm_or_skip("long_mode_entry_runs_on_a_gdt_of_its_own") {
        return;
    }
    let (reports, here) = enter_and_run(CpuMode::Long64, &ENTRY64);
    assert_eq!(
        reports,
        vec![
            (CR0_PE | CR0_ET | CR0_PG) as u32,
            CR4_PAE as u32,
            (EFER_LME | EFER_LMA) as u32,
            u32::from(ENTRY_CODE64),
            u32::from(ENTRY_DATA),
            u32::from(ENTRY_DATA),
            u32::from(ENTRY_TSS),
            RBX as u32,
            here,
            0x1234_5678,
        ],
        "{reports:#x?}"
    );
}

/// The vCPU state `setup_entry` writes, read back.
fn snapshot(
    vcpu: &Vcpu,
) -> (
    kvm_bindings::kvm_sregs,
    kvm_bindings::kvm_regs,
    kvm_bindings::kvm_fpu,
) {
    let fd = vcpu.fd();
    (
        fd.get_sregs().unwrap(),
        fd.get_regs().unwrap(),
        fd.get_fpu().unwrap(),
    )
}

#[test]
fn a_refused_entry_leaves_the_vcpu_as_it_was() {
    if !veil_tests::kvm_or_skip("a_refused_entry_leaves_the_vcpu_as_it_was") {
        return;
    }
    let vm = TestVm::new();
    let vcpu = Vcpu::new(&vm.vm, 0).unwrap();
    let before = snapshot(&vcpu);
    let good = entry_registers(CpuMode::Long64, &ENTRY64, RBX);
    type Edit = fn(&mut EntryRegisters);
    type Expected = fn(&X86Error) -> bool;
    let cases: [(Edit, Expected); 4] = [
        (
            |e| e.efer = 0,
            |e| {
                matches!(
                    e,
                    X86Error::Entry(EntryError::ControlBitsMissing {
                        register: ControlRegister::Efer,
                        ..
                    })
                )
            },
        ),
        (
            |e| e.mode = CpuMode::Protected32,
            |e| matches!(e, X86Error::Entry(EntryError::ControlBitsForbidden { .. })),
        ),
        (
            |e| e.code.limit = 0xf_f000,
            |e| {
                matches!(
                    e,
                    X86Error::Entry(EntryError::BadSegment {
                        role: SegmentRole::Code,
                        problem: SegmentProblem::LimitGranularity { .. },
                        ..
                    })
                )
            },
        ),
        (
            |e| e.gdt.limit = 0x17,
            |e| {
                matches!(
                    e,
                    X86Error::Entry(EntryError::BadSegment {
                        role: SegmentRole::Tss,
                        problem: SegmentProblem::Selector { gdt_limit: 0x17 },
                        ..
                    })
                )
            },
        ),
    ];
    for (edit, expected) in cases {
        let mut bad = good;
        edit(&mut bad);
        let err = setup_entry(&vm.kvm, vcpu.fd(), 0, &bad).unwrap_err();
        assert!(expected(&err), "{err}");
        assert_eq!(snapshot(&vcpu), before, "the vCPU changed after: {err}");
    }
    // The same vCPU takes the good entry afterwards.
    setup_entry(&vm.kvm, vcpu.fd(), 0, &good).unwrap();
    assert_eq!(vcpu.fd().get_regs().unwrap().rip, ENTRY64.load);
}

#[test]
fn kvm_itself_refuses_what_validation_calls_inconsistent() {
    if !veil_tests::kvm_or_skip("kvm_itself_refuses_what_validation_calls_inconsistent") {
        return;
    }
    // Validation is not stricter than it must be on these: KVM_SET_SREGS refuses them
    // too, with EINVAL. (Paging with LME but not LMA; CR0.NW without CD.)
    let vm = TestVm::new();
    let vcpu = Vcpu::new(&vm.vm, 0).unwrap();
    let good = entry_registers(CpuMode::Long64, &ENTRY64, RBX);
    // A good entry first, CPUID included: KVM refuses EFER.LME on a vCPU whose CPUID
    // lacks long mode, which would hide the reasons tested below.
    setup_entry(&vm.kvm, vcpu.fd(), 0, &good).unwrap();
    let mut no_lma = good;
    no_lma.efer = EFER_LME;
    let mut nw = good;
    nw.cr0 |= 1 << 29; // CR0.NW
    for bad in [no_lma, nw] {
        assert!(bad.validate().is_err());
        let sregs = entry_sregs(vcpu.fd().get_sregs().unwrap(), &bad);
        let err = vcpu.fd().set_sregs(&sregs).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{bad:?}");
    }
    let sregs = entry_sregs(vcpu.fd().get_sregs().unwrap(), &good);
    vcpu.fd().set_sregs(&sregs).unwrap();
}

#[test]
fn supported_cpuid_is_asked_once_and_matches_kvm() {
    if !veil_tests::kvm_or_skip("supported_cpuid_is_asked_once_and_matches_kvm") {
        return;
    }
    use veil_vcpu::x86_64::{normalize_cpuid, supported_cpuid};
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    // KVM's answer carries the APIC id of the host CPU that asked (leaves 1, 0xb,
    // 0x1f); normalize_cpuid replaces it for the guest, so compare after it.
    let normalized = |mut c: kvm_bindings::CpuId| {
        normalize_cpuid(&mut c, 0).unwrap();
        c.as_slice().to_vec()
    };
    let fresh = normalized(
        kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap(),
    );
    let mut first = supported_cpuid(&kvm).unwrap();
    assert_eq!(normalized(first.clone()), fresh);
    // Each caller gets its own copy: changing one does not change the kept answer.
    first.as_mut_slice()[0].eax ^= 0xffff;
    assert_eq!(normalized(supported_cpuid(&kvm).unwrap()), fresh);
}
