// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Seccomp filters per thread kind, built with seccompiler, and what happens when a
//! thread breaks its filter.
//!
//! Each [`ThreadKind`] has an allow-list of the system calls veil makes on that kind of
//! thread once the guest runs, `ioctl` narrowed to its request numbers, `tgkill` to
//! this process, `mmap` and `mprotect` to mappings that are not executable. Any other
//! call traps: the `SIGSYS` handler installed with the first filter writes one line to
//! standard error naming the thread and the call, runs the hook given to
//! [`on_violation`] (the `veil` binary restores the terminal there), and ends the
//! process with the exit code given there. A guest that tricks a device model or veil
//! itself into an unexpected system call thus ends its VM, and nothing else happens.
//!
//! Filters stack: a thread started by a confined thread keeps its parent's filter, and
//! its own narrows it. That is why the main thread's list also holds what starting a
//! thread takes (`clone`, `set_robust_list`, `rseq`, ...): the main thread is confined
//! before the vCPU and device threads start, and they narrow themselves on their way in.
//! The main thread may start threads but not processes: `clone` needs `CLONE_THREAD`,
//! and `clone3`, whose flags a filter cannot read, is answered `ENOSYS`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use veil_vcpu::{ExitRouting, ThreadStartHook};

use crate::launch::{Launch, LaunchError, LaunchRun, LaunchVm};

