// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-attrs against two per-page baselines, on three workloads.
//!
//! Baselines, written here:
//! - `bitmap`: one bit per 4 KiB page (how QEMU tracks shared pages), with word-level
//!   range operations: a set touches each 64-page word once and reports the changed
//!   sub-ranges from the word's xor.
//! - `pagemap`: an ordered map with one entry per non-shared page (how KVM's attribute
//!   xarray stores a converted range): a set visits every page of the range.
//!
//! Every structure returns the changed sub-ranges of each set, and the bench checks
//! that all three agree. Each workload is timed in short chunks and each chunk keeps
//! its best time over a few rounds (see `Timing`), so a shared machine disturbs veil
//! and the baselines alike. Random numbers come from a fixed seed. Run one workload with
//! `cargo bench -p veil-attrs -- random` (or `ranges`, `lookups`, `concurrent`).
//!
//! The bitmap is allocated and its pages touched before timing starts; veil allocates
//! as it goes, inside the timed conversions.
//!
//! Workloads:
//! 1. `ranges`: 1,000 conversions of 1 GiB ranges at random 1 GiB-aligned places in a
//!    1 TiB guest, each to private or shared at random (the pagemap does the first 10).
//! 2. `random`: 100,000 conversions of one random 4 KiB page in a 64 GiB guest, each to
//!    private or shared at random, then 1,000,000 lookups of random pages.
//! 3. `lookups`: 10,000,000 lookups of random pages in a 64 GiB guest holding about
//!    1,000 runs (random private ranges of 1 to 2,048 pages, some cut by shared ones).
//! 4. `concurrent` (no target): from the map `random` left, the same 4 KiB conversions
//!    flipped, one page converted back and forth, and 10,000 aligned 1 GiB conversions,
//!    each on a plain map and published through a `ConcurrentAttrMap`.
//!
//! Memory is heap bytes held: `AttrMap::heap_bytes` for veil, the word vector for the
//! bitmap, and for the pagemap an estimate from its entry count (see `pagemap_bytes`).
//!
//! The header names the data caches of the CPU the benchmark starts on, from
//! `/sys/devices/system/cpu/cpu0/cache/`: the scattered workloads touch a random word of
//! a 2 MiB bitmap per operation, so how they compare depends on what fits in L2.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use veil_attrs::{AttrMap, Attributes, ConcurrentAttrMap, FrameRange, Gfn, PAGE_SHIFT, PageState};

const GIB_FRAMES: u64 = 1 << (30 - PAGE_SHIFT);

/// splitmix64: small, fast and good enough to place conversions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// One conversion: frames `[start, end)` to private (`true`) or shared.
#[derive(Clone, Copy)]
struct Op {
    start: u64,
    end: u64,
    private: bool,
}

fn attrs(private: bool) -> Attributes {
    if private {
        Attributes::PRIVATE
    } else {
        Attributes::empty()
    }
}

/// Baseline 1: one bit per page, set means private.
struct Bitmap {
    words: Vec<u64>,
}

fn mask(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
    upper & (u64::MAX << lo)
}

impl Bitmap {
    fn new(frames: u64) -> Bitmap {
        let mut words = vec![0u64; frames.div_ceil(64) as usize];
        // Fault the pages in now, not in the timed loop.
        for w in words.iter_mut() {
            *w = black_box(0);
        }
        Bitmap { words }
    }

    fn get(&self, gfn: u64) -> bool {
        (self.words[(gfn / 64) as usize] >> (gfn % 64)) & 1 != 0
    }

