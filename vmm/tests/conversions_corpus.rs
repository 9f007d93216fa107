// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The conversion fuzz harness (`fuzz/harness.rs`, the body of the cargo-fuzz target
//! `conversions`) over its committed corpus (`fuzz/seeds/conversions`), in every
//! `cargo test`: every input must pass the harness's checks, as it did when the fuzzer
//! kept it. No KVM: the attributes flavor runs on a recording attributes VM.

#[path = "../fuzz/harness.rs"]
mod harness;

#[test]
fn committed_conversion_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/conversions");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        harness::run(&data);
        inputs += 1;
    }
    assert!(inputs >= 50, "only {inputs} inputs in {}", dir.display());
}
