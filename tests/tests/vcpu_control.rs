// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-vcpu against real KVM: two vCPUs paused, resumed and stopped from another thread,
//! and a shutdown or an error on one vCPU stopping the other.

mod vcpu_support;

use std::sync::Arc;
use std::time::Duration;

use vcpu_support::{COUNTERS, REPORT_PORT, Recorder, SHUTDOWN, SPIN, TestVm};
use veil_tests::{eventually, wait_for_end};
use veil_vcpu::{ExitKind, FaultPolicy, IoAccess, RunError, StopReason, VcpuEnd, VcpuSet};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn two_vcpus_paused_resumed_and_stopped_from_another_thread() {
    if !veil_tests::kvm_or_skip("two_vcpus_paused_resumed_and_stopped_from_another_thread") {
        return;
    }
    let vm = TestVm::new();
    let counter = |i: u64| COUNTERS + 8 * i;
    // The spinning guests never exit: only a kick gets them out of KVM_RUN.
    let vcpus = vec![
        vm.long_mode_vcpu(0, &SPIN, counter(0)),
        vm.long_mode_vcpu(1, &SPIN, counter(1)),
    ];
    let rec = Arc::new(Recorder::default());
    let set = VcpuSet::spawn(vcpus, rec.clone(), rec, FaultPolicy::Refuse).unwrap();
    let read = || [vm.read_u64(counter(0)), vm.read_u64(counter(1))];

    assert!(
        eventually(LIMIT, || read().iter().all(|&c| c > 100)),
        "both vCPUs run: {:?}",
        read()
    );

    for round in 0..2 {
        assert!(set.pause(), "round {round}: pause");
        let paused = read();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(read(), paused, "round {round}: nothing runs while paused");
        assert!(!set.is_finished());

        assert!(set.resume(), "round {round}: resume");
        assert!(
            eventually(LIMIT, || {
                let now = read();
                now[0] > paused[0] + 100 && now[1] > paused[1] + 100
            }),
            "round {round}: both vCPUs run again: {paused:?} -> {:?}",
            read()
        );
    }

    // Spinning guests never end by themselves: a bounded wait hands the set back.
    let started = std::time::Instant::now();
    let set = set
        .wait_timeout(Duration::from_millis(200))
        .expect_err("spinning vCPUs are still running");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let controller = std::thread::spawn(move || {
        set.stop();
        set.wait_timeout(LIMIT)
    });
    let report = controller
        .join()
        .unwrap()
        .expect("a stopped set ends within the limit");
    assert!(
        matches!(report.reason, StopReason::Requested),
        "{:?}",
        report.reason
    );
    for v in &report.vcpus {
        assert!(
            matches!(v.end, VcpuEnd::Stopped),
            "vCPU {}: {:?}",
            v.index,
            v.end
        );
        // Each pause and the stop took the vCPU out of KVM_RUN through a kick.
        assert!(
            v.stats.count(ExitKind::Interrupted) >= 3,
            "vCPU {}: {}",
            v.index,
            v.stats
        );
    }
    let stopped = read();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(read(), stopped, "nothing runs after the stop");
}

#[test]
fn shutdown_on_one_vcpu_stops_the_other() {
    if !veil_tests::kvm_or_skip("shutdown_on_one_vcpu_stops_the_other") {
        return;
    }
    let vm = TestVm::new();
    let vcpus = vec![
        vm.long_mode_vcpu(0, &SPIN, COUNTERS),
        vm.long_mode_vcpu(1, &SHUTDOWN, 0),
    ];
    let rec = Arc::new(Recorder::default());
    let set = VcpuSet::spawn(vcpus, rec.clone(), rec.clone(), FaultPolicy::Refuse).unwrap();
    let report = wait_for_end(set, LIMIT);

    assert!(
        matches!(report.reason, StopReason::Shutdown { vcpu: 1 }),
        "{:?}",
        report.reason
    );
    assert!(
        matches!(report.vcpus[0].end, VcpuEnd::Stopped),
        "{:?}",
        report.vcpus[0].end
    );
    assert!(
        matches!(report.vcpus[1].end, VcpuEnd::Shutdown),
        "{:?}",
        report.vcpus[1].end
    );
    assert_eq!(rec.reports(), vec![0x5d]);
}

#[test]
fn handler_error_on_one_vcpu_stops_the_other() {
    if !veil_tests::kvm_or_skip("handler_error_on_one_vcpu_stops_the_other") {
        return;
    }
    let vm = TestVm::new();
    let vcpus = vec![
        vm.long_mode_vcpu(0, &SPIN, COUNTERS),
        vm.long_mode_vcpu(1, &SHUTDOWN, 0),
    ];
    // The shutdown guest's first act, a report, fails in the device.
    let rec = Arc::new(Recorder {
        fail_port: Some(REPORT_PORT),
        ..Recorder::default()
    });
    let set = VcpuSet::spawn(vcpus, rec.clone(), rec, FaultPolicy::Refuse).unwrap();
    let report = wait_for_end(set, LIMIT);

    match &report.reason {
        StopReason::Error { vcpu: 1, error } => {
            assert!(
                matches!(
                    **error,
                    RunError::Io {
                        access: IoAccess::PioWrite(REPORT_PORT),
                        ..
                    }
                ),
                "{error:?}"
            );
            let text = report.reason.to_string();
            assert_eq!(
                text,
                "vCPU 1: I/O handler failed on port write at 0x10: port 0x10 is configured to fail"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(report.vcpus[0].end, VcpuEnd::Stopped),
        "{:?}",
        report.vcpus[0].end
    );
    assert!(
        matches!(report.vcpus[1].end, VcpuEnd::Failed(_)),
        "{:?}",
        report.vcpus[1].end
    );
}
