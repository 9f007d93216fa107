// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The attribute-map fuzz harness, shared by the cargo-fuzz target and by veil-attrs'
//! `ops_corpus` test (which replays the committed corpus in every `cargo test`).
//!
//! An input is a guest size, then a sequence of operations on an [`AttrMap`] and a
//! [`ConcurrentAttrMap`] holding the same guest: sets of ranges and of scattered pages,
//! several sets published as one update, lookups, range checks, run listings, out-of-
//! bounds requests, snapshots held across writes. An oracle that keeps the maximal runs
//! of the guest in a plain sorted list (so exactly the state of every page) checks every
//! answer, every list of changes, and after every step the whole map, run by run. With
//! the top two bits of the first byte set, a reader thread meanwhile takes snapshots of the
//! concurrent map and checks that each is one of the states it published, whole, in
//! order.

use std::sync::{Arc, Mutex};

use veil_attrs::{
    AttrMap, Attributes, Change, ConcurrentAttrMap, FrameRange, Gfn, PAGE_SHIFT, PageState,
    RangeError, Run, Tag,
};

/// The per-page oracle: the guest's maximal runs, as sorted (start, state) pairs, the
/// first at frame 0. Every frame's state is the state of the last run starting at or
/// before it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Oracle {
    frames: u64,
    runs: Vec<(u64, PageState)>,
    /// The sum of [`run_hash`] over the runs, kept as they change: equal states have
    /// equal hashes, so a state whose hash differs is another state.
    hash: u64,
}

impl Oracle {
    fn new(frames: u64) -> Self {
        Oracle {
            frames,
            runs: vec![(0, PageState::SHARED)],
            hash: run_hash(0, PageState::SHARED),
        }
    }

    fn index_of(&self, gfn: u64) -> usize {
        self.runs.partition_point(|&(s, _)| s <= gfn) - 1
    }

    fn get(&self, gfn: u64) -> PageState {
        self.runs[self.index_of(gfn)].1
    }

    fn end_of(&self, k: usize) -> u64 {
        self.runs.get(k + 1).map_or(self.frames, |r| r.0)
    }

    /// The maximal runs of `[a, b)`, clipped to it.
    fn runs(&self, a: u64, b: u64) -> Vec<Run> {
        let mut out = Vec::new();
        let mut k = self.index_of(a);
        while k < self.runs.len() && self.runs[k].0 < b {
            let (s, e) = (self.runs[k].0.max(a), self.end_of(k).min(b));
            out.push(Run {
                range: FrameRange::from_bounds(Gfn(s), Gfn(e)).expect("a run"),
                state: self.runs[k].1,
            });
            k += 1;
        }
        out
    }

    /// Whether `runs` are exactly this state's runs, whole guest.
    fn is(&self, runs: &[Run]) -> bool {
        runs.len() == self.runs.len()
            && runs
                .iter()
                .zip(&self.runs)
                .enumerate()
                .all(|(k, (r, &(s, state)))| {
                    r.range.start().0 == s && r.range.end().0 == self.end_of(k) && r.state == state
                })
    }

    /// Sets `[a, b)` to `state`; the pieces that changed, with their previous states.
    fn set(&mut self, a: u64, b: u64, state: PageState) -> Vec<Change> {
        let mut changes = Vec::new();
        let first = self.index_of(a);
        let mut k = first;
        while k < self.runs.len() && self.runs[k].0 < b {
            let (s, previous) = self.runs[k];
            if previous != state {
                changes.push(Change {
                    range: fr(s.max(a), self.end_of(k).min(b)),
                    previous,
                });
            }
            k += 1;
        }
        // The runs starting in [a, b] go (`k` is the first starting at or after `b`);
        // the new ones merge with their neighbours.
        let lo = first + usize::from(self.runs[first].0 < a);
        let hi = k + usize::from(self.runs.get(k).is_some_and(|r| r.0 == b));
        let after = (b < self.frames).then(|| self.runs[hi - 1].1);
        let mut before = lo.checked_sub(1).map(|k| self.runs[k].1);
        let mut middle = [(0, PageState::SHARED); 2];
        let mut n = 0;
        for (start, state) in [(a, Some(state)), (b, after)] {
            if let Some(state) = state
                && before != Some(state)
            {
                middle[n] = (start, state);
                n += 1;
                before = Some(state);
            }
        }
        // The run after [a, b] starts where its state does, so it never merges.
        assert!(
            self.runs.get(hi).is_none_or(|r| Some(r.1) != before),
            "the oracle's runs are maximal"
        );
        for &(s, state) in &self.runs[lo..hi] {
            self.hash = self.hash.wrapping_sub(run_hash(s, state));
        }
        for &(s, state) in &middle[..n] {
            self.hash = self.hash.wrapping_add(run_hash(s, state));
        }
        self.runs.splice(lo..hi, middle[..n].iter().copied());
        changes
    }

