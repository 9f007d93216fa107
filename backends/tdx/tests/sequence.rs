// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The TDX launch steps against the recording fake, without KVM. Section names are those
//! of Linux 7.2's `Documentation/virt/kvm/x86/intel-tdx.rst`.

use veil_tdx::launch::{check_run, finalize, init, init_mem_region, init_vcpu, vcpu_cpuid};
use veil_tdx::recording::example_capabilities;
use veil_tdx::{Call, Mrtd, RecordingTdx, Script, TdxConfig, TdxError, TdxLaunch};
use veil_vmm::LaunchRun;
use veil_vmm::kvm_bindings::{CpuId, kvm_cpuid_entry2};
use veil_vmm::veil_loader::{ByteRange, PageType};

fn supported() -> Vec<kvm_cpuid_entry2> {
    vec![
        kvm_cpuid_entry2 {
            function: 1,
            eax: 0x806f8,
            ecx: 0x1234,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 0x8000_0008,
            eax: 0x3034,
            ..Default::default()
        },
        kvm_cpuid_entry2 {
            function: 0xd,
            eax: 7,
            ..Default::default()
        },
    ]
}

fn run(gpa: u64, page_type: PageType, bytes: &[u8]) -> LaunchRun<'_> {
    LaunchRun {
        range: ByteRange::new(gpa, bytes.len() as u64).unwrap(),
        page_type,
        bytes,
    }
}

fn ready(script: Script) -> (RecordingTdx, CpuId) {
    let m = RecordingTdx::scripted(example_capabilities(), supported(), script);
    let cpuid = m.supported().unwrap();
    init(&m, &TdxConfig::default(), &cpuid).unwrap();
    init_vcpu(&m, 0, &vcpu_cpuid(&cpuid, 0), 0x8000).unwrap();
    (m, cpuid)
}

/// "KVM TDX creation flow": capabilities, INIT_VM, per vCPU (SET_CPUID2 and) INIT_VCPU,
/// INIT_MEM_REGION, FINALIZE_VM, with their arguments.
#[test]
fn the_documented_flow_with_its_arguments() {
    let (m, _) = ready(Script::default());
    let kernel: Vec<u8> = (0..2 * 4096).map(|i| (i % 253) as u8).collect();
    let zeros = vec![0u8; 4096];
    init_mem_region(&m, 0, &run(0x10_0000, PageType::Normal, &kernel), true, 48).unwrap();
    init_mem_region(&m, 0, &run(0x20_0000, PageType::Zero, &zeros), true, 48).unwrap();
    init_mem_region(
        &m,
        0,
        &run(0x30_0000, PageType::Unmeasured, &kernel[..4096]),
        true,
        48,
    )
    .unwrap();
    finalize(&m).unwrap();

    let calls = m.calls();
    assert_eq!(calls[0], Call::EnableSplitIrqchip);
    assert_eq!(calls[1], Call::Capabilities { room: 64 });
    let Call::InitVm(vm) = &calls[2] else {
        panic!("{calls:?}")
    };
    // Default attributes SEPT_VE_DISABLE, XFAM x87|SSE, and the CPUID: every configurable
    // leaf the host has, masked, and 0x80000008 with the GPAW (48) in EAX[23:16].
    assert_eq!((vm.attributes, vm.xfam), (1 << 28, 3));
    let leaf = |f| vm.cpuid.iter().find(|e| e.function == f).copied().unwrap();
    assert_eq!(leaf(0x8000_0008).eax, 0x30_3034);
    assert_eq!(leaf(1).ecx, 0x1234);
    assert!(
        vm.cpuid.iter().all(|e| e.function != 0xd),
        "0xd is not configurable"
    );
    assert_eq!(
        calls[3],
        Call::SetCpuid {
            vcpu: 0,
            x2apic: true
        }
    );
    assert_eq!(
        calls[4],
        Call::InitVcpu {
            vcpu: 0,
            rcx: 0x8000
        }
    );
    let regions: Vec<(u64, u64, bool)> = calls
        .iter()
        .filter_map(|c| match c {
            Call::InitMemRegion {
                gpa,
                nr_pages,
                measure,
                source_offset: 0,
                vcpu: 0,
            } => Some((*gpa, *nr_pages, *measure)),
            _ => None,
        })
        .collect();
    assert_eq!(
        regions,
        [
            (0x10_0000, 2, true),
            (0x20_0000, 1, false),
            (0x30_0000, 1, false)
        ]
    );
    assert_eq!(calls.last(), Some(&Call::FinalizeVm));

    let mut want = Mrtd::default();
    for (i, page) in kernel.chunks(4096).enumerate() {
        let gpa = 0x10_0000 + i as u64 * 4096;
        want.page_add(gpa);
        want.extend_page(gpa, page);
    }
    want.page_add(0x20_0000);
    want.page_add(0x30_0000);
    assert_eq!(m.mrtd(), want.finish());
}

