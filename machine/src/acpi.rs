// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The ACPI tables that tell Linux what this PC has: RSDP, XSDT, a hardware-reduced FADT,
//! a MADT with one local APIC per vCPU and the IOAPIC, and a DSDT with COM1, the CMOS RTC
//! and the S5 sleep state. Built with acpi_tables as bytes for the system area of a
//! [`MemoryLayout`]; veil-loader places them ([`AcpiTables::firmware`]).
//!
//! Hardware-reduced ACPI, because it needs no PM timer, no SCI and no PIC: the
//! interrupt controller Linux uses is the IOAPIC in the MADT, and its devices are the ones
//! the DSDT names (ISA IRQs get no identity mapping there, so COM1's GSI must be in its
//! `_CRS`). Power-off is the FADT's sleep control register ([`ACPI_SLEEP_PORT`]).

use acpi_tables::Aml;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use serde::Serialize;
use veil_loader::FirmwareTables;
use vm_allocator::AllocPolicy;

use crate::devices::{
    ACPI_SLEEP_PORT, CMOS_CENTURY, CMOS_PORT, COM1_GSI, COM1_PORT, RTC_GSI, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET,
};
use crate::layout::{LayoutError, MemoryLayout};

/// The most vCPUs the machine describes: the MADT's processor entries hold 8-bit APIC
/// ids, and CPUID leaf 1 an 8-bit logical processor count; 64 keeps well inside both.
pub const MAX_VCPUS: u32 = 64;

/// The OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"VEIL  ";
/// The OEM table id in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"VEILPC  ";
/// "VEILVMM " as the FADT's hypervisor vendor identity.
const HYPERVISOR_ID: u64 = u64::from_le_bytes(*b"VEILVMM ");

/// `IAPC_BOOT_ARCH` bit 1: an 8042 keyboard controller is present. Left clear, so Linux
/// does not probe vm-superio's i8042, whose reads answer 0 (a 0.5 s timeout otherwise).
pub const IAPC_8042: u16 = 1 << 1;
/// `IAPC_BOOT_ARCH` bit 2: no VGA; set, so Linux does not probe for one.
pub const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// `IAPC_BOOT_ARCH` bit 5: no CMOS RTC; left clear, since the machine emulates one.
pub const IAPC_NO_CMOS_RTC: u16 = 1 << 5;

/// Why the tables could not be built. Nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcpiError {
    /// A PC has at least one CPU.
    #[error("0 vCPUs: give the machine at least 1")]
    NoVcpus,
    /// More vCPUs than the tables describe.
    #[error("{count} vCPUs: the machine supports at most {MAX_VCPUS}")]
    TooManyVcpus {
        /// The count asked for.
        count: u32,
    },
    /// The tables do not fit the system area.
    #[error("the {table} table ({len} bytes) does not fit the system area")]
    NoRoom {
        /// The table's signature.
        table: &'static str,
        /// Its length.
        len: usize,
    },
    /// The layout has no system area allocator.
    #[error("no system area")]
    Layout(#[from] LayoutError),
}

/// One table's place in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TablePlacement {
    /// Its signature ("DSDT", "FACP", "APIC", "XSDT", "RSD PTR ").
    pub signature: &'static str,
    /// Its guest-physical address.
    pub addr: u64,
    /// Its length.
    pub len: u64,
}

/// The tables, as bytes for guest memory from [`base`](Self::base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    base: u64,
    bytes: Vec<u8>,
    rsdp: u64,
    tables: Vec<TablePlacement>,
}

