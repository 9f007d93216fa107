// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vCPU run loop: one thread per vCPU, paused, resumed and stopped from any thread.
//!
//! A kick sets the requested state, then sends the kick signal (`SIGRTMIN` +
//! [`KICK_SIGNAL_OFFSET`]) to every vCPU thread. The signal handler sets the thread's
//! `kvm_run.immediate_exit`, so `KVM_RUN` returns `EINTR` whether the signal lands while
//! the guest runs, just before `KVM_RUN` is entered, or while an exit is being handled;
//! no kick is lost. The loop reads the requested state before every `KVM_RUN`.

use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use crate::dispatch::{Dispatcher, Next, PioWindow, RunError, WriteBack};
use crate::exit::{ExitData, ExitError, RunOutcome, SystemEventKind, decode};
use crate::handler::{BoxError, FaultPolicy, IoHandler, MemoryHandler};
use crate::hypercall::Hypercalls;
use crate::port::PortRegisters;
use crate::ratelimit::RateLimiter;
use crate::stats::{ExitCounters, ExitKind, ExitStats};

/// The kick signal is `SIGRTMIN() + KICK_SIGNAL_OFFSET`.
///
/// veil installs a handler for it the first time vCPUs are spawned; the rest of the
/// process must not use that signal for anything else. The handler is installed without
/// `SA_RESTART`, so a kick that lands while a handler on a vCPU thread is inside a
/// blocking system call makes that call fail with `EINTR` (std's `read_exact` and
/// `write_all` retry; other callers should too).
pub const KICK_SIGNAL_OFFSET: i32 = 0;

/// Errors creating or starting vCPUs.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {id}")]
    CreateVcpu {
        /// The vCPU id asked for.
        id: u64,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler (SIGRTMIN+{KICK_SIGNAL_OFFSET})")]
    KickSignal {
        /// The error.
        #[source]
        source: vmm_sys_util::errno::Error,
    },
    /// A vCPU thread could not be spawned.
    #[error("cannot spawn the thread of vCPU {index}")]
    Spawn {
        /// The vCPU's index in the set.
        index: usize,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// No vCPU was given.
    #[error("no vCPU to run")]
    NoVcpus,
}

/// A vCPU: the KVM vCPU file descriptor and the size of its shared `kvm_run` mapping.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    id: u64,
    map_len: usize,
}

impl Vcpu {
    /// Creates vCPU `id` in `vm`.
    ///
    /// Creation goes through the VM so the size of the shared mapping is the one
    /// kvm-ioctls mapped (`KVM_GET_VCPU_MMAP_SIZE`, kept by the `VmFd`).
    pub fn new(vm: &VmFd, id: u64) -> Result<Self, RunnerError> {
        let fd = vm
            .create_vcpu(id)
            .map_err(|source| RunnerError::CreateVcpu { id, source })?;
        Ok(Vcpu {
            fd,
            id,
            map_len: vm.run_size(),
        })
    }

