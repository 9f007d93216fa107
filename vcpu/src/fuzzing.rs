// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One exit through veil's run-loop body without a vCPU: decoding, dispatch, the write
//! back and the hook for exit reasons veil does not decode, on a `kvm_run` image and the
//! bytes after it. For the fuzz target in `vcpu/fuzz` and its corpus replay; not part
//! of veil-vcpu's API.

use std::sync::Arc;

use kvm_bindings::{kvm_regs, kvm_run, kvm_sregs};

use crate::dispatch::{Dispatcher, HypercallRegisters, PioWindow, RunError, WriteBack};
use crate::exit::{Exit, ExitError, RunOutcome, decode};
use crate::handler::{FaultPolicy, IoHandler, MemoryHandler};
use crate::hypercall::Hypercall;
use crate::port::port_hypercall;
use crate::ratelimit::RateLimiter;
use crate::runner::{ExitRouting, VcpuEnd, after_exit, write_run};
use crate::stats::{ExitCounters, ExitStats};

/// The registers a port-I/O hypercall reads, as `KVM_GET_REGS` and `KVM_GET_SREGS` give
/// them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registers {
    /// The general registers.
    pub regs: kvm_regs,
    /// The special registers.
    pub sregs: kvm_sregs,
}

/// What the write back of one exit changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// `kvm_run.hypercall.ret`.
    HypercallRet(u64),
    /// The guest's `rax`.
    Rax(u64),
    /// `kvm_run.mmio.data`.
    MmioData([u8; 8]),
}

/// The result of one exit.
#[derive(Debug)]
pub struct Step {
    /// What decoding gave.
    pub decoded: Result<Exit, ExitError>,
    /// Whether the port-I/O hypercall's registers were read.
    pub read_registers: bool,
    /// What was written back.
    pub written: Option<Written>,
    /// How the vCPU ended, or `None` if the run loop would re-enter.
    pub end: Option<VcpuEnd>,
}

/// The per-vCPU exit state of the run loop, kept across [`Exits::step`] calls.
pub struct Exits<'a, M: ?Sized, I: ?Sized> {
    dispatcher: Dispatcher<'a, M, I>,
    routing: &'a ExitRouting,
}

impl<'a, M: MemoryHandler + ?Sized, I: IoHandler + ?Sized> Exits<'a, M, I> {
    /// A vCPU's exit handling, its handlers and routing as `VcpuSet::spawn_routed`
    /// takes them; `counters` from [`counters`].
    pub fn new(
        memory: &'a M,
        io: &'a I,
        routing: &'a ExitRouting,
        policy: FaultPolicy,
        counters: &'a Counters,
    ) -> Self {
        Exits {
            dispatcher: Dispatcher {
                vcpu: 0,
                memory,
                io,
                hypercalls: &routing.hypercalls,
                policy,
                counters: &counters.0,
                log_limit: RateLimiter::default(),
                unfixed: None,
            },
            routing,
        }
    }

    /// What the run loop does with one `KVM_RUN` that returned `outcome`, leaving `run`
    /// and `tail` (the mapping's bytes after `kvm_run`) as it would. `regs` are the
    /// registers a port-I/O hypercall reads; `None` stands for `KVM_GET_REGS` failing.
    pub fn step(
        &mut self,
        outcome: RunOutcome,
        run: &mut kvm_run,
        tail: &mut [u8],
        regs: Option<Registers>,
    ) -> Step {
        let base = std::mem::size_of::<kvm_run>();
        let decoded = decode(outcome, run, base + tail.len());
        let mut step = Step {
            decoded,
            read_registers: false,
            written: None,
            end: None,
        };
        let exit = match &step.decoded {
            Ok(exit) => *exit,
            Err(e) => {
                step.end = Some(VcpuEnd::Failed(Arc::new(RunError::Exit(e.clone()))));
                return step;
            }
        };
        let mut pio = PioWindow { base, bytes: tail };
        let mut source = FakeRegisters { regs, read: false };
        let handled = self.dispatcher.handle(&exit, &mut pio, &mut source);
        step.read_registers = source.read;
        if let Some(write) = handled.write {
            step.written = Some(match write {
                WriteBack::Rax(rax) => Written::Rax(rax),
                WriteBack::HypercallRet(ret) => Written::HypercallRet(ret),
                WriteBack::MmioData(data) => Written::MmioData(data),
            });
            write_run(run, write);
        }
        step.end = after_exit(handled.next, self.routing.unknown_exits.as_deref(), 0, run);
        step
    }
}

/// A vCPU's exit counters.
pub struct Counters(ExitCounters);

/// Fresh exit counters.
pub fn counters() -> Counters {
    Counters(ExitCounters::default())
}

impl Counters {
    /// What they counted.
    pub fn stats(&self) -> ExitStats {
        self.0.snapshot()
    }
}

struct FakeRegisters {
    regs: Option<Registers>,
    read: bool,
}

impl HypercallRegisters for FakeRegisters {
    fn port_hypercall(&mut self) -> Result<Hypercall, RunError> {
        self.read = true;
        let regs = self.regs.ok_or(RunError::Kvm {
            op: "KVM_GET_REGS",
            source: vmm_sys_util::errno::Error::new(libc::EIO),
        })?;
        Ok(port_hypercall(&regs.regs, &regs.sregs))
    }
}
