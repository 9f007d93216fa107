// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil's SNP launch digest against a second implementation: sev-snp-measure 0.0.13's
//! `GCTX`, fed every page veil reports (its bytes, for normal and VMSA pages), on four
//! launch plans (a PVH kernel, a bzImage with initrd and command line, every page type,
//! an IGVM file built with the igvm crate, whose digest is also the igvm crate's own
//! measurement); and veil's VMSA of a vCPU at reset against sev-snp-measure's VMSA
//! builder.
//!
//! The Python interpreter comes from `VEIL_SNP_MEASURE_PYTHON` (`tests/setup-venv.sh`
//! makes one); without it the tests print why they skip, and with
//! `VEIL_REQUIRE_SNP_MEASURE=1` they fail instead.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use veil_snp::digest::{hex, page_type};
use veil_snp::launch::snp_page_type;
use veil_snp::vmsa::{VcpuState, vmsa_pages};
use veil_snp::{SnpConfig, add_boot_pages, measure_plan, placed_runs};
use veil_vmm::veil_loader::{BootPlan, BootSource, ExtraObject, GuestRam, ObjectKind, PageType};

const PVH_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/pvh-test-kernel.elf");
const BZ_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/bzimage-test-kernel.bin");
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snp_measure.py");

#[path = "../../../loader/tests/common/igvm_files.rs"]
mod igvm_files;

fn python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("VEIL_SNP_MEASURE_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var("VEIL_REQUIRE_SNP_MEASURE").is_ok_and(|v| v == "1") => {
            panic!("{test}: VEIL_SNP_MEASURE_PYTHON is not set and VEIL_REQUIRE_SNP_MEASURE=1")
        }
        None => {
            veil_tests::skip(
                test,
                "VEIL_SNP_MEASURE_PYTHON is not set (run backends/snp/tests/setup-venv.sh)",
            );
            None
        }
    }
}

