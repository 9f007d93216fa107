// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A software-protected VM built from veil's public API: guest memory from
//! `veil-memory` (attributes flavor), vCPUs run by `veil-vcpu`, and handlers that connect
//! the two the way a VMM does.
//!
//! The handlers record what the guest reported and let a test act on the host side
//! whenever the guest writes to [`SYNC_PORT`], which the guests use to hand over to the
//! host in the middle of a run.

use std::sync::{Arc, Mutex, PoisonError};

use kvm_ioctls::{Kvm, VmFd};
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{Flavor, HostCaps, HostSafeMemory, RegionSpec};
use veil_vcpu::x86_64::{BOOT_GDT, LongModeEntry, setup_long_mode};
use veil_vcpu::{
    BoxError, FaultPolicy, GuestLayout, IoHandler, MapGpaRange, MemoryFault, MemoryHandler, Vcpu,
    VcpuSet, VmReport,
};

/// Guests report 32-bit values here.
pub const REPORT_PORT: u16 = 0x10;
/// A second report port (`probe.s` reports its read-back here); recorded alike.
pub const REPORT_PORT_2: u16 = 0x11;
/// A write here hands over to the host: the test's sync callback runs with the value.
pub const SYNC_PORT: u16 = 0x20;

/// Where the GDT of 64-bit guests goes (in the boot region).
pub const GDT: u64 = 0x500;
/// The PML4 of 64-bit guests; the PDPT and the page directory follow it.
pub const PML4: u64 = 0x1000;
/// Where 64-bit guest programs are loaded and entered.
pub const CODE: u64 = 0x1_0000;
/// Top of the stack of vCPU 0; each further vCPU's is 4 KiB lower.
pub const STACK: u64 = 0x8_0000;
/// The boot region: [0, 2 MiB), always shared.
pub const BOOT_SIZE: u64 = 2 << 20;

/// A software-protected VM whose memory is veil's.
pub struct VeilVm {
    /// Declared first so it is closed before the memory its slots point at.
    pub vm: Arc<VmFd>,
    /// Guest memory: one attributes-flavor region per spec.
    pub mem: Arc<HostSafeMemory>,
    /// KVM.
    pub kvm: Kvm,
}

impl VeilVm {
    /// A VM of the software-protected type `HostCaps` names for the attributes flavor,
    /// with one attributes-flavor region (and memslot, from slot 0 on) per `(base, size)`.
    pub fn new(kvm: Kvm, regions: &[(u64, u64)]) -> Self {
        let caps = HostCaps::probe_with(&kvm).expect("probing the host");
        let flavor = caps
            .require(Flavor::Attributes)
            .expect("the attributes flavor runs here");
        let vm_type = flavor
            .vm_type
            .expect("the attributes flavor names its VM type");
        let vm = Arc::new(
            kvm.create_vm_with_type(vm_type.into())
                .expect("KVM_CREATE_VM"),
        );
        let mut builder = HostSafeMemory::builder()
            .guest_memfd_source(vm.as_ref())
            .attributes_vm(vm.clone());
        for &(base, size) in regions {
            builder = builder.region(RegionSpec::new(base, size, Flavor::Attributes));
        }
        let mem = Arc::new(builder.build().expect("building guest memory"));
        VeilVm { vm, mem, kvm }
    }

    /// Registers every region's memslot (slot = region index).
    pub fn register_all(&self) {
        // SAFETY: `mem` outlives the VM: `vm` is declared, and so dropped, first.
        unsafe { self.mem.register_memslots(&self.vm, 0) }.expect("registering memslots");
    }

    /// The memslot of region `index` as veil describes it.
    pub fn memslot(&self, index: usize) -> kvm_bindings::kvm_userspace_memory_region2 {
        self.mem.memslots(0)[index]
    }

    /// Issues `KVM_SET_USER_MEMORY_REGION2` for `region`, which must be one of
    /// [`memslot`](Self::memslot)'s, possibly edited (no private side, size 0 to delete).
    pub fn set_memslot(&self, region: kvm_bindings::kvm_userspace_memory_region2) {
        // SAFETY: the address and guest_memfd come from `mem`, which outlives the VM.
        unsafe { self.vm.set_user_memory_region2(region) }
            .unwrap_or_else(|e| panic!("KVM_SET_USER_MEMORY_REGION2 slot {}: {e}", region.slot));
    }

    /// The guest layout the vCPU loop checks requests and faults against.
    pub fn layout(&self) -> GuestLayout {
        GuestLayout::new(self.mem.regions().iter().map(|r| r.range()))
    }

