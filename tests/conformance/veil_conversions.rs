// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The scenarios of the kernel selftest `private_mem_conversions_test`, with veil as the
//! VMM: veil-vmm's `Vm` in the attributes flavor, its `MemoryExits` carrying out the
//! conversions the guest (`guests/conversions.s`) asks for with `vmmcall` MAP_GPA_RANGE.
//!
//! Each vCPU works on its own chunk of 2 MiB + 4 KiB with the selftest's (offset, size)
//! pairs (0, 4K), (0, 2M), (4K, 4K), (4K, 2M), (2M, 4K): shared -> private -> shared,
//! odd pages back to shared to make holes, checking after each step that private pages
//! read what the guest wrote privately, shared pages what the host wrote, and discarded
//! pages zero. At its sync points the host checks the shared side through veil's guest
//! memory and that every private page refuses host access while the guest uses it.
//!
//! The selftest runs with and without discarding; here that is the region's content
//! policy. `Discard` frees the side a conversion stops using (the selftest's fallocate
//! variant) and the guest reads zeros there; `Retain` keeps it, and the guest reads what
//! that side last held.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use veil_memory::veil_attrs::{Attributes, FrameRange, PAGE_SIZE};
use veil_memory::{ContentPolicy, HostAccessError, HostSafeMemory};
use veil_vcpu::{BoxError, ExitKind, FaultPolicy, StopReason};

use crate::guests;
use crate::veil_host::{BOOT_SIZE, Devices, attributes_vm, long_mode_vcpu};

/// Each vCPU's chunk: the selftest's PER_CPU_DATA_SIZE.
const CHUNK: u64 = (2 << 20) + PAGE_SIZE;
/// Where the chunks start.
const DATA: u64 = 4 << 20;
/// Mailboxes of the guests' sync requests, one 64-byte block per vCPU.
const MAILBOX: u64 = 0x2_0000;

const SYNC_SHARED: u64 = 1;
const SYNC_PRIVATE: u64 = 2;

/// The host side of a sync request from vCPU `index`; counts requests in `syncs`.
fn sync(mem: &HostSafeMemory, index: u32, syncs: &AtomicU64) -> Result<(), BoxError> {
    let mut block = [0u8; 32];
    mem.host_read(MAILBOX + 64 * u64::from(index), &mut block)?;
    let word = |i: usize| u64::from_le_bytes(block[i * 8..i * 8 + 8].try_into().unwrap());
    let (command, gpa, size, argument) = (word(0), word(1), word(2), word(3));
    syncs.fetch_add(1, Ordering::Relaxed);
    let len = usize::try_from(size)?;
    match command {
        SYNC_SHARED => {
            let (expect, new) = (argument as u8, (argument >> 8) as u8);
            let mut bytes = vec![0u8; len];
            mem.host_read(gpa, &mut bytes)?;
            if let Some(at) = bytes.iter().position(|&b| b != expect) {
                return Err(format!(
                    "vCPU {index}: shared byte at {:#x} is {:#x}, expected {expect:#x}",
                    gpa + at as u64,
                    bytes[at]
                )
                .into());
            }
            mem.host_write(gpa, &vec![new; len])?;
        }
        SYNC_PRIVATE => {
            for page in (gpa..gpa + size).step_by(PAGE_SIZE as usize) {
                let mut byte = [0u8];
                let read = mem.host_read(page, &mut byte);
                let write = mem.host_write(page, &[0xee]);
                for (what, result) in [("read", read), ("write", write)] {
                    if !matches!(result, Err(HostAccessError::Private { .. })) {
                        return Err(format!(
                            "vCPU {index}: host {what} of private page {page:#x}: {result:?}"
                        )
                        .into());
                    }
                }
            }
        }
        other => return Err(format!("vCPU {index}: unknown sync command {other}").into()),
    }
    Ok(())
}

