// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`AttrMap`]: the per-guest map from frames to [`PageState`].

use std::fmt;
use std::ops::{ControlFlow, Deref};

use smallvec::SmallVec;

use crate::attributes::{Attributes, PageState};
use crate::range::{FrameRange, Gfn, PAGE_SHIFT, PAGE_SIZE, RangeError};
use crate::tree::{Spot, Tree};

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
    /// The change of `range` from `previous`, if there was one, alone.
    #[inline]
    fn of(range: FrameRange, previous: Option<PageState>) -> Changes {
        let mut changes = Changes::default();
        if let Some(previous) = previous {
            changes.0.push(Change { range, previous });
        }
        changes
    }

    /// The total number of frames that changed.
    #[inline]
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

    #[inline]
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
/// heap. A leaf of untagged frames with a few runs holds them in its slot, no
/// allocation; one with more runs is a 4096-bit bitmap (512 bytes), and one with tags a
/// run list. A busy 1 GiB region is one bitmap, so scattered 4 KiB conversions cost
/// about what a bitmap costs and never more memory than a bitmap plus its bookkeeping.
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
    /// Covers at least `frames` frames; those at or past `frames` stay shared.
    tree: Tree,
}

impl AttrMap {
    /// A map for a guest of `guest_size` bytes, all shared.
    ///
    /// The size must be a non-zero multiple of 4 KiB.
    pub fn new(guest_size: u64) -> Result<Self, RangeError> {
        let range = FrameRange::from_gpa(0, guest_size)?;
        Ok(AttrMap {
            frames: range.pages(),
            tree: Tree::new(range.pages()),
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
        // The common scattered conversion first, kept short; then everything else.
        if range.pages() == 1
            && range.end().0 <= self.frames
            && let Some(previous) = self.tree.set_dense_frame(range.start().0, state)
        {
            return Ok(Changes::of(range, previous));
        }
        self.set_other(range, state)
    }

    /// [`set_state`](AttrMap::set_state) for all but a frame of a dense bitmap.
    #[inline(never)]
    fn set_other(&mut self, range: FrameRange, state: PageState) -> Result<Changes, RangeError> {
        let range = self.check(range)?;
        let (a, b) = (range.start().0, range.end().0);
        if b - a == 1
            && let Some(previous) = self.tree.set_frame(a, state)
        {
            return Ok(Changes::of(range, previous));
        }
        let mut changes = Changes::default();
        // Leave a range already in that state untouched: a set that changes nothing
        // copies no node a snapshot shares.
        let unchanged = if self.tree.get(a) != state {
            ControlFlow::Break(())
        } else if b - a == 1 {
            ControlFlow::Continue(())
        } else {
            self.tree.visit(a, b, &mut |_, _, previous| {
                if previous == state {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            })
        };
        if unchanged.is_break() {
            self.tree.set(a, b, state, &mut changes);
        }
        Ok(changes)
    }

    /// The state of one frame.
    #[inline]
    pub fn get(&self, gfn: Gfn) -> Result<PageState, RangeError> {
        if gfn.0 < self.frames
            && let Some(state) = self.tree.get_dense(gfn.0)
        {
            return Ok(state);
        }
        self.get_other(gfn)
    }

    /// [`get`](AttrMap::get) for all but a densely converted region under the root.
    ///
    /// Cold only in the sense of code layout: it keeps the dense path straight.
    #[cold]
    #[inline(never)]
    fn get_other(&self, gfn: Gfn) -> Result<PageState, RangeError> {
        if gfn.0 >= self.frames {
            let range = FrameRange::new(gfn, 1)?;
            return Err(RangeError::OutOfBounds {
                range,
                limit: self.guest_size(),
            });
        }
        Ok(self.tree.get(gfn.0))
    }

    /// Whether every frame of `range` has exactly the attributes `attributes` (tags are
    /// not compared).
    pub fn range_is(&self, range: FrameRange, attributes: Attributes) -> Result<bool, RangeError> {
        let range = self.check(range)?;
        let flow = self
            .tree
            .visit(range.start().0, range.end().0, &mut |_, _, state| {
                if state.attributes == attributes {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            });
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
            spot: None,
        })
    }

    /// The number of maximal runs in the whole guest (at least one).
    pub fn run_count(&self) -> usize {
        let mut boundaries = self.tree.boundaries();
        // The frames past the guest's end are shared; a last frame in another state
        // makes one boundary there that is not the guest's.
        if self.frames < self.tree.capacity() && self.tree.get(self.frames - 1) != PageState::SHARED
        {
            boundaries = boundaries.saturating_sub(1);
        }
        usize::try_from(boundaries.saturating_add(1)).unwrap_or(usize::MAX)
    }

    /// The bytes of heap this map holds (counting nodes a clone shares), for comparing
    /// representations.
    pub fn heap_bytes(&self) -> usize {
        self.tree.heap_bytes()
    }

    /// Slots of each form: uniform, node, dense, bits, runs (tests only).
    #[cfg(test)]
    pub(crate) fn forms(&self) -> [usize; 5] {
        self.tree.forms()
    }

    /// Checks that the tree is canonical and its counts right (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.tree.check(self.frames)?;
        let capacity = self.tree.capacity();
        if self.frames < capacity {
            let mut bad = None;
            let _ = self.tree.visit(self.frames, capacity, &mut |s, _, st| {
                if st == PageState::SHARED {
                    return ControlFlow::Continue(());
                }
                bad = Some(s);
                ControlFlow::Break(())
            });
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
    /// The bottom slot the last piece was in: the pieces after it in the same slot are
    /// read from there, without walking down the tree again.
    spot: Option<Spot<'a>>,
}

impl Runs<'_> {
    fn piece(&mut self, gfn: u64) -> (PageState, u64) {
        match &mut self.spot {
            Some(spot) if spot.base <= gfn && gfn < spot.end => spot.piece(gfn),
            spot => spot.insert(self.map.tree.spot(gfn)).piece(gfn),
        }
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

    const DENSE: usize = 2;
    const BITS: usize = 3;
    const RUNS: usize = 4;

    /// A 2 GiB map whose first 1 GiB holds `pages` isolated private pages.
    fn scattered(pages: u64) -> AttrMap {
        let mut m = AttrMap::new(2 * GIB).unwrap();
        for k in 0..pages {
            m.set(fr(1000 + k * 2001, 1), Attributes::PRIVATE).unwrap();
        }
        m.check_invariants().unwrap();
        m
    }

    fn all_runs(m: &AttrMap) -> Vec<Run> {
        m.runs(m.whole()).unwrap().collect()
    }

    #[test]
    fn dense_region_forms_and_unforms() {
        let half = crate::tree::DENSE_MIN_BOUNDARIES / 2;
        let below = scattered(half - 1);
        assert_eq!(below.forms()[DENSE], 0);
        assert!(below.forms()[BITS] + below.forms()[RUNS] > 0);
        let mut m = scattered(half);
        assert_eq!(m.forms()[DENSE], 1, "{:?}", m.forms());
        assert_eq!(m.run_count() as u64, 2 * half + 1);
        // One page fewer: back to a node of leaves, equal to the map built that way.
        let c = m.set(fr(1000, 1), Attributes::empty()).unwrap();
        assert_eq!(
            &c[..],
            &[Change {
                range: fr(1000, 1),
                previous: PageState::PRIVATE
            }]
        );
        m.check_invariants().unwrap();
        assert_eq!(m.forms()[DENSE], 0);
        assert_eq!(all_runs(&m)[1..], all_runs(&scattered(half))[3..]);
        let c = m.set(fr(1000, 1), Attributes::PRIVATE).unwrap();
        assert_eq!(c.pages(), 1);
        m.check_invariants().unwrap();
        assert_eq!(m, scattered(half));
        // A tag inside the bitmap turns it back into leaves; clearing it, a bitmap again.
        let t = Tag::new(9).unwrap();
        m.set_state(fr(5004, 3), PageState::tagged(Attributes::PRIVATE, t))
            .unwrap();
        m.check_invariants().unwrap();
        assert_eq!(m.forms()[DENSE], 0);
        assert_eq!(m.get(Gfn(5005)).unwrap().tag, Some(t));
        m.set(fr(5004, 3), Attributes::empty()).unwrap();
        m.check_invariants().unwrap();
        assert_eq!(m, scattered(half));
        // Clearing the whole region leaves nothing behind.
        let c = m
            .set(
                FrameRange::new(Gfn(0), 1 << 18).unwrap(),
                Attributes::empty(),
            )
            .unwrap();
        assert_eq!(c.len() as u64, half);
        assert_eq!(m.forms(), [64, 0, 0, 0, 0]);
        assert_eq!(m, AttrMap::new(2 * GIB).unwrap());
    }

    #[test]
    fn clones_never_see_later_sets() {
        let half = crate::tree::DENSE_MIN_BOUNDARIES / 2;
        let t = Tag::new(3).unwrap();
        let mut m = scattered(half);
        // A bitmap leaf and a run leaf in the second region too.
        for k in 0..6 {
            m.set(fr((1 << 18) + 10 + 3 * k, 1), Attributes::PRIVATE)
                .unwrap();
        }
        m.set_state(
            fr((1 << 18) + 9000, 2),
            PageState::tagged(Attributes::empty(), t),
        )
        .unwrap();
        let forms = m.forms();
        assert!(
            forms[DENSE] == 1 && forms[BITS] >= 1 && forms[RUNS] >= 1,
            "{forms:?}"
        );
        let snapshot = m.clone();
        let before = all_runs(&m);
        // Single pages (changed in place when owned) and ranges, in every form.
        for gfn in [
            1500,
            1000,
            2,
            (1 << 18) + 11,
            (1 << 18) + 13,
            (1 << 18) + 9001,
        ] {
            m.set(fr(gfn, 1), Attributes::PRIVATE).unwrap();
            m.set(fr(gfn + 1, 1), Attributes::empty()).unwrap();
        }
        m.set(fr(100, 5000), Attributes::PRIVATE).unwrap();
        m.check_invariants().unwrap();
        assert_ne!(all_runs(&m), before);
        assert_eq!(all_runs(&snapshot), before);
        snapshot.check_invariants().unwrap();
        // And the other way round: the clone's sets leave the original alone.
        let after = all_runs(&m);
        let mut other = m.clone();
        other.set(fr(7, 1), Attributes::PRIVATE).unwrap();
        other
            .set(fr((1 << 18) + 12, 1), Attributes::PRIVATE)
            .unwrap();
        assert_eq!(all_runs(&m), after);
        // Once the clone is gone, the map changes its own bitmaps in place again.
        drop(other);
        drop(snapshot);
        m.set(fr(3, 1), Attributes::PRIVATE).unwrap();
        m.check_invariants().unwrap();
        assert_eq!(m.get(Gfn(3)).unwrap(), PageState::PRIVATE);
    }

    #[test]
    fn scattered_pages_in_their_own_leaves_cost_no_heap() {
        // A page in each of 60 leaves of one region: 120 boundaries, short of a bitmap.
        let mut m = AttrMap::new(2 * GIB).unwrap();
        m.set(fr(5000, 1), Attributes::PRIVATE).unwrap();
        let one = m.heap_bytes();
        for k in 1..60 {
            m.set(fr(5000 + k * 4096, 1), Attributes::PRIVATE).unwrap();
        }
        m.check_invariants().unwrap();
        assert_eq!(m.forms()[RUNS], 60);
        assert_eq!(m.forms()[BITS], 0);
        // The leaves live in their node's slots: the node is all the heap there is.
        assert_eq!(m.heap_bytes(), one);
        assert_eq!(m.run_count(), 121);
        for k in 0..60 {
            assert_eq!(m.get(Gfn(5000 + k * 4096)).unwrap(), PageState::PRIVATE);
            assert_eq!(m.get(Gfn(5001 + k * 4096)).unwrap(), PageState::SHARED);
        }
    }

    #[test]
    fn a_leaf_of_few_runs_becomes_a_bitmap_and_back() {
        let build = |pages: &[u64]| {
            let mut m = AttrMap::new(GIB).unwrap();
            for &g in pages {
                m.set(fr(g, 1), Attributes::PRIVATE).unwrap();
            }
            m.check_invariants().unwrap();
            m
        };
        // Three isolated pages make seven runs, held in the slot.
        let mut m = build(&[10, 20, 30]);
        assert_eq!((m.forms()[BITS], m.forms()[RUNS]), (0, 1));
        let heap = m.heap_bytes();
        // A fourth makes nine: a bitmap leaf.
        let c = m.set(fr(40, 1), Attributes::PRIVATE).unwrap();
        assert_eq!(
            &c[..],
            &[Change {
                range: fr(40, 1),
                previous: PageState::SHARED
            }]
        );
        m.check_invariants().unwrap();
        assert_eq!((m.forms()[BITS], m.forms()[RUNS]), (1, 0));
        assert!(m.heap_bytes() > heap);
        assert_eq!(m, build(&[10, 20, 30, 40]));
        // Joining two of them (10 to 20) leaves seven runs: back in the slot.
        for g in 11..20 {
            m.set(fr(g, 1), Attributes::PRIVATE).unwrap();
        }
        m.check_invariants().unwrap();
        assert_eq!((m.forms()[BITS], m.forms()[RUNS]), (0, 1));
        assert_eq!(m.heap_bytes(), heap);
        assert_eq!(m.run_count(), 7);
        let mut want = build(&[30, 40]);
        want.set(fr(10, 11), Attributes::PRIVATE).unwrap();
        assert_eq!(m, want);
        // A tag needs a run list behind a pointer, and clearing it returns to edges.
        let t = Tag::new(4).unwrap();
        m.set_state(fr(30, 1), PageState::tagged(Attributes::PRIVATE, t))
            .unwrap();
        m.check_invariants().unwrap();
        assert!(m.heap_bytes() > heap);
        assert_eq!(m.get(Gfn(30)).unwrap().tag, Some(t));
        m.set(fr(30, 1), Attributes::PRIVATE).unwrap();
        m.check_invariants().unwrap();
        assert_eq!(m, want);
    }

    #[test]
    fn single_pages_at_word_edges_of_a_dense_bitmap() {
        let half = crate::tree::DENSE_MIN_BOUNDARIES / 2;
        let mut m = scattered(half);
        assert_eq!(m.forms()[DENSE], 1);
        let mut model: Vec<bool> = (0..(1u64 << 18))
            .map(|g| m.get(Gfn(g)).unwrap().is_private())
            .collect();
        // Frames at either edge of a word, beside a private page or not, and the
        // region's first and last frame.
        let edges = [63, 64, 127, 128, 959, 960, 1023, 1024, 0, (1 << 18) - 1];
        for &g in edges.iter().chain(&edges) {
            let to = !model[g as usize];
            let c = m.set(fr(g, 1), attrs(to)).unwrap();
            assert_eq!(
                &c[..],
                &[Change {
                    range: fr(g, 1),
                    previous: PageState::new(attrs(!to))
                }]
            );
            assert!(m.set(fr(g, 1), attrs(to)).unwrap().is_empty());
            model[g as usize] = to;
            m.check_invariants().unwrap();
        }
        let boundaries = model.windows(2).filter(|w| w[0] != w[1]).count();
        // The region and the shared one after it, and one more if the last frame is private.
        let across = usize::from(model[model.len() - 1]);
        assert_eq!(m.run_count(), boundaries + across + 1);
        for (g, &private) in model.iter().enumerate() {
            assert_eq!(
                m.get(Gfn(g as u64)).unwrap().is_private(),
                private,
                "frame {g}"
            );
        }
    }

    fn attrs(private: bool) -> Attributes {
        if private {
            Attributes::PRIVATE
        } else {
            Attributes::empty()
        }
    }

    #[test]
    fn top_frames_of_the_largest_guest() {
        let mut m = AttrMap::new(crate::MAX_FRAMES << PAGE_SHIFT).unwrap();
        let top = crate::MAX_FRAMES;
        let c = m.set(fr(top - 3, 3), Attributes::PRIVATE).unwrap();
        assert_eq!(
            &c[..],
            &[Change {
                range: fr(top - 3, 3),
                previous: PageState::SHARED
            }]
        );
        assert_eq!(m.run_count(), 2);
        assert_eq!(m.get(Gfn(top - 1)).unwrap(), PageState::PRIVATE);
        assert!(m.get(Gfn(top)).is_err());
        m.set(fr(top - 2, 1), Attributes::empty()).unwrap();
        assert_eq!(m.run_count(), 4);
        m.check_invariants().unwrap();
        let runs = all_runs(&m);
        assert_eq!(runs.last().unwrap().range, fr(top - 1, 1));
    }

    /// The runs of `[a, b)` from the tree's own in-order walk, pieces merged.
    fn visited_runs(m: &AttrMap, a: u64, b: u64) -> Vec<Run> {
        let mut out: Vec<Run> = Vec::new();
        let _ = m.tree.visit(a, b, &mut |s, e, state| {
            match out.last_mut() {
                Some(last) if last.state == state => {
                    last.range = FrameRange::from_bounds(last.range.start(), Gfn(e)).unwrap();
                }
                _ => out.push(Run {
                    range: FrameRange::from_bounds(Gfn(s), Gfn(e)).unwrap(),
                    state,
                }),
            }
            ControlFlow::Continue(())
        });
        out
    }

    #[test]
    fn runs_read_every_form_from_anywhere() {
        // 2^32 frames: a dense region, bitmap, edge and tagged run leaves, and wide
        // uniform stretches of one state over slots of every level.
        let mut m = AttrMap::new(1 << (32 + PAGE_SHIFT)).unwrap();
        let tag = |v| PageState::tagged(Attributes::PRIVATE, Tag::new(v).unwrap());
        for g in (0..1 << 18).step_by(97) {
            m.set(fr(g, 1), Attributes::PRIVATE).unwrap();
        }
        let leaf = 3 << 18;
        for g in (leaf..leaf + 4096).step_by(300) {
            m.set(fr(g, 2), Attributes::PRIVATE).unwrap();
        }
        m.set(fr(leaf + 4096 + 10, 20), Attributes::PRIVATE)
            .unwrap();
        let tagged = leaf + 8 * 4096;
        for (k, g) in (tagged..tagged + 4096).step_by(7).enumerate() {
            let state = match k % 3 {
                0 => tag(1),
                1 => tag(2),
                _ => PageState::PRIVATE,
            };
            m.set_state(fr(g, 1 + k as u64 % 3), state).unwrap();
        }
        m.set(fr(5 << 24, 1 << 26), Attributes::PRIVATE).unwrap();
        m.set(fr((1 << 31) + 1, (1 << 30) + 5), Attributes::PRIVATE)
            .unwrap();
        m.check_invariants().unwrap();
        assert_eq!(m.forms()[2..].iter().filter(|&&n| n > 0).count(), 3);

        let whole = all_runs(&m);
        assert_eq!(whole, visited_runs(&m, 0, m.frames()));
        assert_eq!(whole.len(), m.run_count());
        // From the start of every run, beside it and inside it, to places as varied.
        let mut points: Vec<u64> = whole
            .iter()
            .flat_map(|r| {
                let (s, e) = (r.range.start().0, r.range.end().0);
                [s, s + 1, (s + e) / 2, e - 1]
            })
            .collect();
        points.sort_unstable();
        points.dedup();
        // Short listings from every point, long ones from some.
        let long = points.len() / 64;
        for (i, &a) in points.iter().enumerate() {
            let short = points[i + 1..].iter().copied().take(3);
            let far = points[i..].iter().copied().step_by(long * 8).skip(1);
            let far = far
                .chain([m.frames()])
                .take(if i % long == 0 { 9 } else { 0 });
            for b in short.chain(far) {
                let got: Vec<Run> = m.runs(fr(a, b - a)).unwrap().collect();
                assert_eq!(got, visited_runs(&m, a, b), "runs of [{a:#x}, {b:#x})");
            }
        }
    }
}
