// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The conversion engine: one piece that drives every region's
//! [`MemoryModel`](crate::MemoryModel).
//!
//! A conversion sets the range in the attribute map, asks each region's model to plan
//! the system calls for exactly the changes veil-attrs reported, issues them (reversible
//! ones first, discards last) through the memory's [`Syscalls`](crate::Syscalls), undoes
//! the reversible ones run by changed run if one fails, and publishes the new state only
//! when all succeeded. Conversions to private hold host accesses off while they take
//! access away; listeners hear each change, in order, after it is visible, and one that
//! subscribes starts from the state the changes it then hears apply to.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use smallvec::SmallVec;
use veil_attrs::{
    AttrMap, AttrMapWriter, Attributes, FrameRange, PAGE_SHIFT, PageState, RangeError,
};

use crate::lease::ExclusiveGuard;
use crate::memory::HostSafeMemory;
use crate::model::{Op, Ops, Plan, RegionPlan, StepKind};
use crate::sys::Access;
use crate::syscalls::{Syscall, Target};

/// One sub-range whose state a conversion changed, as listeners are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChange {
    /// The frames that changed.
    pub range: FrameRange,
    /// Their state before.
    pub old: PageState,
    /// Their state after.
    pub new: PageState,
}

/// The changed sub-ranges of a conversion; a couple are held inline, so the common
/// conversion allocates nothing for them.
pub type StateChanges = SmallVec<[StateChange; 2]>;

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conversion {
    /// The pages whose state changed.
    pub pages_changed: u64,
    /// The bytes whose contents were discarded: the pages whose private/shared state
    /// changed in regions that discard (4 KiB each).
    pub bytes_discarded: u64,
    /// Each changed sub-range, in the order the ranges were given and then in address
    /// order.
    pub changes: StateChanges,
}

/// Told the state of guest memory when it subscribes, then every sub-range a conversion
/// changes, in order.
///
/// For device mappings (VFIO, vhost-user), balloons, snapshots: anything that mirrors
/// which ranges are shared. [`HostSafeMemory::subscribe`] first hands the listener the
/// state it starts from ([`subscribed`](Self::subscribed)), then every change made after
/// that state, each exactly once ([`converted`](Self::converted)): a mirror built from
/// the first and updated by the others agrees with the memory, whatever conversions were
/// in flight while it subscribed, like the replay of populated ranges QEMU's
/// `RamDiscardManager` gives a listener it registers. A conversion that fails is undone
/// before anyone hears of it, and is never delivered.
///
/// Listeners run one call at a time, in the order the conversions took effect, after the
/// new state is visible to readers; a conversion's listeners all run before the next
/// conversion is published. A listener may read guest memory and its state; it must not
/// convert or change tags (that deadlocks), and it should be quick: the next conversion
/// waits for it.
pub trait ConversionListener: Send + Sync {
    /// The listener is subscribed and `start` is the state every later change applies
    /// to; called once, before any [`converted`](Self::converted). A mirror builds itself
    /// from it (every shared range, say). The default does nothing, for listeners that
    /// only count or log changes.
    ///
    /// Tags ([`HostSafeMemory::set_tag`]) are not conversions: `start` holds the tags set
    /// so far, and later tag changes are not delivered.
    fn subscribed(&self, start: &AttrMap) {
        let _ = start;
    }

    /// `change` took effect: every frame of `change.range` went from `change.old` to
    /// `change.new`.
    fn converted(&self, change: &StateChange);
}

/// Identifies a subscribed [`ConversionListener`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(u64);

/// What [`HostSafeMemory::subscribe`] returns: the listener's id and the state it
/// started from.
#[derive(Debug, Clone)]
#[must_use = "the id is needed to unsubscribe"]
pub struct Subscription {
    /// For [`HostSafeMemory::unsubscribe`].
    pub id: ListenerId,
    /// The state of guest memory the listener's changes apply to: the map
    /// [`ConversionListener::subscribed`] was given. It holds every conversion published
    /// before the listener was subscribed and none after; the listener hears exactly
    /// those after.
    ///
    /// A snapshot: while it is alive, conversions cannot reuse its copy of the map (see
    /// [`ConcurrentAttrMap`](veil_attrs::ConcurrentAttrMap)), so drop it when done.
    pub start: Arc<AttrMap>,
}

