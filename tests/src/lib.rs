// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared helpers for veil's integration tests against real KVM.
//!
//! Tests that need `/dev/kvm` call [`kvm_or_skip`] first: without KVM they print why they
//! skip and return, unless `VEIL_REQUIRE_KVM=1` is set, in which case they fail.
//! [`long_mode`] holds the boot data the 64-bit test guests run with.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use veil_vcpu::{VcpuSet, VmReport};

/// The environment variable that turns a missing `/dev/kvm` from a skip into a failure.
pub const REQUIRE_KVM: &str = "VEIL_REQUIRE_KVM";

/// The environment variable that turns a missing in-place flavor (mmap-able guest_memfd)
/// from a skip into a failure; the testbed sets it on kernels that have it (Linux 7.3).
pub const REQUIRE_IN_PLACE: &str = "VEIL_REQUIRE_IN_PLACE";

/// Whether the environment variable `name` is set to `1`.
pub fn required(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// Returns `true` when `/dev/kvm` can be opened for reading and writing.
///
/// Otherwise prints the reason the calling test `test` skips and returns `false`, or
/// panics with that reason when `VEIL_REQUIRE_KVM=1`.
pub fn kvm_or_skip(test: &str) -> bool {
    let reason = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new("/dev/kvm"))
    {
        Ok(_) => return true,
        Err(e) => format!("cannot open /dev/kvm: {e}"),
    };
    if required(REQUIRE_KVM) {
        panic!("{test}: {reason}, and {REQUIRE_KVM}=1 forbids skipping");
    }
    skip(
        test,
        &format!("{reason} (set {REQUIRE_KVM}=1 to fail instead)"),
    );
    false
}

/// Prints that the test `test` skips, and why.
///
/// The line goes straight to the process's standard error rather than through
/// `eprintln!`, which libtest captures and hides for tests that pass: a skip must be
/// seen in a plain `cargo test` run, never be silent.
pub fn skip(test: &str, reason: &str) {
    // One write: standard error is unbuffered, and a line written piece by piece can be
    // split by libtest's own lines from other threads when both go to one pipe.
    let line = format!("skipping {test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Prints that the test `test` skips because of `reason`, or panics with the reason when
/// the environment variable `require` (a `VEIL_REQUIRE_*` name) is `1`.
pub fn skip_unless_required(test: &str, reason: &str, require: &str) {
    if required(require) {
        panic!("{test}: {reason}, and {require}=1 forbids skipping");
    }
    skip(test, &format!("{reason} (set {require}=1 to fail instead)"));
}

/// Waits until `cond` holds, for at most `limit`; `false` if it never did.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Waits for the VM to end by itself; stops it and fails the test if it has not after
/// `limit` (a guest that runs away must not hang the test suite).
pub fn wait_for_end(set: VcpuSet, limit: Duration) -> VmReport {
    match set.wait_timeout(limit) {
        Ok(report) => report,
        Err(set) => {
            set.stop();
            let report = set.wait();
            panic!("the guest did not finish within {limit:?}: {report:#?}");
        }
    }
}

/// Boot data for the 64-bit test guests: page tables that identity-map the first 1 GiB
/// with 2 MiB pages, and the GDT `veil_vcpu::x86_64::setup_long_mode` builds its segment
/// registers from.
///
/// These serve the tests only; placing boot data in a real VM is veil-loader's job.
pub mod long_mode {
    use veil_vcpu::x86_64::{BOOT_GDT, LongModeEntry};

    /// Where the GDT goes.
    pub const GDT: u64 = 0x500;
    /// The PML4; the PDPT and the page directory follow it, a page each.
    pub const PML4: u64 = 0x1000;
    /// The first byte past the boot data.
    pub const END: u64 = PML4 + 0x3000;

    /// Each piece of boot data, with the guest-physical address it goes to.
    pub fn boot_data() -> Vec<(u64, Vec<u8>)> {
        let (pdpt, pd) = (PML4 + 0x1000, PML4 + 0x2000);
        const PRESENT_RW: u64 = 0x3;
        const HUGE: u64 = 0x80;
        let directory: Vec<u8> = (0..512u64)
            .flat_map(|i| ((i << 21) | PRESENT_RW | HUGE).to_le_bytes())
            .collect();
        let gdt: Vec<u8> = BOOT_GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
        vec![
            (PML4, (pdpt | PRESENT_RW).to_le_bytes().to_vec()),
            (pdpt, (pd | PRESENT_RW).to_le_bytes().to_vec()),
            (pd, directory),
            (GDT, gdt),
        ]
    }

    /// Entry at `entry` with the stack pointer at `stack`, on [`boot_data`]'s tables.
    pub fn entry(entry: u64, stack: u64) -> LongModeEntry {
        LongModeEntry {
            page_table_root: PML4,
            gdt_base: GDT,
            entry,
            stack,
            rsi: 0,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn boot_data_stays_below_end_and_does_not_overlap() {
            let mut pieces: Vec<(u64, u64)> = boot_data()
                .iter()
                .map(|(gpa, bytes)| (*gpa, gpa + bytes.len() as u64))
                .collect();
            pieces.sort_unstable();
            assert!(pieces.windows(2).all(|w| w[0].1 <= w[1].0), "{pieces:x?}");
            assert!(pieces.iter().all(|&(_, end)| end <= END));
            let pd = &boot_data()[2].1;
            // The last 2 MiB page ends at 1 GiB.
            let last = u64::from_le_bytes(pd[511 * 8..].try_into().unwrap());
            assert_eq!(last & !0xfff, (1 << 30) - (2 << 20));
        }
    }
}

pub mod machine_kernels;
