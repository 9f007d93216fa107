// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Cost of a port-I/O exit through veil-vcpu's run loop, against a bare kvm-ioctls loop
//! running the same guest in the same process.
//!
//! The guest (`benches/pio_loop.S`) does 25,000 `out` instructions and halts. A round runs
//! it once through each loop, each on a fresh VM, one right after the other (bare first in
//! even rounds, veil first in odd ones), and gives one ratio: veil's CPU time per exit over
//! the bare loop's. CPU time (user and kernel, where KVM runs the guest) leaves out the time
//! the vCPU thread waited for a CPU, and pairing the two runs of a round cancels what drifts
//! more slowly than a round: the machine may be shared, and its speed changes from one
//! second to the next. The result is the median of the per-round ratios, with a 95%
//! confidence interval for that median from the order statistics (distribution-free: the
//! interval between the k-th smallest and k-th largest ratio, k from the binomial
//! distribution), printed as
//!
//! `vcpu-bench: pio-exit: veil <ns/exit> bare <ns/exit> overhead <percent> (95% CI <low>
//! to <high>, median of <n> per-round CPU-time ratios) (target <= 3%) <verdict>`
//!
//! where the two times are the medians of each loop's rounds, and the verdict is `ok` when
//! the whole interval is at or below the target, `MISSED` when it is all above, and
//! `undecided` when it straddles it. Rounds go on until the interval is at most 0.8
//! percentage points wide (at least 21 rounds, at most 151, about half a second each), so
//! that two runs agree to within about a point. Set `VEIL_BENCH_ROUNDS` to run exactly
//! that many rounds instead. Each round and the wall-clock figures go to stderr.
//!
//! Without `/dev/kvm` the benchmark says so and exits successfully; without binutils it
//! fails with a message naming the missing tool.

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use veil_attrs::FrameRange;
use veil_vcpu::{
    BoxError, ExitKind, FaultPolicy, GuestLayout, IoHandler, MapGpaRange, MemoryFault,
    MemoryHandler, RequestOutcome, Vcpu, VcpuEnd, VcpuSet,
};

const EXITS: u64 = 25_000;
const LOAD: u64 = 0x1000;
const MEM_SIZE: usize = 0x10000;
const PORT: u16 = 0x10;

