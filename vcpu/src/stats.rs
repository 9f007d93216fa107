// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Exit statistics: how many exits of each kind a vCPU took, and how long their handlers
//! ran.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::exit::Exit;

/// The kinds of exit counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    /// `KVM_EXIT_MEMORY_FAULT`.
    MemoryFault,
    /// `KVM_EXIT_HYPERCALL`.
    Hypercall,
    /// The port-I/O hypercall.
    PortHypercall,
    /// Port I/O read.
    PioIn,
    /// Port I/O write.
    PioOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// `KVM_EXIT_HLT`.
    Halt,
    /// `KVM_EXIT_SHUTDOWN`.
    Shutdown,
    /// `KVM_EXIT_SYSTEM_EVENT`.
    SystemEvent,
    /// Kicks and signals (`EINTR`, `KVM_EXIT_INTR`).
    Interrupted,
    /// `KVM_EXIT_IRQ_WINDOW_OPEN`.
    IrqWindowOpen,
    /// Exit reasons veil does not decode, passed to a backend's hook.
    Other,
    /// Error exits and exits veil does not handle.
    Error,
}

impl ExitKind {
    /// Every kind, in order.
    pub const ALL: [ExitKind; 14] = [
        ExitKind::MemoryFault,
        ExitKind::Hypercall,
        ExitKind::PortHypercall,
        ExitKind::PioIn,
        ExitKind::PioOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Halt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::Interrupted,
        ExitKind::IrqWindowOpen,
        ExitKind::Other,
        ExitKind::Error,
    ];

    /// The kind of a decoded exit.
    pub const fn of(exit: &Exit) -> ExitKind {
        match exit {
            Exit::MemoryFault(_) => ExitKind::MemoryFault,
            Exit::Hypercall(_) => ExitKind::Hypercall,
            Exit::PortHypercall => ExitKind::PortHypercall,
            Exit::PioIn { .. } => ExitKind::PioIn,
            Exit::PioOut { .. } => ExitKind::PioOut,
            Exit::MmioRead { .. } => ExitKind::MmioRead,
            Exit::MmioWrite { .. } => ExitKind::MmioWrite,
            Exit::Halt => ExitKind::Halt,
            Exit::Shutdown => ExitKind::Shutdown,
            Exit::SystemEvent { .. } => ExitKind::SystemEvent,
            Exit::Interrupted => ExitKind::Interrupted,
            Exit::IrqWindowOpen => ExitKind::IrqWindowOpen,
            Exit::Other { .. } => ExitKind::Other,
        }
    }

    /// A short lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            ExitKind::MemoryFault => "memory-fault",
            ExitKind::Hypercall => "hypercall",
            ExitKind::PortHypercall => "port-hypercall",
            ExitKind::PioIn => "pio-in",
            ExitKind::PioOut => "pio-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Halt => "halt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system-event",
            ExitKind::Interrupted => "interrupted",
            ExitKind::IrqWindowOpen => "irq-window-open",
            ExitKind::Other => "other",
            ExitKind::Error => "error",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

const KINDS: usize = ExitKind::ALL.len();

/// Live counters of one vCPU, updated by its thread and readable from any thread.
///
/// Only the vCPU's own thread writes them, so an update is a relaxed load and store (no
/// locked instruction on the exit path); readers may see a count without its latest
/// handler time, never a torn value. Handler times are kept in ticks of the handler
/// [`Clock`] and converted to nanoseconds in [`snapshot`](Self::snapshot).
#[derive(Debug)]
pub(crate) struct ExitCounters {
    counts: [AtomicU64; KINDS],
    handler_ticks: [AtomicU64; KINDS],
    refused: AtomicU64,
    clock: Clock,
}

impl Default for ExitCounters {
    fn default() -> Self {
        ExitCounters::with_clock(Clock::get())
    }
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).saturating_add(n),
        Ordering::Relaxed,
    );
}

impl ExitCounters {
    /// Counters whose handler times are read from `clock`.
    pub fn with_clock(clock: Clock) -> Self {
        ExitCounters {
            counts: Default::default(),
            handler_ticks: Default::default(),
            refused: AtomicU64::new(0),
            clock,
        }
    }

    /// Counts one exit of `kind`. Call from the vCPU's thread only.
    #[inline]
    pub fn count(&self, kind: ExitKind) {
        bump(&self.counts[kind.index()], 1);
    }

    /// The clock handler times are read from: [`Clock::now`] before and after a handler,
    /// the difference to [`add_handler_ticks`](Self::add_handler_ticks).
    #[inline]
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Adds `ticks` of the handler clock to the handler time of `kind`. Call from the
    /// vCPU's thread only.
    #[inline]
    pub fn add_handler_ticks(&self, kind: ExitKind, ticks: u64) {
        bump(&self.handler_ticks[kind.index()], ticks);
    }

    /// Counts a hypercall refused before any handler saw it. Call from the vCPU's
    /// thread only.
    pub fn count_refused(&self) {
        bump(&self.refused, 1);
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> ExitStats {
        let mut stats = ExitStats {
            refused: self.refused.load(Ordering::Relaxed),
            ..ExitStats::default()
        };
        let rate = self.clock.rate();
        for kind in ExitKind::ALL {
            stats.counts[kind.index()] = self.counts[kind.index()].load(Ordering::Relaxed);
            let ticks = self.handler_ticks[kind.index()].load(Ordering::Relaxed);
            stats.handler_nanos[kind.index()] = rate.nanos(ticks);
        }
        stats
    }
}

/// A copy of one vCPU's exit statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStats {
    counts: [u64; KINDS],
    handler_nanos: [u64; KINDS],
    refused: u64,
}

