// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The lock that makes "check the attributes, then copy" atomic with respect to a
//! conversion that takes host access away, and [`HostAccessLease`], the read side of it
//! that travels inside every `vm-memory` slice veil hands out.
//!
//! Host accesses are the hot path of device emulation (a virtio device reads 16-byte
//! descriptors all the time), so taking, cloning and dropping a lease is one atomic
//! read-modify-write on one word, with no lock and no allocation. The mutex and condition
//! variable are only for threads that must wait.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};

/// Set while a conversion holds the lock.
const CONVERTING: usize = 1 << 0;
/// Set while some thread may be asleep on the condition variable, or about to be: whoever
/// clears [`CONVERTING`] or drops the last lease then takes the mutex to wake it.
const PARKED: usize = 1 << 1;
/// One lease, in the count that takes the bits above the flags.
const ONE_LEASE: usize = 1 << 2;
/// The bits that count leases.
const LEASES: usize = !(CONVERTING | PARKED);

/// A reader-preferring lock: host accesses share it, a conversion that removes host
/// access holds it alone while it changes protections and publishes the new state.
///
/// Readers only wait while a conversion holds it, never for a waiting conversion, so a
/// thread that already holds a lease can take another without deadlock. A conversion can
/// therefore wait as long as leases keep overlapping.
///
/// # How it works
///
/// Everything is in `state`: the number of leases alive, [`CONVERTING`] and [`PARKED`].
/// Taking a lease is a compare-and-swap that adds [`ONE_LEASE`] where [`CONVERTING`] is
/// clear; cloning one adds [`ONE_LEASE`]; dropping one subtracts it. A conversion swaps
/// a state of 0 for [`CONVERTING`] and clears the bit when it is done.
///
/// A thread that must wait takes `sleep`, then sets [`PARKED`] with a compare-and-swap
/// that also confirms what it waits for still holds, and sleeps on `wake`, which gives
/// `sleep` back only once the thread is asleep. A thread that lets a waiter go on (the
/// last lease dropped, or a conversion done) changes `state` first, and only if the old
/// value had [`PARKED`] takes `sleep`, clears [`PARKED`] and wakes every sleeper; those
/// that must still wait set it again. No wake-up is lost: if the waker took `sleep`
/// before the waiter did, the waker's change to `state` happens before the waiter's look
/// at it, which then sees the change and does not sleep; otherwise the waker takes
/// `sleep` after the waiter is asleep, and wakes it. [`PARKED`] is only cleared under
/// `sleep`, so it cannot vanish between a waiter's look and its sleep.
///
/// Orderings: taking a lease and taking the lock are `Acquire`, dropping either is
/// `Release`. So whatever a lease holder did with guest memory (its reads and writes,
/// all before the drop) happens before the conversion that next takes the lock changes
/// protections, and whatever a conversion did (new protections, the new attributes
/// published) happens before any lease taken after it lets go; compare-and-swaps that
/// fail and [`PARKED`] need no ordering of their own (the mutex orders waiters and
/// wakers). Cloning is `Relaxed`, like `Arc::clone`: the clone's holder already holds a
/// lease, so it learns nothing new.
#[derive(Default)]
pub(crate) struct AccessLock {
    state: AtomicUsize,
    /// Guards no data: it orders waiters' sleeping against wakers' waking.
    sleep: Mutex<()>,
    wake: Condvar,
    /// How many times a thread went to sleep: the cost of contention, and how tests tell
    /// they made some thread wait. Only the slow path counts.
    sleeps: AtomicUsize,
}

impl fmt::Debug for AccessLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.load(Ordering::Relaxed);
        f.debug_struct("AccessLock")
            .field("leases", &(s / ONE_LEASE))
            .field("converting", &(s & CONVERTING != 0))
            .field("parked", &(s & PARKED != 0))
            .finish()
    }
}

