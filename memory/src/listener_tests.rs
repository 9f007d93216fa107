// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Listeners that subscribe while conversions run: the starting state they get and the
//! changes they hear afterwards must add up to the memory's state, exactly.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use veil_attrs::{AttrMap, Attributes, FrameRange, Gfn};

use crate::backend::tests::MemfdSource;
use crate::*;

const MIB: u64 = 1 << 20;

/// An attributes VM whose every call takes `delay`: conversions spend their time inside
/// the attribute map's update, where a subscriber is most likely to meet one.
struct SlowVm {
    delay: Duration,
}

impl MemoryAttributesVm for SlowVm {
    fn set_memory_attributes(&self, _: FrameRange, _: Attributes) -> io::Result<()> {
        thread::sleep(self.delay);
        Ok(())
    }
}

/// Fails every `every`-th discard with `EIO`. Discards come last in a conversion, so the
/// attributes call before it is undone: the conversion is rolled back.
struct FlakyDiscards {
    every: u64,
    seen: AtomicU64,
    failed: AtomicU64,
}

impl Syscalls for FlakyDiscards {
    fn issue(&self, call: Syscall<'_>) -> io::Result<()> {
        if matches!(call.kind(), StepKind::Discard(_))
            && self.seen.fetch_add(1, Ordering::Relaxed) % self.every == self.every - 1
        {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        call.issue()
    }
}

/// A small deterministic generator (xorshift64*), so a failing trial can be rerun.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What went wrong in one trial.
#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    /// Changes whose new state the listener's mirror already held: told twice, or told
    /// a change its starting state already had.
    duplicates: u64,
    /// Other changes whose old state disagreed with the mirror.
    mismatches: u64,
    /// Whether the mirror differed from the memory's state at the end.
    diverged: bool,
}

/// A device mirror: the starting state, with every change it hears applied in order.
#[derive(Default)]
struct Mirror {
    state: Mutex<MirrorState>,
}

#[derive(Default)]
struct MirrorState {
    map: Option<AttrMap>,
    /// The starting state, as given.
    start: Option<AttrMap>,
    /// Changes heard before the starting state: none may come.
    early: u64,
    faults: Faults,
    heard: u64,
}

impl MirrorState {
    fn apply(&mut self, change: &StateChange) {
        let map = self.map.as_mut().expect("a starting state");
        let all = |s| map.runs(change.range).unwrap().all(|r| r.state == s);
        if !all(change.old) {
            if all(change.new) {
                self.faults.duplicates += 1;
            } else {
                self.faults.mismatches += 1;
            }
        }
        map.set_state(change.range, change.new).unwrap();
        self.heard += 1;
    }
}

impl ConversionListener for Mirror {
    fn subscribed(&self, start: &AttrMap) {
        let mut s = self.state.lock().unwrap();
        assert!(s.start.is_none(), "two starting states");
        s.map = Some(start.clone());
        s.start = Some(start.clone());
    }

    fn converted(&self, change: &StateChange) {
        let mut s = self.state.lock().unwrap();
        if s.map.is_none() {
            s.early += 1;
        } else {
            s.apply(change);
        }
    }
}

/// What one trial came to.
#[derive(Debug, Default)]
struct Outcome {
    faults: Faults,
    /// Conversions rolled back.
    rolled_back: u64,
    /// Changes the mirror heard.
    heard: u64,
    /// Whether the starting state held conversions (some ran before the subscription).
    started_converted: bool,
}

/// One trial: two threads convert random small ranges of the first 32 pages, each
/// conversion spending 50 us in the slow attributes VM and every fifth discard failing
/// (so that conversion is rolled back), while the main thread subscribes a mirror part
/// way through.
fn trial(seed: u64) -> Outcome {
    let src = MemfdSource {
        flags: 0,
        fail: None,
    };
    let syscalls = Arc::new(FlakyDiscards {
        every: 5,
        seen: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(&src)
        .attributes_vm(Arc::new(SlowVm {
            delay: Duration::from_micros(50),
        }))
        .syscalls(syscalls.clone())
        .region(RegionSpec::new(0, 4 * MIB, Flavor::ATTRIBUTES))
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let mirror = Arc::new(Mirror::default());
    let mut rng = Rng(seed | 1);
    thread::scope(|s| {
        for t in 0..2 {
            let (mem, stop) = (&mem, &stop);
            let mut rng = Rng((seed ^ (t + 1u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let start = rng.below(32);
                    let range = FrameRange::new(Gfn(start), 1 + rng.below(4)).unwrap();
                    let to = if rng.below(2) == 0 {
                        Attributes::PRIVATE
                    } else {
                        Attributes::empty()
                    };
                    match mem.convert(range, to) {
                        Ok(_) | Err(ConvertError::Step { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
        // Stops the converting threads however this thread leaves the scope.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        thread::sleep(Duration::from_micros(200 + rng.below(800)));
        let sub = mem.subscribe(mirror.clone());
        let given = mirror.state.lock().unwrap().start.clone();
        assert_eq!(
            given.as_ref(),
            Some(&*sub.start),
            "the listener got what was returned"
        );
        thread::sleep(Duration::from_millis(1));
    });
    let s = mirror.state.lock().unwrap();
    assert_eq!(s.early, 0, "changes came before the starting state");
    let mut faults = s.faults;
    faults.diverged = s.map.as_ref() != Some(&*mem.attributes());
    let untouched = AttrMap::new(4 * MIB).unwrap();
    Outcome {
        faults,
        rolled_back: syscalls.failed.load(Ordering::Relaxed),
        heard: s.heard,
        started_converted: s.start.as_ref() != Some(&untouched),
    }
}

/// A listener subscribing while conversions run, many times over: its starting state
/// plus the changes it hears is the memory's state, every change it hears applies to
/// what it holds (none twice, none missed, none rolled back), and the trials did meet
/// conversions on both sides of the subscription and rolled some back.
#[test]
fn a_late_listener_hears_exactly_the_changes_after_its_start() {
    const TRIALS: u64 = 300;
    let (mut duplicated, mut mismatched, mut diverged) = (0, 0, 0);
    let (mut rolled_back, mut heard, mut both_sides) = (0, 0, 0);
    for seed in 0..TRIALS {
        let o = trial(seed);
        duplicated += u64::from(o.faults.duplicates > 0);
        mismatched += u64::from(o.faults.mismatches > 0);
        diverged += u64::from(o.faults.diverged);
        rolled_back += o.rolled_back;
        heard += o.heard;
        both_sides += u64::from(o.started_converted && o.heard > 0);
    }
    let line = format!(
        "{TRIALS} trials: {duplicated} heard a change their start held, {mismatched} a \
         change that did not apply, {diverged} ended apart from the memory; {heard} changes \
         heard, {rolled_back} conversions rolled back, {both_sides} trials with \
         conversions before and after subscribing"
    );
    eprintln!("{line}");
    assert_eq!((duplicated, mismatched, diverged), (0, 0, 0), "{line}");
    assert!(rolled_back > 0, "{line}");
    assert!(
        both_sides >= TRIALS / 2,
        "too few trials met conversions: {line}"
    );
}
