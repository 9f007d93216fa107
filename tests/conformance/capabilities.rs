// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The testbed's KVM offers everything the attributes flavor needs.

use kvm_bindings::{KVM_CAP_EXIT_HYPERCALL, KVM_MEMORY_ATTRIBUTE_PRIVATE};
use kvm_ioctls::Cap;
use veil_attrs::Attributes;

use crate::testbed::sw_protected_or_skip;
use crate::vm::{KVM_HC_MAP_GPA_RANGE, SwVm};

#[test]
fn software_protected_vms_offer_private_memory() {
    let Some(kvm) = sw_protected_or_skip("software_protected_vms_offer_private_memory") else {
        return;
    };
    let vm = SwVm::new(&kvm);
    // veil's PRIVATE is KVM's PRIVATE, and it is the only attribute KVM offers here.
    assert_eq!(
        Attributes::PRIVATE.bits(),
        u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE)
    );
    assert_eq!(
        vm.vm.check_extension_int(Cap::MemoryAttributes) as u64,
        Attributes::PRIVATE.bits(),
        "KVM_CAP_MEMORY_ATTRIBUTES of a software-protected VM"
    );
    for cap in [Cap::GuestMemfd, Cap::UserMemory2, Cap::MemoryFaultInfo] {
        assert!(vm.vm.check_extension(cap), "{cap:?} missing");
    }
    let exits = kvm.check_extension_raw(libc::c_ulong::from(KVM_CAP_EXIT_HYPERCALL));
    assert_ne!(
        exits as u64 & (1 << KVM_HC_MAP_GPA_RANGE),
        0,
        "KVM_CAP_EXIT_HYPERCALL = {exits:#x} lacks MAP_GPA_RANGE"
    );
    // A default VM has no private memory: the capability is per VM type.
    let default = kvm.create_vm().expect("KVM_CREATE_VM(default)");
    assert_eq!(default.check_extension_int(Cap::MemoryAttributes), 0);
}
