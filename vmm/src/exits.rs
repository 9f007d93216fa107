// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`MemoryExits`]: veil-memory answering veil-vcpu's memory exits.
//!
//! veil-vcpu validates a conversion request against the guest's layout before any
//! handler runs; veil-memory carries out conversions in each region's flavor. This module
//! only translates between the two: a guest request becomes
//! [`HostSafeMemory::convert`], and veil-memory's error becomes the answer the guest reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use veil_attrs::{Attributes, FrameRange};
use veil_memory::{ConvertError, HostSafeMemory, Region};
use veil_vcpu::{BoxError, GuestLayout, MapGpaRange, MemoryFault, MemoryHandler, RequestOutcome};

/// A conversion veil-memory could not carry out for a reason on the host's side.
///
/// veil-vcpu stops the VM with it (wrapped in its `RunError`). veil-memory undid the
/// conversion, so its record of page states is as before, except after
/// [`ConvertError::RollbackFailed`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryExitError {
    /// Converting `range` to `to` failed.
    #[error("converting {range} to {to} failed")]
    Convert {
        /// The frames the conversion was for.
        range: FrameRange,
        /// The state asked for.
        to: Attributes,
        /// What veil-memory reported.
        #[source]
        source: ConvertError,
    },
}

/// veil-memory's guest memory as veil-vcpu's [`MemoryHandler`].
///
/// - [`map_gpa_range`](MemoryHandler::map_gpa_range) converts the requested range with
///   [`HostSafeMemory::convert`] and answers as [`answer_request`] decides.
/// - [`memory_fault`](MemoryHandler::memory_fault) converts the faulting range to the
///   faulting access's state (veil-vcpu calls it only under
///   `FaultPolicy::ConvertImplicitly`). A range already in that state is left alone,
///   sub-state tags included, and reported as zero frames changed, so veil-vcpu's
///   "cannot be fixed by converting" rule applies.
///
/// The layout veil-vcpu validates requests against is computed once, from the memory's
/// regions: regions never change after veil-memory builds them.
#[derive(Debug)]
pub struct MemoryExits {
    memory: Arc<HostSafeMemory>,
    layout: GuestLayout,
    counters: Counters,
}

/// What the guest's conversion requests and memory faults came to, as [`MemoryExits`]
/// answered them.
///
/// Requests that veil-vcpu refused before they got here (outside guest memory, unknown
/// attribute bits, a number no ABI claims) are counted in its exit statistics
/// (`ExitStats::refused`); a request converting pages that are already in the state asked
/// for is done and moves no page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryExitStats {
    /// Conversion requests handled.
    pub requests: u64,
    /// Of those, refused because the memory cannot convert the range as asked (the guest
    /// read `EINVAL`).
    pub refused: u64,
    /// Of those, answered "retry" (`EAGAIN`).
    pub retried: u64,
    /// Of those, failed on the host's side; the VM stopped.
    pub failed: u64,
    /// Memory faults converted implicitly.
    pub faults: u64,
    /// Pages made private by requests and faults.
    pub pages_to_private: u64,
    /// Pages made shared by requests and faults.
    pub pages_to_shared: u64,
}

impl std::fmt::Display for MemoryExitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} conversion requests ({} refused, {} retried, {} failed), {} memory faults; \
             {} pages to private, {} to shared",
            self.requests,
            self.refused,
            self.retried,
            self.failed,
            self.faults,
            self.pages_to_private,
            self.pages_to_shared
        )
    }
}

/// The live counters behind [`MemoryExitStats`]; every vCPU thread adds to them.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    faults: AtomicU64,
    pages_to_private: AtomicU64,
    pages_to_shared: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts the pages a successful conversion to `to` moved across.
    fn moved(&self, done: &veil_memory::Conversion, to: Attributes) {
        let crossed: u64 = done
            .changes
            .iter()
            .filter(|c| c.old.attributes.is_private() != to.is_private())
            .map(|c| c.range.pages())
            .sum();
        let side = if to.is_private() {
            &self.pages_to_private
        } else {
            &self.pages_to_shared
        };
        Self::add(side, crossed);
    }

    fn snapshot(&self) -> MemoryExitStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MemoryExitStats {
            requests: get(&self.requests),
            refused: get(&self.refused),
            retried: get(&self.retried),
            failed: get(&self.failed),
            faults: get(&self.faults),
            pages_to_private: get(&self.pages_to_private),
            pages_to_shared: get(&self.pages_to_shared),
        }
    }
}

