// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil soak`: a guest built into the binary (`cli/guest/soak.S`) whose vCPUs convert
//! random 4 KiB pages and 2 MiB blocks of their own areas for a bounded time, each
//! checking the contents the content policy promises after every conversion, while the
//! host audits a vCPU's whole area after each of its rounds: every private page refuses
//! the host's checked read, and every shared page is readable and holds what the policy
//! says. The host knows what that is without trusting the guest's memory: each round's
//! report names the range and the direction, and the tags the guest writes follow from
//! the vCPU, the page and the round.
//!
//! The guest asks for every conversion (MAP_GPA_RANGE); it makes no memory faults, and
//! veil refuses any that arrive (`FaultPolicy::Refuse`): see docs/security.md for why
//! a guest cannot make one honestly on the hosts veil runs on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use veil_vmm::VmError;
use veil_vmm::seccomp::{self, ThreadKind};
use veil_vmm::veil_attrs::FrameRange;
use veil_vmm::veil_memory::{ContentPolicy, HostAccessError, HostSafeMemory};
use veil_vmm::veil_vcpu::{BoxError, ExitKind, FaultPolicy, IoHandler, StopReason, VcpuEnd};

use crate::SoakArgs;
use crate::failure::{Failure, Status};
use crate::guest::{GuestVm, Setup, policy_name};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/soak_guest.rs"));
}

/// The page every vCPU shares first; the host writes a non-zero quadword into it when
/// the time is up.
const STOP_PAGE: u64 = 0x30_0000;
/// Per vCPU: its stack page, then one state byte per page of its area, then one
/// quadword per page (`soak.S`, r10 and r11).
const BOOKKEEPING: u64 = 0x40_0000;
const BOOKKEEPING_STRIDE: u64 = 0x1_0000;
const STATES: u64 = 0x1000;
const EXPECTED: u64 = 0x2000;
/// Where the vCPUs' areas start, one after another.
const AREAS: u64 = 0x80_0000;
const BLOCK: u64 = 2 << 20;
const PAGE: u64 = 4096;
const PAGES_PER_BLOCK: u64 = BLOCK / PAGE;
/// Where a page's second tag is (`soak.S`).
const LAST_QWORD: u64 = PAGE - 8;
/// The ports of `soak.S`: a round's report, and the end, each plus the vCPU's index.
const PORT_ROUND: u16 = 0x20;
const PORT_DONE: u16 = 0x28;
/// The bits of a round's report.
const REPORT_FIRST: u32 = 0xfff;
const REPORT_2M: u32 = 1 << 12;
const REPORT_SHARED: u32 = 1 << 13;
const REPORT_FAILED: u32 = 1 << 14;
/// What the guest writes to the end port when it could not share the stop page.
const SETUP_FAILED: u32 = u32::MAX;
/// How long the vCPUs may take to finish the rounds they are in once the time is up.
const GRACE: Duration = Duration::from_secs(120);
/// Mismatches described one by one; the rest are only counted.
const DESCRIBED: usize = 20;

/// The tag vCPU `vcpu` writes into page `page` of its area in round `round`
/// (`soak.S`): never zero.
fn tag(vcpu: u32, page: u64, round: u64) -> u64 {
    ((round + 1) << 32) | (u64::from(vcpu) << 16) | page
}

/// A seed for vCPU `vcpu`'s generator from the soak's seed: splitmix64, never zero
/// (xorshift64 stays at zero).
fn vcpu_seed(seed: u64, vcpu: u32) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(u64::from(vcpu) + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 { 0x5eed } else { z }
}

/// One vCPU's area as the host expects it: the state and contents of every page.
struct Area {
    vcpu: u32,
    base: u64,
    /// Whether each page is private.
    private: Vec<bool>,
    /// What each page holds while shared: the tag in its first and last quadword and
    /// zeros between, or all zeros (0).
    contents: Vec<u64>,
    /// Rounds reported.
    rounds: u64,
    /// Of those, of 2 MiB blocks.
    blocks: u64,
    /// Pages the model saw change state, each way.
    to_private: u64,
    to_shared: u64,
    /// The request the guest said failed, if one did.
    failed: Option<String>,
    /// What the guest wrote to its end port.
    done: Option<u32>,
}