    /// A map built from scratch with the oracle's states, one set per run.
    fn rebuild(&self) -> AttrMap {
        let mut map = AttrMap::new(self.frames << PAGE_SHIFT).expect("a map");
        for run in self.runs(0, self.frames) {
            if run.state != PageState::SHARED {
                map.set_state(run.range, run.state).expect("a run inside");
            }
        }
        map
    }
}

/// One run's part of a state's hash.
fn run_hash(start: u64, state: PageState) -> u64 {
    let tag = state.tag.map_or(0, |t| u64::from(t.get()));
    mix(mix(start) ^ state.attributes.bits().rotate_left(20) ^ tag << 48)
}

/// The splitmix64 finalizer: every input bit moves every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Reads the input front to back; past its end everything is zero.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.u8()) << (8 * i))
    }
}

const STATES: [PageState; 8] = [
    PageState::PRIVATE,
    PageState::SHARED,
    PageState::PRIVATE,
    PageState::SHARED,
    PageState::tagged(Attributes::empty(), tag(1)),
    PageState::tagged(Attributes::PRIVATE, tag(1)),
    PageState::tagged(Attributes::PRIVATE, tag(2)),
    PageState::tagged(Attributes::PRIVATE, tag(0xffff)),
];

const fn tag(v: u16) -> Tag {
    match Tag::new(v) {
        Some(t) => t,
        None => panic!("a tag is not zero"),
    }
}

/// The guest size in frames the first bytes pick: small, a few leaves, a few 1 GiB
/// regions, or anything up to 2^40 frames.
fn frames(input: &mut Bytes<'_>) -> u64 {
    let kind = input.u8();
    let frames = match kind & 3 {
        0 => u64::from(input.u8()) + 1,
        1 => u64::from(input.u16()) + 1,
        2 => (u64::from(input.u8() & 7) + 1) << 18 | u64::from(input.u16()),
        _ => input.u64() & ((1 << 40) - 1),
    };
    frames.max(1)
}

/// A frame number near one of the places where the tree's forms change: the guest's
/// ends, leaf and region edges, or anywhere.
fn gfn(input: &mut Bytes<'_>, frames: u64) -> u64 {
    let sel = input.u8();
    let off = u64::from(input.u8());
    let g = match sel & 7 {
        0 => off,
        1 => frames.saturating_sub(1 + off),
        2 => (u64::from(input.u8()) << 12) + off,
        3 => (u64::from(input.u8()) << 12).wrapping_sub(off + 1),
        4 => (u64::from(input.u8()) << 18) + off,
        5 => (u64::from(input.u8()) << 18).wrapping_sub(off + 1),
        6 => (u64::from(input.u16()) << 6) + (off & 63),
        _ => input.u64(),
    };
    g % frames
}

/// A range `[a, b)` inside the guest.
fn range(input: &mut Bytes<'_>, frames: u64) -> (u64, u64) {
    let (x, y) = (gfn(input, frames), gfn(input, frames));
    (x.min(y), x.max(y) + 1)
}

fn fr(a: u64, b: u64) -> FrameRange {
    FrameRange::from_bounds(Gfn(a), Gfn(b)).expect("a range")
}

/// Checks `map` against `oracle` over the whole guest and at the edges of every run.
fn check_whole(map: &AttrMap, oracle: &Oracle, what: &dyn std::fmt::Debug) {
    let mut got = map.runs(map.whole()).expect("the whole guest");
    let mut previous = None;
    for (k, &(s, state)) in oracle.runs.iter().enumerate() {
        let want = Run {
            range: fr(s, oracle.end_of(k)),
            state,
        };
        assert_eq!(got.next(), Some(want), "run {k} after {what:?}");
        assert_eq!(
            map.get(Gfn(s)).ok(),
            Some(state),
            "frame {s:#x} after {what:?}"
        );
        if let Some(prev) = previous {
            assert_eq!(map.get(Gfn(s - 1)).ok(), Some(prev), "frame {:#x}", s - 1);
        }
        previous = Some(state);
    }
    assert_eq!(got.next(), None, "runs past the last after {what:?}");
    assert_eq!(
        map.run_count(),
        oracle.runs.len(),
        "run count after {what:?}"
    );
}