    /// The KVM vCPU, for setting registers before running it and reading them after.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// The vCPU id given to `KVM_CREATE_VCPU`.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// How a vCPU's run ended.
#[derive(Debug, Clone)]
pub enum VcpuEnd {
    /// The vCPU executed `hlt` with nothing to wake it; the other vCPUs go on.
    Halted,
    /// Stopped on request, or because another vCPU ended the VM.
    Stopped,
    /// The guest shut down (`KVM_EXIT_SHUTDOWN`, for example a triple fault).
    Shutdown,
    /// A system event ended the VM.
    SystemEvent(SystemEventKind, ExitData),
    /// A fatal error.
    Failed(Arc<RunError>),
    /// A handler panicked on this vCPU's thread.
    Panicked,
}

/// Why the VM (all its vCPUs) stopped: the first vCPU to end it names the reason.
#[derive(Debug, Clone)]
pub enum StopReason {
    /// [`VcpuSet::stop`] was called.
    Requested,
    /// Every vCPU halted.
    AllHalted,
    /// vCPU `vcpu` saw the guest shut down.
    Shutdown {
        /// The vCPU's index.
        vcpu: usize,
    },
    /// vCPU `vcpu` saw a system event.
    SystemEvent {
        /// The vCPU's index.
        vcpu: usize,
        /// The event.
        kind: SystemEventKind,
    },
    /// vCPU `vcpu` hit a fatal error.
    Error {
        /// The vCPU's index.
        vcpu: usize,
        /// The error.
        error: Arc<RunError>,
    },
    /// A handler panicked on vCPU `vcpu`'s thread.
    Panicked {
        /// The vCPU's index.
        vcpu: usize,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Requested => write!(f, "stop requested"),
            StopReason::AllHalted => write!(f, "all vCPUs halted"),
            StopReason::Shutdown { vcpu } => write!(f, "guest shutdown on vCPU {vcpu}"),
            StopReason::SystemEvent { vcpu, kind } => {
                write!(f, "system event {kind:?} on vCPU {vcpu}")
            }
            StopReason::Error { vcpu, error } => {
                write!(f, "vCPU {vcpu}: {error}")?;
                let mut source = std::error::Error::source(error.as_ref());
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
            StopReason::Panicked { vcpu } => write!(f, "a handler panicked on vCPU {vcpu}"),
        }
    }
}

/// What one vCPU thread hands back.
#[derive(Debug)]
pub struct VcpuReport {
    /// The vCPU's index in the set.
    pub index: usize,
    /// How it ended.
    pub end: VcpuEnd,
    /// Its exit statistics.
    pub stats: ExitStats,
    /// The vCPU itself, to read its registers (`None` if its thread panicked).
    pub vcpu: Option<Vcpu>,
}

/// What [`VcpuSet::wait`] returns.
#[derive(Debug)]
pub struct VmReport {
    /// Why the VM stopped.
    pub reason: StopReason,
    /// One report per vCPU, by index.
    pub vcpus: Vec<VcpuReport>,
}

impl VmReport {
    /// The statistics of all vCPUs added up.
    pub fn stats(&self) -> ExitStats {
        self.vcpus
            .iter()
            .fold(ExitStats::default(), |acc, v| acc.merged(&v.stats))
    }
}

const RUNNING: u8 = 0;
const PAUSED: u8 = 1;
const STOPPING: u8 = 2;

/// The state shared by the controller and the vCPU threads.
struct Control {
    state: AtomicU8,
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Default)]
struct Inner {
    /// vCPU threads still in their loop.
    active: usize,
    /// Of those, how many are parked because of a pause.
    paused: usize,
    /// Threads that can be kicked: (index, thread). A thread removes itself before it
    /// exits, and kicks are sent with this lock held, so only live threads get signals.
    threads: Vec<(usize, KickTarget)>,
    reason: Option<StopReason>,
}

/// A vCPU thread, as a target for the kick signal.
#[derive(Clone, Copy)]
struct KickTarget(libc::pthread_t);

// SAFETY: `pthread_handle` returns the `pthread_self()` of a vCPU thread, taken by that
// thread itself. Kicks are only sent to entries of `Inner::threads`, under its lock, and
// a thread removes its entry (under the same lock) before it exits: the handle is live
// whenever it is used.
unsafe impl Killable for KickTarget {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a thread panicked while holding it; the counters
        // it protects are updated in single statements, so the data is still coherent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kick_all(&self, inner: &Inner) {
        let sig = kick_signal();
        for (index, t) in &inner.threads {
            if let Err(e) = t.kill(sig) {
                log::error!("cannot kick vCPU {index}: {e}");
            }
        }
    }

    /// Ends the VM for `reason` unless it is already ending.
    fn end_vm(&self, reason: StopReason) {
        let mut inner = self.lock();
        if inner.reason.is_none() {
            inner.reason = Some(reason);
        }
        self.state.store(STOPPING, Ordering::SeqCst);
        self.kick_all(&inner);
        self.changed.notify_all();
    }
}

