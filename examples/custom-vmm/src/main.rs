//! A custom VMM on veil-vmm: all RAM private at launch, a guest that shares one page and
//! writes into it, the host reading it, and the statistics.
use std::{error::Error, sync::Arc, time::Duration};
use veil_vmm::veil_loader::BootSource;
use veil_vmm::veil_memory::ContentPolicy;
use veil_vmm::veil_vcpu::{FaultPolicy, IoHandler};
use veil_vmm::{Vm, veil_attrs::Attributes};

const SHARED_PAGE: u64 = 0x30_0000;

/// The guest: 64-bit code loaded at 1 MiB.
const GUEST: &[u8] = &[
    0xb8, 12, 0, 0, 0, //         mov eax, 12 (KVM_HC_MAP_GPA_RANGE)
    0xbb, 0, 0, 0x30, 0, //       mov ebx, 0x300000 (the page)
    0xb9, 1, 0, 0, 0, //          mov ecx, 1 (one page)
    0x31, 0xd2, //                xor edx, edx (to shared)
    0xe6, 0x5e, //                out 0x5e, al (veil's port-I/O hypercall)
    0xc7, 0x04, 0x25, 0, 0, 0x30, 0, b'h', b'i', b'!', 0,    // mov dword [0x300000], "hi!"
    0xf4, //                      hlt
];

/// The guest touches no device; every port and MMIO access would be refused.
struct NoDevices;
impl IoHandler for NoDevices {}

fn main() -> Result<(), Box<dyn Error>> {
    let vm = Vm::builder()
        .region(0, 4 << 20, ContentPolicy::Preserve)
        .private_at_launch(true)
        .build()?;
    let launched = vm.launch(&BootSource::flat(GUEST, 0x10_0000), 1)?;
    let vcpus = vm.run(launched.vcpus, Arc::new(NoDevices), FaultPolicy::Refuse)?;
    let report = vcpus
        .wait_timeout(Duration::from_secs(10))
        .map_err(|vcpus| {
            vcpus.stop();
            "the guest did not halt within 10 s"
        })?;
    let state = vm
        .memory()
        .state(veil_vmm::veil_attrs::Gfn(SHARED_PAGE >> 12))?;
    if state.attributes != Attributes::empty() {
        return Err("the guest's page is still private".into());
    }
    let mut page = [0u8; 3];
    vm.memory().host_read(SHARED_PAGE, &mut page)?;
    println!("the guest wrote: {}", String::from_utf8_lossy(&page));
    println!("its exits: {} ({})", report.stats(), report.reason);
    println!("its memory: {}", vm.stats());
    Ok(())
}
