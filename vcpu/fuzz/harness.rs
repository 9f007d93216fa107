// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The exit fuzz harness, shared by the cargo-fuzz target and by veil-vcpu's
//! `exits_corpus` test (which replays the committed corpus in every `cargo test`).
//!
//! An input is a configuration byte, then a sequence of exits: each a `KVM_RUN` result,
//! an exit reason, the bytes of `kvm_run`'s union and the registers a port-I/O hypercall
//! would read. Every exit goes through veil-vcpu's decoding, dispatch and write back, as
//! the run loop does, with handlers that record every call. An independent model of the
//! exit ABI says, for each exit, which handler call (if any) is right and what the guest
//! must read back; the harness checks that:
//!
//! - nothing panics;
//! - no handler is called for an exit that is malformed, refused or invalid, and a valid
//!   one reaches exactly the handler it names, with exactly its values;
//! - every hypercall gets a result written back (to `hypercall.ret`, or to `rax` for the
//!   port-I/O transport), the one its ABI gives;
//! - nothing else in `kvm_run` or the mapping changes, except the data an `in` or an MMIO
//!   read fills.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use veil_vcpu::fuzzing::{Counters, Exits, Registers, Step, Written, counters};
use veil_vcpu::kvm_bindings::{self, kvm_run};
use veil_vcpu::veil_attrs::{AttrMap, Attributes, FrameRange, Gfn};
use veil_vcpu::{
    BoxError, ExitKind, ExitRouting, FaultPolicy, GuestLayout, HYPERCALL_PORT, Hypercalls,
    IoHandler, MapGpaRange, MemoryFault, MemoryHandler, RequestOutcome, RunOutcome,
    UnknownExitHandler,
};

const EINTR: i32 = 4;
const EIO: i32 = 5;
const EAGAIN: i32 = 11;
const EFAULT: i32 = 14;
const EINVAL: i32 = 22;
const EHWPOISON: i32 = 133;

/// Guest memory: [0, 1 MiB) and [1 MiB, 2 MiB) (adjacent, so one range) and [4, 6) MiB.
const LAYOUT: [(u64, u64); 3] = [(0, 256), (256, 256), (1024, 512)];
const MEMORY_FRAMES: u64 = 1536;

/// Reasons veil decodes itself; everything else goes to the backend's hook.
const DECODED: [u32; 14] = [
    kvm_bindings::KVM_EXIT_IO,
    kvm_bindings::KVM_EXIT_HYPERCALL,
    kvm_bindings::KVM_EXIT_MEMORY_FAULT,
    kvm_bindings::KVM_EXIT_MMIO,
    kvm_bindings::KVM_EXIT_HLT,
    kvm_bindings::KVM_EXIT_SHUTDOWN,
    kvm_bindings::KVM_EXIT_INTR,
    kvm_bindings::KVM_EXIT_IRQ_WINDOW_OPEN,
    kvm_bindings::KVM_EXIT_SYSTEM_EVENT,
    kvm_bindings::KVM_EXIT_INTERNAL_ERROR,
    kvm_bindings::KVM_EXIT_FAIL_ENTRY,
    kvm_bindings::KVM_EXIT_UNKNOWN,
    kvm_bindings::KVM_EXIT_EXCEPTION,
    kvm_bindings::KVM_EXIT_DEBUG,
];

/// Reasons veil leaves to the backend's hook that the reason byte picks after
/// [`DECODED`]; other values give a raw 32-bit reason.
const UNDECODED: [u32; 2] = [
    kvm_bindings::KVM_EXIT_X86_RDMSR,
    kvm_bindings::KVM_EXIT_TPR_ACCESS,
];

const ERRNOS: [i32; 6] = [EINTR, EAGAIN, EFAULT, EHWPOISON, EINVAL, EIO];

/// Bytes of the mapping after `kvm_run` at most (KVM's is a few pages).
const TAIL_MAX: usize = 8192;

/// A handler call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Convert(FrameRange, Attributes),
    Fault(MemoryFault, FrameRange),
    PioRead(u16, usize),
    PioWrite(u16, Vec<u8>),
    MmioRead(u64, usize),
    MmioWrite(u64, Vec<u8>),
    Unknown(u32),
}

