// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The machine on real KVM: veil-machine's PVH and bzImage test kernels boot through
//! `Machine` in the in-place flavor, find the RSDP the loader handed them, write to COM1
//! and end the machine through its devices (ACPI S5, the i8042 reset), while the host
//! is refused a read of private memory.

#![cfg(target_arch = "x86_64")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;
use veil_machine::{GuestEnd, Machine, MachineConfig, MachineReport, PrivateRam, PrivateRead};
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{Flavor, HostCaps};
use veil_tests::{kvm_or_skip, skip};

const MIB: u64 = 1 << 20;
/// Guest code is emulated on this project's hosts (about 1 µs an instruction); these
/// kernels end within milliseconds.
const LIMIT: Duration = Duration::from_secs(60);

/// Whether the test can run: KVM, and the in-place flavor on this host.
fn in_place_or_skip(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    match HostCaps::probe().map(|c| c.require(Flavor::IN_PLACE).map(|_| ())) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            skip(test, &format!("the in-place flavor does not run here: {e}"));
            false
        }
        Err(e) => panic!("{test}: probing the host failed: {e}"),
    }
}

fn config(kernel: Vec<u8>, console: &Console) -> MachineConfig {
    let mut c = MachineConfig::new(kernel);
    c.cmdline = "console=ttyS0".into();
    c.memory_size = 32 * MIB;
    c.flavor = Some(Flavor::IN_PLACE);
    c.console = Box::new(console.clone());
    c.timeout = Some(LIMIT);
    c
}

fn boot_and_run(config: MachineConfig) -> (MachineReport, Arc<veil_memory::HostSafeMemory>) {
    let machine = Machine::boot(config).unwrap();
    assert_eq!(machine.vm().flavor(), Flavor::IN_PLACE);
    let memory = machine.vm().memory().clone();
    (machine.run().unwrap(), memory)
}

fn assert_refused(read: &PrivateRead) {
    let PrivateRead::Refused { gpa, error } = read else {
        panic!("the host read of a private page was not refused: {read:?}");
    };
    assert!(error.contains("private"), "{error}");
    assert_eq!(gpa % 4096, 0);
}

#[test]
fn pvh_kernel_powers_off_with_all_ram_private() {
    let test = "pvh_kernel_powers_off_with_all_ram_private";
    if !in_place_or_skip(test) {
        return;
    }
    let console = Console::default();
    let (report, memory) = boot_and_run(config(pvh_kernel(), &console));
    assert_eq!(report.end, GuestEnd::PowerOff, "{report:#?}");
    assert_eq!(console.text(), PVH_OK);
    // In place, boot data is written and then converted: nothing stays shared.
    assert_eq!(report.shared, vec![], "{report:#?}");
    assert_refused(&report.private_read);
    let all = FrameRange::from_gpa(0, 32 * MIB).unwrap();
    assert!(
        memory
            .attributes()
            .range_is(all, Attributes::PRIVATE)
            .unwrap()
    );
    assert!(report.memory.conversions.protections > 0, "{report:#?}");
    assert_eq!(
        report.exits.count(veil_vmm::veil_vcpu::ExitKind::PioOut),
        PVH_OK.len() as u64 + 1,
        "one exit per console byte and one for the sleep register"
    );
    assert_eq!((report.vcpus, report.flavor.as_str()), (1, "in-place"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["end"]["kind"], "power-off");
    assert_eq!(json["private_read"]["result"], "refused");
}

#[test]
fn bzimage_kernel_resets_on_two_vcpus() {
    let test = "bzimage_kernel_resets_on_two_vcpus";
    if !in_place_or_skip(test) {
        return;
    }
    let console = Console::default();
    let mut c = config(bzimage_kernel(), &console);
    c.vcpus = 2;
    let (report, _) = boot_and_run(c);
    // The second vCPU waits for a start-up IPI that never comes; the reset ends both.
    assert_eq!(report.end, GuestEnd::Reset, "{report:#?}");
    assert_eq!(console.text(), BZIMAGE_OK);
    assert_eq!(report.shared, vec![]);
    assert_refused(&report.private_read);
    assert_eq!(report.vcpus, 2);
}

#[test]
fn without_private_ram_only_boot_data_is_private() {
    let test = "without_private_ram_only_boot_data_is_private";
    if !in_place_or_skip(test) {
        return;
    }
    let console = Console::default();
    let mut c = config(pvh_kernel(), &console);
    c.private = PrivateRam::None;
    let machine = Machine::boot(c).unwrap();
    let shared: Vec<_> = machine.shared().to_vec();
    assert!(!shared.is_empty());
    assert!(
        shared.iter().all(|s| s.reason == "not asked to be private"),
        "{shared:#?}"
    );
    // The ACPI tables are boot data: private, not in the shared list.
    let rsdp = machine.acpi().rsdp();
    assert!(shared.iter().all(|s| {
        !s.range
            .contains(&veil_loader::ByteRange::new(rsdp, 36).unwrap())
    }));
    let report = machine.run().unwrap();
    assert_eq!(report.end, GuestEnd::PowerOff);
    assert_eq!(console.text(), PVH_OK);
    // Boot data is private (written, then converted), so a private page exists.
    assert_refused(&report.private_read);
}

#[test]
fn private_ranges_are_private_and_the_rest_is_reported_shared() {
    let test = "private_ranges_are_private_and_the_rest_is_reported_shared";
    if !in_place_or_skip(test) {
        return;
    }
    let console = Console::default();
    let mut c = config(pvh_kernel(), &console);
    c.private = PrivateRam::Ranges(vec![(8 * MIB, MIB), (20 * MIB, 2 * MIB)]);
    let machine = Machine::boot(c).unwrap();
    let memory = machine.vm().memory().clone();
    for (base, size) in [(8 * MIB, MIB), (20 * MIB, 2 * MIB)] {
        let r = FrameRange::from_gpa(base, size).unwrap();
        assert!(
            memory
                .attributes()
                .range_is(r, Attributes::PRIVATE)
                .unwrap()
        );
        let b = veil_loader::ByteRange::new(base, size).unwrap();
        assert!(machine.shared().iter().all(|s| !s.range.overlaps(&b)));
    }
    let shared_end = machine.shared().iter().map(|s| s.range.end()).max();
    assert_eq!(shared_end, Some(32 * MIB));
    let report = machine.run().unwrap();
    assert_eq!(report.end, GuestEnd::PowerOff);
    assert_refused(&report.private_read);
}
