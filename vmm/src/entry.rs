// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! From veil-loader's entry state to veil-vcpu's entry registers.
//!
//! veil-loader decides how a kernel is entered ([`EntryState`]: mode, registers, and
//! segments decoded from the GDT it wrote); veil-vcpu writes an entry's registers into a
//! vCPU ([`EntryRegisters`], [`setup_entry`](veil_vcpu::x86_64::setup_entry)). Neither
//! crate knows the other, so the mapping lives here. It is total: every field has a
//! counterpart with the same meaning, and veil-vcpu validates the result.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment};
use veil_loader::boot::{EntryMode, EntryState, Segment};
use veil_vcpu::x86_64::{CpuMode, EntryRegisters};

/// The mode veil-vcpu enters for veil-loader's `mode`: the PVH entry is 32-bit protected
/// mode, the Linux 64-bit boot protocol long mode.
pub fn cpu_mode(mode: EntryMode) -> CpuMode {
    match mode {
        EntryMode::Pvh32 => CpuMode::Protected32,
        EntryMode::Linux64 => CpuMode::Long64,
    }
}

/// The `kvm_segment` for a segment veil-loader decoded from its GDT.
///
/// Both give the limit in bytes, already scaled by the granularity bit, so it is copied
/// as it is; the flags become 0 or 1. A segment that is not present is marked unusable,
/// as KVM expects for a segment register holding nothing.
pub fn kvm_segment_of(segment: &Segment) -> kvm_segment {
    kvm_segment {
        base: segment.base,
        limit: segment.limit,
        selector: segment.selector,
        type_: segment.type_,
        present: u8::from(segment.present),
        dpl: segment.dpl,
        db: u8::from(segment.db),
        s: u8::from(segment.s),
        l: u8::from(segment.l),
        g: u8::from(segment.g),
        avl: u8::from(segment.avl),
        unusable: u8::from(!segment.present),
        padding: 0,
    }
}