impl Area {
    fn new(vcpu: u32, base: u64, pages: u64) -> Self {
        let pages = usize::try_from(pages).unwrap_or(0);
        Area {
            vcpu,
            base,
            private: vec![true; pages],
            contents: vec![0; pages],
            rounds: 0,
            blocks: 0,
            to_private: 0,
            to_shared: 0,
            failed: None,
            done: None,
        }
    }

    fn pages(&self) -> u64 {
        self.private.len() as u64
    }

    /// Applies a round to the model: the guest wrote this round's tag into every
    /// page of the range, then converted it (unless the request failed); a page that
    /// changed state under the discard policy holds zeros.
    fn apply(&mut self, report: &Report, discard: bool) {
        let round = self.rounds;
        for page in report.first..report.first + report.pages {
            let i = page as usize;
            self.contents[i] = tag(self.vcpu, page, round);
            if report.failed || self.private[i] != report.to_shared {
                continue;
            }
            self.private[i] = !report.to_shared;
            if report.to_shared {
                self.to_shared += 1;
            } else {
                self.to_private += 1;
            }
            if discard {
                self.contents[i] = 0;
            }
        }
        self.rounds += 1;
        if report.pages == PAGES_PER_BLOCK {
            self.blocks += 1;
        }
    }
}

/// A round's report, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    first: u64,
    pages: u64,
    to_shared: bool,
    failed: bool,
    guest_mismatches: u64,
}

impl Report {
    /// Decodes `word` for an area of `pages` pages; `None` if it names a range outside
    /// the area or a 2 MiB block that is not aligned.
    fn decode(word: u32, pages: u64) -> Option<Report> {
        let first = u64::from(word & REPORT_FIRST);
        let len = if word & REPORT_2M != 0 {
            PAGES_PER_BLOCK
        } else {
            1
        };
        if first % len != 0 || first + len > pages {
            return None;
        }
        Some(Report {
            first,
            pages: len,
            to_shared: word & REPORT_SHARED != 0,
            failed: word & REPORT_FAILED != 0,
            guest_mismatches: u64::from(word >> 16),
        })
    }
}

