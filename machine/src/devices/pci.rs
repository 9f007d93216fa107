// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! PCI configuration mechanism #1 with no device behind it: the address register keeps
//! what is written (Linux's type-1 probe reads it back), and every configuration read
//! answers all-ones, "no device", so a kernel without `pci=off` scans an empty bus.

use std::sync::atomic::{AtomicU32, Ordering};

use super::PortDevice;

/// 0xcf8-0xcfb: the address; 0xcfc-0xcff: the data.
#[derive(Debug, Default)]
pub struct PciConfigNoDevice {
    address: AtomicU32,
}

impl PortDevice for PciConfigNoDevice {
    fn name(&self) -> &'static str {
        "pci-config"
    }

    fn read(&self, offset: u16, data: &mut [u8]) {
        if offset < 4 {
            let a = self.address.load(Ordering::Relaxed).to_le_bytes();
            for (i, b) in data.iter_mut().enumerate() {
                *b = a.get(usize::from(offset) + i).copied().unwrap_or(0xff);
            }
        } else {
            data.fill(0xff);
        }
    }

    fn write(&self, offset: u16, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            let mut a = [0u8; 4];
            a.copy_from_slice(data);
            self.address.store(u32::from_le_bytes(a), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_reads_back_and_data_is_all_ones() {
        let p = PciConfigNoDevice::default();
        p.write(0, &0x8000_0000u32.to_le_bytes());
        let mut a = [0u8; 4];
        p.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
        let mut d = [0u8; 4];
        p.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        let mut w = [0u8; 2];
        p.read(6, &mut w);
        assert_eq!(w, [0xff; 2]);
        // A byte write to the address port is not a configuration address.
        p.write(0, &[0]);
        p.read(0, &mut a);
        assert_eq!(u32::from_le_bytes(a), 0x8000_0000);
    }
}
