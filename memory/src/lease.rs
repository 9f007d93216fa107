// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The lock that makes "check the attributes, then copy" atomic with respect to a
//! conversion that takes host access away, and [`HostAccessLease`], the read side of it
//! that travels inside every `vm-memory` slice veil hands out.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};

#[derive(Debug, Default)]
struct State {
    readers: usize,
    converting: bool,
    /// Threads blocked on `changed`: notifying costs a system call, so only when some.
    waiting: usize,
}

/// A reader-preferring lock: host accesses share it, a conversion that removes host
/// access holds it alone while it changes protections and publishes the new state.
///
/// Readers only wait while a conversion holds it, never for a waiting conversion, so a
/// thread that already holds a lease can take another without deadlock. A conversion can
/// therefore wait as long as leases keep overlapping.
#[derive(Debug, Default)]
pub(crate) struct AccessLock {
    state: Mutex<State>,
    changed: Condvar,
}

impl AccessLock {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is two plain fields updated atomically under the mutex; a panic
        // elsewhere cannot leave it half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a read lease: waits while a conversion holds the lock.
    pub(crate) fn read(self: &Arc<Self>) -> HostAccessLease {
        let mut st = self.state();
        while st.converting {
            st = self.wait(st);
        }
        st.readers += 1;
        HostAccessLease(Some(Arc::new(Token(Arc::clone(self)))))
    }

    /// Takes the lock alone: waits until no lease is held and no conversion holds it.
    pub(crate) fn write(&self) -> ExclusiveGuard<'_> {
        let mut st = self.state();
        while st.converting || st.readers > 0 {
            st = self.wait(st);
        }
        st.converting = true;
        ExclusiveGuard(self)
    }

    fn wait<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.waiting += 1;
        let mut st = self
            .changed
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner);
        st.waiting -= 1;
        st
    }

    /// Wakes the waiters, if any, after `st` changed.
    fn wake(&self, st: MutexGuard<'_, State>) {
        let waiting = st.waiting > 0;
        drop(st);
        if waiting {
            self.changed.notify_all();
        }
    }
}

/// Exclusive hold of an [`AccessLock`], released on drop.
pub(crate) struct ExclusiveGuard<'a>(&'a AccessLock);

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.converting = false;
        self.0.wake(st);
    }
}

struct Token(Arc<AccessLock>);

impl Drop for Token {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.readers -= 1;
        if st.readers == 0 {
            self.0.wake(st);
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token")
    }
}

/// A shared hold on a guest memory's host-access lock, carried by every
/// [`VolatileSlice`](vm_memory::VolatileSlice) a [`HostSafeMemory`](crate::HostSafeMemory)
/// hands out (in the slot `vm-memory` reserves for a dirty bitmap).
///
/// While any slice (or a clone of one) is alive, no conversion can make memory of that
/// guest inaccessible to the host, so a slice checked as shared stays accessible until it
/// is dropped. Conversions to private wait for it: keep slices short-lived, and never
/// convert to private on a thread that still holds one (that deadlocks). The lease does
/// not track dirty pages.
#[derive(Clone, Debug, Default)]
pub struct HostAccessLease(Option<Arc<Token>>);

impl HostAccessLease {
    /// Whether this lease holds the lock (region bitmaps handed out by `bitmap()` do not).
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl WithBitmapSlice<'_> for HostAccessLease {
    type S = Self;
}

impl BitmapSlice for HostAccessLease {}

impl Bitmap for HostAccessLease {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) -> Self {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn writer_waits_for_every_lease_clone() {
        let lock = Arc::new(AccessLock::default());
        let lease = lock.read();
        let clone = lease.clone();
        let nested = lock.read();
        assert!(lease.is_held() && !HostAccessLease::default().is_held());
        let done = Arc::new(AtomicBool::new(false));
        let t = {
            let (lock, done) = (Arc::clone(&lock), Arc::clone(&done));
            std::thread::spawn(move || {
                let _g = lock.write();
                done.store(true, Ordering::SeqCst);
            })
        };
        drop(lease);
        drop(nested);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !done.load(Ordering::SeqCst),
            "writer ran while a clone was alive"
        );
        drop(clone);
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        // Readers get in again once the writer is gone.
        drop(lock.read());
    }
}
