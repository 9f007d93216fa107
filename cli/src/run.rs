// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil run`: boots a PVH ELF or a bzImage on veil-machine's PC, with its RAM private
//! from launch where the backend supports it, the console on standard input and output,
//! and the guest's end and statistics reported at exit (also as JSON).

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use veil_machine::{
    GuestEnd, Machine, MachineConfig, MachineError, MachineReport, PrivateRam, PrivateRead,
};
use veil_vmm::seccomp::{self, Confined, ThreadKind};
use veil_vmm::{Launch, PlainKvm, VmError};

use crate::failure::{Failure, Status, chain};
use crate::size;
use crate::{Backend, BootArgs, MeasureArgs, RunArgs};

fn read(what: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    fs::read(path).map_err(|e| Failure::unreadable(what, path, &e))
}

/// Parses `--private`: `all`, `none`, or comma-separated `BASE+SIZE` ranges (`BASE` in
/// hex with `0x` or decimal, `SIZE` as for `--memory`).
pub fn parse_private(s: &str) -> Result<PrivateRam, String> {
    match s {
        "all" => return Ok(PrivateRam::All),
        "none" => return Ok(PrivateRam::None),
        _ => {}
    }
    let mut ranges = Vec::new();
    for part in s.split(',') {
        let (base, len) = part.split_once('+').ok_or_else(|| {
            format!("{part:?} is not a range: give all, none, or BASE+SIZE[,BASE+SIZE...]")
        })?;
        let base = base.trim();
        let base = match base.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => base.parse(),
        }
        .map_err(|_| format!("{base:?} is not an address (decimal, or hex with 0x)"))?;
        ranges.push((base, size::parse(len)?));
    }
    Ok(PrivateRam::Ranges(ranges))
}

/// The launch backend `backend` names.
pub fn launch(backend: Backend) -> Result<Arc<dyn Launch>, Failure> {
    let refused = |e: &dyn std::error::Error| Failure::usage(format!("the {backend} backend: {e}"));
    Ok(match backend {
        Backend::Plain => Arc::new(PlainKvm),
        Backend::Snp => Arc::new(
            veil_snp::SnpLaunch::new(veil_snp::SnpConfig::default()).map_err(|e| refused(&e))?,
        ),
        Backend::Tdx => Arc::new(
            veil_tdx::TdxLaunch::new(veil_tdx::TdxConfig::default()).map_err(|e| refused(&e))?,
        ),
    })
}

/// [`failure`], with a kernel the loader refused named by its path.
fn failure_loading(kernel: &Path) -> impl Fn(MachineError) -> Failure + '_ {
    move |e| match e {
        MachineError::Kernel(_) => Failure::usage(format!("{}: {}", kernel.display(), chain(&e))),
        other => failure(other),
    }
}

/// A machine error as an exit code and a message naming the fix.
fn failure(e: MachineError) -> Failure {
    use MachineError as E;
    match e {
        E::MemorySize(_)
        | E::VcpuCount { .. }
        | E::Kernel(_)
        | E::InitrdTooLarge { .. }
        | E::MemoryTooSmall { .. }
        | E::PrivateRange { .. } => Failure::usage(chain(&e)),
        E::Kvm(err) => Failure::vm("opening KVM", &VmError::OpenKvm(err)),
        E::Vm(vm) => Failure::vm("the VM", &vm),
        E::Flavor { source, .. } => Failure::vm("building the VM", &source),
        E::Irqchip(_) => Failure::new(Status::HostLacks, chain(&e)),
        other => Failure::new(Status::VmError, chain(&other)),
    }
}

/// The terminal settings to put back if a signal ends veil while the guest owns the
/// terminal in raw mode.
static SAVED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();