/// How the memory handler answers conversion requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Convert,
    Retry,
    Refuse,
    Fail,
}

#[derive(Default)]
struct Log(Mutex<Vec<Call>>);

impl Log {
    fn push(&self, call: Call) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(call);
    }
    fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("recording handler told to fail")]
struct Told;

struct Memory {
    layout: GuestLayout,
    map: Mutex<AttrMap>,
    reply: Reply,
    fail_faults: bool,
    log: Arc<Log>,
}

impl MemoryHandler for Memory {
    fn layout(&self) -> &GuestLayout {
        &self.layout
    }
    fn map_gpa_range(&self, request: &MapGpaRange) -> Result<RequestOutcome, BoxError> {
        self.log.push(Call::Convert(request.range(), request.to()));
        match self.reply {
            Reply::Convert => {
                let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
                map.set(request.range(), request.to())?;
                Ok(RequestOutcome::Done)
            }
            Reply::Retry => Ok(RequestOutcome::Retry),
            Reply::Refuse => Ok(RequestOutcome::Refused),
            Reply::Fail => Err(Told.into()),
        }
    }
    fn memory_fault(&self, fault: &MemoryFault, range: FrameRange) -> Result<u64, BoxError> {
        self.log.push(Call::Fault(*fault, range));
        if self.fail_faults {
            return Err(Told.into());
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.set(range, fault.access().attributes())?.pages())
    }
}

struct Io {
    fail: bool,
    log: Arc<Log>,
}

impl Io {
    fn answer(&self, call: Call) -> Result<(), BoxError> {
        self.log.push(call);
        if self.fail { Err(Told.into()) } else { Ok(()) }
    }
}

/// The byte an `in` or MMIO read fills at `i`.
fn fill_byte(i: usize) -> u8 {
    0xa5 ^ i as u8
}

impl IoHandler for Io {
    fn pio_read(&self, port: u16, data: &mut [u8]) -> Result<(), BoxError> {
        data.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = fill_byte(i));
        self.answer(Call::PioRead(port, data.len()))
    }
    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        self.answer(Call::PioWrite(port, data.to_vec()))
    }
    fn mmio_read(&self, addr: u64, data: &mut [u8]) -> Result<(), BoxError> {
        data.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = fill_byte(i));
        self.answer(Call::MmioRead(addr, data.len()))
    }
    fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), BoxError> {
        self.answer(Call::MmioWrite(addr, data.to_vec()))
    }
}

/// The backend's hook for exit reasons veil does not decode.
struct Hook {
    answer: Option<bool>,
    log: Arc<Log>,
}

impl UnknownExitHandler for Hook {
    fn handle(&self, _vcpu: usize, reason: u32, _run: &mut kvm_run) -> Result<bool, BoxError> {
        self.log.push(Call::Unknown(reason));
        self.answer.ok_or_else(|| Told.into())
    }
}

/// Reads the input front to back; past its end everything is zero.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.take(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }
}

fn le(bytes: &[u8], at: usize, n: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..n].copy_from_slice(&bytes[at..at + n]);
    u64::from_le_bytes(b)
}

/// The union of `run`, as bytes.
fn union_bytes(run: &kvm_run) -> [u8; 256] {
    // SAFETY: every member of the union is plain integers (or arrays of them), so any
    // bits are a valid `padding`; the union is at least 256 bytes.
    let padding = unsafe { run.__bindgen_anon_1.padding };
    padding.map(|c| c as u8)
}

/// The whole of `run`, as the fields the harness compares.
fn image(run: &kvm_run) -> (u32, [u8; 256]) {
    (run.exit_reason, union_bytes(run))
}

