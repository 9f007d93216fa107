// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Memory slots: giving a [`HostSafeMemory`]'s regions to a KVM VM
//! (`KVM_SET_USER_MEMORY_REGION2`), and taking them back.

use std::io;

use kvm_bindings::kvm_userspace_memory_region2;
use kvm_ioctls::VmFd;
use veil_attrs::FrameRange;

use crate::memory::HostSafeMemory;

/// Why memory slots could not be registered or removed.
#[derive(Debug, thiserror::Error)]
pub enum MemslotError {
    /// Numbering one slot per region from `first_slot` passes `u32::MAX`. Nothing was
    /// asked of KVM.
    #[error("memory slots from {first_slot} cannot number {regions} regions")]
    SlotNumbers {
        /// The first slot number asked for.
        first_slot: u32,
        /// The number of regions.
        regions: usize,
    },
    /// KVM refused to register a slot. The slots this call registered before it were
    /// removed again: KVM holds none of this memory's slots that it did not hold before.
    #[error("cannot register memory slot {slot} for guest-physical {range}")]
    Register {
        /// The slot number.
        slot: u32,
        /// The guest-physical range the slot gives the VM.
        range: FrameRange,
        /// The error KVM returned.
        #[source]
        source: io::Error,
    },
    /// KVM refused to register a slot, and then to remove one this call had registered
    /// before it. That slot still refers to this memory, so the memory must outlive the
    /// VM (or a later successful [`HostSafeMemory::remove_memslots`]).
    #[error(
        "cannot register memory slot {slot} for guest-physical {range}, and removing slot \
         {stuck_slot} again failed too ({stuck_error}): KVM still refers to this memory"
    )]
    RegisterUndo {
        /// The slot KVM refused to register.
        slot: u32,
        /// Its guest-physical range.
        range: FrameRange,
        /// The error KVM returned for it.
        #[source]
        source: io::Error,
        /// The first slot that could not be removed again.
        stuck_slot: u32,
        /// The error KVM returned for that.
        stuck_error: io::Error,
    },
    /// KVM refused to remove a slot. Every other slot was still removed.
    #[error("cannot remove memory slot {slot} for guest-physical {range}")]
    Remove {
        /// The first slot that could not be removed.
        slot: u32,
        /// Its guest-physical range.
        range: FrameRange,
        /// The error KVM returned.
        #[source]
        source: io::Error,
    },
}

impl MemslotError {
    /// The errno KVM returned for the slot the error names, if KVM was asked.
    pub fn errno(&self) -> Option<i32> {
        match self {
            MemslotError::SlotNumbers { .. } => None,
            MemslotError::Register { source, .. }
            | MemslotError::RegisterUndo { source, .. }
            | MemslotError::Remove { source, .. } => source.raw_os_error(),
        }
    }
}

/// What memory slots are set in: a VM's `KVM_SET_USER_MEMORY_REGION2`, or a stand-in in
/// tests.
pub(crate) trait SlotTable {
    /// Sets `slot` (a size of 0 removes it).
    ///
    /// # Safety
    ///
    /// As [`VmFd::set_user_memory_region2`]: the memory a slot of non-zero size describes
    /// must stay mapped, and its guest_memfd open, until the slot is removed or the VM
    /// is gone.
    unsafe fn set(&self, slot: kvm_userspace_memory_region2) -> io::Result<()>;
}

impl SlotTable for VmFd {
    unsafe fn set(&self, slot: kvm_userspace_memory_region2) -> io::Result<()> {
        // SAFETY: the caller keeps the memory the slot describes alive (this function's
        // own contract).
        unsafe { self.set_user_memory_region2(slot) }.map_err(io::Error::from)
    }
}

/// Removes the slot numbered as `slot` from `table`.
fn remove(table: &impl SlotTable, slot: &kvm_userspace_memory_region2) -> io::Result<()> {
    let empty = kvm_userspace_memory_region2 {
        slot: slot.slot,
        guest_phys_addr: slot.guest_phys_addr,
        memory_size: 0,
        ..Default::default()
    };
    // SAFETY: a slot of size 0 hands KVM no memory; it removes the slot.
    unsafe { table.set(empty) }
}

