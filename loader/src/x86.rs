// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! x86 boot data, built as bytes: the GDT, identity-mapped page tables, the Linux
//! `boot_params` zero page and the PVH `hvm_start_info` with its memory map, and the
//! register state a vCPU needs to enter the kernel.
//!
//! Everything here is a pure function of its inputs: the same layout gives the same bytes
//! on every machine, which is what makes the measurement reproducible.

use linux_loader::bootparam::{
    E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH, boot_e820_entry, boot_params,
};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use serde::{Deserialize, Serialize};
use vm_memory::ByteValued;

use crate::image::BzImage;
use crate::ram::{ByteRange, GuestRam, PAGE_SIZE};

/// Selector of the flat 32-bit code segment (PVH entry).
pub const CODE32_SELECTOR: u16 = 0x08;
/// Selector of the 64-bit code segment: `__BOOT_CS` of the Linux boot protocol.
pub const CODE64_SELECTOR: u16 = 0x10;
/// Selector of the flat data segment: `__BOOT_DS` of the Linux boot protocol.
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the task state segment (VMX requires a usable, busy TR).
pub const TSS_SELECTOR: u16 = 0x20;

/// Descriptor flags (access byte in bits 0-7, G/DB/L/AVL in bits 12-15).
const CODE32_FLAGS: u16 = 0xc09b; // G, D, present, code, execute/read, accessed
const CODE64_FLAGS: u16 = 0xa09b; // G, L, present, code, execute/read, accessed
const DATA_FLAGS: u16 = 0xc093; // G, B, present, data, read/write, accessed
const TSS_FLAGS: u16 = 0x008b; // present, busy 32-bit TSS
/// The PVH ABI's TSS limit (`0x67`, the size of a 32-bit TSS minus one).
const TSS_LIMIT: u32 = 0x67;

/// The GDT veil writes: null, 32-bit code, 64-bit code, data, TSS.
pub const GDT: [u64; 5] = [
    0,
    gdt_entry(CODE32_FLAGS, 0, 0xf_ffff),
    gdt_entry(CODE64_FLAGS, 0, 0xf_ffff),
    gdt_entry(DATA_FLAGS, 0, 0xf_ffff),
    gdt_entry(TSS_FLAGS, 0, TSS_LIMIT),
];

/// Size of the GDT in bytes.
pub const GDT_SIZE: u64 = (GDT.len() * 8) as u64;

/// Number of 4 KiB pages of the identity-mapped page tables: one PML4, one PDPT and four
/// page directories of 2 MiB pages, mapping the first 4 GiB.
pub const PAGE_TABLE_PAGES: u64 = 6;

/// The PVH start-of-day magic (`XEN_HVM_START_MAGIC_VALUE`, Xen `arch-x86/hvm/start_info.h`).
pub const PVH_START_MAGIC: u32 = 0x336e_c578;
/// e820 / PVH memory map type of usable RAM (`E820_RAM`, `XEN_HVM_MEMMAP_TYPE_RAM`).
pub const E820_RAM: u32 = 1;
/// `type_of_loader` for a boot loader without an assigned id ("undefined", boot.rst).
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// CR0 protection enable.
pub const CR0_PE: u64 = 1 << 0;
/// CR0 extension type (hard-wired to 1 on modern CPUs).
pub const CR0_ET: u64 = 1 << 4;
/// CR0 paging.
pub const CR0_PG: u64 = 1 << 31;
/// CR4 physical address extension.
pub const CR4_PAE: u64 = 1 << 5;
/// EFER long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER long mode active.
pub const EFER_LMA: u64 = 1 << 10;

/// Encodes a segment descriptor from its flags, base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// A segment register's visible and hidden parts, decoded from a GDT entry, in the shape
/// of KVM's `kvm_segment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by the granularity bit).
    pub limit: u32,
    /// Descriptor type (4 bits).
    pub type_: u8,
    /// Present.
    pub present: bool,
    /// Privilege level.
    pub dpl: u8,
    /// Default operation size (32-bit when set).
    pub db: bool,
    /// Code or data (as opposed to system) segment.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// 4 KiB granularity.
    pub g: bool,
    /// Available for software.
    pub avl: bool,
}

impl Segment {
    /// Decodes the GDT entry `entry` for `selector`.
    pub const fn from_gdt_entry(selector: u16, entry: u64) -> Segment {
        let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
        let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
        let g = (entry >> 55) & 1 == 1;
        let limit = if g {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        };
        Segment {
            selector,
            base,
            limit,
            type_: ((entry >> 40) & 0xf) as u8,
            s: (entry >> 44) & 1 == 1,
            dpl: ((entry >> 45) & 3) as u8,
            present: (entry >> 47) & 1 == 1,
            avl: (entry >> 52) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            db: (entry >> 54) & 1 == 1,
            g,
        }
    }

