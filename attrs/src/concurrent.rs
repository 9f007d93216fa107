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
/// [`set`](ConcurrentAttrMap::set) or [`update`](ConcurrentAttrMap::update), never a mix.
/// Writers are serialised by a mutex; one writer at a time.
///
/// # Cost
///
/// Each write works on the writer's private copy and then publishes a new snapshot, so a
/// write pays for cloning the map's top level and copying the parts it touched that a
/// snapshot still shares, plus one allocation for the snapshot. Old snapshots are freed
/// when their last reader drops them. Reads pay one atomic load and reference count
/// update on top of the plain [`AttrMap`] query.
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
