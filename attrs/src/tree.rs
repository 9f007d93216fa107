// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The radix tree behind [`AttrMap`](crate::AttrMap).
//!
//! Frame numbers are split like a page table: a leaf covers [`LEAF_FRAMES`] frames and
//! every interior node has [`FANOUT`] slots, so a slot at level `l` covers
//! `2^(12 + 6 * l)` frames. The height of the tree is the smallest that covers the
//! guest; frames past the guest's end stay shared and are never set.
//!
//! Every slot is in exactly one canonical form, a function of the page states it covers
//! and nothing else:
//! - [`Slot::Uniform`] when all its frames have one state (at any level), so large aligned
//!   conversions cost O(height) and a uniform subtree holds no memory;
//! - otherwise, at level 0, [`Slot::Bits`] (one bit per frame) when every frame is
//!   untagged and the leaf has more than [`RUN_LEAF_MAX`] runs, and [`Slot::Runs`] (a
//!   sorted run list) when it has fewer runs or any tag;
//! - otherwise, above level 0, [`Slot::Node`].
//!
//! Equal page states therefore always give equal trees, whatever sequence of sets
//! produced them. Each node records its number of internal run boundaries (adjacent
//! frames whose states differ) and the states of its first and last frame. A set updates
//! these counts only for the slots it touches, which keeps
//! [`run_count`](crate::AttrMap::run_count) O(height) and lets a node tell it has become
//! uniform without looking at its 64 slots.
//!
//! Children sit behind [`Arc`] and are changed with [`Arc::make_mut`]: cloning a tree
//! costs one reference count, and a later set copies only the path it changes while a
//! clone still holds the old one (path copying).

use std::ops::ControlFlow;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::attributes::PageState;

/// log2 of the frames a leaf covers.
pub(crate) const LEAF_SHIFT: u32 = 12;
/// Frames per leaf: a 4096-bit bitmap, 512 bytes.
pub(crate) const LEAF_FRAMES: u64 = 1 << LEAF_SHIFT;
const LEAF_WORDS: usize = (LEAF_FRAMES / 64) as usize;
/// log2 of the slots of an interior node.
pub(crate) const FANOUT_SHIFT: u32 = 6;
/// Slots per interior node.
pub(crate) const FANOUT: usize = 1 << FANOUT_SHIFT;
/// An untagged leaf with at most this many runs is a run list, with more a bitmap.
///
/// Up to here the run list is smaller than the 512-byte bitmap, lives inline in the
/// leaf, and is searched in a few compares.
pub(crate) const RUN_LEAF_MAX: usize = 8;
/// The tallest tree: `12 + 6 * 7 = 54` bits of frame number cover [`crate::MAX_FRAMES`].
pub(crate) const MAX_HEIGHT: u32 = 7;

const ARC_HEADER: usize = 2 * size_of::<usize>();

/// log2 of the frames a slot at `level` covers.
pub(crate) const fn span_shift(level: u32) -> u32 {
    LEAF_SHIFT + FANOUT_SHIFT * level
}

/// The smallest height whose root covers `frames` frames.
pub(crate) fn height_for(frames: u64) -> u32 {
    let mut height = 0;
    while height < MAX_HEIGHT && frames > 1u64 << span_shift(height) {
        height += 1;
    }
    height
}

/// The bitmap form of a state, if it has one.
fn bit_of(state: PageState) -> Option<bool> {
    if state == PageState::SHARED {
        Some(false)
    } else if state == PageState::PRIVATE {
        Some(true)
    } else {
        None
    }
}

fn state_of(bit: bool) -> PageState {
    if bit {
        PageState::PRIVATE
    } else {
        PageState::SHARED
    }
}

/// The bits `[lo, hi)` of a word, for `lo < hi <= 64`.
fn mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & (u64::MAX << (lo & 63))
}

/// One slot of the tree, covering `2^span_shift(level)` frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Every frame has this state.
    Uniform(PageState),
    /// An interior node (level >= 1).
    Node(Arc<Node>),
    /// A leaf of untagged frames, one bit per frame (level 0).
    Bits(Arc<BitLeaf>),
    /// A leaf as a run list (level 0).
    Runs(Arc<RunLeaf>),
}

/// What a parent needs to know about a slot to count boundaries.
#[derive(Debug, Clone, Copy)]
struct Summary {
    boundaries: u64,
    first: PageState,
    last: PageState,
}

