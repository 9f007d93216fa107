// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Conformance of veil's private-memory path against real software-protected KVM.
//!
//! These tests need `KVM_X86_SW_PROTECTED_VM`: memory attributes, guest_memfd memslots,
//! memory fault exits and `KVM_HC_MAP_GPA_RANGE` exits. `testbed/conformance.sh` builds
//! this binary statically and runs it in the testbed VM, which has all of them. Run
//! anywhere else, each test says why it does not apply and returns (see [`testbed`]).
//!
//! Two layers of tests:
//!
//! - KVM itself, through `kvm-ioctls` and a `veil-attrs` mirror (`capabilities`,
//!   `attributes`, `faults`, `private_memory`, `hypercalls`; `kvm_conversions`, ignored
//!   by default, is a baseline for the testbed): what the uAPI does on a
//!   software-protected VM, which veil builds on.
//! - veil as the VMM (`veil_*`): veil-vmm's `Vm` in the attributes flavor, its
//!   `MemoryExits` answering the guests' conversion requests and memory faults through
//!   veil-memory, vCPUs run by veil-vcpu's loop, and the scenarios of the kernel
//!   selftests `private_mem_conversions_test` and `private_mem_kvm_exits_test`; and
//!   veil-memory's attributes flavor on its own (`veil_memory`).
//!
//! Guests are real-mode and 64-bit programs kept as assembly source in
//! `conformance/guests/`.

mod guests;
#[path = "../tests/loader_support/mod.rs"]
mod loader_support;
mod testbed;
mod veil_host;
mod vm;

mod attributes;
mod capabilities;
mod faults;
mod hypercalls;
mod kvm_conversions;
mod private_memory;
mod veil_boot;
mod veil_conversions;
mod veil_faults;
mod veil_memory;
mod veil_requests;

/// The guest-physical layout the tests share.
mod layout {
    use crate::vm::SwVm;

    /// Slot 0: where the guest program lives; never private.
    pub const CODE_SLOT: u32 = 0;
    /// Start of the code slot.
    pub const CODE_GPA: u64 = 0;
    /// Size of the code slot.
    pub const CODE_SIZE: u64 = 0x1_0000;
    /// Slot 1: 64 KiB whose private side is a guest_memfd.
    pub const BACKED_SLOT: u32 = 1;
    /// Start of the backed slot.
    pub const BACKED_GPA: u64 = 0x1_0000;
    /// Size of the backed slot.
    pub const BACKED_SIZE: u64 = 0x1_0000;
    /// Slot 2: 64 KiB with no private side.
    pub const PLAIN_SLOT: u32 = 2;
    /// Start of the plain slot.
    pub const PLAIN_GPA: u64 = 0x2_0000;
    /// Size of the plain slot.
    pub const PLAIN_SIZE: u64 = 0x1_0000;
    /// The guest's size as the attribute mirror sees it.
    pub const GUEST_SIZE: u64 = 0x3_0000;

    /// Adds the code slot and, as asked, the backed and the plain slot.
    pub fn populate(vm: &mut SwVm, backed: bool, plain: bool) {
        vm.add_slot(CODE_SLOT, CODE_GPA, CODE_SIZE, false);
        if backed {
            vm.add_slot(BACKED_SLOT, BACKED_GPA, BACKED_SIZE, true);
        }
        if plain {
            vm.add_slot(PLAIN_SLOT, PLAIN_GPA, PLAIN_SIZE, false);
        }
    }

    /// The real-mode segment whose base is `gpa`.
    pub const fn segment(gpa: u64) -> u16 {
        (gpa >> 4) as u16
    }
}
