// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Property tests: every [`AttrMap`] operation against a per-frame oracle.
//!
//! The oracle keeps one state per *segment*: the frames between two consecutive
//! endpoints of the sets a case will do. No set starts or ends inside a segment, so all
//! its frames always share one state and the oracle is exactly a per-frame array, only
//! compressed. On small guests every frame is its own segment.

use proptest::prelude::*;

use crate::attributes::{Attributes, PageState, Tag};
use crate::map::{AttrMap, Change, Run};
use crate::range::{FrameRange, Gfn, MAX_FRAMES, PAGE_SHIFT, RangeError};

/// The oracle: `states[k]` is the state of the frames `[points[k], points[k + 1])`.
struct Oracle {
    frames: u64,
    points: Vec<u64>,
    states: Vec<PageState>,
}

impl Oracle {
    fn new(frames: u64, mut points: Vec<u64>) -> Oracle {
        points.push(0);
        points.retain(|&p| p < frames);
        points.sort_unstable();
        points.dedup();
        let states = vec![PageState::SHARED; points.len()];
        Oracle {
            frames,
            points,
            states,
        }
    }

    fn segment_end(&self, k: usize) -> u64 {
        self.points.get(k + 1).copied().unwrap_or(self.frames)
    }

    fn segment_of(&self, gfn: u64) -> usize {
        self.points.partition_point(|&p| p <= gfn) - 1
    }

    fn get(&self, gfn: u64) -> PageState {
        self.states[self.segment_of(gfn)]
    }

    /// Maximal runs of `[a, b)`, clipped.
    fn runs(&self, a: u64, b: u64) -> Vec<Run> {
        let mut out: Vec<(u64, u64, PageState)> = Vec::new();
        let mut k = self.segment_of(a);
        while k < self.points.len() && self.points[k] < b {
            let (s, e) = (self.points[k].max(a), self.segment_end(k).min(b));
            match out.last_mut() {
                Some(last) if last.2 == self.states[k] => last.1 = e,
                _ => out.push((s, e, self.states[k])),
            }
            k += 1;
        }
        out.into_iter()
            .map(|(s, e, state)| Run {
                range: FrameRange::from_bounds(Gfn(s), Gfn(e)).unwrap(),
                state,
            })
            .collect()
    }

    /// Sets `[a, b)` (both segment edges) and returns the changes, merged.
    fn set(&mut self, a: u64, b: u64, state: PageState) -> Vec<Change> {
        let mut out: Vec<Change> = Vec::new();
        let mut k = self.segment_of(a);
        assert_eq!(self.points[k], a, "set must start on a segment edge");
        while k < self.points.len() && self.points[k] < b {
            let (s, e, prev) = (self.points[k], self.segment_end(k), self.states[k]);
            assert!(e <= b, "set must end on a segment edge");
            if prev != state {
                match out.last_mut() {
                    Some(last) if last.range.end().0 == s && last.previous == prev => {
                        last.range = FrameRange::from_bounds(last.range.start(), Gfn(e)).unwrap();
                    }
                    _ => out.push(Change {
                        range: FrameRange::from_bounds(Gfn(s), Gfn(e)).unwrap(),
                        previous: prev,
                    }),
                }
            }
            self.states[k] = state;
            k += 1;
        }
        out
    }

    /// A map built from scratch with the oracle's states, one set per run.
    fn rebuild(&self) -> AttrMap {
        let mut map = AttrMap::new(self.frames << PAGE_SHIFT).unwrap();
        for run in self.runs(0, self.frames) {
            if run.state != PageState::SHARED {
                map.set_state(run.range, run.state).unwrap();
            }
        }
        map
    }
}

#[derive(Debug, Clone)]
enum Op {
    Set(u64, u64, PageState),
    Get(u64),
    RangeIs(u64, u64, Attributes),
    Runs(u64, u64),
    /// A set that reaches past the guest's end by this many frames.
    SetOutOfBounds(u64, u64, u64),
}

fn state_strategy() -> impl Strategy<Value = PageState> {
    let tag = |v| Tag::new(v).unwrap();
    prop_oneof![
        4 => Just(PageState::PRIVATE),
        3 => Just(PageState::SHARED),
        1 => Just(PageState::tagged(Attributes::empty(), tag(1))),
        1 => Just(PageState::tagged(Attributes::PRIVATE, tag(1))),
        1 => Just(PageState::tagged(Attributes::PRIVATE, tag(2))),
    ]
}

fn untagged_strategy() -> impl Strategy<Value = PageState> {
    prop_oneof![Just(PageState::PRIVATE), Just(PageState::SHARED)]
}

fn attrs_strategy() -> impl Strategy<Value = Attributes> {
    prop_oneof![Just(Attributes::PRIVATE), Just(Attributes::empty())]
}

fn fr(a: u64, b: u64) -> FrameRange {
    FrameRange::from_bounds(Gfn(a), Gfn(b)).unwrap()
}

