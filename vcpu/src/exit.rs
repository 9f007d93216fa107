// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Decoding of a `KVM_RUN` outcome into one typed value.
//!
//! [`decode`] reads `kvm_run` once: the exit reason picks the union member, which is read
//! and checked (port-I/O sizes and data window, MMIO lengths, system event and internal
//! error data) into an [`Exit`] or an [`ExitError`]. It is a pure function of the
//! `KVM_RUN` result and the structure, so every exit kind is tested with hand-built
//! structures and no `/dev/kvm`; veil's run loop issues `KVM_RUN` itself and decodes with
//! it, so nothing decodes an exit twice.
//!
//! A caller that runs the vCPU through kvm-ioctls' `VcpuFd::run`, which decodes every exit
//! already, keeps what it reported with [`KvmExit::of`] and finishes with [`decode_kvm`]:
//! kvm-ioctls' values are taken as they are where there is nothing to check (halt,
//! shutdown, a hypercall's number and arguments, a memory fault, a failed entry), and
//! `kvm_run` is read and checked only where kvm-ioctls does not check what veil must.

use std::fmt;

use kvm_bindings::{
    KVM_EXIT_DEBUG, KVM_EXIT_EXCEPTION, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_HYPERCALL,
    KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR, KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT,
    KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MEMORY_FAULT, KVM_EXIT_MMIO, KVM_EXIT_SHUTDOWN,
    KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_UNKNOWN, KVM_MEMORY_EXIT_FLAG_PRIVATE, kvm_run,
};
use kvm_ioctls::VcpuExit;
use veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE};

use crate::abi::{HYPERCALL_PORT, KVM_EXIT_HYPERCALL_LONG_MODE};
use crate::hypercall::{Hypercall, Transport};

/// What `KVM_RUN` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// `KVM_RUN` returned 0: `exit_reason` says why.
    Exited,
    /// `KVM_RUN` failed with this errno. `EFAULT` and `EHWPOISON` may come with a
    /// `KVM_EXIT_MEMORY_FAULT` filled in (the "annotated" `EFAULT`); `EINTR` means a kick
    /// or a signal; `kvm_run` is stale for every other errno.
    Failed(i32),
}

/// The access that caused a memory fault exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// The guest accessed the range as shared (no private flag).
    Shared,
    /// The guest accessed the range as private (`KVM_MEMORY_EXIT_FLAG_PRIVATE`).
    Private,
}

impl Access {
    /// The attributes a range must have for this access to succeed.
    pub const fn attributes(self) -> Attributes {
        match self {
            Access::Shared => Attributes::empty(),
            Access::Private => Attributes::PRIVATE,
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Shared => "shared",
            Access::Private => "private",
        })
    }
}

/// A memory fault exit (`KVM_EXIT_MEMORY_FAULT`): the guest accessed `[gpa, gpa + size)`
/// in a state KVM could not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemoryFault {
    /// Guest-physical address of the fault.
    pub gpa: u64,
    /// Size in bytes of the faulting range.
    pub size: u64,
    /// The raw flags word.
    pub flags: u64,
}

impl MemoryFault {
    /// Whether the faulting access was private or shared.
    pub const fn access(&self) -> Access {
        if self.flags & KVM_MEMORY_EXIT_FLAG_PRIVATE as u64 != 0 {
            Access::Private
        } else {
            Access::Shared
        }
    }

    /// Flag bits veil does not know (everything but `KVM_MEMORY_EXIT_FLAG_PRIVATE`).
    ///
    /// They are kept and reported rather than dropped: a newer kernel may mean something
    /// by them.
    pub const fn unknown_flags(&self) -> u64 {
        self.flags & !(KVM_MEMORY_EXIT_FLAG_PRIVATE as u64)
    }

    /// The frames covering the faulting bytes, or `None` when the size is zero or the
    /// range runs past the 64-bit address space.
    pub fn frames(&self) -> Option<FrameRange> {
        if self.size == 0 {
            return None;
        }
        let end = self
            .gpa
            .checked_add(self.size)?
            .checked_next_multiple_of(PAGE_SIZE)?;
        FrameRange::from_bounds(Gfn::containing(self.gpa), Gfn::containing(end))
    }
}

impl fmt::Display for MemoryFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} access to {:#x}+{:#x}",
            self.access(),
            self.gpa,
            self.size
        )?;
        if self.unknown_flags() != 0 {
            write!(f, " (unknown flags {:#x})", self.unknown_flags())?;
        }
        Ok(())
    }
}

/// Where the bytes of a port-I/O access sit in the vCPU's shared mapping.
///
/// KVM puts them at `io.data_offset` from the start of `kvm_run`, on x86 a page past it.
/// [`decode`] checks the window lies inside the mapping and past `kvm_run` itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PioData {
    /// Offset from the start of the mapping.
    pub offset: usize,
    /// Size of one access: 1, 2 or 4 bytes.
    pub size: u8,
    /// Number of accesses (more than one for `rep ins`/`rep outs`).
    pub count: u32,
}

impl PioData {
    /// Total bytes: `size * count`.
    pub const fn len(&self) -> usize {
        self.size as usize * self.count as usize
    }

    /// Whether no byte is transferred (never true for a decoded exit).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The byte range in the mapping.
    pub const fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// Up to eight bytes of MMIO data, copied out of `kvm_run`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MmioData {
    bytes: [u8; 8],
    len: u8,
}

impl MmioData {
    /// The bytes (1 to 8 of them).
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for MmioData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x?}", self.as_slice())
    }
}

/// The kind of a `KVM_EXIT_SYSTEM_EVENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemEventKind {
    /// `KVM_SYSTEM_EVENT_SHUTDOWN`.
    Shutdown,
    /// `KVM_SYSTEM_EVENT_RESET`.
    Reset,
    /// `KVM_SYSTEM_EVENT_CRASH`.
    Crash,
    /// `KVM_SYSTEM_EVENT_WAKEUP`.
    Wakeup,
    /// `KVM_SYSTEM_EVENT_SUSPEND`.
    Suspend,
    /// `KVM_SYSTEM_EVENT_SEV_TERM`: the guest asked its hypervisor to terminate it.
    TerminationRequest,
    /// A type veil does not know.
    Other(u32),
}