/// What the model says one exit must come to.
#[derive(Debug, Default)]
struct Expected {
    /// The one handler call, if any.
    call: Option<Call>,
    /// A hypercall: its result is written back, to `rax` when `port`.
    hypercall: Option<HypercallExpect>,
    /// Counted as a hypercall exit (on either transport), answered or not.
    counted_hypercall: bool,
    /// Whether the vCPU must go on.
    continues: Option<bool>,
    /// A port-I/O `in` whose window is filled.
    pio_in: Option<std::ops::Range<usize>>,
    /// An MMIO read of this many bytes.
    mmio_read: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct HypercallExpect {
    port: bool,
    /// The result, when no handler decides it.
    result: Option<u64>,
}

/// An independent reading of `KVM_HC_MAP_GPA_RANGE`'s arguments: the range and target
/// state of a valid request, or `None`.
fn map_gpa_range(nr: u64, args: [u64; 3], long_mode: bool) -> Option<(FrameRange, Attributes)> {
    let w = |v: u64| if long_mode { v } else { v & 0xffff_ffff };
    let (nr, gpa, pages, attrs) = (w(nr), w(args[0]), w(args[1]), w(args[2]));
    if nr != 12 || gpa % 4096 != 0 || pages == 0 || attrs >> 5 != 0 || attrs & 0xf > 2 {
        return None;
    }
    let start = u128::from(gpa / 4096);
    let end = start + u128::from(pages);
    let inside = LAYOUT_MERGED
        .iter()
        .any(|&(s, e)| u128::from(s) <= start && end <= u128::from(e));
    if !inside {
        return None;
    }
    let range = FrameRange::new(Gfn(start as u64), pages).ok()?;
    let to = if attrs & 0x10 != 0 {
        Attributes::PRIVATE
    } else {
        Attributes::empty()
    };
    Some((range, to))
}

/// [`LAYOUT`] as frame bounds, adjacent ranges merged.
const LAYOUT_MERGED: [(u64, u64); 2] = [(0, 512), (1024, 1536)];

struct Model {
    policy: FaultPolicy,
    reply: Reply,
    fail_faults: bool,
    io_fail: bool,
    hook: Option<Option<bool>>,
    /// The dispatcher's "fault converting did not fix" memory, modelled.
    unfixed: Option<(FrameRange, bool)>,
    /// The model's own copy of the page states.
    private: Vec<bool>,
}

impl Model {
    /// The answer of a hypercall with number `nr` and `args`.
    fn hypercall(&mut self, e: &mut Expected, port: bool, nr: u64, args: [u64; 3], long: bool) {
        match map_gpa_range(nr, args, long) {
            None => {
                e.hypercall = Some(HypercallExpect {
                    port,
                    result: Some(22),
                });
                e.continues = Some(true);
            }
            Some((range, to)) => {
                e.call = Some(Call::Convert(range, to));
                let (result, continues) = match self.reply {
                    Reply::Convert => {
                        for g in range.start().0..range.end().0 {
                            self.private[g as usize] = to.is_private();
                        }
                        (0, true)
                    }
                    Reply::Retry => (11, true),
                    Reply::Refuse => (22, true),
                    Reply::Fail => (22, false),
                };
                e.hypercall = Some(HypercallExpect {
                    port,
                    result: Some(result),
                });
                e.continues = Some(continues);
            }
        }
    }

    fn fault(&mut self, e: &mut Expected, gpa: u64, size: u64, flags: u64) {
        let fault = MemoryFault { gpa, size, flags };
        let private = flags & 8 != 0;
        if self.policy == FaultPolicy::Refuse {
            e.continues = Some(false);
            return;
        }
        let end = u128::from(gpa) + u128::from(size);
        let (first, last) = (u128::from(gpa / 4096), end.div_ceil(4096));
        let inside = size != 0
            && end.div_ceil(4096) * 4096 <= u128::from(u64::MAX)
            && LAYOUT_MERGED
                .iter()
                .any(|&(s, e)| u128::from(s) <= first && last <= u128::from(e));
        if !inside {
            e.continues = Some(false);
            return;
        }
        let range = FrameRange::from_bounds(Gfn(first as u64), Gfn(last as u64))
            .expect("an inside range is a range");
        e.call = Some(Call::Fault(fault, range));
        if self.fail_faults {
            e.continues = Some(false);
            return;
        }
        let mut changed = 0;
        for g in first..last {
            let p = &mut self.private[g as usize];
            changed += u64::from(*p != private);
            *p = private;
        }
        e.continues = Some(if changed != 0 {
            self.unfixed = None;
            true
        } else if self.unfixed == Some((range, private)) {
            false
        } else {
            self.unfixed = Some((range, private));
            true
        });
    }

