// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The SNP launch steps against the recording fake, without KVM: the exact commands,
//! their arguments and order, progress handling, firmware errors by name, and bad input
//! refused before any ioctl. Section numbers are those of Linux 6.12's
//! `Documentation/virt/kvm/x86/amd-memory-encryption.rst`.

use veil_snp::digest::{LaunchDigest, page_type, sha384};
use veil_snp::launch::{check_config, init, launch_finish, launch_update};
use veil_snp::recording::UpdateCall;
use veil_snp::{
    Call, PolicyError, RecordingFirmware, Script, SevStatus, SnpConfig, SnpError, SnpLaunch,
    SnpPolicy,
};
use veil_vmm::LaunchRun;
use veil_vmm::veil_loader::{ByteRange, PageType};

fn range(gpa: u64, len: u64) -> ByteRange {
    ByteRange::new(gpa, len).unwrap()
}

fn run(gpa: u64, page_type: PageType, bytes: &[u8]) -> LaunchRun<'_> {
    LaunchRun {
        range: range(gpa, bytes.len() as u64),
        page_type,
        bytes,
    }
}

fn updates(fw: &RecordingFirmware) -> Vec<UpdateCall> {
    fw.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::LaunchUpdate(u) => Some(u),
            _ => None,
        })
        .collect()
}

/// §1 KVM_SEV_INIT2, §18 SNP_LAUNCH_START, §19 SNP_LAUNCH_UPDATE, §20 SNP_LAUNCH_FINISH,
/// in this order, with the documented fields.
#[test]
fn the_documented_sequence_with_its_arguments() {
    let vmsa = vec![0x5a; 4096];
    let fw = RecordingFirmware::new(1 << 5, vec![vmsa.clone()]);
    let config = SnpConfig {
        policy: SnpPolicy::new(0xb_0000).unwrap(),
        vmsa_features: 1 << 5,
        gosvw: [3; 16],
        host_data: [9; 32],
        ..SnpConfig::default()
    };
    init(&fw, &config, 1 << 5).unwrap();
    let kernel: Vec<u8> = (0..3 * 4096).map(|i| (i % 251) as u8).collect();
    let table = vec![1u8; 4096];
    let zeros = vec![0u8; 2 * 4096];
    for r in [
        run(0x10_0000, PageType::Normal, &kernel),
        run(0x20_0000, PageType::Zero, &zeros),
        run(0x30_0000, PageType::Unmeasured, &kernel[..4096]),
        run(0x4000, PageType::Secrets, &zeros[..4096]),
        run(0x5000, PageType::Cpuid, &table),
    ] {
        launch_update(&fw, &r, true).unwrap();
    }
    launch_finish(&fw, &config).unwrap();

    let calls = fw.calls();
    let Call::Init2(i) = calls[0] else {
        panic!("{calls:?}")
    };
    // §1: vmsa_features as asked (KVM adds SNP_ACTIVE), flags 0, ghcb_version 2.
    assert_eq!((i.vmsa_features, i.flags, i.ghcb_version), (1 << 5, 0, 2));
    let Call::LaunchStart(s) = calls[1] else {
        panic!("{calls:?}")
    };
    // §18: policy, gosvw, flags 0.
    assert_eq!((s.policy, s.gosvw, s.flags), (0xb_0000, [3; 16], 0));
    // §19: gfn_start is the GPA >> 12, len in bytes, type as the firmware numbers it,
    // one call per run when KVM does every page at once.
    assert_eq!(
        updates(&fw),
        [
            (0x100, 3 * 4096, page_type::NORMAL),
            (0x200, 2 * 4096, page_type::ZERO),
            (0x300, 4096, page_type::UNMEASURED),
            (0x4, 4096, page_type::SECRETS),
            (0x5, 4096, page_type::CPUID),
        ]
        .map(|(gfn_start, len, page_type)| UpdateCall {
            gfn_start,
            len,
            page_type,
            flags: 0,
            source_offset: 0,
        })
    );
    let Some(Call::LaunchFinish(f)) = calls.last() else {
        panic!("{calls:?}")
    };
    // §20: host data, no ID block, flags 0.
    assert_eq!((f.host_data, f.id_block_en, f.flags), ([9; 32], 0, 0));
    assert_eq!(calls.len(), 2 + 5 + 1);

    // The digest: one PAGE_INFO per page, the VMSA last at 0xFFFFFFFFF000.
    let mut d = LaunchDigest::default();
    for (i, page) in kernel.chunks(4096).enumerate() {
        d.update(
            page_type::NORMAL,
            0x10_0000 + i as u64 * 4096,
            Some(&sha384(page)),
        );
    }
    d.update(page_type::ZERO, 0x20_0000, None);
    d.update(page_type::ZERO, 0x20_1000, None);
    d.update(page_type::UNMEASURED, 0x30_0000, None);
    d.update(page_type::SECRETS, 0x4000, None);
    d.update(page_type::CPUID, 0x5000, None);
    d.update(page_type::VMSA, 0xFFFF_FFFF_F000, Some(&sha384(&vmsa)));
    assert_eq!(fw.digest(), d);
    assert_eq!(fw.pages().len(), 3 + 2 + 1 + 1 + 1 + 1);
}

