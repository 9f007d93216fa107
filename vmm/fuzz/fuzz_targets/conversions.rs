// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! cargo-fuzz target: guest conversion requests, memory faults and host accesses against
//! veil-vmm's memory exits and veil-memory's host-safe memory, in the attributes and the
//! emulated flavor.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
