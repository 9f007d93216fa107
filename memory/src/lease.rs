// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The lock that makes "check the attributes, then copy" atomic with respect to a
//! conversion that takes host access away, and [`HostAccessLease`], the read side of it
//! that travels inside every `vm-memory` slice veil hands out.
//!
//! Host accesses are the hot path of device emulation (a virtio device reads 16-byte
//! descriptors all the time), so a lease costs no lock and no allocation, and where the
//! kernel can fence every thread of the process (`membarrier(2)`), no atomic
//! read-modify-write either: a thread takes, clones and drops leases on a block it reads
//! often with plain stores to a slot of its own, and the rare conversion to private of
//! such a block pays for the fence instead. Otherwise a lease is one atomic
//! read-modify-write on one word. The mutex and condition variable are only for threads
//! that must wait.
//!
//! The lock is kept per block of guest memory ([`BLOCK_SIZE`]): a lease holds the blocks
//! its access touches, a conversion to private the blocks of the pages it makes private,
//! so a device thread's long access to one buffer holds back only conversions near it.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering, compiler_fence};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::Duration;

use smallvec::SmallVec;
use veil_attrs::{FrameRange, Gfn, PAGE_SHIFT};
use vm_memory::bitmap::{Bitmap, BitmapSlice, WithBitmapSlice};

/// log2 of [`BLOCK_SIZE`].
const BLOCK_SHIFT: u32 = 21;
/// The bytes of guest memory one word of the lock covers: 2 MiB, a huge page. A
/// conversion to private waits for the leases on the blocks it makes pages private in,
/// and no others. The words cost 8 bytes per block, 1/262,144 of the guest-physical
/// address range, of which only the pages of words in use are touched.
pub(crate) const BLOCK_SIZE: u64 = 1 << BLOCK_SHIFT;

/// Set while a conversion holds the block.
const CONVERTING: usize = 1 << 0;
/// Set while some thread may be asleep on the condition variable waiting for the block,
/// or about to be: whoever clears [`CONVERTING`] or drops the block's last lease then
/// takes the mutex to wake it.
const PARKED: usize = 1 << 1;
/// Set once a conversion has made some page of the block private, until a conversion
/// leaves every page of it shared again: while it is clear, an access under a lease on
/// the block needs no look at the attribute map, which is most of a small access's
/// cost. Set only by a conversion that holds the block alone, cleared only by the
/// attribute map's writer.
const MIXED: usize = 1 << 2;
/// Set once a lease in the word found the block all shared, in a lock with [`Slot`]s:
/// from then on threads may lease the block through their slots, so the next conversion
/// that takes the block must fence them and look at the slots before it changes
/// anything. That conversion clears it once it has; set only under a lease in the word.
const FAST: usize = 1 << 3;
/// One lease, in the count that takes the bits above the flags.
const ONE_LEASE: usize = 1 << 4;
/// The bits that count leases.
const LEASES: usize = !(CONVERTING | PARKED | MIXED | FAST);

/// How many threads at once have a [`Slot`] in every lock; further threads lease in the
/// words.
const SLOTS: usize = 64;

/// A thread's leases through one lock that need no read-modify-write: the block they
/// hold and how many there are. Only the owning thread writes it (with plain stores), so
/// a lease through a slot is bound to its thread, as the `vm-memory` slices that carry
/// leases are. A line of its own, so threads reading at once do not share one.
#[repr(align(64))]
#[derive(Default)]
struct Slot {
    /// 1 + the block the leases hold, or 0 for none.
    block: AtomicUsize,
    /// How many leases hold it, while it is not 0.
    count: AtomicUsize,
}

/// Whether this process can fence all its threads, registered for it on first asking.
fn thread_fences() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| crate::sys::register_thread_fences().is_ok())
}

/// Which [`Slot`] of every lock is this thread's: an index handed out on a thread's first
/// lease and handed on when it ends.
mod thread_slot {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use super::SLOTS;

    /// No slot: the thread leases in the words (every slot is taken, or it is ending).
    pub(super) const NONE: usize = usize::MAX;
    const UNASSIGNED: usize = usize::MAX - 1;

    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(UNASSIGNED) };
        /// The slots of this thread, in any lock, that hold leases: an index is only
        /// handed on if none does when its thread ends.
        static HOLDING: Cell<usize> = const { Cell::new(0) };
        static OWNER: Owner = const { Owner };
    }

    /// Every index ever handed out is below it.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    /// Indices of threads that ended.
    static FREE: Mutex<Vec<usize>> = Mutex::new(Vec::new());

    fn free() -> MutexGuard<'static, Vec<usize>> {
        FREE.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands the index on when the thread ends.
    struct Owner;

    impl Drop for Owner {
        fn drop(&mut self) {
            let index = INDEX.replace(NONE);
            if index < SLOTS && HOLDING.get() == 0 {
                free().push(index);
            }
        }
    }

    /// This thread's index, or [`NONE`].
    #[inline]
    pub(super) fn index() -> usize {
        match INDEX.get() {
            UNASSIGNED => assign(),
            index => index,
        }
    }

    #[cold]
    fn assign() -> usize {
        // Registers the destructor that hands the index on: a thread already ending
        // gets none.
        let index = if OWNER.try_with(|_| ()).is_ok() {
            let index = free()
                .pop()
                .unwrap_or_else(|| NEXT.fetch_add(1, Ordering::Relaxed));
            if index < SLOTS { index } else { NONE }
        } else {
            NONE
        };
        INDEX.set(index);
        index
    }

    /// How many slots a conversion must look at: every slot in use is below it. The
    /// thread that took an index counted it here before it stored to its slot.
    pub(super) fn in_use() -> usize {
        NEXT.load(Ordering::Relaxed).min(SLOTS)
    }

    pub(super) fn took_slot() {
        HOLDING.set(HOLDING.get() + 1);
    }

    pub(super) fn gave_slot() {
        HOLDING.set(HOLDING.get() - 1);
    }
}