/// §19: "the kernel ... updates ... gfn_start, uaddr and len" on partial progress; the
/// loop calls again with the written-back structure until len is 0. EAGAIN ("if caller
/// should retry") is retried with the same structure.
#[test]
fn partial_progress_and_eagain_continue_where_the_kernel_left_off() {
    let script = Script {
        max_pages_per_call: 2,
        eagain: 1,
        ..Script::default()
    };
    let fw = RecordingFirmware::scripted(0, vec![], script);
    init(&fw, &SnpConfig::default(), 0).unwrap();
    let data: Vec<u8> = (0..5 * 4096).map(|i| (i / 4096) as u8).collect();
    launch_update(&fw, &run(0x8000, PageType::Normal, &data), true).unwrap();
    let want: Vec<(u64, u64, u64)> = vec![
        (8, 5 * 4096, 0), // EAGAIN
        (8, 5 * 4096, 0),
        (10, 3 * 4096, 2 * 4096),
        (12, 4096, 4 * 4096),
    ];
    let got: Vec<(u64, u64, u64)> = updates(&fw)
        .iter()
        .map(|u| (u.gfn_start, u.len, u.source_offset))
        .collect();
    assert_eq!(got, want);
    let gpas: Vec<u64> = fw.pages().iter().map(|p| p.gpa).collect();
    assert_eq!(gpas, [0x8000, 0x9000, 0xa000, 0xb000, 0xc000]);
    // Each page was measured from its own bytes.
    for (i, p) in fw.pages().iter().enumerate() {
        assert_eq!(p.contents, Some(sha384(&data[i * 4096..(i + 1) * 4096])));
    }
}

/// §19 "Returns: 0 on success, -negative on error"; with no progress KVM returns EIO and
/// the firmware's status in `error`: it reaches the caller by name, with the page.
#[test]
fn firmware_errors_come_back_by_name_at_their_page() {
    let script = Script {
        fail_at: Some((0x3000, SevStatus::INVALID_PAGE_STATE)),
        ..Script::default()
    };
    let fw = RecordingFirmware::scripted(0, vec![], script);
    init(&fw, &SnpConfig::default(), 0).unwrap();
    let data = vec![0u8; 4 * 4096];
    let err = launch_update(&fw, &run(0x1000, PageType::Normal, &data), true).unwrap_err();
    let SnpError::Update { gpa, source, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*gpa, 0x3000, "the first page the firmware did not do");
    assert_eq!(source.errno, libc::EIO);
    assert_eq!(err.firmware(), Some(SevStatus::INVALID_PAGE_STATE));
    assert_eq!(
        err.firmware().and_then(|s| s.name()),
        Some("SEV_RET_INVALID_PAGE_STATE")
    );
    let text = format!("{err}: {source}");
    assert!(text.contains("SEV_RET_INVALID_PAGE_STATE"), "{text}");
    assert!(text.contains("0x3000"), "{text}");
    // Two pages were done in the first call, then the failing one was retried alone.
    assert_eq!(updates(&fw).len(), 2);
    assert_eq!(fw.pages().len(), 2);
}