thread_local! {
    /// The `immediate_exit` byte of the `kvm_run` of the vCPU running on this thread.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: a const-initialised thread-local without destructor, and one
    // atomic store.
    let target = IMMEDIATE_EXIT
        .try_with(Cell::get)
        .unwrap_or(ptr::null_mut());
    if !target.is_null() {
        // SAFETY: the vCPU thread points `IMMEDIATE_EXIT` at its `kvm_run.immediate_exit`
        // while that mapping is alive, and resets it to null before the `VcpuFd` can be
        // dropped or moved to another thread. A `u8` is always aligned for `AtomicU8`.
        unsafe { AtomicU8::from_ptr(target) }.store(1, Ordering::SeqCst);
    }
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

fn install_kick_handler() -> Result<(), RunnerError> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick))
        .map_err(|source| RunnerError::KickSignal { source })
}

/// Points the kick handler at this thread's `immediate_exit` for as long as it lives.
struct ImmediateExit {
    byte: *mut u8,
}

impl ImmediateExit {
    fn arm(vcpu: &mut Vcpu) -> Self {
        let byte = ptr::from_mut(&mut vcpu.fd.get_kvm_run().immediate_exit);
        IMMEDIATE_EXIT.with(|c| c.set(byte));
        ImmediateExit { byte }
    }

    fn clear(&self) {
        // SAFETY: `byte` is `immediate_exit` in the live `kvm_run` of this thread's vCPU
        // (see `on_kick`); it is only ever accessed atomically by this process.
        unsafe { AtomicU8::from_ptr(self.byte) }.store(0, Ordering::SeqCst);
    }
}

impl Drop for ImmediateExit {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|c| c.set(ptr::null_mut()));
    }
}

/// What a VM's vCPUs route exits to besides the memory and I/O handlers: the hypercall
/// ABIs, a hook for exit reasons veil does not decode, and a hook each vCPU thread runs
/// before it first enters the guest.
///
/// The default routes `KVM_HC_MAP_GPA_RANGE` on both transports and has no hooks, so an
/// unknown exit reason stops the VM with [`ExitError::Unhandled`](crate::ExitError).
#[derive(Clone, Default)]
pub struct ExitRouting {
    /// The hypercall ABIs, in the order they claim numbers.
    pub hypercalls: Hypercalls,
    /// Where exits veil does not decode go.
    pub unknown_exits: Option<Arc<dyn UnknownExitHandler>>,
    /// Run on each vCPU thread, with the vCPU's index, after the thread is set up and
    /// before its first `KVM_RUN`: where a VMM confines the thread (a seccomp filter),
    /// pins it to a CPU or names it for its own tools. An error ends that vCPU, and
    /// with it the VM, with [`RunError::ThreadStart`].
    pub thread_start: Option<ThreadStartHook>,
}

/// The hook [`ExitRouting::thread_start`] holds: called with the vCPU's index, on the
/// vCPU's own thread.
pub type ThreadStartHook = Arc<dyn Fn(usize) -> Result<(), BoxError> + Send + Sync>;

impl std::fmt::Debug for ExitRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitRouting")
            .field("hypercalls", &self.hypercalls)
            .field("unknown_exits", &self.unknown_exits.is_some())
            .field("thread_start", &self.thread_start.is_some())
            .finish()
    }
}

/// A backend's hook for exit reasons veil does not decode (`KVM_EXIT_TDX`, a vendor's).
pub trait UnknownExitHandler: Send + Sync {
    /// vCPU `vcpu` exited with `reason`, which veil does not decode. Handle it from `run`
    /// (read the exit's payload, write what the kernel expects back) and return `true` to
    /// re-enter the guest, or `false` to stop the VM with `ExitError::Unhandled`. An
    /// `Err` stops the VM with the error.
    fn handle(&self, vcpu: usize, reason: u32, run: &mut kvm_run) -> Result<bool, BoxError>;
}

