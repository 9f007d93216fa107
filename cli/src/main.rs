// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil`: the VMM built from veil's crates.
//!
//! `veil` (the same as `veil demo`) runs a guest built into the binary whose memory is
//! private from launch and shows what the host can and cannot see of it; `veil run`
//! boots Linux with private RAM; `veil soak` has a guest convert random ranges for a
//! bounded time while the host audits every page; `veil caps` reports what the host
//! offers; `veil measure` prints a boot image's measurement.

mod caps;
#[cfg(target_arch = "x86_64")]
mod demo;
mod failure;
#[cfg(target_arch = "x86_64")]
mod guest;
#[cfg(target_arch = "x86_64")]
mod run;
mod size;
#[cfg(target_arch = "x86_64")]
mod soak;

use std::io::Write as _;
use std::path::PathBuf;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use failure::{EXIT_CODES, Failure, Status};
use veil_vmm::veil_memory::{ContentPolicy, Flavor};

/// A VMM whose guests have memory the host cannot see (KVM guest_memfd).
#[derive(Debug, Parser)]
#[command(
    name = "veil",
    version,
    about,
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
    /// Boot a Linux kernel (PVH ELF or bzImage), with its RAM private from launch.
    Run(RunArgs),
    /// Print the measurement log and launch digest of a boot image, without a VM.
    Measure(MeasureArgs),
    /// Convert random ranges of guest memory for a while, the guest checking contents
    /// after every conversion and the host auditing every page after every round.
    Soak(SoakArgs),
}

/// The launch backends `veil run` and `veil measure` offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Plain KVM: default or software-protected VMs.
    Plain,
    /// AMD SEV-SNP (`KVM_X86_SNP_VM`).
    Snp,
    /// Intel TDX (`KVM_X86_TDX_VM`).
    Tdx,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Plain => "plain",
            Backend::Snp => "SEV-SNP",
            Backend::Tdx => "TDX",
        })
    }
}

/// What to boot, as `veil run` and `veil measure` take it.
#[derive(Debug, Args)]
pub struct BootArgs {
    /// The kernel: a PVH ELF (vmlinux) or a bzImage.
    #[arg(long, value_name = "FILE")]
    pub kernel: PathBuf,
    /// An initial ramdisk.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// The kernel command line (default: a serial console and quiet boot, see
    /// veil-machine's LINUX_CMDLINE).
    #[arg(long, value_name = "S")]
    pub cmdline: Option<String>,
    /// Guest memory (K, M, G, T suffixes: KiB, MiB...).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = size::parse)]
    pub memory: u64,
    /// vCPUs (their count is in the ACPI tables; for SNP each has a VMSA).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub vcpus: u32,
}

/// `veil run`'s options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to boot.
    #[command(flatten)]
    pub boot: BootArgs,
    /// How conversions are carried out: attributes, in-place or emulated (default: the
    /// best this host runs for the guest).
    #[arg(long, value_parser = parse_flavor)]
    pub flavor: Option<Flavor>,
    /// Which RAM is private at launch: all, none, or BASE+SIZE[,BASE+SIZE...]. Boot data
    /// the flavor can only place shared stays shared; veil says which and why.
    #[cfg(target_arch = "x86_64")]
    #[arg(long, value_name = "all|none|RANGES", default_value = "all", value_parser = run::parse_private)]
    pub private: veil_machine::PrivateRam,
    /// The launch backend.
    #[arg(long, value_enum, default_value_t = Backend::Plain)]
    pub backend: Backend,
    /// Write how the guest ended and the exit and conversion statistics as JSON.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Stop the guest after this many seconds (at least 1).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: Option<u64>,
    /// Do not feed standard input to the guest's console.
    #[arg(long)]
    pub no_stdin: bool,
    /// Do not confine veil's threads with seccomp filters (by default each thread kind
    /// gets its own allow-list once the guest runs, where the kernel offers filters).
    #[arg(long)]
    pub no_seccomp: bool,
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
    /// Do not confine the vCPU threads with their seccomp filter (by default they run
    /// the guest under it, where the kernel offers filters).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// `veil soak`'s options.
