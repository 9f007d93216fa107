// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `veil` binary as a user runs it: the demo passes in every flavor this host runs,
//! and bad usage gets a clear message and exit code 2.

use std::path::PathBuf;
use std::process::{Command, Output};

fn veil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot run the veil binary")
}

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
        assert!(stdout.contains("8 of 8 checks passed"), "{stdout}");
        assert!(!stdout.contains("FAIL"), "{stdout}");
        // 2 vCPUs x 50 round trips, and the message page's two requests.
        assert!(stdout.contains(" 202 "), "{stdout}");
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
    assert_eq!(json["backends"][0]["name"], "plain");
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
    refused(&["measure"], "--kernel <FILE>");
    refused(
        &["measure", "--kernel", "/no/such/kernel"],
        "cannot read the kernel /no/such/kernel: it does not exist",
    );
    let truncated = scratch("truncated", &[0x7f, b'E', b'L', b'F', 2, 1]);
    let t = truncated.to_str().unwrap();
    refused(&["measure", "--kernel", t], "bad kernel image");
    refused(&["measure", "--kernel", t, "--memory", "0"], "size of 0");
    refused(
        &["measure", "--kernel", t, "--memory", "12Q"],
        "unknown suffix",
    );
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
    for word in ["demo", "caps", "measure", "Exit codes:", "host lacks"] {
        assert!(stdout.contains(word), "--help lacks {word:?}: {stdout}");
    }
}
