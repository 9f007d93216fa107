// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

#![doc = include_str!("../README.md")]

mod exits;
mod report;
mod vm;

pub use exits::{MemoryExitError, MemoryExits, answer_request};
pub use report::caps_table;
pub use vm::{Vm, VmBuilder, VmError};