    /// The segment of veil's GDT for `selector`, or `None` for the null or an unknown
    /// selector.
    pub const fn of(selector: u16) -> Option<Segment> {
        let index = (selector >> 3) as usize;
        if index == 0 || index >= GDT.len() {
            return None;
        }
        Some(Segment::from_gdt_entry(selector, GDT[index]))
    }
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryMode {
    /// The PVH entry: 32-bit protected mode, paging off, `hvm_start_info` in `rbx`.
    Pvh32,
    /// The Linux 64-bit boot protocol: long mode on identity-mapped page tables,
    /// `boot_params` in `rsi`.
    Linux64,
}

/// The register state a vCPU needs to enter the loaded kernel.
///
/// Segment registers are given decoded from the GDT written into guest memory, so the
/// hidden parts a VMM loads with `KVM_SET_SREGS` match what the guest would load itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    /// How the kernel is entered.
    pub mode: EntryMode,
    /// Instruction pointer.
    pub rip: u64,
    /// `rbx`: the `hvm_start_info` address for PVH, else 0.
    pub rbx: u64,
    /// `rsi`: the `boot_params` address for the Linux protocol, else 0.
    pub rsi: u64,
    /// `rflags`: interrupts off, only the reserved bit 1 set.
    pub rflags: u64,
    /// `cr0`.
    pub cr0: u64,
    /// `cr3`: the page-table root, 0 when paging is off.
    pub cr3: u64,
    /// `cr4`.
    pub cr4: u64,
    /// `efer`.
    pub efer: u64,
    /// GDT base address.
    pub gdt_base: u64,
    /// GDT limit (size in bytes minus one).
    pub gdt_limit: u16,
    /// `cs`.
    pub code: Segment,
    /// `ds`, `es`, `fs`, `gs` and `ss`.
    pub data: Segment,
    /// `tr`.
    pub tss: Segment,
}

fn segment(selector: u16) -> Segment {
    // veil's own selectors always decode; the fallback is a null segment.
    Segment::of(selector).unwrap_or(Segment::from_gdt_entry(0, 0))
}

impl EntryState {
    /// The PVH entry state (Xen `docs/misc/pvh.pandoc`): `ebx` = start info, `cr0.PE`,
    /// flat 32-bit code and data, a busy 32-bit TSS with base 0 and limit 0x67.
    pub fn pvh(entry: u64, start_info: u64, gdt_base: u64) -> EntryState {
        EntryState {
            mode: EntryMode::Pvh32,
            rip: entry,
            rbx: start_info,
            rsi: 0,
            rflags: 0x2,
            cr0: CR0_PE | CR0_ET,
            cr3: 0,
            cr4: 0,
            efer: 0,
            gdt_base,
            gdt_limit: (GDT_SIZE - 1) as u16,
            code: segment(CODE32_SELECTOR),
            data: segment(DATA_SELECTOR),
            tss: segment(TSS_SELECTOR),
        }
    }

    /// The Linux 64-bit boot protocol entry (Documentation/arch/x86/boot.rst): long mode,
    /// `rip` = load address + 0x200, `rsi` = zero page, `__BOOT_CS`/`__BOOT_DS`.
    pub fn linux64(load: u64, zero_page: u64, page_tables: u64, gdt_base: u64) -> EntryState {
        EntryState {
            mode: EntryMode::Linux64,
            rip: load + 0x200,
            rbx: 0,
            rsi: zero_page,
            rflags: 0x2,
            cr0: CR0_PE | CR0_ET | CR0_PG,
            cr3: page_tables,
            cr4: CR4_PAE,
            efer: EFER_LME | EFER_LMA,
            gdt_base,
            gdt_limit: (GDT_SIZE - 1) as u16,
            code: segment(CODE64_SELECTOR),
            data: segment(DATA_SELECTOR),
            tss: segment(TSS_SELECTOR),
        }
    }
}

