// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! veil-vmm end to end on real KVM: a guest converts pages through the port-I/O
//! hypercall, veil-memory carries the conversions out, and the host checks at each step
//! what it can and cannot touch. Run in the in-place flavor (guest_memfd with
//! `GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED`, with the KVM-side mapping the
//! host needs) and in the emulated flavor (memfd).
//!
//! The guest is `tests/guests/vmm_convert.S`.

mod vcpu_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use vcpu_support::VMM_CONVERT;
use veil_attrs::{Attributes, FrameRange, Gfn, PageState};
use veil_memory::vm_memory::{Bytes, GuestAddress};
use veil_memory::{
    BuildError, CapsError, ContentPolicy, ConversionStats, Flavor, HostAccessError, HostCaps,
    HostSafeMemory, host_access_error,
};
use veil_tests::{kvm_or_skip, long_mode, wait_for_end};
use veil_vcpu::x86_64::setup_long_mode;
use veil_vcpu::{
    BoxError, ExitKind, FaultPolicy, IoHandler, StopReason, Vcpu, VcpuEnd, VcpuSet, VmReport,
};
use veil_vmm::{MemoryExitStats, Vm, VmError};

const MIB: u64 = 1 << 20;
/// Guest memory: [0, 2) MiB keeps contents on conversion, [2, 4) MiB discards them.
const PRESERVING: (u64, u64) = (0, 2 * MIB);
const DISCARDING: (u64, u64) = (2 * MIB, 2 * MIB);
const MEMORY_END: u64 = 4 * MIB;
/// The page the guest converts in each region.
const KEPT_PAGE: u64 = MIB;
const DISCARDED_PAGE: u64 = 3 * MIB;
const STACK: u64 = 0x8_0000;
const LIMIT: Duration = Duration::from_secs(30);

const REPORT_PORT: u16 = 0x10;
const PRIVATE_CHECKPOINT: u16 = 0x12;
const SHARED_CHECKPOINT: u16 = 0x13;

/// What the guest writes: A while the page is shared, B while it is private.
fn pattern_a(page: u64) -> u64 {
    0xa11c_e000_0000_0000 | page
}
fn pattern_b(page: u64) -> u64 {
    0xb0b0_0000_0000_0000 | page
}

/// What the host saw at a checkpoint, while the guest waited in its `out`.
#[derive(Debug)]
enum Checkpoint {
    /// The guest had just made `page` private.
    Private {
        page: u64,
        state: PageState,
        read: Result<u64, HostAccessError>,
        write: Result<(), HostAccessError>,
        /// The same read through `vm-memory`'s `Bytes`, as device models and
        /// linux-loader make it.
        vm_memory_read: Option<HostAccessError>,
        /// The last qword of the page before: shared, so readable.
        neighbour: Result<u64, HostAccessError>,
    },
    /// The guest had just made `page` shared again.
    Shared {
        page: u64,
        state: PageState,
        first: Result<u64, HostAccessError>,
        last: Result<u64, HostAccessError>,
    },
}

/// The devices of the test VM: the report port and the two checkpoints.
struct Host {
    memory: Arc<HostSafeMemory>,
    reports: Mutex<Vec<u32>>,
    checkpoints: Mutex<Vec<Checkpoint>>,
}

