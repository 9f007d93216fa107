// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A software-protected VM with real-mode vCPUs, built from `kvm-ioctls` alone.
//!
//! This is the plumbing the first conformance tests need: memslots whose shared side
//! is an anonymous host mapping and whose private side, when asked for, is a
//! guest_memfd; attribute changes driven by a `veil-attrs` map, so KVM is only asked
//! to change the sub-ranges whose state changes; and a vCPU loop that records port
//! output and answers hypercalls.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use kvm_bindings::{
    KVM_MEM_GUEST_MEMFD, KVM_X86_SW_PROTECTED_VM, kvm_create_guest_memfd, kvm_memory_attributes,
    kvm_regs, kvm_userspace_memory_region2,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use veil_attrs::{AttrMap, Attributes, Changes, FrameRange};

use crate::guests;

/// `KVM_HC_MAP_GPA_RANGE`, the hypercall a guest converts memory with.
pub use veil_abi::kvm::KVM_HC_MAP_GPA_RANGE;

/// `KVM_MAP_GPA_RANGE_ENCRYPTED`: the MAP_GPA_RANGE attribute bit asking for private
/// (arch/x86/include/uapi/asm/kvm_para.h).
pub const KVM_MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;

/// An anonymous private host mapping: the shared side of a memslot.
pub struct HostMemory {
    addr: NonNull<u8>,
    len: usize,
}

impl HostMemory {
    /// Maps `len` bytes of zeroed memory.
    pub fn new(len: usize) -> Self {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; the result
        // is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap of {len:#x} bytes failed");
        let addr = NonNull::new(addr.cast::<u8>()).expect("mmap returned a null address");
        HostMemory { addr, len }
    }