    /// Sets `[a, b)` and puts the changed sub-ranges (all previously the other state)
    /// in `changes`.
    fn set(&mut self, a: u64, b: u64, private: bool, changes: &mut Vec<(u64, u64)>) {
        changes.clear();
        let (fw, lw) = (a / 64, (b - 1) / 64);
        for w in fw..=lw {
            let lo = if w == fw { a % 64 } else { 0 };
            let hi = if w == lw { (b - 1) % 64 + 1 } else { 64 };
            let m = mask(lo, hi);
            let word = &mut self.words[w as usize];
            let old = *word;
            let new = if private { old | m } else { old & !m };
            *word = new;
            let mut diff = old ^ new;
            while diff != 0 {
                let first = u64::from(diff.trailing_zeros());
                let len = u64::from((diff >> first).trailing_ones());
                let (s, e) = (w * 64 + first, w * 64 + first + len);
                match changes.last_mut() {
                    Some(last) if last.1 == s => last.1 = e,
                    _ => changes.push((s, e)),
                }
                diff &= !mask(first, first + len);
            }
        }
    }

    fn private_pages(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn heap_bytes(&self) -> usize {
        self.words.capacity() * size_of::<u64>()
    }
}

/// Baseline 2: one ordered-map entry per non-shared page.
struct PageMap {
    pages: BTreeMap<u64, PageState>,
}

impl PageMap {
    fn new() -> PageMap {
        PageMap {
            pages: BTreeMap::new(),
        }
    }

    fn get(&self, gfn: u64) -> PageState {
        self.pages.get(&gfn).copied().unwrap_or(PageState::SHARED)
    }

    fn set(&mut self, a: u64, b: u64, state: PageState, changes: &mut Vec<(u64, u64)>) {
        changes.clear();
        for page in a..b {
            let previous = if state == PageState::SHARED {
                self.pages.remove(&page)
            } else {
                self.pages.insert(page, state)
            }
            .unwrap_or(PageState::SHARED);
            if previous != state {
                match changes.last_mut() {
                    Some(last) if last.1 == page => last.1 = page + 1,
                    _ => changes.push((page, page + 1)),
                }
            }
        }
    }
}

/// Estimated heap bytes of a `BTreeMap<u64, PageState>` with `entries` entries.
///
/// std's B-tree nodes hold up to 11 entries: a leaf is 144 bytes (parent pointer, 11
/// keys of 8 bytes, 11 values of 4, index and length), an internal node 240 (the same
/// plus 12 child pointers). Nodes are taken as 8 of 11 full (inserts in order leave
/// them 6 of 11 full, random inserts about 69%), with one internal node per 7 children.
fn pagemap_bytes(entries: u64) -> u64 {
    let leaves = entries.div_ceil(8);
    let mut internal = 0;
    let mut level = leaves;
    while level > 1 {
        level = level.div_ceil(7);
        internal += level;
    }
    leaves * 144 + internal * 240
}

fn fr(a: u64, b: u64) -> FrameRange {
    FrameRange::from_bounds(Gfn(a), Gfn(b)).expect("bench ranges are valid")
}

fn veil_pages(changes: &veil_attrs::Changes) -> Vec<(u64, u64)> {
    changes
        .iter()
        .map(|c| (c.range.start().0, c.range.end().0))
        .collect()
}

fn private_pages(map: &AttrMap) -> u64 {
    map.runs(map.whole())
        .expect("whole range")
        .filter(|r| r.state.is_private())
        .map(|r| r.range.pages())
        .sum()
}

/// Times `n` operations split in chunks, keeping each chunk's fastest time over the
/// rounds. The machine may be shared: a chunk is short (tens of microseconds to a
/// millisecond), so in most rounds nothing else interrupts it, and the sum of the best
/// chunks is the cost without interference. Veil and the baselines are timed the same
/// way, in turns within each round.
struct Timing {
    n: usize,
    chunk: usize,
    best: Vec<Duration>,
}

impl Timing {
    fn new(n: usize, chunk: usize) -> Timing {
        Timing {
            n,
            chunk,
            best: vec![Duration::MAX; n.div_ceil(chunk)],
        }
    }

    /// One round: `op(i)` for every `i` in `0..n`, in order.
    fn round(&mut self, mut op: impl FnMut(usize)) {
        self.sum(|i| {
            op(i);
            0
        });
    }