impl Slot {
    fn summary(&self) -> Summary {
        match self {
            Slot::Uniform(s) => Summary {
                boundaries: 0,
                first: *s,
                last: *s,
            },
            Slot::Node(n) => Summary {
                boundaries: n.boundaries,
                first: n.first,
                last: n.last,
            },
            Slot::Bits(l) => Summary {
                boundaries: u64::from(l.boundaries),
                first: l.state_at(0),
                last: l.state_at(LEAF_FRAMES - 1),
            },
            Slot::Runs(l) => Summary {
                boundaries: l.runs.len().saturating_sub(1) as u64,
                first: l.runs.first().map_or(PageState::SHARED, |r| r.state),
                last: l.runs.last().map_or(PageState::SHARED, |r| r.state),
            },
        }
    }

    /// The number of adjacent frame pairs in the slot whose states differ.
    pub(crate) fn boundaries(&self) -> u64 {
        self.summary().boundaries
    }

    /// Heap bytes held by this slot and everything below it.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Slot::Uniform(_) => 0,
            Slot::Node(n) => {
                ARC_HEADER + size_of::<Node>() + n.slots.iter().map(Slot::heap_bytes).sum::<usize>()
            }
            Slot::Bits(_) => ARC_HEADER + size_of::<BitLeaf>(),
            Slot::Runs(l) => {
                let spilled = if l.runs.spilled() {
                    l.runs.capacity() * size_of::<LeafRun>()
                } else {
                    0
                };
                ARC_HEADER + size_of::<RunLeaf>() + spilled
            }
        }
    }
}

/// An interior node: [`FANOUT`] slots one level down, never all one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    slots: [Slot; FANOUT],
    /// Adjacent frame pairs in the node whose states differ (never zero).
    boundaries: u64,
    /// State of the node's first frame.
    first: PageState,
    /// State of the node's last frame.
    last: PageState,
}

impl Node {
    fn uniform(state: PageState) -> Node {
        Node {
            slots: std::array::from_fn(|_| Slot::Uniform(state)),
            boundaries: 0,
            first: state,
            last: state,
        }
    }

    /// Boundaries inside slots `from..=to` plus those between consecutive ones.
    fn boundaries_within(&self, from: usize, to: usize) -> u64 {
        let mut total = 0;
        let mut prev_last = None;
        for slot in self.slots.iter().take(to + 1).skip(from) {
            let s = slot.summary();
            total += s.boundaries;
            if prev_last.is_some_and(|last| last != s.first) {
                total += 1;
            }
            prev_last = Some(s.last);
        }
        total
    }

    /// Sets the frames `[lo, hi)` of this node (offsets from its start) to `state`.
    fn set(&mut self, level: u32, lo: u64, hi: u64, state: PageState) {
        let child = level.saturating_sub(1);
        let cs = span_shift(child);
        let i = ((lo >> cs) as usize).min(FANOUT - 1);
        let j = (((hi - 1) >> cs) as usize).min(FANOUT - 1);
        // Only the touched slots and the edges to their neighbours can change.
        let (from, to) = (i.saturating_sub(1), (j + 1).min(FANOUT - 1));
        let before = self.boundaries_within(from, to);
        for (k, slot) in self.slots.iter_mut().enumerate().take(j + 1).skip(i) {
            let base = (k as u64) << cs;
            let clo = lo.max(base) - base;
            let chi = hi.min(base + (1 << cs)) - base;
            set_slot(slot, child, clo, chi, state);
        }
        let after = self.boundaries_within(from, to);
        self.boundaries = (self.boundaries + after).saturating_sub(before);
        self.first = self.slots[0].summary().first;
        self.last = self.slots[FANOUT - 1].summary().last;
    }
}

/// A leaf of untagged frames: bit set means private.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BitLeaf {
    words: [u64; LEAF_WORDS],
    /// Adjacent frame pairs whose bits differ (at least [`RUN_LEAF_MAX`]).
    boundaries: u32,
}

impl BitLeaf {
    fn bit(&self, i: u64) -> bool {
        let i = i & (LEAF_FRAMES - 1);
        (self.words[(i / 64) as usize] >> (i % 64)) & 1 != 0
    }

    fn state_at(&self, i: u64) -> PageState {
        state_of(self.bit(i))
    }

    /// One past the last frame of the run of equal bits that holds frame `i`.
    fn run_end(&self, i: u64) -> u64 {
        let i = i & (LEAF_FRAMES - 1);
        let fill = if self.bit(i) { u64::MAX } else { 0 };
        let mut w = (i / 64) as usize;
        let mut diff = (self.words[w] ^ fill) & (u64::MAX << (i % 64));
        loop {
            if diff != 0 {
                return w as u64 * 64 + u64::from(diff.trailing_zeros());
            }
            w += 1;
            if w == LEAF_WORDS {
                return LEAF_FRAMES;
            }
            diff = self.words[w] ^ fill;
        }
    }