impl AcpiTables {
    /// Builds the tables of a machine with `vcpus` vCPUs (APIC ids 0 to `vcpus - 1`) for
    /// `layout`'s system area and RSDP.
    pub fn build(layout: &MemoryLayout, vcpus: u32) -> Result<AcpiTables, AcpiError> {
        if vcpus == 0 {
            return Err(AcpiError::NoVcpus);
        }
        if vcpus > MAX_VCPUS {
            return Err(AcpiError::TooManyVcpus { count: vcpus });
        }
        let mut system = layout.system_allocator()?;
        let mut place = |table: &'static str, bytes: Vec<u8>| {
            let len = bytes.len();
            system
                .allocate(len as u64, 8, AllocPolicy::FirstMatch)
                .map(|r| (table, r.start(), bytes))
                .map_err(|_| AcpiError::NoRoom { table, len })
        };

        let dsdt = place("DSDT", dsdt())?;
        let fadt = place("FACP", fadt(dsdt.1))?;
        let madt = place("APIC", madt(layout, vcpus))?;
        let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
        xsdt.add_entry(fadt.1);
        xsdt.add_entry(madt.1);
        let xsdt = place("XSDT", bytes_of(&xsdt))?;
        let rsdp_at = layout.rsdp().start().0;
        let rsdp = ("RSD PTR ", rsdp_at, bytes_of(&Rsdp::new(OEM_ID, xsdt.1)));

        let base = layout.system_area().start().0;
        let end = rsdp_at + rsdp.2.len() as u64;
        let mut bytes = vec![0u8; (end - base) as usize];
        let mut tables = Vec::new();
        for (signature, addr, table) in [dsdt, fadt, madt, xsdt, rsdp] {
            let at = (addr - base) as usize;
            bytes[at..at + table.len()].copy_from_slice(&table);
            tables.push(TablePlacement {
                signature,
                addr,
                len: table.len() as u64,
            });
        }
        Ok(AcpiTables {
            base,
            bytes,
            rsdp: rsdp_at,
            tables,
        })
    }

    /// The guest-physical address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The bytes from [`base`](Self::base) to the end of the RSDP; what is not a table is
    /// zero.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The RSDP's address.
    pub fn rsdp(&self) -> u64 {
        self.rsdp
    }

    /// Where each table is.
    pub fn tables(&self) -> &[TablePlacement] {
        &self.tables
    }

    /// The tables as veil-loader's boot object.
    pub fn firmware(&self) -> FirmwareTables<'_> {
        FirmwareTables {
            base: self.base,
            bytes: &self.bytes,
            rsdp: self.rsdp,
        }
    }
}

fn bytes_of(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// The DSDT: COM1 (an 8250 at its legacy port, edge-triggered active-high GSI 4), the
/// CMOS RTC (ports 0x70-0x71, GSI 8), and `_S5_` (sleep type 5 for power-off).
fn dsdt() -> Vec<u8> {
    // acpi_tables' AML objects borrow their parts: each is serialized in the statement
    // that builds it.
    let mut body = Vec::new();
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(COM1_PORT.base, COM1_PORT.base, 1, COM1_PORT.len as u8),
                    &aml::Interrupt::new(true, true, false, false, COM1_GSI),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);
    aml::Device::new(
        "_SB_.RTC_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0B00")),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(CMOS_PORT.base, CMOS_PORT.base, 1, CMOS_PORT.len as u8),
                    &aml::Interrupt::new(true, true, false, false, RTC_GSI),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut body);
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&5u8, &5u8, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut body);
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// The sleep register at `offset` from [`ACPI_SLEEP_PORT`], as the FADT describes it.
fn sleep_register(offset: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_PORT.base + offset),
    )
}

/// A hardware-reduced FADT pointing at the DSDT, with the sleep registers on
/// [`ACPI_SLEEP_PORT`], the CMOS century register named, no 8042 and no VGA.
fn fadt(dsdt: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .dsdt_64(dsdt)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    f.iapc_boot_arch = IAPC_VGA_NOT_PRESENT.into();
    f.sleep_control_reg = sleep_register(SLEEP_CONTROL_OFFSET);
    f.sleep_status_reg = sleep_register(SLEEP_STATUS_OFFSET);
    f.century = CMOS_CENTURY;
    f.hypervisor_vendor_identity = HYPERVISOR_ID.into();
    bytes_of(&f.finalize())
}