    /// The host virtual address, as KVM takes it in `userspace_addr`.
    pub fn hva(&self) -> u64 {
        self.addr.as_ptr() as u64
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "{offset:#x}+{len:#x} outside a {:#x}-byte mapping",
            self.len
        );
    }

    /// Writes `bytes` at `offset`.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        self.check(offset, bytes.len());
        // SAFETY: the range lies inside the mapping (checked), which lives as long as
        // `self`; no Rust reference to it exists. A guest running on another thread may
        // touch the same bytes meanwhile, which changes their value, not the soundness
        // of the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.addr.as_ptr().add(offset),
                bytes.len(),
            )
        }
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`.
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len());
        // SAFETY: inside the mapping (checked); see `write`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.addr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    }

    /// Reads the byte at `offset`.
    pub fn byte(&self, offset: usize) -> u8 {
        self.check(offset, 1);
        // SAFETY: inside the mapping (checked); see `write`.
        unsafe { self.addr.as_ptr().add(offset).read_volatile() }
    }

    /// Drops the contents of `len` bytes at `offset`: they read zero afterwards.
    pub fn discard(&self, offset: usize, len: usize) {
        self.check(offset, len);
        // SAFETY: MADV_DONTNEED on a page-aligned part of our own private anonymous
        // mapping only replaces its contents with zero pages.
        let rc = unsafe {
            libc::madvise(
                self.addr.as_ptr().add(offset).cast(),
                len,
                libc::MADV_DONTNEED,
            )
        };
        assert_eq!(
            rc,
            0,
            "madvise(DONTNEED) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

// SAFETY: the mapping is owned by `HostMemory` and only ever reached through raw copies
// (`write`, `read`, `byte`) and `madvise`, never through Rust references, so using it
// from several threads is as sound as from one; it is unmapped only on drop.
unsafe impl Send for HostMemory {}
// SAFETY: as for `Send`: no method hands out a reference into the mapping.
unsafe impl Sync for HostMemory {}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// A guest_memfd: the private side of a memslot.
pub struct GuestMemfd {
    fd: OwnedFd,
}

impl GuestMemfd {
    /// Creates a guest_memfd of `size` bytes for `vm`.
    pub fn new(vm: &VmFd, size: u64) -> Result<Self, kvm_ioctls::Error> {
        let raw = vm.create_guest_memfd(kvm_create_guest_memfd {
            size,
            flags: 0,
            reserved: [0; 6],
        })?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(GuestMemfd { fd })
    }

    /// Frees the private contents of `len` bytes at `offset` (they read zero when next
    /// faulted in), as the attributes flavor does on a conversion to shared.
    pub fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// One memslot: its place in the guest and its two sides.
pub struct Slot {
    /// First guest-physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// The shared side.
    pub host: HostMemory,
    /// The private side, when the slot has one.
    pub private: Option<GuestMemfd>,
}

/// A software-protected VM (`KVM_X86_SW_PROTECTED_VM`) and its memslots.
pub struct SwVm {
    // Declared first so the VM is closed before the memory its slots point at goes.
    /// The VM.
    pub vm: VmFd,
    slots: BTreeMap<u32, Slot>,
}

impl SwVm {
    /// Creates a software-protected VM with no memory.
    pub fn new(kvm: &Kvm) -> Self {
        let vm = kvm
            .create_vm_with_type(u64::from(KVM_X86_SW_PROTECTED_VM))
            .expect("KVM_CREATE_VM(KVM_X86_SW_PROTECTED_VM)");
        SwVm {
            vm,
            slots: BTreeMap::new(),
        }
    }

    /// Adds memslot `slot` of `size` bytes at `gpa`; with `private_side`, its private
    /// side is a new guest_memfd.
    pub fn add_slot(&mut self, slot: u32, gpa: u64, size: u64, private_side: bool) {
        let host = HostMemory::new(usize::try_from(size).expect("slot size fits usize"));
        let private =
            private_side.then(|| GuestMemfd::new(&self.vm, size).expect("KVM_CREATE_GUEST_MEMFD"));
        let region = kvm_userspace_memory_region2 {
            slot,
            flags: if private.is_some() {
                KVM_MEM_GUEST_MEMFD
            } else {
                0
            },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host.hva(),
            guest_memfd_offset: 0,
            guest_memfd: private.as_ref().map_or(0, |g| g.fd.as_raw_fd() as u32),
            ..Default::default()
        };
        // SAFETY: `userspace_addr` is a mapping of `size` bytes owned by the slot, which
        // stays registered only while `self` holds it (see `delete_slot` and the field
        // order of `SwVm`).
        unsafe { self.vm.set_user_memory_region2(region) }
            .unwrap_or_else(|e| panic!("KVM_SET_USER_MEMORY_REGION2 slot {slot}: {e}"));
        self.slots.insert(
            slot,
            Slot {
                gpa,
                size,
                host,
                private,
            },
        );
    }

    /// Deletes memslot `slot` from the VM and drops both its sides.
    pub fn delete_slot(&mut self, slot: u32) {
        let old = self
            .slots
            .remove(&slot)
            .expect("deleting a slot that exists");
        let region = kvm_userspace_memory_region2 {
            slot,
            guest_phys_addr: old.gpa,
            memory_size: 0,
            ..Default::default()
        };
        // SAFETY: a size of zero deletes the slot; KVM keeps no pointer afterwards.
        unsafe { self.vm.set_user_memory_region2(region) }
            .unwrap_or_else(|e| panic!("deleting slot {slot}: {e}"));
    }

    /// The slot holding the whole of `range`, with the offset of the range in it.
    pub fn locate(&self, gpa: u64, size: u64) -> (&Slot, u64) {
        self.slots
            .values()
            .find(|s| gpa >= s.gpa && gpa + size <= s.gpa + s.size)
            .map(|s| (s, gpa - s.gpa))
            .unwrap_or_else(|| panic!("no single slot holds {gpa:#x}+{size:#x}"))
    }

    /// Writes `bytes` to the shared side at `gpa`.
    pub fn write_shared(&self, gpa: u64, bytes: &[u8]) {
        let (slot, offset) = self.locate(gpa, bytes.len() as u64);
        slot.host.write(offset as usize, bytes);
    }

    /// Copies `buf.len()` bytes of the shared side at `gpa` into `buf`.
    pub fn read_shared(&self, gpa: u64, buf: &mut [u8]) {
        let (slot, offset) = self.locate(gpa, buf.len() as u64);
        slot.host.read(offset as usize, buf);
    }

    /// Reads one byte of the shared side at `gpa`.
    pub fn shared_byte(&self, gpa: u64) -> u8 {
        let (slot, offset) = self.locate(gpa, 1);
        slot.host.byte(offset as usize)
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES` for `[gpa, gpa + size)`.
    pub fn set_attributes(
        &self,
        gpa: u64,
        size: u64,
        attributes: u64,
    ) -> Result<(), kvm_ioctls::Error> {
        self.vm.set_memory_attributes(kvm_memory_attributes {
            address: gpa,
            size,
            attributes,
            flags: 0,
        })
    }

    /// A vCPU in real mode about to run the guest program `code`, loaded at
    /// [`guests::LOAD_GPA`], with `%ds` = `ds` and the registers `regs` sets.
    pub fn real_mode_vcpu(
        &self,
        id: u64,
        code: &[u8],
        ds: u16,
        regs: impl FnOnce(&mut kvm_regs),
    ) -> VcpuFd {
        self.write_shared(guests::LOAD_GPA, code);
        let vcpu = self.vm.create_vcpu(id).expect("KVM_CREATE_VCPU");
        let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        sregs.ds.base = u64::from(ds) << 4;
        sregs.ds.selector = ds;
        vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
        let mut r = kvm_regs {
            rip: guests::LOAD_GPA,
            rflags: 2,
            ..Default::default()
        };
        regs(&mut r);
        vcpu.set_regs(&r).expect("KVM_SET_REGS");
        vcpu
    }
}

