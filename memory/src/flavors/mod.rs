// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil's own memory models: attributes, in-place and emulated. Each is a
//! [`MemoryModel`](crate::MemoryModel) like any other; the conversion engine knows none of
//! them by name.

mod attributes;
mod emulated;
mod in_place;

pub(crate) use attributes::Attributes;
pub(crate) use emulated::Emulated;
pub(crate) use in_place::InPlace;

use crate::backend::{BackendError, GuestMemfd, SharedMemfd};
use crate::builder::BuildError;
use crate::model::{BackingEnv, ContentPolicy, Flavor, RegionPlan, Store};
use crate::region::RegionSpec;

const MISSING_GMEM: &str = "KVM_CAP_GUEST_MEMFD (234)";
const MISSING_USER_MEMORY2: &str = "KVM_CAP_USER_MEMORY2 (231)";

/// A guest_memfd of `spec`'s size with `flags`, from the environment's source.
fn guest_memfd(
    flavor: Flavor,
    spec: &RegionSpec,
    env: &BackingEnv<'_>,
    flags: u64,
) -> Result<GuestMemfd, BuildError> {
    let range = spec.range()?;
    let source = env
        .guest_memfd_source()
        .ok_or(BuildError::NeedsGuestMemfd { flavor, range })?;
    GuestMemfd::create(source, spec.size, flags).map_err(backend(spec))
}

/// A memfd of `spec`'s size, on huge pages if it asks for them.
fn memfd(spec: &RegionSpec) -> Result<SharedMemfd, BuildError> {
    SharedMemfd::new(spec.size, spec.hugetlb).map_err(backend(spec))
}

fn backend(spec: &RegionSpec) -> impl Fn(BackendError) -> BuildError + '_ {
    move |source| match spec.range() {
        Ok(range) => BuildError::Backend { range, source },
        Err(e) => e,
    }
}

/// The plan of the flavors that protect their host view: one `mprotect` over the span of
/// the changes; under `Discard`, a hole punched per changed run, so that pages of the
/// span that did not change keep their contents.
fn protect_host_view(region: &mut RegionPlan<'_>) {
    let Some(span) = region.span() else { return };
    region.protect(span);
    if region.policy() == ContentPolicy::Discard {
        region.discard_changed_runs(Store::View);
    }
}