impl SystemEventKind {
    fn from_raw(raw: u32) -> Self {
        match raw {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => SystemEventKind::Shutdown,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => SystemEventKind::Reset,
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => SystemEventKind::Crash,
            kvm_bindings::KVM_SYSTEM_EVENT_WAKEUP => SystemEventKind::Wakeup,
            kvm_bindings::KVM_SYSTEM_EVENT_SUSPEND => SystemEventKind::Suspend,
            kvm_bindings::KVM_SYSTEM_EVENT_SEV_TERM => SystemEventKind::TerminationRequest,
            other => SystemEventKind::Other(other),
        }
    }
}

/// Up to 16 words of exit detail (`internal.data`, `system_event.data`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExitData {
    words: [u64; 16],
    len: u8,
}

impl ExitData {
    fn new(words: &[u64; 16], ndata: u32) -> Self {
        // `ndata` comes from the kernel but is bounded here, never trusted as an index.
        let len = ndata.min(16) as u8;
        ExitData { words: *words, len }
    }

    /// The words KVM filled in.
    pub fn as_slice(&self) -> &[u64] {
        &self.words[..usize::from(self.len)]
    }
}

impl fmt::Debug for ExitData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x?}", self.as_slice())
    }
}

impl fmt::Display for ExitData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, w) in self.as_slice().iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{w:#x}")?;
        }
        write!(f, "]")
    }
}

/// A decoded `KVM_RUN` exit that veil handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `KVM_EXIT_MEMORY_FAULT`, from a normal exit or an annotated `EFAULT`.
    MemoryFault(MemoryFault),
    /// `KVM_EXIT_HYPERCALL` (not yet validated); the result goes to `hypercall.ret`.
    Hypercall(Hypercall),
    /// An `out` to [`HYPERCALL_PORT`]: a port-I/O hypercall. The number and arguments are
    /// in the registers, read by the run loop; the result goes to `rax`.
    PortHypercall,
    /// `KVM_EXIT_IO`, `in`: the handler fills the bytes.
    PioIn {
        /// The port.
        port: u16,
        /// Where the bytes go.
        data: PioData,
    },
    /// `KVM_EXIT_IO`, `out`.
    PioOut {
        /// The port.
        port: u16,
        /// Where the bytes are.
        data: PioData,
    },
    /// `KVM_EXIT_MMIO`, read: the handler fills `len` bytes.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Access size, 1 to 8 bytes.
        len: u8,
    },
    /// `KVM_EXIT_MMIO`, write.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The bytes written.
        data: MmioData,
    },
    /// `KVM_EXIT_HLT`.
    Halt,
    /// `KVM_EXIT_SHUTDOWN`: triple fault or similar.
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent {
        /// What kind of event.
        kind: SystemEventKind,
        /// Event detail words.
        data: ExitData,
    },
    /// `KVM_RUN` was interrupted (`EINTR`, `immediate_exit`, or `KVM_EXIT_INTR`): a kick.
    Interrupted,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`: the guest can take an interrupt now.
    IrqWindowOpen,
    /// An exit reason veil does not decode (`KVM_EXIT_TDX`, say): a backend's
    /// [`UnknownExitHandler`](crate::UnknownExitHandler) may handle it from `kvm_run`;
    /// without one it stops the vCPU with [`ExitError::Unhandled`].
    Other {
        /// `kvm_run.exit_reason`.
        reason: u32,
    },
}

/// An exit that stops the vCPU: an error exit, or one veil does not understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExitError {
    /// `KVM_EXIT_INTERNAL_ERROR`, with KVM's sub-error (1 = emulation failure) and data.
    #[error("KVM internal error, sub-error {suberror}, data {data}")]
    InternalError {
        /// `internal.suberror` (`KVM_INTERNAL_ERROR_*`).
        suberror: u32,
        /// `internal.data[..ndata]` (boxed: error paths are rare, `Result`s stay small).
        data: Box<ExitData>,
    },
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware refused to enter the guest.
    #[error("VM entry failed, hardware reason {hardware_entry_failure_reason:#x} on cpu {cpu}")]
    FailEntry {
        /// `fail_entry.hardware_entry_failure_reason`.
        hardware_entry_failure_reason: u64,
        /// The host CPU.
        cpu: u32,
    },
    /// `KVM_EXIT_UNKNOWN`, with the hardware exit reason.
    #[error("unknown exit, hardware reason {hardware_exit_reason:#x}")]
    UnknownHardwareExit {
        /// `hw.hardware_exit_reason`.
        hardware_exit_reason: u64,
    },
    /// `KVM_EXIT_EXCEPTION`.
    #[error("guest exception {exception}, error code {error_code:#x}")]
    Exception {
        /// Exception vector.
        exception: u32,
        /// Error code.
        error_code: u32,
    },
    /// `KVM_EXIT_DEBUG` without a debugger attached.
    #[error("debug exit, exception {exception}, pc {pc:#x}")]
    Debug {
        /// Exception vector.
        exception: u32,
        /// Guest instruction pointer.
        pc: u64,
    },
    /// A memory fault that came with `EHWPOISON`: the host page is poisoned.
    #[error("hardware-poisoned memory at {gpa:#x}+{size:#x}")]
    HardwarePoison {
        /// Guest-physical address.
        gpa: u64,
        /// Size in bytes.
        size: u64,
    },
    /// A `KVM_EXIT_IO` whose direction, size, count or data window is impossible.
    #[error(
        "malformed port I/O exit: direction {direction}, size {size}, count {count}, data offset {offset:#x}"
    )]
    MalformedIo {
        /// Raw direction.
        direction: u8,
        /// Raw access size.
        size: u8,
        /// Raw count.
        count: u32,
        /// Raw data offset.
        offset: u64,
    },
    /// A `KVM_EXIT_MMIO` with a length of 0 or more than 8 bytes.
    #[error("malformed MMIO exit at {addr:#x}, length {len}")]
    MalformedMmio {
        /// Guest-physical address.
        addr: u64,
        /// Raw length.
        len: u32,
    },
    /// An exit reason veil does not handle.
    #[error("unhandled exit reason {reason}")]
    Unhandled {
        /// `kvm_run.exit_reason`.
        reason: u32,
    },
    /// `KVM_RUN` itself failed.
    #[error("KVM_RUN failed: {}", std::io::Error::from_raw_os_error(*.errno))]
    RunFailed {
        /// The errno.
        errno: i32,
    },
}

/// What kvm-ioctls' `VcpuFd::run` reported for one `KVM_RUN`, kept as an owned value.
///
/// The exits kvm-ioctls decodes completely, with nothing to check, carry their values;
/// for the others only the kind is kept, and [`decode_kvm`] reads and checks their payload
/// in `kvm_run` (kvm-ioctls does not bound port-I/O data windows, MMIO lengths or event
/// data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmExit {
    /// `KVM_RUN` failed with this errno (`EINTR` for a kick).
    Failed(i32),
    /// `KVM_EXIT_MEMORY_FAULT` with `EFAULT` (or `EHWPOISON` when `hwpoison`).
    MemoryFault {
        /// The fault.
        fault: MemoryFault,
        /// Whether `KVM_RUN` failed with `EHWPOISON`.
        hwpoison: bool,
    },
    /// `KVM_EXIT_HYPERCALL`.
    Hypercall {
        /// `hypercall.nr`.
        nr: u64,
        /// `hypercall.args`.
        args: [u64; 6],
        /// Bit 0 of `hypercall.flags` (the old `longmode`).
        long_mode: bool,
    },
    /// `KVM_EXIT_HLT`.
    Halt,
    /// `KVM_EXIT_SHUTDOWN`.
    Shutdown,
    /// `KVM_EXIT_INTR`.
    Interrupted,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`.
    IrqWindowOpen,
    /// `KVM_EXIT_FAIL_ENTRY`.
    FailEntry {
        /// `fail_entry.hardware_entry_failure_reason`.
        hardware_entry_failure_reason: u64,
        /// `fail_entry.cpu`.
        cpu: u32,
    },
    /// `KVM_EXIT_DEBUG`.
    Debug {
        /// `debug.arch.exception`.
        exception: u32,
        /// `debug.arch.pc`.
        pc: u64,
    },
    /// Any other exit: veil decodes it from `kvm_run.exit_reason` and the payload.
    InRun,
}

