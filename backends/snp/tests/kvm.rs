// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The SNP backend through veil-vmm on real KVM, with only the SEV ioctls faked: this
//! host has no SNP, so a wrapper launches the same backend on a default VM, where veil
//! creates real vCPUs, places the boot image into real guest memory and makes it
//! private in its record, and the backend's commands go to the recording fake.

use std::sync::Arc;

use veil_snp::digest::page_type;
use veil_snp::launch::snp_page_type;
use veil_snp::recording::UpdateCall;
use veil_snp::vmsa::{VcpuState, VmsaSegment, vmsa_pages};
use veil_snp::{
    Call, RecordingFirmware, Script, SevStatus, SnpConfig, SnpError, SnpLaunch, measure_plan,
};
use veil_tests::kvm_or_skip;
use veil_vmm::kvm_ioctls::{Kvm, VmFd};
use veil_vmm::veil_loader::{BootPlan, BootSource, GuestRam, ObjectKind, PageType};
use veil_vmm::veil_memory::{ContentPolicy, Flavor};
use veil_vmm::{Launch, LaunchError, LaunchRun, LaunchVm, Vm, VmError};

const PVH_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/pvh-test-kernel.elf");
const BZ_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/bzimage-test-kernel.bin");
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

#[path = "../../../loader/tests/common/igvm_files.rs"]
mod igvm_files;

/// The SNP backend launched on a VM type this host has: every hook but `vm_types` is
/// the backend's own.
struct OnDefaultVm(Arc<SnpLaunch<RecordingFirmware>>);

impl Launch for OnDefaultVm {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn vm_types(&self) -> &[u32] {
        &[0]
    }
    fn init(&self, kvm: &Kvm, vm: &VmFd) -> Result<(), LaunchError> {
        self.0.init(kvm, vm)
    }
    fn populates(&self) -> bool {
        self.0.populates()
    }
    fn accepts(&self, page_type: PageType) -> bool {
        self.0.accepts(page_type)
    }
    fn populate(&self, vm: &LaunchVm<'_>, run: &LaunchRun<'_>) -> Result<(), LaunchError> {
        self.0.populate(vm, run)
    }
    fn finalize(&self, vm: &LaunchVm<'_>) -> Result<(), LaunchError> {
        self.0.finalize(vm)
    }
}

fn vm_with(launch: Arc<dyn Launch>) -> Vm {
    let mut b = Vm::builder().launch(launch).flavor(Flavor::IN_PLACE);
    for &(base, size) in RAM {
        b = b.region(base, size, ContentPolicy::Preserve);
    }
    b.build().unwrap()
}

fn bz_plan(initrd: &[u8]) -> BootPlan<'_> {
    let ram = GuestRam::new(RAM).unwrap();
    let source = BootSource::new(BZ_KERNEL)
        .initrd(initrd)
        .cmdline("veil.test=bzimage console=none");
    veil_vmm::veil_loader::plan(&source, &ram).unwrap()
}

fn has_snp() -> bool {
    // KVM_CAP_VM_TYPES (235), bit KVM_X86_SNP_VM.
    Kvm::new().is_ok_and(|k| k.check_extension_raw(235) & (1 << 4) != 0)
}

