// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! cargo-fuzz target: arbitrary `kvm_run` images and `KVM_RUN` results through
//! veil-vcpu's decoding, dispatch and write back.

#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::run(data));
