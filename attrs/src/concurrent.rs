// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`ConcurrentAttrMap`]: an [`AttrMap`] that vCPU threads read while one thread converts.

use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use arc_swap::ArcSwap;

use crate::attributes::{Attributes, PageState};
use crate::map::{AttrMap, Changes};
use crate::range::{FrameRange, Gfn, RangeError};

/// An [`AttrMap`] shared between threads.
///
/// # Guarantee
///
/// Readers never block each other and never block on a writer: each read loads the
/// current published snapshot (an `Arc<AttrMap>`) without taking a lock, and answers
/// from it alone. A read therefore sees the state either before or after any one
/// [`set`](ConcurrentAttrMap::set) or [`update`](ConcurrentAttrMap::update), never a mix,
/// and a thread's successive reads never go back to an older state. Writers are
/// serialised by a mutex; one writer at a time, and a writer never waits for a reader.
///
/// # How a write is published
///
/// Two maps take turns. Readers see the published one; the writer changes the other, a
/// spare no reader can reach, then publishes it with one atomic swap. The map it
/// replaces becomes the next write's spare as soon as no reader holds it any more (its
/// reference count, which the swap brings up to date for every reader still inside a
/// read, says so). That spare lacks the sets of the write it missed, kept in a journal:
/// the next write replays them before its first set, unless that set covers all of
/// them. Then the spare differs from the published map only inside the set's range,
/// which the set makes one state whole, so it needs that set alone: a buffer converted
/// back and forth, a retried or a rolled-back conversion replay nothing. Until the spare
/// has caught up, reads through the [`AttrMapWriter`] see the published map. A map
/// still pinned by a reader (a [`snapshot`](ConcurrentAttrMap::snapshot) kept, or a
/// read in progress) is left to that reader, and the write starts from a clone of the
/// published map instead.
///
/// # Cost
///
/// A read pays one atomic load and a debt slot (or reference count) update on top of
/// the plain [`AttrMap`] query.
///
/// A write pays its sets, the replay of the previous write's (none when it covers
/// them), the swap, and a record of each set that changed something. Once the two maps
/// have diverged they share no node, so every set changes its map in place: no copy,
/// whatever the map holds. The swap pays arc-swap's debts with a locked
/// compare-exchange on each of the nine debt slots of every thread that has read the
/// map, so a write's fixed cost grows with the number of reading threads: on the machine
/// below, about 10 ns a write for each thread that has read an arc-swap value in the
/// process (arc-swap keeps a node for as many threads as have been alive at once).
///
/// Measured on a shared 2-core machine (`cargo bench -p veil-attrs -- concurrent`), in
/// the benchmark's 64 GiB guest after 100,000 scattered conversions (every 1 GiB region
/// a 32 KiB bitmap), with one thread: a single-page set at a random place costs about
/// 11 ns plain and 135 ns published (3.8 us when a write published a clone and copied
/// the region's bitmap), one page set back and forth 120 ns published, and an aligned
/// 1 GiB set about 113 ns plain and 240 ns published. veil-memory's 4 KiB round trip,
/// two published writes and everything else two conversions do, takes about 3,750
/// user-space instructions, 300 to 345 ns with warm caches.
/// [`update`](ConcurrentAttrMap::update) publishes once for all the sets it makes: batch
/// where you can.
///
/// A write that finds its spare pinned pays a clone instead (the 64-slot root), and
/// then it and the next few writes copy the paths they change while the clone and the
/// published map still share them (a dense region's bitmap is 32 KiB). Keep snapshots
/// short-lived.
///
/// The two maps hold up to twice the memory of one.
#[derive(Debug)]
pub struct ConcurrentAttrMap {
    writer: Mutex<Writer>,
    published: ArcSwap<AttrMap>,
}

/// One set recorded in the journal.
#[derive(Debug, Clone, Copy)]
struct Entry {
    range: FrameRange,
    state: PageState,
}

/// What only the writer touches.
#[derive(Debug)]
struct Writer {
    /// The map the next write changes: either the map published before the last write,
    /// which lacks the sets in `journal`, or a map equal to the published one (with
    /// `journal` empty). `None` after a write panicked.
    spare: Option<Arc<AttrMap>>,
    /// The sets the published map has and `spare` lacks, in order.
    journal: Vec<Entry>,
    /// The sets of the write in progress that changed something, in order.
    recording: Vec<Entry>,
    /// The published map, for reading it without arc-swap's guard.
    current: Arc<AttrMap>,
    /// Writes that found no spare ready and cloned the published map (tests only).
    #[cfg(test)]
    clones: u64,
    /// Sets replayed on a spare (tests only).
    #[cfg(test)]
    replayed: u64,
}

/// A journal that held more sets than this gives its memory back once emptied.
const JOURNAL_KEEP: usize = 1024;