    /// How many `k` in `[from, to)` have `bit(k) != bit(k + 1)`; `to < LEAF_FRAMES`.
    fn transitions(&self, from: u64, to: u64) -> u32 {
        if from >= to {
            return 0;
        }
        let (fw, lw) = ((from / 64) as usize, ((to - 1) / 64) as usize);
        let mut count = 0;
        for w in fw..=lw.min(LEAF_WORDS - 1) {
            let cur = self.words[w];
            let next = self.words.get(w + 1).map_or(0, |n| n & 1);
            let flips = cur ^ ((cur >> 1) | (next << 63));
            let lo = if w == fw { from % 64 } else { 0 };
            let hi = if w == lw { (to - 1) % 64 + 1 } else { 64 };
            count += (flips & mask(lo, hi)).count_ones();
        }
        count
    }

    fn fill(&mut self, lo: u64, hi: u64, bit: bool) {
        let (fw, lw) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
        for w in fw..=lw.min(LEAF_WORDS - 1) {
            let a = if w == fw { lo % 64 } else { 0 };
            let b = if w == lw { (hi - 1) % 64 + 1 } else { 64 };
            let m = mask(a, b);
            if bit {
                self.words[w] |= m;
            } else {
                self.words[w] &= !m;
            }
        }
    }

    /// Sets frames `[lo, hi)` (`lo < hi <= LEAF_FRAMES`) to `bit`, keeping the count.
    fn set(&mut self, lo: u64, hi: u64, bit: bool) {
        // Only pairs with a frame in [lo, hi) can change.
        let (from, to) = (lo.saturating_sub(1), hi.min(LEAF_FRAMES - 1));
        let before = self.transitions(from, to);
        self.fill(lo, hi, bit);
        let after = self.transitions(from, to);
        self.boundaries = (self.boundaries + after).saturating_sub(before);
    }

    fn from_runs(runs: &[LeafRun]) -> Option<BitLeaf> {
        let mut leaf = BitLeaf {
            words: [0; LEAF_WORDS],
            boundaries: runs.len().saturating_sub(1) as u32,
        };
        for (k, run) in runs.iter().enumerate() {
            let end = runs.get(k + 1).map_or(LEAF_FRAMES, |r| u64::from(r.start));
            if bit_of(run.state)? {
                leaf.fill(u64::from(run.start), end, true);
            }
        }
        Some(leaf)
    }

    fn to_runs(&self) -> RunLeaf {
        let mut runs = SmallVec::new();
        let mut p = 0;
        while p < LEAF_FRAMES {
            runs.push(LeafRun {
                start: p as u16,
                state: self.state_at(p),
            });
            p = self.run_end(p);
        }
        RunLeaf { runs }
    }
}

/// One run of a [`RunLeaf`]: from `start` to the next run's start (or the leaf's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeafRun {
    start: u16,
    state: PageState,
}

const _: () = assert!(LEAF_FRAMES <= 1 << 16, "leaf offsets are u16");

/// A leaf as a sorted run list: starts strictly increasing from 0, neighbours differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunLeaf {
    runs: SmallVec<[LeafRun; RUN_LEAF_MAX]>,
}

impl RunLeaf {
    fn uniform(state: PageState) -> RunLeaf {
        let mut runs = SmallVec::new();
        runs.push(LeafRun { start: 0, state });
        RunLeaf { runs }
    }

    /// The index of the run holding frame `i` of the leaf.
    fn index_of(&self, i: u64) -> usize {
        let i = i & (LEAF_FRAMES - 1);
        self.runs
            .partition_point(|r| u64::from(r.start) <= i)
            .saturating_sub(1)
    }

    fn state(&self, index: usize) -> PageState {
        self.runs.get(index).map_or(PageState::SHARED, |r| r.state)
    }

    fn end(&self, index: usize) -> u64 {
        self.runs
            .get(index + 1)
            .map_or(LEAF_FRAMES, |r| u64::from(r.start))
    }

    fn state_at(&self, i: u64) -> PageState {
        self.state(self.index_of(i))
    }