/// Hands an exit veil does not decode to the hook: `Ok` re-enters the guest, an error
/// stops the VM.
pub(crate) fn unknown_exit(
    hook: Option<&dyn UnknownExitHandler>,
    vcpu: usize,
    reason: u32,
    run: &mut kvm_run,
) -> Result<(), RunError> {
    match hook.map(|h| h.handle(vcpu, reason, run)) {
        Some(Ok(true)) => Ok(()),
        None | Some(Ok(false)) => Err(RunError::Exit(ExitError::Unhandled { reason })),
        Some(Err(source)) => Err(RunError::UnknownExit { reason, source }),
    }
}

/// How the vCPU goes on after its exit was handled: `None` re-enters the guest, `Some`
/// ends the thread. An exit veil does not decode goes to `hook` first. The one place
/// that says it, for the run loop and the fuzzing step alike.
pub(crate) fn after_exit(
    next: Next,
    hook: Option<&dyn UnknownExitHandler>,
    vcpu: usize,
    run: &mut kvm_run,
) -> Option<VcpuEnd> {
    match next {
        Next::Continue | Next::Interrupted => None,
        Next::Other(reason) => unknown_exit(hook, vcpu, reason, run)
            .err()
            .map(|e| VcpuEnd::Failed(Arc::new(e))),
        Next::Halt => Some(VcpuEnd::Halted),
        Next::Shutdown => Some(VcpuEnd::Shutdown),
        Next::SystemEvent(kind, data) => Some(VcpuEnd::SystemEvent(kind, data)),
        Next::Fail(e) => Some(VcpuEnd::Failed(Arc::new(e))),
    }
}

/// What one vCPU thread works with.
struct Handlers<'a, M: ?Sized, I: ?Sized> {
    memory: &'a M,
    io: &'a I,
    routing: &'a ExitRouting,
    policy: FaultPolicy,
}

/// Runs `vcpu` until it halts, the VM ends, or a stop is requested.
fn run_loop<M, I>(
    vcpu: &mut Vcpu,
    index: usize,
    handlers: Handlers<'_, M, I>,
    control: &Control,
    counters: &ExitCounters,
) -> VcpuEnd
where
    M: MemoryHandler + ?Sized,
    I: IoHandler + ?Sized,
{
    let immediate_exit = ImmediateExit::arm(vcpu);
    let unknown_exits = handlers.routing.unknown_exits.as_deref();
    let mut dispatcher = Dispatcher {
        vcpu: index,
        memory: handlers.memory,
        io: handlers.io,
        hypercalls: &handlers.routing.hypercalls,
        policy: handlers.policy,
        counters,
        log_limit: RateLimiter::default(),
        unfixed: None,
    };
    loop {
        match control.state.load(Ordering::SeqCst) {
            RUNNING => {}
            PAUSED => {
                park(control);
                continue;
            }
            _ => return VcpuEnd::Stopped,
        }

        let outcome = run_vcpu(&vcpu.fd);
        if outcome == RunOutcome::Failed(libc::EINTR) {
            immediate_exit.clear();
        }
        // Borrowed where it was decoded: an `Exit` is too large to copy on every exit.
        let decoded = decode(outcome, vcpu.fd.get_kvm_run(), vcpu.map_len);
        let exit = match &decoded {
            Ok(exit) => exit,
            Err(e) => {
                counters.count(ExitKind::Error);
                return VcpuEnd::Failed(Arc::new(RunError::Exit(e.clone())));
            }
        };

        // Port-I/O data sits after `kvm_run` (`decode` checked that), so the window the
        // dispatcher gets starts there and never covers `immediate_exit`.
        let base = std::mem::size_of::<kvm_run>();
        let start = ptr::from_mut::<kvm_run>(vcpu.fd.get_kvm_run())
            .cast::<u8>()
            .wrapping_add(base);
        // SAFETY: kvm-ioctls mapped `VmFd::run_size()` bytes of the vCPU fd at the address
        // `get_kvm_run()` returns (`KvmRunWrapper::mmap_from_fd(&vcpu, self.run_size)` in
        // `VmFd::create_vcpu`), `Vcpu::new` took `map_len` from that same `VmFd`, and the
        // mapping holds at least a `kvm_run` (`saturating_sub` keeps the length in bounds
        // regardless). The mapping lives as long as `vcpu.fd`, which outlives this
        // iteration; nothing else in this process touches the bytes past `kvm_run` while
        // the slice is in use (`PortRegisters` only issues register ioctls, the kick
        // handler writes inside `kvm_run`), and the kernel does not write them while the
        // vCPU is out of `KVM_RUN`.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(start, vcpu.map_len.saturating_sub(base)) };
        let mut pio = PioWindow { base, bytes };
        let mut regs = PortRegisters::new(&vcpu.fd);
        let handled = dispatcher.handle(exit, &mut pio, &mut regs);

        if let Some(write) = handled.write {
            let written = match write {
                // The registers were read for this exit: change `rax` in them.
                WriteBack::Rax(rax) => regs.set_result(rax),
                write => {
                    write_run(vcpu.fd.get_kvm_run(), write);
                    Ok(())
                }
            };
            if let Err(e) = written {
                return VcpuEnd::Failed(Arc::new(e));
            }
        }
        if let Some(end) = after_exit(handled.next, unknown_exits, index, vcpu.fd.get_kvm_run()) {
            return end;
        }
    }
}

