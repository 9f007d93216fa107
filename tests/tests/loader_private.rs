// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-loader into veil-memory's guest memory on real KVM, and the test kernels running
//! from it.
//!
//! In-place (guest_memfd) and emulated memory with `Preserve`: the loader writes while
//! shared and converts every page it placed to private; the host can no longer read
//! them, and the guest runs from them (KVM reaches them through its own mapping). The
//! attributes flavor (its memory-attributes ioctl faked, as this host lacks it) takes the
//! boot image into the shared side and converts nothing; the guest runs from that.

mod loader_support;

use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use loader_support::*;
use veil_loader::{BootSource, LoadError, Loaded, PopulateError, PopulateWay, load, plan};
use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn};
use veil_memory::vm_memory::{Bytes, GuestAddress};
use veil_memory::{
    ContentPolicy, Flavor, HostAccessError, HostCaps, HostSafeMemory, RecordingAttributesVm,
    RegionSpec, host_access_error,
};
use veil_tests::kvm_or_skip;

/// Low memory and 63 MiB from 1 MiB, one region each.
const RAM: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x3f0_0000)];

/// A guest whose VM type offers guest_memfd, and the host's capabilities; `None` when
/// the test skips (no KVM, or no `flavor` on this host: the reason is printed).
fn guest_for(test: &str, flavor: Flavor) -> Option<(Guest, HostCaps)> {
    if !kvm_or_skip(test) {
        return None;
    }
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    if flavor == Flavor::IN_PLACE
        && let Err(e) = caps.require(Flavor::IN_PLACE)
    {
        veil_tests::skip_unless_required(test, &e.to_string(), veil_tests::REQUIRE_IN_PLACE);
        return None;
    }
    // In-place memory needs the VM type whose guest_memfd maps; the others any type
    // with guest_memfd (their attributes are recorded, not set).
    let in_place_type = caps.require(Flavor::IN_PLACE).ok().and_then(|f| f.vm_type);
    let vm_type = in_place_type
        .filter(|_| flavor == Flavor::IN_PLACE)
        .unwrap_or_else(|| {
            caps.probe
                .vm_types
                .iter()
                .find(|t| t.guest_memfd && t.create_error.is_none())
                .map_or(0, |t| t.vm_type)
        });
    let vm = kvm.create_vm_with_type(vm_type.into()).unwrap();
    Some((Guest { kvm, vm }, caps))
}

/// `flavor` memory of `RAM`, and for the attributes flavor the recording stand-in for
/// `KVM_SET_MEMORY_ATTRIBUTES`.
fn memory(
    vm: &VmFd,
    caps: &HostCaps,
    flavor: Flavor,
    ram: &[(u64, u64)],
) -> (HostSafeMemory, Option<Arc<RecordingAttributesVm>>) {
    let mut b = HostSafeMemory::builder()
        .guest_memfd_source(vm)
        .kvm_side_mapping(caps.kvm_side_mapping.mapping);
    let fake = (flavor == Flavor::ATTRIBUTES).then(|| Arc::new(RecordingAttributesVm::new()));
    if let Some(fake) = &fake {
        b = b.attributes_vm(fake.clone());
    }
    // Keep contents where the flavor can (what lets the loader convert what it wrote);
    // the attributes flavor never does (Discard by nature).
    let policy = if flavor.honours(ContentPolicy::Preserve) {
        ContentPolicy::Preserve
    } else {
        ContentPolicy::Discard
    };
    for &(base, size) in ram {
        b = b.region(RegionSpec::new(base, size, flavor).policy(policy));
    }
    (b.build().unwrap(), fake)
}

fn host_cannot_read(mem: &HostSafeMemory, gpa: u64) -> bool {
    let mut b = [0u8; 1];
    match mem.read_slice(&mut b, GuestAddress(gpa)) {
        Err(e) => matches!(host_access_error(&e), Some(HostAccessError::Private { .. })),
        Ok(()) => false,
    }
}

/// Loads `kernel` into `flavor` memory, checks the populate result, runs the guest.
fn load_and_run(
    test: &str,
    flavor: Flavor,
    kernel: &[u8],
    cmdline: &str,
) -> Option<(Loaded, Report, Vec<u8>)> {
    let (guest, caps) = guest_for(test, flavor)?;
    let (mem, fake) = memory(&guest.vm, &caps, flavor, RAM);
    let initrd = test_initrd();
    let loaded = load(
        &BootSource::new(kernel).initrd(&initrd).cmdline(cmdline),
        &mem,
    )
    .unwrap();
    if flavor.keeps_contents(ContentPolicy::Preserve) {
        assert_eq!(loaded.populated.way, PopulateWay::WriteThenConvert);
        assert_eq!(loaded.populated.private, loaded.populated.ranges());
        for p in &loaded.layout.placements {
            assert!(
                host_cannot_read(&mem, p.range.start().0),
                "{p:?} readable by the host"
            );
        }
    } else {
        assert_eq!(loaded.populated.way, PopulateWay::SharedOnly);
        assert!(loaded.populated.private.is_empty());
        let calls = fake.as_ref().map(|f| f.call_count());
        assert_eq!(calls, Some(0), "the loader changed memory attributes");
        for p in &loaded.layout.placements {
            assert!(!host_cannot_read(&mem, p.range.start().0));
        }
    }
    // SAFETY: the VM is dropped below, before `mem`; its vCPU has stopped by then.
    unsafe { mem.register_memslots(&guest.vm, 0) }.unwrap();
    let report = guest.run(&loaded.entry, RAM);
    drop(guest);
    drop(mem);
    Some((loaded, report, initrd))
}