/// Sets of `[a, b)` to a state, in order.
type Sets = Vec<(u64, u64, PageState)>;

/// What the writer published in the concurrent map, for the reader thread to match.
#[derive(Default)]
struct Published {
    /// Every state published, in order, first the new guest's: the sets that made it
    /// from the one before, and its [`Oracle::hash`].
    versions: Vec<(Sets, u64)>,
    /// The most runs of any of them.
    max_runs: usize,
}

type Versions = Arc<Mutex<Published>>;

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Bytes(data);
    let threaded = data.first().is_some_and(|b| b & 0xc0 == 0xc0);
    let frames = frames(&mut input);
    let Ok(mut map) = AttrMap::new(frames << PAGE_SHIFT) else {
        return;
    };
    assert_eq!(map.frames(), frames);
    let shared = Arc::new(ConcurrentAttrMap::new(map.clone()));
    let versions: Option<Versions> = threaded.then(|| {
        let mut published = Published::default();
        versions_push(&mut published, Vec::new(), &Oracle::new(frames));
        Arc::new(Mutex::new(published))
    });
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = versions.clone().map(|versions| {
        let (shared, done) = (shared.clone(), done.clone());
        std::thread::spawn(move || read_concurrently(&shared, &versions, &done, frames))
    });

    let mut oracle = Oracle::new(frames);
    let mut snapshots: Vec<(Arc<AttrMap>, Oracle)> = Vec::new();
    // The runs a map was last built from scratch with, and that map.
    let mut canonical: Option<(Vec<(u64, PageState)>, AttrMap)> = None;
    let mut steps = 0;
    while !input.is_empty() && steps < 128 {
        steps += 1;
        let op = input.u8();
        match op % 12 {
            // A set of a range, on both maps.
            0..=2 => {
                let (a, b) = range(&mut input, frames);
                let state = STATES[usize::from(op >> 4) % STATES.len()];
                let want = oracle.set(a, b, state);
                let untagged = state.tag.is_none() && op & 8 != 0;
                let got = if untagged {
                    map.set(fr(a, b), state.attributes)
                } else {
                    map.set_state(fr(a, b), state)
                }
                .expect("a set inside");
                assert_eq!(
                    &got[..],
                    &want[..],
                    "changes of [{a:#x}, {b:#x}) to {state:?}"
                );
                publish(&versions, &[(a, b, state)], !want.is_empty(), &oracle);
                let got = shared.set_state(fr(a, b), state).expect("a set inside");
                assert_eq!(
                    &got[..],
                    &want[..],
                    "concurrent changes of [{a:#x}, {b:#x})"
                );
            }
            // Scattered single pages (busy leaves and regions), one update each.
            3 => {
                let start = gfn(&mut input, frames);
                let count = u64::from(input.u8() % 64) + 1;
                let stride = u64::from(input.u8()) + 1;
                let state = STATES[usize::from(op >> 4) % STATES.len()];
                for i in 0..count {
                    let g = (start + i * stride) % frames;
                    let want = oracle.set(g, g + 1, state);
                    let got = map.set_state(fr(g, g + 1), state).expect("a page inside");
                    assert_eq!(&got[..], &want[..], "changes of page {g:#x}");
                    publish(&versions, &[(g, g + 1, state)], !want.is_empty(), &oracle);
                    let got = shared.set_state(fr(g, g + 1), state).expect("a page");
                    assert_eq!(&got[..], &want[..], "concurrent changes of page {g:#x}");
                }
            }
            // Several sets published as one update; the writer reads its own sets.
            4 => {
                let n = usize::from(input.u8() % 8) + 1;
                let mut sets = Vec::with_capacity(n);
                // A frame each set's `a` picks, and its state once the set is done.
                let mut checks = Vec::with_capacity(n);
                let mut changed = false;
                for _ in 0..n {
                    let (a, b) = range(&mut input, frames);
                    let state = STATES[usize::from(input.u8()) % STATES.len()];
                    let want = oracle.set(a, b, state);
                    changed |= !want.is_empty();
                    let g = gfn(&mut Bytes(&a.to_le_bytes()), frames);
                    sets.push((a, b, state));
                    checks.push((want, g, oracle.get(g)));
                }
                let out_of_bounds = op & 0x80 != 0;
                publish(&versions, &sets, changed, &oracle);
                shared.update(|w| {
                    for (&(a, b, state), (want, g, then)) in sets.iter().zip(&checks) {
                        let got = w.set_state(fr(a, b), state).expect("a set inside");
                        assert_eq!(&got[..], &want[..], "changes in an update");
                        assert_eq!(w.get(Gfn(a)).ok(), Some(state));
                        assert_eq!(w.get(Gfn(*g)).ok(), Some(*then));
                    }
                    if out_of_bounds {
                        let bad = FrameRange::new(Gfn(frames.saturating_sub(1)), 2);
                        if let Ok(bad) = bad {
                            assert!(w.set(bad, Attributes::PRIVATE).is_err());
                        }
                    }
                });
                for &(a, b, state) in &sets {
                    map.set_state(fr(a, b), state).expect("a set inside");
                }
            }
            // Lookups, range checks and run listings.
            5 => {
                let g = gfn(&mut input, frames);
                assert_eq!(map.get(Gfn(g)).ok(), Some(oracle.get(g)));
                assert_eq!(shared.get(Gfn(g)).ok(), Some(oracle.get(g)));
            }
            6 => {
                let (a, b) = range(&mut input, frames);
                for attrs in [Attributes::PRIVATE, Attributes::empty()] {
                    let want = oracle
                        .runs(a, b)
                        .iter()
                        .all(|r| r.state.attributes == attrs);
                    assert_eq!(map.range_is(fr(a, b), attrs).ok(), Some(want));
                    assert_eq!(shared.range_is(fr(a, b), attrs).ok(), Some(want));
                }
            }
            7 => {
                let (a, b) = range(&mut input, frames);
                let want = oracle.runs(a, b);
                let got: Vec<Run> = map
                    .runs(fr(a, b))
                    .expect("a range inside")
                    .take(want.len() + 1)
                    .collect();
                assert_eq!(got, want, "runs of [{a:#x}, {b:#x})");
                let got: Vec<Run> = shared.read(|m| {
                    m.runs(fr(a, b))
                        .expect("a range inside")
                        .take(want.len() + 1)
                        .collect()
                });
                assert_eq!(got, want, "concurrent runs of [{a:#x}, {b:#x})");
            }
            // Requests reaching past the guest, or not ranges at all.
            8 => {
                let a = gfn(&mut input, frames);
                let over = u64::from(input.u8()) + 1;
                let pages = frames - a + over;
                let before = map.clone();
                if let Ok(bad) = FrameRange::new(Gfn(a), pages) {
                    assert!(matches!(
                        map.set(bad, Attributes::PRIVATE),
                        Err(RangeError::OutOfBounds { .. })
                    ));
                    assert!(shared.set(bad, Attributes::PRIVATE).is_err());
                    assert!(map.range_is(bad, Attributes::PRIVATE).is_err());
                    assert!(map.runs(bad).is_err());
                }
                assert!(map.get(Gfn(frames + over - 1)).is_err());
                assert!(map == before, "a refused set changed the map");
                let (gpa, size) = (input.u64(), input.u64());
                if let Ok(r) = map.range(gpa, size) {
                    assert!(gpa % 4096 == 0 && size % 4096 == 0 && size != 0);
                    assert!(r.end().0 <= frames && r.gpa() == gpa && r.size() == size);
                } else {
                    let fits = gpa % 4096 == 0
                        && size % 4096 == 0
                        && size != 0
                        && u128::from(gpa) + u128::from(size) <= u128::from(frames) << 12;
                    assert!(!fits, "range({gpa:#x}, {size:#x}) refused");
                }
            }
            // Snapshots held across writes, and dropped.
            9 => {
                if snapshots.len() < 4 {
                    snapshots.push((shared.snapshot(), oracle.clone()));
                } else {
                    snapshots.remove(usize::from(op >> 4) % 4);
                }
            }
            10 => {
                // A write that waits for no one, when no one writes.
                let (a, b) = range(&mut input, frames);
                let state = STATES[usize::from(op >> 4) % STATES.len()];
                let want = oracle.set(a, b, state);
                publish(&versions, &[(a, b, state)], !want.is_empty(), &oracle);
                let got = match shared.try_update(|w| w.set_state(fr(a, b), state)) {
                    Ok(got) => got,
                    // The reader thread never writes, so the writer lock is free.
                    Err(_) => panic!("try_update found a writer"),
                };
                assert_eq!(&got.expect("a set inside")[..], &want[..]);
                map.set_state(fr(a, b), state).expect("a set inside");
            }
            // The canonical form: the same states built another way (again only when
            // they changed: the map built is a function of the runs alone).
            _ => {
                if canonical
                    .as_ref()
                    .is_none_or(|(runs, _)| *runs != oracle.runs)
                {
                    canonical = Some((oracle.runs.clone(), oracle.rebuild()));
                }
                let (_, rebuilt) = canonical.as_ref().expect("a map just built");
                assert!(map == *rebuilt, "the map is not canonical");
            }
        }
        check_whole(&map, &oracle, &op);
        // The concurrent map holds the same states, so (the form being canonical) the
        // same tree.
        assert!(*shared.snapshot() == map, "the two maps differ after {op}");
    }
    check_whole(&shared.snapshot(), &oracle, &"the last step");
    // Snapshots never change, whatever was written after them.
    for (snap, then) in &snapshots {
        check_whole(snap, then, &"a held snapshot");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(reader) = reader {
        reader.join().expect("the reader thread");
    }
}

