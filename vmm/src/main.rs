// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil`: the command-line front end of the veil crates.

fn main() {
    println!(
        "veil {}: no command is implemented yet; the host capability report comes with veil-memory.",
        env!("CARGO_PKG_VERSION")
    );
}
