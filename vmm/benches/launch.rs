// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Launch cost: from `VmBuilder::build` to the guest's first exit (its first `KVM_RUN`
//! returning), with all RAM private, against a bare kvm-ioctls + vm-memory program doing
//! the same memory setup without veil, for 1 GiB and 64 GiB guests. Target: at most
//! 1.10x.
//!
//! Both sides run the same 64-bit guest (`out 0x10, al; hlt` at 1 MiB, on identity page
//! tables), entered with the same CPUID, boot MSRs and FPU state, on memory set up the
//! way veil's in-place flavor does on this host: an mmap-able guest_memfd in a memory
//! slot, the host's view of it (and, where the host needs one, KVM's own mapping),
//! conversion exits enabled, all of it made private by taking the host view's access
//! away once the boot data is written. Each side asks KVM for its supported CPUID once
//! per process. veil also probes the host when it builds a VM; a VMM does that once and
//! passes the result to every build (`VmBuilder::caps`), so the rounds here do, and a
//! first round that probes is printed apart.
//!
//! veil runs each vCPU on a thread of its own, as every VMM does, so the bare program
//! that the target compares against does too: the ratio is what veil's setup costs, not
//! what a thread costs. A note line also compares a bare program that runs its vCPU on
//! the thread that launched it, which no VMM with more than one vCPU can do.
//!
//! Each round runs the three in a rotating order; a result is the median of the
//! per-round ratios, with a 95% confidence interval for that median (from the order
//! statistics of the ratios, so it assumes nothing about their distribution): on a
//! shared machine the interval says how far one run's median can be trusted.
//!
//! Prints `vmm-bench:` lines. Needs /dev/kvm with the in-place flavor; says why and
//! exits otherwise.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_CAP_EXIT_HYPERCALL, KVM_MAX_CPUID_ENTRIES, KVM_MEM_GUEST_MEMFD, Msrs,
    kvm_create_guest_memfd, kvm_enable_cap, kvm_segment, kvm_userspace_memory_region2,
};
use kvm_ioctls::{Kvm, VcpuExit};
use veil_memory::{
    ContentPolicy, Flavor, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, HostCaps,
    KvmSideMapping,
};
use veil_vcpu::x86_64::{boot_fpu, boot_msrs};
use veil_vcpu::{BoxError, FaultPolicy, IoHandler};
use veil_vmm::Vm;
use veil_vmm::veil_loader::BootSource;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const GIB: u64 = 1 << 30;
const CODE_GPA: u64 = 0x10_0000;
const PML4: u64 = 0x9000;
const GDT: u64 = 0x500;
/// `out 0x10, al; hlt`.
const GUEST: [u8; 3] = [0xe6, 0x10, 0xf4];
const ROUNDS: usize = 41;

/// A point in time on two clocks: the wall clock, and the CPU time of the whole process
/// (all threads, user and kernel), which a shared machine disturbs much less.
#[derive(Clone, Copy)]
struct Stamp(Instant, Duration);

impl Stamp {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        assert_eq!(r, 0, "clock_gettime");
        let cpu = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        Stamp(Instant::now(), cpu)
    }

    /// (wall, CPU) since `self`.
    fn elapsed(self) -> Cost {
        let now = Stamp::now();
        Cost {
            wall: now.0 - self.0,
            cpu: now.1.saturating_sub(self.1),
        }
    }
}

/// What one round took.
#[derive(Clone, Copy)]
struct Cost {
    wall: Duration,
    cpu: Duration,
}

/// Takes the veil round's end stamp at the guest's first exit, as the bare round takes
/// its own when its first `KVM_RUN` returns.
struct FirstExit(Stamp, Mutex<Option<Cost>>);

impl IoHandler for FirstExit {
    fn pio_write(&self, _: u16, _: &[u8]) -> Result<(), BoxError> {
        let cost = self.0.elapsed();
        self.1.lock().map_err(|_| "poisoned")?.get_or_insert(cost);
        Ok(())
    }
}

/// veil: build, launch with all RAM private, run until the first exit.
fn veil_round(size: u64, caps: Option<&HostCaps>) -> Cost {
    let start = Stamp::now();
    let mut builder = Vm::builder();
    if let Some(caps) = caps {
        builder = builder.caps(caps.clone());
    }
    let vm = builder
        .flavor(Flavor::IN_PLACE)
        .region(0, size, ContentPolicy::Preserve)
        .private_at_launch(true)
        .build()
        .expect("building the VM");
    let launched = vm
        .launch(&BootSource::flat(&GUEST, CODE_GPA), 1)
        .expect("launching");
    let exit = Arc::new(FirstExit(start, Mutex::new(None)));
    let set = vm
        .run(launched.vcpus, exit.clone(), FaultPolicy::Refuse)
        .expect("running");
    let report = set
        .wait_timeout(Duration::from_secs(30))
        .expect("the guest halts");
    let took = *exit.1.lock().expect("not poisoned");
    took.unwrap_or_else(|| panic!("the guest made no exit: {}", report.reason))
}

