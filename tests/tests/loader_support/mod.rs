// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared by veil-loader's real-KVM tests: the test kernels, a VM that runs one vCPU on
//! veil-vcpu's loop from a veil-loader entry state, and the reports the kernels send.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use veil_attrs::FrameRange;
use veil_loader::Loaded;
use veil_loader::boot::{EntryMode, EntryState, Segment};
use veil_vcpu::x86_64::{LongModeEntry, setup_long_mode};
use veil_vcpu::{
    BoxError, Conversion, FaultPolicy, GuestLayout, IoHandler, MapGpaRange, MemoryFault,
    MemoryHandler, StopReason, Vcpu, VcpuSet,
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

/// What a test kernel said.
#[derive(Debug, Default)]
pub struct Report {
    pub values: Vec<u32>,
    pub result: Option<u32>,
}

/// Collects the test kernels' port writes.
#[derive(Default)]
struct Ports(Mutex<Report>);

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

    fn map_gpa_range(&self, _: &MapGpaRange) -> Result<Conversion, BoxError> {
        Ok(Conversion::Refused)
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
    pub fn run(&self, entry: &EntryState, ram: &[(u64, u64)]) -> Report {
        let vcpu = Vcpu::new(&self.vm, 0).unwrap();
        if entry.mode == EntryMode::Linux64 {
            // CPUID, MSRs, FPU and long-mode control registers from veil-vcpu.
            let long = LongModeEntry {
                page_table_root: entry.cr3,
                gdt_base: entry.gdt_base,
                entry: entry.rip,
                stack: 0,
                rsi: entry.rsi,
            };
            setup_long_mode(&self.kvm, vcpu.fd(), 0, &long).unwrap();
        }
        // Segments from the GDT veil-loader wrote (the Linux boot protocol's __BOOT_CS
        // 0x10 and __BOOT_DS 0x18, or PVH's flat 32-bit segments), and its registers.
        let mut sregs = vcpu.fd().get_sregs().unwrap();
        sregs.cs = kvm_segment_of(&entry.code);
        let data = kvm_segment_of(&entry.data);
        (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
        sregs.tr = kvm_segment_of(&entry.tss);
        sregs.gdt.base = entry.gdt_base;
        sregs.gdt.limit = entry.gdt_limit;
        sregs.cr0 = entry.cr0 | (sregs.cr0 & (1 << 5)); // keep CR0.NE as veil-vcpu set it
        sregs.cr3 = entry.cr3;
        sregs.cr4 = entry.cr4;
        sregs.efer = entry.efer;
        vcpu.fd().set_sregs(&sregs).unwrap();
        let mut regs = vcpu.fd().get_regs().unwrap();
        regs.rip = entry.rip;
        regs.rbx = entry.rbx;
        regs.rsi = entry.rsi;
        regs.rflags = entry.rflags;
        vcpu.fd().set_regs(&regs).unwrap();

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
        let deadline = Instant::now() + Duration::from_secs(60);
        while !set.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = set.is_finished();
        if !finished {
            set.stop();
        }
        let report = set.wait();
        assert!(
            finished,
            "the guest did not halt within 60 s: {:?}",
            report.reason
        );
        assert!(
            matches!(report.reason, StopReason::AllHalted),
            "the guest did not halt: {:?}",
            report.reason
        );
        std::mem::take(&mut *ports.0.lock().unwrap())
    }
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
