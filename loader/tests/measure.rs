// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The measurement log: golden digests for the fixtures, stability, sensitivity to every
//! input byte, JSON round trip.

mod common;

use common::*;
use veil_loader::{BootSource, Digest, GuestRam, MeasurementLog, ObjectKind, measure};

const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

/// Launch digests of the fixtures with `initrd()`, their expected command lines and
/// `RAM`. They change only when a fixture, the layout rules, the boot data or the digest
/// rule change, and then on purpose. The PVH value was reproduced independently with a
/// few lines of Python (`hashlib`) over the fixture bytes and the encoding documented in
/// `src/measure.rs`; so was the bzImage's page-tables entry (three pages: RAM ends below
/// 1 GiB) and its replay of the log.
const GOLDEN_PVH: &str = "1378d4241a286ba320aac318ad34dcf367bd1abceea2677d740150b890586d45";
const GOLDEN_BZ: &str = "7d1adadd70b126bae8e6ec5feebbdea2b393500c0aed308f9fecde1515dc467e";

fn ram() -> GuestRam {
    GuestRam::new(RAM).unwrap()
}

fn log_of(kernel: &[u8], cmdline: &str, initrd: &[u8]) -> Option<MeasurementLog> {
    measure(
        &BootSource::new(kernel).initrd(initrd).cmdline(cmdline),
        &ram(),
    )
    .ok()
}

#[test]
fn golden_digests() {
    let initrd = initrd();
    let pvh = log_of(PVH_KERNEL, PVH_CMDLINE, &initrd).unwrap();
    let bz = log_of(BZ_KERNEL, BZ_CMDLINE, &initrd).unwrap();
    assert_eq!(pvh.launch_digest.to_hex(), GOLDEN_PVH, "{}", pvh.to_json());
    assert_eq!(bz.launch_digest.to_hex(), GOLDEN_BZ, "{}", bz.to_json());

    // Entry by entry, for the parts that are easy to state.
    assert_eq!(pvh.entries[0].kind, ObjectKind::KernelImage);
    assert_eq!(pvh.entries[0].gpa, None);
    assert_eq!(pvh.entries[0].sha256, Digest::of(PVH_KERNEL));
    let seg1 = &pvh.entries[2];
    let mut bytes = PVH_KERNEL[0x2000..0x201f].to_vec();
    bytes.resize(0x120, 0);
    assert_eq!(
        (seg1.gpa, seg1.size, seg1.sha256),
        (Some(0x10_1000), 0x120, Digest::of(&bytes))
    );
    let kernel = &bz.entries[1];
    assert_eq!(kernel.kind, ObjectKind::Kernel);
    assert_eq!(kernel.sha256, Digest::of(&BZ_KERNEL[0x400..]));
}

#[test]
fn same_inputs_same_log() {
    let initrd = initrd();
    let first = log_of(BZ_KERNEL, BZ_CMDLINE, &initrd).unwrap();
    for _ in 0..3 {
        assert_eq!(log_of(BZ_KERNEL, BZ_CMDLINE, &initrd).unwrap(), first);
    }
    // From copies of the inputs in fresh allocations, on another thread.
    let (k, c, i) = (BZ_KERNEL.to_vec(), BZ_CMDLINE.to_string(), initrd.clone());
    let other = std::thread::spawn(move || log_of(&k, &c, &i).unwrap())
        .join()
        .unwrap();
    assert_eq!(other, first);
}

/// Every byte of every input, flipped: the image is refused, or its digest changes.
#[test]
fn any_flipped_byte_changes_the_digest() {
    let initrd = initrd();
    for (kernel, cmdline) in [(PVH_KERNEL, PVH_CMDLINE), (BZ_KERNEL, BZ_CMDLINE)] {
        let base = log_of(kernel, cmdline, &initrd).unwrap().launch_digest;
        let mut k = kernel.to_vec();
        let mut loaded = 0;
        for i in 0..k.len() {
            k[i] ^= 0x01;
            if let Some(log) = log_of(&k, cmdline, &initrd) {
                assert_ne!(log.launch_digest, base, "kernel byte {i:#x}");
                loaded += 1;
            }
            k[i] ^= 0x01;
        }
        // Most flips leave a loadable image: the property is really exercised.
        assert!(loaded > k.len() / 2, "{loaded} of {}", k.len());

        let mut ird = initrd.clone();
        for i in 0..ird.len() {
            ird[i] ^= 0x80;
            let log = log_of(kernel, cmdline, &ird).unwrap();
            assert_ne!(log.launch_digest, base, "initrd byte {i}");
            ird[i] ^= 0x80;
        }
        let mut c = cmdline.as_bytes().to_vec();
        for i in 0..c.len() {
            c[i] ^= 0x01;
            let s = String::from_utf8(c.clone()).unwrap();
            let log = log_of(kernel, &s, &initrd).unwrap();
            assert_ne!(log.launch_digest, base, "command line byte {i}");
            c[i] ^= 0x01;
        }
        // The RAM is an input too: it is in the memory map and decides the layout.
        let other = GuestRam::new(&[(0, 0xa_0000), (0x10_0000, 0x3ef_f000)]).unwrap();
        let log = measure(
            &BootSource::new(kernel).initrd(&initrd).cmdline(cmdline),
            &other,
        )
        .unwrap();
        assert_ne!(log.launch_digest, base);
        // So is whether there is an initrd at all, and an appended byte.
        assert_ne!(log_of(kernel, cmdline, &[]).unwrap().launch_digest, base);
        let mut longer = initrd.clone();
        longer.push(0);
        assert_ne!(
            log_of(kernel, cmdline, &longer).unwrap().launch_digest,
            base
        );
    }
}

#[test]
fn json_round_trip_of_a_real_log() {
    let initrd = initrd();
    let log = log_of(BZ_KERNEL, BZ_CMDLINE, &initrd).unwrap();
    let json = log.to_json();
    let back = MeasurementLog::from_json(&json).unwrap();
    assert_eq!(back, log);
    assert_eq!(back.replay(), log.launch_digest);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["entries"][1]["kind"], "kernel");
    assert_eq!(v["entries"][1]["gpa"], 0x100_0000);
    assert_eq!(v["launch_digest"], GOLDEN_BZ);
    // A tampered entry no longer replays to the recorded digest.
    let tampered = json.replacen("\"size\": 800", "\"size\": 801", 1);
    assert_ne!(tampered, json);
    let t = MeasurementLog::from_json(&tampered).unwrap();
    assert_ne!(t.replay(), t.launch_digest);
}
