// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! x86 boot data, built as bytes: identity-mapped page tables, the Linux `boot_params`
//! zero page and the PVH `hvm_start_info` with its memory map, and the register state a
//! vCPU needs to enter the kernel. The GDT and the entry state's shape are veil-abi's
//! ([`BOOT_GDT`](veil_abi::x86_64::BOOT_GDT)), shared with veil-vcpu, which writes the same state into the vCPU.
//!
//! Everything here is a pure function of its inputs: the same layout gives the same bytes
//! on every machine, which is what makes the measurement reproducible.

use linux_loader::bootparam::{
    E820_MAX_ENTRIES_ZEROPAGE, LOADED_HIGH, boot_e820_entry, boot_params,
};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use veil_abi::x86_64::EntryRegisters;
use vm_memory::ByteValued;

use crate::image::BzImage;
use crate::ram::{ByteRange, GuestRam, PAGE_SIZE};

/// The most 4 KiB pages the identity-mapped page tables take: one PML4, one PDPT and four
/// page directories of 2 MiB pages, mapping the first 4 GiB.
pub const PAGE_TABLE_PAGES: u64 = 6;

/// The pages of identity-mapped page tables for RAM ending at `ram_top`: one PML4, one
/// PDPT and a page directory for each GiB up to `ram_top`, at least one and at most four
/// (the first 4 GiB, where every boot object lies).
///
/// Only what RAM can hold is mapped: the 64-bit entry needs the kernel, its boot data and
/// the tables themselves mapped, all of them in RAM, and Linux builds its own tables
/// before it touches anything else. A 1 GiB guest gets three pages instead of six, three
/// pages fewer to write and measure at every launch.
pub const fn page_table_pages(ram_top: u64) -> u64 {
    let gib = 1 << 30;
    let top = if ram_top < 4 * gib { ram_top } else { 4 * gib };
    let directories = top.div_ceil(gib);
    2 + if directories == 0 { 1 } else { directories }
}

/// The PVH start-of-day magic (`XEN_HVM_START_MAGIC_VALUE`, Xen `arch-x86/hvm/start_info.h`).
pub const PVH_START_MAGIC: u32 = 0x336e_c578;
/// e820 / PVH memory map type of usable RAM (`E820_RAM`, `XEN_HVM_MEMMAP_TYPE_RAM`).
pub const E820_RAM: u32 = 1;
/// e820 / PVH memory map type of ACPI tables (`E820_ACPI`, `XEN_HVM_MEMMAP_TYPE_ACPI`):
/// not RAM, so the kernel neither allocates from it nor loses the tables.
pub const E820_ACPI: u32 = 3;
/// `type_of_loader` for a boot loader without an assigned id ("undefined", boot.rst).
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;

/// The PVH entry state (Xen `docs/misc/pvh.pandoc`): 32-bit protected mode with paging
/// off, `ebx` = start info, flat 32-bit code and data and a busy 32-bit TSS with base 0
/// and limit 0x67, all from [`BOOT_GDT`](veil_abi::x86_64::BOOT_GDT) at `gdt_base`.
pub fn pvh_entry(entry: u64, start_info: u64, gdt_base: u64) -> EntryRegisters {
    let mut r = EntryRegisters::protected32(entry, gdt_base);
    r.regs.rbx = start_info;
    r
}

/// The Linux 64-bit boot protocol entry (Documentation/arch/x86/boot.rst): long mode on
/// the identity page tables at `page_tables`, `rip` = load address + 0x200, `rsi` = zero
/// page, `__BOOT_CS`/`__BOOT_DS` from [`BOOT_GDT`](veil_abi::x86_64::BOOT_GDT) at `gdt_base`.
pub fn linux64_entry(load: u64, zero_page: u64, page_tables: u64, gdt_base: u64) -> EntryRegisters {
    let mut r = EntryRegisters::long_mode(load + 0x200, page_tables, gdt_base);
    r.regs.rsi = zero_page;
    r
}

/// The entry of a flat 64-bit image: long mode at `entry` on the identity page tables at
/// `page_tables`, `rbx` = the `hvm_start_info` at `start_info` (as for PVH), from
/// [`BOOT_GDT`](veil_abi::x86_64::BOOT_GDT) at `gdt_base`. The image sets up its own stack.
pub fn flat64_entry(
    entry: u64,
    start_info: u64,
    page_tables: u64,
    gdt_base: u64,
) -> EntryRegisters {
    let mut r = EntryRegisters::long_mode(entry, page_tables, gdt_base);
    r.regs.rbx = start_info;
    r
}