impl HostSafeMemory {
    /// The memory slots of every region, numbered from `first_slot`, for
    /// `KVM_SET_USER_MEMORY_REGION2`. Numbers past `u32::MAX` wrap to 0;
    /// [`register_memslots`](Self::register_memslots) refuses a `first_slot` that would.
    pub fn memslots(&self, first_slot: u32) -> Vec<kvm_userspace_memory_region2> {
        (0u32..)
            .zip(self.regions())
            .map(|(i, r)| r.memslot(first_slot.wrapping_add(i)))
            .collect()
    }

    /// The slots and the range each gives, or an error if their numbers would wrap.
    fn numbered_memslots(
        &self,
        first_slot: u32,
    ) -> Result<Vec<(kvm_userspace_memory_region2, FrameRange)>, MemslotError> {
        let regions = self.regions();
        let fits = u32::try_from(regions.len().saturating_sub(1))
            .ok()
            .and_then(|last| first_slot.checked_add(last))
            .is_some();
        if !fits {
            return Err(MemslotError::SlotNumbers {
                first_slot,
                regions: regions.len(),
            });
        }
        let ranges = regions.iter().map(|r| r.range());
        Ok(self.memslots(first_slot).into_iter().zip(ranges).collect())
    }

    /// Registers every region with `vm` as slots `first_slot..`, all or none: if KVM
    /// refuses a slot, the ones registered before it are removed again and the error
    /// names the slot and its guest-physical range.
    ///
    /// # Safety
    ///
    /// The VM keeps using the mappings and guest_memfds of this memory: it must be
    /// dropped only after the slots are removed ([`remove_memslots`](Self::remove_memslots))
    /// or the VM is gone. That holds after [`MemslotError::RegisterUndo`] too, whose slot
    /// still refers to this memory.
    pub unsafe fn register_memslots(&self, vm: &VmFd, first_slot: u32) -> Result<(), MemslotError> {
        // SAFETY: the caller's contract is this function's.
        unsafe { self.register_memslots_in(vm, first_slot) }
    }

    /// [`register_memslots`](Self::register_memslots) on any slot table.
    ///
    /// # Safety
    ///
    /// As [`register_memslots`](Self::register_memslots).
    pub(crate) unsafe fn register_memslots_in(
        &self,
        table: &impl SlotTable,
        first_slot: u32,
    ) -> Result<(), MemslotError> {
        let slots = self.numbered_memslots(first_slot)?;
        for (done, (slot, range)) in slots.iter().enumerate() {
            // SAFETY: the slot describes memory owned by `self`, which the caller keeps
            // alive as long as the VM may use it.
            let Err(source) = (unsafe { table.set(*slot) }) else {
                continue;
            };
            // Take back what this call registered, newest first, all of it even if one
            // removal fails.
            let mut stuck = None;
            for (earlier, _) in slots[..done].iter().rev() {
                if let Err(e) = remove(table, earlier) {
                    stuck.get_or_insert((earlier.slot, e));
                }
            }
            let (slot, range) = (slot.slot, *range);
            return Err(match stuck {
                None => MemslotError::Register {
                    slot,
                    range,
                    source,
                },
                Some((stuck_slot, stuck_error)) => MemslotError::RegisterUndo {
                    slot,
                    range,
                    source,
                    stuck_slot,
                    stuck_error,
                },
            });
        }
        Ok(())
    }

    /// Removes the slots [`register_memslots`](Self::register_memslots) registered with
    /// `vm` from `first_slot` (`KVM_SET_USER_MEMORY_REGION2` with a size of 0), so the VM
    /// no longer reaches this memory and it may be dropped.
    ///
    /// Every slot is tried; the error names the first KVM refused (a slot that is not
    /// registered gives `EINVAL`). Until each slot is removed, the memory must outlive
    /// the VM.
    pub fn remove_memslots(&self, vm: &VmFd, first_slot: u32) -> Result<(), MemslotError> {
        self.remove_memslots_in(vm, first_slot)
    }

