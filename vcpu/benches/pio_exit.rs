// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Cost of a port-I/O exit through veil-vcpu's run loop, against a bare kvm-ioctls loop
//! running the same guest in the same process.
//!
//! The guest (`benches/pio_loop.S`) does 100,000 `out` instructions and halts. Rounds
//! alternate between the two loops, each on a fresh VM, and the result is printed as
//!
//! `vcpu-bench: pio-exit: veil <ns/exit> bare <ns/exit> overhead <percent>`
//!
//! The line compares CPU time per exit (user and kernel, where KVM runs the guest), fastest
//! round of each loop: on a shared machine wall-clock time mostly measures how long the
//! vCPU thread waited for a CPU, and noise only ever adds time. Medians and wall-clock
//! figures follow on stderr. Set `VEIL_BENCH_ROUNDS` to change the number of rounds per
//! loop (default 7).
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

const EXITS: u64 = 100_000;
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

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn overhead(veil: f64, bare: f64) -> f64 {
    (veil - bare) / bare * 100.0
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
    let rounds: usize = std::env::var("VEIL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(7);
    let per_exit = |d: Duration| d.as_nanos() as f64 / EXITS as f64;

    // Warm up both paths once (page faults, thread creation, caches), then alternate.
    bare(&kvm, &code);
    veil(&kvm, &code);
    let (mut b, mut v) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = bare(&kvm, &code);
            (x, veil(&kvm, &code))
        } else {
            let y = veil(&kvm, &code);
            (bare(&kvm, &code), y)
        };
        eprintln!(
            "vcpu-bench: round {round}: veil {:.0} ns/exit ({:.0} CPU), bare {:.0} ns/exit ({:.0} CPU)",
            per_exit(y.wall),
            per_exit(y.cpu),
            per_exit(x.wall),
            per_exit(x.cpu)
        );
        b.push(x);
        v.push(y);
    }
    let col = |s: &[Sample], f: fn(&Sample) -> Duration| -> Vec<f64> {
        s.iter().map(|x| per_exit(f(x))).collect()
    };
    let (bw, vw) = (col(&b, |s| s.wall), col(&v, |s| s.wall));
    let (bc, vc) = (col(&b, |s| s.cpu), col(&v, |s| s.cpu));
    let (bare_ns, veil_ns) = (min(&bc), min(&vc));
    println!(
        "vcpu-bench: pio-exit: veil {veil_ns:.0} bare {bare_ns:.0} overhead {:.2}%",
        overhead(veil_ns, bare_ns)
    );
    let (bcm, vcm) = (median(bc), median(vc));
    eprintln!(
        "vcpu-bench: pio-exit, CPU time, median of {rounds}: veil {vcm:.0} bare {bcm:.0} overhead {:.2}%",
        overhead(vcm, bcm)
    );
    let (bwm, vwm) = (min(&bw), min(&vw));
    eprintln!(
        "vcpu-bench: pio-exit, wall clock, fastest of {rounds}: veil {vwm:.0} bare {bwm:.0} overhead {:.2}%",
        overhead(vwm, bwm)
    );
    let (bwm, vwm) = (median(bw), median(vw));
    eprintln!(
        "vcpu-bench: pio-exit, wall clock, median of {rounds}: veil {vwm:.0} bare {bwm:.0} overhead {:.2}%",
        overhead(vwm, bwm)
    );
    ExitCode::SUCCESS
}