/// Page tables of `pages` pages ([`page_table_pages`]) identity-mapping the first
/// `pages - 2` GiB with 2 MiB pages, for a root at `base` (PML4 at `base`, PDPT at
/// `base + 4 KiB`, page directories after it). `pages` is clamped to 3..=6.
pub fn identity_page_tables(base: u64, pages: u64) -> Vec<u8> {
    const PRESENT_RW: u64 = 0b11;
    const HUGE: u64 = 1 << 7;
    let pages = pages.clamp(3, PAGE_TABLE_PAGES);
    let mut out = vec![0u8; (pages * PAGE_SIZE) as usize];
    let mut put = |page: u64, index: u64, value: u64| {
        let at = (page * PAGE_SIZE + index * 8) as usize;
        out[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(0, 0, (base + PAGE_SIZE) | PRESENT_RW);
    for gib in 0..pages - 2 {
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

/// One entry of the memory map the kernel is given (e820, or the PVH memory map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryMapEntry {
    /// The first byte.
    pub addr: u64,
    /// The length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_ACPI`].
    pub kind: u32,
}

/// The memory map of `ram` with the pages of `firmware` (page-rounded) taken out of RAM
/// and listed as [`E820_ACPI`], in address order. Without firmware tables it is one RAM
/// entry per range, as before.
pub fn memory_map(ram: &GuestRam, firmware: Option<ByteRange>) -> Vec<MemoryMapEntry> {
    let acpi = firmware.and_then(|f| f.page_aligned());
    let mut out = Vec::new();
    let mut push = |addr: u64, end: u64, kind: u32| {
        if end > addr {
            out.push(MemoryMapEntry {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    for r in ram.ranges() {
        match acpi.filter(|a| a.overlaps(r)) {
            Some(a) => {
                push(r.start().0, a.start().0, E820_RAM);
                push(a.end(), r.end(), E820_RAM);
            }
            None => push(r.start().0, r.end(), E820_RAM),
        }
    }
    if let Some(a) = acpi {
        push(a.start().0, a.end(), E820_ACPI);
    }
    out.sort_by_key(|e| e.addr);
    out
}

fn low32(what: &'static str, addr: u64) -> Result<u32, BootDataError> {
    u32::try_from(addr).map_err(|_| BootDataError::Above4G { what, addr })
}

/// The Linux zero page: the image's setup header, then what the loader fills in.
///
/// `cmdline` covers the command line including its NUL; `initrd` the initrd's bytes.
/// The e820 table is one RAM entry per range of `ram`.
pub fn linux_boot_params(
    image: &BzImage<'_>,
    load: u64,
    cmdline: ByteRange,
    initrd: Option<ByteRange>,
    ram: &GuestRam,
) -> Result<boot_params, BootDataError> {
    linux_zero_page(image, load, cmdline, initrd, &memory_map(ram, None), None)
}

/// [`linux_boot_params`] with the e820 table `map` (see [`memory_map`]) and, if the VMM
/// built ACPI tables, `acpi_rsdp_addr` = `rsdp`.
pub fn linux_zero_page(
    image: &BzImage<'_>,
    load: u64,
    cmdline: ByteRange,
    initrd: Option<ByteRange>,
    map: &[MemoryMapEntry],
    rsdp: Option<u64>,
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
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootDataError::TooManyRamRanges {
            count: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    for (slot, e) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = rsdp.unwrap_or(0);
    Ok(params)
}

/// Size in bytes of the PVH boot data for `ram` with or without an initrd module.
pub fn pvh_boot_data_size(ram: &GuestRam, initrd: bool) -> u64 {
    pvh_start_info_size(ram.ranges().len(), initrd)
}

/// Size in bytes of the PVH boot data with a memory map of `map_entries` entries, with or
/// without an initrd module.
pub fn pvh_start_info_size(map_entries: usize, initrd: bool) -> u64 {
    let modules = if initrd {
        size_of::<hvm_modlist_entry>()
    } else {
        0
    };
    (size_of::<hvm_start_info>() + modules + map_entries * size_of::<hvm_memmap_table_entry>())
        as u64
}

/// The PVH boot data at `base`: `hvm_start_info`, then the module list (the initrd, if
/// any), then the memory map, one RAM entry per range of `ram`.
pub fn pvh_boot_data(
    base: u64,
    cmdline: ByteRange,
    initrd: Option<ByteRange>,
    ram: &GuestRam,
) -> Vec<u8> {
    pvh_start_info(base, cmdline, initrd, &memory_map(ram, None), None)
}

/// [`pvh_boot_data`] with the memory map `map` (see [`memory_map`]) and, if the VMM built
/// ACPI tables, `rsdp_paddr` = `rsdp`.
pub fn pvh_start_info(
    base: u64,
    cmdline: ByteRange,
    initrd: Option<ByteRange>,
    map: &[MemoryMapEntry],
    rsdp: Option<u64>,
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
        rsdp_paddr: rsdp.unwrap_or(0),
        memmap_paddr: memmap_at,
        memmap_entries: map.len() as u32,
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
    for e in map {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
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
    fn page_tables_cover_ram_below_4g_only() {
        const GIB: u64 = 1 << 30;
        for (top, pages) in [
            (0, 3),
            (64 << 20, 3),
            (GIB, 3),
            (GIB + 1, 4),
            (3 * GIB, 5),
            (4 * GIB, 6),
            (64 * GIB, 6),
        ] {
            assert_eq!(page_table_pages(top), pages, "RAM up to {top:#x}");
        }
        let pt = identity_page_tables(0x9000, 4);
        assert_eq!(pt.len(), 4 * PAGE_SIZE as usize);
        let word = |page: u64, i: u64| {
            let at = (page * PAGE_SIZE + i * 8) as usize;
            u64::from_le_bytes(pt[at..at + 8].try_into().unwrap())
        };
        assert_eq!(word(1, 0), 0xb003);
        assert_eq!(word(1, 1), 0xc003);
        assert_eq!(word(1, 2), 0, "two GiB mapped, no more");
        assert_eq!(word(3, 511), ((2 * GIB) - (2 << 20)) | 0x83);
    }

    #[test]
    fn page_tables_identity_map_4g() {
        let base = 0x9000;
        let pt = identity_page_tables(base, PAGE_TABLE_PAGES);
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
        use veil_abi::x86_64::{
            BOOT_CODE32, BOOT_CODE64, BOOT_GDT_LIMIT, CR0_PG, CpuMode, EFER_LMA, EFER_LME,
        };
        let pvh = pvh_entry(0x10_0000, 0x3000, 0x1000);
        pvh.validate().unwrap();
        assert_eq!(pvh.mode, CpuMode::Protected32);
        assert_eq!(
            (pvh.regs.rip, pvh.regs.rbx, pvh.cr0 & CR0_PG, pvh.efer),
            (0x10_0000, 0x3000, 0, 0)
        );
        assert_eq!(pvh.code.selector, BOOT_CODE32);
        let l = linux64_entry(0x100_0000, 0x3000, 0x2000, 0x1000);
        l.validate().unwrap();
        assert_eq!(l.regs.rip, 0x100_0200);
        assert_eq!((l.regs.rsi, l.cr3), (0x3000, 0x2000));
        assert_eq!(l.efer, EFER_LME | EFER_LMA);
        assert_eq!(l.code.selector, BOOT_CODE64);
        assert_eq!((l.gdt.base, l.gdt.limit), (0x1000, BOOT_GDT_LIMIT));
    }

    #[test]
    fn memory_map_carves_firmware_pages_out_of_ram() {
        let ram = GuestRam::new(&[(0, 0x10_0000), (0x10_0000, 0x10_0000)]).unwrap();
        let entry = |addr, size, kind| MemoryMapEntry { addr, size, kind };
        assert_eq!(
            memory_map(&ram, None),
            vec![
                entry(0, 0x10_0000, E820_RAM),
                entry(0x10_0000, 0x10_0000, E820_RAM)
            ]
        );
        // Unaligned tables take whole pages; tables across two ranges cut both.
        let t = ByteRange::new(0xf_f800, 0x1000).unwrap();
        assert_eq!(
            memory_map(&ram, Some(t)),
            vec![
                entry(0, 0xf_f000, E820_RAM),
                entry(0xf_f000, 0x2000, E820_ACPI),
                entry(0x10_1000, 0xf_f000, E820_RAM),
            ]
        );
        // At the very start of RAM: no empty RAM entry before it.
        let t = ByteRange::new(0, 0x10).unwrap();
        assert_eq!(memory_map(&ram, Some(t))[0], entry(0, 0x1000, E820_ACPI));
        assert_eq!(memory_map(&ram, Some(t)).len(), 3);
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
