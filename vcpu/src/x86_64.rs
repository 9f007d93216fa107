// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! x86-64 entry state: a vCPU set up to start in 64-bit mode.
//!
//! The register values are computed by pure functions ([`long_mode_sregs`],
//! [`boot_msrs`], [`boot_fpu`], [`boot_regs`], [`normalize_cpuid`]), tested without KVM;
//! [`setup_long_mode`] applies them. Writing the page tables and the GDT into guest
//! memory belongs to whoever places boot data (veil-loader); [`BOOT_GDT`] is the table
//! the segment registers here are built from, so the two always agree.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_fpu, kvm_msr_entry, kvm_regs,
    kvm_segment, kvm_sregs,
};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::abi::msr;

/// The GDT the long-mode segment registers come from: null, 64-bit code (selector 0x08),
/// data (0x10), TSS (0x18). Whoever writes the GDT into guest memory writes these.
pub const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, ring 0, execute/read, L=1, G=1
    gdt_entry(0xc093, 0, 0xfffff), // data: present, ring 0, read/write, D/B=1, G=1
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, 64-bit busy TSS, G=1
];

/// Selector of the 64-bit code segment in [`BOOT_GDT`].
pub const CODE_SELECTOR: u16 = 0x08;
/// Selector of the data segment in [`BOOT_GDT`].
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the TSS in [`BOOT_GDT`].
pub const TSS_SELECTOR: u16 = 0x18;

// Control register and EFER bits. Source: arch/x86/include/uapi/asm/processor-flags.h
// (X86_CR0_*, X86_CR4_*) and arch/x86/include/asm/msr-index.h (EFER_*).
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// CPUID leaf 1 ECX bit 31: running under a hypervisor.
const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// `KVM_CPUID_SIGNATURE` and `KVM_CPUID_FEATURES`. Source:
/// `arch/x86/include/uapi/asm/kvm_para.h`.
const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

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
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> X86Error {
    move |source| X86Error::Kvm { op, source }
}

/// Where a 64-bit entry starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongModeEntry {
    /// Guest-physical address of the PML4 (loaded into CR3).
    pub page_table_root: u64,
    /// Guest-physical address of the GDT, which holds [`BOOT_GDT`].
    pub gdt_base: u64,
    /// First instruction.
    pub entry: u64,
    /// Initial stack pointer (`rsp` and `rbp`).
    pub stack: u64,
    /// Value for `rsi` (the boot-parameters pointer of the Linux 64-bit boot protocol).
    pub rsi: u64,
}

/// A GDT descriptor from its flags (access byte in bits 7:0, flags nibble in bits 15:12),
/// base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << (56 - 24))
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << (48 - 16))
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The `kvm_segment` a selector loads from descriptor `entry`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    // KVM takes the limit in bytes: a page-granular limit covers whole pages.
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit,
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Long-mode segment and control registers for `entry`, starting from the vCPU's
/// current `sregs` (which keep the APIC base and the other fields KVM filled in).
///
/// No IDT is loaded (limit 0): an exception before the guest loads its own shuts it
/// down, which is what a guest that has not set one up should get.
pub fn long_mode_sregs(mut sregs: kvm_sregs, entry: &LongModeEntry) -> kvm_sregs {
    let code = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
    let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
    sregs.gdt.base = entry.gdt_base;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET | CR0_NE | CR0_PG) & !(CR0_CD | CR0_NW);
    sregs.cr3 = entry.page_table_root;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// General registers for `entry`: `rip`, `rsp`/`rbp`, `rsi`, and the reserved bit 1 of
/// `rflags`.
pub fn boot_regs(entry: &LongModeEntry) -> kvm_regs {
    kvm_regs {
        rip: entry.entry,
        rsp: entry.stack,
        rbp: entry.stack,
        rsi: entry.rsi,
        rflags: 0x2,
        ..Default::default()
    }
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

/// Sets up `vcpu` (KVM id `apic_id`) to start at `entry` in 64-bit mode: CPUID, boot
/// MSRs, FPU, segment and control registers, general registers.
pub fn setup_long_mode(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    apic_id: u32,
    entry: &LongModeEntry,
) -> Result<(), X86Error> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
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

    vcpu.set_fpu(&boot_fpu()).map_err(kvm_err("KVM_SET_FPU"))?;
    let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs, entry))
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot_regs(entry))
        .map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn gdt_entries_decode_back() {
        // Values as found in the Linux boot GDT and other VMMs.
        assert_eq!(BOOT_GDT[1], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x008f_8b00_0000_ffff);
        let code = segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR);
        assert_eq!(
            (
                code.type_,
                code.s,
                code.dpl,
                code.present,
                code.l,
                code.db,
                code.g
            ),
            (0xb, 1, 0, 1, 1, 0, 1)
        );
        assert_eq!((code.base, code.limit, code.unusable), (0, 0xffff_ffff, 0));
        let data = segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR);
        assert_eq!(
            (data.type_, data.db, data.l, data.selector),
            (0x3, 1, 0, 0x10)
        );
        let tss = segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
        let odd = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 0x28);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
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
        assert_eq!((s.gdt.base, s.gdt.limit), (0x500, 31));
        assert_eq!((s.idt.base, s.idt.limit), (0, 0));
        assert_eq!(s.cs.selector, CODE_SELECTOR);
        assert_eq!(s.cs.l, 1);
        for seg in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!(seg.selector, DATA_SELECTOR);
        }
        assert_eq!(s.tr.selector, TSS_SELECTOR);
        assert_eq!(s.apic_base, 0xfee0_0900, "fields KVM filled in are kept");
    }

    #[test]
    fn regs_fpu_msrs() {
        let r = boot_regs(&entry());
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