/// One `KVM_RUN` of `fd`, issued here rather than through kvm-ioctls' `VcpuFd::run`, whose
/// decoding of the exit [`decode`] would only repeat.
fn run_vcpu(fd: &VcpuFd) -> RunOutcome {
    // SAFETY: `fd` is a KVM vCPU file descriptor, and KVM_RUN takes no argument: the kernel
    // reads and writes only the vCPU's own `kvm_run` mapping, which kvm-ioctls made when it
    // created the `VcpuFd` and which lives as long as it.
    let ret = unsafe { vmm_sys_util::ioctl::ioctl(fd, KVM_RUN()) };
    if ret == 0 {
        RunOutcome::Exited
    } else {
        RunOutcome::Failed(vmm_sys_util::errno::Error::last().errno())
    }
}

// `_IO(KVMIO, 0x80)`, as in `<linux/kvm.h>` (kvm-ioctls does not export its own).
vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);

/// Writes a result that goes into `kvm_run` (a hypercall's `ret`, MMIO read data).
pub(crate) fn write_run(run: &mut kvm_run, write: WriteBack) {
    match write {
        WriteBack::HypercallRet(ret) => run.__bindgen_anon_1.hypercall.ret = ret,
        WriteBack::MmioData(data) => run.__bindgen_anon_1.mmio.data = data,
        // Goes to the guest's registers, not to `kvm_run`.
        WriteBack::Rax(_) => {}
    }
}

/// Waits while the VM is paused.
fn park(control: &Control) {
    let mut inner = control.lock();
    inner.paused += 1;
    control.changed.notify_all();
    while control.state.load(Ordering::SeqCst) == PAUSED {
        inner = control
            .changed
            .wait(inner)
            .unwrap_or_else(|p| p.into_inner());
    }
    inner.paused -= 1;
}

/// Deregisters a vCPU thread on the way out, also when a handler panics.
struct ThreadGuard<'a> {
    control: &'a Control,
    index: usize,
    end: Option<VcpuEnd>,
}