impl AccessLock {
    /// Takes a read lease: waits while a conversion holds the lock.
    #[inline]
    pub(crate) fn read(&self) -> HostAccessLease<'_> {
        let mut s = self.state.load(Ordering::Relaxed);
        while s & CONVERTING == 0 {
            match self.state.compare_exchange_weak(
                s,
                add_lease(s),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return HostAccessLease(Some(self)),
                Err(now) => s = now,
            }
        }
        self.read_contended()
    }

    #[cold]
    fn read_contended(&self) -> HostAccessLease<'_> {
        self.wait_to_take(|s| s & CONVERTING == 0, add_lease);
        HostAccessLease(Some(self))
    }

    /// Takes the lock alone: waits until no lease is held and no conversion holds it.
    pub(crate) fn write(&self) -> ExclusiveGuard<'_> {
        let free = self
            .state
            .compare_exchange(0, CONVERTING, Ordering::Acquire, Ordering::Relaxed);
        if free.is_err() {
            self.wait_to_take(|s| s & (LEASES | CONVERTING) == 0, |s| s | CONVERTING);
        }
        ExclusiveGuard(self)
    }

    /// Sleeps until `ready(state)`, then replaces `state` with `take(state)`.
    #[cold]
    fn wait_to_take(&self, ready: impl Fn(usize) -> bool, take: impl Fn(usize) -> usize) {
        let mut sleep = self.sleep();
        let mut s = self.state.load(Ordering::Relaxed);
        loop {
            if ready(s) {
                match self
                    .state
                    .compare_exchange(s, take(s), Ordering::Acquire, Ordering::Relaxed)
                {
                    Ok(_) => return,
                    Err(now) => {
                        s = now;
                        continue;
                    }
                }
            }
            // Not ready: make sure PARKED is set, in a step that confirms it still is
            // not, so whoever makes it ready wakes this thread.
            if s & PARKED == 0
                && let Err(now) =
                    self.state
                        .compare_exchange(s, s | PARKED, Ordering::Relaxed, Ordering::Relaxed)
            {
                s = now;
                continue;
            }
            self.sleeps.fetch_add(1, Ordering::Relaxed);
            sleep = self
                .wake
                .wait(sleep)
                .unwrap_or_else(PoisonError::into_inner);
            s = self.state.load(Ordering::Relaxed);
        }
    }

    fn sleep(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic elsewhere cannot leave it inconsistent.
        self.sleep.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every sleeper; called by a thread whose change to `state` found [`PARKED`].
    #[cold]
    fn wake_all(&self) {
        let _sleep = self.sleep();
        self.state.fetch_and(!PARKED, Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// Whether some thread sleeps on the lock, or is about to (tests only).
    #[cfg(test)]
    pub(crate) fn has_sleepers(&self) -> bool {
        self.state.load(Ordering::SeqCst) & PARKED != 0
    }

    /// Drops one lease.
    #[inline]
    fn release(&self) {
        let before = self.state.fetch_sub(ONE_LEASE, Ordering::Release);
        // The last lease, and someone (a conversion) may be waiting for it.
        if before & (LEASES | PARKED) == ONE_LEASE | PARKED {
            self.wake_all();
        }
    }
}

/// `s` with one more lease. Leases that are never dropped (`mem::forget`) could in
/// principle overflow the count; like `Arc`, abort rather than wrap.
#[inline]
fn add_lease(s: usize) -> usize {
    match s.checked_add(ONE_LEASE) {
        Some(next) => next,
        None => std::process::abort(),
    }
}

/// Exclusive hold of an [`AccessLock`], released on drop.
pub(crate) struct ExclusiveGuard<'a>(&'a AccessLock);

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        let before = self.0.state.fetch_and(!CONVERTING, Ordering::Release);
        if before & PARKED != 0 {
            self.0.wake_all();
        }
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
/// not track dirty pages. It borrows the memory, as the slice does.
#[derive(Default)]
pub struct HostAccessLease<'a>(Option<&'a AccessLock>);

impl HostAccessLease<'_> {
    /// Whether this lease holds the lock (region bitmaps handed out by `bitmap()` do not).
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }
}

impl Clone for HostAccessLease<'_> {
    #[inline]
    fn clone(&self) -> Self {
        if let Some(lock) = self.0 {
            // Held: no conversion holds the lock, so one more lease needs no check.
            let before = lock.state.fetch_add(ONE_LEASE, Ordering::Relaxed);
            if before > usize::MAX - ONE_LEASE {
                std::process::abort();
            }
        }
        HostAccessLease(self.0)
    }
}

impl Drop for HostAccessLease<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(lock) = self.0 {
            lock.release();
        }
    }
}

impl fmt::Debug for HostAccessLease<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HostAccessLease")
            .field(&self.is_held())
            .finish()
    }
}

impl WithBitmapSlice<'_> for HostAccessLease<'_> {
    type S = Self;
}

impl BitmapSlice for HostAccessLease<'_> {}

impl Bitmap for HostAccessLease<'_> {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    fn slice_at(&self, _offset: usize) -> Self {
        self.clone()
    }
}

/// The "bitmap" type of a [`GuestSpan`](crate::GuestSpan) as `vm-memory` sees it: it
/// tracks nothing, and the slices of memory it stands for carry [`HostAccessLease`]s
/// borrowed from the memory for as long as the slices.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostAccessLeases;

