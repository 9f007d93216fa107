// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-loader on a real distribution kernel: the bzImage of Debian's
//! `linux-image-*-cloud-amd64-unsigned` package.
//!
//! `.ci/run` downloads the package into a cache outside the repository, extracts it and
//! exports the bzImage's path as `VEIL_DEBIAN_KERNEL`. Tests never download: without
//! the variable they skip with a printed reason, or fail when `VEIL_REQUIRE_FIXTURES=1`.
//! The kernel is placed and its boot data checked, not booted: a Linux kernel does not
//! boot in useful time on emulated KVM.

use std::path::PathBuf;

use kvm_ioctls::Kvm;
use veil_loader::boot::E820_RAM;
use veil_loader::{
    BootSource, Digest, GuestRam, KernelImage, Loaded, ObjectKind, PopulateWay, SharedOnly, load,
    measure,
};
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{ContentPolicy, Flavor, HostCaps, HostSafeMemory, RegionSpec, host_access_error};
use veil_tests::{kvm_or_skip, required};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const KERNEL_VAR: &str = "VEIL_DEBIAN_KERNEL";
const REQUIRE_FIXTURES: &str = "VEIL_REQUIRE_FIXTURES";
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial reboot=k panic=-1 noapic";

/// Low RAM, RAM from 1 MiB to 3 GiB, and 1 GiB above 4 GiB: three e820 entries.
const RAM: &[(u64, u64)] = &[
    (0, 0x9_f000),
    (0x10_0000, 0xbff0_0000),
    (0x1_0000_0000, 0x4000_0000),
];