    /// One round of lookups: the sum of `op(i)` for every `i` in `0..n`.
    fn sum(&mut self, mut op: impl FnMut(usize) -> u64) -> u64 {
        let mut total = 0;
        for (c, best) in self.best.iter_mut().enumerate() {
            let start = Instant::now();
            for i in c * self.chunk..((c + 1) * self.chunk).min(self.n) {
                total += op(i);
            }
            *best = (*best).min(start.elapsed());
        }
        black_box(total)
    }

    /// Nanoseconds per operation.
    fn ns(&self) -> f64 {
        let total: Duration = self.best.iter().sum();
        total.as_nanos() as f64 / self.n as f64
    }
}

/// Prints one target check and counts misses.
struct Targets {
    missed: Vec<String>,
}

impl Targets {
    fn check(&mut self, what: &str, ok: bool) -> &'static str {
        if ok {
            "ok"
        } else {
            self.missed.push(what.to_string());
            "MISSED"
        }
    }
}

fn ranges(t: &mut Targets) {
    let frames = 1024 * GIB_FRAMES;
    let mut rng = Rng(0x5eed_0001);
    let ops: Vec<Op> = (0..1000)
        .map(|_| {
            let start = rng.below(1024) * GIB_FRAMES;
            Op {
                start,
                end: start + GIB_FRAMES,
                private: rng.coin(),
            }
        })
        .collect();

    let mut veil = AttrMap::new(frames << PAGE_SHIFT).expect("1 TiB guest");
    let mut bitmap = Bitmap::new(frames);
    let mut changes = Vec::new();
    let (mut tv, mut tb) = (Timing::new(ops.len(), 10), Timing::new(ops.len(), 10));
    for _ in 0..5 {
        veil = AttrMap::new(frames << PAGE_SHIFT).expect("1 TiB guest");
        tv.round(|i| {
            let op = ops[i];
            black_box(
                veil.set(fr(op.start, op.end), attrs(op.private))
                    .expect("in range"),
            );
        });
        bitmap = Bitmap::new(frames);
        tb.round(|i| {
            let op = ops[i];
            bitmap.set(op.start, op.end, op.private, &mut changes);
            black_box(&changes);
        });
    }

    // The per-page map runs the first 10 only; check all three agree on those.
    let mut pagemap = PageMap::new();
    let mut check = AttrMap::new(frames << PAGE_SHIFT).expect("1 TiB guest");
    let mut check_bits = Bitmap::new(frames);
    let mut tp = Timing::new(10, 1);
    tp.round(|i| {
        let op = ops[i];
        pagemap.set(
            op.start,
            op.end,
            PageState::new(attrs(op.private)),
            &mut changes,
        );
        let v = check
            .set(fr(op.start, op.end), attrs(op.private))
            .expect("in range");
        assert_eq!(veil_pages(&v), changes, "veil and pagemap disagree");
        check_bits.set(op.start, op.end, op.private, &mut changes);
        assert_eq!(veil_pages(&v), changes, "veil and bitmap disagree");
    });
    // That timed the checks too; time the per-page map alone on a fresh one.
    let mut pagemap = PageMap::new();
    let mut tp = Timing::new(10, 1);
    tp.round(|i| {
        let op = ops[i];
        pagemap.set(
            op.start,
            op.end,
            PageState::new(attrs(op.private)),
            &mut changes,
        );
        black_box(&changes);
    });
    assert_eq!(private_pages(&veil), bitmap.private_pages());

    let (v, b, p) = (tv.ns(), tb.ns(), tp.ns());
    println!(
        "attrs-bench: ranges: veil {v:.1} bitmap {b:.1} pagemap {p:.1} | bitmap/veil {:.1}x (target >= 10x) {}, pagemap/veil {:.0}x (target >= 1000x) {}",
        b / v,
        t.check("ranges vs bitmap", b / v >= 10.0),
        p / v,
        t.check("ranges vs pagemap", p / v >= 1000.0),
    );
    let (vm, bm) = (veil.heap_bytes() as u64, bitmap.heap_bytes() as u64);
    let pm = pagemap_bytes(bitmap.private_pages());
    println!(
        "attrs-bench: memory ranges: veil {vm} bitmap {bm} pagemap {pm} | veil/bitmap {:.3}% (target < 1%) {}",
        vm as f64 * 100.0 / bm as f64,
        t.check("ranges memory", vm * 100 < bm),
    );
    println!(
        "attrs-bench: note: ranges: {} runs; pagemap memory estimated for the final state's {} private pages",
        veil.run_count(),
        bitmap.private_pages()
    );
}

