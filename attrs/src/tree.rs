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
//! - at level 0 (a leaf of 4096 frames), when every frame is untagged, [`Slot::Edges`],
//!   the leaf's first state and where its runs start, held in the slot itself, when it
//!   has at most [`RUN_LEAF_MAX`] runs, and [`Slot::Bits`], one bit per frame, when it
//!   has more; [`Slot::Runs`], a sorted run list, when a frame is tagged;
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
//! The root node lives in the map; everything below sits behind [`Arc`]. Cloning a
//! tree copies the root's 64 slots and shares the rest, and a later set copies only the
//! path it changes while a clone still holds it (path copying): nodes and run lists
//! through [`Arc::make_mut`], bitmaps by their owner generation (see [`Bitmap`]), which
//! lets the map that owns a bitmap flip its bits without touching a reference count.
//! Edges are values in their slot: a leaf of scattered pages costs no allocation, and
//! changing one writes the slot, in its node's memory.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

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
/// An untagged leaf with at most this many runs is held as [`Edges`] in its slot, with
/// more as a bitmap.
///
/// A range conversion leaves at most two edges in a leaf, three runs; up to three
/// scattered pages make seven. Held in the slot, they cost no allocation and no cache
/// line beyond the node's, where a bitmap leaf takes a 544-byte allocation, nine lines
/// to fill. Busier leaves are bitmaps, which a single-page conversion changes in place.
pub(crate) const RUN_LEAF_MAX: usize = EDGES_MAX + 1;
/// The most run starts after the first that [`Edges`] hold: what fits in a slot.
const EDGES_MAX: usize = 6;
/// Runs a run list holds without a separate allocation (tagged leaves may have more).
const RUN_LEAF_INLINE: usize = 8;
/// An untagged level-1 region with at least this many run boundaries is one bitmap.
///
/// That is two per leaf on average, about one scattered page per leaf. The 32 KiB
/// region bitmap never costs more than a plain bitmap of the region (the node it
/// replaces takes about 1 KiB when its leaves hold their runs in its slots, up to
/// 36 KiB when they are bitmaps), while every lookup and conversion in it is one step
/// shorter and allocates nothing.
pub(crate) const DENSE_MIN_BOUNDARIES: u64 = 128;
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

/// The bitmap form of a state, if it has one: untagged states, private or shared.
fn bit_of(state: PageState) -> Option<bool> {
    // Attributes hold no bit but the private one (unknown bits are rejected).
    state.tag.is_none().then_some(state.attributes.is_private())
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
    /// A leaf of a few runs of untagged frames, held in the slot (level 0).
    Edges(Edges),
    /// A leaf as a run list, with a tagged frame (level 0).
    Runs(Arc<RunLeaf>),
}

const _: () = assert!(
    size_of::<Slot>() == 16,
    "edges fit in a slot beside its tag"
);

impl Slot {
    /// The number of adjacent frame pairs in the slot whose states differ.
    pub(crate) fn boundaries(&self) -> u64 {
        match self {
            Slot::Uniform(_) => 0,
            Slot::Node(n) => n.boundaries,
            Slot::Dense(d) => u64::from(d.boundaries()),
            Slot::Bits(l) => u64::from(l.boundaries()),
            Slot::Edges(e) => e.boundaries(),
            Slot::Runs(l) => l.runs.len().saturating_sub(1) as u64,
        }
    }

    fn first(&self) -> PageState {
        match self {
            Slot::Uniform(s) => *s,
            Slot::Node(n) => n.first,
            Slot::Dense(d) => d.state_at(0),
            Slot::Bits(l) => l.state_at(0),
            Slot::Edges(e) => e.state_at(0),
            Slot::Runs(l) => l.state(0),
        }
    }

    fn last(&self) -> PageState {
        match self {
            Slot::Uniform(s) => *s,
            Slot::Node(n) => n.last,
            Slot::Dense(d) => d.state_at(Dense::FRAMES - 1),
            Slot::Bits(l) => l.state_at(LEAF_FRAMES - 1),
            Slot::Edges(e) => e.state_at(LEAF_FRAMES - 1),
            Slot::Runs(l) => l.state(l.runs.len().saturating_sub(1)),
        }
    }

    /// Whether any frame of the slot has a tag.
    fn tagged(&self) -> bool {
        match self {
            Slot::Uniform(s) => s.tag.is_some(),
            Slot::Node(n) => n.tagged > 0,
            Slot::Dense(_) | Slot::Bits(_) | Slot::Edges(_) => false,
            Slot::Runs(l) => l.runs.iter().any(|r| r.state.tag.is_some()),
        }
    }

    /// Heap bytes held by this slot and everything below it.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Slot::Uniform(_) | Slot::Edges(_) => 0,
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

    /// The level-1 node holding the same frames as `dense`, its leaves owned by `owner`.
    fn from_dense(dense: &Dense, owner: u64) -> Node {
        Node {
            slots: std::array::from_fn(|k| leaf_of(dense, k as u64 * LEAF_FRAMES, owner)),
            boundaries: u64::from(dense.boundaries()),
            tagged: 0,
            first: dense.state_at(0),
            last: dense.state_at(Dense::FRAMES - 1),
        }
    }

