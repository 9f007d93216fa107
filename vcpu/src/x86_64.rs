// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! x86-64 entry state: a vCPU set up to start a boot entry, in 32-bit protected mode
//! (the PVH entry) or in 64-bit long mode (the Linux 64-bit boot protocol).
//!
//! [`EntryRegisters`] is the whole register state an entry starts with, whoever decided
//! it: veil-loader's entry state (mapped by veil-vmm), [`LongModeEntry::registers`] for
//! guests on [`BOOT_GDT`], or the caller's own boot code. [`EntryRegisters::validate`]
//! refuses states that contradict their [`CpuMode`] or that KVM would refuse, before any
//! register is written; [`setup_entry`] then sets CPUID, boot MSRs, FPU, segment and
//! control registers, and general registers.
//!
//! The register values are computed by pure functions ([`entry_sregs`], [`boot_msrs`],
//! [`boot_fpu`], [`normalize_cpuid`]), tested without KVM. Writing the page tables and the
//! GDT into guest memory belongs to whoever places boot data (veil-loader); [`BOOT_GDT`]
//! is the table [`setup_long_mode`] builds its segment registers from, so the two always
//! agree.

use std::fmt;

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_dtable, kvm_fpu, kvm_msr_entry,
    kvm_regs, kvm_segment, kvm_sregs,
};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::abi::{EFER_LMA, msr};

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
/// CR0 bits 63:32 are reserved; KVM refuses a CR0 with any of them set
/// (`kvm_is_valid_cr0`, arch/x86/kvm/x86.c).
const CR0_RESERVED_HIGH: u64 = 0xffff_ffff_0000_0000;

// Descriptor types (Intel SDM vol. 3A, 3.4.5.1 and 3.5): bit 3 of a code or data
// segment's type means code, bit 1 of a data segment's type means writable; 0xb is a
// busy 32-bit (or, in long mode, 64-bit) TSS, 0x3 a busy 16-bit TSS.
const TYPE_CODE: u8 = 0x8;
const TYPE_DATA_WRITABLE: u8 = 0x2;
const TYPE_BUSY_TSS: u8 = 0xb;
const TYPE_BUSY_TSS16: u8 = 0x3;

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
    /// An entry in `mode` needs these bits of a control register set.
    #[error("{register} lacks {bits:#x}, which an entry in {mode} needs")]
    ControlBitsMissing {
        /// The entry's mode.
        mode: CpuMode,
        /// The register.
        register: ControlRegister,
        /// The bits that must be set and are not.
        bits: u64,
    },
    /// An entry in `mode` needs these bits of a control register clear: bits the mode
    /// excludes (EFER.LME and LMA in 32-bit mode), reserved bits (CR0 63:32), or CR0.NW
    /// without CR0.CD, which KVM refuses.
    #[error("{register} has {bits:#x} set, which an entry in {mode} cannot have")]
    ControlBitsForbidden {
        /// The entry's mode.
        mode: CpuMode,
        /// The register.
        register: ControlRegister,
        /// The bits that must be clear and are not.
        bits: u64,
    },
    /// The code segment does not run code of the entry's mode: long mode needs L=1 and
    /// D=0, 32-bit protected mode L=0 and D=1.
    #[error("a code segment with L={l} D={db} does not run {mode} code")]
    CodeSegmentMode {
        /// The entry's mode.
        mode: CpuMode,
        /// The code segment's L bit.
        l: u8,
        /// The code segment's D bit.
        db: u8,
    },
    /// A 32-bit entry point must lie below 4 GiB.
    #[error("entry point {rip:#x} is beyond the 4 GiB that {mode} reaches")]
    EntryAbove4G {
        /// The entry's mode.
        mode: CpuMode,
        /// The entry point.
        rip: u64,
    },
    /// A segment register would hold something it cannot hold.
    #[error("{role} segment (selector {selector:#x}) {problem}")]
    BadSegment {
        /// Which segment.
        role: SegmentRole,
        /// Its selector.
        selector: u16,
        /// What is wrong with it.
        problem: SegmentProblem,
    },
}