fn random(t: &mut Targets) -> (AttrMap, Vec<Op>) {
    let frames = 64 * GIB_FRAMES;
    let mut rng = Rng(0x5eed_0002);
    let ops: Vec<Op> = (0..100_000)
        .map(|_| {
            let start = rng.below(frames);
            Op {
                start,
                end: start + 1,
                private: rng.coin(),
            }
        })
        .collect();
    let lookups: Vec<u64> = (0..1_000_000).map(|_| rng.below(frames)).collect();

    let mut veil = AttrMap::new(frames << PAGE_SHIFT).expect("64 GiB guest");
    let mut bitmap = Bitmap::new(frames);
    let mut changes = Vec::new();
    let (mut tv, mut tb) = (Timing::new(ops.len(), 1000), Timing::new(ops.len(), 1000));
    for _ in 0..5 {
        veil = AttrMap::new(frames << PAGE_SHIFT).expect("64 GiB guest");
        tv.round(|i| {
            let op = ops[i];
            black_box(
                veil.set(fr(op.start, op.end), attrs(op.private))
                    .expect("in range"),
            );
        });
        bitmap = Bitmap::new(frames);
        tb.round(|i| {
            let op = ops[i];
            bitmap.set(op.start, op.end, op.private, &mut changes);
            black_box(&changes);
        });
    }
    let (mut lv, mut lb) = (
        Timing::new(lookups.len(), 10_000),
        Timing::new(lookups.len(), 10_000),
    );
    let (mut sum_v, mut sum_b) = (0u64, 0u64);
    for _ in 0..5 {
        lv.round(|i| {
            sum_v += u64::from(matches!(veil.get(Gfn(lookups[i])), Ok(s) if s.is_private()))
        });
        lb.round(|i| sum_b += u64::from(bitmap.get(lookups[i])));
    }
    assert_eq!(sum_v, sum_b, "veil and bitmap disagree on lookups");

    let mut pagemap = PageMap::new();
    let mut tp = Timing::new(ops.len(), 1000);
    tp.round(|i| {
        let op = ops[i];
        pagemap.set(
            op.start,
            op.end,
            PageState::new(attrs(op.private)),
            &mut changes,
        );
        black_box(&changes);
    });
    let mut lp = Timing::new(lookups.len(), 10_000);
    let sum_p = lp.sum(|i| u64::from(pagemap.get(lookups[i]).is_private()));
    assert_eq!(sum_p * 5, sum_b, "pagemap and bitmap disagree on lookups");
    assert_eq!(private_pages(&veil), bitmap.private_pages());
    assert_eq!(pagemap.pages.len() as u64, bitmap.private_pages());

    let (v, b, p) = (tv.ns(), tb.ns(), tp.ns());
    println!(
        "attrs-bench: random-convert: veil {v:.1} bitmap {b:.1} pagemap {p:.1} | veil/bitmap {:.2}x (target <= 3x) {}",
        v / b,
        t.check("random-convert", v <= 3.0 * b),
    );
    let (v, b, p) = (lv.ns(), lb.ns(), lp.ns());
    println!(
        "attrs-bench: random-lookup: veil {v:.1} bitmap {b:.1} pagemap {p:.1} | veil/bitmap {:.2}x (target <= 2x) {}",
        v / b,
        t.check("random-lookup", v <= 2.0 * b),
    );
    let (vm, bm) = (veil.heap_bytes() as u64, bitmap.heap_bytes() as u64);
    let pm = pagemap_bytes(pagemap.pages.len() as u64);
    println!(
        "attrs-bench: memory random: veil {vm} bitmap {bm} pagemap {pm} | veil/bitmap {:.2}x (target <= 1.5x) {}",
        vm as f64 / bm as f64,
        t.check("random memory", vm * 2 <= bm * 3),
    );
    println!(
        "attrs-bench: note: random: {} runs, {} private pages",
        veil.run_count(),
        bitmap.private_pages()
    );
    (veil, ops)
}

