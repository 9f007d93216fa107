// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A pKVM-style backend: the guest ABI of Linux's `drivers/virt/coco/pkvm-guest` on
//! veil's memory, vCPU and launch seams.
//!
//! A pKVM guest starts with all its memory private, asks the hypervisor for the granule
//! it shares in (`HYP_MEMINFO`), and shares (`MEM_SHARE`) or unshares (`MEM_UNSHARE`) one
//! granule per call, with the granule's guest-physical address in `x1` and `x2`, `x3`
//! zero; anything but `SMCCC_RET_SUCCESS` is a failure. Here the calls arrive on x86 over
//! veil's port-I/O transport (function id in `rax`, `x1`..`x3` in `rbx`, `rcx`, `rdx`,
//! the result in `rax`), contents survive both directions (pKVM shares pages in place),
//! and the host's view of a page loses access when the guest unshares it.
//!
//! The backend is three implementations of veil's traits: [`PkvmMemory`] (a memory model:
//! in-place memory that only preserves), [`PkvmAbi`] (a hypercall ABI) and
//! [`PkvmLaunch`] (a launch technology that makes RAM private at launch and routes the
//! ABI).

use std::sync::Arc;

use veil_vmm::veil_memory::veil_attrs::{Attributes, PAGE_SIZE};
use veil_vmm::veil_memory::{
    Backing, BackingEnv, BuildError, ContentPolicy, Flavor, MemoryModel, RawProbe, RegionPlan,
    RegionSpec,
};
use veil_vmm::veil_vcpu::{
    AbiRequest, ExitRouting, GuestLayout, Hypercall, HypercallAbi, MapGpaRange, PageSize, Refusal,
    RequestOutcome,
};
use veil_vmm::{Launch, PlainKvm};

/// The vendor-hypervisor SMCCC service of the function ids below: fast call, SMC64,
/// owner 6 (`ARM_SMCCC_CALL_VAL(ARM_SMCCC_FAST_CALL, ARM_SMCCC_SMC_64,
/// ARM_SMCCC_OWNER_VENDOR_HYP, n)`, `include/linux/arm-smccc.h`).
const VENDOR_HYP_64: u64 = 0xc600_0000;
/// `ARM_SMCCC_VENDOR_HYP_KVM_HYP_MEMINFO_FUNC_ID`: the granule shares work in.
pub const HYP_MEMINFO: u64 = VENDOR_HYP_64 | 2;
/// `ARM_SMCCC_VENDOR_HYP_KVM_MEM_SHARE_FUNC_ID`: share one granule with the host.
pub const MEM_SHARE: u64 = VENDOR_HYP_64 | 3;
/// `ARM_SMCCC_VENDOR_HYP_KVM_MEM_UNSHARE_FUNC_ID`: take one granule back.
pub const MEM_UNSHARE: u64 = VENDOR_HYP_64 | 4;

/// `SMCCC_RET_SUCCESS`.
pub const SMCCC_RET_SUCCESS: u64 = 0;
/// `SMCCC_RET_NOT_SUPPORTED` (-1): a function this ABI does not have.
pub const SMCCC_RET_NOT_SUPPORTED: u64 = -1i64 as u64;
/// `SMCCC_RET_INVALID_PARAMETER` (-3): a bad address or a reserved argument set.
pub const SMCCC_RET_INVALID_PARAMETER: u64 = -3i64 as u64;

/// The granule: one 4 KiB page per call, as pKVM on a 4 KiB-page host.
pub const GRANULE: u64 = PAGE_SIZE;

/// Why a pKVM call was refused.
#[derive(Debug, thiserror::Error)]
pub enum PkvmError {
    /// The function id is in the vendor-hypervisor range but not one of the three.
    #[error("unknown pKVM function {0:#x}")]
    UnknownFunction(u64),
    /// `x2` or `x3` was not zero.
    #[error("reserved arguments {x2:#x}, {x3:#x} of {function:#x} are not zero")]
    ReservedArguments {
        /// The call.
        function: u64,
        /// `x2`.
        x2: u64,
        /// `x3`.
        x3: u64,
    },
    /// The address is not one granule of guest memory (veil's validation said why).
    #[error("{function:#x} of {ipa:#x}")]
    Address {
        /// The call.
        function: u64,
        /// The address.
        ipa: u64,
        /// veil's validation.
        #[source]
        source: veil_vmm::veil_vcpu::RequestError,
    },
}