/// Identity page tables for the first 1 GiB (2 MiB pages) at `PML4`.
fn page_tables() -> Vec<u8> {
    let mut t = vec![0u8; 3 * 4096];
    let entry =
        |t: &mut Vec<u8>, at: usize, v: u64| t[at..at + 8].copy_from_slice(&v.to_le_bytes());
    entry(&mut t, 0, (PML4 + 0x1000) | 3);
    entry(&mut t, 0x1000, (PML4 + 0x2000) | 3);
    for i in 0..512u64 {
        entry(&mut t, 0x2000 + 8 * i as usize, (i << 21) | 0x83);
    }
    t
}

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: u8::from(code),
        g: 1,
        ..Default::default()
    }
}

/// The same without veil: kvm-ioctls and vm-memory, the memory set up as veil's in-place
/// flavor sets it up on this host. With `threaded` the vCPU runs on a thread of its own,
/// as veil's does (the target's baseline); without, on the launching thread.
fn bare_round(
    size: u64,
    kvm_mapping: bool,
    exit_hypercall: bool,
    cpuid: &CpuId,
    threaded: bool,
) -> Cost {
    let start = Stamp::now();
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm_with_type(0).expect("KVM_CREATE_VM");
    let gmem = vm
        .create_guest_memfd(kvm_create_guest_memfd {
            size,
            flags: GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
            ..Default::default()
        })
        .expect("KVM_CREATE_GUEST_MEMFD");
    // SAFETY: KVM just returned this descriptor and nothing else owns it.
    let file = unsafe { File::from_raw_fd(gmem) };
    let map = |file: &File| {
        MmapRegion::<()>::build(
            Some(FileOffset::new(file.try_clone().expect("dup"), 0)),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )
        .expect("mmap")
    };
    let view = map(&file);
    let kvm_side = kvm_mapping.then(|| map(&file));
    let host = view.as_ptr();
    let userspace = kvm_side.as_ref().map_or(host, |m| m.as_ptr());
    let memory = GuestMemoryMmap::from_regions(vec![
        GuestRegionMmap::new(view, GuestAddress(0)).expect("region"),
    ])
    .expect("guest memory");
    let slot = kvm_userspace_memory_region2 {
        slot: 0,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: 0,
        memory_size: size,
        userspace_addr: userspace as u64,
        guest_memfd_offset: 0,
        guest_memfd: gmem as u32,
        ..Default::default()
    };
    // SAFETY: the mappings and the guest_memfd live until the end of this function,
    // after the VM and its vCPU are dropped.
    unsafe { vm.set_user_memory_region2(slot) }.expect("KVM_SET_USER_MEMORY_REGION2");
    if exit_hypercall {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_EXIT_HYPERCALL,
            ..Default::default()
        };
        cap.args[0] = 1 << 12;
        vm.enable_cap(&cap).expect("KVM_ENABLE_CAP");
    }
    memory
        .write_slice(&page_tables(), GuestAddress(PML4))
        .expect("page tables");
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    memory
        .write_slice(&gdt_bytes, GuestAddress(GDT))
        .expect("gdt");
    memory
        .write_slice(&GUEST, GuestAddress(CODE_GPA))
        .expect("code");
    // All RAM private: the host view loses its access.
    // SAFETY: `host` maps `size` bytes that nothing in this process touches from here on.
    let r = unsafe { libc::mprotect(host.cast(), size as usize, libc::PROT_NONE) };
    assert_eq!(r, 0, "mprotect");

    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    vcpu.set_cpuid2(cpuid).expect("KVM_SET_CPUID2");
    // The boot MSRs and FPU state veil gives a vCPU, so that the guest starts in the
    // same state on both sides.
    let msrs = Msrs::from_entries(&boot_msrs()).expect("MSR list");
    vcpu.set_msrs(&msrs).expect("KVM_SET_MSRS");
    vcpu.set_fpu(&boot_fpu()).expect("KVM_SET_FPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs = segment(0x08, true);
    let data = segment(0x10, false);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.gdt.base = GDT;
    sregs.gdt.limit = 23;
    sregs.cr3 = PML4;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8000_0011; // PG | ET | PE
    sregs.efer = 0x500; // LMA | LME
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = CODE_GPA;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
    let run = move || {
        let mut vcpu = vcpu;
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x10, _) => {}
            other => panic!("unexpected exit {other:?}"),
        }
        start.elapsed()
    };
    let took = if threaded {
        std::thread::scope(|s| s.spawn(run).join().expect("the vCPU thread"))
    } else {
        run()
    };
    drop(vm);
    drop(kvm_side);
    drop(memory);
    took
}