impl MemoryExits {
    /// Answers memory exits with `memory`.
    pub fn new(memory: Arc<HostSafeMemory>) -> Self {
        let layout = GuestLayout::new(memory.regions().iter().map(Region::range));
        MemoryExits {
            memory,
            layout,
            counters: Counters::default(),
        }
    }

    /// The guest memory conversions act on.
    pub fn memory(&self) -> &Arc<HostSafeMemory> {
        &self.memory
    }

    /// What the guest's requests and faults came to so far.
    pub fn stats(&self) -> MemoryExitStats {
        self.counters.snapshot()
    }
}

/// The answer to a guest's conversion request, from what the conversion returned.
///
/// | veil-memory returned | the guest reads | the VM |
/// | --- | --- | --- |
/// | a [`veil_memory::Conversion`] | 0 ([`RequestOutcome::Done`]) | runs on |
/// | [`ConvertError::Range`], [`ConvertError::Gap`], [`ConvertError::GranuleUnaligned`] | `EINVAL` ([`RequestOutcome::Refused`]) | runs on |
/// | [`ConvertError::Step`] with `EINTR` or `EAGAIN` | `EAGAIN` ([`RequestOutcome::Retry`]) | runs on |
/// | any other [`ConvertError::Step`], [`ConvertError::RollbackFailed`] | `EINVAL` | stops with the error |
///
/// The first three errors are the guest's doing: the range is one this memory cannot
/// convert as asked (veil-vcpu already refuses ranges outside the layout, so in
/// practice this is a range that cuts a huge page). Nothing changed, so the guest hears
/// `EINVAL` like any other bad request and goes on.
///
/// A failed system call is the host's problem, not the guest's: telling the guest its
/// request was invalid would be a lie, and retrying a failure that persists (`ENOMEM`
/// from `vm.max_map_count`, say) would loop forever. So the VM stops with the error,
/// and the VMM decides. veil-memory undid the conversion, so nothing is left half done.
/// Only an interrupted call (`EINTR`) or one the kernel asks to repeat (`EAGAIN`) is
/// retried by the guest. [`ConvertError::RollbackFailed`] always stops the VM: KVM or
/// the host view may then disagree with veil's record.
pub fn answer_request(
    result: Result<veil_memory::Conversion, ConvertError>,
) -> Result<RequestOutcome, ConvertError> {
    match result {
        Ok(_) => Ok(RequestOutcome::Done),
        Err(
            ConvertError::Range(_)
            | ConvertError::Gap { .. }
            | ConvertError::GranuleUnaligned { .. },
        ) => Ok(RequestOutcome::Refused),
        Err(e @ ConvertError::Step { .. }) => match e.errno() {
            Some(libc::EINTR | libc::EAGAIN) => Ok(RequestOutcome::Retry),
            _ => Err(e),
        },
        Err(e) => Err(e),
    }
}

impl MemoryHandler for MemoryExits {
    fn layout(&self) -> &GuestLayout {
        &self.layout
    }

    fn map_gpa_range(&self, request: &MapGpaRange) -> Result<RequestOutcome, BoxError> {
        let (range, to) = (request.range(), request.to());
        let c = &self.counters;
        Counters::add(&c.requests, 1);
        let result = self.memory.convert(range, to);
        match &result {
            Ok(done) => c.moved(done, to),
            Err(e) => log::debug!("{request}: {e}"),
        }
        let answer = answer_request(result);
        match &answer {
            Ok(RequestOutcome::Refused) => Counters::add(&c.refused, 1),
            Ok(RequestOutcome::Retry) => Counters::add(&c.retried, 1),
            Ok(_) => {}
            Err(_) => Counters::add(&c.failed, 1),
        }
        answer.map_err(|source| MemoryExitError::Convert { range, to, source }.into())
    }

