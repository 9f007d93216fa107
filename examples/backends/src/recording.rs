// Copyright 2026 The veil authors.
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A launch technology that records every hook veil calls, in order, with the page types
//! the loader passed, and otherwise launches like plain KVM: it takes the boot data's
//! runs through [`Launch::populate`] (they are already private, and a flavor that keeps
//! contents keeps what the loader wrote), so it sees every run with its type.
//!
//! It can be told to refuse one page type, which shows that a technology's refusal
//! reaches the caller before anything is written.

use std::sync::Mutex;

use veil_vmm::kvm_ioctls::{Kvm, VcpuFd, VmFd};
use veil_vmm::veil_loader::{ByteRange, PageType};
use veil_vmm::veil_vcpu::ExitRouting;
use veil_vmm::veil_vcpu::x86_64::EntryRegisters;
use veil_vmm::{Launch, LaunchError, LaunchRun, LaunchVm, PlainKvm, launch::plain_setup};

/// One hook call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `init` on the new VM.
    Init,
    /// `setup_vcpu` of vCPU `id`, with or without an entry.
    SetupVcpu {
        /// The vCPU.
        id: u32,
        /// Whether it was given the boot entry.
        boot: bool,
    },
    /// `populate` of a run.
    Populate {
        /// The run.
        range: ByteRange,
        /// Its page type.
        page_type: PageType,
        /// How many bytes came with it.
        len: usize,
        /// How many vCPUs the hook could see.
        vcpus: usize,
    },
    /// `finalize`.
    Finalize {
        /// How many vCPUs the hook could see.
        vcpus: usize,
    },
    /// `exit_routing`.
    ExitRouting,
}

/// What a recording launch was told to fail.
#[derive(Debug, thiserror::Error)]
#[error("the recording launch was told to fail {0}")]
pub struct Told(pub &'static str);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RecordingLaunch {
    events: Mutex<Vec<Event>>,
    refuse: Option<PageType>,
    fail_finalize: bool,
}

impl RecordingLaunch {
    /// A launch that accepts every page type plain memory takes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, refusing pages of `page_type`.
    pub fn refusing(page_type: PageType) -> Self {
        RecordingLaunch {
            refuse: Some(page_type),
            ..Self::default()
        }
    }

    /// The same, failing `finalize` with its own error.
    pub fn failing_finalize() -> Self {
        RecordingLaunch {
            fail_finalize: true,
            ..Self::default()
        }
    }

    /// The hook calls so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().clone()
    }

    fn record(&self, event: Event) {
        self.lock().push(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Launch for RecordingLaunch {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn vm_types(&self) -> &[u32] {
        PlainKvm.vm_types()
    }

    fn init(&self, _kvm: &Kvm, _vm: &VmFd) -> Result<(), LaunchError> {
        self.record(Event::Init);
        Ok(())
    }

    fn setup_vcpu(
        &self,
        vm: &LaunchVm<'_>,
        vcpu: &VcpuFd,
        id: u32,
        entry: Option<&EntryRegisters>,
    ) -> Result<(), LaunchError> {
        self.record(Event::SetupVcpu {
            id,
            boot: entry.is_some(),
        });
        plain_setup(self.name(), vm.kvm, vcpu, id, entry)
    }

    fn populates(&self) -> bool {
        true
    }

    fn accepts(&self, page_type: PageType) -> bool {
        page_type.plain() && Some(page_type) != self.refuse
    }

    fn populate(&self, vm: &LaunchVm<'_>, run: &LaunchRun<'_>) -> Result<(), LaunchError> {
        self.record(Event::Populate {
            range: run.range,
            page_type: run.page_type,
            len: run.bytes.len(),
            vcpus: vm.vcpus.len(),
        });
        Ok(())
    }

    fn finalize(&self, vm: &LaunchVm<'_>) -> Result<(), LaunchError> {
        self.record(Event::Finalize {
            vcpus: vm.vcpus.len(),
        });
        if self.fail_finalize {
            return Err(LaunchError::Step {
                technology: self.name(),
                step: "finalize",
                source: Box::new(Told("finalize")),
            });
        }
        Ok(())
    }

    fn exit_routing(&self, routing: ExitRouting) -> ExitRouting {
        self.record(Event::ExitRouting);
        routing
    }
}