    /// The bitmap of this level-1 node, owned by `owner`, if no frame in it is tagged.
    ///
    /// Filled in its own allocation, not built on the stack and copied there.
    fn to_dense(&self, owner: u64) -> Option<Arc<Dense>> {
        if self.tagged > 0 {
            return None;
        }
        let boundaries = u32::try_from(self.boundaries).ok()?;
        let dense = Dense::new(owner);
        for (k, slot) in self.slots.iter().enumerate() {
            let base = k as u64 * LEAF_FRAMES;
            match slot {
                Slot::Uniform(s) => {
                    if bit_of(*s)? {
                        dense.fill(base, base + LEAF_FRAMES);
                    }
                }
                Slot::Bits(l) => {
                    for (w, word) in l.words.iter().enumerate() {
                        dense.set_word(k * LEAF_WORDS + w, word.load(Ordering::Relaxed));
                    }
                }
                Slot::Edges(e) => {
                    for (start, end, private) in e.runs() {
                        if private {
                            dense.fill(base + start, base + end);
                        }
                    }
                }
                Slot::Runs(l) => {
                    for (i, run) in l.runs.iter().enumerate() {
                        if bit_of(run.state)? {
                            dense.fill(base + u64::from(run.start), base + l.end(i));
                        }
                    }
                }
                Slot::Node(_) | Slot::Dense(_) => return None,
            }
        }
        dense.boundaries.store(boundaries, Ordering::Relaxed);
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

    /// Sets the frames `[lo, hi)` of this node (offsets from `base`, its first frame) as
    /// `set` asks.
    fn set(&mut self, level: u32, base: u64, lo: u64, hi: u64, set: &mut Set<'_>) {
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
            set_slot(&mut self.slots[k], child, base + start, clo, chi, set);
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
///
/// A bitmap is changed in place, without a reference-count check, by the one map whose
/// generation is its `owner`; any other map copies it first. Every clone of a map gives
/// both maps fresh generations, so a bitmap that some other map can reach never has
/// the owner of the map changing it. The words are atomics only so that the change can
/// go through a shared `Arc`: relaxed loads and stores are plain moves, and no reader
/// ever sees a bitmap while it changes.
#[repr(C)] // The count first, beside the reference counts, away from most words.
pub(crate) struct Bitmap<const W: usize> {
    /// Adjacent frame pairs whose bits differ.
    boundaries: AtomicU32,
    /// The generation of the map that may change this bitmap in place.
    owner: u64,
    words: [AtomicU64; W],
}

impl<const W: usize> Bitmap<W> {
    const FRAMES: u64 = W as u64 * 64;

    fn zeroed(owner: u64) -> Self {
        Bitmap {
            boundaries: AtomicU32::new(0),
            owner,
            words: [const { AtomicU64::new(0) }; W],
        }
    }

    /// An empty bitmap in its own allocation, for the map of generation `owner` to fill.
    fn new(owner: u64) -> Arc<Self> {
        Arc::new(Bitmap::zeroed(owner))
    }

    /// A copy that the map of generation `owner` may change.
    fn copy_for(&self, owner: u64) -> Arc<Self> {
        let copy = Bitmap::new(owner);
        for (to, from) in copy.words.iter().zip(&self.words) {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        copy.boundaries.store(self.boundaries(), Ordering::Relaxed);
        copy
    }

    fn boundaries(&self) -> u32 {
        self.boundaries.load(Ordering::Relaxed)
    }

    fn word(&self, w: usize) -> u64 {
        self.words[w].load(Ordering::Relaxed)
    }

    fn set_word(&self, w: usize, value: u64) {
        self.words[w].store(value, Ordering::Relaxed);
    }

    fn bit(&self, i: u64) -> bool {
        let i = i & (Self::FRAMES - 1);
        (self.word((i / 64) as usize) >> (i % 64)) & 1 != 0
    }

    fn state_at(&self, i: u64) -> PageState {
        state_of(self.bit(i))
    }

    /// One past the last frame of the run of equal bits that holds frame `i`.
    fn run_end(&self, i: u64) -> u64 {
        let i = i & (Self::FRAMES - 1);
        let fill = if self.bit(i) { u64::MAX } else { 0 };
        let mut w = (i / 64) as usize;
        let mut diff = (self.word(w) ^ fill) & (u64::MAX << (i % 64));
        loop {
            if diff != 0 {
                return w as u64 * 64 + u64::from(diff.trailing_zeros());
            }
            w += 1;
            if w >= W {
                return Self::FRAMES;
            }
            diff = self.word(w) ^ fill;
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
            let cur = self.word(w);
            let next = if w + 1 < W { self.word(w + 1) & 1 } else { 0 };
            let flips = cur ^ ((cur >> 1) | (next << 63));
            let lo = if w == fw { from % 64 } else { 0 };
            let hi = if w == lw { (to - 1) % 64 + 1 } else { 64 };
            count += (flips & mask(lo, hi)).count_ones();
        }
        count
    }

    /// Sets frames `[lo, hi)` to private, without counting (callers recount).
    fn fill(&self, lo: u64, hi: u64) {
        let (fw, lw) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
        for w in fw..=lw.min(W - 1) {
            let a = if w == fw { lo % 64 } else { 0 };
            let b = if w == lw { (hi - 1) % 64 + 1 } else { 64 };
            self.set_word(w, self.word(w) | mask(a, b));
        }
    }

    /// Sets frames `[lo, hi)` (`lo < hi <= FRAMES`) to `bit`, keeping the count and
    /// recording the frames that change (numbered from `base`) in `out`. Only for the
    /// map of generation `owner`.
    fn set(&self, base: u64, lo: u64, hi: u64, bit: bool, out: &mut Changes) {
        // Only pairs with a frame in [lo, hi) can change, and inside it none is left.
        let before = self.transitions(lo.saturating_sub(1), hi.min(Self::FRAMES - 1));
        let previous = state_of(!bit);
        let (fw, lw) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
        for w in fw..=lw.min(W - 1) {
            let a = if w == fw { lo % 64 } else { 0 };
            let b = if w == lw { (hi - 1) % 64 + 1 } else { 64 };
            let m = mask(a, b);
            let old = self.word(w);
            let new = if bit { old | m } else { old & !m };
            self.set_word(w, new);
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
        let boundaries = (self.boundaries() + after).saturating_sub(before);
        self.boundaries.store(boundaries, Ordering::Relaxed);
    }
}

/// What setting one frame of a bitmap would do.
enum Flip {
    /// The frame already has that state.
    Same,
    /// It is the bitmap's first or last frame, whose outer neighbour the bitmap lacks.
    Edge,
    /// It would change, and the boundary count by this much.
    Delta(i64),
}

impl<const W: usize> Bitmap<W> {
    /// What setting frame `i` to `bit` in place would do, from the frame's word (and
    /// the one beside it when the frame is at the word's edge).
    #[inline]
    fn flip_delta(&self, i: u64, bit: bool) -> Flip {
        let i = i & (Self::FRAMES - 1);
        let (w, b) = ((i / 64) as usize, i % 64);
        let word = self.word(w);
        let old = (word >> b) & 1;
        if old == u64::from(bit) {
            return Flip::Same;
        }
        if i == 0 || i == Self::FRAMES - 1 {
            return Flip::Edge;
        }
        let before = if b > 0 {
            (word >> (b - 1)) & 1
        } else {
            self.word(w - 1) >> 63
        };
        let after = if b < 63 {
            (word >> (b + 1)) & 1
        } else {
            self.word(w + 1) & 1
        };
        // Flipping i toggles both pairs it is in: each difference becomes a match and back.
        let was = (before ^ old) + (old ^ after);
        Flip::Delta(2 - 2 * was as i64)
    }

    /// Flips frame `i`, whose count change `flip_delta` gave.
    #[inline]
    fn flip(&self, i: u64, delta: i64) {
        let i = i & (Self::FRAMES - 1);
        let w = (i / 64) as usize;
        self.set_word(w, self.word(w) ^ (1 << (i % 64)));
        let boundaries = (i64::from(self.boundaries()) + delta).max(0);
        self.boundaries.store(
            u32::try_from(boundaries).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }
}

impl<const W: usize> PartialEq for Bitmap<W> {
    fn eq(&self, other: &Self) -> bool {
        self.words
            .iter()
            .zip(&other.words)
            .all(|(a, b)| a.load(Ordering::Relaxed) == b.load(Ordering::Relaxed))
    }
}

impl<const W: usize> Eq for Bitmap<W> {}

impl<const W: usize> fmt::Debug for Bitmap<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bitmap")
            .field("frames", &Self::FRAMES)
            .field("boundaries", &self.boundaries())
            .finish_non_exhaustive()
    }
}

impl BitLeaf {
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

/// The canonical slot for the leaf of frames `base..base + LEAF_FRAMES` of `dense`, a
/// bitmap leaf owned by `owner` if it comes to that.
fn leaf_of(dense: &Dense, base: u64, owner: u64) -> Slot {
    let end = base + LEAF_FRAMES;
    let boundaries = dense.transitions(base, end - 1);
    if boundaries == 0 {
        return Slot::Uniform(dense.state_at(base));
    }
    if (boundaries as usize) < RUN_LEAF_MAX {
        let mut starts = SmallVec::<[u64; RUN_LEAF_MAX]>::new();
        let mut p = dense.run_end(base).min(end);
        while p < end {
            starts.push(p - base);
            p = dense.run_end(p).min(end);
        }
        if let Some(edges) = Edges::new(dense.bit(base), &starts) {
            return Slot::Edges(edges);
        }
    }
    let leaf = BitLeaf::new(owner);
    let first = (base / 64) as usize;
    for (w, word) in leaf.words.iter().enumerate() {
        word.store(dense.word(first + w), Ordering::Relaxed);
    }
    leaf.boundaries.store(boundaries, Ordering::Relaxed);
    Slot::Bits(leaf)
}

/// A leaf of untagged frames with at most [`RUN_LEAF_MAX`] runs, held in its slot:
/// whether its first frame is private, and the offsets in the leaf where the others
/// start (where the state flips), in increasing order.
///
/// Unused offsets hold `u16::MAX`, so equal leaves have equal edges and a lookup counts
/// the offsets up to the frame without reading the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edges {
    first: bool,
    len: u8,
    at: [u16; EDGES_MAX],
}

impl Edges {
    /// The leaf whose first frame is private if `first`, flipping at each of `starts`
    /// (increasing, within `1..LEAF_FRAMES`); `None` for more than [`EDGES_MAX`].
    fn new(first: bool, starts: &[u64]) -> Option<Edges> {
        if starts.len() > EDGES_MAX {
            return None;
        }
        let mut at = [u16::MAX; EDGES_MAX];
        for (to, &from) in at.iter_mut().zip(starts) {
            *to = from as u16;
        }
        Some(Edges {
            first,
            len: starts.len() as u8,
            at,
        })
    }

    fn starts(&self) -> &[u16] {
        &self.at[..usize::from(self.len).min(EDGES_MAX)]
    }

    fn boundaries(&self) -> u64 {
        u64::from(self.len)
    }

    /// Whether frame `i` of the leaf is private.
    #[inline]
    fn bit(&self, i: u64) -> bool {
        let i = i & (LEAF_FRAMES - 1);
        let flips = self.at.iter().filter(|&&a| u64::from(a) <= i).count();
        self.first ^ (flips % 2 == 1)
    }

    fn state_at(&self, i: u64) -> PageState {
        state_of(self.bit(i))
    }

    /// One past the last frame of the run that holds frame `i`.
    fn run_end(&self, i: u64) -> u64 {
        let i = i & (LEAF_FRAMES - 1);
        self.starts()
            .iter()
            .map(|&a| u64::from(a))
            .find(|&a| a > i)
            .unwrap_or(LEAF_FRAMES)
    }

    /// The leaf's runs as `(start, end, private)`, in order.
    fn runs(&self) -> impl Iterator<Item = (u64, u64, bool)> + '_ {
        let starts = self.starts();
        (0..=starts.len()).map(move |k| {
            let start = if k == 0 { 0 } else { u64::from(starts[k - 1]) };
            let end = starts.get(k).map_or(LEAF_FRAMES, |&a| u64::from(a));
            (start, end, self.first ^ (k % 2 == 1))
        })
    }

    fn to_runs(self) -> RunLeaf {
        RunLeaf {
            runs: self
                .runs()
                .map(|(start, _, private)| LeafRun {
                    start: start as u16,
                    state: state_of(private),
                })
                .collect(),
        }
    }

    /// The starts after frame `i` flips: those of this leaf, with `i` and `i + 1` (where
    /// inside the leaf) added where they were missing and dropped where they were there.
    /// The first frame's state flips with frame 0.
    fn flipped(&self, i: u64) -> (bool, SmallVec<[u64; RUN_LEAF_MAX + 2]>) {
        let mut out = SmallVec::new();
        let mut toggles = [i, i + 1].into_iter().filter(|&t| t > 0 && t < LEAF_FRAMES);
        let mut next = toggles.next();
        for a in self.starts().iter().map(|&a| u64::from(a)) {
            while let Some(t) = next.filter(|&t| t < a) {
                out.push(t);
                next = toggles.next();
            }
            if next == Some(a) {
                next = toggles.next();
            } else {
                out.push(a);
            }
        }
        while let Some(t) = next {
            out.push(t);
            next = toggles.next();
        }
        (self.first ^ (i == 0), out)
    }
}

/// The canonical slot for a leaf of untagged frames whose first frame is private if
/// `first` and whose state flips at each of `starts`; a bitmap leaf is owned by `owner`.
fn untagged_leaf(first: bool, starts: &[u64], owner: u64) -> Slot {
    if starts.is_empty() {
        return Slot::Uniform(state_of(first));
    }
    if let Some(edges) = Edges::new(first, starts) {
        return Slot::Edges(edges);
    }
    let leaf = BitLeaf::new(owner);
    let mut private = first;
    let mut from = 0;
    for &start in starts.iter().chain(&[LEAF_FRAMES]) {
        if private {
            leaf.fill(from, start);
        }
        (from, private) = (start, !private);
    }
    leaf.boundaries
        .store(starts.len() as u32, Ordering::Relaxed);
    Slot::Bits(leaf)
}

/// One run of a [`RunLeaf`]: from `start` to the next run's start (or the leaf's end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LeafRun {
    start: u16,
    state: PageState,
}

const _: () = assert!(LEAF_FRAMES <= 1 << 16, "leaf offsets are u16");

/// The index of the run of `runs` holding frame `i` of their leaf.
fn index_in(runs: &[LeafRun], i: u64) -> usize {
    let i = i & (LEAF_FRAMES - 1);
    runs.partition_point(|r| u64::from(r.start) <= i)
        .saturating_sub(1)
}

/// A leaf as a sorted run list: starts strictly increasing from 0, neighbours differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunLeaf {
    runs: SmallVec<[LeafRun; RUN_LEAF_INLINE]>,
}

impl RunLeaf {
    fn uniform(state: PageState) -> RunLeaf {
        let mut runs = SmallVec::new();
        runs.push(LeafRun { start: 0, state });
        RunLeaf { runs }
    }

