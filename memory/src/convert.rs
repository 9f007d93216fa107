// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Conversion planning: from the changes veil-attrs reports to the system calls each
//! flavor needs. Pure functions, tested without KVM; the guest memory executes the plan.

use std::fmt;
use std::io;

use smallvec::SmallVec;
use veil_attrs::{Attributes, Change, FrameRange, Gfn, PageState, RangeError};

use crate::region::{ContentPolicy, Flavor};

/// One sub-range whose state a conversion changed, as listeners are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The frames that changed.
    pub range: FrameRange,
    /// Their state before.
    pub old: PageState,
    /// Their state after.
    pub new: PageState,
}

/// The changed sub-ranges of a conversion; a couple are held inline, so the common
/// conversion allocates nothing for them.
pub type StateChanges = SmallVec<[StateChange; 2]>;

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversion {
    /// The pages whose state changed.
    pub pages_changed: u64,
    /// The bytes whose contents were discarded: the pages whose private/shared state
    /// changed in regions that discard (4 KiB each).
    pub bytes_discarded: u64,
    /// Each changed sub-range, in the order the ranges were given and then in address
    /// order.
    pub changes: StateChanges,
}

/// Told about every sub-range a conversion changed, after the conversion, in order.
///
/// For device mappings (VFIO), balloons, snapshots. Listeners run one conversion at a
/// time, in the order the conversions took effect, after the new state is visible to
/// readers. A listener may read guest memory and its state; it must not convert (that
/// deadlocks).
pub trait ConversionListener: Send + Sync {
    /// `change` took effect.
    fn converted(&self, change: &StateChange);
}

/// A system call a conversion issues, as named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `KVM_SET_MEMORY_ATTRIBUTES` to the given attributes.
    SetAttributes(Attributes),
    /// `mprotect` of the host view, to no access (`true`) or read-write (`false`).
    Protect {
        /// Whether the range becomes inaccessible.
        inaccessible: bool,
    },
    /// A punched hole in the guest_memfd.
    DiscardGuestMemfd,
    /// A punched hole in the memfd.
    DiscardMemfd,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKind::SetAttributes(a) => write!(f, "KVM_SET_MEMORY_ATTRIBUTES to {a}"),
            StepKind::Protect { inaccessible: true } => f.write_str("mprotect(PROT_NONE)"),
            StepKind::Protect {
                inaccessible: false,
            } => f.write_str("mprotect(PROT_READ | PROT_WRITE)"),
            StepKind::DiscardGuestMemfd => f.write_str("punching a hole in the guest_memfd"),
            StepKind::DiscardMemfd => f.write_str("punching a hole in the memfd"),
        }
    }
}

/// Why a conversion failed. Whatever the variant, the guest memory's state (veil's
/// record, KVM's attributes, host protections) is as it was before the call, except
/// [`ConvertError::RollbackFailed`].
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The range is unaligned, empty, wraps, or reaches past the end of guest memory.
    #[error("invalid conversion range")]
    Range(#[from] RangeError),
    /// Part of the range is not guest memory.
    #[error("{range} crosses a gap in guest memory at {gap:#x}")]
    Gap {
        /// The range asked for.
        range: FrameRange,
        /// The first address of it that no region holds.
        gap: u64,
    },
    /// The range cuts a huge page of an emulated hugetlb region, whose host view can only
    /// be protected in whole 2 MiB pages.
    #[error("{range} is not 2 MiB aligned within the hugetlb region {region}")]
    HugePageUnaligned {
        /// The range asked for.
        range: FrameRange,
        /// The hugetlb region it cuts.
        region: FrameRange,
    },
    /// A system call failed; everything done before it was undone. Discards that already
    /// ran (they are always last) cannot be undone: those pages read as zeros.
    #[error("{step} over {range} failed; the conversion was undone")]
    Step {
        /// What failed.
        step: StepKind,
        /// Over which range.
        range: FrameRange,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A system call failed and undoing the earlier steps failed too: KVM or the host
    /// view may disagree with veil's record (which was restored) over `undo_range`.
    #[error(
        "{step} over {range} failed, and undoing {undo_step} over {undo_range} failed too \
         ({undo_error}); veil's record was restored but KVM or the host view may disagree"
    )]
    RollbackFailed {
        /// What failed first.
        step: StepKind,
        /// Over which range.
        range: FrameRange,
        /// The first error.
        #[source]
        source: io::Error,
        /// The undo step that failed.
        undo_step: StepKind,
        /// Over which range.
        undo_range: FrameRange,
        /// Its error.
        undo_error: io::Error,
    },
}

impl ConvertError {
    /// The errno of the failed system call, if a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConvertError::Step { source, .. } | ConvertError::RollbackFailed { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// What the planner needs to know of a region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegionPlan {
    pub(crate) index: usize,
    pub(crate) range: FrameRange,
    pub(crate) flavor: Flavor,
    pub(crate) policy: ContentPolicy,
}

/// One system call of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) region: usize,
    pub(crate) kind: StepKind,
    pub(crate) range: FrameRange,
}

/// A few ops inline: a typical conversion allocates nothing for its plan.
pub(crate) type Ops = SmallVec<[Op; 4]>;

