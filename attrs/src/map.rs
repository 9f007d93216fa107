// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`AttrMap`]: the per-guest map from frames to [`PageState`].

use std::fmt;
use std::ops::{ControlFlow, Deref};

use smallvec::SmallVec;

use crate::attributes::{Attributes, PageState};
use crate::range::{FrameRange, Gfn, PAGE_SHIFT, PAGE_SIZE, RangeError};
use crate::tree::{self, Slot};

/// A sub-range whose state a [`AttrMap::set`] changed, with the state it had before.
///
/// This is the work a conversion must do: each change is one contiguous run of frames
/// that all had `previous` and now have the new state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The frames that changed.
    pub range: FrameRange,
    /// Their state before the change.
    pub previous: PageState,
}

/// The sub-ranges a [`AttrMap::set`] changed, in ascending address order.
///
/// Empty when nothing changed. Holds a few changes inline, so the common single-run
/// conversion allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes(SmallVec<[Change; 2]>);

impl Changes {
    /// The total number of frames that changed.
    pub fn pages(&self) -> u64 {
        self.0.iter().map(|c| c.range.pages()).sum()
    }

    /// Records that `[start, end)` changed from `previous`, merging it into the last
    /// change when they touch and share the previous state.
    pub(crate) fn push_piece(&mut self, start: u64, end: u64, previous: PageState) {
        if let Some(last) = self.0.last_mut()
            && last.range.end().0 == start
            && last.previous == previous
        {
            if let Some(range) = FrameRange::from_bounds(last.range.start(), Gfn(end)) {
                last.range = range;
            }
            return;
        }
        if let Some(range) = FrameRange::from_bounds(Gfn(start), Gfn(end)) {
            self.0.push(Change { range, previous });
        }
    }
}

impl Deref for Changes {
    type Target = [Change];

    fn deref(&self) -> &[Change] {
        &self.0
    }
}

impl IntoIterator for Changes {
    type Item = Change;
    type IntoIter = smallvec::IntoIter<[Change; 2]>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Changes {
    type Item = &'a Change;
    type IntoIter = std::slice::Iter<'a, Change>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A maximal run of frames sharing one [`PageState`] (clipped to the range asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The frames of the run.
    pub range: FrameRange,
    /// Their common state.
    pub state: PageState,
}

/// The userspace mirror of KVM's per-VM memory attribute array, for one guest.
///
/// Every frame starts shared and untagged. Adjacent frames with equal [`PageState`]
/// always form one run, and the representation is canonical: equal page states always
/// give equal maps (`==`), whatever sequence of [`set`](AttrMap::set)s produced them.
///
/// # Representation and cost
///
/// A radix tree over frame numbers, as tall as the guest needs (at most 8 levels for
/// 2^52 frames): interior nodes of 64 slots, leaves of 4096 frames. A slot whose frames
/// all have one state is stored as that state alone, at any level, so converting an
/// aligned range costs O(height) whatever its size, and an untouched guest holds no
/// heap. A leaf with a few runs or with tags is a short run list; an untagged leaf with
/// many runs is a 4096-bit bitmap (512 bytes), so scattered 4 KiB conversions cost about
/// what a bitmap costs and never more memory than a bitmap plus its bookkeeping.
///
/// `get` is O(height). `set` is O(height + the runs it changes). [`run_count`] is
/// O(height): every node keeps its count of run boundaries up to date. `clone` is O(1):
/// nodes are shared behind [`Arc`](std::sync::Arc) and a later `set` copies only the
/// path it changes.
///
/// [`run_count`]: AttrMap::run_count
#[derive(Clone, PartialEq, Eq)]
pub struct AttrMap {
    frames: u64,
    height: u32,
    /// Covers `2^span_shift(height)` frames; those at or past `frames` stay shared.
    root: Slot,
}

impl AttrMap {
    /// A map for a guest of `guest_size` bytes, all shared.
    ///
    /// The size must be a non-zero multiple of 4 KiB.
    pub fn new(guest_size: u64) -> Result<Self, RangeError> {
        let range = FrameRange::from_gpa(0, guest_size)?;
        Ok(AttrMap {
            frames: range.pages(),
            height: tree::height_for(range.pages()),
            root: Slot::Uniform(PageState::SHARED),
        })
    }

    /// The guest size in bytes.
    pub fn guest_size(&self) -> u64 {
        self.frames << PAGE_SHIFT
    }

    /// The number of frames in the guest.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The frames covering the guest-physical byte range `[gpa, gpa + size)`, checked
    /// for alignment, emptiness, overflow and the guest's bounds.
    pub fn range(&self, gpa: u64, size: u64) -> Result<FrameRange, RangeError> {
        FrameRange::from_gpa(gpa, size)?.check_within(self.frames, self.guest_size())
    }

