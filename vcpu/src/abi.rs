// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! KVM ABI values that kvm-bindings 0.14 does not carry, each defined once with its
//! kernel source, and the values veil adds on top (the port-I/O hypercall).

pub use veil_abi::kvm::{KVM_EXIT_HYPERCALL_LONG_MODE, KVM_HC_MAP_GPA_RANGE};

/// Page-size hint of a MAP_GPA_RANGE request: 4 KiB (`KVM_MAP_GPA_RANGE_PAGE_SZ_4K`).
///
/// Source: `arch/x86/include/uapi/asm/kvm_para.h`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_4K: u64 = 0;

/// Page-size hint of a MAP_GPA_RANGE request: 2 MiB (`KVM_MAP_GPA_RANGE_PAGE_SZ_2M`).
///
/// Source: `arch/x86/include/uapi/asm/kvm_para.h`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_2M: u64 = 1 << 0;

/// Page-size hint of a MAP_GPA_RANGE request: 1 GiB (`KVM_MAP_GPA_RANGE_PAGE_SZ_1G`).
///
/// Source: `arch/x86/include/uapi/asm/kvm_para.h`.
pub const KVM_MAP_GPA_RANGE_PAGE_SZ_1G: u64 = 1 << 1;

/// The page-size field of the MAP_GPA_RANGE attribute word: bits 3:0.
pub const MAP_GPA_RANGE_PAGE_SIZE_MASK: u64 = 0xf;

/// `KVM_MAP_GPA_RANGE_ENCRYPTED` (`KVM_MAP_GPA_RANGE_ENC_STAT(1)`, bit 4): the range is
/// to become private. Its absence (`KVM_MAP_GPA_RANGE_DECRYPTED`) means to-shared.
///
/// Source: `arch/x86/include/uapi/asm/kvm_para.h`.
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;

/// Bits 63:5 of the MAP_GPA_RANGE attribute word, which no ABI defines: they must be zero.
pub const MAP_GPA_RANGE_RESERVED_MASK: u64 =
    !(KVM_MAP_GPA_RANGE_ENCRYPTED | MAP_GPA_RANGE_PAGE_SIZE_MASK);

/// The I/O port of veil's port-I/O hypercall.
///
/// On hosts where guest `vmcall`/`vmmcall` cannot reach userspace, a guest loads the
/// registers exactly as for `KVM_HC_MAP_GPA_RANGE` (`rax` = 12, `rbx` = gpa, `rcx` =
/// number of 4 KiB pages, `rdx` = attribute word) and executes `out 0x5e, al` instead of
/// the hypercall instruction; the result comes back in `rax`, with the same values as
/// `hypercall.ret` (see [`HypercallResult`](crate::HypercallResult)). The data written
/// by `out` is ignored.
///
/// The port fits the 8-bit immediate form of `out`, so `dx` stays free for the attribute
/// word. 0x5e lies in the 0x44-0x5f block that PC chipsets leave unassigned (the PIT
/// decodes 0x40-0x43; Super I/O configuration sits at 0x2e/0x2f or 0x4e/0x4f).
pub const HYPERCALL_PORT: u16 = 0x5e;