/// A reader-preferring lock per block of guest memory: host accesses share the blocks
/// they touch, a conversion that removes host access holds the blocks it changes alone
/// while it changes protections and publishes the new state.
///
/// Readers only wait while a conversion holds a block they touch, never for a waiting
/// conversion, so a thread that already holds a lease can take another without
/// deadlock. A conversion can therefore wait as long as leases on its blocks keep
/// overlapping. Conversions on other blocks do not wait at all.
///
/// # How it works
///
/// Every block has a word: the number of leases alive on it, [`CONVERTING`], [`PARKED`],
/// [`MIXED`] and [`FAST`] (see "Leases through slots"). Taking a lease on a block is a
/// compare-and-swap that adds [`ONE_LEASE`] where [`CONVERTING`] is clear, and tells the
/// taker whether [`MIXED`] was set; cloning one adds [`ONE_LEASE`]; dropping one
/// subtracts it. An access that crosses into the next block takes each block in address
/// order. A conversion swaps a word with no lease and no [`CONVERTING`] for one with
/// [`CONVERTING`] and [`MIXED`], for every block it needs, and clears [`CONVERTING`] when
/// it is done. It takes its blocks all or none: if one has leases, it gives back the ones it took, waits
/// for that one, and starts again. So a conversion never holds a block while it waits,
/// and readers, who wait only for blocks held, cannot wait for each other through it.
///
/// A thread that must wait for a block takes `sleep`, then sets [`PARKED`] in the
/// block's word with a compare-and-swap that also confirms what it waits for still
/// holds, and sleeps on `wake`, which gives `sleep` back only once the thread is asleep.
/// A thread that lets a waiter go on (a block's last lease dropped, or a conversion
/// done) changes the word first, and only if the old value had [`PARKED`] takes `sleep`,
/// clears [`PARKED`] in that word and wakes every sleeper; those that must still wait
/// set it again. No wake-up is lost: if the waker took `sleep` before the waiter did, the
/// waker's change to the word happens before the waiter's look at it, which then sees the
/// change and does not sleep; otherwise the waker takes `sleep` after the waiter is
/// asleep, and wakes it. [`PARKED`] is only cleared under `sleep`, so it cannot vanish
/// between a waiter's look and its sleep. Sleepers waiting for other blocks wake too,
/// find their block's [`PARKED`] still set, and sleep again.
///
/// [`MIXED`] can be trusted clear because it is set in the same compare-and-swap that
/// takes a block for a conversion to private, which no lease overlaps: a lease taken
/// while it was clear keeps every page of its blocks shared until it is dropped. The
/// attribute map's only writer clears it, after a conversion that succeeded left every
/// page of the block shared (its host view accessible again, nothing left to roll
/// back); the next conversion to private there sets it again first.
///
/// # Leases through slots
///
/// Where `membarrier(2)` can fence every thread of the process, the lock also has a
/// [`Slot`] per thread (the first [`SLOTS`] threads that lease), and a lease on one
/// block can be taken without a read-modify-write: if the block's word has [`FAST`] and
/// neither [`CONVERTING`] nor [`MIXED`], the thread stores the block in its slot, then
/// (with only a compiler fence between) loads the word again, and keeps the lease if it
/// still says so; otherwise it clears the slot and leases in the word. Clones and further leases on the same block
/// count in the slot; dropping the last clears it. A conversion that takes a block with
/// [`FAST`] then fences every thread (`MEMBARRIER_CMD_PRIVATE_EXPEDITED`) and loads the
/// slots. That is the store-then-load on both sides of Dekker's algorithm, the fence
/// standing for the full barrier each reader would otherwise need: a reader whose store
/// came before its thread's barrier in the fence has it seen by the conversion, and one
/// whose store came after loads the word after the conversion took the block, and sees
/// [`CONVERTING`]. If a slot still holds one of its blocks, the conversion gives every
/// block back and waits for the slot to change before it starts again, so it never
/// holds a block a reader might wait for while it waits for a reader. Once no slot holds
/// its blocks, it clears [`FAST`]: slots lease the block again only after a lease in the
/// word finds it all shared and sets [`FAST`] again. Conversions of blocks no slot may
/// hold never fence. [`FAST`] is set only under a lease in the word, so never while a
/// conversion holds the block, and cleared only by a conversion that has fenced: every
/// reader that saw it set is seen by the next conversion of its block.
///
/// Orderings: taking a lease and taking a block are `Acquire`, dropping either (and
/// clearing [`MIXED`]) is `Release`. So whatever a lease holder did with guest memory (its reads and writes,
/// all before the drop) happens before the conversion that next takes the block changes
/// protections, and whatever a conversion did (new protections, the new attributes
/// published) happens before any lease taken on its blocks after it lets go. A lease on
/// other blocks needs no order with that conversion: none of its pages changes.
/// Compare-and-swaps that fail and [`PARKED`] need no ordering of their own (the mutex
/// orders waiters and wakers). Cloning is `Relaxed`, like `Arc::clone`: the clone's
/// holder already holds a lease, so it learns nothing new. A slot's store of its block
/// and its clearing are `Release` (a thread's accesses under leases it dropped come
/// before whatever value a conversion reads next), the load of the word after the store
/// `Acquire`, and a conversion loads the slots `Acquire`.
pub(crate) struct AccessLock {
    blocks: Box<[AtomicUsize]>,
    /// How many pages of each block are private in the published attribute map: what
    /// lets a conversion to shared clear [`MIXED`] without looking at the map. Only the
    /// attribute map's writer changes them (`Relaxed`: its lock orders the writers).
    private: Box<[AtomicU16]>,
    /// One per thread index, or none where the process cannot fence its threads.
    slots: Box<[Slot]>,
    /// How many times a conversion fenced every thread (tests).
    fences: AtomicUsize,
    /// Conversions waiting for a slot now (tests).
    slot_waiters: AtomicUsize,
    /// Guards no data: it orders waiters' sleeping against wakers' waking.
    sleep: Mutex<()>,
    wake: Condvar,
    /// How many times a thread went to sleep: the cost of contention, and how tests tell
    /// they made some thread wait. Only the slow path counts.
    sleeps: AtomicUsize,
}

impl Default for AccessLock {
    /// A lock of one block whose leases are all in its word (tests).
    fn default() -> Self {
        AccessLock::build(0, false)
    }
}

impl fmt::Debug for AccessLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = || self.blocks.iter().map(|b| b.load(Ordering::Relaxed));
        f.debug_struct("AccessLock")
            .field("blocks", &self.blocks.len())
            .field("leases", &words().map(|s| s / ONE_LEASE).sum::<usize>())
            .field(
                "converting",
                &words().filter(|s| s & CONVERTING != 0).count(),
            )
            .field("parked", &words().filter(|s| s & PARKED != 0).count())
            .field("slots", &self.slots.len())
            .field(
                "slots holding",
                &self
                    .slots
                    .iter()
                    .filter(|s| s.block.load(Ordering::Relaxed) != 0)
                    .count(),
            )
            .finish()
    }
}

impl AccessLock {
    /// A lock for guest memory of `bytes` bytes from guest-physical 0 (at least one
    /// block), with slots where the process can fence its threads.
    pub(crate) fn new(bytes: u64) -> AccessLock {
        AccessLock::build(bytes, thread_fences())
    }

