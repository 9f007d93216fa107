// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The pKVM-style backend of `examples/backends`, written outside veil's crates through
//! their public traits only, running for real through veil-vmm's `Vm`: its memory model
//! backs the guest, its launch makes all RAM private at launch and routes its hypercall
//! ABI, and a guest (`guests/pkvm_share.S`) shares a page, writes it, lets the host read
//! and answer, unshares it, and checks that both words survived. The host checks at each
//! step what it can touch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use veil_example_backends::pkvm::{
    GRANULE, PKVM, PkvmLaunch, SMCCC_RET_INVALID_PARAMETER, SMCCC_RET_NOT_SUPPORTED,
};
use veil_loader::{BootSource, PopulateWay};
use veil_memory::veil_attrs::{FrameRange, Gfn, PageState};
use veil_memory::{
    ContentPolicy, ConversionListener, HostAccessError, HostCaps, HostSafeMemory, StateChange,
};
use veil_tests::{kvm_or_skip, skip, wait_for_end};
use veil_vcpu::{BoxError, FaultPolicy, IoHandler, StopReason};
use veil_vmm::{Vm, VmError};

mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}
use guests::PKVM_SHARE;

const MIB: u64 = 1 << 20;
/// The page the guest shares (`BUF` in the guest).
const BUF: u64 = 0x30_0000;
const REPORT_PORT: u16 = 0x10;
const SHARED_CHECKPOINT: u16 = 0x12;
const PRIVATE_CHECKPOINT: u16 = 0x13;
/// What the guest writes at `BUF` while it is shared ("sten").
const GUEST_WORD: u32 = 0x6e65_7473;
/// What the host answers at `BUF + 8`.
const HOST_WORD: u32 = 0x7473_6f68;

/// What the host saw at a checkpoint.
#[derive(Debug)]
enum Checkpoint {
    Shared {
        state: PageState,
        guest_word: Result<u32, HostAccessError>,
        answered: Result<(), HostAccessError>,
    },
    Private {
        state: PageState,
        read: Result<u32, HostAccessError>,
        write: Result<(), HostAccessError>,
    },
}

struct Host {
    memory: Arc<HostSafeMemory>,
    reports: Mutex<Vec<u32>>,
    checkpoints: Mutex<Vec<Checkpoint>>,
}