/// Runs `ops` on a fresh map and on the oracle, checking everything after every step.
fn run_case(frames: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let map = AttrMap::new(frames << PAGE_SHIFT).unwrap();
    run_case_from(&map, &[], ops)
}

/// Runs `ops` on a clone of `start` (which holds the sets `background`) and on the
/// oracle, checking everything after every step.
fn run_case_from(
    start: &AttrMap,
    background: &[(u64, u64, PageState)],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let frames = start.frames();
    let mut points = Vec::new();
    if frames <= 4096 {
        points.extend(0..frames);
    }
    for &(a, b, _) in background {
        points.extend([a, b]);
    }
    for op in ops {
        if let Op::Set(a, b, _) = *op {
            points.extend([a, b]);
        }
    }
    let mut oracle = Oracle::new(frames, points);
    for &(a, b, state) in background {
        oracle.set(a, b, state);
    }
    let mut map = start.clone();
    let whole = fr(0, frames);
    for op in ops {
        match *op {
            Op::Set(a, b, state) => {
                let want = oracle.set(a, b, state);
                let got = map.set_state(fr(a, b), state).unwrap();
                prop_assert_eq!(&got[..], &want[..], "changes of {:?}", op);
            }
            Op::Get(g) => prop_assert_eq!(map.get(Gfn(g)).unwrap(), oracle.get(g), "{:?}", op),
            Op::RangeIs(a, b, attrs) => {
                let want = oracle
                    .runs(a, b)
                    .iter()
                    .all(|r| r.state.attributes == attrs);
                prop_assert_eq!(map.range_is(fr(a, b), attrs).unwrap(), want, "{:?}", op);
            }
            Op::Runs(a, b) => {
                let got: Vec<Run> = map.runs(fr(a, b)).unwrap().collect();
                prop_assert_eq!(got, oracle.runs(a, b), "{:?}", op);
            }
            Op::SetOutOfBounds(a, pages, over) => {
                let before = map.clone();
                let range = FrameRange::new(Gfn(a), pages + over).unwrap();
                let err = map.set(range, Attributes::PRIVATE).unwrap_err();
                prop_assert!(matches!(err, RangeError::OutOfBounds { .. }), "{:?}", err);
                prop_assert!(map.get(Gfn(frames)).is_err());
                prop_assert!(map.range_is(range, Attributes::PRIVATE).is_err());
                prop_assert!(map.runs(range).is_err());
                prop_assert_eq!(&map, &before);
            }
        }
        if let Err(e) = map.check_invariants() {
            return Err(TestCaseError::fail(format!("after {op:?}: {e}")));
        }
        let want = oracle.runs(0, frames);
        prop_assert_eq!(map.run_count(), want.len(), "run count after {:?}", op);
    }
    let got: Vec<Run> = map.runs(whole).unwrap().collect();
    prop_assert_eq!(got, oracle.runs(0, frames));
    // Canonical: the same page states built another way give the same tree.
    prop_assert_eq!(&map, &oracle.rebuild());
    Ok(())
}

/// Ops on a small guest: any range, so sets collide often.
fn small_ops(frames: u64, len: usize) -> impl Strategy<Value = Vec<Op>> {
    let range = (0..frames, 0..frames).prop_map(|(x, y)| (x.min(y), x.max(y) + 1));
    let op = prop_oneof![
        6 => (range.clone(), state_strategy()).prop_map(|((a, b), s)| Op::Set(a, b, s)),
        3 => (range.clone(), untagged_strategy()).prop_map(|((a, b), s)| Op::Set(a, b, s)),
        3 => (0..frames, 0..4u64, untagged_strategy())
            .prop_map(move |(a, n, s)| Op::Set(a, (a + 1 + n).min(frames), s)),
        2 => (0..frames).prop_map(Op::Get),
        1 => (range.clone(), attrs_strategy()).prop_map(|((a, b), t)| Op::RangeIs(a, b, t)),
        1 => range.prop_map(|(a, b)| Op::Runs(a, b)),
        1 => (0..frames, 1..4u64).prop_map(move |(a, over)| Op::SetOutOfBounds(a, frames - a, over)),
    ];
    prop::collection::vec(op, 1..len)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A few hundred frames, one leaf: run lists, bitmaps and the switches between them.
    #[test]
    fn small_guest_matches_oracle(
        (frames, ops) in (1..600u64).prop_flat_map(|f| (Just(f), small_ops(f, 40)))
    ) {
        run_case(frames, &ops)?;
    }
}

/// Positions where leaf and node edges meet: multiples of 2^12, 2^18, 2^24 ... and the
/// guest's own end.
fn anchor(frames: u64) -> impl Strategy<Value = u64> {
    (0..=6u32, any::<u64>(), any::<bool>()).prop_map(move |(level, r, top)| {
        if top {
            return frames;
        }
        let shift = 12 + 6 * level;
        let slots = (frames >> shift).max(1);
        ((r % slots) << shift).min(frames)
    })
}

