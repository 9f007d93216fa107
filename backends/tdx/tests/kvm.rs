// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The TDX backend through veil-vmm on real KVM, with only the TDX ioctls faked (this
//! host has no TDX): a wrapper launches the same backend on a default VM, where veil
//! creates real vCPUs and places the boot image into real, private-in-veil memory.

use std::sync::Arc;

use veil_tdx::recording::example_capabilities;
use veil_tdx::{Call, KVM_EXIT_TDX, RecordingTdx, TdxConfig, TdxError, TdxLaunch, measure_plan};
use veil_tests::kvm_or_skip;
use veil_vmm::kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_run};
use veil_vmm::kvm_ioctls::{Kvm, VcpuFd, VmFd};
use veil_vmm::veil_abi::x86_64::EntryRegisters;
use veil_vmm::veil_loader::{BootSource, GuestRam, ObjectKind, PageType};
use veil_vmm::veil_memory::veil_attrs::Attributes;
use veil_vmm::veil_memory::{ContentPolicy, Flavor};
use veil_vmm::veil_vcpu::{AbiRequest, ExitRouting, GuestLayout, Hypercall, Transport};
use veil_vmm::{Launch, LaunchError, LaunchRun, LaunchVm, Vm, VmError};

const PVH_KERNEL: &[u8] = include_bytes!("../../../loader/tests/fixtures/pvh-test-kernel.elf");
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

#[path = "../../../loader/tests/common/igvm_files.rs"]
mod igvm_files;

struct OnDefaultVm(Arc<TdxLaunch<RecordingTdx>>);

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
    fn setup_vcpu(
        &self,
        vm: &LaunchVm<'_>,
        vcpu: &VcpuFd,
        id: u32,
        entry: Option<&EntryRegisters>,
    ) -> Result<(), LaunchError> {
        self.0.setup_vcpu(vm, vcpu, id, entry)
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
    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        self.0.exit_routing(routing)
    }
}

fn tdx() -> Arc<TdxLaunch<RecordingTdx>> {
    let kvm = Kvm::new().unwrap();
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let module = RecordingTdx::new(example_capabilities(), supported.as_slice().to_vec());
    Arc::new(TdxLaunch::with_host(TdxConfig::default(), module).unwrap())
}

fn vm_with(launch: Arc<dyn Launch>) -> Vm {
    let mut b = Vm::builder().launch(launch).flavor(Flavor::IN_PLACE);
    for &(base, size) in RAM {
        b = b.region(base, size, ContentPolicy::Preserve);
    }
    b.build().unwrap()
}

