// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The recording launch backend of `examples/backends`, written outside veil's crates:
//! `Vm::launch` calls every hook it has, in order, with the page types the loader passed,
//! and the guest (veil-loader's PVH test kernel) still finds its boot data. A page type
//! the technology refuses, and a technology's own failure, reach the caller typed.

mod loader_support;

use std::sync::Arc;

use loader_support::*;
use veil_example_backends::recording::{Event, RecordingLaunch, Told};
use veil_loader::{BootSource, ObjectKind, PageType, PopulateWay};
use veil_memory::ContentPolicy;
use veil_tests::{kvm_or_skip, wait_for_end};
use veil_vcpu::{FaultPolicy, StopReason};
use veil_vmm::{LaunchError, Vm, VmError};

/// Low memory and 63 MiB from 1 MiB.
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

fn vm_of(launch: Arc<RecordingLaunch>) -> Vm {
    let mut b = Vm::builder().launch(launch);
    for &(base, size) in RAM {
        b = b.region(base, size, ContentPolicy::Preserve);
    }
    b.build().unwrap()
}

#[test]
fn every_launch_hook_is_called_in_order_with_the_loaders_page_types() {
    if !kvm_or_skip("every_launch_hook_is_called_in_order_with_the_loaders_page_types") {
        return;
    }
    let launch = Arc::new(RecordingLaunch::new());
    let vm = vm_of(launch.clone());
    assert_eq!(
        launch.events(),
        [Event::Init],
        "init comes right after KVM_CREATE_VM"
    );

    let initrd = test_initrd();
    let source = BootSource::new(PVH_KERNEL)
        .initrd(&initrd)
        .cmdline(PVH_CMDLINE);
    // The loader marks everything normal; mark the initrd unmeasured, as a technology
    // might, to see the type reach the hook.
    let ram = veil_loader::ConvertPrivate::ram(vm.memory().as_ref()).unwrap();
    let mut plan = veil_loader::plan(&source, &ram).unwrap();
    for o in plan
        .objects
        .iter_mut()
        .filter(|o| o.kind == ObjectKind::Initrd)
    {
        o.page_type = PageType::Unmeasured;
    }
    let runs = plan.page_runs().unwrap();
    let launched = vm.launch_plan(&plan, 2).unwrap();
    assert_eq!(launched.loaded.populated.way, PopulateWay::Launch);
    assert_eq!(launched.loaded.populated.runs, runs);
    assert_eq!(launched.vcpus.len(), 2);

    let mut want = vec![
        Event::Init,
        Event::SetupVcpu { id: 0, boot: true },
        Event::SetupVcpu { id: 1, boot: false },
    ];
    want.extend(runs.iter().map(|r| Event::Populate {
        range: r.range,
        page_type: r.page_type,
        len: r.range.len() as usize,
        vcpus: 2,
    }));
    want.push(Event::Finalize { vcpus: 2 });
    assert_eq!(launch.events(), want);
    assert!(
        runs.iter().any(|r| r.page_type == PageType::Unmeasured)
            && runs.iter().any(|r| r.page_type == PageType::Normal),
        "{runs:?}"
    );

    // The guest, on the boot vCPU only, finds what the loader wrote and the technology was
    // handed.
    let mut vcpus = launched.vcpus;
    vcpus.truncate(1);
    let ports = Arc::new(Ports::default());
    let set = vm.run(vcpus, ports.clone(), FaultPolicy::Refuse).unwrap();
    assert_eq!(launch.events().last(), Some(&Event::ExitRouting));
    let report = wait_for_end(set, std::time::Duration::from_secs(60));
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "{}",
        report.reason
    );
    let report = ports.take();
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(
        report.values,
        expected_pvh_report(&launched.loaded, RAM, &initrd)
    );
}

#[test]
fn a_refused_page_type_and_a_failed_step_reach_the_caller_typed() {
    if !kvm_or_skip("a_refused_page_type_and_a_failed_step_reach_the_caller_typed") {
        return;
    }
    // Refused before anything: no vCPU, no population, memory untouched.
    let launch = Arc::new(RecordingLaunch::refusing(PageType::Normal));
    let vm = vm_of(launch.clone());
    let stats = vm.memory().stats();
    let source = BootSource::new(PVH_KERNEL).cmdline(PVH_CMDLINE);
    let err = vm.launch(&source, 1).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::Launch {
                technology: "recording",
                source: LaunchError::PageType {
                    page_type: PageType::Normal,
                    ..
                },
            }
        ),
        "{err}"
    );
    assert_eq!(launch.events(), [Event::Init]);
    assert_eq!(vm.memory().stats(), stats, "a system call was issued");
    assert_eq!(
        vm.memory().attributes().run_count(),
        1,
        "a conversion happened"
    );
    // So vCPU 0 was never created.
    vm.create_vcpu(0).unwrap();

    // The technology's own error comes back as itself.
    let failing = vm_of(Arc::new(RecordingLaunch::failing_finalize()));
    let err = failing.launch(&source, 1).unwrap_err();
    let told = err
        .launch_backend::<Told>()
        .expect("the backend's own error");
    assert_eq!(told.0, "finalize");
}
