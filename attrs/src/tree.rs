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
//! - [`Slot::Uniform`] when all its frames have one state (at any level): an aligned
//!   conversion costs O(height) whatever its size, and a uniform subtree holds no heap;
//! - at level 1 (1 GiB of frames), [`Slot::Dense`], one bit per frame, when every frame
//!   is untagged and the region has at least [`DENSE_MIN_BOUNDARIES`] run boundaries:
//!   densely converted memory costs what a plain bitmap costs, one hot root lookup and
//!   one word;
//! - at level 0 (a leaf of 4096 frames), [`Slot::Bits`], one bit per frame, when every
//!   frame is untagged and the leaf has more than [`RUN_LEAF_MAX`] runs, or
//!   [`Slot::Runs`], a sorted run list, when it has fewer runs or any tag;
//! - otherwise [`Slot::Node`].
//!
//! Equal page states therefore always give equal trees, whatever sequence of sets
//! produced them. Each node records its number of internal run boundaries (adjacent
//! frames whose states differ), how many of its slots hold a tagged frame, and the states
//! of its first and last frame. A set updates these only for the slots it touches and
//! reads a neighbour only when it changes the frame next to it, which keeps
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
use crate::map::Changes;

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
/// An untagged level-1 region with at least this many run boundaries is one bitmap.
///
/// That is 8 per leaf on average, where leaves turn into bitmaps: from here on the
/// region as 64 leaves would cost about the 32 KiB of the bitmap, and a lookup one more
/// pointer.
pub(crate) const DENSE_MIN_BOUNDARIES: u64 = 512;
const DENSE_FRAMES: u64 = 1 << span_shift(1);
const DENSE_WORDS: usize = (DENSE_FRAMES / 64) as usize;
/// The tallest tree: `12 + 6 * 7 = 54` bits of frame number cover [`crate::MAX_FRAMES`].
pub(crate) const MAX_HEIGHT: u32 = 7;

const ARC_HEADER: usize = 2 * size_of::<usize>();

/// A leaf of untagged frames.
pub(crate) type BitLeaf = Bitmap<LEAF_WORDS>;
/// A level-1 region of untagged frames.
pub(crate) type Dense = Bitmap<DENSE_WORDS>;

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
    /// A level-1 region of untagged frames, one bit per frame.
    Dense(Arc<Dense>),
    /// A leaf of untagged frames, one bit per frame (level 0).
    Bits(Arc<BitLeaf>),
    /// A leaf as a run list (level 0).
    Runs(Arc<RunLeaf>),
}

impl Slot {
    /// The number of adjacent frame pairs in the slot whose states differ.
    pub(crate) fn boundaries(&self) -> u64 {
        match self {
            Slot::Uniform(_) => 0,
            Slot::Node(n) => n.boundaries,
            Slot::Dense(d) => u64::from(d.boundaries),
            Slot::Bits(l) => u64::from(l.boundaries),
            Slot::Runs(l) => l.runs.len().saturating_sub(1) as u64,
        }
    }

    fn first(&self) -> PageState {
        match self {
            Slot::Uniform(s) => *s,
            Slot::Node(n) => n.first,
            Slot::Dense(d) => d.state_at(0),
            Slot::Bits(l) => l.state_at(0),
            Slot::Runs(l) => l.state(0),
        }
    }

    fn last(&self) -> PageState {
        match self {
            Slot::Uniform(s) => *s,
            Slot::Node(n) => n.last,
            Slot::Dense(d) => d.state_at(Dense::FRAMES - 1),
            Slot::Bits(l) => l.state_at(LEAF_FRAMES - 1),
            Slot::Runs(l) => l.state(l.runs.len().saturating_sub(1)),
        }
    }

    /// Whether any frame of the slot has a tag.
    fn tagged(&self) -> bool {
        match self {
            Slot::Uniform(s) => s.tag.is_some(),
            Slot::Node(n) => n.tagged > 0,
            Slot::Dense(_) | Slot::Bits(_) => false,
            Slot::Runs(l) => l.runs.iter().any(|r| r.state.tag.is_some()),
        }
    }