#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long the guest converts, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub seconds: u64,
    /// vCPUs converting at once, each in its own area.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(2..=4))]
    pub vcpus: u32,
    /// 2 MiB blocks in each vCPU's area.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=8))]
    pub blocks: u64,
    /// How conversions are carried out: attributes, in-place or emulated (default: the
    /// best this host runs).
    #[arg(long, value_parser = parse_flavor)]
    pub flavor: Option<Flavor>,
    /// Whether converted pages keep their contents: preserve or discard (default:
    /// preserve where the flavor can, discard elsewhere).
    #[arg(long, value_parser = parse_policy)]
    pub policy: Option<ContentPolicy>,
    /// Seed of the vCPUs' random choices (default: from the clock; the soak prints it).
    /// The same seed makes the same choices, as many as the time allows.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Do not confine the vCPU threads with their seccomp filter.
    #[arg(long)]
    pub no_seccomp: bool,
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
    /// What to boot.
    #[command(flatten)]
    pub boot: BootArgs,
    /// The SEV-SNP launch digest of the pages veil's SNP launch would issue.
    #[arg(long, conflicts_with = "tdx")]
    pub snp: bool,
    /// The TDX MRTD of the pages veil's TDX launch would add.
    #[arg(long)]
    pub tdx: bool,
    /// The --kernel file is an IGVM file, read for --snp or --tdx: its own pages and
    /// vCPU state, the command line (if given) in its command line parameter.
    #[arg(long)]
    pub igvm: bool,
    /// Print the log (every page, for --snp and --tdx) and the digest as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_flavor(name: &str) -> Result<Flavor, String> {
    Flavor::built_in(name).ok_or_else(|| {
        let names: Vec<&str> = Flavor::BUILT_IN.iter().map(|f| f.name()).collect();
        format!("no flavor {name:?}; veil has {}", names.join(", "))
    })
}

fn parse_policy(name: &str) -> Result<ContentPolicy, String> {
    match name {
        "preserve" => Ok(ContentPolicy::Preserve),
        "discard" => Ok(ContentPolicy::Discard),
        _ => Err(format!(
            "no content policy {name:?}; the soak checks preserve and discard"
        )),
    }
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

#[cfg(target_arch = "x86_64")]
fn soak(args: &SoakArgs) -> Result<(), Failure> {
    soak::run(args)
}

#[cfg(not(target_arch = "x86_64"))]
fn soak(_: &SoakArgs) -> Result<(), Failure> {
    Err(Failure::new(
        Status::HostLacks,
        "the soak guest is x86-64 code; this build of veil has none",
    ))
}

#[cfg(target_arch = "x86_64")]
fn run_command(args: &RunArgs) -> Result<(), Failure> {
    run::run(args)
}

#[cfg(target_arch = "x86_64")]
fn measure(args: &MeasureArgs) -> Result<(), Failure> {
    run::measure(args)
}

#[cfg(not(target_arch = "x86_64"))]
fn run_command(_: &RunArgs) -> Result<(), Failure> {
    Err(Failure::new(
        Status::HostLacks,
        "veil run boots x86-64 kernels only",
    ))
}

#[cfg(not(target_arch = "x86_64"))]
fn measure(_: &MeasureArgs) -> Result<(), Failure> {
    Err(Failure::new(
        Status::HostLacks,
        "veil measure plans x86-64 kernels only",
    ))
}

#[cfg(not(target_arch = "x86_64"))]
fn demo(_: &DemoArgs) -> Result<(), Failure> {
    Err(Failure::new(
        Status::HostLacks,
        "the demo guest is x86-64 code; this build of veil has none",
    ))
}

/// Parses the command line. The demo's options may come before no subcommand or after
/// `demo`; before another subcommand they would be silently ignored, so they are refused
/// there. `-v` and `-q` go anywhere.
fn parse() -> Cli {
    let mut command = Cli::command();
    let matches = command.get_matches_mut();
    if let Some((name, _)) = matches.subcommand() {
        let given = command
            .get_arguments()
            .filter(|a| !a.is_global_set())
            .find(|a| matches.value_source(a.get_id().as_str()) == Some(ValueSource::CommandLine));
        if let Some(arg) = given {
            let flag = arg.get_long().unwrap_or(arg.get_id().as_str()).to_owned();
            command
                .error(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "--{flag} is an option of the demo: give it to `veil` alone or after \
                         `veil demo`, not before `veil {name}`"
                    ),
                )
                .exit();
        }
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() {
    let cli = parse();
    init_logger(cli.verbose, cli.quiet);
    let result = match &cli.command {
        None => demo(&cli.demo),
        Some(Command::Demo(args)) => demo(args),
        Some(Command::Caps(args)) => caps(args),
        Some(Command::Run(args)) => run_command(args),
        Some(Command::Measure(args)) => measure(args),
        Some(Command::Soak(args)) => soak(args),
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
