// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Populating veil-memory's guest memory the way its regions' flavors allow (with the
//! `veil-memory` feature, on by default).
//!
//! [`HostSafeMemory`] implements [`Populate`] directly, so `load(&source, &memory)` does
//! the right thing for the memory it is given:
//!
//! - every region's flavor keeps contents across a conversion under the region's policy
//!   ([`Flavor::keeps_contents`](veil_memory::Flavor::keeps_contents): in-place or
//!   emulated with `Preserve` or `Retain`): **write, then convert**. The host writes
//!   through its view while the pages are shared and converts every page run to private
//!   in one all-or-nothing conversion; the contents stay.
//! - anything else: **shared only**. In the attributes flavor the guest sees a separate
//!   private side once a range is private, which the host cannot write, and a
//!   `Discard` region punches converted pages out, so converting would hand the guest
//!   zeros. The boot image stays shared; see the crate documentation.
//!
//! Either way every run must be shared when loading starts (`prepare` refuses otherwise,
//! before writing), and a failure after the first write returns every run to shared and
//! zeroes it.

use veil_memory::HostSafeMemory;
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::vm_memory::GuestAddress;

use crate::populate::{
    BoxError, ConvertPrivate, PageRun, Populate, PopulateError, PopulateWay, WriteThenConvert,
};
use crate::ram::{ByteRange, GuestRam};

fn frames(range: ByteRange) -> Result<FrameRange, BoxError> {
    Ok(FrameRange::from_gpa(range.start().0, range.len())?)
}

fn all_frames(runs: &[ByteRange]) -> Result<Vec<FrameRange>, BoxError> {
    runs.iter().map(|r| frames(*r)).collect()
}

impl ConvertPrivate for HostSafeMemory {
    fn ram(&self) -> Result<GuestRam, PopulateError> {
        let ranges: Vec<(u64, u64)> = self
            .regions()
            .iter()
            .map(|r| (r.base(), r.size()))
            .collect();
        GuestRam::new(&ranges).map_err(PopulateError::Ram)
    }

    fn is_shared(&self, range: ByteRange) -> bool {
        let Some(pages) = range.page_aligned() else {
            return false;
        };
        frames(pages)
            .ok()
            .and_then(|f| self.attributes().range_is(f, Attributes::empty()).ok())
            .unwrap_or(false)
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), BoxError> {
        Ok(self.host_write(gpa.0, bytes)?)
    }

    fn to_private(&self, runs: &[ByteRange]) -> Result<(), BoxError> {
        self.convert_ranges(&all_frames(runs)?, Attributes::PRIVATE)?;
        Ok(())
    }

    fn to_shared(&self, runs: &[ByteRange]) -> Result<(), BoxError> {
        self.convert_ranges(&all_frames(runs)?, Attributes::empty())?;
        Ok(())
    }
}

/// The way `memory` takes contents that will be private: write-then-convert when every
/// region keeps contents across a conversion to private (in-place or emulated with
/// `Preserve`), shared only otherwise.
pub fn populate_way(memory: &HostSafeMemory) -> PopulateWay {
    let keeps_contents = memory
        .regions()
        .iter()
        .all(|r| r.flavor().keeps_contents(r.policy()));
    if keeps_contents {
        PopulateWay::WriteThenConvert
    } else {
        PopulateWay::SharedOnly
    }
}

impl Populate for HostSafeMemory {
    fn way(&self) -> PopulateWay {
        populate_way(self)
    }

    fn ram(&self) -> Result<GuestRam, PopulateError> {
        ConvertPrivate::ram(self)
    }

    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        WriteThenConvert::new(self).prepare(runs)
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError> {
        WriteThenConvert::new(self).write(gpa, bytes)
    }

    fn seal(&self, runs: &[PageRun]) -> Result<Vec<ByteRange>, PopulateError> {
        match self.way() {
            PopulateWay::WriteThenConvert => WriteThenConvert::new(self).seal(runs),
            _ => Ok(Vec::new()),
        }
    }

    fn scrub(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        WriteThenConvert::new(self).scrub(runs)
    }
}
