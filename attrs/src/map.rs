// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`AttrMap`]: the per-guest map from frames to [`PageState`].

use std::collections::BTreeMap;
use std::ops::Deref;

use smallvec::SmallVec;

use crate::attributes::{Attributes, PageState};
use crate::range::{FrameRange, Gfn, PAGE_SHIFT, PAGE_SIZE, RangeError};

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

    pub(crate) fn push(&mut self, change: Change) {
        self.0.push(change);
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
/// Every frame starts shared and untagged. State is kept as maximal runs: adjacent
/// frames with equal [`PageState`] always form one run, so equal page states always give
/// equal runs whatever sequence of [`set`](AttrMap::set)s produced them.
#[derive(Debug, Clone)]
pub struct AttrMap {
    frames: u64,
    /// Run start -> (run end, state). The runs tile `[0, frames)` exactly.
    runs: BTreeMap<u64, (u64, PageState)>,
}

impl AttrMap {
    /// A map for a guest of `guest_size` bytes, all shared.
    ///
    /// The size must be a non-zero multiple of 4 KiB.
    pub fn new(guest_size: u64) -> Result<Self, RangeError> {
        let range = FrameRange::from_gpa(0, guest_size)?;
        let mut runs = BTreeMap::new();
        runs.insert(0, (range.pages(), PageState::SHARED));
        Ok(AttrMap {
            frames: range.pages(),
            runs,
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
    /// in address order; empty when the range already had that state.
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

        // Collect the runs overlapping [a, b).
        let first = *self
            .runs
            .range(..=a)
            .next_back()
            .map(|(s, _)| s)
            .expect("runs tile the guest");
        let overlapping: Vec<(u64, u64, PageState)> = self
            .runs
            .range(first..b)
            .map(|(&s, &(e, st))| (s, e, st))
            .collect();
        if overlapping.len() == 1 && overlapping[0].2 == state {
            return Ok(changes);
        }
        for &(s, e, st) in &overlapping {
            if st != state {
                let cs = s.max(a);
                let ce = e.min(b);
                changes.push(Change {
                    range: FrameRange::from_bounds(Gfn(cs), Gfn(ce)).expect("non-empty overlap"),
                    previous: st,
                });
            }
            self.runs.remove(&s);
        }
        // Keep the parts of the first and last runs outside [a, b).
        let (fs, _, fst) = overlapping[0];
        let (_, le, lst) = overlapping[overlapping.len() - 1];
        let mut new_start = a;
        let mut new_end = b;
        if fs < a {
            if fst == state {
                new_start = fs;
            } else {
                self.runs.insert(fs, (a, fst));
            }
        }
        if le > b {
            if lst == state {
                new_end = le;
            } else {
                self.runs.insert(b, (le, lst));
            }
        }
        // Merge with the neighbours outside.
        if let Some((&ps, &(pe, pst))) = self.runs.range(..new_start).next_back()
            && pe == new_start
            && pst == state
        {
            self.runs.remove(&ps);
            new_start = ps;
        }
        if let Some(&(ne, nst)) = self.runs.get(&new_end)
            && nst == state
        {
            self.runs.remove(&new_end);
            new_end = ne;
        }
        self.runs.insert(new_start, (new_end, state));
        Ok(changes)
    }

    /// The state of one frame.
    pub fn get(&self, gfn: Gfn) -> Result<PageState, RangeError> {
        let range = self.check(FrameRange::new(gfn, 1)?)?;
        let (_, &(_, state)) = self
            .runs
            .range(..=range.start().0)
            .next_back()
            .expect("runs tile the guest");
        Ok(state)
    }

    /// Whether every frame of `range` has exactly the attributes `attributes` (tags are
    /// not compared).
    pub fn range_is(&self, range: FrameRange, attributes: Attributes) -> Result<bool, RangeError> {
        Ok(self
            .runs(range)?
            .all(|run| run.state.attributes == attributes))
    }

    /// The maximal runs intersecting `range`, clipped to it, in address order.
    pub fn runs(&self, range: FrameRange) -> Result<Runs<'_>, RangeError> {
        let range = self.check(range)?;
        let first = *self
            .runs
            .range(..=range.start().0)
            .next_back()
            .map(|(s, _)| s)
            .expect("runs tile the guest");
        Ok(Runs {
            inner: self.runs.range(first..range.end().0),
            clip: range,
        })
    }

    /// The number of maximal runs in the whole guest (at least one).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// The bytes of heap this map holds, for comparing representations.
    pub fn heap_bytes(&self) -> usize {
        // A B-tree node holds up to 11 entries; count a full entry each, a lower bound.
        self.runs.len() * (size_of::<u64>() + size_of::<(u64, PageState)>())
    }
}

/// Iterator over the runs of an [`AttrMap`] within a range; see [`AttrMap::runs`].
pub struct Runs<'a> {
    inner: std::collections::btree_map::Range<'a, u64, (u64, PageState)>,
    clip: FrameRange,
}

impl Iterator for Runs<'_> {
    type Item = Run;

    fn next(&mut self) -> Option<Run> {
        let (&s, &(e, state)) = self.inner.next()?;
        let range = FrameRange::from_bounds(
            Gfn(s.max(self.clip.start().0)),
            Gfn(e.min(self.clip.end().0)),
        )?;
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