/// The map inside [`ConcurrentAttrMap::update`], for the one writer.
///
/// It reads as an [`AttrMap`] (through `Deref`) and changes through
/// [`set`](AttrMapWriter::set) and [`set_state`](AttrMapWriter::set_state), which behave
/// exactly as [`AttrMap`]'s and also record the set so the other copy of the map can
/// replay it.
#[derive(Debug)]
pub struct AttrMapWriter<'a> {
    /// The spare: the published map once `pending` is replayed on it.
    map: &'a mut AttrMap,
    /// The published map, while `pending` is not empty.
    published: Option<&'a AttrMap>,
    /// The sets `map` lacks.
    pending: &'a mut Vec<Entry>,
    /// The sets made here that changed something.
    recording: &'a mut Vec<Entry>,
    /// Sets replayed on a spare (tests only).
    #[cfg(test)]
    replayed: &'a mut u64,
}

impl AttrMapWriter<'_> {
    /// Gives every frame of `range` the attributes `attributes` and no tag; see
    /// [`AttrMap::set`].
    pub fn set(
        &mut self,
        range: FrameRange,
        attributes: Attributes,
    ) -> Result<Changes, RangeError> {
        self.set_state(range, PageState::new(attributes))
    }

    /// Gives every frame of `range` the state `state`; see [`AttrMap::set_state`].
    pub fn set_state(
        &mut self,
        range: FrameRange,
        state: PageState,
    ) -> Result<Changes, RangeError> {
        if let Some(published) = self.published {
            if self.pending.iter().all(|e| covers(range, e.range)) {
                // The spare differs from the published map only inside `range`, which
                // this set makes one state whole: what changes is read off the published
                // map, and the spare needs this set alone, not the ones it lacks.
                let changes = changes_to(published, range, state)?;
                if !changes.is_empty() {
                    // In bounds: the maps have one size, and the published map took it.
                    let _ = self.map.set_state(range, state);
                    self.pending.clear();
                    self.published = None;
                    self.recording.push(Entry { range, state });
                }
                return Ok(changes);
            }
            self.catch_up();
        }
        let changes = self.map.set_state(range, state)?;
        if !changes.is_empty() {
            self.recording.push(Entry { range, state });
        }
        Ok(changes)
    }

    /// Replays on the spare the sets it lacks.
    fn catch_up(&mut self) {
        #[cfg(test)]
        {
            *self.replayed += self.pending.len() as u64;
        }
        for entry in self.pending.drain(..) {
            // The same sets, in the same order, from the same state, on a map of the
            // same size: they succeed as they did on the published map.
            let _ = self.map.set_state(entry.range, entry.state);
        }
        #[cfg(test)]
        if let Some(published) = self.published {
            assert!(*self.map == *published, "the replayed spare differs");
        }
        self.published = None;
    }
}

/// Whether `outer` holds every frame of `inner`.
fn covers(outer: FrameRange, inner: FrameRange) -> bool {
    outer.start() <= inner.start() && inner.end() <= outer.end()
}

/// What `map.set_state(range, state)` would return, without changing `map`: its maximal
/// runs within `range` that have another state.
fn changes_to(map: &AttrMap, range: FrameRange, state: PageState) -> Result<Changes, RangeError> {
    let mut changes = Changes::default();
    if range.pages() == 1 {
        let (gfn, previous) = (range.start(), map.get(range.start())?);
        if previous != state {
            changes.push_piece(gfn.0, gfn.0 + 1, previous);
        }
        return Ok(changes);
    }
    for run in map.runs(range)? {
        if run.state != state {
            changes.push_piece(run.range.start().0, run.range.end().0, run.state);
        }
    }
    Ok(changes)
}

impl Deref for AttrMapWriter<'_> {
    type Target = AttrMap;

    fn deref(&self) -> &AttrMap {
        self.published.unwrap_or(self.map)
    }
}

impl ConcurrentAttrMap {
    /// Shares `map` between threads.
    pub fn new(map: AttrMap) -> Self {
        let published = Arc::new(map);
        ConcurrentAttrMap {
            writer: Mutex::new(Writer {
                spare: Some(Arc::new(AttrMap::clone(&published))),
                journal: Vec::new(),
                recording: Vec::new(),
                current: Arc::clone(&published),
                #[cfg(test)]
                clones: 0,
                #[cfg(test)]
                replayed: 0,
            }),
            published: ArcSwap::new(published),
        }
    }

    /// The current state as one consistent snapshot, for several queries that must agree.
    ///
    /// While a snapshot is alive, writes cannot reuse its map (see the type's cost
    /// notes): drop it when done.
    pub fn snapshot(&self) -> Arc<AttrMap> {
        self.published.load_full()
    }

    /// Runs `f` on the current state, for a few queries that must agree.
    ///
    /// Cheaper than [`snapshot`](ConcurrentAttrMap::snapshot): no reference count is
    /// taken unless a write lands meanwhile. Keep `f` short: like a snapshot, it keeps
    /// the writer from reusing this map.
    pub fn read<R>(&self, f: impl FnOnce(&AttrMap) -> R) -> R {
        f(&self.published.load())
    }

    /// The state of one frame; see [`AttrMap::get`].
    pub fn get(&self, gfn: Gfn) -> Result<PageState, RangeError> {
        self.published.load().get(gfn)
    }

