// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The VMSA KVM measures for each vCPU at `KVM_SEV_SNP_LAUNCH_FINISH`, predicted from
//! the state veil gives the vCPU.
//!
//! There is no userspace VMSA for SNP on KVM: `snp_launch_update_vmsa` builds each
//! vCPU's VMSA with `sev_es_sync_vmsa` (Linux 6.12 `arch/x86/kvm/svm/sev.c`) from the
//! VMCB save area and the vCPU's registers, encrypts it at GPA `0xFFFFFFFFF000` and
//! measures it. To predict the launch digest veil models that: [`VcpuState::reset`] is
//! a vCPU veil only gave CPUID, MSRs and FPU (an application processor), and
//! [`VcpuState::entry`] the boot vCPU after veil-vcpu's `KVM_SET_SREGS` and
//! `KVM_SET_REGS` of the loader's entry. The changes KVM makes on the way are applied
//! as `svm.c` makes them: CR0.CD/NW cleared (`KVM_X86_QUIRK_CD_NW_CLEARED`), CR4.MCE
//! added when the host has it, EFER.SVME added, segment attributes packed as
//! `svm_set_segment` packs them. This model is KVM's code read, not hardware observed.

use veil_vmm::kvm_bindings::{kvm_dtable, kvm_segment};
use veil_vmm::veil_abi::x86_64::{CR0_CD, CR0_NW, EntryRegisters};

/// The GPA KVM measures every VMSA at (`INITIAL_VMSA_GPA`).
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// `SVM_SEV_FEAT_SNP_ACTIVE`: KVM adds it to an SNP VM's `vmsa_features`.
pub const SEV_FEAT_SNP_ACTIVE: u64 = 1 << 0;
/// `EFER_SVME`, which `svm_set_efer` always sets.
pub use veil_vmm::veil_abi::x86_64::EFER_SVME;
/// `X86_CR4_MCE`, which `svm_set_cr4` takes from the host's CR4.
pub const CR4_MCE: u64 = 1 << 6;
/// `MSR_IA32_CR_PAT_DEFAULT`.
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;

/// One VMCB segment: selector, packed attributes, limit, base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VmsaSegment {
    /// The selector.
    pub selector: u16,
    /// `type | s << 4 | dpl << 5 | p << 7 | avl << 8 | l << 9 | db << 10 | g << 11`.
    pub attrib: u16,
    /// The limit in bytes.
    pub limit: u32,
    /// The base.
    pub base: u64,
}

impl VmsaSegment {
    /// The segment as `svm_set_segment` stores a `KVM_SET_SREGS` segment.
    pub fn from_kvm(s: &kvm_segment) -> Self {
        let present = u16::from(s.present & 1 != 0 && s.unusable == 0);
        VmsaSegment {
            selector: s.selector,
            attrib: u16::from(s.type_ & 0xf)
                | u16::from(s.s & 1) << 4
                | u16::from(s.dpl & 3) << 5
                | present << 7
                | u16::from(s.avl & 1) << 8
                | u16::from(s.l & 1) << 9
                | u16::from(s.db & 1) << 10
                | u16::from(s.g & 1) << 11,
            limit: s.limit,
            base: s.base,
        }
    }

    /// A descriptor table register as `svm_set_gdt`/`svm_set_idt` store it.
    pub fn table(t: &kvm_dtable) -> Self {
        VmsaSegment {
            limit: u32::from(t.limit),
            base: t.base,
            ..Default::default()
        }
    }

    const fn new(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        VmsaSegment {
            selector,
            attrib,
            limit,
            base,
        }
    }

    fn write(&self, page: &mut [u8], at: usize) {
        put(page, at, &self.selector.to_le_bytes());
        put(page, at + 2, &self.attrib.to_le_bytes());
        put(page, at + 4, &self.limit.to_le_bytes());
        put(page, at + 8, &self.base.to_le_bytes());
    }
}

/// What of a vCPU's state reaches its VMSA, as userspace sets it (before KVM's changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuState {
    /// `es`, `cs`, `ss`, `ds`, `fs`, `gs`.
    pub segments: [VmsaSegment; 6],
    /// GDTR.
    pub gdtr: VmsaSegment,
    /// LDTR.
    pub ldtr: VmsaSegment,
    /// IDTR.
    pub idtr: VmsaSegment,
    /// TR.
    pub tr: VmsaSegment,
    /// The CPL (`ss`'s DPL).
    pub cpl: u8,
    /// EFER as set.
    pub efer: u64,
    /// CR0 as set.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4 as set.
    pub cr4: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RIP.
    pub rip: u64,
    /// `rax`, `rcx`, `rdx`, `rbx`, `rsp`, `rbp`, `rsi`, `rdi`, `r8`..`r15`.
    pub gprs: [u64; 16],
    /// The x87 control word.
    pub fcw: u16,
    /// MXCSR.
    pub mxcsr: u32,
}