impl Drop for ThreadGuard<'_> {
    fn drop(&mut self) {
        let end = self.end.take().unwrap_or(VcpuEnd::Panicked);
        let reason = match &end {
            VcpuEnd::Halted | VcpuEnd::Stopped => None,
            VcpuEnd::Shutdown => Some(StopReason::Shutdown { vcpu: self.index }),
            VcpuEnd::SystemEvent(kind, _) => Some(StopReason::SystemEvent {
                vcpu: self.index,
                kind: *kind,
            }),
            VcpuEnd::Failed(error) => Some(StopReason::Error {
                vcpu: self.index,
                error: error.clone(),
            }),
            VcpuEnd::Panicked => Some(StopReason::Panicked { vcpu: self.index }),
        };
        if let Some(reason) = reason {
            self.control.end_vm(reason);
        }
        let mut inner = self.control.lock();
        inner.threads.retain(|(i, _)| *i != self.index);
        inner.active -= 1;
        if inner.active == 0 && inner.reason.is_none() {
            inner.reason = Some(StopReason::AllHalted);
        }
        self.control.changed.notify_all();
    }
}

/// A set of vCPUs, each running on its own thread.
///
/// Dropping the set stops the vCPUs and waits for their threads.
pub struct VcpuSet {
    control: Arc<Control>,
    counters: Vec<Arc<ExitCounters>>,
    threads: Vec<JoinHandle<VcpuReport>>,
}