/// The host's side of the soak: the areas it expects, and what its audits found.
struct SoakIo {
    memory: Arc<HostSafeMemory>,
    discard: bool,
    areas: Vec<Mutex<Area>>,
    guest_mismatches: AtomicU64,
    host_mismatches: AtomicU64,
    refused_reads: AtomicU64,
    shared_reads: AtomicU64,
    /// The first mismatches, described, and how many more there were.
    described: Mutex<(Vec<String>, u64)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SoakIo {
    fn describe(&self, what: String) {
        let mut described = lock(&self.described);
        if described.0.len() < DESCRIBED {
            described.0.push(what);
        } else {
            described.1 += 1;
        }
    }

    /// Audits every page of `area` through the host-safe view: a private page's read is
    /// refused, a shared page reads as the model says, its two tagged quadwords, and all
    /// of it for the pages of `whole` (the range the round converted). Counts and
    /// describes what differs.
    fn audit(&self, area: &Area, when: &str, whole: std::ops::Range<u64>) {
        let mut page_buf = [0u8; PAGE as usize];
        let (mut refused, mut read) = (0, 0);
        for page in 0..area.pages() {
            let i = page as usize;
            let gpa = area.base + page * PAGE;
            let expected = area.contents[i];
            let wrong = if area.private[i] {
                match self.memory.host_read(gpa, &mut page_buf[..8]) {
                    Err(HostAccessError::Private { .. }) => {
                        refused += 1;
                        None
                    }
                    Ok(()) => Some("private, but the host's read succeeded".to_string()),
                    Err(e) => Some(format!(
                        "private, and the host's read failed otherwise: {e}"
                    )),
                }
            } else if whole.contains(&page) {
                match self.memory.host_read(gpa, &mut page_buf) {
                    Ok(()) => {
                        read += 1;
                        check_contents(&page_buf, expected)
                    }
                    Err(e) => Some(format!("shared, but the host's read failed: {e}")),
                }
            } else {
                let (mut first, mut last) = ([0u8; 8], [0u8; 8]);
                match self
                    .memory
                    .host_read(gpa, &mut first)
                    .and_then(|()| self.memory.host_read(gpa + LAST_QWORD, &mut last))
                {
                    Ok(()) => {
                        read += 1;
                        check_tags(
                            u64::from_le_bytes(first),
                            u64::from_le_bytes(last),
                            expected,
                        )
                    }
                    Err(e) => Some(format!("shared, but the host's read failed: {e}")),
                }
            };
            if let Some(wrong) = wrong {
                self.host_mismatches.fetch_add(1, Ordering::Relaxed);
                self.describe(format!(
                    "vCPU {} {when}: page {page} of its area ({gpa:#x}) is {wrong}",
                    area.vcpu
                ));
            }
        }
        self.refused_reads.fetch_add(refused, Ordering::Relaxed);
        self.shared_reads.fetch_add(read, Ordering::Relaxed);
    }

    fn round(&self, vcpu: u32, word: u32) -> Result<(), BoxError> {
        let mut area = lock(&self.areas[vcpu as usize]);
        let Some(report) = Report::decode(word, area.pages()) else {
            return Err(format!(
                "vCPU {vcpu} reported round {} as {word:#x}, outside its area of {} pages",
                area.rounds,
                area.pages()
            )
            .into());
        };
        if area.failed.is_some() || area.done.is_some() {
            return Err(format!("vCPU {vcpu} reported a round after its end").into());
        }
        let round = area.rounds;
        let range = format!(
            "{} from page {} to {}",
            plural(report.pages, "page"),
            report.first,
            if report.to_shared {
                "shared"
            } else {
                "private"
            }
        );
        if report.guest_mismatches > 0 {
            self.guest_mismatches
                .fetch_add(report.guest_mismatches, Ordering::Relaxed);
            self.describe(format!(
                "vCPU {vcpu} round {round}: the guest found {} not holding what the policy \
                 says ({range})",
                plural(report.guest_mismatches, "page")
            ));
        }
        if report.failed {
            area.failed = Some(format!(
                "vCPU {vcpu} round {round}: converting {range} failed"
            ));
        }
        area.apply(&report, self.discard);
        let whole = report.first..report.first + report.pages;
        self.audit(&area, &format!("after round {round} ({range})"), whole);
        Ok(())
    }
}

/// What is wrong with a shared page whose first and last quadwords hold `first` and
/// `last` where it should hold `expected` (see [`Area`]), if anything.
fn check_tags(first: u64, last: u64, expected: u64) -> Option<String> {
    (first != expected || last != expected)
        .then(|| format!("shared and holds {first:#x} and {last:#x}, not {expected:#x} in both"))
}

/// What is wrong with a shared page that should hold `expected` (see [`Area`]), if
/// anything.
fn check_contents(page: &[u8; PAGE as usize], expected: u64) -> Option<String> {
    const ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];
    let last = LAST_QWORD as usize;
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&page[at..at + 8]);
        u64::from_le_bytes(b)
    };
    check_tags(word(0), word(last), expected).or_else(|| {
        (page[8..last] != ZEROS[8..last])
            .then(|| "shared and holds bytes besides its tag".to_string())
    })
}

impl IoHandler for SoakIo {
    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        let vcpus = self.areas.len() as u16;
        let word = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| {
                format!(
                    "the soak guest wrote {} bytes to port {port:#x}",
                    data.len()
                )
            })?;
        match port {
            p if (PORT_ROUND..PORT_ROUND + vcpus).contains(&p) => {
                self.round(u32::from(p - PORT_ROUND), word)
            }
            p if (PORT_DONE..PORT_DONE + vcpus).contains(&p) => {
                let mut area = lock(&self.areas[usize::from(p - PORT_DONE)]);
                area.done = Some(word);
                Ok(())
            }
            _ => Err(format!("the soak guest wrote to port {port:#x}").into()),
        }
    }
}