/// What publishing costs, starting from the map the `random` workload left: single pages
/// at random places (each published write replays the one before on the other copy),
/// one page set back and forth (each write covers the last, so nothing is replayed),
/// and aligned 1 GiB ranges, on a plain map and on a [`ConcurrentAttrMap`]. Not a
/// target.
fn concurrent(base: &AttrMap, ops: &[Op], rng: &mut Rng) {
    let flips: Vec<Op> = ops
        .iter()
        .map(|op| Op {
            private: !op.private,
            ..*op
        })
        .collect();
    let frames = base.frames();
    // A page in a dense region that the random workload left shared.
    let start = (0..frames)
        .map(|_| rng.below(frames))
        .find(|&g| base.get(Gfn(g)).is_ok_and(|s| s == PageState::SHARED))
        .expect("a shared page");
    let same: Vec<Op> = (0..100_000)
        .map(|i| Op {
            start,
            end: start + 1,
            private: i % 2 == 0,
        })
        .collect();
    let big: Vec<Op> = (0..10_000)
        .map(|_| {
            let start = rng.below(frames / GIB_FRAMES) * GIB_FRAMES;
            Op {
                start,
                end: start + GIB_FRAMES,
                private: rng.coin(),
            }
        })
        .collect();
    let mut results = Vec::new();
    for ops in [&flips, &same, &big] {
        let (mut tp, mut ts) = (Timing::new(ops.len(), 100), Timing::new(ops.len(), 100));
        for _ in 0..3 {
            let mut plain = base.clone();
            tp.round(|i| {
                let op = ops[i];
                black_box(
                    plain
                        .set(fr(op.start, op.end), attrs(op.private))
                        .expect("in range"),
                );
            });
            let shared = ConcurrentAttrMap::new(base.clone());
            ts.round(|i| {
                let op = ops[i];
                black_box(
                    shared
                        .set(fr(op.start, op.end), attrs(op.private))
                        .expect("in range"),
                );
            });
        }
        results.push((tp.ns(), ts.ns()));
    }
    println!(
        "attrs-bench: concurrent: 4 KiB set plain {:.1} published {:.1}, one 4 KiB page back and forth plain {:.1} published {:.1}, 1 GiB set plain {:.1} published {:.1} (ns/op, from the random map)",
        results[0].0, results[0].1, results[1].0, results[1].1, results[2].0, results[2].1
    );
}

