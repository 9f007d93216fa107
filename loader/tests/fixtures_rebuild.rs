// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The committed test kernels are what their assembly sources build to.
//!
//! Runs `tests/fixtures/build.sh` into a temporary directory when GNU `as`, `ld` and
//! `objcopy` are installed and compares the output with the committed files byte for
//! byte. Without binutils it skips with a printed reason, or fails when
//! `VEIL_REQUIRE_FIXTURES=1`.

use std::path::Path;
use std::process::Command;

#[test]
fn committed_test_kernels_match_their_sources() {
    let missing: Vec<&str> = ["as", "ld", "objcopy"]
        .into_iter()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .output()
                .map(|o| !o.status.success())
                .unwrap_or(true)
        })
        .collect();
    if !missing.is_empty() {
        let reason = format!("{} not installed (binutils)", missing.join(", "));
        if std::env::var("VEIL_REQUIRE_FIXTURES").is_ok_and(|v| v == "1") {
            panic!("{reason}, and VEIL_REQUIRE_FIXTURES=1 forbids skipping");
        }
        // Straight to stderr: libtest hides `eprintln!` output of passing tests.
        let _ = std::io::Write::write_fmt(
            &mut std::io::stderr().lock(),
            format_args!("skipping committed_test_kernels_match_their_sources: {reason}\n"),
        );
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let out = std::env::temp_dir().join(format!("veil-loader-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("bash")
        .arg(fixtures.join("build.sh"))
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "build.sh failed");
    for name in ["pvh-test-kernel.elf", "bzimage-test-kernel.bin"] {
        let built = std::fs::read(out.join(name)).unwrap();
        let committed = std::fs::read(fixtures.join(name)).unwrap();
        assert!(
            built == committed,
            "{name}: rebuilding from source gives different bytes; run tests/fixtures/build.sh and commit"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
