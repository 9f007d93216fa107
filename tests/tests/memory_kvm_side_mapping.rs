// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The KVM-side mapping (`userspace_addr`) of guest memory, against guests that make KVM
//! emulate instructions.
//!
//! KVM can map a guest_memfd into the guest itself (Linux 6.18 and later, memory slots
//! backed by guest_memfd only), but its instruction emulator reaches guest memory only
//! through `userspace_addr`. A guest that only computes and does port I/O never shows
//! the difference, and one that ends in HLT shows it only in RIP. So the guest here
//! (`tests/guests/emulate.S`) does one thing KVM must emulate per run: an MMIO store, an
//! MMIO load, `rep outsb`, CPUID, HLT (with RIP checked afterwards).
//!
//! - With the mapping, every operation works, on every host with in-place memory.
//! - Without it (`KvmSideMapping::Omitted`, in every mode the kernel accepts), a guest
//!   that makes KVM emulate nothing still runs where KVM maps guest_memfd itself (and
//!   must, under `VEIL_REQUIRE_IN_PLACE=1`: the testbed's Linux 7.3); what becomes of
//!   each emulated operation is printed.
//! - In each mode the kernel accepts, a guest converts a page to private and back
//!   through veil's port-I/O hypercall (`tests/guests/convert_page.S`), veil-vmm's
//!   `MemoryExits` and veil-memory carrying it out, and writes it in both states.
//! - `HostCaps`'s decision is checked against that: it must say `Separate` exactly when
//!   some operation fails without the mapping. Where the attributes flavor runs (both
//!   testbed kernels), a second witness: the guest writes a private page (its
//!   guest_memfd) and `rep outsb`s it, and the bytes KVM's emulator sends come from
//!   `userspace_addr` (the shared side) when KVM needs that mapping.

mod vcpu_support;

use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::{Kvm, VmFd};
use vcpu_support::{CONVERT_PAGE, EMULATE, Guest as Program, MEM_SIZE, MMIO_BASE, Recorder, STACK};
use veil_memory::veil_attrs::{Attributes, FrameRange};
use veil_memory::{
    ContentPolicy, ConversionStats, Flavor, HostCaps, HostSafeMemory, KvmSideMapping, RegionSpec,
};
use veil_tests::{REQUIRE_IN_PLACE, eventually, kvm_or_skip, long_mode};
use veil_vcpu::x86_64::setup_long_mode;
use veil_vcpu::{FaultPolicy, StopReason, Vcpu, VcpuEnd, VcpuSet, VmReport};
use veil_vmm::MemoryExits;

/// The port `rep outsb` writes to.
const STRING_PORT: u16 = 0x14;
/// What the guest reports once past its operation.
const DONE: u32 = 0xd0e0;
/// How long one run may take (the guest spins once done, until stopped).
const LIMIT: Duration = Duration::from_secs(20);
/// The private page of the attributes witness, and what the host leaves on its shared
/// side.
const WITNESS_PAGE: u64 = 0x10_0000;
const SHARED_BYTES: &[u8; 8] = b"shared..";
const PRIVATE_BYTES: &[u8; 8] = b"private!";

/// What `emulate.S` does, by its `rdi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Nothing = 0,
    MmioStore = 1,
    MmioLoad = 2,
    StringOut = 3,
    Cpuid = 4,
    Halt = 5,
    StringFromPage = 6,
}

/// The operations KVM has to emulate.
const EMULATED: [Op; 5] = [
    Op::MmioStore,
    Op::MmioLoad,
    Op::StringOut,
    Op::Cpuid,
    Op::Halt,
];

/// What became of one run of the guest.
#[derive(Debug)]
struct Outcome {
    op: Op,
    /// Why the VM stopped; `Requested` when the host stopped the spinning guest.
    reason: StopReason,
    /// How the vCPU ended.
    end: VcpuEnd,
    /// Everything reported on port 0x10.
    reports: Vec<u32>,
    /// The bytes written to `STRING_PORT`, in order.
    string: Vec<u8>,
    mmio_writes: Vec<(u64, Vec<u8>)>,
    mmio_reads: Vec<(u64, usize)>,
    /// The MMIO load's answer.
    mmio_answer: u64,
    /// RIP when the vCPU ended.
    rip: Option<u64>,
}