/// The system calls of a conversion: reversible ones first, discards last.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) reversible: Ops,
    pub(crate) discards: Ops,
    pub(crate) bytes_discarded: u64,
}

/// The calls that carry out `changes` (from setting some range to `to`) over `regions`.
///
/// Only changes of the private bit matter (a tag-only change costs nothing). Per region,
/// the steps that are right for every page already in state `to` cover one span, from the
/// first to the last changed page (one `KVM_SET_MEMORY_ATTRIBUTES`, one `mprotect`, and in
/// the attributes flavor under `Discard` one discard of the side no page in the span uses
/// any more);
/// discards that would destroy pages that did not change go per changed run.
#[cfg(test)]
pub(crate) fn plan(regions: &[RegionPlan], changes: &[Change], to: Attributes) -> Plan {
    let mut plan = Plan::default();
    plan_into(&mut plan, regions, changes, to);
    plan
}

/// [`plan`], appending to `plan`.
pub(crate) fn plan_into(
    plan: &mut Plan,
    regions: &[RegionPlan],
    changes: &[Change],
    to: Attributes,
) {
    let to_private = to.is_private();
    for region in regions {
        let op = |kind, range| Op {
            region: region.index,
            kind,
            range,
        };
        // In-place and emulated regions that discard do it per changed run: a page of
        // the span that did not change keeps its contents.
        let per_run = match region.flavor {
            Flavor::InPlace if region.policy == ContentPolicy::Discard => {
                Some(StepKind::DiscardGuestMemfd)
            }
            Flavor::Emulated if region.policy == ContentPolicy::Discard => {
                Some(StepKind::DiscardMemfd)
            }
            _ => None,
        };
        let mut span: Option<(Gfn, Gfn)> = None;
        let mut changed_bytes = 0;
        for c in changes {
            if c.previous.attributes.is_private() == to_private {
                continue;
            }
            let Some(run) = c.range.intersection(&region.range) else {
                continue;
            };
            span = Some((span.map_or(run.start(), |(first, _)| first), run.end()));
            changed_bytes += run.size();
            if let Some(kind) = per_run {
                plan.discards.push(op(kind, run));
            }
        }
        let Some(span) = span.and_then(|(first, end)| FrameRange::from_bounds(first, end)) else {
            continue;
        };
        match region.flavor {
            Flavor::Attributes => {
                plan.reversible.push(op(StepKind::SetAttributes(to), span));
                if region.policy == ContentPolicy::Discard {
                    let side = if to_private {
                        StepKind::DiscardMemfd
                    } else {
                        StepKind::DiscardGuestMemfd
                    };
                    plan.discards.push(op(side, span));
                    plan.bytes_discarded += changed_bytes;
                }
            }
            Flavor::InPlace | Flavor::Emulated => {
                plan.reversible.push(op(
                    StepKind::Protect {
                        inaccessible: to_private,
                    },
                    span,
                ));
                if per_run.is_some() {
                    plan.bytes_discarded += changed_bytes;
                }
            }
        }
    }
}