/// The GDT as bytes.
pub fn gdt_bytes() -> Vec<u8> {
    GDT.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// Page tables identity-mapping the first 4 GiB with 2 MiB pages, for a root at `base`
/// (PML4 at `base`, PDPT at `base + 4 KiB`, page directories after it).
pub fn identity_page_tables(base: u64) -> Vec<u8> {
    const PRESENT_RW: u64 = 0b11;
    const HUGE: u64 = 1 << 7;
    let mut out = vec![0u8; (PAGE_TABLE_PAGES * PAGE_SIZE) as usize];
    let mut put = |page: u64, index: u64, value: u64| {
        let at = (page * PAGE_SIZE + index * 8) as usize;
        out[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(0, 0, (base + PAGE_SIZE) | PRESENT_RW);
    for gib in 0..4 {
        let pd = base + (2 + gib) * PAGE_SIZE;
        put(1, gib, pd | PRESENT_RW);
        for i in 0..512 {
            let addr = (gib << 30) | (i << 21);
            put(2 + gib, i, addr | PRESENT_RW | HUGE);
        }
    }
    out
}

/// Why boot data could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootDataError {
    /// The zero page's e820 table holds at most 128 entries.
    #[error("{count} RAM ranges do not fit the zero page's e820 table (at most {max})")]
    TooManyRamRanges {
        /// The number of RAM ranges.
        count: usize,
        /// The table's capacity.
        max: usize,
    },
    /// A 32-bit field of the boot protocol cannot hold an address.
    #[error("{what} at {addr:#x} is above 4 GiB")]
    Above4G {
        /// What was placed there.
        what: &'static str,
        /// Its address.
        addr: u64,
    },
}

fn low32(what: &'static str, addr: u64) -> Result<u32, BootDataError> {
    u32::try_from(addr).map_err(|_| BootDataError::Above4G { what, addr })
}

/// The Linux zero page: the image's setup header, then what the loader fills in.
///
/// `cmdline` covers the command line including its NUL; `initrd` the initrd's bytes.
pub fn linux_boot_params(
    image: &BzImage<'_>,
    load: u64,
    cmdline: ByteRange,
    initrd: Option<ByteRange>,
    ram: &GuestRam,
) -> Result<boot_params, BootDataError> {
    let mut params = boot_params {
        hdr: *image.header(),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    // Only LOADED_HIGH: no heap (the real-mode setup code does not run), not quiet, and
    // the kernel-internal bits stay clear.
    params.hdr.loadflags = LOADED_HIGH;
    params.hdr.code32_start = low32("the kernel", load)?;
    params.hdr.vid_mode = 0xffff; // "normal"
    params.hdr.cmd_line_ptr = low32("the command line", cmdline.start().0)?;
    // Whatever the image's header holds here, the loader's values replace it.
    let (image_at, size) = match initrd {
        Some(r) => (
            low32("the initrd", r.start().0)?,
            low32("the initrd's size", r.len())?,
        ),
        None => (0, 0),
    };
    params.hdr.ramdisk_image = image_at;
    params.hdr.ramdisk_size = size;
    let ranges = ram.ranges();
    if ranges.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootDataError::TooManyRamRanges {
            count: ranges.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, r) in params.e820_table.iter_mut().zip(ranges) {
        *slot = boot_e820_entry {
            addr: r.start().0,
            size: r.len(),
            r#type: E820_RAM,
        };
    }
    params.e820_entries = ranges.len() as u8;
    Ok(params)
}

/// Size in bytes of the PVH boot data for `ram` with or without an initrd module.
pub fn pvh_boot_data_size(ram: &GuestRam, initrd: bool) -> u64 {
    let modules = if initrd {
        size_of::<hvm_modlist_entry>()
    } else {
        0
    };
    (size_of::<hvm_start_info>()
        + modules
        + ram.ranges().len() * size_of::<hvm_memmap_table_entry>()) as u64
}

/// The PVH boot data at `base`: `hvm_start_info`, then the module list (the initrd, if
/// any), then the memory map, one RAM entry per range of `ram`.
pub fn pvh_boot_data(
    base: u64,
    cmdline: ByteRange,
    initrd: Option<ByteRange>,
    ram: &GuestRam,
) -> Vec<u8> {
    let modlist_at = base + size_of::<hvm_start_info>() as u64;
    let modules = u64::from(initrd.is_some()) * size_of::<hvm_modlist_entry>() as u64;
    let memmap_at = modlist_at + modules;
    let info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: 1,
        flags: 0,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { modlist_at } else { 0 },
        cmdline_paddr: cmdline.start().0,
        rsdp_paddr: 0,
        memmap_paddr: memmap_at,
        memmap_entries: ram.ranges().len() as u32,
        reserved: 0,
    };
    let mut out = info.as_slice().to_vec();
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.start().0,
            size: initrd.len(),
            cmdline_paddr: 0,
            reserved: 0,
        };
        out.extend_from_slice(module.as_slice());
    }
    for r in ram.ranges() {
        let entry = hvm_memmap_table_entry {
            addr: r.start().0,
            size: r.len(),
            type_: E820_RAM,
            reserved: 0,
        };
        out.extend_from_slice(entry.as_slice());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        // Known encodings (Intel SDM vol. 3A, 3.4.5): flat 4 GiB code/data.
        assert_eq!(GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[3], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[4], 0x0000_8b00_0000_0067);

        let cs32 = Segment::of(CODE32_SELECTOR).unwrap();
        assert_eq!((cs32.base, cs32.limit, cs32.type_), (0, 0xffff_ffff, 0xb));
        assert!(cs32.present && cs32.s && cs32.db && cs32.g && !cs32.l);
        let cs64 = Segment::of(CODE64_SELECTOR).unwrap();
        assert!(cs64.l && !cs64.db && cs64.present);
        let ds = Segment::of(DATA_SELECTOR).unwrap();
        assert_eq!((ds.limit, ds.type_), (0xffff_ffff, 0x3));
        let tr = Segment::of(TSS_SELECTOR).unwrap();
        assert_eq!((tr.base, tr.limit, tr.type_, tr.s), (0, 0x67, 0xb, false));
        assert_eq!(Segment::of(0), None);
        assert_eq!(Segment::of(0x28), None);
        assert_eq!(gdt_bytes().len() as u64, GDT_SIZE);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let base = 0x9000;
        let pt = identity_page_tables(base);
        let word = |page: u64, i: u64| {
            let at = (page * PAGE_SIZE + i * 8) as usize;
            u64::from_le_bytes(pt[at..at + 8].try_into().unwrap())
        };
        assert_eq!(word(0, 0), 0xa003);
        assert_eq!(word(0, 1), 0);
        for gib in 0..4 {
            assert_eq!(word(1, gib), (base + (2 + gib) * PAGE_SIZE) | 3);
        }
        assert_eq!(word(1, 4), 0);
        // Walk a few addresses through the tables.
        for addr in [0u64, 0x20_0000, 0x1234_5678, 0xffff_ffff] {
            let pdpt = word(0, (addr >> 39) & 0x1ff) & !0xfff;
            assert_eq!(pdpt, base + PAGE_SIZE);
            let pd = word(1, (addr >> 30) & 0x1ff) & !0xfff;
            let pde = word((pd - base) / PAGE_SIZE, (addr >> 21) & 0x1ff);
            assert_eq!(pde & 0x83, 0x83, "present, writable, 2 MiB");
            assert_eq!((pde & !0x1f_ffff) | (addr & 0x1f_ffff), addr);
        }
    }

    #[test]
    fn entry_states() {
        let pvh = EntryState::pvh(0x10_0000, 0x3000, 0x1000);
        assert_eq!(
            (pvh.rip, pvh.rbx, pvh.cr0 & CR0_PG, pvh.efer),
            (0x10_0000, 0x3000, 0, 0)
        );
        assert_eq!(pvh.code.selector, CODE32_SELECTOR);
        let l = EntryState::linux64(0x100_0000, 0x3000, 0x2000, 0x1000);
        assert_eq!(l.rip, 0x100_0200);
        assert_eq!((l.rsi, l.cr3), (0x3000, 0x2000));
        assert_eq!(l.efer, EFER_LME | EFER_LMA);
        assert_eq!(l.code.selector, CODE64_SELECTOR);
        assert_eq!(l.gdt_limit, 39);
    }

    #[test]
    fn pvh_boot_data_layout() {
        let ram = GuestRam::new(&[(0, 0xa_0000), (0x10_0000, 0xf0_0000)]).unwrap();
        let cmdline = ByteRange::new(0x4000, 5).unwrap();
        let initrd = ByteRange::new(0x80_0000, 0x1234).unwrap();
        let bytes = pvh_boot_data(0x3000, cmdline, Some(initrd), &ram);
        assert_eq!(bytes.len() as u64, pvh_boot_data_size(&ram, true));
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
        assert_eq!(u32_at(0), PVH_START_MAGIC);
        assert_eq!(u32_at(4), 1); // version
        assert_eq!(u32_at(12), 1); // nr_modules
        assert_eq!(u64_at(16), 0x3000 + 56); // modlist_paddr
        assert_eq!(u64_at(24), 0x4000); // cmdline_paddr
        assert_eq!(u64_at(40), 0x3000 + 56 + 32); // memmap_paddr
        assert_eq!(u32_at(48), 2); // memmap_entries
        assert_eq!((u64_at(56), u64_at(64)), (0x80_0000, 0x1234)); // module
        assert_eq!(
            (u64_at(88), u64_at(96), u32_at(104)),
            (0, 0xa_0000, E820_RAM)
        );
        assert_eq!((u64_at(112), u64_at(120)), (0x10_0000, 0xf0_0000));
    }
}
