// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil`: the VMM built from veil's crates.
//!
//! `veil` (the same as `veil demo`) runs a guest built into the binary whose memory is
//! private from launch and shows what the host can and cannot see of it; `veil caps`
//! reports what the host offers; `veil measure` prints a boot image's measurement.

mod caps;
#[cfg(target_arch = "x86_64")]
mod demo;
mod failure;
mod measure;
mod size;

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use failure::{EXIT_CODES, Failure, Status};
use veil_vmm::veil_memory::Flavor;

/// A VMM whose guests have memory the host cannot see (KVM guest_memfd).
#[derive(Debug, Parser)]
#[command(
    name = "veil",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES
)]
struct Cli {
    /// Say more (-v: what veil does, -vv: debugging, -vvv: everything). RUST_LOG, when
    /// set, overrides this.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the embedded demo guest (what `veil` alone does).
    Demo(DemoArgs),
    /// Report what this host's KVM offers for guest-private memory.
    Caps(CapsArgs),
    /// Print the measurement log and launch digest of a boot image, without a VM.
    Measure(MeasureArgs),
}

/// `veil demo`'s options.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How conversions are carried out: attributes, in-place or emulated (default: the
    /// best this host runs).
    #[arg(long, value_parser = parse_flavor)]
    pub flavor: Option<Flavor>,
    /// vCPUs converting memory at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub vcpus: u32,
    /// Round trips (to shared and back to private) each vCPU makes.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub rounds: u64,
}

/// `veil caps`' options.
#[derive(Debug, Args)]
struct CapsArgs {
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `veil measure`'s options.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// The kernel: a PVH ELF (vmlinux) or a bzImage.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// An initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, value_name = "S", default_value = "")]
    pub cmdline: String,
    /// Guest memory the boot image is laid out in (K, M, G, T suffixes: KiB, MiB...).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = size::parse)]
    pub memory: u64,
    /// Print the log and the digest as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_flavor(name: &str) -> Result<Flavor, String> {
    Flavor::built_in(name).ok_or_else(|| {
        let names: Vec<&str> = Flavor::BUILT_IN.iter().map(|f| f.name()).collect();
        format!("no flavor {name:?}; veil has {}", names.join(", "))
    })
}

fn init_logger(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|f, record| {
            writeln!(
                f,
                "veil: {}: {}",
                record.level().as_str().to_lowercase(),
                record.args()
            )
        })
        .init();
}

fn caps(args: &CapsArgs) -> Result<(), Failure> {
    let report = caps::probe()?;
    if args.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::new(Status::VmError, format!("cannot format JSON: {e}")))?;
        println!("{json}");
    } else {
        print!("{}", caps::text(&report));
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
fn demo(args: &DemoArgs) -> Result<(), Failure> {
    demo::run(args)
}

#[cfg(not(target_arch = "x86_64"))]
fn demo(_: &DemoArgs) -> Result<(), Failure> {
    Err(Failure::new(
        Status::HostLacks,
        "the demo guest is x86-64 code; this build of veil has none",
    ))
}

fn main() {
    let cli = Cli::parse();
    init_logger(cli.verbose, cli.quiet);
    let result = match &cli.command {
        None => demo(&cli.demo),
        Some(Command::Demo(args)) => demo(args),
        Some(Command::Caps(args)) => caps(args),
        Some(Command::Measure(args)) => measure::run(args),
    };
    let status = match result {
        Ok(()) => Status::Success,
        Err(f) => {
            eprintln!("veil: {}", f.message);
            f.status
        }
    };
    std::process::exit(status as i32);
}
