// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-loader's test kernels, loaded by veil-loader and run in a real KVM guest on
//! veil-vcpu's run loop.
//!
//! The PVH test kernel checks `hvm_start_info` (magic, command line, memory map, its own
//! data and bss, the initrd module) in 32-bit protected mode with paging off; the
//! bzImage-shaped test kernel checks `boot_params` from its 64-bit entry, running on the
//! page tables and GDT veil-loader wrote. Both report over port I/O; the host compares
//! the report with what it loaded.

mod loader_support;

use loader_support::*;
use veil_loader::{BootSource, SharedOnly, load};
use veil_tests::kvm_or_skip;

/// RAM with a hole, so the memory map has more than one entry; the second range reaches
/// past 1 GiB so the 64-bit guest reads its initrd through a second page directory.
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x4800_0000)];

fn boot_plain(kernel: &[u8], cmdline: &str, initrd: &[u8]) -> (veil_loader::Loaded, Report) {
    let guest = Guest::new();
    let mem = plain_memory(RAM);
    let source = BootSource::new(kernel).initrd(initrd).cmdline(cmdline);
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    map_plain_memory(&guest.vm, &mem);
    let report = guest.run(&loaded.entry, RAM);
    (loaded, report)
}

#[test]
fn pvh_test_kernel_runs_and_checks_its_boot_data() {
    if !kvm_or_skip("pvh_test_kernel_runs_and_checks_its_boot_data") {
        return;
    }
    let initrd = test_initrd();
    let (loaded, report) = boot_plain(PVH_KERNEL, PVH_CMDLINE, &initrd);
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_pvh_report(&loaded, RAM, &initrd));
}

#[test]
fn pvh_test_kernel_notices_a_wrong_command_line() {
    if !kvm_or_skip("pvh_test_kernel_notices_a_wrong_command_line") {
        return;
    }
    // Same length, one byte different: only a real comparison in the guest catches it.
    let wrong = PVH_CMDLINE.replace("pvh", "pvx");
    let (_, report) = boot_plain(PVH_KERNEL, &wrong, &test_initrd());
    assert_eq!(report.result, Some(2), "{report:?}");
}

#[test]
fn bzimage_test_kernel_runs_on_the_loaders_page_tables() {
    if !kvm_or_skip("bzimage_test_kernel_runs_on_the_loaders_page_tables") {
        return;
    }
    let initrd = test_initrd();
    let (loaded, report) = boot_plain(BZ_KERNEL, BZ_CMDLINE, &initrd);
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    let ird = loaded.layout.initrd.unwrap();
    assert!(ird.start().0 > 1 << 30, "initrd at {ird} is above 1 GiB");
    assert_eq!(report.values, expected_bz_report(&loaded, RAM, &initrd));
}
