// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Deciding what a decoded exit means: validation, policy, handler calls, and what to
//! write back to the guest. No KVM here: the run loop applies the decision.

use std::time::Instant;

use kvm_bindings::{KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT};
use veil_attrs::FrameRange;

use crate::exit::{Access, Exit, ExitData, ExitError, MemoryFault, PioData, SystemEventKind};
use crate::handler::{BoxError, FaultPolicy, IoHandler, MemoryHandler, RequestOutcome};
use crate::hypercall::{AbiRequest, Hypercall, Hypercalls, Unclaimed};
use crate::ratelimit::RateLimiter;
use crate::request::MapGpaRange;
use crate::stats::{ExitCounters, ExitKind};

/// Why a vCPU, and with it the VM, stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An error exit, or one veil does not handle.
    #[error("vCPU exit")]
    Exit(#[from] ExitError),
    /// A memory fault under [`FaultPolicy::Refuse`].
    #[error("memory fault refused by policy: {fault}")]
    FaultRefused {
        /// The fault.
        fault: MemoryFault,
    },
    /// A memory fault that converting cannot fix: the range already has the access's state.
    #[error("memory fault on {range} cannot be fixed by converting: it is already {access}")]
    FaultNotFixable {
        /// The faulting frames.
        range: FrameRange,
        /// The access, and so the state the range already has.
        access: Access,
    },
    /// A memory fault outside guest memory, or with an empty or wrapping range.
    #[error("memory fault outside guest memory: {fault}")]
    FaultOutsideMemory {
        /// The fault.
        fault: MemoryFault,
    },
    /// The memory handler failed on a memory fault.
    #[error("memory handler failed on {fault}")]
    FaultHandler {
        /// The fault.
        fault: MemoryFault,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// The memory handler failed on a conversion request; the guest was answered `EINVAL`.
    #[error("memory handler failed to {request}")]
    ConversionHandler {
        /// The request.
        request: MapGpaRange,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// The I/O handler failed.
    #[error("I/O handler failed on {access}")]
    Io {
        /// What the guest was doing.
        access: IoAccess,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// A port-I/O hypercall on an architecture without port I/O.
    #[error("the port-I/O hypercall exists on x86-64 only")]
    NoPortTransport,
    /// A backend's hook failed on an exit reason veil does not decode.
    #[error("the hook for exit reason {reason} failed")]
    UnknownExit {
        /// `kvm_run.exit_reason`.
        reason: u32,
        /// The hook's error.
        #[source]
        source: BoxError,
    },
    /// The VMM's thread start hook ([`ExitRouting::thread_start`](crate::ExitRouting))
    /// failed on this vCPU's thread, before its first `KVM_RUN`.
    #[error("the vCPU thread's start hook failed")]
    ThreadStart {
        /// The hook's error.
        #[source]
        source: BoxError,
    },
    /// A KVM ioctl other than `KVM_RUN` failed while handling an exit.
    #[error("{op} failed")]
    Kvm {
        /// The ioctl.
        op: &'static str,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// An I/O access, named in [`RunError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoAccess {
    /// `in` from a port.
    PioRead(u16),
    /// `out` to a port.
    PioWrite(u16),
    /// MMIO read at an address.
    MmioRead(u64),
    /// MMIO write at an address.
    MmioWrite(u64),
}

impl std::fmt::Display for IoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IoAccess::PioRead(p) => write!(f, "port read at {p:#x}"),
            IoAccess::PioWrite(p) => write!(f, "port write at {p:#x}"),
            IoAccess::MmioRead(a) => write!(f, "MMIO read at {a:#x}"),
            IoAccess::MmioWrite(a) => write!(f, "MMIO write at {a:#x}"),
        }
    }
}

/// What the run loop writes back before re-entering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteBack {
    /// `kvm_run.hypercall.ret`.
    HypercallRet(u64),
    /// The guest's `rax` (port-I/O hypercall).
    Rax(u64),
    /// `kvm_run.mmio.data`; KVM copies only the exit's `mmio.len` bytes to the guest.
    MmioData([u8; 8]),
}

/// What the run loop does next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Re-enter the guest.
    Continue,
    /// Look at the pause/stop state, then re-enter.
    Interrupted,
    /// The vCPU halted.
    Halt,
    /// The guest shut down (triple fault).
    Shutdown,
    /// A system event that ends the VM.
    SystemEvent(SystemEventKind, ExitData),
    /// An exit reason veil does not decode, for the backend's hook.
    Other(u32),
    /// A fatal error.
    Fail(RunError),
}