impl VcpuState {
    /// A vCPU as KVM creates it (`init_vmcb`, `kvm_vcpu_reset`: the reset vector at
    /// `f000:fff0`, `rdx` 0x600 as no CPUID is set yet) after veil-vcpu's `setup_cpu`
    /// (CPUID, MSRs, and `KVM_SET_FPU` with FCW 0x37f; none of the MSRs it sets is in
    /// the VMSA with a value other than zero). MXCSR is 0x1f80, `fpstate_init_fxstate`'s
    /// `MXCSR_DEFAULT`: `KVM_SET_FPU` does not write MXCSR.
    pub fn reset() -> Self {
        let data = VmsaSegment::new(0, 0x92, 0xffff, 0);
        let mut gprs = [0; 16];
        gprs[2] = 0x600;
        VcpuState {
            segments: [
                data,
                VmsaSegment::new(0xf000, 0x9a, 0xffff, 0xffff_0000),
                data,
                data,
                data,
                data,
            ],
            gdtr: VmsaSegment::new(0, 0, 0xffff, 0),
            ldtr: VmsaSegment::new(0, 0x82, 0xffff, 0),
            idtr: VmsaSegment::new(0, 0, 0xffff, 0),
            tr: VmsaSegment::new(0, 0x83, 0xffff, 0),
            cpl: 0,
            efer: 0,
            cr0: 0x6000_0010,
            cr3: 0,
            cr4: 0,
            rflags: 2,
            rip: 0xfff0,
            gprs,
            fcw: 0x37f,
            mxcsr: 0x1f80,
        }
    }

