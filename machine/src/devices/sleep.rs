// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The hardware-reduced ACPI sleep registers the FADT points at: writing S5 with SLP_EN
//! to the control register powers the machine off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::{DeviceEnd, EndSignal, PortDevice};

/// The sleep control register's offset in [`ACPI_SLEEP_PORT`](super::ACPI_SLEEP_PORT).
pub const SLEEP_CONTROL_OFFSET: u16 = 0;
/// The sleep status register's offset.
pub const SLEEP_STATUS_OFFSET: u16 = 1;
/// SLP_EN: carry out the sleep type in bits 2-4 (ACPI 6.5 §4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
/// The sleep type `_S5_` declares, in place in the control register: `5 << 2`.
pub const SLP_TYP_S5: u8 = 5 << 2;
const SLP_TYP_MASK: u8 = 0b111 << 2;

/// The sleep control and status registers.
pub struct AcpiSleep {
    end: Arc<EndSignal>,
    /// The status register; writing 1 clears a bit (the wake status Linux clears before
    /// sleeping), and nothing sets any.
    status: AtomicU8,
}

impl AcpiSleep {
    /// Registers that ask `end` for a power-off.
    pub fn new(end: Arc<EndSignal>) -> Self {
        AcpiSleep {
            end,
            status: AtomicU8::new(0),
        }
    }
}

impl PortDevice for AcpiSleep {
    fn name(&self) -> &'static str {
        "acpi-sleep"
    }

    fn read(&self, offset: u16, data: &mut [u8]) {
        let v = match offset {
            SLEEP_STATUS_OFFSET => self.status.load(Ordering::Relaxed),
            _ => 0,
        };
        data.fill(v);
    }

    fn write(&self, offset: u16, data: &[u8]) {
        for &v in data {
            match offset {
                SLEEP_CONTROL_OFFSET if v & SLP_EN != 0 && v & SLP_TYP_MASK == SLP_TYP_S5 => {
                    self.end.request(DeviceEnd::PowerOff);
                }
                SLEEP_CONTROL_OFFSET => {
                    log::debug!("ACPI sleep control {v:#x} ignored: only S5 is supported")
                }
                _ => {
                    self.status.fetch_and(!v, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let end = Arc::new(EndSignal::default());
        let s = AcpiSleep::new(end.clone());
        // Linux clears the wake status, then writes SLP_TYP 5 | SLP_EN = 0x34.
        s.write(SLEEP_STATUS_OFFSET, &[0x80]);
        // Other sleep types, or S5 without SLP_EN, do nothing.
        s.write(SLEEP_CONTROL_OFFSET, &[SLP_TYP_S5, 3 << 2 | SLP_EN, SLP_EN]);
        assert_eq!(end.get(), None);
        let mut d = [0xff];
        s.read(SLEEP_STATUS_OFFSET, &mut d);
        assert_eq!(d, [0]);
        s.write(SLEEP_CONTROL_OFFSET, &[0x34]);
        assert_eq!(end.get(), Some(DeviceEnd::PowerOff));
        s.read(SLEEP_CONTROL_OFFSET, &mut d);
        assert_eq!(d, [0]);
    }
}