impl ExitStats {
    /// How many exits of `kind` were taken.
    pub fn count(&self, kind: ExitKind) -> u64 {
        self.counts[kind.index()]
    }

    /// Time spent in handlers for exits of `kind`: the [`IoHandler`] or [`MemoryHandler`]
    /// call each exit made, timed around the call on every exit. Exits that call no
    /// handler (a halt, a refused hypercall) add nothing.
    ///
    /// Where the kernel keeps time with the x86-64 time-stamp counter, the counter is read
    /// before and after each call and the ticks are converted to nanoseconds when the
    /// statistics are read, at the rate measured against [`Instant`](std::time::Instant)
    /// since the first vCPU set started; elsewhere each call is timed with `Instant`, which
    /// costs more per exit (about two percent of a port-I/O round trip on the team's KVM
    /// hosts, against under half a percent).
    ///
    /// [`IoHandler`]: crate::IoHandler
    /// [`MemoryHandler`]: crate::MemoryHandler
    pub fn handler_time(&self, kind: ExitKind) -> Duration {
        Duration::from_nanos(self.handler_nanos[kind.index()])
    }

    /// Hypercalls refused before any handler saw them: no ABI claimed the number, or
    /// the claiming ABI found the arguments invalid (a range outside guest memory, an
    /// unknown attribute bit). The guest read the ABI's error code and went on.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Exits of every kind.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Time spent in handlers of every kind.
    pub fn total_handler_time(&self) -> Duration {
        Duration::from_nanos(
            self.handler_nanos
                .iter()
                .fold(0, |a, &b| a.saturating_add(b)),
        )
    }

    /// The sum of two sets of statistics (for example, of all vCPUs).
    pub fn merged(&self, other: &ExitStats) -> ExitStats {
        let mut out = *self;
        out.refused = out.refused.saturating_add(other.refused);
        for i in 0..KINDS {
            out.counts[i] = out.counts[i].saturating_add(other.counts[i]);
            out.handler_nanos[i] = out.handler_nanos[i].saturating_add(other.handler_nanos[i]);
        }
        out
    }
}

impl fmt::Display for ExitStats {
    /// One `kind=count (handler time)` item per kind that occurred.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in ExitKind::ALL {
            let n = self.count(kind);
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{}={n} ({:?})", kind.name(), self.handler_time(kind))?;
        }
        if first {
            f.write_str("no exits")?;
        }
        if self.refused > 0 {
            write!(f, "; {} hypercalls refused", self.refused)?;
        }
        Ok(())
    }
}

impl serde::Serialize for ExitStats {
    /// A map from kind name to `{count, handler_ns}` for each kind that occurred, plus
    /// `refused_hypercalls`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        #[derive(serde::Serialize)]
        struct Kind {
            count: u64,
            handler_ns: u64,
        }
        let mut map = serializer.serialize_map(None)?;
        for kind in ExitKind::ALL {
            let count = self.count(kind);
            if count > 0 {
                let handler_ns = self.handler_nanos[kind.index()];
                map.serialize_entry(kind.name(), &Kind { count, handler_ns })?;
            }
        }
        map.serialize_entry("refused_hypercalls", &self.refused)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_times() {
        // A clock whose ticks are nanoseconds, so the times below are exact.
        let c = ExitCounters::with_clock(Clock::monotonic());
        c.count(ExitKind::PioOut);
        c.count(ExitKind::PioOut);
        c.count(ExitKind::Halt);
        c.add_handler_ticks(ExitKind::PioOut, 1500);
        let s = c.snapshot();
        assert_eq!(s.count(ExitKind::PioOut), 2);
        assert_eq!(s.count(ExitKind::Halt), 1);
        assert_eq!(s.count(ExitKind::MmioRead), 0);
        assert_eq!(s.total(), 3);
        assert_eq!(s.handler_time(ExitKind::PioOut), Duration::from_nanos(1500));
        assert_eq!(s.total_handler_time(), Duration::from_nanos(1500));
        assert_eq!(s.to_string(), "pio-out=2 (1.5µs), halt=1 (0ns)");
        let m = s.merged(&s);
        assert_eq!(m.count(ExitKind::PioOut), 4);
        assert_eq!(ExitStats::default().to_string(), "no exits");
        c.count_refused();
        let s = c.snapshot();
        assert_eq!(s.refused(), 1);
        assert_eq!(s.merged(&s).refused(), 2);
        assert!(s.to_string().ends_with("; 1 hypercalls refused"), "{s}");
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["pio-out"]["count"], 2);
        assert_eq!(json["pio-out"]["handler_ns"], 1500);
        assert_eq!(json["refused_hypercalls"], 1);
        assert!(json.get("mmio-read").is_none());
    }

    #[test]
    fn kinds_are_indexed_in_order() {
        for (i, k) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(ExitKind::of(&Exit::Halt), ExitKind::Halt);
    }
}
