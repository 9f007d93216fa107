// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! cargo-fuzz target: read, plan and place arbitrary IGVM files.

#![no_main]

#[path = "../igvm_harness.rs"]
mod igvm_harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| igvm_harness::run(data));