/// `n` and `what`, plural unless `n` is 1.
fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The soak's seed: the one asked for, or one from the clock.
fn seed(asked: Option<u64>) -> u64 {
    asked.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

/// Runs `veil soak`.
pub fn run(args: &SoakArgs) -> Result<(), Failure> {
    let vm_failure = |doing: &'static str| move |e: VmError| Failure::vm(doing, &e);
    let area_bytes = args.blocks * BLOCK;
    let ram = AREAS + u64::from(args.vcpus) * area_bytes;
    let guest_vm = GuestVm::build(&Setup {
        flavor: args.flavor,
        policy: args.policy,
        ram,
        no_seccomp: args.no_seccomp,
    })?;
    let (vm, flavor, policy) = (&guest_vm.vm, guest_vm.flavor, guest_vm.policy);
    let seed = seed(args.seed);
    println!(
        "veil soak: {} vCPUs converting for {} s, seed {seed} (--seed {seed} makes the same \
         choices)\n  backend {}, flavor {flavor}, policy {}, transport {} ({})\n  \
         each vCPU: {} blocks of 2 MiB ({} pages); {} MiB of RAM",
        args.vcpus,
        args.seconds,
        vm.launch_technology().name(),
        policy_name(policy),
        guest_vm.transport_name(),
        guest_vm.probe,
        args.blocks,
        args.blocks * PAGES_PER_BLOCK,
        ram >> 20,
    );
    let area_base = |index: u32| AREAS + u64::from(index) * area_bytes;
    let bookkeeping = |index: u32| BOOKKEEPING + u64::from(index) * BOOKKEEPING_STRIDE;
    let launched = guest_vm.launch(embedded::CODE, embedded::LOAD, args.vcpus, |index, regs| {
        regs.rdi = u64::from(index);
        regs.rsp = bookkeeping(index) + STATES;
        regs.r8 = area_base(index);
        regs.r9 = args.blocks;
        regs.r10 = bookkeeping(index) + STATES;
        regs.r11 = bookkeeping(index) + EXPECTED;
        regs.r12 = vcpu_seed(seed, index);
        regs.r13 = u64::from(policy == ContentPolicy::Discard);
        regs.r14 = STOP_PAGE;
    })?;

    // The areas must start all private, as the guest and the model assume.
    let memory = vm.memory().clone();
    let areas = FrameRange::from_gpa(AREAS, u64::from(args.vcpus) * area_bytes)
        .map_err(|e| Failure::guest(e.to_string()))?;
    let shared_at_launch: u64 = memory
        .attributes()
        .runs(areas)
        .map_err(|e| Failure::guest(e.to_string()))?
        .filter(|r| !r.state.attributes.is_private())
        .map(|r| r.range.pages())
        .sum();
    if shared_at_launch > 0 {
        return Err(Failure::guest(format!(
            "{shared_at_launch} pages of the vCPUs' areas stayed shared at launch"
        )));
    }

    let io = Arc::new(SoakIo {
        memory: memory.clone(),
        discard: policy == ContentPolicy::Discard,
        areas: (0..args.vcpus)
            .map(|i| Mutex::new(Area::new(i, area_base(i), args.blocks * PAGES_PER_BLOCK)))
            .collect(),
        guest_mismatches: AtomicU64::new(0),
        host_mismatches: AtomicU64::new(0),
        refused_reads: AtomicU64::new(0),
        shared_reads: AtomicU64::new(0),
        described: Mutex::new((Vec::new(), 0)),
    });
    let before = vm.stats();
    let started = Instant::now();
    let set = vm
        .run(launched.vcpus, io.clone(), FaultPolicy::Refuse)
        .map_err(vm_failure("starting the vCPUs"))?;
    let deadline = started + Duration::from_secs(args.seconds);
    while Instant::now() < deadline && !set.is_finished() {
        std::thread::sleep(
            Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
        );
    }
    let mut problems = Vec::new();
    if let Err(e) = memory.host_write(STOP_PAGE, &1u64.to_le_bytes()) {
        problems.push(format!("the host could not write the stop page: {e}"));
        set.stop();
    }
    let report = match set.wait_timeout(GRACE) {
        Ok(report) => report,
        Err(set) => {
            problems.push(format!(
                "the vCPUs did not stop within {GRACE:?} of the end of the soak"
            ));
            set.stop();
            set.wait()
        }
    };
    let took = started.elapsed();
    let halted = matches!(report.reason, StopReason::AllHalted)
        && report
            .vcpus
            .iter()
            .all(|v| matches!(v.end, VcpuEnd::Halted));
    if !halted {
        problems.push(format!(
            "the guest did not end by halting: {}",
            report.reason
        ));
    }

    // Once more, every area, with every vCPU stopped.
    let (mut conversions, mut reported) = (0, 0);
    let (mut blocks, mut to_private, mut to_shared) = (0, 0, 0);
    for area in &io.areas {
        let area = lock(area);
        io.audit(&area, "at the end", 0..area.pages());
        // A round whose request failed converted nothing.
        let done = area.rounds - u64::from(area.failed.is_some());
        println!(
            "  vCPU {}: {done} conversions ({} of 2 MiB blocks, {} of 4 KiB pages)",
            area.vcpu,
            area.blocks,
            area.rounds - area.blocks
        );
        conversions += done;
        reported += area.rounds;
        blocks += area.blocks;
        to_private += area.to_private;
        to_shared += area.to_shared;
        if let Some(failed) = &area.failed {
            problems.push(failed.clone());
        }
        match area.done {
            Some(SETUP_FAILED) => {
                problems.push(format!("vCPU {} could not share the stop page", area.vcpu))
            }
            Some(rounds) if u64::from(rounds) != area.rounds => problems.push(format!(
                "vCPU {} says it made {rounds} rounds, the host counted {}",
                area.vcpu, area.rounds
            )),
            Some(_) => {}
            None if area.failed.is_none() && halted => {
                problems.push(format!("vCPU {} never reported its end", area.vcpu))
            }
            None => {}
        }
    }

    // veil's own count of the requests: the stop page once per vCPU, then the rounds.
    let stats = vm.stats();
    let requests = stats.requests.requests - before.requests.requests;
    let stats_private = stats.requests.pages_to_private - before.requests.pages_to_private;
    let stats_shared = stats.requests.pages_to_shared - before.requests.pages_to_shared;
    let expected_requests = reported + u64::from(args.vcpus);
    if halted && requests != expected_requests {
        problems.push(format!(
            "veil answered {requests} requests, the guest reported {expected_requests}"
        ));
    }
    // The stop page went shared once.
    if halted && (stats_private, stats_shared) != (to_private, to_shared + 1) {
        problems.push(format!(
            "veil moved {stats_private} pages to private and {stats_shared} to shared, the \
             host's model {to_private} and {} (with the stop page)",
            to_shared + 1
        ));
    }
    let exits = report.stats();
    let faults = exits.count(ExitKind::MemoryFault);
    if faults > 0 {
        problems.push(format!("{faults} memory fault exits: the guest makes none"));
    }
    match (&guest_vm.seccomp, guest_vm.confined_threads()) {
        (Ok(()), Some(threads)) if threads != args.vcpus as usize => problems.push(format!(
            "seccomp confined {threads} of {} vCPU threads",
            args.vcpus
        )),
        (Ok(()), _) => println!(
            "  seccomp: {} vCPU threads confined ({} system calls allowed)",
            args.vcpus,
            seccomp::allowed_count(ThreadKind::Vcpu)
        ),
        (Err(off), _) => println!("  seccomp {off}"),
    }

    let guest_mismatches = io.guest_mismatches.load(Ordering::Relaxed);
    let host_mismatches = io.host_mismatches.load(Ordering::Relaxed);
    let mismatches = guest_mismatches + host_mismatches;
    let conversion_stats = stats.conversions.since(&before.conversions);
    println!(
        "  {blocks} of 2 MiB and {} of 4 KiB; {to_private} pages made private, {to_shared} \
         shared; {} system calls; {} memory fault exits\n  \
         host audits: {} private pages refused the host's read, {} shared pages read and \
         checked\n  mismatches: {guest_mismatches} found by the guest, {host_mismatches} \
         by the host\n  {:.1} s, {:.0} conversions per second",
        conversions - blocks,
        conversion_stats.total(),
        faults,
        io.refused_reads.load(Ordering::Relaxed),
        io.shared_reads.load(Ordering::Relaxed),
        took.as_secs_f64(),
        conversions as f64 / took.as_secs_f64(),
    );
    let described = lock(&io.described);
    for what in &described.0 {
        println!("  mismatch: {what}");
    }
    if described.1 > 0 {
        println!("  (and {} more mismatches, not described)", described.1);
    }
    for problem in &problems {
        println!("  FAIL {problem}");
    }
    log::info!("exits: {exits}");
    log::info!("memory: {stats}");
    println!("soak: {conversions} conversions, {mismatches} mismatches");

    if conversions == 0 {
        problems.push("the guest made no conversion".into());
    }
    if mismatches > 0 {
        problems.push(format!("{mismatches} mismatches"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Failure::new(
            Status::GuestFailed,
            format!("the soak failed: {}", problems.join("; ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_decode_only_inside_the_area() {
        let pages = 2 * PAGES_PER_BLOCK;
        assert_eq!(
            Report::decode(5 | REPORT_SHARED | (3 << 16), pages),
            Some(Report {
                first: 5,
                pages: 1,
                to_shared: true,
                failed: false,
                guest_mismatches: 3
            })
        );
        let block = Report::decode(512 | REPORT_2M | REPORT_FAILED, pages).unwrap();
        assert_eq!((block.first, block.pages), (512, 512));
        assert!(block.failed && !block.to_shared);
        // Not aligned, or past the end.
        assert_eq!(Report::decode(1 | REPORT_2M, pages), None);
        assert_eq!(Report::decode(1024 | REPORT_2M, pages), None);
        assert_eq!(Report::decode(1024, pages), None);
        assert!(Report::decode(1023, pages).is_some());
    }

    #[test]
    fn tags_are_never_zero_and_differ_by_page_vcpu_and_round() {
        assert_ne!(tag(0, 0, 0), 0);
        let tags = [tag(0, 0, 0), tag(1, 0, 0), tag(0, 1, 0), tag(0, 0, 1)];
        for (i, a) in tags.iter().enumerate() {
            for b in &tags[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(tag(3, 4095, 7), (8 << 32) | (3 << 16) | 4095);
    }

    #[test]
    fn vcpu_seeds_differ_and_are_never_zero() {
        for seed in [0, 1, u64::MAX] {
            let seeds: Vec<u64> = (0..4).map(|v| vcpu_seed(seed, v)).collect();
            assert!(seeds.iter().all(|&s| s != 0));
            for (i, a) in seeds.iter().enumerate() {
                assert!(!seeds[i + 1..].contains(a));
            }
        }
    }

    #[test]
    fn a_page_holds_its_tag_twice_and_zeros_between() {
        let mut page = [0u8; PAGE as usize];
        assert_eq!(check_contents(&page, 0), None);
        assert!(check_contents(&page, 7).is_some());
        page[..8].copy_from_slice(&7u64.to_le_bytes());
        page[4088..].copy_from_slice(&7u64.to_le_bytes());
        assert_eq!(check_contents(&page, 7), None);
        assert!(check_contents(&page, 0).is_some());
        page[100] = 1;
        assert!(check_contents(&page, 7).unwrap().contains("besides"));
    }

    #[test]
    fn the_model_follows_the_policy() {
        let shared = |first, pages| Report {
            first,
            pages,
            to_shared: true,
            failed: false,
            guest_mismatches: 0,
        };
        for discard in [false, true] {
            let mut area = Area::new(1, AREAS, PAGES_PER_BLOCK);
            // Round 0: page 3 to shared; it changed state.
            area.apply(&shared(3, 1), discard);
            assert!(!area.private[3]);
            assert_eq!(area.contents[3], if discard { 0 } else { tag(1, 3, 0) });
            // Round 1: the block to shared; page 3 did not change, the others did.
            area.apply(&shared(0, 512), discard);
            assert_eq!(area.contents[3], tag(1, 3, 1));
            assert_eq!(area.contents[4], if discard { 0 } else { tag(1, 4, 1) });
            assert_eq!((area.to_shared, area.to_private), (512, 0));
            assert_eq!((area.rounds, area.blocks), (2, 1));
            // Round 2: a failed request to private changes no state, only the tag.
            let mut failed = shared(7, 1);
            failed.to_shared = false;
            failed.failed = true;
            area.apply(&failed, discard);
            assert!(!area.private[7]);
            assert_eq!(area.contents[7], tag(1, 7, 2));
        }
    }
}
