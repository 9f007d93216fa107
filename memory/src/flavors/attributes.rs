// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The attributes flavor: KVM tracks the state (`KVM_SET_MEMORY_ATTRIBUTES`), shared
//! memory lives in a memfd and private memory in a guest_memfd, and the side a conversion
//! stops using is discarded (SNP, TDX, software-protected VMs).

use kvm_bindings::KVM_MEMORY_ATTRIBUTE_PRIVATE;

use super::{MISSING_GMEM, MISSING_USER_MEMORY2, guest_memfd, memfd};
use crate::builder::BuildError;
use crate::caps::RawProbe;
use crate::model::{
    Backing, BackingEnv, ContentPolicy, Flavor, KvmAccess, MemoryModel, RegionPlan, Store,
};
use crate::region::RegionSpec;

const MISSING_VM_TYPE: &str = "a VM type with private memory (KVM_CAP_VM_TYPES, 235)";
const MISSING_ATTRIBUTES: &str =
    "KVM_CAP_MEMORY_ATTRIBUTES (233) with KVM_MEMORY_ATTRIBUTE_PRIVATE";

/// See the module documentation.
pub(crate) struct Attributes;

impl MemoryModel for Attributes {
    fn name(&self) -> &'static str {
        "attributes"
    }

    /// KVM's attributes select which of two backing stores the guest sees, so the bytes
    /// of one side never show on the other: contents cannot be preserved.
    fn honours(&self, policy: ContentPolicy) -> bool {
        policy != ContentPolicy::Preserve
    }

    fn keeps_contents(&self, _policy: ContentPolicy) -> bool {
        false
    }

    /// A VM type whose VMs take `PRIVATE` attributes and guest_memfd.
    fn support(&self, p: &RawProbe) -> Result<u32, Vec<String>> {
        let private = u64::from(KVM_MEMORY_ATTRIBUTE_PRIVATE);
        let found = p
            .usable_vm_types()
            .find(|t| t.memory_attributes & private != 0 && t.guest_memfd);
        let mut missing = Vec::new();
        if found.is_none() {
            if !p.usable_vm_types().any(|t| t.vm_type != 0) {
                missing.push(MISSING_VM_TYPE.to_string());
            }
            if !p
                .usable_vm_types()
                .any(|t| t.memory_attributes & private != 0)
            {
                missing.push(MISSING_ATTRIBUTES.to_string());
            }
            if !p.usable_vm_types().any(|t| t.guest_memfd) {
                missing.push(MISSING_GMEM.to_string());
            }
        }
        if !p.user_memory2 {
            missing.push(MISSING_USER_MEMORY2.to_string());
        }
        match found {
            Some(t) if missing.is_empty() => Ok(t.vm_type),
            _ => Err(missing),
        }
    }

    fn check(&self, spec: &RegionSpec, env: &BackingEnv<'_>) -> Result<(), BuildError> {
        let (flavor, range) = (Flavor::ATTRIBUTES, spec.range()?);
        if env.guest_memfd_source().is_none() {
            return Err(BuildError::NeedsGuestMemfd { flavor, range });
        }
        if !env.has_attributes_vm() {
            return Err(BuildError::NeedsAttributesVm { flavor, range });
        }
        Ok(())
    }

    fn back(&self, spec: &RegionSpec, env: &BackingEnv<'_>) -> Result<Backing, BuildError> {
        let flavor = Flavor::ATTRIBUTES;
        let shared = memfd(spec)?;
        let private = guest_memfd(flavor, spec, env, spec.guest_memfd_flags.unwrap_or(0))?;
        // The host view is never protected, only discarded, so KVM can share it.
        Ok(Backing::new(shared)
            .private(private)
            .kvm_access(KvmAccess::HostView))
    }

    /// One `KVM_SET_MEMORY_ATTRIBUTES` over the span of the changes, then (under
    /// `Discard`) one discard of the side no page in the span uses any more: a page of the
    /// span that did not change already has the target state, so its other side is
    /// unused too.
    fn plan(&self, region: &mut RegionPlan<'_>) {
        let Some(span) = region.span() else { return };
        region.set_attributes(span);
        if region.policy() == ContentPolicy::Discard {
            let unused = if region.to_private() {
                Store::View
            } else {
                Store::GuestMemfd
            };
            region.discard(unused, span);
        }
    }
}
