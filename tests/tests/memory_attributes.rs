// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The attributes flavor with the real `KVM_SET_MEMORY_ATTRIBUTES`, on hosts that have it
//! (a software-protected VM type: the testbed). Elsewhere it skips with the reason, and
//! fails instead when `VEIL_REQUIRE_SWPROT=1`.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE};
use veil_memory::{Flavor, HostAccessError, HostCaps, HostSafeMemory, RegionSpec};
use veil_tests::{kvm_or_skip, required};

const MIB: u64 = 1 << 20;

#[test]
fn attributes_flavor_with_the_real_ioctl() {
    if !kvm_or_skip("attributes_flavor_with_the_real_ioctl") {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    let vm_type = match caps.require(Flavor::Attributes) {
        Ok(f) => f.vm_type.expect("a supported flavor names its VM type"),
        Err(e) => {
            assert!(!required("VEIL_REQUIRE_SWPROT"), "{e}");
            eprintln!("skipping attributes_flavor_with_the_real_ioctl: {e}");
            return;
        }
    };
    let vm = Arc::new(kvm.create_vm_with_type(vm_type.into()).unwrap());
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(vm.as_ref())
        .attributes_vm(vm.clone())
        .region(RegionSpec::new(0, 2 * MIB, Flavor::Attributes))
        .build()
        .unwrap();
    // SAFETY: `mem` outlives the VM: the VM is dropped explicitly first.
    unsafe { mem.register_memslots(&vm, 0) }.unwrap();
    let gmem = mem.regions()[0].guest_memfd().unwrap();
    gmem.allocate(0, 2 * MIB).unwrap();

    mem.host_write(0x1000, &[5; 64]).unwrap();
    let range = FrameRange::new(Gfn(1), 4).unwrap();
    let done = mem.convert(range, Attributes::PRIVATE).unwrap();
    assert_eq!(
        (done.pages_changed, done.bytes_discarded),
        (4, 4 * PAGE_SIZE)
    );
    assert!(matches!(
        mem.host_read(0x1000, &mut [0; 8]),
        Err(HostAccessError::Private { .. })
    ));
    // Converting again is free; back to shared the shared side reads zeros (discarded).
    let stats = mem.stats();
    assert!(
        mem.convert(range, Attributes::PRIVATE)
            .unwrap()
            .changes
            .is_empty()
    );
    assert_eq!(mem.stats(), stats);
    mem.convert(FrameRange::new(Gfn(0), 512).unwrap(), Attributes::empty())
        .unwrap();
    let mut back = [1u8; 64];
    mem.host_read(0x1000, &mut back).unwrap();
    assert_eq!(back, [0; 64]);
    drop(vm);
}
