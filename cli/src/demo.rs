// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil demo`: a guest built into the binary (`cli/guest/demo.S`) whose RAM is private
//! from launch. It shares a page, writes a message the host reads and prints, and makes
//! the page private again; the host then shows that its checked read of the page is
//! refused and that an unchecked read through its own view faults (in a child process,
//! so veil survives it). Then every vCPU runs a burst of conversion round trips at once,
//! and a table says what they cost.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use veil_vmm::VmError;
use veil_vmm::seccomp::{self, ThreadKind};
use veil_vmm::veil_attrs::FrameRange;
use veil_vmm::veil_memory::{Flavor, HostAccessError, HostSafeMemory};
use veil_vmm::veil_vcpu::{BoxError, ExitKind, FaultPolicy, IoHandler, StopReason, VcpuEnd};

use crate::DemoArgs;
use crate::failure::{Failure, Status};
use crate::guest::{GuestVm, Setup, policy_name};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/demo_guest.rs"));
}

/// Guest memory: 16 MiB at 0.
const RAM: u64 = 16 << 20;
/// The page vCPU 0 shares for its message.
const MESSAGE_PAGE: u64 = 0x40_0000;
/// Where the vCPUs' burst areas start: per vCPU a stack page, then its burst pages.
const BURST_BASE: u64 = 0x80_0000;
const BURST_STRIDE: u64 = 0x10_0000;
/// Pages each burst request converts.
const PAGES_PER_REQUEST: u64 = 1;
/// What the guest writes into the page it shares (`message` in `demo.S`).
const MESSAGE: &[u8] = b"hello from a guest whose memory the host cannot read";
/// The ports of `demo.S`.
const PORT_SHARED: u16 = 0x11;
const PORT_PRIVATE: u16 = 0x12;
const PORT_DONE: u16 = 0x13;
/// How long the guest may take. On these machines a round trip costs tens of
/// microseconds; under full emulation, a few milliseconds.
const TIME_LIMIT: Duration = Duration::from_secs(120);

/// The first page of vCPU `index`'s burst pages (its stack is the page below).
fn burst_pages(index: u32) -> u64 {
    BURST_BASE + u64::from(index) * BURST_STRIDE + 0x1000
}

/// What the host saw of the guest, through the demo's ports.
struct DemoIo {
    memory: Arc<HostSafeMemory>,
    /// The bytes the host read from the shared message page.
    message: Mutex<Option<Result<Vec<u8>, HostAccessError>>>,
    /// The host's read of the message page once it was private again.
    private_read: Mutex<Option<Result<(), HostAccessError>>>,
    /// vCPUs that reported the end of their burst, and their failed requests.
    done: AtomicU64,
    failed_requests: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl IoHandler for DemoIo {
    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        match port {
            PORT_SHARED => {
                let mut buf = vec![0u8; MESSAGE.len()];
                let read = self.memory.host_read(MESSAGE_PAGE, &mut buf).map(|()| buf);
                *lock(&self.message) = Some(read);
            }
            PORT_PRIVATE => {
                let mut buf = vec![0u8; MESSAGE.len()];
                *lock(&self.private_read) = Some(self.memory.host_read(MESSAGE_PAGE, &mut buf));
            }
            PORT_DONE => {
                let failed = data
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map_or(u32::MAX, u32::from_le_bytes);
                self.done.fetch_add(1, Ordering::SeqCst);
                self.failed_requests
                    .fetch_add(u64::from(failed), Ordering::SeqCst);
            }
            _ => return Err(format!("the demo guest wrote to port {port:#x}").into()),
        }
        Ok(())
    }
}

/// One check the demo makes, and whether it passed.
struct Check {
    what: String,
    passed: bool,
}

fn check(checks: &mut Vec<Check>, passed: bool, what: impl Into<String>) {
    let what = what.into();
    println!("  {} {what}", if passed { "ok  " } else { "FAIL" });
    checks.push(Check { what, passed });
}

/// What an unchecked read of a page through the host view did, in a child process.
enum RawRead {
    /// The child was killed by this signal: the page is not mapped for the host.
    Fault(i32),
    /// The child read the page; `true` if it held the guest's message.
    Read { saw_message: bool },
}

/// Reads `MESSAGE.len()` bytes at `addr` (an address in this process's host view of
/// guest memory) in a child process, which a fault kills instead of veil.
fn raw_read_in_child(addr: u64) -> Result<RawRead, std::io::Error> {
    let ptr = addr as *const u8;
    // SAFETY: fork has no memory-safety preconditions. The child runs only
    // async-signal-safe code (volatile loads, comparisons with a static, `_exit`), as a
    // child of a multi-threaded process must.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        let mut same = true;
        for (i, &expected) in MESSAGE.iter().enumerate() {
            // SAFETY: none, deliberately: this is the unchecked access the demo shows.
            // `addr` is the host view of a page veil made inaccessible (a fault kills
            // this child only) or, in the attributes flavor, a mapped page of the shared
            // side, readable and `MESSAGE.len()` bytes long. The child exits right after.
            let byte = unsafe { std::ptr::read_volatile(ptr.add(i)) };
            same &= byte == expected;
        }
        // SAFETY: `_exit` ends the child without running the parent's atexit handlers
        // or destructors, which would be unsound after fork.
        unsafe { libc::_exit(i32::from(same)) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer and `pid` our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if libc::WIFSIGNALED(status) {
        Ok(RawRead::Fault(libc::WTERMSIG(status)))
    } else {
        Ok(RawRead::Read {
            saw_message: libc::WEXITSTATUS(status) == 1,
        })
    }
}

fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGBUS => "SIGBUS".into(),
        other => format!("signal {other}"),
    }
}

