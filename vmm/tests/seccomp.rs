// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-vmm's seccomp filters on real KVM: a device model that makes a forbidden system
//! call on a confined vCPU thread ends the process with the violation message and exit
//! code, the same guest without confinement runs to its end, and a failing thread start
//! hook stops the VM before the guest runs.
//!
//! A violation ends the whole process, so the guest runs in a child: this test binary
//! again, told by an environment variable to run the guest instead of checking it.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use veil_vmm::seccomp::{self, Confined, ThreadKind};
use veil_vmm::veil_loader::BootSource;
use veil_vmm::veil_memory::ContentPolicy;
use veil_vmm::veil_vcpu::{BoxError, ExitRouting, FaultPolicy, IoHandler, RunError, StopReason};
use veil_vmm::{Launch, PlainKvm, Vm};

/// Set in the child: `confined` or `unconfined`.
const CHILD: &str = "VEIL_SECCOMP_TEST_CHILD";
/// The exit code the child's violation handler ends it with.
const VIOLATION_EXIT: i32 = 77;
/// The port the guest writes to; the device behind it opens a socket.
const PORT: u16 = 0x10;

/// A device model gone wrong: it opens a socket when the guest writes to its port.
#[derive(Default)]
struct OpensSocket {
    fd: AtomicI64,
}

impl IoHandler for OpensSocket {
    fn pio_write(&self, port: u16, _data: &[u8]) -> Result<(), BoxError> {
        if port != PORT {
            return Err(format!("the guest wrote to port {port:#x}").into());
        }
        // SAFETY: socket(2) takes no pointers; the descriptor is only recorded.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        self.fd.store(i64::from(fd), Ordering::SeqCst);
        Ok(())
    }
}

/// `mov al, 'v'; out 0x10, al; hlt`, entered in long mode at 1 MiB.
const GUEST: [u8; 5] = [0xb0, b'v', 0xe6, PORT as u8, 0xf4];

/// Runs the guest with `launch` and reports how it ended and what the socket call returned.
fn run_guest(launch: Arc<dyn Launch>) -> Result<(StopReason, i64), BoxError> {
    let vm = Vm::builder()
        .launch(launch)
        .region(0, 4 << 20, ContentPolicy::Preserve)
        .build()?;
    let launched = vm.launch(&BootSource::flat(&GUEST, 0x10_0000), 1)?;
    let device = Arc::new(OpensSocket {
        fd: AtomicI64::new(i64::MIN),
    });
    let set = vm.run(launched.vcpus, device.clone(), FaultPolicy::Refuse)?;
    let report = set.wait_timeout(Duration::from_secs(60)).map_err(|set| {
        set.stop();
        "the guest did not halt within 60 s"
    })?;
    Ok((report.reason, device.fd.load(Ordering::SeqCst)))
}

/// The child's part: run the guest, confined or not, and say how it went; or, in `fork`
/// mode, confine this thread as a VMM's main thread, start a thread, then fork.
fn child(mode: &str) {
    seccomp::on_violation(VIOLATION_EXIT, None);
    if mode == "fork" {
        if let Err(e) = seccomp::confine_thread(ThreadKind::Main, 0) {
            println!("child: {e}");
            std::process::exit(1);
        }
        let started = std::thread::spawn(|| 7).join();
        println!("child: a thread started under the main filter: {started:?}");
        // SAFETY: fork has no memory-safety preconditions; a child, if one were made,
        // exits at once without touching anything.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: `_exit` ends the forked child without running anything of the parent's.
            unsafe { libc::_exit(0) };
        }
        println!("child: fork returned {pid}");
        std::process::exit(0);
    }
    let launch: Arc<dyn Launch> = match mode {
        "confined" => Arc::new(Confined::new(Arc::new(PlainKvm))),
        _ => Arc::new(PlainKvm),
    };
    match run_guest(launch) {
        Ok((reason, fd)) => {
            println!("child: the guest ended ({reason}); socket returned {fd}");
            std::process::exit(0);
        }
        Err(e) => {
            println!("child: {e}");
            std::process::exit(1);
        }
    }
}

/// Runs this test in a child process in `mode`; returns its exit code, stdout and stderr.
fn in_child(test: &str, mode: &str) -> (Option<i32>, String, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, mode)
        .output()
        .expect("cannot run the test binary again");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the test can run here: KVM, and seccomp filters that trap.