/// A register [`EntryRegisters::validate`] checks bits of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlRegister {
    /// CR0.
    Cr0,
    /// CR4.
    Cr4,
    /// The EFER MSR.
    Efer,
}

impl fmt::Display for ControlRegister {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlRegister::Cr0 => "CR0",
            ControlRegister::Cr4 => "CR4",
            ControlRegister::Efer => "EFER",
        })
    }
}

/// Which of an entry's segments (see [`EntryRegisters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentRole {
    /// `cs`.
    Code,
    /// `ds`, `es`, `fs`, `gs` and `ss`.
    Data,
    /// `tr`.
    Tss,
}

impl fmt::Display for SegmentRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SegmentRole::Code => "code",
            SegmentRole::Data => "data",
            SegmentRole::Tss => "task-state",
        })
    }
}

/// What is wrong with an entry's segment (the detail of [`X86Error::BadSegment`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentProblem {
    /// Not present, or marked unusable.
    Unusable,
    /// A descriptor type the register cannot hold: the code segment must be code, the
    /// data segment writable data (it is also `ss`), the TSS a busy TSS (16-bit only
    /// outside long mode).
    WrongType {
        /// The descriptor's S bit (1 for code or data, 0 for system segments).
        s: u8,
        /// The descriptor's type.
        type_: u8,
    },
    /// Not ring 0: a boot entry runs the kernel privileged.
    NotRing0 {
        /// The descriptor privilege level.
        dpl: u8,
    },
    /// A limit the descriptor's granularity cannot express. `kvm_segment` takes the
    /// limit in bytes: with G=1 its low 12 bits are all ones, with G=0 it is at most
    /// 0xfffff. A 20-bit descriptor limit passed on unscaled with G=1 ends up here, or
    /// describes a segment 4096 times too small.
    LimitGranularity {
        /// The limit in bytes.
        limit: u32,
        /// The granularity bit.
        g: u8,
    },
    /// The selector is null, points into the LDT, or lies past the GDT's limit, so the
    /// guest could not reload the segment from its GDT.
    Selector {
        /// The GDT's limit.
        gdt_limit: u16,
    },
}

impl fmt::Display for SegmentProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SegmentProblem::Unusable => write!(f, "is not present or is marked unusable"),
            SegmentProblem::WrongType { s, type_ } => write!(
                f,
                "has descriptor type {type_:#x} with S={s}, which this register cannot hold"
            ),
            SegmentProblem::NotRing0 { dpl } => write!(f, "has privilege level {dpl}, not 0"),
            SegmentProblem::LimitGranularity { limit, g } => {
                write!(f, "has limit {limit:#x}, which G={g} cannot express")
            }
            SegmentProblem::Selector { gdt_limit } => write!(
                f,
                "is null, in the LDT or beyond the GDT's limit {gdt_limit:#x}"
            ),
        }
    }
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> X86Error {
    move |source| X86Error::Kvm { op, source }
}

/// The CPU mode a boot entry starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuMode {
    /// 32-bit protected mode: CR0.PE, a 32-bit code segment, EFER.LME and LMA clear;
    /// paging as CR0.PG says. The PVH entry starts here, with paging off.
    Protected32,
    /// 64-bit long mode: CR0.PE and PG, CR4.PAE, EFER.LME and LMA, a 64-bit code
    /// segment. The Linux 64-bit boot protocol starts here.
    Long64,
}

impl fmt::Display for CpuMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CpuMode::Protected32 => "32-bit protected mode",
            CpuMode::Long64 => "64-bit long mode",
        })
    }
}