impl<'a> WithBitmapSlice<'a> for HostAccessLeases {
    type S = HostAccessLease<'a>;
}

impl Bitmap for HostAccessLeases {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}

    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }

    /// A lease that does not hold the lock: the region as a whole is never leased.
    fn slice_at(&self, _offset: usize) -> HostAccessLease<'_> {
        HostAccessLease::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::thread;
    use std::time::Duration;

    /// Long enough that only a deadlock or a lost wake-up reaches it.
    const STUCK: Duration = Duration::from_secs(60);

    /// Runs `test` on a thread of its own and fails if it has not finished within
    /// [`STUCK`], so that a deadlock or a lost wake-up fails the test instead of hanging it.
    fn finishes(test: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        let t = thread::spawn(move || {
            test();
            let _ = tx.send(());
        });
        match rx.recv_timeout(STUCK) {
            Ok(()) => t.join().unwrap(),
            Err(RecvTimeoutError::Disconnected) => match t.join() {
                Ok(()) => unreachable!("finished without saying so"),
                Err(panic) => std::panic::resume_unwind(panic),
            },
            Err(RecvTimeoutError::Timeout) => {
                panic!("still running after {STUCK:?}: a deadlock or a lost wake-up")
            }
        }
    }

    fn state(lock: &AccessLock) -> usize {
        lock.state.load(Ordering::SeqCst)
    }

    /// Waits until some thread sleeps on `lock`.
    pub(crate) fn until_parked(lock: &AccessLock) {
        while !lock.has_sleepers() {
            thread::yield_now();
        }
    }

    #[test]
    fn writer_waits_for_every_lease_clone() {
        finishes(|| {
            let lock = AccessLock::default();
            let lease = lock.read();
            let clone = lease.clone();
            let nested = lock.read();
            assert!(lease.is_held() && !HostAccessLease::default().is_held());
            assert_eq!(state(&lock), 3 * ONE_LEASE);
            let done = AtomicBool::new(false);
            thread::scope(|s| {
                let writer = s.spawn(|| {
                    let _g = lock.write();
                    done.store(true, Ordering::SeqCst);
                });
                drop(lease);
                drop(nested);
                until_parked(&lock);
                assert!(
                    !done.load(Ordering::SeqCst),
                    "writer ran while a clone was alive"
                );
                // The clone, moved to another thread, holds the writer off there too.
                let (tx, rx) = mpsc::channel::<()>();
                let keeper = s.spawn(move || {
                    rx.recv().unwrap();
                    drop(clone);
                });
                thread::yield_now();
                assert!(!done.load(Ordering::SeqCst));
                tx.send(()).unwrap();
                keeper.join().unwrap();
                writer.join().unwrap();
            });
            assert!(done.load(Ordering::SeqCst));
            assert_eq!(state(&lock), 0, "every count given back, PARKED cleared");
            // Readers get in again once the writer is gone.
            drop(lock.read());
        });
    }

    #[test]
    fn readers_never_wait_for_a_waiting_writer() {
        finishes(|| {
            let lock = &AccessLock::default();
            let held = lock.read();
            thread::scope(|s| {
                let writer = s.spawn(|| drop(lock.write()));
                until_parked(lock);
                // A writer is waiting for `held`: this thread, which holds it, takes
                // another lease, and so does a thread holding none. Either would wait
                // forever if readers waited for waiting writers.
                let nested = lock.read();
                s.spawn(|| assert!(lock.read().is_held())).join().unwrap();
                assert!(!writer.is_finished());
                drop(nested);
                drop(held);
            });
            assert_eq!(state(lock), 0);
        });
    }

    #[test]
    fn readers_wait_while_a_writer_holds_it() {
        finishes(|| {
            let lock = &AccessLock::default();
            let entered = &AtomicBool::new(false);
            thread::scope(|s| {
                let guard = lock.write();
                let reader = s.spawn(|| {
                    let lease = lock.read();
                    entered.store(true, Ordering::SeqCst);
                    lease.is_held()
                });
                until_parked(lock);
                assert!(!entered.load(Ordering::SeqCst), "a lease under a writer");
                drop(guard);
                assert!(reader.join().unwrap());
            });
            assert_eq!(state(lock), 0);
        });
    }

    /// One side blocks, the other lets go at a varying moment: right away, after a
    /// yield, or once the first sleeps. A lost wake-up leaves the blocked side asleep.
    #[test]
    fn no_wake_up_is_lost() {
        finishes(|| {
            let lock = &AccessLock::default();
            let rounds = if cfg!(miri) { 12 } else { 3000 };
            for round in 0..rounds {
                let writer_waits = round % 2 == 0;
                thread::scope(|s| {
                    let hold_read = writer_waits.then(|| lock.read());
                    let hold_write = (!writer_waits).then(|| lock.write());
                    let blocked = s.spawn(move || {
                        if writer_waits {
                            drop(lock.write());
                        } else {
                            drop(lock.read());
                        }
                    });
                    match round % 6 / 2 {
                        0 => {}
                        1 => thread::yield_now(),
                        _ => until_parked(lock),
                    }
                    drop(hold_read);
                    drop(hold_write);
                    blocked.join().unwrap();
                });
                assert_eq!(state(lock) & !PARKED, 0, "round {round}");
            }
            assert!(lock.sleeps.load(Ordering::Relaxed) > 0);
        });
    }

    /// A lease the test counts too, so writers can check no holder is inside.
    struct Tracked<'a> {
        lease: HostAccessLease<'a>,
        inside: &'a AtomicUsize,
        writer_in: &'a AtomicBool,
    }

    impl<'a> Tracked<'a> {
        fn new(lease: HostAccessLease<'a>, inside: &'a AtomicUsize, w: &'a AtomicBool) -> Self {
            assert!(
                !w.load(Ordering::SeqCst),
                "a lease while a writer holds the lock"
            );
            inside.fetch_add(1, Ordering::SeqCst);
            Tracked {
                lease,
                inside,
                writer_in: w,
            }
        }

        fn clone(&self) -> Self {
            Tracked::new(self.lease.clone(), self.inside, self.writer_in)
        }
    }

    impl Drop for Tracked<'_> {
        fn drop(&mut self) {
            assert!(!self.writer_in.load(Ordering::SeqCst));
            self.inside.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Readers take leases, nest them, clone them and hand clones to another thread,
    /// while writers take the lock alone, with random yields, on more threads than the
    /// machine has cores. Writers check that no lease is alive while they hold the lock,
    /// readers that no writer holds it while they hold a lease, and everything finishes:
    /// no deadlock and no lost wake-up, though leases are taken while writers wait.
    #[test]
    fn leases_and_writers_exclude_each_other_under_stress() {
        finishes(|| {
            const READERS: u64 = 4;
            const WRITERS: u64 = 2;
            let ops = if cfg!(miri) { 25 } else { 20_000 };
            let lock = &AccessLock::default();
            let inside = &AtomicUsize::new(0);
            let writer_in = &AtomicBool::new(false);
            thread::scope(|s| {
                // Keeps clones handed over by readers, dropping them when no more come.
                let (hand_tx, hand_rx) = mpsc::channel::<Tracked<'_>>();
                s.spawn(move || {
                    let mut kept = Vec::new();
                    while let Ok(t) = hand_rx.recv() {
                        kept.push(t);
                        kept.extend(hand_rx.try_iter());
                        if kept.len() > 2 {
                            kept.clear();
                        }
                    }
                });
                for t in 0..READERS + WRITERS {
                    let hand_tx = (t < READERS).then(|| hand_tx.clone());
                    s.spawn(move || {
                        let mut x = (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        let mut next = move || {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x
                        };
                        for _ in 0..ops {
                            let r = next();
                            if let Some(hand_tx) = &hand_tx {
                                let a = Tracked::new(lock.read(), inside, writer_in);
                                if r & 1 != 0 {
                                    thread::yield_now();
                                }
                                // Nested: a second lease, taken while holding one.
                                let b = (r & 2 != 0)
                                    .then(|| Tracked::new(lock.read(), inside, writer_in));
                                if r & 4 != 0 {
                                    hand_tx.send(a.clone()).unwrap();
                                }
                                if r & 8 != 0 {
                                    drop(a);
                                    thread::yield_now();
                                }
                                drop(b);
                            } else {
                                let g = lock.write();
                                assert_eq!(inside.load(Ordering::SeqCst), 0);
                                writer_in.store(true, Ordering::SeqCst);
                                if r & 1 != 0 {
                                    thread::yield_now();
                                }
                                assert_eq!(inside.load(Ordering::SeqCst), 0);
                                writer_in.store(false, Ordering::SeqCst);
                                drop(g);
                                if r & 2 != 0 {
                                    thread::yield_now();
                                }
                            }
                        }
                    });
                }
            });
            assert_eq!(inside.load(Ordering::SeqCst), 0);
            assert_eq!(state(lock) & !PARKED, 0, "{lock:?}");
            if !cfg!(miri) {
                assert!(
                    lock.sleeps.load(Ordering::Relaxed) > 0,
                    "nothing ever waited"
                );
            }
        });
    }
}