extern "C" fn restore_terminal_and_die(sig: libc::c_int) {
    if let Some(saved) = SAVED_TERMINAL.get() {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved` is a valid
        // termios that tcgetattr filled for standard input.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
    // SAFETY: restoring the default action and re-raising ends the process as the
    // signal would have, with the terminal restored.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

/// Puts back the terminal settings saved before the guest ran, if any. Async-signal-safe:
/// the seccomp violation handler calls it on whichever thread broke its filter.
fn restore_terminal() {
    if let Some(saved) = SAVED_TERMINAL.get() {
        // SAFETY: tcsetattr is async-signal-safe; `saved` is a valid termios that
        // tcgetattr filled for standard input.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
}

/// Whether veil's threads run under seccomp filters: `Ok(())` if so (and a violation
/// then ends veil with [`Status::Confinement`] and the terminal restored), or why not.
pub fn seccomp_wanted(no_seccomp: bool) -> Result<(), &'static str> {
    if no_seccomp {
        return Err("off (--no-seccomp)");
    }
    if !seccomp::supported() {
        log::warn!("this kernel does not offer seccomp filters: veil runs unconfined");
        return Err("off (this kernel does not offer seccomp filters)");
    }
    seccomp::on_violation(Status::Confinement as i32, Some(restore_terminal));
    Ok(())
}

/// A seccomp error as a failure: veil does not run a guest it was asked to confine but
/// could not.
pub fn seccomp_failure(e: &seccomp::SeccompError) -> Failure {
    Failure::new(
        Status::VmError,
        format!("{} (--no-seccomp runs without)", chain(e)),
    )
}

/// Makes Ctrl-C, SIGTERM and SIGHUP restore the terminal before they end veil.
fn guard_terminal() {
    // SAFETY: `termios` is plain data that tcgetattr fills or leaves alone.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: standard input is open; `t` is a valid, writable termios.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
        return; // not a terminal: nothing to restore
    }
    let _ = SAVED_TERMINAL.set(t);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe {
            libc::signal(
                sig,
                restore_terminal_and_die as *const () as libc::sighandler_t,
            )
        };
    }
}

fn config(boot: &BootArgs) -> Result<MachineConfig, Failure> {
    let mut config = MachineConfig::new(read("kernel", &boot.kernel)?);
    config.initrd = boot
        .initrd
        .as_deref()
        .map(|p| read("initrd", p))
        .transpose()?;
    if let Some(cmdline) = &boot.cmdline {
        config.cmdline = cmdline.clone();
    }
    config.memory_size = boot.memory;
    config.vcpus = boot.vcpus;
    Ok(config)
}

/// What the seccomp filters covered, read back from the threads themselves.
fn seccomp_line(confined: &Confined, vcpus: u32) -> String {
    let main = if seccomp::thread_is_confined() {
        format!(
            "the main thread ({} system calls allowed)",
            seccomp::allowed_count(ThreadKind::Main)
        )
    } else {
        "NOT the main thread".to_string()
    };
    format!(
        "on: {main}, {} of {vcpus} vCPU threads ({}), device threads ({})",
        confined.vcpu_threads(),
        seccomp::allowed_count(ThreadKind::Vcpu),
        seccomp::allowed_count(ThreadKind::Device),
    )
}

fn summary(report: &MachineReport) -> String {
    let mut s = format!(
        "veil: the guest ended: {}\n",
        match &report.end {
            GuestEnd::PowerOff => "power-off".to_string(),
            GuestEnd::Reset => "reset".to_string(),
            GuestEnd::Shutdown { vcpu } => format!("shutdown on vCPU {vcpu} (a triple fault)"),
            GuestEnd::Halted => "every vCPU halted".to_string(),
            GuestEnd::Error { message } => format!("error: {message}"),
            GuestEnd::TimedOut => "timed out; veil stopped it".to_string(),
        }
    );
    s += &format!(
        "veil: {} MiB, {} vCPUs, {} flavor, {} backend, {} ms\n",
        report.memory_size >> 20,
        report.vcpus,
        report.flavor,
        report.launch,
        report.run_millis
    );
    if report.shared.is_empty() {
        s += "veil: RAM shared at launch: none\n";
    }
    for r in &report.shared {
        s += &format!("veil: RAM shared at launch: {} ({})\n", r.range, r.reason);
    }
    s += &format!(
        "veil: host read of a private page during the run: {}\n",
        match &report.private_read {
            PrivateRead::NotTried => "not tried (the guest wrote nothing to the console)".into(),
            PrivateRead::NoPrivatePage => "no page was private".into(),
            PrivateRead::Refused { gpa, .. } => format!("refused ({gpa:#x})"),
            PrivateRead::Allowed { gpa } => format!("ALLOWED ({gpa:#x})"),
            PrivateRead::Failed { gpa, error } => format!("failed at {gpa:#x}: {error}"),
        }
    );
    if let Some(m) = report.host_memory {
        s += &format!(
            "veil: veil's own resident memory when the guest ended: {} KiB ({} of it anonymous); guest memory resident in its mappings: {} KiB\n",
            m.vmm_kib, m.vmm_anonymous_kib, m.guest_kib
        );
    }
    s += &format!("veil: exits: {}\n", report.exits);
    s += &format!("veil: memory: {}", report.memory);
    s
}

/// Runs `veil run`.
pub fn run(args: &RunArgs) -> Result<(), Failure> {
    let mut config = config(&args.boot)?;
    config.flavor = args.flavor;
    config.private = args.private.clone();
    config.launch = launch(args.backend)?;
    config.stdin = !args.no_stdin;
    config.timeout = args.timeout.map(Duration::from_secs);
    // Created before the guest runs: a path that cannot be written is bad usage, found
    // before anything is built, not after the guest has run.
    let stats_file = match &args.stats_json {
        Some(path) => Some(
            fs::File::create(path)
                .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?,
        ),
        None => None,
    };
    if config.stdin {
        guard_terminal();
    }
    let seccomp = seccomp_wanted(args.no_seccomp);
    let confined = seccomp
        .is_ok()
        .then(|| Arc::new(Confined::new(config.launch.clone())));
    if let Some(c) = &confined {
        config.launch = c.clone();
    }
    let machine = Machine::boot(config).map_err(failure_loading(&args.boot.kernel))?;
    // The guest runs from here on: the main thread is confined before it starts the
    // vCPU and console threads, which narrow their filters on their way in.
    if confined.is_some() {
        seccomp::confine_thread(ThreadKind::Main, 0).map_err(|e| seccomp_failure(&e))?;
    }
    let report = machine.run().map_err(failure)?;
    eprintln!("{}", summary(&report));
    eprintln!(
        "veil: seccomp: {}",
        match (&seccomp, &confined) {
            (Err(off), _) => off.to_string(),
            (Ok(()), Some(c)) => seccomp_line(c, report.vcpus),
            (Ok(()), None) => "off".to_string(),
        }
    );
    if let (Some(mut file), Some(path)) = (stats_file, &args.stats_json) {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::new(Status::VmError, format!("cannot format JSON: {e}")))?;
        file.write_all((json + "\n").as_bytes())
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
    }
    match (&report.end, &report.private_read) {
        (_, PrivateRead::Allowed { gpa }) => Err(Failure::guest(format!(
            "the host read private page {gpa:#x}: private memory reached the host"
        ))),
        (GuestEnd::PowerOff | GuestEnd::Reset | GuestEnd::Halted, _) => Ok(()),
        (GuestEnd::Error { message }, _) => Err(Failure::new(
            Status::VmError,
            format!("the VM failed: {message}"),
        )),
        (GuestEnd::Shutdown { .. }, _) => Err(Failure::guest("the guest shut down abnormally")),
        (GuestEnd::TimedOut, _) => Err(Failure::guest("the guest did not end in time")),
    }
}

/// Runs `veil measure`: the log a `veil run` of the same arguments records, or the SNP
/// launch digest or TDX MRTD of the pages those backends would issue.
pub fn measure(args: &MeasureArgs) -> Result<(), Failure> {
    if args.igvm {
        print!("{}", measure_igvm(args)?);
        return Ok(());
    }
    let config = config(&args.boot)?;
    let image =
        veil_machine::BootImage::new(&config).map_err(failure_loading(&args.boot.kernel))?;
    let source = image.source(&config);
    let measure_failed = |e: &(dyn std::error::Error + 'static)| {
        Failure::usage(format!(
            "cannot measure {}: {}",
            args.boot.kernel.display(),
            chain(e)
        ))
    };
    if args.snp {
        let m = veil_snp::measure(
            &source,
            &image.ram,
            &veil_snp::SnpConfig::default(),
            args.boot.vcpus,
            None,
        )
        .map_err(|e| measure_failed(&e))?;
        if args.json {
            println!("{}", m.to_json());
        } else {
            println!("SEV-SNP launch digest of {}", args.boot.kernel.display());
            let mut by_type = std::collections::BTreeMap::<&str, usize>::new();
            for p in &m.pages {
                *by_type.entry(p.page_type).or_default() += 1;
            }
            for (t, n) in by_type {
                println!("  {n:>8} {t} pages");
            }
            println!(
                "launch digest: {} ({} pages, {} vCPUs, policy {:#x}; a placeholder CPUID page, as no SNP host was asked; --json lists every page)",
                m.launch_digest,
                m.pages.len(),
                m.vcpus,
                m.policy
            );
        }
        return Ok(());
    }
    if args.tdx {
        let m = veil_tdx::measure(&source, &image.ram, &veil_tdx::TdxConfig::default())
            .map_err(|e| measure_failed(&e))?;
        if args.json {
            println!("{}", m.to_json());
        } else {
            println!("TDX MRTD of {}", args.boot.kernel.display());
            let measured = m.pages.iter().filter(|p| p.measured).count();
            println!("  {measured:>8} measured pages");
            println!("  {:>8} unmeasured pages", m.pages.len() - measured);
            println!("MRTD: {} (--json lists every page)", m.mrtd);
        }
        return Ok(());
    }
    let log =
        veil_vmm::veil_loader::measure(&source, &image.ram).map_err(|e| measure_failed(&e))?;
    if args.json {
        println!("{}", log.to_json());
    } else {
        println!("measurement of {}", args.boot.kernel.display());
        for entry in &log.entries {
            let at = entry
                .gpa
                .map_or_else(|| "-".to_string(), |g| format!("{g:#x}"));
            println!(
                "  {:<16} {:>12} {:>10} bytes  {}",
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

/// `veil measure --igvm`: the IGVM file planned for the platform asked for, in the RAM
/// `veil run` would give the guest, and measured as that platform's launch would issue
/// it: the report `veil measure` prints. SNP uses the file's guest policy where it
/// names one.
fn measure_igvm(args: &MeasureArgs) -> Result<String, Failure> {
    use std::fmt::Write as _;
    use veil_vmm::veil_loader::{BootSource, GuestRam, IgvmPlatform, KernelFormat};
    let platform = match (args.snp, args.tdx) {
        (true, _) => IgvmPlatform::SevSnp,
        (_, true) => IgvmPlatform::Tdx,
        _ => {
            return Err(Failure::usage(
                "--igvm needs --snp or --tdx: an IGVM file is read for one platform",
            ));
        }
    };
    if args.boot.initrd.is_some() {
        return Err(Failure::usage(
            "--igvm takes no --initrd: an IGVM file brings its own pages",
        ));
    }
    let file = read("IGVM file", &args.boot.kernel)?;
    let failed = |e: &(dyn std::error::Error + 'static)| {
        Failure::usage(format!(
            "cannot measure {}: {}",
            args.boot.kernel.display(),
            chain(e)
        ))
    };
    let layout =
        veil_machine::layout::MemoryLayout::new(args.boot.memory).map_err(|e| failed(&e))?;
    let ram = GuestRam::new(&layout.ram()).map_err(|e| failed(&e))?;
    let source = BootSource::new(&file)
        .format(KernelFormat::Igvm { platform })
        .cmdline(args.boot.cmdline.as_deref().unwrap_or(""));
    let plan = veil_vmm::veil_loader::plan(&source, &ram).map_err(|e| failed(&e))?;
    let mut out = String::new();
    if platform == IgvmPlatform::Tdx {
        let m = veil_tdx::measure_plan(&plan, &veil_tdx::TdxConfig::default())
            .map_err(|e| failed(&e))?;
        if args.json {
            let _ = writeln!(out, "{}", m.to_json());
        } else {
            let measured = m.pages.iter().filter(|p| p.measured).count();
            let _ = writeln!(
                out,
                "TDX MRTD of the IGVM file {}",
                args.boot.kernel.display()
            );
            let _ = writeln!(out, "  {measured:>8} measured pages");
            let _ = writeln!(out, "  {:>8} unmeasured pages", m.pages.len() - measured);
            let _ = writeln!(out, "MRTD: {} (--json lists every page)", m.mrtd);
        }
        return Ok(out);
    }
    let mut config = veil_snp::SnpConfig::default();
    if let Some(policy) = plan.igvm.as_ref().and_then(|i| i.guest_policy) {
        config.policy = veil_snp::SnpPolicy::new(policy).map_err(|e| failed(&e))?;
    }
    let m = veil_snp::measure_plan(&plan, &config, args.boot.vcpus).map_err(|e| failed(&e))?;
    if args.json {
        let _ = writeln!(out, "{}", m.to_json());
    } else {
        let _ = writeln!(
            out,
            "SEV-SNP launch digest of the IGVM file {}",
            args.boot.kernel.display()
        );
        let mut by_type = std::collections::BTreeMap::<&str, usize>::new();
        for p in &m.pages {
            *by_type.entry(p.page_type).or_default() += 1;
        }
        for (t, n) in by_type {
            let _ = writeln!(out, "  {n:>8} {t} pages");
        }
        let _ = writeln!(
            out,
            "launch digest: {} ({} pages, {} vCPUs, policy {:#x}; --json lists every page)",
            m.launch_digest,
            m.pages.len(),
            m.vcpus,
            m.policy
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IGVM: &[u8] = include_bytes!("../../loader/tests/fixtures/sample.igvm");
    /// The fixture's digests, the igvm crate's own (veil-snp's `tests/igvm.rs`).
    const IGVM_SNP_DIGEST: &str = "65eed7e415dd110df49fb6b37668a73f06f457695c7d9ddab1d69140466a25037b45a7cc6990bd7e45d163f2950659bf";
    const IGVM_MRTD: &str = "56693fdb6fca331591470914c8e4a61a67db98181c6e96f635d3a72aa5243d137ec0c3a5e0650bd49ecf978049aa0637";

    fn igvm_args(file: &Path, extra: &[&str]) -> MeasureArgs {
        use clap::Parser;
        let mut argv = vec!["veil", "measure", "--igvm", "--kernel"];
        let path = file.to_str().unwrap();
        argv.push(path);
        argv.extend_from_slice(extra);
        match crate::Cli::try_parse_from(argv).unwrap().command {
            Some(crate::Command::Measure(m)) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn measure_igvm_gives_the_files_digests_or_says_why_not() {
        let path = std::env::temp_dir().join(format!("veil-cli-{}.igvm", std::process::id()));
        fs::write(&path, IGVM).unwrap();
        let snp = measure_igvm(&igvm_args(&path, &["--snp", "--json"])).unwrap();
        let v: serde_json::Value = serde_json::from_str(&snp).unwrap();
        assert_eq!(v["launch_digest"], IGVM_SNP_DIGEST);
        assert_eq!(v["policy"], 0x30000);
        assert_eq!(v["pages"].as_array().unwrap().len(), 10);
        let text = measure_igvm(&igvm_args(&path, &["--snp", "--cmdline", "quiet"])).unwrap();
        assert!(text.contains(IGVM_SNP_DIGEST), "{text}");
        let tdx = measure_igvm(&igvm_args(&path, &["--tdx"])).unwrap();
        assert!(tdx.contains(IGVM_MRTD), "{tdx}");

        let refused = |extra: &[&str], says: &str| {
            let e = measure_igvm(&igvm_args(&path, extra)).unwrap_err();
            assert!(e.message.contains(says), "{}", e.message);
            assert_eq!(e.status, Status::Usage);
        };
        refused(&[], "needs --snp or --tdx");
        refused(&["--snp", "--initrd", "/dev/null"], "no --initrd");
        refused(&["--snp", "--cmdline", &"x".repeat(5000)], "does not fit");
        refused(
            &["--snp", "--vcpus", "2", "--memory", "1M"],
            "not inside one RAM range",
        );
        fs::write(&path, &IGVM[..1000]).unwrap();
        refused(&["--tdx"], "truncated");
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn private_ranges_parse_or_say_why() {
        assert_eq!(parse_private("all"), Ok(PrivateRam::All));
        assert_eq!(parse_private("none"), Ok(PrivateRam::None));
        assert_eq!(
            parse_private("0x100000+1M,16777216+4K"),
            Ok(PrivateRam::Ranges(vec![
                (0x10_0000, 1 << 20),
                (16 << 20, 4096)
            ]))
        );
        assert!(parse_private("some").unwrap_err().contains("not a range"));
        assert!(
            parse_private("0xzz+4K")
                .unwrap_err()
                .contains("not an address")
        );
        assert!(parse_private("0x1000+0").unwrap_err().contains("size of 0"));
    }
}
