// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`LaunchPopulate`]: a launch technology that copies boot data into private memory
//! itself, as a veil-loader [`Populate`] target.
//!
//! The loader writes each run into the guest's shared memory as usual; sealing a run
//! reads its bytes back into a page-aligned buffer, converts the run to private through
//! the memory's flavor (which may discard the shared copy), and hands the bytes to
//! [`Launch::populate`] with the run's page type. Every run's page type is checked
//! against [`Launch::accepts`] before anything is written.

use veil_loader::{
    ByteRange, ConvertPrivate, GuestRam, PageRun, Populate, PopulateError, PopulateWay,
    WriteThenConvert, check_writable,
};
use veil_memory::HostSafeMemory;
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::vm_memory::GuestAddress;

use crate::launch::{Launch, LaunchRun, LaunchVm};

/// Boot data for a technology that populates private memory itself; see the module
/// documentation.
pub struct LaunchPopulate<'a> {
    launch: &'a dyn Launch,
    vm: &'a LaunchVm<'a>,
}

impl<'a> LaunchPopulate<'a> {
    /// Populates `vm`'s memory through `launch`.
    pub fn new(launch: &'a dyn Launch, vm: &'a LaunchVm<'a>) -> Self {
        LaunchPopulate { launch, vm }
    }

    fn memory(&self) -> &HostSafeMemory {
        self.vm.memory
    }

    /// What the shared side holds of `range`, in a buffer whose start is page-aligned in
    /// host memory (technologies take source buffers by the page).
    fn read_back(&self, range: ByteRange) -> Result<PageBuffer, PopulateError> {
        let mut buf = PageBuffer::new(range.len() as usize);
        self.memory()
            .host_read(range.start().0, buf.as_mut_slice())
            .map_err(|e| PopulateError::Write {
                gpa: range.start().0,
                len: range.len(),
                source: Box::new(e),
            })?;
        Ok(buf)
    }
}

impl Populate for LaunchPopulate<'_> {
    fn way(&self) -> PopulateWay {
        PopulateWay::Launch
    }

    fn ram(&self) -> Result<GuestRam, PopulateError> {
        ConvertPrivate::ram(self.memory())
    }

    fn prepare(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        // Inside memory and shared, as for writing then converting; then every page
        // type is one the technology takes.
        check_writable(self.memory(), runs)?;
        match runs.iter().find(|r| !self.launch.accepts(r.page_type)) {
            Some(r) => Err(PopulateError::PageType {
                range: r.range,
                page_type: r.page_type,
                way: PopulateWay::Launch,
            }),
            None => Ok(()),
        }
    }

    fn write(&self, gpa: GuestAddress, bytes: &[u8]) -> Result<(), PopulateError> {
        WriteThenConvert::new(self.memory()).write(gpa, bytes)
    }

    fn seal(&self, runs: &[PageRun]) -> Result<Vec<ByteRange>, PopulateError> {
        let mut private = Vec::with_capacity(runs.len());
        for run in runs {
            let bytes = self.read_back(run.range)?;
            let frames =
                FrameRange::from_gpa(run.range.start().0, run.range.len()).map_err(|e| {
                    PopulateError::Convert {
                        runs: vec![run.range],
                        to: "private",
                        source: Box::new(e),
                    }
                })?;
            self.memory()
                .convert(frames, Attributes::PRIVATE)
                .map_err(|e| PopulateError::Convert {
                    runs: vec![run.range],
                    to: "private",
                    source: Box::new(e),
                })?;
            private.push(run.range);
            let launch_run = LaunchRun {
                range: run.range,
                page_type: run.page_type,
                bytes: bytes.as_slice(),
            };
            self.launch
                .populate(self.vm, &launch_run)
                .map_err(|e| PopulateError::Launch {
                    step: "populate",
                    range: run.range,
                    source: Box::new(e),
                })?;
        }
        Ok(private)
    }

    fn scrub(&self, runs: &[PageRun]) -> Result<(), PopulateError> {
        WriteThenConvert::new(self.memory()).scrub(runs)
    }
}

/// A zeroed buffer of whole pages, page-aligned in host memory.
struct PageBuffer {
    pages: Vec<Page>,
    len: usize,
}

/// One page, aligned as one: a `[Page]` is its pages' bytes back to back.
#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; 4096]);

impl PageBuffer {
    fn new(len: usize) -> Self {
        PageBuffer {
            pages: vec![Page([0; 4096]); len.div_ceil(4096)],
            len,
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `Page` is 4096 bytes of `u8` with no padding (`repr(C)`, size equal to
        // its alignment), so the vector's storage is `pages.len() * 4096` initialised
        // bytes, and `len` is at most that; the borrow of `self` keeps it alive and
        // unaliased by any `&mut`.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast::<u8>(), self.len) }
    }
}