impl Outcome {
    /// `Ok` when the operation did what it should, or what went wrong.
    fn check(&self) -> Result<(), String> {
        let started = 0x5eed_0000 | self.op as u32;
        if self.reports.first() != Some(&started) {
            return Err(format!("never started ({})", self.reason));
        }
        if self.op == Op::Halt {
            let Some(&hlt) = self.reports.get(1) else {
                return Err(format!("stopped before its hlt ({})", self.reason));
            };
            if !matches!(self.end, VcpuEnd::Halted) {
                return Err(format!("did not halt ({})", self.reason));
            }
            return match self.rip {
                Some(rip) if rip == u64::from(hlt) + 1 => Ok(()),
                Some(rip) if rip == u64::from(hlt) => {
                    Err(format!("halted with RIP {rip:#x} still on the hlt"))
                }
                rip => Err(format!("halted with RIP {rip:x?}, hlt at {hlt:#x}")),
            };
        }
        if self.reports.last() != Some(&DONE) {
            return Err(format!(
                "never got past the operation ({}; reports {:x?})",
                self.reason, self.reports
            ));
        }
        let seen = match self.op {
            Op::Nothing => return Ok(()),
            Op::MmioStore => {
                self.mmio_writes == [(MMIO_BASE, 0x0123_4567_89ab_cdef_u64.to_le_bytes().to_vec())]
            }
            Op::MmioLoad => {
                self.mmio_reads == [(MMIO_BASE + 8, 8)]
                    && self.reports[1..3]
                        == [self.mmio_answer as u32, (self.mmio_answer >> 32) as u32]
            }
            Op::StringOut => self.string == b"veil-str",
            Op::Cpuid => self.reports.get(1) == Some(&u32::from_le_bytes(*b"KVMK")),
            // Either side's bytes are an answer; the caller tells which it expects.
            Op::StringFromPage => self.string.len() == 8,
            Op::Halt => unreachable!("checked above"),
        };
        if seen {
            Ok(())
        } else {
            Err(format!("got past it with the wrong result: {self:x?}"))
        }
    }
}

/// A VM of the type a flavor needs, with 2 MiB of that flavor's memory at
/// guest-physical 0 registered as slot 0, holding the boot data and the guests.
///
/// `vm` is declared first so that it is dropped first: the VM must not outlive the memory
/// its slots refer to.
struct Machine {
    vm: Arc<VmFd>,
    memory: Arc<HostSafeMemory>,
}

impl Machine {
    fn new(kvm: &Kvm, caps: &HostCaps, flavor: Flavor, mapping: KvmSideMapping) -> Machine {
        let support = caps
            .require(flavor)
            .expect("the caller checked the flavor runs");
        let vm_type = support.vm_type.expect("a flavor that runs has a VM type");
        let vm = Arc::new(kvm.create_vm_with_type(vm_type.into()).unwrap());
        let spec = RegionSpec::new(0, MEM_SIZE as u64, flavor).policy(ContentPolicy::Retain);
        let mut builder = HostSafeMemory::builder()
            .guest_memfd_source(vm.as_ref())
            .kvm_side_mapping(mapping)
            .region(spec);
        if flavor == Flavor::ATTRIBUTES {
            builder = builder.attributes_vm(vm.clone());
        }
        let memory = Arc::new(builder.build().unwrap());
        for (gpa, bytes) in long_mode::boot_data() {
            memory.host_write(gpa, &bytes).unwrap();
        }
        for program in [&EMULATE, &CONVERT_PAGE] {
            memory.host_write(program.load, program.code).unwrap();
        }
        // SAFETY: `memory` outlives `vm` (see the struct) and every vCPU (each run's
        // report, which holds them, is dropped before the run returns).
        unsafe { memory.register_memslots(&vm, 0) }.unwrap();
        Machine { vm, memory }
    }