/// pKVM's guest ABI as a veil hypercall ABI.
#[derive(Debug, Clone, Copy, Default)]
pub struct PkvmAbi;

impl HypercallAbi for PkvmAbi {
    fn name(&self) -> &'static str {
        "pKVM"
    }

    /// The whole vendor-hypervisor SMC64 range: functions of it this ABI lacks are
    /// answered `SMCCC_RET_NOT_SUPPORTED`, as pKVM does.
    fn claims(&self, call: &Hypercall) -> bool {
        call.number() & 0xffff_0000 == VENDOR_HYP_64
    }

    fn decode(&self, call: &Hypercall, layout: &GuestLayout) -> Result<AbiRequest, Refusal> {
        let function = call.number();
        let to = match function {
            HYP_MEMINFO => return Ok(AbiRequest::Answer(GRANULE)),
            MEM_SHARE => Attributes::empty(),
            MEM_UNSHARE => Attributes::PRIVATE,
            other => {
                return Err(Refusal::new(
                    SMCCC_RET_NOT_SUPPORTED,
                    PkvmError::UnknownFunction(other),
                ));
            }
        };
        let (ipa, x2, x3) = (call.arg(0), call.arg(1), call.arg(2));
        if x2 != 0 || x3 != 0 {
            return Err(Refusal::new(
                SMCCC_RET_INVALID_PARAMETER,
                PkvmError::ReservedArguments { function, x2, x3 },
            ));
        }
        // One granule, validated against the guest's memory by veil.
        MapGpaRange::new(ipa, GRANULE / PAGE_SIZE, to, PageSize::Size4K, layout)
            .map(AbiRequest::Convert)
            .map_err(|source| {
                Refusal::new(
                    SMCCC_RET_INVALID_PARAMETER,
                    PkvmError::Address {
                        function,
                        ipa,
                        source,
                    },
                )
            })
    }

    /// pKVM has no "try again": a conversion veil could not do now is a failed call.
    fn answer(&self, _call: &Hypercall, outcome: RequestOutcome) -> u64 {
        match outcome {
            RequestOutcome::Done => SMCCC_RET_SUCCESS,
            RequestOutcome::Retry | RequestOutcome::Refused => SMCCC_RET_INVALID_PARAMETER,
        }
    }
}

/// pKVM's memory: one guest_memfd holds a page whichever side it is on, so sharing and
/// unsharing keep contents; the host view of a private page is inaccessible. It is veil's
/// in-place model that refuses any content policy but `Preserve`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PkvmMemory;

/// The pKVM-style flavor.
pub const PKVM: Flavor = Flavor::new(&PkvmMemory);

impl MemoryModel for PkvmMemory {
    fn name(&self) -> &'static str {
        "pkvm"
    }

    fn honours(&self, policy: ContentPolicy) -> bool {
        policy == ContentPolicy::Preserve
    }

    fn keeps_contents(&self, policy: ContentPolicy) -> bool {
        policy == ContentPolicy::Preserve
    }

    fn support(&self, probe: &RawProbe) -> Result<u32, Vec<String>> {
        Flavor::IN_PLACE.model().support(probe)
    }

    fn check(&self, spec: &RegionSpec, env: &BackingEnv<'_>) -> Result<(), BuildError> {
        Flavor::IN_PLACE.model().check(spec, env)
    }

    fn back(&self, spec: &RegionSpec, env: &BackingEnv<'_>) -> Result<Backing, BuildError> {
        Flavor::IN_PLACE.model().back(spec, env)
    }

    fn plan(&self, region: &mut RegionPlan<'_>) {
        Flavor::IN_PLACE.model().plan(region)
    }
}

/// The pKVM-style launch: plain KVM's VM and vCPU setup, all RAM private at launch, and
/// [`PkvmAbi`] routed before veil's own hypercalls.
#[derive(Debug, Clone, Copy, Default)]
pub struct PkvmLaunch;

impl Launch for PkvmLaunch {
    fn name(&self) -> &'static str {
        "pkvm"
    }

    fn vm_types(&self) -> &[u32] {
        PlainKvm.vm_types()
    }

    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        ExitRouting {
            hypercalls: routing.hypercalls.register(Arc::new(PkvmAbi)),
            ..routing
        }
    }

    fn private_at_launch(&self) -> bool {
        true
    }
}
