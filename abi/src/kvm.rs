// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! KVM values that kvm-bindings 0.14 does not carry and that more than one veil crate
//! needs, each defined once with its kernel source.

/// `KVM_HC_MAP_GPA_RANGE`: the hypercall number of a conversion request, and its bit in
/// `KVM_CAP_EXIT_HYPERCALL`.
///
/// Source: `include/uapi/linux/kvm_para.h`.
pub const KVM_HC_MAP_GPA_RANGE: u64 = 12;

/// `KVM_EXIT_HYPERCALL_LONG_MODE`: bit 0 of `kvm_run.hypercall.flags`, set when the guest
/// made the hypercall from 64-bit mode. When clear, the arguments are 32-bit.
///
/// Source: `arch/x86/include/uapi/asm/kvm.h`. Before Linux 6.8 the field was a `u32`
/// called `longmode`; the low bit means the same in both layouts, and the upper half of
/// the 64-bit field may hold stale bytes on older kernels, so only bit 0 is read.
pub const KVM_EXIT_HYPERCALL_LONG_MODE: u64 = 1 << 0;