/// The kinds of thread veil confines, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The thread that built the VM and waits for it: starts the other threads, samples
    /// memory use, stops the vCPUs, tears the VM down and writes the report.
    Main,
    /// A vCPU thread: `KVM_RUN`, the register ioctls of the port-I/O hypercall, the
    /// conversion calls, device models writing the console and raising interrupts.
    Vcpu,
    /// A device thread: an event loop feeding standard input to the console.
    Device,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Device];

    /// The kind's name, as the violation message gives it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Device => "device",
        }
    }

    fn code(self) -> u8 {
        match self {
            ThreadKind::Main => 1,
            ThreadKind::Vcpu => 2,
            ThreadKind::Device => 3,
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a filter could not be built or applied.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The kernel does not offer seccomp filters that trap (no `CONFIG_SECCOMP_FILTER`).
    #[error("this kernel does not offer seccomp filters (SECCOMP_RET_TRAP)")]
    Unsupported,
    /// seccompiler refused the rules or could not install the filter.
    #[error("cannot build or apply the {kind} thread's seccomp filter")]
    Filter {
        /// The thread kind.
        kind: ThreadKind,
        /// seccompiler's error.
        #[source]
        source: seccompiler::Error,
    },
    /// The `SIGSYS` handler could not be installed.
    #[error("cannot install the SIGSYS handler for seccomp violations")]
    Handler(#[source] std::io::Error),
    /// This architecture has no allow-lists.
    #[error("veil has no seccomp allow-lists for {0}")]
    Architecture(&'static str),
}

/// One allowed system call: its number and, where the call is narrowed, the argument
/// values it is allowed with (any of them).
#[derive(Debug, Clone)]
pub struct Allowed {
    /// The system call's name.
    pub name: &'static str,
    /// Its number on this architecture.
    pub number: i64,
    /// The narrowing, if any.
    pub only: Only,
}

/// How an allowed system call is narrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Only {
    /// Any arguments.
    Any,
    /// Argument `arg` (32 bits, as the kernel reads an ioctl request) is one of these.
    OneOf {
        /// The argument's index.
        arg: u8,
        /// The values allowed.
        values: Vec<u64>,
    },
    /// Argument `arg` (64 bits) equals `value`.
    Equals {
        /// The argument's index.
        arg: u8,
        /// The value.
        value: u64,
    },
    /// Argument `arg` has every bit of `bits` set.
    WithAll {
        /// The argument's index.
        arg: u8,
        /// The bits that must be set.
        bits: u64,
    },
    /// Argument `arg` has none of the bits of `mask` set.
    Without {
        /// The argument's index.
        arg: u8,
        /// The bits that must be clear.
        mask: u64,
    },
}

#[cfg(target_arch = "x86_64")]
mod lists {
    use super::{Allowed, Only, ThreadKind};
    use kvm_bindings::{
        KVMIO, kvm_memory_attributes, kvm_mp_state, kvm_regs, kvm_sregs,
        kvm_userspace_memory_region, kvm_userspace_memory_region2,
    };
    use libc::{
        SYS_brk, SYS_clock_gettime, SYS_clone, SYS_clone3, SYS_close, SYS_epoll_create1,
        SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_wait, SYS_eventfd2, SYS_exit, SYS_exit_group,
        SYS_fallocate, SYS_fcntl, SYS_fstat, SYS_futex, SYS_getpid, SYS_getrandom, SYS_gettid,
        SYS_ioctl, SYS_madvise, SYS_membarrier, SYS_mmap, SYS_mprotect, SYS_mremap, SYS_munmap,
        SYS_openat, SYS_prctl, SYS_read, SYS_rseq, SYS_rt_sigaction, SYS_rt_sigprocmask,
        SYS_rt_sigreturn, SYS_sched_getaffinity, SYS_sched_yield, SYS_seccomp, SYS_set_robust_list,
        SYS_sigaltstack, SYS_statx, SYS_tgkill, SYS_write,
    };

    const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        (dir << 30) | ((size as u64) << 16) | ((KVMIO as u64) << 8) | nr
    }
    const IO: u64 = 0;
    const W: u64 = 1;
    const R: u64 = 2;

    /// `KVM_RUN`.
    pub const KVM_RUN: u64 = ioc(IO, 0x80, 0);
    /// `KVM_GET_REGS`: the port-I/O hypercall's arguments, a timed-out vCPU's `rip`.
    pub const KVM_GET_REGS: u64 = ioc(R, 0x81, size_of::<kvm_regs>());
    /// `KVM_SET_REGS`: the port-I/O hypercall's result.
    pub const KVM_SET_REGS: u64 = ioc(W, 0x82, size_of::<kvm_regs>());
    /// `KVM_GET_SREGS`: the mode the port-I/O hypercall was made in.
    pub const KVM_GET_SREGS: u64 = ioc(R, 0x83, size_of::<kvm_sregs>());
    /// `KVM_GET_MP_STATE`: where a vCPU was when a run timed out.
    pub const KVM_GET_MP_STATE: u64 = ioc(R, 0x98, size_of::<kvm_mp_state>());
    /// `KVM_SET_MEMORY_ATTRIBUTES`: the attributes flavor's conversions.
    pub const KVM_SET_MEMORY_ATTRIBUTES: u64 = ioc(W, 0xd2, size_of::<kvm_memory_attributes>());
    /// `KVM_SET_USER_MEMORY_REGION`: deleting the memory slots at the end (older hosts).
    pub const KVM_SET_USER_MEMORY_REGION: u64 =
        ioc(W, 0x46, size_of::<kvm_userspace_memory_region>());
    /// `KVM_SET_USER_MEMORY_REGION2`: deleting the memory slots at the end.
    pub const KVM_SET_USER_MEMORY_REGION2: u64 =
        ioc(W, 0x49, size_of::<kvm_userspace_memory_region2>());
    /// `TCGETS`: whether standard input is a terminal, and its settings.
    pub const TCGETS: u64 = libc::TCGETS;
    /// `TCSETS`: the terminal in raw mode, and put back.
    pub const TCSETS: u64 = libc::TCSETS;
    /// `TCGETS2` and `TCSETS2`: the same, as glibc issues them from 2.42 on.
    pub const TCGETS2: u64 = libc::TCGETS2;
    /// See [`TCGETS2`].
    pub const TCSETS2: u64 = libc::TCSETS2;
    /// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` (`linux/membarrier.h`): the fence a conversion
    /// to private issues when a host access may hold its memory through a slot
    /// (veil-memory's leases).
    pub const MEMBARRIER_CMD_PRIVATE_EXPEDITED: u64 = 1 << 3;

    fn any(name: &'static str, number: i64) -> Allowed {
        Allowed {
            name,
            number,
            only: Only::Any,
        }
    }

    fn one_of(name: &'static str, number: i64, arg: u8, values: &[u64]) -> Allowed {
        Allowed {
            name,
            number,
            only: Only::OneOf {
                arg,
                values: values.to_vec(),
            },
        }
    }

    fn no_exec(name: &'static str, number: i64) -> Allowed {
        Allowed {
            name,
            number,
            only: Only::Without {
                arg: 2,
                mask: libc::PROT_EXEC as u64,
            },
        }
    }

    /// What every thread needs: memory for the allocator (never executable), futexes
    /// for locks, the kick signal and its return, a thread ending, and the ways out:
    /// this module's violation message and `_exit`, and the `veil` binary's signal
    /// handlers, which restore the terminal, reset the signal and raise it again on
    /// whichever thread the signal lands.
    fn common(pid: u32) -> Vec<Allowed> {
        vec![
            any("brk", SYS_brk),
            no_exec("mmap", SYS_mmap),
            no_exec("mprotect", SYS_mprotect),
            any("mremap", SYS_mremap),
            any("munmap", SYS_munmap),
            any("madvise", SYS_madvise),
            any("futex", SYS_futex),
            // Locks that spin a little before they sleep.
            any("sched_yield", SYS_sched_yield),
            // Where the vDSO cannot read the clock (a clocksource it does not map).
            any("clock_gettime", SYS_clock_gettime),
            // The keys of a thread's first `HashMap`.
            any("getrandom", SYS_getrandom),
            any("rt_sigreturn", SYS_rt_sigreturn),
            any("rt_sigprocmask", SYS_rt_sigprocmask),
            any("rt_sigaction", SYS_rt_sigaction),
            any("sigaltstack", SYS_sigaltstack),
            any("getpid", SYS_getpid),
            any("gettid", SYS_gettid),
            // Signals to this process's own threads only: kicks, and a signal raised again.
            Allowed {
                name: "tgkill",
                number: SYS_tgkill,
                only: Only::Equals {
                    arg: 0,
                    value: u64::from(pid),
                },
            },
            any("write", SYS_write),
            one_of("ioctl", SYS_ioctl, 1, &[TCSETS, TCSETS2]),
            // Whether the thread is confined: it reads, and changes, nothing.
            one_of("prctl", SYS_prctl, 0, &[libc::PR_GET_SECCOMP as u64]),
            any("exit", SYS_exit),
            any("exit_group", SYS_exit_group),
        ]
    }

    /// A vCPU thread's own calls: the guest, the port-I/O hypercall's registers,
    /// conversions in every flavor (attributes; protections; discarding by punching or
    /// removing pages; fencing the threads that may hold the memory), and device models,
    /// which write the console, raise interrupts by writing an eventfd, and end the VM by
    /// kicking the other vCPUs.
    fn vcpu() -> Vec<Allowed> {
        vec![
            one_of(
                "ioctl",
                SYS_ioctl,
                1,
                &[
                    KVM_RUN,
                    KVM_GET_REGS,
                    KVM_SET_REGS,
                    KVM_GET_SREGS,
                    KVM_SET_MEMORY_ATTRIBUTES,
                ],
            ),
            any("fallocate", SYS_fallocate),
            one_of(
                "membarrier",
                SYS_membarrier,
                0,
                &[MEMBARRIER_CMD_PRIVATE_EXPEDITED],
            ),
        ]
    }

    /// A device thread's own calls: an epoll loop reading its input and closing what it
    /// opened when it stops (std checks a descriptor with `F_GETFD` before closing it).
    fn device() -> Vec<Allowed> {
        vec![
            any("read", SYS_read),
            // glibc's `epoll_wait` is one of the two, by architecture and version.
            any("epoll_wait", SYS_epoll_wait),
            any("epoll_pwait", SYS_epoll_pwait),
            any("epoll_ctl", SYS_epoll_ctl),
            one_of("fcntl", SYS_fcntl, 1, &[libc::F_GETFD as u64]),
            any("close", SYS_close),
        ]
    }

    /// The main thread's own calls once the guest runs: starting the vCPU and console
    /// threads (and what a new thread does before it narrows its filter), setting up
    /// console input, sampling memory use from `/proc`, stopping and joining the vCPUs,
    /// deleting the memory slots, and writing the report and the statistics file.
    fn main() -> Vec<Allowed> {
        vec![
            one_of(
                "ioctl",
                SYS_ioctl,
                1,
                &[
                    TCGETS,
                    TCGETS2,
                    KVM_GET_REGS,
                    KVM_GET_MP_STATE,
                    KVM_SET_USER_MEMORY_REGION,
                    KVM_SET_USER_MEMORY_REGION2,
                ],
            ),
            // `clone3`'s flags are in memory, which seccomp cannot read: a filter of its
            // own answers it ENOSYS (see `confine_thread`), so glibc falls back to
            // `clone`, which may only start threads, never processes.
            any("clone3", SYS_clone3),
            Allowed {
                name: "clone",
                number: SYS_clone,
                only: Only::WithAll {
                    arg: 0,
                    bits: libc::CLONE_THREAD as u64,
                },
            },
            any("set_robust_list", SYS_set_robust_list),
            any("rseq", SYS_rseq),
            one_of(
                "prctl",
                SYS_prctl,
                0,
                &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
            ),
            any("sched_getaffinity", SYS_sched_getaffinity),
            any("seccomp", SYS_seccomp),
            any("openat", SYS_openat),
            any("read", SYS_read),
            any("statx", SYS_statx),
            any("fstat", SYS_fstat),
            one_of(
                "fcntl",
                SYS_fcntl,
                1,
                &[libc::F_GETFD as u64, libc::F_DUPFD_CLOEXEC as u64],
            ),
            any("close", SYS_close),
            any("eventfd2", SYS_eventfd2),
            any("epoll_create1", SYS_epoll_create1),
            any("epoll_ctl", SYS_epoll_ctl),
        ]
    }

    /// The allow-list of `kind` for the process `pid`. The main thread's holds the vCPU
    /// and device threads' calls too: they start under its filter and narrow it.
    pub fn list(kind: ThreadKind, pid: u32) -> Vec<Allowed> {
        let mut l = common(pid);
        match kind {
            ThreadKind::Vcpu => l.extend(vcpu()),
            ThreadKind::Device => l.extend(device()),
            ThreadKind::Main => {
                l.extend(main());
                l.extend(vcpu());
                l.extend(device());
            }
        }
        l
    }
}

/// The allow-list of `kind` in this process, as veil builds its filter.
pub fn allow_list(kind: ThreadKind) -> Result<Vec<Allowed>, SeccompError> {
    #[cfg(target_arch = "x86_64")]
    {
        Ok(lists::list(kind, std::process::id()))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kind;
        Err(SeccompError::Architecture(std::env::consts::ARCH))
    }
}

/// `kind`'s filter, compiled: the allow-list, and a trap for every other call.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let bad = |e: seccompiler::BackendError| SeccompError::Filter {
        kind,
        source: seccompiler::Error::Backend(e),
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(bad)?;
    // Per system call: `None` once any entry allows every argument, else the rules of
    // which one must match.
    let mut merged: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    for allowed in allow_list(kind)? {
        let conditions: Vec<SeccompCondition> = match &allowed.only {
            Only::Any => {
                merged.insert(allowed.number, None);
                continue;
            }
            Only::OneOf { arg, values } => values
                .iter()
                .map(|&v| SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v))
                .collect::<Result<_, _>>()
                .map_err(bad)?,
            Only::Equals { arg, value } => vec![
                SeccompCondition::new(*arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, *value)
                    .map_err(bad)?,
            ],
            Only::WithAll { arg, bits } => vec![
                SeccompCondition::new(
                    *arg,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(*bits),
                    *bits,
                )
                .map_err(bad)?,
            ],
            Only::Without { arg, mask } => vec![
                SeccompCondition::new(
                    *arg,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(*mask),
                    0,
                )
                .map_err(bad)?,
            ],
        };
        let entry = merged
            .entry(allowed.number)
            .or_insert_with(|| Some(Vec::new()));
        if let Some(rules) = entry {
            // A rule's conditions must all hold: one rule per value of a `OneOf`.
            let one_each = matches!(allowed.only, Only::OneOf { .. });
            if one_each {
                for c in conditions {
                    rules.push(SeccompRule::new(vec![c]).map_err(bad)?);
                }
            } else {
                rules.push(SeccompRule::new(conditions).map_err(bad)?);
            }
        }
    }
    // An empty rule list matches the call whatever its arguments.
    let rules: BTreeMap<i64, Vec<SeccompRule>> = merged
        .into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect();
    let filter =
        SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch).map_err(bad)?;
    filter.try_into().map_err(bad)
}