#[test]
fn pvh_kernel_runs_from_private_in_place_memory() {
    let test = "pvh_kernel_runs_from_private_in_place_memory";
    let Some((loaded, report, initrd)) =
        load_and_run(test, Flavor::IN_PLACE, PVH_KERNEL, PVH_CMDLINE)
    else {
        return;
    };
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_pvh_report(&loaded, RAM, &initrd));
}

#[test]
fn bzimage_kernel_runs_from_private_in_place_memory() {
    let test = "bzimage_kernel_runs_from_private_in_place_memory";
    let Some((loaded, report, initrd)) =
        load_and_run(test, Flavor::IN_PLACE, BZ_KERNEL, BZ_CMDLINE)
    else {
        return;
    };
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_bz_report(&loaded, RAM, &initrd));
}

#[test]
fn pvh_kernel_runs_from_private_emulated_memory() {
    let test = "pvh_kernel_runs_from_private_emulated_memory";
    let Some((loaded, report, initrd)) =
        load_and_run(test, Flavor::EMULATED, PVH_KERNEL, PVH_CMDLINE)
    else {
        return;
    };
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_pvh_report(&loaded, RAM, &initrd));
}

#[test]
fn bzimage_kernel_runs_from_private_emulated_memory() {
    let test = "bzimage_kernel_runs_from_private_emulated_memory";
    let Some((loaded, report, initrd)) =
        load_and_run(test, Flavor::EMULATED, BZ_KERNEL, BZ_CMDLINE)
    else {
        return;
    };
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_bz_report(&loaded, RAM, &initrd));
}

#[test]
fn attributes_flavor_loads_into_the_shared_side() {
    let test = "attributes_flavor_loads_into_the_shared_side";
    let Some((loaded, report, initrd)) =
        load_and_run(test, Flavor::ATTRIBUTES, PVH_KERNEL, PVH_CMDLINE)
    else {
        return;
    };
    assert_eq!(report.result, Some(0), "guest reported failure: {report:?}");
    assert_eq!(report.values, expected_pvh_report(&loaded, RAM, &initrd));
}

#[test]
fn in_place_memory_is_left_untouched_by_a_refused_load() {
    let test = "in_place_memory_is_left_untouched_by_a_refused_load";
    let Some((guest, caps)) = guest_for(test, Flavor::IN_PLACE) else {
        return;
    };
    // Just low memory and the megabyte the PVH kernel goes to: every byte is compared.
    const SMALL: &[(u64, u64)] = &[(0, 0xa_0000), (0x10_0000, 0x10_0000)];
    let (mem, _) = memory(&guest.vm, &caps, Flavor::IN_PLACE, SMALL);
    for &(base, size) in SMALL {
        mem.write_slice(&vec![0x5a; size as usize], GuestAddress(base))
            .unwrap();
    }
    let everything = |mem: &HostSafeMemory| -> Vec<u8> {
        SMALL
            .iter()
            .flat_map(|&(b, s)| {
                let mut v = vec![0u8; s as usize];
                mem.read_slice(&mut v, GuestAddress(b)).unwrap();
                v
            })
            .collect()
    };
    let all_shared = |mem: &HostSafeMemory| {
        SMALL.iter().all(|&(b, s)| {
            mem.attributes()
                .range_is(FrameRange::from_gpa(b, s).unwrap(), Attributes::empty())
                .unwrap()
        })
    };
    let before = everything(&mem);

    // A bad image: refused while planning.
    let mut bad = BZ_KERNEL.to_vec();
    bad[0x206] = 0x0b; // protocol 2.11
    let err = load(&BootSource::new(&bad).cmdline(BZ_CMDLINE), &mem).unwrap_err();
    assert!(matches!(err, LoadError::Image(_)), "{err}");
    assert!(all_shared(&mem) && everything(&mem) == before);

    // A command line longer than the image allows.
    let long = "x".repeat(300);
    let err = load(&BootSource::new(BZ_KERNEL).cmdline(&long), &mem).unwrap_err();
    assert!(matches!(err, LoadError::CommandLineTooLong { .. }), "{err}");
    assert!(all_shared(&mem) && everything(&mem) == before);

    // A page the kernel goes to is private already: refused before the first write.
    let source = BootSource::new(PVH_KERNEL).cmdline(PVH_CMDLINE);
    let planned = plan(&source, &veil_loader::GuestRam::new(SMALL).unwrap()).unwrap();
    let text = planned.layout.placements[0].range.page_aligned().unwrap();
    let page = FrameRange::new(Gfn(text.start().0 / 4096), 1).unwrap();
    mem.convert(page, Attributes::PRIVATE).unwrap();
    let err = load(&source, &mem).unwrap_err();
    assert!(
        matches!(err, LoadError::Populate(PopulateError::NotShared { .. })),
        "{err}"
    );
    mem.convert(page, Attributes::empty()).unwrap();
    assert!(
        all_shared(&mem) && everything(&mem) == before,
        "memory changed"
    );
    drop(guest);
}