    /// Runs `program` on a fresh vCPU `id`, with `rdi` and `rsi` preset, veil-vmm's
    /// `MemoryExits` answering its conversion requests through the memory, until it
    /// reports `DONE` or stops.
    fn run_program(
        &self,
        kvm: &Kvm,
        id: u64,
        program: &Program,
        rdi: u64,
        rsi: u64,
    ) -> (VmReport, Arc<Recorder>) {
        let vcpu = Vcpu::new(&self.vm, id).unwrap();
        let entry = long_mode::entry(program.load, STACK - 0x1000 * id);
        setup_long_mode(kvm, vcpu.fd(), id as u32, &entry).unwrap();
        let mut regs = vcpu.fd().get_regs().unwrap();
        regs.rdi = rdi;
        regs.rsi = rsi;
        vcpu.fd().set_regs(&regs).unwrap();

        let rec = Arc::new(Recorder::default());
        let exits = Arc::new(MemoryExits::new(self.memory.clone()));
        let set = VcpuSet::spawn(vec![vcpu], exits, rec.clone(), FaultPolicy::Refuse).unwrap();
        eventually(LIMIT, || {
            set.is_finished() || rec.reports().last() == Some(&DONE)
        });
        set.stop();
        (set.wait(), rec)
    }

    /// Runs `op` of `emulate.S` on a fresh vCPU `id`, with `rsi` preset.
    fn run(&self, kvm: &Kvm, id: u64, op: Op, rsi: u64) -> Outcome {
        let (report, rec) = self.run_program(kvm, id, &EMULATE, op as u64, rsi);
        let vcpu = &report.vcpus[0];
        let string = rec
            .pio_writes
            .lock()
            .unwrap()
            .iter()
            .filter(|(port, _)| *port == STRING_PORT)
            .flat_map(|(_, bytes)| bytes.clone())
            .collect();
        Outcome {
            op,
            reason: report.reason.clone(),
            end: vcpu.end.clone(),
            reports: rec.reports(),
            string,
            mmio_writes: rec.mmio_writes.lock().unwrap().clone(),
            mmio_reads: rec.mmio_reads.lock().unwrap().clone(),
            mmio_answer: rec.mmio_answer,
            rip: vcpu
                .vcpu
                .as_ref()
                .and_then(|v| v.fd().get_regs().ok())
                .map(|r| r.rip),
        }
    }
}

/// KVM and its capabilities, when the host runs the in-place flavor; otherwise `None`
/// after saying why (a failure under `VEIL_REQUIRE_IN_PLACE=1`).
fn in_place_host(test: &str) -> Option<(Kvm, HostCaps)> {
    if !kvm_or_skip(test) {
        return None;
    }
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    match caps.require(Flavor::IN_PLACE) {
        Ok(_) => Some((kvm, caps)),
        Err(e) => {
            veil_tests::skip_unless_required(test, &e.to_string(), REQUIRE_IN_PLACE);
            None
        }
    }
}

/// Runs every operation but the attributes witness on in-place memory in `mapping`.
fn in_place_outcomes(kvm: &Kvm, caps: &HostCaps, mapping: KvmSideMapping) -> Vec<Outcome> {
    let machine = Machine::new(kvm, caps, Flavor::IN_PLACE, mapping);
    let ops = std::iter::once(Op::Nothing).chain(EMULATED);
    ops.enumerate()
        .map(|(id, op)| machine.run(kvm, id as u64, op, 0))
        .collect()
}

fn print(test: &str, what: &str, outcomes: &[Outcome]) {
    for o in outcomes {
        let result = o.check().err().unwrap_or_else(|| "works".to_string());
        eprintln!("{test}: {what}: {:?}: {result}", o.op);
    }
}