    /// Whether every frame of `range` has `attributes`; see [`AttrMap::range_is`].
    pub fn range_is(&self, range: FrameRange, attributes: Attributes) -> Result<bool, RangeError> {
        self.published.load().range_is(range, attributes)
    }

    /// The number of frames in the guest.
    pub fn frames(&self) -> u64 {
        self.published.load().frames()
    }

    /// Sets `range` to `attributes` and publishes the result; see [`AttrMap::set`].
    pub fn set(&self, range: FrameRange, attributes: Attributes) -> Result<Changes, RangeError> {
        self.update(|map| map.set(range, attributes))
    }

    /// Sets `range` to `state` and publishes the result; see [`AttrMap::set_state`].
    pub fn set_state(&self, range: FrameRange, state: PageState) -> Result<Changes, RangeError> {
        self.update(|map| map.set_state(range, state))
    }

    /// Runs `f` on the map as the only writer, then publishes the map as it is when `f`
    /// returns.
    ///
    /// Readers see nothing of what `f` does until it returns, so a caller can set a range,
    /// act on the changes (issue ioctls, change protections), and undo the set on failure
    /// without any reader seeing the intermediate state. If `f` changed nothing (every
    /// set it made returned no change), nothing is published. If `f` panics, nothing it
    /// did is published.
    pub fn update<R>(&self, f: impl FnOnce(&mut AttrMapWriter<'_>) -> R) -> R {
        // A panic in an earlier writer loses only its unpublished spare; carry on.
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        self.write(writer, f)
    }

    /// [`update`](ConcurrentAttrMap::update) if no other writer is running, without
    /// waiting; otherwise gives `f` back, not run.
    ///
    /// For a caller that can answer without writing when it would have to wait, say
    /// from a [`read`](ConcurrentAttrMap::read).
    pub fn try_update<R, F>(&self, f: F) -> Result<R, F>
    where
        F: FnOnce(&mut AttrMapWriter<'_>) -> R,
    {
        match self.writer.try_lock() {
            Ok(writer) => Ok(self.write(writer, f)),
            Err(TryLockError::Poisoned(poisoned)) => Ok(self.write(poisoned.into_inner(), f)),
            Err(TryLockError::WouldBlock) => Err(f),
        }
    }

    /// Runs `f` as the writer holding `writer`, then publishes.
    fn write<R>(
        &self,
        mut writer: MutexGuard<'_, Writer>,
        f: impl FnOnce(&mut AttrMapWriter<'_>) -> R,
    ) -> R {
        let w = &mut *writer;
        // The two lists swap roles at every publish: whichever is empty here gives back
        // what a long write made it hold.
        w.recording.clear();
        if w.recording.capacity() > JOURNAL_KEEP {
            w.recording = Vec::new();
        }
        // The spare, if no reader holds it; it lacks the journal's sets. No reader can
        // take a new reference to a map once the swap that retired it has returned (it
        // paid every debt on it): a count of one stays one, and `make_mut` below confirms
        // it with the one atomic exchange that orders this writer after the last reader.
        let mut spare = match w.spare.take() {
            Some(spare) if Arc::strong_count(&spare) == 1 => spare,
            _ => {
                w.journal.clear();
                #[cfg(test)]
                {
                    w.clones += 1;
                }
                // Shared with the published map: `make_mut` below clones it.
                self.published.load_full()
            }
        };
        if w.journal.capacity() > JOURNAL_KEEP && w.journal.is_empty() {
            w.journal = Vec::new();
        }
        // The published map, for reads and changes until the spare has the journal.
        let published = (!w.journal.is_empty()).then_some(&*w.current);
        let result = f(&mut AttrMapWriter {
            map: Arc::make_mut(&mut spare),
            published,
            pending: &mut w.journal,
            recording: &mut w.recording,
            #[cfg(test)]
            replayed: &mut w.replayed,
        });
        if w.recording.is_empty() {
            // Nothing changed; the spare still lacks whatever it lacked.
            w.spare = Some(spare);
        } else {
            // Every set that changed something first brought the spare up to date.
            let next = Arc::clone(&spare);
            w.spare = Some(self.published.swap(spare));
            // The writer's own reference to the map it retired goes, leaving readers'.
            w.current = next;
            std::mem::swap(&mut w.journal, &mut w.recording);
        }
        result
    }

    /// Writes so far that found no spare ready and cloned the published map (tests only).
    #[cfg(test)]
    fn clones(&self) -> u64 {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clones
    }

    /// The capacities of the journal and of the write's record (tests only).
    #[cfg(test)]
    fn journal_capacity(&self) -> (usize, usize) {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        (w.journal.capacity(), w.recording.capacity())
    }

    /// Sets replayed on a spare so far (tests only).
    #[cfg(test)]
    fn replayed(&self) -> u64 {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replayed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;

    use super::*;
    use crate::attributes::Tag;
    use crate::map::Run;
    use crate::range::PAGE_SHIFT;

    /// Stops reader threads however the writer ends, a failed assertion included.
    struct Stop<'a>(&'a AtomicBool);

    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// 4 TiB: five levels, so R below crosses leaves, regions and upper nodes.
    const FRAMES: u64 = 1 << 30;
    /// R: a large range with unaligned edges, wholly one state in every version.
    const R: (u64, u64) = (1000, 3_000_123);
    /// P: in a region kept dense by scattered pages; its odd pages flip one by one.
    const P: (u64, u64) = ((1 << 28) + 5000, (1 << 28) + 5000 + 1200);
    const VERSIONS: u16 = 40;

    fn range(r: (u64, u64)) -> FrameRange {
        FrameRange::from_bounds(Gfn(r.0), Gfn(r.1)).unwrap()
    }

    fn attributes(v: u16) -> Attributes {
        if v % 2 == 1 {
            Attributes::PRIVATE
        } else {
            Attributes::empty()
        }
    }

    /// Version `v` of R: its parity's attributes, tagged `v`.
    fn state(v: u16) -> PageState {
        PageState::tagged(attributes(v), Tag::new(v).unwrap())
    }

    /// Writes version `v` through `set`: R in one set, P's odd pages one page at a time.
    fn write(v: u16, mut set: impl FnMut(FrameRange, PageState)) {
        set(range(R), state(v));
        for gfn in (P.0 + 1..P.1).step_by(2) {
            set(
                FrameRange::new(Gfn(gfn), 1).unwrap(),
                PageState::new(attributes(v)),
            );
        }
    }

    fn start() -> AttrMap {
        let mut map = AttrMap::new(FRAMES << PAGE_SHIFT).unwrap();
        // P's even pages are private for good, and enough scattered pages around it
        // keep its region one bitmap in every version.
        for gfn in (P.0..P.1).step_by(2) {
            map.set(FrameRange::new(Gfn(gfn), 1).unwrap(), Attributes::PRIVATE)
                .unwrap();
        }
        for k in 0..100 {
            let gfn = (1 << 28) + 10_000 + k * 997;
            map.set(FrameRange::new(Gfn(gfn), 1).unwrap(), Attributes::PRIVATE)
                .unwrap();
        }
        write(1, |r, st| {
            map.set_state(r, st).unwrap();
        });
        assert_eq!(map.forms()[2], 1, "P's region is a dense bitmap");
        map
    }

    /// The version a snapshot holds, after checking it is wholly that version.
    fn check_snapshot(snap: &AttrMap) -> u16 {
        let r: Vec<Run> = snap.runs(range(R)).unwrap().collect();
        assert_eq!(r.len(), 1, "R mixes versions: {r:?}");
        let v = r[0].state.tag.unwrap().get();
        assert_eq!(r[0].state, state(v));
        assert!(snap.range_is(range(R), attributes(v)).unwrap());
        let p: Vec<Run> = snap.runs(range(P)).unwrap().collect();
        if v % 2 == 1 {
            assert_eq!(
                p.len(),
                1,
                "P in version {v} is not all private: {} runs",
                p.len()
            );
            assert!(p[0].state.is_private());
        } else {
            assert_eq!(
                p.len() as u64,
                P.1 - P.0,
                "P in version {v} is not alternating"
            );
            for (k, run) in p.iter().enumerate() {
                assert_eq!(run.range.pages(), 1);
                assert_eq!(run.state.is_private(), k % 2 == 0, "P in version {v}");
            }
        }
        v
    }

    #[test]
    fn every_read_sees_one_version() {
        let map = ConcurrentAttrMap::new(start());
        let done = AtomicBool::new(false);
        let seen: Vec<BTreeSet<u16>> = thread::scope(|s| {
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let mut seen = BTreeSet::new();
                        let mut last = 0;
                        while !done.load(Ordering::Acquire) {
                            // A snapshot is one version, never older than one seen.
                            let v = check_snapshot(&map.snapshot());
                            assert!(v >= last, "version {v} after {last}");
                            last = v;
                            seen.insert(v);
                            // Single calls on the live map: each one version, in order.
                            let before = map.get(Gfn(R.0)).unwrap().tag.unwrap().get();
                            let whole = map.range_is(range(R), Attributes::PRIVATE).unwrap();
                            let page = map.get(Gfn(P.0 + 1)).unwrap();
                            let after = map.get(Gfn(R.1 - 1)).unwrap().tag.unwrap().get();
                            assert!(last <= before && before <= after);
                            if before == after {
                                assert_eq!(whole, before % 2 == 1);
                                assert_eq!(page.is_private(), before % 2 == 1);
                            }
                            last = after;
                        }
                        seen
                    })
                })
                .collect();
            let stop = Stop(&done);
            for v in 2..=VERSIONS {
                let changes = map.update(|m| {
                    write(v, |r, st| {
                        m.set_state(r, st).unwrap();
                    });
                    m.check_invariants().unwrap();
                    m.run_count()
                });
                assert!(changes > 1);
                thread::yield_now();
            }
            drop(stop);
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let last = map.snapshot();
        assert_eq!(check_snapshot(&last), VERSIONS);
        last.check_invariants().unwrap();
        // The readers saw the map change under them.
        let all: BTreeSet<u16> = seen.into_iter().flatten().collect();
        assert!(all.len() >= 2, "readers saw only versions {all:?}");
    }

    /// Single pages of the first 1 GiB, the start of a map small tests share.
    fn page(gfn: u64) -> FrameRange {
        FrameRange::new(Gfn(gfn), 1).unwrap()
    }

    const GIB_FRAMES: u64 = 1 << 18;

    /// A 2 GiB map whose first 1 GiB is one dense bitmap (70 isolated private pages) and
    /// whose second holds a bitmap leaf and a run leaf.
    fn small() -> AttrMap {
        let mut map = AttrMap::new((2 * GIB_FRAMES) << PAGE_SHIFT).unwrap();
        for k in 0..70 {
            map.set(page(100 + k * 3001), Attributes::PRIVATE).unwrap();
        }
        for k in 0..5 {
            map.set(page(GIB_FRAMES + 10 + 3 * k), Attributes::PRIVATE)
                .unwrap();
        }
        map.set(
            FrameRange::new(Gfn(GIB_FRAMES + 9000), 3400).unwrap(),
            Attributes::PRIVATE,
        )
        .unwrap();
        let forms = map.forms();
        assert!(forms[2] == 1 && forms[3] >= 1 && forms[4] >= 1, "{forms:?}");
        map
    }

    /// Sets `range` to `state` on the shared map and on `model`, checking both agree.
    fn both(map: &ConcurrentAttrMap, model: &mut AttrMap, range: FrameRange, state: PageState) {
        let published = map.set_state(range, state).unwrap();
        assert_eq!(published, model.set_state(range, state).unwrap());
        assert_eq!(*map.snapshot(), *model);
    }

    #[test]
    fn writes_alternate_between_two_maps() {
        let map = ConcurrentAttrMap::new(small());
        let mut model = small();
        let first = Arc::as_ptr(&map.snapshot());
        both(&map, &mut model, page(101), PageState::PRIVATE);
        let second = Arc::as_ptr(&map.snapshot());
        assert_ne!(first, second);
        // Single pages in every form, ranges, tags: each write replays the one before.
        let tag = PageState::tagged(Attributes::PRIVATE, Tag::new(5).unwrap());
        for round in 0..10u64 {
            for gfn in [100 + round, 3101 + round, GIB_FRAMES + 11 + round, 9000] {
                both(&map, &mut model, page(gfn), PageState::PRIVATE);
                both(&map, &mut model, page(gfn + 1), PageState::SHARED);
            }
            let r = FrameRange::new(Gfn(50_000 + round * 7), 3000).unwrap();
            both(&map, &mut model, r, tag);
            both(&map, &mut model, r, PageState::SHARED);
            both(&map, &mut model, page(GIB_FRAMES + 9100 + round), tag);
        }
        map.snapshot().check_invariants().unwrap();
        // Nothing pinned a map: the two maps took turns and nothing was cloned.
        assert_eq!(map.clones(), 0);
        let now = Arc::as_ptr(&map.snapshot());
        assert!(now == first || now == second);
        both(&map, &mut model, page(500_000), PageState::PRIVATE);
        let next = Arc::as_ptr(&map.snapshot());
        assert!((now, next) == (first, second) || (now, next) == (second, first));
    }

    #[test]
    fn rollback_inside_an_update_is_replayed() {
        let map = ConcurrentAttrMap::new(small());
        let before = map.snapshot();
        // Set, then undo exactly the changes, as a failed conversion does.
        let n = map.update(|m| {
            let mut undo = Vec::new();
            for r in [
                page(101),
                FrameRange::new(Gfn(95), 20).unwrap(),
                page(GIB_FRAMES + 12),
            ] {
                undo.extend(m.set(r, Attributes::PRIVATE).unwrap());
            }
            assert!(m.get(Gfn(96)).unwrap().is_private());
            for c in undo.iter().rev() {
                m.set_state(c.range, c.previous).unwrap();
            }
            undo.len()
        });
        assert!(n >= 3);
        assert_eq!(*map.snapshot(), *before);
        drop(before);
        // The next write starts from the other map with both halves replayed.
        let mut model = small();
        both(&map, &mut model, page(103), PageState::PRIVATE);
        both(&map, &mut model, page(GIB_FRAMES + 13), PageState::PRIVATE);
        assert_eq!(map.clones(), 0);
    }

    #[test]
    fn a_pinned_map_is_left_to_its_reader() {
        let map = ConcurrentAttrMap::new(small());
        let mut model = small();
        let pinned = map.snapshot();
        let pinned_model = model.clone();
        both(&map, &mut model, page(101), PageState::PRIVATE);
        // The map the next write would reuse is still held: it clones instead, and the
        // holder's view never changes.
        both(&map, &mut model, page(104), PageState::PRIVATE);
        assert_eq!(map.clones(), 1);
        assert_eq!(*pinned, pinned_model);
        both(&map, &mut model, page(3102), PageState::PRIVATE);
        both(&map, &mut model, page(3102), PageState::SHARED);
        assert_eq!(*pinned, pinned_model);
        assert!(!Arc::ptr_eq(&pinned, &map.snapshot()));
        assert_eq!(map.clones(), 1);
        drop(pinned);
        for gfn in 200..220 {
            both(&map, &mut model, page(gfn), PageState::PRIVATE);
        }
        assert_eq!(map.clones(), 1);
        // A guard held across a write pins the same way.
        let guard = map.published.load();
        both(&map, &mut model, page(300), PageState::PRIVATE);
        both(&map, &mut model, page(302), PageState::PRIVATE);
        assert_eq!(map.clones(), 2);
        drop(guard);
        map.snapshot().check_invariants().unwrap();
    }

    #[test]
    fn a_reader_may_clone_a_snapshot() {
        let map = ConcurrentAttrMap::new(small());
        let mut model = small();
        for gfn in [101, 3102, GIB_FRAMES + 12] {
            both(&map, &mut model, page(gfn), PageState::PRIVATE);
        }
        // A reader makes a plain map of its own out of a snapshot and changes it. Both
        // published maps share nothing the writer changes in place with it.
        let mut own = AttrMap::clone(&map.snapshot());
        let own_before = own.clone();
        for gfn in [101, 3105, GIB_FRAMES + 14] {
            own.set(page(gfn), Attributes::empty()).unwrap();
            own.set(page(gfn + 2), Attributes::PRIVATE).unwrap();
        }
        let own_after = own.clone();
        for gfn in [101, 102, 3105, 3106, 3107, GIB_FRAMES + 14, GIB_FRAMES + 16] {
            both(&map, &mut model, page(gfn), PageState::PRIVATE);
            both(&map, &mut model, page(gfn + 1000), PageState::PRIVATE);
        }
        assert_eq!(own, own_after);
        assert_ne!(own, own_before);
        assert_eq!(map.clones(), 0);
    }

    #[test]
    fn an_update_that_changes_nothing_publishes_nothing() {
        let map = ConcurrentAttrMap::new(small());
        let before = map.snapshot();
        let changes = map.update(|m| m.set(page(100), Attributes::PRIVATE).unwrap());
        assert!(changes.is_empty());
        assert!(map.set(page(GIB_FRAMES * 2), Attributes::PRIVATE).is_err());
        assert!(Arc::ptr_eq(&before, &map.snapshot()));
        drop(before);
        let mut model = small();
        both(&map, &mut model, page(101), PageState::PRIVATE);
        both(&map, &mut model, page(100), PageState::SHARED);
        assert_eq!(map.clones(), 0);
    }

    #[test]
    fn a_panicking_update_publishes_nothing() {
        let map = ConcurrentAttrMap::new(small());
        let mut model = small();
        both(&map, &mut model, page(101), PageState::PRIVATE);
        let before = Arc::as_ptr(&map.snapshot());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            map.update(|m| {
                m.set(page(105), Attributes::PRIVATE).unwrap();
                panic!("a writer fails halfway");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(Arc::as_ptr(&map.snapshot()), before);
        assert_eq!(*map.snapshot(), model);
        // The next writer starts over from the published map.
        both(&map, &mut model, page(106), PageState::PRIVATE);
        assert_eq!(map.clones(), 1);
        both(&map, &mut model, page(107), PageState::PRIVATE);
        assert_eq!(map.clones(), 1);
        assert_eq!(map.get(Gfn(105)).unwrap(), PageState::SHARED);
    }

    #[test]
    fn a_write_over_the_last_one_is_not_replayed() {
        let map = ConcurrentAttrMap::new(small());
        let mut model = small();
        // Round trips of single pages in every form, and of a range across leaves:
        // each write covers all the last one changed, save the first on each range,
        // which replays the last write on the range before.
        let tag = PageState::tagged(Attributes::empty(), Tag::new(2).unwrap());
        let wide = FrameRange::new(Gfn(GIB_FRAMES + 4000), 9000).unwrap();
        for (k, r) in [
            page(4096),
            page(101),
            page(3101),
            page(GIB_FRAMES + 12),
            wide,
        ]
        .into_iter()
        .enumerate()
        {
            for state in [
                PageState::PRIVATE,
                PageState::SHARED,
                tag,
                PageState::SHARED,
            ] {
                both(&map, &mut model, r, state);
                assert_eq!(map.replayed(), k as u64);
            }
        }
        assert_eq!(map.clones(), 0);
        // Writes elsewhere replay the one before each.
        both(&map, &mut model, page(5000), PageState::PRIVATE);
        both(&map, &mut model, page(6000), PageState::PRIVATE);
        assert_eq!(map.replayed(), 6);
        map.snapshot().check_invariants().unwrap();
    }

    #[test]
    fn reads_inside_an_update_see_the_published_map() {
        let map = ConcurrentAttrMap::new(small());
        map.set(page(7000), Attributes::PRIVATE).unwrap();
        // The spare lacks that set until this update's set covers or replays it.
        let (before, set, after) = map.update(|m| {
            let before = m.get(Gfn(7000)).unwrap();
            let set = m.set(FrameRange::new(Gfn(6999), 3).unwrap(), Attributes::PRIVATE);
            (before, set.unwrap(), m.get(Gfn(7001)).unwrap())
        });
        assert_eq!(before, PageState::PRIVATE);
        assert_eq!(set.pages(), 2);
        assert_eq!(after, PageState::PRIVATE);
        assert_eq!(map.replayed(), 0);
        // A set that covers the missing one but changes nothing publishes nothing, and
        // the spare still lacks it: the next set elsewhere replays it.
        let published = map.snapshot();
        let nothing =
            map.update(|m| m.set(FrameRange::new(Gfn(6999), 3).unwrap(), Attributes::PRIVATE));
        assert!(nothing.unwrap().is_empty());
        assert!(Arc::ptr_eq(&published, &map.snapshot()));
        drop(published);
        map.set(page(8000), Attributes::PRIVATE).unwrap();
        assert_eq!(map.replayed(), 1);
        let mut model = small();
        for r in [
            page(7000),
            FrameRange::new(Gfn(6999), 3).unwrap(),
            page(8000),
        ] {
            model.set(r, Attributes::PRIVATE).unwrap();
        }
        assert_eq!(*map.snapshot(), model);
    }

    #[test]
    fn readers_never_see_a_reused_map_change() {
        // Two pages always set together, by one update: a reader that ever saw them
        // differ would have seen half a write, or a map being reused under it.
        let map = ConcurrentAttrMap::new(AttrMap::new(64 << 20).unwrap());
        let (a, b) = (page(4096), page(9000));
        let writes = if cfg!(miri) { 40 } else { 4000 };
        let done = AtomicBool::new(false);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut last = 0;
                    while !done.load(Ordering::Acquire) {
                        let (x, y, version) = map.read(|m| {
                            let version = m.get(Gfn(100)).unwrap().tag.map_or(0, Tag::get);
                            (
                                m.get(a.start()).unwrap(),
                                m.get(b.start()).unwrap(),
                                version,
                            )
                        });
                        assert_eq!(x.attributes, y.attributes, "half a write seen");
                        assert!(version >= last, "version {version} after {last}");
                        last = version;
                        let snap = map.snapshot();
                        assert_eq!(snap.get(a.start()), snap.get(b.start()));
                    }
                });
            }
            let _stop = Stop(&done);
            for v in 1..=writes {
                let to = if v % 2 == 1 {
                    Attributes::PRIVATE
                } else {
                    Attributes::empty()
                };
                map.update(|m| {
                    m.set(a, to).unwrap();
                    m.set(b, to).unwrap();
                    // Every third write also moves a version counter elsewhere, so the
                    // next write replays instead of covering what the spare lacks.
                    if v % 3 == 0 {
                        let tag = Tag::new(u16::try_from(v).unwrap()).unwrap();
                        m.set_state(page(100), PageState::tagged(Attributes::empty(), tag))
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(map.get(a.start()), map.get(b.start()));
    }

    #[test]
    fn a_long_write_gives_its_journal_memory_back() {
        let map = ConcurrentAttrMap::new(small());
        let mut model = small();
        // One write of many sets: its journal is long, and the next write replays it.
        let pages: Vec<u64> = (0..3 * JOURNAL_KEEP as u64)
            .map(|k| 400_000 + 2 * k)
            .collect();
        map.update(|m| {
            for &g in &pages {
                m.set(page(g), Attributes::PRIVATE).unwrap();
            }
        });
        for &g in &pages {
            model.set(page(g), Attributes::PRIVATE).unwrap();
        }
        assert!(map.journal_capacity().0 > JOURNAL_KEEP);
        for g in [1, 3, 5] {
            both(&map, &mut model, page(g), PageState::PRIVATE);
        }
        let (journal, recording) = map.journal_capacity();
        assert!(journal <= JOURNAL_KEEP && recording <= JOURNAL_KEEP);
        assert_eq!(map.replayed() as usize, pages.len() + 2);
    }

    #[test]
    fn try_update_gives_f_back_while_another_writer_runs() {
        use std::sync::mpsc;
        let map = &ConcurrentAttrMap::new(small());
        let (inside, writing) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        thread::scope(|s| {
            let other = s.spawn(move || {
                map.update(|m| {
                    m.set(page(10), Attributes::PRIVATE).unwrap();
                    inside.send(()).unwrap();
                    released.recv().unwrap();
                })
            });
            writing.recv().unwrap();
            let ran = AtomicBool::new(false);
            let f = |m: &mut AttrMapWriter<'_>| {
                ran.store(true, Ordering::Relaxed);
                m.set(page(11), Attributes::PRIVATE).unwrap()
            };
            let Err(f) = map.try_update(f) else {
                panic!("try_update ran beside another writer");
            };
            assert!(!ran.load(Ordering::Relaxed));
            release.send(()).unwrap();
            other.join().unwrap();
            let changes = map.try_update(f).ok().unwrap();
            assert_eq!(changes.pages(), 1);
        });
        assert!(map.get(Gfn(10)).unwrap().is_private());
        assert!(map.get(Gfn(11)).unwrap().is_private());
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// One update of these sets; `rollback` undoes them inside it.
        Update(Vec<(u64, u64, PageState)>, bool),
        /// Take a snapshot and keep it.
        Pin,
        /// Drop the oldest snapshot kept.
        Unpin,
        /// Clone a snapshot into a plain map and change that.
        CloneSnapshot(u64),
        /// One update setting the span of the last update's sets (which covers them all)
        /// to this state.
        Repeat(PageState),
    }

    fn step() -> impl Strategy<Value = Step> {
        let spot = prop_oneof![
            4 => 0..2 * GIB_FRAMES,
            4 => 90..3000u64,
            2 => GIB_FRAMES..GIB_FRAMES + 10_000,
        ];
        let len = prop_oneof![6 => Just(1u64), 2 => 1..64u64, 1 => 1..GIB_FRAMES];
        let state = prop_oneof![
            4 => Just(PageState::PRIVATE),
            4 => Just(PageState::SHARED),
            1 => Just(PageState::tagged(Attributes::PRIVATE, Tag::new(3).unwrap())),
        ];
        let set = (spot, len, state).prop_map(|(a, n, s)| (a, (a + n).min(2 * GIB_FRAMES), s));
        prop_oneof![
            8 => (prop::collection::vec(set, 1..4), prop::bool::weighted(0.2))
                .prop_map(|(sets, rollback)| Step::Update(sets, rollback)),
            1 => Just(Step::Pin),
            1 => Just(Step::Unpin),
            1 => (0..2 * GIB_FRAMES).prop_map(Step::CloneSnapshot),
            3 => prop_oneof![
                Just(PageState::PRIVATE),
                Just(PageState::SHARED),
                Just(PageState::tagged(Attributes::empty(), Tag::new(4).unwrap())),
            ]
            .prop_map(Step::Repeat),
        ]
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any mix of writes, rollbacks, pinned snapshots and cloned snapshots: the
        /// published map is always the plain map the same sets make, no snapshot ever
        /// changes, and (checked inside every update) each spare replays to the
        /// published map.
        #[test]
        fn published_map_follows_a_plain_map(steps in prop::collection::vec(step(), 1..40)) {
            let map = ConcurrentAttrMap::new(small());
            let mut model = small();
            let mut pinned: Vec<(Arc<AttrMap>, AttrMap)> = Vec::new();
            let mut last = (0, 1);
            for step in steps {
                let step = match step {
                    Step::Repeat(state) => Step::Update(vec![(last.0, last.1, state)], false),
                    other => other,
                };
                if let Step::Update(sets, _) = &step {
                    last = (
                        sets.iter().map(|s| s.0).min().unwrap_or(0),
                        sets.iter().map(|s| s.1).max().unwrap_or(1),
                    );
                }
                match step {
                    Step::Update(sets, rollback) => {
                        let model_before = model.clone();
                        let expect: Vec<Changes> = sets
                            .iter()
                            .map(|&(a, b, s)| model.set_state(fr(a, b), s).unwrap())
                            .collect();
                        let before = model_before.clone();
                        let (got, saw) = map.update(|m| {
                            // Reads before any set see the published map.
                            let saw = **m == before;
                            let got: Vec<Changes> = sets
                                .iter()
                                .map(|&(a, b, s)| m.set_state(fr(a, b), s).unwrap())
                                .collect();
                            if rollback {
                                for c in got.iter().flatten().rev() {
                                    m.set_state(c.range, c.previous).unwrap();
                                }
                            }
                            (got, saw)
                        });
                        prop_assert!(saw);
                        prop_assert_eq!(&got, &expect);
                        if rollback {
                            for c in expect.iter().flatten().rev() {
                                model.set_state(c.range, c.previous).unwrap();
                            }
                        }
                    }
                    Step::Pin => pinned.push((map.snapshot(), model.clone())),
                    Step::Unpin => {
                        if !pinned.is_empty() {
                            let (snap, then) = pinned.remove(0);
                            prop_assert_eq!(&*snap, &then);
                        }
                    }
                    Step::CloneSnapshot(gfn) => {
                        let mut own = AttrMap::clone(&map.snapshot());
                        own.set(page(gfn), Attributes::PRIVATE).unwrap();
                        own.set(page(gfn ^ 1), Attributes::empty()).unwrap();
                    }
                    Step::Repeat(_) => {}
                }
                prop_assert_eq!(&*map.snapshot(), &model);
            }
            for (snap, then) in &pinned {
                prop_assert_eq!(&**snap, then);
            }
            map.snapshot().check_invariants().unwrap();
        }
    }

    fn fr(a: u64, b: u64) -> FrameRange {
        FrameRange::from_bounds(Gfn(a), Gfn(b)).unwrap()
    }
}
