// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The fuzz harness (`fuzz/harness.rs`, the body of the cargo-fuzz target) run in every
//! `cargo test`: over the fixtures with every flags byte, over a fixed set of
//! pseudo-random mutations of them (byte flips, random header words, truncations,
//! splices), and over flat images in and out of RAM. No input may panic. The IGVM
//! harness (`fuzz/igvm_harness.rs`) likewise, over `fixtures/sample.igvm` and mutations
//! of its headers with the checksum repaired.

#[path = "../fuzz/harness.rs"]
mod harness;
#[path = "../fuzz/igvm_harness.rs"]
mod igvm_harness;

const IGVM: &[u8] = include_bytes!("fixtures/sample.igvm");

const FIXTURES: [&[u8]; 2] = [
    include_bytes!("fixtures/pvh-test-kernel.elf"),
    include_bytes!("fixtures/bzimage-test-kernel.bin"),
];

/// xorshift64*: a fixed, seedable sequence so every run tests the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn with_flags(flags: u8, kernel: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(kernel);
    v
}

#[test]
fn fixtures_with_every_flag_combination() {
    for kernel in FIXTURES {
        for flags in 0..16u8 {
            harness::run(&with_flags(flags, kernel));
        }
    }
    harness::run(&[]);
    harness::run(&[0]);
}

/// Flat images (flags 3): the first two bytes number the page they load at.
#[test]
fn flat_images_in_and_out_of_ram() {
    // `out 0x10, al; hlt` after the two address bytes.
    let code = |page: u16| {
        let mut v = page.to_le_bytes().to_vec();
        v.extend_from_slice(&[0xe6, 0x10, 0xf4]);
        v
    };
    // At 1 MiB, at 0 (under the boot data's preferred place), in the hole below 1 MiB,
    // across the end of RAM, past it, and as high as the bytes can say.
    for page in [0x100, 0, 0xa0, 0x3fff, 0x4000, u16::MAX] {
        for flags in [3, 7, 11, 15] {
            harness::run(&with_flags(flags, &code(page)));
        }
    }
    // A whole kernel as flat code, and images of one and two bytes.
    for kernel in FIXTURES {
        let mut k = 0x100u16.to_le_bytes().to_vec();
        k.extend_from_slice(kernel);
        harness::run(&with_flags(3, &k));
    }
    harness::run(&[3, 0x01]);
    harness::run(&[3, 0x00, 0x01]);
}

#[test]
fn pseudo_random_mutations() {
    let mut rng = Rng(0x5645_494c_4c4f_4144);
    for _ in 0..4000 {
        let base = FIXTURES[rng.below(2)];
        let mut k = base.to_vec();
        match rng.below(4) {
            // Flip a few bytes, biased to the headers where the checks are.
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = if rng.below(2) == 0 {
                        rng.below(0x300.min(k.len()))
                    } else {
                        rng.below(k.len())
                    };
                    k[at] ^= 1 << rng.below(8);
                }
            }
            // A random 64-bit word at a header offset.
            1 => {
                let at = rng.below(0x300.min(k.len() - 8));
                let word = match rng.below(4) {
                    0 => u64::MAX - rng.below(0x1000) as u64,
                    1 => rng.next() & 0xffff_ffff,
                    2 => rng.next() & 0xfff_ffff,
                    _ => rng.next(),
                };
                k[at..at + 8].copy_from_slice(&word.to_le_bytes());
            }
            // Truncate.
            2 => k.truncate(rng.below(k.len())),
            // Splice part of the other fixture in.
            _ => {
                let other = FIXTURES[rng.below(2)];
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from).min(k.len());
                let at = rng.below(k.len() - len + 1);
                k[at..at + len].copy_from_slice(&other[from..from + len]);
            }
        }
        harness::run(&with_flags(rng.below(16) as u8, &k));
    }
}

#[test]
fn igvm_fixture_with_every_flag_combination() {
    for flags in 0..8u8 {
        igvm_harness::run(&with_flags(flags, IGVM));
    }
    igvm_harness::run(&[4]);
    igvm_harness::run(&with_flags(4, &IGVM[..24]));
}

#[test]
fn igvm_pseudo_random_mutations() {
    let mut rng = Rng(0x4947_564d_4947_564d);
    let headers_end = {
        let w = |at: usize| u32::from_le_bytes(IGVM[at..at + 4].try_into().unwrap()) as usize;
        w(8) + w(12)
    };
    for _ in 0..5000 {
        let mut f = IGVM.to_vec();
        match rng.below(4) {
            // Flip a few bits of the headers.
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(headers_end);
                    f[at] ^= 1 << rng.below(8);
                }
            }
            // A random 32-bit word at a header offset.
            1 => {
                let at = rng.below(headers_end - 4) & !3;
                let word = match rng.below(4) {
                    0 => u32::MAX - rng.below(0x1000) as u32,
                    1 => rng.next() as u32 & 0xffff,
                    2 => IGVM.len() as u32 + rng.below(0x2000) as u32 - 0x1000,
                    _ => rng.next() as u32,
                };
                f[at..at + 4].copy_from_slice(&word.to_le_bytes());
            }
            // Truncate, with the total size made to agree.
            2 => {
                f.truncate(24 + rng.below(f.len() - 24));
                let len = f.len() as u32;
                f[16..20].copy_from_slice(&len.to_le_bytes());
            }
            // A byte of file data.
            _ => {
                let at = headers_end + rng.below(f.len() - headers_end);
                f[at] = rng.next() as u8;
            }
        }
        // Mostly with the checksum repaired, so the parser sees the change.
        let flags = rng.below(8) as u8 | if rng.below(8) != 0 { 4 } else { 0 };
        igvm_harness::run(&with_flags(flags, &f));
    }
}
