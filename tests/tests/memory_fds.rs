// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-memory closes every descriptor it opens, exactly once. The only test in its
//! binary, so no other test opens descriptors while it counts.

use std::sync::Arc;

use kvm_ioctls::Kvm;
use veil_memory::veil_attrs::{Attributes, FrameRange, Gfn};
use veil_memory::{
    ContentPolicy, Flavor, GuestMemfd, HostCaps, HostSafeMemory, RecordingAttributesVm, RegionSpec,
    SharedMemfd,
};
use veil_tests::kvm_or_skip;

const MIB: u64 = 1 << 20;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn no_descriptor_leaks() {
    if !kvm_or_skip("no_descriptor_leaks") {
        return;
    }
    let before = open_fds();
    {
        let kvm = Kvm::new().unwrap();
        let caps = HostCaps::probe_with(&kvm).unwrap();
        // A VM type that offers guest_memfd (the default one here; the software-protected
        // one on Linux 6.12).
        let vm_type = caps
            .probe
            .vm_types
            .iter()
            .find(|t| t.guest_memfd && t.create_error.is_none())
            .map_or(0, |t| t.vm_type);
        let vm = Arc::new(kvm.create_vm_with_type(vm_type.into()).unwrap());
        let fake = Arc::new(RecordingAttributesVm::new());
        let mut builder = HostSafeMemory::builder()
            .guest_memfd_source(vm.as_ref())
            .attributes_vm(fake)
            .kvm_side_mapping(caps.kvm_side_mapping.mapping)
            .region(RegionSpec::new(0, MIB, Flavor::EMULATED))
            .region(RegionSpec::new(MIB, MIB, Flavor::ATTRIBUTES));
        if caps.require(Flavor::IN_PLACE).is_ok() {
            builder = builder.region(
                RegionSpec::new(2 * MIB, MIB, Flavor::IN_PLACE).policy(ContentPolicy::Preserve),
            );
        }
        let mem = builder.build().unwrap();
        let during = open_fds();
        assert!(during > before, "the memory holds its descriptors");
        let all = FrameRange::new(Gfn(0), mem.regions().len() as u64 * 256).unwrap();
        mem.convert(all, Attributes::PRIVATE).unwrap();
        mem.convert(all, Attributes::empty()).unwrap();
        // SAFETY: the VM is dropped before the memory (end of this block, `vm` last
        // declared... explicitly below).
        unsafe { mem.register_memslots(&vm, 0) }.unwrap();
        drop(vm);
        drop(mem);

        // Failed constructions leave nothing behind either.
        let vm = kvm.create_vm_with_type(vm_type.into()).unwrap();
        assert!(GuestMemfd::create(&vm, 0x1000, 1 << 7).is_err());
        assert!(SharedMemfd::new(0x1000, true).is_err());
        let failed = HostSafeMemory::builder()
            .guest_memfd_source(&vm)
            .region(RegionSpec::new(0, MIB, Flavor::EMULATED))
            .region(RegionSpec::new(MIB, MIB, Flavor::IN_PLACE).guest_memfd_flags(1 << 7))
            .build();
        assert!(failed.is_err());
        let ok = GuestMemfd::create(&vm, 0x1000, 0).unwrap();
        drop(ok);
    }
    assert_eq!(open_fds(), before, "descriptors leaked");
}
