// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! x86-64 vCPU setup for a boot entry, in 32-bit protected mode (the PVH entry) or in
//! 64-bit long mode (the Linux 64-bit boot protocol).
//!
//! The entry state itself, [`EntryRegisters`], lives in veil-abi, where veil-loader
//! builds it too; [`setup_entry`] validates it and writes exactly that state into a
//! vCPU, with CPUID, boot MSRs and FPU. The register values are computed by pure
//! functions ([`entry_sregs`], [`boot_msrs`], [`boot_fpu`], [`normalize_cpuid`]), tested
//! without KVM. Writing the page tables and the GDT into guest memory belongs to whoever
//! places boot data; [`BOOT_GDT`] is the table [`setup_long_mode`] builds its segment
//! registers from, so the two always agree.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_sregs,
};
use std::sync::OnceLock;

use kvm_ioctls::{Kvm, VcpuFd};

pub use veil_abi::x86_64::{
    BOOT_CODE32, BOOT_CODE64, BOOT_DATA, BOOT_GDT, BOOT_GDT_LIMIT, BOOT_TSS, ControlRegister,
    CpuMode, EntryError, EntryRegisters, LongModeEntry, SegmentProblem, SegmentRole,
    boot_gdt_bytes, boot_segment, gdt_entry, segment_from_gdt,
};

/// CPUID leaf 1 ECX bit 31: running under a hypervisor.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// `KVM_CPUID_SIGNATURE` and `KVM_CPUID_FEATURES`. Source:
/// `arch/x86/include/uapi/asm/kvm_para.h`.
const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Architectural MSR indices used for the boot MSRs.
///
/// Source: `arch/x86/include/asm/msr-index.h`.
pub mod msr {
    /// `MSR_IA32_SYSENTER_CS`.
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    /// `MSR_IA32_SYSENTER_ESP`.
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    /// `MSR_IA32_SYSENTER_EIP`.
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    /// `MSR_IA32_TSC`.
    pub const IA32_TSC: u32 = 0x10;
    /// `MSR_IA32_MISC_ENABLE`.
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// `MSR_IA32_MISC_ENABLE_FAST_STRING` (bit 0 of `MSR_IA32_MISC_ENABLE`).
    pub const IA32_MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
    /// `MSR_MTRRdefType`.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// `MTRR_DEF_TYPE_E` (bit 11 of `MSR_MTRRdefType`): MTRRs enabled.
    pub const MTRR_DEF_TYPE_ENABLE: u64 = 1 << 11;
    /// `MTRR_TYPE_WRBACK`: write-back memory type.
    pub const MTRR_TYPE_WRBACK: u64 = 6;
    /// `MSR_STAR`.
    pub const STAR: u32 = 0xc000_0081;
    /// `MSR_LSTAR`.
    pub const LSTAR: u32 = 0xc000_0082;
    /// `MSR_CSTAR`.
    pub const CSTAR: u32 = 0xc000_0083;
    /// `MSR_SYSCALL_MASK`.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// `MSR_KERNEL_GS_BASE`.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum X86Error {
    /// An ioctl failed.
    #[error("{op} failed")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_MSRS` stopped before this MSR.
    #[error("KVM refused to set MSR {index:#x}")]
    MsrNotSet {
        /// The MSR index.
        index: u32,
    },
    /// No room left in the CPUID table for a leaf veil adds.
    #[error("CPUID table is full, cannot add leaf {function:#x}")]
    CpuidFull {
        /// The leaf.
        function: u32,
    },
    /// The entry state contradicts its mode, or KVM would refuse it; nothing was set.
    #[error(transparent)]
    Entry(#[from] EntryError),
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> X86Error {
    move |source| X86Error::Kvm { op, source }
}

/// Segment, descriptor-table and control registers for `entry`, starting from the
/// vCPU's current `sregs`, which keep what an entry does not define (the APIC base, the
/// LDT, CR2, CR8, the pending-interrupt bitmap).
pub fn entry_sregs(mut sregs: kvm_sregs, entry: &EntryRegisters) -> kvm_sregs {
    sregs.cs = entry.code;
    sregs.ds = entry.data;
    sregs.es = entry.data;
    sregs.fs = entry.data;
    sregs.gs = entry.data;
    sregs.ss = entry.data;
    sregs.tr = entry.tss;
    sregs.gdt = entry.gdt;
    sregs.idt = entry.idt;
    sregs.cr0 = entry.cr0;
    sregs.cr3 = entry.cr3;
    sregs.cr4 = entry.cr4;
    sregs.efer = entry.efer;
    sregs
}

/// Long-mode segment and control registers for `entry`: [`entry_sregs`] of
/// [`LongModeEntry::registers`].
///
/// No IDT is loaded (limit 0): an exception before the guest loads its own shuts it
/// down, which is what a guest that has not set one up should get.
pub fn long_mode_sregs(sregs: kvm_sregs, entry: &LongModeEntry) -> kvm_sregs {
    entry_sregs(sregs, &entry.registers())
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80 (all exceptions masked).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// The MSR values a 64-bit kernel expects at entry: SYSENTER/SYSCALL MSRs cleared, TSC
/// at 0, fast strings on, and MTRRs enabled with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(msr::IA32_SYSENTER_CS, 0),
        entry(msr::IA32_SYSENTER_ESP, 0),
        entry(msr::IA32_SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::IA32_TSC, 0),
        entry(msr::IA32_MISC_ENABLE, msr::IA32_MISC_ENABLE_FAST_STRING),
        entry(
            msr::MTRR_DEF_TYPE,
            msr::MTRR_DEF_TYPE_ENABLE | msr::MTRR_TYPE_WRBACK,
        ),
    ]
}

/// Adjusts the table `KVM_GET_SUPPORTED_CPUID` returned for vCPU `apic_id`.
///
/// Sets the initial APIC id (leaf 1 EBX bits 31:24, and the x2APIC id in EDX of leaves 0xb
/// and 0x1f), the hypervisor bit (leaf 1 ECX bit 31), and makes sure the KVM leaves a Linux
/// guest looks for are there: 0x40000000 with the "KVMKVMKVM" signature, and 0x40000001
/// (features; KVM's own bits are kept, an empty leaf is added if KVM gave none).
pub fn normalize_cpuid(cpuid: &mut CpuId, apic_id: u32) -> Result<(), X86Error> {
    let mut have_signature = false;
    let mut have_features = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x00ff_ffff) | ((apic_id & 0xff) << 24);
                e.ecx |= CPUID_1_ECX_HYPERVISOR;
            }
            0xb | 0x1f => e.edx = apic_id,
            KVM_CPUID_SIGNATURE => {
                have_signature = true;
                e.eax = e.eax.max(KVM_CPUID_FEATURES);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            KVM_CPUID_FEATURES => have_features = true,
            _ => {}
        }
    }
    let mut add = |function, eax, [ebx, ecx, edx]: [u32; 3]| {
        cpuid
            .push(kvm_cpuid_entry2 {
                function,
                eax,
                ebx,
                ecx,
                edx,
                ..Default::default()
            })
            .map_err(|_| X86Error::CpuidFull { function })
    };
    if !have_signature {
        add(KVM_CPUID_SIGNATURE, KVM_CPUID_FEATURES, KVM_SIGNATURE)?;
    }
    if !have_features {
        add(KVM_CPUID_FEATURES, 0, [0; 3])?;
    }
    Ok(())
}

