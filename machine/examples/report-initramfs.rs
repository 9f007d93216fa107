// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Writes the initramfs veil's Linux boot checks run: a static busybox with
//! `veil_machine::initramfs::REPORT_INIT` as `/init`.
//!
//! Usage: `cargo run -p veil-machine --example report-initramfs -- BUSYBOX OUT`

use veil_machine::initramfs::{REPORT_INIT, busybox_initramfs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [busybox, out] = args.as_slice() else {
        return Err("usage: report-initramfs BUSYBOX OUT".into());
    };
    let busybox = std::fs::read(busybox).map_err(|e| format!("cannot read {busybox}: {e}"))?;
    let archive = busybox_initramfs(&busybox, REPORT_INIT)?;
    std::fs::write(out, archive).map_err(|e| format!("cannot write {out}: {e}"))?;
    Ok(())
}
