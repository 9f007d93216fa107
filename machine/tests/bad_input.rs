// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Configurations `Machine::boot` must refuse, each with an error that names the fix.
//! All of them are refused before a KVM object exists, so these tests need no KVM.

#![cfg(target_arch = "x86_64")]

mod support;

use support::*;
use veil_loader::{ImageError, LoadError};
use veil_machine::acpi::MAX_VCPUS;
use veil_machine::layout::LayoutError;
use veil_machine::{Machine, MachineConfig, MachineError, PrivateRam};

const MIB: u64 = 1 << 20;

fn config(kernel: Vec<u8>) -> MachineConfig {
    let mut c = MachineConfig::new(kernel);
    c.cmdline = "console=ttyS0".into();
    c.memory_size = 32 * MIB;
    c.console = Box::new(std::io::sink());
    c
}

fn refused(c: MachineConfig) -> MachineError {
    match Machine::boot(c) {
        Ok(_) => panic!("the configuration was accepted"),
        Err(e) => e,
    }
}

#[test]
fn memory_sizes() {
    for (size, want) in [
        (0, LayoutError::Zero),
        (32 * MIB + 1, LayoutError::Unaligned { size: 32 * MIB + 1 }),
        (MIB / 2, LayoutError::TooSmall { size: MIB / 2 }),
    ] {
        let mut c = config(pvh_kernel());
        c.memory_size = size;
        match refused(c) {
            MachineError::MemorySize(e) => assert_eq!(e, want),
            other => panic!("{size:#x}: {other}"),
        }
    }
    // 1 MiB is a layout, but no room for the kernel at 1 MiB.
    let mut c = config(pvh_kernel());
    c.memory_size = MIB;
    let e = refused(c);
    assert!(
        matches!(
            e,
            MachineError::Kernel(_) | MachineError::MemoryTooSmall { .. }
        ),
        "{e}"
    );
}

#[test]
fn vcpu_counts() {
    for count in [0, MAX_VCPUS + 1, u32::MAX] {
        let mut c = config(pvh_kernel());
        c.vcpus = count;
        let e = refused(c);
        assert!(
            matches!(e, MachineError::VcpuCount { count: n, max } if n == count && max == MAX_VCPUS),
            "{e}"
        );
        assert!(e.to_string().contains("between 1 and"), "{e}");
    }
}

#[test]
fn truncated_and_garbage_kernels() {
    let k = bzimage_kernel();
    for kernel in [
        Vec::new(),
        k[..0x300].to_vec(),
        k[..0x500].to_vec(),
        vec![0xaa; 4096],
    ] {
        let e = refused(config(kernel.clone()));
        let MachineError::Kernel(load) = &e else {
            panic!("{} bytes: {e}", kernel.len());
        };
        assert!(matches!(**load, LoadError::Image(_)), "{load}");
    }
    let p = pvh_kernel();
    let e = refused(config(p[..200].to_vec()));
    assert!(
        matches!(&e, MachineError::Kernel(l) if matches!(**l, LoadError::Image(ImageError::SegmentOutsideFile { .. } | ImageError::Truncated { .. }))),
        "{e}"
    );
}

#[test]
fn initrd_too_big_for_ram() {
    let mut c = config(pvh_kernel());
    c.initrd = Some(vec![0x5a; 40 * MIB as usize]);
    let e = refused(c);
    assert!(
        matches!(e, MachineError::InitrdTooLarge { len, memory, .. } if len == 40 * MIB && memory == 32 * MIB),
        "{e}"
    );
    assert!(e.to_string().contains("give more memory"), "{e}");
}

#[test]
fn command_line_too_long() {
    let mut c = config(bzimage_kernel());
    c.cmdline = "x".repeat(300); // the test kernel takes 255 bytes
    let e = refused(c);
    assert!(
        matches!(&e, MachineError::Kernel(l) if matches!(**l, LoadError::CommandLineTooLong { .. })),
        "{e}"
    );
}

#[test]
fn private_ranges_outside_ram_or_unaligned() {
    for range in [
        (0x800, 0x1000),
        (0, 0x1800),
        (0, 0),
        (31 * MIB, 2 * MIB),
        (0xc000_0000, 0x1000),
        (u64::MAX - 0xfff, 0x1000),
    ] {
        let mut c = config(pvh_kernel());
        c.private = PrivateRam::Ranges(vec![(0, MIB), range]);
        let e = refused(c);
        assert!(
            matches!(e, MachineError::PrivateRange { base, size, .. } if (base, size) == range),
            "{range:x?}: {e}"
        );
    }
}
