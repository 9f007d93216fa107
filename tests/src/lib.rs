// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for veil's integration tests against real KVM.
//!
//! Tests that need `/dev/kvm` call [`kvm_or_skip`] first: without KVM they print why they
//! skip and return, unless `VEIL_REQUIRE_KVM=1` is set, in which case they fail.

use std::path::Path;

/// The environment variable that turns a missing `/dev/kvm` from a skip into a failure.
pub const REQUIRE_KVM: &str = "VEIL_REQUIRE_KVM";

/// Whether the environment variable `name` is set to `1`.
pub fn required(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// Returns `true` when `/dev/kvm` can be opened for reading and writing.
///
/// Otherwise prints the reason the calling test `test` skips and returns `false`, or
/// panics with that reason when `VEIL_REQUIRE_KVM=1`.
pub fn kvm_or_skip(test: &str) -> bool {
    let reason = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/kvm"))
    {
        Ok(_) => return true,
        Err(e) => format!("cannot open /dev/kvm: {e}"),
    };
    if required(REQUIRE_KVM) {
        panic!("{test}: {reason}, and {REQUIRE_KVM}=1 forbids skipping");
    }
    eprintln!("skipping {test}: {reason} (set {REQUIRE_KVM}=1 to fail instead)");
    false
}