    /// Heap bytes held by this slot and everything below it.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Slot::Uniform(_) => 0,
            Slot::Node(n) => {
                ARC_HEADER + size_of::<Node>() + n.slots.iter().map(Slot::heap_bytes).sum::<usize>()
            }
            Slot::Dense(_) => ARC_HEADER + size_of::<Dense>(),
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
    /// How many slots hold a tagged frame.
    tagged: u32,
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
            tagged: if state.tag.is_some() {
                FANOUT as u32
            } else {
                0
            },
            first: state,
            last: state,
        }
    }

    /// The level-1 node holding the same frames as `dense`.
    fn from_dense(dense: &Dense) -> Node {
        Node {
            slots: std::array::from_fn(|k| {
                let mut words = [0; LEAF_WORDS];
                words.copy_from_slice(&dense.words[k * LEAF_WORDS..(k + 1) * LEAF_WORDS]);
                let leaf = BitLeaf::with_words(words);
                leaf_slot(leaf)
            }),
            boundaries: u64::from(dense.boundaries),
            tagged: 0,
            first: dense.state_at(0),
            last: dense.state_at(Dense::FRAMES - 1),
        }
    }

    /// The bitmap of this level-1 node, if no frame in it is tagged.
    fn to_dense(&self) -> Option<Dense> {
        let mut dense = Dense {
            boundaries: u32::try_from(self.boundaries).ok()?,
            words: [0; DENSE_WORDS],
        };
        for (k, slot) in self.slots.iter().enumerate() {
            let words = &mut dense.words[k * LEAF_WORDS..(k + 1) * LEAF_WORDS];
            match slot {
                Slot::Uniform(s) => {
                    if bit_of(*s)? {
                        words.fill(u64::MAX);
                    }
                }
                Slot::Bits(l) => words.copy_from_slice(&l.words),
                Slot::Runs(l) => words.copy_from_slice(&BitLeaf::from_runs(&l.runs)?.words),
                Slot::Node(_) | Slot::Dense(_) => return None,
            }
        }
        Some(dense)
    }

    /// Boundaries and tagged slots that a set of slots `i..=j` can change: those inside
    /// the slots, between them, and on the outer edges the set reaches.
    fn window(&self, i: usize, j: usize, left: bool, right: bool) -> (u64, u32) {
        let mut boundaries = 0;
        let mut tagged = 0;
        for slot in &self.slots[i..=j] {
            boundaries += slot.boundaries();
            tagged += u32::from(slot.tagged());
        }
        for k in i..j {
            boundaries += u64::from(self.slots[k].last() != self.slots[k + 1].first());
        }
        if left && i > 0 {
            boundaries += u64::from(self.slots[i - 1].last() != self.slots[i].first());
        }
        if right && j + 1 < FANOUT {
            boundaries += u64::from(self.slots[j].last() != self.slots[j + 1].first());
        }
        (boundaries, tagged)
    }

    /// Sets the frames `[lo, hi)` of this node (offsets from `base`, its first frame) to
    /// `state`, recording what changes in `out`.
    fn set(
        &mut self,
        level: u32,
        base: u64,
        lo: u64,
        hi: u64,
        state: PageState,
        out: &mut Changes,
    ) {
        let child = level.saturating_sub(1);
        let cs = span_shift(child);
        let i = ((lo >> cs) as usize).min(FANOUT - 1);
        let j = (((hi - 1) >> cs) as usize).min(FANOUT - 1);
        // An outer edge can change only when the set reaches the frame beside it.
        let left = lo == (i as u64) << cs;
        let right = hi == (j as u64 + 1) << cs;
        let (b0, t0) = self.window(i, j, left, right);
        for k in i..=j {
            let start = (k as u64) << cs;
            let clo = lo.max(start) - start;
            let chi = hi.min(start + (1 << cs)) - start;
            set_slot(
                &mut self.slots[k],
                child,
                base + start,
                clo,
                chi,
                state,
                out,
            );
        }
        let (b1, t1) = self.window(i, j, left, right);
        self.boundaries = (self.boundaries + b1).saturating_sub(b0);
        self.tagged = (self.tagged + t1).saturating_sub(t0);
        if i == 0 && left {
            self.first = self.slots[0].first();
        }
        if j == FANOUT - 1 && right {
            self.last = self.slots[FANOUT - 1].last();
        }
    }
}

/// One bit per frame, set means private, for `W * 64` untagged frames.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)] // The count first, beside the reference counts, away from most words.
pub(crate) struct Bitmap<const W: usize> {
    /// Adjacent frame pairs whose bits differ.
    boundaries: u32,
    words: [u64; W],
}

impl<const W: usize> Bitmap<W> {
    const FRAMES: u64 = W as u64 * 64;

