// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How boot data gets into memory that is or will become private.
//!
//! A [`Populate`] target is driven in four steps by the loader (see
//! [`BootPlan::place`](crate::BootPlan::place)): `prepare` every page run before anything
//! is written, `write` each object, `seal` the runs, and on any failure `scrub` them.
//! The ways memory can take private contents differ by flavor:
//!
//! - **write, then convert** ([`WriteThenConvert`]; in-place and emulated flavors): the
//!   host writes through its own mapping while the range is still shared, then converts
//!   it to private. These flavors keep contents across the conversion, so the guest finds
//!   the bytes the host wrote.
//! - **shared only** ([`SharedOnly`]; the attributes flavor on kernels whose guest_memfd
//!   cannot be mapped, and plain memory with no private ranges): the host writes the
//!   shared side and leaves it shared. In the attributes flavor the private side is a
//!   guest_memfd the host cannot map (Linux 6.12 has no `GUEST_MEMFD_FLAG_MMAP`), and
//!   converting a range to private discards the shared side's contents instead of moving
//!   them, so there is no generic way to put bytes into private memory. The guest boots
//!   from shared memory and converts what it wants private itself. Technology-specific
//!   ioctls that copy into private memory are the two extension points below.
//! - **extension points**, not implemented: [`SnpLaunchUpdate`] (`KVM_SEV_SNP_LAUNCH_UPDATE`
//!   copies a host buffer into private guest_memfd pages and extends the hardware launch
//!   measurement) and [`TdxInitMemRegion`] (`KVM_TDX_INIT_MEM_REGION`, likewise for TDX).
//!   Both refuse in `prepare`, before anything is written, with
//!   [`PopulateError::Unsupported`].

use std::fmt;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::ram::{ByteRange, GuestRam, RamError};

pub use veil_abi::BoxError;

/// The way a target takes contents that will be private.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PopulateWay {
    /// Written through the host mapping while shared, then converted to private.
    WriteThenConvert,
    /// Written into shared memory, left shared.
    SharedOnly,
    /// SNP launch update: extension point, not implemented.
    SnpLaunchUpdate,
    /// TDX memory region initialization: extension point, not implemented.
    TdxInitMemRegion,
}

impl fmt::Display for PopulateWay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PopulateWay::WriteThenConvert => "write, then convert to private",
            PopulateWay::SharedOnly => "shared only",
            PopulateWay::SnpLaunchUpdate => "SNP launch update",
            PopulateWay::TdxInitMemRegion => "TDX memory region initialization",
        })
    }
}

/// Why populating failed.
#[derive(Debug, thiserror::Error)]
pub enum PopulateError {
    /// This backend has no implementation of its way of populating private memory.
    #[error("populating private memory by {way} is not supported by this backend")]
    Unsupported {
        /// The way asked for.
        way: PopulateWay,
    },
    /// The target's memory regions do not form valid RAM.
    #[error("the target's memory regions are not valid RAM")]
    Ram(#[source] RamError),
    /// A range to populate is not inside the target's memory.
    #[error("{range} is not inside guest memory")]
    OutsideMemory {
        /// The range.
        range: ByteRange,
    },
    /// A range to populate is already (partly) private: the host cannot write it.
    #[error("{range} is not shared: the host cannot write it")]
    NotShared {
        /// The range.
        range: ByteRange,
    },
    /// Writing failed.
    #[error("writing {len:#x} bytes at {gpa:#x} failed")]
    Write {
        /// Where.
        gpa: u64,
        /// How much.
        len: u64,
        /// The memory's error.
        #[source]
        source: BoxError,
    },
    /// Converting page runs failed.
    #[error("converting {} page runs from {} to {to} failed", runs.len(), runs.first().map(|r| r.to_string()).unwrap_or_default())]
    Convert {
        /// The runs.
        runs: Vec<ByteRange>,
        /// "private" or "shared".
        to: &'static str,
        /// The memory's error.
        #[source]
        source: BoxError,
    },
}

/// Memory the loader can place boot data into.
///
/// Page runs handed to `prepare`, `seal` and `scrub` are page-aligned, sorted and
/// disjoint; `write` only ever targets bytes inside them.
pub trait Populate {
    /// How this target takes contents that will be private.
    fn way(&self) -> PopulateWay;