    /// The whole guest as one range.
    pub fn whole(&self) -> FrameRange {
        FrameRange::new(Gfn(0), self.frames).expect("a map always holds at least one frame")
    }

    fn check(&self, range: FrameRange) -> Result<FrameRange, RangeError> {
        range.check_within(self.frames, self.guest_size())
    }

    /// Gives every frame of `range` the attributes `attributes` and no tag.
    ///
    /// Returns exactly the sub-ranges whose state changed, each with its previous state,
    /// in address order, adjacent ones with equal previous state merged; empty when the
    /// range already had that state. On error nothing changes.
    pub fn set(
        &mut self,
        range: FrameRange,
        attributes: Attributes,
    ) -> Result<Changes, RangeError> {
        self.set_state(range, PageState::new(attributes))
    }

    /// Gives every frame of `range` the state `state` (attributes and tag).
    ///
    /// Returns exactly the sub-ranges whose state changed, as [`set`](AttrMap::set) does.
    pub fn set_state(
        &mut self,
        range: FrameRange,
        state: PageState,
    ) -> Result<Changes, RangeError> {
        let range = self.check(range)?;
        let (a, b) = (range.start().0, range.end().0);
        let mut changes = Changes::default();
        // Leave a range already in that state untouched: a set that changes nothing
        // copies no node a snapshot shares.
        let unchanged = if tree::get(&self.root, self.height, a) != state {
            ControlFlow::Break(())
        } else if b - a == 1 {
            ControlFlow::Continue(())
        } else {
            tree::visit(&self.root, self.height, 0, a, b, &mut |_, _, previous| {
                if previous == state {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            })
        };
        if unchanged.is_break() {
            tree::set_slot(&mut self.root, self.height, 0, a, b, state, &mut changes);
        }
        Ok(changes)
    }

    /// The state of one frame.
    #[inline]
    pub fn get(&self, gfn: Gfn) -> Result<PageState, RangeError> {
        if gfn.0 >= self.frames {
            let range = FrameRange::new(gfn, 1)?;
            return Err(RangeError::OutOfBounds {
                range,
                limit: self.guest_size(),
            });
        }
        Ok(tree::get(&self.root, self.height, gfn.0))
    }

    /// Whether every frame of `range` has exactly the attributes `attributes` (tags are
    /// not compared).
    pub fn range_is(&self, range: FrameRange, attributes: Attributes) -> Result<bool, RangeError> {
        let range = self.check(range)?;
        let flow = tree::visit(
            &self.root,
            self.height,
            0,
            range.start().0,
            range.end().0,
            &mut |_, _, state| {
                if state.attributes == attributes {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            },
        );
        Ok(flow.is_continue())
    }

    /// The maximal runs intersecting `range`, clipped to it, in address order.
    pub fn runs(&self, range: FrameRange) -> Result<Runs<'_>, RangeError> {
        let range = self.check(range)?;
        Ok(Runs {
            map: self,
            pos: range.start().0,
            end: range.end().0,
            pending: None,
        })
    }

    /// The number of maximal runs in the whole guest (at least one).
    pub fn run_count(&self) -> usize {
        let mut boundaries = self.root.boundaries();
        // The frames past the guest's end are shared; a last frame in another state
        // makes one boundary there that is not the guest's.
        if self.frames < 1u64 << tree::span_shift(self.height)
            && tree::get(&self.root, self.height, self.frames - 1) != PageState::SHARED
        {
            boundaries = boundaries.saturating_sub(1);
        }
        usize::try_from(boundaries.saturating_add(1)).unwrap_or(usize::MAX)
    }

    /// The bytes of heap this map holds (counting nodes a clone shares), for comparing
    /// representations.
    pub fn heap_bytes(&self) -> usize {
        self.root.heap_bytes()
    }

    /// Checks that the tree is canonical and its counts right (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        if self.height != tree::height_for(self.frames) {
            return Err(format!("height {} for {} frames", self.height, self.frames));
        }
        tree::check(&self.root, self.height)?;
        let capacity = 1u64 << tree::span_shift(self.height);
        if self.frames < capacity {
            let mut bad = None;
            let _ = tree::visit(
                &self.root,
                self.height,
                0,
                self.frames,
                capacity,
                &mut |s, _, st| {
                    if st == PageState::SHARED {
                        return ControlFlow::Continue(());
                    }
                    bad = Some(s);
                    ControlFlow::Break(())
                },
            );
            if let Some(s) = bad {
                return Err(format!("frame {s:#x} past the guest's end is not shared"));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for AttrMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttrMap")
            .field("frames", &self.frames)
            .field("runs", &self.run_count())
            .finish_non_exhaustive()
    }
}

/// Iterator over the runs of an [`AttrMap`] within a range; see [`AttrMap::runs`].
pub struct Runs<'a> {
    map: &'a AttrMap,
    /// Start of the next run.
    pos: u64,
    /// End of the range asked for.
    end: u64,
    /// A piece starting at `pos` already looked up.
    pending: Option<(PageState, u64)>,
}

impl Runs<'_> {
    fn piece(&self, gfn: u64) -> (PageState, u64) {
        tree::locate(&self.map.root, self.map.height, gfn)
    }
}