    /// Sets frames `[lo, hi)` (`lo < hi <= LEAF_FRAMES`) to `state`, keeping runs maximal.
    fn set(&mut self, lo: u64, hi: u64, state: PageState) {
        fn push(out: &mut SmallVec<[LeafRun; RUN_LEAF_MAX]>, start: u64, state: PageState) {
            if out.last().map(|r| r.state) != Some(state) {
                out.push(LeafRun {
                    start: start as u16,
                    state,
                });
            }
        }
        let mut out = SmallVec::new();
        let after = (hi < LEAF_FRAMES).then(|| self.state_at(hi));
        for run in self.runs.iter().take_while(|r| u64::from(r.start) < lo) {
            push(&mut out, u64::from(run.start), run.state);
        }
        push(&mut out, lo, state);
        if let Some(after) = after {
            push(&mut out, hi, after);
        }
        for run in self.runs.iter().filter(|r| u64::from(r.start) > hi) {
            push(&mut out, u64::from(run.start), run.state);
        }
        self.runs = out;
    }

    /// The canonical slot for this leaf's content.
    fn into_slot(self) -> Slot {
        if self.runs.len() <= 1 {
            return Slot::Uniform(self.state(0));
        }
        if self.runs.len() > RUN_LEAF_MAX
            && let Some(bits) = BitLeaf::from_runs(&self.runs)
        {
            return Slot::Bits(Arc::new(bits));
        }
        Slot::Runs(Arc::new(self))
    }
}

/// Sets the frames `[lo, hi)` of `slot` (offsets from its start, `lo < hi`, within its
/// span) to `state`, leaving the slot canonical.
pub(crate) fn set_slot(slot: &mut Slot, level: u32, lo: u64, hi: u64, state: PageState) {
    if lo == 0 && hi >= 1u64 << span_shift(level) {
        *slot = Slot::Uniform(state);
        return;
    }
    if level == 0 {
        set_leaf(slot, lo, hi, state);
        return;
    }
    if let Slot::Uniform(old) = *slot {
        if old == state {
            return;
        }
        *slot = Slot::Node(Arc::new(Node::uniform(old)));
    }
    if let Slot::Node(arc) = slot {
        let node = Arc::make_mut(arc);
        node.set(level, lo, hi, state);
        if node.boundaries == 0 {
            let uniform = node.first;
            *slot = Slot::Uniform(uniform);
        }
    }
}

fn set_leaf(slot: &mut Slot, lo: u64, hi: u64, state: PageState) {
    let old = std::mem::replace(slot, Slot::Uniform(state));
    *slot = match old {
        Slot::Bits(mut arc) => match bit_of(state) {
            Some(bit) => {
                let leaf = Arc::make_mut(&mut arc);
                leaf.set(lo, hi, bit);
                if leaf.boundaries == 0 {
                    Slot::Uniform(leaf.state_at(0))
                } else if (leaf.boundaries as usize) < RUN_LEAF_MAX {
                    Slot::Runs(Arc::new(leaf.to_runs()))
                } else {
                    Slot::Bits(arc)
                }
            }
            None => {
                let mut runs = arc.to_runs();
                runs.set(lo, hi, state);
                runs.into_slot()
            }
        },
        Slot::Runs(arc) => {
            let mut runs = Arc::unwrap_or_clone(arc);
            runs.set(lo, hi, state);
            runs.into_slot()
        }
        Slot::Uniform(old) if old == state => Slot::Uniform(old),
        Slot::Uniform(old) => {
            let mut runs = RunLeaf::uniform(old);
            runs.set(lo, hi, state);
            runs.into_slot()
        }
        // Nodes never sit at level 0; keep whatever was there.
        node @ Slot::Node(_) => node,
    };
}

/// The state of frame `gfn` in the tree rooted at `root` of height `height`.
pub(crate) fn get(root: &Slot, height: u32, gfn: u64) -> PageState {
    let mut slot = root;
    let mut level = height;
    loop {
        match slot {
            Slot::Uniform(s) => return *s,
            Slot::Node(n) => {
                level = level.saturating_sub(1);
                slot = &n.slots[((gfn >> span_shift(level)) as usize) & (FANOUT - 1)];
            }
            Slot::Bits(l) => return l.state_at(gfn),
            Slot::Runs(l) => return l.state_at(gfn),
        }
    }
}

/// The state of frame `gfn` and the end of the piece of equal state that holds it (the
/// end of a uniform slot or of a leaf's run; the next piece may have the same state).
pub(crate) fn locate(root: &Slot, height: u32, gfn: u64) -> (PageState, u64) {
    let mut slot = root;
    let mut level = height;
    loop {
        let shift = span_shift(level);
        let base = (gfn >> shift) << shift;
        match slot {
            Slot::Uniform(s) => return (*s, base.saturating_add(1 << shift)),
            Slot::Node(n) => {
                level = level.saturating_sub(1);
                slot = &n.slots[((gfn >> span_shift(level)) as usize) & (FANOUT - 1)];
            }
            Slot::Bits(l) => return (l.state_at(gfn), base + l.run_end(gfn)),
            Slot::Runs(l) => {
                let index = l.index_of(gfn);
                return (l.state(index), base + l.end(index));
            }
        }
    }
}

