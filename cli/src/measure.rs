// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil measure`: the measurement log and launch digest of a boot image, computed by
//! veil-loader exactly as a launch would, without KVM or a VM.

use std::fs;
use std::path::Path;

use veil_vmm::veil_loader::{self, BootSource, GuestRam};

use crate::MeasureArgs;
use crate::failure::{Failure, chain};

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    fs::read(path).map_err(|e| Failure::unreadable(what, path, &e))
}

/// Runs `veil measure`.
pub fn run(args: &MeasureArgs) -> Result<(), Failure> {
    let kernel = read("kernel", &args.kernel)?;
    let initrd = args
        .initrd
        .as_deref()
        .map(|p| read("initrd", p))
        .transpose()?;
    let mut source = BootSource::new(&kernel).cmdline(&args.cmdline);
    if let Some(initrd) = &initrd {
        source = source.initrd(initrd);
    }
    let ram = GuestRam::new(&[(0, args.memory)])
        .map_err(|e| Failure::usage(format!("guest memory of {} bytes: {e}", args.memory)))?;
    let log = veil_loader::measure(&source, &ram).map_err(|e| {
        Failure::usage(format!(
            "cannot lay out {} in {} MiB of guest memory: {}",
            args.kernel.display(),
            args.memory >> 20,
            chain(&e)
        ))
    })?;
    if args.json {
        println!("{}", log.to_json());
    } else {
        println!("measurement of {}", args.kernel.display());
        for entry in &log.entries {
            let at = entry
                .gpa
                .map_or_else(|| "-".to_string(), |g| format!("{g:#x}"));
            println!(
                "  {:<14} {:>12} {:>10} bytes  {}",
                entry.kind.name(),
                at,
                entry.size,
                entry.sha256.to_hex()
            );
        }
        println!("launch digest: {}", log.replay().to_hex());
    }
    Ok(())
}
