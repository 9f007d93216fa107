// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared by the `vcpu_*` tests: a VM with anonymous guest memory, boot data for 64-bit
//! guests, a handler that records what the guest did, and the guests themselves.
//!
//! The page tables and GDT come from `veil_tests::long_mode`; the entry tests add a GDT
//! of their own ([`ENTRY_GDT`]) and build their entry registers from it.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_bindings::{kvm_dtable, kvm_regs};
use kvm_ioctls::{Kvm, VmFd};
use veil_abi::x86_64::{CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};
use veil_attrs::{AttrMap, FrameRange};
use veil_vcpu::x86_64::{
    CpuMode, EntryRegisters, X86Error, gdt_entry, segment_from_gdt, setup_entry, setup_long_mode,
};
use veil_vcpu::{
    BoxError, GuestLayout, IoHandler, MapGpaRange, MemoryFault, MemoryHandler, RequestOutcome,
    Vcpu, VcpuSet, VmReport,
};

use veil_tests::wait_for_end;

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Guest memory: 2 MiB at guest-physical 0.
pub const MEM_SIZE: usize = 2 << 20;
/// Top of the stack of 64-bit guests.
pub const STACK: u64 = 0x8_0000;
/// Where `spin.S` counters live: one u64 per vCPU.
pub const COUNTERS: u64 = 0x9_0000;
/// Guests report 32-bit values here.
pub const REPORT_PORT: u16 = 0x10;
/// Guests read a 32-bit value from here.
pub const INPUT_PORT: u16 = 0x11;
/// MMIO window used by `io.S` (no memory there).
pub const MMIO_BASE: u64 = 0x1000_0000;

/// Where the entry tests write [`ENTRY_GDT`] (past `veil_tests::long_mode::GDT`, below
/// its page tables).
pub const ENTRY_GDT_AT: u64 = 0x800;
/// The entry tests' GDT: null, data (0x08), 64-bit code (0x10), 32-bit code (0x18), and
/// a busy 32-bit TSS (0x20, limit 0x67). Its order differs from `BOOT_GDT`'s, so guests
/// that run on it show the segments come from the entry registers.
pub const ENTRY_GDT: [u64; 5] = [
    0,
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0x67),
];
/// Selectors in [`ENTRY_GDT`].
pub const ENTRY_DATA: u16 = 0x08;
pub const ENTRY_CODE64: u16 = 0x10;
pub const ENTRY_CODE32: u16 = 0x18;
pub const ENTRY_TSS: u16 = 0x20;

/// Entry registers for `guest` in `mode` on [`ENTRY_GDT`]: stack at `STACK`, `rbx` =
/// `rbx`, no IDT; long mode on `veil_tests::long_mode`'s page tables, 32-bit protected
/// mode with paging off.
pub fn entry_registers(mode: CpuMode, guest: &Guest, rbx: u64) -> EntryRegisters {
    let segment = |selector: u16| segment_from_gdt(ENTRY_GDT[usize::from(selector >> 3)], selector);
    let (code, cr0, cr3, cr4, efer) = match mode {
        CpuMode::Protected32 => (ENTRY_CODE32, CR0_PE | CR0_ET, 0, 0, 0),
        CpuMode::Long64 => (
            ENTRY_CODE64,
            CR0_PE | CR0_ET | CR0_PG,
            veil_tests::long_mode::PML4,
            CR4_PAE,
            EFER_LME | EFER_LMA,
        ),
    };
    EntryRegisters {
        mode,
        regs: kvm_regs {
            rip: guest.load,
            rsp: STACK,
            rbx,
            rflags: 2,
            ..Default::default()
        },
        cr0,
        cr3,
        cr4,
        efer,
        gdt: kvm_dtable {
            base: ENTRY_GDT_AT,
            limit: (ENTRY_GDT.len() * 8 - 1) as u16,
            ..Default::default()
        },
        idt: kvm_dtable::default(),
        code: segment(code),
        data: segment(ENTRY_DATA),
        tss: segment(ENTRY_TSS),
    }
}

/// A VM with `MEM_SIZE` bytes of anonymous memory in slot 0.
pub struct TestVm {
    pub kvm: Kvm,
    pub vm: VmFd,
    host: NonNull<u8>,
}

impl TestVm {
    pub fn new() -> TestVm {
        let kvm = Kvm::new().expect("open /dev/kvm");
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        // SAFETY: a fresh private anonymous mapping; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap guest memory");
        let host = NonNull::new(p.cast::<u8>()).expect("mmap returned null");
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: host.as_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the mapping stays until `drop`, after every vCPU of the test stopped.
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
        TestVm { kvm, vm, host }
    }