/// Runs the conversion scenarios on `vcpus` vCPUs with the data in `memslots` memslots
/// whose content policy is `policy`.
fn conversions(test: &str, vcpus: u64, memslots: u64, policy: ContentPolicy) {
    let total = vcpus * CHUNK;
    let mut regions = vec![(0, BOOT_SIZE)];
    match memslots {
        1 => regions.push((DATA, total)),
        // Split so that ranges cross the boundary: mid-chunk with one vCPU, between
        // the chunks with two.
        _ => {
            let first = if vcpus == 1 { 1 << 20 } else { CHUNK };
            regions.push((DATA, first));
            regions.push((DATA + first, total - first));
        }
    }
    let Some(vm) = attributes_vm(test, &regions, policy) else {
        return;
    };
    assert_eq!(
        vm.memory().regions().len(),
        regions.len(),
        "one memory slot each"
    );

    let syncs = Arc::new(AtomicU64::new(0));
    let counter = syncs.clone();
    let devices = Devices::new(
        &vm,
        Some(Box::new(move |mem, index| sync(mem, index, &counter))),
    );
    let cpus = (0..vcpus)
        .map(|id| {
            long_mode_vcpu(&vm, id, guests::conversions(), |r| {
                r.rdi = DATA + id * CHUNK;
                r.rsi = id;
                r.rdx = CHUNK;
                r.rcx = u64::from(policy == ContentPolicy::Retain);
            })
        })
        .collect();
    let report = devices.run(&vm, cpus, FaultPolicy::Refuse);
    if !matches!(report.reason, StopReason::AllHalted) {
        // Where each vCPU was, for a guest that died without reporting.
        let state: Vec<String> = report
            .vcpus
            .iter()
            .filter_map(|r| r.vcpu.as_ref().map(|v| (r.index, &r.end, v)))
            .map(|(i, end, v)| match (v.fd().get_regs(), v.fd().get_sregs()) {
                (Ok(r), Ok(s)) => format!(
                    "vCPU {i} {end:?}: rip {:#x} rsp {:#x} rbx {:#x} r9 {:#x} r11 {:#x} cr2 {:#x}",
                    r.rip, r.rsp, r.rbx, r.r9, r.r11, s.cr2
                ),
                _ => format!("vCPU {i} {end:?}: registers unreadable"),
            })
            .collect();
        panic!(
            "{} (reports {:x?}); {}",
            report.reason,
            devices.reports(),
            state.join("; ")
        );
    }
    let mut reports = devices.reports();
    reports.sort_unstable();
    let expected: Vec<u32> = (0..vcpus as u32).map(|i| 0x600d_0000 + i).collect();
    assert_eq!(reports, expected, "guest verdicts: {reports:x?}");

    // Per vCPU: 1 initial sync, and per range 1 private + 1 shared sync plus one per
    // hole (odd page): ranges of 1, 512, 1, 512, 1 pages have 0, 256, 0, 256, 0 holes.
    assert_eq!(syncs.load(Ordering::Relaxed), vcpus * (1 + 5 * 2 + 512));
    // Per vCPU and range: to private, one per hole, the range back to shared, its first
    // page there and back, and the whole chunk shared, all as KVM_EXIT_HYPERCALL exits
    // that veil answered.
    assert_eq!(
        report.stats().count(ExitKind::Hypercall),
        vcpus * (5 * 5 + 512)
    );
    let discards = vm.memory().stats().discards;
    match policy {
        ContentPolicy::Retain => assert_eq!(discards, 0, "retaining discards nothing"),
        _ => assert!(discards > 0, "discarding discards"),
    }
    assert_eq!(report.stats().count(ExitKind::MemoryFault), 0);
    let data = FrameRange::from_gpa(DATA, total).unwrap();
    assert!(
        vm.memory()
            .attributes()
            .range_is(data, Attributes::empty())
            .unwrap()
    );
}

#[test]
fn conversions_discarding_1_vcpu_1_memslot() {
    conversions(
        "conversions_discarding_1_vcpu_1_memslot",
        1,
        1,
        ContentPolicy::Discard,
    );
}

#[test]
fn conversions_discarding_2_vcpus_1_memslot() {
    conversions(
        "conversions_discarding_2_vcpus_1_memslot",
        2,
        1,
        ContentPolicy::Discard,
    );
}

#[test]
fn conversions_discarding_1_vcpu_2_memslots() {
    conversions(
        "conversions_discarding_1_vcpu_2_memslots",
        1,
        2,
        ContentPolicy::Discard,
    );
}

#[test]
fn conversions_discarding_2_vcpus_2_memslots() {
    conversions(
        "conversions_discarding_2_vcpus_2_memslots",
        2,
        2,
        ContentPolicy::Discard,
    );
}

#[test]
fn conversions_retaining_1_vcpu_1_memslot() {
    conversions(
        "conversions_retaining_1_vcpu_1_memslot",
        1,
        1,
        ContentPolicy::Retain,
    );
}

#[test]
fn conversions_retaining_2_vcpus_1_memslot() {
    conversions(
        "conversions_retaining_2_vcpus_1_memslot",
        2,
        1,
        ContentPolicy::Retain,
    );
}

#[test]
fn conversions_retaining_1_vcpu_2_memslots() {
    conversions(
        "conversions_retaining_1_vcpu_2_memslots",
        1,
        2,
        ContentPolicy::Retain,
    );
}

#[test]
fn conversions_retaining_2_vcpus_2_memslots() {
    conversions(
        "conversions_retaining_2_vcpus_2_memslots",
        2,
        2,
        ContentPolicy::Retain,
    );
}
