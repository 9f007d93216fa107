// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What veil's conversions and host accesses cost against baselines measured in the same
//! run.
//!
//! - Round trip shared -> private -> shared of 4 KiB and 2 MiB on guest_memfd, in-place
//!   flavor with `Discard`, against `mprotect` + punch hole issued directly on a second
//!   guest_memfd mapped the same way. Before each round trip (untimed) every page of the
//!   range is written, so both sides punch populated memory. Each conversion of one
//!   range back and forth overwrites the one before, which veil-attrs need not replay on
//!   its other copy of the map; a note line also times two 4 KiB pages interleaved,
//!   where every conversion is replayed, and another the 4 KiB round trip with its
//!   system calls skipped: veil's own work with its code and data in the caches, which
//!   the real calls in between evict.
//! - Checkerboard: a 1 GiB range whose 262,144 pages alternate private and shared,
//!   converted to all-shared, in the attributes flavor (recording fake of the ioctl) and
//!   in-place with `Preserve`, with the calls veil issued counted.
//! - Host reads: 16-byte and 4 KiB reads through `vm-memory`'s `Bytes::read_slice`, as a
//!   device model reads descriptors and buffers, from an emulated region (a memfd)
//!   against `vm-memory`'s own `GuestMemoryMmap` over a memfd mapped the same way.
//! - Conversions behind a slow reader: two device threads read 16-byte descriptors from
//!   one buffer while the guest side converts single pages elsewhere to private and back
//!   (emulated flavor). In one round every read drops its slice at once; in the other,
//!   one read in 64 of each thread holds its slice across three thread yields, as a device that blocks
//!   mid-access does. Conversions far from the buffer should not notice.
//!
//! Conversions need `/dev/kvm` with mmap-able guest_memfd (and, for the in-place
//! checkerboard, a `vm.max_map_count` above the 131,072 mappings alternate protections
//! need: the bench raises it for the run when it can, and puts it back); host reads need
//! no KVM.
//!
//! `cargo bench -p veil-memory -- 4KiB` runs one workload (`4KiB`, `2MiB`,
//! `checkerboard`, `host-read`, or one size of it: `host-read-16B`, `host-read-4KiB`;
//! `slow-reader`).
//! Each side of a comparison is one function that is never inlined, `veil_round_trip`
//! and `raw_round_trip` (`veil_host_reads` and `vm_memory_host_reads` for host reads), so
//! that an instruction profile tells them apart: run the bench binary as
//! `valgrind --tool=callgrind <binary> --bench 4KiB` and compare the two functions'
//! inclusive counts per call (user-space instructions only; the kernel's work is the
//! same on both sides).

use std::hint::black_box;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_create_guest_memfd;
use kvm_ioctls::{Kvm, VmFd};
use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE};
use veil_memory::vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap,
};
use veil_memory::{
    ContentPolicy, ConversionStats, Flavor, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP,
    HostCaps, HostSafeMemory, KernelSyscalls, KvmSideMapping, RecordingAttributesVm, RegionSpec,
    Syscall, Syscalls,
};

const GIB: u64 = 1 << 30;
const MAX_MAP_COUNT: &str = "/proc/sys/vm/max_map_count";

fn check(ret: libc::c_int, what: &str) {
    assert!(ret == 0, "{what}: {}", std::io::Error::last_os_error());
}

/// The baseline: a guest_memfd mapped like a region's host view, converted with the
/// same system calls veil issues, called directly.
struct Raw {
    fd: OwnedFd,
    ptr: *mut u8,
    /// The KVM-side mapping veil also keeps on hosts that need it (same file mapped
    /// twice, so hole punching has the same mappings to zap).
    kvm_side: Option<*mut u8>,
    len: usize,
}

impl Raw {
    fn new(vm: &VmFd, len: u64, kvm_side: bool) -> Raw {
        let gmem = kvm_create_guest_memfd {
            size: len,
            flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
            reserved: [0; 6],
        };
        let raw = vm.create_guest_memfd(gmem).expect("guest_memfd");
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let len = len as usize;
        let map = || {
            // SAFETY: a fresh shared mapping of the whole file at a kernel-chosen address.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            ptr.cast::<u8>()
        };
        let ptr = map();
        let kvm_side = kvm_side.then(map);
        Raw {
            fd,
            ptr,
            kvm_side,
            len,
        }
    }

