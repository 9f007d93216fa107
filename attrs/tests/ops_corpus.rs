// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The attribute-map fuzz harness (`fuzz/harness.rs`, the body of the cargo-fuzz target
//! `ops`) over its committed corpus (`fuzz/seeds/ops`), in every `cargo test`: every
//! input must pass the harness's checks against its oracle, as it did when the fuzzer
//! kept it.

#[path = "../fuzz/harness.rs"]
mod harness;

#[test]
fn committed_ops_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/ops");
    let mut inputs = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        harness::run(&data);
        inputs += 1;
    }
    assert!(inputs >= 50, "only {inputs} inputs in {}", dir.display());
}