impl KvmExit {
    /// What `run()` returned. `errno` is the errno `KVM_RUN` left when kvm-ioctls reports
    /// a memory fault (it does not say whether it came with `EFAULT` or `EHWPOISON`).
    pub fn of(result: &Result<VcpuExit<'_>, kvm_ioctls::Error>, errno: i32) -> KvmExit {
        match result {
            Err(e) => KvmExit::Failed(e.errno()),
            Ok(VcpuExit::MemoryFault { gpa, size, flags }) => KvmExit::MemoryFault {
                fault: MemoryFault {
                    gpa: *gpa,
                    size: *size,
                    flags: *flags,
                },
                hwpoison: errno == libc::EHWPOISON,
            },
            Ok(VcpuExit::Hypercall(h)) => KvmExit::Hypercall {
                nr: h.nr,
                args: h.args,
                long_mode: u64::from(h.longmode) & KVM_EXIT_HYPERCALL_LONG_MODE != 0,
            },
            Ok(VcpuExit::Hlt) => KvmExit::Halt,
            Ok(VcpuExit::Shutdown) => KvmExit::Shutdown,
            Ok(VcpuExit::Intr) => KvmExit::Interrupted,
            Ok(VcpuExit::IrqWindowOpen) => KvmExit::IrqWindowOpen,
            Ok(VcpuExit::FailEntry(reason, cpu)) => KvmExit::FailEntry {
                hardware_entry_failure_reason: *reason,
                cpu: *cpu,
            },
            Ok(VcpuExit::Debug(arch)) => KvmExit::Debug {
                exception: arch.exception,
                pc: arch.pc,
            },
            Ok(_) => KvmExit::InRun,
        }
    }

    /// What kvm-ioctls would report for `outcome` and `run`: the same values, read from a
    /// `kvm_run` image (for tests, fuzzing, and callers that issue `KVM_RUN` themselves).
    pub fn from_run(outcome: RunOutcome, run: &kvm_run) -> KvmExit {
        match outcome {
            RunOutcome::Failed(errno @ (libc::EFAULT | libc::EHWPOISON))
                if run.exit_reason == KVM_EXIT_MEMORY_FAULT =>
            {
                KvmExit::MemoryFault {
                    fault: memory_fault(run),
                    hwpoison: errno == libc::EHWPOISON,
                }
            }
            RunOutcome::Failed(errno) => KvmExit::Failed(errno),
            RunOutcome::Exited => match run.exit_reason {
                KVM_EXIT_HYPERCALL => {
                    // SAFETY: exit_reason says the kernel filled the `hypercall` member; its
                    // fields are plain integers.
                    let hc = unsafe { run.__bindgen_anon_1.hypercall };
                    // SAFETY: both members of this union are integers, valid for any bits.
                    let flags = unsafe { hc.__bindgen_anon_1.flags };
                    KvmExit::Hypercall {
                        nr: hc.nr,
                        args: hc.args,
                        long_mode: flags & KVM_EXIT_HYPERCALL_LONG_MODE != 0,
                    }
                }
                KVM_EXIT_HLT => KvmExit::Halt,
                KVM_EXIT_SHUTDOWN => KvmExit::Shutdown,
                KVM_EXIT_INTR => KvmExit::Interrupted,
                KVM_EXIT_IRQ_WINDOW_OPEN => KvmExit::IrqWindowOpen,
                KVM_EXIT_FAIL_ENTRY => {
                    // SAFETY: exit_reason says the kernel filled `fail_entry`; integers only.
                    let fe = unsafe { run.__bindgen_anon_1.fail_entry };
                    KvmExit::FailEntry {
                        hardware_entry_failure_reason: fe.hardware_entry_failure_reason,
                        cpu: fe.cpu,
                    }
                }
                KVM_EXIT_DEBUG => {
                    // SAFETY: exit_reason says the kernel filled `debug`; integers only.
                    let dbg = unsafe { run.__bindgen_anon_1.debug };
                    KvmExit::Debug {
                        exception: dbg.arch.exception,
                        pc: dbg.arch.pc,
                    }
                }
                _ => KvmExit::InRun,
            },
        }
    }
}

