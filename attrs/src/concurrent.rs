// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! [`ConcurrentAttrMap`]: an [`AttrMap`] that vCPU threads read while one thread converts.

use std::sync::{Arc, Mutex, PoisonError};

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
/// serialised by a mutex; one writer at a time.
///
/// # Cost
///
/// A read pays one atomic load and reference count update on top of the plain
/// [`AttrMap`] query.
///
/// A write changes the writer's own map and publishes a clone of it. Cloning copies
/// the root's 64 slots and shares everything below; the next write then copies the
/// nodes and bitmaps on its path that a snapshot still holds (path copying), so each
/// published write pays for one path. On the benchmark's 64 GiB guest after 100,000
/// scattered conversions (every 1 GiB region a 32 KiB bitmap), measured on a shared
/// 2-core machine: a single-page set took about 40 ns on a plain map and 3.8 us
/// published, most of it copying that region's bitmap; an aligned 1 GiB set took about
/// 160 ns plain and 0.5 us published. In a small guest with a few runs a published
/// single-page set costs about 0.5 us, mostly cloning the 64-slot root and freeing the
/// old snapshot. Old snapshots are freed when their last reader
/// drops them. Several sets made inside one [`update`](ConcurrentAttrMap::update) share
/// one publish and copy each path once: batch where you can.
#[derive(Debug)]
pub struct ConcurrentAttrMap {
    writer: Mutex<AttrMap>,
    published: ArcSwap<AttrMap>,
}

impl ConcurrentAttrMap {
    /// Shares `map` between threads.
    pub fn new(map: AttrMap) -> Self {
        ConcurrentAttrMap {
            published: ArcSwap::from_pointee(map.clone()),
            writer: Mutex::new(map),
        }
    }

    /// The current state as one consistent snapshot, for several queries that must agree.
    pub fn snapshot(&self) -> Arc<AttrMap> {
        self.published.load_full()
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
    /// without any reader seeing the intermediate state.
    pub fn update<R>(&self, f: impl FnOnce(&mut AttrMap) -> R) -> R {
        // A panic in an earlier writer leaves a map that is still a valid map; carry on.
        let mut map = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let result = f(&mut map);
        self.published.store(Arc::new(map.clone()));
        result
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

    /// Writes version `v`: R in one set, P's odd pages one page at a time.
    fn write(map: &mut AttrMap, v: u16) {
        map.set_state(range(R), state(v)).unwrap();
        for gfn in (P.0 + 1..P.1).step_by(2) {
            map.set(FrameRange::new(Gfn(gfn), 1).unwrap(), attributes(v))
                .unwrap();
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
        write(&mut map, 1);
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
            for v in 2..=VERSIONS {
                let changes = map.update(|m| {
                    write(m, v);
                    m.check_invariants().unwrap();
                    m.run_count()
                });
                assert!(changes > 1);
                thread::yield_now();
            }
            done.store(true, Ordering::Release);
            readers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let last = map.snapshot();
        assert_eq!(check_snapshot(&last), VERSIONS);
        last.check_invariants().unwrap();
        // The readers saw the map change under them.
        let all: BTreeSet<u16> = seen.into_iter().flatten().collect();
        assert!(all.len() >= 2, "readers saw only versions {all:?}");
    }
}
