// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The PC's legacy devices on a port-I/O bus: COM1, the i8042's reset line, the CMOS
//! RTC, the ACPI sleep registers, and PCI configuration ports that answer "no device".
//!
//! [`PortBus`] is veil-vcpu's [`IoHandler`]: every vCPU thread calls it, so devices take
//! `&self` and lock what they change. Ports no device claims read as all-ones and ignore
//! writes, as on a PC with nothing there; Linux probes many, and each is logged once.
//! Every port and GSI is named once here, and the ACPI tables describe the same ones.

mod cmos;
mod end;
mod pci;
mod serial;
mod sleep;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use veil_vcpu::{BoxError, IoHandler};

pub use cmos::{CMOS_CENTURY, CivilTime, Cmos, HostClock, bcd, civil_time};
pub use end::{DeviceEnd, EndSignal, I8042, I8042_RESET};
pub use pci::PciConfigNoDevice;
pub use serial::{Com1, ConsoleSink, FirstByte, IrqTrigger};
pub use sleep::{AcpiSleep, SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET, SLP_EN, SLP_TYP_S5};

/// A range of I/O ports: `len` ports from `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub base: u16,
    /// How many.
    pub len: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub const fn contains(&self, port: u16) -> bool {
        port >= self.base && (port - self.base) < self.len
    }

    fn overlaps(&self, other: &PortRange) -> bool {
        let end = u32::from(self.base) + u32::from(self.len);
        let other_end = u32::from(other.base) + u32::from(other.len);
        u32::from(self.base) < other_end && u32::from(other.base) < end
    }
}

/// COM1: a 16550 at its legacy ports.
pub const COM1_PORT: PortRange = PortRange {
    base: 0x3f8,
    len: 8,
};
/// COM1's interrupt: GSI 4, injected through an irqfd (the in-kernel irqchip routes GSIs
/// 0-15 to the IOAPIC pin of the same number).
pub const COM1_GSI: u32 = 4;
/// The i8042's data and command ports (0x60 and 0x64), as vm-superio maps them.
pub const I8042_PORT: PortRange = PortRange { base: 0x60, len: 5 };
/// The CMOS RTC's index (0x70) and data (0x71) ports.
pub const CMOS_PORT: PortRange = PortRange { base: 0x70, len: 2 };
/// The RTC's interrupt as the DSDT declares it (the RTC raises none).
pub const RTC_GSI: u32 = 8;
/// The ACPI sleep control (0x610) and status (0x611) registers. Not 0x5e, veil's
/// port-I/O hypercall, nor 0x600-0x601, where veil's test kernels report.
pub const ACPI_SLEEP_PORT: PortRange = PortRange {
    base: 0x610,
    len: 2,
};
/// The PCI configuration address (0xcf8) and data (0xcfc) ports.
pub const PCI_CONFIG_PORT: PortRange = PortRange {
    base: 0xcf8,
    len: 8,
};

/// A device on the port bus. `offset` is the port minus the device's base; `data` is the
/// whole access (an `in`/`out` of 1, 2 or 4 bytes, or a string I/O of several).
pub trait PortDevice: Send + Sync {
    /// The device's name, for logs.
    fn name(&self) -> &'static str;
    /// An `in`: fill `data`.
    fn read(&self, offset: u16, data: &mut [u8]);
    /// An `out` of `data`.
    fn write(&self, offset: u16, data: &[u8]);
}

/// Why a device could not be added to the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// Two devices would answer the same port.
    #[error("{new} at {new_range:x?} overlaps {old} at {old_range:x?}")]
    Overlap {
        /// The device being added.
        new: &'static str,
        /// Its ports.
        new_range: PortRange,
        /// The device already there.
        old: &'static str,
        /// Its ports.
        old_range: PortRange,
    },
    /// A range of no port, or one past port 0xffff.
    #[error("{name}: {range:x?} is not a range of ports")]
    BadRange {
        /// The device.
        name: &'static str,
        /// Its ports.
        range: PortRange,
    },
}

/// Ports mapped to devices; [`IoHandler`] for `Vm::run`.
pub struct PortBus {
    devices: Vec<(PortRange, Arc<dyn PortDevice>)>,
    /// One bit per port: whether an access to it with no device was logged.
    logged: Box<[AtomicU64]>,
}

impl Default for PortBus {
    fn default() -> Self {
        PortBus {
            devices: Vec::new(),
            logged: (0..1024).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl std::fmt::Debug for PortBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (r, d) in &self.devices {
            m.entry(&format_args!("{:#x}+{}", r.base, r.len), &d.name());
        }
        m.finish()
    }
}

impl PortBus {
    /// An empty bus.
    pub fn new() -> Self {
        PortBus::default()
    }

    /// Maps `range` to `device`; refused if another device has one of its ports.
    pub fn add(&mut self, range: PortRange, device: Arc<dyn PortDevice>) -> Result<(), BusError> {
        let name = device.name();
        if range.len == 0 || u32::from(range.base) + u32::from(range.len) > 0x1_0000 {
            return Err(BusError::BadRange { name, range });
        }
        if let Some((old_range, old)) = self.devices.iter().find(|(r, _)| r.overlaps(&range)) {
            return Err(BusError::Overlap {
                new: name,
                new_range: range,
                old: old.name(),
                old_range: *old_range,
            });
        }
        self.devices.push((range, device));
        self.devices.sort_by_key(|(r, _)| r.base);
        Ok(())
    }