    fn protect(&self, off: u64, len: u64, prot: libc::c_int) {
        // SAFETY: inside our own mapping; nothing references it.
        let r = unsafe { libc::mprotect(self.ptr.add(off as usize).cast(), len as usize, prot) };
        check(r, "mprotect");
    }

    fn punch(&self, off: u64, len: u64) {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: plain system call on our descriptor.
        let r = unsafe { libc::fallocate(self.fd.as_raw_fd(), mode, off as i64, len as i64) };
        check(r, "fallocate");
    }

    fn touch(&self, off: u64, len: u64) {
        touch(self.ptr.wrapping_add(off as usize), len);
    }
}

/// What veil's in-place `Discard` round trip issues: to-private is mprotect(NONE) +
/// punch, to-shared is mprotect(RW) + punch.
#[inline(never)]
fn raw_round_trip(raw: &Raw, off: u64, len: u64) {
    raw.protect(off, len, libc::PROT_NONE);
    raw.punch(off, len);
    raw.protect(off, len, libc::PROT_READ | libc::PROT_WRITE);
    raw.punch(off, len);
}

/// A round trip through veil: shared -> private -> shared.
#[inline(never)]
fn veil_round_trip(mem: &HostSafeMemory, range: FrameRange) {
    black_box(mem.convert(range, Attributes::PRIVATE).unwrap());
    black_box(mem.convert(range, Attributes::empty()).unwrap());
}

/// Round trips of two pages interleaved: both to private, then both to shared. No
/// conversion overwrites the one before it, so veil-attrs replays each on its other copy.
#[inline(never)]
fn veil_interleaved(mem: &HostSafeMemory, pages: [FrameRange; 2]) {
    for to in [Attributes::PRIVATE, Attributes::empty()] {
        for page in pages {
            black_box(mem.convert(page, to).unwrap());
        }
    }
}

/// [`veil_interleaved`]'s system calls, issued directly.
#[inline(never)]
fn raw_interleaved(raw: &Raw, offs: [u64; 2]) {
    for prot in [libc::PROT_NONE, libc::PROT_READ | libc::PROT_WRITE] {
        for off in offs {
            raw.protect(off, PAGE_SIZE, prot);
            raw.punch(off, PAGE_SIZE);
        }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        for p in std::iter::once(self.ptr).chain(self.kvm_side) {
            // SAFETY: unmapping our own mapping once.
            unsafe { libc::munmap(p.cast(), self.len) };
        }
    }
}

/// Writes one byte per page, so the pages are populated.
fn touch(ptr: *mut u8, len: u64) {
    for off in (0..len).step_by(PAGE_SIZE as usize) {
        // SAFETY: callers pass shared, read-write memory of `len` bytes.
        unsafe { ptr.add(off as usize).write_volatile(1) };
    }
}

/// How long `f` takes.
fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Median time of one round trip, in ns, for veil and raw. The two alternate one
/// operation at a time (and which goes first alternates too), so that load from
/// elsewhere on the machine hits both alike; medians ignore the operations that a
/// preemption or another process's burst landed on.
fn measure(
    iters: u32,
    mut veil: impl FnMut() -> Duration,
    mut raw: impl FnMut() -> Duration,
) -> (f64, f64) {
    let mut v = Vec::with_capacity(iters as usize);
    let mut r = Vec::with_capacity(iters as usize);
    for i in 0..iters {
        if i % 2 == 0 {
            v.push(veil());
            r.push(raw());
        } else {
            r.push(raw());
            v.push(veil());
        }
    }
    let median = |mut x: Vec<Duration>| {
        x.sort();
        x[x.len() / 2].as_nanos() as f64
    };
    (median(v), median(r))
}

