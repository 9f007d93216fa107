// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! x86-64 boot state: the register state a vCPU starts a boot entry with, the GDT veil
//! writes for it, descriptor encoding, and the control-register bits.
//!
//! Whoever places boot data (veil-loader, or a VMM's own code) builds an
//! [`EntryRegisters`]; whoever sets up the vCPU (veil-vcpu's `setup_entry`) writes
//! exactly that value into it. [`EntryRegisters::validate`] refuses a state that
//! contradicts its [`CpuMode`], or that KVM or the CPU would refuse, before either side
//! acts on it. Segments are held as `kvm_segment`s, the shape `KVM_SET_SREGS` takes, with
//! the limit in bytes (scaled by the granularity bit); [`segment_from_gdt`] decodes one
//! from the descriptor the guest would load, so the two always agree.

use std::fmt;

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment};

/// CR0 protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0 extension type (hard-wired to 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0 numeric error.
pub const CR0_NE: u64 = 1 << 5;
/// CR0 not write-through.
pub const CR0_NW: u64 = 1 << 29;
/// CR0 cache disable.
pub const CR0_CD: u64 = 1 << 30;
/// CR0 paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4 physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER secure virtual machine enable: KVM sets it in every SEV VMSA itself
/// (`svm_set_efer`); a vCPU is never given it.
pub const EFER_SVME: u64 = 1 << 12;
/// CR0 bits 63:32 are reserved; KVM refuses a CR0 with any of them set
/// (`kvm_is_valid_cr0`, arch/x86/kvm/x86.c).
const CR0_RESERVED_HIGH: u64 = 0xffff_ffff_0000_0000;
// Sources: arch/x86/include/uapi/asm/processor-flags.h (X86_CR0_*, X86_CR4_*) and
// arch/x86/include/asm/msr-index.h (EFER_*).

// Descriptor types (Intel SDM vol. 3A, 3.4.5.1 and 3.5): bit 3 of a code or data
// segment's type means code, bit 1 of a data segment's type means writable; 0xb is a
// busy 32-bit (or, in long mode, 64-bit) TSS, 0x3 a busy 16-bit TSS.
const TYPE_CODE: u8 = 0x8;
const TYPE_DATA_WRITABLE: u8 = 0x2;
const TYPE_BUSY_TSS: u8 = 0xb;
const TYPE_BUSY_TSS16: u8 = 0x3;

/// Selector of the flat 32-bit code segment in [`BOOT_GDT`] (the PVH entry's `cs`).
pub const BOOT_CODE32: u16 = 0x08;
/// Selector of the 64-bit code segment in [`BOOT_GDT`]: `__BOOT_CS` of the Linux boot
/// protocol.
pub const BOOT_CODE64: u16 = 0x10;
/// Selector of the flat data segment in [`BOOT_GDT`]: `__BOOT_DS` of the Linux boot
/// protocol.
pub const BOOT_DATA: u16 = 0x18;
/// Selector of the task-state segment in [`BOOT_GDT`] (VMX needs a usable, busy TR).
pub const BOOT_TSS: u16 = 0x20;

/// The PVH ABI's TSS limit: the size of a 32-bit TSS minus one.
const TSS_LIMIT: u32 = 0x67;

/// The GDT of a boot entry: null, flat 32-bit code ([`BOOT_CODE32`]), 64-bit code
/// ([`BOOT_CODE64`]), flat data ([`BOOT_DATA`]) and a busy 32-bit TSS ([`BOOT_TSS`]).
///
/// Its selectors are the Linux boot protocol's, so one table serves the PVH entry, the
/// 64-bit Linux entry and any flat 64-bit guest. Whoever writes boot data writes these
/// descriptors ([`boot_gdt_bytes`]); [`EntryRegisters::protected32`] and
/// [`EntryRegisters::long_mode`] load their segments from the same values.
pub const BOOT_GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xf_ffff), // G, D, present, code, execute/read, accessed
    gdt_entry(0xa09b, 0, 0xf_ffff), // G, L, present, code, execute/read, accessed
    gdt_entry(0xc093, 0, 0xf_ffff), // G, B, present, data, read/write, accessed
    gdt_entry(0x008b, 0, TSS_LIMIT), // present, busy 32-bit TSS
];

