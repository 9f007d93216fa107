// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Helpers shared by veil-loader's tests: fixtures and a write-then-convert memory mock.

#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use veil_loader::{
    BoxError, ByteRange, ConvertPrivate, GuestRam, PAGE_SIZE, PopulateError, ram_of,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The committed fixtures.
pub const PVH_KERNEL: &[u8] = include_bytes!("../fixtures/pvh-test-kernel.elf");
/// The committed bzImage-shaped fixture.
pub const BZ_KERNEL: &[u8] = include_bytes!("../fixtures/bzimage-test-kernel.bin");
/// The command lines the test kernels expect.
pub const PVH_CMDLINE: &str = "veil.test=pvh console=none";
/// The command line the bzImage test kernel expects.
pub const BZ_CMDLINE: &str = "veil.test=bzimage console=none";

/// A small initrd with a known byte sum.
pub fn initrd() -> Vec<u8> {
    (0..5000u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// Anonymous guest memory of `ranges`.
pub fn memory(ranges: &[(u64, u64)]) -> GuestMemoryMmap {
    let r: Vec<(GuestAddress, usize)> = ranges
        .iter()
        .map(|&(b, s)| (GuestAddress(b), s as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&r).unwrap()
}

/// Reads `len` bytes at `gpa`.
pub fn read(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
    buf
}

/// Fills every region with `byte`.
pub fn fill(mem: &GuestMemoryMmap, ranges: &[(u64, u64)], byte: u8) {
    for &(b, s) in ranges {
        mem.write_slice(&vec![byte; s as usize], GuestAddress(b))
            .unwrap();
    }
}

/// A snapshot of all of memory.
pub fn snapshot(mem: &GuestMemoryMmap, ranges: &[(u64, u64)]) -> Vec<Vec<u8>> {
    ranges
        .iter()
        .map(|&(b, s)| read(mem, b, s as usize))
        .collect()
}

/// Little-endian helpers.
pub fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
/// Little-endian u64 at `o`.
pub fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MockError(pub String);

/// Guest memory with a page-granular private set, in the way the in-place and emulated
/// flavors behave: host writes to private pages fail, conversions keep contents. Faults
/// can be injected into the n-th write or the n-th conversion to private.
pub struct MockPrivateMemory {
    pub mem: GuestMemoryMmap,
    pub private: RefCell<BTreeSet<u64>>,
    pub writes: Cell<usize>,
    pub fail_write_at: Cell<Option<usize>>,
    pub conversions: Cell<usize>,
    pub fail_convert_at: Cell<Option<usize>>,
}

impl MockPrivateMemory {
    pub fn new(ranges: &[(u64, u64)]) -> Self {
        MockPrivateMemory {
            mem: memory(ranges),
            private: RefCell::new(BTreeSet::new()),
            writes: Cell::new(0),
            fail_write_at: Cell::new(None),
            conversions: Cell::new(0),
            fail_convert_at: Cell::new(None),
        }
    }

    fn pages(range: ByteRange) -> impl Iterator<Item = u64> {
        (range.start().0 / PAGE_SIZE)..range.end().div_ceil(PAGE_SIZE)
    }

    pub fn private_pages(&self) -> Vec<u64> {
        self.private.borrow().iter().copied().collect()
    }
}

impl ConvertPrivate for MockPrivateMemory {
    fn ram(&self) -> Result<GuestRam, PopulateError> {
        ram_of(&self.mem)
    }

    fn is_shared(&self, range: ByteRange) -> bool {
        let p = self.private.borrow();
        Self::pages(range).all(|f| !p.contains(&f))
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), BoxError> {
        let n = self.writes.get();
        self.writes.set(n + 1);
        if self.fail_write_at.get() == Some(n) {
            return Err(Box::new(MockError(format!(
                "injected failure of write {n}"
            ))));
        }
        if let Some(r) = ByteRange::new(gpa.0, bytes.len() as u64)
            && !self.is_shared(r)
        {
            return Err(Box::new(MockError(format!("{r} is private"))));
        }
        self.mem
            .write_slice(bytes, gpa)
            .map_err(|e| Box::new(e) as BoxError)
    }

    /// Converts run by run, so an injected failure leaves earlier runs private (the
    /// harder case for the loader's scrub).
    fn to_private(&self, runs: &[ByteRange]) -> Result<(), BoxError> {
        for &range in runs {
            let n = self.conversions.get();
            self.conversions.set(n + 1);
            if self.fail_convert_at.get() == Some(n) {
                return Err(Box::new(MockError(format!(
                    "injected failure of conversion {n}"
                ))));
            }
            self.private.borrow_mut().extend(Self::pages(range));
        }
        Ok(())
    }

    fn to_shared(&self, runs: &[ByteRange]) -> Result<(), BoxError> {
        let mut p = self.private.borrow_mut();
        for &range in runs {
            for f in Self::pages(range) {
                p.remove(&f);
            }
        }
        Ok(())
    }
}