/// Sets up `vcpu` (KVM id `apic_id`) to start the boot entry `entry`: CPUID (see
/// [`normalize_cpuid`]), boot MSRs, FPU, then segment and control registers, then
/// general registers.
///
/// `entry` is validated first ([`EntryRegisters::validate`]): a state that contradicts
/// its mode is refused before any ioctl, and the vCPU is left as it was. A failing
/// ioctl leaves what was set before it.
pub fn setup_entry(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    apic_id: u32,
    entry: &EntryRegisters,
) -> Result<(), X86Error> {
    entry.validate()?;
    setup_cpu(kvm, vcpu, apic_id)?;
    set_entry_registers(vcpu, entry)
}

/// The part of [`setup_entry`] every vCPU needs, the boot one or not: CPUID for APIC id
/// `apic_id` (see [`normalize_cpuid`]), boot MSRs and FPU. A vCPU that waits for its
/// start-up IPI (an application processor under the in-kernel irqchip) gets only this.
pub fn setup_cpu(kvm: &Kvm, vcpu: &VcpuFd, apic_id: u32) -> Result<(), X86Error> {
    let mut cpuid = supported_cpuid(kvm)?;
    normalize_cpuid(&mut cpuid, apic_id)?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;

    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| X86Error::Kvm {
        op: "KVM_SET_MSRS",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })?;
    let written = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if let Some(refused) = entries.get(written) {
        return Err(X86Error::MsrNotSet {
            index: refused.index,
        });
    }
    vcpu.set_fpu(&boot_fpu()).map_err(kvm_err("KVM_SET_FPU"))
}

/// What `KVM_GET_SUPPORTED_CPUID` returns, asked of KVM once per process.
///
/// The answer depends on the host kernel and its KVM module, not on a VM, and asking
/// is expensive where each host CPUID instruction traps (about 340 µs on a paravirtual
/// KVM host, once per vCPU otherwise), so the first answer is kept for every later
/// vCPU and VM. A failed ask is not kept: the next call asks again.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, X86Error> {
    static SUPPORTED: OnceLock<CpuId> = OnceLock::new();
    if let Some(cpuid) = SUPPORTED.get() {
        return Ok(cpuid.clone());
    }
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(SUPPORTED.get_or_init(|| cpuid).clone())
}

/// The register part of [`setup_entry`], after its validation: segment and control
/// registers, then general registers.
pub fn set_entry_registers(vcpu: &VcpuFd, entry: &EntryRegisters) -> Result<(), X86Error> {
    entry.validate()?;
    let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&entry_sregs(sregs, entry))
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&entry.regs)
        .map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(())
}