/// A host without SNP: `VmBuilder::build` fails before creating a VM, naming the VM
/// type it lacks.
#[test]
fn a_host_without_snp_is_refused_naming_what_is_missing() {
    if !kvm_or_skip("a_host_without_snp_is_refused_naming_what_is_missing") {
        return;
    }
    if has_snp() {
        veil_tests::skip(
            "a_host_without_snp_is_refused_naming_what_is_missing",
            "this host has SNP",
        );
        return;
    }
    let snp = Arc::new(SnpLaunch::new(SnpConfig::default()).unwrap());
    let err = Vm::builder()
        .launch(snp)
        .region(0, 4 << 20, ContentPolicy::Discard)
        .build()
        .unwrap_err();
    match &err {
        VmError::Launch {
            technology: "sev-snp",
            source: LaunchError::Unsupported { missing, .. },
        } => assert!(missing.contains("KVM_X86_SNP_VM"), "{missing}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn vm_launch_issues_the_documented_sequence_and_the_measured_digest() {
    if !kvm_or_skip("vm_launch_issues_the_documented_sequence_and_the_measured_digest") {
        return;
    }
    let initrd: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    let config = SnpConfig::default();
    let probe = SnpLaunch::with_host(config.clone(), RecordingFirmware::new(0, vec![])).unwrap();
    let kvm = Kvm::new().unwrap();
    let mut plan = bz_plan(&initrd);
    let pages = probe.prepare_plan(&kvm, &mut plan).unwrap();
    assert!(
        pages.setup_data.is_some(),
        "a bzImage gets the cc_blob linked"
    );
    let vmsas = vmsa_pages(&plan.entry, 2, 0, config.host_mce);
    let snp =
        Arc::new(SnpLaunch::with_host(config.clone(), RecordingFirmware::new(0, vmsas)).unwrap());
    let vm = vm_with(Arc::new(OnDefaultVm(snp.clone())));
    let runs = plan.page_runs().unwrap();
    assert!(runs.iter().any(|r| r.page_type == PageType::Secrets));
    assert!(runs.iter().any(|r| r.page_type == PageType::Cpuid));
    let launched = vm.launch_plan(&plan, 2).unwrap();

    // KVM_SEV_INIT2 and LAUNCH_START when the VM is created (before any vCPU), one
    // update per run in address order with its firmware type, LAUNCH_FINISH last.
    let calls = snp.host().calls();
    assert_eq!(calls[0], Call::GetVmsaFeatures);
    assert_eq!(calls[1], Call::OpenFirmware);
    assert!(matches!(calls[2], Call::Init2(_)));
    assert!(matches!(calls[3], Call::LaunchStart(s) if s.policy == 0x30000));
    let want: Vec<Call> = runs
        .iter()
        .map(|r| {
            Call::LaunchUpdate(UpdateCall {
                gfn_start: r.range.start().0 >> 12,
                len: r.range.len(),
                page_type: snp_page_type(r.page_type).unwrap(),
                flags: 0,
                source_offset: 0,
            })
        })
        .collect();
    assert_eq!(calls[4..4 + runs.len()], want[..]);
    assert!(matches!(calls[4 + runs.len()], Call::LaunchFinish(_)));
    assert_eq!(calls.len(), 5 + runs.len());
    assert!(snp.host().finished());

    // What the backend measured through veil's real memory is what `measure_plan`
    // computes without a VM.
    let m = measure_plan(&plan, &config, 2).unwrap();
    assert_eq!(snp.host().digest().to_hex(), m.launch_digest);
    assert_eq!(m.pages.len(), snp.host().pages().len());
    assert_eq!(
        m.pages
            .iter()
            .filter(|p| p.page_type_code == page_type::VMSA)
            .count(),
        2
    );

    // The VMSA model's input is the state veil really gave the vCPUs.
    let model = VcpuState::entry(&plan.entry);
    let bsp = launched.vcpus[0].fd();
    let (sregs, regs) = (bsp.get_sregs().unwrap(), bsp.get_regs().unwrap());
    assert_eq!(VmsaSegment::from_kvm(&sregs.cs), model.segments[1]);
    assert_eq!(VmsaSegment::from_kvm(&sregs.ss), model.segments[2]);
    assert_eq!(VmsaSegment::from_kvm(&sregs.tr), model.tr);
    assert_eq!(VmsaSegment::from_kvm(&sregs.ldt), model.ldtr);
    assert_eq!(
        (sregs.cr0, sregs.cr3, sregs.cr4 & 0x20, sregs.efer & 0x500),
        (model.cr0, model.cr3, model.cr4, model.efer)
    );
    assert_eq!(
        (regs.rip, regs.rsi, regs.rdx),
        (model.rip, model.gprs[6], 0)
    );
    let reset = VcpuState::reset();
    let ap = launched.vcpus[1].fd();
    let (sregs, regs, fpu) = (
        ap.get_sregs().unwrap(),
        ap.get_regs().unwrap(),
        ap.get_fpu().unwrap(),
    );
    assert_eq!((regs.rip, regs.rdx, regs.rflags), (reset.rip, 0x600, 2));
    assert_eq!((sregs.cs.selector, sregs.cs.base), (0xf000, 0xffff_0000));
    // KVM_GET_FPU/KVM_SET_FPU do not carry MXCSR (x86.c): it stays at the guest
    // fpstate's MXCSR_DEFAULT, which the model uses; FCW is veil's.
    assert_eq!(fpu.fcw, reset.fcw);
    assert_eq!(bsp.get_fpu().unwrap().fcw, model.fcw);
}

#[test]
fn a_firmware_failure_reaches_the_vm_builder_by_name() {
    if !kvm_or_skip("a_firmware_failure_reaches_the_vm_builder_by_name") {
        return;
    }
    let ram = GuestRam::new(RAM).unwrap();
    let plan =
        veil_vmm::veil_loader::plan(&BootSource::new(PVH_KERNEL).cmdline("x"), &ram).unwrap();
    let first = plan.page_runs().unwrap()[0].range.start().0;
    let script = Script {
        fail_at: Some((first, SevStatus::INVALID_PAGE_STATE)),
        ..Script::default()
    };
    let snp = Arc::new(
        SnpLaunch::with_host(
            SnpConfig::default(),
            RecordingFirmware::scripted(0, vec![], script),
        )
        .unwrap(),
    );
    let vm = vm_with(Arc::new(OnDefaultVm(snp.clone())));
    let err = vm.launch_plan(&plan, 1).unwrap_err();
    let snp_err = err
        .launch_backend::<SnpError>()
        .expect("the backend's own error");
    assert_eq!(snp_err.firmware(), Some(SevStatus::INVALID_PAGE_STATE));
    let mut chain = String::new();
    let mut e: Option<&dyn std::error::Error> = Some(&err);
    while let Some(x) = e {
        chain.push_str(&format!("{x}; "));
        e = x.source();
    }
    assert!(chain.contains("SEV_RET_INVALID_PAGE_STATE"), "{chain}");
    assert!(!snp.host().finished());
}

/// The adapter checks veil's record: a run still shared is refused before any ioctl.
#[test]
fn a_run_not_yet_private_is_refused_before_launch_update() {
    if !kvm_or_skip("a_run_not_yet_private_is_refused_before_launch_update") {
        return;
    }
    let snp = Arc::new(
        SnpLaunch::with_host(SnpConfig::default(), RecordingFirmware::new(0, vec![])).unwrap(),
    );
    let vm = vm_with(Arc::new(OnDefaultVm(snp.clone())));
    let calls = snp.host().calls().len();
    let page = vec![0u8; 4096];
    let ctx = LaunchVm {
        kvm: vm.kvm(),
        vm: vm.fd(),
        memory: vm.memory(),
        vcpus: &[],
    };
    let run = LaunchRun {
        range: veil_vmm::veil_loader::ByteRange::new(0x20_0000, 4096).unwrap(),
        page_type: PageType::Normal,
        bytes: &page,
    };
    let err = snp.populate(&ctx, &run).unwrap_err();
    assert!(
        matches!(err.backend::<SnpError>(), Some(SnpError::NotPrivate { .. })),
        "{err:?}"
    );
    // A vCPU state page is not one SNP takes: veil-vmm refuses it before any vCPU.
    assert!(!snp.accepts(PageType::VcpuState));
    let mut plan =
        veil_vmm::veil_loader::plan(&BootSource::new(PVH_KERNEL), &GuestRam::new(RAM).unwrap())
            .unwrap();
    for o in plan
        .objects
        .iter_mut()
        .filter(|o| o.kind == ObjectKind::Gdt)
    {
        o.page_type = PageType::VcpuState;
    }
    let refused = vm.launch_plan(&plan, 1).unwrap_err();
    assert!(
        matches!(
            refused,
            VmError::Launch {
                source: LaunchError::PageType { .. },
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(snp.host().calls().len(), calls, "no ioctl was issued");
}

/// `SnpLaunch::launch` plans for the VM, adds the direct boot pages and launches: the
/// secrets and CPUID pages reach LAUNCH_UPDATE with their types.
#[test]
fn snp_launch_adds_the_boot_pages_itself() {
    if !kvm_or_skip("snp_launch_adds_the_boot_pages_itself") {
        return;
    }
    let snp = Arc::new(
        SnpLaunch::with_host(SnpConfig::default(), RecordingFirmware::new(0, vec![])).unwrap(),
    );
    let vm = vm_with(Arc::new(OnDefaultVm(snp.clone())));
    let source = BootSource::new(BZ_KERNEL).cmdline("veil.test=bzimage console=none");
    let launched = snp.launch(&vm, &source, 1).unwrap();
    let types: Vec<u8> = snp
        .host()
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::LaunchUpdate(u) => Some(u.page_type),
            _ => None,
        })
        .collect();
    assert!(types.contains(&page_type::SECRETS), "{types:?}");
    assert!(types.contains(&page_type::CPUID), "{types:?}");
    assert!(snp.host().finished());
    // The kernel is pointed at the cc_blob: boot_params.hdr.setup_data is set.
    assert!(
        launched
            .loaded
            .layout
            .placements
            .iter()
            .any(|p| p.kind == ObjectKind::SetupData)
    );
}

/// An IGVM file through `SnpLaunch::launch` on real KVM: no direct boot pages, one
/// update per run with the file's page types, vCPU 0 given the state the file's VMSA
/// holds, and the digest the igvm crate computes for the file. A file whose VMSA KVM
/// would not build is refused before any LAUNCH_UPDATE.
#[test]
fn an_igvm_file_launches_with_its_page_types_and_digest() {
    if !kvm_or_skip("an_igvm_file_launches_with_its_page_types_and_digest") {
        return;
    }
    use igvm_files::*;
    use veil_vmm::veil_loader::{IgvmPlatform, KernelFormat};
    let config = SnpConfig::default();
    let mut entry = veil_vmm::veil_abi::x86_64::EntryRegisters::long_mode(BASE, 0x9000, 0x1000);
    entry.regs.rsi = 0x7000;
    let vmsa = VcpuState::entry(&entry).vmsa(0, config.host_mce);
    let cpuid = veil_snp::measure::placeholder_cpuid_page();
    let (file, parsed) = file_and_headers(sample_directives(&vmsa, cpuid.clone()));
    let source = BootSource::new(&file)
        .format(KernelFormat::Igvm {
            platform: IgvmPlatform::SevSnp,
        })
        .cmdline("console=ttyS0");
    let snp = Arc::new(
        SnpLaunch::with_host(
            config.clone(),
            RecordingFirmware::new(0, vec![vmsa.clone()]),
        )
        .unwrap(),
    );
    let vm = vm_with(Arc::new(OnDefaultVm(snp.clone())));
    let launched = snp.launch(&vm, &source, 1).unwrap();

    let updates: Vec<(u64, u64, u8)> = snp
        .host()
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::LaunchUpdate(u) => Some((u.gfn_start << 12, u.len, u.page_type)),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates,
        vec![
            (BASE, 0x4000, page_type::NORMAL),
            (BASE + 0x4000, 0x3000, page_type::UNMEASURED),
            (BASE + 0x7000, 0x1000, page_type::SECRETS),
            (BASE + 0x8000, 0x1000, page_type::CPUID),
        ]
    );
    assert!(snp.host().finished());
    let theirs = igvm::measurement::generate_snp_measurement(
        parsed.initializations(),
        parsed.directives(),
        SNP,
    )
    .unwrap();
    assert_eq!(snp.host().digest().to_hex(), veil_snp::digest::hex(&theirs));
    // vCPU 0 holds what the VMSA holds, so KVM would build that VMSA from it.
    let bsp = launched.vcpus[0].fd();
    let (sregs, regs) = (bsp.get_sregs().unwrap(), bsp.get_regs().unwrap());
    let model = VcpuState::entry(&entry);
    assert_eq!(VmsaSegment::from_kvm(&sregs.cs), model.segments[1]);
    assert_eq!(VmsaSegment::from_kvm(&sregs.ds), model.segments[3]);
    assert_eq!(VmsaSegment::from_kvm(&sregs.tr), model.tr);
    assert_eq!((regs.rip, regs.rsi, sregs.cr3), (BASE, 0x7000, 0x9000));

    // A VMSA with state KVM does not take from userspace: refused before any update.
    let mut bad = vmsa_struct(&vmsa);
    bad.star = 1;
    let file = sample(zerocopy::IntoBytes::as_bytes(&bad), cpuid);
    let source = BootSource::new(&file).format(KernelFormat::Igvm {
        platform: IgvmPlatform::SevSnp,
    });
    let snp =
        Arc::new(SnpLaunch::with_host(config, RecordingFirmware::new(0, vec![vmsa])).unwrap());
    let vm = vm_with(Arc::new(OnDefaultVm(snp.clone())));
    let err = snp.launch(&vm, &source, 1).unwrap_err();
    assert!(
        matches!(
            err.launch_backend::<SnpError>(),
            Some(SnpError::IgvmVmsa { offset: 0x200, .. })
        ),
        "{err:?}"
    );
    assert!(
        !snp.host()
            .calls()
            .iter()
            .any(|c| matches!(c, Call::LaunchUpdate(_))),
        "no update was issued"
    );
}