fn lookups(t: &mut Targets) {
    let frames = 64 * GIB_FRAMES;
    let mut rng = Rng(0x5eed_0003);
    let mut veil = AttrMap::new(frames << PAGE_SHIFT).expect("64 GiB guest");
    let mut bitmap = Bitmap::new(frames);
    let mut pagemap = PageMap::new();
    let mut changes = Vec::new();
    while veil.run_count() < 1000 {
        let start = rng.below(frames - 2048);
        let end = start + 1 + rng.below(2048);
        let private = rng.below(4) != 0;
        let v = veil.set(fr(start, end), attrs(private)).expect("in range");
        bitmap.set(start, end, private, &mut changes);
        assert_eq!(veil_pages(&v), changes, "veil and bitmap disagree");
        pagemap.set(start, end, PageState::new(attrs(private)), &mut changes);
        assert_eq!(veil_pages(&v), changes, "veil and pagemap disagree");
    }
    let gfns: Vec<u64> = (0..10_000_000).map(|_| rng.below(frames)).collect();

    let (mut tv, mut tb) = (
        Timing::new(gfns.len(), 100_000),
        Timing::new(gfns.len(), 100_000),
    );
    let (mut sum_v, mut sum_b) = (0u64, 0u64);
    for _ in 0..3 {
        sum_v += tv.sum(|i| u64::from(matches!(veil.get(Gfn(gfns[i])), Ok(s) if s.is_private())));
        sum_b += tb.sum(|i| u64::from(bitmap.get(gfns[i])));
    }
    let mut tp = Timing::new(gfns.len(), 100_000);
    let sum_p = tp.sum(|i| u64::from(pagemap.get(gfns[i]).is_private()));
    assert_eq!(sum_v, sum_b, "veil and bitmap disagree on lookups");
    assert_eq!(sum_p * 3, sum_b, "pagemap and bitmap disagree on lookups");

    let (v, b, p) = (tv.ns(), tb.ns(), tp.ns());
    let rate = 1e3 / v;
    println!(
        "attrs-bench: lookups: veil {v:.1} bitmap {b:.1} pagemap {p:.1} | veil {rate:.1} M lookups/s (target >= 20 M/s) {}",
        t.check("lookups", rate >= 20.0),
    );
    println!(
        "attrs-bench: note: lookups: {} runs; memory veil {} bitmap {} pagemap {}",
        veil.run_count(),
        veil.heap_bytes(),
        bitmap.heap_bytes(),
        pagemap_bytes(pagemap.pages.len() as u64)
    );
}

/// The data and unified caches of CPU 0, as `L1d 48K 12-way; L2 1024K 16-way; ...`,
/// or why they are unknown.
fn caches() -> String {
    let dir = Path::new("/sys/devices/system/cpu/cpu0/cache");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("unknown ({} unreadable)", dir.display());
    };
    let read = |index: &Path, name: &str| {
        std::fs::read_to_string(index.join(name))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let mut caches: Vec<(String, String)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("index"))
        })
        .filter(|p| read(p, "type") != "Instruction")
        .map(|p| {
            let level = read(&p, "level");
            let name = if read(&p, "type") == "Data" {
                format!("L{level}d")
            } else {
                format!("L{level}")
            };
            let mut what = read(&p, "size");
            let ways = read(&p, "ways_of_associativity");
            if !ways.is_empty() {
                let _ = write!(what, " {ways}-way");
            }
            let shared = read(&p, "shared_cpu_list");
            if !shared.is_empty() && shared != "0" {
                let _ = write!(what, " shared by CPUs {shared}");
            }
            (name, what)
        })
        .collect();
    if caches.is_empty() {
        return format!("unknown (nothing in {})", dir.display());
    }
    caches.sort();
    caches
        .iter()
        .map(|(name, what)| format!("{name} {what}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; only a bench run measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("attrs-bench: skipped (run with `cargo bench`)");
        return;
    }
    println!("attrs-bench: caches of cpu0: {}", caches());
    // `cargo bench -p veil-attrs -- random` runs one workload.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut t = Targets { missed: Vec::new() };
    if wanted("ranges") {
        ranges(&mut t);
    }
    if wanted("random") || wanted("concurrent") {
        let (map, ops) = random(&mut t);
        if wanted("concurrent") {
            concurrent(&map, &ops, &mut Rng(0x5eed_0004));
        }
    }
    if wanted("lookups") {
        lookups(&mut t);
    }
    if t.missed.is_empty() {
        println!("attrs-bench: all targets met");
    } else {
        println!("attrs-bench: targets missed: {}", t.missed.join(", "));
    }
}
