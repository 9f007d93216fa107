// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil's MRTD against a second implementation (`tests/tdx_mrtd.py`, hashlib only,
//! written from the TDX module's record formats), against golden values committed
//! here, and for an IGVM file against the igvm crate's own TDX measurement. The script runs under `VEIL_SNP_MEASURE_PYTHON` or, without it, `python3`;
//! with neither it prints why it skips (and fails under `VEIL_REQUIRE_SNP_MEASURE=1`).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use veil_tdx::launch::measured;
use veil_tdx::mrtd::hex;
use veil_tdx::{TdxConfig, measure, measure_plan, placed_runs};
use veil_vmm::veil_loader::{BootPlan, BootSource, GuestRam, ObjectKind, PageType};

const PVH_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/pvh-test-kernel.elf");
const BZ_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/bzimage-test-kernel.bin");
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tdx_mrtd.py");

#[path = "../../../loader/tests/common/igvm_files.rs"]
mod igvm_files;

fn initrd() -> Vec<u8> {
    (0..5000u32).map(|i| (i * 7 + 3) as u8).collect()
}

fn reference(test: &str, plan: &BootPlan<'_>) -> Option<String> {
    let python = std::env::var("VEIL_SNP_MEASURE_PYTHON").unwrap_or_else(|_| "python3".into());
    let pages: Vec<Value> = placed_runs(plan)
        .unwrap()
        .into_iter()
        .flat_map(|(run, bytes)| {
            let m = measured(run.page_type).unwrap();
            bytes
                .chunks(4096)
                .enumerate()
                .map(|(i, p)| json!({"gpa": run.range.start().0 + i as u64 * 4096, "measured": m, "data": hex(p)}))
                .collect::<Vec<_>>()
        })
        .collect();
    let child = Command::new(&python)
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("VEIL_REQUIRE_SNP_MEASURE").is_ok_and(|v| v == "1") => {
            panic!("{test}: cannot run {python}: {e}")
        }
        Err(e) => {
            veil_tests::skip(test, &format!("cannot run {python}: {e}"));
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json!({"pages": pages}).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    Some(v["mrtd"].as_str().unwrap().to_owned())
}

fn pvh_plan(initrd: &[u8]) -> BootPlan<'_> {
    let source = BootSource::new(PVH_KERNEL)
        .initrd(initrd)
        .cmdline("veil.test=pvh console=none");
    let mut plan = veil_vmm::veil_loader::plan(&source, &GuestRam::new(RAM).unwrap()).unwrap();
    for o in plan
        .objects
        .iter_mut()
        .filter(|o| o.kind == ObjectKind::Initrd)
    {
        o.page_type = PageType::Unmeasured;
    }
    plan
}

/// Golden values: computed by veil, reproduced by `tdx_mrtd.py` in the tests below.
const PVH_MRTD: &str = "fc004e17d633fb1f465025df31f9b80920e1b9fa2ddf66bbb2b26f1f7e1fd0a5a61ffc5a423da7d3c74752e8dc12735d";
const BZ_MRTD: &str = "86c4256b5e29d562470c2b1119ffb5c769d77b5a8a1763307e3c5b15244e551fee64f52a1b308caa8add32ad7dabe432";

#[test]
fn pvh_plan_with_an_unmeasured_initrd() {
    let initrd = initrd();
    let plan = pvh_plan(&initrd);
    let ours = measure_plan(&plan, &TdxConfig::default()).unwrap();
    assert!(ours.pages.iter().any(|p| !p.measured));
    assert_eq!(ours.mrtd, PVH_MRTD, "golden value");
    if let Some(theirs) = reference("pvh_plan_with_an_unmeasured_initrd", &plan) {
        assert_eq!(theirs, ours.mrtd);
    }
}

#[test]
fn bzimage_with_initrd_and_command_line() {
    let initrd = initrd();
    let source = BootSource::new(BZ_KERNEL)
        .initrd(&initrd)
        .cmdline("veil.test=bzimage console=none");
    let ram = GuestRam::new(RAM).unwrap();
    let ours = measure(&source, &ram, &TdxConfig::default()).unwrap();
    assert_eq!(ours.mrtd, BZ_MRTD, "golden value");
    let plan = veil_vmm::veil_loader::plan(&source, &ram).unwrap();
    if let Some(theirs) = reference("bzimage_with_initrd_and_command_line", &plan) {
        assert_eq!(theirs, ours.mrtd);
    }
    // Attributes and XFAM are reported beside the MRTD, not in it.
    let debug = TdxConfig {
        attributes: 1 << 28 | 1,
        ..TdxConfig::default()
    };
    assert_eq!(measure(&source, &ram, &debug).unwrap().mrtd, ours.mrtd);
    let json: Value = serde_json::from_str(&ours.to_json()).unwrap();
    assert_eq!(json["pages"].as_array().unwrap().len(), ours.pages.len());
}

/// An IGVM file built with the igvm crate (measured pages, one short and one empty, an
/// unmeasured page, command line and memory map parameter areas; the SNP-only pages and
/// VMSA are not TDX's): the MRTD of its plan is the igvm crate's
/// `generate_tdx_measurement` over the file's headers, and the second implementation's
/// over the pages veil adds.
#[test]
fn igvm_file_matches_the_igvm_crates_measurement() {
    use igvm_files::*;
    use veil_vmm::veil_loader::{IgvmPlatform, KernelFormat};
    let (file, parsed) = file_and_headers(sample_directives(&[0; 4096], vec![1]));
    let source = BootSource::new(&file)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::Tdx,
        })
        .cmdline("console=hvc0");
    let ram = GuestRam::new(RAM).unwrap();
    let ours = measure(&source, &ram, &TdxConfig::default()).unwrap();
    let theirs = igvm::measurement::generate_tdx_measurement(parsed.directives(), TDX).unwrap();
    assert_eq!(ours.mrtd, hex(&theirs));
    let measured: Vec<bool> = ours.pages.iter().map(|p| p.measured).collect();
    assert_eq!(measured, [true, true, true, true, false, false, false]);
    let plan = veil_vmm::veil_loader::plan(&source, &ram).unwrap();
    if let Some(reference) = reference("igvm_file_matches_the_igvm_crates_measurement", &plan) {
        assert_eq!(reference, ours.mrtd);
    }
    // A plan read for another platform is refused, not measured as a TD.
    let mut foreign = plan.clone();
    foreign.igvm.as_mut().unwrap().platform = IgvmPlatform::SevSnp;
    assert!(matches!(
        measure_plan(&foreign, &TdxConfig::default()),
        Err(veil_tdx::MeasureError::IgvmPlatform(IgvmPlatform::SevSnp))
    ));
    // One changed byte of a measured page changes both alike.
    let mut d = sample_directives(&[0; 4096], vec![1]);
    d[1] = page(BASE + 0x1000, SNP | TDX, pattern(23, 4096));
    let (changed, parsed) = file_and_headers(d);
    let source = BootSource::new(&changed)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::Tdx,
        })
        .cmdline("console=hvc0");
    let changed = measure(&source, &ram, &TdxConfig::default()).unwrap();
    let theirs = igvm::measurement::generate_tdx_measurement(parsed.directives(), TDX).unwrap();
    assert_eq!(changed.mrtd, hex(&theirs));
    assert_ne!(changed.mrtd, ours.mrtd);
}