/// How many system calls `kind`'s allow-list names (0 where veil has no list).
pub fn allowed_count(kind: ThreadKind) -> usize {
    let mut numbers: Vec<i64> = allow_list(kind)
        .unwrap_or_default()
        .iter()
        .map(|a| a.number)
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers.len()
}

/// A filter that answers `clone3` with `ENOSYS` and allows everything else: stacked under
/// the main thread's, it makes glibc start threads with `clone`, whose flags the main
/// filter checks.
fn no_clone3() -> Result<BpfProgram, SeccompError> {
    let bad = |e: seccompiler::BackendError| SeccompError::Filter {
        kind: ThreadKind::Main,
        source: seccompiler::Error::Backend(e),
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(bad)?;
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(bad)?
    .try_into()
    .map_err(bad)
}

/// Whether this kernel offers seccomp filters whose action traps.
pub fn supported() -> bool {
    let action: u32 = libc::SECCOMP_RET_TRAP;
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from the pointer, which points at a
    // live local; it changes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    ret == 0
}

/// Whether the calling thread runs under a seccomp filter (its own or one it inherited).
pub fn thread_is_confined() -> bool {
    // SAFETY: PR_GET_SECCOMP takes no pointer and changes nothing.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP) == 2 }
}

thread_local! {
    /// The kind (`ThreadKind::code`, 0 for none) and vCPU index of the filter this thread
    /// applied last, for the violation message. Const-initialised, no destructor: the
    /// signal handler may read it.
    static CONFINED_AS: Cell<(u8, usize)> = const { Cell::new((0, 0)) };
}

/// The exit code a violation ends the process with (128 + SIGSYS unless set).
static EXIT_CODE: AtomicI32 = AtomicI32::new(128 + libc::SIGSYS);
/// A `fn()` to run before the process ends on a violation, or null.
static BEFORE_EXIT: AtomicPtr<()> = AtomicPtr::new(std::ptr::null_mut());

/// Sets what a violation does besides the message: run `before_exit` (which must only
/// make async-signal-safe calls its thread's filter allows, such as restoring the
/// terminal with `tcsetattr`), then end the process with `exit_code`.
pub fn on_violation(exit_code: i32, before_exit: Option<fn()>) {
    EXIT_CODE.store(exit_code, Ordering::SeqCst);
    let ptr = before_exit.map_or(std::ptr::null_mut(), |f| f as *mut ());
    BEFORE_EXIT.store(ptr, Ordering::SeqCst);
}

/// A small buffer the signal handler formats its message in, without allocating.
struct Line {
    buf: [u8; 192],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The names of the system calls a violation is most likely to be, for the message.
fn syscall_name(nr: i64) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    const NAMES: &[(i64, &str)] = &[
        (libc::SYS_socket, "socket"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_bind, "bind"),
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_fork, "fork"),
        (libc::SYS_vfork, "vfork"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_open, "open"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_kill, "kill"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_mprotect, "mprotect"),
        (libc::SYS_tgkill, "tgkill"),
        (libc::SYS_read, "read"),
        (libc::SYS_getpid, "getpid"),
        (libc::SYS_prctl, "prctl"),
        (libc::SYS_seccomp, "seccomp"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_close, "close"),
        (libc::SYS_unlink, "unlink"),
        (libc::SYS_unlinkat, "unlinkat"),
        (libc::SYS_mount, "mount"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    const NAMES: &[(i64, &str)] = &[];
    NAMES.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name)
}

/// The system call number in a `SIGSYS` siginfo (`si_syscall`: after the signal number,
/// errno, code and padding, and the call address, on 64-bit Linux).
#[cfg(target_pointer_width = "64")]
fn si_syscall(info: *const libc::siginfo_t) -> i64 {
    // SAFETY: the kernel passed a full siginfo_t for SIGSYS with SA_SIGINFO; `_sigsys`
    // puts `_syscall` (an int) at byte 24 of it on 64-bit architectures.
    i64::from(unsafe { info.cast::<u8>().add(24).cast::<i32>().read_unaligned() })
}

/// The violation message: the thread (its kind code and vCPU index, as [`CONFINED_AS`]
/// holds them) and the system call.
fn violation_line(kind: u8, index: usize, nr: i64) -> Line {
    let mut line = Line {
        buf: [0; 192],
        len: 0,
    };
    line.push(b"veil: seccomp: ");
    match ThreadKind::ALL.iter().find(|k| k.code() == kind) {
        Some(ThreadKind::Vcpu) => {
            line.push(b"the vCPU ");
            line.number(index as u64);
            line.push(b" thread");
        }
        Some(k) => {
            line.push(b"the ");
            line.push(k.name().as_bytes());
            line.push(b" thread");
        }
        None => line.push(b"a thread under the filter it inherited"),
    }
    line.push(b" made system call ");
    line.number(nr.unsigned_abs());
    if let Some(name) = syscall_name(nr) {
        line.push(b" (");
        line.push(name.as_bytes());
        line.push(b")");
    }
    line.push(b", which its filter does not allow: ending the VM\n");
    line
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe throughout: a const thread-local, stack formatting, write(2),
    // the caller's hook (which must be async-signal-safe), _exit(2).
    let nr = if info.is_null() { -1 } else { si_syscall(info) };
    let (kind, index) = CONFINED_AS.try_with(Cell::get).unwrap_or((0, 0));
    let line = violation_line(kind, index, nr);
    // SAFETY: write(2) of a live buffer to standard error.
    unsafe { libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len) };
    let hook = BEFORE_EXIT.load(Ordering::SeqCst);
    if !hook.is_null() {
        // SAFETY: only `on_violation` stores here, and only a `fn()` cast to a pointer.
        let hook: fn() = unsafe { std::mem::transmute::<*mut (), fn()>(hook) };
        hook();
    }
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(EXIT_CODE.load(Ordering::SeqCst)) };
}