    fn memory_fault(&self, fault: &MemoryFault, range: FrameRange) -> Result<u64, BoxError> {
        let to = fault.access().attributes();
        // Already in the access's state: converting cannot fix the fault, and would only
        // drop sub-state tags.
        if self.memory.attributes().range_is(range, to)? {
            return Ok(0);
        }
        match self.memory.convert(range, to) {
            Ok(done) => {
                Counters::add(&self.counters.faults, 1);
                self.counters.moved(&done, to);
                Ok(done.pages_changed)
            }
            Err(source) => Err(MemoryExitError::Convert { range, to, source }.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use veil_attrs::{Gfn, RangeError, Tag};
    use veil_memory::{ContentPolicy, Flavor, HostAccessError, RegionSpec, StepKind, Store};
    use veil_vcpu::{KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED, MapGpaRangeArgs};

    const MIB: u64 = 1 << 20;

    fn fr(start: u64, pages: u64) -> FrameRange {
        FrameRange::new(Gfn(start), pages).unwrap()
    }

    /// Emulated memory (no KVM needed): [0, 1) MiB preserving, [1, 2) MiB discarding,
    /// a gap, then [4, 5) MiB preserving.
    fn exits() -> MemoryExits {
        let memory = HostSafeMemory::builder()
            .region(RegionSpec::new(0, MIB, Flavor::EMULATED).policy(ContentPolicy::Preserve))
            .region(RegionSpec::new(MIB, MIB, Flavor::EMULATED))
            .region(RegionSpec::new(4 * MIB, MIB, Flavor::EMULATED).policy(ContentPolicy::Preserve))
            .build()
            .unwrap();
        MemoryExits::new(Arc::new(memory))
    }

    /// A validated request, as veil-vcpu hands it over.
    fn request(exits: &MemoryExits, gpa: u64, pages: u64, private: bool) -> MapGpaRange {
        MapGpaRangeArgs {
            nr: KVM_HC_MAP_GPA_RANGE,
            gpa,
            pages,
            attributes: if private {
                KVM_MAP_GPA_RANGE_ENCRYPTED
            } else {
                0
            },
            long_mode: true,
        }
        .validate(exits.layout())
        .unwrap()
    }

    fn fault(gpa: u64, size: u64, private: bool) -> MemoryFault {
        MemoryFault {
            gpa,
            size,
            flags: if private { 1 << 3 } else { 0 },
        }
    }

    #[test]
    fn layout_is_the_regions_with_adjacent_ones_merged() {
        let e = exits();
        assert_eq!(e.layout().ranges(), [fr(0, 512), fr(1024, 256)]);
        // Across the two adjacent regions: accepted. Into the gap: refused by veil-vcpu
        // before the handler is ever called.
        assert!(e.layout().contains(&fr(255, 2)));
        let across_gap = MapGpaRangeArgs {
            nr: KVM_HC_MAP_GPA_RANGE,
            gpa: 2 * MIB - 0x1000,
            pages: 2,
            attributes: KVM_MAP_GPA_RANGE_ENCRYPTED,
            long_mode: true,
        };
        assert!(across_gap.validate(e.layout()).is_err());
    }

    #[test]
    fn request_converts_and_the_host_loses_access() {
        let e = exits();
        let mem = e.memory().clone();
        // Five bytes in each region.
        mem.host_write(0xf_fffb, b"guest data").unwrap();

        // Across the boundary of the preserving and the discarding region.
        let to_private = request(&e, 0xf_f000, 2, true);
        assert_eq!(e.map_gpa_range(&to_private).unwrap(), RequestOutcome::Done);
        assert!(
            mem.attributes()
                .range_is(fr(0xff, 2), Attributes::PRIVATE)
                .unwrap()
        );
        let mut buf = [0u8; 10];
        let err = mem.host_read(0xf_fffb, &mut buf).unwrap_err();
        assert!(
            matches!(err, HostAccessError::Private { addr: 0xf_fffb, len: 10, private } if private == fr(0xff, 2)),
            "{err}"
        );
        assert_eq!(buf, [0; 10], "nothing was copied");
        let calls = mem.stats();

        // The same request again: done, and no system call.
        assert_eq!(e.map_gpa_range(&to_private).unwrap(), RequestOutcome::Done);
        assert_eq!(mem.stats(), calls);

        // Back to shared: the preserving region kept its bytes, the discarding one did not.
        let to_shared = request(&e, 0xf_f000, 2, false);
        assert_eq!(e.map_gpa_range(&to_shared).unwrap(), RequestOutcome::Done);
        mem.host_read(0xf_fffb, &mut buf).unwrap();
        assert_eq!(&buf, b"guest\0\0\0\0\0");
        assert_eq!(mem.attributes().run_count(), 1);

        // Three requests, the repeated one moving no page.
        let stats = e.stats();
        assert_eq!(
            stats,
            MemoryExitStats {
                requests: 3,
                pages_to_private: 2,
                pages_to_shared: 2,
                ..MemoryExitStats::default()
            }
        );
        assert_eq!(
            stats.to_string(),
            "3 conversion requests (0 refused, 0 retried, 0 failed), 0 memory faults; \
             2 pages to private, 2 to shared"
        );
    }

    #[test]
    fn guest_caused_refusals_answer_einval() {
        let range = fr(0x100, 1);
        let refused = [
            ConvertError::Range(RangeError::Empty { gpa: 0x1000 }),
            ConvertError::Gap {
                range,
                gap: 0x20_0000,
            },
            ConvertError::GranuleUnaligned {
                range,
                region: fr(0, 512),
                granule: 2 << 20,
            },
        ];
        for e in refused {
            let shown = e.to_string();
            assert_eq!(
                answer_request(Err(e)).unwrap(),
                RequestOutcome::Refused,
                "{shown}"
            );
        }
        assert_eq!(
            answer_request(Ok(veil_memory::Conversion::default())).unwrap(),
            RequestOutcome::Done
        );
    }

    fn step(errno: i32) -> ConvertError {
        ConvertError::Step {
            step: StepKind::Protect { inaccessible: true },
            range: fr(0x100, 1),
            source: io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn failed_system_calls_stop_the_vm_unless_worth_retrying() {
        assert_eq!(
            answer_request(Err(step(libc::EINTR))).unwrap(),
            RequestOutcome::Retry
        );
        assert_eq!(
            answer_request(Err(step(libc::EAGAIN))).unwrap(),
            RequestOutcome::Retry
        );
        let kept = answer_request(Err(step(libc::ENOMEM))).unwrap_err();
        assert_eq!(kept.errno(), Some(libc::ENOMEM));

        let rollback = ConvertError::RollbackFailed {
            step: StepKind::Discard(Store::View),
            range: fr(0x100, 1),
            source: io::Error::from_raw_os_error(libc::EAGAIN),
            undo_step: StepKind::Protect {
                inaccessible: false,
            },
            undo_range: fr(0x100, 1),
            undo_error: io::Error::from_raw_os_error(libc::ENOMEM),
        };
        assert!(
            matches!(
                answer_request(Err(rollback)),
                Err(ConvertError::RollbackFailed { .. })
            ),
            "a failed rollback is never retried"
        );
    }

    #[test]
    fn host_failures_name_the_range_and_keep_the_cause() {
        let e: BoxError = MemoryExitError::Convert {
            range: fr(0x100, 1),
            to: Attributes::PRIVATE,
            source: step(libc::ENOMEM),
        }
        .into();
        assert!(e.to_string().contains("0x100000"), "{e}");
        let cause = e.source().unwrap();
        assert!(cause.to_string().contains("mprotect"), "{cause}");
        assert!(cause.source().is_some(), "the errno is kept");
    }

    #[test]
    fn memory_fault_converts_to_the_access_state() {
        let e = exits();
        let mem = e.memory().clone();
        e.map_gpa_range(&request(&e, 0x10_0000, 4, true)).unwrap();

        // A shared access to two of the four private pages.
        let f = fault(0x10_1800, 0x1000, false);
        let range = f.frames().unwrap();
        assert_eq!(range, fr(0x101, 2));
        assert_eq!(e.memory_fault(&f, range).unwrap(), 2);
        assert!(
            mem.attributes()
                .range_is(range, Attributes::empty())
                .unwrap()
        );
        assert!(
            mem.attributes()
                .range_is(fr(0x100, 1), Attributes::PRIVATE)
                .unwrap()
        );
        assert!(
            mem.attributes()
                .range_is(fr(0x103, 1), Attributes::PRIVATE)
                .unwrap()
        );
        let mut buf = [0u8; 0x2000];
        mem.host_read(0x10_1000, &mut buf).unwrap();

        // A private access to the same pages makes them private again.
        let f = fault(0x10_1000, 0x2000, true);
        assert_eq!(e.memory_fault(&f, range).unwrap(), 2);
        let stats = e.stats();
        assert_eq!((stats.requests, stats.faults), (1, 2));
        assert_eq!((stats.pages_to_private, stats.pages_to_shared), (6, 2));
        assert!(
            mem.attributes()
                .range_is(fr(0x100, 4), Attributes::PRIVATE)
                .unwrap()
        );
    }

    #[test]
    fn memory_fault_in_the_state_already_changes_nothing() {
        let e = exits();
        let mem = e.memory().clone();
        e.map_gpa_range(&request(&e, 0x4_0000, 1, true)).unwrap();
        let tag = Tag::new(7).unwrap();
        assert_eq!(mem.set_tag(fr(0x40, 1), Some(tag)).unwrap(), 1);
        let calls = mem.stats();

        let f = fault(0x4_0000, 0x1000, true);
        assert_eq!(e.memory_fault(&f, fr(0x40, 1)).unwrap(), 0);
        assert_eq!(mem.state(Gfn(0x40)).unwrap().tag, Some(tag), "tag kept");
        assert_eq!(mem.stats(), calls, "no system call");

        let f = fault(0x8_0000, 0x1000, false);
        assert_eq!(e.memory_fault(&f, fr(0x80, 1)).unwrap(), 0);
        assert_eq!(mem.stats(), calls);
    }
}