/// The median of `ratios` and a 95% confidence interval for it: the order statistics
/// whose ranks a binomial(n, 1/2) count reaches with 2.5% probability on each side
/// (normal approximation, good from about 20 rounds).
fn median_with_interval(ratios: &[f64]) -> (f64, f64, f64) {
    let mut v = ratios.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let half_width = 1.96 * (n as f64).sqrt() / 2.0;
    let low = ((n as f64 / 2.0 - half_width).floor() as usize).clamp(1, n) - 1;
    let high = ((n as f64 / 2.0 + half_width).ceil() as usize).clamp(1, n - 1);
    (v[n / 2], v[low], v[high])
}

/// One round's three costs: veil, the bare program with its vCPU on a thread of its
/// own, and the bare program with its vCPU on the launching thread.
#[derive(Clone, Copy)]
struct Round {
    veil: Cost,
    threaded: Cost,
    inline: Cost,
}

fn main() {
    // `cargo test --benches` and CI's `--no-run` build this; only `cargo bench` times it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let caps = match HostCaps::probe() {
        Ok(c) => c,
        Err(e) => {
            println!("vmm-bench: launch: skipped, no usable /dev/kvm: {e}");
            return;
        }
    };
    if !caps
        .flavors
        .iter()
        .any(|f| f.flavor == Flavor::IN_PLACE && f.supported())
    {
        println!("vmm-bench: launch: skipped, the in-place flavor does not run here");
        return;
    }
    let kvm_mapping = caps.kvm_side_mapping.mapping == KvmSideMapping::Separate;
    let exit_hypercall = caps.map_gpa_range_exits();
    // veil asks KVM_GET_SUPPORTED_CPUID once per process (it is a fixed answer that
    // costs hundreds of microseconds here); so does the bare program.
    let cpuid = Kvm::new()
        .and_then(|kvm| kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES))
        .expect("KVM_GET_SUPPORTED_CPUID");
    println!(
        "vmm-bench: note: a shared 2-core machine; {ROUNDS} rounds per size, each running veil and both bare programs in a rotating order"
    );
    let first = veil_round(GIB, None);
    println!(
        "vmm-bench: note: launch: the first veil round in this process, probing the host: {:.2} ms wall, {:.2} ms CPU",
        first.wall.as_secs_f64() * 1e3,
        first.cpu.as_secs_f64() * 1e3
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for size in [GIB, 64 * GIB] {
        let bare = |threaded| bare_round(size, kvm_mapping, exit_hypercall, &cpuid, threaded);
        let mut rounds: Vec<Round> = Vec::new();
        for round in 0..ROUNDS {
            let (mut veil, mut threaded, mut inline) = (None, None, None);
            for side in 0..3 {
                match (round + side) % 3 {
                    0 => veil = Some(veil_round(size, Some(&caps))),
                    1 => threaded = Some(bare(true)),
                    _ => inline = Some(bare(false)),
                }
            }
            rounds.push(Round {
                veil: veil.expect("ran"),
                threaded: threaded.expect("ran"),
                inline: inline.expect("ran"),
            });
        }
        let gib = size / GIB;
        let ms_median = |f: &dyn Fn(&Round) -> Duration| {
            let v: Vec<f64> = rounds.iter().map(|r| ms(f(r))).collect();
            median_with_interval(&v).0
        };
        let ratios = |f: &dyn Fn(&Round) -> (Duration, Duration)| {
            let r: Vec<f64> = rounds
                .iter()
                .map(|r| {
                    let (a, b) = f(r);
                    a.as_secs_f64() / b.as_secs_f64()
                })
                .collect();
            median_with_interval(&r)
        };
        let (veil, bare) = (ms_median(&|r| r.veil.cpu), ms_median(&|r| r.threaded.cpu));
        let (ratio, low, high) = ratios(&|r| (r.veil.cpu, r.threaded.cpu));
        let verdict = if ratio <= 1.10 { "ok" } else { "MISSED" };
        println!(
            "vmm-bench: launch {gib} GiB all private: veil {veil:.3} ms bare {bare:.3} ms CPU time, ratio {ratio:.3}x (95% CI {low:.3}-{high:.3}; median of {ROUNDS} per-round ratios; target <= 1.10x) {verdict}"
        );
        let (wall, wall_low, wall_high) = ratios(&|r| (r.veil.wall, r.threaded.wall));
        println!(
            "vmm-bench: note: launch {gib} GiB, wall clock: veil {:.3} ms bare {:.3} ms ratio {wall:.3}x (95% CI {wall_low:.3}-{wall_high:.3})",
            ms_median(&|r| r.veil.wall),
            ms_median(&|r| r.threaded.wall),
        );
        let (inline_ratio, inline_low, inline_high) = ratios(&|r| (r.veil.cpu, r.inline.cpu));
        println!(
            "vmm-bench: note: launch {gib} GiB against a bare program whose vCPU runs on the launching thread: bare {:.3} ms CPU time, ratio {inline_ratio:.3}x (95% CI {inline_low:.3}-{inline_high:.3}; not the target)",
            ms_median(&|r| r.inline.cpu),
        );
    }
}