/// The register state a vCPU starts a boot entry with, whole: [`setup_entry`] writes
/// exactly these values. Of the vCPU's state it keeps only what an entry does not
/// define (APIC base, LDT, CR2, CR8, pending interrupts).
///
/// The segments are the hidden parts as `KVM_SET_SREGS` takes them: the limit in bytes
/// (scaled by G), `unusable` clear. They should match the descriptors at their selectors
/// in the GDT in guest memory, so that the guest reloading a segment gets the same one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntryRegisters {
    /// The mode the entry starts in; [`validate`](Self::validate) checks the rest
    /// against it.
    pub mode: CpuMode,
    /// General registers, `rip` and `rflags` (whose reserved bit 1 should be set).
    pub regs: kvm_regs,
    /// CR0.
    pub cr0: u64,
    /// CR3: the page-table root, when paging is on.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
    /// GDT base and limit.
    pub gdt: kvm_dtable,
    /// IDT base and limit. A limit of 0 loads no IDT: an exception before the guest
    /// loads its own shuts it down, which is what a guest that set up none should get.
    pub idt: kvm_dtable,
    /// `cs`.
    pub code: kvm_segment,
    /// `ds`, `es`, `fs`, `gs` and `ss`.
    pub data: kvm_segment,
    /// `tr`.
    pub tss: kvm_segment,
}

impl EntryRegisters {
    /// Checks what can be checked without KVM: the control registers against the mode
    /// (and against what KVM refuses), a 32-bit entry point below 4 GiB, the code
    /// segment's L and D bits against the mode, and each segment's presence, type,
    /// privilege level, limit against granularity, and selector against the GDT's limit.
    ///
    /// It does not read guest memory: that the GDT there holds these descriptors, and
    /// that CR3 points at page tables, stay the caller's to get right.
    pub fn validate(&self) -> Result<(), X86Error> {
        use ControlRegister::{Cr0, Cr4, Efer};
        let mode = self.mode;
        let (cr0_needed, cr4_needed, efer_needed, efer_forbidden) = match mode {
            CpuMode::Long64 => (CR0_PE | CR0_PG, CR4_PAE, EFER_LME | EFER_LMA, 0),
            CpuMode::Protected32 => (CR0_PE, 0, 0, EFER_LME | EFER_LMA),
        };
        let need = |register, value: u64, bits: u64| match bits & !value {
            0 => Ok(()),
            bits => Err(X86Error::ControlBitsMissing {
                mode,
                register,
                bits,
            }),
        };
        let forbid = |register, value: u64, bits: u64| match bits & value {
            0 => Ok(()),
            bits => Err(X86Error::ControlBitsForbidden {
                mode,
                register,
                bits,
            }),
        };
        need(Cr0, self.cr0, cr0_needed)?;
        need(Cr4, self.cr4, cr4_needed)?;
        need(Efer, self.efer, efer_needed)?;
        forbid(Cr0, self.cr0, CR0_RESERVED_HIGH)?;
        if self.cr0 & CR0_CD == 0 {
            forbid(Cr0, self.cr0, CR0_NW)?;
        }
        forbid(Efer, self.efer, efer_forbidden)?;

        if mode == CpuMode::Protected32 && self.regs.rip > u64::from(u32::MAX) {
            return Err(X86Error::EntryAbove4G {
                mode,
                rip: self.regs.rip,
            });
        }
        let (l, db) = match mode {
            CpuMode::Long64 => (1, 0),
            CpuMode::Protected32 => (0, 1),
        };
        if (self.code.l, self.code.db) != (l, db) {
            return Err(X86Error::CodeSegmentMode {
                mode,
                l: self.code.l,
                db: self.code.db,
            });
        }
        for (role, segment) in [
            (SegmentRole::Code, &self.code),
            (SegmentRole::Data, &self.data),
            (SegmentRole::Tss, &self.tss),
        ] {
            check_segment(mode, role, segment, self.gdt.limit).map_err(|problem| {
                X86Error::BadSegment {
                    role,
                    selector: segment.selector,
                    problem,
                }
            })?;
        }
        Ok(())
    }
}

