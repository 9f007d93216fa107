// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest of `veil_conversions` (`guests/conversions.s`) on two vCPUs with
//! `kvm-ioctls` alone: one thread per vCPU calls `KVM_RUN` itself, and each conversion
//! request becomes `KVM_SET_MEMORY_ATTRIBUTES` plus the discard of the side no longer
//! used (`MADV_DONTNEED` on the shared side, a hole in the guest_memfd), as veil's
//! attributes flavor does. Nothing of veil-memory, veil-vcpu or veil-vmm takes part.
//!
//! It repeats what `veil_conversions` checks, so it is ignored by default. It is the
//! baseline for failures that may or may not be veil's: run with QEMU's multi-threaded
//! TCG, it fails the same ways and about as often as the scenarios through veil
//! (docs/testbed.md, Limits):
//!
//! ```sh
//! VEIL_TESTBED_TCG_THREADS=multi testbed/conformance.sh --ignored two_vcpus_without_veil
//! ```

use std::sync::{Mutex, PoisonError};

use kvm_ioctls::VcpuExit;
use veil_attrs::{Attributes, FrameRange, PAGE_SIZE};
use veil_tests::long_mode;
use veil_vcpu::x86_64::setup_long_mode;
use veil_vcpu::{KVM_MAP_GPA_RANGE_ENCRYPTED, enable_conversion_exits};

use crate::guests;
use crate::testbed::sw_protected_or_skip;
use crate::vm::{Converter, Discard, SwVm};

/// As in `veil_conversions`: each vCPU's chunk, where the chunks start, the boot region
/// with the page tables, code and stacks, and the guests' mailboxes.
const CHUNK: u64 = (2 << 20) + PAGE_SIZE;
const DATA: u64 = 4 << 20;
const BOOT_SIZE: u64 = 2 << 20;
const CODE: u64 = 0x1_0000;
const STACK: u64 = 0x8_0000;
const MAILBOX: u64 = 0x2_0000;
const VCPUS: u64 = 2;

/// Runs vCPU `id` to its halt and returns its verdict, or why it stopped otherwise.
fn run_vcpu(
    vm: &SwVm,
    kvm: &kvm_ioctls::Kvm,
    id: u64,
    conv: &Mutex<Converter>,
) -> Result<u32, String> {
    let mut vcpu = vm.vm.create_vcpu(id).map_err(|e| e.to_string())?;
    let entry = long_mode::entry(CODE, STACK - 0x1000 * id);
    setup_long_mode(kvm, &vcpu, id as u32, &entry).map_err(|e| e.to_string())?;
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    // rcx 0: this host discards, as veil's `Discard` policy does.
    (regs.rdi, regs.rsi, regs.rdx, regs.rcx) = (DATA + id * CHUNK, id, CHUNK, 0);
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    let mut reports = Vec::new();
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(0x10, data)) => {
                let mut word = [0u8; 4];
                let n = data.len().min(4);
                word[..n].copy_from_slice(&data[..n]);
                reports.push(u32::from_le_bytes(word));
            }
            Ok(VcpuExit::IoOut(0x20, _)) => {
                // The mailbox: command, gpa, size, argument. Only the shared check is
                // the host's to do here (command 1).
                let mut mailbox = [0u8; 32];
                vm.read_shared(MAILBOX + 64 * id, &mut mailbox);
                let word = |i: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&mailbox[i * 8..i * 8 + 8]);
                    u64::from_le_bytes(w)
                };
                let (command, gpa, size, argument) = (word(0), word(1), word(2), word(3));
                if command == 1 {
                    let (expect, new) = (argument as u8, (argument >> 8) as u8);
                    let mut bytes = vec![0u8; size as usize];
                    vm.read_shared(gpa, &mut bytes);
                    if let Some(at) = bytes.iter().position(|&b| b != expect) {
                        return Err(format!(
                            "shared byte at {:#x} is {:#x}",
                            gpa + at as u64,
                            bytes[at]
                        ));
                    }
                    vm.write_shared(gpa, &vec![new; bytes.len()]);
                }
            }
            Ok(VcpuExit::Hypercall(h)) => {
                let range = FrameRange::from_gpa(h.args[0], h.args[1].saturating_mul(PAGE_SIZE))
                    .map_err(|e| e.to_string())?;
                let to = if h.args[2] & KVM_MAP_GPA_RANGE_ENCRYPTED != 0 {
                    Attributes::PRIVATE
                } else {
                    Attributes::empty()
                };
                conv.lock().unwrap_or_else(PoisonError::into_inner).convert(
                    vm,
                    range,
                    to,
                    Discard::Free,
                );
                *h.ret = 0;
            }
            Ok(VcpuExit::Hlt) => {
                return match reports.as_slice() {
                    [verdict] => Ok(*verdict),
                    _ => Err(format!("reports {reports:#x?}")),
                };
            }
            other => return Err(format!("{other:?} (reports {reports:#x?})")),
        }
    }
}

#[test]
#[ignore = "repeats veil_conversions without veil; a baseline for the testbed (docs/testbed.md)"]
fn two_vcpus_without_veil() {
    let Some(kvm) = sw_protected_or_skip("two_vcpus_without_veil") else {
        return;
    };
    let mut vm = SwVm::new(&kvm);
    vm.add_slot(0, 0, BOOT_SIZE, false);
    vm.add_slot(1, DATA, VCPUS * CHUNK, true);
    enable_conversion_exits(&vm.vm).expect("MAP_GPA_RANGE exits");
    for (gpa, bytes) in long_mode::boot_data() {
        vm.write_shared(gpa, &bytes);
    }
    vm.write_shared(CODE, guests::conversions());
    let conv = Mutex::new(Converter::new(DATA + VCPUS * CHUNK));
    let verdicts: Vec<Result<u32, String>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..VCPUS)
            .map(|id| {
                let (vm, kvm, conv) = (&vm, &kvm, &conv);
                s.spawn(move || run_vcpu(vm, kvm, id, conv))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("the vCPU thread panicked".into()))
            })
            .collect()
    });
    let expected: Vec<Result<u32, String>> =
        (0..VCPUS as u32).map(|i| Ok(0x600d_0000 + i)).collect();
    assert_eq!(verdicts, expected);
}