    /// The index of the run holding frame `i` of the leaf.
    fn index_of(&self, i: u64) -> usize {
        index_in(&self.runs, i)
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
        // One look at the list for both steps (each is a check and a branch in builds
        // with debug assertions).
        let runs: &[LeafRun] = &self.runs;
        runs.get(index_in(runs, i))
            .map_or(PageState::SHARED, |r| r.state)
    }

    /// Sets frames `[lo, hi)` (`lo < hi <= LEAF_FRAMES`) to `state`, keeping runs
    /// maximal and recording what changes (numbered from `base`) in `out`.
    ///
    /// Only the runs starting in `[lo, hi]` are replaced, in place: a page set in a leaf
    /// of many runs moves the runs after it, and compares none of the others.
    fn set(&mut self, base: u64, lo: u64, hi: u64, state: PageState, out: &mut Changes) {
        let mut index = self.index_of(lo);
        while index < self.runs.len() && u64::from(self.runs[index].start) < hi {
            let previous = self.state(index);
            if previous != state {
                let start = u64::from(self.runs[index].start).max(lo);
                out.push_piece(base + start, base + self.end(index).min(hi), previous);
            }
            index += 1;
        }
        // The runs starting in `[first, last)` go; those before and after stay.
        let first = self.runs.partition_point(|r| u64::from(r.start) < lo);
        let mut last = self.runs.partition_point(|r| u64::from(r.start) <= hi);
        let after = (hi < LEAF_FRAMES).then(|| self.state_at(hi));
        let mut before = first.checked_sub(1).map(|k| self.runs[k].state);
        let mut middle = SmallVec::<[LeafRun; 2]>::new();
        for (start, state) in [(lo, Some(state)), (hi, after)] {
            if let Some(state) = state
                && before != Some(state)
            {
                middle.push(LeafRun {
                    start: start as u16,
                    state,
                });
                before = Some(state);
            }
        }
        // A kept run that the new ones end in the state of merges into them.
        if last < self.runs.len() && before == Some(self.runs[last].state) {
            last += 1;
        }
        self.runs.drain(first..last);
        self.runs.insert_many(first, middle);
        // A leaf that lost most of its runs gives the room back (into the slot, when
        // they fit there).
        if self.runs.spilled() && self.runs.len() <= self.runs.capacity() / 4 {
            self.runs.shrink_to_fit();
        }
    }