fn install_handler() -> Result<(), SeccompError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| {
        // SAFETY: `sigaction` is plain data; every field is set below or left zero
        // (an empty mask, no flags besides SA_SIGINFO).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        act.sa_flags = libc::SA_SIGINFO;
        // SAFETY: the handler only makes async-signal-safe calls; `act` is valid.
        if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }))
    .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e)))
}

/// Confines the calling thread with `kind`'s filter (on top of any it inherited), after
/// installing the `SIGSYS` handler. `vcpu` is the vCPU's index for [`ThreadKind::Vcpu`].
pub fn confine_thread(kind: ThreadKind, vcpu: usize) -> Result<(), SeccompError> {
    if !supported() {
        return Err(SeccompError::Unsupported);
    }
    let program = filter(kind)?;
    install_handler()?;
    let failed = |source| SeccompError::Filter { kind, source };
    if kind == ThreadKind::Main {
        seccompiler::apply_filter(&no_clone3()?).map_err(failed)?;
    }
    seccompiler::apply_filter(&program).map_err(failed)?;
    CONFINED_AS.with(|c| c.set((kind.code(), vcpu)));
    log::debug!("seccomp: {kind} thread confined");
    Ok(())
}

/// Confines the calling thread with `kind`'s filter if it already runs under one (one
/// inherited from the thread that started it), and says whether it did. A device model
/// calls this on its own thread: confined where the VMM is, left alone where it is not.
pub fn narrow_if_confined(kind: ThreadKind) -> Result<bool, SeccompError> {
    if !thread_is_confined() {
        return Ok(false);
    }
    confine_thread(kind, 0).map(|()| true)
}

