// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A real Linux kernel on the machine: the kernel from `VEIL_LINUX_KERNEL` (a bzImage
//! such as Debian's cloud kernel) with an initramfs built here around the static busybox
//! from `VEIL_BUSYBOX` (Debian's `busybox-static`: `apt-get download busybox-static`,
//! then `dpkg-deb -x` and take `bin/busybox`). Its `/init` mounts /proc, prints a marker
//! line with the command line, the CPU count and MemTotal, and powers off; 2 vCPUs, all
//! RAM private except the boot objects the memory's flavor can only place shared.
//!
//! Linux does not boot in useful time on hosts that emulate guest code (this project's
//! development machines); it runs inside the software-protected testbed. Without the
//! variables the test says why it skips, and fails instead under `VEIL_REQUIRE_LINUX=1`.
//! `VEIL_LINUX_TIMEOUT` (seconds, default 900) bounds the run; `VEIL_LINUX_PRIVATE=none`
//! boots with no RAM asked to be private (to tell a private-memory problem from others),
//! and `VEIL_LINUX_FLAVOR` names the flavor. The default is in-place where the host runs
//! it, else emulated: one page serves both states and KVM keeps a mapping of its own.
//! In the attributes flavor on the testbed (no decode assists, no NRIP-save) KVM decodes
//! the instructions it intercepts through the shared side, so Linux dies (shutdown) as
//! soon as it runs intercepted instructions from private memory, its relocated
//! decompressor.

#![cfg(target_arch = "x86_64")]

mod support;

use std::time::Duration;

use support::Console;
use veil_machine::initramfs::{LINUX_CMDLINE, REPORT_INIT, REPORT_MARKER, busybox_initramfs};
use veil_machine::{GuestEnd, Machine, MachineConfig, PrivateRam, PrivateRead};
use veil_memory::{Flavor, HostCaps};
use veil_tests::{kvm_or_skip, required, skip};

const REQUIRE_LINUX: &str = "VEIL_REQUIRE_LINUX";
/// The file named by `var`, or why there is none.
fn input(var: &str) -> Result<Vec<u8>, String> {
    let path = std::env::var(var).map_err(|_| format!("{var} is not set"))?;
    std::fs::read(&path).map_err(|e| format!("cannot read {var}={path}: {e}"))
}

#[test]
fn linux_boots_to_init_on_two_vcpus_and_powers_off() {
    let test = "linux_boots_to_init_on_two_vcpus_and_powers_off";
    let (kernel, busybox) = match (input("VEIL_LINUX_KERNEL"), input("VEIL_BUSYBOX")) {
        (Ok(k), Ok(b)) => (k, b),
        (k, b) => {
            let reason = [k.err(), b.err()].into_iter().flatten().collect::<Vec<_>>();
            let reason = reason.join("; ");
            if required(REQUIRE_LINUX) {
                panic!("{test}: {reason}, and {REQUIRE_LINUX}=1 forbids skipping");
            }
            skip(
                test,
                &format!("{reason} (set {REQUIRE_LINUX}=1 to fail instead)"),
            );
            return;
        }
    };
    if !kvm_or_skip(test) {
        return;
    }
    let timeout = std::env::var("VEIL_LINUX_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(900);

    let console = Console::default();
    let mut c = MachineConfig::new(kernel);
    c.initrd = Some(busybox_initramfs(&busybox, REPORT_INIT).unwrap());
    c.cmdline = LINUX_CMDLINE.to_string();
    c.memory_size = 512 << 20;
    c.vcpus = 2;
    let all_private = std::env::var("VEIL_LINUX_PRIVATE").map_or(true, |v| v != "none");
    c.private = if all_private {
        PrivateRam::All
    } else {
        PrivateRam::None
    };
    c.console = Box::new(console.clone());
    c.flavor = Some(match std::env::var("VEIL_LINUX_FLAVOR") {
        Ok(name) => Flavor::built_in(&name).unwrap_or_else(|| panic!("no flavor {name}")),
        Err(_) => match HostCaps::probe().map(|caps| caps.require(Flavor::IN_PLACE).is_ok()) {
            Ok(true) => Flavor::IN_PLACE,
            _ => Flavor::EMULATED,
        },
    });
    c.timeout = Some(Duration::from_secs(timeout));
    let machine = Machine::boot(c).unwrap();
    let flavor = machine.vm().flavor();
    let report = machine.run().unwrap();
    let text = console.text();
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("{test}: {flavor} flavor, console:\n{text}\nreport: {report:#?}\n").as_bytes(),
    );

    assert_eq!(report.end, GuestEnd::PowerOff, "{report:#?}");
    let line = text
        .lines()
        .find(|l| l.starts_with(REPORT_MARKER))
        .unwrap_or_else(|| panic!("no marker line on the console:\n{text}"));
    assert!(line.contains("console=ttyS0"), "{line}");
    assert!(line.contains(" cpus=2 "), "{line}");
    assert!(line.contains("MemTotal:"), "{line}");
    let uptime: f64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime="))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no uptime=S on the marker line: {line}"));
    assert!(uptime > 0.0, "{line}");
    let PrivateRead::Refused { .. } = report.private_read else {
        panic!("the host read of private memory was not refused: {report:#?}");
    };
    // All RAM private but the boot objects the flavor could only place shared.
    assert!(
        report
            .shared
            .iter()
            .all(|s| s.reason.starts_with("boot data")),
        "{report:#?}"
    );
}
