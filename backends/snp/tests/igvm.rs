// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! SEV-SNP launches of IGVM files: the launch digest against the igvm crate's own SNP
//! measurement function, and the checks that refuse a file whose VMSA, VMSA address or
//! policy an SNP launch on KVM would not reproduce.

#[path = "../../../loader/tests/common/igvm_files.rs"]
mod igvm_files;

use igvm::measurement::generate_snp_measurement;
use igvm_files::*;
use veil_snp::digest::hex;
use veil_snp::vmsa::VcpuState;
use veil_snp::{SnpConfig, SnpError, check_igvm, measure, measure_plan};
use veil_vmm::veil_abi::x86_64::EntryRegisters;
use veil_vmm::veil_loader::{
    BootPlan, BootSource, GuestRam, IgvmPlatform, KernelFormat, LoadError, plan,
};
use zerocopy::IntoBytes;

const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];
const CMDLINE: &str = "console=ttyS0";

/// vCPU 0 at a 64-bit entry: the VMSA is the one KVM builds for it.
fn entry() -> EntryRegisters {
    let mut e = EntryRegisters::long_mode(BASE, 0x9000, 0x1000);
    e.regs.rsi = 0x7000;
    e.regs.rsp = 0x8000;
    e
}

fn kvm_vmsa() -> Vec<u8> {
    VcpuState::entry(&entry()).vmsa(0, true)
}

fn source(file: &[u8]) -> BootSource<'_> {
    BootSource::new(file)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::SevSnp,
        })
        .cmdline(CMDLINE)
}

fn plan_of(file: &[u8]) -> BootPlan<'_> {
    plan(&source(file), &GuestRam::new(RAM).unwrap()).unwrap()
}

#[test]
fn digest_matches_the_igvm_crates_measurement() {
    let (file, parsed) = file_and_headers(sample_directives(&kvm_vmsa(), pattern(13, 4096)));
    let p = plan_of(&file);
    let ours = measure_plan(&p, &SnpConfig::default(), 1).unwrap();
    let theirs =
        generate_snp_measurement(parsed.initializations(), parsed.directives(), SNP).unwrap();
    assert_eq!(ours.launch_digest, hex(&theirs));
    // Every page type reached the firmware, the VMSA last at KVM's address.
    let types: Vec<&str> = ours.pages.iter().map(|p| p.page_type).collect();
    assert_eq!(
        types,
        [
            "normal",
            "normal",
            "normal",
            "normal",
            "unmeasured",
            "unmeasured",
            "unmeasured",
            "secrets",
            "cpuid",
            "vmsa"
        ]
    );
    assert_eq!(ours.pages[9].gpa, VMSA_GPA);
    assert_eq!(ours.boot_pages, None);

    // `veil measure --snp` of the file: the same, with no direct boot pages added.
    let m = measure(
        &source(&file),
        &GuestRam::new(RAM).unwrap(),
        &SnpConfig::default(),
        1,
        None,
    )
    .unwrap();
    assert_eq!(m, ours);

    // A changed byte of a measured page changes both digests alike.
    let (other, parsed) = file_and_headers(sample_directives(&kvm_vmsa(), pattern(17, 4096)));
    let theirs =
        generate_snp_measurement(parsed.initializations(), parsed.directives(), SNP).unwrap();
    let ours = measure_plan(&plan_of(&other), &SnpConfig::default(), 1).unwrap();
    assert_eq!(
        ours.launch_digest,
        hex(&theirs),
        "CPUID pages are not measured by content"
    );
    let mut d = sample_directives(&kvm_vmsa(), pattern(13, 4096));
    d[0] = page(BASE, SNP | TDX, pattern(19, 4096));
    let (changed, parsed) = file_and_headers(d);
    let theirs =
        generate_snp_measurement(parsed.initializations(), parsed.directives(), SNP).unwrap();
    let changed = measure_plan(&plan_of(&changed), &SnpConfig::default(), 1).unwrap();
    assert_eq!(changed.launch_digest, hex(&theirs));
    assert_ne!(changed.launch_digest, ours.launch_digest);
}