/// Decodes one `KVM_RUN` outcome from `kvm_run`, reading the member the exit reason names
/// once. The result is the one [`KvmExit::from_run`] and [`decode_kvm`] give.
///
/// `run` is the vCPU's `kvm_run`; `map_len` the size of the vCPU's shared mapping, which
/// bounds where port-I/O data may sit. Nothing here trusts a length or offset from
/// `kvm_run` without checking it.
#[inline]
pub fn decode(outcome: RunOutcome, run: &kvm_run, map_len: usize) -> Result<Exit, ExitError> {
    match outcome {
        // Port I/O first: the most frequent exit, and on this path the only one decoded
        // without a call.
        RunOutcome::Exited if run.exit_reason == KVM_EXIT_IO => decode_io(run, map_len),
        RunOutcome::Exited => decode_exit(run, map_len),
        // A failed run says nothing more in `kvm_run` than `from_run` reads.
        RunOutcome::Failed(_) => decode_kvm(KvmExit::from_run(outcome, run), run, map_len),
    }
}

/// Finishes decoding what kvm-ioctls reported: its own values where it decoded them
/// whole, `kvm_run` read and checked for the rest.
pub fn decode_kvm(exit: KvmExit, run: &kvm_run, map_len: usize) -> Result<Exit, ExitError> {
    match exit {
        // EAGAIN: a vCPU waiting for its start-up IPI (an application processor under
        // the in-kernel irqchip) woke without one, or got INIT; KVM asks to be re-run.
        KvmExit::Failed(libc::EINTR | libc::EAGAIN) => Ok(Exit::Interrupted),
        KvmExit::Failed(errno) => Err(ExitError::RunFailed { errno }),
        KvmExit::MemoryFault { fault, hwpoison } => {
            if hwpoison {
                return Err(ExitError::HardwarePoison {
                    gpa: fault.gpa,
                    size: fault.size,
                });
            }
            Ok(Exit::MemoryFault(fault))
        }
        KvmExit::Hypercall {
            nr,
            args,
            long_mode,
        } => Ok(Exit::Hypercall(Hypercall {
            nr,
            args,
            long_mode,
            transport: Transport::Exit,
        })),
        KvmExit::Halt => Ok(Exit::Halt),
        KvmExit::Shutdown => Ok(Exit::Shutdown),
        KvmExit::Interrupted => Ok(Exit::Interrupted),
        KvmExit::IrqWindowOpen => Ok(Exit::IrqWindowOpen),
        KvmExit::FailEntry {
            hardware_entry_failure_reason,
            cpu,
        } => Err(ExitError::FailEntry {
            hardware_entry_failure_reason,
            cpu,
        }),
        KvmExit::Debug { exception, pc } => Err(ExitError::Debug { exception, pc }),
        KvmExit::InRun => decode_exit(run, map_len),
    }
}

/// A `KVM_RUN` that returned 0: the exit reason names the member to read and check.
fn decode_exit(run: &kvm_run, map_len: usize) -> Result<Exit, ExitError> {
    match run.exit_reason {
        KVM_EXIT_IO => decode_io(run, map_len),
        KVM_EXIT_HLT => Ok(Exit::Halt),
        KVM_EXIT_SHUTDOWN => Ok(Exit::Shutdown),
        KVM_EXIT_INTR => Ok(Exit::Interrupted),
        KVM_EXIT_IRQ_WINDOW_OPEN => Ok(Exit::IrqWindowOpen),
        KVM_EXIT_MMIO => {
            // SAFETY: exit_reason says the kernel filled the `mmio` member; every bit
            // pattern is a valid value of its integer fields.
            let mmio = unsafe { run.__bindgen_anon_1.mmio };
            let len = match u8::try_from(mmio.len) {
                Ok(len @ 1..=8) => len,
                _ => {
                    return Err(ExitError::MalformedMmio {
                        addr: mmio.phys_addr,
                        len: mmio.len,
                    });
                }
            };
            if mmio.is_write != 0 {
                Ok(Exit::MmioWrite {
                    addr: mmio.phys_addr,
                    data: MmioData {
                        bytes: mmio.data,
                        len,
                    },
                })
            } else {
                Ok(Exit::MmioRead {
                    addr: mmio.phys_addr,
                    len,
                })
            }
        }
        // A memory fault reported as a normal exit (not an annotated EFAULT).
        KVM_EXIT_MEMORY_FAULT => Ok(Exit::MemoryFault(memory_fault(run))),
        KVM_EXIT_SYSTEM_EVENT => {
            // SAFETY: exit_reason says the kernel filled `system_event`; integers only.
            let ev = unsafe { run.__bindgen_anon_1.system_event };
            // SAFETY: both members of this union are integers, valid for any bits.
            let words = unsafe { ev.__bindgen_anon_1.data };
            Ok(Exit::SystemEvent {
                kind: SystemEventKind::from_raw(ev.type_),
                data: ExitData::new(&words, ev.ndata),
            })
        }
        KVM_EXIT_INTERNAL_ERROR => {
            // SAFETY: exit_reason says the kernel filled `internal`; integers only. The
            // emulation-failure layout shares its first two fields.
            let internal = unsafe { run.__bindgen_anon_1.internal };
            Err(ExitError::InternalError {
                suberror: internal.suberror,
                data: Box::new(ExitData::new(&internal.data, internal.ndata)),
            })
        }
        KVM_EXIT_UNKNOWN => {
            // SAFETY: exit_reason says the kernel filled `hw`; an integer.
            let hw = unsafe { run.__bindgen_anon_1.hw };
            Err(ExitError::UnknownHardwareExit {
                hardware_exit_reason: hw.hardware_exit_reason,
            })
        }
        KVM_EXIT_EXCEPTION => {
            // SAFETY: exit_reason says the kernel filled `ex`; integers only.
            let ex = unsafe { run.__bindgen_anon_1.ex };
            Err(ExitError::Exception {
                exception: ex.exception,
                error_code: ex.error_code,
            })
        }
        // The members kvm-ioctls decodes whole: read the way `from_run` reads them, so
        // both paths give the same values.
        KVM_EXIT_HYPERCALL | KVM_EXIT_FAIL_ENTRY | KVM_EXIT_DEBUG => {
            decode_kvm(KvmExit::from_run(RunOutcome::Exited, run), run, map_len)
        }
        reason => Ok(Exit::Other { reason }),
    }
}