impl Iterator for Runs<'_> {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        if self.pos >= self.end {
            return None;
        }
        let (state, mut end) = match self.pending.take() {
            Some(piece) => piece,
            None => self.piece(self.pos),
        };
        while end < self.end {
            let (next, next_end) = self.piece(end);
            if next != state {
                self.pending = Some((next, next_end));
                break;
            }
            end = next_end;
        }
        let end = end.min(self.end);
        let range = FrameRange::from_bounds(Gfn(self.pos), Gfn(end))?;
        self.pos = end;
        Some(Run { range, state })
    }
}

const _: () = assert!(PAGE_SIZE == 4096);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes::Tag;

    const GIB: u64 = 1 << 30;

    fn fr(start: u64, pages: u64) -> FrameRange {
        FrameRange::new(Gfn(start), pages).unwrap()
    }

    #[test]
    fn new_map_is_one_shared_run() {
        let m = AttrMap::new(GIB).unwrap();
        assert_eq!(m.frames(), GIB / PAGE_SIZE);
        assert_eq!(m.run_count(), 1);
        assert_eq!(m.get(Gfn(0)).unwrap(), PageState::SHARED);
        assert!(m.range_is(m.whole(), Attributes::empty()).unwrap());
        assert!(AttrMap::new(0).is_err());
        assert!(AttrMap::new(4097).is_err());
    }

    #[test]
    fn set_reports_exact_changes() {
        let mut m = AttrMap::new(GIB).unwrap();
        let c = m.set(fr(10, 10), Attributes::PRIVATE).unwrap();
        assert_eq!(
            &c[..],
            &[Change {
                range: fr(10, 10),
                previous: PageState::SHARED
            }]
        );
        assert_eq!(m.run_count(), 3);
        // Setting the same again changes nothing.
        assert!(m.set(fr(12, 3), Attributes::PRIVATE).unwrap().is_empty());
        // A range covering both states only reports the shared parts.
        let c = m.set(fr(5, 20), Attributes::PRIVATE).unwrap();
        assert_eq!(
            &c[..],
            &[
                Change {
                    range: fr(5, 5),
                    previous: PageState::SHARED
                },
                Change {
                    range: fr(20, 5),
                    previous: PageState::SHARED
                },
            ]
        );
        assert_eq!(c.pages(), 10);
        assert_eq!(m.run_count(), 3);
        // Back to shared merges everything into one run.
        let c = m.set(fr(5, 20), Attributes::empty()).unwrap();
        assert_eq!(c.pages(), 20);
        assert_eq!(m.run_count(), 1);
    }

    #[test]
    fn tags_split_runs_but_not_states() {
        let mut m = AttrMap::new(GIB).unwrap();
        let t = Tag::new(1).unwrap();
        m.set_state(fr(0, 4), PageState::tagged(Attributes::empty(), t))
            .unwrap();
        assert_eq!(m.run_count(), 2);
        assert!(m.range_is(fr(0, 8), Attributes::empty()).unwrap());
        let runs: Vec<_> = m.runs(fr(2, 4)).unwrap().collect();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].range, fr(2, 2));
        assert_eq!(runs[0].state.tag, Some(t));
        assert_eq!(runs[1].range, fr(4, 2));
        // Clearing the tag reports the tagged range as changed.
        let c = m.set(fr(0, 8), Attributes::empty()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].range, fr(0, 4));
        assert_eq!(m.run_count(), 1);
    }

    #[test]
    fn out_of_bounds_changes_nothing() {
        let mut m = AttrMap::new(16 * PAGE_SIZE).unwrap();
        let err = m.set(fr(10, 10), Attributes::PRIVATE).unwrap_err();
        assert!(matches!(err, RangeError::OutOfBounds { .. }));
        assert_eq!(m.run_count(), 1);
        assert!(m.get(Gfn(16)).is_err());
        assert!(m.range(15 * PAGE_SIZE, 2 * PAGE_SIZE).is_err());
        assert!(m.range(15 * PAGE_SIZE, PAGE_SIZE).is_ok());
    }
}