/// veil-vcpu's entry registers for veil-loader's entry `state`.
///
/// `rip`, `rbx`, `rsi` and `rflags` come from the state; the other general registers,
/// the stack pointer included, are 0 (both boot protocols leave setting up a stack to
/// the kernel). No IDT is loaded. Control registers, the GDT and the segments are the
/// state's.
pub fn entry_registers(state: &EntryState) -> EntryRegisters {
    EntryRegisters {
        mode: cpu_mode(state.mode),
        regs: kvm_regs {
            rip: state.rip,
            rbx: state.rbx,
            rsi: state.rsi,
            rflags: state.rflags,
            ..Default::default()
        },
        cr0: state.cr0,
        cr3: state.cr3,
        cr4: state.cr4,
        efer: state.efer,
        gdt: kvm_dtable {
            base: state.gdt_base,
            limit: state.gdt_limit,
            ..Default::default()
        },
        idt: kvm_dtable::default(),
        code: kvm_segment_of(&state.code),
        data: kvm_segment_of(&state.data),
        tss: kvm_segment_of(&state.tss),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use veil_loader::boot::{
        CODE32_SELECTOR, CODE64_SELECTOR, CR0_ET, CR0_PE, CR0_PG, CR4_PAE, DATA_SELECTOR, EFER_LMA,
        EFER_LME, GDT, GDT_SIZE, TSS_SELECTOR,
    };
    use veil_vcpu::x86_64::{BOOT_GDT, X86Error, segment_from_gdt};

    use super::*;

    /// (base, limit, type, S, DPL, present, D/B, L, G) of a segment register.
    fn shape(s: &kvm_segment) -> (u64, u32, u8, u8, u8, u8, u8, u8, u8) {
        (
            s.base, s.limit, s.type_, s.s, s.dpl, s.present, s.db, s.l, s.g,
        )
    }

    #[test]
    fn pvh_entry_becomes_32_bit_protected_mode() {
        let state = EntryState::pvh(0x10_0000, 0x6000, 0x1000);
        let r = entry_registers(&state);
        assert_eq!(r.mode, CpuMode::Protected32);
        assert_eq!(
            (r.regs.rip, r.regs.rbx, r.regs.rsi, r.regs.rflags),
            (0x10_0000, 0x6000, 0, 2)
        );
        assert_eq!((r.regs.rsp, r.regs.rbp, r.regs.rax), (0, 0, 0));
        assert_eq!((r.cr0, r.cr3, r.cr4, r.efer), (CR0_PE | CR0_ET, 0, 0, 0));
        assert_eq!((r.gdt.base, u64::from(r.gdt.limit)), (0x1000, GDT_SIZE - 1));
        assert_eq!((r.idt.base, r.idt.limit), (0, 0));
        // Flat 4 GiB 32-bit code and data, limits in bytes.
        assert_eq!(r.code.selector, CODE32_SELECTOR);
        assert_eq!(shape(&r.code), (0, 0xffff_ffff, 0xb, 1, 0, 1, 1, 0, 1));
        assert_eq!(r.data.selector, DATA_SELECTOR);
        assert_eq!(shape(&r.data), (0, 0xffff_ffff, 0x3, 1, 0, 1, 1, 0, 1));
        // The PVH ABI's TSS: base 0, limit 0x67, byte granular, busy.
        assert_eq!(r.tss.selector, TSS_SELECTOR);
        assert_eq!(shape(&r.tss), (0, 0x67, 0xb, 0, 0, 1, 0, 0, 0));
        for s in [r.code, r.data, r.tss] {
            assert_eq!(s.unusable, 0);
        }
        r.validate().unwrap();
    }

    #[test]
    fn linux_entry_becomes_long_mode() {
        let state = EntryState::linux64(0x100_0000, 0x7000, 0x9000, 0x1000);
        let r = entry_registers(&state);
        assert_eq!(r.mode, CpuMode::Long64);
        assert_eq!(
            (r.regs.rip, r.regs.rbx, r.regs.rsi, r.regs.rflags),
            (0x100_0200, 0, 0x7000, 2)
        );
        assert_eq!(
            (r.cr0, r.cr3, r.cr4, r.efer),
            (
                CR0_PE | CR0_ET | CR0_PG,
                0x9000,
                CR4_PAE,
                EFER_LME | EFER_LMA
            )
        );
        assert_eq!(r.gdt.base, 0x1000);
        // __BOOT_CS and __BOOT_DS of the Linux boot protocol.
        assert_eq!(r.code.selector, CODE64_SELECTOR);
        assert_eq!(shape(&r.code), (0, 0xffff_ffff, 0xb, 1, 0, 1, 0, 1, 1));
        assert_eq!(r.data.selector, DATA_SELECTOR);
        assert_eq!(r.tss.selector, TSS_SELECTOR);
        r.validate().unwrap();
    }

    #[test]
    fn segments_match_veil_vcpus_own_decoding_of_the_loaders_gdt() {
        // veil-loader and veil-vcpu each decode GDT entries; through this mapping they
        // must give the same `kvm_segment` for every descriptor of both crates' tables.
        let loader = GDT.iter().enumerate().skip(1);
        let vcpu = BOOT_GDT.iter().enumerate().skip(1);
        for (i, &d) in loader.chain(vcpu) {
            let selector = (i * 8) as u16;
            assert_eq!(
                kvm_segment_of(&Segment::from_gdt_entry(selector, d)),
                segment_from_gdt(d, selector),
                "descriptor {d:#018x}"
            );
        }
        let state = EntryState::pvh(0x10_0000, 0x6000, 0x1000);
        assert_eq!(
            entry_registers(&state).code,
            segment_from_gdt(GDT[1], CODE32_SELECTOR)
        );
    }

    #[test]
    fn a_segment_that_is_not_present_is_unusable() {
        let s = kvm_segment_of(&Segment::from_gdt_entry(0, 0));
        assert_eq!((s.present, s.unusable), (0, 1));
    }

    #[test]
    fn an_inconsistent_state_is_mapped_but_refused_by_validation() {
        // A Linux entry whose EFER was lost: the mapping carries it over faithfully and
        // veil-vcpu refuses it before touching a vCPU.
        let mut state = EntryState::linux64(0x100_0000, 0x7000, 0x9000, 0x1000);
        state.efer = 0;
        let r = entry_registers(&state);
        assert_eq!(r.efer, 0);
        assert!(matches!(
            r.validate(),
            Err(X86Error::ControlBitsMissing {
                mode: CpuMode::Long64,
                ..
            })
        ));
        // A PVH entry given the 64-bit code segment.
        let mut state = EntryState::pvh(0x10_0000, 0x6000, 0x1000);
        state.code = Segment::from_gdt_entry(CODE64_SELECTOR, GDT[2]);
        assert!(matches!(
            entry_registers(&state).validate(),
            Err(X86Error::CodeSegmentMode { .. })
        ));
    }

    proptest! {
        #[test]
        fn both_decoders_agree_on_any_descriptor(d in any::<u64>(), index in 1u16..8192) {
            let selector = index << 3;
            prop_assert_eq!(
                kvm_segment_of(&Segment::from_gdt_entry(selector, d)),
                segment_from_gdt(d, selector)
            );
        }
    }
}