#[test]
fn a_host_without_tdx_is_refused_naming_what_is_missing() {
    if !kvm_or_skip("a_host_without_tdx_is_refused_naming_what_is_missing") {
        return;
    }
    if Kvm::new().is_ok_and(|k| k.check_extension_raw(235) & (1 << 5) != 0) {
        veil_tests::skip(
            "a_host_without_tdx_is_refused_naming_what_is_missing",
            "this host has TDX",
        );
        return;
    }
    let err = Vm::builder()
        .launch(Arc::new(TdxLaunch::new(TdxConfig::default()).unwrap()))
        .region(0, 4 << 20, ContentPolicy::Discard)
        .build()
        .unwrap_err();
    match &err {
        VmError::Launch {
            technology: "tdx",
            source: LaunchError::Unsupported { missing, .. },
        } => assert!(missing.contains("KVM_X86_TDX_VM"), "{missing}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn vm_launch_issues_the_documented_flow_and_the_measured_mrtd() {
    if !kvm_or_skip("vm_launch_issues_the_documented_flow_and_the_measured_mrtd") {
        return;
    }
    let tdx = tdx();
    let vm = vm_with(Arc::new(OnDefaultVm(tdx.clone())));
    let initrd: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline("veil.test=pvh");
    let mut plan = vm.plan(&source).unwrap();
    for o in plan
        .objects
        .iter_mut()
        .filter(|o| o.kind == ObjectKind::Initrd)
    {
        o.page_type = PageType::Unmeasured;
    }
    let runs = plan.page_runs().unwrap();
    let launched = vm.launch_plan(&plan, 2).unwrap();

    let calls = tdx.host().calls();
    let start_info = plan.entry.regs.rbx;
    let mut want = vec![
        Call::SupportedCpuid,
        Call::EnableSplitIrqchip,
        Call::Capabilities { room: 64 },
    ];
    assert_eq!(calls[..3], want[..]);
    assert!(matches!(calls[3], Call::InitVm(_)));
    want = vec![
        Call::SetCpuid {
            vcpu: 0,
            x2apic: true,
        },
        Call::InitVcpu {
            vcpu: 0,
            rcx: start_info,
        },
        Call::SetCpuid {
            vcpu: 1,
            x2apic: true,
        },
        Call::InitVcpu {
            vcpu: 1,
            rcx: start_info,
        },
    ];
    want.extend(runs.iter().map(|r| Call::InitMemRegion {
        vcpu: 0,
        gpa: r.range.start().0,
        nr_pages: r.range.len() / 4096,
        measure: r.page_type == PageType::Normal,
        source_offset: 0,
    }));
    want.push(Call::FinalizeVm);
    assert_eq!(calls[4..], want[..]);
    assert!(runs.iter().any(|r| r.page_type == PageType::Unmeasured));

    let m = measure_plan(&plan, &TdxConfig::default()).unwrap();
    assert_eq!(veil_tdx::mrtd::hex(&tdx.host().mrtd()), m.mrtd);

    // No register was set: the boot vCPU is still at the reset vector.
    let regs = launched.vcpus[0].fd().get_regs().unwrap();
    assert_eq!(regs.rip, 0xfff0);
    assert_eq!(launched.vcpus[0].fd().get_sregs().unwrap().cr0 & 1, 0);

    // Exits: KVM_EXIT_TDX goes to the backend's hook; a MapGPA as KVM forwards it
    // (KVM_HC_MAP_GPA_RANGE, shared bit stripped, ENCRYPTED for to-private) reaches
    // veil's conversion path.
    let routing = OnDefaultVm(tdx.clone()).exit_routing(ExitRouting::default());
    let hook = routing
        .unknown_exits
        .clone()
        .expect("a hook for KVM_EXIT_TDX");
    let mut run = kvm_run::default();
    assert!(hook.handle(0, KVM_EXIT_TDX, &mut run).unwrap());
    assert!(!hook.handle(0, 41, &mut run).unwrap());
    let map_gpa = Hypercall {
        nr: 12,
        args: [0x20_0000, 512, 0x10, 0, 0, 0],
        long_mode: true,
        transport: Transport::Exit,
    };
    let abi = routing
        .hypercalls
        .route(&map_gpa)
        .expect("MapGPA is routed");
    match abi.decode(&map_gpa, &GuestLayout::from_size(0x400_0000)) {
        Ok(AbiRequest::Convert(r)) => {
            assert_eq!(
                (r.gpa(), r.pages(), r.to()),
                (0x20_0000, 512, Attributes::PRIVATE)
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_runs_reach_the_caller_typed_and_issue_nothing() {
    if !kvm_or_skip("bad_runs_reach_the_caller_typed_and_issue_nothing") {
        return;
    }
    let tdx = tdx();
    let vm = vm_with(Arc::new(OnDefaultVm(tdx.clone())));
    let mut plan =
        veil_vmm::veil_loader::plan(&BootSource::new(PVH_KERNEL), &GuestRam::new(RAM).unwrap())
            .unwrap();
    for o in plan
        .objects
        .iter_mut()
        .filter(|o| o.kind == ObjectKind::Gdt)
    {
        o.page_type = PageType::Secrets;
    }
    let calls = tdx.host().calls().len();
    let err = vm.launch_plan(&plan, 1).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Launch {
                source: LaunchError::PageType {
                    page_type: PageType::Secrets,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        tdx.host().calls().len(),
        calls,
        "refused before any vCPU or ioctl"
    );
    // A run still shared, handed to the hook directly.
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
    let err = tdx.populate(&ctx, &run).unwrap_err();
    assert!(
        matches!(err.backend::<TdxError>(), Some(TdxError::NotPrivate { .. })),
        "{err:?}"
    );
}

/// An IGVM file through `Vm::launch` on real KVM: the file's runs reach
/// KVM_TDX_INIT_MEM_REGION, measured where the file measures them, and the MRTD is the
/// igvm crate's.
#[test]
fn an_igvm_file_launches_with_its_pages_and_mrtd() {
    if !kvm_or_skip("an_igvm_file_launches_with_its_pages_and_mrtd") {
        return;
    }
    use igvm_files::*;
    use veil_vmm::veil_loader::{IgvmPlatform, KernelFormat};
    let (file, parsed) = file_and_headers(sample_directives(&[0; 4096], vec![1]));
    let source = BootSource::new(&file).format(KernelFormat::Igvm {
        platform: IgvmPlatform::Tdx,
    });
    let tdx = tdx();
    let vm = vm_with(Arc::new(OnDefaultVm(tdx.clone())));
    vm.launch(&source, 1).unwrap();
    let regions: Vec<(u64, u64, bool)> = tdx
        .host()
        .calls()
        .iter()
        .filter_map(|c| match c {
            Call::InitMemRegion {
                gpa,
                nr_pages,
                measure,
                ..
            } => Some((*gpa, *nr_pages, *measure)),
            _ => None,
        })
        .collect();
    assert_eq!(regions, vec![(BASE, 4, true), (BASE + 0x4000, 3, false)]);
    let theirs = igvm::measurement::generate_tdx_measurement(parsed.directives(), TDX).unwrap();
    assert_eq!(tdx.host().mrtd(), theirs);
}