/// Calls `f(start, end, state)` for consecutive pieces of equal state covering the
/// frames `[lo, hi)` of `slot` (which starts at frame `base`), in address order, until
/// `f` breaks. Pieces are maximal within a leaf but may continue in the next slot.
pub(crate) fn visit<F>(
    slot: &Slot,
    level: u32,
    base: u64,
    lo: u64,
    hi: u64,
    f: &mut F,
) -> ControlFlow<()>
where
    F: FnMut(u64, u64, PageState) -> ControlFlow<()>,
{
    match slot {
        Slot::Uniform(s) => f(lo, hi, *s),
        Slot::Node(n) => {
            let child = level.saturating_sub(1);
            let cs = span_shift(child);
            let i = (((lo - base) >> cs) as usize).min(FANOUT - 1);
            let j = (((hi - 1 - base) >> cs) as usize).min(FANOUT - 1);
            for (k, slot) in n.slots.iter().enumerate().take(j + 1).skip(i) {
                let cb = base + ((k as u64) << cs);
                visit(slot, child, cb, lo.max(cb), hi.min(cb + (1 << cs)), f)?;
            }
            ControlFlow::Continue(())
        }
        Slot::Bits(l) => {
            let mut p = lo;
            while p < hi {
                let end = (base + l.run_end(p - base)).min(hi);
                f(p, end, l.state_at(p - base))?;
                p = end;
            }
            ControlFlow::Continue(())
        }
        Slot::Runs(l) => {
            let mut index = l.index_of(lo - base);
            let mut p = lo;
            while p < hi {
                let end = (base + l.end(index)).min(hi);
                f(p, end, l.state(index))?;
                p = end;
                index += 1;
            }
            ControlFlow::Continue(())
        }
    }
}

/// Checks that `slot` is canonical and its recorded counts are right; returns its
/// summary computed from scratch.
#[cfg(test)]
pub(crate) fn check(slot: &Slot, level: u32) -> Result<(u64, PageState, PageState), String> {
    match slot {
        Slot::Uniform(s) => Ok((0, *s, *s)),
        Slot::Node(n) => {
            if level == 0 {
                return Err("node at level 0".into());
            }
            let mut total = 0;
            let mut prev: Option<PageState> = None;
            let mut first = None;
            for child in &n.slots {
                let (b, f, l) = check(child, level - 1)?;
                total += b;
                if prev.is_some_and(|p| p != f) {
                    total += 1;
                }
                first.get_or_insert(f);
                prev = Some(l);
            }
            if total == 0 {
                return Err(format!("uniform node not collapsed at level {level}"));
            }
            let (first, last) = (first.unwrap_or_default(), prev.unwrap_or_default());
            if (n.boundaries, n.first, n.last) != (total, first, last) {
                return Err(format!(
                    "node at level {level} records {:?}, holds {:?}",
                    (n.boundaries, n.first, n.last),
                    (total, first, last)
                ));
            }
            Ok((total, first, last))
        }
        Slot::Bits(l) => {
            if level != 0 {
                return Err(format!("bitmap leaf at level {level}"));
            }
            let total = l.transitions(0, LEAF_FRAMES - 1);
            if total != l.boundaries {
                return Err(format!(
                    "bitmap leaf records {} boundaries, holds {total}",
                    l.boundaries
                ));
            }
            if (total as usize) < RUN_LEAF_MAX {
                return Err(format!("bitmap leaf with {} runs", total + 1));
            }
            Ok((u64::from(total), l.state_at(0), l.state_at(LEAF_FRAMES - 1)))
        }
        Slot::Runs(l) => {
            if level != 0 {
                return Err(format!("run leaf at level {level}"));
            }
            let runs = &l.runs;
            if runs.len() < 2 || runs[0].start != 0 {
                return Err(format!(
                    "run leaf {runs:?} is uniform or does not start at 0"
                ));
            }
            for w in runs.windows(2) {
                if w[0].start >= w[1].start || w[0].state == w[1].state {
                    return Err(format!("run leaf {runs:?} is not sorted and maximal"));
                }
            }
            let untagged = runs.iter().all(|r| bit_of(r.state).is_some());
            if untagged && runs.len() > RUN_LEAF_MAX {
                return Err(format!("untagged run leaf with {} runs", runs.len()));
            }
            Ok((
                runs.len() as u64 - 1,
                runs[0].state,
                runs[runs.len() - 1].state,
            ))
        }
    }
}
