// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The example VMM runs: its guest shares a page, the host reads it, statistics follow.

use std::process::Command;

#[test]
fn the_example_vmm_reads_the_page_its_guest_shared() {
    if !veil_tests::kvm_or_skip("the_example_vmm_reads_the_page_its_guest_shared") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_veil-example-custom-vmm"))
        .output()
        .expect("cannot run the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("the guest wrote: hi!"), "{stdout}");
    assert!(stdout.contains("halt=1"), "{stdout}");
    assert!(
        stdout.contains("1 conversion requests (0 refused"),
        "{stdout}"
    );
    assert!(stdout.contains("1 to shared"), "{stdout}");
}
