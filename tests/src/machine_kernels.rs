// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-machine's test kernels (`machine/tests/guests/`): a PVH ELF and a bzImage that
//! find the RSDP, print to COM1 and power off or reset. Assembled with binutils the first
//! time a test asks, for veil-machine's tests and the `veil` binary's.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// What the PVH test kernel prints when it finds the RSDP, before powering off.
pub const PVH_OK: &str = "veil-pvh: rsdp found\n";
/// What the bzImage test kernel prints when it finds the RSDP, before resetting.
pub const BZIMAGE_OK: &str = "veil-bzimage: rsdp found\n";

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; the test kernels need binutils"));
    assert!(status.success(), "{cmd:?} exited with {status}");
}

/// Assembles the test kernels once per test binary; returns (PVH ELF, bzImage).
fn kernels() -> &'static (Vec<u8>, Vec<u8>) {
    static KERNELS: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    KERNELS.get_or_init(|| {
        let src = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../machine/tests/guests"
        ));
        let out = std::env::temp_dir().join(format!("veil-machine-guests-{}", std::process::id()));
        std::fs::create_dir_all(&out).unwrap();
        run(Command::new("as")
            .args(["--64", "-o"])
            .arg(out.join("pvh.o"))
            .arg(src.join("pvh-console.s")));
        run(Command::new("ld")
            .args(["-m", "elf_x86_64", "-T"])
            .arg(src.join("pvh-console.ld"))
            .args([
                "--build-id=none",
                "-z",
                "noexecstack",
                "-z",
                "noseparate-code",
            ])
            .args(["-z", "max-page-size=0x1000", "-s", "-o"])
            .arg(out.join("pvh.elf"))
            .arg(out.join("pvh.o")));
        run(Command::new("as")
            .args(["--64", "-o"])
            .arg(out.join("bzimage.o"))
            .arg(src.join("bzimage-console.s")));
        run(Command::new("objcopy")
            .args(["-O", "binary", "-j", ".text"])
            .arg(out.join("bzimage.o"))
            .arg(out.join("bzimage.bin")));
        let read = |name: &str| std::fs::read(out.join(name)).unwrap();
        let k = (read("pvh.elf"), read("bzimage.bin"));
        let _ = std::fs::remove_dir_all(&out);
        k
    })
}

/// The PVH test kernel.
pub fn pvh_kernel() -> Vec<u8> {
    kernels().0.clone()
}

/// The bzImage test kernel.
pub fn bzimage_kernel() -> Vec<u8> {
    kernels().1.clone()
}