#[test]
fn in_place_emulation_works_with_a_kvm_side_mapping() {
    let test = "in_place_emulation_works_with_a_kvm_side_mapping";
    let Some((kvm, caps)) = in_place_host(test) else {
        return;
    };
    let outcomes = in_place_outcomes(&kvm, &caps, KvmSideMapping::Separate);
    print(test, "with a KVM-side mapping", &outcomes);
    for o in &outcomes {
        if let Err(e) = o.check() {
            panic!("{:?} with a KVM-side mapping: {e}", o.op);
        }
    }
}

#[test]
fn in_place_without_a_kvm_side_mapping_runs_what_kvm_does_not_emulate() {
    let test = "in_place_without_a_kvm_side_mapping_runs_what_kvm_does_not_emulate";
    let Some((kvm, caps)) = in_place_host(test) else {
        return;
    };
    let outcomes = in_place_outcomes(&kvm, &caps, KvmSideMapping::Omitted);
    print(test, "without a KVM-side mapping", &outcomes);
    let plain = outcomes[0].check();
    match plain {
        Ok(()) => {}
        // KVM that emulates all guest code (PVM) reads even the instructions through
        // userspace_addr: there Omitted is no mode at all.
        Err(e) if !veil_tests::required(REQUIRE_IN_PLACE) => veil_tests::skip(
            test,
            &format!("even a guest that causes no emulation fails without the mapping: {e}"),
        ),
        Err(e) => panic!(
            "a guest that causes no emulation failed without a KVM-side mapping, where KVM \
             should fault guest memory from the guest_memfd itself: {e}"
        ),
    }
}

#[test]
fn in_place_conversions_from_the_guest_in_each_mapping_mode() {
    let test = "in_place_conversions_from_the_guest_in_each_mapping_mode";
    let Some((kvm, caps)) = in_place_host(test) else {
        return;
    };
    let page = FrameRange::from_gpa(WITNESS_PAGE, 0x1000).unwrap();
    for mapping in [KvmSideMapping::Separate, KvmSideMapping::Omitted] {
        let machine = Machine::new(&kvm, &caps, Flavor::IN_PLACE, mapping);
        if let Err(e) = machine.run(&kvm, 0, Op::Nothing, 0).check() {
            // KVM that emulates all guest code (PVM) needs the mapping for any guest.
            assert!(
                mapping == KvmSideMapping::Omitted && !veil_tests::required(REQUIRE_IN_PLACE),
                "{mapping:?}: a guest that causes no emulation failed: {e}"
            );
            eprintln!("{test}: no {mapping:?} mode on this KVM: {e}");
            continue;
        }
        let before = machine.memory.stats();
        let (report, rec) = machine.run_program(&kvm, 1, &CONVERT_PAGE, 0, WITNESS_PAGE);
        let reports = rec.reports();
        assert_eq!(
            reports,
            [0, 0xa11c_e000, 0xb0b0_0000, 0, DONE],
            "{mapping:?}: the guest's reports ({})",
            report.reason
        );
        // Shared again, with what the guest wrote in either state: one page served both.
        let mut bytes = [0u8; 16];
        machine.memory.host_read(WITNESS_PAGE, &mut bytes).unwrap();
        assert_eq!(
            bytes,
            [
                0xa11c_e000_a11c_e000_u64.to_le_bytes(),
                0xb0b0_0000_b0b0_0000_u64.to_le_bytes()
            ]
            .concat()[..],
            "{mapping:?}"
        );
        assert!(
            machine
                .memory
                .attributes()
                .range_is(page, Attributes::empty())
                .unwrap()
        );
        assert_eq!(
            machine.memory.stats().since(&before),
            ConversionStats {
                conversions: 2,
                pages_to_private: 1,
                pages_to_shared: 1,
                set_memory_attributes: 0,
                protections: 2,
                discards: 0,
            },
            "{mapping:?}"
        );
        eprintln!("{test}: {mapping:?}: the guest's round trip worked");
    }
}