/// Publishes the state `oracle` holds, which `sets` made from the last one published
/// (unless they `changed` nothing), before the concurrent map can show it.
fn publish(
    versions: &Option<Versions>,
    sets: &[(u64, u64, PageState)],
    changed: bool,
    oracle: &Oracle,
) {
    let Some(versions) = versions else { return };
    if changed {
        let mut v = versions.lock().unwrap_or_else(|p| p.into_inner());
        versions_push(&mut v, sets.to_vec(), oracle);
    }
}

fn versions_push(published: &mut Published, sets: Sets, oracle: &Oracle) {
    published.versions.push((sets, oracle.hash));
    published.max_runs = published.max_runs.max(oracle.runs.len());
}

/// Takes snapshots until `done` (at most [`READS`]): each must be a published version,
/// at or after the one the previous snapshot was.
///
/// A snapshot is matched by its hash, then run by run against the version of that hash,
/// which the thread rebuilds by replaying the published sets on an oracle of its own
/// (versions only move forward, so each set is replayed once).
fn read_concurrently(
    shared: &ConcurrentAttrMap,
    versions: &Versions,
    done: &std::sync::atomic::AtomicBool,
    frames: u64,
) {
    let mut seen = 0;
    // The oracle holding version `at` (`at <= seen`).
    let (mut replica, mut at) = (Oracle::new(frames), 0);
    for _ in 0..READS {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
        let snap = shared.snapshot();
        // Whatever the snapshot holds was published before it was taken.
        let (count, max_runs) = {
            let v = versions.lock().unwrap_or_else(|p| p.into_inner());
            (v.versions.len(), v.max_runs)
        };
        let runs: Vec<Run> = snap
            .runs(snap.whole())
            .expect("the whole guest")
            .take(max_runs + 1)
            .collect();
        let hash = runs.iter().fold(0u64, |h, r| {
            h.wrapping_add(run_hash(r.range.start().0, r.state))
        });
        let v = versions.lock().unwrap_or_else(|p| p.into_inner());
        let found = (seen..count).find(|&i| {
            if v.versions[i].1 != hash {
                return false;
            }
            while at < i {
                at += 1;
                for &(a, b, state) in &v.versions[at].0 {
                    replica.set(a, b, state);
                }
                assert_eq!(replica.hash, v.versions[at].1, "replaying version {at}");
            }
            replica.is(&runs)
        });
        match found {
            Some(i) => seen = i,
            None => panic!("a snapshot matches no published version from {seen} on: {runs:?}"),
        }
        drop(v);
        if finished {
            return;
        }
        std::thread::yield_now();
    }
}

/// Snapshots the reader thread takes at most: enough to land inside the writer's
/// sequence, few enough that a shared machine does not spend its time switching.
const READS: usize = 64;