    /// Writes the 64-bit boot data into the (shared) boot region: page tables
    /// identity-mapping the first 1 GiB with 2 MiB pages, and `BOOT_GDT`.
    pub fn write_boot_data(&self) {
        let (pdpt, pd) = (PML4 + 0x1000, PML4 + 0x2000);
        const PRESENT_RW: u64 = 0x3;
        const HUGE: u64 = 0x80;
        let write = |gpa: u64, value: u64| {
            self.mem
                .host_write(gpa, &value.to_le_bytes())
                .expect("the boot region is shared")
        };
        write(PML4, pdpt | PRESENT_RW);
        write(pdpt, pd | PRESENT_RW);
        for i in 0..512u64 {
            write(pd + i * 8, (i << 21) | PRESENT_RW | HUGE);
        }
        for (i, d) in BOOT_GDT.iter().enumerate() {
            write(GDT + 8 * i as u64, *d);
        }
    }

    /// vCPU `id` entering `code` (loaded at [`CODE`]) in 64-bit mode, with `regs`
    /// applied to its general registers.
    pub fn long_mode_vcpu(
        &self,
        id: u64,
        code: &[u8],
        regs: impl FnOnce(&mut kvm_bindings::kvm_regs),
    ) -> Vcpu {
        self.write_boot_data();
        self.mem
            .host_write(CODE, code)
            .expect("the boot region is shared");
        let vcpu = Vcpu::new(&self.vm, id).expect("KVM_CREATE_VCPU");
        let entry = LongModeEntry {
            page_table_root: PML4,
            gdt_base: GDT,
            entry: CODE,
            stack: STACK - 0x1000 * id,
            rsi: 0,
        };
        setup_long_mode(&self.kvm, vcpu.fd(), id as u32, &entry).expect("long-mode setup");
        let mut r = vcpu.fd().get_regs().expect("KVM_GET_REGS");
        regs(&mut r);
        vcpu.fd().set_regs(&r).expect("KVM_SET_REGS");
        vcpu
    }

    /// vCPU `id` in real mode entering `code` (loaded at `load`, below 64 KiB) with
    /// `%ds` = `ds` and `regs` applied.
    pub fn real_mode_vcpu(
        &self,
        id: u64,
        code: &[u8],
        load: u64,
        ds: u16,
        regs: impl FnOnce(&mut kvm_bindings::kvm_regs),
    ) -> Vcpu {
        self.mem
            .host_write(load, code)
            .expect("the code is in shared memory");
        let vcpu = Vcpu::new(&self.vm, id).expect("KVM_CREATE_VCPU");
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
}

/// Host-side work a test does when the guest writes `value` to [`SYNC_PORT`]; the
/// returned error stops the VM.
pub type Sync = dyn Fn(&HostSafeMemory, u32) -> Result<(), BoxError> + Send + std::marker::Sync;

/// The VMM side of a test VM: conversions and faults go to veil-memory, port writes are
/// recorded, and [`SYNC_PORT`] runs the test's callback.
pub struct Handlers {
    layout: GuestLayout,
    mem: Arc<HostSafeMemory>,
    sync: Option<Box<Sync>>,
    /// Every value written to [`REPORT_PORT`] or [`REPORT_PORT_2`], in order (writes
    /// narrower than 32 bits zero-extended).
    pub reports: Mutex<Vec<u32>>,
    /// Every conversion request the guest made, after veil validated it.
    pub requests: Mutex<Vec<MapGpaRange>>,
}

impl Handlers {
    /// Handlers for `vm`'s memory, with `sync` run on writes to [`SYNC_PORT`].
    pub fn new(vm: &VeilVm, sync: Option<Box<Sync>>) -> Arc<Self> {
        Arc::new(Handlers {
            layout: vm.layout(),
            mem: vm.mem.clone(),
            sync,
            reports: Mutex::new(Vec::new()),
            requests: Mutex::new(Vec::new()),
        })
    }

    /// The values reported so far.
    pub fn reports(&self) -> Vec<u32> {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs `vcpus` to the end with `policy` and returns veil's report.
    pub fn run(self: &Arc<Self>, vcpus: Vec<Vcpu>, policy: FaultPolicy) -> VmReport {
        VcpuSet::spawn(vcpus, self.clone(), self.clone(), policy)
            .expect("spawning vCPU threads")
            .wait()
    }
}

impl MemoryHandler for Handlers {
    fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    fn map_gpa_range(&self, request: &MapGpaRange) -> Result<veil_vcpu::Conversion, BoxError> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(*request);
        self.mem.convert(request.range(), request.to())?;
        Ok(veil_vcpu::Conversion::Done)
    }

    fn memory_fault(&self, fault: &MemoryFault, range: FrameRange) -> Result<u64, BoxError> {
        let to: Attributes = fault.access().attributes();
        Ok(self.mem.convert(range, to)?.pages_changed)
    }
}

impl IoHandler for Handlers {
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
                    sync(&self.mem, value)?;
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