/// Why a conversion failed. Whatever the variant, the guest memory's state (veil's
/// record, KVM's attributes, host protections) is as it was before the call, except
/// [`ConvertError::RollbackFailed`].
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The range is unaligned, empty, wraps, or reaches past the end of guest memory.
    #[error("invalid conversion range")]
    Range(#[from] RangeError),
    /// Part of the range is not guest memory.
    #[error("{range} crosses a gap in guest memory at {gap:#x}")]
    Gap {
        /// The range asked for.
        range: FrameRange,
        /// The first address of it that no region holds.
        gap: u64,
    },
    /// The range cuts a conversion granule of a region: its model changes the host view
    /// in whole units only (an emulated region on 2 MiB huge pages, whose protection
    /// `mprotect` cannot split).
    #[error("{range} is not {granule:#x}-aligned within the region {region}")]
    GranuleUnaligned {
        /// The range asked for.
        range: FrameRange,
        /// The region it cuts.
        region: FrameRange,
        /// The region's conversion granule in bytes.
        granule: u64,
    },
    /// A system call failed; everything done before it was undone. Discards that already
    /// ran (they are always last) cannot be undone: those pages read as zeros.
    #[error("{step} over {range} failed; the conversion was undone")]
    Step {
        /// What failed.
        step: StepKind,
        /// Over which range.
        range: FrameRange,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A system call failed and undoing the earlier steps failed too: KVM or the host
    /// view may disagree with veil's record (which was restored) over `undo_range`.
    #[error(
        "{step} over {range} failed, and undoing {undo_step} over {undo_range} failed too \
         ({undo_error}); veil's record was restored but KVM or the host view may disagree"
    )]
    RollbackFailed {
        /// What failed first.
        step: StepKind,
        /// Over which range.
        range: FrameRange,
        /// The first error.
        #[source]
        source: io::Error,
        /// The undo step that failed.
        undo_step: StepKind,
        /// Over which range.
        undo_range: FrameRange,
        /// Its error.
        undo_error: io::Error,
    },
}

impl ConvertError {
    /// The errno of the failed system call, if a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConvertError::Step { source, .. } | ConvertError::RollbackFailed { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// What conversions have done so far: how many changed something, the pages they moved
/// each way, and the system calls they issued, by kind.
///
/// `Display` gives one line, as a VMM logs it at exit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConversionStats {
    /// Conversions that changed the state of at least one page.
    pub conversions: u64,
    /// Pages made private.
    pub pages_to_private: u64,
    /// Pages made shared.
    pub pages_to_shared: u64,
    /// `KVM_SET_MEMORY_ATTRIBUTES` calls.
    pub set_memory_attributes: u64,
    /// `mprotect` calls on the host view.
    pub protections: u64,
    /// Hole punches (guest_memfd or memfd).
    pub discards: u64,
}

impl ConversionStats {
    /// All system calls.
    pub fn total(&self) -> u64 {
        self.set_memory_attributes + self.protections + self.discards
    }

    /// What happened since `earlier`.
    pub fn since(&self, earlier: &ConversionStats) -> ConversionStats {
        ConversionStats {
            conversions: self.conversions - earlier.conversions,
            pages_to_private: self.pages_to_private - earlier.pages_to_private,
            pages_to_shared: self.pages_to_shared - earlier.pages_to_shared,
            set_memory_attributes: self.set_memory_attributes - earlier.set_memory_attributes,
            protections: self.protections - earlier.protections,
            discards: self.discards - earlier.discards,
        }
    }
}

impl std::fmt::Display for ConversionStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} conversions, {} pages to private, {} to shared; {} system calls \
             ({} KVM_SET_MEMORY_ATTRIBUTES, {} mprotect, {} discard)",
            self.conversions,
            self.pages_to_private,
            self.pages_to_shared,
            self.total(),
            self.set_memory_attributes,
            self.protections,
            self.discards
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    conversions: AtomicU64,
    pages_to_private: AtomicU64,
    pages_to_shared: AtomicU64,
    set_memory_attributes: AtomicU64,
    protections: AtomicU64,
    discards: AtomicU64,
}