    /// [`remove_memslots`](Self::remove_memslots) on any slot table.
    pub(crate) fn remove_memslots_in(
        &self,
        table: &impl SlotTable,
        first_slot: u32,
    ) -> Result<(), MemslotError> {
        let mut first_error = None;
        for (slot, range) in self.numbered_memslots(first_slot)? {
            if let Err(source) = remove(table, &slot) {
                first_error.get_or_insert(MemslotError::Remove {
                    slot: slot.slot,
                    range,
                    source,
                });
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use crate::model::Flavor;
    use crate::region::RegionSpec;

    const MIB: u64 = 1 << 20;

    /// KVM's slot table, as far as these tests need it: a slot number is taken once, a
    /// guest-physical range by one slot at most, and removing needs a registered slot.
    /// Chosen calls fail with a chosen errno.
    #[derive(Default)]
    struct FakeKvm {
        /// Slot number to (guest-physical address, size).
        slots: Mutex<BTreeMap<u32, (u64, u64)>>,
        /// (slot, errno): registering that slot fails.
        refuse_register: Option<(u32, i32)>,
        /// (slot, errno): removing that slot fails.
        refuse_remove: Option<(u32, i32)>,
    }

    impl SlotTable for FakeKvm {
        unsafe fn set(&self, s: kvm_userspace_memory_region2) -> io::Result<()> {
            let err = |errno| Err(io::Error::from_raw_os_error(errno));
            let mut slots = self.slots.lock().unwrap();
            if s.memory_size == 0 {
                if let Some((slot, errno)) = self.refuse_remove
                    && slot == s.slot
                {
                    return err(errno);
                }
                return match slots.remove(&s.slot) {
                    Some(_) => Ok(()),
                    None => err(libc::EINVAL),
                };
            }
            if let Some((slot, errno)) = self.refuse_register
                && slot == s.slot
            {
                return err(errno);
            }
            let end = s.guest_phys_addr + s.memory_size;
            let overlaps = slots
                .values()
                .any(|&(gpa, size)| gpa < end && s.guest_phys_addr < gpa + size);
            if slots.contains_key(&s.slot) || overlaps {
                return err(libc::EEXIST);
            }
            slots.insert(s.slot, (s.guest_phys_addr, s.memory_size));
            Ok(())
        }
    }

    impl FakeKvm {
        fn registered(&self) -> Vec<(u32, u64)> {
            let slots = self.slots.lock().unwrap();
            slots.iter().map(|(&n, &(gpa, _))| (n, gpa)).collect()
        }
    }

    /// Three emulated regions, at 0, 16 MiB and 32 MiB, 1 MiB each.
    fn three_regions() -> HostSafeMemory {
        let mut b = HostSafeMemory::builder();
        for base in [0, 16 * MIB, 32 * MIB] {
            b = b.region(RegionSpec::new(base, MIB, Flavor::EMULATED));
        }
        b.build().unwrap()
    }

    fn range(gpa: u64) -> FrameRange {
        FrameRange::from_gpa(gpa, MIB).unwrap()
    }

    #[test]
    fn register_then_remove_then_register_again() {
        let (mem, kvm) = (three_regions(), FakeKvm::default());
        // SAFETY: the fake takes no memory.
        unsafe { mem.register_memslots_in(&kvm, 5) }.unwrap();
        assert_eq!(kvm.registered(), [(5, 0), (6, 16 * MIB), (7, 32 * MIB)]);
        mem.remove_memslots_in(&kvm, 5).unwrap();
        assert!(kvm.registered().is_empty());
        // SAFETY: as above.
        unsafe { mem.register_memslots_in(&kvm, 5) }.unwrap();
        assert_eq!(kvm.registered().len(), 3);
    }

    #[test]
    fn a_refused_slot_is_named_and_the_earlier_ones_removed() {
        let mem = three_regions();
        let kvm = FakeKvm {
            refuse_register: Some((2, libc::EINVAL)),
            ..Default::default()
        };
        // SAFETY: the fake takes no memory.
        let err = unsafe { mem.register_memslots_in(&kvm, 0) }.unwrap_err();
        assert!(
            matches!(err, MemslotError::Register { slot: 2, range: r, .. } if r == range(32 * MIB)),
            "{err:?}"
        );
        assert_eq!(err.errno(), Some(libc::EINVAL));
        assert_eq!(
            err.to_string(),
            "cannot register memory slot 2 for guest-physical [0x2000000, 0x2100000)"
        );
        assert!(
            kvm.registered().is_empty(),
            "slots 0 and 1 were left behind"
        );
    }

    #[test]
    fn a_slot_that_cannot_be_removed_again_is_named_too() {
        let mem = three_regions();
        let kvm = FakeKvm {
            refuse_register: Some((2, libc::ENOMEM)),
            refuse_remove: Some((1, libc::EIO)),
            ..Default::default()
        };
        // SAFETY: the fake takes no memory.
        let err = unsafe { mem.register_memslots_in(&kvm, 0) }.unwrap_err();
        assert!(
            matches!(&err, MemslotError::RegisterUndo { slot: 2, stuck_slot: 1, stuck_error, .. }
                if stuck_error.raw_os_error() == Some(libc::EIO)),
            "{err:?}"
        );
        assert_eq!(err.errno(), Some(libc::ENOMEM));
        assert!(err.to_string().contains("slot 1"), "{err}");
        // Slot 0 was still removed; slot 1 is the one KVM kept.
        assert_eq!(kvm.registered(), [(1, 16 * MIB)]);
    }

    #[test]
    fn removal_tries_every_slot_and_names_the_first_refused() {
        let mem = three_regions();
        let kvm = FakeKvm {
            refuse_remove: Some((11, libc::EIO)),
            ..Default::default()
        };
        // SAFETY: the fake takes no memory.
        unsafe { mem.register_memslots_in(&kvm, 10) }.unwrap();
        let err = mem.remove_memslots_in(&kvm, 10).unwrap_err();
        assert!(
            matches!(err, MemslotError::Remove { slot: 11, .. }),
            "{err}"
        );
        assert_eq!(err.errno(), Some(libc::EIO));
        assert_eq!(kvm.registered(), [(11, 16 * MIB)]);
        // Removing slots that are not registered: KVM's EINVAL, named.
        let err = mem.remove_memslots_in(&FakeKvm::default(), 0).unwrap_err();
        assert!(
            matches!(err, MemslotError::Remove { slot: 0, range: r, .. } if r == range(0)),
            "{err}"
        );
        assert_eq!(err.errno(), Some(libc::EINVAL));
    }

    #[test]
    fn slot_numbers_that_would_wrap_are_refused_before_kvm_is_asked() {
        let (mem, kvm) = (three_regions(), FakeKvm::default());
        for first in [u32::MAX, u32::MAX - 1] {
            // SAFETY: the fake takes no memory.
            let err = unsafe { mem.register_memslots_in(&kvm, first) }.unwrap_err();
            assert!(matches!(
                err,
                MemslotError::SlotNumbers { first_slot, regions: 3 } if first_slot == first
            ));
            assert_eq!(err.errno(), None);
            assert!(matches!(
                mem.remove_memslots_in(&kvm, first),
                Err(MemslotError::SlotNumbers { .. })
            ));
        }
        assert!(kvm.registered().is_empty());
        // The last three numbers fit.
        // SAFETY: as above.
        unsafe { mem.register_memslots_in(&kvm, u32::MAX - 2) }.unwrap();
        let numbers: Vec<u32> = mem.memslots(u32::MAX - 2).iter().map(|s| s.slot).collect();
        assert_eq!(numbers, [u32::MAX - 2, u32::MAX - 1, u32::MAX]);
        // memslots itself wraps rather than panics.
        assert_eq!(mem.memslots(u32::MAX)[1].slot, 0);
    }
}