    fn check(gpa: u64, len: usize) -> usize {
        let start = usize::try_from(gpa).expect("gpa fits usize");
        assert!(
            start.checked_add(len).is_some_and(|end| end <= MEM_SIZE),
            "{gpa:#x}+{len:#x} outside guest memory"
        );
        start
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        let start = Self::check(gpa, bytes.len());
        // SAFETY: bounds checked against the mapping above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.host.as_ptr().add(start),
                bytes.len(),
            )
        };
    }

    /// Reads a u64 the guest may be writing concurrently.
    pub fn read_u64(&self, gpa: u64) -> u64 {
        let start = Self::check(gpa, 8);
        assert_eq!(start % 8, 0);
        // SAFETY: in bounds and aligned; a volatile read of memory another vCPU writes.
        unsafe { std::ptr::read_volatile(self.host.as_ptr().add(start).cast::<u64>()) }
    }

    pub fn load(&self, guest: &Guest) {
        self.write(guest.load, guest.code);
    }

    /// Writes `veil_tests::long_mode::boot_data`: identity-mapped page tables for the
    /// first 1 GiB and the GDT at `GDT`.
    pub fn write_boot_data(&self) {
        for (gpa, bytes) in veil_tests::long_mode::boot_data() {
            self.write(gpa, &bytes);
        }
    }

    /// vCPU `id`, set up for 64-bit entry at `guest`, with `rdi` preset.
    pub fn long_mode_vcpu(&self, id: u64, guest: &Guest, rdi: u64) -> Vcpu {
        self.write_boot_data();
        self.load(guest);
        let vcpu = Vcpu::new(&self.vm, id).expect("create vCPU");
        let entry = veil_tests::long_mode::entry(guest.load, STACK - 0x1000 * id);
        setup_long_mode(&self.kvm, vcpu.fd(), id as u32, &entry).expect("long-mode setup");
        let mut regs = vcpu.fd().get_regs().expect("KVM_GET_REGS");
        regs.rdi = rdi;
        vcpu.fd().set_regs(&regs).expect("KVM_SET_REGS");
        vcpu
    }

    /// vCPU `id` set up by `setup_entry` with `entry`, after writing the boot data,
    /// [`ENTRY_GDT`] and `guest` into memory.
    pub fn entry_vcpu(
        &self,
        id: u64,
        guest: &Guest,
        entry: &EntryRegisters,
    ) -> Result<Vcpu, X86Error> {
        self.write_boot_data();
        let gdt: Vec<u8> = ENTRY_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
        self.write(ENTRY_GDT_AT, &gdt);
        self.load(guest);
        let vcpu = Vcpu::new(&self.vm, id).expect("create vCPU");
        setup_entry(&self.kvm, vcpu.fd(), id as u32, entry)?;
        Ok(vcpu)
    }

    /// vCPU `id` in real mode at `guest` (linked below 64 KiB), with `edit` applied to its
    /// registers.
    pub fn real_mode_vcpu(
        &self,
        id: u64,
        guest: &Guest,
        edit: impl FnOnce(&mut kvm_bindings::kvm_regs),
    ) -> Vcpu {
        assert!(
            guest.load < 0x10000,
            "real-mode guests live in the first 64 KiB"
        );
        self.load(guest);
        let vcpu = Vcpu::new(&self.vm, id).expect("create vCPU");
        let mut sregs = vcpu.fd().get_sregs().expect("KVM_GET_SREGS");
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.fd().set_sregs(&sregs).expect("KVM_SET_SREGS");
        let mut regs = vcpu.fd().get_regs().expect("KVM_GET_REGS");
        regs.rip = guest.load;
        regs.rflags = 2;
        edit(&mut regs);
        vcpu.fd().set_regs(&regs).expect("KVM_SET_REGS");
        vcpu
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no vCPU runs any more.
        unsafe { libc::munmap(self.host.as_ptr().cast(), MEM_SIZE) };
    }
}