    /// The guest's RAM: the memory map given to the kernel, and where placements may go.
    fn ram(&self) -> Result<GuestRam, PopulateError>;

    /// Checks, before anything is written, that every run can be populated.
    fn prepare(&self, runs: &[ByteRange]) -> Result<(), PopulateError>;

    /// Writes `bytes` at `gpa`.
    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError>;

    /// After every write succeeded: makes the runs private where this way does, and
    /// returns the runs that are private now.
    fn seal(&self, runs: &[ByteRange]) -> Result<Vec<ByteRange>, PopulateError>;

    /// After a failure: returns every run to shared and zeroes it, so nothing half-written
    /// stays in memory that is or will become private.
    fn scrub(&self, runs: &[ByteRange]) -> Result<(), PopulateError>;
}

/// The RAM of a vm-memory guest memory: one range per region.
pub fn ram_of<M: GuestMemoryBackend>(memory: &M) -> Result<GuestRam, PopulateError> {
    let ranges: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
    GuestRam::new(&ranges).map_err(PopulateError::Ram)
}

fn check_inside(ram: &GuestRam, runs: &[ByteRange]) -> Result<(), PopulateError> {
    match runs.iter().find(|r| !ram.covers(r)) {
        Some(&range) => Err(PopulateError::OutsideMemory { range }),
        None => Ok(()),
    }
}

fn write_bytes<M: GuestMemoryBackend>(
    memory: &M,
    gpa: GuestAddress,
    bytes: &[u8],
) -> Result<(), PopulateError> {
    memory
        .write_slice(bytes, gpa)
        .map_err(|e| PopulateError::Write {
            gpa: gpa.0,
            len: bytes.len() as u64,
            source: Box::new(e),
        })
}

/// Writes zeros over `range` through `write`, a page-sized buffer at a time.
pub fn write_zeros(
    range: ByteRange,
    mut write: impl FnMut(GuestAddress, &[u8]) -> Result<(), PopulateError>,
) -> Result<(), PopulateError> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = range.start().0;
    while at < range.end() {
        let n = (range.end() - at).min(ZEROS.len() as u64);
        write(GuestAddress(at), &ZEROS[..n as usize])?;
        at += n;
    }
    Ok(())
}

/// Populates by writing into memory that stays shared: plain vm-memory guest memory, or
/// the shared side of the attributes flavor.
#[derive(Debug)]
pub struct SharedOnly<'m, M> {
    memory: &'m M,
}

impl<'m, M: GuestMemoryBackend> SharedOnly<'m, M> {
    /// Populates `memory`.
    pub fn new(memory: &'m M) -> Self {
        SharedOnly { memory }
    }
}

impl<M: GuestMemoryBackend> Populate for SharedOnly<'_, M> {
    fn way(&self) -> PopulateWay {
        PopulateWay::SharedOnly
    }

    fn ram(&self) -> Result<GuestRam, PopulateError> {
        ram_of(self.memory)
    }

    fn prepare(&self, runs: &[ByteRange]) -> Result<(), PopulateError> {
        check_inside(&self.ram()?, runs)
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError> {
        write_bytes(self.memory, gpa, bytes)
    }

    fn seal(&self, _runs: &[ByteRange]) -> Result<Vec<ByteRange>, PopulateError> {
        Ok(Vec::new())
    }

    fn scrub(&self, runs: &[ByteRange]) -> Result<(), PopulateError> {
        for &run in runs {
            write_zeros(run, |gpa, z| self.write(gpa, z))?;
        }
        Ok(())
    }
}

/// What writing-then-converting needs from memory: its RAM, each range's state, host
/// writes that refuse private ranges, and conversions that keep contents. veil-memory's
/// guest memory implements it for the in-place and emulated flavors.
pub trait ConvertPrivate {
    /// The guest's RAM ranges.
    fn ram(&self) -> Result<GuestRam, PopulateError>;

    /// Whether every page of `range` is shared (and so writable by the host).
    fn is_shared(&self, range: ByteRange) -> bool;

    /// Writes `bytes` at `gpa` through the host mapping; fails on private bytes.
    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), BoxError>;

    /// Converts the page-aligned `runs` to private, keeping their contents: all of them
    /// or, on error, preferably none (the loader scrubs either way).
    fn to_private(&self, runs: &[ByteRange]) -> Result<(), BoxError>;

    /// Converts the page-aligned `runs` back to shared.
    fn to_shared(&self, runs: &[ByteRange]) -> Result<(), BoxError>;
}

