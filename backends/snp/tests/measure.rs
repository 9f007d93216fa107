// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil measure --snp`'s function: golden digests (computed by veil and reproduced by
//! sev-snp-measure 0.0.13 in `cross_check.rs`), and the report's shape.

use veil_snp::{SnpConfig, measure};
use veil_vmm::veil_loader::{BootSource, GuestRam};

const PVH_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/pvh-test-kernel.elf");
const BZ_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/bzimage-test-kernel.bin");
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

fn initrd() -> Vec<u8> {
    (0..5000u32).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn golden_digests() {
    let ram = GuestRam::new(RAM).unwrap();
    let initrd = initrd();
    let bz = BootSource::new(BZ_KERNEL)
        .initrd(&initrd)
        .cmdline("veil.test=bzimage console=none");
    let m = measure(&bz, &ram, &SnpConfig::default(), 2, None).unwrap();
    assert_eq!(
        m.launch_digest,
        "929c20ad4ca7b55356b9124359d1be0dd4e6dc61b703984761ecbfbc40f51a28ca17810f76addf2afa38d5da56c70a6e"
    );
    let pvh = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline("veil.test=pvh console=none");
    let m = measure(&pvh, &ram, &SnpConfig::default(), 1, None).unwrap();
    assert_eq!(
        m.launch_digest,
        "c4a772ca13862122687d0d48b206714f681689134fee9d8ab305a4eab3c68301bc61ddb4ef622168010be004abdb1030"
    );
}

#[test]
fn the_report_lists_every_page_and_changes_with_any_input() {
    let ram = GuestRam::new(RAM).unwrap();
    let config = SnpConfig::default();
    let a = measure(
        &BootSource::new(BZ_KERNEL).cmdline("a"),
        &ram,
        &config,
        1,
        None,
    )
    .unwrap();
    let b = measure(
        &BootSource::new(BZ_KERNEL).cmdline("b"),
        &ram,
        &config,
        1,
        None,
    )
    .unwrap();
    assert_ne!(
        a.launch_digest, b.launch_digest,
        "the command line is measured"
    );
    let two = measure(
        &BootSource::new(BZ_KERNEL).cmdline("a"),
        &ram,
        &config,
        2,
        None,
    )
    .unwrap();
    assert_ne!(
        a.launch_digest, two.launch_digest,
        "each vCPU's VMSA is measured"
    );
    let json: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
    assert_eq!(json["technology"], "sev-snp");
    let pages = json["pages"].as_array().unwrap();
    assert_eq!(pages.len(), a.pages.len());
    assert_eq!(pages.last().unwrap()["page_type"], "vmsa");
    assert_eq!(pages.last().unwrap()["gpa"], 0xFFFF_FFFF_F000u64);
    for t in ["secrets", "cpuid"] {
        let p = pages.iter().find(|p| p["page_type"] == t).unwrap();
        assert!(
            p.get("contents_sha384").is_none(),
            "{t} pages are measured by address only"
        );
    }
    let boot = &json["boot_pages"];
    assert!(boot["setup_data"].is_object());
}