    /// What one exit must do; `tail` is the mapping's length past `kvm_run`.
    fn expect(
        &mut self,
        outcome: RunOutcome,
        run: &[u8; 256],
        reason: u32,
        tail: usize,
        regs: &Option<Registers>,
    ) -> Expected {
        let mut e = Expected::default();
        let base = std::mem::size_of::<kvm_run>();
        let map_len = base + tail;
        // Whether the exit reaches the dispatcher (decoded, not an error), which forgets
        // an unfixed fault on every exit but a fault and an interruption.
        let mut forgets = true;
        match outcome {
            RunOutcome::Failed(EINTR | EAGAIN) => {
                forgets = false;
                e.continues = Some(true);
            }
            RunOutcome::Failed(EFAULT) if reason == kvm_bindings::KVM_EXIT_MEMORY_FAULT => {
                forgets = false;
                self.fault(&mut e, le(run, 8, 8), le(run, 16, 8), le(run, 0, 8));
            }
            RunOutcome::Failed(_) => {
                forgets = false;
                e.continues = Some(false);
            }
            RunOutcome::Exited => match reason {
                kvm_bindings::KVM_EXIT_IO => {
                    let (direction, size, port) = (run[0], run[1], le(run, 2, 2) as u16);
                    let (count, offset) = (le(run, 4, 4), le(run, 8, 8));
                    let len = u128::from(size) * u128::from(count);
                    let valid = matches!(size, 1 | 2 | 4)
                        && count != 0
                        && direction <= 1
                        && offset >= base as u64
                        && u128::from(offset) + len <= map_len as u128;
                    if !valid {
                        forgets = false;
                        e.continues = Some(false);
                    } else if direction == 1 && port == HYPERCALL_PORT {
                        e.counted_hypercall = true;
                        match regs {
                            None => e.continues = Some(false),
                            Some(r) => {
                                let g = &r.regs;
                                let long = r.sregs.efer & (1 << 10) != 0 && r.sregs.cs.l != 0;
                                self.hypercall(&mut e, true, g.rax, [g.rbx, g.rcx, g.rdx], long);
                            }
                        }
                    } else {
                        let window = offset as usize - base..offset as usize - base + len as usize;
                        e.call = Some(if direction == 0 {
                            e.pio_in = Some(window);
                            Call::PioRead(port, len as usize)
                        } else {
                            Call::PioWrite(port, Vec::new())
                        });
                        e.continues = Some(!self.io_fail);
                    }
                }
                kvm_bindings::KVM_EXIT_HYPERCALL => {
                    e.counted_hypercall = true;
                    let args = [le(run, 8, 8), le(run, 16, 8), le(run, 24, 8)];
                    let long = le(run, 64, 8) & 1 != 0;
                    self.hypercall(&mut e, false, le(run, 0, 8), args, long);
                }
                kvm_bindings::KVM_EXIT_MEMORY_FAULT => {
                    forgets = false;
                    self.fault(&mut e, le(run, 8, 8), le(run, 16, 8), le(run, 0, 8));
                }
                kvm_bindings::KVM_EXIT_MMIO => {
                    let (addr, len, write) = (le(run, 0, 8), le(run, 16, 4), run[20] != 0);
                    if !(1..=8).contains(&len) {
                        forgets = false;
                        e.continues = Some(false);
                    } else {
                        let len = len as usize;
                        e.call = Some(if write {
                            Call::MmioWrite(addr, run[8..8 + len].to_vec())
                        } else {
                            e.mmio_read = Some(len);
                            Call::MmioRead(addr, len)
                        });
                        e.continues = Some(!self.io_fail);
                    }
                }
                kvm_bindings::KVM_EXIT_INTR => {
                    forgets = false;
                    e.continues = Some(true);
                }
                kvm_bindings::KVM_EXIT_IRQ_WINDOW_OPEN => e.continues = Some(true),
                kvm_bindings::KVM_EXIT_HLT
                | kvm_bindings::KVM_EXIT_SHUTDOWN
                | kvm_bindings::KVM_EXIT_SYSTEM_EVENT => e.continues = Some(false),
                r if DECODED.contains(&r) => {
                    // Error exits: decoded into errors, never dispatched.
                    forgets = false;
                    e.continues = Some(false);
                }
                r => {
                    e.call = self.hook.map(|_| Call::Unknown(r));
                    e.continues = Some(self.hook == Some(Some(true)));
                }
            },
        }
        if forgets {
            self.unfixed = None;
        }
        e
    }
}

thread_local! {
    static TAIL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Bytes(data);
    let config = input.u8();
    let policy = if config & 1 != 0 {
        FaultPolicy::Refuse
    } else {
        FaultPolicy::ConvertImplicitly
    };
    let reply =
        [Reply::Convert, Reply::Retry, Reply::Refuse, Reply::Fail][usize::from(config >> 1 & 3)];
    let fail_faults = config & 8 != 0;
    let io_fail = config & 16 != 0;
    let hook =
        [None, Some(Some(true)), Some(Some(false)), Some(None)][usize::from(config >> 5 & 3)];
    let tail_len = (usize::from(input.u8()) << 5).min(TAIL_MAX);

    let log = Arc::new(Log::default());
    let layout = GuestLayout::new(
        LAYOUT
            .iter()
            .map(|&(s, n)| FrameRange::new(Gfn(s), n).expect("a layout range")),
    );
    let memory = Memory {
        layout,
        map: Mutex::new(AttrMap::new(MEMORY_FRAMES << 12).expect("a map")),
        reply,
        fail_faults,
        log: log.clone(),
    };
    let io = Io {
        fail: io_fail,
        log: log.clone(),
    };
    let routing = ExitRouting {
        hypercalls: Hypercalls::default(),
        unknown_exits: hook.map(|answer| {
            Arc::new(Hook {
                answer,
                log: log.clone(),
            }) as Arc<dyn UnknownExitHandler>
        }),
        thread_start: None,
    };
    let counters: Counters = counters();
    let mut exits = Exits::new(&memory, &io, &routing, policy, &counters);
    let mut model = Model {
        policy,
        reply,
        fail_faults,
        io_fail,
        hook,
        unfixed: None,
        private: vec![false; MEMORY_FRAMES as usize],
    };
    let mut hypercalls = 0u64;

    TAIL.with(|cell| {
        let mut tail = cell.borrow_mut();
        tail.clear();
        tail.extend((0..tail_len).map(|i| i as u8));
        let mut steps = 0;
        while !input.is_empty() && steps < 64 {
            steps += 1;
            let sel = input.u8();
            let outcome = match sel & 7 {
                0..=2 => RunOutcome::Exited,
                k => RunOutcome::Failed(ERRNOS[usize::from(k - 3) % ERRNOS.len()]),
            };
            let reason = match sel >> 3 {
                k @ 0..=13 => DECODED[usize::from(k)],
                k @ 14..=15 => UNDECODED[usize::from(k - 14)],
                16 => input.u64() as u32,
                k => u32::from(k),
            };
            let n = usize::from(input.u8());
            let mut union = [0u8; 256];
            let got = input.take(n);
            union[..got.len()].copy_from_slice(got);
            // Port-I/O data offsets are drawn near the window: relative to the end of
            // `kvm_run` unless the top bit of the reason selector asks for raw bytes.
            if reason == kvm_bindings::KVM_EXIT_IO && sel & 0x80 == 0 && union[15] & 0x80 == 0 {
                let rel = le(&union, 8, 2) as usize % (tail_len + 64);
                let off = (std::mem::size_of::<kvm_run>() + rel) as u64;
                union[8..16].copy_from_slice(&off.to_le_bytes());
            }
            let regs_sel = input.u8();
            let regs = (regs_sel != 0).then(|| {
                let mut r = Registers::default();
                r.regs.rax = if regs_sel & 1 != 0 { 12 } else { input.u64() };
                r.regs.rbx = input.u64();
                r.regs.rcx = input.u64();
                r.regs.rdx = input.u64();
                r.regs.rsi = input.u64();
                r.sregs.efer = if regs_sel & 2 != 0 { 1 << 10 } else { 0 };
                r.sregs.cs.l = (regs_sel >> 2) & 1;
                r
            });

            let mut run = kvm_run {
                exit_reason: reason,
                ..Default::default()
            };
            run.__bindgen_anon_1.padding = union.map(|b| b as std::ffi::c_char);
            let before = image(&run);
            let tail_before = tail.clone();
            let expected = model.expect(outcome, &union, reason, tail_len, &regs);
            let step = exits.step(outcome, &mut run, &mut tail, regs);
            let calls = log.take();
            check(&expected, &step, &calls, &run, &before, &tail, &tail_before);
            hypercalls += u64::from(expected.counted_hypercall);
        }
    });
    // Every hypercall was counted as one, on either transport.
    let stats = counters.stats();
    assert_eq!(
        stats.count(ExitKind::Hypercall) + stats.count(ExitKind::PortHypercall),
        hypercalls,
        "{stats:?}"
    );
    // The handler's map and the model's agree page by page.
    let map = memory.map.lock().unwrap_or_else(|p| p.into_inner());
    for (g, &p) in model.private.iter().enumerate() {
        let got = map
            .get(Gfn(g as u64))
            .expect("a frame")
            .attributes
            .is_private();
        assert_eq!(got, p, "frame {g:#x}");
    }
}

fn check(
    e: &Expected,
    step: &Step,
    calls: &[Call],
    run: &kvm_run,
    before: &(u32, [u8; 256]),
    tail: &[u8],
    tail_before: &[u8],
) {
    let ctx = || format!("{e:?} {step:?} {calls:?}");
    // The one handler call, with its values.
    match (&e.call, calls) {
        (None, []) => {}
        (Some(Call::PioWrite(port, _)), [Call::PioWrite(p, data)]) => {
            assert_eq!(port, p, "{}", ctx());
            // The bytes the guest wrote, from the window.
            let (offset, len) = (le(&before.1, 8, 8) as usize, data.len());
            let start = offset - std::mem::size_of::<kvm_run>();
            assert_eq!(&tail_before[start..start + len], &data[..], "{}", ctx());
        }
        (Some(want), [got]) => assert_eq!(want, got, "{}", ctx()),
        _ => panic!("handler calls differ from the model: {}", ctx()),
    }
    assert_eq!(
        e.continues,
        Some(step.end.is_none()),
        "whether the vCPU goes on: {}",
        ctx()
    );
    // The write back: exactly for hypercalls, and where the transport says.
    let after = image(run);
    let mut want_union = before.1;
    match (e.hypercall, step.written) {
        (Some(h), Some(Written::HypercallRet(ret))) if !h.port => {
            if let Some(result) = h.result {
                assert_eq!(ret, result, "{}", ctx());
            }
            want_union[56..64].copy_from_slice(&ret.to_le_bytes());
        }
        (Some(h), Some(Written::Rax(rax))) if h.port => {
            if let Some(result) = h.result {
                assert_eq!(rax, result, "{}", ctx());
            }
        }
        (None, Some(Written::MmioData(data))) if e.mmio_read.is_some() && step.end.is_none() => {
            let len = e.mmio_read.unwrap_or(0);
            for (i, &b) in data[..len].iter().enumerate() {
                assert_eq!(b, fill_byte(i), "{}", ctx());
            }
            want_union[8..16].copy_from_slice(&data);
        }
        (None, None) => assert!(
            e.mmio_read.is_none() || step.end.is_some(),
            "MMIO read without data: {}",
            ctx()
        ),
        _ => panic!("write back differs from the model: {}", ctx()),
    }
    assert_eq!(after.0, before.0, "exit reason changed: {}", ctx());
    assert_eq!(after.1, want_union, "kvm_run changed: {}", ctx());
    // The mapping past kvm_run: only an `in`'s window, filled by the handler.
    match &e.pio_in {
        Some(w) => {
            assert_eq!(&tail[..w.start], &tail_before[..w.start], "{}", ctx());
            assert_eq!(&tail[w.end..], &tail_before[w.end..], "{}", ctx());
            for (i, &b) in tail[w.clone()].iter().enumerate() {
                assert_eq!(b, fill_byte(i), "{}", ctx());
            }
        }
        None => assert_eq!(tail, tail_before, "mapping changed: {}", ctx()),
    }
}