/// The decision for one exit.
#[derive(Debug)]
pub(crate) struct Handled {
    pub(crate) write: Option<WriteBack>,
    pub(crate) next: Next,
}

impl Handled {
    fn next(next: Next) -> Self {
        Handled { write: None, next }
    }
}

/// The part of the vCPU's shared mapping that holds port-I/O data: the bytes from offset
/// `base` on. `PioData` offsets count from the start of the mapping.
pub(crate) struct PioWindow<'a> {
    pub(crate) base: usize,
    pub(crate) bytes: &'a mut [u8],
}

impl PioWindow<'_> {
    fn get_mut(&mut self, data: PioData) -> Option<&mut [u8]> {
        let start = data.offset.checked_sub(self.base)?;
        self.bytes.get_mut(start..start.checked_add(data.len())?)
    }
}

/// Source of the registers of a port-I/O hypercall, read only when one happens.
pub(crate) trait HypercallRegisters {
    /// The number, arguments and mode the guest loaded for an `out` to the hypercall
    /// port.
    fn port_hypercall(&mut self) -> Result<Hypercall, RunError>;
}

/// The per-vCPU state of exit handling.
pub(crate) struct Dispatcher<'a, M: ?Sized, I: ?Sized> {
    pub(crate) vcpu: usize,
    pub(crate) memory: &'a M,
    pub(crate) io: &'a I,
    pub(crate) hypercalls: &'a Hypercalls,
    pub(crate) policy: FaultPolicy,
    pub(crate) counters: &'a ExitCounters,
    pub(crate) log_limit: RateLimiter,
    /// The last fault that converting did not change, so its repeat is an error.
    pub(crate) unfixed: Option<(FrameRange, Access)>,
}