/// What veil-attrs alone costs per round trip (two `ConcurrentAttrMap::set`s of one page
/// in a map of three runs): part of veil's overhead, printed so it can be told apart.
fn attrs_round_trip() -> f64 {
    use veil_memory::veil_attrs::{AttrMap, ConcurrentAttrMap};
    let map = ConcurrentAttrMap::new(AttrMap::new(64 << 20).expect("map"));
    let page = FrameRange::new(Gfn(4096), 1).unwrap();
    let n = 200_000;
    let t = Instant::now();
    for _ in 0..n {
        black_box(map.set(page, Attributes::PRIVATE).unwrap());
        black_box(map.set(page, Attributes::empty()).unwrap());
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

/// Skips every system call: what is left of a conversion is veil's own work.
struct NoCalls;

impl Syscalls for NoCalls {
    fn issue(&self, _call: Syscall<'_>) -> std::io::Result<()> {
        Ok(())
    }
}

/// `len` bytes of in-place memory with `Discard` from guest-physical 0, whose system
/// calls go to `syscalls`: what the round trips convert.
fn round_trip_memory(
    vm: &VmFd,
    caps: &HostCaps,
    len: u64,
    syscalls: Arc<dyn Syscalls>,
) -> HostSafeMemory {
    HostSafeMemory::builder()
        .guest_memfd_source(vm)
        .kvm_side_mapping(caps.kvm_side_mapping.mapping)
        .syscalls(syscalls)
        .region(RegionSpec::new(0, len, Flavor::IN_PLACE).policy(ContentPolicy::Discard))
        .build()
        .expect("in-place memory")
}

/// Median ns of a round trip of `range` in memory like `round_trips`' whose system
/// calls are skipped, back to back, so veil's code and data stay in the caches.
fn own_work_round_trip(vm: &VmFd, caps: &HostCaps, len: u64, range: FrameRange) -> f64 {
    let mem = round_trip_memory(vm, caps, len, Arc::new(NoCalls));
    let mut batches: Vec<f64> = (0..101)
        .map(|_| timed(|| (0..1000).for_each(|_| veil_round_trip(&mem, range))))
        .map(|t| t.as_nanos() as f64 / 1000.0)
        .collect();
    batches.sort_by(f64::total_cmp);
    batches[batches.len() / 2]
}

fn round_trips(vm: &VmFd, caps: &HostCaps, wanted: impl Fn(&str) -> bool) {
    for (name, size, iters) in [("4KiB", PAGE_SIZE, 30_000), ("2MiB", 2 << 20, 1000)] {
        if !wanted(name) {
            continue;
        }
        let len = 64 << 20;
        let mem = round_trip_memory(vm, caps, len, Arc::new(KernelSyscalls));
        let separate = caps.kvm_side_mapping.mapping == KvmSideMapping::Separate;
        let raw = Raw::new(vm, len, separate);
        let off = 16 << 20;
        let range = FrameRange::from_gpa(off, size).unwrap();
        let host = mem.get_host_address(GuestAddress(off)).unwrap();
        let before = mem.stats();
        let (v, r) = measure(
            iters,
            || {
                touch(host, size);
                timed(|| veil_round_trip(&mem, range))
            },
            || {
                raw.touch(off, size);
                timed(|| raw_round_trip(&raw, off, size))
            },
        );
        // Same calls on both sides: 2 mprotect + 2 punches per round trip.
        let calls = mem.stats().since(&before);
        let trips = u64::from(iters);
        assert_eq!((calls.protections, calls.discards), (2 * trips, 2 * trips));
        println!(
            "memory-bench: {name}: veil {v:.0} ns/op raw {r:.0} ns/op overhead {:.1}%",
            (v - r) / r * 100.0
        );
        if size == PAGE_SIZE {
            let a = attrs_round_trip();
            println!(
                "memory-bench: note: {name}: of veil's {:.0} ns/op over raw, veil-attrs alone \
                 takes {a:.0} ns/op (two ConcurrentAttrMap::set calls, measured on their own)",
                v - r
            );
            let own = own_work_round_trip(vm, caps, len, range);
            println!(
                "memory-bench: note: {name}: veil's own work with its system calls skipped \
                 takes {own:.0} ns/op (warm caches; between real calls it runs colder)"
            );
            // A second page in another leaf, mid-leaf: no conversion covers the last.
            let offs = [off, 40 << 20];
            let pages = offs.map(|o| FrameRange::from_gpa(o, PAGE_SIZE).unwrap());
            let hosts = offs.map(|o| mem.get_host_address(GuestAddress(o)).unwrap());
            let (v, r) = measure(
                iters / 2,
                || {
                    hosts.iter().for_each(|&h| touch(h, PAGE_SIZE));
                    timed(|| veil_interleaved(&mem, pages)) / 2
                },
                || {
                    offs.iter().for_each(|&o| raw.touch(o, PAGE_SIZE));
                    timed(|| raw_interleaved(&raw, offs)) / 2
                },
            );
            println!(
                "memory-bench: note: {name}: two pages interleaved, each conversion replayed: \
                 veil {v:.0} ns/op raw {r:.0} ns/op overhead {:.1}% (not a target)",
                (v - r) / r * 100.0
            );
        }
    }
}

/// Reads `buf.len()` bytes at each of `addrs` through `vm-memory`'s `Bytes`.
#[inline(always)]
fn host_reads<M: GuestMemory>(mem: &M, addrs: &[GuestAddress], buf: &mut [u8]) {
    for &addr in addrs {
        mem.read_slice(buf, addr).unwrap();
        black_box(&mut *buf);
    }
}

/// [`host_reads`] from veil's memory.
#[inline(never)]
fn veil_host_reads(mem: &HostSafeMemory, addrs: &[GuestAddress], buf: &mut [u8]) {
    host_reads(mem, addrs, buf);
}

/// The same reads through veil's own [`HostSafeMemory::host_read`], which copies under a
/// lease without making `vm-memory` slices.
#[inline(never)]
fn veil_own_host_reads(mem: &HostSafeMemory, addrs: &[GuestAddress], buf: &mut [u8]) {
    for &addr in addrs {
        mem.host_read(addr.0, buf).unwrap();
        black_box(&mut *buf);
    }
}

/// [`host_reads`] from `vm-memory`'s own memory: the baseline.
#[inline(never)]
fn vm_memory_host_reads(mem: &GuestMemoryMmap, addrs: &[GuestAddress], buf: &mut [u8]) {
    host_reads(mem, addrs, buf);
}

/// Host reads of 16 bytes (a virtio descriptor) and of 4 KiB, one at a time, from an
/// emulated region against `vm-memory`'s `GuestMemoryMmap` over a memfd of the same size
/// mapped shared the same way. veil's memory has one private page elsewhere, so its
/// attribute map is not uniform.
fn host_reads_against_vm_memory(wanted: impl Fn(&str) -> bool) {
    const LEN: u64 = 64 << 20;
    const BASE: u64 = 16 << 20;
    let mem = HostSafeMemory::builder()
        .region(RegionSpec::new(0, LEN, Flavor::EMULATED).policy(ContentPolicy::Preserve))
        .build()
        .expect("emulated memory");
    mem.convert_gpa(32 << 20, PAGE_SIZE, Attributes::PRIVATE)
        .expect("one private page");
    let memfd = {
        // SAFETY: plain system call with a static name; the result is checked.
        let raw = unsafe { libc::memfd_create(c"vm-memory-baseline".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(
            raw >= 0,
            "memfd_create: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a new descriptor nothing else owns.
        std::fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) })
    };
    memfd.set_len(LEN).expect("memfd size");
    let baseline = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(0),
        LEN as usize,
        Some(FileOffset::new(memfd, 0)),
    )])
    .expect("vm-memory memory");
    // Both sides populated, so no read takes a page fault.
    let zeros = vec![0u8; 1 << 20];
    for gpa in (BASE..BASE + (1 << 20)).step_by(zeros.len()) {
        mem.write_slice(&zeros, GuestAddress(gpa)).unwrap();
        baseline.write_slice(&zeros, GuestAddress(gpa)).unwrap();
    }
    // 16 bytes: a descriptor table's 256 entries; 4 KiB: 16 consecutive pages.
    for (name, size, count, batches) in [("16B", 16, 256, 20_000), ("4KiB", 4096, 16, 20_000)] {
        let name = format!("host-read-{name}");
        if !wanted("host-read") && !wanted(&name) {
            continue;
        }
        let addrs: Vec<GuestAddress> = (0..count)
            .map(|i| GuestAddress(BASE + i * size as u64))
            .collect();
        let (mut vbuf, mut bbuf) = (vec![0u8; size], vec![0u8; size]);
        // ns per read of `veil_side` and of the baseline, measured alternately.
        let mut per_read = |veil_side: fn(&HostSafeMemory, &[GuestAddress], &mut [u8])| {
            let (v, b) = measure(
                batches,
                || timed(|| veil_side(&mem, &addrs, &mut vbuf)),
                || timed(|| vm_memory_host_reads(&baseline, &addrs, &mut bbuf)),
            );
            (v / count as f64, b / count as f64)
        };
        let (v, b) = per_read(veil_host_reads);
        println!(
            "memory-bench: {name}: veil {v:.1} ns/op vm-memory {b:.1} ns/op ratio {:.2}x",
            v / b
        );
        let (o, b) = per_read(veil_own_host_reads);
        println!(
            "memory-bench: note: {name} through HostSafeMemory::host_read (no vm-memory \
             slices): veil {o:.1} ns/op vm-memory {b:.1} ns/op ratio {:.2}x",
            o / b
        );
    }
}

