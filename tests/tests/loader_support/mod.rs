// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared by veil-loader's real-KVM tests: the test kernels, a VM that runs one vCPU on
//! veil-vcpu's loop from a veil-loader entry state, and the reports the kernels send.
//!
//! The vCPU enters the kernel the way a VMM using the crates does: veil-vmm's
//! `entry_registers` maps veil-loader's entry state, veil-vcpu's `setup_entry` writes it.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use veil_abi::x86_64::EntryRegisters;
use veil_attrs::FrameRange;
use veil_loader::Loaded;
use veil_vcpu::x86_64::{CpuMode, setup_entry};
use veil_vcpu::{
    BoxError, FaultPolicy, GuestLayout, IoHandler, MapGpaRange, MemoryFault, MemoryHandler,
    RequestOutcome, StopReason, Vcpu, VcpuSet,
};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

pub const PVH_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/pvh-test-kernel.elf");
pub const BZ_KERNEL: &[u8] =
    include_bytes!("../../../loader/tests/fixtures/bzimage-test-kernel.bin");
pub const PVH_CMDLINE: &str = "veil.test=pvh console=none";
pub const BZ_CMDLINE: &str = "veil.test=bzimage console=none";
/// Where the test kernels report values, and their result (0 = every check passed).
pub const REPORT_PORT: u16 = 0x600;
pub const RESULT_PORT: u16 = 0x601;

pub fn test_initrd() -> Vec<u8> {
    (0..3000u32).map(|i| (i * 13 + 5) as u8).collect()
}

pub fn byte_sum(b: &[u8]) -> u32 {
    b.iter().fold(0u32, |a, &x| a.wrapping_add(u32::from(x)))
}

/// Anonymous guest memory of `ram`.
pub fn plain_memory(ram: &[(u64, u64)]) -> GuestMemoryMmap {
    let regions: Vec<(GuestAddress, usize)> = ram
        .iter()
        .map(|&(b, s)| (GuestAddress(b), s as usize))
        .collect();
    GuestMemoryMmap::<()>::from_ranges(&regions).unwrap()
}

/// Registers every region of `mem` with `vm`.
pub fn map_plain_memory(vm: &VmFd, mem: &GuestMemoryMmap) {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem.get_host_address(region.start_addr()).unwrap();
        let desc = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping is owned by `mem`, which every test keeps alive until the
        // VM is gone.
        unsafe { vm.set_user_memory_region(desc) }.unwrap();
    }
}

/// What a test kernel said.
#[derive(Debug, Default)]
pub struct Report {
    pub values: Vec<u32>,
    pub result: Option<u32>,
}

/// Collects the test kernels' port writes.
#[derive(Default)]
pub struct Ports(Mutex<Report>);