    fn build(bytes: u64, slots: bool) -> AccessLock {
        let blocks = bytes.div_ceil(BLOCK_SIZE).max(1) as usize;
        // A lease keeps block numbers in 32 bits (`Leased`): 2^32 blocks are 8 EiB.
        assert!(blocks <= u32::MAX as usize, "guest memory beyond 8 EiB");
        // Zeroed by the allocator (`vec!` of zeros asks it for zeroed memory), so the
        // words of blocks no access ever touches (a sparse guest-physical layout) cost no
        // memory where it hands out fresh pages.
        let zeroed = Box::into_raw(vec![0usize; blocks].into_boxed_slice());
        const _: () = assert!(align_of::<AtomicUsize>() == align_of::<usize>());
        let counts = Box::into_raw(vec![0u16; blocks].into_boxed_slice());
        const _: () = assert!(align_of::<AtomicU16>() == align_of::<u16>());
        AccessLock {
            // SAFETY: `AtomicUsize` has the size and bit validity of `usize` (std's
            // documentation) and, checked above, its alignment, so the allocation is a
            // valid `[AtomicUsize]` of the same length, owned by the box alone; each word
            // is 0: no lease, no flag.
            blocks: unsafe { Box::from_raw(zeroed as *mut [AtomicUsize]) },
            // SAFETY: as for `blocks`, with `AtomicU16` and `u16`; every count is 0, as
            // every page of a new attribute map is shared.
            private: unsafe { Box::from_raw(counts as *mut [AtomicU16]) },
            slots: (0..if slots { SLOTS } else { 0 })
                .map(|_| Slot::default())
                .collect(),
            fences: AtomicUsize::new(0),
            slot_waiters: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            sleeps: AtomicUsize::new(0),
        }
    }

    /// Takes a read lease on the blocks `[gpa, gpa + len)` touches (the block of `gpa`
    /// if `len` is 0): waits while a conversion holds one of them. Also says whether
    /// some page of those blocks may be private ([`MIXED`]); if not, every page of them
    /// is shared and stays so while the lease is held.
    #[inline(always)]
    pub(crate) fn lease(&self, gpa: u64, len: usize) -> (HostAccessLease<'_>, bool) {
        let first = (gpa >> BLOCK_SHIFT) as usize;
        let end = gpa.wrapping_add(len as u64).wrapping_sub(1);
        // Nearly every access stays inside one block.
        if len != 0 && end >> BLOCK_SHIFT == first as u64 && first < self.blocks.len() {
            if let Some(lease) = self.lease_by_slot(first) {
                return (lease, false);
            }
            let mixed = self.take_shared(first);
            if !mixed && !self.slots.is_empty() {
                // All shared, and no conversion holds it while this lease is alive.
                let word = &self.blocks[first];
                if word.load(Ordering::Relaxed) & FAST == 0 {
                    word.fetch_or(FAST, Ordering::Relaxed);
                }
            }
            let lease = HostAccessLease::of(Leased::words(self, first, 1));
            return (lease, mixed);
        }
        self.lease_blocks(gpa, len)
    }

