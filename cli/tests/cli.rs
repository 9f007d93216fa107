// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `veil` binary as a user runs it: the demo and a short soak pass in every flavor
//! this host runs, and bad usage gets a clear message and exit code 2.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::veil;

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The flavors `veil caps --json` says run here.
fn flavors_here() -> Vec<String> {
    let out = veil(&["caps", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "veil caps failed: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("caps --json is JSON");
    json["host"]["flavors"]
        .as_array()
        .expect("flavors")
        .iter()
        .filter(|f| f["missing"].as_array().is_some_and(Vec::is_empty))
        .map(|f| f["flavor"].as_str().expect("flavor name").to_string())
        .collect()
}

#[test]
fn demo_passes_in_every_flavor_this_host_runs() {
    if !veil_tests::kvm_or_skip("demo_passes_in_every_flavor_this_host_runs") {
        return;
    }
    let flavors = flavors_here();
    assert!(!flavors.is_empty(), "the emulated flavor runs anywhere");
    for flavor in &flavors {
        let out = veil(&["demo", "--flavor", flavor, "--rounds", "50"]);
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "veil demo --flavor {flavor}: {:?}\n{stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains("hello from a guest whose memory the host cannot read"));
        assert!(stdout.contains("9 of 9 checks passed"), "{stdout}");
        assert!(
            stdout.contains("ok   seccomp confined 2 of 2 vCPU threads"),
            "{stdout}"
        );
        assert!(!stdout.contains("FAIL"), "{stdout}");
        // 2 vCPUs x 50 round trips, and the message page's two requests.
        assert!(stdout.contains(" 202 "), "{stdout}");
    }
}

/// The numbers of the soak's last line, `soak: N conversions, M mismatches`.
fn soak_line(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().rfind(|l| l.starts_with("soak: "))?;
    let rest = line.strip_prefix("soak: ")?;
    let (n, rest) = rest.split_once(" conversions, ")?;
    let m = rest.strip_suffix(" mismatches")?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

#[test]
fn a_short_soak_passes_in_every_flavor_and_policy_this_host_runs() {
    if !veil_tests::kvm_or_skip("a_short_soak_passes_in_every_flavor_and_policy_this_host_runs") {
        return;
    }
    let mut vcpus = (2..=4).cycle();
    for flavor in &flavors_here() {
        // The attributes flavor discards whatever it is asked; the others do either.
        let policies: &[&str] = if flavor == "attributes" {
            &["discard"]
        } else {
            &["preserve", "discard"]
        };
        for policy in policies {
            let n = vcpus.next().unwrap().to_string();
            let args = [
                "soak",
                "--seconds",
                "2",
                "--vcpus",
                &n,
                "--blocks",
                "2",
                "--flavor",
                flavor,
                "--policy",
                policy,
                "--seed",
                "42",
            ];
            let out = veil(&args);
            let (stdout, stderr) = text(&out);
            assert!(
                out.status.success(),
                "veil {args:?}: {:?}\n{stdout}\n{stderr}",
                out.status
            );
            let (conversions, mismatches) = soak_line(&stdout)
                .unwrap_or_else(|| panic!("veil {args:?} printed no soak line:\n{stdout}"));
            assert!(conversions > 0, "{stdout}");
            assert_eq!(mismatches, 0, "{stdout}");
            assert_eq!(
                stdout.lines().filter(|l| l.starts_with("soak: ")).count(),
                1,
                "{stdout}"
            );
            assert!(
                stdout.contains(&format!("flavor {flavor}, policy {policy}")),
                "{stdout}"
            );
            assert!(stdout.contains(" 0 memory fault exits"), "{stdout}");
            assert!(!stdout.contains("FAIL"), "{stdout}");
        }
    }
}

#[test]
fn veil_alone_is_the_demo() {
    if !veil_tests::kvm_or_skip("veil_alone_is_the_demo") {
        return;
    }
    let out = veil(&["--vcpus", "1", "--rounds", "3"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("veil demo:"), "{stdout}");
}

/// `-v` shows what veil does, `-q` only errors, `RUST_LOG` overrides both; the logger
/// writes to standard error, so the demo's table is the same either way.
#[test]
fn verbosity_flags_and_rust_log_set_what_is_logged() {
    if !veil_tests::kvm_or_skip("verbosity_flags_and_rust_log_set_what_is_logged") {
        return;
    }
    let info = "veil: info: exits:";
    let quiet = veil(&["-q", "demo", "--vcpus", "1", "--rounds", "1"]);
    let (stdout, stderr) = text(&quiet);
    assert!(quiet.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"), "{stdout}");
    assert!(!stderr.contains("veil: info:"), "{stderr}");
    let verbose = veil(&["-v", "demo", "--vcpus", "1", "--rounds", "1"]);
    let (_, stderr) = text(&verbose);
    assert!(verbose.status.success(), "{stderr}");
    assert!(stderr.contains(info), "{stderr}");
    let from_env = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["-q", "demo", "--vcpus", "1", "--rounds", "1"])
        .env("RUST_LOG", "info")
        .output()
        .expect("cannot run the veil binary");
    let (_, stderr) = text(&from_env);
    assert!(from_env.status.success(), "{stderr}");
    assert!(
        stderr.contains(info),
        "RUST_LOG=info overrides -q: {stderr}"
    );
    refused(&["-q", "-v", "caps"], "cannot be used with");
    // The demo's own options go with `veil` alone or after `demo`, not before another
    // command, where they would do nothing.
    refused(
        &["--rounds", "3", "caps"],
        "--rounds is an option of the demo",
    );
}

#[test]
fn a_flavor_the_host_lacks_is_the_host_lacking() {
    if !veil_tests::kvm_or_skip("a_flavor_the_host_lacks_is_the_host_lacking") {
        return;
    }
    let here = flavors_here();
    let Some(missing) = ["attributes", "in-place", "emulated"]
        .into_iter()
        .find(|f| !here.iter().any(|h| h == f))
    else {
        println!("every flavor runs on this host; nothing to refuse");
        return;
    };
    let out = veil(&["demo", "--flavor", missing]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&format!("the {missing} flavor does not run on this host")));
    assert!(stderr.contains("veil caps"), "{stderr}");
}

#[test]
fn caps_reports_the_guest_hypercall_and_backends() {
    if !veil_tests::kvm_or_skip("caps_reports_the_guest_hypercall_and_backends") {
        return;
    }
    let out = veil(&["caps"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("guest hypercall: a guest's vm"), "{stdout}");
    assert!(stdout.contains("backend "), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&text(&veil(&["caps", "--json"])).0).unwrap();
    let outcome = json["guest_hypercall"]["reach"]["outcome"]
        .as_str()
        .unwrap();
    assert!(
        ["userspace", "kernel", "hangs"].contains(&outcome),
        "{outcome}"
    );
    let names: Vec<&str> = json["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "plain", "{names:?}");
    assert_eq!(names.len(), 3, "plain, SEV-SNP and TDX: {names:?}");
    assert_eq!(json["backends"][0]["runs"], true);
}

/// Bad usage: exit code 2 and a message naming the problem.
fn refused(args: &[&str], says: &str) {
    let out = veil(args);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "veil {args:?}: {stderr}");
    assert!(
        stderr.contains(says),
        "veil {args:?} should say {says:?}: {stderr}"
    );
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veil-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn bad_usage_is_exit_code_2_with_a_reason() {
    refused(&["--no-such-flag"], "unexpected argument '--no-such-flag'");
    refused(&["demo", "--vcpus", "0"], "0 is not in 1..=8");
    refused(&["demo", "--vcpus", "99"], "99 is not in 1..=8");
    refused(&["demo", "--flavor", "magic"], "no flavor \"magic\"");
    refused(&["soak", "--vcpus", "1"], "1 is not in 2..=4");
    refused(&["soak", "--vcpus", "5"], "5 is not in 2..=4");
    refused(&["soak", "--blocks", "9"], "9 is not in 1..=8");
    refused(&["soak", "--seconds", "0"], "0 is not in 1..=604800");
    refused(
        &["soak", "--policy", "retain"],
        "no content policy \"retain\"",
    );
    refused(
        &["soak", "--seed", "x"],
        "invalid value 'x' for '--seed <SEED>'",
    );
    refused(
        &["soak", "--flavor", "attributes", "--policy", "preserve"],
        "the attributes flavor cannot honour the preserve content policy",
    );
    refused(&["measure"], "--kernel <FILE>");
    refused(
        &["measure", "--kernel", "/no/such/kernel"],
        "cannot read the kernel /no/such/kernel: it does not exist",
    );
    let truncated = scratch("truncated", &[0x7f, b'E', b'L', b'F', 2, 1]);
    let t = truncated.to_str().unwrap();
    // A kernel the loader refuses is named by its path.
    refused(
        &["measure", "--kernel", t],
        &format!("{t}: cannot load the kernel"),
    );
    refused(&["measure", "--kernel", t, "--memory", "0"], "size of 0");
    refused(
        &["measure", "--kernel", t, "--memory", "12Q"],
        "unknown suffix",
    );
    refused(
        &["measure", "--kernel", t, "--snp", "--tdx"],
        "cannot be used with",
    );
    // veil run refuses the same before touching KVM.
    refused(&["run"], "--kernel <FILE>");
    refused(&["run", "--kernel", "/no/such/kernel"], "it does not exist");
    refused(
        &["run", "--kernel", t],
        &format!("{t}: cannot load the kernel"),
    );
    refused(
        &["run", "--kernel", t, "--vcpus", "0"],
        "0 is not in 1..=64",
    );
    refused(&["run", "--kernel", t, "--memory", "0"], "size of 0");
    refused(&["run", "--kernel", t, "--private", "most"], "not a range");
    refused(
        &["run", "--kernel", t, "--backend", "sgx"],
        "invalid value 'sgx'",
    );
    let pvh = scratch("pvh.elf", &veil_tests::machine_kernels::pvh_kernel());
    let p = pvh.to_str().unwrap();
    let initrd = scratch("big.initrd", &vec![0u8; 3 << 20]);
    refused(
        &[
            "run",
            "--kernel",
            p,
            "--memory",
            "2M",
            "--initrd",
            initrd.to_str().unwrap(),
        ],
        "does not fit",
    );
    refused(
        &[
            "run",
            "--kernel",
            p,
            "--private",
            "0x40000000+4K",
            "--no-stdin",
        ],
        "private range 0x40000000",
    );
}

/// Runs `veil run` on a test kernel and returns its JSON report, with the console output
/// under "console".
fn boot(kernel: &[u8], name: &str, extra: &[&str]) -> serde_json::Value {
    let path = scratch(name, kernel);
    let json = scratch(&format!("{name}.json"), b"");
    let mut args = vec![
        "run",
        "--kernel",
        path.to_str().unwrap(),
        "--memory",
        "64M",
        "--flavor",
        "in-place",
        "--no-stdin",
        "--timeout",
        "60",
        "--stats-json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = veil(&args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "veil {args:?}: {stdout}\n{stderr}");
    assert!(
        stderr.contains("veil: RAM shared at launch: none"),
        "{stderr}"
    );
    assert!(
        stderr.contains("private page during the run: refused"),
        "{stderr}"
    );
    if !extra.contains(&"--no-seccomp") {
        let vcpus = extra
            .iter()
            .position(|a| *a == "--vcpus")
            .map_or("1", |i| extra[i + 1]);
        assert!(
            stderr.contains("veil: seccomp: on: the main thread (")
                && stderr.contains(&format!("), {vcpus} of {vcpus} vCPU threads (")),
            "{stderr}"
        );
    }
    let mut report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).expect("the stats are JSON");
    assert_eq!(report["private_read"]["result"], "refused", "{report}");
    assert_eq!(report["flavor"], "in-place");
    let to_private = report["memory"]["conversions"]["pages_to_private"].as_u64();
    assert!(to_private >= Some(16384), "all 64 MiB private: {report}");
    report["console"] = stdout.into();
    report
}

#[test]
fn run_boots_the_test_kernels_with_private_ram() {
    if !veil_tests::kvm_or_skip("run_boots_the_test_kernels_with_private_ram") {
        return;
    }
    if !flavors_here().iter().any(|f| f == "in-place") {
        println!("run_boots_the_test_kernels_with_private_ram: no in-place flavor here");
        return;
    }
    use veil_tests::machine_kernels::{BZIMAGE_OK, PVH_OK, bzimage_kernel, pvh_kernel};
    let pvh = boot(&pvh_kernel(), "pvh-run.elf", &[]);
    assert_eq!(pvh["end"]["kind"], "power-off");
    assert_eq!(pvh["console"], PVH_OK);
    let bz = boot(&bzimage_kernel(), "bz-run.bin", &["--vcpus", "2"]);
    assert_eq!(bz["end"]["kind"], "reset");
    assert_eq!(bz["vcpus"], 2);
    assert_eq!(bz["console"], BZIMAGE_OK);
}

#[test]
fn no_seccomp_turns_the_filters_off() {
    if !veil_tests::kvm_or_skip("no_seccomp_turns_the_filters_off") {
        return;
    }
    if !flavors_here().iter().any(|f| f == "in-place") {
        println!("no_seccomp_turns_the_filters_off: no in-place flavor here");
        return;
    }
    let pvh = boot(
        &veil_tests::machine_kernels::pvh_kernel(),
        "pvh-unconfined.elf",
        &["--no-seccomp"],
    );
    assert_eq!(pvh["end"]["kind"], "power-off");
    let out = veil(&["demo", "--rounds", "5", "--no-seccomp"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("seccomp off (--no-seccomp)"), "{stdout}");
    assert!(!stdout.contains("seccomp confined"), "{stdout}");
    assert!(stdout.contains("8 of 8 checks passed"), "{stdout}");
}

/// With standard input a pipe, the console thread starts, narrows its filter and feeds
/// the guest; the run still ends as the guest does.
#[test]
fn run_confines_the_console_thread_too() {
    if !veil_tests::kvm_or_skip("run_confines_the_console_thread_too") {
        return;
    }
    let pvh = scratch(
        "pvh-console.elf",
        &veil_tests::machine_kernels::pvh_kernel(),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["run", "--kernel", pvh.to_str().unwrap(), "--memory", "64M"])
        .args(["--timeout", "60"])
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run the veil binary");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("a pipe");
        // The guest may have ended already; a closed pipe is fine.
        let _ = stdin.write_all(b"input for the console\n");
    }
    let out = child.wait_with_output().expect("veil ran");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{:?}: {stdout}\n{stderr}", out.status);
    assert!(
        stderr.contains("veil: seccomp: on: the main thread"),
        "{stderr}"
    );
    assert!(stderr.contains("console input: confined"), "{stderr}");
    assert!(!stderr.contains("its filter does not allow"), "{stderr}");
}

#[test]
fn run_with_a_backend_the_host_lacks_creates_nothing() {
    if !veil_tests::kvm_or_skip("run_with_a_backend_the_host_lacks_creates_nothing") {
        return;
    }
    let pvh = scratch(
        "pvh-backend.elf",
        &veil_tests::machine_kernels::pvh_kernel(),
    );
    let p = pvh.to_str().unwrap();
    for (backend, vm_type) in [("snp", "KVM_X86_SNP_VM"), ("tdx", "KVM_X86_TDX_VM")] {
        let out = veil(&["run", "--kernel", p, "--backend", backend, "--no-stdin"]);
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success(),
            "this host runs {backend}? {stdout}{stderr}"
        );
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(vm_type), "{stderr}");
        assert!(stdout.is_empty(), "no guest ran: {stdout}");
    }
}

#[test]
fn measure_gives_the_log_a_run_records_and_the_snp_and_tdx_digests() {
    let pvh = scratch(
        "pvh-measure.elf",
        &veil_tests::machine_kernels::pvh_kernel(),
    );
    let p = pvh.to_str().unwrap();
    let json = |args: &[&str]| -> serde_json::Value {
        let out = veil(args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "veil {args:?}: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    let log = json(&["measure", "--kernel", p, "--memory", "64M", "--json"]);
    let kinds: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"firmware-tables"),
        "the ACPI tables are measured: {kinds:?}"
    );
    let snp = json(&[
        "measure", "--kernel", p, "--memory", "64M", "--snp", "--json",
    ]);
    assert_eq!(snp["launch_digest"].as_str().unwrap().len(), 96, "{snp}");
    assert!(snp["pages"].as_array().unwrap().len() > 1);
    let two = [
        "measure", "--kernel", p, "--memory", "64M", "--vcpus", "2", "--snp", "--json",
    ];
    let snp2 = json(&two);
    assert_ne!(
        snp["launch_digest"], snp2["launch_digest"],
        "a second VMSA counts"
    );
    let tdx = json(&[
        "measure", "--kernel", p, "--memory", "64M", "--tdx", "--json",
    ]);
    assert_eq!(tdx["mrtd"].as_str().unwrap().len(), 96, "{tdx}");
    let out = veil(&["measure", "--kernel", p, "--memory", "64M"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("launch digest: "), "{stdout}");
}

#[test]
fn version_and_help() {
    let out = veil(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out).0.trim(),
        format!("veil {}", env!("CARGO_PKG_VERSION"))
    );
    let out = veil(&["--help"]);
    let (stdout, _) = text(&out);
    assert!(out.status.success());
    for word in [
        "demo",
        "soak",
        "caps",
        "measure",
        "Exit codes:",
        "host lacks",
    ] {
        assert!(stdout.contains(word), "--help lacks {word:?}: {stdout}");
    }
}
