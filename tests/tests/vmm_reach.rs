// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-vmm's guest hypercall probe against this host's KVM: it answers within its
//! deadline, and never claims more than the host's capabilities allow.

use std::time::{Duration, Instant};

use veil_memory::HostCaps;
use veil_vcpu::Transport;
use veil_vmm::{HypercallReach, probe_guest_hypercall};

#[test]
fn hypercall_probe_answers_within_its_deadline() {
    if !veil_tests::kvm_or_skip("hypercall_probe_answers_within_its_deadline") {
        return;
    }
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    let probe = probe_guest_hypercall(deadline).unwrap();
    let took = started.elapsed();
    println!("{probe} (in {took:?})");
    // A kick takes a spinning vCPU out well within the stop's own limit.
    assert!(took < deadline + Duration::from_secs(5), "{took:?}");
    let caps = HostCaps::probe().unwrap();
    match &probe.reach {
        HypercallReach::Userspace => {
            assert!(caps.map_gpa_range_exits(), "an exit KVM was not asked for");
            assert_eq!(probe.transport(), Transport::Exit);
        }
        HypercallReach::Hangs { waited_ms } => {
            assert!(*waited_ms >= 300, "{waited_ms}");
            assert_eq!(probe.transport(), Transport::Port);
        }
        HypercallReach::Kernel { .. } => assert_eq!(probe.transport(), Transport::Port),
        HypercallReach::Failed { reason } => panic!("the probe guest failed: {reason}"),
    }
}
