// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Malformed MAP_GPA_RANGE requests from a guest get veil's error result and change
//! nothing, checked from inside the guest (`guests/bad_requests.s`) and by the host.

use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_vcpu::{FaultPolicy, StopReason, enable_conversion_exits};

use crate::guests;
use crate::testbed::sw_protected_or_skip;
use crate::veil_vm::{BOOT_SIZE, Handlers, VeilVm};

/// Guest memory: the boot region and 2 MiB of data after a 2 MiB gap.
const DATA: (u64, u64) = (4 << 20, 2 << 20);

#[test]
fn malformed_map_gpa_range_changes_nothing() {
    let Some(kvm) = sw_protected_or_skip("malformed_map_gpa_range_changes_nothing") else {
        return;
    };
    let vm = VeilVm::new(kvm, &[(0, BOOT_SIZE), DATA]);
    vm.register_all();
    enable_conversion_exits(&vm.vm).expect("MAP_GPA_RANGE exits");
    let page = DATA.0 + 0x3000;
    let end = DATA.0 + DATA.1;
    let vcpu = vm.long_mode_vcpu(0, guests::bad_requests(), |r| {
        r.rdi = page;
        r.rsi = end;
    });
    let handlers = Handlers::new(&vm, None);
    let report = handlers.run(vec![vcpu], FaultPolicy::Refuse);
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "{}",
        report.reason
    );

    // (result, verdict) per case: 22 is EINVAL, as veil writes it to `hypercall.ret`.
    let reports = handlers.reports();
    let expected: Vec<u32> = (1..=9)
        .flat_map(|case| [if case <= 7 { 22 } else { 0 }, 0x600d_0000 + case])
        .collect();
    assert_eq!(reports, expected, "{reports:x?}");

    // Only the two valid requests reached the memory handler, and the page ends shared.
    let requests = handlers.requests.lock().unwrap().clone();
    let one = FrameRange::from_gpa(page, 0x1000).unwrap();
    assert_eq!(
        requests
            .iter()
            .map(|r| (r.range(), r.to()))
            .collect::<Vec<_>>(),
        [(one, Attributes::PRIVATE), (one, Attributes::empty())]
    );
    let data = FrameRange::from_gpa(DATA.0, DATA.1).unwrap();
    assert!(
        vm.mem
            .attributes()
            .range_is(data, Attributes::empty())
            .unwrap()
    );
}