/// Runs `veil demo`.
pub fn run(args: &DemoArgs) -> Result<(), Failure> {
    let vm_failure = |doing: &str| {
        let doing = doing.to_string();
        move |e: VmError| Failure::vm(&doing, &e)
    };
    let guest_vm = GuestVm::build(&Setup {
        flavor: args.flavor,
        policy: None,
        ram: RAM,
        no_seccomp: args.no_seccomp,
    })?;
    let (vm, flavor) = (&guest_vm.vm, guest_vm.flavor);
    println!(
        "veil demo: a guest whose memory is private from launch\n\n  \
         backend {}, flavor {flavor}, policy {}, {} MiB of RAM, {} vCPUs\n  \
         transport {} ({})\n",
        vm.launch_technology().name(),
        policy_name(guest_vm.policy),
        RAM >> 20,
        args.vcpus,
        guest_vm.transport_name(),
        guest_vm.probe,
    );
    let launched = guest_vm.launch(embedded::CODE, embedded::LOAD, args.vcpus, |index, regs| {
        regs.rdi = u64::from(index);
        regs.r8 = MESSAGE_PAGE;
        regs.r9 = burst_pages(index);
        regs.r10 = args.rounds;
        regs.r11 = PAGES_PER_REQUEST;
    })?;

    let mut checks = Vec::new();
    let memory = vm.memory().clone();
    let attrs = memory.attributes();
    let all = FrameRange::from_gpa(0, RAM).map_err(|e| Failure::guest(e.to_string()))?;
    let private_pages: u64 = attrs
        .runs(all)
        .map_err(|e| Failure::guest(e.to_string()))?
        .filter(|r| r.state.attributes.is_private())
        .map(|r| r.range.pages())
        .sum();
    let shared: Vec<String> = launched
        .shared
        .iter()
        .map(|(r, why)| format!("{r} ({why})"))
        .collect();
    let shared_pages: u64 = launched.shared.iter().map(|(r, _)| r.len() / 4096).sum();
    check(
        &mut checks,
        private_pages + shared_pages == RAM / 4096,
        format!(
            "RAM private from launch: {} of {} pages{}",
            private_pages,
            RAM / 4096,
            if shared.is_empty() {
                String::new()
            } else {
                format!("; stayed shared: {}", shared.join(", "))
            }
        ),
    );

    let io = Arc::new(DemoIo {
        memory: memory.clone(),
        message: Mutex::new(None),
        private_read: Mutex::new(None),
        done: AtomicU64::new(0),
        failed_requests: AtomicU64::new(0),
    });
    let before = vm.stats();
    let started = Instant::now();
    let set = vm
        .run(launched.vcpus, io.clone(), FaultPolicy::Refuse)
        .map_err(vm_failure("starting the vCPUs"))?;
    let report = match set.wait_timeout(TIME_LIMIT) {
        Ok(report) => report,
        Err(set) => {
            set.stop();
            let report = set.wait();
            return Err(Failure::guest(format!(
                "the guest did not finish within {TIME_LIMIT:?}; its exits: {}",
                report.stats()
            )));
        }
    };
    let took = started.elapsed();

    // What the guest showed the host.
    match lock(&io.message).take() {
        Some(Ok(bytes)) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            println!("  guest says: \"{text}\"");
            check(
                &mut checks,
                bytes == MESSAGE,
                format!(
                    "the host read the guest's message from the page it shared ({MESSAGE_PAGE:#x})"
                ),
            );
        }
        Some(Err(e)) => check(
            &mut checks,
            false,
            format!("the host read the shared page: {e}"),
        ),
        None => check(&mut checks, false, "the guest shared its message"),
    }
    let mut host_refusals = 0u64;
    match lock(&io.private_read).take() {
        Some(Err(HostAccessError::Private { .. })) => {
            host_refusals += 1;
            check(
                &mut checks,
                true,
                "the host's read of that page, private again, was refused",
            );
        }
        Some(other) => check(
            &mut checks,
            false,
            format!("the host's read of the private page was refused, not {other:?}"),
        ),
        None => check(
            &mut checks,
            false,
            "the guest made its message page private again",
        ),
    }
    // The message page is private now; so is every burst page.
    let region = &memory.regions()[0];
    let raw = region.host_view_addr() + (MESSAGE_PAGE - region.base());
    match raw_read_in_child(raw) {
        Ok(RawRead::Fault(sig)) => check(
            &mut checks,
            true,
            format!(
                "an unchecked read of it through the host view faulted ({}) in a child process; veil ran on",
                signal_name(sig)
            ),
        ),
        Ok(RawRead::Read { saw_message }) => check(
            &mut checks,
            !saw_message && flavor == Flavor::ATTRIBUTES,
            format!(
                "an unchecked read through the host view {} (the {flavor} flavor discards the \
                 shared side; the private copy is in guest_memfd, which the host does not map)",
                if saw_message {
                    "found the guest's message"
                } else {
                    "found none of the guest's data"
                }
            ),
        ),
        Err(e) => check(
            &mut checks,
            false,
            format!("forking the raw-read child: {e}"),
        ),
    }
    for index in 0..args.vcpus {
        let mut buf = [0u8; 8];
        if matches!(
            memory.host_read(burst_pages(index), &mut buf),
            Err(HostAccessError::Private { .. })
        ) {
            host_refusals += 1;
        }
    }
    check(
        &mut checks,
        host_refusals == 1 + u64::from(args.vcpus),
        format!(
            "the host's reads of every private burst page were refused ({host_refusals} refusals in all)"
        ),
    );

    let halted = matches!(report.reason, StopReason::AllHalted)
        && report
            .vcpus
            .iter()
            .all(|v| matches!(v.end, VcpuEnd::Halted));
    check(
        &mut checks,
        halted,
        format!("every vCPU ran to its end ({})", report.reason),
    );
    let done = io.done.load(Ordering::SeqCst);
    let failed = io.failed_requests.load(Ordering::SeqCst);
    check(
        &mut checks,
        done == u64::from(args.vcpus) && failed == 0,
        format!(
            "every conversion request succeeded ({done} vCPUs reported, {failed} failed requests)"
        ),
    );
    let stats = vm.stats();
    let requests = stats.requests.requests - before.requests.requests;
    let round_trips = args.rounds * u64::from(args.vcpus);
    let expected_requests = 2 + 2 * round_trips;
    let expected_pages = 1 + round_trips * PAGES_PER_REQUEST;
    let to_private = stats.requests.pages_to_private - before.requests.pages_to_private;
    let to_shared = stats.requests.pages_to_shared - before.requests.pages_to_shared;
    check(
        &mut checks,
        requests == expected_requests
            && to_private == expected_pages
            && to_shared == expected_pages,
        format!(
            "the statistics add up: {requests} requests (expected {expected_requests}), \
             {to_private} pages to private and {to_shared} to shared (expected {expected_pages} each)"
        ),
    );

    let exits = report.stats();
    let conversions = stats.conversions.since(&before.conversions);
    println!(
        "\n{}",
        table(&TableRow {
            backend: vm.launch_technology().name(),
            flavor,
            transport: guest_vm.transport_name(),
            vcpus: args.vcpus,
            requests,
            exits: exits.count(ExitKind::PortHypercall) + exits.count(ExitKind::Hypercall),
            to_private,
            to_shared,
            syscalls: conversions.total(),
            host_refusals,
            took,
        })
    );
    log::info!("exits: {exits}");
    log::info!("memory: {}", vm.stats());

    match (&guest_vm.seccomp, guest_vm.confined_threads()) {
        (Ok(()), Some(threads)) => check(
            &mut checks,
            threads == args.vcpus as usize,
            format!(
                "seccomp confined {threads} of {} vCPU threads ({} system calls allowed)",
                args.vcpus,
                seccomp::allowed_count(ThreadKind::Vcpu)
            ),
        ),
        (Err(off), _) => println!("  seccomp {off}"),
        (Ok(()), None) => {}
    }

    let passed = checks.iter().filter(|c| c.passed).count();
    println!("{passed} of {} checks passed", checks.len());
    if passed == checks.len() {
        Ok(())
    } else {
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.what.as_str())
            .collect();
        Err(Failure::new(
            Status::GuestFailed,
            format!("the demo failed: {}", failed.join("; ")),
        ))
    }
}