/// INIT_MEM_REGION "processes one page at a time": stopped by a signal it returns EINTR
/// with the structure showing how far it got; the loop goes on from there.
#[test]
fn interrupted_regions_continue_from_the_written_back_structure() {
    let (m, _) = ready(Script {
        max_pages_per_call: 2,
        ..Script::default()
    });
    let data = vec![7u8; 5 * 4096];
    init_mem_region(&m, 0, &run(0x40_0000, PageType::Normal, &data), true, 48).unwrap();
    let got: Vec<(u64, u64, u64)> = m
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::InitMemRegion {
                gpa,
                nr_pages,
                source_offset,
                ..
            } => Some((*gpa, *nr_pages, *source_offset)),
            _ => None,
        })
        .collect();
    assert_eq!(
        got,
        [
            (0x40_0000, 5, 0),
            (0x40_2000, 3, 0x2000),
            (0x40_4000, 1, 0x4000)
        ]
    );
    assert_eq!(m.pages().len(), 5);
}

#[test]
fn seamcall_errors_and_busy_finalize() {
    let (m, _) = ready(Script {
        fail_at: Some((0x1000, 0xc000_0100_0000_0000)),
        busy: 2,
        ..Script::default()
    });
    let page = vec![0u8; 4096];
    let err = init_mem_region(&m, 0, &run(0x1000, PageType::Normal, &page), true, 48).unwrap_err();
    assert!(
        matches!(err, TdxError::MemRegion { gpa: 0x1000, .. }),
        "{err:?}"
    );
    assert_eq!(err.hw_error(), Some(0xc000_0100_0000_0000));
    finalize(&m).unwrap();
    let busy = m.calls().iter().filter(|c| **c == Call::FinalizeVm).count();
    assert_eq!(busy, 3, "EBUSY twice, then done");
}

#[test]
fn bad_input_is_refused_before_any_ioctl() {
    let (m, cpuid) = ready(Script::default());
    let before = m.calls().len();
    let page = vec![0u8; 4096];
    let ones = vec![1u8; 4096];
    for (r, private) in [
        (run(0x1000, PageType::Secrets, &page), true),
        (run(0x1000, PageType::Cpuid, &page), true),
        (run(0x1000, PageType::VcpuState, &page), true),
        (run(0x1000, PageType::Normal, &page), false),
        (run(0x1000, PageType::Normal, &page[..10]), true),
        (run(0x1000, PageType::Zero, &ones), true),
        (run(1 << 47, PageType::Normal, &page), true),
    ] {
        let err = init_mem_region(&m, 0, &r, private, 48).unwrap_err();
        assert!(
            matches!(
                err,
                TdxError::PageType { .. }
                    | TdxError::NotPrivate { .. }
                    | TdxError::Misaligned { .. }
                    | TdxError::ZeroNotZero { .. }
                    | TdxError::SharedGpa { bit: 47, .. }
            ),
            "{err:?}"
        );
    }
    assert!(matches!(
        check_run(&run(0x1800, PageType::Normal, &page), 48),
        Err(TdxError::Misaligned { .. })
    ));
    assert_eq!(m.calls().len(), before, "no ioctl was issued");

    // Configurations the module does not accept: refused before INIT_VM.
    for (config, want) in [
        (
            TdxConfig {
                attributes: 1 << 29,
                ..TdxConfig::default()
            },
            "Attributes",
        ),
        (
            TdxConfig {
                xfam: 1 << 9,
                ..TdxConfig::default()
            },
            "Xfam",
        ),
        (
            TdxConfig {
                gpaw: 50,
                ..TdxConfig::default()
            },
            "Gpaw",
        ),
    ] {
        let fresh = RecordingTdx::new(example_capabilities(), supported());
        let err = init(&fresh, &config, &cpuid).unwrap_err();
        assert!(format!("{err:?}").starts_with(want), "{err:?}");
        assert!(!fresh.calls().iter().any(|c| matches!(c, Call::InitVm(_))));
    }
    assert!(matches!(
        TdxLaunch::with_host(
            TdxConfig {
                gpaw: 40,
                ..TdxConfig::default()
            },
            RecordingTdx::new(example_capabilities(), supported())
        ),
        Err(TdxError::Gpaw(40))
    ));
}

/// Capabilities: "cpuid.nent ... must be ≥ the module's num_cpuid_config, else E2BIG";
/// the room grows.
#[test]
fn capabilities_grow_their_room_on_e2big() {
    let mut caps = example_capabilities();
    caps.cpuid = (0..100)
        .map(|i| kvm_cpuid_entry2 {
            function: if i == 0 { 0x8000_0008 } else { 0x4000_0000 + i },
            eax: u32::MAX,
            ..Default::default()
        })
        .collect();
    let m = RecordingTdx::new(caps, supported());
    init(&m, &TdxConfig::default(), &m.supported().unwrap()).unwrap();
    let rooms: Vec<u32> = m
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::Capabilities { room } => Some(*room),
            _ => None,
        })
        .collect();
    assert_eq!(rooms, [64, 128]);
}