fn check_segment(
    mode: CpuMode,
    role: SegmentRole,
    s: &kvm_segment,
    gdt_limit: u16,
) -> Result<(), SegmentProblem> {
    if s.present == 0 || s.unusable != 0 {
        return Err(SegmentProblem::Unusable);
    }
    let type_ok = match role {
        SegmentRole::Code => s.s == 1 && s.type_ & TYPE_CODE != 0,
        SegmentRole::Data => {
            s.s == 1 && s.type_ & (TYPE_CODE | TYPE_DATA_WRITABLE) == TYPE_DATA_WRITABLE
        }
        SegmentRole::Tss => {
            s.s == 0
                && (s.type_ == TYPE_BUSY_TSS
                    || (mode == CpuMode::Protected32 && s.type_ == TYPE_BUSY_TSS16))
        }
    };
    if !type_ok {
        return Err(SegmentProblem::WrongType {
            s: s.s,
            type_: s.type_,
        });
    }
    if role != SegmentRole::Tss && s.dpl != 0 {
        return Err(SegmentProblem::NotRing0 { dpl: s.dpl });
    }
    let expressible = match s.g {
        0 => s.limit <= 0xf_ffff,
        _ => s.limit & 0xfff == 0xfff,
    };
    if !expressible {
        return Err(SegmentProblem::LimitGranularity {
            limit: s.limit,
            g: s.g,
        });
    }
    // The selector's index (bits 15:3) times 8, plus the descriptor's 8 bytes.
    let last_byte = u32::from(s.selector & !0x7) + 7;
    if s.selector < 8 || s.selector & 0x4 != 0 || last_byte > u32::from(gdt_limit) {
        return Err(SegmentProblem::Selector { gdt_limit });
    }
    Ok(())
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

impl LongModeEntry {
    /// The whole entry: [`BOOT_GDT`]'s segments (code 0x08, data 0x10, TSS 0x18) with the
    /// GDT at `gdt_base`, no IDT, CR0 = PE | ET | NE | PG, CR3 = `page_table_root`,
    /// CR4 = PAE, EFER = LME | LMA, and the general registers of [`boot_regs`].
    pub fn registers(&self) -> EntryRegisters {
        EntryRegisters {
            mode: CpuMode::Long64,
            regs: boot_regs(self),
            cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
            cr3: self.page_table_root,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            gdt: kvm_dtable {
                base: self.gdt_base,
                limit: (std::mem::size_of_val(&BOOT_GDT) - 1) as u16,
                ..Default::default()
            },
            idt: kvm_dtable::default(),
            code: segment_from_gdt(BOOT_GDT[1], CODE_SELECTOR),
            data: segment_from_gdt(BOOT_GDT[2], DATA_SELECTOR),
            tss: segment_from_gdt(BOOT_GDT[3], TSS_SELECTOR),
        }
    }
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

    /// A PVH-style entry: flat 32-bit code 0x08, data 0x10, a busy 32-bit TSS 0x18 with
    /// limit 0x67, paging off.
    fn protected32() -> EntryRegisters {
        let gdt = [
            0,
            gdt_entry(0xc09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x008b, 0, 0x67),
        ];
        EntryRegisters {
            mode: CpuMode::Protected32,
            regs: kvm_regs {
                rip: 0x10_0000,
                rbx: 0x6000,
                rflags: 2,
                ..Default::default()
            },
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            gdt: kvm_dtable {
                base: 0x500,
                limit: 31,
                ..Default::default()
            },
            idt: kvm_dtable::default(),
            code: segment_from_gdt(gdt[1], 0x08),
            data: segment_from_gdt(gdt[2], 0x10),
            tss: segment_from_gdt(gdt[3], 0x18),
        }
    }

    #[test]
    fn long_mode_entry_registers_are_valid_and_whole() {
        let r = entry().registers();
        r.validate().unwrap();
        assert_eq!(r.mode, CpuMode::Long64);
        assert_eq!(r.regs, boot_regs(&entry()));
        assert_eq!(
            (r.cr0, r.cr3, r.cr4, r.efer),
            (0x8000_0031, 0x1000, CR4_PAE, EFER_LME | EFER_LMA)
        );
        assert_eq!((r.gdt.base, r.gdt.limit), (0x500, 31));
        assert_eq!((r.idt.base, r.idt.limit), (0, 0));
        assert_eq!(
            (r.code.selector, r.data.selector, r.tss.selector),
            (CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR)
        );
        protected32().validate().unwrap();
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

    /// `validate` on `entry` changed by `edit`.
    fn refused(edit: impl FnOnce(&mut EntryRegisters), entry: EntryRegisters) -> X86Error {
        let mut entry = entry;
        edit(&mut entry);
        entry.validate().unwrap_err()
    }

    #[test]
    fn control_registers_that_contradict_the_mode_are_refused() {
        use ControlRegister::*;
        let long = entry().registers();
        let missing = |e: X86Error| match e {
            X86Error::ControlBitsMissing {
                mode,
                register,
                bits,
            } => (mode, register, bits),
            other => panic!("{other}"),
        };
        let forbidden = |e: X86Error| match e {
            X86Error::ControlBitsForbidden {
                mode,
                register,
                bits,
            } => (mode, register, bits),
            other => panic!("{other}"),
        };
        let l = CpuMode::Long64;
        assert_eq!(
            missing(refused(|e| e.cr0 &= !CR0_PG, long)),
            (l, Cr0, CR0_PG)
        );
        assert_eq!(
            missing(refused(|e| e.cr0 = 0, long)),
            (l, Cr0, CR0_PE | CR0_PG)
        );
        assert_eq!(missing(refused(|e| e.cr4 = 0, long)), (l, Cr4, CR4_PAE));
        assert_eq!(
            missing(refused(|e| e.efer &= !EFER_LME, long)),
            (l, Efer, EFER_LME)
        );
        // KVM refuses LME with paging on unless LMA is set too.
        assert_eq!(
            missing(refused(|e| e.efer = EFER_LME, long)),
            (l, Efer, EFER_LMA)
        );
        assert_eq!(
            forbidden(refused(|e| e.cr0 |= 1 << 32, long)),
            (l, Cr0, 1 << 32)
        );
        assert_eq!(
            forbidden(refused(|e| e.cr0 |= CR0_NW, long)),
            (l, Cr0, CR0_NW)
        );
        // NW with CD is a valid (if slow) cache setting.
        let mut cached = long;
        cached.cr0 |= CR0_NW | CR0_CD;
        assert!(cached.validate().is_ok());

        let p = CpuMode::Protected32;
        let pvh = protected32();
        assert_eq!(missing(refused(|e| e.cr0 = CR0_ET, pvh)), (p, Cr0, CR0_PE));
        assert_eq!(
            forbidden(refused(|e| e.efer = EFER_LME, pvh)),
            (p, Efer, EFER_LME)
        );
        assert_eq!(
            forbidden(refused(|e| e.efer = EFER_LMA, pvh)),
            (p, Efer, EFER_LMA)
        );
        // 32-bit paging, with or without PAE, is still 32-bit protected mode.
        let mut paged = pvh;
        (paged.cr0, paged.cr3, paged.cr4) = (CR0_PE | CR0_PG, 0x1000, CR4_PAE);
        assert!(paged.validate().is_ok());
    }

    #[test]
    fn a_32_bit_entry_point_must_be_below_4g() {
        let e = refused(|e| e.regs.rip = 1 << 32, protected32());
        assert!(
            matches!(
                e,
                X86Error::EntryAbove4G {
                    rip: 0x1_0000_0000,
                    ..
                }
            ),
            "{e}"
        );
        let mut top = protected32();
        top.regs.rip = 0xffff_fff0;
        assert!(top.validate().is_ok());
    }

    #[test]
    fn the_code_segment_must_run_the_modes_code() {
        let long = entry().registers();
        let pvh = protected32();
        // 32-bit code for a long-mode entry, and the other way round.
        let e = refused(|e| e.code = pvh.code, long);
        assert!(
            matches!(
                e,
                X86Error::CodeSegmentMode {
                    mode: CpuMode::Long64,
                    l: 0,
                    db: 1
                }
            ),
            "{e}"
        );
        let e = refused(|e| e.code = long.code, pvh);
        assert!(
            matches!(
                e,
                X86Error::CodeSegmentMode {
                    mode: CpuMode::Protected32,
                    l: 1,
                    db: 0
                }
            ),
            "{e}"
        );
        // L and D both set is reserved; 16-bit protected mode is not this entry.
        assert!(matches!(
            refused(|e| e.code.db = 1, long),
            X86Error::CodeSegmentMode { .. }
        ));
        assert!(matches!(
            refused(|e| e.code.db = 0, pvh),
            X86Error::CodeSegmentMode { .. }
        ));
    }

    #[test]
    fn segments_are_checked() {
        let pvh = protected32();
        let bad = |edit: fn(&mut EntryRegisters)| match refused(edit, pvh) {
            X86Error::BadSegment {
                role,
                selector,
                problem,
            } => (role, selector, problem),
            other => panic!("{other}"),
        };
        use SegmentProblem::*;
        use SegmentRole::*;
        assert_eq!(bad(|e| e.code.present = 0), (Code, 0x08, Unusable));
        assert_eq!(bad(|e| e.data.unusable = 1), (Data, 0x10, Unusable));
        assert_eq!(bad(|e| e.tss.present = 0), (Tss, 0x18, Unusable));
        // Data in cs, code in ss, read-only data in ss, a code segment as TSS, and an
        // available (not busy) TSS.
        assert_eq!(
            bad(|e| e.code.type_ = 0x3),
            (Code, 0x08, WrongType { s: 1, type_: 0x3 })
        );
        assert_eq!(
            bad(|e| e.data.type_ = 0xb),
            (Data, 0x10, WrongType { s: 1, type_: 0xb })
        );
        assert_eq!(
            bad(|e| e.data.type_ = 0x1),
            (Data, 0x10, WrongType { s: 1, type_: 0x1 })
        );
        assert_eq!(
            bad(|e| e.tss.s = 1),
            (Tss, 0x18, WrongType { s: 1, type_: 0xb })
        );
        assert_eq!(
            bad(|e| e.tss.type_ = 0x9),
            (Tss, 0x18, WrongType { s: 0, type_: 0x9 })
        );
        assert_eq!(bad(|e| e.code.dpl = 3), (Code, 0x08, NotRing0 { dpl: 3 }));
        assert_eq!(bad(|e| e.data.dpl = 1), (Data, 0x10, NotRing0 { dpl: 1 }));
        // A 20-bit descriptor limit passed on unscaled, and a byte limit past 1 MiB
        // with byte granularity.
        assert_eq!(
            bad(|e| e.code.limit = 0xf_f000),
            (
                Code,
                0x08,
                LimitGranularity {
                    limit: 0xf_f000,
                    g: 1
                }
            )
        );
        assert_eq!(
            bad(|e| e.tss.limit = 0x10_0000),
            (
                Tss,
                0x18,
                LimitGranularity {
                    limit: 0x10_0000,
                    g: 0
                }
            )
        );
        // Null, LDT, and past the GDT's end (limit 31: selectors up to 0x18).
        assert_eq!(
            bad(|e| e.code.selector = 0),
            (Code, 0, Selector { gdt_limit: 31 })
        );
        assert_eq!(
            bad(|e| e.data.selector = 0x14),
            (Data, 0x14, Selector { gdt_limit: 31 })
        );
        assert_eq!(
            bad(|e| e.tss.selector = 0x20),
            (Tss, 0x20, Selector { gdt_limit: 31 })
        );
        assert_eq!(
            bad(|e| e.gdt.limit = 0x1e),
            (Tss, 0x18, Selector { gdt_limit: 0x1e })
        );
        // A busy 16-bit TSS is fine outside long mode only.
        let mut tss16 = pvh;
        tss16.tss.type_ = 0x3;
        assert!(tss16.validate().is_ok());
        let mut long = entry().registers();
        long.tss.type_ = 0x3;
        assert!(matches!(
            long.validate(),
            Err(X86Error::BadSegment {
                role: Tss,
                problem: WrongType { .. },
                ..
            })
        ));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let e = refused(|e| e.efer = 0, entry().registers());
        assert_eq!(
            e.to_string(),
            "EFER lacks 0x500, which an entry in 64-bit long mode needs"
        );
        let e = refused(|e| e.efer = EFER_LME, protected32());
        assert_eq!(
            e.to_string(),
            "EFER has 0x100 set, which an entry in 32-bit protected mode cannot have"
        );
        let e = refused(|e| e.code.limit = 0xf_f000, protected32());
        assert_eq!(
            e.to_string(),
            "code segment (selector 0x8) has limit 0xff000, which G=1 cannot express"
        );
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
