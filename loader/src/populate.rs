// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! How boot data gets into memory that is or will become private.
//!
//! A [`Populate`] target is driven in four steps by the loader (see
//! [`BootPlan::place`](crate::BootPlan::place)): `prepare` every page run before anything
//! is written, `write` each object, `seal` the runs, and on any failure `scrub` them.
//! Every run carries a [`PageType`], which a target that cannot populate it refuses in
//! `prepare`. The ways memory can take private contents differ:
//!
//! - **write, then convert** ([`WriteThenConvert`]; memory whose flavor keeps contents
//!   across a conversion, such as in-place and emulated): the host writes through its
//!   own mapping while the range is still shared, then converts it to private, and the
//!   guest finds the bytes the host wrote.
//! - **shared only** ([`SharedOnly`]; the attributes flavor without a launch technology,
//!   and plain memory with no private ranges): the host writes the shared side and leaves
//!   it shared. In the attributes flavor the private side is a guest_memfd the host
//!   cannot write, and converting a range to private discards the shared side's contents
//!   instead of moving them, so there is no generic way to put bytes into private memory.
//!   The guest boots from shared memory and converts what it wants private itself.
//! - **a launch technology** ([`PopulateWay::Launch`]): a technology that copies boot
//!   data into private memory itself and measures it (SNP's launch update, TDX's
//!   memory-region initialization). Such targets are the technology backends' own;
//!   veil-vmm adapts its launch backends to this trait.

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
    /// Handed to a launch technology, which copies each run into private memory and
    /// measures it.
    Launch,
}

impl fmt::Display for PopulateWay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PopulateWay::WriteThenConvert => "write, then convert to private",
            PopulateWay::SharedOnly => "shared only",
            PopulateWay::Launch => "launch technology",
        })
    }
}

/// What a page of boot data is, as a launch technology populates and measures it.
///
/// Plain memory takes [`Normal`](PageType::Normal), [`Zero`](PageType::Zero) and
/// [`Unmeasured`](PageType::Unmeasured) pages alike, by writing them; the others only
/// mean something to a technology that fills or checks them (SEV-SNP's secrets and CPUID
/// pages, a vCPU state page), and a target that cannot refuses them before anything is
/// written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PageType {
    /// Contents placed and measured: kernel, initrd, boot data.
    Normal,
    /// All zeros: a technology may add the page without contents.
    Zero,
    /// Contents placed but not measured.
    Unmeasured,
    /// A page the technology fills with launch secrets.
    Secrets,
    /// A CPUID table the technology checks against the hardware.
    Cpuid,
    /// A vCPU's initial register state.
    VcpuState,
}

impl PageType {
    /// Whether plain memory populates it by writing its bytes: every type that needs no
    /// technology to fill or check it.
    pub const fn plain(self) -> bool {
        matches!(
            self,
            PageType::Normal | PageType::Zero | PageType::Unmeasured
        )
    }
}

impl fmt::Display for PageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageType::Normal => "normal",
            PageType::Zero => "zero",
            PageType::Unmeasured => "unmeasured",
            PageType::Secrets => "secrets",
            PageType::Cpuid => "CPUID",
            PageType::VcpuState => "vCPU state",
        })
    }
}

/// A page-aligned run of boot data, and the type its pages are populated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PageRun {
    /// The pages.
    pub range: ByteRange,
    /// What they are.
    pub page_type: PageType,
}

impl fmt::Display for PageRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} pages)", self.range, self.page_type)
    }
}

/// The ranges of `runs`.
pub fn ranges_of(runs: &[PageRun]) -> Vec<ByteRange> {
    runs.iter().map(|r| r.range).collect()
}