impl Counters {
    /// Adds one to the counter of `kind`.
    ///
    /// Conversions count their system calls inside the attribute map's update, as the
    /// only writer (`_writer` shows it), so no other thread changes a counter meanwhile:
    /// a load and a store do what an atomic add would, without a locked instruction.
    fn bump(&self, kind: StepKind, _writer: &AttrMapWriter<'_>) {
        let counter = match kind {
            StepKind::SetAttributes(_) => &self.set_memory_attributes,
            StepKind::Protect { .. } => &self.protections,
            StepKind::Discard(_) => &self.discards,
        };
        add(counter, 1);
    }

    /// Counts a conversion to `to` that moved `pages` pages across (the same writer rule
    /// as [`bump`](Self::bump)).
    fn converted(&self, pages: u64, to: Attributes, _writer: &AttrMapWriter<'_>) {
        add(&self.conversions, 1);
        let side = if to.is_private() {
            &self.pages_to_private
        } else {
            &self.pages_to_shared
        };
        add(side, pages);
    }
}

/// Adds to a counter only one thread writes at a time.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// The subscribed listeners.
#[derive(Default)]
pub(crate) struct Listeners {
    list: Mutex<Vec<(ListenerId, Arc<dyn ConversionListener>)>>,
    next: AtomicU64,
    /// How many are subscribed, read without the lock by every conversion.
    count: AtomicUsize,
}