fn read_u64(memory: &HostSafeMemory, gpa: u64) -> Result<u64, HostAccessError> {
    let mut b = [0u8; 8];
    memory.host_read(gpa, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

impl IoHandler for Host {
    fn pio_read(&self, port: u16, _: &mut [u8]) -> Result<(), BoxError> {
        Err(format!("unexpected port read at {port:#x}").into())
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        let value = u32::from_le_bytes(data.try_into()?);
        let page = u64::from(value);
        let state = || self.memory.state(Gfn(page >> 12));
        match port {
            REPORT_PORT => self.reports.lock().unwrap().push(value),
            PRIVATE_CHECKPOINT => {
                let read = read_u64(&self.memory, page);
                let write = self.memory.host_write(page, &[0xee; 8]);
                let vm_memory_read = self
                    .memory
                    .read_obj::<u64>(GuestAddress(page))
                    .err()
                    .and_then(|e| host_access_error(&e).cloned());
                let neighbour = read_u64(&self.memory, page.wrapping_sub(8));
                self.checkpoints.lock().unwrap().push(Checkpoint::Private {
                    page,
                    state: state()?,
                    read,
                    write,
                    vm_memory_read,
                    neighbour,
                });
            }
            SHARED_CHECKPOINT => {
                let first = read_u64(&self.memory, page);
                let last = read_u64(&self.memory, page + 0xff8);
                self.checkpoints.lock().unwrap().push(Checkpoint::Shared {
                    page,
                    state: state()?,
                    first,
                    last,
                });
            }
            _ => return Err(format!("unexpected port write at {port:#x}").into()),
        }
        Ok(())
    }

    fn mmio_read(&self, addr: u64, _: &mut [u8]) -> Result<(), BoxError> {
        Err(format!("unexpected MMIO read at {addr:#x}").into())
    }

    fn mmio_write(&self, addr: u64, _: &[u8]) -> Result<(), BoxError> {
        Err(format!("unexpected MMIO write at {addr:#x}").into())
    }
}

/// The VM the guest runs in, or `None` (the test skips, saying why) without KVM or
/// without `flavor` on this host.
fn vm(test: &str, flavor: Flavor) -> Option<Vm> {
    if !kvm_or_skip(test) {
        return None;
    }
    let caps = HostCaps::probe().unwrap();
    if let Err(e) = caps.require(flavor) {
        if flavor == Flavor::IN_PLACE {
            veil_tests::skip_unless_required(test, &e.to_string(), veil_tests::REQUIRE_IN_PLACE);
        } else {
            veil_tests::skip(test, &e.to_string());
        }
        return None;
    }
    let vm = Vm::builder()
        .flavor(flavor)
        .region(PRESERVING.0, PRESERVING.1, ContentPolicy::Preserve)
        .region(DISCARDING.0, DISCARDING.1, ContentPolicy::Discard)
        .build()
        .unwrap();
    assert_eq!(vm.flavor(), flavor);
    Some(vm)
}

/// Writes boot data and the guest through veil's guest memory (as a loader would: it is
/// all shared), and sets up vCPU 0 to run the guest.
fn guest_vcpu(vm: &Vm) -> Vcpu {
    let memory = vm.memory();
    for (gpa, bytes) in long_mode::boot_data() {
        memory.host_write(gpa, &bytes).unwrap();
    }
    memory
        .write_slice(VMM_CONVERT.code, GuestAddress(VMM_CONVERT.load))
        .unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let entry = long_mode::entry(VMM_CONVERT.load, STACK);
    setup_long_mode(vm.kvm(), vcpu.fd(), 0, &entry).unwrap();
    let mut regs = vcpu.fd().get_regs().unwrap();
    regs.rdi = KEPT_PAGE;
    regs.rsi = DISCARDED_PAGE;
    regs.r13 = MEMORY_END - 0x1000;
    vcpu.fd().set_regs(&regs).unwrap();
    vcpu
}

fn host(memory: &Arc<HostSafeMemory>) -> Arc<Host> {
    Arc::new(Host {
        memory: memory.clone(),
        reports: Mutex::default(),
        checkpoints: Mutex::default(),
    })
}

/// Runs the guest until it halts; returns the report and what the host saw.
fn run_guest(vm: &Vm) -> (VmReport, Arc<Host>) {
    let vcpu = guest_vcpu(vm);
    let host = host(vm.memory());
    // No memory fault is expected: if one comes, the VM stops and the test says so.
    let set = vm
        .run(vec![vcpu], host.clone(), FaultPolicy::Refuse)
        .unwrap();
    (wait_for_end(set, LIMIT), host)
}

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

/// The round trip of `page` as the guest reports it: the to-private result, the page
/// read while private, the to-shared result, then the page's first and last qwords.
fn expected_round_trip(page: u64, preserved: bool) -> Vec<u32> {
    let (a, b) = if preserved {
        (pattern_a(page), pattern_b(page))
    } else {
        (0, 0)
    };
    let mut out = vec![0];
    out.extend(split(a));
    out.push(0);
    out.extend(split(a));
    out.extend(split(b));
    out
}

fn check_private_checkpoint(c: &Checkpoint, expected_page: u64) {
    let Checkpoint::Private {
        page,
        state,
        read,
        write,
        vm_memory_read,
        neighbour,
    } = c
    else {
        panic!("expected the private checkpoint of {expected_page:#x}, got {c:#x?}");
    };
    assert_eq!(*page, expected_page);
    assert_eq!(*state, PageState::PRIVATE);
    let private = FrameRange::from_gpa(expected_page, 0x1000).unwrap();
    let refused = HostAccessError::Private {
        addr: expected_page,
        len: 8,
        private,
    };
    let err = read.as_ref().unwrap_err();
    assert_eq!(*err, refused);
    assert!(
        err.to_string().contains(&format!("{expected_page:#x}")),
        "the error names the address: {err}"
    );
    assert_eq!(write.as_ref().unwrap_err(), &refused);
    assert_eq!(vm_memory_read.as_ref(), Some(&refused));
    assert!(
        neighbour.is_ok(),
        "the page before is shared: {neighbour:?}"
    );
}

fn check_shared_checkpoint(c: &Checkpoint, expected_page: u64, preserved: bool) {
    let Checkpoint::Shared {
        page,
        state,
        first,
        last,
    } = c
    else {
        panic!("expected the shared checkpoint of {expected_page:#x}, got {c:#x?}");
    };
    assert_eq!(*page, expected_page);
    assert_eq!(*state, PageState::SHARED);
    let (a, b) = if preserved {
        (pattern_a(expected_page), pattern_b(expected_page))
    } else {
        (0, 0)
    };
    assert_eq!(
        first.as_ref().unwrap(),
        &a,
        "first qword, written while shared"
    );
    assert_eq!(
        last.as_ref().unwrap(),
        &b,
        "last qword, written while private"
    );
}

fn round_trips_and_refusals(test: &str, flavor: Flavor) {
    let Some(vm) = vm(test, flavor) else { return };
    let before = vm.memory().stats();
    let (report, host) = run_guest(&vm);
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "{}",
        report.reason
    );
    assert!(matches!(report.vcpus[0].end, VcpuEnd::Halted));

    // Everything the guest reported, in order: the preserving page's round trip, the
    // discarding page's, then EINVAL for each bad request.
    let mut expected = expected_round_trip(KEPT_PAGE, true);
    expected.extend(expected_round_trip(DISCARDED_PAGE, false));
    expected.extend([22, 22, 22, 22]);
    let reports = host.reports.lock().unwrap().clone();
    assert_eq!(reports, expected, "{reports:#x?}");
    // The round trips reached veil-vmm's memory exits; veil-vcpu refused the bad
    // requests before they did.
    assert_eq!(
        vm.stats().requests,
        MemoryExitStats {
            requests: 4,
            pages_to_private: 2,
            pages_to_shared: 2,
            ..MemoryExitStats::default()
        },
        "{}",
        vm.stats()
    );
    assert_eq!(report.stats().refused(), 4, "{}", report.stats());

    // While private, the host could not read or write the page (through veil's own
    // accessors or vm-memory's) and the guest still read its pattern; once shared
    // again the host read the guest's bytes, or zeros where the region discards.
    let checkpoints = host.checkpoints.lock().unwrap();
    assert_eq!(checkpoints.len(), 4, "{checkpoints:#x?}");
    check_private_checkpoint(&checkpoints[0], KEPT_PAGE);
    check_shared_checkpoint(&checkpoints[1], KEPT_PAGE, true);
    check_private_checkpoint(&checkpoints[2], DISCARDED_PAGE);
    check_shared_checkpoint(&checkpoints[3], DISCARDED_PAGE, false);

    // The bad requests changed nothing: every page is shared, and the only system
    // calls are those of the two round trips (an mprotect each way per page, and a
    // discard each way for the discarding page).
    let memory = vm.memory();
    let all = FrameRange::from_gpa(0, MEMORY_END).unwrap();
    assert!(
        memory
            .attributes()
            .range_is(all, Attributes::empty())
            .unwrap()
    );
    assert_eq!(memory.attributes().run_count(), 1);
    assert_eq!(
        memory.stats().since(&before),
        ConversionStats {
            conversions: 4,
            pages_to_private: 2,
            pages_to_shared: 2,
            set_memory_attributes: 0,
            protections: 4,
            discards: 2,
        }
    );
    let mut whole = vec![0u8; MEMORY_END as usize];
    memory.host_read(0, &mut whole).unwrap();
    assert_eq!(read_u64(memory, KEPT_PAGE), Ok(pattern_a(KEPT_PAGE)));
    assert_eq!(read_u64(memory, DISCARDED_PAGE + 0xff8), Ok(0));

    let stats = report.stats();
    assert_eq!(stats.count(ExitKind::PortHypercall), 8);
    assert_eq!(stats.count(ExitKind::MemoryFault), 0);
}

#[test]
fn in_place_round_trips_and_refusals() {
    round_trips_and_refusals("in_place_round_trips_and_refusals", Flavor::IN_PLACE);
}

#[test]
fn emulated_round_trips_and_refusals() {
    round_trips_and_refusals("emulated_round_trips_and_refusals", Flavor::EMULATED);
}

#[test]
fn vm_follows_the_host_capabilities() {
    if !kvm_or_skip("vm_follows_the_host_capabilities") {
        return;
    }
    let caps = HostCaps::probe().unwrap();
    let vm = Vm::builder()
        .region(0, 2 * MIB, ContentPolicy::Discard)
        .build()
        .unwrap();
    // The first flavor the host runs, and conversion exits where the host has them.
    assert_eq!(Some(&vm.flavor()), caps.supported_flavors().first());
    assert_eq!(vm.conversion_exits(), caps.map_gpa_range_exits());
    assert_eq!(vm.caps(), &caps);
    assert_eq!(vm.memory().regions().len(), 1);
    assert_eq!(vm.memory().regions()[0].flavor(), vm.flavor());

    // The attributes flavor: built where the host runs it, refused with the missing
    // capability named where it does not.
    let attributes = Vm::builder()
        .flavor(Flavor::ATTRIBUTES)
        .region(0, 2 * MIB, ContentPolicy::Discard)
        .build();
    match caps.require(Flavor::ATTRIBUTES) {
        Ok(_) => assert_eq!(attributes.unwrap().flavor(), Flavor::ATTRIBUTES),
        Err(missing) => {
            let err = attributes.unwrap_err();
            let VmError::Flavor {
                flavor,
                source: CapsError::Missing { capability, .. },
            } = &err
            else {
                panic!("expected the attributes flavor to be refused: {err:?}");
            };
            assert_eq!(*flavor, Flavor::ATTRIBUTES);
            assert!(missing.to_string().contains(capability.as_str()));
        }
    }
}

#[test]
fn vm_refuses_bad_memory_layouts() {
    if !kvm_or_skip("vm_refuses_bad_memory_layouts") {
        return;
    }
    let overlapping = Vm::builder()
        .flavor(Flavor::EMULATED)
        .region(0, 2 * MIB, ContentPolicy::Preserve)
        .region(MIB, 2 * MIB, ContentPolicy::Preserve)
        .build()
        .unwrap_err();
    assert!(
        matches!(overlapping, VmError::Memory(BuildError::Overlap { .. })),
        "{overlapping:?}"
    );
    let none = Vm::builder().flavor(Flavor::EMULATED).build().unwrap_err();
    assert!(
        matches!(none, VmError::Memory(BuildError::NoRegion)),
        "{none:?}"
    );
}

#[test]
fn dropping_the_vm_takes_its_memory_away_from_kvm() {
    let test = "dropping_the_vm_takes_its_memory_away_from_kvm";
    let Some(vm) = self::vm(test, Flavor::EMULATED) else {
        return;
    };
    // Everything is set up to run the guest; then the VM goes, while the memory and a
    // vCPU (which keeps KVM's VM alive) stay.
    let vcpu = guest_vcpu(&vm);
    let memory = vm.memory().clone();
    let exits = vm.exits().clone();
    drop(vm);

    let host = host(&memory);
    let set = VcpuSet::spawn(vec![vcpu], exits, host.clone(), FaultPolicy::Refuse).unwrap();
    let report = wait_for_end(set, LIMIT);
    // The guest finds no memory, not even its page tables (on this project's hosts it
    // shuts down at once): it never reaches its first report. Had the slots stayed, it
    // would have run from the memory below, which is still mapped.
    assert!(host.reports.lock().unwrap().is_empty());
    assert!(
        !matches!(report.reason, StopReason::AllHalted),
        "{}",
        report.reason
    );
    eprintln!(
        "{test}: without memory the guest stopped with: {}",
        report.reason
    );
    let mut code = vec![0u8; VMM_CONVERT.code.len()];
    memory.host_read(VMM_CONVERT.load, &mut code).unwrap();
    assert_eq!(code, VMM_CONVERT.code);
}