/// The MADT: the local APICs' address, one enabled local APIC per vCPU with APIC id =
/// vCPU id (Linux's AP start-up reads the id from the LAPIC and must find it here), and
/// the IOAPIC with GSIs from 0.
fn madt(layout: &MemoryLayout, vcpus: u32) -> Vec<u8> {
    // `build` checked `vcpus <= MAX_VCPUS`, and the hole holds both controllers.
    let lapic = u32::try_from(layout.local_apic()).unwrap_or(u32::MAX);
    let ioapic = u32::try_from(layout.ioapic()).unwrap_or(u32::MAX);
    let mut m = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(lapic),
    );
    for id in 0..vcpus.min(MAX_VCPUS) as u8 {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(0, ioapic, 0));
    bytes_of(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }

    fn tables(vcpus: u32) -> AcpiTables {
        AcpiTables::build(&MemoryLayout::new(256 << 20).unwrap(), vcpus).unwrap()
    }

    /// The bytes of the table at `addr`, by its header's length.
    fn table_at(t: &AcpiTables, addr: u64) -> &[u8] {
        let at = (addr - t.base()) as usize;
        let len = u32_at(t.bytes(), at + 4) as usize;
        &t.bytes()[at..at + len]
    }

    fn find<'a>(t: &'a AcpiTables, signature: &str) -> &'a [u8] {
        let p = t
            .tables()
            .iter()
            .find(|p| p.signature == signature)
            .unwrap();
        let at = (p.addr - t.base()) as usize;
        &t.bytes()[at..at + p.len as usize]
    }

    #[test]
    fn every_checksum_is_right() {
        let t = tables(2);
        for p in t.tables() {
            let b = find(&t, p.signature);
            assert_eq!(sum(b), 0, "{} checksum", p.signature);
            if p.signature != "RSD PTR " {
                assert_eq!(&b[..4], p.signature.as_bytes());
                assert_eq!(u32_at(b, 4) as u64, p.len, "{} length", p.signature);
            }
        }
        let rsdp = find(&t, "RSD PTR ");
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(rsdp.len(), 36);
        assert_eq!(rsdp[15], 2, "revision 2: the XSDT is used");
    }

    #[test]
    fn the_rsdp_and_xsdt_lead_to_every_table() {
        let layout = MemoryLayout::new(256 << 20).unwrap();
        let t = AcpiTables::build(&layout, 1).unwrap();
        assert_eq!(t.rsdp(), 0xe_0000);
        assert_eq!(t.base(), layout.system_area().start().0);
        assert_eq!(t.base() + t.bytes().len() as u64, 0xe_0000 + 36);
        let rsdp = find(&t, "RSD PTR ");
        let xsdt = table_at(&t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(xsdt, o))
            .collect();
        let signatures: Vec<&[u8]> = entries.iter().map(|&a| &table_at(&t, a)[..4]).collect();
        assert_eq!(signatures, vec![b"FACP" as &[u8], b"APIC"]);
        // The FADT's X_DSDT (offset 140) leads to the DSDT, its 32-bit DSDT is 0.
        let fadt = table_at(&t, entries[0]);
        assert_eq!(u32_at(fadt, 40), 0);
        assert_eq!(&table_at(&t, u64_at(fadt, 140))[..4], b"DSDT");
        // Every table lies in the system area, the RSDP where the layout puts it.
        for p in t.tables() {
            let r = veil_loader::ByteRange::new(p.addr, p.len).unwrap();
            let area = if p.signature == "RSD PTR " {
                layout.rsdp()
            } else {
                layout.system_area()
            };
            assert!(area.contains(&r), "{p:?}");
        }
        let f = t.firmware();
        assert_eq!(
            (f.base, f.rsdp, f.bytes.len()),
            (t.base(), t.rsdp(), t.bytes().len())
        );
        f.range().unwrap();
    }

    #[test]
    fn the_fadt_is_hardware_reduced_with_sleep_registers_and_no_8042() {
        let t = tables(1);
        let fadt = find(&t, "FACP");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & Flags::HwReducedAcpi as u32, 0);
        let boot_arch = u16_at(fadt, 109);
        assert_eq!(boot_arch & IAPC_8042, 0, "no i8042 probe");
        assert_eq!(boot_arch & IAPC_NO_CMOS_RTC, 0, "the CMOS RTC is there");
        assert_ne!(boot_arch & IAPC_VGA_NOT_PRESENT, 0);
        assert_eq!(fadt[108], CMOS_CENTURY);
        // SLEEP_CONTROL_REG at 244 and SLEEP_STATUS_REG at 256: system I/O, 8 bits.
        for (offset, port) in [
            (244, ACPI_SLEEP_PORT.base + SLEEP_CONTROL_OFFSET),
            (256, ACPI_SLEEP_PORT.base + SLEEP_STATUS_OFFSET),
        ] {
            assert_eq!(fadt[offset], 1, "system I/O");
            assert_eq!(fadt[offset + 1], 8);
            assert_eq!(u64_at(fadt, offset + 4), u64::from(port));
        }
        assert_ne!(ACPI_SLEEP_PORT.base, 0x5e);
        assert!(!(0x600..0x602).contains(&ACPI_SLEEP_PORT.base));
        assert_eq!(fadt.len(), 276);
    }

    #[test]
    fn the_madt_has_one_local_apic_per_vcpu_and_the_ioapic() {
        for n in [1, 2, 4, MAX_VCPUS] {
            let t = tables(n);
            let madt = find(&t, "APIC");
            assert_eq!(u32_at(madt, 36), 0xfee0_0000);
            let mut at = 44;
            let mut apic_ids = Vec::new();
            let mut ioapics = Vec::new();
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(u32_at(madt, at + 4), 1, "enabled");
                        assert_eq!(madt[at + 2], madt[at + 3], "uid = APIC id");
                        apic_ids.push(madt[at + 3] as u32);
                    }
                    1 => ioapics.push((u32_at(madt, at + 4), u32_at(madt, at + 8))),
                    other => panic!("unexpected MADT structure {other}"),
                }
                at += len;
            }
            assert_eq!(apic_ids, (0..n).collect::<Vec<_>>());
            assert_eq!(ioapics, vec![(0xfec0_0000, 0)]);
        }
    }

    #[test]
    fn the_dsdt_names_com1_the_rtc_and_s5() {
        let t = tables(1);
        let dsdt = find(&t, "DSDT");
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        let eisa = |id: &str| {
            let mut v = Vec::new();
            aml::EISAName::new(id).to_aml_bytes(&mut v);
            v
        };
        assert!(has(b"COM1") && has(&eisa("PNP0501")));
        assert!(has(b"RTC_") && has(&eisa("PNP0B00")));
        assert!(has(b"_S5_"));
        // COM1's extended interrupt descriptor: consumer, edge, active high, GSI 4.
        assert!(has(&[0x89, 6, 0, 0b0011, 1, 4, 0, 0, 0]));
        // Its I/O descriptor: 0x3f8, 8 ports.
        assert!(has(&[0x47, 1, 0xf8, 0x03, 0xf8, 0x03, 1, 8]));
    }

    #[test]
    fn vcpu_counts_outside_the_limits_are_refused() {
        let layout = MemoryLayout::new(256 << 20).unwrap();
        assert_eq!(AcpiTables::build(&layout, 0), Err(AcpiError::NoVcpus));
        assert_eq!(
            AcpiTables::build(&layout, MAX_VCPUS + 1),
            Err(AcpiError::TooManyVcpus {
                count: MAX_VCPUS + 1
            })
        );
        assert!(
            AcpiError::TooManyVcpus { count: 65 }
                .to_string()
                .contains("at most 64")
        );
    }
}