/// Assembles the guest into a temporary directory with `as` and `ld`.
fn assemble() -> Result<Vec<u8>, String> {
    let dir = std::env::temp_dir().join(format!("veil-vcpu-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = assemble_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn assemble_in(dir: &Path) -> Result<Vec<u8>, String> {
    let src = dir.join("pio_loop.S");
    let obj = dir.join("pio_loop.o");
    let bin = dir.join("pio_loop.bin");
    std::fs::write(&src, include_str!("pio_loop.S")).map_err(|e| e.to_string())?;
    let run = |cmd: &mut Command, tool: &str| -> Result<(), String> {
        let status = cmd.status().map_err(|e| {
            format!("cannot run `{tool}` ({e}): the benchmark needs binutils (`as`, `ld`)")
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{tool}` failed ({status}): {cmd:?}"))
        }
    };
    run(
        Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src),
        "as",
    )?;
    run(
        Command::new("ld")
            .args(["-m", "elf_x86_64", "--oformat", "binary", "--build-id=none"])
            .arg(format!("-Ttext={LOAD:#x}"))
            .args(["-e", "_start", "-o"])
            .arg(&bin)
            .arg(&obj),
        "ld",
    )?;
    std::fs::read(&bin).map_err(|e| format!("cannot read {}: {e}", bin.display()))
}

/// Guest memory mapped for one VM; unmapped on drop.
struct Memory(*mut libc::c_void);

impl Drop for Memory {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `fresh_vm`; its VM's vCPUs no longer run.
        unsafe { libc::munmap(self.0, MEM_SIZE) };
    }
}

/// A VM with the guest loaded.
fn fresh_vm(kvm: &Kvm, code: &[u8]) -> (VmFd, Memory) {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    // SAFETY: a fresh anonymous mapping, checked below.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED, "mmap");
    let memory = Memory(host);
    assert!(LOAD as usize + code.len() <= MEM_SIZE);
    // SAFETY: in bounds of the mapping (checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(
            code.as_ptr(),
            host.cast::<u8>().add(LOAD as usize),
            code.len(),
        )
    };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the mapping outlives the VM's vCPUs (`Memory` is dropped after them).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
    (vm, memory)
}

/// Points a vCPU at the guest's first instruction, in real mode.
fn at_entry(vcpu: &VcpuFd) {
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = LOAD;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
}

/// The device both loops feed: counts port writes.
#[derive(Default)]
struct Sink(AtomicU64);

impl Sink {
    fn write(&self, port: u16, data: &[u8]) {
        black_box(data);
        if port == PORT {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl IoHandler for Sink {
    fn pio_read(&self, _: u16, data: &mut [u8]) -> Result<(), BoxError> {
        data.fill(0);
        Ok(())
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        self.write(port, data);
        Ok(())
    }
    fn mmio_read(&self, _: u64, data: &mut [u8]) -> Result<(), BoxError> {
        data.fill(0);
        Ok(())
    }
    fn mmio_write(&self, _: u64, _: &[u8]) -> Result<(), BoxError> {
        Ok(())
    }
}

struct NoMemory(GuestLayout);

impl MemoryHandler for NoMemory {
    fn layout(&self) -> &GuestLayout {
        &self.0
    }
    fn map_gpa_range(&self, _: &MapGpaRange) -> Result<RequestOutcome, BoxError> {
        Ok(RequestOutcome::Refused)
    }
    fn memory_fault(&self, _: &MemoryFault, _: FrameRange) -> Result<u64, BoxError> {
        Ok(0)
    }
}

/// The cost of one run: wall-clock time, and CPU time of the whole process (in effect the
/// vCPU thread's: the main thread sleeps in `join`/`wait`). CPU time, user and kernel
/// (where KVM emulates the guest), does not count time spent waiting for a CPU, so it is
/// the steadier of the two on a shared machine.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: Duration,
}

fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn measure(f: impl FnOnce()) -> Sample {
    let (wall, cpu) = (Instant::now(), process_cpu_time());
    f();
    Sample {
        wall: wall.elapsed(),
        cpu: process_cpu_time().saturating_sub(cpu),
    }
}

/// One run of the bare kvm-ioctls loop, on its own thread like veil's.
fn bare(kvm: &Kvm, code: &[u8]) -> Sample {
    let (vm, _memory) = fresh_vm(kvm, code);
    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    at_entry(&vcpu);
    let sink = Arc::new(Sink::default());
    let s = sink.clone();
    let sample = measure(|| {
        let handle = std::thread::spawn(move || {
            loop {
                match vcpu.run().expect("KVM_RUN") {
                    VcpuExit::IoOut(port, data) => s.write(port, data),
                    VcpuExit::Hlt => break,
                    other => panic!("unexpected exit {other:?}"),
                }
            }
        });
        handle.join().expect("bare loop thread");
    });
    assert_eq!(sink.0.load(Ordering::Relaxed), EXITS);
    sample
}

/// One run through veil-vcpu's loop.
fn veil(kvm: &Kvm, code: &[u8]) -> Sample {
    let (vm, _memory) = fresh_vm(kvm, code);
    let vcpu = Vcpu::new(&vm, 0).expect("create vCPU");
    at_entry(vcpu.fd());
    let sink = Arc::new(Sink::default());
    let memory = Arc::new(NoMemory(GuestLayout::from_size(MEM_SIZE as u64)));
    let mut report = None;
    let sample = measure(|| {
        let set = VcpuSet::spawn(vec![vcpu], memory, sink.clone(), FaultPolicy::Refuse)
            .expect("spawn vCPU");
        report = Some(set.wait());
    });
    let report = report.expect("the run reported");
    assert!(
        matches!(report.vcpus[0].end, VcpuEnd::Halted),
        "{:?}",
        report.vcpus[0].end
    );
    assert_eq!(report.stats().count(ExitKind::PioOut), EXITS);
    assert_eq!(sink.0.load(Ordering::Relaxed), EXITS);
    sample
}

/// The target: veil's loop costs at most this much more per exit than the bare one.
const TARGET_PERCENT: f64 = 3.0;
/// Rounds run before the interval is looked at, and the most run when it stays wide.
const MIN_ROUNDS: usize = 21;
const MAX_ROUNDS: usize = 151;
/// Rounds stop once the 95% interval of the median overhead is this narrow.
const CI_WIDTH: f64 = 0.8;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `P(X < k)` for `X ~ Binomial(n, 1/2)`.
fn binomial_below(n: usize, k: usize) -> f64 {
    // Summed in log space: 2^-n underflows past n = 1074.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut total = 0.0;
    for i in 0..k.min(n + 1) {
        total += (ln_choose + ln_half_n).exp();
        ln_choose += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    total
}

/// A distribution-free 95% confidence interval for the median of `v`: the `k`-th smallest
/// and `k`-th largest values, for the largest `k` whose interval still covers the median
/// with probability at least 95% (`P(X < k) <= 2.5%`, `X ~ Binomial(n, 1/2)`). `None`
/// for fewer than 6 values, which no such interval covers at 95%.
fn median_interval(v: &[f64]) -> Option<(f64, f64)> {
    let n = v.len();
    let mut k = 0;
    while k < n / 2 && binomial_below(n, k + 1) <= 0.025 {
        k += 1;
    }
    if k == 0 {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    Some((v[k - 1], v[n - k]))
}

/// Percent more than the bare loop, for a ratio veil/bare.
fn percent(ratio: f64) -> f64 {
    (ratio - 1.0) * 100.0
}

fn main() -> ExitCode {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            println!("vcpu-bench: pio-exit: skipped, cannot open /dev/kvm: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let code = match assemble() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vcpu-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fixed: Option<usize> = std::env::var("VEIL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0);
    let per_exit = |d: Duration| d.as_nanos() as f64 / EXITS as f64;

    // Warm up both paths once (page faults, thread creation, caches), then pair them.
    bare(&kvm, &code);
    veil(&kvm, &code);
    let (mut b, mut v) = (Vec::new(), Vec::new());
    let (mut cpu_ratios, mut wall_ratios) = (Vec::new(), Vec::new());
    loop {
        let round = b.len();
        let (x, y) = if round % 2 == 0 {
            let x = bare(&kvm, &code);
            (x, veil(&kvm, &code))
        } else {
            let y = veil(&kvm, &code);
            (bare(&kvm, &code), y)
        };
        let (cpu, wall) = (
            y.cpu.as_secs_f64() / x.cpu.as_secs_f64(),
            y.wall.as_secs_f64() / x.wall.as_secs_f64(),
        );
        eprintln!(
            "vcpu-bench: round {round}: veil {:.0} ns/exit ({:.0} CPU), bare {:.0} ns/exit ({:.0} CPU), CPU overhead {:.2}%",
            per_exit(y.wall),
            per_exit(y.cpu),
            per_exit(x.wall),
            per_exit(x.cpu),
            percent(cpu),
        );
        b.push(x);
        v.push(y);
        cpu_ratios.push(cpu);
        wall_ratios.push(wall);
        let n = cpu_ratios.len();
        let done = match fixed {
            Some(rounds) => n >= rounds,
            None => {
                n >= MAX_ROUNDS
                    || (n >= MIN_ROUNDS
                        && median_interval(&cpu_ratios)
                            .is_some_and(|(lo, hi)| percent(hi) - percent(lo) <= CI_WIDTH))
            }
        };
        if done {
            break;
        }
    }
    let rounds = cpu_ratios.len();
    let col = |s: &[Sample], f: fn(&Sample) -> Duration| -> Vec<f64> {
        s.iter().map(|x| per_exit(f(x))).collect()
    };
    let (bare_ns, veil_ns) = (median(&col(&b, |s| s.cpu)), median(&col(&v, |s| s.cpu)));
    let overhead = percent(median(&cpu_ratios));
    let interval = match median_interval(&cpu_ratios) {
        Some((lo, hi)) => format!("95% CI {:.2}% to {:.2}%", percent(lo), percent(hi)),
        None => "too few rounds for a 95% CI".to_string(),
    };
    // Decided only when the whole interval lies on one side of the target.
    let verdict = match median_interval(&cpu_ratios) {
        Some((_, hi)) if percent(hi) <= TARGET_PERCENT => "ok",
        Some((lo, _)) if percent(lo) > TARGET_PERCENT => "MISSED",
        _ => "undecided",
    };
    println!(
        "vcpu-bench: pio-exit: veil {veil_ns:.0} bare {bare_ns:.0} overhead {overhead:.2}% ({interval}, median of {rounds} per-round CPU-time ratios) (target <= {TARGET_PERCENT}%) {verdict}"
    );
    let (bare_wall, veil_wall) = (median(&col(&b, |s| s.wall)), median(&col(&v, |s| s.wall)));
    let wall_interval = match median_interval(&wall_ratios) {
        Some((lo, hi)) => format!(" (95% CI {:.2}% to {:.2}%)", percent(lo), percent(hi)),
        None => String::new(),
    };
    eprintln!(
        "vcpu-bench: pio-exit, wall clock, medians of {rounds}: veil {veil_wall:.0} bare {bare_wall:.0}, per-round overhead {:.2}%{wall_interval}",
        percent(median(&wall_ratios)),
    );
    ExitCode::SUCCESS
}
