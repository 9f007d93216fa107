// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-loader's test kernels, loaded by veil-loader and run in a real KVM guest.
//!
//! The PVH test kernel checks `hvm_start_info` (magic, command line, memory map, its own
//! data and bss, the initrd module) in 32-bit protected mode with paging off; the
//! bzImage-shaped test kernel checks `boot_params` from its 64-bit entry, running on the
//! page tables and GDT veil-loader wrote. Both report over port I/O; the host compares
//! the report with what it loaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use veil_loader::boot::{EntryState, Segment};
use veil_loader::{BootSource, Loaded, SharedOnly, load};
use veil_tests::kvm_or_skip;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

const PVH_KERNEL: &[u8] = include_bytes!("../../loader/tests/fixtures/pvh-test-kernel.elf");
const BZ_KERNEL: &[u8] = include_bytes!("../../loader/tests/fixtures/bzimage-test-kernel.bin");
const PVH_CMDLINE: &str = "veil.test=pvh console=none";
const BZ_CMDLINE: &str = "veil.test=bzimage console=none";
const REPORT_PORT: u16 = 0x600;
const RESULT_PORT: u16 = 0x601;

/// RAM with a hole, so the memory map has more than one entry; the second range reaches
/// past 1 GiB so the 64-bit guest reads its initrd through a second page directory.
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x4800_0000)];

fn initrd() -> Vec<u8> {
    (0..3000u32).map(|i| (i * 13 + 5) as u8).collect()
}

fn byte_sum(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |a, &x| a.wrapping_add(u32::from(x)))
}

fn kvm_segment_of(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.g),
        avl: u8::from(s.avl),
        unusable: 0,
        padding: 0,
    }
}

fn map_memory(vm: &VmFd, mem: &GuestMemoryMmap) {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).unwrap();
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping is owned by `mem`, which outlives the VM in every test.
        unsafe { vm.set_user_memory_region(desc) }.unwrap();
    }
}

/// What the guest said.
#[derive(Debug)]
struct Report {
    values: Vec<u32>,
    result: Option<u32>,
}

/// Runs one vCPU from `entry` until it halts; a watchdog aborts the process if the guest
/// never does (guest code is emulated here, ~1 µs per instruction; these guests halt
/// within a few milliseconds).
fn run(vm: &VmFd, entry: &EntryState) -> Report {
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs = kvm_segment_of(&entry.code);
    let data = kvm_segment_of(&entry.data);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment_of(&entry.tss);
    sregs.gdt.base = entry.gdt_base;
    sregs.gdt.limit = entry.gdt_limit;
    sregs.cr0 = entry.cr0;
    sregs.cr3 = entry.cr3;
    sregs.cr4 = entry.cr4;
    sregs.efer = entry.efer;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = entry.rip;
    regs.rbx = entry.rbx;
    regs.rsi = entry.rsi;
    regs.rflags = entry.rflags;
    vcpu.set_regs(&regs).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..600 {
                std::thread::sleep(Duration::from_millis(100));
                if done.load(Ordering::Relaxed) {
                    return;
                }
            }
            eprintln!("guest did not halt within 60 s");
            std::process::abort();
        })
    };
    let mut report = Report {
        values: Vec::new(),
        result: None,
    };
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut(REPORT_PORT, data) => report
                .values
                .push(u32::from_le_bytes(data.try_into().unwrap())),
            VcpuExit::IoOut(RESULT_PORT, data) => {
                report.result = Some(u32::from_le_bytes(data.try_into().unwrap()))
            }
            VcpuExit::Hlt => break,
            other => panic!("unexpected exit {other:?} after {report:?}"),
        }
    }
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    report
}

fn boot(kernel: &[u8], cmdline: &str, initrd: &[u8]) -> (Loaded, Report) {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let regions: Vec<(GuestAddress, usize)> = RAM
        .iter()
        .map(|&(b, s)| (GuestAddress(b), s as usize))
        .collect();
    let mem = GuestMemoryMmap::<()>::from_ranges(&regions).unwrap();
    let source = BootSource::new(kernel).initrd(initrd).cmdline(cmdline);
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    map_memory(&vm, &mem);
    let report = run(&vm, &loaded.entry);
    (loaded, report)
}

fn memory_map_words() -> Vec<u32> {
    let mut out = vec![RAM.len() as u32];
    for &(base, size) in RAM {
        out.extend([
            base as u32,
            (base >> 32) as u32,
            size as u32,
            (size >> 32) as u32,
            1,
        ]);
    }
    out
}

#[test]
fn pvh_test_kernel_runs_and_checks_its_boot_data() {
    if !kvm_or_skip("pvh_test_kernel_runs_and_checks_its_boot_data") {
        return;
    }
    let initrd = initrd();
    let (loaded, report) = boot(PVH_KERNEL, PVH_CMDLINE, &initrd);
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    let l = &loaded.layout;
    let ird = l.initrd.unwrap();
    let mut expected = vec![
        0x336e_c578,
        1,
        l.cmdline.start().0 as u32,
        PVH_CMDLINE.len() as u32,
    ];
    expected.extend(memory_map_words());
    expected.extend([
        1,
        ird.start().0 as u32,
        initrd.len() as u32,
        byte_sum(&initrd),
    ]);
    assert_eq!(report.values, expected);
}

#[test]
fn pvh_test_kernel_notices_a_wrong_command_line() {
    if !kvm_or_skip("pvh_test_kernel_notices_a_wrong_command_line") {
        return;
    }
    // Same length, one byte different: only a real comparison in the guest catches it.
    let wrong = PVH_CMDLINE.replace("pvh", "pvx");
    let (_, report) = boot(PVH_KERNEL, &wrong, &initrd());
    assert_eq!(report.result, Some(2), "{report:?}");
}

#[test]
fn bzimage_test_kernel_runs_on_the_loaders_page_tables() {
    if !kvm_or_skip("bzimage_test_kernel_runs_on_the_loaders_page_tables") {
        return;
    }
    let initrd = initrd();
    let (loaded, report) = boot(BZ_KERNEL, BZ_CMDLINE, &initrd);
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    let l = &loaded.layout;
    let ird = l.initrd.unwrap();
    assert!(ird.start().0 > 1 << 30, "initrd at {ird} is above 1 GiB");
    let mut expected = vec![
        0x5372_6448,
        0x020f,
        0xff,
        0x01,
        l.kernel_load as u32,
        l.cmdline.start().0 as u32,
        BZ_CMDLINE.len() as u32,
    ];
    expected.extend(memory_map_words());
    expected.extend([ird.start().0 as u32, initrd.len() as u32, byte_sum(&initrd)]);
    assert_eq!(report.values, expected);
}