/// The inverse of a reversible op, one per changed run inside it (pages of the span that
/// were already in the target state keep what they had).
pub(crate) fn undo(op: &Op, changes: &[StateChange], to: Attributes) -> Ops {
    changes
        .iter()
        .filter(|c| c.old.attributes.is_private() != to.is_private())
        .filter_map(|c| {
            let range = c.range.intersection(&op.range)?;
            let kind = match op.kind {
                StepKind::SetAttributes(_) => StepKind::SetAttributes(c.old.attributes),
                StepKind::Protect { inaccessible } => StepKind::Protect {
                    inaccessible: !inaccessible,
                },
                // Discards are never undone (they are not reversible).
                StepKind::DiscardGuestMemfd | StepKind::DiscardMemfd => return None,
            };
            Some(Op {
                region: op.region,
                kind,
                range,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_attrs::{AttrMap, Gfn, PAGE_SIZE, Tag};

    fn fr(start: u64, pages: u64) -> FrameRange {
        FrameRange::new(Gfn(start), pages).unwrap()
    }

    fn region(
        index: usize,
        range: FrameRange,
        flavor: Flavor,
        policy: ContentPolicy,
    ) -> RegionPlan {
        RegionPlan {
            index,
            range,
            flavor,
            policy,
        }
    }

    /// A map whose pages `[0, n)` alternate private (even) and shared (odd).
    fn checkerboard(n: u64) -> AttrMap {
        let mut m = AttrMap::new(n * PAGE_SIZE).unwrap();
        for p in (0..n).step_by(2) {
            m.set(fr(p, 1), Attributes::PRIVATE).unwrap();
        }
        m
    }

    #[test]
    fn checkerboard_to_shared_is_one_call_per_kind_where_correct() {
        let n = 1024;
        let whole = fr(0, n);
        for (flavor, policy, reversible, discards) in [
            (Flavor::Attributes, ContentPolicy::Discard, 1, 1),
            (Flavor::Attributes, ContentPolicy::Retain, 1, 0),
            (Flavor::InPlace, ContentPolicy::Preserve, 1, 0),
            (Flavor::InPlace, ContentPolicy::Retain, 1, 0),
            (Flavor::Emulated, ContentPolicy::Preserve, 1, 0),
            // Discarding per run is what keeps the already-shared pages intact.
            (Flavor::InPlace, ContentPolicy::Discard, 1, n / 2),
        ] {
            let mut m = checkerboard(n);
            let changes = m.set(whole, Attributes::empty()).unwrap();
            assert_eq!(changes.len() as u64, n / 2);
            let p = plan(
                &[region(0, whole, flavor, policy)],
                &changes,
                Attributes::empty(),
            );
            assert_eq!(p.reversible.len(), reversible, "{flavor} {policy:?}");
            assert_eq!(p.discards.len() as u64, discards, "{flavor} {policy:?}");
            // The span runs from the first to the last changed page.
            assert_eq!(p.reversible[0].range, fr(0, n - 1));
            let expect = if policy == ContentPolicy::Discard {
                n / 2 * PAGE_SIZE
            } else {
                0
            };
            assert_eq!(p.bytes_discarded, expect);
        }
    }

    #[test]
    fn attributes_flavor_discards_the_side_no_longer_used() {
        let whole = fr(0, 16);
        let r = [region(0, whole, Flavor::Attributes, ContentPolicy::Discard)];
        let mut m = AttrMap::new(16 * PAGE_SIZE).unwrap();
        let c = m.set(fr(2, 3), Attributes::PRIVATE).unwrap();
        let p = plan(&r, &c, Attributes::PRIVATE);
        assert_eq!(
            p.reversible[..],
            [Op {
                region: 0,
                kind: StepKind::SetAttributes(Attributes::PRIVATE),
                range: fr(2, 3)
            }]
        );
        assert_eq!(p.discards[0].kind, StepKind::DiscardMemfd);
        let c = m.set(fr(0, 16), Attributes::empty()).unwrap();
        let p = plan(&r, &c, Attributes::empty());
        assert_eq!(p.discards[0].kind, StepKind::DiscardGuestMemfd);
        assert_eq!(p.discards[0].range, fr(2, 3));
    }

    #[test]
    fn no_change_no_call_and_tags_cost_nothing() {
        let whole = fr(0, 16);
        let r = [region(0, whole, Flavor::InPlace, ContentPolicy::Discard)];
        let mut m = AttrMap::new(16 * PAGE_SIZE).unwrap();
        let c = m.set(whole, Attributes::empty()).unwrap();
        assert_eq!(plan(&r, &c, Attributes::empty()), Plan::default());
        // A tag-only change (shared, tagged -> shared) is reported by veil-attrs but needs
        // no system call: the bytes stay.
        let t = Tag::new(3).unwrap();
        m.set_state(fr(1, 2), PageState::tagged(Attributes::empty(), t))
            .unwrap();
        let c = m.set(whole, Attributes::empty()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(plan(&r, &c, Attributes::empty()), Plan::default());
    }

    #[test]
    fn plan_splits_across_regions() {
        let a = fr(0, 8);
        let b = fr(8, 8);
        let rs = [
            region(0, a, Flavor::Emulated, ContentPolicy::Discard),
            region(1, b, Flavor::Attributes, ContentPolicy::Discard),
        ];
        let mut m = AttrMap::new(16 * PAGE_SIZE).unwrap();
        let c = m.set(fr(6, 4), Attributes::PRIVATE).unwrap();
        let p = plan(&rs, &c, Attributes::PRIVATE);
        assert_eq!(p.reversible.len(), 2);
        assert_eq!(
            (p.reversible[0].region, p.reversible[0].range),
            (0, fr(6, 2))
        );
        assert_eq!(
            (p.reversible[1].region, p.reversible[1].range),
            (1, fr(8, 2))
        );
        assert_eq!(p.discards.len(), 2);
        assert_eq!(p.bytes_discarded, 4 * PAGE_SIZE);
    }

    #[test]
    fn undo_covers_only_changed_runs() {
        let mut m = checkerboard(8);
        let c: Vec<StateChange> = m
            .set(fr(0, 8), Attributes::PRIVATE)
            .unwrap()
            .iter()
            .map(|c| StateChange {
                range: c.range,
                old: c.previous,
                new: PageState::PRIVATE,
            })
            .collect();
        let op = Op {
            region: 0,
            kind: StepKind::Protect { inaccessible: true },
            range: fr(1, 7),
        };
        let u = undo(&op, &c, Attributes::PRIVATE);
        assert_eq!(u.len(), 4);
        assert!(u.iter().all(|o| o.kind
            == StepKind::Protect {
                inaccessible: false
            }));
        assert_eq!(
            u.iter().map(|o| o.range.start().0).collect::<Vec<_>>(),
            [1, 3, 5, 7]
        );
        let op = Op {
            kind: StepKind::SetAttributes(Attributes::PRIVATE),
            ..op
        };
        let u = undo(&op, &c, Attributes::PRIVATE);
        assert!(
            u.iter()
                .all(|o| o.kind == StepKind::SetAttributes(Attributes::empty()))
        );
    }
}