/// A range near `anchor`: start within a few leaves of it, length from one frame to a few
/// level-1 nodes (log-uniform), clamped into the guest.
fn near(frames: u64, anchor: u64, r: (u64, u32, u64, u32)) -> (u64, u64) {
    let (offset, offset_bits, len, len_bits) = r;
    let offset = offset % (1u64 << offset_bits);
    let start = if offset & 1 == 0 {
        anchor.saturating_sub(offset >> 1)
    } else {
        anchor.saturating_add(offset >> 1)
    };
    let start = start.min(frames - 1);
    let len = 1 + len % (1u64 << len_bits);
    (start, (start + len).min(frames))
}

/// Ops at ranges near a few anchors, so they overlap and meet at tree edges.
fn clustered_ops(
    frames: u64,
    anchors: impl Strategy<Value = Vec<u64>>,
    len: usize,
    bits: u32,
) -> impl Strategy<Value = Vec<Op>> {
    let shape = move || (any::<u64>(), 0..15u32, any::<u64>(), 0..bits);
    let ops = prop::collection::vec(
        (
            any::<prop::sample::Index>(),
            shape(),
            0..10u8,
            state_strategy(),
            attrs_strategy(),
        ),
        1..len,
    );
    (anchors, ops).prop_map(move |(anchors, ops)| {
        ops.into_iter()
            .map(|(which, shape, kind, state, attrs)| {
                let (a, b) = near(frames, anchors[which.index(anchors.len())], shape);
                match kind {
                    0..=5 => Op::Set(a, b, state),
                    6 => Op::Get(a),
                    7 => Op::Get(b - 1),
                    8 => Op::RangeIs(a, b, attrs),
                    _ => Op::Runs(a.saturating_sub(shape.0 % 8192), b),
                }
            })
            .collect()
    })
}

fn large_frames() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64 << 28),
        Just((1u64 << 28) + 12345),
        Just((1u64 << 40) - 1),
        Just(1u64 << 46),
        Just(MAX_FRAMES),
        (1u64 << 28)..=MAX_FRAMES,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Guests of 2^40 bytes up to the largest, sets clustered around leaf and node edges
    /// and the guest's top frames so they interact.
    #[test]
    fn large_guest_matches_oracle(
        (frames, ops) in large_frames().prop_flat_map(|f| {
            (Just(f), clustered_ops(f, prop::collection::vec(anchor(f), 3), 30, 21))
        })
    ) {
        run_case(frames, &ops)?;
    }

    /// A guest of a few leaves under one node, every frame in the oracle.
    #[test]
    fn leaf_edges_match_oracle(
        ops in clustered_ops(LEAF_EDGES, Just(vec![4096, 8192, LEAF_EDGES]), 30, 14)
    ) {
        run_case(LEAF_EDGES, &ops)?;
    }
}

const LEAF_EDGES: u64 = 3 * 4096 + 100;

/// Two 1 GiB regions; the first starts with exactly the boundaries that make it one
/// bitmap, so sets near its pages push it across that line both ways.
const DENSE_FRAMES: u64 = 2 << 18;

fn dense_background() -> Vec<(u64, u64, PageState)> {
    let pages = crate::tree::DENSE_MIN_BOUNDARIES / 2;
    (0..pages)
        .map(|k| {
            let a = 1000 + k * 3001;
            (a, a + 1, PageState::PRIVATE)
        })
        .collect()
}

/// The map all dense cases clone: each case's sets must leave it untouched.
fn dense_template() -> &'static AttrMap {
    static TEMPLATE: std::sync::OnceLock<AttrMap> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut map = AttrMap::new(DENSE_FRAMES << PAGE_SHIFT).unwrap();
        for (a, b, state) in dense_background() {
            map.set_state(fr(a, b), state).unwrap();
        }
        map.check_invariants().unwrap();
        map
    })
}

fn dense_ops() -> impl Strategy<Value = Vec<Op>> {
    let background = dense_background();
    let mut anchors: Vec<u64> = background.iter().step_by(7).map(|&(a, _, _)| a).collect();
    anchors.extend([0, 1 << 18, DENSE_FRAMES]);
    clustered_ops(DENSE_FRAMES, Just(anchors), 14, 12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A region at the line between bitmap and tree: single pages, short ranges, tags
    /// and ranges across the region's edge, on clones of one map.
    #[test]
    fn dense_region_matches_oracle(ops in dense_ops()) {
        let template = dense_template();
        run_case_from(template, &dense_background(), &ops)?;
        // No case may change the map it cloned.
        let mut expected = AttrMap::new(DENSE_FRAMES << PAGE_SHIFT).unwrap();
        for (a, b, state) in dense_background() {
            expected.set_state(fr(a, b), state).unwrap();
        }
        let untouched: Vec<Run> = template.runs(template.whole()).unwrap().collect();
        let want: Vec<Run> = expected.runs(expected.whole()).unwrap().collect();
        prop_assert_eq!(untouched, want);
    }
}