/// One row of the demo's table.
struct TableRow {
    backend: &'static str,
    flavor: Flavor,
    transport: String,
    vcpus: u32,
    requests: u64,
    exits: u64,
    to_private: u64,
    to_shared: u64,
    syscalls: u64,
    host_refusals: u64,
    took: Duration,
}

fn table(r: &TableRow) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<10} {:<10} {:<14} {:>5} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "backend",
        "flavor",
        "transport",
        "vCPUs",
        "requests",
        "to private",
        "to shared",
        "syscalls",
        "refusals",
        "time"
    );
    let _ = writeln!(
        out,
        "  {:<10} {:<10} {:<14} {:>5} {:>9} {:>10} {:>10} {:>9} {:>9} {:>8.1}ms",
        r.backend,
        r.flavor.name(),
        r.transport,
        r.vcpus,
        r.requests,
        r.to_private,
        r.to_shared,
        r.syscalls,
        r.host_refusals,
        r.took.as_secs_f64() * 1e3
    );
    let per = if r.requests > 0 {
        r.took.as_secs_f64() * 1e6 / r.requests as f64 * f64::from(r.vcpus)
    } else {
        0.0
    };
    let _ = write!(
        out,
        "  ({} hypercall exits; {per:.1} µs per request on each vCPU)",
        r.exits
    );
    out
}