    fn with_words(words: [u64; W]) -> Self {
        let mut bitmap = Bitmap {
            boundaries: 0,
            words,
        };
        bitmap.boundaries = bitmap.transitions(0, Self::FRAMES - 1);
        bitmap
    }

    fn bit(&self, i: u64) -> bool {
        let i = i & (Self::FRAMES - 1);
        (self.words[(i / 64) as usize] >> (i % 64)) & 1 != 0
    }

    fn state_at(&self, i: u64) -> PageState {
        state_of(self.bit(i))
    }

    /// One past the last frame of the run of equal bits that holds frame `i`.
    fn run_end(&self, i: u64) -> u64 {
        let i = i & (Self::FRAMES - 1);
        let fill = if self.bit(i) { u64::MAX } else { 0 };
        let mut w = (i / 64) as usize;
        let mut diff = (self.words[w] ^ fill) & (u64::MAX << (i % 64));
        loop {
            if diff != 0 {
                return w as u64 * 64 + u64::from(diff.trailing_zeros());
            }
            w += 1;
            if w >= W {
                return Self::FRAMES;
            }
            diff = self.words[w] ^ fill;
        }
    }

    /// How many `k` in `[from, to)` have `bit(k) != bit(k + 1)`; `to < FRAMES`.
    fn transitions(&self, from: u64, to: u64) -> u32 {
        if from >= to {
            return 0;
        }
        let (fw, lw) = ((from / 64) as usize, ((to - 1) / 64) as usize);
        let mut count = 0;
        for w in fw..=lw.min(W - 1) {
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
        for w in fw..=lw.min(W - 1) {
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

    /// Sets frames `[lo, hi)` (`lo < hi <= FRAMES`) to `bit`, keeping the count and
    /// recording the frames that change (numbered from `base`) in `out`.
    fn set(&mut self, base: u64, lo: u64, hi: u64, bit: bool, out: &mut Changes) {
        // Only pairs with a frame in [lo, hi) can change, and inside it none is left.
        let before = self.transitions(lo.saturating_sub(1), hi.min(Self::FRAMES - 1));
        let previous = state_of(!bit);
        let (fw, lw) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
        for w in fw..=lw.min(W - 1) {
            let a = if w == fw { lo % 64 } else { 0 };
            let b = if w == lw { (hi - 1) % 64 + 1 } else { 64 };
            let m = mask(a, b);
            let old = self.words[w];
            let new = if bit { old | m } else { old & !m };
            self.words[w] = new;
            let mut diff = old ^ new;
            while diff != 0 {
                let first = u64::from(diff.trailing_zeros());
                let len = u64::from((diff >> first).trailing_ones());
                let start = base + w as u64 * 64 + first;
                out.push_piece(start, start + len, previous);
                diff &= !mask(first, first + len);
            }
        }
        let after = u32::from(lo > 0 && self.bit(lo - 1) != bit)
            + u32::from(hi < Self::FRAMES && self.bit(hi) != bit);
        self.boundaries = (self.boundaries + after).saturating_sub(before);
    }
}

impl BitLeaf {
    fn from_runs(runs: &[LeafRun]) -> Option<BitLeaf> {
        let mut leaf = BitLeaf {
            boundaries: runs.len().saturating_sub(1) as u32,
            words: [0; LEAF_WORDS],
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

/// The canonical slot for a leaf of untagged frames.
fn leaf_slot(leaf: BitLeaf) -> Slot {
    if leaf.boundaries == 0 {
        Slot::Uniform(leaf.state_at(0))
    } else if (leaf.boundaries as usize) < RUN_LEAF_MAX {
        Slot::Runs(Arc::new(leaf.to_runs()))
    } else {
        Slot::Bits(Arc::new(leaf))
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

    /// Sets frames `[lo, hi)` (`lo < hi <= LEAF_FRAMES`) to `state`, keeping runs
    /// maximal and recording what changes (numbered from `base`) in `out`.
    fn set(&mut self, base: u64, lo: u64, hi: u64, state: PageState, out: &mut Changes) {
        fn push(out: &mut SmallVec<[LeafRun; RUN_LEAF_MAX]>, start: u64, state: PageState) {
            if out.last().map(|r| r.state) != Some(state) {
                out.push(LeafRun {
                    start: start as u16,
                    state,
                });
            }
        }
        let mut index = self.index_of(lo);
        while index < self.runs.len() && u64::from(self.runs[index].start) < hi {
            let previous = self.state(index);
            if previous != state {
                let start = u64::from(self.runs[index].start).max(lo);
                out.push_piece(base + start, base + self.end(index).min(hi), previous);
            }
            index += 1;
        }
        let mut runs = SmallVec::new();
        let after = (hi < LEAF_FRAMES).then(|| self.state_at(hi));
        for run in self.runs.iter().take_while(|r| u64::from(r.start) < lo) {
            push(&mut runs, u64::from(run.start), run.state);
        }
        push(&mut runs, lo, state);
        if let Some(after) = after {
            push(&mut runs, hi, after);
        }
        for run in self.runs.iter().filter(|r| u64::from(r.start) > hi) {
            push(&mut runs, u64::from(run.start), run.state);
        }
        self.runs = runs;
    }

    /// The slot a changed run leaf must become, if it is no longer canonical as one.
    fn other_form(&self) -> Option<Slot> {
        if self.runs.len() <= 1 {
            return Some(Slot::Uniform(self.state(0)));
        }
        if self.runs.len() > RUN_LEAF_MAX {
            return BitLeaf::from_runs(&self.runs).map(|bits| Slot::Bits(Arc::new(bits)));
        }
        None
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

/// Sets the frames `[lo, hi)` of `slot` (offsets from `base`, its first frame; `lo <
/// hi`, within its span) to `state`, recording what changes in `out` and leaving the
/// slot canonical.
pub(crate) fn set_slot(
    slot: &mut Slot,
    level: u32,
    base: u64,
    lo: u64,
    hi: u64,
    state: PageState,
    out: &mut Changes,
) {
    if lo == 0 && hi >= 1u64 << span_shift(level) {
        let _ = visit(
            slot,
            level,
            base,
            base + lo,
            base + hi,
            &mut |s, e, previous| {
                if previous != state {
                    out.push_piece(s, e, previous);
                }
                ControlFlow::Continue(())
            },
        );
        *slot = Slot::Uniform(state);
        return;
    }
    // Change the slot in place; replace it only when its form must change.
    let replacement = match slot {
        Slot::Uniform(old) if *old == state => None,
        Slot::Uniform(old) if level == 0 => {
            let mut runs = RunLeaf::uniform(*old);
            runs.set(base, lo, hi, state, out);
            Some(runs.into_slot())
        }
        Slot::Uniform(old) => {
            let mut node = Node::uniform(*old);
            node.set(level, base, lo, hi, state, out);
            Some(node_form(&node, level).unwrap_or_else(|| Slot::Node(Arc::new(node))))
        }
        Slot::Node(arc) => {
            let node = Arc::make_mut(arc);
            node.set(level, base, lo, hi, state, out);
            node_form(node, level)
        }
        Slot::Dense(arc) => match bit_of(state) {
            Some(bit) => {
                let dense = Arc::make_mut(arc);
                dense.set(base, lo, hi, bit, out);
                if dense.boundaries == 0 {
                    Some(Slot::Uniform(dense.state_at(0)))
                } else if u64::from(dense.boundaries) < DENSE_MIN_BOUNDARIES {
                    Some(Slot::Node(Arc::new(Node::from_dense(dense))))
                } else {
                    None
                }
            }
            None => {
                let mut node = Node::from_dense(arc);
                node.set(level, base, lo, hi, state, out);
                Some(node_form(&node, level).unwrap_or_else(|| Slot::Node(Arc::new(node))))
            }
        },
        Slot::Bits(arc) => match bit_of(state) {
            Some(bit) => {
                let leaf = Arc::make_mut(arc);
                leaf.set(base, lo, hi, bit, out);
                if leaf.boundaries == 0 {
                    Some(Slot::Uniform(leaf.state_at(0)))
                } else if (leaf.boundaries as usize) < RUN_LEAF_MAX {
                    Some(Slot::Runs(Arc::new(leaf.to_runs())))
                } else {
                    None
                }
            }
            None => {
                let mut runs = arc.to_runs();
                runs.set(base, lo, hi, state, out);
                Some(runs.into_slot())
            }
        },
        Slot::Runs(arc) => {
            let runs = Arc::make_mut(arc);
            runs.set(base, lo, hi, state, out);
            runs.other_form()
        }
    };
    if let Some(replacement) = replacement {
        *slot = replacement;
    }
}

/// The slot a changed node must become, if it is no longer canonical as a node.
fn node_form(node: &Node, level: u32) -> Option<Slot> {
    if node.boundaries == 0 {
        return Some(Slot::Uniform(node.first));
    }
    if level == 1 && node.tagged == 0 && node.boundaries >= DENSE_MIN_BOUNDARIES {
        return node.to_dense().map(|dense| Slot::Dense(Arc::new(dense)));
    }
    None
}

/// The state of frame `gfn` in the tree rooted at `root` of height `height`.
#[inline]
pub(crate) fn get(root: &Slot, height: u32, gfn: u64) -> PageState {
    let mut slot = root;
    let mut level = height;
    loop {
        match slot {
            Slot::Node(n) => {
                level = level.saturating_sub(1);
                slot = &n.slots[((gfn >> span_shift(level)) as usize) & (FANOUT - 1)];
            }
            Slot::Dense(d) => return d.state_at(gfn),
            Slot::Bits(l) => return l.state_at(gfn),
            Slot::Uniform(s) => return *s,
            Slot::Runs(l) => return l.state_at(gfn),
        }
    }
}

/// The state of frame `gfn` and the end of the piece of equal state that holds it (the
/// end of a uniform slot or of a bitmap's or leaf's run; the next piece may have the
/// same state).
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
            Slot::Dense(d) => return (d.state_at(gfn), base + d.run_end(gfn)),
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
/// `f` breaks. Pieces are maximal within a bitmap or leaf but may continue in the next
/// slot.
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
        Slot::Dense(d) => visit_bits(d, base, lo, hi, f),
        Slot::Bits(l) => visit_bits(l, base, lo, hi, f),
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

fn visit_bits<const W: usize, F>(
    bits: &Bitmap<W>,
    base: u64,
    lo: u64,
    hi: u64,
    f: &mut F,
) -> ControlFlow<()>
where
    F: FnMut(u64, u64, PageState) -> ControlFlow<()>,
{
    let mut p = lo;
    while p < hi {
        let end = (base + bits.run_end(p - base)).min(hi);
        f(p, end, bits.state_at(p - base))?;
        p = end;
    }
    ControlFlow::Continue(())
}

/// Checks that `slot` is canonical and its recorded counts are right; returns its
/// boundaries, whether it is tagged, and its first and last state, computed from scratch.
#[cfg(test)]
pub(crate) fn check(slot: &Slot, level: u32) -> Result<(u64, bool, PageState, PageState), String> {
    match slot {
        Slot::Uniform(s) => Ok((0, s.tag.is_some(), *s, *s)),
        Slot::Node(n) => {
            if level == 0 {
                return Err("node at level 0".into());
            }
            let mut total = 0;
            let mut tagged = 0;
            let mut prev: Option<PageState> = None;
            let mut first = None;
            for child in &n.slots {
                let (b, t, f, l) = check(child, level - 1)?;
                total += b;
                tagged += u32::from(t);
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
            if (n.boundaries, n.tagged, n.first, n.last) != (total, tagged, first, last) {
                return Err(format!(
                    "node at level {level} records {:?}, holds {:?}",
                    (n.boundaries, n.tagged, n.first, n.last),
                    (total, tagged, first, last)
                ));
            }
            if level == 1 && tagged == 0 && total >= DENSE_MIN_BOUNDARIES {
                return Err(format!("untagged level-1 node with {total} boundaries"));
            }
            Ok((total, tagged > 0, first, last))
        }
        Slot::Dense(d) => {
            if level != 1 {
                return Err(format!("dense bitmap at level {level}"));
            }
            let total = d.transitions(0, Dense::FRAMES - 1);
            if total != d.boundaries {
                return Err(format!(
                    "dense bitmap records {} boundaries, holds {total}",
                    d.boundaries
                ));
            }
            if u64::from(total) < DENSE_MIN_BOUNDARIES {
                return Err(format!("dense bitmap with {total} boundaries"));
            }
            Ok((
                u64::from(total),
                false,
                d.state_at(0),
                d.state_at(Dense::FRAMES - 1),
            ))
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
            Ok((
                u64::from(total),
                false,
                l.state_at(0),
                l.state_at(LEAF_FRAMES - 1),
            ))
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
            let tagged = runs.iter().any(|r| r.state.tag.is_some());
            Ok((
                runs.len() as u64 - 1,
                tagged,
                runs[0].state,
                runs[runs.len() - 1].state,
            ))
        }
    }
}