/// A launch technology whose vCPU threads are confined: `inner` in every respect, with a
/// start hook added to its exit routing (after any of `inner`) that confines each vCPU
/// thread with the vCPU filter before its first `KVM_RUN` and counts it.
pub struct Confined {
    inner: Arc<dyn Launch>,
    vcpu_threads: Arc<AtomicUsize>,
}

impl Confined {
    /// `inner`, with its vCPU threads confined.
    pub fn new(inner: Arc<dyn Launch>) -> Self {
        Confined {
            inner,
            vcpu_threads: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many vCPU threads have confined themselves so far.
    pub fn vcpu_threads(&self) -> usize {
        self.vcpu_threads.load(Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Confined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confined")
            .field("inner", &self.inner.name())
            .finish()
    }
}

impl Launch for Confined {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn vm_types(&self) -> &[u32] {
        self.inner.vm_types()
    }

    fn init(&self, kvm: &kvm_ioctls::Kvm, vm: &kvm_ioctls::VmFd) -> Result<(), LaunchError> {
        self.inner.init(kvm, vm)
    }

    fn setup_vcpu(
        &self,
        vm: &LaunchVm<'_>,
        vcpu: &kvm_ioctls::VcpuFd,
        id: u32,
        entry: Option<&veil_abi::arch::EntryRegisters>,
    ) -> Result<(), LaunchError> {
        self.inner.setup_vcpu(vm, vcpu, id, entry)
    }

    fn populates(&self) -> bool {
        self.inner.populates()
    }

    fn accepts(&self, page_type: veil_loader::PageType) -> bool {
        self.inner.accepts(page_type)
    }

    fn populate(&self, vm: &LaunchVm<'_>, run: &LaunchRun<'_>) -> Result<(), LaunchError> {
        self.inner.populate(vm, run)
    }

    fn finalize(&self, vm: &LaunchVm<'_>) -> Result<(), LaunchError> {
        self.inner.finalize(vm)
    }

    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        let routing = self.inner.exit_routing(routing);
        let count = self.vcpu_threads.clone();
        let confine: ThreadStartHook = Arc::new(move |index| {
            confine_thread(ThreadKind::Vcpu, index)?;
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let hook: ThreadStartHook = match routing.thread_start.clone() {
            Some(first) => Arc::new(move |index| {
                first(index)?;
                confine(index)
            }),
            None => confine,
        };
        ExitRouting {
            thread_start: Some(hook),
            ..routing
        }
    }

    fn private_at_launch(&self) -> bool {
        self.inner.private_at_launch()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(kind: ThreadKind) -> Vec<i64> {
        allow_list(kind).unwrap().iter().map(|a| a.number).collect()
    }

    #[test]
    fn every_kind_compiles_to_a_filter() {
        for kind in ThreadKind::ALL {
            let program = filter(kind).unwrap();
            assert!(
                program.len() > allowed_count(kind),
                "{kind}: {}",
                program.len()
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // As strace decodes them, from <linux/kvm.h> and <asm/ioctls.h>.
        assert_eq!(lists::KVM_RUN, 0xae80);
        assert_eq!(lists::KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(lists::KVM_SET_REGS, 0x4090_ae82);
        assert_eq!(lists::KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(lists::KVM_GET_MP_STATE, 0x8004_ae98);
        assert_eq!(lists::KVM_SET_MEMORY_ATTRIBUTES, 0x4020_aed2);
        assert_eq!(lists::KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(lists::KVM_SET_USER_MEMORY_REGION2, 0x40a0_ae49);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_vcpu_thread_may_run_and_convert_and_nothing_more() {
        let vcpu = allow_list(ThreadKind::Vcpu).unwrap();
        let ioctl = vcpu.iter().filter(|a| a.name == "ioctl");
        let requests: Vec<u64> = ioctl
            .flat_map(|a| match &a.only {
                Only::OneOf { arg: 1, values } => values.clone(),
                other => panic!("ioctl is narrowed by request: {other:?}"),
            })
            .collect();
        for r in [lists::KVM_RUN, lists::KVM_SET_MEMORY_ATTRIBUTES] {
            assert!(requests.contains(&r), "{r:#x}");
        }
        assert!(!requests.contains(&lists::KVM_SET_USER_MEMORY_REGION2));
        let nrs = numbers(ThreadKind::Vcpu);
        for allowed in [libc::SYS_fallocate, libc::SYS_madvise, libc::SYS_mprotect] {
            assert!(nrs.contains(&allowed), "{allowed}");
        }
        for forbidden in [
            libc::SYS_socket,
            libc::SYS_execve,
            libc::SYS_fork,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_openat,
            libc::SYS_ptrace,
            libc::SYS_kill,
            libc::SYS_seccomp,
        ] {
            assert!(!nrs.contains(&forbidden), "{forbidden}");
        }
        // Nothing a vCPU or device thread maps or protects may become executable.
        for kind in ThreadKind::ALL {
            for a in allow_list(kind).unwrap() {
                if a.name == "mmap" || a.name == "mprotect" {
                    assert_eq!(
                        a.only,
                        Only::Without {
                            arg: 2,
                            mask: libc::PROT_EXEC as u64
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn threads_started_under_the_main_filter_can_narrow_it() {
        // Filters stack: what a vCPU or device thread does, the main filter allows too.
        let main = numbers(ThreadKind::Main);
        for kind in [ThreadKind::Vcpu, ThreadKind::Device] {
            for nr in numbers(kind) {
                assert!(main.contains(&nr), "{kind} needs {nr}, which main forbids");
            }
        }
        assert!(main.contains(&libc::SYS_clone3));
        assert!(!main.contains(&libc::SYS_execve));
        assert!(!main.contains(&libc::SYS_socket));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_readme_gives_the_counts_of_the_lists() {
        let readme = include_str!("../README.md");
        for kind in ThreadKind::ALL {
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{kind:?}` |")))
                .unwrap_or_else(|| panic!("no row for {kind:?}"));
            assert!(
                row.ends_with(&format!("| {} |", allowed_count(kind))),
                "{kind:?} allows {}: {row}",
                allowed_count(kind)
            );
        }
    }

    #[test]
    fn the_violation_message_names_the_thread_and_the_call() {
        let text = |l: Line| String::from_utf8(l.buf[..l.len].to_vec()).unwrap();
        assert_eq!(
            text(violation_line(ThreadKind::Vcpu.code(), 3, libc::SYS_socket)),
            format!(
                "veil: seccomp: the vCPU 3 thread made system call {} (socket), which its filter does not allow: ending the VM\n",
                libc::SYS_socket
            )
        );
        assert_eq!(
            text(violation_line(ThreadKind::Device.code(), 0, 1000)),
            "veil: seccomp: the device thread made system call 1000, which its filter does not allow: ending the VM\n"
        );
        assert!(text(violation_line(0, 0, 0)).starts_with(
            "veil: seccomp: a thread under the filter it inherited made system call 0"
        ));
    }
}
