// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Turning on the VM-level exits this crate handles.

use kvm_bindings::{KVM_CAP_EXIT_HYPERCALL, kvm_enable_cap};
use kvm_ioctls::{Cap, VmFd};

use crate::abi::KVM_HC_MAP_GPA_RANGE;

/// Errors enabling conversion-request exits.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// `KVM_CAP_EXIT_HYPERCALL` does not offer `KVM_HC_MAP_GPA_RANGE` on this host.
    #[error(
        "KVM_CAP_EXIT_HYPERCALL does not offer KVM_HC_MAP_GPA_RANGE (bit 12) here: mask {mask:#x}"
    )]
    Unsupported {
        /// The bitmask of hypercalls KVM can forward (`KVM_CHECK_EXTENSION`).
        mask: i32,
    },
    /// `KVM_ENABLE_CAP` failed.
    #[error("enabling KVM_CAP_EXIT_HYPERCALL failed")]
    Enable {
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// Makes KVM forward the guest's `KVM_HC_MAP_GPA_RANGE` hypercalls to userspace as
/// `KVM_EXIT_HYPERCALL`, so they reach [`MemoryHandler::map_gpa_range`].
///
/// Without it KVM answers the guest itself (`-KVM_ENOSYS`) and no conversion happens.
/// The capability is a bitmask of hypercall numbers, read as an integer; only bit 12 is
/// asked for. The port-I/O hypercall needs no capability.
///
/// [`MemoryHandler::map_gpa_range`]: crate::MemoryHandler::map_gpa_range
pub fn enable_conversion_exits(vm: &VmFd) -> Result<(), CapError> {
    let bit = 1u64 << KVM_HC_MAP_GPA_RANGE;
    let mask = vm.check_extension_int(Cap::ExitHypercall);
    if mask <= 0 || (mask as u64) & bit == 0 {
        return Err(CapError::Unsupported { mask });
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_EXIT_HYPERCALL,
        ..Default::default()
    };
    cap.args[0] = bit;
    vm.enable_cap(&cap)
        .map_err(|source| CapError::Enable { source })
}