/// A CPUID page the firmware refuses (SEV_RET_INVALID_PARAM) is written back corrected;
/// the error names the entries that changed.
#[test]
fn a_refused_cpuid_page_names_the_entries_the_firmware_changed() {
    let script = Script {
        refuse_cpuid: true,
        ..Script::default()
    };
    let fw = RecordingFirmware::scripted(0, vec![], script);
    init(&fw, &SnpConfig::default(), 0).unwrap();
    let table = vec![0x11u8; 4096];
    let err = launch_update(&fw, &run(0x2000, PageType::Cpuid, &table), true).unwrap_err();
    match &err {
        SnpError::CpuidRefused { gpa, entries, .. } => {
            assert_eq!((*gpa, entries.as_slice()), (0x2000, &[0][..]))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.firmware(), Some(SevStatus::INVALID_PARAM));
    assert_eq!(
        table,
        vec![0x11u8; 4096],
        "the caller's bytes are untouched"
    );
}

/// Bad input is a typed error before any ioctl.
#[test]
fn bad_runs_are_refused_before_any_ioctl() {
    let fw = RecordingFirmware::new(0, vec![]);
    init(&fw, &SnpConfig::default(), 0).unwrap();
    let before = fw.calls().len();
    let page = vec![0u8; 4096];
    let ones = vec![1u8; 4096];
    type Case<'a> = (LaunchRun<'a>, bool, fn(&SnpError) -> bool);
    let cases: Vec<Case<'_>> = vec![
        // A vCPU state page: KVM builds VMSAs itself (§20), none comes from userspace.
        (run(0x1000, PageType::VcpuState, &page), true, |e| {
            matches!(e, SnpError::PageType { .. })
        }),
        // Not private yet (§19: "must be ... private via KVM_SET_MEMORY_ATTRIBUTES").
        (run(0x1000, PageType::Normal, &page), false, |e| {
            matches!(e, SnpError::NotPrivate { .. })
        }),
        // Misaligned (§19: len a multiple of 4K; the start a frame).
        (
            LaunchRun {
                range: range(0x1800, 4096),
                page_type: PageType::Normal,
                bytes: &page,
            },
            true,
            |e| matches!(e, SnpError::Misaligned { .. }),
        ),
        (run(0x1000, PageType::Normal, &page[..100]), true, |e| {
            matches!(e, SnpError::Misaligned { .. })
        }),
        // Bytes that are not the run: oversized for what came with it.
        (
            LaunchRun {
                range: range(0x1000, 2 * 4096),
                page_type: PageType::Normal,
                bytes: &page,
            },
            true,
            |e| matches!(e, SnpError::LengthMismatch { .. }),
        ),
        // A zero page the loader put bytes in.
        (run(0x1000, PageType::Zero, &ones), true, |e| {
            matches!(e, SnpError::ZeroNotZero { .. })
        }),
    ];
    for (r, private, want) in cases {
        let err = launch_update(&fw, &r, private).unwrap_err();
        assert!(want(&err), "{err:?}");
    }
    assert_eq!(fw.calls().len(), before, "no ioctl was issued");
}

#[test]
fn bad_configurations_are_refused_before_any_ioctl() {
    assert!(matches!(
        SnpPolicy::new(0x1_0000),
        Err(PolicyError::Required { bit: 17, .. })
    ));
    let fw = RecordingFirmware::new(1 << 5, vec![]);
    let features = SnpConfig {
        vmsa_features: 1 << 9,
        ..SnpConfig::default()
    };
    match init(&fw, &features, 1 << 5) {
        Err(SnpError::VmsaFeatures { unsupported, .. }) => assert_eq!(unsupported, 1 << 9),
        other => panic!("{other:?}"),
    }
    let ghcb = SnpConfig {
        ghcb_version: 3,
        ..SnpConfig::default()
    };
    assert!(matches!(
        check_config(&ghcb, 0),
        Err(SnpError::GhcbVersion(3))
    ));
    assert!(matches!(
        SnpLaunch::with_host(ghcb, RecordingFirmware::new(0, vec![])),
        Err(SnpError::GhcbVersion(3))
    ));
    assert!(fw.calls().is_empty());
}

/// An update before LAUNCH_START is refused by KVM with EINVAL (§19: "the SNP context
/// must be created first"): the fake does the same.
#[test]
fn an_update_before_launch_start_fails() {
    let fw = RecordingFirmware::new(0, vec![]);
    let page = vec![0u8; 4096];
    let err = launch_update(&fw, &run(0, PageType::Normal, &page), true).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL));
}