fn memory_fault(run: &kvm_run) -> MemoryFault {
    // SAFETY: only called when exit_reason is KVM_EXIT_MEMORY_FAULT, so the kernel filled
    // `memory_fault`; integers only.
    let mf = unsafe { run.__bindgen_anon_1.memory_fault };
    MemoryFault {
        gpa: mf.gpa,
        size: mf.size,
        flags: mf.flags,
    }
}

#[inline]
fn decode_io(run: &kvm_run, map_len: usize) -> Result<Exit, ExitError> {
    // SAFETY: exit_reason says the kernel filled `io`; integers only.
    let io = unsafe { run.__bindgen_anon_1.io };
    let malformed = || ExitError::MalformedIo {
        direction: io.direction,
        size: io.size,
        count: io.count,
        offset: io.data_offset,
    };
    if !matches!(io.size, 1 | 2 | 4) || io.count == 0 {
        return Err(malformed());
    }
    let data = PioData {
        offset: usize::try_from(io.data_offset).map_err(|_| malformed())?,
        size: io.size,
        count: io.count,
    };
    // The window must lie past `kvm_run` itself (KVM puts it a page further) and inside
    // the mapping. size <= 4 and count <= u32::MAX: the length fits a 64-bit usize.
    match data.offset.checked_add(data.len()) {
        Some(end) if data.offset >= std::mem::size_of::<kvm_run>() && end <= map_len => {}
        _ => return Err(malformed()),
    }
    match u32::from(io.direction) {
        KVM_EXIT_IO_OUT if io.port == HYPERCALL_PORT => Ok(Exit::PortHypercall),
        KVM_EXIT_IO_OUT => Ok(Exit::PioOut {
            port: io.port,
            data,
        }),
        KVM_EXIT_IO_IN => Ok(Exit::PioIn {
            port: io.port,
            data,
        }),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::abi::KVM_HC_MAP_GPA_RANGE;
    use kvm_bindings::{
        KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
    };

    pub(crate) const MAP_LEN: usize = 2 * 4096;

    pub(crate) fn run_with(reason: u32) -> kvm_run {
        kvm_run {
            exit_reason: reason,
            ..Default::default()
        }
    }

    pub(crate) fn io_run(direction: u32, port: u16, size: u8, count: u32, offset: u64) -> kvm_run {
        let mut run = run_with(KVM_EXIT_IO);
        run.__bindgen_anon_1.io.direction = direction as u8;
        run.__bindgen_anon_1.io.port = port;
        run.__bindgen_anon_1.io.size = size;
        run.__bindgen_anon_1.io.count = count;
        run.__bindgen_anon_1.io.data_offset = offset;
        run
    }

    fn ok(run: &kvm_run) -> Result<Exit, ExitError> {
        decode(RunOutcome::Exited, run, MAP_LEN)
    }

    #[test]
    fn pio_in_and_out() {
        let run = io_run(KVM_EXIT_IO_OUT, 0x3f8, 1, 1, 4096);
        let want = PioData {
            offset: 4096,
            size: 1,
            count: 1,
        };
        assert_eq!(
            ok(&run),
            Ok(Exit::PioOut {
                port: 0x3f8,
                data: want
            })
        );
        let run = io_run(KVM_EXIT_IO_IN, 0x60, 4, 3, 4096);
        let data = PioData {
            offset: 4096,
            size: 4,
            count: 3,
        };
        assert_eq!(ok(&run), Ok(Exit::PioIn { port: 0x60, data }));
        assert_eq!(data.range(), 4096..4108);
    }

    #[test]
    fn port_hypercall_is_out_to_the_port() {
        let run = io_run(KVM_EXIT_IO_OUT, HYPERCALL_PORT, 1, 1, 4096);
        assert_eq!(ok(&run), Ok(Exit::PortHypercall));
        // An `in` from the port is ordinary port I/O.
        let run = io_run(KVM_EXIT_IO_IN, HYPERCALL_PORT, 1, 1, 4096);
        assert!(matches!(ok(&run), Ok(Exit::PioIn { .. })));
    }

    #[test]
    fn malformed_pio() {
        for (dir, size, count, offset) in [
            (KVM_EXIT_IO_OUT, 3, 1, 4096),       // bad size
            (KVM_EXIT_IO_OUT, 1, 0, 4096),       // no access
            (KVM_EXIT_IO_IN, 4, 1, 8190),        // runs past the mapping
            (KVM_EXIT_IO_IN, 4, u32::MAX, 4096), // far past it
            (KVM_EXIT_IO_IN, 1, 1, u64::MAX),    // offset past it
            (KVM_EXIT_IO_OUT, 1, 1, 0),          // overlapping kvm_run itself
            (7, 1, 1, 4096),                     // bad direction
        ] {
            let run = io_run(dir, 0x80, size, count, offset);
            assert!(
                matches!(ok(&run), Err(ExitError::MalformedIo { .. })),
                "{dir} {size} {count} {offset}"
            );
        }
    }

    #[test]
    fn mmio() {
        let mut run = run_with(KVM_EXIT_MMIO);
        run.__bindgen_anon_1.mmio.phys_addr = 0xd000_0000;
        run.__bindgen_anon_1.mmio.len = 4;
        run.__bindgen_anon_1.mmio.is_write = 1;
        run.__bindgen_anon_1.mmio.data = [1, 2, 3, 4, 5, 6, 7, 8];
        match ok(&run) {
            Ok(Exit::MmioWrite { addr, data }) => {
                assert_eq!(addr, 0xd000_0000);
                assert_eq!(data.as_slice(), &[1, 2, 3, 4]);
            }
            other => panic!("{other:?}"),
        }
        run.__bindgen_anon_1.mmio.is_write = 0;
        run.__bindgen_anon_1.mmio.len = 8;
        assert_eq!(
            ok(&run),
            Ok(Exit::MmioRead {
                addr: 0xd000_0000,
                len: 8
            })
        );
        for len in [0, 9, 1 << 31] {
            run.__bindgen_anon_1.mmio.len = len;
            assert_eq!(
                ok(&run),
                Err(ExitError::MalformedMmio {
                    addr: 0xd000_0000,
                    len
                })
            );
        }
    }

    pub(crate) fn hypercall_run(args: [u64; 3], flags: u64) -> kvm_run {
        let mut run = run_with(KVM_EXIT_HYPERCALL);
        run.__bindgen_anon_1.hypercall.nr = KVM_HC_MAP_GPA_RANGE;
        let mut all = [0u64; 6];
        all[..3].copy_from_slice(&args);
        run.__bindgen_anon_1.hypercall.args = all;
        run.__bindgen_anon_1.hypercall.__bindgen_anon_1.flags = flags;
        run
    }

    #[test]
    fn hypercall() {
        let run = hypercall_run([0x1000, 2, 0x10], 1);
        assert_eq!(
            ok(&run),
            Ok(Exit::Hypercall(Hypercall {
                nr: 12,
                args: [0x1000, 2, 0x10, 0, 0, 0],
                long_mode: true,
                transport: Transport::Exit,
            }))
        );
        // Stale upper half of the old `longmode` u32: only bit 0 counts.
        let run = hypercall_run([0x1000, 2, 0x10], 0xdead_beef_0000_0000);
        match ok(&run) {
            Ok(Exit::Hypercall(call)) => assert!(!call.long_mode),
            other => panic!("{other:?}"),
        }
    }

    pub(crate) fn fault_run(gpa: u64, size: u64, flags: u64) -> kvm_run {
        let mut run = run_with(KVM_EXIT_MEMORY_FAULT);
        run.__bindgen_anon_1.memory_fault.gpa = gpa;
        run.__bindgen_anon_1.memory_fault.size = size;
        run.__bindgen_anon_1.memory_fault.flags = flags;
        run
    }

    #[test]
    fn memory_fault_exit_and_annotated_efault() {
        let run = fault_run(0x20_0000, 0x1000, 8);
        let want = Exit::MemoryFault(MemoryFault {
            gpa: 0x20_0000,
            size: 0x1000,
            flags: 8,
        });
        assert_eq!(ok(&run), Ok(want));
        assert_eq!(
            decode(RunOutcome::Failed(libc::EFAULT), &run, MAP_LEN),
            Ok(want)
        );
        assert_eq!(
            decode(RunOutcome::Failed(libc::EHWPOISON), &run, MAP_LEN),
            Err(ExitError::HardwarePoison {
                gpa: 0x20_0000,
                size: 0x1000
            })
        );
        // EFAULT without the annotation: kvm_run is stale, the error is the errno.
        let stale = io_run(KVM_EXIT_IO_OUT, 0x80, 1, 1, 4096);
        assert_eq!(
            decode(RunOutcome::Failed(libc::EFAULT), &stale, MAP_LEN),
            Err(ExitError::RunFailed {
                errno: libc::EFAULT
            })
        );
        // Any other errno never reads kvm_run, even if it looks like a fault.
        assert_eq!(
            decode(RunOutcome::Failed(libc::EINVAL), &run, MAP_LEN),
            Err(ExitError::RunFailed {
                errno: libc::EINVAL
            })
        );
    }

    #[test]
    fn memory_fault_flags() {
        let private = MemoryFault {
            gpa: 0x1000,
            size: 0x1000,
            flags: 8,
        };
        assert_eq!(private.access(), Access::Private);
        assert_eq!(private.unknown_flags(), 0);
        assert_eq!(private.to_string(), "private access to 0x1000+0x1000");
        let odd = MemoryFault {
            flags: 0x8 | 0x1 | (1 << 40),
            ..private
        };
        assert_eq!(odd.access(), Access::Private);
        assert_eq!(odd.unknown_flags(), 0x1 | (1 << 40));
        assert!(odd.to_string().contains("unknown flags 0x10000000001"));
        let shared = MemoryFault {
            flags: 0x2,
            ..private
        };
        assert_eq!(shared.access(), Access::Shared);
        assert_eq!(shared.unknown_flags(), 2);
    }

    #[test]
    fn memory_fault_frames() {
        let f = |gpa, size| {
            MemoryFault {
                gpa,
                size,
                flags: 0,
            }
            .frames()
        };
        assert_eq!(f(0x1000, 0x1000), FrameRange::from_gpa(0x1000, 0x1000).ok());
        assert_eq!(f(0x1ff8, 0x10), FrameRange::from_gpa(0x1000, 0x2000).ok());
        assert_eq!(f(0x1000, 0), None);
        assert_eq!(f(u64::MAX - 0xfff, 0x1000), None);
        assert_eq!(f(0x1000, u64::MAX), None);
    }

    #[test]
    fn halt_shutdown_intr() {
        assert_eq!(ok(&run_with(KVM_EXIT_HLT)), Ok(Exit::Halt));
        assert_eq!(ok(&run_with(KVM_EXIT_SHUTDOWN)), Ok(Exit::Shutdown));
        assert_eq!(ok(&run_with(KVM_EXIT_INTR)), Ok(Exit::Interrupted));
        assert_eq!(
            ok(&run_with(KVM_EXIT_IRQ_WINDOW_OPEN)),
            Ok(Exit::IrqWindowOpen)
        );
        assert_eq!(
            decode(
                RunOutcome::Failed(libc::EINTR),
                &run_with(KVM_EXIT_HLT),
                MAP_LEN
            ),
            Ok(Exit::Interrupted)
        );
    }

    #[test]
    fn system_event() {
        let mut run = run_with(KVM_EXIT_SYSTEM_EVENT);
        run.__bindgen_anon_1.system_event.type_ = KVM_SYSTEM_EVENT_SHUTDOWN;
        run.__bindgen_anon_1.system_event.ndata = 2;
        let mut words = [0u64; 16];
        words[..2].copy_from_slice(&[7, 9]);
        run.__bindgen_anon_1.system_event.__bindgen_anon_1.data = words;
        match ok(&run) {
            Ok(Exit::SystemEvent { kind, data }) => {
                assert_eq!(kind, SystemEventKind::Shutdown);
                assert_eq!(data.as_slice(), &[7, 9]);
            }
            other => panic!("{other:?}"),
        }
        run.__bindgen_anon_1.system_event.type_ = KVM_SYSTEM_EVENT_RESET;
        run.__bindgen_anon_1.system_event.ndata = 1000; // bounded, never an index
        match ok(&run) {
            Ok(Exit::SystemEvent { kind, data }) => {
                assert_eq!(kind, SystemEventKind::Reset);
                assert_eq!(data.as_slice().len(), 16);
            }
            other => panic!("{other:?}"),
        }
        run.__bindgen_anon_1.system_event.type_ = 99;
        assert!(matches!(
            ok(&run),
            Ok(Exit::SystemEvent {
                kind: SystemEventKind::Other(99),
                ..
            })
        ));
    }

    #[test]
    fn error_exits_keep_their_detail() {
        let mut run = run_with(KVM_EXIT_INTERNAL_ERROR);
        run.__bindgen_anon_1.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
        run.__bindgen_anon_1.internal.ndata = 3;
        let mut words = [0u64; 16];
        words[..3].copy_from_slice(&[1, 2, 3]);
        run.__bindgen_anon_1.internal.data = words;
        let err = ok(&run).unwrap_err();
        match &err {
            ExitError::InternalError { suberror, data } => {
                assert_eq!(*suberror, 1);
                assert_eq!(data.as_slice(), &[1, 2, 3]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "KVM internal error, sub-error 1, data [0x1, 0x2, 0x3]"
        );

        let mut run = run_with(KVM_EXIT_FAIL_ENTRY);
        run.__bindgen_anon_1
            .fail_entry
            .hardware_entry_failure_reason = 0x80000021;
        run.__bindgen_anon_1.fail_entry.cpu = 3;
        assert_eq!(
            ok(&run),
            Err(ExitError::FailEntry {
                hardware_entry_failure_reason: 0x80000021,
                cpu: 3
            })
        );

        let mut run = run_with(KVM_EXIT_UNKNOWN);
        run.__bindgen_anon_1.hw.hardware_exit_reason = 0x42;
        assert_eq!(
            ok(&run),
            Err(ExitError::UnknownHardwareExit {
                hardware_exit_reason: 0x42
            })
        );

        let mut run = run_with(KVM_EXIT_EXCEPTION);
        run.__bindgen_anon_1.ex.exception = 13;
        run.__bindgen_anon_1.ex.error_code = 0x18;
        assert_eq!(
            ok(&run),
            Err(ExitError::Exception {
                exception: 13,
                error_code: 0x18
            })
        );

        let mut run = run_with(KVM_EXIT_DEBUG);
        run.__bindgen_anon_1.debug.arch.exception = 1;
        run.__bindgen_anon_1.debug.arch.pc = 0x1234;
        assert_eq!(
            ok(&run),
            Err(ExitError::Debug {
                exception: 1,
                pc: 0x1234
            })
        );
    }

    #[test]
    fn unknown_reasons_reach_a_hook_not_a_panic() {
        for reason in [kvm_bindings::KVM_EXIT_X86_RDMSR, 40, 1000, u32::MAX] {
            assert_eq!(ok(&run_with(reason)), Ok(Exit::Other { reason }));
        }
    }

    #[test]
    fn kvm_ioctls_values_are_taken_as_they_are() {
        // What kvm-ioctls decoded whole is not read from kvm_run again: a kvm_run that
        // says something else does not change the exit.
        let stale = run_with(KVM_EXIT_MMIO);
        let exit = KvmExit::Hypercall {
            nr: 12,
            args: [1, 2, 3, 4, 5, 6],
            long_mode: false,
        };
        match decode_kvm(exit, &stale, MAP_LEN) {
            Ok(Exit::Hypercall(call)) => {
                assert_eq!((call.nr, call.args[5], call.long_mode), (12, 6, false));
                assert_eq!(call.transport, Transport::Exit);
            }
            other => panic!("{other:?}"),
        }
        let fault = MemoryFault {
            gpa: 0x2000,
            size: 0x1000,
            flags: 8,
        };
        assert_eq!(
            decode_kvm(
                KvmExit::MemoryFault {
                    fault,
                    hwpoison: false
                },
                &stale,
                MAP_LEN
            ),
            Ok(Exit::MemoryFault(fault))
        );
        assert_eq!(
            decode_kvm(
                KvmExit::MemoryFault {
                    fault,
                    hwpoison: true
                },
                &stale,
                MAP_LEN
            ),
            Err(ExitError::HardwarePoison {
                gpa: 0x2000,
                size: 0x1000
            })
        );
        assert_eq!(
            decode_kvm(KvmExit::Failed(libc::EINTR), &stale, MAP_LEN),
            Ok(Exit::Interrupted)
        );
        // An application processor woken without a start-up IPI is re-run, not failed.
        assert_eq!(
            decode_kvm(KvmExit::Failed(libc::EAGAIN), &stale, MAP_LEN),
            Ok(Exit::Interrupted)
        );
        // What kvm-ioctls does not check is checked in kvm_run.
        let mut mmio = run_with(KVM_EXIT_MMIO);
        mmio.__bindgen_anon_1.mmio.len = 9;
        assert!(matches!(
            decode_kvm(KvmExit::InRun, &mmio, MAP_LEN),
            Err(ExitError::MalformedMmio { len: 9, .. })
        ));
    }

    proptest::proptest! {
        /// Whatever KVM (or a corrupted mapping) leaves in `kvm_run`, decoding returns a
        /// value or an error and never panics. The port-I/O and MMIO fields are drawn
        /// near their valid ranges, so both acceptance and rejection are checked exactly.
        #[test]
        fn decoding_never_panics(
            reason in proptest::prop_oneof![
                proptest::strategy::Just(KVM_EXIT_IO),
                proptest::strategy::Just(KVM_EXIT_MMIO),
                0u32..48,
            ],
            union in proptest::collection::vec(proptest::num::i8::ANY, 256),
            errno in proptest::option::weighted(0.25, proptest::sample::select(
                vec![libc::EINTR, libc::EFAULT, libc::EHWPOISON, libc::EINVAL, libc::EAGAIN],
            )),
            io in (
                proptest::prop_oneof![3 => 0u8..=1, 1 => proptest::num::u8::ANY],
                proptest::prop_oneof![
                    proptest::strategy::Just(HYPERCALL_PORT),
                    proptest::num::u16::ANY,
                ],
                proptest::prop_oneof![
                    3 => proptest::sample::select(vec![1u8, 2, 4]),
                    1 => proptest::num::u8::ANY,
                ],
                proptest::prop_oneof![
                    3 => 0u32..=64,
                    1 => 0u32..=4096,
                    1 => proptest::num::u32::ANY,
                ],
                // KVM puts the data a page past `kvm_run`; also draw overlaps and overruns.
                proptest::prop_oneof![
                    3 => 4096u64..=MAP_LEN as u64 + 16,
                    1 => 0u64..=MAP_LEN as u64,
                    1 => proptest::num::u64::ANY,
                ],
            ),
            mmio_len in proptest::prop_oneof![3 => 0u32..=10, 1 => proptest::num::u32::ANY],
        ) {
            let mut run = run_with(reason);
            let mut bytes = [0 as std::ffi::c_char; 256];
            for (b, v) in bytes.iter_mut().zip(&union) {
                *b = *v as std::ffi::c_char;
            }
            run.__bindgen_anon_1.padding = bytes;
            let (direction, port, size, count, offset) = io;
            if reason == KVM_EXIT_IO {
                run.__bindgen_anon_1.io.direction = direction;
                run.__bindgen_anon_1.io.port = port;
                run.__bindgen_anon_1.io.size = size;
                run.__bindgen_anon_1.io.count = count;
                run.__bindgen_anon_1.io.data_offset = offset;
            }
            if reason == KVM_EXIT_MMIO {
                run.__bindgen_anon_1.mmio.len = mmio_len;
            }
            let outcome = errno.map_or(RunOutcome::Exited, RunOutcome::Failed);
            let got = decode(outcome, &run, MAP_LEN);
            // The one-pass decoding and kvm-ioctls' two steps agree on every input.
            proptest::prop_assert_eq!(
                &got,
                &decode_kvm(KvmExit::from_run(outcome, &run), &run, MAP_LEN)
            );
            match &got {
                Ok(Exit::PioIn { data, .. } | Exit::PioOut { data, .. }) => {
                    proptest::prop_assert!(data.offset >= std::mem::size_of::<kvm_run>());
                    proptest::prop_assert!(data.range().end <= MAP_LEN);
                    proptest::prop_assert!(!data.is_empty());
                }
                Ok(Exit::MmioRead { len, .. }) => proptest::prop_assert!((1..=8).contains(len)),
                Ok(Exit::MmioWrite { data, .. }) => {
                    proptest::prop_assert!((1..=8).contains(&data.as_slice().len()))
                }
                Ok(Exit::SystemEvent { data, .. }) => {
                    proptest::prop_assert!(data.as_slice().len() <= 16)
                }
                _ => {}
            }
            if errno.is_some() {
                return Ok(());
            }
            if reason == KVM_EXIT_IO {
                // An independent model of the checks: u128 so nothing wraps.
                let end = u128::from(offset) + u128::from(size) * u128::from(count);
                let valid = matches!(size, 1 | 2 | 4)
                    && count != 0
                    && offset >= std::mem::size_of::<kvm_run>() as u64
                    && end <= MAP_LEN as u128;
                let data = PioData { offset: offset as usize, size, count };
                let want = match u32::from(direction) {
                    _ if !valid => None,
                    KVM_EXIT_IO_OUT if port == HYPERCALL_PORT => Some(Exit::PortHypercall),
                    KVM_EXIT_IO_OUT => Some(Exit::PioOut { port, data }),
                    KVM_EXIT_IO_IN => Some(Exit::PioIn { port, data }),
                    _ => None,
                };
                let want = want.ok_or(ExitError::MalformedIo {
                    direction,
                    size,
                    count,
                    offset,
                });
                proptest::prop_assert_eq!(got, want);
            } else if reason == KVM_EXIT_MMIO {
                // SAFETY: the member just filled; integers only, valid for any bits.
                let mmio = unsafe { run.__bindgen_anon_1.mmio };
                let addr = mmio.phys_addr;
                match (got, mmio_len) {
                    (Ok(Exit::MmioRead { addr: a, len }), 1..=8) => {
                        proptest::prop_assert_eq!(mmio.is_write, 0);
                        proptest::prop_assert_eq!((a, u32::from(len)), (addr, mmio_len));
                    }
                    (Ok(Exit::MmioWrite { addr: a, data }), 1..=8) => {
                        proptest::prop_assert_ne!(mmio.is_write, 0);
                        proptest::prop_assert_eq!(a, addr);
                        let want = &mmio.data[..mmio_len as usize];
                        proptest::prop_assert_eq!(data.as_slice(), want);
                    }
                    (got, len) => {
                        proptest::prop_assert!(!(1..=8).contains(&len), "{:?}", got);
                        let want = Err(ExitError::MalformedMmio { addr, len });
                        proptest::prop_assert_eq!(got, want);
                    }
                }
            }
        }
    }
}
