// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The host side of the scenarios run through veil: the VM is veil-vmm's [`Vm`] in the
//! attributes flavor, its memory exits are answered by veil-vmm's `MemoryExits` (what
//! [`Vm::run`] installs), and the test adds only what a VMM's caller adds: the guest
//! program and its entry registers, and the devices the guest reports to.
//!
//! The devices record what the guest reports and let a test act on the host side
//! whenever the guest writes to [`SYNC_PORT`], which the guests use to hand over to the
//! host in the middle of a run.

use std::sync::{Arc, Mutex, PoisonError};

use veil_memory::{ContentPolicy, Flavor, HostSafeMemory};
use veil_tests::long_mode;
use veil_vcpu::x86_64::setup_long_mode;
use veil_vcpu::{BoxError, FaultPolicy, IoHandler, Vcpu, VmReport};
use veil_vmm::Vm;

use crate::testbed::sw_protected_or_skip;

/// Guests report 32-bit values here.
pub const REPORT_PORT: u16 = 0x10;
/// A second report port (`probe.s` reports its read-back here); recorded alike.
pub const REPORT_PORT_2: u16 = 0x11;
/// A write here hands over to the host: the test's sync callback runs with the value.
pub const SYNC_PORT: u16 = 0x20;

/// Where 64-bit guest programs are loaded and entered (after the boot data of
/// [`long_mode`]).
pub const CODE: u64 = 0x1_0000;
/// Top of the stack of vCPU 0; each further vCPU's is 4 KiB lower.
pub const STACK: u64 = 0x8_0000;
/// The boot region of 64-bit guests: [0, 2 MiB), never converted.
pub const BOOT_SIZE: u64 = 2 << 20;

/// A VM built by veil-vmm in the attributes flavor, one region (and memory slot,
/// numbered from 0 in address order) per `(base, size)` with content policy `policy`;
/// or `None` (the test skips, saying why) where KVM lacks software-protected VMs.
pub fn attributes_vm(test: &str, regions: &[(u64, u64)], policy: ContentPolicy) -> Option<Vm> {
    sw_protected_or_skip(test)?;
    let mut builder = Vm::builder().flavor(Flavor::ATTRIBUTES);
    for &(base, size) in regions {
        builder = builder.region(base, size, policy);
    }
    let vm = builder
        .build()
        .unwrap_or_else(|e| panic!("{test}: building the VM: {}", chain(&e)));
    assert_eq!(vm.flavor(), Flavor::ATTRIBUTES);
    assert!(
        vm.conversion_exits(),
        "a software-protected VM forwards MAP_GPA_RANGE"
    );
    Some(vm)
}

/// `error` and its sources, one after the other.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text += &format!(": {e}");
        source = e.source();
    }
    text
}

/// vCPU `id` entering `code` (loaded at [`CODE`]) in 64-bit mode on the identity page
/// tables and GDT of [`long_mode`], written into the boot region; `regs` edits its
/// general registers last.
pub fn long_mode_vcpu(
    vm: &Vm,
    id: u64,
    code: &[u8],
    regs: impl FnOnce(&mut kvm_bindings::kvm_regs),
) -> Vcpu {
    let memory = vm.memory();
    for (gpa, bytes) in long_mode::boot_data() {
        memory
            .host_write(gpa, &bytes)
            .expect("the boot region is shared");
    }
    memory
        .host_write(CODE, code)
        .expect("the boot region is shared");
    let vcpu = vm.create_vcpu(id).expect("KVM_CREATE_VCPU");
    let entry = long_mode::entry(CODE, STACK - 0x1000 * id);
    setup_long_mode(vm.kvm(), vcpu.fd(), id as u32, &entry).expect("long-mode setup");
    let mut r = vcpu.fd().get_regs().expect("KVM_GET_REGS");
    regs(&mut r);
    vcpu.fd().set_regs(&r).expect("KVM_SET_REGS");
    vcpu
}

/// vCPU `id` in real mode entering `code` (loaded at `load`, below 64 KiB) with
/// `%ds` = `ds` and `regs` applied.
pub fn real_mode_vcpu(
    vm: &Vm,
    id: u64,
    code: &[u8],
    load: u64,
    ds: u16,
    regs: impl FnOnce(&mut kvm_bindings::kvm_regs),
) -> Vcpu {
    vm.memory()
        .host_write(load, code)
        .expect("the code is in shared memory");
    let vcpu = vm.create_vcpu(id).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.fd().get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = u64::from(ds) << 4;
    sregs.ds.selector = ds;
    vcpu.fd().set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut r = kvm_bindings::kvm_regs {
        rip: load,
        rflags: 2,
        ..Default::default()
    };
    regs(&mut r);
    vcpu.fd().set_regs(&r).expect("KVM_SET_REGS");
    vcpu
}

/// Host-side work a test does when the guest writes `value` to [`SYNC_PORT`]; the
/// returned error stops the VM.
pub type Sync = dyn Fn(&HostSafeMemory, u32) -> Result<(), BoxError> + Send + std::marker::Sync;

/// The test VM's devices: port writes are recorded, and [`SYNC_PORT`] runs the test's
/// callback with the VM's memory.
pub struct Devices {
    memory: Arc<HostSafeMemory>,
    sync: Option<Box<Sync>>,
    /// Every value written to [`REPORT_PORT`] or [`REPORT_PORT_2`], in order (writes
    /// narrower than 32 bits zero-extended).
    reports: Mutex<Vec<u32>>,
}

impl Devices {
    /// Devices for `vm`, with `sync` run on writes to [`SYNC_PORT`].
    pub fn new(vm: &Vm, sync: Option<Box<Sync>>) -> Arc<Self> {
        Arc::new(Devices {
            memory: vm.memory().clone(),
            sync,
            reports: Mutex::new(Vec::new()),
        })
    }

    /// The values reported so far.
    pub fn reports(&self) -> Vec<u32> {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `vcpus` on `vm` to the end with `policy`, and returns veil's report.
    pub fn run(self: &Arc<Self>, vm: &Vm, vcpus: Vec<Vcpu>, policy: FaultPolicy) -> VmReport {
        vm.run(vcpus, self.clone(), policy)
            .expect("starting the vCPUs")
            .wait()
    }
}

impl IoHandler for Devices {
    fn pio_read(&self, _: u16, data: &mut [u8]) -> Result<(), BoxError> {
        data.fill(0xff);
        Ok(())
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        let mut word = [0u8; 4];
        let n = data.len().min(4);
        word[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(word);
        match port {
            REPORT_PORT | REPORT_PORT_2 => self
                .reports
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(value),
            SYNC_PORT => {
                if let Some(sync) = &self.sync {
                    sync(&self.memory, value)?;
                }
            }
            _ => return Err(format!("write to unexpected port {port:#x}").into()),
        }
        Ok(())
    }

    fn mmio_read(&self, addr: u64, _: &mut [u8]) -> Result<(), BoxError> {
        Err(format!("MMIO read at {addr:#x}: no device there").into())
    }

    fn mmio_write(&self, addr: u64, _: &[u8]) -> Result<(), BoxError> {
        Err(format!("MMIO write at {addr:#x}: no device there").into())
    }
}
