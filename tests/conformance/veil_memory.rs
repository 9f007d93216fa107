// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-memory's attributes flavor with the real `KVM_SET_MEMORY_ATTRIBUTES`, on its own
//! (as a VMM that uses only veil-memory builds it), and the flavor veil-vmm's `Vm`
//! picks on a host that runs it.

use std::sync::Arc;

use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn, PAGE_SIZE};
use veil_memory::{
    BuildError, ContentPolicy, Flavor, HostAccessError, HostCaps, HostSafeMemory, RegionSpec,
};
use veil_vmm::{Vm, VmError};

use crate::testbed::sw_protected_or_skip;

const MIB: u64 = 1 << 20;

#[test]
fn attributes_flavor_with_the_real_ioctl() {
    let Some(kvm) = sw_protected_or_skip("attributes_flavor_with_the_real_ioctl") else {
        return;
    };
    let caps = HostCaps::probe_with(&kvm).unwrap();
    let vm_type = caps
        .require(Flavor::ATTRIBUTES)
        .expect("software-protected VMs run the attributes flavor")
        .vm_type
        .expect("the attributes flavor names its VM type");
    let vm = Arc::new(kvm.create_vm_with_type(vm_type.into()).unwrap());
    let mem = HostSafeMemory::builder()
        .guest_memfd_source(vm.as_ref())
        .attributes_vm(vm.clone())
        .region(RegionSpec::new(0, 2 * MIB, Flavor::ATTRIBUTES))
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

#[test]
fn vm_picks_the_attributes_flavor_where_it_runs() {
    if sw_protected_or_skip("vm_picks_the_attributes_flavor_where_it_runs").is_none() {
        return;
    }
    let vm = Vm::builder()
        .region(0, 2 * MIB, ContentPolicy::Discard)
        .build()
        .unwrap();
    assert_eq!(vm.flavor(), Flavor::ATTRIBUTES);
    assert!(vm.conversion_exits());
    // KVM takes the attributes: the VM is of the software-protected type (a default VM
    // has none), and KVM_SET_MEMORY_ATTRIBUTES went through.
    let range = FrameRange::new(Gfn(16), 16).unwrap();
    let before = vm.memory().stats();
    vm.memory().convert(range, Attributes::PRIVATE).unwrap();
    assert_eq!(vm.memory().stats().since(&before).set_memory_attributes, 1);
    assert!(vm.memory().host_read(16 * PAGE_SIZE, &mut [0]).is_err());

    // The attributes flavor cannot keep contents across a conversion.
    let refused = Vm::builder()
        .flavor(Flavor::ATTRIBUTES)
        .region(0, 2 * MIB, ContentPolicy::Preserve)
        .build();
    assert!(
        matches!(
            refused,
            Err(VmError::Memory(BuildError::PolicyUnsupported {
                policy: ContentPolicy::Preserve,
                ..
            }))
        ),
        "{refused:?}"
    );
}