fn can_run(test: &str) -> bool {
    if !veil_tests::kvm_or_skip(test) {
        return false;
    }
    if !seccomp::supported() {
        veil_tests::skip_unless_required(
            test,
            "this kernel does not offer seccomp filters",
            veil_tests::REQUIRE_KVM,
        );
        return false;
    }
    true
}

#[test]
fn a_forbidden_call_on_a_vcpu_thread_ends_the_vm_with_a_message() {
    const TEST: &str = "a_forbidden_call_on_a_vcpu_thread_ends_the_vm_with_a_message";
    if let Ok(mode) = std::env::var(CHILD) {
        child(&mode);
        return;
    }
    if !can_run(TEST) {
        return;
    }
    // Unconfined, the device's socket call succeeds and the guest halts.
    let (code, stdout, stderr) = in_child(TEST, "unconfined");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("all vCPUs halted"), "{stdout}");
    assert!(!stdout.contains("socket returned -"), "{stdout}");
    assert!(!stderr.contains("veil: seccomp"), "{stderr}");

    // Confined, the same call ends the process on the vCPU thread, with the message.
    let (code, stdout, stderr) = in_child(TEST, "confined");
    assert_eq!(code, Some(VIOLATION_EXIT), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "veil: seccomp: the vCPU 0 thread made system call {} (socket), which its filter does not allow: ending the VM",
            libc::SYS_socket
        )),
        "{stderr}"
    );
    assert!(!stdout.contains("the guest ended"), "{stdout}");
}

#[test]
fn the_main_thread_may_start_threads_but_not_processes() {
    const TEST: &str = "the_main_thread_may_start_threads_but_not_processes";
    if let Ok(mode) = std::env::var(CHILD) {
        child(&mode);
        return;
    }
    if !seccomp::supported() {
        veil_tests::skip(TEST, "this kernel does not offer seccomp filters");
        return;
    }
    let (code, stdout, stderr) = in_child(TEST, "fork");
    assert_eq!(code, Some(VIOLATION_EXIT), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("a thread started under the main filter: Ok(7)"),
        "{stdout}"
    );
    assert!(!stdout.contains("fork returned"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "veil: seccomp: the main thread made system call {} (clone), which its filter does not allow",
            libc::SYS_clone
        )),
        "{stderr}"
    );
}

/// A launch technology that adds a thread start hook that fails.
struct FailingStart;

impl Launch for FailingStart {
    fn name(&self) -> &'static str {
        "failing-start"
    }

    fn vm_types(&self) -> &[u32] {
        PlainKvm.vm_types()
    }

    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        ExitRouting {
            thread_start: Some(Arc::new(|index| {
                Err(format!("vCPU {index} may not start").into())
            })),
            ..routing
        }
    }
}

#[test]
fn a_failing_thread_start_hook_stops_the_vm_before_the_guest_runs() {
    if !veil_tests::kvm_or_skip("a_failing_thread_start_hook_stops_the_vm_before_the_guest_runs") {
        return;
    }
    let (reason, fd) = run_guest(Arc::new(FailingStart)).expect("the VM runs");
    let StopReason::Error { vcpu: 0, error } = &reason else {
        panic!("the VM stopped for another reason: {reason}");
    };
    assert!(matches!(**error, RunError::ThreadStart { .. }), "{reason}");
    assert!(
        reason.to_string().contains("vCPU 0 may not start"),
        "{reason}"
    );
    assert_eq!(fd, i64::MIN, "the guest never reached the device");
}

#[test]
fn a_confined_thread_runs_on_and_other_threads_stay_unconfined() {
    if !seccomp::supported() {
        veil_tests::skip(
            "a_confined_thread_runs_on_and_other_threads_stay_unconfined",
            "this kernel does not offer seccomp filters",
        );
        return;
    }
    assert!(!seccomp::thread_is_confined());
    let confined = std::thread::spawn(|| {
        seccomp::confine_thread(ThreadKind::Device, 0).map_err(|e| e.to_string())?;
        // What the thread's list allows still works: allocating, writing, locking.
        let v: Vec<u8> = vec![7; 1 << 20];
        let m = std::sync::Mutex::new(v.len());
        let len = *m.lock().map_err(|e| e.to_string())?;
        Ok::<_, String>((seccomp::thread_is_confined(), len))
    })
    .join()
    .expect("the confined thread ran to its end");
    assert_eq!(confined, Ok((true, 1 << 20)));
    assert!(
        !seccomp::thread_is_confined(),
        "the filter stays on its thread"
    );
}
