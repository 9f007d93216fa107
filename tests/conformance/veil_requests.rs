// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Malformed MAP_GPA_RANGE requests from a guest get veil's error result and change
//! nothing, checked from inside the guest (`guests/bad_requests.s`) and by the host.

use std::sync::{Arc, Mutex, PoisonError};

use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{ContentPolicy, ConversionListener, StateChange};
use veil_vcpu::{ExitKind, FaultPolicy, StopReason};

use crate::guests;
use crate::veil_host::{BOOT_SIZE, Devices, attributes_vm, long_mode_vcpu};

/// Guest memory: the boot region and 2 MiB of data after a 2 MiB gap.
const DATA: (u64, u64) = (4 << 20, 2 << 20);

/// Every state change veil-memory carried out, as its listeners hear them.
#[derive(Default)]
struct Changes(Mutex<Vec<(FrameRange, Attributes)>>);

impl ConversionListener for Changes {
    fn converted(&self, change: &StateChange) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((change.range, change.new.attributes));
    }
}

#[test]
fn malformed_map_gpa_range_changes_nothing() {
    let test = "malformed_map_gpa_range_changes_nothing";
    let Some(vm) = attributes_vm(test, &[(0, BOOT_SIZE), DATA], ContentPolicy::Discard) else {
        return;
    };
    let changes = Arc::new(Changes::default());
    let _ = vm.memory().subscribe(changes.clone());
    let page = DATA.0 + 0x3000;
    let end = DATA.0 + DATA.1;
    let vcpu = long_mode_vcpu(&vm, 0, guests::bad_requests(), |r| {
        r.rdi = page;
        r.rsi = end;
    });
    let devices = Devices::new(&vm, None);
    let report = devices.run(&vm, vec![vcpu], FaultPolicy::Refuse);
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "{}",
        report.reason
    );

    // (result, verdict) per case: 22 is EINVAL, as veil writes it to `hypercall.ret`.
    let reports = devices.reports();
    let expected: Vec<u32> = (1..=9)
        .flat_map(|case| [if case <= 7 { 22 } else { 0 }, 0x600d_0000 + case])
        .collect();
    assert_eq!(reports, expected, "{reports:x?}");

    // Every request reached veil, and only the two valid ones changed any state: the
    // page private and back. It ends shared, as does the rest of the data.
    assert_eq!(report.stats().count(ExitKind::Hypercall), 9);
    let one = FrameRange::from_gpa(page, 0x1000).unwrap();
    assert_eq!(
        *changes.0.lock().unwrap(),
        [(one, Attributes::PRIVATE), (one, Attributes::empty())]
    );
    let data = FrameRange::from_gpa(DATA.0, DATA.1).unwrap();
    assert!(
        vm.memory()
            .attributes()
            .range_is(data, Attributes::empty())
            .unwrap()
    );
}
