// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Whether this test runs where software-protected VMs exist.
//!
//! The conformance tests need a KVM that offers `KVM_X86_SW_PROTECTED_VM`: the testbed
//! kernel booted by `testbed/run.sh`. Elsewhere (a host whose KVM lacks that VM type,
//! or no KVM at all) each test prints why it does not apply and returns, unless
//! `VEIL_REQUIRE_SWPROT=1` is set, which the testbed does inside its VM: there a
//! missing capability is a failure. `VEIL_REQUIRE_KVM` is not used here, because a
//! host can have a working `/dev/kvm` without this VM type.

use kvm_bindings::{KVM_CAP_VM_TYPES, KVM_X86_SW_PROTECTED_VM};
use kvm_ioctls::Kvm;

/// The environment variable that turns a missing software-protected VM type from a
/// skip into a failure.
pub const REQUIRE_SWPROT: &str = "VEIL_REQUIRE_SWPROT";

/// Opens `/dev/kvm` and checks it offers software-protected VMs.
fn probe() -> Result<Kvm, String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let types = kvm.check_extension_raw(libc::c_ulong::from(KVM_CAP_VM_TYPES));
    let wanted = 1u64 << KVM_X86_SW_PROTECTED_VM;
    if types < 0 || (types as u64) & wanted == 0 {
        return Err(format!(
            "this KVM offers VM types {types:#x} (KVM_CAP_VM_TYPES), without \
             the software-protected type {KVM_X86_SW_PROTECTED_VM}"
        ));
    }
    Ok(kvm)
}

/// Returns KVM when it offers software-protected VMs.
///
/// Otherwise prints why the test `test` does not apply here and returns `None`, or
/// panics with that reason when `VEIL_REQUIRE_SWPROT=1`.
pub fn sw_protected_or_skip(test: &str) -> Option<Kvm> {
    match probe() {
        Ok(kvm) => Some(kvm),
        Err(reason) if veil_tests::required(REQUIRE_SWPROT) => {
            panic!("{test}: {reason}, and {REQUIRE_SWPROT}=1 forbids skipping")
        }
        Err(reason) => {
            veil_tests::skip(
                test,
                &format!(
                    "{reason}; it runs in the testbed (testbed/conformance.sh), and \
                     {REQUIRE_SWPROT}=1 makes this a failure"
                ),
            );
            None
        }
    }
}
