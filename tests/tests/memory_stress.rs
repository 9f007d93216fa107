// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Concurrent conversions on real guest_memfd: after every round, veil's attributes, the
//! host view's protections and the contents agree page by page.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_ioctls::Kvm;
use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE};
use veil_memory::vm_memory::{GuestAddress, GuestMemoryBackend};
use veil_memory::{
    ContentPolicy, ConversionListener, Flavor, HostAccessError, HostCaps, HostSafeMemory,
    RegionSpec, StateChange, host_access_error,
};
use veil_tests::kvm_or_skip;

/// Pages per region; region 0 preserves, region 1 (right after it) discards.
const REGION_PAGES: u64 = 512;
const PAGES: u64 = 2 * REGION_PAGES;
const THREADS: u64 = 4;
const ROUNDS: u64 = 12;
const CONVERSIONS: u64 = 60;

/// Records every page whose state changed.
struct Touched(Vec<AtomicBool>);

impl ConversionListener for Touched {
    fn converted(&self, change: &StateChange) {
        assert_ne!(change.old, change.new);
        for p in change.range.start().0..change.range.end().0 {
            self.0[p as usize].store(true, Ordering::Relaxed);
        }
    }
}

fn marker(round: u64, page: u64) -> u8 {
    ((round * 31 + page * 7) % 251) as u8 + 1
}

/// The protection of each page of `[base, base + pages * 4 KiB)` from /proc/self/maps:
/// `true` where the host cannot read.
fn inaccessible_pages(base: u64, pages: u64) -> Vec<Option<bool>> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut out = vec![None; pages as usize];
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        let none = !perms.starts_with('r');
        for (p, slot) in out.iter_mut().enumerate() {
            let a = base + p as u64 * PAGE_SIZE;
            if s <= a && a < e {
                *slot = Some(none);
            }
        }
    }
    out
}

/// Loads one byte at `ptr` in a child; whether the child died of SIGSEGV.
fn faults_in_child(ptr: *const u8) -> bool {
    // SAFETY: fork in a test; the child only loads one byte and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: deliberate raw load, possibly of a PROT_NONE page.
        let v = unsafe { ptr.read_volatile() };
        // SAFETY: leave without running the parent's exit handlers.
        unsafe { libc::_exit(i32::from(v == 0)) };
    }
    assert!(pid > 0);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSEGV
}

#[test]
fn concurrent_conversions_agree_page_by_page() {
    if !kvm_or_skip("concurrent_conversions_agree_page_by_page") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    let vm_type = match caps.require(Flavor::IN_PLACE) {
        Ok(f) => f.vm_type.unwrap_or(0),
        Err(e) => {
            veil_tests::skip_unless_required(
                "concurrent_conversions_agree_page_by_page",
                &e.to_string(),
                veil_tests::REQUIRE_IN_PLACE,
            );
            return;
        }
    };
    let vm = kvm.create_vm_with_type(vm_type.into()).unwrap();
    let size = REGION_PAGES * PAGE_SIZE;
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(&vm)
        .kvm_side_mapping(caps.kvm_side_mapping.mapping)
        .region(RegionSpec::new(0, size, Flavor::IN_PLACE).policy(ContentPolicy::Preserve))
        .region(RegionSpec::new(size, size, Flavor::IN_PLACE).policy(ContentPolicy::Discard))
        .build()
        .unwrap();
    // The host view is contiguous: page p lives at view + p * 4 KiB.
    let view = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    let all = FrameRange::new(Gfn(0), PAGES).unwrap();

    for round in 0..ROUNDS {
        // Every page starts shared; give each a marker.
        for p in 0..PAGES {
            let page = vec![marker(round, p); PAGE_SIZE as usize];
            mem.host_write(p * PAGE_SIZE, &page).unwrap();
        }
        let touched = Arc::new(Touched(
            (0..PAGES).map(|_| AtomicBool::new(false)).collect(),
        ));
        let id = mem.subscribe(touched.clone()).id;
        // Even rounds: each thread in its own quarter (disjoint); odd rounds: anywhere
        // (overlapping, crossing the region boundary).
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let mem = &mem;
                s.spawn(move || {
                    let mut x = round * 1000 + t + 1;
                    let mut next = || {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        x >> 33
                    };
                    for _ in 0..CONVERSIONS {
                        let (lo, span) = if round % 2 == 0 {
                            (t * PAGES / THREADS, PAGES / THREADS)
                        } else {
                            (0, PAGES)
                        };
                        let pages = 1 + next() % 24;
                        let start = lo + next() % (span - pages);
                        let to = if next() % 2 == 0 {
                            Attributes::PRIVATE
                        } else {
                            Attributes::empty()
                        };
                        let r = FrameRange::new(Gfn(start), pages).unwrap();
                        mem.convert(r, to).unwrap();
                        // A host read racing with the others' conversions either
                        // succeeds or is refused; it never faults.
                        let mut b = [0u8; 64];
                        let gpa = start * PAGE_SIZE + 4064;
                        let _ = mem.host_read(gpa, &mut b);
                        // The same through vm-memory, with a subslice (a clone of the
                        // lease) outliving the slice it came from.
                        match mem.get_slice(GuestAddress(gpa), 64) {
                            Ok(slice) => {
                                let sub = slice.subslice(32, 32).unwrap();
                                drop(slice);
                                sub.copy_to(&mut b[..32]);
                            }
                            Err(e) => assert!(host_access_error(&e).is_some(), "{e}"),
                        }
                    }
                });
            }
        });

        // Attributes and host protections agree page by page.
        let snapshot = mem.attributes();
        let prot = inaccessible_pages(view, PAGES);
        let mut a_private = None;
        for p in 0..PAGES {
            let private = snapshot.get(Gfn(p)).unwrap().is_private();
            assert_eq!(
                prot[p as usize],
                Some(private),
                "round {round} page {p:#x}: private {private}, maps {:?}",
                prot[p as usize]
            );
            let read = mem.host_read(p * PAGE_SIZE, &mut [0u8; 8]);
            assert_eq!(
                matches!(read, Err(HostAccessError::Private { .. })),
                private,
                "round {round} page {p:#x}"
            );
            if private {
                a_private.get_or_insert(p);
            }
        }
        // A raw probe in a child: a private page faults, a shared one does not.
        if let Some(p) = a_private {
            assert!(faults_in_child((view + p * PAGE_SIZE) as *const u8));
        }
        if let Some(p) = (0..PAGES).find(|&p| !snapshot.get(Gfn(p)).unwrap().is_private()) {
            assert!(!faults_in_child((view + p * PAGE_SIZE) as *const u8));
        }

        // Back to shared; then contents: the preserving region kept every marker, the
        // discarding region zeroed exactly the pages that changed state.
        mem.convert(all, Attributes::empty()).unwrap();
        assert!(mem.unsubscribe(id));
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for p in 0..PAGES {
            mem.host_read(p * PAGE_SIZE, &mut page).unwrap();
            let discarded = p >= REGION_PAGES && touched.0[p as usize].load(Ordering::Relaxed);
            let want = if discarded { 0 } else { marker(round, p) };
            assert!(
                page.iter().all(|&b| b == want),
                "round {round} page {p:#x}: want {want:#x}, found {:#x}",
                page.iter().find(|&&b| b != want).copied().unwrap_or(0)
            );
        }
    }
    assert_eq!(mem.num_regions(), 1);
    drop(vm);
}