    /// The boot vCPU: [`reset`](Self::reset), then `entry` written the way veil-vcpu's
    /// `set_entry_registers` writes it (segments, descriptor tables and control
    /// registers with `KVM_SET_SREGS`, keeping the LDT; every general register with
    /// `KVM_SET_REGS`).
    pub fn entry(entry: &EntryRegisters) -> Self {
        let mut s = VcpuState::reset();
        let data = VmsaSegment::from_kvm(&entry.data);
        s.segments = [
            data,
            VmsaSegment::from_kvm(&entry.code),
            data,
            data,
            data,
            data,
        ];
        s.tr = VmsaSegment::from_kvm(&entry.tss);
        s.gdtr = VmsaSegment::table(&entry.gdt);
        s.idtr = VmsaSegment::table(&entry.idt);
        s.cpl = entry.data.dpl & 3;
        s.efer = entry.efer;
        s.cr0 = entry.cr0;
        s.cr3 = entry.cr3;
        s.cr4 = entry.cr4;
        let r = &entry.regs;
        s.rflags = r.rflags;
        s.rip = r.rip;
        s.gprs = [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        s
    }

    /// The 4 KiB VMSA `sev_es_sync_vmsa` builds from this state, for a VM whose
    /// `KVM_SEV_INIT2` asked for `vmsa_features` (KVM adds SNP_ACTIVE), on a host whose
    /// CR4 has MCE set or not.
    pub fn vmsa(&self, vmsa_features: u64, host_mce: bool) -> Vec<u8> {
        let mut page = vec![0u8; 4096];
        for (i, seg) in self.segments.iter().enumerate() {
            seg.write(&mut page, i * 0x10);
        }
        self.gdtr.write(&mut page, 0x60);
        self.ldtr.write(&mut page, 0x70);
        self.idtr.write(&mut page, 0x80);
        self.tr.write(&mut page, 0x90);
        page[0xcb] = self.cpl;
        let q = |page: &mut [u8], at: usize, v: u64| put(page, at, &v.to_le_bytes());
        q(&mut page, 0xd0, self.efer | EFER_SVME);
        q(
            &mut page,
            0x148,
            self.cr4 | if host_mce { CR4_MCE } else { 0 },
        );
        q(&mut page, 0x150, self.cr3);
        q(&mut page, 0x158, self.cr0 & !(CR0_CD | CR0_NW));
        q(&mut page, 0x160, 0x400); // dr7: DR7_FIXED_1
        q(&mut page, 0x168, 0xffff_0ff0); // dr6: DR6_ACTIVE_LOW
        q(&mut page, 0x170, self.rflags);
        q(&mut page, 0x178, self.rip);
        q(&mut page, 0x268, PAT_DEFAULT);
        let [
            rax,
            rcx,
            rdx,
            rbx,
            rsp,
            rbp,
            rsi,
            rdi,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
        ] = self.gprs;
        q(&mut page, 0x1f8, rax);
        q(&mut page, 0x1d8, rsp);
        for (at, v) in [
            (0x308, rcx),
            (0x310, rdx),
            (0x318, rbx),
            (0x328, rbp),
            (0x330, rsi),
            (0x338, rdi),
            (0x340, r8),
            (0x348, r9),
            (0x350, r10),
            (0x358, r11),
            (0x360, r12),
            (0x368, r13),
            (0x370, r14),
            (0x378, r15),
        ] {
            q(&mut page, at, v);
        }
        q(&mut page, 0x3b0, vmsa_features | SEV_FEAT_SNP_ACTIVE);
        q(&mut page, 0x3e8, 1); // xcr0: XFEATURE_MASK_FP, as at reset
        put(&mut page, 0x408, &self.mxcsr.to_le_bytes());
        put(&mut page, 0x410, &self.fcw.to_le_bytes());
        page
    }
}

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The VMSAs of `vcpus` vCPUs as veil sets them up: the boot vCPU at `entry`, the others
/// at reset, in vCPU index order (KVM's `kvm_for_each_vcpu`).
pub fn vmsa_pages(
    entry: &EntryRegisters,
    vcpus: u32,
    vmsa_features: u64,
    host_mce: bool,
) -> Vec<Vec<u8>> {
    (0..vcpus.max(1))
        .map(|id| match id {
            0 => VcpuState::entry(entry),
            _ => VcpuState::reset(),
        })
        .map(|s| s.vmsa(vmsa_features, host_mce))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_vmm::veil_abi::x86_64::EntryRegisters;

    fn u64_at(p: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn long_mode_entry_as_kvm_stores_it() {
        let mut e = EntryRegisters::long_mode(0x100_0200, 0x9000, 0x1000);
        e.regs.rsi = 0x7000;
        let p = VcpuState::entry(&e).vmsa(0, true);
        // cs: 64-bit code, type 0xb, S, P, L, G.
        assert_eq!(&p[0x10..0x12], &0x10u16.to_le_bytes());
        assert_eq!(&p[0x12..0x14], &0xa9bu16.to_le_bytes());
        // ss: flat data, type 3, S, P, DB, G.
        assert_eq!(&p[0x22..0x24], &0xc93u16.to_le_bytes());
        assert_eq!(&p[0x92..0x94], &0x8bu16.to_le_bytes(), "busy TSS");
        assert_eq!(u64_at(&p, 0x68), 0x1000, "GDT base");
        assert_eq!(u64_at(&p, 0xd0), 0x1500, "LME | LMA | SVME");
        assert_eq!(u64_at(&p, 0x158), 0x8000_0031, "PG | NE | ET | PE");
        assert_eq!(u64_at(&p, 0x148), 0x60, "PAE | MCE");
        assert_eq!(u64_at(&p, 0x150), 0x9000);
        assert_eq!(u64_at(&p, 0x178), 0x100_0200);
        assert_eq!(u64_at(&p, 0x330), 0x7000);
        assert_eq!(u64_at(&p, 0x310), 0, "KVM_SET_REGS cleared rdx");
        assert_eq!(u64_at(&p, 0x3b0), 1, "SNP_ACTIVE");
        assert_eq!(u64_at(&p, 0x3e8), 1);
    }

    #[test]
    fn reset_state_is_the_reset_vector() {
        let p = VcpuState::reset().vmsa(1 << 5, false);
        assert_eq!(u64_at(&p, 0x18), 0xffff_0000);
        assert_eq!(u64_at(&p, 0x178), 0xfff0);
        assert_eq!(u64_at(&p, 0x158), 0x10, "CD and NW cleared");
        assert_eq!(u64_at(&p, 0x148), 0, "no MCE on this host");
        assert_eq!(u64_at(&p, 0xd0), 0x1000);
        assert_eq!(u64_at(&p, 0x310), 0x600);
        assert_eq!(u64_at(&p, 0x3b0), 0x21, "DEBUG_SWAP | SNP_ACTIVE");
        assert_eq!(
            vmsa_pages(&EntryRegisters::protected32(0, 0x1000), 3, 0, true).len(),
            3
        );
    }
}