/// Conversions to private and back of single pages far from a buffer that two device
/// threads read (with the converting thread, more threads than the machine's two cores),
/// per second, with the readers dropping every slice at once (`slow` false) or holding
/// one slice in 64 across three yields (`slow` true), for `window`.
fn conversions_beside_reader(mem: &HostSafeMemory, slow: bool, window: Duration) -> u64 {
    /// The device's buffer: a descriptor table of 256 entries at 16 MiB.
    const BUFFER: u64 = 16 << 20;
    /// The guest converts the pages of [32 MiB, 48 MiB), one at a time.
    const CONVERTED: u64 = 32 << 20;
    const CONVERTED_PAGES: u64 = (16 << 20) / PAGE_SIZE;
    let stop = AtomicBool::new(false);
    thread::scope(|s| {
        for device in 0..2u64 {
            let stop = &stop;
            s.spawn(move || {
                let mut buf = [0u8; 16];
                let mut n = device * 128;
                while !stop.load(Ordering::Relaxed) {
                    let addr = GuestAddress(BUFFER + (n % 256) * 16);
                    let slice = mem.get_slice(addr, buf.len()).unwrap();
                    if slow && n % 64 == 0 {
                        for _ in 0..3 {
                            thread::yield_now();
                        }
                    }
                    slice.copy_to(&mut buf);
                    drop(slice);
                    black_box(&mut buf);
                    n += 1;
                }
            });
        }
        let start = Instant::now();
        let mut done = 0;
        while start.elapsed() < window {
            let page = Gfn((CONVERTED >> 12) + done % CONVERTED_PAGES);
            let range = FrameRange::new(page, 1).unwrap();
            black_box(mem.convert(range, Attributes::PRIVATE).unwrap());
            black_box(mem.convert(range, Attributes::empty()).unwrap());
            done += 1;
        }
        stop.store(true, Ordering::Relaxed);
        // Two conversions per round trip, per second.
        (2 * done) as f64 / start.elapsed().as_secs_f64()
    }) as u64
}

