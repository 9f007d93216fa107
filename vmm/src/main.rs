// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil`: the command-line front end of the veil crates.
//!
//! `veil` and `veil caps` print the host's capabilities for guest-private memory as a
//! table; `--json` prints them as JSON.

use anyhow::Context;
use veil_memory::HostCaps;

const USAGE: &str = "usage: veil [caps] [--json]

  caps     print what this host's KVM offers for guest-private memory and which
           veil flavors run here (the default job)
  --json   print the report as JSON";

fn main() {
    let mut json = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "caps" => {}
            "--json" => json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("veil: unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if let Err(e) = caps(json) {
        eprintln!("veil: {e:#}");
        std::process::exit(1);
    }
}

fn caps(json: bool) -> anyhow::Result<()> {
    let caps = HostCaps::probe().context("probing KVM")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&caps)?);
    } else {
        println!(
            "veil {}: {}",
            env!("CARGO_PKG_VERSION"),
            veil_vmm::caps_table(&caps)
        );
    }
    Ok(())
}