#[test]
fn more_vcpus_add_reset_vmsas_the_file_does_not_measure() {
    let (file, parsed) = file_and_headers(sample_directives(&kvm_vmsa(), pattern(13, 4096)));
    let p = plan_of(&file);
    let two = measure_plan(&p, &SnpConfig::default(), 2).unwrap();
    let theirs =
        generate_snp_measurement(parsed.initializations(), parsed.directives(), SNP).unwrap();
    assert_ne!(two.launch_digest, hex(&theirs));
    assert_eq!(two.pages.len(), 11);
}

#[test]
fn a_vmsa_kvm_would_not_build_is_refused() {
    // Not KVM's: the file leaves DR7, PAT, XCR0 and the FPU at zero and sets a MSR.
    let mut v = vmsa_struct(&kvm_vmsa());
    v.lstar = 0xffff_8000_0000_0000;
    let file = sample(v.as_bytes(), pattern(13, 4096));
    let p = plan_of(&file);
    match check_igvm(&p, &SnpConfig::default()) {
        Err(SnpError::IgvmVmsa { offset, file, kvm }) => {
            assert_eq!(offset, 0x208, "LSTAR");
            assert_eq!((file, kvm), (0xffff_8000_0000_0000, 0));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        measure_plan(&p, &SnpConfig::default(), 1),
        Err(veil_snp::MeasureError::Snp(SnpError::IgvmVmsa { .. }))
    ));
    // KVM adds EFER.SVME itself: a VMSA without it is not the one KVM builds.
    let mut v = vmsa_struct(&kvm_vmsa());
    v.efer &= !(1 << 12);
    let file = sample(v.as_bytes(), pattern(13, 4096));
    assert!(matches!(
        check_igvm(&plan_of(&file), &SnpConfig::default()),
        Err(SnpError::IgvmVmsa { offset: 0xd0, .. })
    ));
    // KVM copies the host's CR4.MCE into the VMSA: a file built for a host without it
    // launches only on such a host.
    let no_mce = sample(
        &VcpuState::entry(&entry()).vmsa(0, false),
        pattern(13, 4096),
    );
    assert!(matches!(
        check_igvm(&plan_of(&no_mce), &SnpConfig::default()),
        Err(SnpError::IgvmVmsa { offset: 0x148, .. })
    ));
    let config = SnpConfig {
        host_mce: false,
        ..SnpConfig::default()
    };
    check_igvm(&plan_of(&no_mce), &config).unwrap();
}

#[test]
fn a_vmsa_measured_elsewhere_is_refused() {
    let mut d = sample_directives(&kvm_vmsa(), pattern(13, 4096));
    let last = d.len() - 1;
    d[last] = vp_context(0x20_0000, 0, &kvm_vmsa());
    let file = file(d);
    assert!(matches!(
        check_igvm(&plan_of(&file), &SnpConfig::default()),
        Err(SnpError::IgvmVmsaGpa { gpa: 0x20_0000 })
    ));
}

#[test]
fn a_policy_other_than_the_launchs_is_refused() {
    let file = sample(&kvm_vmsa(), pattern(13, 4096));
    let config = SnpConfig {
        policy: veil_snp::SnpPolicy::new(POLICY | 1 << 19).unwrap(),
        ..SnpConfig::default()
    };
    assert!(matches!(
        check_igvm(&plan_of(&file), &config),
        Err(SnpError::IgvmPolicy { file: POLICY, .. })
    ));
    check_igvm(&plan_of(&file), &SnpConfig::default()).unwrap();
}

#[test]
fn a_tdx_plan_is_refused() {
    let file = sample(&kvm_vmsa(), pattern(13, 4096));
    let td = BootSource::new(&file).format(KernelFormat::Igvm {
        platform: IgvmPlatform::Tdx,
    });
    let p = plan(&td, &GuestRam::new(RAM).unwrap()).unwrap();
    assert!(matches!(
        check_igvm(&p, &SnpConfig::default()),
        Err(SnpError::IgvmPlatform(IgvmPlatform::Tdx))
    ));
    // And a truncated file never gets that far.
    assert!(matches!(
        measure(
            &source(&file[..file.len() / 2]),
            &GuestRam::new(RAM).unwrap(),
            &SnpConfig::default(),
            1,
            None
        ),
        Err(veil_snp::MeasureError::Load(LoadError::Igvm(_)))
    ));
}