    /// The slot a changed run leaf must become, if it is no longer canonical as one:
    /// anything but a leaf with a tagged frame.
    fn other_form(&self, owner: u64) -> Option<Slot> {
        if self.runs.len() <= 1 {
            return Some(Slot::Uniform(self.state(0)));
        }
        let mut first = None;
        let mut starts = SmallVec::<[u64; RUN_LEAF_MAX]>::new();
        for run in &self.runs {
            let bit = bit_of(run.state)?;
            first.get_or_insert(bit);
            if run.start > 0 {
                starts.push(u64::from(run.start));
            }
        }
        Some(untagged_leaf(first?, &starts, owner))
    }

    /// The canonical slot for this leaf's content.
    fn into_slot(self, owner: u64) -> Slot {
        self.other_form(owner)
            .unwrap_or_else(|| Slot::Runs(Arc::new(self)))
    }
}

/// One set in progress: the new state, the generation of the map doing it, and the
/// changes found so far.
pub(crate) struct Set<'a> {
    state: PageState,
    owner: u64,
    out: &'a mut Changes,
}

/// Sets the frames `[lo, hi)` of `slot` (offsets from `base`, its first frame; `lo <
/// hi`, within its span) as `set` asks, leaving the slot canonical.
fn set_slot(slot: &mut Slot, level: u32, base: u64, lo: u64, hi: u64, set: &mut Set<'_>) {
    let state = set.state;
    if lo == 0 && hi >= 1u64 << span_shift(level) {
        let _ = visit(
            slot,
            level,
            base,
            base + lo,
            base + hi,
            &mut |s, e, previous| {
                if previous != state {
                    set.out.push_piece(s, e, previous);
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
            runs.set(base, lo, hi, state, set.out);
            Some(runs.into_slot(set.owner))
        }
        Slot::Uniform(old) => {
            let mut node = Node::uniform(*old);
            node.set(level, base, lo, hi, set);
            Some(node_form(&node, level, set.owner).unwrap_or_else(|| Slot::Node(Arc::new(node))))
        }
        Slot::Node(arc) => {
            let node = Arc::make_mut(arc);
            node.set(level, base, lo, hi, set);
            node_form(node, level, set.owner)
        }
        Slot::Dense(arc) => match bit_of(state) {
            Some(bit) => {
                if arc.owner != set.owner {
                    *arc = arc.copy_for(set.owner);
                }
                arc.set(base, lo, hi, bit, set.out);
                let boundaries = u64::from(arc.boundaries());
                if boundaries == 0 {
                    Some(Slot::Uniform(arc.state_at(0)))
                } else if boundaries < DENSE_MIN_BOUNDARIES {
                    Some(Slot::Node(Arc::new(Node::from_dense(arc, set.owner))))
                } else {
                    None
                }
            }
            None => {
                let mut node = Node::from_dense(arc, set.owner);
                node.set(level, base, lo, hi, set);
                Some(
                    node_form(&node, level, set.owner)
                        .unwrap_or_else(|| Slot::Node(Arc::new(node))),
                )
            }
        },
        Slot::Bits(arc) => match bit_of(state) {
            Some(bit) => {
                if arc.owner != set.owner {
                    *arc = arc.copy_for(set.owner);
                }
                arc.set(base, lo, hi, bit, set.out);
                let boundaries = arc.boundaries() as usize;
                if boundaries == 0 {
                    Some(Slot::Uniform(arc.state_at(0)))
                } else if boundaries < RUN_LEAF_MAX {
                    Some(arc.to_runs().into_slot(set.owner))
                } else {
                    None
                }
            }
            None => {
                let mut runs = arc.to_runs();
                runs.set(base, lo, hi, state, set.out);
                Some(runs.into_slot(set.owner))
            }
        },
        Slot::Edges(edges) => {
            let mut runs = edges.to_runs();
            runs.set(base, lo, hi, state, set.out);
            Some(runs.into_slot(set.owner))
        }
        Slot::Runs(arc) => {
            let runs = Arc::make_mut(arc);
            runs.set(base, lo, hi, state, set.out);
            runs.other_form(set.owner)
        }
    };
    if let Some(replacement) = replacement {
        *slot = replacement;
    }
}

/// The slot a changed node must become, if it is no longer canonical as a node.
fn node_form(node: &Node, level: u32, owner: u64) -> Option<Slot> {
    if node.boundaries == 0 {
        return Some(Slot::Uniform(node.first));
    }
    if level == 1 && node.tagged == 0 && node.boundaries >= DENSE_MIN_BOUNDARIES {
        return node.to_dense(owner).map(Slot::Dense);
    }
    None
}

/// Where generations come from: every map and every clone takes a new one.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn fresh_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed)
}

/// A whole tree: an owned root node covering `2^span_shift(height)` frames, and the
/// generation that decides which bitmaps it may change in place.
///
/// The root is a node even when uniform, held inline (a lookup starts with no pointer
/// to follow) and never shared: a clone copies its 64 slots and shares everything
/// below.
pub(crate) struct Tree {
    height: u32,
    /// `span_shift(height - 1)`: how far a frame number shifts to index the root.
    root_shift: u32,
    root: Node,
    /// Boxed so that the tree's own bytes hold no interior mutability, which lets the
    /// compiler keep them in registers across lookups.
    generation: Box<AtomicU64>,
}

impl Tree {
    /// A tree of `frames` frames, all shared.
    pub(crate) fn new(frames: u64) -> Tree {
        let height = height_for(frames).max(1);
        Tree {
            height,
            root_shift: span_shift(height - 1),
            root: Node::uniform(PageState::SHARED),
            generation: Box::new(AtomicU64::new(fresh_generation())),
        }
    }

    /// The number of frames the tree covers.
    pub(crate) fn capacity(&self) -> u64 {
        1 << span_shift(self.height)
    }

    /// Adjacent frame pairs in the tree whose states differ.
    pub(crate) fn boundaries(&self) -> u64 {
        self.root.boundaries
    }

    /// The state of frame `gfn` when it lies in a dense bitmap right under the root.
    ///
    /// A densely converted region of a guest up to 64 GiB costs one load more than a
    /// plain bitmap; callers try this first and keep that path short.
    #[inline]
    pub(crate) fn get_dense(&self, gfn: u64) -> Option<PageState> {
        // Dense bitmaps sit at level 1, so right under the root only when the height is
        // 2 and the root's shift that of level 1. In any other tree no root slot is
        // dense, whichever this index picks.
        match &self.root.slots[((gfn >> span_shift(1)) as usize) & (FANOUT - 1)] {
            Slot::Dense(d) => Some(d.state_at(gfn)),
            _ => None,
        }
    }

    /// The state of frame `gfn`.
    pub(crate) fn get(&self, gfn: u64) -> PageState {
        let mut slot = &self.root.slots[((gfn >> self.root_shift) as usize) & (FANOUT - 1)];
        let mut shift = self.root_shift;
        loop {
            match slot {
                Slot::Node(n) => {
                    shift = shift.saturating_sub(FANOUT_SHIFT);
                    slot = &n.slots[((gfn >> shift) as usize) & (FANOUT - 1)];
                }
                Slot::Uniform(s) => return *s,
                Slot::Dense(d) => return d.state_at(gfn),
                Slot::Bits(l) => return l.state_at(gfn),
                Slot::Edges(e) => return e.state_at(gfn),
                Slot::Runs(l) => return l.state_at(gfn),
            }
        }
    }

    /// The slot at the bottom of the tree holding frame `gfn` (no node), for reading its
    /// pieces with [`Spot::piece`]; a uniform slot comes with the uniform slots of the
    /// same state after it in its node.
    pub(crate) fn spot(&self, gfn: u64) -> Spot<'_> {
        let mut node = &self.root;
        let mut level = self.height;
        loop {
            level = level.saturating_sub(1);
            let shift = span_shift(level);
            let k = ((gfn >> shift) as usize) & (FANOUT - 1);
            let base = (gfn >> shift) << shift;
            let mut end = base + (1 << shift);
            let slot = match &node.slots[k] {
                Slot::Node(n) => {
                    node = n;
                    continue;
                }
                Slot::Uniform(state) => {
                    let same = node.slots[k + 1..]
                        .iter()
                        .take_while(|next| matches!(next, Slot::Uniform(s) if s == state))
                        .count();
                    end += (same as u64) << shift;
                    Bottom::Uniform(*state)
                }
                Slot::Dense(d) => Bottom::Dense(d),
                Slot::Bits(l) => Bottom::Bits(l),
                Slot::Edges(e) => Bottom::Edges(e),
                Slot::Runs(l) => Bottom::Runs(&l.runs),
            };
            return Spot {
                slot,
                base,
                end,
                index: 0,
            };
        }
    }

    /// Calls `f(start, end, state)` for consecutive pieces of equal state covering the
    /// frames `[lo, hi)` in address order, until `f` breaks. Pieces are maximal within a
    /// bitmap or leaf but may continue in the next slot.
    pub(crate) fn visit<F>(&self, lo: u64, hi: u64, f: &mut F) -> ControlFlow<()>
    where
        F: FnMut(u64, u64, PageState) -> ControlFlow<()>,
    {
        visit_node(&self.root, self.height, 0, lo, hi, f)
    }

    /// Gives the frames `[lo, hi)` the state `state`, recording what changes in `out`.
    pub(crate) fn set(&mut self, lo: u64, hi: u64, state: PageState, out: &mut Changes) {
        let mut set = Set {
            state,
            owner: *self.generation.get_mut(),
            out,
        };
        self.root.set(self.height, 0, lo, hi, &mut set);
    }

    /// Sets one frame to an untagged state in place, when all that changes is one bit of
    /// a bitmap this tree owns and the counts on its path (the frame is not at the
    /// bitmap's edge and no slot changes form), or one untagged leaf and the counts on
    /// its path (no node changes form). Returns `None`, having changed nothing, when that
    /// does not hold; otherwise the frame's previous state if it changed, `Some(None)` if
    /// it already had `state`.
    ///
    /// This is the common single-page conversion: one read of the bit's word, then a
    /// walk down that adds the same count change to every node on the way.
    pub(crate) fn set_frame(&mut self, gfn: u64, state: PageState) -> Option<Option<PageState>> {
        let bit = bit_of(state)?;
        self.set_frame_walk(gfn, state, bit)
    }

    /// [`set_frame`](Tree::set_frame) for a frame of a dense bitmap right under the root,
    /// where scattered conversions in a guest up to 64 GiB end up, with both neighbours
    /// in the frame's word: that word, the bitmap's count and the root's, and nothing
    /// else. `None` if the frame is elsewhere or the bitmap cannot change in place (then
    /// [`set_frame`](Tree::set_frame) may still).
    #[inline]
    pub(crate) fn set_dense_frame(
        &mut self,
        gfn: u64,
        state: PageState,
    ) -> Option<Option<PageState>> {
        let bit = bit_of(state)?;
        // As in `get_dense`: only a tree of height 2 has dense bitmaps in its root, and
        // there the root's slots are level-1 slots.
        let Slot::Dense(d) = &self.root.slots[((gfn >> span_shift(1)) as usize) & (FANOUT - 1)]
        else {
            return None;
        };
        let i = gfn & (Dense::FRAMES - 1);
        let (w, b) = ((i / 64) as usize, i % 64);
        let word = d.word(w);
        if (word >> b) & 1 == u64::from(bit) {
            return Some(None);
        }
        if b == 0 || b == 63 || d.owner != *self.generation.get_mut() {
            return None;
        }
        // Frames i - 1, i, i + 1: flipping i turns each of its two pairs from equal to
        // different or back.
        let three = word >> (b - 1);
        let was = ((three ^ (three >> 1)) & 1) + (((three >> 1) ^ (three >> 2)) & 1);
        let delta = 2 - 2 * was as i64;
        let boundaries = i64::from(d.boundaries()) + delta;
        if boundaries < DENSE_MIN_BOUNDARIES as i64 {
            return None;
        }
        d.set_word(w, word ^ (1 << b));
        d.boundaries.store(boundaries as u32, Ordering::Relaxed);
        self.root.boundaries = self.root.boundaries.wrapping_add_signed(delta);
        Some(Some(state_of(!bit)))
    }

    /// [`set_frame`](Tree::set_frame) anywhere in the tree.
    fn set_frame_walk(
        &mut self,
        gfn: u64,
        state: PageState,
        bit: bool,
    ) -> Option<Option<PageState>> {
        let owner = *self.generation.get_mut();
        // Read: find the bitmap and the count change, and check nothing changes form.
        let mut node = &self.root;
        let mut shift = self.root_shift;
        let delta = loop {
            let offset = gfn & ((1 << shift) - 1);
            match &node.slots[((gfn >> shift) as usize) & (FANOUT - 1)] {
                Slot::Node(n) => {
                    node = n;
                    shift = shift.saturating_sub(FANOUT_SHIFT);
                }
                Slot::Dense(d) => {
                    let delta = match d.flip_delta(offset, bit) {
                        Flip::Same => return Some(None),
                        Flip::Edge => return None,
                        Flip::Delta(delta) => delta,
                    };
                    if d.owner != owner
                        || i64::from(d.boundaries()) + delta < DENSE_MIN_BOUNDARIES as i64
                    {
                        return None;
                    }
                    break delta;
                }
                Slot::Bits(l) => {
                    let delta = match l.flip_delta(offset, bit) {
                        Flip::Same => return Some(None),
                        Flip::Edge => return None,
                        Flip::Delta(delta) => delta,
                    };
                    // The leaf must stay a bitmap, its level-1 node a node.
                    if l.owner != owner
                        || i64::from(l.boundaries()) + delta < RUN_LEAF_MAX as i64
                        || (node.tagged == 0
                            && node.boundaries as i64 + delta >= DENSE_MIN_BOUNDARIES as i64)
                    {
                        return None;
                    }
                    break delta;
                }
                Slot::Uniform(s) if *s == state => return Some(None),
                Slot::Edges(e) if e.bit(gfn) == bit => return Some(None),
                Slot::Runs(l) if l.state_at(gfn) == state => return Some(None),
                Slot::Uniform(_) | Slot::Edges(_) if shift == LEAF_SHIFT => {
                    return self.set_leaf_frame(gfn, bit);
                }
                Slot::Uniform(_) | Slot::Edges(_) | Slot::Runs(_) => return None,
            }
        };
        // Write: the path is this tree's alone (it owns the bitmap), so no node is copied.
        let mut node = &mut self.root;
        let mut shift = self.root_shift;
        loop {
            node.boundaries = node.boundaries.saturating_add_signed(delta);
            match &mut node.slots[((gfn >> shift) as usize) & (FANOUT - 1)] {
                Slot::Node(n) => {
                    node = Arc::make_mut(n);
                    shift = shift.saturating_sub(FANOUT_SHIFT);
                }
                Slot::Dense(d) => {
                    d.flip(gfn, delta);
                    break;
                }
                Slot::Bits(l) => {
                    l.flip(gfn, delta);
                    break;
                }
                // The read above found a bitmap on this path.
                Slot::Uniform(_) | Slot::Edges(_) | Slot::Runs(_) => break,
            }
        }
        Some(Some(state_of(!bit)))
    }

    /// [`set_frame`](Tree::set_frame) for a frame of an untagged leaf held as one state
    /// or as edges, set to the untagged state of `bit`.
    ///
    /// The leaf becomes the canonical slot for its new runs, and every node on the path
    /// adds the change of the two frame pairs the frame is in (those within its span).
    /// Returns `None`, having changed nothing, when a node would have to change form
    /// (become uniform or a dense bitmap).
    fn set_leaf_frame(&mut self, gfn: u64, bit: bool) -> Option<Option<PageState>> {
        let owner = *self.generation.get_mut();
        let offset = gfn & (LEAF_FRAMES - 1);
        // Read: the leaf, the frame's neighbours, and the count change on every node.
        let mut node = &self.root;
        let mut level = self.height;
        let leaf = loop {
            level = level.saturating_sub(1);
            match &node.slots[((gfn >> span_shift(level)) as usize) & (FANOUT - 1)] {
                Slot::Node(n) if level > 0 => node = n,
                Slot::Uniform(s) if level == 0 => {
                    break Edges::new(bit_of(*s)?, &[])?;
                }
                Slot::Edges(e) if level == 0 => break *e,
                _ => return None,
            }
        };
        if leaf.bit(offset) == bit {
            return Some(None);
        }
        let (state, old) = (state_of(bit), state_of(!bit));
        // Neighbours inside the leaf from its edges, outside from the tree (the frames
        // past the guest's end are shared).
        let left = if offset > 0 {
            Some(leaf.state_at(offset - 1))
        } else {
            gfn.checked_sub(1).map(|g| self.get(g))
        };
        let right = if offset + 1 < LEAF_FRAMES {
            Some(leaf.state_at(offset + 1))
        } else {
            (gfn + 1 < self.capacity()).then(|| self.get(gfn + 1))
        };
        let pair =
            |n: Option<PageState>| n.map_or(0, |n| i64::from(n != state) - i64::from(n != old));
        let (dl, dr) = (pair(left), pair(right));
        // The count change of the node at `level` whose span holds `gfn`.
        let delta = |level: u32| {
            let span = 1u64 << span_shift(level);
            let base = gfn & !(span - 1);
            (if gfn > base { dl } else { 0 }) + (if gfn + 1 < base + span { dr } else { 0 })
        };
        let mut node = &self.root;
        let mut level = self.height;
        while level > 1 {
            level -= 1;
            let Slot::Node(n) = &node.slots[((gfn >> span_shift(level)) as usize) & (FANOUT - 1)]
            else {
                return None;
            };
            node = n;
            // A node below the root stays a node: not uniform, and at level 1 not a
            // region that must become a bitmap.
            let boundaries = n.boundaries as i64 + delta(level);
            if boundaries <= 0
                || (level == 1 && n.tagged == 0 && boundaries >= DENSE_MIN_BOUNDARIES as i64)
            {
                return None;
            }
        }
        // Write: nothing can fail from here on.
        let mut node = &mut self.root;
        let mut level = self.height;
        loop {
            let span = 1u64 << span_shift(level);
            let base = gfn & !(span - 1);
            node.boundaries = node.boundaries.saturating_add_signed(delta(level));
            if gfn == base {
                node.first = state;
            }
            if gfn == base + span - 1 {
                node.last = state;
            }
            level -= 1;
            let index = ((gfn >> span_shift(level)) as usize) & (FANOUT - 1);
            if level == 0 {
                let (first, starts) = leaf.flipped(offset);
                node.slots[index] = untagged_leaf(first, &starts, owner);
                break;
            }
            match &mut node.slots[index] {
                Slot::Node(n) => node = Arc::make_mut(n),
                // The read above walked nodes down to the leaf.
                _ => break,
            }
        }
        Some(Some(old))
    }

    /// Heap bytes held by the tree (the root lives in the map), counting nodes a clone
    /// shares.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.root.slots.iter().map(Slot::heap_bytes).sum::<usize>()
    }

    /// How many slots of each form the tree holds: uniform, node, dense, bits, runs (run
    /// lists held as edges or behind a pointer).
    #[cfg(test)]
    pub(crate) fn forms(&self) -> [usize; 5] {
        fn count(slot: &Slot, forms: &mut [usize; 5]) {
            let k = match slot {
                Slot::Uniform(_) => 0,
                Slot::Node(n) => {
                    n.slots.iter().for_each(|s| count(s, forms));
                    1
                }
                Slot::Dense(_) => 2,
                Slot::Bits(_) => 3,
                Slot::Edges(_) | Slot::Runs(_) => 4,
            };
            forms[k] += 1;
        }
        let mut forms = [0; 5];
        self.root.slots.iter().for_each(|s| count(s, &mut forms));
        forms
    }

    /// Checks that the tree is canonical and its counts right.
    #[cfg(test)]
    pub(crate) fn check(&self, frames: u64) -> Result<(), String> {
        if self.height != height_for(frames).max(1) {
            return Err(format!("height {} for {frames} frames", self.height));
        }
        check_node(&self.root, self.height, true)?;
        Ok(())
    }
}

