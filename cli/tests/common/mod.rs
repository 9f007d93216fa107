// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Running the `veil` binary from the cli crate's tests.

use std::process::{Command, Output};

/// Runs the `veil` binary with `args`, without the caller's `RUST_LOG`.
pub fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot run the veil binary")
}