/// The committed IGVM fixture (`loader/tests/fixtures/sample.igvm`, which `veil
/// measure --igvm` is tested on) is the sample built here, and its digests are the
/// golden values, which are the igvm crate's. `VEIL_REBUILD_FIXTURES=1` rewrites it.
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../loader/tests/fixtures/sample.igvm"
);
/// The fixture's SNP launch digest on one vCPU (policy 0x30000).
const FIXTURE_SNP_DIGEST: &str = "65eed7e415dd110df49fb6b37668a73f06f457695c7d9ddab1d69140466a25037b45a7cc6990bd7e45d163f2950659bf";
/// The fixture's MRTD.
const FIXTURE_MRTD: &str = "56693fdb6fca331591470914c8e4a61a67db98181c6e96f635d3a72aa5243d137ec0c3a5e0650bd49ecf978049aa0637";

#[test]
fn committed_fixture_is_the_sample_and_its_digests_the_igvm_crates() {
    let (file, parsed) = file_and_headers(sample_directives(
        &kvm_vmsa(),
        veil_snp::measure::placeholder_cpuid_page(),
    ));
    if std::env::var("VEIL_REBUILD_FIXTURES").is_ok_and(|v| v == "1") {
        std::fs::write(FIXTURE, &file).unwrap();
    }
    assert_eq!(
        std::fs::read(FIXTURE).unwrap(),
        file,
        "rebuild with VEIL_REBUILD_FIXTURES=1"
    );
    let snp = generate_snp_measurement(parsed.initializations(), parsed.directives(), SNP).unwrap();
    let tdx = igvm::measurement::generate_tdx_measurement(parsed.directives(), TDX).unwrap();
    assert_eq!(hex(&snp), FIXTURE_SNP_DIGEST);
    assert_eq!(hex(&tdx), FIXTURE_MRTD);
    let ram = GuestRam::new(RAM).unwrap();
    let ours = measure(&source(&file), &ram, &SnpConfig::default(), 1, None).unwrap();
    assert_eq!(ours.launch_digest, FIXTURE_SNP_DIGEST);
}

/// veil-snp's VMSA of an entry state and veil-loader's entry state of a VMSA are one
/// mapping read both ways: every entry the loader sets up, with every general register
/// distinct, comes back whole (with CR4.MCE where the host's CR4 has it, as KVM copies
/// it into the VMSA), and building the VMSA again from what was read gives the same
/// page.
#[test]
fn a_vmsa_built_from_an_entry_reads_back_as_that_entry() {
    use veil_vmm::veil_loader::boot::{flat64_entry, linux64_entry, pvh_entry};
    use veil_vmm::veil_loader::igvm::entry_of_vmsa;
    let mut distinct = entry();
    let r = &mut distinct.regs;
    for (i, reg) in [
        &mut r.rax, &mut r.rbx, &mut r.rcx, &mut r.rdx, &mut r.rsi, &mut r.rdi, &mut r.rsp,
        &mut r.rbp, &mut r.r8, &mut r.r9, &mut r.r10, &mut r.r11, &mut r.r12, &mut r.r13,
        &mut r.r14, &mut r.r15,
    ]
    .into_iter()
    .enumerate()
    {
        *reg = 0x1111 * (i as u64 + 1);
    }
    let entries = [
        entry(),
        distinct,
        pvh_entry(0x10_0000, 0x3000, 0x1000),
        linux64_entry(0x100_0000, 0x3000, 0x2000, 0x1000),
        flat64_entry(0x10_0000, 0x3000, 0x9000, 0x500),
    ];
    for e in entries {
        for (features, host_mce) in [(0, true), (0, false), (1 << 2, true)] {
            const CR4_MCE: u64 = 1 << 6;
            let vmsa = VcpuState::entry(&e).vmsa(features, host_mce);
            let back = entry_of_vmsa(&vmsa).unwrap();
            let mut expected = e;
            if host_mce {
                expected.cr4 |= CR4_MCE;
            }
            assert_eq!(
                back, expected,
                "features {features:#x}, host MCE {host_mce}"
            );
            assert_eq!(VcpuState::entry(&back).vmsa(features, host_mce), vmsa);
        }
    }
}
