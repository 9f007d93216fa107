// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The clock handler times are read from, twice per timed exit.
//!
//! `Instant::now` is a vDSO call that reads the kernel's clock data and scales a counter,
//! and two of them per exit cost about two percent of a port-I/O round trip. Where the
//! kernel's own clocksource is the time-stamp counter (so the kernel found it constant-rate,
//! running in idle states and in step on every CPU), the handler clock reads that counter
//! directly, one instruction each side of the handler, and converts the ticks to
//! nanoseconds only when statistics are read, at the rate measured against `Instant` since
//! the clock was first used. Elsewhere (other clocksources, other architectures) it reads
//! `Instant`, with ticks that are nanoseconds.

use std::sync::OnceLock;
use std::time::Instant;

/// Where the ticks come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The x86-64 time-stamp counter.
    Tsc,
    /// Nanoseconds of `Instant` since the origin.
    Monotonic,
}

/// The handler clock: cheap to read on the exit path, converted on the statistics path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    source: Source,
    /// When the clock started, on both scales: ticks count from here.
    origin: Instant,
    origin_ticks: u64,
}

impl Clock {
    /// The process's handler clock, chosen (and its origin taken) on first use.
    pub(crate) fn get() -> Clock {
        static CLOCK: OnceLock<Clock> = OnceLock::new();
        *CLOCK.get_or_init(|| {
            if tsc_is_the_kernel_clock() {
                Clock::tsc()
            } else {
                Clock::monotonic()
            }
        })
    }

    /// A clock whose ticks are nanoseconds of `Instant`.
    pub(crate) fn monotonic() -> Clock {
        Clock {
            source: Source::Monotonic,
            origin: Instant::now(),
            origin_ticks: 0,
        }
    }

    fn tsc() -> Clock {
        let (origin, origin_ticks) = paired_reading();
        Clock {
            source: Source::Tsc,
            origin,
            origin_ticks,
        }
    }

    /// The current tick.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self.source {
            Source::Tsc => tsc(),
            Source::Monotonic => nanos_u64(self.origin.elapsed().as_nanos()),
        }
    }

    /// The rate to convert ticks at, as measured now.
    pub(crate) fn rate(&self) -> Rate {
        match self.source {
            Source::Monotonic => Rate { nanos: 1, ticks: 1 },
            Source::Tsc => {
                let (now, ticks) = paired_reading();
                Rate {
                    nanos: nanos_u64(now.duration_since(self.origin).as_nanos()),
                    ticks: ticks.saturating_sub(self.origin_ticks),
                }
            }
        }
    }
}

/// Nanoseconds per tick, as the ratio of two spans measured over the same interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) nanos: u64,
    pub(crate) ticks: u64,
}

impl Rate {
    /// `ticks` in nanoseconds (0 before any tick has passed to measure the rate by).
    pub(crate) fn nanos(&self, ticks: u64) -> u64 {
        if self.ticks == 0 {
            return 0;
        }
        nanos_u64(u128::from(ticks) * u128::from(self.nanos) / u128::from(self.ticks))
    }
}

fn nanos_u64(nanos: u128) -> u64 {
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// An `Instant` and the counter at the same moment: of three tries, the one whose counter
/// readings either side of the `Instant` lie closest together, so that being preempted
/// between the two reads does not skew the rate.
fn paired_reading() -> (Instant, u64) {
    let mut best: Option<(u64, Instant, u64)> = None;
    for _ in 0..3 {
        let before = tsc();
        let now = Instant::now();
        let after = tsc();
        let width = after.wrapping_sub(before);
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, now, before.wrapping_add(width / 2)));
        }
    }
    let (_, now, ticks) = best.expect("three readings were taken");
    (now, ticks)
}

/// Whether the kernel keeps time with the TSC, having checked that it can.
fn tsc_is_the_kernel_clock() -> bool {
    cfg!(target_arch = "x86_64")
        && std::fs::read_to_string(
            "/sys/devices/system/clocksource/clocksource0/current_clocksource",
        )
        .is_ok_and(|s| s.trim() == "tsc")
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU, reads no memory and changes no state the
    // program relies on; user mode may execute it unless the kernel set CR4.TSD, which it
    // does not do while the TSC is its clocksource (checked before this clock is chosen).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn tsc() -> u64 {
    // Never chosen as a source here (`tsc_is_the_kernel_clock` is false).
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_convert_with_wide_arithmetic() {
        let r = Rate {
            nanos: 1_000,
            ticks: 3_000,
        };
        assert_eq!(r.nanos(3), 1);
        assert_eq!(r.nanos(3_000_000), 1_000_000);
        // A product past u64 still converts.
        assert_eq!(r.nanos(u64::MAX), u64::MAX / 3);
        let fast = Rate {
            nanos: u64::MAX,
            ticks: 1,
        };
        assert_eq!(fast.nanos(2), u64::MAX);
        assert_eq!(Rate { nanos: 5, ticks: 0 }.nanos(100), 0);
    }

    /// Whatever source this machine's clock uses, a sleep between two readings is at
    /// least the time slept, and not far more.
    #[test]
    fn both_sources_measure_a_sleep() {
        let clock = Clock::get();
        let want = if tsc_is_the_kernel_clock() {
            Source::Tsc
        } else {
            Source::Monotonic
        };
        assert_eq!(clock.source, want);
        for clock in [clock, Clock::monotonic()] {
            let start = clock.now();
            std::thread::sleep(Duration::from_millis(20));
            let ticks = clock.now().saturating_sub(start);
            let nanos = Duration::from_nanos(clock.rate().nanos(ticks));
            // A little below for the rate's measurement error, far above for scheduling.
            assert!(
                nanos >= Duration::from_micros(19_600) && nanos < Duration::from_secs(2),
                "{:?}: {nanos:?}",
                clock.source
            );
        }
    }
}