/// The kernel's bytes, or `None` (with a printed reason) when the test must skip.
fn debian_kernel(test: &str) -> Option<(PathBuf, Vec<u8>)> {
    let reason = match std::env::var_os(KERNEL_VAR) {
        None => format!("{KERNEL_VAR} is not set (bash .ci/run fetches the kernel)"),
        Some(path) => {
            let path = PathBuf::from(path);
            match std::fs::read(&path) {
                Ok(bytes) => return Some((path, bytes)),
                Err(e) => format!("cannot read {}: {e}", path.display()),
            }
        }
    };
    if required(REQUIRE_FIXTURES) {
        panic!("{test}: {reason}, and {REQUIRE_FIXTURES}=1 forbids skipping");
    }
    veil_tests::skip(test, &reason);
    None
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn initrd() -> Vec<u8> {
    (0..(3 << 20) as u32)
        .map(|i| (i ^ (i >> 11)) as u8)
        .collect()
}

fn memory() -> GuestMemoryMmap {
    let r: Vec<(GuestAddress, usize)> = RAM
        .iter()
        .map(|&(b, s)| (GuestAddress(b), s as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&r).unwrap()
}

fn read(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
    buf
}

/// Checks everything the loader wrote for `image` against the image itself, reading
/// guest memory with `read(gpa, len)`.
fn check_placement(
    image: &[u8],
    initrd: &[u8],
    ram: &[(u64, u64)],
    read: &dyn Fn(u64, usize) -> Vec<u8>,
    loaded: &Loaded,
) {
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let l = &loaded.layout;

    // The protected-mode kernel, byte for byte, at an address the header allows.
    let pref = u64_at(image, 0x258);
    let align = u64::from(u32_at(image, 0x230));
    let init_size = u64::from(u32_at(image, 0x260));
    assert_eq!(l.kernel_load, pref, "loaded at pref_address");
    assert_eq!(l.kernel_load % align, 0);
    let payload = &image[setup_size..];
    assert!(
        read(l.kernel_load, payload.len()) == payload,
        "kernel bytes differ"
    );
    assert_eq!(
        l.kernel_reserved.len(),
        init_size.max(payload.len() as u64).div_ceil(4096) * 4096
    );

    // boot_params: the image's setup header up to its declared end, with the fields the
    // loader fills in.
    let bp = read(l.boot_params.start().0, 4096);
    let header_end = 0x202 + usize::from(image[0x201]);
    let written: &[(usize, usize)] = &[
        (0x1fa, 2), // vid_mode
        (0x210, 1), // type_of_loader
        (0x211, 1), // loadflags
        (0x214, 4), // code32_start
        (0x218, 4), // ramdisk_image
        (0x21c, 4), // ramdisk_size
        (0x228, 4), // cmd_line_ptr
    ];
    for off in 0x1f1..header_end {
        if !written.iter().any(|&(o, n)| (o..o + n).contains(&off)) {
            assert_eq!(bp[off], image[off], "setup header byte {off:#x}");
        }
    }
    assert_eq!(&bp[0x202..0x206], b"HdrS");
    assert!(u16_at(&bp, 0x206) >= 0x020c, "protocol version");
    assert_eq!(bp[0x210], 0xff, "type_of_loader");
    assert_eq!(bp[0x211], 0x01, "loadflags");
    assert_eq!(u32_at(&bp, 0x214) as u64, l.kernel_load, "code32_start");
    assert_eq!(u16_at(&bp, 0x1fa), 0xffff, "vid_mode");

    // The command line, within cmdline_size.
    let cmd_ptr = u64::from(u32_at(&bp, 0x228));
    assert_eq!(cmd_ptr, l.cmdline.start().0);
    let mut expected = CMDLINE.as_bytes().to_vec();
    expected.push(0);
    assert_eq!(read(cmd_ptr, expected.len()), expected);
    assert!(CMDLINE.len() as u32 <= u32_at(&bp, 0x238));

    // The initrd, within initrd_addr_max.
    let image_at = u64::from(u32_at(&bp, 0x218));
    let size = u64::from(u32_at(&bp, 0x21c));
    assert_eq!(size, initrd.len() as u64);
    assert!(
        image_at + size - 1 <= u64::from(u32_at(image, 0x22c)),
        "initrd_addr_max"
    );
    assert!(
        read(image_at, initrd.len()) == initrd,
        "initrd bytes differ"
    );
    assert!(!l.kernel_reserved.overlaps(&l.initrd.unwrap()));

    // The e820 map is the RAM ranges.
    assert_eq!(usize::from(bp[0x1e8]), ram.len());
    for (i, &(base, len)) in ram.iter().enumerate() {
        let e = &bp[0x2d0 + 20 * i..];
        assert_eq!(
            (u64_at(e, 0), u64_at(e, 8), u32_at(e, 16)),
            (base, len, E820_RAM)
        );
    }

    // The 64-bit entry.
    assert_eq!(loaded.entry.regs.rip, l.kernel_load + 0x200);
    assert_eq!(loaded.entry.regs.rsi, l.boot_params.start().0);
    assert_eq!(loaded.entry.cr3, l.page_tables.unwrap().start().0);
}

#[test]
fn debian_kernel_is_placed_with_matching_boot_params() {
    let test = "debian_kernel_is_placed_with_matching_boot_params";
    let Some((path, image)) = debian_kernel(test) else {
        return;
    };
    eprintln!("{test}: {} ({} bytes)", path.display(), image.len());
    let Ok(KernelImage::BzImage(bz)) = KernelImage::parse(&image) else {
        panic!("{} is not a bzImage veil loads", path.display());
    };
    assert!(bz.version() >= 0x020c);

    let initrd = initrd();
    let source = BootSource::new(&image).initrd(&initrd).cmdline(CMDLINE);
    let mem = memory();
    let loaded = load(&source, &SharedOnly::new(&mem)).unwrap();
    check_placement(
        &image,
        &initrd,
        RAM,
        &|gpa, len| read(&mem, gpa, len),
        &loaded,
    );

    // The measurement: computed without a VM, equal to what loading recorded, and its
    // digests are the digests of the bytes in memory.
    let log = measure(&source, &GuestRam::new(RAM).unwrap()).unwrap();
    assert_eq!(log, loaded.log);
    assert_eq!(log.entries[0].kind, ObjectKind::KernelImage);
    assert_eq!(log.entries[0].sha256, Digest::of(&image));
    for e in &log.entries[1..] {
        let bytes = read(&mem, e.gpa.unwrap(), e.size as usize);
        assert_eq!(Digest::of(&bytes), e.sha256, "{:?}", e.kind);
    }
    eprintln!("{test}: launch digest {}", log.launch_digest);
}

#[test]
fn debian_kernel_is_placed_privately_in_in_place_memory() {
    let test = "debian_kernel_is_placed_privately_in_in_place_memory";
    if !kvm_or_skip(test) {
        return;
    }
    let Some((_, image)) = debian_kernel(test) else {
        return;
    };
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    let vm_type = match caps.require(Flavor::IN_PLACE) {
        Ok(f) => f.vm_type.unwrap_or(0),
        Err(e) => {
            veil_tests::skip_unless_required(test, &e.to_string(), veil_tests::REQUIRE_IN_PLACE);
            return;
        }
    };
    let vm = kvm.create_vm_with_type(vm_type.into()).unwrap();
    // Low RAM and 511 MiB from 1 MiB: in-place regions on guest_memfd, keeping contents.
    const RAM: &[(u64, u64)] = &[(0, 0x9_f000), (0x10_0000, 0x1ff0_0000)];
    let mut builder = HostSafeMemory::builder()
        .guest_memfd_source(&vm)
        .kvm_side_mapping(caps.kvm_side_mapping.mapping);
    for &(base, size) in RAM {
        builder = builder
            .region(RegionSpec::new(base, size, Flavor::IN_PLACE).policy(ContentPolicy::Preserve));
    }
    let mem = builder.build().unwrap();

    let initrd = initrd();
    let source = BootSource::new(&image).initrd(&initrd).cmdline(CMDLINE);
    let loaded = load(&source, &mem).unwrap();
    assert_eq!(loaded.populated.way, PopulateWay::WriteThenConvert);
    assert_eq!(loaded.populated.private, loaded.populated.ranges());
    assert_eq!(
        loaded.log,
        measure(&source, &GuestRam::new(RAM).unwrap()).unwrap()
    );

    // Private now: the host cannot read the kernel.
    let mut probe = [0u8; 1];
    let err = mem
        .read_slice(&mut probe, GuestAddress(loaded.layout.kernel_load))
        .unwrap_err();
    assert!(host_access_error(&err).is_some(), "{err}");

    // Converted back (Preserve keeps the bytes), everything is where it belongs.
    let runs: Vec<FrameRange> = loaded
        .populated
        .runs
        .iter()
        .map(|r| FrameRange::from_gpa(r.range.start().0, r.range.len()).unwrap())
        .collect();
    mem.convert_ranges(&runs, Attributes::empty()).unwrap();
    let read_mem = |gpa: u64, len: usize| {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(gpa)).unwrap();
        buf
    };
    check_placement(&image, &initrd, RAM, &read_mem, &loaded);
}