/// Puts back the state each change had, newest first.
fn restore(map: &mut AttrMapWriter<'_>, changes: &[StateChange]) {
    for c in changes.iter().rev() {
        // Restoring ranges that were just set cannot fail: they are in bounds.
        let _ = map.set_state(c.range, c.old);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value guarded here stays consistent across a panic (a list, a unit).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The regions one range covers: their indices.
type Covering = SmallVec<[usize; 2]>;

/// The listeners a conversion tells.
type Told = SmallVec<[Arc<dyn ConversionListener>; 2]>;

/// What a conversion carries out of the attribute map's update besides what it did
/// (which it writes in place): the notification lock with the listeners to tell (if any
/// were subscribed), and the host-access lock (if it took access away).
type Held<'a> = (
    Option<(MutexGuard<'a, ()>, Told)>,
    Option<ExclusiveGuard<'a>>,
);

/// The inverse of a reversible op, one per changed run inside it (pages of the span that
/// were already in the target state keep what they had).
fn undo(op: &Op, changes: &[StateChange], to: Attributes) -> Ops {
    changes
        .iter()
        .filter(|c| c.old.attributes.is_private() != to.is_private())
        .filter_map(|c| {
            let range = c.range.intersection(&op.range)?;
            Some(Op {
                region: op.region,
                kind: op.kind.inverse(c.old.attributes)?,
                range,
            })
        })
        .collect()
}

impl HostSafeMemory {
    /// Subscribes `listener`: hands it the current state of guest memory
    /// ([`ConversionListener::subscribed`]), then every change conversions make after
    /// that state, each once, in order. Returns its id and that starting state.
    ///
    /// Conversions running meanwhile are either wholly in the starting state or wholly
    /// delivered, never both and never neither: subscribing takes the attribute map's
    /// writer lock, which conversions hold from setting the map until they have chosen
    /// whom to tell, and then the lock that orders notifications, so the listener's
    /// `subscribed` runs after the listeners of every earlier conversion and before those
    /// of every later one. It waits for a conversion in progress, and conversions wait for
    /// `subscribed` to return.
    ///
    /// Do not call it from a listener (it would wait for itself), nor while this thread
    /// holds a slice of this memory (a conversion to private in progress would wait for
    /// the slice, and this for the conversion).
    pub fn subscribe(&self, listener: Arc<dyn ConversionListener>) -> Subscription {
        let l = &self.listeners;
        let id = ListenerId(l.next.fetch_add(1, Ordering::Relaxed));
        // As the only writer, which changes nothing and so publishes nothing: no
        // conversion is between setting the map and choosing whom to tell.
        let (start, notify) = self.attrs.update(|_| {
            // The conversion before has chosen its listeners; wait until it has told them.
            let notify = lock(&self.notify);
            let mut list = lock(&l.list);
            list.push((id, Arc::clone(&listener)));
            l.count.store(list.len(), Ordering::Release);
            (self.attrs.snapshot(), notify)
        });
        // Holding only the notification lock: readers and vCPUs carry on, the next
        // conversion waits to tell its listeners until this one has its start.
        listener.subscribed(&start);
        drop(notify);
        Subscription { id, start }
    }

    /// Unsubscribes a listener; `false` if it was not subscribed. A conversion already
    /// telling its listeners may still tell this one its changes.
    pub fn unsubscribe(&self, id: ListenerId) -> bool {
        let l = &self.listeners;
        let mut list = lock(&l.list);
        let before = list.len();
        list.retain(|(i, _)| *i != id);
        l.count.store(list.len(), Ordering::Release);
        list.len() != before
    }

    /// What conversions have done so far: pages each way and system calls.
    pub fn stats(&self) -> ConversionStats {
        let s = &self.stats;
        ConversionStats {
            conversions: s.conversions.load(Ordering::Relaxed),
            pages_to_private: s.pages_to_private.load(Ordering::Relaxed),
            pages_to_shared: s.pages_to_shared.load(Ordering::Relaxed),
            set_memory_attributes: self.stats.set_memory_attributes.load(Ordering::Relaxed),
            protections: self.stats.protections.load(Ordering::Relaxed),
            discards: self.stats.discards.load(Ordering::Relaxed),
        }
    }

    /// Converts the byte range `[gpa, gpa + size)` to `to`; see [`convert`](Self::convert).
    pub fn convert_gpa(
        &self,
        gpa: u64,
        size: u64,
        to: Attributes,
    ) -> Result<Conversion, ConvertError> {
        self.convert(FrameRange::from_gpa(gpa, size)?, to)
    }

    /// Makes every page of `range` have attributes `to` (and no tag), as each region's
    /// flavor carries it out, and returns what changed.
    ///
    /// Only pages whose state changes are touched; a range already in state `to` costs
    /// no system call. A range that reaches past the end, crosses a gap between regions or
    /// cuts a region's conversion granule fails before anything changes; a failed system
    /// call is undone (see [`ConvertError`]). Readers see the state before or after the
    /// whole conversion, never a mix, and a host access never faults on a page that
    /// becomes private under it: conversions to private wait for outstanding
    /// [`HostAccessLease`](crate::HostAccessLease)s on the 2 MiB blocks of the pages they
    /// make private (and only those).
    ///
    /// Listeners are told after the new state is visible. Do not call this while holding
    /// a slice of this memory on the same thread (a conversion to private would wait for
    /// it forever) or from a listener.
    pub fn convert(&self, range: FrameRange, to: Attributes) -> Result<Conversion, ConvertError> {
        self.convert_ranges(&[range], to)
    }

    /// Converts several ranges to `to` as one conversion: all or nothing, published
    /// once, listeners told once. Each range is planned on its own, exactly as
    /// [`convert`](Self::convert) plans it; this only saves publishing the state once per
    /// range (a loader setting up a memory map, or a checkerboard).
    pub fn convert_ranges(
        &self,
        ranges: &[FrameRange],
        to: Attributes,
    ) -> Result<Conversion, ConvertError> {
        let mut covered: SmallVec<[(FrameRange, Covering); 1]> = SmallVec::new();
        for &range in ranges {
            covered.push((range, self.covering(range)?));
        }
        let target = PageState::new(to);
        // Filled in place by the update, which saves moving it out of the closure, the
        // update and its result.
        let mut conversion = Conversion::default();
        let convert = |map: &mut AttrMapWriter<'_>| -> Result<Held<'_>, ConvertError> {
            // What changed, as listeners and the caller are told; also what a rollback
            // restores.
            let changes = &mut conversion.changes;
            let mut plan = Plan::default();
            for (range, regions) in &covered {
                let some = match map.set_state(*range, target) {
                    Ok(c) => c,
                    Err(e) => {
                        restore(map, changes);
                        return Err(e.into());
                    }
                };
                self.plan_into(&mut plan, regions, &some, to);
                conversion.pages_changed += some.pages();
                // One push each: for the common single change, `extend`'s reserve and
                // fill loops cost more than the change itself.
                for c in some.iter() {
                    changes.push(StateChange {
                        range: c.range,
                        old: c.previous,
                        new: target,
                    });
                }
            }
            if changes.is_empty() {
                return Ok((None, None));
            }
            // The listeners subscribed now, as the writer, are the ones told: a listener
            // subscribing later starts from a state holding this conversion. Without
            // any, there is no order to keep.
            let notify = (self.listeners.count.load(Ordering::Acquire) > 0).then(|| {
                let order = lock(&self.notify);
                let told: Told = lock(&self.listeners.list)
                    .iter()
                    .map(|(_, l)| Arc::clone(l))
                    .collect();
                (order, told)
            });
            // Taking host access away: wait until no host access to the blocks of the
            // pages made private is in flight, and keep new ones out of those blocks
            // until the new state is published. Accesses elsewhere carry on.
            // (Whatever the plan: taking the blocks also marks them as holding private
            // pages, which every later access to them then checks.)
            let crosses = |c: &&StateChange| c.old.attributes.is_private() != to.is_private();
            let exclusive = (to.is_private() && changes.iter().any(|c| crosses(&c))).then(|| {
                self.lock
                    .write_frames(changes.iter().filter(crosses).map(|c| c.range))
            });
            if let Err(e) = self.execute(&plan, changes, to, map) {
                restore(map, changes);
                return Err(e);
            }
            // Blocks a conversion to shared leaves with no private page need no checks
            // again until a conversion makes one private.
            self.lock.count_private(
                changes.iter().filter(crosses).map(|c| c.range),
                to.is_private(),
            );
            #[cfg(debug_assertions)]
            self.check_private_counts(map, changes.iter().filter(crosses).map(|c| c.range));
            let crossed = changes
                .iter()
                .filter(crosses)
                .map(|c| c.range.pages())
                .sum();
            self.stats.converted(crossed, to, map);
            conversion.bytes_discarded = plan.bytes_discarded;
            Ok((notify, exclusive))
        };
        // A range already in state `to` changes nothing and publishes nothing.
        let outcome = match self.attrs.try_update(convert) {
            Ok(outcome) => outcome,
            Err(convert) => {
                // Another conversion holds the writer's lock. Already there (a vCPU
                // repeating a request): answer from the published state without waiting
                // for it; the conversion running is then ordered after this one.
                let unchanged = self.attrs.read(|map| {
                    covered.iter().all(|(range, _)| {
                        map.runs(*range)
                            .is_ok_and(|mut runs| runs.all(|run| run.state == target))
                    })
                });
                if unchanged {
                    return Ok(Conversion::default());
                }
                self.attrs.update(convert)
            }
        };
        let (notify, exclusive) = outcome?;
        drop(exclusive);
        if let Some((order, told)) = notify {
            for change in &conversion.changes {
                for l in &told {
                    l.converted(change);
                }
            }
            drop(order);
        }
        Ok(conversion)
    }

    /// Checks the lock's private-page counts of the blocks of `ranges` against `map`
    /// (debug builds: every conversion in the tests).
    #[cfg(debug_assertions)]
    fn check_private_counts(&self, map: &AttrMap, ranges: impl IntoIterator<Item = FrameRange>) {
        use crate::lease::AccessLock;
        use veil_attrs::Gfn;
        let guest = FrameRange::from_bounds(Gfn(0), Gfn(self.frames));
        for block in self.lock.blocks_of(ranges) {
            let frames = guest.and_then(|g| AccessLock::block_frames(block).intersection(&g));
            let private: u64 = frames
                .and_then(|f| map.runs(f).ok())
                .map(|runs| {
                    runs.filter(|run| run.state.is_private())
                        .map(|run| run.range.pages())
                        .sum()
                })
                .unwrap_or(0);
            assert_eq!(
                u64::from(self.lock.private_pages(block)),
                private,
                "block {block}'s private pages"
            );
        }
    }

    /// The calls that carry out `changes` (from setting some range to `to`) over the
    /// regions `covering` lists: each region's model plans its part.
    fn plan_into(
        &self,
        plan: &mut Plan,
        covering: &[usize],
        changes: &[veil_attrs::Change],
        to: Attributes,
    ) {
        let to_private = to.is_private();
        for &index in covering {
            let region = &self.regions[index];
            // Only changes of the private bit matter (a tag-only change costs nothing),
            // and only those inside this region.
            let touched = changes.iter().any(|c| {
                c.previous.attributes.is_private() != to_private
                    && c.range.intersection(&region.range).is_some()
            });
            if !touched {
                continue;
            }
            region.flavor.model().plan(&mut RegionPlan {
                index,
                range: region.range,
                policy: region.policy,
                to,
                changes,
                plan,
            });
        }
    }

    /// The regions `range` covers; fails unless they tile it without a gap and it cuts
    /// no region's conversion granule.
    fn covering(&self, range: FrameRange) -> Result<Covering, ConvertError> {
        let range = range.check_within(self.frames, self.frames << PAGE_SHIFT)?;
        let mut out = Covering::new();
        let mut cursor = range.start();
        for (index, r) in self.regions.iter().enumerate() {
            if r.range.end() <= cursor {
                continue;
            }
            if r.range.start() > cursor {
                break;
            }
            let granule = r.backing.granule;
            if granule > veil_attrs::PAGE_SIZE
                && let Some(part) = range.intersection(&r.range)
                && (!(part.gpa() - r.base()).is_multiple_of(granule)
                    || !part.size().is_multiple_of(granule))
            {
                return Err(ConvertError::GranuleUnaligned {
                    range,
                    region: r.range,
                    granule,
                });
            }
            out.push(index);
            cursor = r.range.end();
            if cursor >= range.end() {
                return Ok(out);
            }
        }
        Err(ConvertError::Gap {
            range,
            gap: cursor.0 << PAGE_SHIFT,
        })
    }

    /// Issues the system calls of `plan`, undoing the reversible ones done so far if one
    /// fails. Only inside the attribute map's update (`writer`).
    fn execute(
        &self,
        plan: &Plan,
        changes: &[StateChange],
        to: Attributes,
        writer: &AttrMapWriter<'_>,
    ) -> Result<(), ConvertError> {
        let ops = || plan.reversible.iter().chain(&plan.discards);
        for (count, op) in ops().enumerate() {
            if let Err(source) = self.run(op, writer) {
                let failed = |source| ConvertError::Step {
                    step: op.kind,
                    range: op.range,
                    source,
                };
                let done: SmallVec<[&Op; 8]> = ops().take(count).collect();
                for earlier in done.iter().rev() {
                    for u in undo(earlier, changes, to) {
                        if let Err(undo_error) = self.run(&u, writer) {
                            return Err(ConvertError::RollbackFailed {
                                step: op.kind,
                                range: op.range,
                                source,
                                undo_step: u.kind,
                                undo_range: u.range,
                                undo_error,
                            });
                        }
                    }
                }
                return Err(failed(source));
            }
        }
        Ok(())
    }

    /// Issues one system call through the memory's [`Syscalls`](crate::Syscalls) and
    /// counts it. Only inside the attribute map's update (`writer`), which makes this
    /// thread the only one changing the counters.
    fn run(&self, op: &Op, writer: &AttrMapWriter<'_>) -> io::Result<()> {
        self.stats.bump(op.kind, writer);
        let region = &self.regions[op.region];
        let offset = op.range.gpa() - region.base();
        let len = op.range.size();
        let missing = || io::Error::from_raw_os_error(libc::EBADF);
        let target = match op.kind {
            StepKind::SetAttributes(attributes) => Target::Vm {
                vm: self.attributes_vm.as_deref().ok_or_else(missing)?,
                attributes,
            },
            StepKind::Protect { inaccessible } => Target::View {
                mapping: &self.reservation,
                // Inside the reservation: the region's view is, and the op inside it.
                offset: region.view_offset + offset as usize,
                len: len as usize,
                access: if inaccessible {
                    Access::None
                } else {
                    Access::ReadWrite
                },
            },
            StepKind::Discard(store) => Target::File {
                fd: region.backing.store(store).ok_or_else(missing)?,
                offset,
                len,
            },
        };
        self.syscalls.issue(Syscall {
            kind: op.kind,
            range: op.range,
            target,
        })
    }

    /// The host-access lock (tests only).
    #[cfg(test)]
    pub(crate) fn access_lock(&self) -> &crate::lease::AccessLock {
        &self.lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContentPolicy, Flavor, Store};
    use veil_attrs::{AttrMap, Change, Gfn, PAGE_SIZE, Tag};

    fn fr(start: u64, pages: u64) -> FrameRange {
        FrameRange::new(Gfn(start), pages).unwrap()
    }

    /// The plan `flavor` makes for `changes` (from setting a range to `to`) over regions
    /// `(range, flavor, policy)`, numbered in order.
    fn plan(
        regions: &[(FrameRange, Flavor, ContentPolicy)],
        changes: &[Change],
        to: Attributes,
    ) -> Plan {
        let mut plan = Plan::default();
        for (index, &(range, flavor, policy)) in regions.iter().enumerate() {
            let touched = changes.iter().any(|c| {
                c.previous.attributes.is_private() != to.is_private()
                    && c.range.intersection(&range).is_some()
            });
            if touched {
                flavor.model().plan(&mut RegionPlan {
                    index,
                    range,
                    policy,
                    to,
                    changes,
                    plan: &mut plan,
                });
            }
        }
        plan
    }

    /// A map whose pages `[0, n)` alternate private (even) and shared (odd).
    fn checkerboard(n: u64) -> AttrMap {
        let mut m = AttrMap::new(n * PAGE_SIZE).unwrap();
        for p in (0..n).step_by(2) {
            m.set(fr(p, 1), Attributes::PRIVATE).unwrap();
        }
        m
    }

    #[test]
    fn checkerboard_to_shared_is_one_call_per_kind_where_correct() {
        let n = 1024;
        let whole = fr(0, n);
        for (flavor, policy, reversible, discards) in [
            (Flavor::ATTRIBUTES, ContentPolicy::Discard, 1, 1),
            (Flavor::ATTRIBUTES, ContentPolicy::Retain, 1, 0),
            (Flavor::IN_PLACE, ContentPolicy::Preserve, 1, 0),
            (Flavor::IN_PLACE, ContentPolicy::Retain, 1, 0),
            (Flavor::EMULATED, ContentPolicy::Preserve, 1, 0),
            // Discarding per run is what keeps the already-shared pages intact.
            (Flavor::IN_PLACE, ContentPolicy::Discard, 1, n / 2),
            (Flavor::EMULATED, ContentPolicy::Discard, 1, n / 2),
        ] {
            let mut m = checkerboard(n);
            let changes = m.set(whole, Attributes::empty()).unwrap();
            assert_eq!(changes.len() as u64, n / 2);
            let p = plan(&[(whole, flavor, policy)], &changes, Attributes::empty());
            assert_eq!(p.reversible.len(), reversible, "{flavor} {policy:?}");
            assert_eq!(p.discards.len() as u64, discards, "{flavor} {policy:?}");
            // The span runs from the first to the last changed page.
            assert_eq!(p.reversible[0].range, fr(0, n - 1));
            let expect = if policy == ContentPolicy::Discard {
                n / 2 * PAGE_SIZE
            } else {
                0
            };
            assert_eq!(p.bytes_discarded, expect);
        }
    }

    #[test]
    fn attributes_flavor_discards_the_side_no_longer_used() {
        let whole = fr(0, 16);
        let r = [(whole, Flavor::ATTRIBUTES, ContentPolicy::Discard)];
        let mut m = AttrMap::new(16 * PAGE_SIZE).unwrap();
        let c = m.set(fr(2, 3), Attributes::PRIVATE).unwrap();
        let p = plan(&r, &c, Attributes::PRIVATE);
        assert_eq!(
            p.reversible[..],
            [Op {
                region: 0,
                kind: StepKind::SetAttributes(Attributes::PRIVATE),
                range: fr(2, 3)
            }]
        );
        assert_eq!(p.discards[0].kind, StepKind::Discard(Store::View));
        let c = m.set(fr(0, 16), Attributes::empty()).unwrap();
        let p = plan(&r, &c, Attributes::empty());
        assert_eq!(p.discards[0].kind, StepKind::Discard(Store::GuestMemfd));
        assert_eq!(p.discards[0].range, fr(2, 3));
    }

    #[test]
    fn no_change_no_call_and_tags_cost_nothing() {
        let whole = fr(0, 16);
        let r = [(whole, Flavor::IN_PLACE, ContentPolicy::Discard)];
        let mut m = AttrMap::new(16 * PAGE_SIZE).unwrap();
        let c = m.set(whole, Attributes::empty()).unwrap();
        assert_eq!(plan(&r, &c, Attributes::empty()), Plan::default());
        // A tag-only change (shared, tagged -> shared) is reported by veil-attrs but needs
        // no system call: the bytes stay.
        let t = Tag::new(3).unwrap();
        m.set_state(fr(1, 2), PageState::tagged(Attributes::empty(), t))
            .unwrap();
        let c = m.set(whole, Attributes::empty()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(plan(&r, &c, Attributes::empty()), Plan::default());
    }

    #[test]
    fn plan_splits_across_regions() {
        let a = fr(0, 8);
        let b = fr(8, 8);
        let rs = [
            (a, Flavor::EMULATED, ContentPolicy::Discard),
            (b, Flavor::ATTRIBUTES, ContentPolicy::Discard),
        ];
        let mut m = AttrMap::new(16 * PAGE_SIZE).unwrap();
        let c = m.set(fr(6, 4), Attributes::PRIVATE).unwrap();
        let p = plan(&rs, &c, Attributes::PRIVATE);
        assert_eq!(p.reversible.len(), 2);
        assert_eq!(
            (p.reversible[0].region, p.reversible[0].range),
            (0, fr(6, 2))
        );
        assert_eq!(
            (p.reversible[1].region, p.reversible[1].range),
            (1, fr(8, 2))
        );
        assert_eq!(p.discards.len(), 2);
        assert_eq!(p.bytes_discarded, 4 * PAGE_SIZE);
    }

    #[test]
    fn undo_covers_only_changed_runs() {
        let mut m = checkerboard(8);
        let c: Vec<StateChange> = m
            .set(fr(0, 8), Attributes::PRIVATE)
            .unwrap()
            .iter()
            .map(|c| StateChange {
                range: c.range,
                old: c.previous,
                new: PageState::PRIVATE,
            })
            .collect();
        let op = Op {
            region: 0,
            kind: StepKind::Protect { inaccessible: true },
            range: fr(1, 7),
        };
        let u = undo(&op, &c, Attributes::PRIVATE);
        assert_eq!(u.len(), 4);
        assert!(u.iter().all(|o| o.kind
            == StepKind::Protect {
                inaccessible: false
            }));
        assert_eq!(
            u.iter().map(|o| o.range.start().0).collect::<Vec<_>>(),
            [1, 3, 5, 7]
        );
        let op = Op {
            kind: StepKind::SetAttributes(Attributes::PRIVATE),
            ..op
        };
        let u = undo(&op, &c, Attributes::PRIVATE);
        assert!(
            u.iter()
                .all(|o| o.kind == StepKind::SetAttributes(Attributes::empty()))
        );
        // Discards are never undone.
        let op = Op {
            kind: StepKind::Discard(Store::View),
            ..op
        };
        assert!(undo(&op, &c, Attributes::PRIVATE).is_empty());
    }
}