/// Whether KVM's emulator read a private page through `userspace_addr` (`true`) or
/// from its guest_memfd (`false`); the host runs the attributes flavor.
fn attributes_witness(test: &str, kvm: &Kvm, caps: &HostCaps) -> bool {
    let machine = Machine::new(kvm, caps, Flavor::ATTRIBUTES, KvmSideMapping::Separate);
    machine
        .memory
        .host_write(WITNESS_PAGE, SHARED_BYTES)
        .unwrap();
    let page = FrameRange::from_gpa(WITNESS_PAGE, 0x1000).unwrap();
    // Retain: the shared side keeps the host's bytes while the page is private.
    machine.memory.convert(page, Attributes::PRIVATE).unwrap();
    let o = machine.run(kvm, 0, Op::StringFromPage, WITNESS_PAGE);
    if let Err(e) = o.check() {
        panic!("rep outsb from a private page: {e}");
    }
    eprintln!(
        "{test}: rep outsb from a private page holding {:?} (shared side {:?}) sent {:?}",
        String::from_utf8_lossy(PRIVATE_BYTES),
        String::from_utf8_lossy(SHARED_BYTES),
        String::from_utf8_lossy(&o.string)
    );
    match o.string.as_slice() {
        s if s == SHARED_BYTES => true,
        s if s == PRIVATE_BYTES => false,
        s => panic!("rep outsb sent {s:x?}, neither side's bytes"),
    }
}

#[test]
fn kvm_side_mapping_decision_matches_what_kvm_needs() {
    let test = "kvm_side_mapping_decision_matches_what_kvm_needs";
    if !kvm_or_skip(test) {
        return;
    }
    let kvm = Kvm::new().unwrap();
    let caps = HostCaps::probe_with(&kvm).unwrap();
    let decided = caps.kvm_side_mapping.mapping;
    let mut evidence = Vec::new();
    let runs = |flavor| match caps.require(flavor) {
        Ok(_) => true,
        Err(e) => {
            if flavor == Flavor::IN_PLACE && veil_tests::required(REQUIRE_IN_PLACE) {
                panic!("{e}, and {REQUIRE_IN_PLACE}=1 forbids going without it");
            }
            eprintln!("{test}: no {flavor} evidence here: {e}");
            false
        }
    };

    // In-place memory without the mapping: does anything KVM emulates fail?
    if runs(Flavor::IN_PLACE) {
        let outcomes = in_place_outcomes(&kvm, &caps, KvmSideMapping::Omitted);
        print(test, "without a KVM-side mapping", &outcomes);
        let failed: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.check().err().map(|e| format!("{:?}: {e}", o.op)))
            .collect();
        evidence.push((
            !failed.is_empty(),
            format!(
                "without a KVM-side mapping, in-place guests failed at: {}",
                if failed.is_empty() {
                    "nothing".to_string()
                } else {
                    failed.join("; ")
                }
            ),
        ));
    }
    // A private page: does KVM's emulator read it through userspace_addr?
    if runs(Flavor::ATTRIBUTES) {
        let through_userspace_addr = attributes_witness(test, &kvm, &caps);
        evidence.push((
            through_userspace_addr,
            format!(
                "KVM's emulator read a private page {}",
                if through_userspace_addr {
                    "through userspace_addr (the shared side)"
                } else {
                    "from its guest_memfd"
                }
            ),
        ));
    }
    if evidence.is_empty() {
        veil_tests::skip(
            test,
            "neither the in-place nor the attributes flavor runs here: no guest_memfd slot to \
             try without a KVM-side mapping",
        );
        return;
    }
    let needed = evidence.iter().any(|(needs, _)| *needs);
    let why: Vec<&str> = evidence.iter().map(|(_, why)| why.as_str()).collect();
    eprintln!("{test}: veil caps decided {decided:?}; {}", why.join("; "));
    assert_eq!(
        decided == KvmSideMapping::Separate,
        needed,
        "veil caps decided {decided:?} ({}), but {}",
        caps.kvm_side_mapping.reason,
        why.join("; ")
    );
}