    /// A lease on `block` through this thread's slot, if it has one, the slot holds
    /// nothing or this block, and the block may be leased so ([`FAST`], all shared, not
    /// held by a conversion).
    #[inline(always)]
    fn lease_by_slot(&self, block: usize) -> Option<HostAccessLease<'_>> {
        if self.slots.is_empty() {
            return None;
        }
        let index = thread_slot::index();
        let slot = self.slots.get(index)?;
        let mine = block + 1;
        match slot.block.load(Ordering::Relaxed) {
            held if held == mine => {
                // The slot's leases hold the block already, and only this thread
                // writes the slot.
                slot.count
                    .store(add_slot_lease(&slot.count), Ordering::Relaxed);
            }
            0 => {
                // A block that cannot be leased so is not worth announcing: a conversion
                // that saw the slot would only wait and fence again.
                let word = &self.blocks[block];
                if word.load(Ordering::Relaxed) & (FAST | CONVERTING | MIXED) != FAST {
                    return None;
                }
                // `Release`, so that whatever this thread did under a lease it dropped
                // earlier through the slot comes before a conversion reading this value.
                slot.block.store(mine, Ordering::Release);
                // The light side of the fence (see "Leases through slots"): the store
                // above comes before the load below in this thread's program, and a
                // conversion's fence orders it for the other threads.
                compiler_fence(Ordering::SeqCst);
                if word.load(Ordering::Acquire) & (FAST | CONVERTING | MIXED) != FAST {
                    slot.block.store(0, Ordering::Relaxed);
                    return None;
                }
                slot.count.store(1, Ordering::Relaxed);
                thread_slot::took_slot();
            }
            _ => return None,
        }
        Some(HostAccessLease::of(Leased::slot(self, index)))
    }

    /// [`lease`](Self::lease) of an access that crosses blocks, or is empty.
    #[cold]
    fn lease_blocks(&self, gpa: u64, len: usize) -> (HostAccessLease<'_>, bool) {
        let top = self.blocks.len() - 1;
        let first = ((gpa >> BLOCK_SHIFT) as usize).min(top);
        let end = gpa.saturating_add((len as u64).saturating_sub(1));
        let last = ((end >> BLOCK_SHIFT) as usize).min(top);
        // In address order, each taken on its own: a conversion never holds one block
        // while it waits for another, so this cannot wait for a thread waiting for it.
        let mut mixed = false;
        for block in first..=last {
            mixed |= self.take_shared(block);
        }
        let lease = HostAccessLease::of(Leased::words(self, first, last - first + 1));
        (lease, mixed)
    }

    /// Takes a read lease on the first block (tests).
    #[cfg(test)]
    pub(crate) fn read(&self) -> HostAccessLease<'_> {
        self.lease(0, 1).0
    }

    /// Adds one lease to `block`, waiting while a conversion holds it; returns whether
    /// [`MIXED`] was set.
    #[inline]
    fn take_shared(&self, block: usize) -> bool {
        let word = &self.blocks[block];
        let mut s = word.load(Ordering::Relaxed);
        while s & CONVERTING == 0 {
            match word.compare_exchange_weak(s, add_lease(s), Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => return s & MIXED != 0,
                Err(now) => s = now,
            }
        }
        self.take_shared_contended(block)
    }

    #[cold]
    fn take_shared_contended(&self, block: usize) -> bool {
        self.wait_to_take(block, |s| s & CONVERTING == 0, add_lease) & MIXED != 0
    }

    /// Clears [`MIXED`] on `block`: every page of it is shared in the attribute map and
    /// accessible in the host view. Only the attribute map's writer calls it, after a
    /// conversion that made the block's last private pages shared has succeeded.
    pub(crate) fn set_all_shared(&self, block: usize) {
        if let Some(word) = self.blocks.get(block) {
            word.fetch_and(!MIXED, Ordering::Release);
        }
    }

    /// Counts the pages of `ranges`, which a conversion that succeeded has just made
    /// private (`to_private`) or shared, in their blocks' private pages, and clears
    /// [`MIXED`] ([`set_all_shared`](Self::set_all_shared)) on every block a conversion
    /// to shared leaves with none. Only the attribute map's writer calls it, with the
    /// pages whose private bit the conversion flipped, so the counts follow the map.
    pub(crate) fn count_private(
        &self,
        ranges: impl IntoIterator<Item = FrameRange>,
        to_private: bool,
    ) {
        let shift = BLOCK_SHIFT - PAGE_SHIFT;
        for range in ranges {
            let mut start = range.start();
            while start < range.end() {
                let block = (start.0 >> shift) as usize;
                let end = range.end().min(Self::block_frames(block).end());
                let Some(count) = self.private.get(block) else {
                    break;
                };
                // At most a block's 512 pages.
                let pages = (end.0 - start.0) as u16;
                let old = count.load(Ordering::Relaxed);
                let new = if to_private {
                    old.saturating_add(pages)
                } else {
                    // Fewer private pages than were made shared cannot happen; if it
                    // did, the block would keep `MIXED` for good, which only costs
                    // accesses a look at the map.
                    old.checked_sub(pages).unwrap_or_else(|| {
                        debug_assert!(
                            false,
                            "block {block}: {old} private pages, {pages} made shared"
                        );
                        u16::MAX
                    })
                };
                count.store(new, Ordering::Relaxed);
                if new == 0 {
                    self.set_all_shared(block);
                }
                start = end;
            }
        }
    }

    /// How many pages of `block` are private, by [`count_private`](Self::count_private).
    #[cfg(any(test, debug_assertions))]
    pub(crate) fn private_pages(&self, block: usize) -> u16 {
        self.private[block].load(Ordering::Relaxed)
    }

    /// The blocks holding any page of `ranges`, each once, in address order.
    pub(crate) fn blocks_of(&self, ranges: impl IntoIterator<Item = FrameRange>) -> Blocks {
        let top = self.blocks.len() - 1;
        let shift = BLOCK_SHIFT - PAGE_SHIFT;
        let mut blocks = Blocks::new();
        let mut sorted = true;
        for r in ranges {
            let mut first = ((r.start().0 >> shift) as usize).min(top);
            let last = (((r.end().0 - 1) >> shift) as usize).min(top);
            // Ranges in address order (a conversion's changes are) share at most a block
            // with the one before: skip it rather than sort afterwards.
            match blocks.last() {
                Some(&prev) if prev == first => first += 1,
                Some(&prev) if prev > first => sorted = false,
                _ => {}
            }
            blocks.extend(first..=last);
        }
        if !sorted {
            blocks.sort_unstable();
            blocks.dedup();
        }
        blocks
    }

    /// The frames of `block`.
    pub(crate) fn block_frames(block: usize) -> FrameRange {
        let shift = BLOCK_SHIFT - PAGE_SHIFT;
        let first = (block as u64) << shift;
        FrameRange::from_bounds(Gfn(first), Gfn(first + (1 << shift)))
            .expect("a block's frames are a non-empty range")
    }

    /// Takes every block alone (tests): waits until no lease is held and no conversion
    /// holds any.
    #[cfg(test)]
    pub(crate) fn write(&self) -> ExclusiveGuard<'_> {
        self.write_blocks((0..self.blocks.len()).collect())
    }

    /// Takes alone the blocks holding any page of `ranges`, for a conversion that makes
    /// those pages private (the blocks become [`MIXED`]): waits until no lease is held on
    /// them and no conversion holds any of them.
    pub(crate) fn write_frames(
        &self,
        ranges: impl IntoIterator<Item = FrameRange>,
    ) -> ExclusiveGuard<'_> {
        self.write_blocks(self.blocks_of(ranges))
    }

    fn write_blocks(&self, blocks: Blocks) -> ExclusiveGuard<'_> {
        loop {
            self.take_blocks(&blocks);
            let Some((slot, held)) = self.slot_holding(&blocks) else {
                return ExclusiveGuard { lock: self, blocks };
            };
            // Never hold a block while waiting for a reader.
            for &b in &blocks {
                self.give_back(b);
            }
            self.wait_for_slot(slot, held);
        }
    }

    /// Takes every block of `blocks` for a conversion, waiting for the leases in their
    /// words.
    fn take_blocks(&self, blocks: &[usize]) {
        let free = |s: usize| s & (LEASES | CONVERTING) == 0;
        let take = |s: usize| s | CONVERTING | MIXED;
        if let [only] = blocks[..] {
            let word = &self.blocks[only];
            let s = word.load(Ordering::Relaxed);
            let taken = free(s)
                && word
                    .compare_exchange(s, take(s), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok();
            if !taken {
                self.wait_to_take(only, free, take);
            }
            return;
        }
        // All or none: never hold a block while waiting for another.
        loop {
            let busy = blocks.iter().position(|&b| {
                let word = &self.blocks[b];
                let mut s = word.load(Ordering::Relaxed);
                while free(s) {
                    match word.compare_exchange_weak(
                        s,
                        take(s),
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return false,
                        Err(now) => s = now,
                    }
                }
                true
            });
            let Some(busy) = busy else {
                return;
            };
            for &b in &blocks[..busy] {
                self.give_back(b);
            }
            // Wait until the busy block is free, taking nothing, then try them all again.
            self.wait_to_take(blocks[busy], free, |s| s);
        }
    }

    /// With `blocks` taken: fences every thread and looks at the slots if a slot may hold
    /// one of them ([`FAST`]). Returns a slot that holds one, and what it holds; or,
    /// once none does, clears [`FAST`] and returns `None`.
    fn slot_holding(&self, blocks: &[usize]) -> Option<(&Slot, usize)> {
        // Set only under a lease, so not while the blocks are taken: this sees them all.
        if !blocks
            .iter()
            .any(|&b| self.blocks[b].load(Ordering::Relaxed) & FAST != 0)
        {
            return None;
        }
        self.fence_all_threads();
        let in_use = thread_slot::in_use().min(self.slots.len());
        for slot in &self.slots[..in_use] {
            let held = slot.block.load(Ordering::Acquire);
            if held != 0 && blocks.contains(&(held - 1)) {
                return Some((slot, held));
            }
        }
        for &b in blocks {
            self.blocks[b].fetch_and(!FAST, Ordering::Relaxed);
        }
        None
    }

    /// The heavy side of the fence (see "Leases through slots").
    #[cold]
    fn fence_all_threads(&self) {
        self.fences.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = crate::sys::fence_all_threads() {
            // The process registered for it, so only something like a seccomp filter
            // refuses it, and without it a lease through a slot could go unseen.
            eprintln!(
                "veil-memory: membarrier failed after registering ({e}): stopping rather \
                 than convert memory a host access may be using"
            );
            std::process::abort();
        }
    }

    /// Waits, taking nothing, until `slot` no longer holds what it held: a lease through
    /// a slot has no waiter to wake, and is short unless a slice is kept.
    #[cold]
    fn wait_for_slot(&self, slot: &Slot, held: usize) {
        self.sleeps.fetch_add(1, Ordering::Relaxed);
        self.slot_waiters.fetch_add(1, Ordering::SeqCst);
        let mut tries = 0u32;
        while slot.block.load(Ordering::Relaxed) == held {
            match tries {
                0..64 => std::hint::spin_loop(),
                64..1024 => thread::yield_now(),
                _ => thread::sleep(Duration::from_micros(50)),
            }
            tries = tries.saturating_add(1);
        }
        self.slot_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Clears [`CONVERTING`] in `block`, waking its waiters.
    fn give_back(&self, block: usize) {
        let before = self.blocks[block].fetch_and(!CONVERTING, Ordering::Release);
        if before & PARKED != 0 {
            self.wake_all(block);
        }
    }

    /// Sleeps until `ready(word)` for the word of `block`, then replaces the word with
    /// `take(word)`; returns the word it replaced.
    #[cold]
    fn wait_to_take(
        &self,
        block: usize,
        ready: impl Fn(usize) -> bool,
        take: impl Fn(usize) -> usize,
    ) -> usize {
        let word = &self.blocks[block];
        let mut sleep = self.sleep();
        let mut s = word.load(Ordering::Relaxed);
        loop {
            if ready(s) {
                match word.compare_exchange(s, take(s), Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return s,
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
                    word.compare_exchange(s, s | PARKED, Ordering::Relaxed, Ordering::Relaxed)
            {
                s = now;
                continue;
            }
            self.sleeps.fetch_add(1, Ordering::Relaxed);
            sleep = self
                .wake
                .wait(sleep)
                .unwrap_or_else(PoisonError::into_inner);
            s = word.load(Ordering::Relaxed);
        }
    }

    fn sleep(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic elsewhere cannot leave it inconsistent.
        self.sleep.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes every sleeper; called by a thread whose change to the word of `block` found
    /// [`PARKED`].
    #[cold]
    fn wake_all(&self, block: usize) {
        let _sleep = self.sleep();
        self.blocks[block].fetch_and(!PARKED, Ordering::Relaxed);
        self.wake.notify_all();
    }

    /// How many times a conversion fenced every thread, and whether the lock has slots
    /// (tests only).
    #[cfg(test)]
    pub(crate) fn fences(&self) -> (usize, bool) {
        (self.fences.load(Ordering::SeqCst), !self.slots.is_empty())
    }

    /// Whether some thread sleeps on the lock, or is about to, or waits for a slot
    /// (tests only).
    #[cfg(test)]
    pub(crate) fn has_sleepers(&self) -> bool {
        self.slot_waiters.load(Ordering::SeqCst) > 0
            || self
                .blocks
                .iter()
                .any(|b| b.load(Ordering::SeqCst) & PARKED != 0)
    }

    /// Drops one lease on `block`.
    #[inline]
    fn release(&self, block: usize) {
        let before = self.blocks[block].fetch_sub(ONE_LEASE, Ordering::Release);
        // The last lease, and someone (a conversion) may be waiting for it.
        if before & (LEASES | PARKED) == ONE_LEASE | PARKED {
            self.wake_all(block);
        }
    }
}

/// The blocks a conversion holds, in address order; the common conversion holds one or
/// two, inline.
type Blocks = SmallVec<[usize; 2]>;

/// `s` with one more lease. Leases that are never dropped (`mem::forget`) could in
/// principle overflow the count; like `Arc`, abort rather than wrap.
#[inline]
fn add_lease(s: usize) -> usize {
    match s.checked_add(ONE_LEASE) {
        Some(next) => next,
        None => std::process::abort(),
    }
}

/// Exclusive hold of some blocks of an [`AccessLock`], released on drop.
pub(crate) struct ExclusiveGuard<'a> {
    lock: &'a AccessLock,
    blocks: Blocks,
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        for &b in &self.blocks {
            self.lock.give_back(b);
        }
    }
}

/// Adds one lease to a slot's count; like [`add_lease`], aborts rather than wrap.
#[inline]
fn add_slot_lease(count: &AtomicUsize) -> usize {
    match count.load(Ordering::Relaxed).checked_add(1) {
        Some(next) => next,
        None => std::process::abort(),
    }
}

/// A shared hold on a guest memory's host-access lock, carried by every
/// [`VolatileSlice`](vm_memory::VolatileSlice) a [`HostSafeMemory`](crate::HostSafeMemory)
/// hands out (in the slot `vm-memory` reserves for a dirty bitmap).
///
/// While a slice (or a clone of one) is alive, no conversion can make memory in the 2 MiB
/// blocks of guest memory it touches inaccessible to the host, so a slice checked as
/// shared stays accessible until it is dropped. Conversions to private of pages in those
/// blocks wait for it; conversions elsewhere do not. Keep slices short-lived, and never
/// convert to private on a thread that still holds one (near it, that deadlocks). The
/// lease does not track dirty pages. It borrows the memory, as the slice does, and stays
/// on the thread that took it, as the slice does (it may live in that thread's own
/// slot of the lock).
#[derive(Default)]
pub struct HostAccessLease<'a> {
    /// `None` for region bitmaps, which hold nothing.
    held: Option<Leased<'a>>,
    /// Bound to its thread: a lease through a slot is counted with plain stores that
    /// only the slot's thread makes.
    _thread: PhantomData<*const ()>,
}

// Every slice carries one, and `vm-memory` moves slices around by value.
const _: () = assert!(size_of::<HostAccessLease<'_>>() == 16);

/// What a held lease holds: leases in the words of `count` blocks from `first`, or, with
/// `count` 0, one of the leases counted in slot `first`. The two are one word, written
/// and read whole: as two halves, a small access reloads them wider than they were
/// stored, which stalls it.
#[derive(Clone, Copy)]
struct Leased<'a> {
    lock: &'a AccessLock,
    /// `first | count << 32`.
    packed: u64,
}

/// What a lease holds, unpacked.
enum Holds<'a> {
    Nothing,
    Words(Leased<'a>),
    Slot(&'a Slot),
}

impl<'a> Leased<'a> {
    /// Leases in the words of `count` blocks from `first` (block numbers fit in 32 bits:
    /// the lock covers at most 2^52 bytes of guest-physical addresses).
    #[inline(always)]
    fn words(lock: &'a AccessLock, first: usize, count: usize) -> Self {
        Leased {
            lock,
            packed: first as u64 | (count as u64) << 32,
        }
    }

    /// A lease counted in slot `index`.
    #[inline(always)]
    fn slot(lock: &'a AccessLock, index: usize) -> Self {
        Leased {
            lock,
            packed: index as u64,
        }
    }

    #[inline(always)]
    fn first(&self) -> usize {
        self.packed as u32 as usize
    }

    #[inline(always)]
    fn count(&self) -> usize {
        (self.packed >> 32) as usize
    }

    fn blocks(&self) -> std::ops::Range<usize> {
        self.first()..self.first() + self.count()
    }

    /// One more lease on the same blocks. Out of line, as [`release`](Self::release):
    /// where there are slots, most leases are in them.
    #[inline(never)]
    fn add_one(&self) {
        // Held: no conversion holds these blocks, so one more lease needs no check.
        let add = |block: usize| {
            let before = self.lock.blocks[block].fetch_add(ONE_LEASE, Ordering::Relaxed);
            if before > usize::MAX - ONE_LEASE {
                std::process::abort();
            }
        };
        if self.count() == 1 {
            add(self.first());
        } else {
            self.blocks().for_each(add);
        }
    }

    /// Drops one lease on each of the blocks.
    #[inline(never)]
    fn release(&self) {
        if self.count() == 1 {
            self.lock.release(self.first());
        } else {
            self.blocks().for_each(|block| self.lock.release(block));
        }
    }
}

impl<'a> HostAccessLease<'a> {
    fn of(held: Leased<'a>) -> Self {
        HostAccessLease {
            held: Some(held),
            _thread: PhantomData,
        }
    }

    #[inline(always)]
    fn holds(&self) -> Holds<'a> {
        match self.held {
            None => Holds::Nothing,
            Some(held) if held.count() == 0 => Holds::Slot(&held.lock.slots[held.first()]),
            Some(held) => Holds::Words(held),
        }
    }

    /// Whether this lease holds the lock (region bitmaps handed out by `bitmap()` do not).
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

impl Clone for HostAccessLease<'_> {
    #[inline]
    fn clone(&self) -> Self {
        match self.holds() {
            Holds::Nothing => {}
            Holds::Words(held) => held.add_one(),
            // This thread's slot: only this thread writes it.
            Holds::Slot(slot) => slot
                .count
                .store(add_slot_lease(&slot.count), Ordering::Relaxed),
        }
        HostAccessLease {
            held: self.held,
            _thread: PhantomData,
        }
    }
}

impl Drop for HostAccessLease<'_> {
    #[inline]
    fn drop(&mut self) {
        match self.holds() {
            Holds::Nothing => {}
            Holds::Words(held) => held.release(),
            Holds::Slot(slot) => {
                let left = slot.count.load(Ordering::Relaxed) - 1;
                slot.count.store(left, Ordering::Relaxed);
                if left == 0 {
                    // Whatever this thread did with the memory comes before a
                    // conversion's look at the slot.
                    slot.block.store(0, Ordering::Release);
                    thread_slot::gave_slot();
                }
            }
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
    use std::sync::Arc;
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

    /// The word of the first block.
    /// The first block's word, without [`MIXED`] (which a conversion leaves set).
    fn state(lock: &AccessLock) -> usize {
        lock.blocks[0].load(Ordering::SeqCst) & !MIXED
    }

    impl<'a> HostAccessLease<'a> {
        /// Whether this lease is counted in a slot.
        fn in_slot(&self) -> bool {
            matches!(self.holds(), Holds::Slot(_))
        }

        /// The blocks this lease holds, however it holds them.
        fn blocks_held(&self) -> std::ops::Range<usize> {
            match self.holds() {
                Holds::Nothing => 0..0,
                Holds::Words(l) => l.blocks(),
                Holds::Slot(slot) => {
                    let block = slot.block.load(Ordering::Relaxed) - 1;
                    block..block + 1
                }
            }
        }
    }

    /// A lock with slots, or `None` (saying why) where this process cannot fence its
    /// threads, as under Miri.
    fn with_slots(bytes: u64) -> Option<AccessLock> {
        if thread_fences() {
            Some(AccessLock::new(bytes))
        } else {
            eprintln!("skipped: membarrier(2) cannot fence this process's threads here");
            None
        }
    }

    /// The word of `block` has [`FAST`].
    fn fast(lock: &AccessLock, block: usize) -> bool {
        lock.blocks[block].load(Ordering::SeqCst) & FAST != 0
    }

    #[test]
    fn slots_lease_a_block_once_a_lease_in_its_word_found_it_shared() {
        finishes(|| {
            let Some(lock) = with_slots(3 * BLOCK_SIZE) else {
                return;
            };
            let lock = &lock;
            let first = lock.lease(0x1000, 16).0;
            assert!(
                !first.in_slot(),
                "a block no lease in the word found shared yet"
            );
            assert!(fast(lock, 0));
            drop(first);
            let a = lock.lease(0x2000, 16).0;
            let (b, c) = (a.clone(), lock.lease(0x3000, 8).0);
            assert!(a.in_slot() && b.in_slot() && c.in_slot());
            assert_eq!(lock.blocks[0].load(Ordering::SeqCst) & LEASES, 0);
            // The slot holds block 0: a lease on block 1 goes in its word.
            let other = lock.lease(BLOCK_SIZE + 0x1000, 16).0;
            assert!(!other.in_slot() && other.is_held());
            drop(other);
            // A conversion of a block no slot may hold does not fence.
            let fences = lock.fences.load(Ordering::SeqCst);
            drop(lock.write_frames([FrameRange::new(Gfn(2 << 9), 1).unwrap()]));
            assert_eq!(lock.fences.load(Ordering::SeqCst), fences);
            // One of block 0 fences, and waits for every lease in the slot.
            let done = &AtomicBool::new(false);
            thread::scope(|s| {
                let writer = s.spawn(|| {
                    let g = lock.write_frames([FrameRange::new(Gfn(0), 1).unwrap()]);
                    done.store(true, Ordering::SeqCst);
                    drop(g);
                });
                while lock.sleeps.load(Ordering::SeqCst) == 0 {
                    thread::yield_now();
                }
                assert!(lock.fences.load(Ordering::SeqCst) > fences);
                drop(a);
                drop(b);
                thread::sleep(Duration::from_millis(20));
                assert!(
                    !done.load(Ordering::SeqCst),
                    "converted under a lease in a slot"
                );
                drop(c);
                writer.join().unwrap();
            });
            assert!(done.load(Ordering::SeqCst));
            assert!(!fast(lock, 0), "the conversion that fenced clears FAST");
            assert_eq!(state(lock) & !PARKED, 0);
            // Now mixed: leases go in the word and say so, until the block is all shared.
            let (l, mixed) = lock.lease(0x1000, 16);
            assert!(mixed && !l.in_slot());
            drop(l);
            lock.set_all_shared(0);
            let (l, mixed) = lock.lease(0x1000, 16);
            assert!(!mixed && !l.in_slot() && fast(lock, 0));
            drop(l);
            assert!(lock.lease(0x1000, 16).0.in_slot());
        });
    }

    #[test]
    fn a_lock_without_slots_never_uses_one() {
        let lock = AccessLock::default();
        for _ in 0..3 {
            let l = lock.lease(0, 16).0;
            assert!(l.is_held() && !l.in_slot());
            assert_eq!(state(&lock), ONE_LEASE, "no FAST without slots");
        }
    }

    /// Waits until some thread sleeps on `lock`.
    pub(crate) fn until_parked(lock: &AccessLock) {
        while !lock.has_sleepers() {
            thread::yield_now();
        }
    }

    #[test]
    fn blocks_of_lists_each_block_once_in_order() {
        let lock = AccessLock::new(16 * BLOCK_SIZE);
        let per_block = BLOCK_SIZE >> PAGE_SHIFT;
        let r = |start: u64, pages: u64| FrameRange::new(Gfn(start), pages).unwrap();
        let naive = |ranges: &[FrameRange]| {
            let mut v: Vec<usize> = ranges
                .iter()
                .flat_map(|r| {
                    (r.start().0 / per_block) as usize..=((r.end().0 - 1) / per_block) as usize
                })
                .map(|b| b.min(15))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        for ranges in [
            vec![r(0, 1)],
            vec![r(0, 1), r(1, 1), r(per_block - 1, 2)],
            vec![r(3 * per_block, 1), r(0, 1)],
            vec![r(0, 4 * per_block), r(2 * per_block, 1)],
            vec![
                r(5 * per_block + 7, 3),
                r(5 * per_block + 100, 1),
                r(9 * per_block, 1),
            ],
            vec![r(15 * per_block, 4 * per_block)],
        ] {
            assert_eq!(
                lock.blocks_of(ranges.clone()).to_vec(),
                naive(&ranges),
                "{ranges:?}"
            );
        }
    }

    #[test]
    fn private_page_counts_clear_mixed_only_on_the_blocks_they_empty() {
        let lock = AccessLock::new(3 * BLOCK_SIZE);
        let per_block = BLOCK_SIZE >> PAGE_SHIFT;
        let r = |start: u64, pages: u64| FrameRange::new(Gfn(start), pages).unwrap();
        let mixed = |block: usize| lock.blocks[block].load(Ordering::SeqCst) & MIXED != 0;
        // Three pages at the end of block 0 and two at the start of block 1, and one
        // in block 2.
        let across = r(per_block - 3, 5);
        let third = r(2 * per_block + 9, 1);
        drop(lock.write_frames([across, third]));
        lock.count_private([across, third], true);
        assert_eq!(
            [0, 1, 2].map(|b| lock.private_pages(b)),
            [3, 2, 1],
            "pages counted in the block each lies in"
        );
        assert!((0..3).all(mixed));
        // Block 1's two pages go shared: only it is all shared again.
        lock.count_private([r(per_block, 2)], false);
        assert_eq!([0, 1, 2].map(|b| lock.private_pages(b)), [3, 0, 1]);
        assert!(mixed(0) && !mixed(1) && mixed(2));
        // One of block 0's three: still mixed.
        lock.count_private([r(per_block - 1, 1)], false);
        assert_eq!(lock.private_pages(0), 2);
        assert!(mixed(0));
        // A whole block made private and shared again, with the rest.
        let whole = r(per_block, per_block);
        drop(lock.write_frames([whole]));
        lock.count_private([whole], true);
        assert_eq!(lock.private_pages(1), 512);
        lock.count_private([r(per_block - 3, 2), whole, third], false);
        assert_eq!([0, 1, 2].map(|b| lock.private_pages(b)), [0, 0, 0]);
        assert!(!(0..3).any(mixed));
        // Ranges past the lock's blocks count nothing and do not panic.
        lock.count_private([r(3 * per_block, 4)], true);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "private pages")]
    fn more_pages_made_shared_than_were_private_is_a_bug_debug_builds_catch() {
        let lock = AccessLock::new(BLOCK_SIZE);
        lock.count_private([FrameRange::new(Gfn(0), 1).unwrap()], false);
    }

    #[test]
    fn a_block_is_mixed_from_a_conversion_to_private_until_set_all_shared() {
        let lock = AccessLock::new(2 * BLOCK_SIZE);
        let in_second = BLOCK_SIZE + 0x1000;
        let mixed = |gpa: u64, len: usize| lock.lease(gpa, len).1;
        assert!(
            !mixed(0, 16) && !mixed(in_second, 16),
            "all shared at first"
        );
        let page = FrameRange::new(Gfn(in_second >> PAGE_SHIFT), 1).unwrap();
        drop(lock.write_frames([page]));
        assert!(!mixed(0, 16), "the other block stays unchecked");
        assert!(mixed(in_second, 16));
        assert!(mixed(BLOCK_SIZE - 8, 16), "an access crossing into it");
        // A lease taken while the block was mixed still says so after the flag clears,
        // and the count of leases is untouched by it.
        let (held, was_mixed) = lock.lease(in_second, 16);
        lock.set_all_shared(1);
        assert!(was_mixed && held.is_held());
        assert_eq!(lock.blocks[1].load(Ordering::SeqCst), ONE_LEASE);
        drop(held);
        assert!(!mixed(in_second, 16));
        // Taken again, and given back after waiting for a lease: mixed again.
        let lease = lock.lease(in_second, 16).0;
        thread::scope(|s| {
            let writer = s.spawn(|| drop(lock.write_frames([page])));
            until_parked(&lock);
            drop(lease);
            writer.join().unwrap();
        });
        assert!(mixed(in_second, 16));
        assert_eq!(
            AccessLock::block_frames(1).start(),
            Gfn(BLOCK_SIZE >> PAGE_SHIFT)
        );
        assert_eq!(
            AccessLock::block_frames(1).pages(),
            BLOCK_SIZE >> PAGE_SHIFT
        );
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
                thread::yield_now();
                assert!(!done.load(Ordering::SeqCst));
                drop(clone);
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

    /// Readers take leases, nest them, clone them and keep clones for a while, while
    /// writers take the lock alone, with random yields, on more threads than the
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
                for t in 0..READERS + WRITERS {
                    s.spawn(move || {
                        let mut kept = Vec::new();
                        let mut x = (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        let mut next = move || {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x
                        };
                        for _ in 0..ops {
                            let r = next();
                            if t < READERS {
                                let a = Tracked::new(lock.read(), inside, writer_in);
                                if r & 1 != 0 {
                                    thread::yield_now();
                                }
                                // Nested: a second lease, taken while holding one.
                                let b = (r & 2 != 0)
                                    .then(|| Tracked::new(lock.read(), inside, writer_in));
                                if r & 4 != 0 {
                                    kept.push(a.clone());
                                    if kept.len() > 2 {
                                        kept.clear();
                                    }
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

    /// Readers lease accesses in four blocks, some crossing into the next block, nested
    /// and cloned, while writers take one to three blocks at a time, with random yields,
    /// on more threads than the machine has cores. Per block, writers check that no lease
    /// is alive while they hold it and readers that no writer holds it while they lease
    /// it; everything finishes, so no conversion waiting for one block holds another.
    #[test]
    fn blocks_exclude_only_their_own_leases_under_stress() {
        const BLOCKS: usize = 4;
        blocks_exclude_only_their_own_leases(AccessLock::build(BLOCKS as u64 * BLOCK_SIZE, false));
    }

    /// The same with slots: most 16-byte leases go through them, so conversions fence and
    /// wait for slots as well as for words.
    #[test]
    fn blocks_exclude_only_their_own_leases_through_slots_under_stress() {
        if let Some(lock) = with_slots(4 * BLOCK_SIZE) {
            let fenced = blocks_exclude_only_their_own_leases(lock);
            assert!(fenced.fences.load(Ordering::Relaxed) > 0);
        }
    }

    fn blocks_exclude_only_their_own_leases(lock: AccessLock) -> Arc<AccessLock> {
        let lock = Arc::new(lock);
        let ret = lock.clone();
        let slotted = !lock.slots.is_empty();
        finishes(move || {
            const BLOCKS: usize = 4;
            const PAGES: u64 = BLOCK_SIZE >> PAGE_SHIFT;
            let ops = if cfg!(miri) { 25 } else { 10_000 };
            let lock = &*lock;
            let in_slots = &AtomicUsize::new(0);
            let inside: &[AtomicUsize; BLOCKS] = &Default::default();
            let writer_in: &[AtomicBool; BLOCKS] = &Default::default();
            let other_blocks_ran = &AtomicUsize::new(0);
            thread::scope(|s| {
                for t in 0..6u64 {
                    s.spawn(move || {
                        let mut x = (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                        let mut next = move || {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            x
                        };
                        let enter = |blocks: std::ops::Range<usize>| {
                            for b in blocks {
                                assert!(!writer_in[b].load(Ordering::SeqCst), "block {b}");
                                inside[b].fetch_add(1, Ordering::SeqCst);
                            }
                        };
                        let leave = |blocks: std::ops::Range<usize>| {
                            for b in blocks {
                                assert!(!writer_in[b].load(Ordering::SeqCst), "block {b}");
                                inside[b].fetch_sub(1, Ordering::SeqCst);
                            }
                        };
                        for _ in 0..ops {
                            let r = next();
                            let block = (r >> 8) as usize % BLOCKS;
                            if t < 4 {
                                // 16 bytes, or 8 KiB across the end of the block.
                                let gpa = (block as u64 + 1) * BLOCK_SIZE - 0x1000;
                                let len = if r & 1 != 0 { 0x2000 } else { 16 };
                                let (lease, _) = lock.lease(gpa, len);
                                if lease.in_slot() {
                                    in_slots.fetch_add(1, Ordering::Relaxed);
                                }
                                let held = lease.blocks_held();
                                // Counted in before the check, out before the drop.
                                enter(held.clone());
                                if r & 2 != 0 {
                                    thread::yield_now();
                                }
                                let clone = (r & 4 != 0).then(|| {
                                    let c = lease.clone();
                                    enter(held.clone());
                                    c
                                });
                                leave(held.clone());
                                drop(lease);
                                if r & 8 != 0 {
                                    thread::yield_now();
                                }
                                if let Some(c) = clone {
                                    leave(held);
                                    drop(c);
                                }
                            } else {
                                // One to three blocks, not necessarily adjacent.
                                let ranges = (0..1 + r % 3).map(|i| {
                                    let b = (block as u64 + i * (1 + (r >> 20) % 2)) % 4;
                                    FrameRange::new(
                                        veil_attrs::Gfn(b * PAGES + (r >> 30) % PAGES),
                                        1,
                                    )
                                    .unwrap()
                                });
                                let g = lock.write_frames(ranges);
                                for &b in &g.blocks {
                                    assert_eq!(inside[b].load(Ordering::SeqCst), 0, "block {b}");
                                    writer_in[b].store(true, Ordering::SeqCst);
                                }
                                if g.blocks.len() < BLOCKS
                                    && inside.iter().any(|n| n.load(Ordering::SeqCst) > 0)
                                {
                                    other_blocks_ran.fetch_add(1, Ordering::Relaxed);
                                }
                                if r & 1 != 0 {
                                    thread::yield_now();
                                }
                                for &b in &g.blocks {
                                    assert_eq!(inside[b].load(Ordering::SeqCst), 0, "block {b}");
                                    writer_in[b].store(false, Ordering::SeqCst);
                                }
                                // Half the conversions leave their blocks all shared, so
                                // leases find them so and may go through slots again.
                                if r & 4 != 0 {
                                    for &b in &g.blocks {
                                        lock.set_all_shared(b);
                                    }
                                }
                                drop(g);
                            }
                        }
                    });
                }
            });
            assert!(inside.iter().all(|n| n.load(Ordering::SeqCst) == 0));
            for b in lock.blocks.iter() {
                assert_eq!(
                    b.load(Ordering::SeqCst) & !(PARKED | MIXED | FAST),
                    0,
                    "{lock:?}"
                );
            }
            if !cfg!(miri) {
                // Writers held blocks while leases on others were alive.
                assert!(other_blocks_ran.load(Ordering::Relaxed) > 0);
            }
            assert_eq!(in_slots.load(Ordering::Relaxed) > 0, slotted);
            assert!(
                lock.slots
                    .iter()
                    .all(|s| s.block.load(Ordering::SeqCst) == 0)
            );
        });
        ret
    }
}