impl std::fmt::Debug for VcpuSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuSet")
            .field("vcpus", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl VcpuSet {
    /// Starts one thread per vCPU. The vCPUs must be ready to run (registers set).
    ///
    /// `memory` and `io` are shared by all vCPU threads; `policy` decides what memory
    /// faults do.
    pub fn spawn<M, I>(
        vcpus: Vec<Vcpu>,
        memory: Arc<M>,
        io: Arc<I>,
        policy: FaultPolicy,
    ) -> Result<VcpuSet, RunnerError>
    where
        M: MemoryHandler + ?Sized + 'static,
        I: IoHandler + ?Sized + 'static,
    {
        Self::spawn_routed(vcpus, memory, io, policy, ExitRouting::default())
    }

    /// [`spawn`](Self::spawn), routing hypercalls and unknown exits as `routing` says
    /// (a backend's own hypercall ABI, its hook for exits veil does not decode).
    pub fn spawn_routed<M, I>(
        vcpus: Vec<Vcpu>,
        memory: Arc<M>,
        io: Arc<I>,
        policy: FaultPolicy,
        routing: ExitRouting,
    ) -> Result<VcpuSet, RunnerError>
    where
        M: MemoryHandler + ?Sized + 'static,
        I: IoHandler + ?Sized + 'static,
    {
        let routing = Arc::new(routing);
        if vcpus.is_empty() {
            return Err(RunnerError::NoVcpus);
        }
        install_kick_handler()?;
        let control = Arc::new(Control {
            state: AtomicU8::new(RUNNING),
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
        });
        let mut set = VcpuSet {
            control: control.clone(),
            counters: Vec::new(),
            threads: Vec::new(),
        };
        for (index, mut vcpu) in vcpus.into_iter().enumerate() {
            let counters = Arc::new(ExitCounters::default());
            let (thread_control, memory, io, routing, c) = (
                control.clone(),
                memory.clone(),
                io.clone(),
                routing.clone(),
                counters.clone(),
            );
            control.lock().active += 1;
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let control = thread_control;
                    let mut guard = ThreadGuard {
                        control: &control,
                        index,
                        end: None,
                    };
                    // The kick signal may be blocked in the thread that spawned us.
                    if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
                        log::warn!("vCPU {index}: cannot unblock the kick signal: {e}");
                    }
                    {
                        let mut inner = control.lock();
                        // SAFETY: pthread_self has no preconditions.
                        let me = unsafe { libc::pthread_self() };
                        inner.threads.push((index, KickTarget(me)));
                    }
                    let started = match &routing.thread_start {
                        Some(hook) => hook(index).map_err(|source| {
                            VcpuEnd::Failed(Arc::new(RunError::ThreadStart { source }))
                        }),
                        None => Ok(()),
                    };
                    let handlers = Handlers {
                        memory: &*memory,
                        io: &*io,
                        routing: &routing,
                        policy,
                    };
                    let end = match started {
                        Ok(()) => run_loop(&mut vcpu, index, handlers, &control, &c),
                        Err(end) => end,
                    };
                    guard.end = Some(end.clone());
                    drop(guard);
                    VcpuReport {
                        index,
                        end,
                        stats: c.snapshot(),
                        vcpu: Some(vcpu),
                    }
                });
            match spawned {
                Ok(handle) => {
                    set.threads.push(handle);
                    set.counters.push(counters);
                }
                Err(source) => {
                    control.lock().active -= 1;
                    // Dropping `set` stops and joins the threads already started.
                    return Err(RunnerError::Spawn { index, source });
                }
            }
        }
        Ok(set)
    }

    /// Number of vCPUs in the set.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// Whether the set has no vCPU (never true for a spawned set).
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Pauses every running vCPU and returns once each is parked outside `KVM_RUN` (or
    /// has ended). Returns `false` if the VM is stopping instead.
    pub fn pause(&self) -> bool {
        let mut inner = self.control.lock();
        if self
            .control
            .state
            .compare_exchange(RUNNING, PAUSED, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
            && self.control.state.load(Ordering::SeqCst) != PAUSED
        {
            return false;
        }
        self.control.kick_all(&inner);
        while inner.paused < inner.active {
            if self.control.state.load(Ordering::SeqCst) != PAUSED {
                return false;
            }
            inner = self
                .control
                .changed
                .wait(inner)
                .unwrap_or_else(|p| p.into_inner());
        }
        true
    }

    /// Resumes paused vCPUs. Returns `false` if the VM is stopping instead.
    pub fn resume(&self) -> bool {
        let _inner = self.control.lock();
        let resumed = self
            .control
            .state
            .compare_exchange(PAUSED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        self.control.changed.notify_all();
        resumed || self.control.state.load(Ordering::SeqCst) == RUNNING
    }

    /// Asks every vCPU to stop; [`VcpuSet::wait`] collects them.
    pub fn stop(&self) {
        self.control.end_vm(StopReason::Requested);
    }

    /// Whether every vCPU thread has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// The live exit statistics of each vCPU.
    pub fn stats(&self) -> Vec<ExitStats> {
        self.counters.iter().map(|c| c.snapshot()).collect()
    }

    /// Waits for every vCPU thread to end (after a stop, shutdown, error, or when all
    /// have halted) and reports why the VM stopped.
    pub fn wait(mut self) -> VmReport {
        let vcpus = self.join_all();
        let reason = self
            .control
            .lock()
            .reason
            .clone()
            .unwrap_or(StopReason::AllHalted);
        VmReport { reason, vcpus }
    }

    /// [`wait`](Self::wait), for at most `timeout`: the set comes back as the error if a
    /// vCPU thread is still running then, to [`stop`](Self::stop) and wait for, or to
    /// wait on. A VMM that must not hang on a guest that never halts uses this.
    pub fn wait_timeout(self, timeout: Duration) -> Result<VmReport, VcpuSet> {
        let deadline = Instant::now().checked_add(timeout);
        let mut inner = self.control.lock();
        while inner.active > 0 {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::MAX,
            };
            if left.is_zero() {
                drop(inner);
                return Err(self);
            }
            inner = match self.control.changed.wait_timeout(inner, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(inner);
        Ok(self.wait())
    }

    fn join_all(&mut self) -> Vec<VcpuReport> {
        let counters = std::mem::take(&mut self.counters);
        std::mem::take(&mut self.threads)
            .into_iter()
            .zip(counters)
            .enumerate()
            .map(|(index, (t, c))| {
                t.join().unwrap_or(VcpuReport {
                    index,
                    end: VcpuEnd::Panicked,
                    stats: c.snapshot(),
                    vcpu: None,
                })
            })
            .collect()
    }
}

impl Drop for VcpuSet {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
            self.join_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hook that handles reason 40 and declines the rest, or fails on everything.
    struct Hook(bool);

    impl UnknownExitHandler for Hook {
        fn handle(&self, _vcpu: usize, reason: u32, run: &mut kvm_run) -> Result<bool, BoxError> {
            if self.0 {
                return Err("the hook broke".into());
            }
            // A hook may write what the kernel expects back.
            run.immediate_exit = 0;
            Ok(reason == 40)
        }
    }

    #[test]
    fn unknown_exits_go_to_the_hook() {
        let mut run = kvm_run::default();
        assert!(matches!(
            unknown_exit(Some(&Hook(false)), 0, 40, &mut run),
            Ok(())
        ));
        assert!(matches!(
            unknown_exit(Some(&Hook(false)), 0, 41, &mut run),
            Err(RunError::Exit(ExitError::Unhandled { reason: 41 }))
        ));
        assert!(matches!(
            unknown_exit(None, 0, 40, &mut run),
            Err(RunError::Exit(ExitError::Unhandled { reason: 40 }))
        ));
        assert!(matches!(
            unknown_exit(Some(&Hook(true)), 0, 40, &mut run),
            Err(RunError::UnknownExit { reason: 40, .. })
        ));
    }

    #[test]
    fn results_land_in_kvm_run() {
        let mut run = kvm_run::default();
        // KVM (since 6.13) zeroes `ret` before the exit; a stale value must not survive.
        run.__bindgen_anon_1.hypercall.ret = 0xdead;
        write_run(&mut run, WriteBack::HypercallRet(22));
        // SAFETY: the member just written.
        assert_eq!(unsafe { run.__bindgen_anon_1.hypercall.ret }, 22);
        let mut run = kvm_run::default();
        write_run(&mut run, WriteBack::MmioData([1, 2, 3, 4, 0, 0, 0, 0]));
        // SAFETY: the member just written.
        let data = unsafe { run.__bindgen_anon_1.mmio.data };
        assert_eq!(data, [1, 2, 3, 4, 0, 0, 0, 0]);
        // `rax` is a register: `kvm_run` stays as it was.
        write_run(&mut run, WriteBack::Rax(11));
        // SAFETY: integers only, valid for any bits.
        assert_eq!(unsafe { run.__bindgen_anon_1.mmio.data }, data);
    }

    #[test]
    fn stop_reason_display_walks_sources() {
        let error = Arc::new(RunError::Kvm {
            op: "KVM_SET_REGS",
            source: vmm_sys_util::errno::Error::new(libc::EINVAL),
        });
        let s = StopReason::Error { vcpu: 1, error }.to_string();
        assert!(s.starts_with("vCPU 1: KVM_SET_REGS failed: "), "{s}");
        assert_eq!(
            StopReason::Shutdown { vcpu: 0 }.to_string(),
            "guest shutdown on vCPU 0"
        );
    }

    #[test]
    fn kick_handler_without_vcpu_is_harmless() {
        install_kick_handler().unwrap();
        // No vCPU on this thread: the handler must do nothing.
        on_kick(0, ptr::null_mut(), ptr::null_mut());
        let mut byte = 0u8;
        IMMEDIATE_EXIT.with(|c| c.set(&mut byte));
        on_kick(0, ptr::null_mut(), ptr::null_mut());
        IMMEDIATE_EXIT.with(|c| c.set(ptr::null_mut()));
        assert_eq!(byte, 1);
        // A real signal to this thread goes through the same handler.
        let me = KickTarget(
            // SAFETY: no preconditions.
            unsafe { libc::pthread_self() },
        );
        let mut byte = 0u8;
        IMMEDIATE_EXIT.with(|c| c.set(&mut byte));
        me.kill(kick_signal()).unwrap();
        IMMEDIATE_EXIT.with(|c| c.set(ptr::null_mut()));
        assert_eq!(byte, 1);
    }
}
