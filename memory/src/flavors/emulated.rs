// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The emulated flavor: as in-place, on a plain memfd. It runs on any KVM, and hardens a
//! VMM against touching guest memory it should not.

use super::memfd;
use crate::backend::HUGE_PAGE_SIZE;
use crate::builder::BuildError;
use crate::caps::RawProbe;
use crate::model::{Backing, BackingEnv, ContentPolicy, KvmAccess, MemoryModel, RegionPlan};
use crate::region::RegionSpec;

/// See the module documentation.
pub(crate) struct Emulated;

impl MemoryModel for Emulated {
    fn name(&self) -> &'static str {
        "emulated"
    }

    fn honours(&self, _policy: ContentPolicy) -> bool {
        true
    }

    fn keeps_contents(&self, policy: ContentPolicy) -> bool {
        policy != ContentPolicy::Discard
    }

    /// Any KVM that can create a default VM.
    fn support(&self, p: &RawProbe) -> Result<u32, Vec<String>> {
        match p.usable_vm_types().find(|t| t.vm_type == 0) {
            Some(t) => Ok(t.vm_type),
            None => Err(vec!["a default VM (KVM_CREATE_VM with type 0)".to_string()]),
        }
    }

    /// A memfd; KVM always gets a mapping of its own (it has nothing else to reach a
    /// memfd through). On huge pages the host view's protection changes in whole 2 MiB
    /// pages only.
    fn back(&self, spec: &RegionSpec, _env: &BackingEnv<'_>) -> Result<Backing, BuildError> {
        let memory = memfd(spec)?;
        let granule = if memory.is_hugetlb() {
            HUGE_PAGE_SIZE
        } else {
            veil_attrs::PAGE_SIZE
        };
        Ok(Backing::new(memory)
            .kvm_access(KvmAccess::OwnMapping)
            .granule(granule))
    }

    fn plan(&self, region: &mut RegionPlan<'_>) {
        super::protect_host_view(region);
    }
}