impl<M: MemoryHandler + ?Sized, I: IoHandler + ?Sized> Dispatcher<'_, M, I> {
    /// Decides what `exit` means. `pio` is where port-I/O data sits; `regs` is read only
    /// for a port-I/O hypercall.
    pub(crate) fn handle(
        &mut self,
        exit: &Exit,
        pio: &mut PioWindow<'_>,
        regs: &mut dyn HypercallRegisters,
    ) -> Handled {
        let kind = ExitKind::of(exit);
        self.counters.count(kind);
        if !matches!(exit, Exit::MemoryFault(_) | Exit::Interrupted) {
            self.unfixed = None;
        }
        match *exit {
            Exit::Interrupted => Handled::next(Next::Interrupted),
            Exit::IrqWindowOpen => Handled::next(Next::Continue),
            Exit::Halt => Handled::next(Next::Halt),
            Exit::Shutdown => Handled::next(Next::Shutdown),
            Exit::SystemEvent { kind, data } => Handled::next(Next::SystemEvent(kind, data)),
            Exit::MemoryFault(fault) => Handled::next(self.memory_fault(fault)),
            Exit::Other { reason } => Handled::next(Next::Other(reason)),
            Exit::Hypercall(call) => {
                let (code, next) = self.hypercall(kind, call);
                Handled {
                    write: Some(WriteBack::HypercallRet(code)),
                    next,
                }
            }
            Exit::PortHypercall => match regs.port_hypercall() {
                Ok(call) => {
                    let (code, next) = self.hypercall(kind, call);
                    Handled {
                        write: Some(WriteBack::Rax(code)),
                        next,
                    }
                }
                Err(e) => Handled::next(Next::Fail(e)),
            },
            Exit::PioIn { port, data } => {
                let access = IoAccess::PioRead(port);
                let Some(bytes) = pio.get_mut(data) else {
                    return Handled::next(Next::Fail(malformed_pio(KVM_EXIT_IO_IN, data)));
                };
                let r = self.timed(kind, || self.io.pio_read(port, bytes));
                Handled::next(io_next(access, r))
            }
            Exit::PioOut { port, data } => {
                let access = IoAccess::PioWrite(port);
                let Some(bytes) = pio.get_mut(data) else {
                    return Handled::next(Next::Fail(malformed_pio(KVM_EXIT_IO_OUT, data)));
                };
                let r = self.timed(kind, || self.io.pio_write(port, bytes));
                Handled::next(io_next(access, r))
            }
            Exit::MmioRead { addr, len } => {
                let mut buf = [0u8; 8];
                let n = usize::from(len).min(8);
                let r = self.timed(kind, || self.io.mmio_read(addr, &mut buf[..n]));
                match io_next(IoAccess::MmioRead(addr), r) {
                    Next::Continue => Handled {
                        write: Some(WriteBack::MmioData(buf)),
                        next: Next::Continue,
                    },
                    other => Handled::next(other),
                }
            }
            Exit::MmioWrite { addr, data } => {
                let r = self.timed(kind, || self.io.mmio_write(addr, data.as_slice()));
                Handled::next(io_next(IoAccess::MmioWrite(addr), r))
            }
        }
    }

    /// Runs a handler, adding the time it took to `kind`'s handler time.
    #[inline(always)]
    fn timed<T>(&self, kind: ExitKind, f: impl FnOnce() -> T) -> T {
        let clock = self.counters.clock();
        let start = clock.now();
        let r = f();
        // Saturating: a clock read on another CPU may lag a little.
        let ticks = clock.now().saturating_sub(start);
        self.counters.add_handler_ticks(kind, ticks);
        r
    }

    /// Routes `call` to the ABI that claims it, which validates it; carries out what it
    /// asks. Always yields the value the guest reads.
    fn hypercall(&mut self, kind: ExitKind, call: Hypercall) -> (u64, Next) {
        let Some(abi) = self.hypercalls.route(&call) else {
            let nr = call.number();
            self.refused(&call, "no ABI", &Unclaimed { nr });
            return (self.hypercalls.unclaimed(), Next::Continue);
        };
        let request = match abi.decode(&call, self.memory.layout()) {
            Ok(AbiRequest::Convert(request)) => request,
            Ok(AbiRequest::Answer(value)) => return (value, Next::Continue),
            Err(refusal) => {
                self.refused(&call, abi.name(), refusal.reason.as_ref());
                return (refusal.code, Next::Continue);
            }
        };
        match self.timed(kind, || self.memory.map_gpa_range(&request)) {
            Ok(outcome) => (abi.answer(&call, outcome), Next::Continue),
            Err(source) => (
                abi.answer(&call, RequestOutcome::Refused),
                Next::Fail(RunError::ConversionHandler { request, source }),
            ),
        }
    }

    /// Logs a refused hypercall, at a limited rate.
    fn refused(&mut self, call: &Hypercall, abi: &str, why: &dyn std::error::Error) {
        self.counters.count_refused();
        if let Some(suppressed) = self.log_limit.check(Instant::now()) {
            log::warn!(
                "vcpu {}: refused hypercall {:#x} ({abi}; arguments {:#x}, {:#x}, {:#x}, \
                 {:#x}): {why}{}",
                self.vcpu,
                call.number(),
                call.arg(0),
                call.arg(1),
                call.arg(2),
                call.arg(3),
                suppressed_note(suppressed)
            );
        }
    }

    fn memory_fault(&mut self, fault: MemoryFault) -> Next {
        if fault.unknown_flags() != 0
            && let Some(suppressed) = self.log_limit.check(Instant::now())
        {
            log::warn!(
                "vcpu {}: memory fault with unknown flags {:#x}: {fault}{}",
                self.vcpu,
                fault.unknown_flags(),
                suppressed_note(suppressed)
            );
        }
        if self.policy == FaultPolicy::Refuse {
            return Next::Fail(RunError::FaultRefused { fault });
        }
        let range = match fault.frames() {
            Some(range) if self.memory.layout().contains(&range) => range,
            _ => return Next::Fail(RunError::FaultOutsideMemory { fault }),
        };
        let access = fault.access();
        match self.timed(ExitKind::MemoryFault, || {
            self.memory.memory_fault(&fault, range)
        }) {
            Ok(0) if self.unfixed == Some((range, access)) => {
                Next::Fail(RunError::FaultNotFixable { range, access })
            }
            Ok(0) => {
                self.unfixed = Some((range, access));
                Next::Continue
            }
            Ok(_) => {
                self.unfixed = None;
                Next::Continue
            }
            Err(source) => Next::Fail(RunError::FaultHandler { fault, source }),
        }
    }
}

fn io_next(access: IoAccess, r: Result<(), BoxError>) -> Next {
    match r {
        Ok(()) => Next::Continue,
        Err(source) => Next::Fail(RunError::Io { access, source }),
    }
}

fn malformed_pio(direction: u32, data: PioData) -> RunError {
    RunError::Exit(ExitError::MalformedIo {
        // KVM_EXIT_IO_IN and _OUT are 0 and 1: the `as` keeps the value.
        direction: direction as u8,
        size: data.size,
        count: data.count,
        offset: data.offset as u64,
    })
}

fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} similar messages suppressed)")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::abi::KVM_MAP_GPA_RANGE_ENCRYPTED;
    use crate::exit::tests::{MAP_LEN, fault_run, hypercall_run, io_run};
    use crate::exit::{RunOutcome, decode};
    use crate::request::tests::args;
    use crate::request::{GuestLayout, MapGpaRangeArgs};
    use std::sync::Mutex;
    use veil_attrs::{AttrMap, Attributes};

    /// A memory handler over a real `AttrMap`, recording every call.
    pub(crate) struct MockMemory {
        pub(crate) layout: GuestLayout,
        pub(crate) map: Mutex<AttrMap>,
        pub(crate) requests: Mutex<Vec<MapGpaRange>>,
        pub(crate) faults: Mutex<Vec<(MemoryFault, FrameRange)>>,
        pub(crate) reply: Mutex<Option<RequestOutcome>>,
        pub(crate) fail: bool,
    }

    impl MockMemory {
        pub(crate) fn new(size: u64) -> Self {
            MockMemory {
                layout: GuestLayout::from_size(size),
                map: Mutex::new(AttrMap::new(size).unwrap()),
                requests: Mutex::default(),
                faults: Mutex::default(),
                reply: Mutex::new(None),
                fail: false,
            }
        }
        pub(crate) fn calls(&self) -> usize {
            self.requests.lock().unwrap().len() + self.faults.lock().unwrap().len()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("mock failure")]
    pub(crate) struct MockError;

    impl MemoryHandler for MockMemory {
        fn layout(&self) -> &GuestLayout {
            &self.layout
        }
        fn map_gpa_range(&self, request: &MapGpaRange) -> Result<RequestOutcome, BoxError> {
            self.requests.lock().unwrap().push(*request);
            if self.fail {
                return Err(Box::new(MockError));
            }
            if let Some(reply) = *self.reply.lock().unwrap() {
                return Ok(reply);
            }
            self.map
                .lock()
                .unwrap()
                .set(request.range(), request.to())?;
            Ok(RequestOutcome::Done)
        }
        fn memory_fault(&self, fault: &MemoryFault, range: FrameRange) -> Result<u64, BoxError> {
            self.faults.lock().unwrap().push((*fault, range));
            if self.fail {
                return Err(Box::new(MockError));
            }
            let changes = self
                .map
                .lock()
                .unwrap()
                .set(range, fault.access().attributes())?;
            Ok(changes.pages())
        }
    }

    /// An I/O handler recording writes and answering reads with a fixed byte pattern.
    #[derive(Default)]
    pub(crate) struct MockIo {
        pub(crate) log: Mutex<Vec<(IoAccess, Vec<u8>)>>,
        pub(crate) fail: bool,
    }

    impl IoHandler for MockIo {
        fn pio_read(&self, port: u16, data: &mut [u8]) -> Result<(), BoxError> {
            data.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = 0xa0 + i as u8);
            self.record(IoAccess::PioRead(port), data)
        }
        fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
            self.record(IoAccess::PioWrite(port), data)
        }
        fn mmio_read(&self, addr: u64, data: &mut [u8]) -> Result<(), BoxError> {
            data.iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = 0xb0 + i as u8);
            self.record(IoAccess::MmioRead(addr), data)
        }
        fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), BoxError> {
            self.record(IoAccess::MmioWrite(addr), data)
        }
    }

    impl MockIo {
        fn record(&self, a: IoAccess, data: &[u8]) -> Result<(), BoxError> {
            self.log.lock().unwrap().push((a, data.to_vec()));
            if self.fail {
                Err(Box::new(MockError))
            } else {
                Ok(())
            }
        }
    }

    /// Registers for a port-I/O hypercall, counting reads.
    pub(crate) struct FakeRegs {
        pub(crate) args: MapGpaRangeArgs,
        pub(crate) reads: usize,
    }

    impl HypercallRegisters for FakeRegs {
        fn port_hypercall(&mut self) -> Result<Hypercall, RunError> {
            self.reads += 1;
            let a = self.args;
            Ok(Hypercall {
                nr: a.nr,
                args: [a.gpa, a.pages, a.attributes, 0, 0, 0],
                long_mode: a.long_mode,
                transport: crate::Transport::Port,
            })
        }
    }

    const SIZE: u64 = 2 << 20;

    struct Fixture {
        memory: MockMemory,
        io: MockIo,
        counters: ExitCounters,
        hypercalls: Hypercalls,
        pio: Vec<u8>,
        regs: FakeRegs,
        unfixed: Option<(FrameRange, Access)>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                memory: MockMemory::new(SIZE),
                io: MockIo::default(),
                counters: ExitCounters::default(),
                hypercalls: Hypercalls::default(),
                pio: vec![0; MAP_LEN],
                regs: FakeRegs {
                    args: args(0, 1, 0),
                    reads: 0,
                },
                unfixed: None,
            }
        }

        fn dispatcher(&self, policy: FaultPolicy) -> Dispatcher<'_, MockMemory, MockIo> {
            Dispatcher {
                vcpu: 0,
                memory: &self.memory,
                io: &self.io,
                hypercalls: &self.hypercalls,
                policy,
                counters: &self.counters,
                log_limit: RateLimiter::default(),
                unfixed: None,
            }
        }

        /// Decodes `run` and handles it, like one turn of the run loop.
        fn turn(&mut self, run: &kvm_bindings::kvm_run, policy: FaultPolicy) -> Handled {
            let exit = decode(RunOutcome::Exited, run, MAP_LEN).unwrap();
            let mut pio = std::mem::take(&mut self.pio);
            let mut regs = FakeRegs {
                args: self.regs.args,
                reads: self.regs.reads,
            };
            let mut d = self.dispatcher(policy);
            d.unfixed = self.unfixed;
            let h = d.handle(
                &exit,
                &mut PioWindow {
                    base: 0,
                    bytes: &mut pio,
                },
                &mut regs,
            );
            let unfixed = d.unfixed;
            self.unfixed = unfixed;
            self.pio = pio;
            self.regs.reads = regs.reads;
            h
        }
    }

    fn ret(h: &Handled) -> u64 {
        match h.write {
            Some(WriteBack::HypercallRet(v)) => v,
            ref other => panic!("no hypercall.ret written: {other:?}"),
        }
    }

    #[test]
    fn valid_hypercall_converts_and_answers_zero() {
        let mut f = Fixture::new();
        let run = hypercall_run([0x1000, 4, KVM_MAP_GPA_RANGE_ENCRYPTED], 1);
        let h = f.turn(&run, FaultPolicy::ConvertImplicitly);
        assert_eq!(ret(&h), 0);
        assert!(matches!(h.next, Next::Continue));
        let reqs = f.memory.requests.lock().unwrap().clone();
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].gpa(), reqs[0].pages()), (0x1000, 4));
        assert_eq!(reqs[0].to(), Attributes::PRIVATE);
        let map = f.memory.map.lock().unwrap();
        assert!(
            map.range_is(
                FrameRange::from_gpa(0x1000, 0x4000).unwrap(),
                Attributes::PRIVATE
            )
            .unwrap()
        );
        assert_eq!(f.counters.snapshot().count(ExitKind::Hypercall), 1);
    }

    const TOP: u64 = !0xfff_u64;

    /// Every kind of malformed request: misaligned, zero pages, byte size or end
    /// overflowing, out of range, straddling the end, reserved bits, bad page size.
    const BAD: &[[u64; 3]] = &[
        [0x1001, 1, 0],
        [0x1000, 0, 0],
        [0x1000, 1 << 52, 0],
        [TOP, 1, 0],
        [SIZE, 1, 0],
        [SIZE - 0x1000, 2, 0],
        [0, 1, 1 << 5],
        [0, 1, (1 << 63) | KVM_MAP_GPA_RANGE_ENCRYPTED],
        [0, 1, 3],
        [0, 1, 0xf | KVM_MAP_GPA_RANGE_ENCRYPTED],
    ];

    fn assert_nothing_changed(f: &Fixture) {
        assert_eq!(f.memory.calls(), 0);
        let map = f.memory.map.lock().unwrap();
        assert_eq!(map.run_count(), 1);
        assert!(map.range_is(map.whole(), Attributes::empty()).unwrap());
    }

    #[test]
    fn bad_hypercalls_answer_einval_and_call_nothing() {
        let mut f = Fixture::new();
        for a in BAD {
            let h = f.turn(&hypercall_run(*a, 1), FaultPolicy::ConvertImplicitly);
            assert_eq!(ret(&h), 22, "{a:x?}");
            assert!(matches!(h.next, Next::Continue), "{a:x?}");
        }
        assert_nothing_changed(&f);
        assert_eq!(f.counters.snapshot().refused(), BAD.len() as u64);
    }

    #[test]
    fn bad_port_hypercalls_answer_einval_in_rax_and_call_nothing() {
        let mut f = Fixture::new();
        let run = io_run(
            kvm_bindings::KVM_EXIT_IO_OUT,
            crate::HYPERCALL_PORT,
            1,
            1,
            4096,
        );
        for [gpa, pages, attributes] in BAD {
            f.regs.args = args(*gpa, *pages, *attributes);
            let h = f.turn(&run, FaultPolicy::ConvertImplicitly);
            assert_eq!(h.write, Some(WriteBack::Rax(22)), "{:x?}", f.regs.args);
            assert!(matches!(h.next, Next::Continue));
        }
        assert_nothing_changed(&f);
        assert!(f.io.log.lock().unwrap().is_empty());
    }

    #[test]
    fn unknown_hypercall_number_is_einval() {
        let mut f = Fixture::new();
        let mut run = hypercall_run([0, 1, 0], 1);
        run.__bindgen_anon_1.hypercall.nr = 5;
        assert_eq!(ret(&f.turn(&run, FaultPolicy::ConvertImplicitly)), 22);
        assert_eq!(f.memory.calls(), 0);
        assert_eq!(f.counters.snapshot().refused(), 1);
    }

    #[test]
    fn handler_replies_map_to_codes() {
        let mut f = Fixture::new();
        let run = hypercall_run([0, 1, 0], 1);
        *f.memory.reply.lock().unwrap() = Some(RequestOutcome::Retry);
        assert_eq!(ret(&f.turn(&run, FaultPolicy::ConvertImplicitly)), 11);
        *f.memory.reply.lock().unwrap() = Some(RequestOutcome::Refused);
        assert_eq!(ret(&f.turn(&run, FaultPolicy::ConvertImplicitly)), 22);
    }

    #[test]
    fn handler_failure_still_writes_ret_then_stops() {
        let mut f = Fixture::new();
        f.memory.fail = true;
        let h = f.turn(&hypercall_run([0, 1, 0], 1), FaultPolicy::ConvertImplicitly);
        assert_eq!(ret(&h), 22);
        match h.next {
            Next::Fail(e @ RunError::ConversionHandler { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "memory handler failed to convert [0x0, 0x1000) to shared"
                );
                assert!(std::error::Error::source(&e).is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn port_hypercall_reads_registers_and_writes_rax() {
        let mut f = Fixture::new();
        f.regs.args = args(0x2000, 1, KVM_MAP_GPA_RANGE_ENCRYPTED);
        let run = io_run(
            kvm_bindings::KVM_EXIT_IO_OUT,
            crate::HYPERCALL_PORT,
            1,
            1,
            4096,
        );
        let h = f.turn(&run, FaultPolicy::ConvertImplicitly);
        assert_eq!(h.write, Some(WriteBack::Rax(0)));
        assert_eq!(f.regs.reads, 1);
        assert_eq!(f.memory.requests.lock().unwrap().len(), 1);
        assert!(f.io.log.lock().unwrap().is_empty(), "not a device write");

        // Invalid: EINVAL in rax, nothing called.
        f.regs.args = args(0x2001, 1, 0);
        let h = f.turn(&run, FaultPolicy::ConvertImplicitly);
        assert_eq!(h.write, Some(WriteBack::Rax(22)));
        assert_eq!(f.memory.requests.lock().unwrap().len(), 1);
        assert_eq!(f.counters.snapshot().count(ExitKind::PortHypercall), 2);
    }

    #[test]
    fn port_hypercall_in_32_bit_mode() {
        let mut f = Fixture::new();
        f.regs.args = MapGpaRangeArgs {
            long_mode: false,
            ..args((7 << 32) | 0x3000, (1 << 33) | 1, 1 << 40)
        };
        let run = io_run(
            kvm_bindings::KVM_EXIT_IO_OUT,
            crate::HYPERCALL_PORT,
            1,
            1,
            4096,
        );
        let h = f.turn(&run, FaultPolicy::ConvertImplicitly);
        assert_eq!(h.write, Some(WriteBack::Rax(0)));
        let reqs = f.memory.requests.lock().unwrap();
        assert_eq!((reqs[0].gpa(), reqs[0].pages()), (0x3000, 1));
    }

    #[test]
    fn pio_goes_to_the_io_handler() {
        let mut f = Fixture::new();
        f.pio[4096] = 0x42;
        let h = f.turn(
            &io_run(kvm_bindings::KVM_EXIT_IO_OUT, 0x3f8, 1, 1, 4096),
            FaultPolicy::ConvertImplicitly,
        );
        assert!(h.write.is_none() && matches!(h.next, Next::Continue));
        let h = f.turn(
            &io_run(kvm_bindings::KVM_EXIT_IO_IN, 0x60, 2, 2, 4096),
            FaultPolicy::ConvertImplicitly,
        );
        assert!(h.write.is_none() && matches!(h.next, Next::Continue));
        // The handler wrote straight into the shared mapping.
        assert_eq!(&f.pio[4096..4100], &[0xa0, 0xa1, 0xa2, 0xa3]);
        let log = f.io.log.lock().unwrap();
        assert_eq!(log[0], (IoAccess::PioWrite(0x3f8), vec![0x42]));
        assert_eq!(log[1].0, IoAccess::PioRead(0x60));
        let s = f.counters.snapshot();
        assert_eq!(
            (s.count(ExitKind::PioOut), s.count(ExitKind::PioIn)),
            (1, 1)
        );
    }

    #[test]
    fn mmio_goes_to_the_io_handler() {
        let mut f = Fixture::new();
        let mut run = crate::exit::tests::run_with(kvm_bindings::KVM_EXIT_MMIO);
        run.__bindgen_anon_1.mmio.phys_addr = 0xd000_0000;
        run.__bindgen_anon_1.mmio.len = 4;
        let h = f.turn(&run, FaultPolicy::ConvertImplicitly);
        assert_eq!(
            h.write,
            Some(WriteBack::MmioData([0xb0, 0xb1, 0xb2, 0xb3, 0, 0, 0, 0]))
        );
        assert_eq!(
            f.io.log.lock().unwrap()[0],
            (
                IoAccess::MmioRead(0xd000_0000),
                vec![0xb0, 0xb1, 0xb2, 0xb3]
            )
        );
        run.__bindgen_anon_1.mmio.is_write = 1;
        run.__bindgen_anon_1.mmio.data = [9; 8];
        run.__bindgen_anon_1.mmio.len = 2;
        let h = f.turn(&run, FaultPolicy::ConvertImplicitly);
        assert!(h.write.is_none());
        assert_eq!(
            f.io.log.lock().unwrap()[1],
            (IoAccess::MmioWrite(0xd000_0000), vec![9, 9])
        );
    }

    #[test]
    fn io_handler_error_stops() {
        let mut f = Fixture::new();
        f.io.fail = true;
        let h = f.turn(
            &io_run(kvm_bindings::KVM_EXIT_IO_OUT, 0x3f8, 1, 1, 4096),
            FaultPolicy::ConvertImplicitly,
        );
        match h.next {
            Next::Fail(e) => assert_eq!(e.to_string(), "I/O handler failed on port write at 0x3f8"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pio_window_outside_the_buffer_is_an_error() {
        let f = Fixture::new();
        let mut small = vec![0u8; 16];
        let data = PioData {
            offset: 4096,
            size: 1,
            count: 1,
        };
        let mut regs = FakeRegs {
            args: args(0, 1, 0),
            reads: 0,
        };
        // Past the end of the window, and before its start; the error keeps the direction.
        for base in [0, 8192] {
            for (exit, dir) in [
                (Exit::PioIn { port: 1, data }, KVM_EXIT_IO_IN),
                (Exit::PioOut { port: 1, data }, KVM_EXIT_IO_OUT),
            ] {
                let mut window = PioWindow {
                    base,
                    bytes: &mut small,
                };
                let h = f.dispatcher(FaultPolicy::ConvertImplicitly).handle(
                    &exit,
                    &mut window,
                    &mut regs,
                );
                match h.next {
                    Next::Fail(RunError::Exit(e)) => assert_eq!(
                        e,
                        ExitError::MalformedIo {
                            direction: dir as u8,
                            size: 1,
                            count: 1,
                            offset: 4096,
                        },
                        "base {base}"
                    ),
                    other => panic!("base {base}: {other:?}"),
                }
            }
        }
        assert!(f.io.log.lock().unwrap().is_empty());
    }

    #[test]
    fn fault_converts_implicitly() {
        let mut f = Fixture::new();
        let h = f.turn(
            &fault_run(0x5000, 0x1000, 8),
            FaultPolicy::ConvertImplicitly,
        );
        assert!(matches!(h.next, Next::Continue));
        let faults = f.memory.faults.lock().unwrap();
        assert_eq!(faults[0].1, FrameRange::from_gpa(0x5000, 0x1000).unwrap());
        assert_eq!(
            f.memory
                .map
                .lock()
                .unwrap()
                .get(veil_attrs::Gfn(5))
                .unwrap(),
            veil_attrs::PageState::PRIVATE
        );
    }

    #[test]
    fn fault_refused_by_policy() {
        let mut f = Fixture::new();
        let h = f.turn(&fault_run(0x5000, 0x1000, 8), FaultPolicy::Refuse);
        match h.next {
            Next::Fail(e) => assert_eq!(
                e.to_string(),
                "memory fault refused by policy: private access to 0x5000+0x1000"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.memory.calls(), 0);
    }

    #[test]
    fn fault_already_in_state_is_an_error_not_a_loop() {
        let mut f = Fixture::new();
        // A shared access to a shared frame: converting changes nothing.
        let run = fault_run(0x5000, 0x1000, 0);
        let first = f.turn(&run, FaultPolicy::ConvertImplicitly);
        assert!(matches!(first.next, Next::Continue), "one re-entry allowed");
        match f.turn(&run, FaultPolicy::ConvertImplicitly).next {
            Next::Fail(e @ RunError::FaultNotFixable { .. }) => assert_eq!(
                e.to_string(),
                "memory fault on [0x5000, 0x6000) cannot be fixed by converting: it is already shared"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fault_fixed_by_another_vcpu_gets_one_reentry() {
        let mut f = Fixture::new();
        let run = fault_run(0x5000, 0x1000, 8);
        // Another vCPU converted the frame between this fault and our handling.
        f.memory
            .map
            .lock()
            .unwrap()
            .set(
                FrameRange::from_gpa(0x5000, 0x1000).unwrap(),
                Attributes::PRIVATE,
            )
            .unwrap();
        assert!(matches!(
            f.turn(&run, FaultPolicy::ConvertImplicitly).next,
            Next::Continue
        ));
        // Progress elsewhere clears the memory of it.
        f.turn(
            &io_run(kvm_bindings::KVM_EXIT_IO_OUT, 1, 1, 1, 4096),
            FaultPolicy::ConvertImplicitly,
        );
        assert!(matches!(
            f.turn(&run, FaultPolicy::ConvertImplicitly).next,
            Next::Continue
        ));
    }

    #[test]
    fn fault_outside_memory_or_malformed() {
        let mut f = Fixture::new();
        for (gpa, size) in [(SIZE, 0x1000), (0x1000, 0), (u64::MAX - 0xfff, 0x2000)] {
            let h = f.turn(&fault_run(gpa, size, 8), FaultPolicy::ConvertImplicitly);
            assert!(
                matches!(h.next, Next::Fail(RunError::FaultOutsideMemory { .. })),
                "{gpa:#x}+{size:#x}"
            );
        }
        assert_eq!(f.memory.calls(), 0);
    }

    #[test]
    fn fault_with_unknown_flags_still_follows_the_private_bit() {
        let mut f = Fixture::new();
        let h = f.turn(
            &fault_run(0x7000, 0x1000, 8 | (1 << 20)),
            FaultPolicy::ConvertImplicitly,
        );
        assert!(matches!(h.next, Next::Continue));
        let faults = f.memory.faults.lock().unwrap();
        assert_eq!(faults[0].0.unknown_flags(), 1 << 20);
    }

    #[test]
    fn fault_handler_error_stops() {
        let mut f = Fixture::new();
        f.memory.fail = true;
        let h = f.turn(
            &fault_run(0x5000, 0x1000, 8),
            FaultPolicy::ConvertImplicitly,
        );
        assert!(matches!(h.next, Next::Fail(RunError::FaultHandler { .. })));
    }

    #[test]
    fn control_exits() {
        let mut f = Fixture::new();
        let p = FaultPolicy::ConvertImplicitly;
        use crate::exit::tests::run_with;
        assert!(matches!(
            f.turn(&run_with(kvm_bindings::KVM_EXIT_HLT), p).next,
            Next::Halt
        ));
        assert!(matches!(
            f.turn(&run_with(kvm_bindings::KVM_EXIT_SHUTDOWN), p).next,
            Next::Shutdown
        ));
        assert!(matches!(
            f.turn(&run_with(kvm_bindings::KVM_EXIT_INTR), p).next,
            Next::Interrupted
        ));
        let mut ev = run_with(kvm_bindings::KVM_EXIT_SYSTEM_EVENT);
        ev.__bindgen_anon_1.system_event.type_ = kvm_bindings::KVM_SYSTEM_EVENT_CRASH;
        assert!(matches!(
            f.turn(&ev, p).next,
            Next::SystemEvent(SystemEventKind::Crash, _)
        ));
        assert_eq!(f.memory.calls(), 0);
    }
}
