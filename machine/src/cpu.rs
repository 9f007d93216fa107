// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Interrupt controllers, timers and the per-vCPU state SMP Linux needs: the in-kernel
//! irqchip (IOAPIC, PIC, a local APIC per vCPU) and PIT, KVM's TSS and identity-map
//! pages, each local APIC's LINT0 as ExtINT and LINT1 as NMI, and CPUID with the APIC
//! id, the logical processor count and the TSC-deadline timer (hardware-reduced ACPI
//! has no PIT clockevent to calibrate the LAPIC timer against, so Linux needs it).
//!
//! [`PcLaunch`] applies the per-vCPU part inside veil-vmm's launch order: it wraps the
//! launch technology and adds it after the technology's own vCPU setup, before boot data
//! is populated and the launch finalised.

use std::sync::Arc;

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY, kvm_lapic_state, kvm_pit_config,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use veil_loader::PageType;
use veil_vcpu::ExitRouting;
use veil_vcpu::x86_64::EntryRegisters;
use veil_vmm::{Launch, LaunchError, LaunchRun, LaunchVm};

use crate::layout::MemoryLayout;

/// CPUID leaf 1 ECX bit 24: the local APIC timer has TSC-deadline mode.
pub const CPUID_1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID leaf 1 ECX bit 31: running under a hypervisor.
pub const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID leaf 1 EDX bit 28: EBX bits 23-16 hold the logical processor count.
pub const CPUID_1_EDX_HTT: u32 = 1 << 28;

/// The local APIC's LVT LINT0 register offset in `kvm_lapic_state.regs`.
pub const APIC_LVT0: usize = 0x350;
/// The local APIC's LVT LINT1 register offset.
pub const APIC_LVT1: usize = 0x360;
/// LVT delivery mode ExtINT: LINT0 carries the PIC's interrupts.
pub const APIC_MODE_EXTINT: u32 = 0b111;
/// LVT delivery mode NMI: LINT1 carries NMIs.
pub const APIC_MODE_NMI: u32 = 0b100;

/// Why the interrupt controllers or a vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// The host's KVM lacks a capability the machine needs.
    #[error("the host's KVM lacks {0} (the machine needs an in-kernel irqchip, PIT and irqfds)")]
    MissingCapability(&'static str),
    /// An ioctl failed.
    #[error("{op} failed")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// Its error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Kvm { op, source }
}

/// Checks that `kvm` has what [`create_irqchip`] and COM1's irqfd need, before anything
/// is created.
pub fn check_caps(kvm: &Kvm) -> Result<(), CpuError> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(CpuError::MissingCapability(name));
        }
    }
    Ok(())
}

/// Sets KVM's TSS and identity-map pages where `layout` puts them, creates the in-kernel
/// irqchip and the PIT (speaker port as a dummy). Must run before any vCPU is created.
pub fn create_irqchip(kvm: &Kvm, vm: &VmFd, layout: &MemoryLayout) -> Result<(), CpuError> {
    vm.set_tss_address(layout.kvm_tss() as usize)
        .map_err(self::kvm("KVM_SET_TSS_ADDR"))?;
    if kvm.check_extension(Cap::SetIdentityMapAddr) {
        vm.set_identity_map_address(layout.kvm_identity_map())
            .map_err(self::kvm("KVM_SET_IDENTITY_MAP_ADDR"))?;
    }
    vm.create_irq_chip()
        .map_err(self::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(self::kvm("KVM_CREATE_PIT2"))
}

/// Fills in what SMP Linux reads from CPUID for vCPU `apic_id` of `vcpus`: leaf 1's
/// initial APIC id and logical processor count, HTT when there is more than one, the
/// hypervisor bit, and the TSC-deadline timer where the host's KVM has it (KVM never
/// reports it in `KVM_GET_SUPPORTED_CPUID`, only as `KVM_CAP_TSC_DEADLINE_TIMER`).
pub fn smp_cpuid(cpuid: &mut CpuId, apic_id: u32, vcpus: u32, tsc_deadline: bool) {
    let count = vcpus.clamp(1, 255);
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ebx = (e.ebx & 0x0000_ffff) | ((apic_id & 0xff) << 24) | (count << 16);
            if count > 1 {
                e.edx |= CPUID_1_EDX_HTT;
            } else {
                e.edx &= !CPUID_1_EDX_HTT;
            }
            e.ecx |= CPUID_1_ECX_HYPERVISOR;
            if tsc_deadline {
                e.ecx |= CPUID_1_ECX_TSC_DEADLINE;
            }
        }
    }
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        lapic.regs[offset + i] = b as _;
    }
}

/// Sets LINT0's delivery mode to ExtINT and LINT1's to NMI, as a PC's BIOS leaves them.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let v = lapic_reg(lapic, offset);
        set_lapic_reg(lapic, offset, (v & !0x700) | (mode << 8));
    }
}

