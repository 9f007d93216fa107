// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`Syscalls`]: where a conversion's system calls go, so that a test can make any of
//! them fail without a field in veil's own types.

use std::fmt;
use std::io;
use std::os::fd::BorrowedFd;

use veil_attrs::FrameRange;

use crate::attributes_vm::MemoryAttributesVm;
use crate::model::StepKind;
use crate::sys::{self, Access, Mapping};

/// One system call of a conversion, ready to issue.
pub struct Syscall<'a> {
    pub(crate) kind: StepKind,
    pub(crate) range: FrameRange,
    pub(crate) target: Target<'a>,
}

/// What a [`Syscall`] acts on.
pub(crate) enum Target<'a> {
    /// The VM whose memory attributes change, and to what.
    Vm {
        vm: &'a dyn MemoryAttributesVm,
        attributes: veil_attrs::Attributes,
    },
    /// Bytes `[offset, offset + len)` of the host view's reservation.
    View {
        mapping: &'a Mapping,
        offset: usize,
        len: usize,
        access: Access,
    },
    /// Bytes `[offset, offset + len)` of a backing file.
    File {
        fd: BorrowedFd<'a>,
        offset: u64,
        len: u64,
    },
}

impl Syscall<'_> {
    /// What the call does.
    pub fn kind(&self) -> StepKind {
        self.kind
    }

    /// The guest frames it acts on.
    pub fn range(&self) -> FrameRange {
        self.range
    }

    /// Issues it.
    pub fn issue(self) -> io::Result<()> {
        match self.target {
            Target::Vm { vm, attributes } => vm.set_memory_attributes(self.range, attributes),
            Target::View {
                mapping,
                offset,
                len,
                access,
            } => mapping.protect(offset, len, access),
            Target::File { fd, offset, len } => sys::punch_hole(fd, offset, len),
        }
    }
}

impl fmt::Debug for Syscall<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} over {}", self.kind, self.range)
    }
}

/// Where a guest memory's conversions send their system calls.
///
/// The default, [`KernelSyscalls`], issues each call. A test wraps it to fail chosen
/// calls and check that veil undoes what it did before (see the fault-injection tests of
/// veil-memory and veil-vmm). Calls arrive one at a time, in plan order, from the thread
/// carrying out the conversion.
pub trait Syscalls: Send + Sync {
    /// Issues `call`, or fails it.
    fn issue(&self, call: Syscall<'_>) -> io::Result<()> {
        call.issue()
    }
}

/// Issues every system call as asked.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelSyscalls;

impl Syscalls for KernelSyscalls {}

/// Fails the call after the next `successes` ones with `errno`, once; every other call
/// is issued.
#[derive(Debug)]
pub struct FailingSyscalls {
    countdown: std::sync::Mutex<Option<(usize, i32)>>,
}

impl FailingSyscalls {
    /// A wrapper that fails nothing until told to.
    pub fn new() -> Self {
        FailingSyscalls {
            countdown: std::sync::Mutex::new(None),
        }
    }

    /// Makes the call after the next `successes` ones fail with `errno` (once).
    pub fn fail_after(&self, successes: usize, errno: i32) {
        *self.lock() = Some((successes, errno));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(usize, i32)>> {
        self.countdown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Default for FailingSyscalls {
    fn default() -> Self {
        Self::new()
    }
}

impl Syscalls for FailingSyscalls {
    fn issue(&self, call: Syscall<'_>) -> io::Result<()> {
        {
            let mut countdown = self.lock();
            match *countdown {
                Some((0, errno)) => {
                    *countdown = None;
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Some((n, errno)) => *countdown = Some((n - 1, errno)),
                None => {}
            }
        }
        call.issue()
    }
}