/// [`BOOT_GDT`]'s limit: its size in bytes minus one.
pub const BOOT_GDT_LIMIT: u16 = (BOOT_GDT.len() * 8 - 1) as u16;

/// [`BOOT_GDT`] as the bytes that go into guest memory.
pub fn boot_gdt_bytes() -> Vec<u8> {
    BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect()
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

/// The `kvm_segment` a selector loads from descriptor `entry`: the limit in bytes
/// (scaled by the granularity bit), and `unusable` where the descriptor is not present.
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

/// The segment of [`BOOT_GDT`] for `selector`, or `None` for the null selector or one
/// past the table.
pub fn boot_segment(selector: u16) -> Option<kvm_segment> {
    let index = (selector >> 3) as usize;
    if index == 0 || index >= BOOT_GDT.len() || selector & 0x7 != 0 {
        return None;
    }
    Some(segment_from_gdt(BOOT_GDT[index], selector))
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

/// What is wrong with an entry's segment (the detail of [`EntryError::BadSegment`]).
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

/// Why an [`EntryRegisters`] cannot start a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
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

/// The register state a vCPU starts a boot entry with, whole: veil-vcpu's `setup_entry`
/// writes exactly these values. Of the vCPU's state it keeps only what an entry does not
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

/// [`BOOT_GDT`]'s segment for `selector`, which is one of its own.
fn boot(selector: u16) -> kvm_segment {
    // Only called with BOOT_GDT's selectors; the fallback is an unusable segment that
    // `validate` refuses.
    boot_segment(selector).unwrap_or_else(|| segment_from_gdt(0, selector))
}

impl EntryRegisters {
    /// A 32-bit protected-mode entry at `rip` with paging off, on [`BOOT_GDT`] at
    /// `gdt_base`: CR0 = PE | ET, flat 32-bit code and data, the busy TSS, no IDT,
    /// `rflags` = 2, every other register 0. The PVH entry adds `rbx`.
    pub fn protected32(rip: u64, gdt_base: u64) -> Self {
        EntryRegisters {
            mode: CpuMode::Protected32,
            regs: kvm_regs {
                rip,
                rflags: 0x2,
                ..Default::default()
            },
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            gdt: kvm_dtable {
                base: gdt_base,
                limit: BOOT_GDT_LIMIT,
                ..Default::default()
            },
            idt: kvm_dtable::default(),
            code: boot(BOOT_CODE32),
            data: boot(BOOT_DATA),
            tss: boot(BOOT_TSS),
        }
    }

    /// A 64-bit long-mode entry at `rip` on the page tables at `page_table_root`, on
    /// [`BOOT_GDT`] at `gdt_base`: CR0 = PE | ET | NE | PG, CR4 = PAE, EFER = LME | LMA,
    /// 64-bit code, flat data, the busy TSS, no IDT, `rflags` = 2, every other register 0.
    /// The Linux entry adds `rsi`, a guest of its own its stack pointer.
    pub fn long_mode(rip: u64, page_table_root: u64, gdt_base: u64) -> Self {
        EntryRegisters {
            mode: CpuMode::Long64,
            cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
            cr3: page_table_root,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            code: boot(BOOT_CODE64),
            ..Self::protected32(rip, gdt_base)
        }
    }

    /// Checks what can be checked without KVM: the control registers against the mode
    /// (and against what KVM refuses), a 32-bit entry point below 4 GiB, the code
    /// segment's L and D bits against the mode, and each segment's presence, type,
    /// privilege level, limit against granularity, and selector against the GDT's limit.
    ///
    /// It does not read guest memory: that the GDT there holds these descriptors, and
    /// that CR3 points at page tables, stay the caller's to get right.
    pub fn validate(&self) -> Result<(), EntryError> {
        use ControlRegister::{Cr0, Cr4, Efer};
        let mode = self.mode;
        let (cr0_needed, cr4_needed, efer_needed, efer_forbidden) = match mode {
            CpuMode::Long64 => (CR0_PE | CR0_PG, CR4_PAE, EFER_LME | EFER_LMA, 0),
            CpuMode::Protected32 => (CR0_PE, 0, 0, EFER_LME | EFER_LMA),
        };
        let need = |register, value: u64, bits: u64| match bits & !value {
            0 => Ok(()),
            bits => Err(EntryError::ControlBitsMissing {
                mode,
                register,
                bits,
            }),
        };
        let forbid = |register, value: u64, bits: u64| match bits & value {
            0 => Ok(()),
            bits => Err(EntryError::ControlBitsForbidden {
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
            return Err(EntryError::EntryAbove4G {
                mode,
                rip: self.regs.rip,
            });
        }
        let (l, db) = match mode {
            CpuMode::Long64 => (1, 0),
            CpuMode::Protected32 => (0, 1),
        };
        if (self.code.l, self.code.db) != (l, db) {
            return Err(EntryError::CodeSegmentMode {
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
                EntryError::BadSegment {
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

/// Where a small 64-bit guest starts: the shorthand for an [`EntryRegisters::long_mode`]
/// entry with a stack.
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

impl LongModeEntry {
    /// The whole entry: [`EntryRegisters::long_mode`] with `rsp` and `rbp` at the stack
    /// and `rsi` set.
    pub fn registers(&self) -> EntryRegisters {
        let mut r = EntryRegisters::long_mode(self.entry, self.page_table_root, self.gdt_base);
        r.regs.rsp = self.stack;
        r.regs.rbp = self.stack;
        r.regs.rsi = self.rsi;
        r
    }
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
    fn boot_gdt_encodes_and_decodes_back() {
        // Known encodings (Intel SDM vol. 3A, 3.4.5): flat 4 GiB code/data, and the
        // Linux boot GDT's 64-bit code.
        assert_eq!(BOOT_GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[4], 0x0000_8b00_0000_0067);
        let code32 = boot_segment(BOOT_CODE32).unwrap();
        assert_eq!(
            (code32.base, code32.limit, code32.type_),
            (0, 0xffff_ffff, 0xb)
        );
        assert_eq!((code32.s, code32.db, code32.g, code32.l), (1, 1, 1, 0));
        let code = boot_segment(BOOT_CODE64).unwrap();
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
        let data = boot_segment(BOOT_DATA).unwrap();
        assert_eq!(
            (data.type_, data.db, data.l, data.selector, data.limit),
            (0x3, 1, 0, 0x18, 0xffff_ffff)
        );
        let tss = boot_segment(BOOT_TSS).unwrap();
        assert_eq!(
            (tss.type_, tss.s, tss.base, tss.limit, tss.g),
            (0xb, 0, 0, 0x67, 0)
        );
        let odd = segment_from_gdt(gdt_entry(0x0093, 0x1234_5678, 0xabcde), 0x28);
        assert_eq!((odd.base, odd.limit, odd.g), (0x1234_5678, 0xabcde, 0));
        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
        assert_eq!(boot_segment(0), None);
        assert_eq!(boot_segment(0x28), None);
        assert_eq!(boot_segment(0x0c), None);
        assert_eq!(boot_gdt_bytes().len(), usize::from(BOOT_GDT_LIMIT) + 1);
    }

    /// A PVH-style entry on a GDT of its own: flat 32-bit code 0x08, data 0x10, a busy
    /// 32-bit TSS 0x18 with limit 0x67, paging off.
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
    fn boot_gdt_entries_are_valid_and_whole() {
        let r = entry().registers();
        r.validate().unwrap();
        assert_eq!(r.mode, CpuMode::Long64);
        assert_eq!(
            (
                r.regs.rip,
                r.regs.rsp,
                r.regs.rbp,
                r.regs.rsi,
                r.regs.rflags
            ),
            (0x10000, 0x80000, 0x80000, 0x7000, 2)
        );
        assert_eq!((r.regs.rax, r.regs.rbx), (0, 0));
        assert_eq!(
            (r.cr0, r.cr3, r.cr4, r.efer),
            (0x8000_0031, 0x1000, CR4_PAE, EFER_LME | EFER_LMA)
        );
        assert_eq!((r.gdt.base, r.gdt.limit), (0x500, 39));
        assert_eq!((r.idt.base, r.idt.limit), (0, 0));
        assert_eq!(
            (r.code.selector, r.data.selector, r.tss.selector),
            (BOOT_CODE64, BOOT_DATA, BOOT_TSS)
        );
        let p = EntryRegisters::protected32(0x10_0000, 0x1000);
        p.validate().unwrap();
        assert_eq!((p.cr0, p.cr3, p.cr4, p.efer), (CR0_PE | CR0_ET, 0, 0, 0));
        assert_eq!(p.code.selector, BOOT_CODE32);
        assert_eq!((p.code.l, p.code.db), (0, 1));
        protected32().validate().unwrap();
    }

    /// `validate` on `entry` changed by `edit`.
    fn refused(edit: impl FnOnce(&mut EntryRegisters), entry: EntryRegisters) -> EntryError {
        let mut entry = entry;
        edit(&mut entry);
        entry.validate().unwrap_err()
    }

    #[test]
    fn control_registers_that_contradict_the_mode_are_refused() {
        use ControlRegister::*;
        let long = entry().registers();
        let missing = |e: EntryError| match e {
            EntryError::ControlBitsMissing {
                mode,
                register,
                bits,
            } => (mode, register, bits),
            other => panic!("{other}"),
        };
        let forbidden = |e: EntryError| match e {
            EntryError::ControlBitsForbidden {
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
                EntryError::EntryAbove4G {
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
                EntryError::CodeSegmentMode {
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
                EntryError::CodeSegmentMode {
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
            EntryError::CodeSegmentMode { .. }
        ));
        assert!(matches!(
            refused(|e| e.code.db = 0, pvh),
            EntryError::CodeSegmentMode { .. }
        ));
    }

    #[test]
    fn segments_are_checked() {
        let pvh = protected32();
        let bad = |edit: fn(&mut EntryRegisters)| match refused(edit, pvh) {
            EntryError::BadSegment {
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
            Err(EntryError::BadSegment {
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

    proptest::proptest! {
        /// Decoding inverts encoding for any flags, base and limit: the segment KVM is
        /// given is the one the guest would load from the descriptor veil wrote.
        #[test]
        fn decoding_inverts_encoding(
            flags in proptest::num::u16::ANY,
            base in proptest::num::u32::ANY,
            limit in 0u32..=0xf_ffff,
            index in 1u16..8192,
        ) {
            let selector = index << 3;
            let s = segment_from_gdt(gdt_entry(flags, base, limit), selector);
            let g = (flags >> 15) & 1;
            let want_limit = if g == 1 { (limit << 12) | 0xfff } else { limit };
            proptest::prop_assert_eq!(s.base, u64::from(base));
            proptest::prop_assert_eq!(s.limit, want_limit);
            proptest::prop_assert_eq!(s.selector, selector);
            proptest::prop_assert_eq!(u16::from(s.type_), flags & 0xf);
            proptest::prop_assert_eq!(u16::from(s.s), (flags >> 4) & 1);
            proptest::prop_assert_eq!(u16::from(s.dpl), (flags >> 5) & 3);
            proptest::prop_assert_eq!(u16::from(s.present), (flags >> 7) & 1);
            proptest::prop_assert_eq!(s.unusable, 1 - s.present);
            proptest::prop_assert_eq!(u16::from(s.avl), (flags >> 12) & 1);
            proptest::prop_assert_eq!(u16::from(s.l), (flags >> 13) & 1);
            proptest::prop_assert_eq!(u16::from(s.db), (flags >> 14) & 1);
            proptest::prop_assert_eq!(u16::from(s.g), g);
        }
    }
}