/// Why populating failed.
#[derive(Debug, thiserror::Error)]
pub enum PopulateError {
    /// The target cannot populate pages of this type (plain memory and a secrets page,
    /// say). Nothing was written.
    #[error("{range} holds {page_type} pages, which populating by {way} cannot provide")]
    PageType {
        /// The run.
        range: ByteRange,
        /// Its type.
        page_type: PageType,
        /// The target's way.
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
    /// A launch technology refused or failed a step; its own error, with its own code,
    /// is the source.
    #[error("the launch technology failed to {step} {range}")]
    Launch {
        /// What it was doing.
        step: &'static str,
        /// The run.
        range: ByteRange,
        /// The technology's error.
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
/// disjoint, each of one [`PageType`]; `write` only ever targets bytes inside them.
pub trait Populate {
    /// How this target takes contents that will be private.
    fn way(&self) -> PopulateWay;

    /// The guest's RAM: the memory map given to the kernel, and where placements may go.
    fn ram(&self) -> Result<GuestRam, PopulateError>;

    /// Checks, before anything is written, that every run can be populated as its page
    /// type says.
    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError>;

    /// Writes `bytes` at `gpa`.
    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError>;

    /// After every write succeeded: makes the runs private where this way does, and
    /// returns the ranges that are private now.
    fn seal(&self, runs: &[PageRun]) -> Result<Vec<ByteRange>, PopulateError>;

    /// After a failure: returns every run to shared and zeroes it, so nothing half-written
    /// stays in memory that is or will become private.
    fn scrub(&self, runs: &[PageRun]) -> Result<(), PopulateError>;
}

/// Refuses the first run plain memory cannot populate by writing (see
/// [`PageType::plain`]).
pub fn check_plain(runs: &[PageRun], way: PopulateWay) -> Result<(), PopulateError> {
    match runs.iter().find(|r| !r.page_type.plain()) {
        Some(r) => Err(PopulateError::PageType {
            range: r.range,
            page_type: r.page_type,
            way,
        }),
        None => Ok(()),
    }
}

/// The RAM of a vm-memory guest memory: one range per region.
pub fn ram_of<M: GuestMemoryBackend>(memory: &M) -> Result<GuestRam, PopulateError> {
    let ranges: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
    GuestRam::new(&ranges).map_err(PopulateError::Ram)
}

fn check_inside(ram: &GuestRam, runs: &[PageRun]) -> Result<(), PopulateError> {
    match runs.iter().find(|r| !ram.covers(&r.range)) {
        Some(r) => Err(PopulateError::OutsideMemory { range: r.range }),
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

    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        check_inside(&self.ram()?, runs)?;
        check_plain(runs, self.way())
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError> {
        write_bytes(self.memory, gpa, bytes)
    }

    fn seal(&self, _runs: &[PageRun]) -> Result<Vec<ByteRange>, PopulateError> {
        Ok(Vec::new())
    }

    fn scrub(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        for run in runs {
            write_zeros(run.range, |gpa, z| self.write(gpa, z))?;
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

/// Refuses the first run that is not inside `memory`'s RAM or not all shared: what a
/// target that writes through the host mapping checks before writing.
pub fn check_writable<M: ConvertPrivate + ?Sized>(
    memory: &M,
    runs: &[PageRun],
) -> Result<(), PopulateError> {
    check_inside(&memory.ram()?, runs)?;
    match runs.iter().find(|r| !memory.is_shared(r.range)) {
        Some(r) => Err(PopulateError::NotShared { range: r.range }),
        None => Ok(()),
    }
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

    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        check_writable(self.memory, runs)?;
        check_plain(runs, self.way())
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

    fn seal(&self, runs: &[PageRun]) -> Result<Vec<ByteRange>, PopulateError> {
        let ranges = ranges_of(runs);
        self.memory
            .to_private(&ranges)
            .map_err(|source| PopulateError::Convert {
                runs: ranges.clone(),
                to: "private",
                source,
            })?;
        Ok(ranges)
    }

    fn scrub(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        let private: Vec<ByteRange> = runs
            .iter()
            .map(|r| r.range)
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
        for run in runs {
            write_zeros(run.range, |gpa, z| self.write(gpa, z))?;
        }
        Ok(())
    }
}
