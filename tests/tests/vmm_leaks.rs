// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A VM built, run and dropped over and over leaves nothing behind: open file
//! descriptors, threads and resident memory come back to where they started. The only
//! test in its binary, so no other test opens descriptors or allocates while it counts.
//!
//! Each VM has guest_memfd-backed memory (the attributes flavor, or in-place where the
//! host lacks it) and one vCPU running `tests/guests/convert_page.S`: a page made private
//! and shared again through the port-I/O hypercall, so every VM also converts through its
//! guest_memfd.

mod vcpu_support;

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vcpu_support::{CONVERT_PAGE, MEM_SIZE, REPORT_PORT, STACK};
use veil_memory::{ContentPolicy, Flavor, HostCaps};
use veil_tests::{kvm_or_skip, long_mode};
use veil_vcpu::x86_64::setup_long_mode;
use veil_vcpu::{BoxError, FaultPolicy, IoHandler, StopReason};
use veil_vmm::Vm;

/// VMs built, run and dropped.
const ROUNDS: usize = 1000;
/// Rounds run before resident memory is first measured: the allocator's arenas, the
/// thread stack cache and lazily built statics reach their size in the first few.
const WARM_UP: usize = 20;
/// How far resident memory may end above its value after the warm-up.
///
/// Each VM maps 2 MiB of guest memory and the guest writes a page of it; the host writes
/// its boot data (five pages). A VM whose guest memory, one mapped page of it, or a
/// vCPU's `kvm_run` page (4 KiB) outlived it would add 980 x 4 KiB, nearly 4 MiB, over
/// the rounds after the warm-up; 1 MiB leaves room for the allocator keeping some freed
/// memory, which glibc does not return page by page. Measured on a development host:
/// 20 KiB of growth over the 980 rounds.
const RSS_TOLERANCE: u64 = 1 << 20;
/// The page the guest converts.
const PAGE: u64 = 0x10_0000;
/// What the guest reports last, before it spins.
const DONE: u32 = 0xd0e0;
/// How long one guest may take to report it.
const LIMIT: Duration = Duration::from_secs(20);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Resident memory in bytes (`/proc/self/statm`, second field, in pages).
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page_size as u64
}

/// The guest's reports; says when the last one came.
struct Reports {
    values: Mutex<Vec<u32>>,
    done: SyncSender<()>,
}

impl IoHandler for Reports {
    fn pio_read(&self, port: u16, _: &mut [u8]) -> Result<(), BoxError> {
        Err(format!("unexpected port read at {port:#x}").into())
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        if port != REPORT_PORT {
            return Err(format!("unexpected port write at {port:#x}").into());
        }
        let value = u32::from_le_bytes(data.try_into()?);
        self.values.lock().unwrap().push(value);
        if value == DONE {
            // The receiver may have given up waiting already; nothing to tell then.
            let _ = self.done.try_send(());
        }
        Ok(())
    }

    fn mmio_read(&self, addr: u64, _: &mut [u8]) -> Result<(), BoxError> {
        Err(format!("unexpected MMIO read at {addr:#x}").into())
    }

    fn mmio_write(&self, addr: u64, _: &[u8]) -> Result<(), BoxError> {
        Err(format!("unexpected MMIO write at {addr:#x}").into())
    }
}

/// Builds a VM in `flavor`, runs the guest until it reports [`DONE`], stops and drops
/// it, checking on the way that the guest's round trip went through veil.
fn round(caps: &HostCaps, flavor: Flavor) {
    let vm = Vm::builder()
        .caps(caps.clone())
        .flavor(flavor)
        // The attributes flavor only discards; in-place then discards too, so the guest
        // reads the same in both.
        .region(0, MEM_SIZE as u64, ContentPolicy::Discard)
        .build()
        .unwrap();
    let memory = vm.memory();
    for (gpa, bytes) in long_mode::boot_data() {
        memory.host_write(gpa, &bytes).unwrap();
    }
    memory
        .host_write(CONVERT_PAGE.load, CONVERT_PAGE.code)
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let entry = long_mode::entry(CONVERT_PAGE.load, STACK);
    setup_long_mode(vm.kvm(), vcpu.fd(), 0, &entry).unwrap();
    let mut regs = vcpu.fd().get_regs().unwrap();
    regs.rsi = PAGE;
    vcpu.fd().set_regs(&regs).unwrap();

    let (done, finished): (_, Receiver<()>) = sync_channel(1);
    let reports = Arc::new(Reports {
        values: Mutex::default(),
        done,
    });
    let set = vm
        .run(vec![vcpu], reports.clone(), FaultPolicy::Refuse)
        .unwrap();
    let reported = finished.recv_timeout(LIMIT).is_ok();
    set.stop();
    let report = set.wait();
    assert!(reported, "no {DONE:#x} within {LIMIT:?}: {}", report.reason);
    assert!(
        matches!(report.reason, StopReason::Requested),
        "{}",
        report.reason
    );
    // To private (0); the page's first qword, discarded, and its second, written while
    // private; to shared (0); done.
    assert_eq!(
        *reports.values.lock().unwrap(),
        [0, 0, 0xb0b0_0000, 0, DONE]
    );
    let requests = vm.stats().requests;
    assert_eq!(
        (requests.pages_to_private, requests.pages_to_shared),
        (1, 1),
        "{requests}"
    );
    assert_eq!((requests.refused, requests.failed), (0, 0), "{requests}");
}

#[test]
fn a_thousand_vms_leave_nothing_behind() {
    let test = "a_thousand_vms_leave_nothing_behind";
    if !kvm_or_skip(test) {
        return;
    }
    let caps = HostCaps::probe().unwrap();
    let Some(flavor) = [Flavor::ATTRIBUTES, Flavor::IN_PLACE]
        .into_iter()
        .find(|&f| caps.require(f).is_ok())
    else {
        let why = caps.require(Flavor::ATTRIBUTES).unwrap_err();
        veil_tests::skip(
            test,
            &format!("no flavor with guest_memfd runs here: {why}"),
        );
        return;
    };
    let (fds, tasks) = (open_fds(), threads());
    let started = Instant::now();
    for _ in 0..WARM_UP {
        round(&caps, flavor);
    }
    let warm = resident();
    // Sampled on the way, so a slow leak shows as growth, not only as a final figure.
    let mut peak = warm;
    for i in WARM_UP..ROUNDS {
        round(&caps, flavor);
        if i % 100 == 99 {
            peak = peak.max(resident());
            assert_eq!(open_fds(), fds, "descriptors leaked by round {i}");
        }
    }
    let elapsed = started.elapsed();
    let end = resident();
    let line = format!(
        "{test}: {ROUNDS} VMs in the {flavor} flavor in {elapsed:.1?}; descriptors \
         {fds} -> {}, threads {tasks} -> {}, resident memory {} KiB after {WARM_UP} VMs \
         -> {} KiB at the end (peak {} KiB, tolerance {} KiB)\n",
        open_fds(),
        threads(),
        warm >> 10,
        end >> 10,
        peak >> 10,
        RSS_TOLERANCE >> 10
    );
    // One write, past libtest's capture: the figures belong in every run's log.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    assert_eq!(open_fds(), fds, "descriptors leaked: {line}");
    assert_eq!(threads(), tasks, "threads left running: {line}");
    assert!(
        peak.max(end) <= warm + RSS_TOLERANCE,
        "resident memory grew by more than the tolerance: {line}"
    );
}