/// The attributes flavor in miniature: a `veil-attrs` map mirrors KVM's attributes,
/// and only the sub-ranges a conversion changes reach KVM.
pub struct Converter {
    /// The userspace mirror.
    pub map: AttrMap,
    /// How many `KVM_SET_MEMORY_ATTRIBUTES` calls were made.
    pub ioctls: usize,
}

/// Whether a conversion frees the side that stops being used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Keep both sides' contents (what a later conversion back then shows).
    Keep,
    /// Free the side no longer used: shared pages on to-private, the guest_memfd range
    /// on to-shared, as veil's attributes flavor does.
    Free,
}

impl Converter {
    /// A mirror for a guest of `guest_size` bytes, all shared.
    pub fn new(guest_size: u64) -> Self {
        Converter {
            map: AttrMap::new(guest_size).expect("a valid guest size"),
            ioctls: 0,
        }
    }

    /// Converts `range` to `to` in the mirror and in KVM, and returns what changed.
    pub fn convert(
        &mut self,
        vm: &SwVm,
        range: FrameRange,
        to: Attributes,
        discard: Discard,
    ) -> Changes {
        let changes = self.map.set(range, to).expect("range inside the guest");
        for change in &changes {
            let (gpa, size) = (change.range.gpa(), change.range.size());
            vm.set_attributes(gpa, size, to.bits())
                .unwrap_or_else(|e| panic!("KVM_SET_MEMORY_ATTRIBUTES {}: {e}", change.range));
            self.ioctls += 1;
            if discard == Discard::Free {
                let (slot, offset) = vm.locate(gpa, size);
                if to.is_private() {
                    slot.host.discard(offset as usize, size as usize);
                } else if let Some(private) = &slot.private {
                    private
                        .punch_hole(offset, size)
                        .unwrap_or_else(|e| panic!("punching {}: {e}", change.range));
                }
            }
        }
        changes
    }
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The guest halted.
    Halt,
    /// `KVM_EXIT_MEMORY_FAULT`, as KVM reported it.
    MemoryFault {
        /// `memory_fault.flags`.
        flags: u64,
        /// `memory_fault.gpa`.
        gpa: u64,
        /// `memory_fault.size`.
        size: u64,
    },
    /// Anything else, described.
    Unexpected(String),
}

/// What one [`run`] saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every port write, in order: (port, bytes).
    pub out: Vec<(u16, Vec<u8>)>,
    /// Every hypercall exit: (nr, args[0..3]).
    pub hypercalls: Vec<(u64, [u64; 3])>,
    /// Why the vCPU stopped.
    pub stop: Option<Stop>,
}

impl Outcome {
    /// The bytes written to `port`, concatenated.
    pub fn port(&self, port: u16) -> Vec<u8> {
        self.out
            .iter()
            .filter(|(p, _)| *p == port)
            .flat_map(|(_, b)| b.iter().copied())
            .collect()
    }
}

/// Runs `vcpu` until it halts, faults or exits unexpectedly; hypercall exits are
/// answered with `answer(nr, args)` written to `hypercall.ret`.
pub fn run(vcpu: &mut VcpuFd, mut answer: impl FnMut(u64, [u64; 3]) -> u64) -> Outcome {
    let mut outcome = Outcome::default();
    // Test guests exit a handful of times; a guest looping on exits is a failure.
    for _ in 0..1000 {
        let stop = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                outcome.out.push((port, data.to_vec()));
                continue;
            }
            Ok(VcpuExit::Hypercall(h)) => {
                let args = [h.args[0], h.args[1], h.args[2]];
                outcome.hypercalls.push((h.nr, args));
                *h.ret = answer(h.nr, args);
                continue;
            }
            Ok(VcpuExit::Hlt) => Stop::Halt,
            Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                Stop::MemoryFault { flags, gpa, size }
            }
            Ok(other) => Stop::Unexpected(format!("{other:?}")),
            Err(e) => Stop::Unexpected(format!("KVM_RUN: {e}")),
        };
        outcome.stop = Some(stop);
        return outcome;
    }
    outcome.stop = Some(Stop::Unexpected("more than 1000 exits".into()));
    outcome
}
