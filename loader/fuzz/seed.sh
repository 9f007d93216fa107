#!/usr/bin/env bash
# Seeds the fuzz corpora with the test fixtures, one copy per flags byte (see harness.rs
# and igvm_harness.rs).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus/load"
mkdir -p "$corpus"
for f in pvh-test-kernel.elf bzimage-test-kernel.bin; do
    for flags in 0 4 8 12 1 2; do
        { printf "\\x$(printf %02x "$flags")"; cat "$here/../tests/fixtures/$f"; } > "$corpus/$f.$flags"
    done
done
# Flat images (flags 3): two bytes numbering the page they load at, then the code.
for flags in 3 7 11 15; do
    printf "\\x$(printf %02x "$flags")\\x00\\x01\\xe6\\x10\\xf4" > "$corpus/flat.$flags"
done
corpus="$here/corpus/igvm"
mkdir -p "$corpus"
for flags in 0 1 2 3 4 5 6 7; do
    { printf "\\x$(printf %02x "$flags")"; cat "$here/../tests/fixtures/sample.igvm"; } > "$corpus/sample.igvm.$flags"
done