fn ask(python: &PathBuf, request: &Value) -> Value {
    let mut child = Command::new(python)
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the interpreter runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sev-snp-measure failed: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every page of `plan` launched on `vcpus` vCPUs, as the second implementation takes
/// them: the loader's runs with their bytes, then the VMSAs.
fn pages_of(plan: &BootPlan<'_>, vcpus: u32, config: &SnpConfig) -> Vec<Value> {
    let mut pages = Vec::new();
    for (run, bytes) in placed_runs(plan).unwrap() {
        let t = snp_page_type(run.page_type).unwrap();
        for (i, page) in bytes.chunks(4096).enumerate() {
            let gpa = run.range.start().0 + i as u64 * 4096;
            let mut p = json!({"gpa": gpa, "type": page_type::name(t)});
            if t == page_type::NORMAL {
                p["data"] = hex(page).into();
            }
            pages.push(p);
        }
    }
    for vmsa in vmsa_pages(&plan.entry, vcpus, config.vmsa_features, config.host_mce) {
        pages.push(json!({"gpa": 0xFFFF_FFFF_F000u64, "type": "vmsa", "data": hex(&vmsa)}));
    }
    pages
}

fn cross_check(test: &str, plan: &BootPlan<'_>, vcpus: u32) {
    let Some(python) = python(test) else {
        return;
    };
    let config = SnpConfig::default();
    let ours = measure_plan(plan, &config, vcpus).unwrap();
    let pages = pages_of(plan, vcpus, &config);
    assert_eq!(pages.len(), ours.pages.len());
    let theirs = ask(&python, &json!({"op": "digest", "pages": pages}));
    assert_eq!(
        theirs["digest"], ours.launch_digest,
        "{test}: launch digests differ"
    );
    // Page by page: the same GPA, type and contents hash as veil's report.
    for (i, (p, o)) in pages.iter().zip(&ours.pages).enumerate() {
        assert_eq!(p["gpa"], o.gpa, "page {i}");
        assert_eq!(p["type"], o.page_type, "page {i}");
        assert_eq!(
            theirs["sha384"][i].as_str(),
            o.contents_sha384.as_deref(),
            "page {i}"
        );
    }
    eprintln!(
        "{test}: {} pages, digest {}",
        ours.pages.len(),
        ours.launch_digest
    );
}

fn ram() -> GuestRam {
    GuestRam::new(RAM).unwrap()
}

fn initrd() -> Vec<u8> {
    (0..5000u32).map(|i| (i * 7 + 3) as u8).collect()
}

fn placeholder_cpuid() -> Vec<u8> {
    veil_snp::measure::placeholder_cpuid_page()
}

#[test]
fn pvh_kernel_with_initrd_and_boot_pages() {
    let initrd = initrd();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline("veil.test=pvh console=none");
    let mut plan = veil_vmm::veil_loader::plan(&source, &ram()).unwrap();
    add_boot_pages(&mut plan, placeholder_cpuid()).unwrap();
    cross_check("pvh_kernel_with_initrd_and_boot_pages", &plan, 1);
}

#[test]
fn bzimage_with_initrd_cmdline_boot_pages_and_two_vcpus() {
    let initrd = initrd();
    let source = BootSource::new(BZ_KERNEL)
        .initrd(&initrd)
        .cmdline("veil.test=bzimage console=none");
    let mut plan = veil_vmm::veil_loader::plan(&source, &ram()).unwrap();
    let pages = add_boot_pages(&mut plan, placeholder_cpuid()).unwrap();
    assert!(pages.setup_data.is_some());
    cross_check(
        "bzimage_with_initrd_cmdline_boot_pages_and_two_vcpus",
        &plan,
        2,
    );
}

/// Every page type SNP takes: an unmeasured initrd and zero pages besides the rest.
#[test]
fn every_page_type() {
    let initrd = initrd();
    let source = BootSource::new(PVH_KERNEL).initrd(&initrd).cmdline("x");
    let mut plan = veil_vmm::veil_loader::plan(&source, &ram()).unwrap();
    for o in plan
        .objects
        .iter_mut()
        .filter(|o| o.kind == ObjectKind::Initrd)
    {
        o.page_type = PageType::Unmeasured;
    }
    plan.add_objects(vec![ExtraObject {
        kind: ObjectKind::LaunchData,
        bytes: Cow::Borrowed(&[]),
        len: 3 * 4096,
        page_type: PageType::Zero,
    }])
    .unwrap();
    add_boot_pages(&mut plan, placeholder_cpuid()).unwrap();
    let types: std::collections::BTreeSet<PageType> = plan
        .page_runs()
        .unwrap()
        .iter()
        .map(|r| r.page_type)
        .collect();
    assert_eq!(types.len(), 5, "{types:?}");
    cross_check("every_page_type", &plan, 3);
}

/// An IGVM file with page data of every IGVM type (measured pages, one short and one
/// empty, an unmeasured page, command line and memory map parameter areas, a secrets and
/// a CPUID page) and vCPU 0's VMSA, built and serialized with the igvm crate: veil's
/// digest is sev-snp-measure's over the pages veil reports, and the igvm crate's
/// `generate_snp_measurement` over the file's own headers.
#[test]
fn igvm_file_with_every_igvm_page_type() {
    use igvm_files::*;
    let mut entry = veil_vmm::veil_abi::x86_64::EntryRegisters::long_mode(BASE, 0x9000, 0x1000);
    entry.regs.rsi = 0x7000;
    let vmsa = VcpuState::entry(&entry).vmsa(0, true);
    let (file, parsed) = file_and_headers(sample_directives(&vmsa, placeholder_cpuid()));
    let source = BootSource::new(&file)
        .format(veil_vmm::veil_loader::KernelFormat::Igvm {
            platform: veil_vmm::veil_loader::IgvmPlatform::SevSnp,
        })
        .cmdline("console=ttyS0");
    let plan = veil_vmm::veil_loader::plan(&source, &ram()).unwrap();
    let theirs = igvm::measurement::generate_snp_measurement(
        parsed.initializations(),
        parsed.directives(),
        SNP,
    )
    .unwrap();
    assert_eq!(
        measure_plan(&plan, &SnpConfig::default(), 1)
            .unwrap()
            .launch_digest,
        hex(&theirs),
        "the igvm crate's measurement"
    );
    cross_check("igvm_file_with_every_igvm_page_type", &plan, 1);
}

/// veil's VMSA of a vCPU at reset against sev-snp-measure's builder for the reset
/// vector: of its CPU/VMM types, `ec2` (a KVM-based VMM that sets no reset state itself)
/// is the one veil's vCPUs match. The only bytes that differ are where KVM 6.12 and that
/// profile disagree for documented reasons: MXCSR and FCW (6.12 copies the FPU state into
/// the VMSA of non-default VM types, the profile predates that and has 0) and the data
/// segments' accessed bit (KVM's `init_seg` gives 0x92, the profile 0x93).
#[test]
fn reset_vmsa_matches_sev_snp_measure_but_for_known_fields() {
    let Some(python) = python("reset_vmsa_matches_sev_snp_measure_but_for_known_fields") else {
        return;
    };
    let ours = VcpuState::reset().vmsa(0, true);
    let theirs = ask(
        &python,
        &json!({"op": "vmsa", "eip": 0xffff_fff0u64, "sev_features": 1, "vcpu_sig": 0, "vmm": "ec2"}),
    );
    let theirs: Vec<u8> = (0..4096)
        .map(|i| {
            u8::from_str_radix(&theirs["vmsa"].as_str().unwrap()[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    let differing: Vec<usize> = (0..4096).filter(|&i| ours[i] != theirs[i]).collect();
    // es, ds, fs, gs attrib low bytes (segment i at 0x10 * i, attrib at +2).
    let expected: Vec<usize> = [0x02, 0x32, 0x42, 0x52, 0x408, 0x409, 0x410, 0x411].into();
    assert_eq!(differing, expected, "differing offsets");
    let mut patched = theirs.clone();
    for seg in [0x00, 0x30, 0x40, 0x50] {
        patched[seg + 2] = 0x92;
    }
    patched[0x408..0x40c].copy_from_slice(&0x1f80u32.to_le_bytes());
    patched[0x410..0x412].copy_from_slice(&0x37fu16.to_le_bytes());
    assert_eq!(patched, ours);
}