/// [`conversions_beside_reader`] without and with the slow reader, in alternating
/// windows so that load from elsewhere on the machine hits both alike.
fn conversions_behind_slow_reader() {
    let mem = HostSafeMemory::builder()
        .region(RegionSpec::new(0, 64 << 20, Flavor::EMULATED).policy(ContentPolicy::Preserve))
        .build()
        .expect("emulated memory");
    let window = Duration::from_millis(500);
    let (mut quick, mut slow) = (0, 0);
    for _ in 0..4 {
        quick += conversions_beside_reader(&mem, false, window);
        slow += conversions_beside_reader(&mem, true, window);
    }
    let (quick, slow) = (quick / 4, slow / 4);
    println!(
        "memory-bench: slow-reader: conversions elsewhere without the slow reader {quick} /s \
         with it {slow} /s ratio {:.2}x target <= 1.2x",
        quick as f64 / slow.max(1) as f64
    );
}

/// Raises `vm.max_map_count` to at least `want` for the run; the old value to restore.
fn raise_max_map_count(want: u64) -> Option<u64> {
    let old: u64 = std::fs::read_to_string(MAX_MAP_COUNT)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if old >= want {
        return None;
    }
    match std::fs::write(MAX_MAP_COUNT, want.to_string()) {
        Ok(()) => Some(old),
        Err(e) => {
            println!("memory-bench: note: cannot raise {MAX_MAP_COUNT} from {old} to {want}: {e}");
            None
        }
    }
}