impl Clone for Tree {
    fn clone(&self) -> Tree {
        // From now on neither tree may change in place a bitmap both can reach.
        self.generation.store(fresh_generation(), Ordering::Relaxed);
        Tree {
            height: self.height,
            root_shift: self.root_shift,
            root: self.root.clone(),
            generation: Box::new(AtomicU64::new(fresh_generation())),
        }
    }
}

impl PartialEq for Tree {
    fn eq(&self, other: &Tree) -> bool {
        self.height == other.height && self.root == other.root
    }
}

impl Eq for Tree {}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("height", &self.height)
            .field("boundaries", &self.root.boundaries)
            .finish_non_exhaustive()
    }
}

/// A slot at the bottom of the tree (not a node) and the frames `[base, end)` it covers,
/// as [`Tree::spot`] found it: the pieces of those frames, read in address order, cost
/// no walk down the tree and (in a run leaf) no search.
pub(crate) struct Spot<'a> {
    slot: Bottom<'a>,
    /// The slot's first frame.
    pub(crate) base: u64,
    /// The end of its frames (of the uniform slots after it, for a uniform slot).
    pub(crate) end: u64,
    /// In a run leaf, the run of the last piece read.
    index: usize,
}

/// What a [`Spot`] reads: a slot other than a node, a run leaf's list taken out once.
enum Bottom<'a> {
    Uniform(PageState),
    Dense(&'a Dense),
    Bits(&'a BitLeaf),
    Edges(&'a Edges),
    Runs(&'a [LeafRun]),
}

impl Spot<'_> {
    /// The state of frame `gfn` (in `[base, end)`) and the end of the piece of equal
    /// state that holds it (the end of the uniform slots or of a bitmap's or leaf's run;
    /// the next piece may have the same state).
    pub(crate) fn piece(&mut self, gfn: u64) -> (PageState, u64) {
        let base = self.base;
        match self.slot {
            Bottom::Uniform(s) => (s, self.end),
            Bottom::Dense(d) => (d.state_at(gfn), base + d.run_end(gfn)),
            Bottom::Bits(l) => (l.state_at(gfn), base + l.run_end(gfn)),
            Bottom::Edges(e) => (e.state_at(gfn), base + e.run_end(gfn)),
            Bottom::Runs(runs) => {
                // The piece after the last one read is the next run.
                let next = self.index + 1;
                let index = match runs.get(next) {
                    Some(run) if base + u64::from(run.start) == gfn => next,
                    _ => index_in(runs, gfn),
                };
                self.index = index;
                let end = runs
                    .get(index + 1)
                    .map_or(LEAF_FRAMES, |r| u64::from(r.start));
                let state = runs.get(index).map_or(PageState::SHARED, |r| r.state);
                (state, base + end)
            }
        }
    }
}

fn visit_node<F>(node: &Node, level: u32, base: u64, lo: u64, hi: u64, f: &mut F) -> ControlFlow<()>
where
    F: FnMut(u64, u64, PageState) -> ControlFlow<()>,
{
    let child = level.saturating_sub(1);
    let cs = span_shift(child);
    let i = (((lo - base) >> cs) as usize).min(FANOUT - 1);
    let j = (((hi - 1 - base) >> cs) as usize).min(FANOUT - 1);
    for (k, slot) in node.slots.iter().enumerate().take(j + 1).skip(i) {
        let cb = base + ((k as u64) << cs);
        visit(slot, child, cb, lo.max(cb), hi.min(cb + (1 << cs)), f)?;
    }
    ControlFlow::Continue(())
}

/// Calls `f(start, end, state)` for consecutive pieces of equal state covering the
/// frames `[lo, hi)` of `slot` (which starts at frame `base`), in address order, until
/// `f` breaks.
fn visit<F>(slot: &Slot, level: u32, base: u64, lo: u64, hi: u64, f: &mut F) -> ControlFlow<()>
where
    F: FnMut(u64, u64, PageState) -> ControlFlow<()>,
{
    match slot {
        Slot::Uniform(s) => f(lo, hi, *s),
        Slot::Node(n) => visit_node(n, level, base, lo, hi, f),
        Slot::Dense(d) => visit_bits(d, base, lo, hi, f),
        Slot::Bits(l) => visit_bits(l, base, lo, hi, f),
        Slot::Edges(e) => {
            let mut p = lo;
            while p < hi {
                let end = (base + e.run_end(p - base)).min(hi);
                f(p, end, e.state_at(p - base))?;
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

/// Checks that `node` (the root if `root`) is canonical and its recorded counts are
/// right; returns what [`check`] does.
#[cfg(test)]
fn check_node(
    node: &Node,
    level: u32,
    root: bool,
) -> Result<(u64, bool, PageState, PageState), String> {
    let n = node;
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
    let (first, last) = (first.unwrap_or_default(), prev.unwrap_or_default());
    if (n.boundaries, n.tagged, n.first, n.last) != (total, tagged, first, last) {
        return Err(format!(
            "node at level {level} records {:?}, holds {:?}",
            (n.boundaries, n.tagged, n.first, n.last),
            (total, tagged, first, last)
        ));
    }
    if !root && total == 0 {
        return Err(format!("uniform node not collapsed at level {level}"));
    }
    if !root && level == 1 && tagged == 0 && total >= DENSE_MIN_BOUNDARIES {
        return Err(format!("untagged level-1 node with {total} boundaries"));
    }
    Ok((total, tagged > 0, first, last))
}

/// Checks that `slot` is canonical and its recorded counts are right; returns its
/// boundaries, whether it is tagged, and its first and last state, computed from scratch.
#[cfg(test)]
fn check(slot: &Slot, level: u32) -> Result<(u64, bool, PageState, PageState), String> {
    match slot {
        Slot::Uniform(s) => Ok((0, s.tag.is_some(), *s, *s)),
        Slot::Node(n) => check_node(n, level, false),
        Slot::Dense(d) => {
            if level != 1 {
                return Err(format!("dense bitmap at level {level}"));
            }
            let total = d.transitions(0, Dense::FRAMES - 1);
            if total != d.boundaries() {
                return Err(format!(
                    "dense bitmap records {} boundaries, holds {total}",
                    d.boundaries()
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
            if total != l.boundaries() {
                return Err(format!(
                    "bitmap leaf records {} boundaries, holds {total}",
                    l.boundaries()
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
        Slot::Edges(e) => {
            if level != 0 {
                return Err(format!("edges at level {level}"));
            }
            let starts = e.starts();
            let len = usize::from(e.len);
            if len == 0 || len > EDGES_MAX || e.at[len..].iter().any(|&a| a != u16::MAX) {
                return Err(format!("edges {e:?} are uniform or not canonical"));
            }
            if starts[0] == 0
                || u64::from(starts[len - 1]) >= LEAF_FRAMES
                || starts.windows(2).any(|w| w[0] >= w[1])
            {
                return Err(format!("edges {e:?} are not increasing within the leaf"));
            }
            Ok((
                e.boundaries(),
                false,
                e.state_at(0),
                e.state_at(LEAF_FRAMES - 1),
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
            let tagged = runs.iter().any(|r| r.state.tag.is_some());
            if !tagged {
                return Err(format!(
                    "untagged run leaf with {} runs behind a pointer",
                    runs.len()
                ));
            }
            Ok((
                runs.len() as u64 - 1,
                tagged,
                runs[0].state,
                runs[runs.len() - 1].state,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The leaf's frames, one bit each, read through the edges.
    fn frames(edges: &Edges) -> Vec<bool> {
        (0..LEAF_FRAMES).map(|i| edges.bit(i)).collect()
    }

    /// Where the state flips in `frames`.
    fn starts_of(frames: &[bool]) -> Vec<u64> {
        (1..frames.len())
            .filter(|&i| frames[i] != frames[i - 1])
            .map(|i| i as u64)
            .collect()
    }

    /// Edges and a frame to flip, the frame often at or beside a start or a leaf edge.
    fn edges_and_frame() -> impl Strategy<Value = (Edges, u64)> {
        let starts = prop::collection::btree_set(1..LEAF_FRAMES, 0..=EDGES_MAX);
        (
            any::<bool>(),
            starts,
            any::<prop::sample::Index>(),
            0..4u8,
            0..LEAF_FRAMES,
        )
            .prop_map(|(first, starts, pick, how, anywhere)| {
                let starts: Vec<u64> = starts.into_iter().collect();
                let edges = Edges::new(first, &starts).unwrap();
                let near = starts.get(pick.index(starts.len().max(1))).copied();
                let i = match (how, near) {
                    (0, Some(s)) => s,
                    (1, Some(s)) => s - 1,
                    (2, _) => [0, 1, LEAF_FRAMES - 2, LEAF_FRAMES - 1][pick.index(4)],
                    _ => anywhere,
                };
                (edges, i)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Lookups, run ends and runs of edges agree with the frames they stand for, and
        /// flipping a frame gives the starts of the frames with that one flipped.
        #[test]
        fn edges_match_their_frames((edges, i) in edges_and_frame()) {
            let bits = frames(&edges);
            prop_assert_eq!(starts_of(&bits), edges.starts().iter().map(|&a| u64::from(a)).collect::<Vec<_>>());
            prop_assert_eq!(edges.boundaries(), edges.starts().len() as u64);
            let end = (i as usize + 1..bits.len()).find(|&k| bits[k] != bits[i as usize]);
            prop_assert_eq!(edges.run_end(i), end.map_or(LEAF_FRAMES, |k| k as u64));
            let mut covered = 0;
            for (start, end, private) in edges.runs() {
                prop_assert_eq!(start, covered);
                prop_assert!(start < end);
                prop_assert!(bits[start as usize..end as usize].iter().all(|&b| b == private));
                covered = end;
            }
            prop_assert_eq!(covered, LEAF_FRAMES);

            let mut flipped = bits.clone();
            flipped[i as usize] = !flipped[i as usize];
            let (first, starts) = edges.flipped(i);
            prop_assert_eq!(first, flipped[0]);
            prop_assert_eq!(starts.to_vec(), starts_of(&flipped));
            // And the slot for them is the canonical one for those frames.
            match untagged_leaf(first, &starts, 7) {
                Slot::Uniform(s) => prop_assert!(starts.is_empty() && s == state_of(first)),
                Slot::Edges(e) => prop_assert_eq!(frames(&e), flipped),
                Slot::Bits(l) => {
                    prop_assert!(starts.len() > EDGES_MAX);
                    prop_assert_eq!(u64::from(l.boundaries()), starts.len() as u64);
                    prop_assert_eq!((0..LEAF_FRAMES).map(|k| l.bit(k)).collect::<Vec<_>>(), flipped);
                }
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }

    /// Sets of a run leaf of many runs, tagged and not: a few frames (a single one most
    /// often) or a longer range, anywhere, at a leaf edge or over the starts of runs.
    fn run_leaf_sets() -> impl Strategy<Value = Vec<(u64, u64, usize)>> {
        let set = (0..LEAF_FRAMES, 0..8u8, 0..4usize).prop_map(|(lo, how, state)| {
            let lo = match how {
                0 => 0,
                1 => LEAF_FRAMES - 1,
                _ => lo,
            };
            let len = match how {
                2 => 1 + lo % 300,
                3 => 2,
                _ => 1,
            };
            (lo, (lo + len).min(LEAF_FRAMES), state)
        });
        prop::collection::vec(set, 1..400)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A run leaf set in place holds exactly the frames a per-frame array does, as
        /// sorted maximal runs from frame 0, and reports exactly the pieces that changed.
        #[test]
        fn run_leaf_sets_match_their_frames(sets in run_leaf_sets()) {
            let states = [
                PageState::SHARED,
                PageState::PRIVATE,
                PageState::tagged(crate::Attributes::empty(), crate::Tag::new(1).unwrap()),
                PageState::tagged(crate::Attributes::PRIVATE, crate::Tag::new(2).unwrap()),
            ];
            let base = 5 * LEAF_FRAMES;
            let mut leaf = RunLeaf::uniform(PageState::SHARED);
            let mut frames = vec![PageState::SHARED; LEAF_FRAMES as usize];
            for (lo, hi, s) in sets {
                let state = states[s];
                let mut want = Changes::default();
                for i in lo..hi {
                    if frames[i as usize] != state {
                        want.push_piece(base + i, base + i + 1, frames[i as usize]);
                    }
                }
                let mut got = Changes::default();
                leaf.set(base, lo, hi, state, &mut got);
                prop_assert_eq!(&got[..], &want[..], "changes of [{}, {})", lo, hi);
                frames[lo as usize..hi as usize].fill(state);

                let want: Vec<LeafRun> = (0..LEAF_FRAMES as usize)
                    .filter(|&i| i == 0 || frames[i] != frames[i - 1])
                    .map(|i| LeafRun { start: i as u16, state: frames[i] })
                    .collect();
                prop_assert_eq!(&leaf.runs[..], &want[..], "after [{}, {})", lo, hi);
                prop_assert_eq!(leaf.state_at(lo), state);
                prop_assert_eq!(leaf.state_at(hi - 1), state);
                // A leaf that shrank gave its room back.
                prop_assert!(!leaf.runs.spilled() || leaf.runs.len() > leaf.runs.capacity() / 4);
            }
        }
    }

    #[test]
    fn edges_compare_by_content() {
        let a = Edges::new(true, &[5, 9]).unwrap();
        let b = Edges::new(true, &[5, 9]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, Edges::new(false, &[5, 9]).unwrap());
        assert_ne!(a, Edges::new(true, &[5, 10]).unwrap());
        assert!(Edges::new(false, &[1, 2, 3, 4, 5, 6]).is_some());
        assert!(Edges::new(false, &[1, 2, 3, 4, 5, 6, 7]).is_none());
        // Unused offsets are all the same, whatever the edges were built from.
        let (first, starts) = Edges::new(false, &[3, 4, 8]).unwrap().flipped(3);
        assert_eq!(
            Edges::new(first, &starts).unwrap(),
            Edges::new(false, &[8]).unwrap()
        );
    }
}