/// Memory and I/O handler that records everything the guest did.
pub struct Recorder {
    pub layout: GuestLayout,
    pub attrs: Mutex<AttrMap>,
    pub requests: Mutex<Vec<MapGpaRange>>,
    /// Conversion requests starting here are answered with `RequestOutcome::Retry`.
    pub retry_gpa: Option<u64>,
    /// 32-bit values written to `REPORT_PORT`.
    pub reports: Mutex<Vec<u32>>,
    /// Writes to other ports.
    pub pio_writes: Mutex<Vec<(u16, Vec<u8>)>>,
    /// What `in` from `INPUT_PORT` returns.
    pub input: u32,
    pub mmio_writes: Mutex<Vec<(u64, Vec<u8>)>>,
    pub mmio_reads: Mutex<Vec<(u64, usize)>>,
    /// What MMIO reads return (little-endian bytes of it).
    pub mmio_answer: u64,
    /// Writes to this port fail.
    pub fail_port: Option<u16>,
}

#[derive(Debug)]
pub struct Refused(pub u16);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port {:#x} is configured to fail", self.0)
    }
}

impl std::error::Error for Refused {}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            layout: GuestLayout::from_size(MEM_SIZE as u64),
            attrs: Mutex::new(AttrMap::new(MEM_SIZE as u64).expect("attribute map")),
            requests: Mutex::default(),
            retry_gpa: None,
            reports: Mutex::default(),
            pio_writes: Mutex::default(),
            input: 0x5a5a_0001,
            mmio_writes: Mutex::default(),
            mmio_reads: Mutex::default(),
            mmio_answer: 0x1122_3344_5566_7788,
            fail_port: None,
        }
    }
}

impl Recorder {
    pub fn reports(&self) -> Vec<u32> {
        self.reports.lock().unwrap().clone()
    }
}

impl MemoryHandler for Recorder {
    fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    fn map_gpa_range(&self, request: &MapGpaRange) -> Result<RequestOutcome, BoxError> {
        self.requests.lock().unwrap().push(*request);
        if self.retry_gpa == Some(request.gpa()) {
            return Ok(RequestOutcome::Retry);
        }
        self.attrs
            .lock()
            .unwrap()
            .set(request.range(), request.to())?;
        Ok(RequestOutcome::Done)
    }

    fn memory_fault(&self, fault: &MemoryFault, range: FrameRange) -> Result<u64, BoxError> {
        let changes = self
            .attrs
            .lock()
            .unwrap()
            .set(range, fault.access().attributes())?;
        Ok(changes.pages())
    }
}

impl IoHandler for Recorder {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> Result<(), BoxError> {
        let value = if port == INPUT_PORT {
            self.input
        } else {
            u32::MAX
        };
        for (d, s) in data.iter_mut().zip(value.to_le_bytes().iter().cycle()) {
            *d = *s;
        }
        Ok(())
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        if self.fail_port == Some(port) {
            return Err(Box::new(Refused(port)));
        }
        if port == REPORT_PORT {
            let mut bytes = [0u8; 4];
            let n = data.len().min(4);
            bytes[..n].copy_from_slice(&data[..n]);
            self.reports.lock().unwrap().push(u32::from_le_bytes(bytes));
        } else {
            self.pio_writes.lock().unwrap().push((port, data.to_vec()));
        }
        Ok(())
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> Result<(), BoxError> {
        self.mmio_reads.lock().unwrap().push((addr, data.len()));
        let n = data.len();
        data.copy_from_slice(&self.mmio_answer.to_le_bytes()[..n]);
        Ok(())
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), BoxError> {
        self.mmio_writes.lock().unwrap().push((addr, data.to_vec()));
        Ok(())
    }
}

/// Runs `vcpu` with a fresh [`Recorder`] until the guest halts (failing the test if it
/// does anything else, or runs past `limit`), and returns what it reported.
pub fn run_to_halt(vcpu: Vcpu, limit: Duration) -> Vec<u32> {
    run_to_halt_with(vcpu, Recorder::default(), limit)
        .1
        .reports()
}

/// [`run_to_halt`] with `rec` as the handler, for tests that look at the report or at
/// more than the reports.
pub fn run_to_halt_with(vcpu: Vcpu, rec: Recorder, limit: Duration) -> (VmReport, Arc<Recorder>) {
    let rec = Arc::new(rec);
    let set = VcpuSet::spawn(
        vec![vcpu],
        rec.clone(),
        rec.clone(),
        veil_vcpu::FaultPolicy::Refuse,
    )
    .expect("start the vCPU");
    let report = wait_for_end(set, limit);
    assert!(
        matches!(report.reason, veil_vcpu::StopReason::AllHalted),
        "{:?}",
        report.reason
    );
    (report, rec)
}
