// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The thin wiring that composes the veil crates into a VMM, and the `veil` binary's
//! capability report.
//!
//! [`MemoryExits`] answers veil-vcpu's memory exits with veil-memory's guest memory;
//! [`Vm`] creates a VM with that memory registered and runs vCPUs on it.

mod exits;
mod report;
mod vm;

pub use exits::{MemoryExitError, MemoryExits, answer_request};
pub use report::caps_table;
pub use vm::{Vm, VmBuilder, VmError};