/// Converts `whole`, a checkerboard of `pages` pages, to shared, prints how long it took
/// and the calls it issued, and returns those.
fn checkerboard_to_shared(
    label: &str,
    mem: &HostSafeMemory,
    whole: FrameRange,
    pages: u64,
) -> ConversionStats {
    let before = mem.stats();
    let t = Instant::now();
    let done = mem.convert(whole, Attributes::empty()).unwrap();
    let took = t.elapsed();
    let c = mem.stats().since(&before);
    assert_eq!(done.pages_changed, pages / 2);
    println!(
        "memory-bench: checkerboard: {label}: {} pages, {} runs to shared in {:.1} ms: {} \
         calls ({} KVM_SET_MEMORY_ATTRIBUTES, {} discard, {} mprotect) target <= 4",
        pages,
        pages / 2,
        took.as_secs_f64() * 1e3,
        c.total(),
        c.set_memory_attributes,
        c.discards,
        c.protections
    );
    c
}

fn checkerboard(vm: &VmFd, caps: &HostCaps) {
    let pages = GIB / PAGE_SIZE;
    let whole = FrameRange::new(Gfn(0), pages).unwrap();
    let privates: Vec<FrameRange> = (0..pages)
        .step_by(2)
        .map(|p| FrameRange::new(Gfn(p), 1).unwrap())
        .collect();

    // Attributes flavor: real guest_memfd (private side) and memfd, fake ioctl.
    let fake = Arc::new(RecordingAttributesVm::new());
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(vm)
        .attributes_vm(fake.clone())
        .region(RegionSpec::new(0, GIB, Flavor::ATTRIBUTES))
        .build()
        .expect("attributes memory");
    mem.convert_ranges(&privates, Attributes::PRIVATE).unwrap();
    assert_eq!(mem.attributes().run_count() as u64, pages);
    fake.clear();
    let c = checkerboard_to_shared("attributes (fake ioctl)", &mem, whole, pages);
    assert_eq!(fake.call_count() as u64, c.set_memory_attributes);
    drop(mem);

    // In-place, Preserve: alternate protections need one mapping per page.
    let restore = raise_max_map_count(pages + 65536);
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(vm)
        .kvm_side_mapping(caps.kvm_side_mapping.mapping)
        .region(RegionSpec::new(0, GIB, Flavor::IN_PLACE).policy(ContentPolicy::Preserve))
        .build()
        .expect("in-place memory");
    match mem.convert_ranges(&privates, Attributes::PRIVATE) {
        Ok(_) => {
            checkerboard_to_shared("in-place preserve", &mem, whole, pages);
        }
        Err(e) => println!(
            "memory-bench: checkerboard: in-place preserve: setting up the checkerboard \
             failed: {e} ({:?}); raise {MAX_MAP_COUNT}",
            e.errno()
        ),
    }
    drop(mem);
    if let Some(old) = restore {
        let _ = std::fs::write(MAX_MAP_COUNT, old.to_string());
    }
}

fn main() {
    // `cargo test --benches` runs this with --test-ish flags; only measure under
    // `cargo bench` (which passes --bench).
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory-bench: skipped (run with cargo bench)");
        return;
    }
    // `cargo bench -p veil-memory -- 4KiB` runs one workload.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    println!("memory-bench: note: a shared 2-core machine; numbers are noisy");
    if ["host-read", "host-read-16B", "host-read-4KiB"]
        .into_iter()
        .any(&wanted)
    {
        host_reads_against_vm_memory(wanted);
    }
    if ["4KiB", "2MiB", "checkerboard"].into_iter().any(&wanted) {
        kvm_workloads(&wanted);
    }
    // Last: its thousands of single-page protections leave the process's address space
    // slower to change, which the round trips measured after it showed as 5 points of
    // overhead more.
    if wanted("slow-reader") {
        conversions_behind_slow_reader();
    }
}

/// The round trips and the checkerboard, on a VM of this host's KVM.
fn kvm_workloads(wanted: &dyn Fn(&str) -> bool) {
    let Ok(kvm) = Kvm::new() else {
        println!("memory-bench: skipped: cannot open /dev/kvm");
        return;
    };
    let caps = HostCaps::probe_with(&kvm).expect("probe");
    if let Err(e) = caps.require(Flavor::IN_PLACE) {
        println!("memory-bench: skipped: {e}");
        return;
    }
    let vm = kvm.create_vm().expect("VM");
    round_trips(&vm, &caps, wanted);
    if wanted("checkerboard") {
        checkerboard(&vm, &caps);
    }
}