/// Populates by writing through the host mapping while shared, then converting to
/// private (in-place and emulated flavors).
#[derive(Debug)]
pub struct WriteThenConvert<'m, M: ?Sized> {
    memory: &'m M,
}

impl<'m, M: ConvertPrivate + ?Sized> WriteThenConvert<'m, M> {
    /// Populates `memory`.
    pub fn new(memory: &'m M) -> Self {
        WriteThenConvert { memory }
    }
}

impl<M: ConvertPrivate + ?Sized> Populate for WriteThenConvert<'_, M> {
    fn way(&self) -> PopulateWay {
        PopulateWay::WriteThenConvert
    }

    fn ram(&self) -> Result<GuestRam, PopulateError> {
        self.memory.ram()
    }

    fn prepare(&self, runs: &[ByteRange]) -> Result<(), PopulateError> {
        check_inside(&self.ram()?, runs)?;
        match runs.iter().find(|r| !self.memory.is_shared(**r)) {
            Some(&range) => Err(PopulateError::NotShared { range }),
            None => Ok(()),
        }
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError> {
        self.memory
            .write(gpa, bytes)
            .map_err(|source| PopulateError::Write {
                gpa: gpa.0,
                len: bytes.len() as u64,
                source,
            })
    }

    fn seal(&self, runs: &[ByteRange]) -> Result<Vec<ByteRange>, PopulateError> {
        self.memory
            .to_private(runs)
            .map_err(|source| PopulateError::Convert {
                runs: runs.to_vec(),
                to: "private",
                source,
            })?;
        Ok(runs.to_vec())
    }

    fn scrub(&self, runs: &[ByteRange]) -> Result<(), PopulateError> {
        let private: Vec<ByteRange> = runs
            .iter()
            .copied()
            .filter(|r| !self.memory.is_shared(*r))
            .collect();
        if !private.is_empty() {
            self.memory
                .to_shared(&private)
                .map_err(|source| PopulateError::Convert {
                    runs: private,
                    to: "shared",
                    source,
                })?;
        }
        for &range in runs {
            write_zeros(range, |gpa, z| self.write(gpa, z))?;
        }
        Ok(())
    }
}

macro_rules! extension_point {
    ($(#[$doc:meta])* $name:ident, $way:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name {
            ram: GuestRam,
        }

        impl $name {
            /// A target for a guest with `ram`.
            pub fn new(ram: GuestRam) -> Self {
                $name { ram }
            }
        }

        impl Populate for $name {
            fn way(&self) -> PopulateWay {
                $way
            }

            fn ram(&self) -> Result<GuestRam, PopulateError> {
                Ok(self.ram.clone())
            }

            fn prepare(&self, _runs: &[ByteRange]) -> Result<(), PopulateError> {
                Err(PopulateError::Unsupported { way: $way })
            }

            fn write(&self, _gpa: GuestAddress, _bytes: &[u8]) -> Result<(), PopulateError> {
                Err(PopulateError::Unsupported { way: $way })
            }

            fn seal(&self, _runs: &[ByteRange]) -> Result<Vec<ByteRange>, PopulateError> {
                Err(PopulateError::Unsupported { way: $way })
            }

            fn scrub(&self, _runs: &[ByteRange]) -> Result<(), PopulateError> {
                // Nothing was ever written.
                Ok(())
            }
        }
    };
}

extension_point!(
    /// Extension point for SNP guests: `KVM_SEV_SNP_LAUNCH_UPDATE` would copy each object
    /// from a host buffer into private guest_memfd pages and extend the hardware launch
    /// digest. Not implemented: every call returns [`PopulateError::Unsupported`].
    SnpLaunchUpdate,
    PopulateWay::SnpLaunchUpdate
);

extension_point!(
    /// Extension point for TDX guests: `KVM_TDX_INIT_MEM_REGION` (with
    /// `KVM_TDX_MEASURE_MEMORY_REGION`) would copy each object into private memory and
    /// extend MRTD. Not implemented: every call returns [`PopulateError::Unsupported`].
    TdxInitMemRegion,
    PopulateWay::TdxInitMemRegion
);