impl Ports {
    /// What the kernel reported so far, taken out.
    pub fn take(&self) -> Report {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl IoHandler for Ports {
    fn pio_read(&self, _: u16, data: &mut [u8]) -> Result<(), BoxError> {
        data.fill(0xff);
        Ok(())
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        let value = u32::from_le_bytes(data.try_into()?);
        let mut r = self.0.lock().map_err(|_| "poisoned")?;
        match port {
            REPORT_PORT => r.values.push(value),
            RESULT_PORT => r.result = Some(value),
            _ => return Err(format!("write to unexpected port {port:#x}").into()),
        }
        Ok(())
    }

    fn mmio_read(&self, addr: u64, _: &mut [u8]) -> Result<(), BoxError> {
        Err(format!("unexpected MMIO read at {addr:#x}").into())
    }

    fn mmio_write(&self, addr: u64, _: &[u8]) -> Result<(), BoxError> {
        Err(format!("unexpected MMIO write at {addr:#x}").into())
    }
}

/// The test kernels make no conversion requests.
struct NoConversions(GuestLayout);

impl MemoryHandler for NoConversions {
    fn layout(&self) -> &GuestLayout {
        &self.0
    }

    fn map_gpa_range(&self, _: &MapGpaRange) -> Result<RequestOutcome, BoxError> {
        Ok(RequestOutcome::Refused)
    }

    fn memory_fault(&self, fault: &MemoryFault, _: FrameRange) -> Result<u64, BoxError> {
        Err(format!("unexpected memory fault {fault:?}").into())
    }
}

/// A VM with one vCPU.
pub struct Guest {
    pub kvm: Kvm,
    pub vm: VmFd,
}

impl Guest {
    pub fn new() -> Guest {
        let kvm = Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        Guest { kvm, vm }
    }

    /// Sets up the vCPU from `entry`, runs it on veil-vcpu's loop until it halts (60 s at
    /// most: guest code is emulated here, ~1 µs an instruction, and these guests halt
    /// within milliseconds), and returns what the guest reported.
    pub fn run(&self, entry: &EntryRegisters, ram: &[(u64, u64)]) -> Report {
        let vcpu = Vcpu::new(&self.vm, 0).unwrap();
        setup_entry(&self.kvm, vcpu.fd(), 0, entry).unwrap();
        check_entered(&vcpu, entry);

        let layout = GuestLayout::new(
            ram.iter()
                .map(|&(b, s)| FrameRange::from_gpa(b, s).unwrap()),
        );
        let ports = Arc::new(Ports::default());
        let set = VcpuSet::spawn(
            vec![vcpu],
            Arc::new(NoConversions(layout)),
            ports.clone(),
            FaultPolicy::Refuse,
        )
        .unwrap();
        let report = veil_tests::wait_for_end(set, Duration::from_secs(60));
        assert!(
            matches!(report.reason, StopReason::AllHalted),
            "the guest did not halt: {:?}",
            report.reason
        );
        ports.take()
    }
}

/// Checks that `vcpu` holds veil-loader's entry state as KVM reads it back: the mode,
/// the segment selectors and hidden parts, the control registers and the entry
/// registers.
pub fn check_entered(vcpu: &Vcpu, entry: &EntryRegisters) {
    let sregs = vcpu.fd().get_sregs().unwrap();
    let regs = vcpu.fd().get_regs().unwrap();
    assert_eq!(sregs.cs.l == 1, entry.mode == CpuMode::Long64, "{sregs:?}");
    for (seg, want) in [
        (sregs.cs, entry.code),
        (sregs.ss, entry.data),
        (sregs.ds, entry.data),
        (sregs.tr, entry.tss),
    ] {
        assert_eq!(
            (seg.selector, seg.base, seg.limit, seg.type_, seg.db, seg.l),
            (
                want.selector,
                want.base,
                want.limit,
                want.type_,
                want.db,
                want.l
            ),
            "{seg:?}"
        );
    }
    assert_eq!(
        (sregs.gdt.base, sregs.gdt.limit),
        (entry.gdt.base, entry.gdt.limit)
    );
    assert_eq!(
        (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer),
        (entry.cr0, entry.cr3, entry.cr4, entry.efer),
        "control registers as veil-loader gave them"
    );
    assert_eq!(
        (regs.rip, regs.rbx, regs.rsi, regs.rflags),
        (
            entry.regs.rip,
            entry.regs.rbx,
            entry.regs.rsi,
            entry.regs.rflags
        )
    );
}

/// The memory map as the test kernels report it.
pub fn memory_map_words(ram: &[(u64, u64)]) -> Vec<u32> {
    let mut out = vec![ram.len() as u32];
    for &(base, size) in ram {
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

/// What the PVH test kernel reports when everything is right.
pub fn expected_pvh_report(loaded: &Loaded, ram: &[(u64, u64)], initrd: &[u8]) -> Vec<u32> {
    let l = &loaded.layout;
    let mut expected = vec![
        0x336e_c578,
        1,
        l.cmdline.start().0 as u32,
        PVH_CMDLINE.len() as u32,
    ];
    expected.extend(memory_map_words(ram));
    match l.initrd {
        Some(ird) => expected.extend([
            1,
            ird.start().0 as u32,
            initrd.len() as u32,
            byte_sum(initrd),
        ]),
        None => expected.push(0),
    }
    expected
}

/// What the bzImage test kernel reports when everything is right.
pub fn expected_bz_report(loaded: &Loaded, ram: &[(u64, u64)], initrd: &[u8]) -> Vec<u32> {
    let l = &loaded.layout;
    let mut expected = vec![
        0x5372_6448,
        0x020f,
        0xff,
        0x01,
        l.kernel_load as u32,
        l.cmdline.start().0 as u32,
        BZ_CMDLINE.len() as u32,
    ];
    expected.extend(memory_map_words(ram));
    let at = l.initrd.map(|r| r.start().0 as u32).unwrap_or(0);
    expected.extend([at, initrd.len() as u32, byte_sum(initrd)]);
    expected
}