/// The per-vCPU setup of the PC for vCPU `id` of `vcpus`: CPUID (see [`smp_cpuid`], on
/// top of what the vCPU has) and LINT0/LINT1.
pub fn setup_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u32,
    vcpus: u32,
    tsc_deadline: bool,
) -> Result<(), CpuError> {
    let mut cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .or_else(|_| kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES))
        .map_err(self::kvm("KVM_GET_CPUID2"))?;
    smp_cpuid(&mut cpuid, id, vcpus, tsc_deadline);
    vcpu.set_cpuid2(&cpuid)
        .map_err(self::kvm("KVM_SET_CPUID2"))?;
    let mut lapic = vcpu.get_lapic().map_err(self::kvm("KVM_GET_LAPIC"))?;
    set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(self::kvm("KVM_SET_LAPIC"))
}

/// A launch technology with the PC's per-vCPU setup after its own ([`setup_vcpu`]);
/// everything else is the technology's.
pub struct PcLaunch {
    inner: Arc<dyn Launch>,
    vcpus: u32,
    tsc_deadline: bool,
}

impl PcLaunch {
    /// `inner` for a machine of `vcpus` vCPUs, with the TSC-deadline timer in CPUID if
    /// `tsc_deadline` (the host's `KVM_CAP_TSC_DEADLINE_TIMER`).
    pub fn new(inner: Arc<dyn Launch>, vcpus: u32, tsc_deadline: bool) -> Self {
        PcLaunch {
            inner,
            vcpus,
            tsc_deadline,
        }
    }
}

impl Launch for PcLaunch {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn vm_types(&self) -> &[u32] {
        self.inner.vm_types()
    }

    fn init(&self, kvm: &Kvm, vm: &VmFd) -> Result<(), LaunchError> {
        self.inner.init(kvm, vm)
    }

    fn setup_vcpu(
        &self,
        vm: &LaunchVm<'_>,
        vcpu: &VcpuFd,
        id: u32,
        entry: Option<&EntryRegisters>,
    ) -> Result<(), LaunchError> {
        self.inner.setup_vcpu(vm, vcpu, id, entry)?;
        setup_vcpu(vm.kvm, vcpu, id, self.vcpus, self.tsc_deadline).map_err(|e| LaunchError::Step {
            technology: self.inner.name(),
            step: "setting up the PC's CPUID and local APIC",
            source: Box::new(e),
        })
    }

    fn populates(&self) -> bool {
        self.inner.populates()
    }

    fn accepts(&self, page_type: PageType) -> bool {
        self.inner.accepts(page_type)
    }

    fn populate(&self, vm: &LaunchVm<'_>, run: &LaunchRun<'_>) -> Result<(), LaunchError> {
        self.inner.populate(vm, run)
    }

    fn finalize(&self, vm: &LaunchVm<'_>) -> Result<(), LaunchError> {
        self.inner.finalize(vm)
    }

    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        self.inner.exit_routing(routing)
    }

    fn private_at_launch(&self) -> bool {
        self.inner.private_at_launch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaf1(c: &CpuId) -> kvm_cpuid_entry2 {
        *c.as_slice().iter().find(|e| e.function == 1).unwrap()
    }

    #[test]
    fn cpuid_names_the_apic_id_and_the_count() {
        let base = kvm_cpuid_entry2 {
            function: 1,
            ebx: 0xabcd_0800,
            ecx: 0,
            edx: CPUID_1_EDX_HTT,
            ..Default::default()
        };
        let mut c = CpuId::from_entries(&[base]).unwrap();
        smp_cpuid(&mut c, 3, 4, true);
        let l = leaf1(&c);
        assert_eq!(l.ebx >> 24, 3);
        assert_eq!((l.ebx >> 16) & 0xff, 4);
        assert_eq!(l.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l.edx & CPUID_1_EDX_HTT, 0);
        assert_ne!(l.ecx & CPUID_1_ECX_TSC_DEADLINE, 0);
        assert_ne!(l.ecx & CPUID_1_ECX_HYPERVISOR, 0);

        let mut c = CpuId::from_entries(&[base]).unwrap();
        smp_cpuid(&mut c, 0, 1, false);
        let l = leaf1(&c);
        assert_eq!(((l.ebx >> 16) & 0xff, l.ebx >> 24), (1, 0));
        assert_eq!(l.edx & CPUID_1_EDX_HTT, 0, "one CPU: no HTT");
        assert_eq!(l.ecx & CPUID_1_ECX_TSC_DEADLINE, 0, "not offered");
    }

    #[test]
    fn lint0_is_extint_and_lint1_is_nmi() {
        let mut l = kvm_lapic_state::default();
        // Masked, fixed mode, vector 0x20: only the delivery mode changes.
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0020);
        set_lapic_reg(&mut l, APIC_LVT1, 0x0001_0720);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0720);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x0001_0420);
    }
}
