// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The in-place flavor: one mmap-able guest_memfd holds the memory in both states; veil
//! tracks the state and makes private ranges inaccessible in its own view (the pKVM style,
//! and the guest_memfd-mmap world of Linux 6.18 and later).

use super::{MISSING_GMEM, MISSING_USER_MEMORY2, guest_memfd};
use crate::backend::{GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP};
use crate::builder::BuildError;
use crate::caps::RawProbe;
use crate::model::{
    Backing, BackingEnv, ContentPolicy, Flavor, KvmAccess, KvmSideMapping, MemoryModel, RegionPlan,
};
use crate::region::RegionSpec;

const NEEDED_FLAGS: u64 = GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED;
const MISSING_GMEM_MMAP: &str =
    "KVM_CAP_GUEST_MEMFD_FLAGS (244) with GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED";

/// See the module documentation.
pub(crate) struct InPlace;

impl MemoryModel for InPlace {
    fn name(&self) -> &'static str {
        "in-place"
    }

    fn honours(&self, _policy: ContentPolicy) -> bool {
        true
    }

    fn keeps_contents(&self, policy: ContentPolicy) -> bool {
        policy != ContentPolicy::Discard
    }

    /// An mmap-able, initially shared guest_memfd.
    fn support(&self, p: &RawProbe) -> Result<u32, Vec<String>> {
        let found = p
            .usable_vm_types()
            .find(|t| t.guest_memfd && t.guest_memfd_flags & NEEDED_FLAGS == NEEDED_FLAGS);
        let mut missing = Vec::new();
        if found.is_none() {
            if !p.usable_vm_types().any(|t| t.guest_memfd) {
                missing.push(MISSING_GMEM.to_string());
            }
            missing.push(MISSING_GMEM_MMAP.to_string());
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
        let (flavor, range) = (Flavor::IN_PLACE, spec.range()?);
        if spec.hugetlb {
            return Err(BuildError::HugetlbUnsupported { flavor, range });
        }
        if env.guest_memfd_source().is_none() {
            return Err(BuildError::NeedsGuestMemfd { flavor, range });
        }
        let flags = spec.guest_memfd_flags.unwrap_or(NEEDED_FLAGS);
        if flags & NEEDED_FLAGS != NEEDED_FLAGS {
            return Err(BuildError::GuestMemfdFlags {
                flavor,
                range,
                flags,
                needed: NEEDED_FLAGS,
            });
        }
        Ok(())
    }

    fn back(&self, spec: &RegionSpec, env: &BackingEnv<'_>) -> Result<Backing, BuildError> {
        let flags = spec.guest_memfd_flags.unwrap_or(NEEDED_FLAGS);
        let memory = guest_memfd(Flavor::IN_PLACE, spec, env, flags)?;
        memory.check_mappable().map_err(super::backend(spec))?;
        let kvm = match env.kvm_side_mapping() {
            KvmSideMapping::Separate => KvmAccess::OwnMapping,
            KvmSideMapping::Omitted => KvmAccess::None,
        };
        Ok(Backing::new(memory).kvm_access(kvm))
    }

    fn plan(&self, region: &mut RegionPlan<'_>) {
        super::protect_host_view(region);
    }
}
