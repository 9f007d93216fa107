// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `veil run`: boots a PVH ELF or a bzImage on veil-machine's PC, with its RAM private
//! from launch where the backend supports it, the console on standard input and output,
//! and the guest's end and statistics reported at exit (also as JSON).

use std::fs;
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
    let machine = Machine::boot(config).map_err(failure)?;
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
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::new(Status::VmError, format!("cannot format JSON: {e}")))?;
        fs::write(path, json + "\n")
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
    let config = config(&args.boot)?;
    let image = veil_machine::BootImage::new(&config).map_err(failure)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
