// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every bad command-line value, size, path and file a user can give: each gets a
//! message naming the problem and the bad-usage exit code (2), before any VM exists.
//! None of these needs KVM: each is refused before veil opens /dev/kvm.

mod common;

use std::path::PathBuf;

use common::veil;

/// `veil args` exits 2, its standard error says `says`, and no guest ran (the summary
/// a run prints at its end is absent).
fn refused(args: &[&str], says: &str) {
    let out = veil(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "veil {args:?}: {stderr}");
    assert!(
        stderr.contains(says),
        "veil {args:?} should say {says:?}: {stderr}"
    );
    assert!(
        !stderr.contains("veil: exits:"),
        "veil {args:?} ran a guest before refusing: {stderr}"
    );
}

/// A scratch directory of this test process, holding `name` with `bytes` (or, with
/// `None`, a directory of that name).
fn scratch(name: &str, bytes: Option<&[u8]>) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("veil-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    match bytes {
        Some(b) => std::fs::write(&path, b).unwrap(),
        None => std::fs::create_dir_all(&path).unwrap(),
    }
    path
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_files_are_named_with_what_is_wrong() {
    let dir = scratch("a-directory", None);
    let empty = scratch("empty", Some(&[]));
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 131 + 7) as u8).collect();
    let garbage = scratch("garbage", Some(&garbage));
    let kernel = scratch("pvh.elf", Some(&veil_tests::machine_kernels::pvh_kernel()));
    let k = s(&kernel);
    for cmd in ["run", "measure"] {
        refused(&[cmd, "--kernel", s(&dir)], "cannot read the kernel");
        for bad in [&empty, &garbage] {
            refused(&[cmd, "--kernel", s(bad)], "not a kernel image");
            refused(
                &[cmd, "--kernel", s(bad)],
                &format!("{}: cannot load the kernel", s(bad)),
            );
        }
        refused(
            &[cmd, "--kernel", k, "--initrd", "/no/such/initrd"],
            "cannot read the initrd /no/such/initrd: it does not exist",
        );
        refused(
            &[cmd, "--kernel", k, "--initrd", s(&dir)],
            "cannot read the initrd",
        );
    }
    // An IGVM read for no platform, and a file that is not IGVM.
    refused(
        &["measure", "--kernel", k, "--igvm"],
        "--igvm needs --snp or --tdx",
    );
    refused(
        &["measure", "--kernel", s(&garbage), "--igvm", "--snp"],
        "IGVM",
    );
    // The statistics file is checked before the guest runs, not after.
    refused(
        &[
            "run",
            "--kernel",
            k,
            "--no-stdin",
            "--stats-json",
            "/no/such/dir/stats.json",
        ],
        "cannot write /no/such/dir/stats.json",
    );
    refused(
        &["run", "--kernel", k, "--no-stdin", "--stats-json", s(&dir)],
        "cannot write",
    );
}

#[test]
fn bad_values_are_refused_with_the_rule_they_break() {
    let kernel = scratch("pvh2.elf", Some(&veil_tests::machine_kernels::pvh_kernel()));
    let k = s(&kernel);
    let run = |extra: &[&str], says: &str| {
        let mut args = vec!["run", "--kernel", k, "--no-stdin"];
        args.extend_from_slice(extra);
        refused(&args, says);
    };
    // Sizes.
    run(&["--memory", "abc"], "is not a size");
    run(&["--memory", "1.5G"], "unknown suffix");
    run(&["--memory", "16E"], "unknown suffix");
    run(&["--memory", "99999999999999999999"], "too large");
    run(&["--memory", "0"], "size of 0");
    run(&["--memory", "4K"], "bad memory size");
    // Counts and times.
    run(&["--vcpus", "65"], "65 is not in 1..=64");
    run(&["--vcpus", "two"], "invalid digit");
    run(&["--timeout", "0"], "0 is not in 1..");
    run(&["--timeout", "soon"], "invalid digit");
    // Private ranges.
    run(&["--private", "0x1001+4K"], "not 4 KiB aligned");
    run(&["--private", "0x1000+0"], "a size of 0");
    run(&["--private", "most"], "not a range");
    // Names and strings.
    run(&["--flavor", "magic"], "no flavor \"magic\"");
    run(&["--backend", "sgx"], "invalid value 'sgx'");
    let long = "a".repeat(70_000);
    run(&["--cmdline", &long], "longer than the kernel's limit");
    refused(
        &["demo", "--rounds", "1000001"],
        "1000001 is not in 0..=1000000",
    );
    refused(&["demo", "--vcpus", "9"], "9 is not in 1..=8");
    refused(&["soak", "--vcpus", "1"], "1 is not in 2..=4");
    refused(&["soak", "--vcpus", "5"], "5 is not in 2..=4");
    refused(&["soak", "--seconds", "0"], "0 is not in 1..=604800");
    refused(&["soak", "--seed", "q"], "invalid digit");
    refused(&["soak", "--blocks", "0"], "0 is not in 1..=8");
    refused(&["soak", "--blocks", "9"], "9 is not in 1..=8");
    refused(&["soak", "--flavor", "magic"], "no flavor \"magic\"");
    refused(&["caps", "--bogus"], "unexpected argument '--bogus'");
    refused(&["frobnicate"], "unrecognized subcommand 'frobnicate'");
}