/// Sets up `vcpu` (KVM id `apic_id`) to start at `entry` in 64-bit mode, on
/// [`BOOT_GDT`]: [`setup_entry`] with [`LongModeEntry::registers`].
pub fn setup_long_mode(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    apic_id: u32,
    entry: &LongModeEntry,
) -> Result<(), X86Error> {
    setup_entry(kvm, vcpu, apic_id, &entry.registers())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_segment;
    use veil_abi::x86_64::{CR0_ET, CR0_NE, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME};

    fn entry() -> LongModeEntry {
        LongModeEntry {
            page_table_root: 0x1000,
            gdt_base: 0x500,
            entry: 0x10000,
            stack: 0x8_0000,
            rsi: 0x7000,
        }
    }

    #[test]
    fn sregs_for_long_mode() {
        let reset = kvm_sregs {
            cr0: 0x6000_0010, // CD | NW | ET, as at reset
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        let s = long_mode_sregs(reset, &entry());
        assert_eq!(s.cr0, CR0_PE | CR0_ET | CR0_NE | CR0_PG);
        assert_eq!(s.cr3, 0x1000);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, BOOT_GDT_LIMIT));
        assert_eq!((s.idt.base, s.idt.limit), (0, 0));
        assert_eq!(s.cs.selector, BOOT_CODE64);
        assert_eq!(s.cs.l, 1);
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, BOOT_DATA);
        }
        assert_eq!(s.tr.selector, BOOT_TSS);
        assert_eq!(s.apic_base, 0xfee0_0900, "fields KVM filled in are kept");
    }

    /// A PVH-style entry: 32-bit protected mode on the boot GDT, paging off.
    fn protected32() -> EntryRegisters {
        let mut e = EntryRegisters::protected32(0x10_0000, 0x500);
        e.regs.rbx = 0x6000;
        e
    }

    #[test]
    fn entry_sregs_write_the_entry_and_keep_the_rest() {
        let before = kvm_sregs {
            cr0: 0x6000_0010,
            cr2: 0xdead_0000,
            cr4: 1 << 7, // PGE, from some earlier state: replaced, not kept
            cr8: 3,
            efer: 1 << 11,
            apic_base: 0xfee0_0900,
            ldt: kvm_segment {
                selector: 0x28,
                limit: 0xffff,
                type_: 2,
                present: 1,
                ..Default::default()
            },
            interrupt_bitmap: [1, 2, 3, 4],
            ..Default::default()
        };
        let e = protected32();
        let s = entry_sregs(before, &e);
        assert_eq!((s.cs, s.tr), (e.code, e.tss));
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg, e.data);
        }
        assert_eq!((s.gdt, s.idt), (e.gdt, e.idt));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (CR0_PE | CR0_ET, 0, 0, 0));
        assert_eq!(
            (s.cr2, s.cr8, s.apic_base, s.ldt, s.interrupt_bitmap),
            (
                before.cr2,
                before.cr8,
                before.apic_base,
                before.ldt,
                before.interrupt_bitmap
            )
        );
    }

    #[test]
    fn regs_fpu_msrs() {
        let r = entry().registers().regs;
        assert_eq!(
            (r.rip, r.rsp, r.rbp, r.rsi, r.rflags),
            (0x10000, 0x80000, 0x80000, 0x7000, 2)
        );
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
        let m = boot_msrs();
        let get = |i| m.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(msr::MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(msr::IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(msr::LSTAR), Some(0));
        assert_eq!(m.len(), 11);
    }

    #[test]
    fn cpuid_gets_apic_id_hypervisor_bit_and_kvm_leaves() {
        let mut cpuid = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ])
        .unwrap();
        normalize_cpuid(&mut cpuid, 3).unwrap();
        let get = |c: &CpuId, f| c.as_slice().iter().find(|e| e.function == f).copied();
        let leaf1 = get(&cpuid, 1).unwrap();
        assert_eq!(leaf1.ebx, 0x0300_0800);
        assert_ne!(leaf1.ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert_eq!(get(&cpuid, 0xb).unwrap().edx, 3);
        let sig = get(&cpuid, KVM_CPUID_SIGNATURE).unwrap();
        let mut name = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            name.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&name, b"KVMKVMKVM\0\0\0");
        assert_eq!(sig.eax, KVM_CPUID_FEATURES);
        assert!(get(&cpuid, KVM_CPUID_FEATURES).is_some());

        // KVM's own feature bits are kept.
        let mut cpuid = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: KVM_CPUID_FEATURES,
            eax: 0x1234,
            ..Default::default()
        }])
        .unwrap();
        normalize_cpuid(&mut cpuid, 0).unwrap();
        assert_eq!(get(&cpuid, KVM_CPUID_FEATURES).unwrap().eax, 0x1234);
        assert_eq!(cpuid.as_slice().len(), 2);
    }

    #[test]
    fn full_cpuid_table_is_an_error() {
        let full = vec![kvm_cpuid_entry2::default(); KVM_MAX_CPUID_ENTRIES];
        let mut cpuid = CpuId::from_entries(&full).unwrap();
        assert!(matches!(
            normalize_cpuid(&mut cpuid, 0),
            Err(X86Error::CpuidFull { .. })
        ));
    }
}