fn read_u32(memory: &HostSafeMemory, gpa: u64) -> Result<u32, HostAccessError> {
    let mut b = [0u8; 4];
    memory.host_read(gpa, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

impl IoHandler for Host {
    fn pio_write(&self, port: u16, data: &[u8]) -> Result<(), BoxError> {
        let state = || self.memory.state(Gfn(BUF >> 12));
        match port {
            REPORT_PORT => self
                .reports
                .lock()
                .unwrap()
                .push(u32::from_le_bytes(data.try_into()?)),
            SHARED_CHECKPOINT => {
                let guest_word = read_u32(&self.memory, BUF);
                let answered = self.memory.host_write(BUF + 8, &HOST_WORD.to_le_bytes());
                self.checkpoints.lock().unwrap().push(Checkpoint::Shared {
                    state: state()?,
                    guest_word,
                    answered,
                });
            }
            PRIVATE_CHECKPOINT => {
                let read = read_u32(&self.memory, BUF);
                let write = self.memory.host_write(BUF + 8, &[0xee; 4]);
                self.checkpoints.lock().unwrap().push(Checkpoint::Private {
                    state: state()?,
                    read,
                    write,
                });
            }
            _ => return Err(format!("unexpected port write at {port:#x}").into()),
        }
        Ok(())
    }
}

/// A VM on the pKVM-style backend: its flavor, its launch. `None` (the test skips,
/// saying why) without KVM or without the in-place memory the flavor needs.
fn vm(test: &str) -> Option<Vm> {
    if !kvm_or_skip(test) {
        return None;
    }
    let caps = HostCaps::probe().unwrap();
    if let Err(e) = caps.require(PKVM) {
        skip(test, &e.to_string());
        return None;
    }
    let vm = Vm::builder()
        .launch(Arc::new(PkvmLaunch))
        .flavor(PKVM)
        .region(0, 4 * MIB, ContentPolicy::Preserve)
        .build()
        .unwrap();
    assert_eq!(vm.flavor(), PKVM);
    assert_eq!(vm.launch_technology().name(), "pkvm");
    Some(vm)
}

#[test]
fn pkvm_guest_shares_writes_unshares_and_reads_back() {
    let test = "pkvm_guest_shares_writes_unshares_and_reads_back";
    let Some(vm) = vm(test) else { return };
    let memory = vm.memory().clone();

    let launched = vm
        .launch(&BootSource::flat(PKVM_SHARE.code, PKVM_SHARE.load), 1)
        .unwrap();
    // Placed by writing, then converting (the model keeps contents), and then all of RAM
    // private: nothing stayed shared, the host touches nothing.
    assert_eq!(launched.loaded.populated.way, PopulateWay::WriteThenConvert);
    assert!(launched.shared.is_empty(), "{:?}", launched.shared);
    assert!(
        memory
            .attributes()
            .range_is(memory.regions()[0].range(), PageState::PRIVATE.attributes)
            .unwrap()
    );
    assert!(matches!(
        read_u32(&memory, BUF),
        Err(HostAccessError::Private { .. })
    ));

    // From here on, only the guest converts: exactly its share and its unshare.
    let heard = Arc::new(Heard::default());
    let _ = memory.subscribe(heard.clone());
    let before = memory.stats();
    let host = Arc::new(Host {
        memory: memory.clone(),
        reports: Mutex::default(),
        checkpoints: Mutex::default(),
    });
    let set = vm
        .run(launched.vcpus, host.clone(), FaultPolicy::Refuse)
        .unwrap();
    let report = wait_for_end(set, Duration::from_secs(60));
    assert!(
        matches!(report.reason, StopReason::AllHalted),
        "{}",
        report.reason
    );

    let invalid = SMCCC_RET_INVALID_PARAMETER as u32;
    let unsupported = SMCCC_RET_NOT_SUPPORTED as u32;
    assert_eq!(
        *host.reports.lock().unwrap(),
        [
            GRANULE as u32, // HYP_MEMINFO
            0,              // MEM_SHARE
            HOST_WORD,      // the host's answer, read by the guest
            0,              // MEM_UNSHARE
            GUEST_WORD,     // contents preserved across the unshare
            HOST_WORD,
            invalid,     // a share that is not granule-aligned
            invalid,     // reserved argument x2 set
            invalid,     // outside guest memory
            unsupported, // no such function
        ]
    );
    let checkpoints = host.checkpoints.lock().unwrap();
    let [
        Checkpoint::Shared {
            state,
            guest_word,
            answered,
        },
        Checkpoint::Private {
            state: private,
            read,
            write,
        },
    ] = &checkpoints[..]
    else {
        panic!("{checkpoints:?}");
    };
    assert_eq!(*state, PageState::SHARED);
    assert_eq!(guest_word.as_ref().ok(), Some(&GUEST_WORD));
    assert!(answered.is_ok());
    // Unshared: the host view lost access, reading and writing.
    assert_eq!(*private, PageState::PRIVATE);
    assert!(matches!(read, Err(HostAccessError::Private { .. })));
    assert!(matches!(write, Err(HostAccessError::Private { .. })));
    // The refused calls changed nothing: the page is still private, and the only system
    // calls and listener calls were the share's and the unshare's.
    assert_eq!(
        memory.state(Gfn(BUF >> 12)).unwrap(),
        PageState::PRIVATE,
        "a refused share converted the page"
    );
    let calls = memory.stats().since(&before);
    assert_eq!((calls.protections, calls.total()), (2, 2), "{calls:?}");
    let buf = FrameRange::from_gpa(BUF, GRANULE).unwrap();
    assert_eq!(
        *heard.0.lock().unwrap(),
        [(buf, PageState::SHARED), (buf, PageState::PRIVATE)]
    );
}

/// Every change listeners are told, with its new state.
#[derive(Default)]
struct Heard(Mutex<Vec<(FrameRange, PageState)>>);

impl ConversionListener for Heard {
    fn converted(&self, change: &StateChange) {
        self.0.lock().unwrap().push((change.range, change.new));
    }
}

#[test]
fn pkvm_memory_refuses_policies_it_cannot_honour() {
    let test = "pkvm_memory_refuses_policies_it_cannot_honour";
    if !kvm_or_skip(test) {
        return;
    }
    if let Err(e) = HostCaps::probe().unwrap().require(PKVM) {
        skip(test, &e.to_string());
        return;
    }
    for policy in [ContentPolicy::Discard, ContentPolicy::Retain] {
        let err = Vm::builder()
            .launch(Arc::new(PkvmLaunch))
            .flavor(PKVM)
            .region(0, 4 * MIB, policy)
            .build()
            .unwrap_err();
        assert!(
            matches!(
                err,
                VmError::Memory(veil_memory::BuildError::PolicyUnsupported { flavor, policy: p, .. })
                    if flavor == PKVM && p == policy
            ),
            "{err}"
        );
    }
}