    /// The device at `port` and the port's offset in it.
    fn find(&self, port: u16) -> Option<(&dyn PortDevice, u16)> {
        let i = self.devices.partition_point(|(r, _)| r.base <= port);
        let (range, device) = self.devices.get(i.checked_sub(1)?)?;
        range
            .contains(port)
            .then(|| (device.as_ref(), port - range.base))
    }

    /// Logs the first access to `port` with no device, at debug level.
    fn unmapped(&self, port: u16, what: &str, len: usize) {
        let (word, bit) = (usize::from(port) / 64, 1u64 << (port % 64));
        if self.logged[word].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            log::debug!("no device at port {port:#x}: {what} of {len} bytes (logged once)");
        }
    }
}

impl IoHandler for PortBus {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> Result<(), BoxError> {
        match self.find(port) {
            Some((device, offset)) => device.read(offset, data),
            None => {
                self.unmapped(port, "read", data.len());
                data.fill(0xff);
            }
        }
        Ok(())
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        match self.find(port) {
            Some((device, offset)) => device.write(offset, data),
            None => self.unmapped(port, "write", data.len()),
        }
        Ok(())
    }

    // Memory no device and no RAM backs reads as all-ones, as on a PC; the in-kernel
    // irqchip serves the APICs, so nothing else is expected here.
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> Result<(), BoxError> {
        log::debug!("no device at MMIO {addr:#x}: read of {} bytes", data.len());
        data.fill(0xff);
        Ok(())
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), BoxError> {
        log::debug!("no device at MMIO {addr:#x}: write of {} bytes", data.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records accesses.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(bool, u16, Vec<u8>)>>);

    impl PortDevice for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn read(&self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
            self.0.lock().unwrap().push((false, offset, data.to_vec()));
        }
        fn write(&self, offset: u16, data: &[u8]) {
            self.0.lock().unwrap().push((true, offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let mut bus = PortBus::new();
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        bus.add(PortRange { base: 0x70, len: 2 }, a.clone())
            .unwrap();
        bus.add(COM1_PORT, b.clone()).unwrap();
        let mut d = [0u8; 1];
        bus.pio_read(0x71, &mut d).unwrap();
        assert_eq!(d, [1]);
        bus.pio_write(0x3ff, &[9, 8]).unwrap();
        bus.pio_write(0x3f8, &[7]).unwrap();
        assert_eq!(*a.0.lock().unwrap(), vec![(false, 1, vec![1])]);
        assert_eq!(
            *b.0.lock().unwrap(),
            vec![(true, 7, vec![9, 8]), (true, 0, vec![7])]
        );
    }

    #[test]
    fn unmapped_ports_read_all_ones_and_ignore_writes() {
        let mut bus = PortBus::new();
        let a = Arc::new(Recorder::default());
        bus.add(PortRange { base: 0x70, len: 2 }, a.clone())
            .unwrap();
        for port in [0u16, 0x6f, 0x72, 0x80, 0xffff] {
            let mut d = [0u8; 4];
            bus.pio_read(port, &mut d).unwrap();
            assert_eq!(d, [0xff; 4], "port {port:#x}");
            bus.pio_write(port, &[1, 2]).unwrap();
        }
        assert!(a.0.lock().unwrap().is_empty());
        // Each port is logged once: its bit is set after the first access.
        assert_ne!(
            bus.logged[0x80 / 64].load(Ordering::Relaxed) & (1 << (0x80 % 64)),
            0
        );
        let mut d = [0u8; 2];
        bus.mmio_read(0xfed0_0000, &mut d).unwrap();
        assert_eq!(d, [0xff; 2]);
        bus.mmio_write(0xfed0_0000, &d).unwrap();
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = PortBus::new();
        bus.add(COM1_PORT, Arc::new(Recorder::default())).unwrap();
        let e = bus
            .add(
                PortRange {
                    base: 0x3ff,
                    len: 2,
                },
                Arc::new(Recorder::default()),
            )
            .unwrap_err();
        assert!(matches!(e, BusError::Overlap { .. }), "{e}");
        let e = bus
            .add(
                PortRange {
                    base: 0x3f0,
                    len: 9,
                },
                Arc::new(Recorder::default()),
            )
            .unwrap_err();
        assert!(matches!(e, BusError::Overlap { .. }), "{e}");
        for range in [
            PortRange { base: 0, len: 0 },
            PortRange {
                base: 0xffff,
                len: 2,
            },
        ] {
            let e = bus.add(range, Arc::new(Recorder::default())).unwrap_err();
            assert!(matches!(e, BusError::BadRange { .. }), "{e}");
        }
        bus.add(
            PortRange {
                base: 0xffff,
                len: 1,
            },
            Arc::new(Recorder::default()),
        )
        .unwrap();
        bus.add(
            PortRange {
                base: 0x3f0,
                len: 8,
            },
            Arc::new(Recorder::default()),
        )
        .unwrap();
    }

    #[test]
    fn the_named_ports_do_not_overlap() {
        let all = [
            COM1_PORT,
            I8042_PORT,
            CMOS_PORT,
            ACPI_SLEEP_PORT,
            PCI_CONFIG_PORT,
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert!(!a.overlaps(b), "{a:x?} {b:x?}");
            }
            assert!(!a.contains(veil_vcpu::HYPERCALL_PORT));
        }
    }
}
